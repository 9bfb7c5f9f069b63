"""Score-distillation objectives (DESIGN §2 "Manipulate"): each method differs in one place only.

Every step the loop (``edit.py``) draws ``t`` and one ``eps`` shared by all branches, forms
``z_t = (1-t) z + t eps`` and ``ẑ_t = (1-t) z0 + t eps``, evaluates the branches an objective
``needs`` in one batched `velocity` call, and asks the objective for the update direction ``g``
(``z <- z - lr * w(t) * g``). Branches:

``tgt``      v̂(z_t; c', p')             the edited condition
``src``      v̂(z_t; c, p)               the source condition at the current latent
``src_hat``  v̂(ẑ_t; c, p)               the source condition at the source latent
``fd``       v̂(z_t; c + δΔc_j, p + δΔp_j) for every preserved direction j (HSDS)
"""

from __future__ import annotations

import abc
import dataclasses

import torch

from ..errors import InputError
from .settings import VARIANTS, split_variant


@dataclasses.dataclass
class StepState:
    """What an objective sees at one step, for a batch of ``B`` edits (tensors ``(B, C, h, w)``)."""

    z: torch.Tensor
    z0: torch.Tensor
    eps: torch.Tensor
    t: torch.Tensor  # (B,)
    v: dict[str, torch.Tensor]  # branch -> (B, C, h, w); "h" -> list of (m_i, C, h, w) Hessian columns


class Objective(abc.ABC):
    """One score-distillation method. Subclasses set ``needs`` and implement `gradient`."""

    name = "objective"
    needs: tuple[str, ...] = ()
    edits_text = True  # render with (c', p')
    edits_image = True  # render with z'
    optimise = True
    # Is the source a fixed point at strength 0 (c' = c and z = z0 give g = 0 exactly)?
    fixed_at_zero = True

    @abc.abstractmethod
    def gradient(self, s: StepState) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The update direction ``g`` for ``s.z`` (same shape) and per-item diagnostics."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


class SDS(Objective):
    """Score distillation sampling: ``g = v̂(z_t; c') - (eps - z)`` (pulls toward the target; no restoring term)."""

    name = "sds"
    needs = ("tgt",)
    fixed_at_zero = False

    def gradient(self, s):
        g = s.v["tgt"] - (s.eps - s.z)
        return g, {"grad_norm": _norm(g)}


class DDS(Objective):
    """Delta denoising score in ε-space, v-form: ``g = v̂(z_t; c') - v̂(ẑ_t; c) + (z - z0)``.

    That is ``g_edit + g_rec`` of DESIGN §2 with the shared ``v̂(z_t; c)`` cancelled, so DDS needs
    only two conditional branches.
    """

    name = "dds"
    needs = ("tgt", "src_hat")

    def gradient(self, s):
        g = s.v["tgt"] - s.v["src_hat"] + (s.z - s.z0)
        return g, {"grad_norm": _norm(g)}


def project_out(g: torch.Tensor, h: torch.Tensor, protect: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove from ``g`` ``(d,)`` its component in the span of the rows of ``h`` ``(m, d)`` (fp32).

    Returns ``(g - Q Qᵀ g, Q Qᵀ g)`` with ``Q`` an orthonormal basis of that span from a
    rank-revealing SVD: directions whose singular value is below ``1e-6`` of the largest are
    dependent on the others and dropped, whatever their order (an unpivoted QR judged by the
    diagonal of ``R`` keeps the wrong column when a dependent one comes first).
    ``protect`` ``(d,)``: first make the columns orthogonal to this vector, so nothing along it is
    removed (the span removed is the part of the preserved span orthogonal to ``protect``).
    """
    if h.numel() == 0:
        return g, torch.zeros_like(g)
    h = h.float()
    if protect is not None:
        pf = protect.float()
        u = pf / pf.norm().clamp_min(1e-12)
        h = h - (h @ u)[:, None] * u[None, :]
    keep = h.norm(dim=1) > 1e-12 * max(1.0, float(h.norm()))
    if not keep.all():  # (a boolean gather only when some column is zero)
        if not keep.any():
            return g, torch.zeros_like(g)
        h = h[keep]
    _, sv, vh = torch.linalg.svd(h, full_matrices=False)  # (k,), (k, d): right singular vectors
    rank = sv > 1e-6 * sv.max()
    q = (vh.clone(memory_format=torch.contiguous_format) if rank.all() else vh[rank]).T  # (d, rank), row-major
    removed = q @ (q.T @ g.float())
    return (g.float() - removed).to(g.dtype), removed.to(g.dtype)


class HSDS(Objective):
    """Hessian score distillation: DDS with the edit part stripped of what changes a preserved factor.

    ``g = (g_edit - Q Qᵀ g_edit) + g_rec``, ``g_edit = v̂(z_t; c') - v̂(z_t; c)``,
    ``g_rec = v̂(z_t; c) - v̂(ẑ_t; c) + (z - z0)``, ``Q`` an orthonormal basis of the Hessian
    columns ``h_j = [v̂(z_t; c + δΔc_j, p + δΔp_j) - v̂(z_t; c, p)] / δ`` (finite differences, or
    exact JVPs with ``hessian="jvp"``). ``g_rec`` is never projected: it is the pull that keeps
    the preserved factors.

    ``protect_edit`` (setting; on by default for hsds and image, off = DESIGN §2 as written): the
    loop also computes the edit's own column ``h_e`` (the same finite difference along
    ``(Δc, Δp)``, passed as ``v["h_edit"]``) and the preserved columns are made orthogonal to it
    before projecting, so the edit's own first-order change is never removed — only what the edit
    does *besides* it along preserved factors (see docs/editing.md for why).
    """

    name = "hsds"
    needs = ("tgt", "src", "src_hat", "fd")

    def gradient(self, s):
        g_edit = s.v["tgt"] - s.v["src"]
        g_rec = s.v["src"] - s.v["src_hat"] + (s.z - s.z0)
        out = torch.empty_like(g_edit)
        removed_share = torch.zeros(len(g_edit), device=g_edit.device)
        h_edit = s.v.get("h_edit")
        for i, h in enumerate(s.v["h"]):
            ge = g_edit[i].flatten()
            protect = h_edit[i].flatten() if h_edit is not None else None
            kept, removed = project_out(ge, h.flatten(1), protect)
            out[i] = kept.view_as(g_edit[i])
            removed_share[i] = removed.norm() / ge.norm().clamp_min(1e-12)
        g = out + g_rec
        return g, {"grad_norm": _norm(g), "edit_norm": _norm(g_edit), "rec_norm": _norm(g_rec),
                   "removed": removed_share}


class ImageOnly(HSDS):
    """Ablation: the HSDS optimisation of ``z``, rendered with the *source* condition ``(z', c, p)``."""

    name = "image"
    edits_text = False


class TextOnly(Objective):
    """Ablation: no optimisation; render ``(z0, c', p')`` (SDEdit with the edited condition)."""

    name = "text"
    edits_image = False
    optimise = False

    def gradient(self, s: StepState) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.zeros_like(s.z), {}  # z stays z0 (the loop does not even run: optimise = False)


OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (SDS, DDS, HSDS, ImageOnly, TextOnly)}
METHODS = tuple(OBJECTIVES)


def method_names() -> tuple[str, ...]:
    """Everything a method argument accepts: the methods and their named variants."""
    return (*OBJECTIVES, *VARIANTS)


def get_objective(method: str | Objective) -> Objective:
    """An objective by name (``"sds"``, ``"dds"``, ``"hsds"``, ``"image"``, ``"text"``, or a named variant
    of `explore.editing.settings.VARIANTS` such as ``"hsds-auto"``), or pass one through."""
    if isinstance(method, Objective):
        return method
    base = split_variant(method)[0] if isinstance(method, str) else method
    if base not in OBJECTIVES:
        raise InputError(f"unknown method {method!r}; known: {', '.join([*OBJECTIVES, *VARIANTS])}")
    return OBJECTIVES[base]()
