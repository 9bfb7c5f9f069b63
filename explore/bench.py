"""Performance benchmark: how close one HSDS step is to the raw transformer cost (DESIGN §7).

Everything is measured in one run on one machine and reported as ratios against the raw
transformer forward at the batch size one HSDS step uses (``5 + m`` sequences for SD3 with CFG,
``3 + m`` for guidance-distilled FLUX; ``m`` preserved directions).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np
import torch

from .directions import text_direction
from .edit import _Item, edit, optimise, settings_for, sweep
from .errors import InputError, ResourceError
from .io import envelope
from .latent import encode, transformer_call
from .models import family_of, spec


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeat: int = 1, warmup: int = 1) -> tuple[float, Any]:
    out = None
    for _ in range(warmup):
        out = fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeat, out


def _peak_gb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def _source(pipe, res: int):
    if spec(pipe).world == "shapes":
        from .shapes.world import caption, render, sample_scene

        scene = sample_scene(0, color="red")
        return render(scene, res), caption(scene, template=0)
    rng = np.random.default_rng(0)
    return (rng.random((res, res, 3)) * 255).astype(np.uint8), "a photo of a red object on a table"


def _preserve(pipe, k: int | None):
    if spec(pipe).world == "shapes" and k is None:
        return None  # the ShapesWorld default: every other factor
    pairs = [("circle", "square"), ("small", "large"), ("left", "right"), ("top", "bottom"), ("white", "black"),
             ("circle", "triangle"), ("top", "middle"), ("left", "center"), ("gray", "white"), ("large", "small")]
    k = 3 if k is None else k
    if k > len(pairs):
        raise InputError(f"--preserve-count is at most {len(pairs)}")
    if spec(pipe).world == "shapes":
        from .shapes.world import FACTOR_KEYS

        return [f for f in FACTOR_KEYS if f != "color"][:k]
    return [text_direction(pipe, a, b, templates=["a photo of a {} object"]) for a, b in pairs[:k]]


def run_bench(pipe, device: str = "cpu", res: int | None = None, preserve_count: int | None = None,
              steps: int | None = None, sweep_n: int = 8, repeat: int = 5, seed: int = 0) -> dict:
    """Measure raw forward, one HSDS step, a full edit, batched vs sequential sweeps, encode time, peak memory.

    Raw forward and HSDS step are timed in ``max(3, repeat)`` interleaved rounds (medians; the ratio
    is the median of the per-round ratios, all rounds reported); the full edit is the median of
    ``min(repeat, 5)`` runs.

    The raw forward runs at the batch one HSDS step sends through the transformer (``batch``; the
    result's ``hsds_sequences_per_step`` counts the rows of steps 2.. inside the loop, so the two
    must agree; step 1 is cheaper because ``z = z0`` there).
    """
    t_start = time.perf_counter()
    s = spec(pipe)
    res = res or s.resolution
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    image, prompt = _source(pipe, res)
    t_enc, source = _timed(lambda: encode(pipe, image, prompt), device, repeat=1, warmup=1)
    from .latent import clear_text_cache

    clear_text_cache(pipe)
    t_enc_cold, _ = _timed(lambda: encode(pipe, image, prompt), device, repeat=1, warmup=0)
    templates = None if s.world == "shapes" else ["a photo of a {} object"]
    direction = text_direction(pipe, "red", "blue", templates=templates)
    preserve = _preserve(pipe, preserve_count)
    settings = settings_for(pipe, "hsds", steps=steps)
    from .edit import preserved_directions, source_labels

    labels = source_labels(pipe, source)
    pres = preserved_directions(pipe, direction, preserve, labels)
    m = len(pres)
    guidance = settings["guidance"]
    fam = family_of(pipe)
    cfg = fam == "sd3" and guidance != 1.0
    # the edit's own column (protect_edit) is one more finite-difference branch
    batch = 3 + m + int(bool(settings.get("protect_edit"))) + (2 if cfg else 0)
    # raw transformer at that batch (steady state: z_t and ẑ_t differ)
    z = source.z.float().expand(batch, -1, -1, -1).contiguous() + 0.1
    c = source.c.float().expand(batch, -1, -1).contiguous()
    p = source.p.float().expand(batch, -1).contiguous()
    t = torch.full((batch,), 0.5, device=z.device)
    g = torch.full((batch,), guidance, device=z.device) if fam == "flux" else None
    try:
        # Raw forward and one HSDS step, measured in interleaved rounds so both see the same machine
        # state (a shared CPU drifts by ±20 % between runs); the ratio is the median of per-round ratios.
        item = _Item(source, direction, 1.0, pres, seed)
        k = 1 + repeat
        one = settings_for(pipe, "hsds", steps=1)
        more = settings_for(pipe, "hsds", steps=k)
        with torch.no_grad():
            _timed(lambda: transformer_call(pipe, z, t, c, p, guidance=g), device, repeat=1, warmup=2)
        optimise(pipe, [item], settings=one, objective=_hsds())  # warm-up
        raws, step_times, seq_1, seq_k = [], [], 0, 0
        for _ in range(max(3, repeat)):
            with torch.no_grad():
                r, _ = _timed(lambda: transformer_call(pipe, z, t, c, p, guidance=g), device, repeat=3, warmup=0)
            # one HSDS step through the real loop (steps 2..: step 1 shares ẑ_t = z_t and is cheaper)
            t1, (_, _, seq_1) = _timed(lambda: optimise(pipe, [item], settings=one, objective=_hsds()), device,
                                       repeat=1, warmup=0)
            tk, (_, _, seq_k) = _timed(lambda: optimise(pipe, [item], settings=more, objective=_hsds()), device,
                                       repeat=1, warmup=0)
            raws.append(r)
            step_times.append((tk - t1) / (k - 1))
        ratios = [a / b for a, b in zip(step_times, raws)]
        raw, step = float(np.median(raws)), float(np.median(step_times))
        edit_runs = [_timed(lambda: edit(pipe, source, direction, 1.0, "hsds", preserve, labels=labels, steps=steps),
                            device, repeat=1, warmup=0) for _ in range(max(1, min(repeat, 5)))]
        t_edit, res_edit = float(np.median([e[0] for e in edit_runs])), edit_runs[0][1]
        strengths = list(np.linspace(0.25, 2.0, sweep_n))
        t_sweep, _ = _timed(lambda: sweep(pipe, source, direction, strengths, "hsds", preserve, labels=labels,
                                          steps=steps), device, repeat=1, warmup=0)
        t_seq, _ = _timed(lambda: [edit(pipe, source, direction, float(x), "hsds", preserve, labels=labels,
                                        steps=steps) for x in strengths], device, repeat=1, warmup=0)
        from .edit import generate

        t_gen, _ = _timed(lambda: generate(pipe, prompt, seed=seed, height=res, width=res), device, repeat=3,
                          warmup=1)
    except torch.OutOfMemoryError as e:
        raise ResourceError(
            f"out of GPU memory at {res}x{res} with {m} preserved directions (batch {batch}); try a lower --res, "
            "fewer preserved attributes (--preserve-count), or offload='model'"
        ) from e
    machine_dev = torch.cuda.get_device_name(0) if torch.device(device).type == "cuda" else "cpu"
    return envelope(
        s.model_id, seed, {**settings, "preserve_count": m, "sweep_n": sweep_n, "repeat": repeat},
        time.perf_counter() - t_start,
        device=machine_dev, arch=s.model_id, res=res, dtype=str(pipe.transformer.dtype).replace("torch.", ""),
        batch=batch, raw_forward_ms=raw * 1e3, hsds_step_ms=step * 1e3, step_over_raw=float(np.median(ratios)),
        step_over_raw_rounds=[round(x, 3) for x in ratios], edit_s=t_edit,
        edit_s_runs=[round(e[0], 3) for e in edit_runs], sweep_batched_s=t_sweep, sweep_sequential_s=t_seq,
        sweep_speedup=t_seq / t_sweep,
        encode_s=t_enc, encode_cold_s=t_enc_cold, generate_s=t_gen, peak_mem_gb=_peak_gb(device),
        evaluations_per_edit=res_edit.evaluations, hsds_sequences_per_step=(seq_k - seq_1) / (k - 1),
        image_tokens=int(source.z.shape[-1] * source.z.shape[-2] // 4), text_tokens=int(source.c.shape[1]),
    )


def _hsds():
    from .objectives import HSDS

    return HSDS()


def load_for_bench(model: str, device: str, dtype: torch.dtype):
    """``shapes``/``tiny-*``/folder/hub id via load_pipeline; architecture names build random full-size models."""
    from .architectures import ARCHITECTURES, architecture
    from .models import load_pipeline

    if model in ARCHITECTURES:
        return architecture(model, device=device, dtype=dtype)
    return load_pipeline(model, device=device, dtype=dtype)

