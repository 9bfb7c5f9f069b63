"""EIM end to end: `edit` one source, `sweep` strengths in one batch, and `edit_batch`, the engine.

`edit_batch` advances many (source, direction, strength) items together through the method's
loop (`explore.editing.loop.optimise`: every step one batched `velocity` call for all their
branches), then renders them (DESIGN §2: re-noise ``z'`` to ``t_render`` with seeded noise and
sample down with the method's condition; ``x_rec`` and ``x_edit`` share that noise). Each item
draws its ``t``, ``eps`` and render noise from its own seed, so its result does not depend on
what else is in the batch, and strength 0 reproduces the reconstruction exactly.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..images import fit_size, image_row, to_pil_list
from ..pipeline.families import family
from ..pipeline.latent import JointLatent, compute_dtype, decode, encode
from ..pipeline.sampling import image_tokens, render, render_sequences
from ..pipeline.spec import size_multiple, spec
from ..warn import warn
from ..worlds import world_of
from .directions import Direction, compose, parse_swap, text_direction
from .loop import EditItem, conditions, optimise
from .methods import PeerMethod, get_method
from .objectives import Objective
from .preserve import preserved_directions, reduce_basis, source_labels
from .settings import (
    RENDER_SEED_OFFSET,
    WORLD_PROFILE,
    EditSettings,
    check_seed,
    check_strength,
    method_settings,
    settings_class,
    split_variant,
    strength_list,
)


def profile_of(pipe) -> str:
    """Which defaults a method takes on ``pipe``: the worlds' (an embedded world) or its family's name."""
    return WORLD_PROFILE if spec(pipe).world is not None else family(pipe).name


def settings_for(pipe, method: str | Objective | PeerMethod, **overrides):
    """A method's settings on ``pipe``: base, then the method's own, then ``overrides`` (None = default).

    `EditSettings` for the score-distillation methods; the peers' own settings classes (their
    published defaults for the model's family, `explore.editing.settings.PEER_DEFAULTS`).
    """
    get_method(method)  # raises with the list of methods
    name = method if isinstance(method, str) else method.name
    half = compute_dtype(pipe.transformer) in (torch.bfloat16, torch.float16)
    return method_settings(name, profile_of(pipe), spec(pipe).guidance, half, **overrides)


@dataclasses.dataclass
class EditResult:
    """The outcome of one edit.

    image / reconstruction / source_image: PIL images (``x_edit``, ``x_rec`` = EIM at strength 0
    with the same render noise, and the source as given or decoded from ``z0``).
    latent: the edited `JointLatent` ``(z', c', p')``; source_latent: the source `JointLatent`.
    dz: ``(C, h, w)`` = ``z' - z0``, the direction actually applied in ``z``.
    trace: per-step lists (``t``, ``grad_norm``, ``edit_norm``, ``rec_norm``, ``removed``, ``dz_norm``).
    """

    image: Any
    reconstruction: Any
    source_image: Any
    latent: JointLatent
    source_latent: JointLatent
    dz: torch.Tensor
    direction: Direction
    method: str
    strength: float
    settings: EditSettings
    trace: dict[str, list]
    seconds: float
    evaluations: int
    labels: dict[str, str] | None = None
    calls: int = 0  # batched transformer calls (launch-bound cost; ``evaluations``: compute-bound)

    def image_direction(self) -> Direction:
        """The edit's direction with ``dz`` filled in (for geometry of image-side directions)."""
        return dataclasses.replace(self.direction, dz=self.dz.detach().cpu(),
                                   metadata={**self.direction.metadata, "strength": self.strength,
                                             "method": self.method})

    def grid(self):
        """Source | reconstruction | edit, side by side (PIL)."""
        return image_row([self.source_image, self.reconstruction, self.image])


def _as_latent(pipe, source, prompt, resize) -> tuple[JointLatent, Any]:
    if isinstance(source, JointLatent):
        if len(source) != 1:
            raise InputError(f"edit takes one source; got a batch of {len(source)} (use edit_batch)")
        if source.model_id != spec(pipe).model_id:
            raise InputError(f"the source latent belongs to model {source.model_id!r}, not {spec(pipe).model_id!r}")
        return source, None
    if prompt is None:
        raise InputError("an image source needs prompt= (a description of the source image)")
    latent = encode(pipe, source, prompt, resize=resize)
    if len(latent) != 1:
        raise InputError("edit takes one image; use edit_batch for several")
    return latent, fit_size(to_pil_list(source), size_multiple(pipe), resize)[0]


def edit_batch(pipe, sources: Sequence[JointLatent], directions: Sequence[Direction], strengths: Sequence[float],
               method: str | Objective = "hsds", preserve=None, **kw) -> dict[str, Any]:
    """The batched engine: item ``i`` edits ``sources[i]`` along ``directions[i]`` at ``strengths[i]``.

    Keywords: ``seeds``, ``labels``, ``progress``, ``reuse`` (the output of an earlier `edit_batch`
    on the same items whose optimisation this method shares: ``"image"`` renders HSDS's ``z'``; its
    ``z`` is used instead of optimising again, provided the optimisation settings match) and the
    edit settings.

    Returns ``{"z": (N, C, h, w) edited latents, "x": (N, C, h, w) rendered latents, "c", "p": the
    edited conditions, "trace", "evaluations" (transformer sequences), "calls" (batched transformer
    calls: the launch-bound cost; an optimisation reused from ``reuse`` counts in full, as it does
    in ``evaluations``), "settings", "objective"}``.
    Items are independent: each uses its own seed for ``t``/``eps`` and for the render noise, so an
    item gives the same result in any batch (up to float rounding of batched kernels). The
    reconstruction ``x_rec`` of a source is the item at strength 0 with the same seed.
    """
    calls = [0]
    hook = pipe.transformer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        out = _edit_batch(pipe, sources, directions, strengths, method, preserve, calls=calls, **kw)
    finally:
        hook.remove()
    out["calls"] = calls[0] + out.pop("reused_calls", 0)
    return out


def _edit_batch(
    pipe,
    sources: Sequence[JointLatent],
    directions: Sequence[Direction],
    strengths: Sequence[float],
    method: str | Objective = "hsds",
    preserve=None,
    *,
    seeds: Sequence[int] | None = None,
    labels: Sequence[dict | None] | None = None,
    progress: bool = False,
    reuse: dict[str, Any] | None = None,
    calls: list[int],
    **overrides,
) -> dict[str, Any]:
    """`edit_batch` without its call counter (``calls``: a one-element list the counting hook updates)."""
    objective = get_method(method)
    family(pipe).check_method(objective.name)
    settings = settings_for(pipe, method if isinstance(method, str) else objective.name, **overrides)
    if preserve is None and isinstance(method, str):
        preserve = split_variant(method)[2]
    n = len(sources)
    if not (len(directions) == len(strengths) == n) or n == 0:
        raise InputError(f"need as many directions and strengths as sources, got {n}, {len(directions)}, "
                         f"{len(strengths)}")
    sizes = sorted({tuple(src.image_size) for src in sources})
    if len(sizes) > 1:
        raise InputError(f"the sources of one batch have different image sizes {sizes}; encode them with one "
                         "resize=(H, W) (evaluate: resize=...) so they share a size")
    seeds = [check_seed(x) for x in seeds] if seeds is not None else [0] * n
    if len(seeds) != n:
        raise InputError(f"need one seed per source, got {len(seeds)} seeds for {n} sources")
    labels = list(labels) if labels is not None else [None] * n
    # identified directions (carrying dz) in identify mode are only scaled and rendered: nothing to preserve
    manipulating = getattr(settings, "mode", None) == "identify" and all(d.dz is not None for d in directions)
    needs_fd = "fd" in objective.needs and not manipulating
    items = []
    for i in range(n):
        d = directions[i]
        d.check(pipe, sources[i])
        lab = labels[i]
        if needs_fd and lab is None and preserve is None:
            lab = source_labels(pipe, sources[i])
        prompt = sources[i].prompt[0] if sources[i].prompt else None
        pres = preserved_directions(pipe, d, preserve, lab, prompt=prompt) if needs_fd else []
        for pd in pres:
            pd.check(pipe, sources[i])
        if pres and settings.basis:  # None or 0: every preserved direction
            pres = reduce_basis(pres, settings.basis)
        items.append(EditItem(sources[i], d, check_strength(strengths[i]), pres, int(seeds[i])))
    if needs_fd and not any(it.preserve for it in items):
        warn(f"{objective.name}: no preserved directions, so this edit is DDS with extra cost; pass "
             "preserve= (factor names, (v-, v+) pairs, Directions or 'auto')")
    if isinstance(objective, PeerMethod):  # a sampler: its output is the edit (no EIM render)
        x, trace, seq = objective.run(pipe, items, settings, progress)
        _, _, _, c_edit, p_edit, _ = conditions(items)
        return {"z": x, "x": x, "c": c_edit, "p": p_edit, "trace": trace, "evaluations": seq,
                "optimisation_evaluations": seq, "settings": settings, "objective": objective, "reused": False}
    info: dict = {}
    if reuse is not None:
        mismatch = settings.same_optimisation(reuse["settings"])
        if mismatch:
            raise InputError(f"cannot reuse an optimisation run with different {', '.join(mismatch)}")
        # The method's cost is still counted in full: a standalone run would have optimised.
        z_edit, trace, seq = reuse["z"], reuse["trace"], reuse["optimisation_evaluations"]
        info["alpha"] = reuse.get("alpha")
        info["reused_calls"] = reuse.get("optimisation_calls", 0)
    elif settings.mode == "identify" and objective.optimise and objective.edits_image:
        z_edit, trace, seq = identify_then_manipulate(pipe, items, objective, settings, progress, info)
    else:
        z_edit, trace, seq = optimise(pipe, items, objective, settings, progress, info=info)
    optimisation_evaluations, optimisation_calls = seq, calls[0] + info.get("reused_calls", 0)
    z0 = torch.cat([it.latent.z for it in items]).float()
    c = torch.cat([it.latent.c for it in items]).float()
    p = torch.cat([it.latent.p for it in items]).float()
    alpha = info.get("alpha") if settings.clean_condition else None
    dc = torch.stack([_condition(it, alpha[i] if alpha else None, "dc").to(c.device) * it.strength
                      for i, it in enumerate(items)])
    dp = torch.stack([_condition(it, alpha[i] if alpha else None, "dp").to(c.device) * it.strength
                      for i, it in enumerate(items)])
    c_edit, p_edit = c + dc, p + dp
    z_render = z_edit if objective.edits_image else z0
    c_render, p_render = (c_edit, p_edit) if objective.edits_text else (c, p)
    render_seeds = [s + RENDER_SEED_OFFSET for s in seeds]  # a stream apart from the optimisation's
    x = render(pipe, z_render, c_render, p_render, settings.t_render, render_seeds, settings.guidance,
               settings.render_steps)
    seq += render_sequences(pipe, settings.t_render, settings.render_steps, n, settings.guidance,
                            image_tokens=image_tokens(pipe, z0.shape))
    return {"z": z_edit, "x": x, "c": c_edit, "p": p_edit, "trace": trace, "evaluations": seq,
            "optimisation_evaluations": optimisation_evaluations, "optimisation_calls": optimisation_calls,
            "reused_calls": info.get("reused_calls", 0), "settings": settings, "objective": objective,
            "reused": reuse is not None, "alpha": info.get("alpha")}


def _condition(item: EditItem, alpha: torch.Tensor | None, part: str) -> torch.Tensor:
    """The item's ``Δc`` (``part="dc"``) or ``Δp``, cleaned by ``α`` of its preserved directions when given:
    ``Δc* = Δc - Σ_j α_j Δc_j`` (``clean_condition``)."""
    base = getattr(item.direction, part).float()
    if alpha is None or not item.preserve:
        return base
    return base - sum(float(a) * getattr(d, part).to(base.device).float() for a, d in zip(alpha, item.preserve))


def identify_then_manipulate(pipe, items: Sequence[EditItem], objective: Objective, settings: EditSettings,
                             progress: bool = False, info: dict | None = None):
    """``mode="identify"``: optimise each distinct (source, direction, seed) once at strength 1, then
    ``z = z0 + λ dz`` for every item (``dz = z'_1 - z0``); a direction that carries ``dz`` already (an
    identified one) is only scaled. Returns ``(z, trace, sequences)`` like `optimise`; ``info["alpha"]``
    per item as `optimise` gives it (from the identifying run)."""
    z0 = torch.cat([it.latent.z for it in items]).float()
    keys: dict[tuple, int] = {}
    which: list[int | None] = []
    for i, it in enumerate(items):
        if it.strength == 0 or it.direction.dz is not None:
            which.append(None)
            continue
        which.append(keys.setdefault((id(it.latent), id(it.direction), it.seed), i))
    reps = list(keys.values())
    run_info: dict = {}
    if reps:
        runs = [dataclasses.replace(items[i], strength=1.0) for i in reps]
        z1, tr, seq = optimise(pipe, runs, objective, settings, progress, info=run_info)
    else:
        z1, tr, seq = None, {}, 0
    slot = {i: j for j, i in enumerate(reps)}
    z = z0.clone()
    alpha = [None] * len(items)
    for i, it in enumerate(items):
        if it.strength == 0:
            continue
        if which[i] is None:
            dz = it.direction.dz.to(z.device).float()
        else:
            j = slot[which[i]]
            dz = z1[j] - z0[which[i]]
            alpha[i] = (run_info.get("alpha") or [None] * len(reps))[j]
        z[i] = z0[i] + it.strength * dz
    if info is not None:
        info["alpha"] = alpha
    nan = float("nan")
    trace = {k: [[row[slot[which[i]]] if which[i] is not None else nan for i in range(len(items))] for row in v]
             for k, v in tr.items()}
    return z, trace, seq


def _direction(direction, weights, pipe=None, source=None, prompt=None) -> Direction:
    """One `Direction`, several composed (`explore.editing.directions.compose`) with ``weights``, or
    an edit in words (``"red -> blue"``, or a list of them): the caption direction of the source's
    own prompt (`text_direction` with ``prompt=``)."""
    words = [direction] if isinstance(direction, str) else direction
    if isinstance(words, (list, tuple)) and words and any(isinstance(d, str) for d in words):
        caption = source.prompt[0] if isinstance(source, JointLatent) and source.prompt else prompt
        if pipe is None or caption is None:
            raise InputError("an edit in words ('red -> blue') needs the source's caption: pass prompt=")
        direction = [text_direction(pipe, *parse_swap(d), prompt=caption) if isinstance(d, str) else d for d in words]
        if isinstance(words, str) or (len(direction) == 1 and weights is None):
            direction = direction[0]
    if isinstance(direction, Direction):
        if weights is not None:
            raise InputError("weights= goes with a list of directions (a composed edit)")
        return direction
    if isinstance(direction, (list, tuple)) and direction and all(isinstance(d, Direction) for d in direction):
        return compose(direction, None if weights is None else strength_list(weights))
    raise InputError(f"direction must be a Direction, a list of Directions or words such as 'red -> blue', got "
                     f"{type(direction).__name__}")


def edit(
    pipe,
    source,
    direction: Direction | Sequence[Direction] | str,
    strength: float | Sequence[float] = 1.0,
    method: str | Objective = "hsds",
    preserve=None,
    *,
    prompt: str | None = None,
    weights: Sequence[float] | None = None,
    labels: dict[str, str] | None = None,
    seed: int = 0,
    resize=None,
    progress: bool = False,
    **settings,
) -> EditResult:
    """EIM: encode (if given an image), manipulate ``source`` along ``direction``, render.

    Args:
        pipe: a pipeline from `explore.load_pipeline`.
        source: a `JointLatent` of one image (from `explore.encode`), or an image (PIL, ``(H, W, 3)``
            uint8 or float array, ``(3, H, W)`` tensor, or a path) with ``prompt=`` describing it.
        direction: a `Direction`; a list of them (a composed edit: several attributes at once, with
            ``weights``; preserved directions leave every edited attribute out); or the edit in words,
            ``"red -> blue"`` (or a list of such), which builds the caption direction of the source's
            own prompt (`text_direction` with ``prompt=``).
        strength: λ, the scale of the (composed) direction; 0 reproduces the reconstruction. Any real
            number (numpy and 0-d torch scalars too). A list here is the shorthand for ``weights``.
        method: ``"hsds"`` (default), ``"dds"``, ``"sds"`` (edit both halves, render ``(z', c', p')``),
            ``"text"`` (render ``(z0, c', p')``), ``"image"`` (HSDS's ``z'`` rendered with ``(c, p)``), a
            peer method ``"flowedit"``, ``"flowalign"``, ``"rf-inversion"``, ``"unieditflow"``, ``"fluxspace"``
            (`explore.editing.peers`), or a named variant (`explore.editing.settings.VARIANTS`).
        preserve: what HSDS keeps: attribute names (embedded worlds; default all but the edited one),
            Directions, ``(v-, v+)`` word pairs, or ``"auto"`` (the prompt's other words).
        prompt: the source image's caption (needed when ``source`` is an image).
        weights: one weight per direction of a composed edit (the same keyword in `sweep` and
            `identify`); default 1 each.
        labels: the source's factor labels (embedded worlds read them from the image when left out).
        seed: the noise seed (an integer from 0 to 2**62).
        resize: how an image whose size the model cannot take is fitted: ``"crop"``, ``"resize"`` or
            ``(H, W)``.
        progress: show a progress bar.
        **settings: any `EditSettings` name (``steps=``, ``lr=``, ``t_render=``, ``max_dz=``, ...; the
            peers': ``n_max=``, ``eta=``, ``fine=``, ...); left out or None, the method's default
            (`settings_for`).

    Returns:
        An `EditResult`: ``image``, ``reconstruction`` (EIM at strength 0, same noise) and
        ``source_image`` (PIL); ``latent`` ``(z', c', p')`` and ``source_latent``; ``dz`` ``(C, h, w)``;
        ``trace``; ``evaluations`` (transformer sequences) and ``calls``.
    """
    t0 = time.perf_counter()
    seed = check_seed(seed)
    if isinstance(strength, (list, tuple)):  # the shorthand edit(pipe, src, [d1, d2], [1.0, 0.5])
        if weights is not None:
            raise InputError("give the weights of a composed edit once: weights=[...] (or a list as strength)")
        weights, strength = strength, 1.0
    strength = check_strength(strength)  # before the image is encoded
    direction = _direction(direction, weights, pipe, source, prompt)
    latent, given_image = _as_latent(pipe, source, prompt, resize)
    if labels is None and world_of(pipe) is not None:
        labels = source_labels(pipe, latent, np.asarray(given_image) if given_image is not None else None)
    strength = check_strength(strength)
    strengths = [strength] if strength == 0 else [strength, 0.0]  # item 2: the reconstruction (EIM at 0)
    k = len(strengths)
    out = edit_batch(
        pipe, [latent] * k, [direction] * k, strengths, method, preserve, seeds=[seed] * k, labels=[labels] * k,
        progress=progress, **settings,
    )
    imgs = decode(pipe, torch.cat([out["x"][:1], out["x"][k - 1 :], latent.z.float()]), output_type="pil")
    edited = latent.replace(z=out["z"][:1].to(latent.z.dtype), c=out["c"][:1].to(latent.c.dtype),
                            p=out["p"][:1].to(latent.p.dtype))
    trace = {key: [row[0] for row in v] for key, v in out["trace"].items()}
    return EditResult(
        image=imgs[0], reconstruction=imgs[1], source_image=given_image if given_image is not None else imgs[2],
        latent=edited, source_latent=latent, dz=(out["z"][0] - latent.z[0].float()).detach(),
        direction=direction, method=out["objective"].name, strength=strength, settings=out["settings"], trace=trace,
        seconds=time.perf_counter() - t0, evaluations=out["evaluations"], labels=labels, calls=out["calls"],
    )


@dataclasses.dataclass
class SweepResult:
    """Edits of one source at several strengths, computed in one batch."""

    strengths: list[float]
    images: list
    reconstruction: Any
    source_image: Any
    dz: torch.Tensor  # (S, C, h, w)
    settings: EditSettings
    method: str
    seconds: float
    evaluations: int
    trace: dict[str, list]
    calls: int = 0  # batched transformer calls

    def strip(self, with_source: bool = True):
        """One row: [source, reconstruction,] edits at increasing strength (PIL)."""
        head = [self.source_image, self.reconstruction] if with_source else []
        return image_row(head + list(self.images))

    def __getitem__(self, strength: float):
        return self.images[self.strengths.index(strength)]


def sweep(
    pipe,
    source,
    direction: Direction | Sequence[Direction],
    strengths: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0),
    method: str | Objective = "hsds",
    preserve=None,
    *,
    prompt: str | None = None,
    labels: dict[str, str] | None = None,
    seed: int = 0,
    resize=None,
    progress: bool = False,
    weights: Sequence[float] | None = None,
    **overrides,
) -> SweepResult:
    """Edits of one source at several strengths, all in one batch (same seed, so they differ only by strength).

    Methods that optimise the image latent identify once and scale by default (``mode="identify"``:
    one optimisation at strength 1, then ``z0 + λ dz`` rendered for every λ; `default_sweep_mode`);
    pass ``mode="optimise"`` for one optimisation per strength.

    Args:
        pipe: a pipeline from `load_pipeline`.
        source: a `JointLatent` of one image, or an image with ``prompt=`` (as `edit`).
        direction: a `Direction`, a list of them (composed with ``weights``), or words such as
            ``"red -> blue"`` (the caption direction of ``prompt``).
        strengths: the strengths λ: a list, a 1-d array or tensor, or one number.
        method: as `edit`.
        preserve: as `edit`.
        prompt: the source image's caption.
        labels: the source's factor labels (embedded worlds read them when left out).
        seed: the noise seed.
        resize: as `edit`.
        progress: show a progress bar.
        weights: one weight per direction of a composed edit (each strength scales the whole
            composition).
        **overrides: settings, as `edit`'s ``**settings`` (and ``mode``).

    Returns:
        A `SweepResult`: ``strengths``, ``images`` (PIL, one per strength), ``reconstruction``,
        ``source_image``, ``dz`` ``(S, C, h, w)``; ``.strip()`` draws them in a row.
    """
    t0 = time.perf_counter()
    seed = check_seed(seed)
    direction = _direction(direction, weights, pipe, source, prompt)
    strengths = strength_list(strengths)
    if not strengths:
        raise InputError("strengths is empty")
    overrides = {"mode": default_sweep_mode(method), **overrides} if default_sweep_mode(method) else overrides
    latent, given = _as_latent(pipe, source, prompt, resize)
    if labels is None and world_of(pipe) is not None:
        labels = source_labels(pipe, latent, np.asarray(given) if given is not None else None)
    k = len(strengths)
    run = strengths if 0.0 in strengths else strengths + [0.0]  # the strength-0 item is the reconstruction
    out = edit_batch(pipe, [latent] * len(run), [direction] * len(run), run, method, preserve,
                     seeds=[seed] * len(run), labels=[labels] * len(run), progress=progress, **overrides)
    rec = run.index(0.0)
    imgs = decode(pipe, torch.cat([out["x"][:k], out["x"][rec : rec + 1], latent.z.float()]), output_type="pil")
    return SweepResult(
        strengths=strengths, images=imgs[:k], reconstruction=imgs[k], source_image=given if given is not None else
        imgs[k + 1], dz=(out["z"][:k] - latent.z.float()).detach(), settings=out["settings"],
        method=out["objective"].name, seconds=time.perf_counter() - t0, evaluations=out["evaluations"],
        trace={key: [row[:k] for row in v] for key, v in out["trace"].items()}, calls=out["calls"],
    )


def default_sweep_mode(method) -> str | None:
    """``"identify"`` for a method that optimises the image latent unless its variant fixes the mode
    (``hsds-legacy``: per-strength optimisation); None where the method has no mode (text, peers).

    Sweeps and the panel identify once and scale (`identify`): measured along the strength curve
    0.5 – 2 on two fresh seeds it edits and keeps within 0.04 of one optimisation per strength
    (README), at one optimisation instead of one per strength.
    """
    if not isinstance(method, str):
        return None
    base, variant, _ = split_variant(method)
    if "mode" in variant or settings_class(base) is not EditSettings:
        return None
    obj = get_method(base)
    return "identify" if obj.optimise and obj.edits_image else None


def identify(
    pipe,
    source,
    direction: Direction | Sequence[Direction],
    method: str | Objective = "hsds",
    preserve=None,
    *,
    prompt: str | None = None,
    labels: dict[str, str] | None = None,
    seed: int = 0,
    resize=None,
    progress: bool = False,
    weights: Sequence[float] | None = None,
    **overrides,
) -> Direction:
    """Identify: run ``method``'s optimisation once at strength 1 and return the edit as a direction.

    The direction of the joint latent is ``dz = z'_1 - z0`` (for this source), with ``Δc, Δp``
    (cleaned, ``Δc* = Δc - Σ α_j Δc_j``, with ``clean_condition=True``). `manipulate`,
    ``edit(..., mode="identify")``, ``sweep(..., mode="identify")`` and the panel scale it to any
    strength and only render (``z0 + λ dz``, ``c + λ Δc``). It saves and loads with
    `Direction.save` / `DirectionLibrary` like any direction; ``metadata["identified"]`` says how
    it was made (method, settings, seed, the source prompt, the sequences it cost).

    Args:
        pipe: a pipeline from `load_pipeline`.
        source: a `JointLatent` of one image, or an image with ``prompt=``.
        direction: a `Direction`, a list (with ``weights``), or words such as ``"red -> blue"``.
        method: one that optimises the image latent: ``"hsds"``, ``"dds"``, ``"sds"``, ``"image"``.
        preserve: as `edit`.
        prompt: the source image's caption.
        labels: the source's factor labels.
        seed: the noise seed.
        resize: as `edit`.
        progress: show a progress bar.
        weights: one weight per direction of a composed edit.
        **overrides: settings, as `edit`'s ``**settings``.

    Returns:
        A `Direction` with ``dz`` ``(C, h, w)`` besides ``dc`` ``(L, D)`` and ``dp`` ``(P,)``.
    """
    seed = check_seed(seed)
    direction = _direction(direction, weights, pipe, source, prompt)
    obj = get_method(method)
    if isinstance(obj, PeerMethod) or not (obj.optimise and obj.edits_image):
        raise InputError(f"identify needs a method that optimises the image latent (hsds, dds, sds, image); "
                         f"{obj.name} does not")
    latent, given = _as_latent(pipe, source, prompt, resize)
    if labels is None and world_of(pipe) is not None:
        labels = source_labels(pipe, latent, np.asarray(given) if given is not None else None)
    out = edit_batch(pipe, [latent], [direction], [1.0], method, preserve, seeds=[seed], labels=[labels],
                     progress=progress, **{**overrides, "mode": "optimise", "t_render": 0.0})
    meta = {**direction.metadata, "identified": {
        "method": out["objective"].name, "settings": {k: v for k, v in out["settings"].items()}, "seed": seed,
        "prompt": latent.prompt[0] if latent.prompt else None, "evaluations": out["optimisation_evaluations"],
        "cleaned": bool(out["settings"].clean_condition and out.get("alpha") and out["alpha"][0] is not None)}}
    return dataclasses.replace(
        direction, dc=(out["c"][0] - latent.c[0].float()).detach().cpu(),
        dp=(out["p"][0] - latent.p[0].float()).detach().cpu(), dz=(out["z"][0] - latent.z[0].float()).detach().cpu(),
        metadata=meta)


@dataclasses.dataclass
class ManipulateResult:
    """Renders of an identified direction at several strengths (no optimisation)."""

    strengths: list[float]
    images: list
    seconds: float
    evaluations: int
    calls: int = 0  # batched transformer calls (a render: one per sampler step)


def manipulate(pipe, source: JointLatent, direction: Direction, strengths: float | Sequence[float] = 1.0,
               method: str = "hsds", *, seed: int = 0, **overrides) -> ManipulateResult:
    """Manipulate: render ``(z0 + λ dz, c + λ Δc, p + λ Δp)`` of an identified direction at each strength.

    One batch, one render per strength, nothing optimised.

    Args:
        pipe: a pipeline from `load_pipeline`.
        source: the `JointLatent` the direction was identified on.
        direction: a `Direction` with ``dz`` (from `identify`).
        strengths: one number or several.
        method: the method whose render settings to use.
        seed: the render noise (the same as an `edit` with that seed).
        **overrides: render settings (``t_render``, ``render_steps``, ``guidance``).

    Returns:
        A ``ManipulateResult``: ``strengths``, ``images`` (PIL), ``seconds``, ``evaluations``, ``calls``.
    """
    t0 = time.perf_counter()
    if direction.dz is None:
        raise InputError("manipulate needs an identified direction (with dz): make one with explore.identify")
    strengths = strength_list(strengths)
    if not strengths:
        raise InputError("strengths is empty")
    k = len(strengths)
    out = edit_batch(pipe, [source] * k, [direction] * k, strengths, method, seeds=[seed] * k,
                     **{**overrides, "mode": "identify"})
    return ManipulateResult(strengths, decode(pipe, out["x"], output_type="pil"), time.perf_counter() - t0,
                            out["evaluations"], out["calls"])
