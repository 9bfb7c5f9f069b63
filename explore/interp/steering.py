"""Activation steering: add ``alpha * d`` to a stream at a hook site while the model runs (DESIGN §4).

`steer` is the hook function; `steered_image` renders a source with it, using the same render
noise as an EIM edit with the same seed, so ``alpha = 0`` is that method's reconstruction and the
two can be compared side by side (the probing notebook's steering panel).
"""

from __future__ import annotations

import numpy as np
import torch

from ..editing.settings import RENDER_SEED_OFFSET
from ..pipeline.latent import decode
from ..pipeline.sampling import render
from .hooks import HookFn, hooks


def steer(direction: torch.Tensor, alpha: float) -> HookFn:
    """A hook that adds ``alpha * direction`` to a stream (``alpha = 0`` is a no-op).

    ``direction``: ``(dim,)`` added to every token, or ``(tokens, dim)`` per token.
    """

    def fn(x, *, site):
        if alpha == 0:
            return None
        return x + alpha * direction.to(x.device, x.dtype)

    return fn


@torch.no_grad()
def steered_image(pipe, latent, site: str, vector, alpha: float, *, t_render: float = 0.6, seed: int = 0,
                  guidance: float | None = None):
    """Render ``latent`` from ``t_render`` with ``alpha * vector`` added at ``site``; a PIL image.

    Same render noise as an EIM edit with ``seed`` (`explore.editing.api.edit`), so ``alpha = 0``
    is the reconstruction of the text-only method at that ``t_render``. ``vector``: ``(dim,)``
    added to every token of the site's stream (or ``(tokens, dim)``).
    """
    vec = torch.as_tensor(np.asarray(vector), dtype=torch.float32)
    with hooks(pipe, {site: steer(vec, float(alpha))}):
        z = render(pipe, latent.z.float(), latent.c.float(), latent.p.float(), t_render,
                   [seed + RENDER_SEED_OFFSET], guidance)
    return decode(pipe, z)[0]
