"""How good is a ShapesWorld model: readers on caption -> image samples, and VAE reconstruction PSNR."""

from __future__ import annotations

import random
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .readers import read
from .world import FACTOR_KEYS, caption, render, sample_scene


def full_captions(n: int, seed: int) -> tuple[list[str], list[dict[str, str]]]:
    """``n`` seeded captions naming every factor (random template), with their labels."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    return [caption(s, rng=rng) for s in scenes], [s.labels for s in scenes]


@torch.no_grad()
def factor_accuracy(pipe, n: int = 256, seed: int = 1234, batch: int = 64, steps: int | None = None,
                    guidance: float | None = None, progress: bool = True) -> dict:
    """Generate ``n`` images from full captions and read them back: per-factor accuracy and more."""
    from ..edit import generate

    prompts, labels = full_captions(n, seed)
    hits = {k: 0 for k in FACTOR_KEYS}
    all_right = 0
    found = 0
    t0 = time.perf_counter()
    for i in tqdm(range(0, n, batch), desc="quality", disable=not progress, leave=False):
        imgs = generate(pipe, prompts[i : i + batch], seed=seed * 1000 + i, steps=steps, guidance=guidance,
                        output_type="np")
        for img, lab in zip(imgs, labels[i : i + batch]):
            r = read(img)
            found += r.found
            ok = [r[k] == lab[k] for k in FACTOR_KEYS]
            all_right += all(ok)
            for k, o in zip(FACTOR_KEYS, ok):
                hits[k] += o
    seconds = time.perf_counter() - t0
    return {
        "factor_accuracy": {k: hits[k] / n for k in FACTOR_KEYS},
        "all_factors_accuracy": all_right / n,
        "object_found": found / n,
        "n": n,
        "seed": seed,
        "seconds_per_image": seconds / n,
    }


@torch.no_grad()
def vae_psnr(pipe, n: int = 512, seed: int = 999) -> float:
    """Mean PSNR (dB) of the VAE (posterior mean, decode) on ``n`` held-out renders."""
    from ..latent import decode, encode_image

    rng = random.Random(seed)
    images = np.stack([render(sample_scene(rng), 64) for _ in range(n)])
    vals = []
    for i in range(0, n, 128):
        x = images[i : i + 128]
        z = encode_image(pipe, x)
        rec = decode(pipe, z, output_type="np")
        mse = ((rec - x / 255.0) ** 2).reshape(len(x), -1).mean(1).clip(1e-10)
        vals.append(10 * np.log10(1.0 / mse))
    return float(np.concatenate(vals).mean())
