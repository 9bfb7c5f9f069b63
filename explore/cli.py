"""``python -m explore <command>``: every command writes JSON (the envelope of DESIGN §0) beside its pictures.

Errors a user can cause print as one line (``explore edit: error: ...``) with exit code 2; pass
``--debug`` for the traceback. Each command imports what it needs inside its function, so
``--help`` and argument errors answer at once, without loading torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

COMMANDS: dict[str, tuple] = {}


def command(name: str, help: str):
    def deco(fn):
        COMMANDS[name] = (fn, help)
        return fn

    return deco


def _torch_dtype(name: str):
    import torch

    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        from .errors import InputError

        raise InputError(f"--dtype must be one of fp32, bf16, fp16, got {name!r}")
    return table[name]


def _common(p: argparse.ArgumentParser, model: bool = True, out: str | None = None) -> None:
    if model:
        p.add_argument("--model", default="shapes", help="'shapes' (default), 'tiny-sd3', 'tiny-flux', a hub id or "
                                                         "a local folder")
        p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
        p.add_argument("--dtype", default="fp32", help="fp32 (default), bf16 or fp16")
    p.add_argument("--seed", type=int, default=0)
    if out is not None:
        p.add_argument("--out", default=out, help=f"output path (default {out})")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _load(args):
    import torch

    from .errors import InputError
    from .pipeline.load import load_pipeline

    dtype = _torch_dtype(args.dtype)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {args.device} but no CUDA GPU is visible; use --device cpu")
    if str(args.device) == "cpu" and dtype == torch.float16:
        raise InputError("--dtype fp16 does not run on the CPU; use fp32 (or bf16) there, fp16/bf16 on a GPU")
    return load_pipeline(args.model, device=args.device, dtype=dtype)


def _check_image_arg(path: str) -> None:
    from .errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"no image file at {p}")
    if p.stat().st_size == 0:
        raise InputError(f"image file {p} is empty")


def _parse_edit(text: str) -> tuple[str, str]:
    from .errors import InputError

    for sep in ("->", "=>", ":"):
        if sep in text:
            a, b = (x.strip() for x in text.split(sep, 1))
            if a and b:
                return a, b
    raise InputError(f"--edit must look like 'red->blue', got {text!r}")


def _floats(text: str, name: str) -> list[float]:
    from .errors import InputError

    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise InputError(f"{name} must be comma-separated numbers, got {text!r}") from e
    if not vals:
        raise InputError(f"{name} is empty")
    return vals


# ---------------------------------------------------------------------------------------------


@command("demo", "the main job: one HSDS edit per ShapesWorld attribute, a table, summary.json and edits.png")
def _demo_parser(p):
    _common(p, out="runs/demo")
    p.add_argument("--method", default="hsds")
    p.add_argument("--strengths", default="0.5,1,1.5,2", help="sweep strengths shown in edits.png")
    return run_demo


def run_demo(args):
    from .demo import demo

    demo(_load(args), out=args.out, seed=args.seed, method=args.method,
         strengths=_floats(args.strengths, "--strengths"))


@command("edit", "edit one image: --image IMG --prompt 'source description' --edit red->blue")
def _edit_parser(p):
    _common(p, out="edit.png")
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", required=True, help="a description of the source image")
    p.add_argument("--edit", required=True, help="value change, e.g. red->blue")
    p.add_argument("--attribute", default=None, help="the attribute (ShapesWorld infers it from the values)")
    p.add_argument("--method", default="hsds", help="hsds (default), dds, sds, text, image")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--preserve", default=None, help="attributes to keep, comma-separated (ShapesWorld default: all "
                                                     "others; 'none' for none)")
    p.add_argument("--sweep", default="0.5,1,1.5,2", help="strengths for the sweep strip in OUT.grid.png")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--t-render", type=float, default=None)
    p.add_argument("--resize", default=None, choices=["crop", "resize"],
                   help="crop or resize when the image size does not fit the model")
    return run_edit


def run_edit(args):
    from .editing.api import edit, sweep
    from .editing.directions import text_direction
    from .errors import InputError
    from .images import image_row
    from .io import atomic_write_json, envelope, save_image
    from .pipeline.spec import spec

    t0 = time.perf_counter()
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise InputError(f"--out must end in .png or .jpg, got {out.name!r}")
    v_minus, v_plus = _parse_edit(args.edit)
    prompt = args.prompt
    if not prompt.strip():
        raise InputError("--prompt is empty; describe the source image")
    _check_image_arg(args.image)
    strengths = _floats(args.sweep, "--sweep")
    pipe = _load(args)
    if spec(pipe).world is None and v_minus.lower() not in prompt.lower().split():
        raise InputError(f"the prompt does not mention {v_minus!r}; describe the source (it has {v_minus!r})")
    direction = text_direction(pipe, v_minus, v_plus, attribute=args.attribute)
    preserve = None
    if args.preserve:
        preserve = [] if args.preserve.strip().lower() == "none" else [x.strip() for x in args.preserve.split(",")]
    kw = dict(steps=args.steps, lr=args.lr, guidance=args.guidance, t_render=args.t_render)
    res = edit(pipe, args.image, direction, args.strength, method=args.method, preserve=preserve, prompt=prompt,
               seed=args.seed, resize=args.resize, progress=True, **kw)
    sw = sweep(pipe, res.source_latent, direction, strengths, method=args.method, preserve=preserve, seed=args.seed,
               labels=res.labels, **{k: v for k, v in kw.items() if v is not None})
    save_image(out, res.image)
    grid = image_row([res.source_image, res.reconstruction, res.image, *sw.images], pad=4)
    save_image(out.with_suffix(".grid" + out.suffix), grid)
    reading = None
    if spec(pipe).world is not None:
        from .evaluation.scorers import get_scorer
        from .evaluation.scoring import score_edit

        sc = score_edit(get_scorer(spec(pipe).world), direction.attribute, v_plus, res.image, labels=res.labels)
        reading = {"edited": sc["read_edit"], "success": sc["success"], "retention": sc["retention"],
                   "source": res.labels}
    trace = {k: [float(x) for x in v] for k, v in res.trace.items()}
    atomic_write_json(out.with_suffix(".json"), envelope(
        spec(pipe).model_id, args.seed, res.settings, time.perf_counter() - t0,
        image=str(args.image), prompt=prompt, edit={"attribute": direction.attribute, "from": v_minus, "to": v_plus},
        method=res.method, strength=res.strength, preserve=preserve, evaluations=res.evaluations,
        edit_seconds=res.seconds, sweep={"strengths": strengths, "seconds": sw.seconds}, reading=reading,
        trace_summary={k: {"first": v[0], "last": v[-1]} for k, v in trace.items() if v}, trace=trace,
        outputs={"image": str(out), "grid": str(out.with_suffix(".grid" + out.suffix))},
    ))
    print(f"wrote {out}, {out.with_suffix('.grid' + out.suffix)} and {out.with_suffix('.json')} "
          f"({res.seconds:.1f} s edit)")


@command("directions", "build a direction library (ShapesWorld: every attribute value pair)")
def _directions_parser(p):
    _common(p, out="runs/directions")
    p.add_argument("--n", type=int, default=32, help="templates per direction")
    p.add_argument("--edit", action="append", default=None,
                   help="value change for non-ShapesWorld models, e.g. red->blue (repeatable)")
    return run_directions


def run_directions(args):
    from .editing.directions import DirectionLibrary, build_world_library, text_direction
    from .errors import InputError
    from .io import atomic_write_json, envelope
    from .pipeline.spec import spec

    t0 = time.perf_counter()
    pipe = _load(args)
    if args.n < 1:
        raise InputError("--n must be at least 1")
    if spec(pipe).world is not None and not args.edit:
        lib = build_world_library(pipe, args.out, n=args.n, seed=args.seed)
    else:
        if not args.edit:
            raise InputError("this model has no built-in grammar: pass --edit red->blue (repeatable)")
        lib = DirectionLibrary(args.out, spec(pipe).model_id)
        for e in args.edit:
            a, b = _parse_edit(e)
            lib.add(text_direction(pipe, a, b, n=args.n, seed=args.seed))
    atomic_write_json(Path(args.out) / "directions.json", envelope(
        spec(pipe).model_id, args.seed, {"n_templates": args.n}, time.perf_counter() - t0,
        count=len(lib), directions=lib.entries(),
    ))
    print(f"wrote {len(lib)} directions to {args.out}")


@command("generate", "text -> images with the model's default sampler (a grid and JSON)")
def _generate_parser(p):
    _common(p, out="runs/generate.png")
    p.add_argument("--prompt", action="append", required=True, help="repeatable")
    p.add_argument("--n", type=int, default=1, help="images per prompt")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    return run_generate


def run_generate(args):
    from .errors import InputError
    from .images import image_grid, image_row
    from .io import atomic_write_json, envelope, save_image
    from .pipeline.sampling import generate
    from .pipeline.spec import spec

    t0 = time.perf_counter()
    if args.n < 1:
        raise InputError("--n must be at least 1")
    pipe = _load(args)
    prompts = [q for q in args.prompt for _ in range(args.n)]
    images = generate(pipe, prompts, seed=args.seed, steps=args.steps, guidance=args.guidance)
    rows = [image_row(images[i : i + args.n]) for i in range(0, len(images), args.n)]
    save_image(args.out, image_grid(rows, pad=2))
    atomic_write_json(Path(args.out).with_suffix(".json"), envelope(
        spec(pipe).model_id, args.seed, {"steps": args.steps or spec(pipe).steps,
                                        "guidance": args.guidance or spec(pipe).guidance},
        time.perf_counter() - t0, prompts=prompts,
    ))
    print(f"wrote {args.out}")


@command("train-shapes", "train the ShapesWorld model (VAE, text encoders, SD3 transformer) and measure it")
def _train_parser(p):
    _common(p, model=False, out="runs/shapes_model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default 8000)")
    p.add_argument("--vae-steps", type=int, default=None, help="VAE steps on 32x32 crops (default 2500)")
    p.add_argument("--n-data", type=int, default=None, help="training renders (default 60000)")
    p.add_argument("--quality-n", type=int, default=256, help="samples for quality.json (0: skip)")
    p.add_argument("--init-from", default=None, help="continue from a saved ShapesWorld folder (keeps its VAE)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of the diffusion stage")
    return run_train


def run_train(args):
    import dataclasses

    from .errors import InputError

    for name in ("steps", "vae_steps", "n_data"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    if args.quality_n < 0:
        raise InputError(f"--quality-n must be >= 0, got {args.quality_n}")

    from .evaluation.card import write_card
    from .shapes.train import ShapesConfig, train

    cfg = ShapesConfig(seed=args.seed)
    changes = {"steps": args.steps, "vae_steps": args.vae_steps, "n_data": args.n_data, "lr": args.lr}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    if args.init_from and Path(args.init_from).resolve() == Path(args.out).resolve():
        raise InputError("--init-from and --out must be different folders")
    summary = train(args.out, cfg, device=args.device, init_from=args.init_from)
    write_card(args.out, summary, quality_n=args.quality_n, device=args.device)
    print(f"wrote {args.out}")


@command("train-pairs", "train (or resume) the ShapesWorld Pairs model from the ShapesWorld model; resumable")
def _train_pairs_parser(p):
    _common(p, model=False, out="runs/pairs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="total diffusion steps (default 20000)")
    p.add_argument("--n-data", type=int, default=None, help="training scenes (default 100000)")
    p.add_argument("--extra-layers", type=int, default=None, help="identity-initialised joint blocks added (4)")
    p.add_argument("--lr", type=float, default=None)
    return run_train_pairs


def run_train_pairs(args):
    import dataclasses

    from .errors import InputError
    from .pairs.train import PairsConfig, train

    for name in ("steps", "n_data"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    from .evaluation.quality import factor_accuracy
    from .pipeline.spec import ModelSpec, attach_spec

    changes = {"steps": args.steps, "n_data": args.n_data, "extra_layers": args.extra_layers, "lr": args.lr}
    cfg = dataclasses.replace(PairsConfig(seed=args.seed), **{k: v for k, v in changes.items() if v is not None})

    def measure(pipe):  # the learning curve: the same measurement as quality.json, on cfg.eval_n captions
        attach_spec(pipe, ModelSpec("shapes-pairs", "sd3", cfg.image_size, 0,
                                    {"steps": cfg.sample_steps, "guidance": cfg.guidance, "shift": cfg.shift},
                                    world="pairs"))
        return factor_accuracy(pipe, n=cfg.eval_n, seed=cfg.eval_seed, progress=False)

    last = train(args.out, cfg, device=args.device, measure=measure)
    print(f"step {last.get('step')}: binding {last.get('binding_accuracy')}, wrote {args.out}")


@command("evaluate", "benchmark editing methods (resumable; shard with torchrun/accelerate launch)")
def _evaluate_parser(p):
    _common(p, out="runs/evaluate")
    p.add_argument("--benchmark", default="shapes", help="'shapes' (generated) or a JSONL file of real images")
    p.add_argument("--methods", default="text,image,sds,dds,hsds")
    p.add_argument("--n", "--items", dest="n", type=int, default=60,
                   help="source/edit items (each run with every method); under torchrun spell it --items "
                        "(torchrun reads --n as an abbreviation of its own options)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--curve-strengths", default="0.5,1,1.5,2", help="strengths of the SDE-vs-strength curves")
    p.add_argument("--curve-n", type=int, default=12, help="items measured at every curve strength")
    p.add_argument("--batch-size", type=int, default=8, help="items per batch (fixed batches keep runs reproducible)")
    p.add_argument("--scorer", default=None, help="'shapes' (default on ShapesWorld) or a CLIP folder / hub id")
    p.add_argument("--attributes-json", default=None, help="for CLIP: JSON file {attribute: [values]}")
    p.add_argument("--steps", type=int, default=None, help="override every method's optimisation steps")
    p.add_argument("--attributes", default=None, help="ShapesWorld attributes to edit (default: all)")
    return run_evaluate


def run_evaluate(args):
    import json as _json

    from .errors import InputError
    from .evaluation.items import load_jsonl, world_benchmark
    from .evaluation.runner import evaluate
    from .evaluation.scorers import get_scorer

    if args.n < 1:
        raise InputError("--n must be at least 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.benchmark == "shapes":
        attrs = [a.strip() for a in args.attributes.split(",")] if args.attributes else None
        items = world_benchmark("shapes", args.n, seed=args.seed, attributes=attrs)
    else:
        items = load_jsonl(args.benchmark)[: args.n]
    pipe = _load(args)
    scorer = None
    if args.scorer and args.scorer != "shapes":
        if not args.attributes_json:
            raise InputError("a CLIP scorer needs --attributes-json {attribute: [values]}")
        attrs = _json.loads(Path(args.attributes_json).read_text())
        scorer = get_scorer(args.scorer, attributes=attrs, device=args.device)
    res = evaluate(pipe, items, args.out, methods, strength=args.strength,
                   curve_strengths=_floats(args.curve_strengths, "--curve-strengths"), curve_n=args.curve_n,
                   batch_size=args.batch_size, scorer=scorer, seed=args.seed,
                   settings={m: {"steps": args.steps} for m in methods} if args.steps is not None else None,
                   benchmark=args.benchmark if args.benchmark == "shapes" else Path(args.benchmark).name)
    if res is not None:
        print(Path(args.out, "results.md").read_text())


@command("probe", "linear probes of every factor at every site and noise level (ShapesWorld)")
def _probe_parser(p):
    _common(p, out="runs/probe")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--timesteps", default="0.25,0.5,0.75")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--captions", choices=("full", "empty"), default="full",
                   help="full: each render with its caption; empty: the empty prompt (image-only probe)")
    return run_probe


def run_probe(args):
    from .interp.studies import probe_study

    res = probe_study(_load(args), n=args.n, seed=args.seed, out=args.out,
                      timesteps=_floats(args.timesteps, "--timesteps"), batch_size=args.batch_size,
                      captions=args.captions)
    for f, b in res["best"].items():
        print(f"{f:<11} best {b['accuracy']:.3f} at {b['site']} (t={b['t']})")
    print(f"wrote {Path(args.out) / 'probe.json'} and {Path(args.out) / 'probe.png'}")


@command("geometry", "text and HSDS direction geometry: consistency, PCA, UMAP (ShapesWorld)")
def _geometry_parser(p):
    _common(p, out="runs/geometry")
    p.add_argument("--n", type=int, default=8, help="sources per attribute")
    p.add_argument("--method", default="hsds")
    return run_geometry


def run_geometry(args):
    from .interp.studies import geometry_study

    res = geometry_study(_load(args), n=args.n, seed=args.seed, out=args.out, method=args.method)
    for kind, per in res["consistency"].items():
        cells = ", ".join(f"{a} {v['score']:+.2f}" for a, v in per.items())
        print(f"consistency ({kind}): {cells}")
    print(f"wrote {Path(args.out) / 'geometry.json'} and {Path(args.out) / 'geometry.png'}")


@command("representation", "MIG / DCI / SAP of probe activations per site and factor, against the SDE ranking")
def _representation_parser(p):
    p.add_argument("--activations", default="runs/probe/activations",
                   help="the folder `probe --out DIR` wrote activations to (DIR/activations)")
    p.add_argument("--results", nargs="*", default=[], help="evaluate results.json files to rank against")
    p.add_argument("--t", type=float, default=0.5, help="noise level of the activations to score")
    p.add_argument("--components", type=int, default=10, help="principal components per site")
    p.add_argument("--out", default="runs/representation")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return run_representation


def run_representation(args):
    from .interp.studies import representation_study

    res = representation_study(args.activations, args.results, t=args.t, n_components=args.components,
                               out=args.out)
    for s, v in res["per_site"].items():
        print(f"{s:<28} MIG {v['mig']:.2f}  DCI {v['dci_d']:.2f}/{v['dci_c']:.2f}/{v['dci_i']:.2f}  "
              f"SAP {v['sap']:.2f}")
    print(f"wrote {Path(args.out) / 'representation.json'} and {Path(args.out) / 'representation.md'}")


@command("bench", "performance: raw transformer vs one HSDS step, full edit, batched vs sequential sweep, memory")
def _bench_parser(p):
    _common(p, out="runs/bench/bench.json")
    p.add_argument("--res", type=int, default=None, help="image side (default: the model's native resolution)")
    p.add_argument("--preserve-count", type=int, default=None, help="preserved directions (ShapesWorld default: all "
                                                                     "other factors; others: 3)")
    p.add_argument("--steps", type=int, default=None, help="HSDS steps of the full edit (default: the method's)")
    p.add_argument("--sweep-n", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer first")
    return run_bench_cmd


def run_bench_cmd(args):
    import json

    import torch

    from .errors import InputError
    from .evaluation.perf import load_for_bench, run_bench
    from .io import atomic_write_json

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda but no CUDA GPU is visible")
    pipe = load_for_bench(args.model, args.device, _torch_dtype(args.dtype))
    if args.compile:
        pipe.transformer.forward = torch.compile(pipe.transformer.forward)
    res = run_bench(pipe, device=args.device, res=args.res, preserve_count=args.preserve_count, steps=args.steps,
                    sweep_n=args.sweep_n, repeat=args.repeat, seed=args.seed)
    res["settings"]["compile"] = args.compile
    atomic_write_json(args.out, res)
    keys = ("raw_forward_ms", "hsds_step_ms", "step_over_raw", "edit_s", "sweep_batched_s", "sweep_sequential_s",
            "peak_mem_gb", "evaluations_per_edit")
    print(json.dumps({k: round(res[k], 3) if isinstance(res[k], float) else res[k] for k in keys}))
    print(f"wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m explore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_run=fn(p))
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .errors import ExploreError

    try:
        args._run(args)
    except ExploreError as e:
        if args.debug:
            raise
        print(f"explore {args.command}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"explore {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
