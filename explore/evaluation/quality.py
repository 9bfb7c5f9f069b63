"""How good is an embedded world's model: readers on caption -> image samples, and VAE reconstruction PSNR.

For ShapesWorld: per-factor accuracy and "all six right". For ShapesWorld Pairs also the binding
accuracy (both objects and the background entirely right), the colour-swap rate (an object shows
the other object's colour) and how often two objects were found; per-object factor accuracy is
over both objects of every image.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..images import psnr
from ..pipeline.latent import decode, encode_image
from ..pipeline.sampling import generate
from ..worlds import World, world_of


def full_captions(world: World, n: int, seed: int) -> tuple[list[str], list[dict[str, str]]]:
    """``n`` seeded captions naming every factor (random template), with their labels."""
    rng = random.Random(seed)
    scenes = [world.sample(rng) for _ in range(n)]
    return [world.caption(s, rng=rng) for s in scenes], [world.labels(s) for s in scenes]


def summarise(scores: Sequence[dict]) -> dict:
    """Per-factor accuracy (object factors pooled over objects), all right, binding, swaps, objects found."""
    per_factor: dict[str, list[bool]] = {}
    for s in scores:
        for k, ok in s["correct"].items():
            per_factor.setdefault(k.split(".", 1)[1] if "." in k else k, []).append(bool(ok))
    swaps = [v for s in scores for v in s["swap"].values()]
    return {
        "factor_accuracy": {f: float(np.mean(v)) for f, v in per_factor.items()},
        "all_factors_accuracy": float(np.mean([s["binding"] for s in scores])),
        "object_accuracy": float(np.mean([ok for s in scores for ok in s["objects"].values()])),
        "binding_accuracy": float(np.mean([s["binding"] for s in scores])),
        "swap_rate": float(np.mean(swaps)) if swaps else None,
        "object_found": float(np.mean([s["n_objects"] >= 1 for s in scores])),
        "objects_found_mean": float(np.mean([s["n_objects"] for s in scores])),
    }


@torch.no_grad()
def factor_accuracy(pipe, n: int = 256, seed: int = 1234, batch: int = 64, steps: int | None = None,
                    guidance: float | None = None, progress: bool = True) -> dict:
    """Generate ``n`` images from full captions and read them back (see `summarise` for the keys)."""
    world = world_of(pipe)
    prompts, labels = full_captions(world, n, seed)
    scores = []
    t0 = time.perf_counter()
    for i in tqdm(range(0, n, batch), desc="quality", disable=not progress, leave=False):
        imgs = generate(pipe, prompts[i : i + batch], seed=seed * 1000 + i, steps=steps, guidance=guidance,
                        output_type="np")
        scores += [world.score(world.read(img), lab) for img, lab in zip(imgs, labels[i : i + batch])]
    return {**summarise(scores), "n": n, "seed": seed, "seconds_per_image": (time.perf_counter() - t0) / n}


@torch.no_grad()
def vae_psnr(pipe, n: int = 512, seed: int = 999) -> float:
    """Mean PSNR (dB) of the VAE (posterior mean, decode) on ``n`` held-out renders of the model's world."""
    world = world_of(pipe)
    rng = random.Random(seed)
    images = np.stack([world.render(world.sample(rng), world.resolution) for _ in range(n)])
    vals = []
    for i in range(0, n, 128):
        x = images[i : i + 128]
        rec = decode(pipe, encode_image(pipe, x), output_type="np")
        vals += [psnr(r, im / 255.0) for r, im in zip(rec, x)]
    return float(np.mean(vals))
