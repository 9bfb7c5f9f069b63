"""Manipulate and render: the optimisation loop shared by every objective, sampling, sweeps.

`edit` is EIM end to end for one source; `edit_batch` is the engine: many (source, direction,
strength) items advance together, every step **one** batched `velocity` call for all their
branches. Each item draws its ``t`` and ``eps`` from its own seeded generator, so its result does
not depend on what else is in the batch. Branches with identical inputs are evaluated once
(strength 0 makes ``c' = c``; at ``z = z0`` the points ``z_t`` and ``ẑ_t`` coincide), which both
saves work and makes strength 0 reproduce the reconstruction exactly.

Render (DESIGN §2): re-noise ``z'`` to ``t_render`` with a seeded noise and sample down with the
method's condition; ``x_rec`` and ``x_edit`` share that noise.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .directions import Direction, text_direction
from .errors import DivergenceError, InputError
from .latent import JointLatent, count_sequences, decode, encode, flow_noise, velocity
from .models import family_of, spec
from .objectives import Objective, StepState, get_objective

# Per-method defaults (DESIGN §2); each method at its own best settings (see docs/editing.md).
BASE_SETTINGS: dict[str, Any] = {
    "steps": 40,
    "lr": 0.3,
    "t_range": (0.5, 0.98),  # dev seed 1000: background edits need high t (docs/editing.md)
    "t_render": 0.3,
    "weight": "1",
    "delta": 0.1,
    "hessian": "finite-difference",
    "render_steps": None,  # None: the model's sampler steps, restricted to t <= t_render
    "max_dz": 20.0,  # divergence guard: |z - z0| per element RMS above this stops the run
    "protect_edit": False,  # HSDS: keep the edit's own Hessian column out of the projection
}
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    # protect_edit: the literal projection (DESIGN §2) also removes the part of g_edit that *is* the
    # edit wherever it overlaps a preserved factor's column; see docs/editing.md for both numbers.
    # lr / t_render for hsds and image: tuned on the development seed 1000 (docs/editing.md).
    "hsds": {"protect_edit": True, "lr": 0.5, "t_render": 0.45},
    "dds": {},
    "sds": {},
    "image": {"protect_edit": True, "lr": 0.5, "t_render": 0.45},
    "text": {"t_render": 0.6},
}
# Settings that change the optimisation itself (not the render).
OPTIMISATION_KEYS = ("steps", "lr", "t_range", "weight", "delta", "hessian", "guidance", "max_dz", "protect_edit")
WEIGHTS = {"1": lambda t: torch.ones_like(t), "1-t": lambda t: 1 - t, "t": lambda t: t}


def settings_for(pipe, method: str, **overrides) -> dict[str, Any]:
    """The settings a method runs with: base, then the method's own, then ``overrides`` (None = default)."""
    if method not in METHOD_SETTINGS:
        get_objective(method)  # raises with the list of methods
    s = {**BASE_SETTINGS, "guidance": spec(pipe).guidance, **METHOD_SETTINGS.get(method, {})}
    s.update({k: v for k, v in overrides.items() if v is not None})
    _validate_settings(s)
    s["t_range"] = tuple(float(x) for x in s["t_range"])
    return s


def _validate_settings(s: dict) -> None:
    def finite(name, lo=None, hi=None, allow_zero=True):
        v = s[name]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise InputError(f"{name} must be a finite number, got {v!r}")
        if lo is not None and (v < lo or (v == lo and not allow_zero)):
            raise InputError(f"{name} must be {'>' if not allow_zero else '>='} {lo}, got {v}")
        if hi is not None and v > hi:
            raise InputError(f"{name} must be <= {hi}, got {v}")

    if not isinstance(s["steps"], int) or isinstance(s["steps"], bool) or s["steps"] < 0:
        raise InputError(f"steps must be a non-negative integer, got {s['steps']!r}")
    finite("lr", 0)
    finite("t_render", 0, 1)
    finite("delta", 0, allow_zero=False)
    finite("guidance", 0)
    finite("max_dz", 0, allow_zero=False)
    tr = s["t_range"]
    if not (isinstance(tr, (tuple, list)) and len(tr) == 2 and all(isinstance(x, (int, float)) for x in tr)):
        raise InputError(f"t_range must be (t_min, t_max), got {tr!r}")
    if not (0 <= tr[0] <= tr[1] <= 1) or not all(math.isfinite(x) for x in tr):
        raise InputError(f"t_range must satisfy 0 <= t_min <= t_max <= 1 (flow sigma), got {tuple(tr)}")
    if s["weight"] not in WEIGHTS:
        raise InputError(f"weight must be one of {', '.join(WEIGHTS)}, got {s['weight']!r}")
    if s["hessian"] not in ("finite-difference", "jvp"):
        raise InputError(f"hessian must be 'finite-difference' or 'jvp', got {s['hessian']!r}")
    if not isinstance(s["protect_edit"], bool):
        raise InputError(f"protect_edit must be True or False, got {s['protect_edit']!r}")
    if s["render_steps"] is not None and (not isinstance(s["render_steps"], int) or s["render_steps"] < 1):
        raise InputError(f"render_steps must be a positive integer or None, got {s['render_steps']!r}")


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def schedule(pipe, steps: int | None = None, t_start: float = 1.0, image_tokens: int | None = None) -> list[float]:
    """The pipeline scheduler's own sigmas (shift included) from ``t_start`` down to 0.

    For ``t_start < 1`` the full ``steps``-step schedule is cut at ``t_start`` (which is kept as the
    first point), so a render takes the steps the sampler would take below that noise level.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    steps = steps or spec(pipe).steps
    sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    kwargs = {}
    if sched.config.get("use_dynamic_shifting", False):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        n = image_tokens or 4096
        c = sched.config
        kwargs["mu"] = calculate_shift(n, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                       c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / steps, steps)
        sched.set_timesteps(sigmas=sigmas, **kwargs)
    else:
        sched.set_timesteps(steps)
    full = [float(s) for s in sched.sigmas]
    if t_start >= 1.0:
        return full
    below = [s for s in full if s < t_start - 1e-6]
    return [float(t_start)] + below if below and below[-1] == 0.0 else [float(t_start)] + below + [0.0]


@torch.no_grad()
def sample(pipe, z_t: torch.Tensor, c: torch.Tensor, p: torch.Tensor, sigmas: Sequence[float],
           guidance: float | None = None) -> torch.Tensor:
    """Euler steps of the flow ODE along ``sigmas`` (the diffusers FlowMatchEuler update), batched."""
    z = z_t.float()
    for s0, s1 in zip(sigmas[:-1], sigmas[1:]):
        v = velocity(pipe, z, s0, c, p, guidance=guidance)
        z = z + (s1 - s0) * v
    return z


def _noise(shape, seeds: Sequence[int], device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


def _latent_shape(pipe, height: int, width: int) -> tuple[int, int, int]:
    from .models import vae_scale_factor

    f = vae_scale_factor(pipe)
    ch = pipe.transformer.config.in_channels // (4 if family_of(pipe) == "flux" else 1)
    return ch, height // f, width // f


@torch.no_grad()
def generate(pipe, prompts: str | Sequence[str], seed: int | Sequence[int] = 0, *, steps: int | None = None,
             guidance: float | None = None, height: int | None = None, width: int | None = None,
             output_type: str = "pil", return_latents: bool = False):
    """Text -> images with the model's default sampler (the same Euler steps as the pipeline's ``__call__``).

    ``seed``: one int (item ``i`` uses ``seed + i``) or one seed per prompt.
    """
    from .latent import encode_text

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
    if len(seeds) != len(prompts):
        raise InputError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    res = spec(pipe).resolution
    shape = _latent_shape(pipe, height or res, width or res)
    c, p = encode_text(pipe, prompts)
    z = _noise(shape, seeds, c.device)
    sig = schedule(pipe, steps, image_tokens=shape[1] * shape[2] // 4)
    z0 = sample(pipe, z, c, p, sig, guidance)
    images = decode(pipe, z0, output_type=output_type)
    return (images, z0) if return_latents else images


@torch.no_grad()
def render(pipe, z: torch.Tensor, c: torch.Tensor, p: torch.Tensor, t_render: float, seeds: Sequence[int],
           guidance: float | None = None, steps: int | None = None) -> torch.Tensor:
    """Re-noise ``z`` to ``t_render`` with seeded noise and sample down to 0 (``t_render=0``: unchanged)."""
    if t_render <= 0:
        return z.float()
    eps = _noise(z.shape[1:], seeds, z.device)
    z_t = flow_noise(z.float(), eps, t_render)
    sig = schedule(pipe, steps, t_start=t_render, image_tokens=z.shape[-1] * z.shape[-2] // 4)
    return sample(pipe, z_t, c, p, sig, guidance)


# ---------------------------------------------------------------------------------------------
# Preserved directions
# ---------------------------------------------------------------------------------------------


def source_labels(pipe, latent: JointLatent, image=None) -> dict[str, str] | None:
    """ShapesWorld factor values of the source (read from its pixels); None for other models."""
    if spec(pipe).world != "shapes":
        return None
    from .shapes.readers import read

    img = image if image is not None else decode(pipe, latent.z[:1], output_type="np")[0]
    r = read(img)
    return {k: v for k, v in r.items() if v is not None}


def preserved_directions(pipe, direction: Direction, preserve, labels: dict[str, str] | None,
                         n: int = 16) -> list[Direction]:
    """Resolve ``preserve`` into directions.

    ``None``: ShapesWorld — every factor but the edited one; other models — none. A list may mix
    factor names (ShapesWorld: one direction from the source's value to each other value),
    `Direction` objects, and ``(v-, v+)`` pairs (text directions with the default templates).
    """
    world = spec(pipe).world
    if preserve is None:
        if world != "shapes":
            return []
        from .shapes.world import FACTOR_KEYS

        preserve = [k for k in FACTOR_KEYS if k != direction.attribute]
    if isinstance(preserve, (str, Direction)):
        preserve = [preserve]
    out: list[Direction] = []
    for item in preserve:
        if isinstance(item, Direction):
            out.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append(text_direction(pipe, item[0], item[1]))
        elif isinstance(item, str):
            if world != "shapes":
                raise InputError(
                    f"preserve={item!r}: attribute names work on ShapesWorld; for this model pass Directions or "
                    "(v-, v+) word pairs, e.g. preserve=[('red', 'blue')]"
                )
            from .shapes.world import FACTORS

            if item not in FACTORS:
                raise InputError(f"unknown attribute {item!r} to preserve; known: {', '.join(FACTORS)}")
            if item == direction.attribute:
                raise InputError(f"cannot preserve {item!r}: it is the attribute being edited")
            if labels is None or item not in labels:
                raise InputError(f"the source's {item} is unknown; pass labels= or Directions to preserve")
            a = labels[item]
            out += [_cached_direction(pipe, a, b, item, n) for b in FACTORS[item] if b != a]
        else:
            raise InputError(f"cannot preserve {item!r}: give attribute names, Directions or (v-, v+) pairs")
    return out


def _cached_direction(pipe, a: str, b: str, attribute: str, n: int) -> Direction:
    cache = getattr(pipe, "_explore_direction_cache", None)
    if cache is None:
        cache = {}
        object.__setattr__(pipe, "_explore_direction_cache", cache)
    key = (attribute, a, b, n)
    if key not in cache:
        cache[key] = text_direction(pipe, a, b, attribute=attribute, n=n)
    return cache[key]


# ---------------------------------------------------------------------------------------------
# The optimisation loop
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Item:
    latent: JointLatent  # batch of 1
    direction: Direction
    strength: float
    preserve: list[Direction]
    seed: int


def _check_strength(x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        raise InputError(f"strength must be a finite number, got {x!r}")
    return float(x)


@torch.no_grad()
def optimise(pipe, items: Sequence[_Item], objective: Objective, settings: dict, progress: bool = False,
             _skip_fixed_points: bool = True) -> tuple[torch.Tensor, dict[str, list], int]:
    """Run the shared loop for a batch of items. Returns ``(z', trace, transformer sequences used)``."""
    device = items[0].latent.z.device
    z0 = torch.cat([it.latent.z for it in items]).float()
    c = torch.cat([it.latent.c for it in items]).float()
    p = torch.cat([it.latent.p for it in items]).float()
    dc = torch.stack([it.direction.dc.to(device).float() * it.strength for it in items])
    dp = torch.stack([it.direction.dp.to(device).float() * it.strength for it in items])
    c_edit, p_edit = c + dc, p + dp
    same_c = [bool(it.strength == 0 or (torch.count_nonzero(dc[i]) == 0 and torch.count_nonzero(dp[i]) == 0))
              for i, it in enumerate(items)]
    z = z0.clone()
    trace: dict[str, list] = {"t": [], "grad_norm": [], "edit_norm": [], "rec_norm": [], "removed": [], "dz_norm": []}
    if not objective.optimise or settings["steps"] == 0:
        return z, trace, 0
    active = [not (_skip_fixed_points and objective.fixed_at_zero and same_c[i]) for i in range(len(items))]
    if not any(active):
        return z, trace, 0
    gens = [torch.Generator().manual_seed(int(it.seed)) for it in items]
    t_min, t_max = settings["t_range"]
    delta = float(settings["delta"])
    w_fn = WEIGHTS[settings["weight"]]
    guidance = float(settings["guidance"])
    needs = set(objective.needs)
    use_jvp = settings["hessian"] == "jvp"
    fam = family_of(pipe)
    sequences = 0
    max_dz = float(settings["max_dz"])
    # the finite-difference conditions c + δΔc_j, p + δΔp_j of every item, once
    fd_conditions = [[(c[i] + delta * d.dc.to(device).float(), p[i] + delta * d.dp.to(device).float())
                      for d in it.preserve] for i, it in enumerate(items)]
    protect = bool(settings.get("protect_edit")) and "fd" in needs
    fd_edit = [(c[i] + delta * it.direction.dc.to(device).float(), p[i] + delta * it.direction.dp.to(device).float())
               for i, it in enumerate(items)] if protect else []
    bar = tqdm(range(settings["steps"]), desc=objective.name, disable=not progress, leave=False)
    for step in bar:
        t = torch.stack([t_min + (t_max - t_min) * torch.rand((), generator=g) for g in gens]).to(device)
        eps = torch.stack([torch.randn(z0.shape[1:], generator=g) for g in gens]).to(device)
        z_t = flow_noise(z, eps, t)
        zh_t = flow_noise(z0, eps, t)
        # Logical branches -> physical rows (identical inputs evaluated once).
        rows = _Rows(t)
        index: list[dict[str, Any]] = []
        same_zs = (z == z0).flatten(1).all(1).tolist()  # one host sync per step, not one per item
        for i in range(len(items)):
            ix: dict[str, Any] = {}
            index.append(ix)
            if not active[i]:
                continue
            same_z = same_zs[i]
            need_src = "src" in needs or "fd" in needs or (same_c[i] and "tgt" in needs) or (
                same_z and "src_hat" in needs)
            if need_src:
                ix["src"] = rows.add(i, z_t[i], c[i], p[i], 0)
            if "tgt" in needs:
                ix["tgt"] = ix["src"] if same_c[i] else rows.add(i, z_t[i], c_edit[i], p_edit[i], 0)
            if "src_hat" in needs:
                ix["src_hat"] = ix["src"] if same_z else rows.add(i, zh_t[i], c[i], p[i], 1)
            if "fd" in needs and not use_jvp:
                ix["fd"] = [rows.add(i, z_t[i], cc, pp, 0) for cc, pp in fd_conditions[i]]
                if protect:
                    ix["fd_edit"] = rows.add(i, z_t[i], *fd_edit[i], 0)
        V = velocity(pipe, torch.stack(rows.z), torch.stack(rows.t), torch.stack(rows.c), torch.stack(rows.p),
                     guidance=guidance, uncond_groups=rows.groups)
        sequences += count_sequences(len(rows.z), guidance, fam, groups=len(set(rows.groups)))
        act = [i for i in range(len(items)) if active[i]]
        v = {k: torch.stack([V[index[i][k]] for i in act]) for k in ("tgt", "src", "src_hat") if k in needs or (
            k == "src" and "fd" in needs)}
        if "fd" in needs:
            if use_jvp:
                cols = [_jvp_columns(pipe, z_t[i], t[i], c[i], p[i],
                                     [items[i].direction, *items[i].preserve] if protect else items[i].preserve,
                                     guidance) for i in act]
                v["h"] = [h[1:] for h in cols] if protect else cols
                if protect:
                    v["h_edit"] = torch.stack([h[0] for h in cols])
                sequences += sum(2 * (len(items[i].preserve) + protect) for i in act)
            else:
                v["h"] = [(V[index[i]["fd"]] - V[index[i]["src"]]) / delta if index[i]["fd"] else
                          V.new_zeros((0, *V.shape[1:])) for i in act]
                if protect:
                    v["h_edit"] = torch.stack([(V[index[i]["fd_edit"]] - V[index[i]["src"]]) / delta for i in act])
        g, diag = objective.gradient(StepState(z=z[act], z0=z0[act], eps=eps[act], t=t[act], v=v))
        w = w_fn(t[act]).view(-1, 1, 1, 1)
        z_new = z.clone()
        z_new[act] = z[act] - settings["lr"] * w * g
        rms = (z_new - z0).flatten(1).pow(2).mean(1).sqrt()
        bad_rows = ~torch.isfinite(z_new).flatten(1).all(1) | ~(rms <= max_dz)
        if bad_rows.any():
            bad = int(torch.nonzero(bad_rows)[0, 0])
            what = ("NaN/inf" if not torch.isfinite(z_new[bad]).all()
                    else f"|z - z0| RMS {float(rms[bad]):.3g} > {max_dz}")
            raise DivergenceError(
                f"{objective.name} diverged at step {step + 1}/{settings['steps']} (item {bad}: {what}) with lr="
                f"{settings['lr']}, strength={items[bad].strength}, guidance={guidance}, t_range="
                f"{settings['t_range']}; lower lr or strength", last_good=z.clone(), step=step,
            )
        z = z_new
        # the trace stays on the device until the end (no host sync per value)
        rec = {"t": t, "dz_norm": (z - z0).flatten(1).norm(dim=1)}
        for key in ("grad_norm", "edit_norm", "rec_norm", "removed"):
            vals = torch.full((len(items),), math.nan, device=device)
            if key in diag:
                vals[act] = diag[key].float()
            rec[key] = vals
        for key, vals in rec.items():
            trace[key].append(vals)
    return z, {k: torch.stack(v).cpu().tolist() if v else [] for k, v in trace.items()}, sequences


class _Rows:
    """The physical rows of one batched model call; ``groups`` pair rows that share an unconditional row."""

    def __init__(self, t: torch.Tensor):
        self._t = t
        self.z, self.t, self.c, self.p, self.groups = [], [], [], [], []

    def add(self, item: int, z, c, p, group: int) -> int:
        self.z.append(z)
        self.t.append(self._t[item])
        self.c.append(c)
        self.p.append(p)
        self.groups.append(2 * item + group)  # group 0: rows at z_t, group 1: rows at ẑ_t
        return len(self.z) - 1


def _jvp_columns(pipe, z_t, t, c, p, preserve: Sequence[Direction], guidance: float) -> torch.Tensor:
    """Exact Hessian columns ``s * J_(c,p) v_c · (Δc_j, Δp_j)`` by forward-mode AD (math SDPA)."""
    from torch.func import jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .latent import transformer_call

    if not preserve:
        return z_t.new_zeros((0, *z_t.shape))
    m = len(preserve)
    # contiguous copies: the transformer writes into some inputs in place, which expanded views forbid
    zz = z_t.expand(m, *z_t.shape).float().contiguous()
    tt = t.expand(m).float().contiguous()
    cc = c.expand(m, *c.shape).float().contiguous()
    pp = p.expand(m, *p.shape).float().contiguous()
    dcs = torch.stack([d.dc.to(c.device).float() for d in preserve])
    dps = torch.stack([d.dp.to(p.device).float() for d in preserve])
    scale = 1.0 if family_of(pipe) == "flux" or guidance == 1.0 else guidance

    def f(c_, p_):
        g = torch.full((m,), guidance, device=z_t.device) if family_of(pipe) == "flux" else None
        return transformer_call(pipe, zz, tt, c_, p_, guidance=g)

    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        _, out = jvp(f, (cc, pp), (dcs, dps))
    return scale * out


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EditResult:
    """The outcome of one edit.

    image / reconstruction / source_image: PIL images (``x_edit``, ``x_rec`` = EIM at strength 0
    with the same render noise, and the source as given or decoded from ``z0``).
    latent: the edited `JointLatent` ``(z', c', p')``; source: the source `JointLatent`.
    dz: ``(C, h, w)`` = ``z' - z0``, the direction actually applied in ``z``.
    trace: per-step lists (``t``, ``grad_norm``, ``edit_norm``, ``rec_norm``, ``removed``, ``dz_norm``).
    """

    image: Any
    reconstruction: Any
    source_image: Any
    latent: JointLatent
    source: JointLatent
    dz: torch.Tensor
    direction: Direction
    method: str
    strength: float
    settings: dict
    trace: dict[str, list]
    seconds: float
    evaluations: int
    labels: dict[str, str] | None = None

    def image_direction(self) -> Direction:
        """The edit's direction with ``dz`` filled in (for geometry of image-side directions)."""
        return dataclasses.replace(self.direction, dz=self.dz.detach().cpu(),
                                   metadata={**self.direction.metadata, "strength": self.strength,
                                             "method": self.method})

    def grid(self):
        """Source | reconstruction | edit, side by side (PIL)."""
        return image_row([self.source_image, self.reconstruction, self.image])


def image_row(images: Sequence, pad: int = 2, bg=(255, 255, 255)):
    from PIL import Image

    images = [im for im in images if im is not None]
    w = sum(im.width for im in images) + pad * (len(images) - 1)
    h = max(im.height for im in images)
    out = Image.new("RGB", (w, h), bg)
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + pad
    return out


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
    from .latent import _fit_size, _to_pil_list
    from .models import size_multiple

    return latent, _fit_size(_to_pil_list(source), size_multiple(pipe), resize)[0]


def edit_batch(
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
    **overrides,
) -> dict[str, Any]:
    """The batched engine: item ``i`` edits ``sources[i]`` along ``directions[i]`` at ``strengths[i]``.

    ``reuse``: the output of an earlier `edit_batch` on the same items whose optimisation this
    method shares (``"image"`` renders HSDS's ``z'``): its ``z`` is used instead of optimising again,
    provided the optimisation settings match.

    Returns ``{"z": (N, C, h, w) edited latents, "x": (N, C, h, w) rendered latents, "c", "p": the
    edited conditions, "trace", "evaluations" (transformer sequences), "settings", "objective"}``.
    Items are independent: each uses its own seed for ``t``/``eps`` and for the render noise, so an
    item gives the same result in any batch (up to float rounding of batched kernels). The
    reconstruction ``x_rec`` of a source is the item at strength 0 with the same seed.
    """
    objective = get_objective(method)
    settings = settings_for(pipe, objective.name, **overrides)
    n = len(sources)
    if not (len(directions) == len(strengths) == n) or n == 0:
        raise InputError(f"need as many directions and strengths as sources, got {n}, {len(directions)}, "
                         f"{len(strengths)}")
    seeds = list(seeds) if seeds is not None else [0] * n
    labels = list(labels) if labels is not None else [None] * n
    items = []
    for i in range(n):
        d = directions[i]
        d.check(pipe, sources[i])
        lab = labels[i]
        if "fd" in objective.needs and lab is None and preserve is None:
            lab = source_labels(pipe, sources[i])
        pres = preserved_directions(pipe, d, preserve, lab) if "fd" in objective.needs else []
        for pd in pres:
            pd.check(pipe, sources[i])
        items.append(_Item(sources[i], d, _check_strength(strengths[i]), pres, int(seeds[i])))
    if reuse is not None:
        mismatch = [k for k in OPTIMISATION_KEYS if reuse["settings"].get(k) != settings.get(k)]
        if mismatch:
            raise InputError(f"cannot reuse an optimisation run with different {', '.join(mismatch)}")
        # The method's cost is still counted in full: a standalone run would have optimised.
        z_edit, trace, seq = reuse["z"], reuse["trace"], reuse["optimisation_evaluations"]
    else:
        z_edit, trace, seq = optimise(pipe, items, objective, settings, progress)
    optimisation_evaluations = seq
    z0 = torch.cat([it.latent.z for it in items]).float()
    c = torch.cat([it.latent.c for it in items]).float()
    p = torch.cat([it.latent.p for it in items]).float()
    dc = torch.stack([it.direction.dc.to(c.device).float() * it.strength for it in items])
    dp = torch.stack([it.direction.dp.to(c.device).float() * it.strength for it in items])
    c_edit, p_edit = c + dc, p + dp
    z_render = z_edit if objective.edits_image else z0
    c_render, p_render = (c_edit, p_edit) if objective.edits_text else (c, p)
    render_seeds = [s + 7919 for s in seeds]  # a stream apart from the optimisation's
    x = render(pipe, z_render, c_render, p_render, settings["t_render"], render_seeds, settings["guidance"],
               settings["render_steps"])
    seq += _render_sequences(pipe, settings, n)
    return {"z": z_edit, "x": x, "c": c_edit, "p": p_edit, "trace": trace, "evaluations": seq,
            "optimisation_evaluations": optimisation_evaluations, "settings": settings, "objective": objective,
            "reused": reuse is not None}


def _render_sequences(pipe, settings, n: int) -> int:
    if settings["t_render"] <= 0:
        return 0
    k = len(schedule(pipe, settings["render_steps"], t_start=settings["t_render"])) - 1
    return k * count_sequences(n, settings["guidance"], family_of(pipe))


def edit(
    pipe,
    source,
    direction: Direction,
    strength: float = 1.0,
    method: str | Objective = "hsds",
    preserve=None,
    *,
    prompt: str | None = None,
    labels: dict[str, str] | None = None,
    seed: int = 0,
    resize=None,
    steps: int | None = None,
    guidance: float | None = None,
    t_range: tuple[float, float] | None = None,
    lr: float | None = None,
    t_render: float | None = None,
    delta: float | None = None,
    weight: str | None = None,
    hessian: str | None = None,
    protect_edit: bool | None = None,
    progress: bool = False,
) -> EditResult:
    """EIM: encode (if given an image), manipulate ``source`` along ``direction``, render.

    ``source``: a `JointLatent` (batch 1) or an image with ``prompt=`` describing it.
    ``method``: ``"hsds"`` (default), ``"dds"``, ``"sds"`` (edit both halves, render ``(z', c', p')``),
    ``"text"`` (render ``(z0, c', p')``) or ``"image"`` (HSDS's ``z'`` rendered with ``(c, p)``).
    ``preserve``: attribute names (ShapesWorld; default all but the edited one), Directions or
    ``(v-, v+)`` pairs. Settings left as None take the method's defaults (`settings_for`).
    """
    t0 = time.perf_counter()
    latent, given_image = _as_latent(pipe, source, prompt, resize)
    if labels is None and spec(pipe).world == "shapes":
        labels = source_labels(pipe, latent, np.asarray(given_image) if given_image is not None else None)
    strength = _check_strength(strength)
    strengths = [strength] if strength == 0 else [strength, 0.0]  # item 2: the reconstruction (EIM at 0)
    k = len(strengths)
    out = edit_batch(
        pipe, [latent] * k, [direction] * k, strengths, method, preserve, seeds=[seed] * k, labels=[labels] * k,
        progress=progress, steps=steps, guidance=guidance, t_range=t_range, lr=lr, t_render=t_render, delta=delta,
        weight=weight, hessian=hessian, protect_edit=protect_edit,
    )
    imgs = decode(pipe, torch.cat([out["x"][:1], out["x"][k - 1 :], latent.z.float()]), output_type="pil")
    edited = latent.replace(z=out["z"][:1].to(latent.z.dtype), c=out["c"][:1].to(latent.c.dtype),
                            p=out["p"][:1].to(latent.p.dtype))
    trace = {key: [row[0] for row in v] for key, v in out["trace"].items()}
    return EditResult(
        image=imgs[0], reconstruction=imgs[1], source_image=given_image if given_image is not None else imgs[2],
        latent=edited, source=latent, dz=(out["z"][0] - latent.z[0].float()).detach(),
        direction=direction, method=out["objective"].name, strength=strength, settings=out["settings"], trace=trace,
        seconds=time.perf_counter() - t0, evaluations=out["evaluations"], labels=labels,
    )


@dataclasses.dataclass
class SweepResult:
    """Edits of one source at several strengths, computed in one batch."""

    strengths: list[float]
    images: list
    reconstruction: Any
    source_image: Any
    dz: torch.Tensor  # (S, C, h, w)
    settings: dict
    method: str
    seconds: float
    evaluations: int
    trace: dict[str, list]

    def strip(self, with_source: bool = True):
        """One row: [source, reconstruction,] edits at increasing strength (PIL)."""
        head = [self.source_image, self.reconstruction] if with_source else []
        return image_row(head + list(self.images))

    def __getitem__(self, strength: float):
        return self.images[self.strengths.index(strength)]


def sweep(
    pipe,
    source,
    direction: Direction,
    strengths: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0),
    method: str | Objective = "hsds",
    preserve=None,
    *,
    prompt: str | None = None,
    labels: dict[str, str] | None = None,
    seed: int = 0,
    resize=None,
    progress: bool = False,
    **overrides,
) -> SweepResult:
    """All ``strengths`` in one batch (same seed, so the strip differs only by strength)."""
    t0 = time.perf_counter()
    strengths = [_check_strength(s) for s in strengths]
    if not strengths:
        raise InputError("strengths is empty")
    latent, given = _as_latent(pipe, source, prompt, resize)
    if labels is None and spec(pipe).world == "shapes":
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
        trace={key: [row[:k] for row in v] for key, v in out["trace"].items()},
    )
