"""Sampling with a pipeline's own scheduler: the Euler flow ODE, text-to-image, and the EIM render.

`schedule` gives the scheduler's own sigmas (shift, FLUX's dynamic shift); `sample` runs Euler
steps of the flow ODE with the batched `velocity`; `generate` is text -> image with the model's
default sampler (the same steps as the pipeline's ``__call__``); `render` (DESIGN §2) re-noises an
edited latent to ``t_render`` with seeded noise and samples it down with the edited condition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ..checks import check_seed
from ..errors import InputError
from .families import family
from .latent import count_sequences, decode, encode_text, flow_noise, velocity
from .spec import check_image_size, spec, vae_scale_factor


def schedule(pipe, steps: int | None = None, t_start: float = 1.0, image_tokens: int | None = None) -> list[float]:
    """The pipeline scheduler's own sigmas (shift included) from ``t_start`` down to 0.

    For ``t_start < 1`` the full ``steps``-step schedule is cut at ``t_start`` (which is kept as the
    first point), so a render takes the steps the sampler would take below that noise level.
    """
    steps = steps or spec(pipe).steps
    sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(**family(pipe).set_timesteps_kwargs(sched.config, image_tokens or 4096, steps))
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


def image_tokens(pipe, shape) -> int:
    """Transformer image tokens of a latent of ``shape`` (``(..., h, w)``): what a dynamic shift depends on."""
    return family(pipe).image_tokens(int(shape[-2]), int(shape[-1]))


def seeded_noise(shape, seeds: Sequence[int], device) -> torch.Tensor:
    """One standard-normal tensor of ``shape`` per seed, drawn on the CPU (the same on every device)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


def latent_shape(pipe, height: int, width: int) -> tuple[int, int, int]:
    """``(C, h, w)`` of the (unpacked) image latent of a ``height x width`` image."""
    f = vae_scale_factor(pipe)
    ch = family(pipe).latent_channels(pipe)
    return ch, height // f, width // f


@torch.no_grad()
def generate(pipe, prompts: str | Sequence[str], seed: int | Sequence[int] = 0, *, steps: int | None = None,
             guidance: float | None = None, height: int | None = None, width: int | None = None,
             output_type: str = "pil", return_latents: bool = False):
    """Text -> images with the model's default sampler (the same Euler steps as the pipeline's ``__call__``).

    Args:
        pipe: a pipeline from `load_pipeline`.
        prompts: one caption or a list.
        seed: one integer (item ``i`` uses ``seed + i``) or one seed per prompt.
        steps: sampler steps (default: the model's).
        guidance: guidance scale (default: the model's).
        height: image height in pixels (default: the model's resolution).
        width: image width in pixels (default: the model's resolution).
        output_type: ``"pil"``, ``"np"`` or ``"pt"`` (as `decode`).
        return_latents: also return the final latents.

    Returns:
        The images (as `decode` gives them), or ``(images, z0)`` with ``z0`` ``(B, C, h, w)`` when
        ``return_latents``.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if isinstance(seed, (list, tuple)) or (hasattr(seed, "ndim") and getattr(seed, "ndim", 0) > 0):
        seeds = [check_seed(x) for x in seed]
    else:
        seeds = [check_seed(check_seed(seed) + i) for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise InputError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    res = spec(pipe).resolution
    check_image_size(pipe, height or res, width or res)
    shape = latent_shape(pipe, height or res, width or res)
    c, p = encode_text(pipe, prompts)
    z = seeded_noise(shape, seeds, c.device)
    sig = schedule(pipe, steps, image_tokens=image_tokens(pipe, shape))
    z0 = sample(pipe, z, c, p, sig, guidance)
    images = decode(pipe, z0, output_type=output_type)
    return (images, z0) if return_latents else images


@torch.no_grad()
def render(pipe, z: torch.Tensor, c: torch.Tensor, p: torch.Tensor, t_render: float, seeds: Sequence[int],
           guidance: float | None = None, steps: int | None = None) -> torch.Tensor:
    """Re-noise ``z`` to ``t_render`` with seeded noise and sample down to 0 (``t_render=0``: unchanged)."""
    if t_render <= 0:
        return z.float()
    eps = seeded_noise(z.shape[1:], seeds, z.device)
    z_t = flow_noise(z.float(), eps, t_render)
    sig = schedule(pipe, steps, t_start=t_render, image_tokens=image_tokens(pipe, z.shape))
    return sample(pipe, z_t, c, p, sig, guidance)


def render_sequences(pipe, t_render: float, render_steps: int | None, n: int, guidance: float,
                     image_tokens: int | None = None) -> int:
    """Transformer sequences `render` spends on ``n`` latents (0 at ``t_render = 0``).

    ``image_tokens``: of the latents rendered (FLUX's shifted schedule depends on it, so the number of
    steps below ``t_render`` does too).
    """
    if t_render <= 0:
        return 0
    k = len(schedule(pipe, render_steps, t_start=t_render, image_tokens=image_tokens)) - 1
    return k * count_sequences(n, guidance, family(pipe))
