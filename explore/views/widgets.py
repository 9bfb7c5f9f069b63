"""Interactive panels for the notebooks (ipywidgets), thin on top of `explore.views.session`.

The panels (`EditPanel`, `GeometryPanel`, `AttentionPanel`, `ProbePanel`, `SteeringPanel`) only
read widget values, call the session or an analysis function, and put PNG bytes into
``ipywidgets.Image`` widgets. Every panel can be driven from code (``panel.set(...)`` or assigning
widget values) and read back (``panel.result_png``, ``panel.status.value``), which is how the
tests and the browser check use them.

Errors a user can cause (`explore.errors.ExploreError`) show as one line in the panel's status
label, never as a traceback; anything else is a bug and is raised after the status says so.
"""

from __future__ import annotations

import abc
import contextlib
import io
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as W
import numpy as np
from PIL import Image

from ..editing.objectives import METHODS
from ..errors import ExploreError, InputError
from ..interp.attention import attention_map
from ..interp.steering import steered_image
from .pictures import (
    DISPLAY_SIZE,
    attention_overlay,
    figure_png,
    image_strip,
    latent_table,
    one_line,
    png_bytes,
    raw_png,
)
from .plots import attention_grid, plot_accuracy, plot_joint_latent, plot_trace
from .session import DEFAULT_STRENGTHS, DirectionMap, EditKey, EditSession, Frame, SourceImage, parse_pairs


class _Panel(abc.ABC):
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
        import html

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
        import html

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


def _image_widget(css: str | None = None, width: int | None = None):
    im = W.Image(format="png", value=b"")
    if width:
        im.layout.width = f"{width}px"
    if css:
        im.add_class(css)
    return im


def _titled(title: str, widget, width: int | None = None):
    box = W.VBox([W.HTML(f"<b>{title}</b>"), widget])
    if width:
        box.layout.width = f"{width}px"
    return box


def _set_png(image_widget, data: bytes) -> None:
    """Show PNG bytes at their own pixel size (the browser must not rescale: NEAREST upscaling stays crisp)."""

    image_widget.value = data
    if data:
        with Image.open(io.BytesIO(data)) as im:
            image_widget.layout.width = f"{im.width}px"


class EditPanel(_Panel):
    """EIM end to end: pick a source, an attribute and a target, a method, a strength; see the edit.

    Widgets (attributes, drive them from code): ``prompt`` (caption combobox), ``seed``, ``how``
    (ShapesWorld: render | generate), ``attribute``, ``target``, ``method``, ``strength``,
    ``preserve`` (factor -> checkbox on ShapesWorld; a text of word pairs elsewhere),
    ``sweep_button``, ``auto_sweep``; for other models also ``source_word`` (the word to change).
    Images: ``source_image``, ``reconstruction_image``, ``result_image``, ``strip_image``,
    ``trace_image``, ``latent_image``; ``status`` says what happened in one line.

    A strength that a cached sweep covers is a lookup (no model call); otherwise one edit runs and
    is cached. ``auto_sweep=True`` computes the whole batched sweep as soon as the edit changes.
    """

    def __init__(self, session: EditSession, prompts: Sequence[str] | None = None, *, attribute: str | None = None,
                 target: str | None = None, method: str = "hsds", strength: float = 1.0, seed: int = 0,
                 how: str = "auto", source_word: str = "", auto_sweep: bool = False,
                 display_size: int = DISPLAY_SIZE):
        self.session = session
        self.display_size = display_size
        self._init_status()
        self._source: SourceImage | None = None
        self._png: OrderedDict[tuple, dict[str, bytes]] = OrderedDict()
        self._latent_png: dict[tuple, bytes] = {}
        shapes = session.shapes
        if prompts is None:
            prompts = session.world.captions(8, seed) if shapes else ["a photo of a red car"]
        prompts = list(prompts)
        if not prompts:
            raise InputError("EditPanel needs at least one source caption")
        self.prompt = W.Combobox(value=prompts[0], options=prompts, ensure_option=False, continuous_update=False,
                                 description="source", layout=W.Layout(width="480px"))
        self.seed = W.BoundedIntText(value=seed, min=0, max=10**9, description="seed", layout=W.Layout(width="160px"))
        self.how = W.ToggleButtons(options=["render", "generate"], value="render" if shapes and how != "generate"
                                   else "generate", description="image", style={"button_width": "80px"})
        if not shapes:
            self.how.layout.display = "none"
        grid = session.strengths
        step = min(np.diff(grid)) if len(grid) > 1 else 1.0
        self.strength = W.FloatSlider(value=float(np.clip(strength, grid[0], grid[-1])), min=grid[0], max=grid[-1],
                                      step=float(step), continuous_update=False, description="strength λ",
                                      readout_format=".2f", layout=W.Layout(width="420px"))
        self.strength.add_class("explore-strength")
        self.method = W.ToggleButtons(options=list(METHODS), value=method, description="method",
                                      style={"button_width": "64px"})
        if shapes:
            keys = session.world.keys()
            attribute = attribute or next(k for k in keys if k.endswith("color"))
            self.attribute = W.Dropdown(options=keys, value=attribute, description="attribute")
            self.target = W.Dropdown(options=list(session.world.values(attribute)), description="target")
            self._wanted_target = target
            self.source_word = None
            self.preserve = {k: W.Checkbox(value=True, description=k, indent=False, layout=W.Layout(width="110px"))
                             for k in keys}
            preserve_box = W.HBox([W.HTML("<b>preserve</b>&nbsp;"), *self.preserve.values()])
        else:
            self.attribute = W.Text(value=attribute or "attribute", description="attribute")
            self.source_word = W.Text(value=source_word, description="change", continuous_update=False)
            self.target = W.Text(value=target or "", description="into", continuous_update=False)
            self._wanted_target = None
            self.preserve = W.Text(value="", placeholder="red>blue, day>night", description="preserve",
                                   continuous_update=False)
            preserve_box = self.preserve
        self.sweep_button = W.Button(description="sweep all strengths", icon="th",
                                     tooltip=f"one batched run over λ = {', '.join(f'{s:g}' for s in grid)}")
        self.sweep_button.on_click(lambda _b: self.run_sweep())
        self.auto_sweep = W.Checkbox(value=auto_sweep, description="auto sweep", indent=False)
        w = display_size
        self.source_image = _image_widget("explore-source", w)
        self.reconstruction_image = _image_widget("explore-reconstruction", w)
        self.result_image = _image_widget("explore-result", w)
        self.strip_image = _image_widget("explore-strip")
        self.trace_image = _image_widget("explore-trace")
        self.latent_image = _image_widget("explore-latent")
        self.latent_info = W.HTML()
        self.strip_label = W.HTML()

        for wdg in (self.prompt, self.seed, self.how):
            self._observe(wdg, "source")
        self._observe(self.attribute, "attribute")
        for wdg in (self.target, self.method, self.auto_sweep) + ((self.source_word,) if self.source_word else ()):
            self._observe(wdg, "edit")
        if isinstance(self.preserve, dict):
            for cb in self.preserve.values():
                self._observe(cb, "edit")
        else:
            self._observe(self.preserve, "edit")
        self._observe(self.strength, "strength")

        word_row = [self.source_word, self.target] if self.source_word else [self.target]
        controls = W.VBox([
            W.HBox([self.prompt, self.seed]), self.how,
            W.HBox([self.attribute, *word_row]), self.method, preserve_box,
            W.HBox([self.strength, self.sweep_button, self.auto_sweep]),
        ])
        col = w + 16
        images = W.HBox([
            _titled("source", self.source_image, col), _titled("reconstruction", self.reconstruction_image, col),
            _titled("edit", self.result_image, col), W.VBox([W.HTML("<b>joint latent</b>"), self.latent_info]),
        ])
        self.widget = W.VBox([
            controls, self.status, images,
            W.VBox([W.HTML("<b>sweep</b>"), self.strip_label, self.strip_image]),
            W.HBox([_titled("per-step trace", self.trace_image), _titled("z, c, p", self.latent_image)]),
        ])
        self.widget.add_class("explore-edit-panel")
        self.refresh("source")

    # -- reading and driving -----------------------------------------------------------------------

    @property
    def result_png(self) -> bytes:
        return self.result_image.value

    def preserve_value(self):
        if isinstance(self.preserve, dict):
            return [k for k, cb in self.preserve.items() if cb.value and not cb.disabled]
        return self.preserve.value

    def set(self, **values) -> None:
        """Set several widgets at once, then redraw once, e.g. ``panel.set(attribute="size", target="large")``.

        Keys: prompt, seed, how, attribute, target, source_word, method, strength, auto_sweep,
        preserve (a list of factor names on ShapesWorld, a pair text elsewhere).
        """
        allowed = {"prompt", "seed", "how", "attribute", "target", "source_word", "method", "strength",
                   "auto_sweep", "preserve"}
        unknown = set(values) - allowed
        if unknown:
            raise InputError(f"unknown panel setting(s) {sorted(unknown)}; known: {', '.join(sorted(allowed))}")
        source_changed = any(k in values for k in ("prompt", "seed", "how"))
        with self._quiet():
            for k in ("prompt", "seed", "how"):
                if k in values:
                    getattr(self, k).value = values[k]
            if "attribute" in values:
                self.attribute.value = values["attribute"]
            if "target" in values:
                self._wanted_target = values["target"]
                if not self.session.shapes:
                    self.target.value = values["target"]
            if "source_word" in values and self.source_word is not None:
                self.source_word.value = values["source_word"]
            if "method" in values:
                self.method.value = values["method"]
            if "auto_sweep" in values:
                self.auto_sweep.value = values["auto_sweep"]
            if "preserve" in values:
                if isinstance(self.preserve, dict):
                    keep = set(values["preserve"])
                    for k, cb in self.preserve.items():
                        cb.value = k in keep
                else:
                    self.preserve.value = values["preserve"]
            if "strength" in values:
                self.strength.value = values["strength"]
        self.refresh("source" if source_changed else "attribute")

    def key(self) -> EditKey:
        """The `EditKey` of what the widgets say now (raises `InputError` for bad input)."""
        if self._source is None:
            raise InputError("no source yet: pick a caption")
        if self.session.shapes:
            return self.session.plan(self._source, self.attribute.value, self.target.value, self.method.value,
                                     self.preserve_value())
        return self.session.plan(self._source, self.attribute.value, self.target.value, self.method.value,
                                 self.preserve_value(), source_value=self.source_word.value)

    # -- callbacks (thin) ------------------------------------------------------------------------

    def refresh(self, level: str = "all") -> None:
        """Recompute what ``level`` invalidates: ``"source"``, ``"attribute"``, ``"edit"`` or ``"strength"``."""
        self._guard(lambda: self._refresh(level))

    def run_sweep(self) -> None:
        """Compute (or fetch) the batched sweep of the current edit; afterwards slider moves are lookups."""
        def go():
            key = self.key()
            if not self.session.has_sweep(key):
                self._say(f"sweeping {len(self.session.strengths)} strengths in one batch…")
            t0 = time.perf_counter()
            self.session.sweep(key)
            self._draw(key, t0)

        self._guard(go)

    def _refresh(self, level: str) -> None:
        t0 = time.perf_counter()
        if level in ("source", "all") or self._source is None:
            self._source = None
            self._say("encoding the source…")
            src = self.session.source(self.prompt.value, int(self.seed.value), self.how.value)
            self._source = src
            self.source_image.value = png_bytes(src.image, self.display_size)
            if src.key not in self._latent_png:
                self._latent_png[src.key] = figure_png(plot_joint_latent(src.latent))
            self.latent_image.value = self._latent_png[src.key]
            self.latent_info.value = latent_table(src.latent) + self._labels_html(src)
        if level in ("source", "attribute", "all"):
            self._sync_targets()
        key = self.key()
        if self.auto_sweep.value and not self.session.has_sweep(key):
            self._say(f"sweeping {len(self.session.strengths)} strengths in one batch…")
            self.session.sweep(key)
        self._draw(key, t0)

    def _labels_html(self, src: SourceImage) -> str:
        if not src.labels:
            return ""
        how = {"render": "exact (rendered)", "generate": "read from pixels", "image": "read from pixels"}[src.how]
        items = ", ".join(f"{k}={v}" for k, v in src.labels.items())
        return f"<div style='font-size:85%'>labels, {how}: {items}</div>"

    def _sync_targets(self) -> None:
        if not self.session.shapes:
            return
        attr = self.attribute.value
        current = (self._source.labels or {}).get(attr) if self._source else None
        options = [v for v in self.session.world.values(attr) if v != current]
        asked = self._wanted_target
        self._wanted_target = None
        wanted = asked if asked is not None else self.target.value
        with self._quiet():
            self.target.options = options
            self.target.value = wanted if wanted in options else options[0]
            for k, cb in self.preserve.items():
                cb.disabled = k == attr
        if asked is not None and asked not in options:
            why = f"the source's {attr} is already {asked!r}" if asked == current else f"{asked!r} is not a {attr}"
            raise InputError(f"{why}; pick a target from {', '.join(options)}")

    def _draw(self, key: EditKey, t0: float) -> None:
        s = float(self.strength.value)
        fr = self.session.frame(key, s)
        pk = (key, fr.strength)
        pngs = self._png.get(pk)
        if pngs is None:
            title = f"{key.method}, {key.attribute}: {key.v_minus} → {key.v_plus}, λ = {fr.strength:g}"
            pngs = {"result": png_bytes(fr.image, self.display_size),
                    "rec": png_bytes(fr.reconstruction, self.display_size),
                    "trace": figure_png(plot_trace(fr.trace, title))}
            self._png[pk] = pngs
            while len(self._png) > 256:
                self._png.popitem(last=False)
        else:
            self._png.move_to_end(pk)
        self.result_image.value = pngs["result"]
        self.reconstruction_image.value = pngs["rec"]
        self.trace_image.value = pngs["trace"]
        self._draw_strip(key)
        dt = time.perf_counter() - t0
        how = "cached" if fr.cached else f"computed in {fr.seconds:.1f} s"
        self._say(f"{key.method} · {key.attribute}: {key.v_minus} → {key.v_plus} · λ = {fr.strength:g} · {how} · "
                  f"redraw {dt:.2f} s")

    def _draw_strip(self, key: EditKey) -> None:
        if not self.session.has_sweep(key):
            self.strip_image.value = b""
            self.strip_image.layout.display = "none"
            self.strip_label.value = ("<i>press “sweep all strengths” to compute the whole strip in one batched "
                                      "run; slider moves are then lookups</i>")
            return
        pk = (key, "strip")
        if pk not in self._png:
            sw = self.session.sweep(key)
            self._png[pk] = raw_png(image_strip([sw.source_image, *sw.images], self.display_size // 2))
        _set_png(self.strip_image, self._png[pk])
        self.strip_image.layout.display = None
        grid = ", ".join(f"{s:g}" for s in self.session.strengths)
        self.strip_label.value = f"source, then λ = {grid} (λ = 0 is the reconstruction)"


class GeometryPanel(_Panel):
    """PCA / UMAP of a set of directions coloured by attribute; the selected direction's edit beside it.

    ``prompt``: a base source caption (ShapesWorld). Selecting ``attr: a → b`` edits a render of
    the base scene with ``attr = a`` toward ``b`` through the session (so it is cached like the
    tour). Widgets: ``projection``, ``kind``, ``scale`` (unit-normalised or raw directions),
    ``direction`` (a dropdown of names), ``strength``,
    ``method``; images ``map_image`` and ``edit_image``.
    """

    def __init__(self, session: EditSession, directions: Sequence, prompt: str | None = None, *, seed: int = 0,
                 strength: float = 1.0, method: str = "hsds", projections: Sequence[str] = ("pca", "umap"),
                 kinds: Sequence[str] = ("dc", "dp", "dc+dp"), display_size: int = DISPLAY_SIZE):
        if not session.shapes:
            raise InputError("GeometryPanel shows edits of ShapesWorld scenes; use the geometry functions elsewhere")
        self.session = session
        self.display_size = display_size
        self._init_status()
        self.map = DirectionMap(directions, seed=seed)
        for d in self.map.directions:
            session.add_direction(d)
        self.base = session.world.labels_from_caption(prompt or session.world.captions(1, seed)[0])
        self.seed_value = seed
        self._png: dict[tuple, bytes] = {}
        self.projection = W.ToggleButtons(options=list(projections), value=projections[0], description="view")
        self.kind = W.ToggleButtons(options=list(kinds), value=kinds[0], description="part")
        self.scale = W.ToggleButtons(options=["unit", "raw"], value="unit", description="length",
                                     tooltips=["every direction normalised: orientations only", "lengths kept"])
        self.direction = W.Dropdown(options=self.map.names, value=self.map.names[0], description="direction",
                                    layout=W.Layout(width="360px"))
        grid = session.strengths
        self.strength = W.SelectionSlider(options=list(grid), value=min(grid, key=lambda s: abs(s - strength)),
                                          description="strength λ", continuous_update=False)
        self.method = W.ToggleButtons(options=list(METHODS), value=method, description="method",
                                      style={"button_width": "64px"})
        self.map_image = _image_widget("explore-map")
        self.edit_image = _image_widget("explore-geometry-edit")
        self.edit_label = W.HTML()
        for wdg, level in ((self.projection, "map"), (self.kind, "map"), (self.scale, "map"), (self.direction, "all"),
                           (self.strength, "edit"), (self.method, "edit")):
            self._observe(wdg, level)
        self.widget = W.VBox([
            W.HBox([self.projection, self.kind, self.scale]), W.HBox([self.direction, self.strength]), self.method,
            self.status,
            W.HBox([self.map_image, W.VBox([W.HTML("<b>source · reconstruction · edit</b>"), self.edit_image,
                                            self.edit_label])]),
        ])
        self.refresh("all")

    @property
    def selected(self) -> int:
        return self.map.names.index(self.direction.value)

    def refresh(self, level: str = "all") -> None:
        self._guard(lambda: self._refresh(level))

    def _refresh(self, level: str) -> None:
        t0 = time.perf_counter()
        if level in ("map", "all"):
            k = (self.kind.value, self.projection.value, self.selected, self.scale.value)
            if k not in self._png:
                if self.projection.value == "umap":
                    self._say("computing UMAP (the first call compiles numba code; cached afterwards)…")
                self._png[k] = figure_png(self.map.figure(*k))
            self.map_image.value = self._png[k]
        if level in ("edit", "all"):
            d = self.map.directions[self.selected]
            labels = {**self.base, d.attribute: d.source}
            src = self.session.source(self.session.world.caption(labels, template=0), self.seed_value, "render")
            key = self.session.plan(src, d.attribute, d.target, self.method.value)
            fr = self.session.frame(key, self.strength.value)
            strip = image_strip([src.image, fr.reconstruction, fr.image], self.display_size)
            _set_png(self.edit_image, raw_png(strip))
            norms = ", ".join(f"|{k}| = {v:.2f}" for k, v in d.norms().items())
            self.edit_label.value = f"<div style='font-size:85%'>{src.prompt}<br>{d.name}: {norms}</div>"
        self._say(f"{self.direction.value} · redraw {time.perf_counter() - t0:.2f} s")


class AttentionPanel(_Panel):
    """Attention of image patches on a word of the prompt, per layer and noise level ``t`` (sliders).

    All layers and every ``t`` of ``timesteps`` come from ONE batched model call per word
    (`explore.interp.attention.attention_map`), so the sliders only look maps up. ``layer`` "mean"
    averages the layers (each renormalised first); widgets ``word``, ``layer``, ``t``; image
    ``overlay_image``; ``grid_image`` shows every layer x ``t``.
    """

    def __init__(self, session: EditSession, prompt: str | None = None, *, seed: int = 0, how: str = "auto",
                 timesteps: Sequence[float] = (0.2, 0.4, 0.6, 0.8), words: Sequence[str] | None = None,
                 display_size: int = DISPLAY_SIZE):
        self.session = session
        self.display_size = display_size
        self._init_status()
        if prompt is None:
            prompt = session.world.captions(1, seed)[0] if session.shapes else "a photo of a red car"
        self.source = self._guard(lambda: session.source(prompt, seed, how))
        if self.source is None:
            raise InputError(one_line(self.last_error)) from self.last_error
        self.timesteps = [round(float(t), 4) for t in timesteps]
        if words is None:
            words = self._default_words(self.source.prompt)
        words = list(words)
        if not words:
            raise InputError("no words to show attention for; pass words=")
        self._maps: dict[str, Any] = {}
        self._png: dict[tuple, bytes] = {}
        self.word = W.Dropdown(options=words, value=words[0], description="word")
        self.layer = W.SelectionSlider(options=["mean"], value="mean", description="layer", continuous_update=False)
        self.t = W.SelectionSlider(options=["mean", *self.timesteps], value="mean", description="t",
                                   continuous_update=False)
        self.overlay_image = _image_widget("explore-attention", display_size)
        self.grid_image = _image_widget("explore-attention-grid")
        self._observe(self.word, "word")
        self._observe(self.layer, "map")
        self._observe(self.t, "map")
        self.widget = W.VBox([
            W.HTML(f"<b>{self.source.prompt}</b>"), W.HBox([self.word, self.layer, self.t]), self.status,
            W.HBox([_titled("attention on the word", self.overlay_image), _titled("every layer x t",
                                                                                  self.grid_image)]),
        ])
        self.refresh("word")

    def _default_words(self, prompt: str) -> list[str]:
        words = [w for w in re.findall(r"[A-Za-z]+", prompt)]
        if self.session.shapes:
            world = self.session.world
            values = {v for k in world.keys() for v in world.values(k)}
            words = [w for w in words if w in values]
        else:
            words = [w for w in words if len(w) > 2]
        return list(dict.fromkeys(words))

    def maps(self, word: str):
        """`explore.interp.attention.AttentionMaps` of ``word`` (every layer, every ``t``), cached."""
        if word not in self._maps:
            self._maps[word] = attention_map(self.session.pipe, self.source.latent, word, t=self.timesteps,
                                             seed=self.session.seed)
        return self._maps[word]

    def refresh(self, level: str = "all") -> None:
        self._guard(lambda: self._refresh(level))

    def _refresh(self, level: str) -> None:
        t0 = time.perf_counter()
        maps = self.maps(self.word.value)
        if level in ("word", "all"):
            layers = ["mean", *[str(i) for i in range(len(maps.layers()))]]
            with self._quiet():
                if list(self.layer.options) != layers:
                    self.layer.options = layers
                    self.layer.value = "mean"
            gk = (self.word.value, "grid")
            if gk not in self._png:
                self._png[gk] = figure_png(attention_grid(maps, self.source.image))
            self.grid_image.value = self._png[gk]
        layer, t = self.layer.value, self.t.value
        k = (self.word.value, layer, t)
        if k not in self._png:
            names = None if layer == "mean" else [maps.layers()[int(layer)]]
            ts = None if t == "mean" else [t]
            self._png[k] = raw_png(attention_overlay(self.source.image, maps.mean(names, ts), self.display_size))
        self.overlay_image.value = self._png[k]
        self._say(f"{self.word.value!r} · layer {layer} · t {t} · redraw {time.perf_counter() - t0:.2f} s")


class ProbePanel(_Panel):
    """Probe accuracy against depth for chosen factors, at the best ``t`` per site or one ``t``."""

    def __init__(self, results):
        self.results = results
        self._init_status()
        self._png: dict[tuple, bytes] = {}
        self.factors = W.SelectMultiple(options=list(results.factors), value=tuple(results.factors),
                                        description="factors", rows=min(6, len(results.factors)))
        self.t = W.Dropdown(options=[("best per site", "best")] + [(f"{t:g}", t) for t in results.timesteps],
                            value="best", description="t")
        self.plot_image = _image_widget("explore-probe")
        self._observe(self.factors, "plot")
        self._observe(self.t, "plot")
        self.widget = W.VBox([W.HBox([self.factors, self.t]), self.status, self.plot_image])
        self.refresh()

    def refresh(self, level: str = "all") -> None:
        self._guard(self._refresh)

    def _refresh(self) -> None:
        factors = list(self.factors.value)
        if not factors:
            raise InputError("select at least one factor")
        t = None if self.t.value == "best" else self.t.value
        k = (tuple(factors), t)
        if k not in self._png:
            self._png[k] = figure_png(plot_accuracy(self.results, factors, t))
        self.plot_image.value = self._png[k]
        self._say(f"{len(factors)} factor(s), t = {'best per site' if t is None else t}")


class SteeringPanel(_Panel):
    """Activation steering along a probe's class-mean direction, next to the EIM edit of the same change.

    ``probes``: `explore.interp.probe.ProbeResults`; ``dataset``: its `ActivationDataset` (sets the unit of
    ``alpha``: the median norm of the pooled activations at the site, so ``alpha = 1`` moves by a
    typical activation's length). Widgets ``factor``, ``value``, ``site``, ``alpha``, ``method``;
    image ``compare_image`` (source | steered | EIM edit at λ = 1).
    """

    def __init__(self, session: EditSession, probes, prompt: str | None = None, dataset=None, *, seed: int = 0,
                 t_render: float = 0.6, method: str = "hsds", display_size: int = DISPLAY_SIZE):
        self.session, self.probes, self.dataset = session, probes, dataset
        self.t_render = t_render
        self.display_size = display_size
        self._init_status()
        self._png: dict[tuple, bytes] = {}
        prompt = prompt or session.world.captions(1, seed)[0]
        self.source = self._guard(lambda: session.source(prompt, seed, "auto"))
        if self.source is None:
            raise InputError(one_line(self.last_error)) from self.last_error
        factors = list(probes.factors)
        self.factor = W.Dropdown(options=factors, value=factors[0], description="factor")
        self.value = W.Dropdown(options=[], description="toward")
        self.site = W.Dropdown(options=list(probes.sites), description="site")
        self.alpha = W.FloatSlider(value=2.0, min=0.0, max=8.0, step=0.5, description="α", continuous_update=False)
        self.method = W.ToggleButtons(options=list(METHODS), value=method, description="EIM",
                                      style={"button_width": "64px"})
        self.compare_image = _image_widget("explore-steering")
        self._observe(self.factor, "factor")
        for wdg in (self.value, self.site, self.alpha, self.method):
            self._observe(wdg, "draw")
        self.widget = W.VBox([
            W.HTML(f"<b>{self.source.prompt}</b>"), W.HBox([self.factor, self.value, self.site]),
            W.HBox([self.alpha, self.method]), self.status,
            _titled("source · steered activations · EIM edit (λ = 1)", self.compare_image),
        ])
        self.refresh("factor")

    def _vectors(self, factor: str) -> dict[tuple[str, float, str], np.ndarray]:
        return {(s, t, v): vec for s, t, v, vec in self.probes.probe_directions(factor, kind="mean")}

    def scale(self, site: str, t: float) -> float:
        if self.dataset is None:
            return 1.0
        X = self.dataset.get(site, t)
        return float(np.median(np.linalg.norm(X.reshape(len(X), -1), axis=1))) or 1.0

    def refresh(self, level: str = "all") -> None:
        self._guard(lambda: self._refresh(level))

    def _refresh(self, level: str) -> None:
        t0 = time.perf_counter()
        factor = self.factor.value
        if level in ("factor", "all"):
            best_site, _, _ = self.probes.best(factor)
            values = sorted({v for (_, _, v) in self._vectors(factor)})
            current = (self.source.labels or {}).get(factor)
            options = [v for v in values if v != current] or values
            with self._quiet():
                self.value.options = options
                self.value.value = options[0]
                self.site.value = best_site
        site, value = self.site.value, self.value.value
        t, _ = self.probes.best_over_t(factor, site)
        k = (factor, value, site, float(self.alpha.value), self.method.value)
        if k not in self._png:
            vec = self._vectors(factor)[(site, t, value)] * self.scale(site, t)
            steered = steered_image(self.session.pipe, self.source.latent, site, vec, self.alpha.value,
                                    t_render=self.t_render, seed=self.session.seed)
            images = [self.source.image, steered]
            try:
                key = self.session.plan(self.source, factor, value, self.method.value)
                images.append(self.session.frame(key, 1.0).image)
            except InputError as e:  # e.g. the source already has that value: show steering alone
                self._say(one_line(e), error=True)
            self._png[k] = raw_png(image_strip(images, self.display_size))
        _set_png(self.compare_image, self._png[k])
        self._say(f"steer {site} at t = {t:g} toward {factor} = {value}, α = {self.alpha.value:g} · "
                  f"redraw {time.perf_counter() - t0:.2f} s")


__all__ = [
    "DEFAULT_STRENGTHS", "AttentionPanel", "DirectionMap", "EditKey", "EditPanel", "EditSession", "Frame",
    "GeometryPanel", "ProbePanel", "SourceImage", "SteeringPanel", "parse_pairs",
]
