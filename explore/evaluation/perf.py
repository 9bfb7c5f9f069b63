"""Performance: how close one HSDS step is to the raw transformer cost, and what a notebook user waits (DESIGN §7).

Everything is measured in one run on one machine and reported as ratios against the raw
transformer forward at the batch size one HSDS step uses (``5 + m`` sequences for SD3 with CFG,
``3 + m`` for guidance-distilled FLUX; ``m`` preserved directions).
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..editing.api import edit, settings_for, sweep
from ..editing.directions import text_direction
from ..editing.loop import EditItem, loop_guidance, optimise
from ..editing.methods import METHODS
from ..editing.objectives import HSDS
from ..editing.preserve import preserved_directions, reduce_basis, source_labels
from ..errors import InputError, ResourceError
from ..io import envelope
from ..pipeline.architectures import ARCHITECTURES, architecture
from ..pipeline.families import family
from ..pipeline.latent import clear_text_cache, encode, transformer_call
from ..pipeline.load import load_pipeline
from ..pipeline.sampling import generate, image_tokens
from ..pipeline.spec import spec
from ..worlds import world_of


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
    world = world_of(pipe)
    if world is not None and world.name == "shapes":
        scene = world.sample(random.Random(0), color="red")
        return world.render(scene, res), world.caption(scene, template=0)
    rng = np.random.default_rng(0)
    return (rng.random((res, res, 3)) * 255).astype(np.uint8), "a photo of a red object on a table"


def _preserve(pipe, k: int | None):
    shapes = world_of(pipe) is not None and world_of(pipe).name == "shapes"
    if shapes and k is None:
        return None  # the ShapesWorld default: every other factor
    pairs = [("circle", "square"), ("small", "large"), ("left", "right"), ("top", "bottom"), ("white", "black"),
             ("circle", "triangle"), ("top", "middle"), ("left", "center"), ("gray", "white"), ("large", "small")]
    k = 3 if k is None else k
    if k > len(pairs):
        raise InputError(f"--preserve-count is at most {len(pairs)}")
    if shapes:
        return [f for f in world_of(pipe).keys() if f != "color"][:k]
    return [text_direction(pipe, a, b, templates=["a photo of a {} object"]) for a, b in pairs[:k]]


def run_bench(pipe, device: str = "cpu", res: int | None = None, preserve_count: int | None = None,
              steps: int | None = None, sweep_n: int = 8, repeat: int = 5, seed: int = 0, quick: bool = False,
              methods: Sequence[str] | None = None) -> dict:
    """Measure raw forward, one HSDS step, a full edit, batched vs sequential sweeps, encode time, peak memory,
    and the cost of one full edit with each method.

    ``quick``: 3 rounds, one full edit, no sweeps (the GPU check, `scripts/gpu_check.sh`). The step
    ratio is measured with finite-difference columns (forward passes, the same batch as the raw
    forward); the full edit runs with the model's own default settings (bf16 models: JVP columns).

    Raw forward and HSDS step are timed in ``max(3, 2 * repeat)`` interleaved rounds, each ``2 * repeat``
    raw forwards and ``2 * repeat`` loop steps long (medians; the ratio is the median of the
    per-round ratios, all rounds reported); the full edit is the median of
    ``min(repeat, 5)`` runs. ``methods`` (default: every method; ``quick``: none): one full edit
    each at its default settings (the median of ``min(repeat, 3)`` runs), its seconds and
    transformer sequences (``per_method``).

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
    clear_text_cache(pipe)
    t_enc_cold, _ = _timed(lambda: encode(pipe, image, prompt), device, repeat=1, warmup=0)
    templates = None if world_of(pipe) is not None else ["a photo of a {} object"]
    direction = text_direction(pipe, "red", "blue", templates=templates)
    preserve = _preserve(pipe, preserve_count)
    settings = settings_for(pipe, "hsds", steps=steps, hessian="finite-difference")
    labels = source_labels(pipe, source)
    pres = preserved_directions(pipe, direction, preserve, labels)
    m = len(pres)
    guidance = loop_guidance(settings)  # the loop's own guidance (HSDS's default: 1, no CFG rows)
    fam = family(pipe)
    cfg = fam.cfg and guidance != 1.0
    # the columns the loop computes (the reduced basis, as `edit` makes it) and the edit's own
    # (protect_edit): one branch each
    loop_pres = reduce_basis(pres, settings.basis) if pres and settings.basis else pres
    batch = 3 + len(loop_pres) + int(bool(settings.protect_edit)) + (2 if cfg else 0)
    # raw transformer at that batch (steady state: z_t and ẑ_t differ)
    z = source.z.float().expand(batch, -1, -1, -1).contiguous() + 0.1
    c = source.c.float().expand(batch, -1, -1).contiguous()
    p = source.p.float().expand(batch, -1).contiguous()
    t = torch.full((batch,), 0.5, device=z.device)
    g = None if fam.cfg else torch.full((batch,), guidance, device=z.device)
    try:
        # Raw forward and one HSDS step, measured in interleaved rounds so both see the same machine
        # state (a shared CPU drifts by ±20 % between runs); the ratio is the median of per-round ratios.
        item = EditItem(source, direction, 1.0, loop_pres, seed)
        per_round = 2 * max(1, repeat)  # forwards and steps per round (longer rounds: less timer noise)
        k = 1 + per_round
        # columns every step here, so every step sends the same batch (the default reuses them every 2nd)
        one = settings_for(pipe, "hsds", steps=1, hessian="finite-difference", columns_every=1)
        more = settings_for(pipe, "hsds", steps=k, hessian="finite-difference", columns_every=1)
        with torch.no_grad():
            _timed(lambda: transformer_call(pipe, z, t, c, p, guidance=g), device, repeat=1, warmup=2)
        optimise(pipe, [item], settings=one, objective=_hsds())  # warm-up
        raws, step_times, seq_1, seq_k = [], [], 0, 0
        for _ in range(3 if quick else max(3, 2 * repeat)):
            with torch.no_grad():
                r, _ = _timed(lambda: transformer_call(pipe, z, t, c, p, guidance=g), device,
                              repeat=per_round, warmup=0)
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
                            device, repeat=1, warmup=0) for _ in range(1 if quick else max(1, min(repeat, 5)))]
        t_edit, res_edit = float(np.median([e[0] for e in edit_runs])), edit_runs[0][1]
        t_sweep = t_seq = None
        if not quick:
            strengths = list(np.linspace(0.25, 2.0, sweep_n))
            t_sweep, _ = _timed(lambda: sweep(pipe, source, direction, strengths, "hsds", preserve, labels=labels,
                                              steps=steps), device, repeat=1, warmup=0)
            t_seq, _ = _timed(lambda: [edit(pipe, source, direction, float(x), "hsds", preserve, labels=labels,
                                            steps=steps) for x in strengths], device, repeat=1, warmup=0)
        t_gen, _ = _timed(lambda: generate(pipe, prompt, seed=seed, height=res, width=res), device,
                          repeat=1 if quick else 3, warmup=0 if quick else 1)
        per_method = {}
        for name in (() if quick and methods is None else (methods or METHODS)):
            runs = [_timed(lambda name=name: edit(pipe, source, direction, 1.0, name, preserve if name in
                                                  ("hsds", "image") else None, labels=labels), device, repeat=1,
                           warmup=0)
                    for _ in range(max(1, min(repeat, 3)))]
            per_method[name] = {"seconds": float(np.median([r[0] for r in runs])),
                                "evaluations": runs[0][1].evaluations, "calls": runs[0][1].calls}
    except torch.OutOfMemoryError as e:
        raise ResourceError(
            f"out of GPU memory at {res}x{res} with {m} preserved directions (batch {batch}); try a lower --res, "
            "fewer preserved attributes (--preserve-count), or offload='model'"
        ) from e
    machine_dev = torch.cuda.get_device_name(0) if torch.device(device).type == "cuda" else "cpu"
    return envelope(
        s.model_id, seed, {**settings, "preserve_count": m, "sweep_n": sweep_n, "repeat": repeat, "quick": quick,
                           "edit_settings": dict(res_edit.settings)},
        time.perf_counter() - t_start,
        device=machine_dev, arch=s.model_id, res=res, dtype=str(pipe.transformer.dtype).replace("torch.", ""),
        batch=batch, raw_forward_ms=raw * 1e3, hsds_step_ms=step * 1e3, step_over_raw=float(np.median(ratios)),
        step_over_raw_rounds=[round(x, 3) for x in ratios], round_calls=per_round, edit_s=t_edit,
        edit_s_runs=[round(e[0], 3) for e in edit_runs], sweep_batched_s=t_sweep, sweep_sequential_s=t_seq,
        sweep_speedup=None if t_sweep is None else t_seq / t_sweep,
        encode_s=t_enc, encode_cold_s=t_enc_cold, generate_s=t_gen, peak_mem_gb=_peak_gb(device),
        evaluations_per_edit=res_edit.evaluations, calls_per_edit=res_edit.calls,
        hsds_sequences_per_step=(seq_k - seq_1) / (k - 1),
        per_method=per_method,
        image_tokens=image_tokens(pipe, source.z.shape), text_tokens=int(source.c.shape[1]),
    )


def _hsds():
    return HSDS()


def load_for_bench(model: str, device: str, dtype: torch.dtype, quantization: str | None = None,
                   offload: str | None = None):
    """``shapes``/``tiny-*``/folder/hub id via load_pipeline; architecture names build random full-size models
    (``quantization``: their transformer quantised in place, as `load_pipeline` does for tiny pipelines)."""
    if model in ARCHITECTURES:
        pipe = architecture(model, device=device, dtype=dtype)
        if quantization is not None:
            from ..pipeline.quantize import quantize_in_place, scheme

            quant = scheme(quantization, torch.device(device))
            quantize_in_place(pipe, quant)
            pipe.transformer._explore_quantization = quant.name
        return pipe
    return load_pipeline(model, device=device, dtype=dtype, quantization=quantization, offload=offload)



def measure_latency(pipe, *, prompt: str | None = None, attribute: str = "color", target: str | None = None,
                    settings: Mapping[str, Any] | None = None, strengths: Sequence[float] | None = None,
                    repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Seconds a user waits in the tour's `EditPanel` (not a test: numbers depend on the machine).

    The panel opens at the middle strength of the grid (``open_s``: encoding, the preserved
    directions, the first edit — one-time costs). ``fresh_edit_s``: median over ``repeats`` slider
    moves to strengths nothing cached yet (one HSDS edit each, including the redraw);
    ``sweep_s``: one batched sweep over ``strengths``; ``cached_move_s`` / ``cached_move_max_s``:
    median / max redraw after moving the slider to each grid strength once the sweep is cached
    (first visit: PNGs and the trace plot are drawn).
    """
    # the panel is what is measured: ipywidgets (a notebook dependency) loads only here
    from ..views.session import DEFAULT_STRENGTHS, EditSession
    from ..views.widgets import EditPanel

    strengths = DEFAULT_STRENGTHS if strengths is None else strengths
    grid = sorted({round(float(s), 6) for s in strengths})
    start = grid[len(grid) // 2]
    session = EditSession(pipe, grid, settings, seed=seed)
    t0 = time.perf_counter()
    if session.shapes:
        prompts = [prompt] if prompt else session.world.captions(1, seed)
        panel = EditPanel(session, prompts, attribute=attribute, target=target, method="hsds", strength=start,
                          seed=seed)
    else:
        panel = EditPanel(session, [prompt or "a photo of a red car"], source_word="red", target=target or "blue",
                          method="hsds", strength=start, seed=seed)
    open_s = time.perf_counter() - t0
    if panel.last_error is not None:
        raise panel.last_error
    fresh_values = [s for s in grid if s not in (0.0, start)][:repeats] or [start]
    fresh = []
    for s in fresh_values:
        t0 = time.perf_counter()
        panel.strength.value = s
        fresh.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    panel.run_sweep()
    sweep_s = time.perf_counter() - t0
    moves = []
    for s in [s for s in reversed(grid) if s not in fresh_values]:
        t0 = time.perf_counter()
        panel.strength.value = s
        moves.append(time.perf_counter() - t0)
    if panel.last_error is not None:
        raise panel.last_error
    key = panel.key()
    return {
        "model": spec(pipe).model_id, "method": "hsds", "attribute": key.attribute, "edit": f"{key.v_minus}->"
        f"{key.v_plus}", "preserved_factors": len(key.preserve), "settings": dict(key.settings),
        "strengths": grid, "cached_move_s": float(np.median(moves)) if moves else None,
        "cached_move_max_s": float(np.max(moves)) if moves else None, "open_s": open_s,
        "fresh_edit_s": float(np.median(fresh)),
        "fresh_edit_all_s": fresh, "sweep_s": sweep_s, "torch_threads": torch.get_num_threads(),
    }
