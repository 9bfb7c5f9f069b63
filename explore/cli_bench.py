"""The performance commands of ``python -m explore``: ``bench`` (measure) and ``bench --estimate`` (the
memory a run needs, on the meta device). Registered with `explore.cli_args.command`; `explore.cli`
imports this module so they appear in ``--help``."""

from __future__ import annotations

import time

from .cli_args import at_least, check_method, check_runtime, command, common, model_world, out_file, size_multiple


@command("bench", "performance: raw transformer vs one HSDS step, full edit, batched vs sequential sweep, memory")
def _bench_parser(p):
    common(p, out="runs/bench/bench.json")
    p.add_argument("--res", type=int, default=None, help="image side (default: the model's native resolution)")
    p.add_argument("--preserve-count", type=int, default=None, help="preserved directions (ShapesWorld default: all "
                                                                     "other factors; others: 3)")
    p.add_argument("--steps", type=int, default=None, help="HSDS steps of the full edit (default: the method's)")
    p.add_argument("--sweep-n", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer first")
    p.add_argument("--quick", action="store_true", help="3 rounds, one full edit, no sweeps (the GPU check)")
    p.add_argument("--methods", default=None, help="methods whose full edit to cost (default: all; --quick: none)")
    p.add_argument("--estimate", action="store_true",
                   help="no run: estimate the peak GPU memory of each method on full-size --model (an architecture "
                        "name, or 'all') at --res (default 1024) on the meta device; with --device-gb, say what fits")
    p.add_argument("--hessian", default=None, help="--estimate: HSDS's 'jvp' or 'finite-difference' (default: "
                                                   "explore's for --dtype)")
    p.add_argument("--jvp-chunk", type=int, default=None, help="--estimate: HSDS's JVP columns per call (1: least "
                                                                "memory)")
    p.add_argument("--device-gb", type=float, default=None, help="--estimate: the GPU's memory, to mark what fits")
    return run_bench_cmd


ESTIMATE_METHODS = ("hsds", "dds", "sds", "text", "flowedit", "flowalign", "rf-inversion", "unieditflow", "fluxspace")


def run_estimate(args):
    """``bench --estimate``: the memory table (JSON + one line per model x method)."""
    import json

    from tqdm.auto import tqdm

    from .errors import InputError
    from .evaluation.memory import estimate, fits
    from .io import atomic_write_json, envelope
    from .pipeline.architectures import ARCHITECTURES

    models = list(ARCHITECTURES) if args.model == "all" else [args.model]
    if args.model != "all" and args.model not in ARCHITECTURES:
        raise InputError(f"bench --estimate takes an architecture name or 'all' as --model: "
                         f"{', '.join(ARCHITECTURES)}; got {args.model!r}")
    methods = ESTIMATE_METHODS if args.methods is None else [check_method(m.strip()) for m in args.methods.split(",")
                                                             if m.strip()]
    dtype = "bf16" if args.dtype == "fp32" and args.device == "cpu" else args.dtype  # the GPU's dtype by default
    out = out_file(args.out, "output JSON", (".json",))
    rows = []
    started = time.time()
    for model in tqdm(models, desc="models", disable=len(models) == 1):
        for method in methods:
            r = estimate(model, method, args.res or 1024, dtype, args.quantization,
                         3 if args.preserve_count is None else args.preserve_count, args.hessian, args.jvp_chunk)
            if args.device_gb is not None and "unsupported" not in r:
                r["fits"] = {"resident": fits(r, args.device_gb), "offload": fits(r, args.device_gb, True)}
            rows.append(r)
            line = (f"unsupported: {r['unsupported']}" if "unsupported" in r else
                    f"{r['peak_gb']:6.1f} GB resident, {r['peak_gb_offload']:6.1f} GB with model offload "
                    f"(weights {r['weights_gb']}, activations {r['activations_gb']})")
            print(f"{model:>15} {method:>13}: {line}")
    settings = {"res": args.res or 1024, "dtype": dtype, "quantization": args.quantization, "hessian": args.hessian,
                "jvp_chunk": args.jvp_chunk, "preserve_count": args.preserve_count, "device_gb": args.device_gb,
                "computed_on": "meta device"}
    atomic_write_json(out, envelope(args.model, None, settings, time.time() - started, estimates=rows))
    print(json.dumps({"wrote": str(out), "estimates": len(rows)}))


PRESERVE_COUNT_MAX = 10  # the word pairs `explore.evaluation.perf` preserves on models without a world


def run_bench_cmd(args):
    import json

    from .editing.settings import EditSettings
    from .errors import InputError

    at_least("--res", args.res, 1)
    if args.preserve_count is not None and not 0 <= args.preserve_count <= PRESERVE_COUNT_MAX:
        raise InputError(f"--preserve-count is at most {PRESERVE_COUNT_MAX} (and at least 0), "
                         f"got {args.preserve_count}")
    EditSettings.for_method("hsds", None, steps=args.steps)
    at_least("--sweep-n", args.sweep_n, 1)
    at_least("--repeat", args.repeat, 1)
    if args.estimate:
        return run_estimate(args)
    methods = None if args.methods is None else [check_method(m.strip()) for m in args.methods.split(",")
                                                 if m.strip()]
    dtype = check_runtime(args)
    out = out_file(args.out, "output JSON", (".json",))

    from .pipeline.architectures import ARCHITECTURES

    if args.model not in ARCHITECTURES:
        model_world(args.model)  # a --model path that does not exist
        multiple = size_multiple(args.model)
        if args.res is not None and multiple and args.res % multiple:
            raise InputError(f"--res must be a multiple of {multiple} for {args.model!r}, got {args.res}")

    import torch

    from .evaluation.perf import load_for_bench, run_bench
    from .io import atomic_write_json

    estimated = None
    if str(args.device).startswith("cuda"):  # a full-size architecture that would not fit says so first
        from .evaluation.memory import preflight

        estimated = preflight(args.model, args.device, "hsds", args.res, args.dtype, args.quantization, args.offload,
                              stand_in_text=args.model in ARCHITECTURES)
    pipe = load_for_bench(args.model, args.device, dtype, args.quantization, args.offload)
    if args.compile:
        pipe.transformer.forward = torch.compile(pipe.transformer.forward)
    res = run_bench(pipe, device=args.device, res=args.res, preserve_count=args.preserve_count, steps=args.steps,
                    sweep_n=args.sweep_n, repeat=args.repeat, seed=args.seed, quick=args.quick, methods=methods)
    res["settings"]["compile"] = args.compile
    res["settings"]["quantization"] = args.quantization
    res["estimated_peak_gb"] = None if estimated is None else estimated["peak_gb"]  # beside the measured peak
    atomic_write_json(out, res)
    keys = ("raw_forward_ms", "hsds_step_ms", "step_over_raw", "edit_s", "sweep_batched_s", "sweep_sequential_s",
            "peak_mem_gb", "evaluations_per_edit")
    print(json.dumps({k: round(res[k], 3) if isinstance(res[k], float) else res[k] for k in keys}))
    for name, r in res["per_method"].items():
        print(f"{name:>13}: {r['seconds']:.2f} s, {r['evaluations']} transformer sequences per edit")
    print(f"wrote {out}")
