"""Interactive panels for the notebooks (ipywidgets), thin on top of `explore.views.session`.

The panels — `EditPanel`, `GeometryPanel`, `MetricPanel` here; `AttentionPanel`, `ProbePanel`,
`SteeringPanel` in `explore.views.interp_panels` (importable from here) — only read widget
values, call the session or an analysis function, and put PNG bytes into ``ipywidgets.Image``
widgets. Every panel can be driven from code (``panel.set(...)`` or assigning
widget values) and read back (``panel.result_png``, ``panel.status.value``), which is how the
tests and the browser check use them.

Errors a user can cause (`explore.errors.ExploreError`) show as one line in the panel's status
label, never as a traceback; anything else is a bug and is raised after the status says so.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

import ipywidgets as W
import numpy as np

from ..editing.methods import METHODS
from ..errors import InputError
from ..evaluation.scoring import score_edit
from .interp_panels import AttentionPanel, ProbePanel, SteeringPanel
from .panel_base import Panel, image_widget, set_png, titled
from .pictures import (
    DISPLAY_SIZE,
    figure_png,
    image_strip,
    latent_table,
    png_bytes,
    raw_png,
)
from .plots import plot_joint_latent, plot_trace, sde_figure
from .session import DEFAULT_STRENGTHS, DirectionMap, EditKey, EditSession, Frame, SourceImage, parse_pairs


def describe(key: EditKey) -> str:
    """``"color: red → blue"``, with a composed edit's other parts joined by ``+``."""
    parts = [(key.attribute, key.v_minus, key.v_plus)] + [(a, vm, vp) for a, vm, vp, _ in key.also]
    return " + ".join(f"{a}: {vm} → {vp}" for a, vm, vp in parts)


class EditPanel(Panel):
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
        self._wanted_also: str | None = None
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
                                      style={"button_width": "auto"})
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
            # a composed edit: a second attribute changed at the same time (none by default)
            self.also_attribute = W.Dropdown(options=["(none)", *keys], value="(none)", description="and also")
            self.also_target = W.Dropdown(options=[], description="to")
            also_box = W.HBox([self.also_attribute, self.also_target])
        else:
            self.attribute = W.Text(value=attribute or "attribute", description="attribute")
            self.source_word = W.Text(value=source_word, description="change", continuous_update=False)
            self.target = W.Text(value=target or "", description="into", continuous_update=False)
            self._wanted_target = None
            self.preserve = W.Text(value="", placeholder="auto (default), or red>blue, day>night",
                                   description="preserve", continuous_update=False)
            preserve_box = self.preserve
            self.also_attribute = None
            self.also_target = W.Text(value="", placeholder="car>truck (a second change, same time)",
                                      description="and also", continuous_update=False)
            also_box = self.also_target
        self.sweep_button = W.Button(description="sweep all strengths", icon="th",
                                     tooltip=f"one batched run over λ = {', '.join(f'{s:g}' for s in grid)}")
        self.sweep_button.on_click(lambda _b: self.run_sweep())
        self.auto_sweep = W.Checkbox(value=auto_sweep, description="auto sweep", indent=False)
        w = display_size
        self.source_image = image_widget("explore-source", w)
        self.reconstruction_image = image_widget("explore-reconstruction", w)
        self.result_image = image_widget("explore-result", w)
        self.strip_image = image_widget("explore-strip")
        self.trace_image = image_widget("explore-trace")
        self.latent_image = image_widget("explore-latent")
        self.latent_info = W.HTML()
        self.strip_label = W.HTML()

        for wdg in (self.prompt, self.seed, self.how):
            self._observe(wdg, "source")
        self._observe(self.attribute, "attribute")
        for wdg in (self.target, self.method, self.auto_sweep, self.also_target) + (
                (self.source_word,) if self.source_word else ()):
            self._observe(wdg, "edit")
        if self.also_attribute is not None:
            self._observe(self.also_attribute, "attribute")
        if isinstance(self.preserve, dict):
            for cb in self.preserve.values():
                self._observe(cb, "edit")
        else:
            self._observe(self.preserve, "edit")
        self._observe(self.strength, "strength")

        word_row = [self.source_word, self.target] if self.source_word else [self.target]
        controls = W.VBox([
            W.HBox([self.prompt, self.seed]), self.how,
            W.HBox([self.attribute, *word_row]), also_box, self.method, preserve_box,
            W.HBox([self.strength, self.sweep_button, self.auto_sweep]),
        ])
        col = w + 16
        images = W.HBox([
            titled("source", self.source_image, col), titled("reconstruction", self.reconstruction_image, col),
            titled("edit", self.result_image, col), W.VBox([W.HTML("<b>joint latent</b>"), self.latent_info]),
        ])
        self.widget = W.VBox([
            controls, self.status, images,
            W.VBox([W.HTML("<b>sweep</b>"), self.strip_label, self.strip_image]),
            W.HBox([titled("per-step trace", self.trace_image), titled("z, c, p", self.latent_image)]),
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
        preserve (a list of factor names on ShapesWorld, a pair text elsewhere), also (a composed
        edit's second change: ``(attribute, target)`` on ShapesWorld, ``"car>truck"`` elsewhere;
        None for none).
        """
        allowed = {"prompt", "seed", "how", "attribute", "target", "source_word", "method", "strength",
                   "auto_sweep", "preserve", "also"}
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
            if "also" in values:
                also = values["also"]
                if self.also_attribute is not None:
                    self.also_attribute.value = "(none)" if also is None else also[0]
                    self._wanted_also = None if also is None else also[1]
                else:
                    self.also_target.value = also or ""
        self.refresh("source" if source_changed else "attribute")

    def key(self) -> EditKey:
        """The `EditKey` of what the widgets say now (raises `InputError` for bad input)."""
        if self._source is None:
            raise InputError("no source yet: pick a caption")
        if self.session.shapes:
            also = [] if self.also_attribute.value == "(none)" or not self.also_target.value else [
                (self.also_attribute.value, self.also_target.value)]
            return self.session.plan(self._source, self.attribute.value, self.target.value, self.method.value,
                                     self.preserve_value(), also=also)
        also = parse_pairs(self.also_target.value) if self.also_target.value.strip() else []
        return self.session.plan(self._source, self.attribute.value, self.target.value, self.method.value,
                                 self.preserve_value(), source_value=self.source_word.value, also=also)

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
        also = self.also_attribute.value
        also_options = [] if also in ("(none)", attr) else [
            v for v in self.session.world.values(also) if v != (self._source.labels or {}).get(also)]
        wanted_also = self._wanted_also if self._wanted_also is not None else self.also_target.value
        self._wanted_also = None
        with self._quiet():
            self.target.options = options
            self.target.value = wanted if wanted in options else options[0]
            self.also_target.options = also_options
            self.also_target.value = wanted_also if wanted_also in also_options else (
                also_options[0] if also_options else None)
            for k, cb in self.preserve.items():
                cb.disabled = k in (attr, also)
        if asked is not None and asked not in options:
            why = f"the source's {attr} is already {asked!r}" if asked == current else f"{asked!r} is not a {attr}"
            raise InputError(f"{why}; pick a target from {', '.join(options)}")

    def _draw(self, key: EditKey, t0: float) -> None:
        s = float(self.strength.value)
        fr = self.session.frame(key, s)
        pk = (key, fr.strength)
        pngs = self._png.get(pk)
        if pngs is None:
            title = f"{key.method}, {describe(key)}, λ = {fr.strength:g}"
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
        self._say(f"{key.method} · {describe(key)} · λ = {fr.strength:g} · {how} · "
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
        set_png(self.strip_image, self._png[pk])
        self.strip_image.layout.display = None
        grid = ", ".join(f"{s:g}" for s in self.session.strengths)
        self.strip_label.value = f"source, then λ = {grid} (λ = 0 is the reconstruction)"


class GeometryPanel(Panel):
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
                                      style={"button_width": "auto"})
        self.map_image = image_widget("explore-map")
        self.edit_image = image_widget("explore-geometry-edit")
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
        self.widget.add_class("explore-geometry-panel")
        self.scale.add_class("explore-geometry-scale")
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
            set_png(self.edit_image, raw_png(strip))
            norms = ", ".join(f"|{k}| = {v:.2f}" for k, v in d.norms().items())
            self.edit_label.value = f"<div style='font-size:85%'>{src.prompt}<br>{d.name}: {norms}</div>"
        self._say(f"{self.direction.value} · redraw {time.perf_counter() - t0:.2f} s")



class MetricPanel(Panel):
    """The disentanglement metric of one edit, live: pick a benchmark item, a method and a strength.

    ``items``: `explore.evaluation.items.BenchItem` s (their exact masks and labels are used);
    ``scorer``: an `explore.evaluation.scorers.Scorer` (the world's readers on ShapesWorld).
    Widgets ``item`` (dropdown), ``method``, ``strength`` (the session's grid); image
    ``metric_image`` shows `explore.views.plots.sde_figure` (source, reconstruction, edit, change,
    mask, leak) and ``scores`` the numbers: E, leak, R, SDE, success and retention.
    """

    def __init__(self, session: EditSession, items: Sequence, scorer, *, method: str = "hsds", strength: float = 1.0):
        items = list(items)
        if not items:
            raise InputError("MetricPanel needs at least one benchmark item")
        if not session.shapes:
            raise InputError("MetricPanel scores edits with a world's readers; use an embedded world's model")
        self.session, self.items, self.scorer = session, items, scorer
        self._init_status()
        self._png: dict[tuple, tuple[bytes, str]] = {}
        labels = [(f"{i}: {it.attribute} {it.source} → {it.target}", i) for i, it in enumerate(items)]
        self.item = W.Dropdown(options=labels, value=0, description="item", layout=W.Layout(width="360px"))
        grid = session.strengths
        self.strength = W.SelectionSlider(options=list(grid), value=min(grid, key=lambda s: abs(s - strength)),
                                          description="strength λ", continuous_update=False)
        self.strength.add_class("explore-metric-strength")
        self.method = W.ToggleButtons(options=list(METHODS), value=method, description="method",
                                      style={"button_width": "auto"})
        self.metric_image = image_widget("explore-metric")
        self.scores = W.HTML()
        for wdg in (self.item, self.strength, self.method):
            self._observe(wdg, "all")
        self.widget = W.VBox([W.HBox([self.item, self.strength]), self.method, self.status, self.scores,
                              self.metric_image])
        self.widget.add_class("explore-metric-panel")
        self.refresh()

    def refresh(self, level: str = "all") -> None:
        self._guard(self._refresh)

    def _refresh(self) -> None:
        t0 = time.perf_counter()
        it = self.items[self.item.value]
        k = (self.item.value, self.method.value, float(self.strength.value))
        if k not in self._png:
            src = self.session.source(it.prompt, image=it.load_image())
            key = self.session.plan(src, it.attribute, it.target, self.method.value, source_value=it.source)
            fr = self.session.frame(key, self.strength.value)
            x, x_rec, x_edit = it.load_image(), np.asarray(fr.reconstruction), np.asarray(fr.image)
            sc = score_edit(self.scorer, it.attribute, it.target, x_edit, x_rec=x_rec, x=x, labels=it.labels,
                            mask=it.load_mask())
            found = self.scorer.object_masks([x_edit], it.attribute)[0] if hasattr(self.scorer, "object_masks") \
                else None
            mask = it.load_mask() if found is None else it.load_mask() | found
            fig = sde_figure(x, x_rec, x_edit, mask, sc, it.attribute)
            text = (f"E = {sc['E']:+.2f} · leak = {sc['leak']:.2f} · R = {sc['R']:.3f} · <b>SDE = {sc['sde']:.3f}</b>"
                    f" · success {sc['success']:.0f} · retention {sc['retention']:.2f}")
            self._png[k] = (figure_png(fig), text)
        png, text = self._png[k]
        set_png(self.metric_image, png)
        self.scores.value = f"<div style='font-size:90%'>{text}</div>"
        self._say(f"{it.attribute}: {it.source} → {it.target} · {self.method.value} · λ = {self.strength.value:g} · "
                  f"redraw {time.perf_counter() - t0:.2f} s")


__all__ = [
    "DEFAULT_STRENGTHS", "AttentionPanel", "DirectionMap", "EditKey", "EditPanel", "EditSession", "Frame",
    "GeometryPanel", "MetricPanel", "Panel", "ProbePanel", "SourceImage", "SteeringPanel", "parse_pairs",
]
