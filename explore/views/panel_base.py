"""What every notebook panel shares: a status line, one-line errors, a hold on callbacks, image widgets.

Errors a user can cause (`explore.errors.ExploreError`) show as one line in the panel's status
label, never as a traceback; anything else is a bug and is raised after the status says so.
"""

from __future__ import annotations

import abc
import contextlib
import html
import io
import re
from collections.abc import Callable
from typing import Any

import ipywidgets as W
from PIL import Image

from ..errors import ExploreError
from .pictures import one_line


class Panel(abc.ABC):
    """Shared by the panels: a status label, error handling, a hold on callbacks, notebook display."""

    widget: Any

    def _init_status(self):
        self.status = W.HTML(value="")
        self.status.add_class("explore-status")
        self.last_error: BaseException | None = None
        self._hold = 0

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def message(self) -> str:
        """The status line as plain text."""
        return html.unescape(re.sub(r"<[^>]+>", "", self.status.value))

    @contextlib.contextmanager
    def _quiet(self):
        """Change widget values without triggering the callbacks."""
        self._hold += 1
        try:
            yield
        finally:
            self._hold -= 1

    def _say(self, text: str, error: bool = False) -> None:
        if error:
            self.status.add_class("explore-status-error")
            self.status.value = f"<span style='color:#b00020'>⚠ {html.escape(text, quote=False)}</span>"
        else:
            self.status.remove_class("explore-status-error")
            self.status.value = f"<span style='color:#555'>{html.escape(text, quote=False)}</span>"

    def _guard(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; a user error becomes one line in the status label; a bug is shown, then raised."""
        try:
            out = fn()
        except ExploreError as e:
            self.last_error = e
            self._say(one_line(e), error=True)
            return None
        except Exception as e:  # a bug: say so in one line, then let Jupyter log the traceback
            self.last_error = e
            self._say(f"internal error ({type(e).__name__}): {one_line(e)}", error=True)
            raise
        self.last_error = None
        return out

    def _observe(self, widget, level: str) -> None:
        def cb(change, level=level):
            if self._hold:
                return
            self.refresh(level)

        widget.observe(cb, names="value")

    @abc.abstractmethod
    def refresh(self, level: str = "all") -> None:
        """Redraw after a control changed; ``level`` says how much (each panel defines its levels)."""


def image_widget(css: str | None = None, width: int | None = None):
    im = W.Image(format="png", value=b"")
    if width:
        im.layout.width = f"{width}px"
    if css:
        im.add_class(css)
    return im


def titled(title: str, widget, width: int | None = None):
    box = W.VBox([W.HTML(f"<b>{title}</b>"), widget])
    if width:
        box.layout.width = f"{width}px"
    return box


def set_png(image_widget, data: bytes) -> None:
    """Show PNG bytes at their own pixel size (the browser must not rescale: NEAREST upscaling stays crisp)."""

    image_widget.value = data
    if data:
        with Image.open(io.BytesIO(data)) as im:
            image_widget.layout.width = f"{im.width}px"
