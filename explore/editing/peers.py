"""The peer methods people use to edit with SD3 / FLUX, on the same `Direction` as EIM (docs/editing.md).

Each takes the edited condition ``c' = c + λΔc, p' = p + λΔp`` of the item's direction and
strength as its target, so ``strength`` means the same for every method, and samples with the
pipeline's own scheduler sigmas (`explore.pipeline.sampling.schedule`) and the batched `velocity`
(every branch of a step in one call). They return the final latent themselves: no EIM render.

``flowedit`` — Kulikov et al., *FlowEdit: Inversion-Free Text-Based Editing Using Pre-Trained Flow
Models* (arXiv:2412.08629), after the authors' ``FlowEdit_utils.py``: from ``z = x_src``, for the
last ``n_max`` of ``T`` scheduler steps, draw ``eps``, noise the source ``z_s = (1-s) x_src + s eps``,
carry the same noise to the edit ``z_t = z + z_s - x_src``, and step ``z += (s_next - s)
[v̂(z_t; c') - v̂(z_s; c)]``. An item whose target condition is its source condition (strength 0)
is returned unchanged, without running the loop: *this departs from the published loop*, which
has no such branch and moves an unedited source unless the source and target guidance are equal
(with ``z_t = z_s`` the first step is ``(cfg_tar - cfg_src) (v_c - v_u)``; measured in
docs/editing.md). `explore` returns the source so that strength 0 means "no edit" for every method
and the reconstruction ``x_rec`` beside each edit is the source itself.

``flowalign`` — Kim et al., *FlowAlign: Trajectory-Regularized, Inversion-Free Flow-based Image
Editing* (ICLR 2026), after the authors' ``SD3FlowAlign`` (``diffusion/editing/sd3_edit.py``): FlowEdit's
noised pair ``q = (1-s) x_src + s eps``, ``p = z + q - x_src``, with three evaluations per step —
the target and source captions at ``p`` (the target guided away from the source:
``v_p = v(p; c) + w (v(p; c') - v(p; c))``) and the source caption at ``q`` — and the step
``z += (s_next - s)(v_p - v_q) + ζ [(q - s v_q) - (p - s v_p)]``: the gap between the source's and
the edit's clean-image predictions pulls the edit toward the source. The published loop runs every
step of the schedule with fresh noise each (``n_max = steps``), w = 13.5 and ζ = 0.01 on SD3. With
ζ = 0 and w = 1 it is FlowEdit at guidance 1 (tested). As FlowEdit, strength 0 returns the source
(here the published loop agrees: with ``c' = c``, ``p = q`` at every step and nothing moves).

``rf-inversion`` — Rout et al., *Semantic Image Inversion and Editing using Rectified Stochastic
Differential Equations* (arXiv:2410.10792), after the diffusers community pipeline
``pipeline_flux_rf_inversion.py``: a forward ODE from the source toward one fixed noise draw
``y1`` (controller ``gamma``), then the reverse ODE with the target condition, pulled toward the
source latent (controller ``eta``) for the steps in ``[start N, stop N)``. With ``gamma = eta = 0``
it is plain inversion and regeneration. On SD3 the inversion runs without CFG and the
regeneration with it (the reference is FLUX-only).

``unieditflow`` — Jiao et al., *UniEdit-Flow: Unleashing Inversion and Editing in the Era of Flow
Models* (ICLR 2026), after the authors' diffusers schedulers (``UniInvEulerScheduler``,
``UniEditEulerScheduler``) and their FLUX code (``denoise_uniinv``, ``edit_uniedit``). Uni-Inv climbs
the first ``k = floor(alpha N)`` of the ``N`` noise levels with one evaluation per level: each
velocity both corrects the last step (from the last corrected point) and predicts the next. The
edit descends from there: per step the source and target velocities at the same point, the mask
``m`` = the channel mean of ``v_trg - v_src`` (signed, or its absolute value as in the FLUX code;
FLUX averages over each packed 2x2 token) min-max normalised per image, and the step
``z += Δσ [m v_trg + (1 - m) v_src] + ω Δσ (1 + m)(v_trg - v_src)``. At strength 0 (``v_trg =
v_src``) it is Uni-Inv then plain Euler regeneration: the returned reconstruction is that, not the
source (as RF-Inversion); the edit and the reconstruction of one source share its inversion. Two
details follow the diffusers schedulers where the FLUX code differs: ``k = floor(alpha N)`` (the FLUX
code rounds: 17 rather than 16 levels at N 28, α 0.6; the same at the published N 15), and the
inversion runs at the edit's ``guidance`` (the FLUX code inverts at 1 whatever the edit's; equal at
the published guidance 1).

``fluxspace`` — Dalva et al., *FluxSpace* (arXiv:2412.09611): see `explore.editing.fluxspace`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..pipeline.families import family
from ..pipeline.latent import count_sequences, null_text, velocity
from ..pipeline.sampling import image_tokens, schedule
from ..pipeline.spec import spec
from .loop import conditions
from .settings import FlowAlignSettings, FlowEditSettings, RFInversionSettings, SettingsBase, UniEditFlowSettings


class PeerMethod(abc.ABC):
    """A method that samples its edit (no score-distillation loop, no EIM render).

    `run` takes the items of `explore.editing.api.edit_batch` (source latent, direction,
    strength, seed each) and returns ``(x, trace, sequences)``: the edited latents ``(B, C, h, w)``,
    per-step trace lists (one value per item each) and the transformer sequences it ran.
    """

    name = "peer"
    settings_class: type[SettingsBase] = SettingsBase
    needs: tuple[str, ...] = ()  # no preserved directions
    edits_text = True
    edits_image = True
    optimise = False

    @abc.abstractmethod
    def run(self, pipe, items: Sequence[Any], settings, progress: bool = False
            ) -> tuple[torch.Tensor, dict[str, list], int]:
        """Edit every item; see the class docstring."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _noise(gens: Sequence[torch.Generator], shape, device) -> torch.Tensor:
    """One standard-normal draw per item from its own generator (on the CPU: the same on every device)."""
    return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)


def _log(trace: dict, s: float, v: torch.Tensor, z: torch.Tensor, z0: torch.Tensor) -> None:
    """One step of a peer's trace: its noise level, the norm of the velocity it stepped along, and how far
    each item has moved from its source."""
    trace["t"].append([s] * len(z))
    trace["grad_norm"].append(v.flatten(1).norm(dim=1).tolist())
    trace["dz_norm"].append((z - z0).flatten(1).norm(dim=1).tolist())


def _last_steps_setup(pipe, items, T: int):
    """What FlowEdit and FlowAlign start from: the items' latents and conditions, the scheduler's ``T``
    sigmas, one noise generator per item, and the items whose target differs from the source."""
    z0, c, p, c_t, p_t, same = conditions(items)
    sig = schedule(pipe, T, image_tokens=image_tokens(pipe, z0.shape))
    gens = [torch.Generator().manual_seed(int(it.seed)) for it in items]
    return z0, c, p, c_t, p_t, sig, gens, [i for i in range(len(items)) if not same[i]]


def _unique_sources(items) -> tuple[list, list[int]]:
    """The first item of each distinct (source latent, seed) of a batch, and each item's index among them:
    an edit and the reconstruction of one source (strength 0, same seed) share one inversion."""
    keys: dict[tuple, int] = {}
    index = [keys.setdefault((id(it.latent), int(it.seed)), len(keys)) for it in items]
    first: dict[int, int] = {}
    for j, u in enumerate(index):
        first.setdefault(u, j)
    return [items[first[u]] for u in range(len(keys))], index


def _inversion_condition(pipe, uniq, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The condition an inversion runs with: the empty prompt's, or each source's own caption."""
    if prompt == "empty":
        c_u, p_u = null_text(pipe)
        return c_u.float().expand(len(uniq), -1, -1), p_u.float().expand(len(uniq), -1)
    return torch.cat([it.latent.c for it in uniq]).float(), torch.cat([it.latent.p for it in uniq]).float()


class FlowEdit(PeerMethod):
    """FlowEdit: the ODE on ``v̂(z_t; c') - v̂(z_s; c)`` (see the module docstring)."""

    name = "flowedit"
    settings_class = FlowEditSettings

    @torch.no_grad()
    def run(self, pipe, items, settings: FlowEditSettings, progress: bool = False):
        T, n_max = int(settings.steps), int(settings.n_max)
        z0, c, p, c_t, p_t, sig, gens, act = _last_steps_setup(pipe, items, T)  # c' = c: V = 0 at z = x_src
        fam = family(pipe)
        g = torch.tensor([float(settings.target_guidance)] * len(act) + [float(settings.source_guidance)] * len(act))
        z = z0.clone()
        trace: dict[str, list] = {"t": [], "grad_norm": [], "dz_norm": []}
        sequences = 0
        for i in tqdm(range(T), desc=self.name, disable=not progress, leave=False):
            if T - i > n_max:
                continue
            s, s_next = sig[i], sig[i + 1]
            V = torch.zeros_like(z0)
            for _ in range(int(settings.n_avg)):
                eps = _noise(gens, z0.shape[1:], z0.device)  # every item draws, active or not
                if not act:
                    continue
                zs = (1 - s) * z0[act] + s * eps[act]
                zt = z[act] + zs - z0[act]
                v = velocity(pipe, torch.cat([zt, zs]), s, torch.cat([c_t[act], c[act]]),
                             torch.cat([p_t[act], p[act]]), guidance=g)
                sequences += count_sequences(2 * len(act), g, fam)
                V[act] += (v[: len(act)] - v[len(act):]) / int(settings.n_avg)
            z = z + (s_next - s) * V
            _log(trace, s, V, z, z0)
        return z, trace, sequences


class FlowAlign(PeerMethod):
    """FlowAlign: FlowEdit's ODE with a source-consistency term (see the module docstring)."""

    name = "flowalign"
    settings_class = FlowAlignSettings

    @torch.no_grad()
    def run(self, pipe, items, settings: FlowAlignSettings, progress: bool = False):
        T, n_max = int(settings.steps), int(settings.n_max)
        w, zeta = float(settings.target_guidance), float(settings.consistency)
        z0, c, p, c_t, p_t, sig, gens, act = _last_steps_setup(pipe, items, T)  # c' = c: p = q, nothing moves
        fam = family(pipe)
        embedded = settings.embedded_guidance
        g = fam.no_guidance(float(spec(pipe).guidance if embedded is None else embedded))
        guided = w != 1.0  # w = 1: v_p is the target velocity alone (no source row at p)
        z = z0.clone()
        trace: dict[str, list] = {"t": [], "grad_norm": [], "dz_norm": []}
        sequences = 0
        for i in tqdm(range(T), desc=self.name, disable=not progress, leave=False):
            if T - i > n_max:
                continue
            s, s_next = sig[i], sig[i + 1]
            eps = _noise(gens, z0.shape[1:], z0.device)  # every item draws, active or not
            step = torch.zeros_like(z0)
            if act:
                n = len(act)
                q = (1 - s) * z0[act] + s * eps[act]
                pt = z[act] + q - z0[act]
                zs = [pt, pt, q] if guided else [pt, q]
                cs = [c_t[act], c[act], c[act]] if guided else [c_t[act], c[act]]
                ps = [p_t[act], p[act], p[act]] if guided else [p_t[act], p[act]]
                v = velocity(pipe, torch.cat(zs), s, torch.cat(cs), torch.cat(ps), guidance=g)
                sequences += count_sequences(len(zs) * n, g, fam)
                vq = v[-n:]
                vp = v[n:2 * n] + w * (v[:n] - v[n:2 * n]) if guided else v[:n]
                step[act] = (s_next - s) * (vp - vq) + zeta * ((q - s * vq) - (pt - s * vp))
            z = z + step
            _log(trace, s, step / (s - s_next), z, z0)
        return z, trace, sequences


class RFInversion(PeerMethod):
    """RF-Inversion: controlled forward ODE to noise, controlled reverse ODE (see the module docstring)."""

    name = "rf-inversion"
    settings_class = RFInversionSettings

    @torch.no_grad()
    def invert(self, pipe, items, settings: RFInversionSettings) -> tuple[torch.Tensor, list[int], int]:
        """The controlled forward ODE of each distinct (source, seed) of the batch.

        Returns ``(Y (U, C, h, w), index of each item's row in Y, sequences)``: the edit of a
        source and its reconstruction (strength 0, same seed) share one inversion.
        """
        uniq, index = _unique_sources(items)
        y0 = torch.cat([it.latent.z for it in uniq]).float()
        y1 = _noise([torch.Generator().manual_seed(int(it.seed)) for it in uniq], y0.shape[1:], y0.device)
        c, p = _inversion_condition(pipe, uniq, settings.inversion_prompt)
        N = int(settings.steps)
        sig = schedule(pipe, N, image_tokens=image_tokens(pipe, y0.shape))
        gamma, guidance = float(settings.gamma), float(settings.source_guidance)
        Y = y0.clone()
        sequences = 0
        for i in range(N):
            ti = i / (N + 1)  # the reference's time grid of the forward ODE
            u = velocity(pipe, Y, ti, c, p, guidance=guidance)
            sequences += count_sequences(len(uniq), guidance, family(pipe))
            Y = Y + (u + gamma * ((y1 - Y) / (1 - ti) - u)) * (sig[i] - sig[i + 1])
        return Y, index, sequences

    @torch.no_grad()
    def run(self, pipe, items, settings: RFInversionSettings, progress: bool = False):
        z0, _, _, c_t, p_t, _ = conditions(items)
        Y, index, sequences = self.invert(pipe, items, settings)
        N = int(settings.steps)
        sig = schedule(pipe, N, image_tokens=image_tokens(pipe, z0.shape))
        start, stop = int(settings.start * N), min(int(settings.stop * N), N)
        eta, guidance = float(settings.eta), float(settings.target_guidance)
        X = Y[index].clone()
        trace: dict[str, list] = {"t": [], "grad_norm": [], "dz_norm": []}
        for i in tqdm(range(N), desc=self.name, disable=not progress, leave=False):
            s = sig[i]
            v = -velocity(pipe, X, s, c_t, p_t, guidance=guidance)
            sequences += count_sequences(len(items), guidance, family(pipe))
            if start <= i < stop:
                v = v + eta * ((z0 - X) / s - v)
            X = X + v * (sig[i] - sig[i + 1])
            _log(trace, s, v, X, z0)
        return X, trace, sequences


def uni_invert(pipe, y0: torch.Tensor, c: torch.Tensor, p: torch.Tensor, steps: int, k: int,
               guidance: float) -> tuple[torch.Tensor, int]:
    """Uni-Inv: the predictor-corrector inversion of ``y0`` up the first ``k`` of ``steps`` noise levels
    (the scheduler's sigmas, reversed), ``k + 1`` evaluations; returns ``(latent at that level, sequences)``."""
    sig = schedule(pipe, steps, image_tokens=image_tokens(pipe, y0.shape))[::-1]  # 0 = sigma_N < ... < sigma_0
    fam = family(pipe)
    v = velocity(pipe, y0, float(sig[0]), c, p, guidance=guidance)  # v_0 = f(0, x_0)
    anchor, x = y0, y0 + (sig[1] - sig[0]) * v
    for j in range(1, k + 1):
        v = velocity(pipe, x, float(sig[j]), c, p, guidance=guidance)
        anchor = anchor + (sig[j] - sig[j - 1]) * v  # correct the last step with the new velocity
        if j < k:
            x = anchor + (sig[j + 1] - sig[j]) * v  # and predict the next with it
    return anchor, (k + 1) * count_sequences(len(y0), guidance, fam)


class UniEditFlow(PeerMethod):
    """UniEdit-Flow: Uni-Inv, then the velocity-fusion edit inside its own mask (see the module docstring)."""

    name = "unieditflow"
    settings_class = UniEditFlowSettings

    @staticmethod
    def mask(d: torch.Tensor, how: str, patch: int) -> torch.Tensor:
        """``(B, 1, h, w)``: the channel mean of ``d`` (signed or absolute), averaged over ``patch`` x ``patch``
        tokens, min-max normalised per image (the schedulers' ``+ 1e-7``)."""
        m = (d.abs() if how == "abs" else d).mean(dim=1, keepdim=True)
        if patch > 1:
            h, w = m.shape[-2:]
            m = torch.nn.functional.avg_pool2d(m, patch).repeat_interleave(patch, -2).repeat_interleave(patch, -1)
            m = m[..., :h, :w]
        lo = m.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
        hi = m.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
        return (m - lo) / (hi - lo + 1e-7)

    @torch.no_grad()
    def run(self, pipe, items, settings: UniEditFlowSettings, progress: bool = False):
        z0, c, p, c_t, p_t, same = conditions(items)
        N = int(settings.steps)
        k = math.floor(float(settings.alpha) * N)
        g = float(spec(pipe).guidance if settings.guidance is None else settings.guidance)
        uniq, index = _unique_sources(items)
        y0 = torch.cat([it.latent.z for it in uniq]).float()
        ci, pi = _inversion_condition(pipe, uniq, settings.inversion_prompt)
        Y, sequences = uni_invert(pipe, y0, ci, pi, N, k, g)
        sig = schedule(pipe, N, image_tokens=image_tokens(pipe, z0.shape))
        fam = family(pipe)
        omega = float(settings.omega)
        act = [i for i in range(len(items)) if not same[i]]
        n = len(act)
        x = Y[index].clone()
        trace: dict[str, list] = {"t": [], "grad_norm": [], "dz_norm": []}
        for i in tqdm(range(N - k, N), desc=self.name, disable=not progress, leave=False):
            s, ds = float(sig[i]), sig[i + 1] - sig[i]
            # the source velocity of every item; the target's of the items with an edit (v_trg = v_src otherwise)
            v = velocity(pipe, torch.cat([x, x[act]]), s, torch.cat([c, c_t[act]]), torch.cat([p, p_t[act]]),
                         guidance=g)
            sequences += count_sequences(len(items) + n, g, fam)
            v_src, step = v[: len(items)], v[: len(items)].clone()
            if act:
                v_trg = v[len(items):]
                d = v_trg - v_src[act]
                m = self.mask(d, settings.mask, int(settings.mask_patch))
                step[act] = m * v_trg + (1 - m) * v_src[act] + omega * (1 + m) * d
            x = x + ds * step
            _log(trace, s, step, x, z0)
        return x, trace, sequences


PEERS: dict[str, type[PeerMethod]] = {m.name: m for m in (FlowEdit, FlowAlign, RFInversion, UniEditFlow)}
