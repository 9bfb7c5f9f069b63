"""The notebook session: cached sources, directions, sweeps and edits — plain Python, no ipywidgets.

`EditSession` caches source encodings (by caption, seed and how the image was made), text
directions, whole batched sweeps over a strength grid and single edits, so that moving a slider
is a dictionary lookup whenever it can be; the panels of `explore.views.widgets` only read widget
values and call it. `DirectionMap` caches the 2-D coordinates of a set of directions for the
geometry panel. Both are unit-tested without a browser.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..editing.api import default_sweep_mode, edit, identify, manipulate, settings_for, sweep
from ..editing.directions import compose, swap_word, text_direction
from ..editing.methods import get_method
from ..editing.preserve import source_labels
from ..editing.settings import EditSettings, check_strength, settings_class
from ..errors import InputError
from ..images import check_resize, fit_size, to_pil
from ..interp.geometry import direction_matrix, pca, umap
from ..pipeline.latent import check_prompts, encode
from ..pipeline.sampling import generate
from ..pipeline.spec import size_multiple, spec
from ..worlds import world_of
from .plots import plot_projection


def strength_grid(stop: float = 2.0, step: float = 0.25, start: float = 0.0) -> tuple[float, ...]:
    """``start, start + step, ..., stop`` (inclusive), rounded to 6 decimals: the strengths a sweep computes."""
    for name, v in (("start", start), ("stop", stop), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"strength grid {name} must be a finite number, got {v!r}")
    if step <= 0 or stop <= start:
        raise InputError(f"strength grid needs step > 0 and stop > start, got start={start}, stop={stop}, step={step}")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    return tuple(round(start + i * step, 6) for i in range(n))


DEFAULT_STRENGTHS = strength_grid(2.0, 0.25)


@dataclasses.dataclass
class SourceImage:
    """One source image ready to edit.

    image: PIL; latent: its `JointLatent` (batch 1); labels: exact factor labels (a rendered scene
    of an embedded world), read from pixels (a generated one) or None (other models).
    """

    key: tuple
    prompt: str
    seed: int
    how: str  # "render" | "generate" | "image"
    image: Any
    latent: Any
    labels: dict[str, str] | None


@dataclasses.dataclass(frozen=True)
class EditKey:
    """Everything that determines an edit except its strength (the cache key of a sweep)."""

    source: tuple
    attribute: str
    v_minus: str
    v_plus: str
    method: str
    preserve: tuple
    settings: tuple  # sorted (name, value) pairs of the resolved method settings
    seed: int
    also: tuple = ()  # a composed edit's other parts: (attribute, v_minus, v_plus, weight) each


@dataclasses.dataclass
class Frame:
    """The edit at one strength, as the panels show it."""

    strength: float
    image: Any  # PIL
    reconstruction: Any  # PIL
    trace: dict[str, list]
    cached: bool  # True: no model call was needed
    origin: str  # "sweep" (a cached batched sweep) | "edit" (a single edit) | "render" (an identified edit rendered)
    seconds: float  # compute time when it was made


class EditSession:
    """Caches for interactive EIM: sources, directions, sweeps over a strength grid, single edits.

    ``strengths``: the grid a sweep computes in one batch (default 0, 0.25, ..., 2); a slider
    with the same grid then only looks results up. ``settings``: overrides of the method settings
    for every edit (e.g. ``{"steps": 20}``; any `EditSettings` name). ``templates``: ``None`` (the
    default) — the source's own caption against it with the edit made whenever the caption is known
    (embedded worlds: `World.edited_caption`, which on Pairs changes only the edited object's word;
    other models: the word swapped, when the caption contains it), else the template mean: the
    caption direction measured best on both worlds for every method (docs/results/identify.md);
    ``"template"`` — always the template mean, the Identify step as published (embedded worlds:
    ``n_templates`` captions of their grammar; other models: photo templates); ``"prompt"`` — always
    the caption (an error without one); or (other models) a list as `explore.text_direction` takes.
    ``resolution``: side of generated sources (default the model's). ``resize``: how your own images
    are fitted to sizes the model takes (``"crop"``, ``"resize"``, ``(H, W)``; `explore.encode`).
    Model calls happen only in
    `source`, `direction`, `sweep` and in `frame` when nothing is cached; ``stats`` counts them.
    An optimising method identifies each edit once (`explore.identify`, cached) and `frame` only
    renders it at the strength asked (one render: `explore.manipulate`); ``settings={"mode":
    "optimise"}`` runs one optimisation per strength instead.
    """

    def __init__(self, pipe, strengths: Sequence[float] = DEFAULT_STRENGTHS, settings: Mapping[str, Any] | None = None,
                 *, seed: int = 0, templates=None, n_templates: int = 32, resolution: int | None = None,
                 max_sweeps: int = 32, max_frames: int = 512, resize=None):
        self.pipe = pipe
        strengths = [float(s) for s in strengths]
        if not strengths or any(not math.isfinite(s) for s in strengths):
            raise InputError(f"strengths must be finite numbers, got {strengths!r}")
        self.strengths = tuple(sorted({round(s, 6) for s in strengths}))
        self.settings = dict(settings or {})
        EditSettings.for_method("hsds", **self.settings)  # unknown names and bad values fail here, at once
        self.seed = int(seed)
        if isinstance(templates, str) and templates not in ("template", "prompt"):
            raise InputError(f"templates must be None (the caption when known), 'template', 'prompt' or a list of "
                             f"templates, got {templates!r}")
        self.templates = templates
        self.n_templates = int(n_templates)
        self.resolution = resolution
        check_resize(resize)
        self.resize = resize
        self.max_sweeps, self.max_frames = int(max_sweeps), int(max_frames)
        self.world = world_of(pipe)
        self._sources: OrderedDict[tuple, SourceImage] = OrderedDict()
        self._directions: dict[tuple, Any] = {}
        self._sweeps: OrderedDict[EditKey, Any] = OrderedDict()
        self._frames: OrderedDict[tuple, Frame] = OrderedDict()
        self._identified: OrderedDict[EditKey, Any] = OrderedDict()
        self.stats = {"sources": 0, "directions": 0, "sweeps": 0, "edits": 0, "hits": 0, "identified": 0,
                      "renders": 0}

    @property
    def shapes(self) -> bool:
        """Is the model an embedded world's (readers, exact renders, factor dropdowns)?"""
        return self.world is not None

    # -- sources ---------------------------------------------------------------------------------

    def source(self, prompt: str, seed: int = 0, how: str = "auto", image=None) -> SourceImage:
        """Encode a source, cached by ``(how, prompt, seed)`` (or the image's bytes).

        ``how``: ``"render"`` (an embedded world's exact render of a scene matching the caption;
        factors it leaves out and the jitter come from ``seed``), ``"generate"`` (the model samples
        it from the prompt with noise ``seed``), ``"auto"`` (render on an embedded world, generate
        elsewhere). Pass ``image=`` to edit your own picture (``prompt`` describes it).
        """
        if not isinstance(prompt, str):
            raise InputError(f"the source caption must be a string, got {type(prompt).__name__}")
        prompt = " ".join(prompt.split())
        check_prompts(prompt)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        seed = int(seed)
        if image is not None:
            how = "image"
            pil = image = to_pil(image)  # the package's one set of image rules: paths, modes, ranges, shapes
            key = ("image", prompt, hashlib.sha1(pil.tobytes()).hexdigest())
        else:
            if how == "auto":
                how = "render" if self.shapes else "generate"
            if how not in ("render", "generate"):
                raise InputError(f"how must be 'render', 'generate' or 'auto', got {how!r}")
            if how == "render" and not self.shapes:
                raise InputError("how='render' draws an embedded world's scenes; for this model use how='generate' or "
                                 "image=")
            key = (how, prompt, seed)
        hit = self._sources.get(key)
        if hit is not None:
            self._sources.move_to_end(key)
            self.stats["hits"] += 1
            return hit
        src = self._make_source(key, prompt, seed, how, image)
        self._sources[key] = src
        while len(self._sources) > 64:
            self._sources.popitem(last=False)
        self.stats["sources"] += 1
        return src

    def _make_source(self, key, prompt, seed, how, image) -> SourceImage:
        labels = None
        if self.world is not None:
            self.world.labels_from_caption(prompt)  # vocabulary and consistency checks, whatever `how` is
        if how == "image":
            pil = fit_size([to_pil(image)], size_multiple(self.pipe), self.resize)[0]
        elif how == "render":
            scene = self.world.scene_from_caption(prompt, seed)
            pil = Image.fromarray(self.world.render(scene, spec(self.pipe).resolution))
            labels = self.world.labels(scene)
        else:
            size = self.resolution
            pil = generate(self.pipe, prompt, seed=seed, height=size, width=size)[0]
        latent = encode(self.pipe, pil, prompt)
        if labels is None and self.world is not None:
            labels = source_labels(self.pipe, latent, np.asarray(pil))
        return SourceImage(key, prompt, seed, how, pil, latent, labels)

    # -- directions ------------------------------------------------------------------------------

    def add_direction(self, direction) -> None:
        """Use this `Direction` (e.g. from a `DirectionLibrary`) for its (attribute, source, target)."""
        direction.check(self.pipe)
        self._directions[(direction.attribute, direction.source, direction.target)] = direction

    def _caption_direction(self, prompt: str | None, v_minus: str) -> bool:
        """Whether a direction follows the source caption (``templates``: None = when it can, "prompt" = always)."""
        if self.templates == "prompt":
            if not prompt:
                raise InputError("templates='prompt' needs the source prompt")
            return True
        if self.templates is not None or not prompt:
            return False
        if self.shapes:
            return True
        return re.search(rf"\b{re.escape(v_minus)}\b", prompt, flags=re.IGNORECASE) is not None

    def direction(self, attribute: str, v_minus: str, v_plus: str, prompt: str | None = None):
        """The text direction ``v_minus -> v_plus`` (cached; embedded worlds: their caption grammar)."""
        caption = self._caption_direction(prompt, v_minus)
        key = (attribute, v_minus, v_plus) + ((prompt,) if caption else ())
        if key not in self._directions:
            edited = None
            if caption:
                try:
                    edited = (self.world.edited_caption(prompt, attribute, v_plus) if self.shapes
                              else swap_word(prompt, v_minus, v_plus)[1])
                except InputError:
                    if self.templates == "prompt":
                        raise
                    # templates=None: a caption that cannot carry this edit falls back to the template mean
                    key = (attribute, v_minus, v_plus)
                    if key in self._directions:
                        return self._directions[key]
            if edited is not None:
                d = text_direction(self.pipe, v_minus, v_plus, templates=[(prompt, edited)], attribute=attribute)
            elif self.shapes:
                d = text_direction(self.pipe, v_minus, v_plus, attribute=attribute, n=self.n_templates)
            else:
                tpl = None if self.templates == "template" else self.templates
                d = text_direction(self.pipe, v_minus, v_plus, templates=tpl, attribute=attribute)
            self._directions[key] = d
            self.stats["directions"] += 1
        return self._directions[key]

    # -- planning --------------------------------------------------------------------------------

    def method_overrides(self, method: str) -> dict:
        """The session's settings that ``method`` has (a peer method has no ``lr``, EIM no ``eta``)."""
        names = settings_class(method).names()
        return {k: v for k, v in self.settings.items() if k in names}

    def resolved_settings(self, method: str):
        return settings_for(self.pipe, method, **self.method_overrides(method))

    def plan(self, source: SourceImage, attribute: str, target: str, method: str = "hsds", preserve=None,
             source_value: str | None = None, also=()) -> EditKey:
        """Check an edit's inputs and return its cache key (raises `InputError` with a one-line reason).

        Embedded worlds: ``attribute`` a factor key, ``target`` one of its values; the source value
        is the source's label. Other models: ``source_value`` and ``target`` are words (the direction
        is ``source_value -> target``). ``preserve`` (HSDS and "image" only): factor keys (embedded
        worlds; None = every other factor), ``(v-, v+)`` word pairs or ``"auto"`` (the default
        without a factor table). ``also``: more edits applied at the same time (a composed edit),
        ``(attribute, target)`` or ``(attribute, target, weight)`` each (other models:
        ``(source word, target word[, weight])``); the preserved factors leave them all out.
        """
        objective = get_method(method)
        attribute, v_minus, target = self._check_part(source, attribute, target, source_value)
        extra = []
        for part in also or ():
            part = tuple(part)
            if len(part) not in (2, 3):
                raise InputError(f"each extra edit is (attribute, target) or (attribute, target, weight), got "
                                 f"{part!r}")
            weight = check_strength(part[2]) if len(part) == 3 else 1.0
            if self.world is not None:
                a, vm, vp = self._check_part(source, part[0], part[1], None)
            else:
                a, vm, vp = self._check_part(source, "attribute", part[1], part[0])
            extra.append((a, vm, vp, weight))
        edited = [attribute, *(e[0] for e in extra)]
        if self.world is not None and len(set(edited)) != len(edited):
            raise InputError(f"a composed edit changes each attribute once; got {edited}")
        pres: tuple = ()
        if "fd" in objective.needs:
            pres = self._preserve(source, edited, preserve)
        settings = self.resolved_settings(method)
        return EditKey(source.key, attribute, v_minus, target, method, pres, tuple(sorted(settings.items())),
                       self.seed, tuple(extra))

    def _check_part(self, source: SourceImage, attribute: str, target: str, source_value):
        """``(attribute, v-, v+)`` of one edit, checked (see `plan`)."""
        if self.world is not None:
            keys = self.world.keys()
            if attribute not in keys:
                raise InputError(f"unknown attribute {attribute!r}; pick one of {', '.join(keys)}")
            values = self.world.values(attribute)
            if target not in values:
                raise InputError(f"{target!r} is not a {attribute}; pick one of {', '.join(values)}")
            v_minus = (source.labels or {}).get(attribute) if source_value is None else source_value
            if v_minus is None:
                raise InputError(f"the source's {attribute} could not be read from its pixels; pick another seed or "
                                 "use a rendered source (how='render')")
            if v_minus not in values:
                raise InputError(f"{v_minus!r} is not a {attribute}; pick one of {', '.join(values)}")
        else:
            attribute = (attribute or "attribute").strip() or "attribute"
            v_minus = (source_value or "").strip()
            target = (target or "").strip() if isinstance(target, str) else target
            if not v_minus or not target:
                raise InputError("type the word to change (as it appears in the prompt) and the word to change it to")
        if target == v_minus:
            raise InputError(f"the source's {attribute} is already {target!r}; pick another target value")
        return attribute, v_minus, target

    def _preserve(self, source: SourceImage, edited: list[str], preserve) -> tuple:
        if self.world is not None:
            keys = self.world.keys()
            known = source.labels or {}
            if preserve is None:
                return tuple(k for k in keys if k not in edited and k in known)
            names = [preserve] if isinstance(preserve, str) else list(preserve)
            for k in names:
                if k not in keys:
                    raise InputError(f"cannot preserve {k!r}: not a factor; pick from {', '.join(keys)}")
                if k not in known:
                    raise InputError(f"cannot preserve {k}: the source's {k} could not be read; untick it")
            return tuple(k for k in keys if k in names and k not in edited)
        if preserve is None or (isinstance(preserve, str) and not preserve.strip()):
            return ("auto",)  # no factor table: directions from the prompt's other words
        if isinstance(preserve, str):
            items = [p.strip() for p in preserve.split(",") if p.strip()]
            auto = [p for p in items if p == "auto"]
            pairs = parse_pairs(", ".join(p for p in items if p != "auto")) if len(auto) < len(items) else []
        else:
            auto = [p for p in preserve if p == "auto"]
            pairs = [tuple(p) for p in preserve if p != "auto"]
        for p in pairs:
            if len(p) != 2 or not all(isinstance(w, str) and w.strip() for w in p):
                raise InputError(f"preserve pairs are (word, other word), got {p!r}")
        return tuple(auto[:1]) + tuple((a.strip(), b.strip()) for a, b in pairs)

    # -- computing -------------------------------------------------------------------------------

    def _source_of(self, key: EditKey) -> SourceImage:
        src = self._sources.get(key.source)
        if src is None:
            raise InputError("that source is no longer cached; call session.source(...) again")
        return src

    def _edit_args(self, key: EditKey) -> tuple[SourceImage, Any, dict[str, Any]]:
        src = self._source_of(key)
        d = self.direction(key.attribute, key.v_minus, key.v_plus, prompt=src.prompt)
        if key.also:
            parts = [self.direction(a, vm, vp, prompt=src.prompt) for a, vm, vp, _ in key.also]
            d = compose([d, *parts], [1.0, *(w for *_, w in key.also)])
        pres = list(key.preserve) if "fd" in get_method(key.method).needs else None
        overrides = self.method_overrides(key.method)
        return src, d, {"preserve": pres, "labels": src.labels, "seed": key.seed, **overrides}

    def has_sweep(self, key: EditKey) -> bool:
        return key in self._sweeps

    def cached(self, key: EditKey, strength: float) -> bool:
        """Would `frame` answer without a model call?"""
        s = round(float(strength), 6)
        return (key in self._sweeps and s in self.strengths) or (key, s) in self._frames

    def sweep(self, key: EditKey, progress: bool = False):
        """The batched sweep of ``key`` over the session's strength grid (`explore.SweepResult`), cached."""
        hit = self._sweeps.get(key)
        if hit is not None:
            self._sweeps.move_to_end(key)
            self.stats["hits"] += 1
            return hit
        src, d, kw = self._edit_args(key)
        res = sweep(self.pipe, src.latent, d, list(self.strengths), key.method, progress=progress, **kw)
        self._sweeps[key] = res
        while len(self._sweeps) > self.max_sweeps:
            self._sweeps.popitem(last=False)
        self.stats["sweeps"] += 1
        return res

    def frame(self, key: EditKey, strength: float) -> Frame:
        """The edit at ``strength``: looked up in a cached sweep or an earlier edit, else one fresh edit."""
        s = round(check_strength(strength), 6)
        sw = self._sweeps.get(key)
        if sw is not None and s in self.strengths:
            i = sw.strengths.index(s)
            trace = {k: [row[i] for row in v] for k, v in sw.trace.items()}
            self.stats["hits"] += 1
            return Frame(s, sw.images[i], sw.reconstruction, trace, True, "sweep", sw.seconds)
        hit = self._frames.get((key, s))
        if hit is not None:
            self._frames.move_to_end((key, s))
            self.stats["hits"] += 1
            return dataclasses.replace(hit, cached=True)
        src, d, kw = self._edit_args(key)
        if self._identifying(key.method):
            fr = self._manipulated(key, s, src, d, kw)
        else:
            res = edit(self.pipe, src.latent, d, s, key.method, **kw)
            fr = Frame(s, res.image, res.reconstruction, res.trace, False, "edit", res.seconds)
        self._frames[(key, s)] = fr
        while len(self._frames) > self.max_frames:
            self._frames.popitem(last=False)
        self.stats["edits"] += 1
        return fr

    def _identifying(self, method: str) -> bool:
        """Identify once and render each strength? The default for every method that optimises the image
        latent (`explore.editing.api.default_sweep_mode`); ``settings={"mode": "optimise"}`` optimises
        per strength."""
        mode = self.settings.get("mode")
        if mode is None:
            return default_sweep_mode(method) == "identify"
        obj = get_method(method)
        return mode == "identify" and getattr(obj, "optimise", False) and obj.edits_image

    def identified(self, key: EditKey):
        """The identified direction of ``key`` (`explore.identify`, once per key; ``mode="identify"``)."""
        hit = self._identified.get(key)
        if hit is None:
            src, d, kw = self._edit_args(key)
            hit = identify(self.pipe, src.latent, d, key.method, **kw)
            self._identified[key] = hit
            while len(self._identified) > self.max_sweeps:
                self._identified.popitem(last=False)
            self.stats["identified"] += 1
        return hit

    def _manipulated(self, key: EditKey, s: float, src, d, kw) -> Frame:
        t0 = time.perf_counter()
        ident = self.identified(key)
        render_kw = {k: v for k, v in kw.items() if k in ("t_render", "render_steps", "guidance", "clean_condition")}
        rec_key = (key, 0.0)
        rec = self._frames.get(rec_key)
        strengths = [s] if rec is not None or s == 0 else [s, 0.0]
        res = manipulate(self.pipe, src.latent, ident, strengths, key.method, seed=key.seed, **render_kw)
        self.stats["renders"] += len(strengths)
        if rec is None:
            rec = Frame(0.0, res.images[-1], res.images[-1], {}, False, "render", res.seconds)
            self._frames[rec_key] = rec
        return Frame(s, res.images[0], rec.image, {}, False, "render", time.perf_counter() - t0)

    def clear(self) -> None:
        """Forget every cached source, direction, sweep and edit."""
        self._identified.clear()
        self._sources.clear()
        self._directions.clear()
        self._sweeps.clear()
        self._frames.clear()


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``"red>blue, day>night"`` -> ``[("red", "blue"), ("day", "night")]`` (also ``->`` or ``:``)."""
    out = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        bits = [b.strip() for b in re.split(r"->|>|:", part)]
        if len(bits) != 2 or not all(bits):
            raise InputError(f"cannot read {part!r} as a word pair; write pairs like 'red>blue, day>night'")
        out.append((bits[0], bits[1]))
    return out


class DirectionMap:
    """Directions -> 2-D coordinates per (kind, projection, scale), cached; the figure with one point ringed.

    ``scale``: ``"unit"`` (every direction normalised first: the map shows orientations; the
    default, because raw ``Δc`` rows are dominated by the longest directions, e.g. colour, and the
    rest collapse near the origin) or ``"raw"`` (lengths kept).
    """

    def __init__(self, directions: Sequence, seed: int = 0, n_neighbors: int = 15):
        directions = list(directions)
        if len(directions) < 2:
            raise InputError(f"a direction map needs at least 2 directions, got {len(directions)}")
        self.directions = directions
        self.names = [d.name for d in directions]
        self.seed, self.n_neighbors = seed, n_neighbors
        self._coords: dict[tuple[str, str, str], tuple[np.ndarray, tuple[str, str]]] = {}

    def coords(self, kind: str = "dc", projection: str = "pca", scale: str = "unit"
               ) -> tuple[np.ndarray, tuple[str, str]]:
        if scale not in ("unit", "raw"):
            raise InputError(f"scale must be 'unit' or 'raw', got {scale!r}")
        key = (kind, projection, scale)
        if key not in self._coords:
            X, _ = direction_matrix(self.directions, kind=kind, normalize=scale == "unit")
            if projection == "pca":
                xy, evr = pca(X, 2)
                if xy.shape[1] < 2:
                    xy = np.concatenate([xy, np.zeros((len(xy), 1))], axis=1)
                    evr = np.append(evr, 0.0)
                labels = (f"PC1 ({100 * evr[0]:.0f}%)", f"PC2 ({100 * evr[1]:.0f}%)")
            elif projection == "umap":
                xy, labels = umap(X, 2, seed=self.seed, n_neighbors=self.n_neighbors), ("UMAP 1", "UMAP 2")
            else:
                raise InputError(f"projection must be 'pca' or 'umap', got {projection!r}")
            self._coords[key] = (xy, labels)
        return self._coords[key]

    def figure(self, kind: str = "dc", projection: str = "pca", selected: int | None = None, scale: str = "unit"):
        xy, labels = self.coords(kind, projection, scale)
        values = [f"{d.source}→{d.target}" for d in self.directions]
        what = "unit " if scale == "unit" else ""
        fig = plot_projection(xy, [d.attribute for d in self.directions], values,
                              title=f"{projection.upper()} of {what}{kind} directions", axis_labels=labels)
        if selected is not None:
            ax = fig.axes[0]
            ax.scatter([xy[selected, 0]], [xy[selected, 1]], s=180, facecolors="none", edgecolors="k", linewidths=2)
            ax.set_title(f"{projection.upper()} of {kind} · selected: {self.names[selected]}", fontsize=9)
        return fig
