"""Panels for a two-object world (ShapesWorld Pairs): attribute binding in attention, and leakage of edits.

`BindingPanel`: pick a scene; see its render, what the model generates from its caption (and
whether the readers find each attribute on the right object), and, for each word that names one
object, how much of the word's attention falls on that object and how much on the other, per
block. `LeakPanel`: edit one attribute of one object with several methods at once and see, per
method, whether the edit took and what else changed — on the same object, on the other object,
in the background.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import ipywidgets as W

from ..errors import InputError
from ..evaluation.scorers import get_scorer
from ..evaluation.scoring import score_edit
from ..interp.attention import attention_map, region_shares
from ..pipeline.latent import encode
from ..pipeline.sampling import generate
from ..pipeline.spec import spec
from .panel_base import Panel, image_widget, set_png, titled
from .pictures import DISPLAY_SIZE, attention_overlay, figure_png, image_strip, png_bytes, raw_png
from .plots import plot_region_shares
from .session import EditSession


def pairs_scene(world, seed: int):
    """The scene and full caption (template 0) a panel shows for ``seed``."""
    rng = random.Random(f"binding-{seed}")
    scene = world.sample(rng)
    return scene, world.caption(scene, template=0, rng=rng)  # the object order, too, comes from the seed


def object_words(world, scene, prompt: str) -> list[tuple[str, str, str]]:
    """``(word, shape, factor)`` for every word of ``prompt`` that names one object only."""
    labels = world.labels(scene)
    words = prompt.split()
    out = []
    for shape in [k.split(".")[0] for k in labels if k.endswith(".color")]:
        for factor, word in (("shape", shape), ("color", labels[f"{shape}.color"]),
                             ("size", labels.get(f"{shape}.size"))):
            if word is not None and words.count(word) == 1:
                out.append((word, shape, factor))
    return out


class BindingPanel(Panel):
    """A scene of a two-object world: render, generation (read back), and each word's attention per object.

    Widgets: ``scene`` (seed), ``word``, ``layer``. Images: ``render_image``, ``generated_image``,
    ``overlay_image`` (the word's attention on the render), ``shares_image`` (own vs other object
    per block). ``verdict`` says what the readers found in the generated image.
    """

    def __init__(self, session: EditSession, seed: int = 0, *, timesteps: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
                 display_size: int = DISPLAY_SIZE):
        if session.world is None or session.world.name != "pairs":
            raise InputError("BindingPanel needs a two-object world's model (load_pipeline('shapes-pairs'))")
        self.session, self.world = session, session.world
        self.timesteps = [round(float(t), 4) for t in timesteps]
        self.display_size = display_size
        self._init_status()
        self._cache: dict = {}
        self.scene = W.BoundedIntText(value=seed, min=0, max=10**6, description="scene")
        self.word = W.Dropdown(options=[], description="word")
        self.layer = W.Dropdown(options=["mean"], value="mean", description="layer")
        self.caption = W.HTML()
        self.verdict = W.HTML()
        self.render_image = image_widget("explore-binding-render", display_size)
        self.generated_image = image_widget("explore-binding-generated", display_size)
        self.overlay_image = image_widget("explore-binding-overlay", display_size)
        self.shares_image = image_widget("explore-binding-shares")
        self._observe(self.scene, "scene")
        self._observe(self.word, "word")
        self._observe(self.layer, "layer")
        self.widget = W.VBox([
            W.HBox([self.scene, self.word, self.layer]), self.caption, self.status,
            W.HBox([titled("render (exact)", self.render_image), titled("generated from the caption",
                                                                          self.generated_image),
                    titled("attention on the word", self.overlay_image)]),
            self.verdict, titled("share of the word's attention on each object, per block", self.shares_image),
        ])
        self.widget.add_class("explore-binding-panel")
        self.word.add_class("explore-binding-word")
        self.refresh("scene")

    def data(self, seed: int) -> dict:
        """Scene, caption, render, latent, generation and its reading for scene ``seed`` (cached)."""
        if seed not in self._cache:
            pipe, w = self.session.pipe, self.world
            scene, prompt = pairs_scene(w, seed)
            res = spec(pipe).resolution
            image = w.render(scene, res)
            gen = generate(pipe, [prompt], seed=seed, output_type="np")[0]
            reading = w.read(gen)
            labels = w.labels(scene)
            self._cache[seed] = {
                "scene": scene, "prompt": prompt, "image": image, "latent": encode(pipe, image, prompt),
                "generated": gen, "score": w.score(reading, labels), "labels": labels,
                "masks": {sh: w.mask(scene, res, f"{sh}.color") for sh in
                          [k.split(".")[0] for k in labels if k.endswith(".color")]},
                "words": object_words(w, scene, prompt), "maps": {},
            }
        return self._cache[seed]

    def maps(self, seed: int, word: str):
        d = self.data(seed)
        if word not in d["maps"]:
            d["maps"][word] = attention_map(self.session.pipe, d["latent"], word, t=self.timesteps, seed=seed)
        return d["maps"][word]

    def shares(self, seed: int, word: str) -> dict[str, dict[str, float]]:
        """Per block (and "mean"): the share of ``word``'s attention on each of the scene's objects."""
        d = self.data(seed)
        maps = self.maps(seed, word)
        out = {la: region_shares(maps, d["masks"], [la]) for la in maps.layers()}
        out["mean"] = region_shares(maps, d["masks"])
        return out

    def refresh(self, level: str = "all") -> None:
        self._guard(lambda: self._refresh(level))

    def _refresh(self, level: str) -> None:
        t0 = time.perf_counter()
        seed = int(self.scene.value)
        d = self.data(seed)
        if level in ("scene", "all"):
            self.caption.value = f"<b>{d['prompt']}</b>"
            set_png(self.render_image, png_bytes(d["image"], self.display_size))
            set_png(self.generated_image, png_bytes(d["generated"], self.display_size))
            self.verdict.value = self._verdict(d)
            options = [f"{w} ({sh})" for w, sh, _ in d["words"]]
            with self._quiet():
                self.word.options = options
                self.word.value = options[0] if options else None
        if not d["words"]:
            self._say("no word of this caption names one object only")
            return
        word = str(self.word.value).split(" ")[0]
        maps = self.maps(seed, word)
        if level in ("scene", "word", "all"):
            with self._quiet():
                if list(self.layer.options) != ["mean", *maps.layers()]:
                    self.layer.options = ["mean", *maps.layers()]
                    self.layer.value = "mean"
            shares = self.shares(seed, word)
            own = next(sh for w, sh, _ in d["words"] if w == word)
            set_png(self.shares_image, figure_png(plot_region_shares(shares, own, title=f"{word!r}")))
        layer = self.layer.value
        amap = maps.mean(None if layer == "mean" else [layer])
        set_png(self.overlay_image, raw_png(attention_overlay(d["image"], amap, self.display_size)))
        self._say(f"{word!r} · layer {layer} · {time.perf_counter() - t0:.2f} s")

    @staticmethod
    def _verdict(d: dict) -> str:
        s = d["score"]
        wrong = [k for k, ok in s["correct"].items() if not ok]
        swaps = [k for k, v in s["swap"].items() if v]
        parts = [f"objects found: {s['n_objects']} of 2",
                 "<b style='color:#1b7f3b'>bound: every attribute on the right object</b>" if s["binding"] else
                 f"<b style='color:#b00020'>not bound</b> (wrong: {', '.join(wrong) or '-'})"]
        if swaps:
            parts.append(f"colour swapped: {', '.join(swaps)}")
        return " · ".join(parts)


class LeakPanel(Panel):
    """Edit one object's attribute with several methods; per method: did it take, and what leaked?

    Widgets: ``scene`` (seed), ``attribute`` (a key of the scene, e.g. ``circle.color``),
    ``target``, ``strength``, the ``run`` button. ``results``: method -> scores of the last run
    (`explore.evaluation.scoring.score_edit`: success, retention split into the same object, the
    other object and the background); ``strip_image`` shows the source and every method's edit.
    """

    def __init__(self, session: EditSession, seed: int = 0, methods: Sequence[str] = ("hsds", "dds", "text"),
                 *, display_size: int = DISPLAY_SIZE // 2):
        if session.world is None or session.world.name != "pairs":
            raise InputError("LeakPanel needs a two-object world's model (load_pipeline('shapes-pairs'))")
        self.session, self.world, self.methods = session, session.world, list(methods)
        self.scorer = get_scorer("pairs")
        self.display_size = display_size
        self._init_status()
        self.results: dict[str, dict] = {}
        self.scene = W.BoundedIntText(value=seed, min=0, max=10**6, description="scene")
        self.attribute = W.Dropdown(options=[], description="attribute")
        self.target = W.Dropdown(options=[], description="to")
        self.strength = W.FloatSlider(value=1.0, min=0.25, max=2.0, step=0.25, description="strength",
                                      continuous_update=False)
        self.run = W.Button(description="edit with every method", button_style="primary")
        self.run.on_click(lambda _: self.refresh("run"))
        self.caption = W.HTML()
        self.strip_image = image_widget("explore-leak-strip")
        self.table = W.HTML()
        self._observe(self.scene, "scene")
        self._observe(self.attribute, "attribute")
        self.widget = W.VBox([
            W.HBox([self.scene, self.attribute, self.target]), W.HBox([self.strength, self.run]), self.caption,
            self.status, self.strip_image, self.table,
        ])
        self.widget.add_class("explore-leak-panel")
        self.refresh("scene")

    def source(self):
        _, prompt = pairs_scene(self.world, int(self.scene.value))
        return self.session.source(prompt, int(self.scene.value), how="render")

    def refresh(self, level: str = "all") -> None:
        self._guard(lambda: self._refresh(level))

    def _refresh(self, level: str) -> None:
        src = self.source()
        if level in ("scene", "all"):
            self.caption.value = f"<b>{src.prompt}</b>"
            keys = [k for k in self.world.keys(src.labels) if k in src.labels]
            with self._quiet():
                self.attribute.options = keys
                self.attribute.value = keys[0]
            self.results = {}
            self.strip_image.value = png_bytes(src.image, self.display_size)
            self.table.value = ""
        if level in ("scene", "attribute", "all"):
            key = self.attribute.value
            values = [v for v in self.world.values(key) if v != src.labels[key]]
            if "." in key:  # two objects never share a colour: do not offer the other object's colour
                other = [src.labels[k] for k in src.labels if k.endswith(key[key.index("."):]) and k != key]
                values = [v for v in values if v not in other]
            with self._quiet():
                self.target.options = values
                self.target.value = values[0]
            self._say(f"pick a target and press '{self.run.description}'")
        if level == "run":
            self._run(src)

    def _run(self, src) -> None:
        t0 = time.perf_counter()
        attribute, target, s = self.attribute.value, self.target.value, float(self.strength.value)
        images, results = [src.image], {}
        for m in self.methods:
            key = self.session.plan(src, attribute, target, m)
            fr = self.session.frame(key, s)
            images.append(fr.image)
            results[m] = score_edit(self.scorer, attribute, target, fr.image, labels=src.labels)
        self.results = results
        set_png(self.strip_image, raw_png(image_strip(images, self.display_size)))
        self.table.value = self._table(results, src.labels, attribute)
        self._say(f"{attribute} → {target} at strength {s:g} with {len(self.methods)} methods · "
                  f"{time.perf_counter() - t0:.1f} s")

    @staticmethod
    def _table(results: dict, labels: dict, attribute: str) -> str:
        head = ("<table><tr><th>method</th><th>edit took</th><th>same object kept</th><th>other object kept</th>"
                "<th>background kept</th><th>what changed besides the edit</th></tr>")
        rows = []
        for m, r in results.items():
            p = r.get("retention_parts") or {}
            changed = [f"{k}: {labels[k]}→{r['read_edit'].get(k)}" for k in labels
                       if k != attribute and r["read_edit"].get(k) != labels[k]]
            cell = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            rows.append(f"<tr><td>{m}</td><td>{'yes' if r['success'] else 'no'}</td>"
                        f"<td>{cell(p.get('same_object'))}</td><td>{cell(p.get('other_objects'))}</td>"
                        f"<td>{cell(p.get('scene'))}</td><td>{', '.join(changed) or 'nothing'}</td></tr>")
        return head + "".join(rows) + "</table>"


def shares_summary(shares: dict[str, dict[str, float]], own: str) -> dict[str, float]:
    """own / (own + other) per block, from `BindingPanel.shares`."""
    out = {}
    for la, per in shares.items():
        other = sum(v for k, v in per.items() if k != own)
        out[la] = float(per[own] / max(per[own] + other, 1e-12))
    return out


__all__ = ["BindingPanel", "LeakPanel", "object_words", "pairs_scene", "shares_summary"]
