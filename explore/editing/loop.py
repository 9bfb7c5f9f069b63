"""The score-distillation loop shared by every objective (DESIGN §2 "Manipulate").

A batch of `EditItem` s advances together. Each step, for every item: draw ``t`` and one ``eps``
from the item's own seeded generator (so a result does not depend on the rest of the batch),
form ``z_t = (1-t) z + t eps`` and ``ẑ_t = (1-t) z0 + t eps``, plan the branches the objective
needs as rows of **one** batched `velocity` call (identical inputs evaluated once: strength 0
gives ``c' = c``; at ``z = z0`` the points ``z_t`` and ``ẑ_t`` coincide; the plan is built once
per structure and its conditions stacked once, so a step's own work is a few dozen small tensor
operations around the transformer call), take the Hessian
columns (finite differences from the same call, or exact JVPs), ask the objective for ``g``,
update ``z <- z - lr w(t) g``, guard against divergence, and record the trace.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.func import jvp
from tqdm.auto import tqdm

from ..errors import DivergenceError
from ..pipeline.families import family
from ..pipeline.latent import JointLatent, count_sequences, flow_noise, transformer_call, velocity
from ..pipeline.spec import using_attention
from .directions import Direction
from .objectives import Objective, StepState
from .settings import WEIGHTS, EditSettings

TRACE_KEYS = ("t", "grad_norm", "edit_norm", "rec_norm", "removed", "dz_norm")


@dataclasses.dataclass
class EditItem:
    """One edit of a batch: a source (a `JointLatent` of one), its direction, strength, preserved directions, seed."""

    latent: JointLatent
    direction: Direction
    strength: float
    preserve: list[Direction]
    seed: int


@dataclasses.dataclass
class _Batch:
    """The tensors every step reads: ``(B, ...)`` sources, edited conditions, finite-difference conditions."""

    z0: torch.Tensor
    c: torch.Tensor
    p: torch.Tensor
    c_edit: torch.Tensor
    p_edit: torch.Tensor
    same_c: list[bool]  # c' == c (strength 0 or a zero direction): the target branch is the source branch
    active: list[bool]  # items that move (a fixed point at strength 0 does not)
    fd: list[list[tuple[torch.Tensor, torch.Tensor]]]  # per item: c + δΔc_j, p + δΔp_j (central: then c - δΔc_j)
    fd_edit: list[tuple[torch.Tensor, torch.Tensor]]  # per item: c ± δΔc, p ± δΔp (protect_edit)


def conditions(items: Sequence[Any]) -> tuple[torch.Tensor, ...]:
    """``z0, c, p, c', p'`` of a batch of items (float32), and which items have ``c' = c``."""
    device = items[0].latent.z.device
    z0 = torch.cat([it.latent.z for it in items]).float()
    c = torch.cat([it.latent.c for it in items]).float()
    p = torch.cat([it.latent.p for it in items]).float()
    dc = torch.stack([it.direction.dc.to(device).float() * it.strength for it in items])
    dp = torch.stack([it.direction.dp.to(device).float() * it.strength for it in items])
    same = [bool(it.strength == 0 or (not dc[i].any() and not dp[i].any())) for i, it in enumerate(items)]
    return z0, c, p, c + dc, p + dp, same


def _prepare(items: Sequence[EditItem], objective: Objective, settings: EditSettings, protect: bool,
             skip_fixed_points: bool) -> _Batch:
    device = items[0].latent.z.device
    z0, c, p, c_edit, p_edit, same_c = conditions(items)
    active = [not (skip_fixed_points and objective.fixed_at_zero and same_c[i]) for i in range(len(items))]
    delta = float(settings.delta)
    signs = (1.0, -1.0) if settings.fd == "central" else (1.0,)

    def shifted(i, d):
        dc, dp = d.dc.to(device).float(), d.dp.to(device).float()
        return [(c[i] + s * delta * dc, p[i] + s * delta * dp) for s in signs]

    fd = [[cp for d in it.preserve for cp in shifted(i, d)] for i, it in enumerate(items)]
    fd_edit = [shifted(i, it.direction) for i, it in enumerate(items)] if protect else []
    return _Batch(z0, c, p, c_edit, p_edit, same_c, active, fd, fd_edit)


@dataclasses.dataclass
class _Plan:
    """The physical rows of one batched model call, fixed by which items sit at ``z = z0`` and whether
    the step computes finite-difference columns; built once per such structure and reused.

    ``zsel``: each row's ``z`` as an index into ``cat([z_t, ẑ_t])``; ``tsel``: its item (its ``t``);
    ``c``, ``p``: the rows' conditions, stacked (they do not change between steps); ``groups``: rows
    that share an unconditional row (group ``2 i`` at ``z_t``, ``2 i + 1`` at ``ẑ_t``); ``take``:
    branch -> its row for every active item; ``fd``, ``fd_edit``: the rows whose difference
    ``V[a] - V[b]`` is each finite-difference column (forward: ``c + δΔc_j`` minus the source row;
    central: ``+δ`` minus ``-δ``) of every active item in turn, and how many columns each item has.
    """

    zsel: torch.Tensor
    tsel: torch.Tensor
    c: torch.Tensor
    p: torch.Tensor
    groups: list[int]
    take: dict[str, torch.Tensor]
    fd: tuple[torch.Tensor, torch.Tensor, list[int]] | None
    fd_edit: tuple[torch.Tensor, torch.Tensor, list[int]] | None


def _index(rows: Sequence[int], device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def _plan(b: _Batch, same_zs: Sequence[bool], act: Sequence[int], needs: set[str], fd_rows: bool,
          protect: bool, central: bool) -> _Plan:
    """Logical branches -> physical rows (identical inputs evaluated once, see the module docstring)."""
    n = len(b.same_c)
    zsel, tsel, cs, ps, groups = [], [], [], [], []

    def add(i: int, hat: int, c, p) -> int:
        zsel.append(i + n * hat)
        tsel.append(i)
        cs.append(c)
        ps.append(p)
        groups.append(2 * i + hat)  # group 0: rows at z_t, group 1: rows at ẑ_t
        return len(zsel) - 1

    index: list[dict[str, Any]] = []
    for i in act:
        ix: dict[str, Any] = {}
        index.append(ix)
        same_c, same_z = b.same_c[i], same_zs[i]
        if "src" in needs or "fd" in needs or (same_c and "tgt" in needs) or (same_z and "src_hat" in needs):
            ix["src"] = add(i, 0, b.c[i], b.p[i])
        if "tgt" in needs:
            ix["tgt"] = ix["src"] if same_c else add(i, 0, b.c_edit[i], b.p_edit[i])
        if "src_hat" in needs:
            ix["src_hat"] = ix["src"] if same_z else add(i, 1, b.c[i], b.p[i])
        if fd_rows:
            ix["fd"] = [add(i, 0, cc, pp) for cc, pp in b.fd[i]]
            if protect:
                ix["fd_edit"] = [add(i, 0, cc, pp) for cc, pp in b.fd_edit[i]]
    device = b.z0.device

    def pairs(kind: str):
        if not fd_rows or (kind == "fd_edit" and not protect):
            return None
        if central:  # rows come in (+δ, -δ) pairs
            a = [r for ix in index for r in ix[kind][0::2]]
            base = [r for ix in index for r in ix[kind][1::2]]
        else:
            a = [r for ix in index for r in ix[kind]]
            base = [ix["src"] for ix in index for _ in ix[kind]]
        return _index(a, device), _index(base, device), [len(ix[kind]) // (2 if central else 1) for ix in index]

    keys = [k for k in ("tgt", "src", "src_hat") if k in needs or (k == "src" and "fd" in needs)]
    return _Plan(_index(zsel, device), _index(tsel, device), torch.stack(cs), torch.stack(ps), groups,
                 {k: _index([ix[k] for ix in index], device) for k in keys}, pairs("fd"), pairs("fd_edit"))


def jvp_columns(pipe, z_t, t, c, p, preserve: Sequence[Direction], guidance: float,
                chunk: int | None = None) -> torch.Tensor:
    """Exact Hessian columns ``s * J_(c,p) v_c · (Δc_j, Δp_j)`` by forward-mode AD (math SDPA).

    ``chunk``: columns per forward-mode call (None: all in one batch). The math kernel holds each
    call's attention scores and their tangents, so the peak memory grows with the rows of a call;
    smaller chunks give the same columns for less memory.
    """
    if not preserve:
        return z_t.new_zeros((0, *z_t.shape))
    if chunk is not None and chunk < len(preserve):
        return torch.cat([jvp_columns(pipe, z_t, t, c, p, preserve[i:i + chunk], guidance)
                          for i in range(0, len(preserve), chunk)])
    m = len(preserve)
    # contiguous copies: the transformer writes into some inputs in place, which expanded views forbid
    zz = z_t.expand(m, *z_t.shape).float().contiguous()
    tt = t.expand(m).float().contiguous()
    cc = c.expand(m, *c.shape).float().contiguous()
    pp = p.expand(m, *p.shape).float().contiguous()
    dcs = torch.stack([d.dc.to(c.device).float() for d in preserve])
    dps = torch.stack([d.dp.to(p.device).float() for d in preserve])
    embedded = not family(pipe).cfg  # guidance as an embedding: it goes into the call, nothing scales after
    scale = 1.0 if embedded or guidance == 1.0 else guidance

    def f(c_, p_):
        g = torch.full((m,), guidance, device=z_t.device) if embedded else None
        return transformer_call(pipe, zz, tt, c_, p_, guidance=g)

    with torch.enable_grad(), using_attention(pipe, "math"):  # the SDPA kernel with forward-mode AD
        _, out = jvp(f, (cc, pp), (dcs, dps))
    return scale * out


def _columns(pipe, items, b: _Batch, V, plan: _Plan, act, z_t, t, settings: EditSettings, protect: bool):
    """Hessian columns per active item (``h``: list of ``(m_i, C, h, w)``; ``h_edit``) and their extra sequences."""
    if settings.hessian == "jvp":
        cols = [jvp_columns(pipe, z_t[i], t[i], b.c[i], b.p[i],
                            [items[i].direction, *items[i].preserve] if protect else items[i].preserve,
                            loop_guidance(settings), settings.jvp_chunk) for i in act]
        h = [col[1:] for col in cols] if protect else cols
        h_edit = torch.stack([col[0] for col in cols]) if protect else None
        return h, h_edit, sum(2 * (len(items[i].preserve) + protect) for i in act)
    scale = float(settings.delta) * (2 if settings.fd == "central" else 1)
    a, base, sizes = plan.fd
    h = list(torch.split((V.index_select(0, a) - V.index_select(0, base)) / scale, sizes))
    h_edit = None
    if protect:  # one column per item
        a, base, _ = plan.fd_edit
        h_edit = (V.index_select(0, a) - V.index_select(0, base)) / scale
    return h, h_edit, 0


def _check(z_new, dz: torch.Tensor, b: _Batch, z, step: int, items, objective: Objective,
           settings: EditSettings) -> None:
    """Raise `DivergenceError` (with the last finite latent) on NaN/inf or a runaway ``|z - z0|``.

    ``dz``: per item ``|z_new - z0|`` (the trace's ``dz_norm``); its RMS over the latent is checked.
    """
    rms = dz / math.sqrt(z_new[0].numel())
    bad_rows = ~(rms <= float(settings.max_dz))  # NaN/inf anywhere in a row make its RMS NaN/inf: bad too
    if bad_rows.any():
        bad = int(torch.nonzero(bad_rows)[0, 0])
        what = ("NaN/inf" if not torch.isfinite(z_new[bad]).all()
                else f"|z - z0| RMS {float(rms[bad]):.3g} > {settings.max_dz}")
        raise DivergenceError(
            f"{objective.name} diverged at step {step + 1}/{settings.steps} (item {bad}: {what}) with lr="
            f"{settings.lr}, strength={items[bad].strength}, guidance={settings.guidance}, t_range="
            f"{settings.t_range}; lower lr or strength", last_good=z.clone(), step=step,
        )


def _record(trace: dict[str, list], t, dz: torch.Tensor, diag: dict, act: list[int], n: int) -> None:
    # the trace stays on the device until the end (no host sync per value)
    trace["t"].append(t)
    trace["dz_norm"].append(dz)
    for key in ("grad_norm", "edit_norm", "rec_norm", "removed"):
        if key in diag and len(act) == n:
            trace[key].append(diag[key].float())
            continue
        vals = torch.full((n,), math.nan, device=dz.device)
        if key in diag:
            vals[act] = diag[key].float()
        trace[key].append(vals)


def loop_guidance(settings: EditSettings) -> float:
    """The guidance of the optimisation's branches (``loop_guidance``, else ``guidance``)."""
    return float(settings.guidance if settings.loop_guidance is None else settings.loop_guidance)


def noise_levels(settings: EditSettings, gens: Sequence[torch.Generator], step: int) -> torch.Tensor:
    """``t`` of every item at ``step``: drawn from ``U[t_range]`` (each item's generator) or descending evenly."""
    t_min, t_max = settings.t_range
    if settings.t_schedule == "descending":
        frac = step / max(1, settings.steps - 1)
        for g in gens:  # keep each item's stream where a uniform draw would leave it (the same eps as "uniform")
            torch.rand((), generator=g)
        return torch.full((len(gens),), t_max - (t_max - t_min) * frac)
    return torch.stack([t_min + (t_max - t_min) * torch.rand((), generator=g) for g in gens])


def condition_fit(h: torch.Tensor, h_edit: torch.Tensor) -> torch.Tensor:
    """Least-squares ``α`` with ``h_edit ≈ Σ_j α_j h_j`` (``h`` ``(m, ...)``, ``h_edit`` like one column)."""
    if h.shape[0] == 0:
        return h.new_zeros(0)
    A = h.flatten(1).T.float()  # (d, m)
    return torch.linalg.lstsq(A, h_edit.flatten().float()[:, None]).solution[:, 0]


@torch.no_grad()
def optimise(pipe, items: Sequence[EditItem], objective: Objective, settings: EditSettings, progress: bool = False,
             skip_fixed_points: bool = True, info: dict | None = None) -> tuple[torch.Tensor, dict[str, list], int]:
    """Run the shared loop for a batch of items. Returns ``(z', trace, transformer sequences used)``.

    ``skip_fixed_points``: items whose source is a fixed point of the objective at their strength
    (strength 0) are not moved and cost nothing (benchmarks turn it off to time full steps).
    ``info``: a dict that receives ``"alpha"`` (HSDS with ``protect_edit`` and ``clean_condition``:
    per item the mean over the steps that computed columns of `condition_fit` of the edit's column
    by the preserved columns; None for items that did not move or when the fit is not needed).
    """
    needs = set(objective.needs)
    protect = bool(settings.protect_edit) and "fd" in needs
    b = _prepare(items, objective, settings, protect, skip_fixed_points)
    z = b.z0.clone()
    trace: dict[str, list] = {k: [] for k in TRACE_KEYS}
    if not objective.optimise or settings.steps == 0 or not any(b.active):
        return z, trace, 0
    device = z.device
    gens = [torch.Generator().manual_seed(int(it.seed)) for it in items]
    w_fn = WEIGHTS[settings.weight]
    guidance = loop_guidance(settings)
    fam = family(pipe)
    act = [i for i in range(len(items)) if b.active[i]]
    every = int(settings.columns_every)
    columns: dict = {}
    everyone = len(act) == len(items)
    alphas: list[list[torch.Tensor]] = [[] for _ in act]
    plans: dict[tuple, _Plan] = {}
    costs: dict[tuple, int] = {}
    sequences = 0
    for step in tqdm(range(settings.steps), desc=objective.name, disable=not progress, leave=False):
        t = noise_levels(settings, gens, step).to(device)
        eps = torch.stack([torch.randn(b.z0.shape[1:], generator=g) for g in gens]).to(device)
        z_t, zh_t = flow_noise(z, eps, t), flow_noise(b.z0, eps, t)
        fresh = "fd" in needs and step % every == 0  # Hessian columns this step (else the last ones, reused)
        fd_rows = fresh and settings.hessian != "jvp"
        same_zs = tuple((z == b.z0).flatten(1).all(1).tolist())  # one host sync per step, not one per item
        key = (same_zs, fd_rows)
        if key not in plans:  # after the first step the structure repeats: stack the conditions once
            plans[key] = _plan(b, same_zs, act, needs, fd_rows, protect, settings.fd == "central")
            costs[key] = count_sequences(len(plans[key].zsel), guidance, fam, groups=len(set(plans[key].groups)))
        plan = plans[key]
        zs = torch.cat([z_t, zh_t]).index_select(0, plan.zsel)
        V = velocity(pipe, zs, t.index_select(0, plan.tsel), plan.c, plan.p, guidance=guidance,
                     uncond_groups=plan.groups)
        sequences += costs[key]
        v = {k: V.index_select(0, ix) for k, ix in plan.take.items()}
        if "fd" in needs:
            if fresh:
                h, h_edit, extra = _columns(pipe, items, b, V, plan, act, z_t, t, settings, protect)
                columns = {"h": h, "h_edit": h_edit}
                sequences += extra
                if h_edit is not None and info is not None and settings.clean_condition:
                    for j in range(len(act)):
                        alphas[j].append(condition_fit(h[j], h_edit[j]))
            v["h"] = columns["h"]
            if columns["h_edit"] is not None:
                v["h_edit"] = columns["h_edit"]
        if everyone:  # the common case: no gathers or scatters of the moving items
            g, diag = objective.gradient(StepState(z=z, z0=b.z0, eps=eps, t=t, v=v))
            z_new = z - settings.lr * w_fn(t).view(-1, 1, 1, 1) * g
        else:
            g, diag = objective.gradient(StepState(z=z[act], z0=b.z0[act], eps=eps[act], t=t[act], v=v))
            z_new = z.clone()
            z_new[act] = z[act] - settings.lr * w_fn(t[act]).view(-1, 1, 1, 1) * g
        dz = (z_new - b.z0).flatten(1).norm(dim=1)
        _check(z_new, dz, b, z, step, items, objective, settings)
        z = z_new
        _record(trace, t, dz, diag, act, len(items))
    if info is not None:
        info["alpha"] = [None] * len(items)
        for j, i in enumerate(act):
            if alphas[j]:
                info["alpha"][i] = torch.stack(alphas[j]).mean(0)
    return z, {k: torch.stack(v).cpu().tolist() if v else [] for k, v in trace.items()}, sequences
