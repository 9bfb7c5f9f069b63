"""Inversion fidelity: how well a method that inverts a real image gets it back at zero edit strength.

The first number users of inversion-based editors ask for. For ``n`` renders of an embedded world
(full captions), each inverting method runs at strength 0 with the source caption, at each number
of steps, and the result is compared with the source: PSNR (dB, against the render) and the share
of the world reader's factors that still read right (``agreement``; ``exact``: every factor). The
VAE round trip (encode, decode) is the ceiling no inversion can pass.

Inverters: ``euler`` — plain Euler inversion and regeneration (RF-Inversion with ``gamma = eta = 0``,
the source caption, no guidance), the baseline; ``uni-inv`` — UniEdit-Flow's predictor-corrector
inversion to pure noise with the source caption, then the same regeneration; ``unieditflow`` — as
published (Uni-Inv 60 % of the way with the empty prompt, the regeneration from there);
``rf-inversion`` and ``fluxspace`` — at their defaults for the model (controlled inversion, then the
regeneration pulled toward the source).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..editing.api import edit_batch
from ..editing.directions import text_direction
from ..errors import InputError
from ..images import psnr
from ..io import atomic_write_json, atomic_write_text, envelope, save_figure
from ..pipeline.latent import decode, encode
from ..pipeline.spec import spec
from ..worlds import require_world

# name -> (method, settings over the method's defaults)
INVERTERS: dict[str, tuple[str, dict]] = {
    "euler": ("rf-inversion", {"gamma": 0.0, "eta": 0.0, "inversion_prompt": "source", "source_guidance": 1.0,
                               "target_guidance": 1.0}),
    "rf-inversion": ("rf-inversion", {}),
    # Uni-Inv (UniEdit-Flow's predictor-corrector) all the way to noise with the source caption, as "euler"
    "uni-inv": ("unieditflow", {"alpha": 1.0, "inversion_prompt": "source"}),
    # UniEdit-Flow as published: Uni-Inv 60 % of the way with the empty prompt, the regeneration from there
    "unieditflow": ("unieditflow", {"alpha": 0.6, "inversion_prompt": "empty"}),
    "fluxspace": ("fluxspace", {}),
}


def _uint8(images) -> np.ndarray:
    return (np.clip(np.asarray(images), 0, 1) * 255).round().astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return psnr(a / 255.0, b / 255.0)


def _read_score(world, image: np.ndarray, labels: dict) -> tuple[float, bool]:
    reading = world.read(image)
    right = [reading.get(k) == v for k, v in labels.items()]
    return float(np.mean(right)), all(right)


def inversion_study(pipe, n: int = 48, seed: int = 0, steps: Sequence[int] = (4, 8, 16, 28),
                    inverters: Sequence[str] = ("euler", "rf-inversion"), batch_size: int = 8,
                    out: str | Path | None = None, progress: bool = True) -> dict:
    """Reconstruction at strength 0 per inverter and number of steps (module docstring).

    Returns ``results[inverter][steps]`` = ``{"psnr", "psnr_min", "agreement", "exact", "evaluations"}``
    (means over the items; ``evaluations``: transformer sequences per item) and ``vae`` (the round
    trip's PSNR and agreement).
    """
    world = require_world(pipe, "the inversion study reads the reconstructions back: it needs an embedded world "
                                "(--model shapes or shapes-pairs)")
    bad = [m for m in inverters if m not in INVERTERS]
    if bad:
        raise InputError(f"unknown inverter(s) {bad}; known: {', '.join(INVERTERS)}")
    if n < 1 or not steps or any(int(s) < 1 for s in steps):
        raise InputError(f"n and every number of steps must be at least 1, got n={n}, steps={list(steps)}")
    t0 = time.perf_counter()
    res_px = spec(pipe).resolution
    rng = random.Random(f"inversion-{seed}")
    scenes = [world.sample(rng) for _ in range(n)]
    images = [world.render(s, res_px) for s in scenes]
    labels = [world.labels(s) for s in scenes]
    latents = [encode(pipe, im, world.caption(s, template=0)) for im, s in zip(images, scenes)]
    key, v_minus, v_plus = world.value_pairs()[0]  # any direction: at strength 0 the target is the source
    direction = text_direction(pipe, v_minus, v_plus, attribute=key)
    vae = _uint8(np.concatenate([decode(pipe, lat.z, "np") for lat in latents]))
    vae_reads = [_read_score(world, im, lab) for im, lab in zip(vae, labels)]
    results: dict = {}
    bar = tqdm(total=len(inverters) * len(steps) * n, desc="inversion", disable=not progress)
    for name in inverters:
        method, fixed = INVERTERS[name]
        for k in steps:
            rows = []
            for b in range(0, n, batch_size):
                idx = list(range(b, min(n, b + batch_size)))
                o = edit_batch(pipe, [latents[i] for i in idx], [direction] * len(idx), [0.0] * len(idx), method,
                               seeds=[seed * 100_000 + i for i in idx], steps=int(k), **fixed)
                rec = _uint8(decode(pipe, o["x"], "np"))
                for j, i in enumerate(idx):
                    agree, exact = _read_score(world, rec[j], labels[i])
                    rows.append((_psnr(rec[j], images[i]), agree, exact, o["evaluations"] / len(idx)))
                bar.update(len(idx))
            a = np.asarray(rows, dtype=float)
            results.setdefault(name, {})[str(int(k))] = {
                "psnr": float(a[:, 0].mean()), "psnr_min": float(a[:, 0].min()), "agreement": float(a[:, 1].mean()),
                "exact": float(a[:, 2].mean()), "evaluations": float(a[:, 3].mean())}
    bar.close()
    res = envelope(spec(pipe).model_id, seed, {"n": n, "steps": [int(k) for k in steps], "inverters": {
        m: {"method": INVERTERS[m][0], **INVERTERS[m][1]} for m in inverters}, "caption": "template 0"},
        time.perf_counter() - t0, world=world.name, results=results,
        vae={"psnr": float(np.mean([_psnr(v, im) for v, im in zip(vae, images)])),
             "agreement": float(np.mean([r[0] for r in vae_reads])),
             "exact": float(np.mean([r[1] for r in vae_reads]))})
    if out is not None:
        from ..views.plots import inversion_figure

        out = Path(out)
        atomic_write_json(out / "inversion.json", res)
        atomic_write_text(out / "inversion.md", inversion_markdown(res))
        save_figure(out / "inversion.png", inversion_figure(res))
    return res


def inversion_markdown(res: dict) -> str:
    lines = [f"# Inversion fidelity on {res['world']} ({res['model']}, n = {res['settings']['n']}, seed "
             f"{res['seed']})", "",
             "Strength 0 with the source caption: PSNR (dB; worst item in brackets) against the render, the "
             "share of factors the reader still reads right (all of them: exact), transformer sequences per "
             f"item. VAE round trip: {res['vae']['psnr']:.2f} dB, agreement {res['vae']['agreement']:.3f}.", "",
             "| inverter | steps | PSNR | agreement | exact | NFE |", "|---|---|---|---|---|---|"]
    for name, per in res["results"].items():
        for k, r in per.items():
            lines.append(f"| {name} | {k} | {r['psnr']:.2f} ({r['psnr_min']:.1f}) | {r['agreement']:.3f} | "
                         f"{r['exact']:.3f} | {r['evaluations']:.0f} |")
    return "\n".join(lines) + "\n"


__all__ = ["INVERTERS", "inversion_markdown", "inversion_study"]
