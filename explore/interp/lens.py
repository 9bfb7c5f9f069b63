"""A lens for DiTs: what does block k already "see"? The model's clean-image prediction read from the
image stream after each block.

Which readout, and why: the model's **own head applied early** — the image stream after block k is
written where the last block's image output goes, and the transformer's final norm and projection
(and, for FLUX-style models, the single blocks are skipped by the same substitution at the last
single block) turn it into a velocity ``v_k``; the clean-image prediction is
``x0_k = z_t - t v_k`` (rectified flow), decoded by the VAE. Nothing is fitted, so nothing can
overfit or leak labels, and the last block's lens is exactly the model's prediction. Its weakness:
early blocks' streams live at another scale than the head expects, so their images can be washed
out even where a linear readout would find the factor; the probes (`explore.probe`) are the fitted
counterpart, and the study reports both side by side.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..io import atomic_write_json, atomic_write_text, envelope, save_figure
from ..pipeline.latent import JointLatent, decode, encode, flow_noise, velocity
from ..pipeline.sampling import seeded_noise
from ..pipeline.spec import spec
from ..worlds import require_world
from .hooks import ActivationCache, resolve_sites, run_with_cache
from .patching import patch


def image_sites(pipe) -> list[str]:
    """The image-stream sites in forward order (one per block that has one)."""
    return [s for s in resolve_sites(pipe, None) if s.endswith(".img")]


BASELINE = "z_t"  # the lens row of no block at all: x0 = z_t (what the noisy input alone shows)


@torch.no_grad()
def lens(pipe, latent: JointLatent, t: float = 0.5, seed: int = 0, sites: Sequence[str] | None = None,
         output_type: str = "np", baseline: bool = True):
    """The clean-image prediction after each image-stream site, for one noise level ``t``.

    ``latent``: a `JointLatent` (from `explore.encode`). Returns ``(names, images)``: images as
    `decode` gives them, one per site (``(n, H, W, 3)`` for ``"np"``), each the decoded
    ``x0_k = z_t - t v_k`` of the latent's first item, with ``z_t`` from one seeded noise.
    ``baseline``: first, the row ``"z_t"`` (``v = 0``: the noisy input decoded), what a block's lens
    must beat to have added anything (at small ``t``, ``z_t`` is nearly the image).
    """
    t = float(t)
    if not 0 < t <= 1:
        raise InputError(f"t must lie in (0, 1], got {t}")
    all_sites = image_sites(pipe)
    chosen = list(sites) if sites is not None else all_sites
    bad = [s for s in chosen if s not in all_sites]
    if bad:
        raise InputError(f"not image-stream sites of this model: {bad}; see explore.interp.lens.image_sites(pipe)")
    last = all_sites[-1]
    z0 = latent.z[:1].float()
    eps = seeded_noise(z0.shape[1:], [seed], z0.device)
    z_t = flow_noise(z0, eps, t)
    tt = torch.full((1,), t)
    c, p = latent.c[:1].float(), latent.p[:1].float()
    _, cache = run_with_cache(pipe, lambda: velocity(pipe, z_t, tt, c, p, guidance=1.0), sites=chosen, branch="all")
    key_t = round(t, 4)
    x0 = [z_t] if baseline else []
    for site in chosen:
        moved = ActivationCache({(last, key_t): cache[(site, key_t)]})
        with patch(pipe, {last: moved}, branch="all"):
            v = velocity(pipe, z_t, tt, c, p, guidance=1.0)
        x0.append(z_t - t * v)
    return ([BASELINE] if baseline else []) + chosen, decode(pipe, torch.cat(x0), output_type)


def lens_study(pipe, n: int = 24, seed: int = 0, timesteps: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
               out: str | Path | None = None, progress: bool = True) -> dict:
    """How well each factor reads from each block's lens image, per ``t``, on an embedded world.

    For ``n`` renders with their full captions: the lens images of every image-stream site at every
    ``t`` (`lens`), read by the world's reader; ``accuracy[t][site][factor]`` is the share of
    (item, key) whose reading equals the scene's label. The first row, ``"z_t"``, reads the noisy
    input itself; the last site is the model's own prediction.
    """
    world = require_world(pipe, "the lens study reads factors from pixels: it needs an embedded world (--model "
                                "shapes or shapes-pairs)")
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    t0 = time.perf_counter()
    rng = random.Random(f"lens-{seed}")
    res_px = spec(pipe).resolution
    sites = [BASELINE] + image_sites(pipe)
    ts = [round(float(t), 4) for t in timesteps]
    hits: dict = {t: {s: {} for s in sites} for t in ts}
    examples: dict = {}
    for i in tqdm(range(n), desc="lens", disable=not progress):
        scene = world.sample(rng)
        labels = world.labels(scene)
        latent = encode(pipe, world.render(scene, res_px), world.caption(scene, template=0))
        for t in ts:
            _, images = lens(pipe, latent, t, seed=seed * 100_000 + i)
            for site, im in zip(sites, images):
                reading = world.read((np.clip(im, 0, 1) * 255).round().astype(np.uint8))
                for key, value in labels.items():
                    factor = key.rsplit(".", 1)[-1]
                    hits[t][site].setdefault(factor, []).append(reading.get(key) == value)
            if i == 0:
                examples[t] = images
    accuracy = {str(t): {s: {f: float(np.mean(v)) for f, v in per.items()} for s, per in hits[t].items()}
                for t in ts}
    res = envelope(spec(pipe).model_id, seed, {"n": n, "timesteps": ts, "readout": "the model's own head, early",
                                                "caption": "template 0"},
                   time.perf_counter() - t0, world=world.name, sites=sites, accuracy=accuracy)
    if out is not None:
        from ..views.causal_plots import lens_figure, lens_strip

        out = Path(out)
        atomic_write_json(out / "lens.json", res)
        atomic_write_text(out / "lens.md", lens_markdown(res))
        save_figure(out / "lens.png", lens_figure(res))
        save_figure(out / "lens_example.png", lens_strip(sites, examples))
    return res


def lens_markdown(res: dict) -> str:
    lines = [f"# Lens on {res['world']} ({res['model']}, seed {res['seed']})", "",
             "Share (%) of factor readings of the lens image after each block that equal the scene's labels "
             "(the model's own head applied to that block's image stream); the first row reads the noisy input z_t "
             "itself, the last row is the model's prediction.",
             ""]
    for t, per in res["accuracy"].items():
        factors = list(next(iter(per.values())))
        lines += [f"## t = {t}", "", "| site | " + " | ".join(factors) + " |", "|---|" + "---|" * len(factors)]
        for site, acc in per.items():
            lines.append(f"| {site} | " + " | ".join(f"{100 * acc[f]:.0f}" for f in factors) + " |")
        lines.append("")
    return "\n".join(lines)
