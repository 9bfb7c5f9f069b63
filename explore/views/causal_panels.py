"""Panels for the causal tools on the embedded worlds: patch a site, step through the lens, per-object masks.

Each panel reads its answers back with the world's own reader, so what it shows is checked against
the exact labels, not eyeballed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import ipywidgets as W
import numpy as np

from ..errors import InputError
from ..interp.causal import WINDOWS, edit_items
from ..interp.hooks import resolve_sites, run_with_cache
from ..interp.lens import lens
from ..interp.patching import bypass, patch
from ..interp.segmentation import METHODS, object_masks
from ..interp.studies import iou
from ..pipeline.latent import encode
from ..pipeline.sampling import generate
from ..pipeline.spec import spec
from ..worlds import require_world
from .panel_base import Panel, image_widget, titled
from .pictures import DISPLAY_SIZE, image_strip, mask_picture, png_bytes, raw_png


def _world(pipe, panel: str):
    return require_world(pipe, f"{panel} reads answers back from pixels: it needs an embedded world's model "
                               "(load_pipeline('shapes') or 'shapes-pairs')")


def _uint8(image) -> np.ndarray:
    return (np.clip(np.asarray(image), 0, 1) * 255).round().astype(np.uint8)


def _reading_line(world, image, labels: dict, keys: Sequence[str] | None = None) -> str:
    """``key value ✓`` / ``key value ✗ (label)`` for what the reader sees in ``image``."""
    reading = world.read(_uint8(image))
    cells = []
    for key in keys or labels:
        got = reading.get(key)
        cells.append(f"{key} {got} ✓" if got == labels[key] else f"{key} {got} ✗ ({labels[key]})")
    return " · ".join(cells)


INTERVENTIONS = {
    "restore": "restore: the clean run's site written into the corrupted run",
    "break": "break: the corrupted run's site written into the clean run",
    "bypass": "bypass: the site's block skipped in the clean run",
}


class PatchPanel(Panel):
    """Causal tracing by hand: an edit (source caption = corrupted run, edited caption = clean run, same
    seed), one site (block x stream), one window of ``t`` and an intervention; the result is generated
    and the world's reader says whether the edited attribute reads the clean or the corrupted value.

    Widgets: ``scene``, ``factor``, ``site``, ``window``, ``intervention``. Images: ``corrupted_image``,
    ``clean_image``, ``result_image``; ``verdict`` is the reading.
    """

    def __init__(self, pipe, seed: int = 0, *, factor: str | None = None, steps: int | None = None,
                 display_size: int = DISPLAY_SIZE):
        self.pipe, self.world = pipe, _world(pipe, "PatchPanel")
        self.steps, self.display_size = steps, display_size
        self._init_status()
        self._runs: dict = {}
        self._results: dict = {}
        factors = list(dict.fromkeys(k.rsplit(".", 1)[-1] for k in self.world.keys() if k != "background"))
        if factor is not None and factor not in factors:
            raise InputError(f"unknown factor {factor!r}; this world has {factors}")
        self.scene = W.BoundedIntText(value=seed, min=0, max=10**6, description="edit")
        self.factor = W.Dropdown(options=factors, value=factor or factors[0], description="factor")
        self.factor.add_class("explore-patch-factor")
        self.site = W.Dropdown(options=resolve_sites(pipe, None), description="site")
        self.window = W.Dropdown(options=[(f"t {lo:g}-{hi:g}", (lo, hi)) for lo, hi in WINDOWS], value=WINDOWS[0],
                                 description="window")
        self.intervention = W.ToggleButtons(options=[(k, k) for k in INTERVENTIONS], value="restore",
                                            tooltips=list(INTERVENTIONS.values()))
        self.caption = W.HTML()
        self.verdict = W.HTML()
        self.corrupted_image = image_widget("explore-patch-corrupted", display_size)
        self.clean_image = image_widget("explore-patch-clean", display_size)
        self.result_image = image_widget("explore-patch-result", display_size)
        for w, level in ((self.scene, "edit"), (self.factor, "edit"), (self.site, "result"),
                         (self.window, "result"), (self.intervention, "result")):
            self._observe(w, level)
        self.widget = W.VBox([
            W.HBox([self.scene, self.factor]), W.HBox([self.site, self.window]), self.intervention, self.caption,
            self.status,
            W.HBox([titled("corrupted (source caption)", self.corrupted_image),
                    titled("clean (edited caption)", self.clean_image),
                    titled("with the intervention", self.result_image)]),
            self.verdict,
        ])
        self.widget.add_class("explore-patch-panel")
        self.site.add_class("explore-patch-site")
        self.refresh("edit")

    def _generate(self, prompt: str, seed: int) -> np.ndarray:
        return np.asarray(generate(self.pipe, [prompt], seed=[seed], steps=self.steps, output_type="np"))[0]

    def run(self, seed: int, factor: str) -> dict:
        """The edit's two generations, with every site cached (cached per edit)."""
        key = (seed, factor)
        if key not in self._runs:
            item = edit_items(self.world, factor, 1, random.Random(f"patch-panel-{seed}-{factor}"))[0]
            corrupted, cache_c = run_with_cache(self.pipe, lambda: self._generate(item["source"], seed), branch="all")
            clean, cache_e = run_with_cache(self.pipe, lambda: self._generate(item["edited"], seed), branch="all")
            self._runs[key] = {"item": item, "corrupted": corrupted, "clean": clean, "cache_c": cache_c,
                               "cache_e": cache_e}
        return self._runs[key]

    def result(self, seed: int, factor: str, site: str, window: tuple[float, float], how: str) -> np.ndarray:
        """The generation with the intervention (cached)."""
        key = (seed, factor, site, tuple(window), how)
        if key not in self._results:
            r = self.run(seed, factor)
            it = r["item"]
            if how == "restore":
                with patch(self.pipe, {site: r["cache_e"]}, timesteps=window, branch="all"):
                    out = self._generate(it["source"], seed)
            elif how == "break":
                with patch(self.pipe, {site: r["cache_c"]}, timesteps=window, branch="all"):
                    out = self._generate(it["edited"], seed)
            elif how == "bypass":
                with bypass(self.pipe, site.rsplit(".", 1)[0], timesteps=window):
                    out = self._generate(it["edited"], seed)
            else:
                raise InputError(f"intervention must be one of {', '.join(INTERVENTIONS)}, got {how!r}")
            self._results[key] = out
        return self._results[key]

    def refresh(self, level: str = "all") -> None:
        self._guard(lambda: self._refresh(level))

    def _refresh(self, level: str) -> None:
        t0 = time.perf_counter()
        seed, factor = int(self.scene.value), self.factor.value
        r = self.run(seed, factor)
        it = r["item"]
        if level in ("edit", "all"):
            self.caption.value = (f"<b>{it['key']}</b>: {it['v_minus']} → {it['v_plus']}<br>"
                                  f"corrupted: <i>{it['source']}</i><br>clean: <i>{it['edited']}</i>")
            self.corrupted_image.value = png_bytes(r["corrupted"], self.display_size)
            self.clean_image.value = png_bytes(r["clean"], self.display_size)
        out = self.result(seed, factor, self.site.value, self.window.value, self.intervention.value)
        self.result_image.value = png_bytes(out, self.display_size)
        reads = {name: self.world.read(_uint8(im)).get(it["key"])
                 for name, im in (("corrupted", r["corrupted"]), ("clean", r["clean"]), ("result", out))}
        valid = reads["corrupted"] == it["v_minus"] and reads["clean"] == it["v_plus"]
        self.verdict.value = (
            f"{it['key']} reads: corrupted <b>{reads['corrupted']}</b>, clean <b>{reads['clean']}</b>, "
            f"with the intervention <b>{reads['result']}</b>"
            + ("" if valid else " — the edit itself did not take here (the study skips such items)"))
        self._say(f"{self.intervention.value} {self.site.value} in t {self.window.value[0]:g}-"
                  f"{self.window.value[1]:g} · {time.perf_counter() - t0:.2f} s")


class LensPanel(Panel):
    """The lens: the model's clean-image prediction after each block (its own head applied early), one
    render at one noise level ``t``; step through the blocks with the slider.

    Widgets: ``scene``, ``t``, ``block``. Images: ``render_image`` (the exact render), ``lens_image`` (the
    chosen block's prediction), ``strip_image`` (every block, the noisy input first); ``reading`` is
    what the world's reader sees in the chosen block's image.
    """

    def __init__(self, pipe, seed: int = 0, *, timesteps: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
                 display_size: int = DISPLAY_SIZE):
        self.pipe, self.world = pipe, _world(pipe, "LensPanel")
        self.timesteps = [round(float(t), 4) for t in timesteps]
        self.display_size = display_size
        self._init_status()
        self._cache: dict = {}
        self.scene = W.BoundedIntText(value=seed, min=0, max=10**6, description="scene")
        self.t = W.SelectionSlider(options=self.timesteps, value=self.timesteps[len(self.timesteps) // 2],
                                   description="t", continuous_update=False)
        self.block = W.SelectionSlider(options=["?"], description="block", continuous_update=False,
                                       layout=W.Layout(width="640px"), style={"description_width": "initial"})
        self.caption = W.HTML()
        self.reading = W.HTML()
        self.render_image = image_widget("explore-lens-render", display_size)
        self.lens_image = image_widget("explore-lens", display_size)
        self.strip_image = image_widget("explore-lens-strip")
        self._observe(self.scene, "scene")
        self._observe(self.t, "scene")
        self._observe(self.block, "block")
        self.widget = W.VBox([
            W.HBox([self.scene, self.t]), self.block, self.caption, self.status,
            W.HBox([titled("render (exact)", self.render_image), titled("lens after the block", self.lens_image)]),
            self.reading, titled("every block, left to right (z_t: the noisy input, no block)", self.strip_image),
        ])
        self.widget.add_class("explore-lens-panel")
        self.block.add_class("explore-lens-block")
        self.refresh("scene")

    def data(self, seed: int, t: float) -> dict:
        """Scene, caption, render and the lens images of every block at ``t`` (cached)."""
        key = (seed, t)
        if key not in self._cache:
            scene = self.world.sample(random.Random(f"lens-panel-{seed}"))
            prompt = self.world.caption(scene, template=0)
            image = self.world.render(scene, spec(self.pipe).resolution)
            names, images = lens(self.pipe, encode(self.pipe, image, prompt), t, seed=seed)
            self._cache[key] = {"labels": self.world.labels(scene), "prompt": prompt, "image": image,
                                "names": names, "images": np.asarray(images)}
        return self._cache[key]

    def refresh(self, level: str = "all") -> None:
        self._guard(lambda: self._refresh(level))

    def _refresh(self, level: str) -> None:
        t0 = time.perf_counter()
        d = self.data(int(self.scene.value), float(self.t.value))
        if level in ("scene", "all"):
            with self._quiet():
                if list(self.block.options) != d["names"]:
                    self.block.options = d["names"]
                    self.block.value = d["names"][-1]
            self.caption.value = f"<i>{d['prompt']}</i>"
            self.render_image.value = png_bytes(d["image"], self.display_size)
            self.strip_image.value = raw_png(image_strip([_uint8(im) for im in d["images"]]))
        i = d["names"].index(self.block.value)
        self.lens_image.value = png_bytes(_uint8(d["images"][i]), self.display_size)
        self.reading.value = "reads: " + _reading_line(self.world, d["images"][i], d["labels"])
        self._say(f"{self.block.value} at t {self.t.value} · {time.perf_counter() - t0:.2f} s")


class MaskPanel(Panel):
    """Per-object masks from the model's own maps (`explore.interp.segmentation.object_masks`) beside the
    exact ones, one colour per object, with each object's IoU. Widgets: ``scene``, ``method``; images
    ``render_image``, ``exact_image``, ``mask_image``."""

    def __init__(self, pipe, seed: int = 0, *, display_size: int = DISPLAY_SIZE):
        self.pipe, self.world = pipe, _world(pipe, "MaskPanel")
        self.display_size = display_size
        self._init_status()
        self._cache: dict = {}
        self.scene = W.BoundedIntText(value=seed, min=0, max=10**6, description="scene")
        self.method = W.Dropdown(options=list(METHODS), value="segment", description="method")
        self.caption = W.HTML()
        self.scores = W.HTML()
        self.render_image = image_widget("explore-mask-render", display_size)
        self.exact_image = image_widget("explore-mask-exact", display_size)
        self.mask_image = image_widget("explore-mask", display_size)
        self._observe(self.scene, "scene")
        self._observe(self.method, "method")
        self.widget = W.VBox([
            W.HBox([self.scene, self.method]), self.caption, self.status,
            W.HBox([titled("render", self.render_image), titled("exact masks", self.exact_image),
                    titled("from the model", self.mask_image)]),
            self.scores,
        ])
        self.widget.add_class("explore-mask-panel")
        self.method.add_class("explore-mask-method")
        self.refresh("scene")

    def data(self, seed: int) -> dict:
        if seed not in self._cache:
            scene = self.world.sample(random.Random(f"mask-panel-{seed}"))
            prompt = self.world.caption(scene, template=0, rng=random.Random(seed))
            res = spec(self.pipe).resolution
            objects, _ = self.world.caption_objects(prompt)
            keys = {o: next(k for k in self.world.labels(scene) if self.world.object_of(k) == o) for o in objects}
            self._cache[seed] = {"prompt": prompt, "image": self.world.render(scene, res), "masks": {},
                                 "exact": {o: self.world.mask(scene, res, k) for o, k in keys.items()}}
        return self._cache[seed]

    def refresh(self, level: str = "all") -> None:
        self._guard(lambda: self._refresh(level))

    def _refresh(self, level: str) -> None:
        t0 = time.perf_counter()
        seed, method = int(self.scene.value), self.method.value
        d = self.data(seed)
        if level in ("scene", "all"):
            self.caption.value = f"<i>{d['prompt']}</i>"
            self.render_image.value = png_bytes(d["image"], self.display_size)
            self.exact_image.value = png_bytes(mask_picture(d["exact"], d["image"].shape[:2]), self.display_size)
        if method not in d["masks"]:
            d["masks"][method] = object_masks(self.pipe, d["image"], d["prompt"], method=method, seed=seed)
        masks = d["masks"][method]
        self.mask_image.value = png_bytes(mask_picture(masks, d["image"].shape[:2]), self.display_size)
        self.scores.value = " · ".join(f"{o}: IoU {iou(masks[o], d['exact'][o]):.2f}" for o in d["exact"])
        self._say(f"{method} · {time.perf_counter() - t0:.2f} s")
