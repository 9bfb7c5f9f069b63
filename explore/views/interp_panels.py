"""Panels for looking inside the model: attention maps, probe accuracy, activation steering."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import numpy as np

from ..editing.methods import METHODS
from ..errors import InputError
from ..interp.attention import attention_map
from ..interp.steering import steered_image
from .panel_base import Panel, image_widget, set_png, titled
from .pictures import DISPLAY_SIZE, attention_overlay, figure_png, image_strip, one_line, raw_png
from .plots import attention_grid, plot_accuracy
from .session import EditSession


class AttentionPanel(Panel):
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
        self.overlay_image = image_widget("explore-attention", display_size)
        self.grid_image = image_widget("explore-attention-grid")
        self._observe(self.word, "word")
        self._observe(self.layer, "map")
        self._observe(self.t, "map")
        self.widget = W.VBox([
            W.HTML(f"<b>{self.source.prompt}</b>"), W.HBox([self.word, self.layer, self.t]), self.status,
            W.HBox([titled("attention on the word", self.overlay_image), titled("every layer x t",
                                                                                  self.grid_image)]),
        ])
        self.widget.add_class("explore-attention-panel")
        self.t.add_class("explore-attention-t")
        self.layer.add_class("explore-attention-layer")
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


class ProbePanel(Panel):
    """Probe accuracy against depth for chosen factors, at the best ``t`` per site or one ``t``."""

    def __init__(self, results):
        self.results = results
        self._init_status()
        self._png: dict[tuple, bytes] = {}
        self.factors = W.SelectMultiple(options=list(results.factors), value=tuple(results.factors),
                                        description="factors", rows=min(6, len(results.factors)))
        self.t = W.Dropdown(options=[("best per site", "best")] + [(f"{t:g}", t) for t in results.timesteps],
                            value="best", description="t")
        self.plot_image = image_widget("explore-probe")
        self._observe(self.factors, "plot")
        self._observe(self.t, "plot")
        self.widget = W.VBox([W.HBox([self.factors, self.t]), self.status, self.plot_image])
        self.widget.add_class("explore-probe-panel")
        self.t.add_class("explore-probe-t")
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


class SteeringPanel(Panel):
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
                                      style={"button_width": "auto"})
        self.compare_image = image_widget("explore-steering")
        self._observe(self.factor, "factor")
        for wdg in (self.value, self.site, self.alpha, self.method):
            self._observe(wdg, "draw")
        self.widget = W.VBox([
            W.HTML(f"<b>{self.source.prompt}</b>"), W.HBox([self.factor, self.value, self.site]),
            W.HBox([self.alpha, self.method]), self.status,
            titled("source · steered activations · EIM edit (λ = 1)", self.compare_image),
        ])
        self.widget.add_class("explore-steering-panel")
        self.alpha.add_class("explore-steering-alpha")
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
        set_png(self.compare_image, self._png[k])
        self._say(f"steer {site} at t = {t:g} toward {factor} = {value}, α = {self.alpha.value:g} · "
                  f"redraw {time.perf_counter() - t0:.2f} s")
