"""Interactive panels for the notebooks, on top of plain Python classes that are tested without a browser.

The logic lives in `EditSession` (and a few small functions): it caches source encodings (by
caption, seed and how the image was made), text directions, whole batched sweeps over a strength
grid and single edits, so that moving a slider is a dictionary lookup whenever it can be. The
panels (`EditPanel`, `GeometryPanel`, `AttentionPanel`, `ProbePanel`, `SteeringPanel`) are thin:
their callbacks read widget values, call the session, and put PNG bytes into ``ipywidgets.Image``
widgets. Every panel can be driven from code (``panel.set(...)`` or assigning widget values) and
read back (``panel.result_png``, ``panel.status.value``), which is how the tests use them.

Errors a user can cause (`explore.errors.ExploreError`) show as one line in the panel's status
label, never as a traceback; anything else is a bug and is raised after the status says so.

`measure_latency` times what a user feels: a slider move with a cached sweep, a fresh HSDS edit,
a full sweep (the README quotes it).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import io
import math
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .errors import ExploreError, InputError
from .models import spec

DISPLAY_SIZE = 192  # pixels: 64-px ShapesWorld images are shown 3x, NEAREST (no blur)
MAX_DISPLAY = 512  # larger images (real models) are shrunk to this for display
EDIT_SETTINGS = ("steps", "guidance", "t_range", "lr", "t_render", "delta", "weight", "hessian")


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


# ---------------------------------------------------------------------------------------------
# Pictures as bytes
# ---------------------------------------------------------------------------------------------


def as_pil(image):
    """One PIL RGB image by the package's image rules (`explore.latent`: PIL of any mode, paths,
    ``(H, W, 3)`` uint8 / [0, 1] float arrays, ``(3, H, W)`` tensors); anything else is an `InputError`."""
    from .latent import _to_pil_list

    images = _to_pil_list(image)
    if len(images) != 1:
        raise InputError(f"expected one image, got a batch of {len(images)}")
    return images[0]


def display_image(image, size: int = DISPLAY_SIZE):
    """Upscale small images by an integer factor with NEAREST (crisp pixels); shrink large ones."""
    from PIL import Image

    im = as_pil(image)
    side = max(im.size)
    if side < size:
        k = max(1, size // side)
        im = im.resize((im.width * k, im.height * k), Image.NEAREST)
    elif side > MAX_DISPLAY:
        im = im.copy()
        im.thumbnail((MAX_DISPLAY, MAX_DISPLAY), Image.LANCZOS)
    return im


def png_bytes(image, size: int = DISPLAY_SIZE) -> bytes:
    """PNG bytes of an image for an ``ipywidgets.Image`` (see `display_image`)."""
    buf = io.BytesIO()
    display_image(image, size).save(buf, format="PNG")
    return buf.getvalue()


def raw_png(image) -> bytes:
    """PNG bytes of an image as it is (no resizing)."""
    buf = io.BytesIO()
    as_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def figure_png(fig, dpi: int = 72) -> bytes:
    """PNG bytes of a matplotlib ``Figure`` (made without pyplot, so nothing is shown twice)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def image_strip(images: Sequence, size: int = DISPLAY_SIZE // 2, pad: int = 3):
    """Images side by side, small ones upscaled NEAREST by the integer factor that reaches ``size`` (PIL)."""
    from PIL import Image

    from .edit import image_row

    out = []
    for im in images:
        im = as_pil(im)
        k = max(1, -(-size // max(im.size)))
        out.append(im.resize((im.width * k, im.height * k), Image.NEAREST) if k > 1 else im)
    return image_row(out, pad=pad)


def show(obj, size: int = DISPLAY_SIZE, dpi: int = 80):
    """An ``IPython.display.Image`` of a matplotlib ``Figure`` or an image (small images upscaled NEAREST).

    Notebooks display figures with it, so they render whatever the matplotlib backend is (CI runs Agg).
    """
    from IPython.display import Image as IPImage
    from PIL import Image

    if hasattr(obj, "savefig"):
        return IPImage(data=figure_png(obj, dpi=dpi))
    im = as_pil(obj)
    k = max(1, min(size // im.height, 1600 // im.width))  # strips too: scale by height, at most 1600 px wide
    if k > 1:
        im = im.resize((im.width * k, im.height * k), Image.NEAREST)
    return IPImage(data=raw_png(im))


def one_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error message, cut to ``limit`` characters (for status labels)."""
    text = str(error).strip().splitlines()
    msg = text[0] if text else type(error).__name__
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Figures used by the panels (return Figure, never show)
# ---------------------------------------------------------------------------------------------


def plot_trace(trace: Mapping[str, Sequence[float]], title: str | None = None):
    """Per-step trace of one edit: gradient norms, ``|z - z0|`` and the share of ``g_edit`` HSDS removed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 2.3), layout="constrained")
    axes = fig.subplots(1, 2)
    n = len(trace.get("dz_norm", []))
    if n == 0:
        for ax in axes:
            ax.axis("off")
        axes[0].text(0, 0.5, "no optimisation: this method renders (z0, c', p') directly", fontsize=9)
    else:
        steps = np.arange(1, n + 1)
        names = {"grad_norm": "|g|", "edit_norm": "|g_edit|", "rec_norm": "|g_rec|"}
        for key, label in names.items():
            y = np.asarray(trace.get(key, [math.nan] * n), dtype=float)
            if np.isfinite(y).any():
                axes[0].plot(steps, y, label=label, linewidth=1.2)
        axes[0].set_xlabel("step")
        axes[0].set_title("update norms", fontsize=9)
        axes[0].legend(fontsize=7)
        axes[1].plot(steps, trace["dz_norm"], color="C3", label="|z - z0|", linewidth=1.2)
        axes[1].set_xlabel("step")
        axes[1].set_title("latent moved / g_edit removed", fontsize=9)
        removed = np.asarray(trace.get("removed", [math.nan] * n), dtype=float)
        if np.isfinite(removed).any():
            ax2 = axes[1].twinx()
            ax2.plot(steps, removed, color="C4", linestyle="--", linewidth=1, label="removed share")
            ax2.set_ylim(0, 1.05)
            ax2.tick_params(labelsize=7)
            ax2.legend(fontsize=7, loc="lower right")
        axes[1].legend(fontsize=7, loc="upper left")
        from matplotlib.ticker import MaxNLocator

        for ax in axes:
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_joint_latent(latent, max_channels: int = 8):
    """The three parts of a joint latent: ``z`` channels, the token embeddings ``c`` and the pooled ``p``."""
    from matplotlib.figure import Figure

    z = latent.z[0].detach().float().cpu().numpy()
    c = latent.c[0].detach().float().cpu().numpy()
    p = latent.p[0].detach().float().cpu().numpy()
    k = min(len(z), max_channels)
    fig = Figure(figsize=(max(6.0, 0.9 * k), 3.6), layout="constrained")
    gs = fig.add_gridspec(2, k, height_ratios=[1, 1.4])
    lim = float(np.abs(z[:k]).max()) or 1.0
    for i in range(k):
        ax = fig.add_subplot(gs[0, i])
        ax.imshow(z[i], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"z[{i}]", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    split = max(1, (2 * k) // 3)
    ax = fig.add_subplot(gs[1, :split])
    lim = float(np.percentile(np.abs(c), 99)) or 1.0
    ax.imshow(c, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_title(f"c: {c.shape[0]} tokens x {c.shape[1]} dims", fontsize=8)
    ax.set_xlabel("dim", fontsize=7)
    ax.set_ylabel("token", fontsize=7)
    ax.tick_params(labelsize=6)
    if split < k:
        ax = fig.add_subplot(gs[1, split:])
        ax.plot(p, linewidth=0.6)
        ax.set_title(f"p: {p.shape[0]} dims", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"joint latent of {latent.prompt[0]!r}" if latent.prompt else "joint latent", fontsize=8)
    return fig


def latent_table(latent) -> str:
    """An HTML table of `explore.latent.info` (shapes and norms of z, c, p)."""
    from .latent import info

    d = info(latent)
    rows = "".join(
        f"<tr><td><b>{k}</b></td><td>{tuple(d[k])}</td><td>{d['|' + k + '|']:.2f}</td></tr>" for k in ("z", "c", "p")
    )
    return ("<table style='font-size:90%'><tr><th>part</th><th>shape</th><th>norm</th></tr>"
            f"{rows}</table>")


def attention_overlay(image, amap, size: int = DISPLAY_SIZE, alpha: float = 0.5, cmap: str = "jet"):
    """``image`` (upscaled NEAREST) with an attention map ``(h, w)`` blended over it (bilinear, min-max scaled)."""
    from matplotlib import colormaps
    from PIL import Image

    from .attention import renormalize, upsample

    base = display_image(image, size)
    a = np.asarray(amap, dtype=np.float32)
    if a.ndim == 3:
        a = a.mean(0)
    m = upsample(renormalize(a), (base.height, base.width))
    m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
    heat = colormaps[cmap](m)[..., :3] * 255.0
    out = (1 - alpha) * np.asarray(base, dtype=np.float32) + alpha * heat
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def sde_figure(x, x_rec, x_edit, mask, parts, attribute: str | None = None, title: str | None = None):
    """The SDE metric of one edit, step by step: source, reconstruction, edit, ``|x_edit - x_rec|``,
    the mask ``M`` and the change outside it (the leak), with ``E``, ``leak``, ``R`` and ``SDE``."""
    from matplotlib.figure import Figure

    def arr(im):
        a = np.asarray(as_pil(im), dtype=np.float32) / 255.0
        return a

    xs, xr, xe = arr(x), arr(x_rec), arr(x_edit)
    m = np.asarray(mask, dtype=bool)
    if attribute == "background":
        m = ~m
    d = np.abs(xe - xr).sum(-1)
    outside = d * (~m)
    fig = Figure(figsize=(11, 2.6), layout="constrained")
    axes = fig.subplots(1, 6)
    panels = [
        (xs, "x (source)"), (xr, f"x_rec  R = {parts['R']:.3f}"), (xe, f"x_edit  E = {parts['E']:+.2f}"),
        (d, "|x_edit - x_rec|"), (m, "mask M" + (" (complement)" if attribute == "background" else "")),
        (outside, f"change outside M  leak = {parts['leak']:.2f}"),
    ]
    vmax = float(d.max()) or 1.0
    for ax, (im, name) in zip(axes, panels):
        if im.ndim == 3:
            ax.imshow(im, interpolation="nearest")
        elif im.dtype == bool:
            ax.imshow(im, cmap="gray", interpolation="nearest")
        else:
            ax.imshow(im, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"SDE = max(E, 0) · (1 - leak) · (1 - min(R, 1)) = {parts['sde']:.3f}", fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------
# ShapesWorld captions <-> scenes
# ---------------------------------------------------------------------------------------------


def _is_shapes(pipe) -> bool:
    return spec(pipe).world == "shapes"


def shapes_captions(n: int = 8, seed: int = 0) -> list[str]:
    """``n`` different full captions of random ShapesWorld scenes, in every template in turn."""
    from .shapes.world import TEMPLATES, caption, sample_scene

    rng = random.Random(seed)
    out: list[str] = []
    tries = 0
    while len(out) < n and tries < 50 * max(n, 1):
        s = sample_scene(rng, jitter=False)
        cap = caption(s, template=len(out) % len(TEMPLATES))
        if cap not in out:
            out.append(cap)
        tries += 1
    return out


def labels_from_caption(prompt: str) -> dict[str, str]:
    """The ShapesWorld factor values a caption names (factors it leaves out are absent).

    Raises `InputError` for words outside ShapesWorld's vocabulary and for a factor named twice.
    """
    from .shapes.world import FACTORS, vocabulary

    words = re.findall(r"[a-z]+|[,:]|[^\sa-z,:]+", prompt.lower())
    vocab = set(vocabulary())
    unknown = list(dict.fromkeys(w for w in words if w not in vocab))
    if unknown:
        raise InputError(
            f"{', '.join(repr(w) for w in unknown[:4])} not in ShapesWorld's vocabulary; captions use words like "
            "'a small red circle at the top left on a gray background'"
        )
    labels = {}
    for k, values in FACTORS.items():
        hits = [v for v in values if v in words]
        if len(hits) > 1:
            raise InputError(f"the caption names {len(hits)} {k} values ({', '.join(hits)}); name one")
        if hits:
            labels[k] = hits[0]
    return labels


# ---------------------------------------------------------------------------------------------
# The session: cached encodings, directions, sweeps and edits
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Source:
    """One source image ready to edit.

    image: PIL; latent: its `JointLatent` (batch 1); labels: exact factor labels (ShapesWorld
    render), read from pixels (ShapesWorld generation) or None (other models).
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


@dataclasses.dataclass
class Frame:
    """The edit at one strength, as the panels show it."""

    strength: float
    image: Any  # PIL
    reconstruction: Any  # PIL
    trace: dict[str, list]
    cached: bool  # True: no model call was needed
    origin: str  # "sweep" (a cached batched sweep) | "edit" (a single edit, now cached)
    seconds: float  # compute time when it was made


class EditSession:
    """Caches for interactive EIM: sources, directions, sweeps over a strength grid, single edits.

    ``strengths``: the grid a sweep computes in one batch (default 0, 0.25, ..., 2); a slider
    with the same grid then only looks results up. ``settings``: overrides of the method settings
    for every edit (e.g. ``{"steps": 20}``; see `explore.edit.settings_for`). ``templates``
    (models other than ShapesWorld): ``None`` — the default photo templates; ``"prompt"`` — the
    source prompt with the word swapped; or a list as `explore.text_direction` takes.
    ``resolution``: side of generated sources (default the model's). Model calls happen only in
    `source`, `direction`, `sweep` and in `frame` when nothing is cached; ``stats`` counts them.
    """

    def __init__(self, pipe, strengths: Sequence[float] = DEFAULT_STRENGTHS, settings: Mapping[str, Any] | None = None,
                 *, seed: int = 0, templates=None, n_templates: int = 32, resolution: int | None = None,
                 max_sweeps: int = 32, max_frames: int = 512):
        self.pipe = pipe
        strengths = [float(s) for s in strengths]
        if not strengths or any(not math.isfinite(s) for s in strengths):
            raise InputError(f"strengths must be finite numbers, got {strengths!r}")
        self.strengths = tuple(sorted({round(s, 6) for s in strengths}))
        self.settings = dict(settings or {})
        unknown = set(self.settings) - set(EDIT_SETTINGS)
        if unknown:
            raise InputError(f"unknown edit setting(s) {sorted(unknown)}; known: {', '.join(EDIT_SETTINGS)}")
        self.seed = int(seed)
        self.templates = templates
        self.n_templates = int(n_templates)
        self.resolution = resolution
        self.max_sweeps, self.max_frames = int(max_sweeps), int(max_frames)
        self.shapes = _is_shapes(pipe)
        self._sources: OrderedDict[tuple, Source] = OrderedDict()
        self._directions: dict[tuple, Any] = {}
        self._sweeps: OrderedDict[EditKey, Any] = OrderedDict()
        self._frames: OrderedDict[tuple, Frame] = OrderedDict()
        self.stats = {"sources": 0, "directions": 0, "sweeps": 0, "edits": 0, "hits": 0}

    # -- sources ---------------------------------------------------------------------------------

    def source(self, prompt: str, seed: int = 0, how: str = "auto", image=None) -> Source:
        """Encode a source, cached by ``(how, prompt, seed)`` (or the image's bytes).

        ``how``: ``"render"`` (ShapesWorld: the world's exact render of a scene matching the
        caption; factors it leaves out and the jitter come from ``seed``), ``"generate"`` (the
        model samples it from the prompt with noise ``seed``), ``"auto"`` (render on ShapesWorld,
        generate elsewhere). Pass ``image=`` to edit your own picture (``prompt`` describes it).
        """
        from .latent import check_prompts

        if not isinstance(prompt, str):
            raise InputError(f"the source caption must be a string, got {type(prompt).__name__}")
        prompt = " ".join(prompt.split())
        check_prompts(prompt)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        seed = int(seed)
        if image is not None:
            how = "image"
            pil = image = as_pil(image)  # the package's one set of image rules: paths, modes, ranges, shapes
            key = ("image", prompt, hashlib.sha1(pil.tobytes()).hexdigest())
        else:
            if how == "auto":
                how = "render" if self.shapes else "generate"
            if how not in ("render", "generate"):
                raise InputError(f"how must be 'render', 'generate' or 'auto', got {how!r}")
            if how == "render" and not self.shapes:
                raise InputError("how='render' draws ShapesWorld scenes; for this model use how='generate' or image=")
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

    def _make_source(self, key, prompt, seed, how, image) -> Source:
        from .edit import generate, source_labels
        from .latent import encode

        labels = None
        if self.shapes:
            named = labels_from_caption(prompt)  # vocabulary and consistency checks, whatever `how` is
        if how == "image":
            pil = as_pil(image)
        elif how == "render":
            from PIL import Image

            from .shapes.world import render, sample_scene

            scene = sample_scene(random.Random(seed), jitter=True, **named)
            pil = Image.fromarray(render(scene, spec(self.pipe).resolution))
            labels = scene.labels
        else:
            size = self.resolution
            pil = generate(self.pipe, prompt, seed=seed, height=size, width=size)[0]
        latent = encode(self.pipe, pil, prompt)
        if labels is None and self.shapes:
            labels = source_labels(self.pipe, latent, np.asarray(pil))
        return Source(key, prompt, seed, how, pil, latent, labels)

    # -- directions ------------------------------------------------------------------------------

    def add_direction(self, direction) -> None:
        """Use this `Direction` (e.g. from a `DirectionLibrary`) for its (attribute, source, target)."""
        direction.check(self.pipe)
        self._directions[(direction.attribute, direction.source, direction.target)] = direction

    def direction(self, attribute: str, v_minus: str, v_plus: str, prompt: str | None = None):
        """The text direction ``v_minus -> v_plus`` (cached; ShapesWorld: its caption grammar)."""
        from .directions import text_direction

        key = (attribute, v_minus, v_plus)
        if self.templates == "prompt":
            key += (prompt,)
        if key not in self._directions:
            if self.shapes:
                d = text_direction(self.pipe, v_minus, v_plus, attribute=attribute, n=self.n_templates)
            else:
                templates = self.templates
                if templates == "prompt":
                    if not prompt:
                        raise InputError("templates='prompt' needs the source prompt")
                    templates = [prompt]
                d = text_direction(self.pipe, v_minus, v_plus, templates=templates, attribute=attribute)
            self._directions[key] = d
            self.stats["directions"] += 1
        return self._directions[key]

    # -- planning --------------------------------------------------------------------------------

    def resolved_settings(self, method: str) -> dict[str, Any]:
        from .edit import settings_for

        return settings_for(self.pipe, method, **self.settings)

    def plan(self, source: Source, attribute: str, target: str, method: str = "hsds", preserve=None,
             source_value: str | None = None) -> EditKey:
        """Check an edit's inputs and return its cache key (raises `InputError` with a one-line reason).

        ShapesWorld: ``attribute`` a factor key, ``target`` one of its values; the source value is
        the source's label. Other models: ``source_value`` and ``target`` are words (the direction is
        ``source_value -> target``). ``preserve`` (HSDS and "image" only): factor names (ShapesWorld;
        None = every other factor) or ``(v-, v+)`` word pairs.
        """
        from .objectives import get_objective

        objective = get_objective(method)
        if self.shapes:
            from .shapes.world import FACTORS

            if attribute not in FACTORS:
                raise InputError(f"unknown attribute {attribute!r}; pick one of {', '.join(FACTORS)}")
            if target not in FACTORS[attribute]:
                raise InputError(f"{target!r} is not a {attribute}; pick one of {', '.join(FACTORS[attribute])}")
            v_minus = (source.labels or {}).get(attribute) if source_value is None else source_value
            if v_minus is None:
                raise InputError(f"the source's {attribute} could not be read from its pixels; pick another seed or "
                                 "use a rendered source (how='render')")
            if v_minus not in FACTORS[attribute]:
                raise InputError(f"{v_minus!r} is not a {attribute}; pick one of {', '.join(FACTORS[attribute])}")
        else:
            attribute = (attribute or "attribute").strip() or "attribute"
            v_minus = (source_value or "").strip()
            target = (target or "").strip() if isinstance(target, str) else target
            if not v_minus or not target:
                raise InputError("type the word to change (as it appears in the prompt) and the word to change it to")
        if target == v_minus:
            raise InputError(f"the source's {attribute} is already {target!r}; pick another target value")
        pres: tuple = ()
        if "fd" in objective.needs:
            pres = self._preserve(source, attribute, preserve)
        settings = self.resolved_settings(objective.name)
        return EditKey(source.key, attribute, v_minus, target, objective.name, pres,
                       tuple(sorted(settings.items())), self.seed)

    def _preserve(self, source: Source, attribute: str, preserve) -> tuple:
        if self.shapes:
            from .shapes.world import FACTOR_KEYS, FACTORS

            known = source.labels or {}
            if preserve is None:
                return tuple(k for k in FACTOR_KEYS if k != attribute and k in known)
            names = [preserve] if isinstance(preserve, str) else list(preserve)
            for k in names:
                if k not in FACTORS:
                    raise InputError(f"cannot preserve {k!r}: not a factor; pick from {', '.join(FACTOR_KEYS)}")
                if k not in known:
                    raise InputError(f"cannot preserve {k}: the source's {k} could not be read; untick it")
            return tuple(k for k in FACTOR_KEYS if k in names and k != attribute)
        if preserve is None:
            return ()
        pairs = parse_pairs(preserve) if isinstance(preserve, str) else [tuple(p) for p in preserve]
        for p in pairs:
            if len(p) != 2 or not all(isinstance(w, str) and w.strip() for w in p):
                raise InputError(f"preserve pairs are (word, other word), got {p!r}")
        return tuple((a.strip(), b.strip()) for a, b in pairs)

    # -- computing -------------------------------------------------------------------------------

    def _source_of(self, key: EditKey) -> Source:
        src = self._sources.get(key.source)
        if src is None:
            raise InputError("that source is no longer cached; call session.source(...) again")
        return src

    def _edit_args(self, key: EditKey) -> tuple[Source, Any, dict[str, Any]]:
        src = self._source_of(key)
        d = self.direction(key.attribute, key.v_minus, key.v_plus, prompt=src.prompt)
        pres = list(key.preserve) if key.method in ("hsds", "image") else None
        overrides = {k: v for k, v in self.settings.items()}
        return src, d, {"preserve": pres, "labels": src.labels, "seed": key.seed, **overrides}

    def has_sweep(self, key: EditKey) -> bool:
        return key in self._sweeps

    def cached(self, key: EditKey, strength: float) -> bool:
        """Would `frame` answer without a model call?"""
        s = round(float(strength), 6)
        return (key in self._sweeps and s in self.strengths) or (key, s) in self._frames

    def sweep(self, key: EditKey, progress: bool = False):
        """The batched sweep of ``key`` over the session's strength grid (`explore.edit.SweepResult`), cached."""
        from .edit import sweep

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
        from .edit import _check_strength, edit

        s = round(_check_strength(strength), 6)
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
        res = edit(self.pipe, src.latent, d, s, key.method, **kw)
        fr = Frame(s, res.image, res.reconstruction, res.trace, False, "edit", res.seconds)
        self._frames[(key, s)] = fr
        while len(self._frames) > self.max_frames:
            self._frames.popitem(last=False)
        self.stats["edits"] += 1
        return fr

    def clear(self) -> None:
        """Forget every cached source, direction, sweep and edit."""
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


# ---------------------------------------------------------------------------------------------
# Panels
# ---------------------------------------------------------------------------------------------


class _Panel(abc.ABC):
    """Shared by the panels: a status label, error handling, a hold on callbacks, notebook display."""

    widget: Any

    def _init_status(self):
        import ipywidgets as W

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
    import ipywidgets as W

    im = W.Image(format="png", value=b"")
    if width:
        im.layout.width = f"{width}px"
    if css:
        im.add_class(css)
    return im


def _titled(title: str, widget, width: int | None = None):
    import ipywidgets as W

    box = W.VBox([W.HTML(f"<b>{title}</b>"), widget])
    if width:
        box.layout.width = f"{width}px"
    return box


def _set_png(image_widget, data: bytes) -> None:
    """Show PNG bytes at their own pixel size (the browser must not rescale: NEAREST upscaling stays crisp)."""
    from PIL import Image

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
        import ipywidgets as W

        from .objectives import METHODS

        self.session = session
        self.display_size = display_size
        self._init_status()
        self._source: Source | None = None
        self._png: OrderedDict[tuple, dict[str, bytes]] = OrderedDict()
        self._latent_png: dict[tuple, bytes] = {}
        shapes = session.shapes
        if prompts is None:
            prompts = shapes_captions(8, seed) if shapes else ["a photo of a red car"]
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
            from .shapes.world import FACTOR_KEYS, FACTORS

            attribute = attribute or "color"
            self.attribute = W.Dropdown(options=list(FACTOR_KEYS), value=attribute, description="attribute")
            self.target = W.Dropdown(options=list(FACTORS[attribute]), description="target")
            self._wanted_target = target
            self.source_word = None
            self.preserve = {k: W.Checkbox(value=True, description=k, indent=False, layout=W.Layout(width="110px"))
                             for k in FACTOR_KEYS}
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

    def _labels_html(self, src: Source) -> str:
        if not src.labels:
            return ""
        how = {"render": "exact (rendered)", "generate": "read from pixels", "image": "read from pixels"}[src.how]
        items = ", ".join(f"{k}={v}" for k, v in src.labels.items())
        return f"<div style='font-size:85%'>labels, {how}: {items}</div>"

    def _sync_targets(self) -> None:
        if not self.session.shapes:
            return
        from .shapes.world import FACTORS

        attr = self.attribute.value
        current = (self._source.labels or {}).get(attr) if self._source else None
        options = [v for v in FACTORS[attr] if v != current]
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


class DirectionMap:
    """Directions -> 2-D coordinates per (kind, projection), cached; the figure with one point ringed."""

    def __init__(self, directions: Sequence, seed: int = 0, n_neighbors: int = 15):
        directions = list(directions)
        if len(directions) < 2:
            raise InputError(f"a direction map needs at least 2 directions, got {len(directions)}")
        self.directions = directions
        self.names = [d.name for d in directions]
        self.seed, self.n_neighbors = seed, n_neighbors
        self._coords: dict[tuple[str, str], tuple[np.ndarray, tuple[str, str]]] = {}

    def coords(self, kind: str = "dc", projection: str = "pca") -> tuple[np.ndarray, tuple[str, str]]:
        from .geometry import direction_matrix, pca, umap

        key = (kind, projection)
        if key not in self._coords:
            X, _ = direction_matrix(self.directions, kind=kind)
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

    def figure(self, kind: str = "dc", projection: str = "pca", selected: int | None = None):
        from .geometry import plot_projection

        xy, labels = self.coords(kind, projection)
        values = [f"{d.source}→{d.target}" for d in self.directions]
        fig = plot_projection(xy, [d.attribute for d in self.directions], values,
                              title=f"{projection.upper()} of {kind} directions", axis_labels=labels)
        if selected is not None:
            ax = fig.axes[0]
            ax.scatter([xy[selected, 0]], [xy[selected, 1]], s=180, facecolors="none", edgecolors="k", linewidths=2)
            ax.set_title(f"{projection.upper()} of {kind} · selected: {self.names[selected]}", fontsize=9)
        return fig


class GeometryPanel(_Panel):
    """PCA / UMAP of a set of directions coloured by attribute; the selected direction's edit beside it.

    ``prompt``: a base source caption (ShapesWorld). Selecting ``attr: a → b`` edits a render of
    the base scene with ``attr = a`` toward ``b`` through the session (so it is cached like the
    tour). Widgets: ``projection``, ``kind``, ``direction`` (a dropdown of names), ``strength``,
    ``method``; images ``map_image`` and ``edit_image``.
    """

    def __init__(self, session: EditSession, directions: Sequence, prompt: str | None = None, *, seed: int = 0,
                 strength: float = 1.0, method: str = "hsds", projections: Sequence[str] = ("pca", "umap"),
                 kinds: Sequence[str] = ("dc", "dp", "dc+dp"), display_size: int = DISPLAY_SIZE):
        import ipywidgets as W

        from .objectives import METHODS

        if not session.shapes:
            raise InputError("GeometryPanel shows edits of ShapesWorld scenes; use the geometry functions elsewhere")
        self.session = session
        self.display_size = display_size
        self._init_status()
        self.map = DirectionMap(directions, seed=seed)
        for d in self.map.directions:
            session.add_direction(d)
        self.base = labels_from_caption(prompt or shapes_captions(1, seed)[0])
        self.seed_value = seed
        self._png: dict[tuple, bytes] = {}
        self.projection = W.ToggleButtons(options=list(projections), value=projections[0], description="view")
        self.kind = W.ToggleButtons(options=list(kinds), value=kinds[0], description="part")
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
        for wdg, level in ((self.projection, "map"), (self.kind, "map"), (self.direction, "all"),
                           (self.strength, "edit"), (self.method, "edit")):
            self._observe(wdg, level)
        self.widget = W.VBox([
            W.HBox([self.projection, self.kind]), W.HBox([self.direction, self.strength]), self.method, self.status,
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
            k = (self.kind.value, self.projection.value, self.selected)
            if k not in self._png:
                if self.projection.value == "umap":
                    self._say("computing UMAP (the first call compiles numba code; cached afterwards)…")
                self._png[k] = figure_png(self.map.figure(*k))
            self.map_image.value = self._png[k]
        if level in ("edit", "all"):
            d = self.map.directions[self.selected]
            from .shapes.world import caption

            labels = {**self.base, d.attribute: d.source}
            src = self.session.source(caption(labels, template=0), self.seed_value, "render")
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
    (`explore.attention.attention_map`), so the sliders only look maps up. ``layer`` "mean"
    averages the layers (each renormalised first); widgets ``word``, ``layer``, ``t``; image
    ``overlay_image``; ``grid_image`` shows every layer x ``t``.
    """

    def __init__(self, session: EditSession, prompt: str | None = None, *, seed: int = 0, how: str = "auto",
                 timesteps: Sequence[float] = (0.2, 0.4, 0.6, 0.8), words: Sequence[str] | None = None,
                 display_size: int = DISPLAY_SIZE):
        import ipywidgets as W

        self.session = session
        self.display_size = display_size
        self._init_status()
        if prompt is None:
            prompt = shapes_captions(1, seed)[0] if session.shapes else "a photo of a red car"
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
            from .shapes.world import FACTORS

            values = {v for vs in FACTORS.values() for v in vs}
            words = [w for w in words if w in values]
        else:
            words = [w for w in words if len(w) > 2]
        return list(dict.fromkeys(words))

    def maps(self, word: str):
        """`explore.attention.AttentionMaps` of ``word`` (every layer, every ``t``), cached."""
        from .attention import attention_map

        if word not in self._maps:
            self._maps[word] = attention_map(self.session.pipe, self.source.latent, word, t=self.timesteps,
                                             seed=self.session.seed)
        return self._maps[word]

    def refresh(self, level: str = "all") -> None:
        self._guard(lambda: self._refresh(level))

    def _refresh(self, level: str) -> None:
        from .attention import attention_grid

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
        import ipywidgets as W

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
        from .probe import plot_accuracy

        factors = list(self.factors.value)
        if not factors:
            raise InputError("select at least one factor")
        t = None if self.t.value == "best" else self.t.value
        k = (tuple(factors), t)
        if k not in self._png:
            self._png[k] = figure_png(plot_accuracy(self.results, factors, t))
        self.plot_image.value = self._png[k]
        self._say(f"{len(factors)} factor(s), t = {'best per site' if t is None else t}")


@torch.no_grad()
def steered_image(pipe, latent, site: str, vector, alpha: float, *, t_render: float = 0.6, seed: int = 0,
                  guidance: float | None = None):
    """Activation steering: render ``latent`` from ``t_render`` with ``alpha * vector`` added at ``site``.

    Same render noise as an EIM edit with ``seed`` (`explore.edit.edit`), so ``alpha = 0`` is the
    reconstruction of the text-only method at that ``t_render``. ``vector``: ``(dim,)`` added to
    every token of the site's stream (or ``(tokens, dim)``). Returns a PIL image.
    """
    from .edit import render
    from .hooks import hooks, steer
    from .latent import decode

    vec = torch.as_tensor(np.asarray(vector), dtype=torch.float32)
    with hooks(pipe, {site: steer(vec, float(alpha))}):
        z = render(pipe, latent.z.float(), latent.c.float(), latent.p.float(), t_render, [seed + 7919], guidance)
    return decode(pipe, z)[0]


class SteeringPanel(_Panel):
    """Activation steering along a probe's class-mean direction, next to the EIM edit of the same change.

    ``probes``: `explore.probe.ProbeResults`; ``dataset``: its `ActivationDataset` (sets the unit of
    ``alpha``: the median norm of the pooled activations at the site, so ``alpha = 1`` moves by a
    typical activation's length). Widgets ``factor``, ``value``, ``site``, ``alpha``, ``method``;
    image ``compare_image`` (source | steered | EIM edit at λ = 1).
    """

    def __init__(self, session: EditSession, probes, prompt: str | None = None, dataset=None, *, seed: int = 0,
                 t_render: float = 0.6, method: str = "hsds", display_size: int = DISPLAY_SIZE):
        import ipywidgets as W

        from .objectives import METHODS

        self.session, self.probes, self.dataset = session, probes, dataset
        self.t_render = t_render
        self.display_size = display_size
        self._init_status()
        self._png: dict[tuple, bytes] = {}
        prompt = prompt or shapes_captions(1, seed)[0]
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


# ---------------------------------------------------------------------------------------------
# Latency benchmark
# ---------------------------------------------------------------------------------------------


def measure_latency(pipe, *, prompt: str | None = None, attribute: str = "color", target: str | None = None,
                    settings: Mapping[str, Any] | None = None, strengths: Sequence[float] = DEFAULT_STRENGTHS,
                    repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Seconds a user waits in the tour's `EditPanel` (not a test: numbers depend on the machine).

    The panel opens at the middle strength of the grid (``open_s``: encoding, the preserved
    directions, the first edit — one-time costs). ``fresh_edit_s``: median over ``repeats`` slider
    moves to strengths nothing cached yet (one HSDS edit each, including the redraw);
    ``sweep_s``: one batched sweep over ``strengths``; ``cached_move_s`` / ``cached_move_max_s``:
    median / max redraw after moving the slider to each grid strength once the sweep is cached
    (first visit: PNGs and the trace plot are drawn).
    """
    grid = sorted({round(float(s), 6) for s in strengths})
    start = grid[len(grid) // 2]
    session = EditSession(pipe, grid, settings, seed=seed)
    t0 = time.perf_counter()
    if session.shapes:
        prompts = [prompt] if prompt else shapes_captions(1, seed)
        panel = EditPanel(session, prompts, attribute=attribute, target=target, method="hsds", strength=start,
                          seed=seed)
    else:
        panel = EditPanel(session, [prompt or "a photo of a red car"], source_word="red", target=target or "blue",
                          method="hsds", strength=start, seed=seed)
    open_s = time.perf_counter() - t0
    if panel.last_error is not None:
        raise panel.last_error
    fresh_values = [s for s in grid if s not in (0.0, start)][:repeats] or [start]
    fresh = []
    for s in fresh_values:
        t0 = time.perf_counter()
        panel.strength.value = s
        fresh.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    panel.run_sweep()
    sweep_s = time.perf_counter() - t0
    moves = []
    for s in [s for s in reversed(grid) if s not in fresh_values]:
        t0 = time.perf_counter()
        panel.strength.value = s
        moves.append(time.perf_counter() - t0)
    if panel.last_error is not None:
        raise panel.last_error
    key = panel.key()
    return {
        "model": spec(pipe).model_id, "method": "hsds", "attribute": key.attribute, "edit": f"{key.v_minus}->"
        f"{key.v_plus}", "preserved_factors": len(key.preserve), "settings": dict(key.settings),
        "strengths": grid, "cached_move_s": float(np.median(moves)) if moves else None,
        "cached_move_max_s": float(np.max(moves)) if moves else None, "open_s": open_s,
        "fresh_edit_s": float(np.median(fresh)),
        "fresh_edit_all_s": fresh, "sweep_s": sweep_s, "torch_threads": torch.get_num_threads(),
    }


__all__ = [
    "AttentionPanel", "DirectionMap", "EditKey", "EditPanel", "EditSession", "Frame", "GeometryPanel",
    "ProbePanel", "Source", "SteeringPanel", "attention_overlay", "display_image", "figure_png", "image_strip",
    "labels_from_caption", "latent_table", "measure_latency", "one_line", "parse_pairs", "plot_joint_latent",
    "plot_trace", "png_bytes", "raw_png", "sde_figure", "shapes_captions", "show", "steered_image", "strength_grid",
]
