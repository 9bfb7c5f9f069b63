"""``python -m explore <command>``: every command writes JSON (the envelope of DESIGN §0) beside its pictures.

Errors a user can cause print as one line (``explore edit: error: ...``) with exit code 2; pass
``--debug`` for the traceback. Each command imports what it needs inside its function, so
``--help`` answers at once, without loading torch. Every command checks its arguments, input files
and output paths (`explore.io.check_writable`) before it loads a model or starts work, so a bad
invocation is one line, not a traceback or an error after the loading progress bars.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path

from .cli_args import (
    COMMANDS,
    IMAGE_SUFFIXES,
    at_least,
    check_device,
    check_image_arg,
    check_image_size,
    check_method,
    check_runtime,
    command,
    common,
    finite,
    floats,
    load,
    model_world,
    needs_world,
    out_file,
    out_folder,
    parse_edit,
    parse_preserve,
    parse_resize,
    parse_shard,
    positive,
)

# ---------------------------------------------------------------------------------------------


@command("demo", "the main job: one HSDS edit per ShapesWorld attribute, a table, summary.json and edits.png")
def _demo_parser(p):
    common(p, out="runs/demo")
    p.add_argument("--method", default="hsds")
    p.add_argument("--strengths", default="0.5,1,1.5,2", help="sweep strengths shown in edits.png")
    return run_demo


def run_demo(args):
    check_method(args.method)
    strengths = floats(args.strengths, "--strengths")
    check_runtime(args)
    out_folder(args.out)
    needs_world(args.model, "the demo runs on ShapesWorld or another embedded world (--model shapes); other "
                             "models have no readers to score edits")

    from .demo import demo

    demo(load(args), out=args.out, seed=args.seed, method=args.method, strengths=strengths)


@command("edit", "edit one image: --image IMG --prompt 'source description' --edit red->blue")
def _edit_parser(p):
    common(p, out="edit.png")
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", required=True, help="a description of the source image")
    p.add_argument("--edit", required=True, action="append",
                   help="value change, e.g. red->blue; repeat it for a composed edit (several attributes at once)")
    p.add_argument("--attribute", default=None, action="append",
                   help="the attribute of each --edit (ShapesWorld infers it from the values)")
    p.add_argument("--method", default="hsds", help="hsds (default), dds, sds, text, image, hsds-auto")
    p.add_argument("--strength", default="1", help="strength λ, or one per --edit comma-separated (e.g. 1,0.5)")
    p.add_argument("--preserve", default=None,
                   help="what HSDS keeps, comma-separated: attribute names (ShapesWorld default: all others), word "
                        "pairs such as circle>square, or auto (directions from the prompt's other words; the "
                        "default on models without a factor table); 'none' for none")
    p.add_argument("--directions", choices=("caption", "template"), default="caption",
                   help="the text direction: --prompt against it with the edit made (default) or the mean over "
                        "templates (the Identify step as published)")
    p.add_argument("--sweep", default="0.5,1,1.5,2", help="strengths for the sweep strip in OUT.grid.png")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--t-render", type=float, default=None)
    p.add_argument("--resize", default=None, type=parse_resize,
                   help="crop, resize (to the nearest multiple the model takes) or HxW (resample to that size) "
                        "when the image size does not fit the model")
    return run_edit


def run_edit(args):
    from .editing.settings import check_strength, method_settings
    from .errors import InputError
    from .worlds import get_world

    t0 = time.perf_counter()
    # everything that can be checked before loading the model: arguments, then the input, then the outputs
    out = out_file(args.out, "output image", IMAGE_SUFFIXES)
    grid_path, json_path = out.with_suffix(".grid" + out.suffix), out.with_suffix(".json")
    edits = [parse_edit(e) for e in args.edit]
    attributes = list(args.attribute or [])
    if len(attributes) > len(edits):
        raise InputError(f"{len(attributes)} --attribute for {len(edits)} --edit")
    attributes += [None] * (len(edits) - len(attributes))
    try:
        edit_strengths = [check_strength(float(x)) for x in str(args.strength).split(",") if x.strip()]
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"--strength must be a number or comma-separated numbers, got {args.strength!r}") from e
    if not edit_strengths:
        raise InputError("--strength is empty")
    if len(edit_strengths) == 1:
        edit_strengths *= len(edits)
    if len(edit_strengths) != len(edits):
        raise InputError(f"--strength gives {len(edit_strengths)} values for {len(edits)} --edit; give one, or one "
                         "per --edit")
    v_minus, v_plus = edits[0]
    prompt = args.prompt
    if not prompt.strip():
        raise InputError("--prompt is empty; describe the source image")
    check_method(args.method)
    strengths = floats(args.sweep, "--sweep")
    kw = dict(steps=args.steps, lr=args.lr, guidance=args.guidance, t_render=args.t_render)
    method_settings(args.method, **kw)
    check_runtime(args)
    image = check_image_arg(args.image, resize=args.resize)
    out_file(grid_path, "output grid")
    out_file(json_path, "output JSON")
    # what depends on the model, read from its name or folder (this imports diffusers, ~1 s)
    world_name = model_world(args.model)
    world = get_world(world_name) if world_name is not None else None
    resolved = []
    for (a, b), attr in zip(edits, attributes):
        if world is not None:
            resolved.append(world.attribute(a, b, attribute=attr))
        elif a.lower() not in prompt.lower().split():
            raise InputError(f"the prompt does not mention {a!r}; describe the source (it has {a!r})")
        else:
            resolved.append(attr)
    preserve = parse_preserve(args.preserve, world, resolved)
    check_image_size(image, args.model, args.resize)

    from .editing.api import edit, sweep
    from .editing.directions import compose, text_direction
    from .images import image_row
    from .io import atomic_write_json, envelope, save_image
    from .pipeline.spec import spec

    pipe = load(args)
    caption = prompt if args.directions == "caption" else None
    try:
        parts = [text_direction(pipe, a, b, prompt=caption, attribute=attr) for (a, b), attr in zip(edits, attributes)]
    except InputError as e:
        if caption is None:
            raise
        raise InputError(f"{e}; pass --directions template to edit along the template mean instead") from e
    # one edit: its direction at its strength; several: their composition (weights = their strengths) at 1
    direction, strength = (parts[0], edit_strengths[0]) if len(parts) == 1 else (compose(parts, edit_strengths), 1.0)
    res = edit(pipe, args.image, direction, strength, method=args.method, preserve=preserve, prompt=prompt,
               seed=args.seed, resize=args.resize, progress=True, **kw)
    sw = sweep(pipe, res.source_latent, direction, strengths, method=args.method, preserve=preserve, seed=args.seed,
               labels=res.labels, **{k: v for k, v in kw.items() if v is not None})
    save_image(out, res.image)
    grid = image_row([res.source_image, res.reconstruction, res.image, *sw.images], pad=4)
    save_image(grid_path, grid)
    reading = None
    if spec(pipe).world is not None:
        from .evaluation.scorers import get_scorer
        from .evaluation.scoring import score_edit

        scorer = get_scorer(spec(pipe).world)
        per = [score_edit(scorer, d.attribute, d.target, res.image, labels=res.labels) for d in parts]
        kept = [k for k in (res.labels or {}) if k not in {d.attribute for d in parts}]
        reading = {"edited": per[0]["read_edit"], "success": [p["success"] for p in per] if len(per) > 1 else
                   per[0]["success"], "source": res.labels,
                   "retention": (sum(per[0]["read_edit"].get(k) == res.labels[k] for k in kept) / len(kept)
                                 if kept else None)}
    trace = {k: [float(x) for x in v] for k, v in res.trace.items()}
    atomic_write_json(json_path, envelope(
        spec(pipe).model_id, args.seed, res.settings, time.perf_counter() - t0,
        image=str(args.image), prompt=prompt,
        edit=[{"attribute": d.attribute, "from": d.source, "to": d.target, "strength": w}
              for d, w in zip(parts, edit_strengths)] if len(parts) > 1 else
        {"attribute": direction.attribute, "from": v_minus, "to": v_plus},
        method=res.method, strength=res.strength, preserve=preserve, evaluations=res.evaluations,
        edit_seconds=res.seconds, sweep={"strengths": strengths, "seconds": sw.seconds}, reading=reading,
        trace_summary={k: {"first": v[0], "last": v[-1]} for k, v in trace.items() if v}, trace=trace,
        outputs={"image": str(out), "grid": str(grid_path)},
    ))
    print(f"wrote {out}, {grid_path} and {json_path} ({res.seconds:.1f} s edit)")


@command("directions", "build a direction library (ShapesWorld: every attribute value pair)")
def _directions_parser(p):
    common(p, out="runs/directions")
    p.add_argument("--n", type=int, default=32, help="templates per direction")
    p.add_argument("--edit", action="append", default=None,
                   help="value change for non-ShapesWorld models, e.g. red->blue (repeatable)")
    return run_directions


def run_directions(args):
    from .errors import InputError
    from .worlds import get_world

    t0 = time.perf_counter()
    at_least("--n", args.n, 1)
    edits = [parse_edit(e) for e in args.edit or []]
    check_runtime(args)
    out_folder(args.out, "direction library folder")
    world_name = model_world(args.model)
    if world_name is None and not edits:
        raise InputError("this model has no built-in grammar: pass --edit red->blue (repeatable)")
    if world_name is not None:
        for a, b in edits:
            get_world(world_name).attribute(a, b)

    from .editing.directions import DirectionLibrary, build_world_library, text_direction
    from .io import atomic_write_json, envelope
    from .pipeline.spec import spec

    pipe = load(args)
    if spec(pipe).world is not None and not edits:
        lib = build_world_library(pipe, args.out, n=args.n, seed=args.seed)
    else:
        if not edits:
            raise InputError("this model has no built-in grammar: pass --edit red->blue (repeatable)")
        lib = DirectionLibrary(args.out, spec(pipe).model_id)
        for a, b in edits:
            lib.add(text_direction(pipe, a, b, n=args.n, seed=args.seed))
    atomic_write_json(Path(args.out) / "directions.json", envelope(
        spec(pipe).model_id, args.seed, {"n_templates": args.n}, time.perf_counter() - t0,
        count=len(lib), directions=lib.entries(),
    ))
    print(f"wrote {len(lib)} directions to {args.out}")


@command("generate", "text -> images with the model's default sampler (a grid and JSON)")
def _generate_parser(p):
    common(p, out="runs/generate.png")
    p.add_argument("--prompt", action="append", required=True, help="repeatable")
    p.add_argument("--n", type=int, default=1, help="images per prompt")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    return run_generate


def run_generate(args):
    from .errors import InputError

    t0 = time.perf_counter()
    if any(not q.strip() for q in args.prompt):
        raise InputError("--prompt is empty; describe the image to generate")
    at_least("--n", args.n, 1)
    at_least("--steps", args.steps, 1)
    finite("--guidance", args.guidance, lo=0)
    check_runtime(args)
    out = out_file(args.out, "output image", IMAGE_SUFFIXES)
    out_file(out.with_suffix(".json"), "output JSON")
    model_world(args.model)  # a --model path that does not exist

    from .images import image_grid, image_row
    from .io import atomic_write_json, envelope, save_image
    from .pipeline.sampling import generate
    from .pipeline.spec import spec

    pipe = load(args)
    prompts = [q for q in args.prompt for _ in range(args.n)]
    images = generate(pipe, prompts, seed=args.seed, steps=args.steps, guidance=args.guidance)
    rows = [image_row(images[i : i + args.n]) for i in range(0, len(images), args.n)]
    save_image(out, image_grid(rows, pad=2))
    atomic_write_json(out.with_suffix(".json"), envelope(
        spec(pipe).model_id, args.seed, {"steps": args.steps or spec(pipe).steps,
                                        "guidance": args.guidance or spec(pipe).guidance},
        time.perf_counter() - t0, prompts=prompts,
    ))
    print(f"wrote {out}")


@command("train-shapes", "train the ShapesWorld model (VAE, text encoders, SD3 transformer) and measure it")
def _train_parser(p):
    common(p, model=False, out="runs/shapes_model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default 8000)")
    p.add_argument("--vae-steps", type=int, default=None, help="VAE steps on 32x32 crops (default 2500)")
    p.add_argument("--n-data", type=int, default=None, help="training renders (default 60000)")
    p.add_argument("--quality-n", type=int, default=256, help="samples for quality.json (0: skip)")
    p.add_argument("--init-from", default=None, help="continue from a saved ShapesWorld folder (keeps its VAE)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of the diffusion stage")
    return run_train


def _check_init_from(folder: str | None, out: str) -> None:
    from .errors import InputError

    if folder is None:
        return
    if not Path(folder).is_dir():
        raise InputError(f"--init-from: no folder at {Path(folder).resolve()}")
    if not (Path(folder) / "model_index.json").is_file():
        raise InputError(f"--init-from {folder} has no model_index.json; point to a saved ShapesWorld model folder")
    if Path(folder).resolve() == Path(out).resolve():
        raise InputError("--init-from and --out must be different folders")


def run_train(args):
    import dataclasses

    from .errors import InputError

    for name in ("steps", "vae_steps", "n_data"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    if args.quality_n < 0:
        raise InputError(f"--quality-n must be >= 0, got {args.quality_n}")
    positive("--lr", args.lr)
    check_device(args.device)
    _check_init_from(args.init_from, args.out)
    out = out_folder(args.out, "model folder")
    if not out.name:  # the training log is written beside the folder, as OUT.log.jsonl
        raise InputError(f"--out {args.out!r} must name a folder, e.g. runs/shapes_model")
    out_file(out.with_name(out.name + ".log.jsonl"), "training log")

    from .evaluation.card import write_card
    from .shapes.train import ShapesConfig, train

    cfg = ShapesConfig(seed=args.seed)
    changes = {"steps": args.steps, "vae_steps": args.vae_steps, "n_data": args.n_data, "lr": args.lr}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    summary = train(args.out, cfg, device=args.device, init_from=args.init_from)
    write_card(args.out, summary, quality_n=args.quality_n, device=args.device)
    print(f"wrote {args.out}")


@command("train-pairs", "train (or resume) the ShapesWorld Pairs model from the ShapesWorld model; resumable")
def _train_pairs_parser(p):
    common(p, model=False, out="runs/pairs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="total diffusion steps (default 20000)")
    p.add_argument("--n-data", type=int, default=None, help="training scenes (default 100000)")
    p.add_argument("--extra-layers", type=int, default=None, help="identity-initialised joint blocks added (4)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--init-from", default=None,
                   help="start from this folder: a ShapesWorld model (grown as at the start) or an exported Pairs "
                        "model (continued as it is, fresh optimiser); default the shipped ShapesWorld model")
    return run_train_pairs


def run_train_pairs(args):
    import dataclasses

    from .errors import InputError

    for name in ("steps", "n_data"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    at_least("--extra-layers", args.extra_layers, 0)
    positive("--lr", args.lr)
    check_device(args.device)
    _check_init_from(args.init_from, args.out)
    out_folder(args.out, "model folder")

    from .evaluation.quality import factor_accuracy
    from .pairs.train import PairsConfig, train
    from .pipeline.families.sd3 import SD3
    from .pipeline.spec import ModelSpec, attach_spec

    changes = {"steps": args.steps, "n_data": args.n_data, "extra_layers": args.extra_layers, "lr": args.lr,
               "init_from": args.init_from}
    cfg = dataclasses.replace(PairsConfig(seed=args.seed), **{k: v for k, v in changes.items() if v is not None})

    def measure(pipe):  # the learning curve: the same measurement as quality.json, on cfg.eval_n captions
        attach_spec(pipe, ModelSpec("shapes-pairs", SD3.name, cfg.image_size, 0,
                                    {"steps": cfg.sample_steps, "guidance": cfg.guidance, "shift": cfg.shift},
                                    world="pairs"))
        return factor_accuracy(pipe, n=cfg.eval_n, seed=cfg.eval_seed, progress=False)

    last = train(args.out, cfg, device=args.device, measure=measure)
    print(f"step {last.get('step')}: binding {last.get('binding_accuracy')}, wrote {args.out}")


def _world_model_folder(path: str, what: str) -> Path:
    """``--model`` of the commands that change or measure a model folder: it must hold an ``explore.json``."""
    from .errors import InputError

    folder = Path(path)
    if not (folder / "explore.json").is_file():
        raise InputError(f"--model {path}: no explore.json there; give {what}")
    return folder


@command("train-pairs-decoder", "fine-tune a Pairs model's VAE decoder on two-object renders (encoder and latents "
                                "unchanged), in place")
def _train_pairs_decoder_parser(p):
    p.add_argument("--model", required=True, help="a Pairs model folder (e.g. the train-pairs export OUT/model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="decoder steps (default 1500)")
    p.add_argument("--n-data", type=int, default=None, help="training renders (default 20000)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed of the training renders (default 7)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return run_train_pairs_decoder


def run_train_pairs_decoder(args):
    import dataclasses

    for name in ("steps", "n_data"):
        at_least(f"--{name.replace('_', '-')}", getattr(args, name), 1)
    positive("--lr", args.lr)
    check_device(args.device)
    folder = _world_model_folder(args.model, "a Pairs model folder")
    out_folder(folder / "vae", "model folder")

    from .pairs.decoder import DecoderConfig, finetune_folder_decoder

    changes = {"steps": args.steps, "n_data": args.n_data, "lr": args.lr, "seed": args.seed}
    cfg = dataclasses.replace(DecoderConfig(), **{k: v for k, v in changes.items() if v is not None})
    rec = finetune_folder_decoder(folder, cfg, device=args.device)
    print(f"VAE PSNR {rec['psnr_before_db']:.2f} -> {rec['psnr_after_db']:.2f} dB, wrote {folder / 'vae'}")


@command("model-card", "measure an embedded world's model folder: write its quality.json and README card")
def _model_card_parser(p):
    p.add_argument("--model", required=True, help="a ShapesWorld or Pairs model folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quality-n", type=int, default=512, help="generated images scored by the readers (512)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the quality captions (1234)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return run_model_card


def run_model_card(args):
    at_least("--quality-n", args.quality_n, 1)
    check_device(args.device)
    folder = _world_model_folder(args.model, "a ShapesWorld or Pairs model folder")
    out_file(folder / "quality.json", "quality file")

    from .evaluation.card import write_card
    from .io import read_json

    q = write_card(folder, read_json(folder / "explore.json").get("training", {}), quality_n=args.quality_n,
                   device=args.device, seed=args.seed)
    print(f"wrote {folder / 'quality.json'} and {folder / 'README.md'}")
    return q


@command("evaluate", "benchmark editing methods (resumable; shard with torchrun/accelerate launch)")
def _evaluate_parser(p):
    common(p, out="runs/evaluate")
    p.add_argument("--benchmark", default="shapes", help="'shapes' or 'pairs' (generated: --model shapes-pairs) or a "
                                                         "JSONL file of real images")
    p.add_argument("--methods", default="text,image,sds,dds,hsds,flowedit,flowalign,rf-inversion,unieditflow,"
                                        "fluxspace", help="comma-separated methods (default: all ten)")
    p.add_argument("--n", "--items", dest="n", type=int, default=60,
                   help="source/edit items (each run with every method); under torchrun spell it --items "
                        "(torchrun reads --n as an abbreviation of its own options)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--directions", choices=("template", "caption"), default="caption",
                   help="text directions: each item's own caption against it with the edit made (default: measured "
                        "best for every method on both worlds) or the mean over the world's templates (the Identify "
                        "step as published)")
    p.add_argument("--masks", choices=("attention", "velocity"), default="attention",
                   help="the edit region of items without a mask when the scorer finds no objects (real images): "
                        "the edit word's attention or the captions' velocity difference (UniEdit-Flow's)")
    p.add_argument("--curve-strengths", default="0.5,1,1.5,2", help="strengths of the SDE-vs-strength curves")
    p.add_argument("--curve-n", type=int, default=12, help="items measured at every curve strength")
    p.add_argument("--batch-size", type=int, default=8, help="items per batch (fixed batches keep runs reproducible)")
    p.add_argument("--scorer", default=None, help="'shapes' (default on ShapesWorld) or a CLIP folder / hub id")
    p.add_argument("--attributes-json", default=None, help="for CLIP: JSON file {attribute: [values]}")
    p.add_argument("--steps", type=int, default=None, help="override every method's optimisation steps")
    p.add_argument("--attributes", default=None, help="ShapesWorld attributes to edit (default: all)")
    p.add_argument("--preserve", default=None,
                   help="what HSDS (and image) keep: attribute names, word pairs (red>blue,car>truck) or auto; "
                        "default: every other factor on ShapesWorld, auto elsewhere")
    p.add_argument("--resize", default=None, type=parse_resize,
                   help="how JSONL images whose size the model cannot take are fitted: crop, resize or HxW")
    p.add_argument("--shard", default=None, type=parse_shard,
                   help="R/W: run only rank R's share of W separate jobs (batch b goes to rank b %% W); run once "
                        "more without --shard to merge and summarise")
    p.add_argument("--fresh", action="store_true",
                   help="discard the results --out holds (another configuration is refused otherwise)")
    return run_evaluate


def _clip_attributes(path: str | None) -> dict:
    """``--attributes-json``: a JSON object {attribute: [two or more distinct values]}."""
    from .errors import InputError
    from .io import read_json

    if not path:
        raise InputError("a CLIP scorer needs --attributes-json {attribute: [values]}")
    if not Path(path).is_file():
        raise InputError(f"--attributes-json: no file at {path}")
    attrs = read_json(path)
    if not isinstance(attrs, dict) or not attrs:
        raise InputError(f"--attributes-json {path} must hold a JSON object {{attribute: [values]}}")
    for k, vals in attrs.items():
        if not isinstance(vals, list) or len({str(v) for v in vals}) < 2:
            raise InputError(f"--attributes-json {path}: attribute {k!r} needs a list of at least two distinct "
                             f"values, got {vals!r}")
    return attrs


def run_evaluate(args):
    from .editing.settings import check_strength, method_settings
    from .errors import InputError
    from .evaluation.items import load_jsonl, world_benchmark
    from .images import to_pil
    from .worlds import get_world

    at_least("--n", args.n, 1)
    methods = [check_method(m.strip()) for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise InputError("--methods is empty; e.g. --methods text,image,sds,dds,hsds")
    check_strength(args.strength)
    curve_strengths = floats(args.curve_strengths, "--curve-strengths")
    at_least("--curve-n", args.curve_n, 0)
    at_least("--batch-size", args.batch_size, 1)
    for m in methods:
        method_settings(m, steps=args.steps)
    attrs = [a.strip() for a in args.attributes.split(",") if a.strip()] if args.attributes else None
    generated = args.benchmark in ("shapes", "pairs")  # an embedded world's generated benchmark
    if attrs is not None and not generated:
        raise InputError("--attributes picks the attributes of a generated benchmark (shapes, pairs); a JSONL "
                         "benchmark edits what its lines say")
    for a in attrs or ():
        get_world(args.benchmark).values(a)  # an unknown attribute raises, listing the known ones
    check_runtime(args)
    out_folder(args.out)
    if generated:
        if model_world(args.model) not in (None, args.benchmark):
            model = get_world(args.benchmark).model
            raise InputError(f"--benchmark {args.benchmark} edits {args.benchmark} scenes: pass --model {model} "
                             f"(--model {args.model} is not that world's model)")
        items = world_benchmark(args.benchmark, args.n, seed=args.seed, attributes=attrs)
    else:
        items = load_jsonl(args.benchmark)[: args.n]
        if not items:
            raise InputError(f"the benchmark {args.benchmark} has no items")
        for it in items:  # every image opens (the one image rule), before the model loads
            try:
                to_pil(Path(it.image))
            except InputError as e:
                raise InputError(f"benchmark item {it.id}: {e}") from e
    if args.directions == "caption":
        for it in items:  # a JSONL item whose prompt does not name its source value fails here, not mid-run
            try:
                it.edited_prompt()
            except InputError as e:
                raise InputError(f"benchmark item {it.id}: --directions caption (the default) needs the edit in words "
                                 f"in its prompt: {e}; pass --directions template for the template mean") from e
    world_name = model_world(args.model)
    clip_attrs = None
    if args.scorer and args.scorer != "shapes":
        from .pipeline.load import weights_source

        clip_attrs = _clip_attributes(args.attributes_json)
        weights_source(args.scorer, "scorer")  # a --scorer path that does not exist
    elif world_name is None:
        raise InputError(f"{args.model!r} has no built-in scorer: pass --scorer <CLIP folder or hub id> and "
                         "--attributes-json {attribute: [values]}")
    preserve = parse_preserve(args.preserve, get_world(world_name) if world_name is not None else None, None)

    from .evaluation.runner import evaluate
    from .evaluation.scorers import get_scorer

    pipe = load(args)
    scorer = None
    if clip_attrs is not None:
        scorer = get_scorer(args.scorer, attributes=clip_attrs, device=args.device)
    res = evaluate(pipe, items, args.out, methods, strength=args.strength,
                   curve_strengths=curve_strengths, curve_n=args.curve_n,
                   batch_size=args.batch_size, scorer=scorer, seed=args.seed,
                   settings={m: {"steps": args.steps} for m in methods} if args.steps is not None else None,
                   benchmark=args.benchmark if generated else Path(args.benchmark).name,
                   preserve=preserve, resize=args.resize, directions=args.directions, masks=args.masks,
                   shard=args.shard, fresh=args.fresh)
    if res is not None:
        print(Path(args.out, "results.md").read_text())
    elif args.shard is not None:
        print(f"shard {args.shard[0]}/{args.shard[1]} done; when every shard is, run the same command without "
              "--shard to merge and summarise")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    prog = "python -m explore" if script in ("", "__main__.py", "-c", "-m") else script
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"explore {__version__} (distribution explore-dit)")
    from . import cli_bench, cli_studies  # noqa: F401  (register the analysis and performance commands)

    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_run=fn(p))
    return parser


_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR, errno.ENOTDIR}


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
    except OSError as e:  # a file that became unwritable after the checks (or a full disk): still one line
        if args.debug or e.errno not in _USER_ERRNOS:
            raise
        where = f"cannot access {e.filename}: " if e.filename else ""
        print(f"explore {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"explore {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
