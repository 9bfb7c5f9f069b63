"""The analysis commands of ``python -m explore``: probe, geometry, attention masks, preserved spans,
representation metrics. Registered with `explore.cli_args.command`; `explore.cli` imports this
module so they appear in ``--help`` after the editing commands."""

from __future__ import annotations

from pathlib import Path

from .cli_args import (
    at_least,
    check_method,
    check_runtime,
    command,
    common,
    finite,
    floats,
    load,
    needs_world,
    out_folder,
)


@command("probe", "linear probes of every factor at every site and noise level (ShapesWorld)")
def _probe_parser(p):
    common(p, out="runs/probe")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--timesteps", default="0.25,0.5,0.75")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--captions", choices=("full", "empty"), default="full",
                   help="full: each render with its caption; empty: the empty prompt (image-only probe)")
    p.add_argument("--pool", choices=("mean", "object"), default="mean",
                   help="mean: every token of a site averaged; object (two-object worlds): each object's image "
                        "tokens averaged over its own mask, probed for its own and the other object's factors")
    return run_probe


def run_probe(args):
    at_least("--n", args.n, 16, " for held-out probe accuracy")
    timesteps = floats(args.timesteps, "--timesteps")
    at_least("--batch-size", args.batch_size, 1)
    check_runtime(args)
    out_folder(args.out)
    world = needs_world(args.model, "the probe study needs an embedded world's labels (--model shapes or "
                                    "shapes-pairs)")
    from .interp.activations import check_timesteps

    check_timesteps(timesteps)  # the rule `collect` applies: flow sigmas in [0, 1], distinct at 4 decimals

    if args.pool == "object" and world.name != "pairs":
        from .errors import InputError

        raise InputError("--pool object needs a two-object world (--model shapes-pairs)")
    from .interp.studies import object_probe_study, probe_study

    study = object_probe_study if args.pool == "object" else probe_study
    res = study(load(args), n=args.n, seed=args.seed, out=args.out, timesteps=timesteps,
                batch_size=args.batch_size, captions=args.captions)
    for f, b in res["best"].items():
        print(f"{f:<11} best {b['accuracy']:.3f} at {b['site']} (t={b['t']})")
    name = "probe_objects" if args.pool == "object" else "probe"
    print(f"wrote {Path(args.out) / (name + '.json')} and {Path(args.out) / (name + '.png')}")


@command("geometry", "text and HSDS direction geometry: consistency, PCA, UMAP (ShapesWorld)")
def _geometry_parser(p):
    common(p, out="runs/geometry")
    p.add_argument("--n", type=int, default=8, help="sources per attribute")
    p.add_argument("--method", default="hsds")
    return run_geometry


def run_geometry(args):
    at_least("--n", args.n, 2, " (consistency compares sources)")
    check_method(args.method)
    check_runtime(args)
    out_folder(args.out)
    needs_world(args.model, "the geometry study needs an embedded world's labels (--model shapes or "
                             "shapes-pairs)")

    from .interp.studies import geometry_study

    res = geometry_study(load(args), n=args.n, seed=args.seed, out=args.out, method=args.method)
    for kind, per in res["consistency"].items():
        cells = ", ".join(f"{a} {v['score']:+.2f}" for a, v in per.items())
        print(f"consistency ({kind}): {cells}")
    print(f"wrote {Path(args.out) / 'geometry.json'} and {Path(args.out) / 'geometry.png'}")


@command("attention-masks", "IoU of attention masks (each block and t) against the exact object masks (worlds)")
def _attention_masks_parser(p):
    common(p, out="runs/attention_masks")
    p.add_argument("--n", type=int, default=48, help="renders (every factor word of each caption is scored)")
    p.add_argument("--timesteps", default="0.3,0.5,0.7,0.9")
    return run_attention_masks


def _attention_study_args(args) -> list[float]:
    """The checks both attention studies run before loading: ``--n``, ``--timesteps``, runtime, ``--out``."""
    at_least("--n", args.n, 1)
    timesteps = floats(args.timesteps, "--timesteps")
    from .interp.activations import check_timesteps

    check_timesteps(timesteps)
    check_runtime(args)
    out_folder(args.out)
    return timesteps


def run_attention_masks(args):
    timesteps = _attention_study_args(args)
    needs_world(args.model, "the attention-mask study needs an embedded world's exact masks (--model shapes)")

    from .interp.studies import attention_mask_study

    res = attention_mask_study(load(args), n=args.n, seed=args.seed, timesteps=timesteps, out=args.out)
    print(f"best over the object factors: {res['best']} (IoU {res['best_iou']:.3f})")
    print(f"wrote {Path(args.out) / 'attention_masks.json'} and {Path(args.out) / 'attention_masks.md'}")


@command("attention-binding", "two-object worlds: does each object's word attend to its own object, per block?")
def _attention_binding_parser(p):
    common(p, out="runs/attention_binding")
    p.add_argument("--n", type=int, default=48, help="two-object renders (each object's own words are scored)")
    p.add_argument("--timesteps", default="0.3,0.5,0.7,0.9")
    return run_attention_binding


def run_attention_binding(args):
    timesteps = _attention_study_args(args)
    msg = "the attention-binding study needs a two-object world (--model shapes-pairs)"
    if needs_world(args.model, msg).name != "pairs":
        from .errors import InputError

        raise InputError(msg)

    from .interp.studies import attention_binding_study

    res = attention_binding_study(load(args), n=args.n, seed=args.seed, timesteps=timesteps, out=args.out)
    al = {f: round(v["all layers"]["binding"], 3) for f, v in res["shares"].items()}
    print(f"binding share over all layers: {al}; best layer per factor: {res['best_layer']}")
    print(f"wrote {Path(args.out) / 'attention_binding.json'} and {Path(args.out) / 'attention_binding.md'}")


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
    from .errors import InputError
    from .io import read_json

    finite("--t", args.t, 0.0, 1.0)
    at_least("--components", args.components, 1)
    for r in args.results:
        if not Path(r).is_file():
            raise InputError(f"no results file at {r} (evaluate --out DIR writes DIR/results.json)")
        rec = read_json(r)
        if not isinstance(rec, dict) or "methods" not in rec:
            raise InputError(f"{r} is not an evaluate results.json")
    out_folder(args.out)

    from .interp.probe import ActivationDataset

    data = ActivationDataset.load(args.activations)  # the manifest only: features stay on disk
    if not any(abs(kt - args.t) < 1e-4 for kt in data.timesteps):
        raise InputError(f"--t {args.t} was not collected; the activations have t in {data.timesteps}")

    from .interp.studies import representation_study

    res = representation_study(data, args.results, t=args.t, n_components=args.components, out=args.out)
    for s, v in res["per_site"].items():
        print(f"{s:<28} MIG {v['mig']:.2f}  DCI {v['dci_d']:.2f}/{v['dci_c']:.2f}/{v['dci_i']:.2f}  "
              f"SAP {v['sap']:.2f}")
    print(f"wrote {Path(args.out) / 'representation.json'} and {Path(args.out) / 'representation.md'}")




@command("preserve-span", "how much of the exact preserved directions preserve='auto' spans (worlds)")
def _preserve_span_parser(p):
    common(p, out="runs/preserve_span")
    p.add_argument("--n", type=int, default=120, help="benchmark items (those evaluate edits at this seed)")
    p.add_argument("--auto", default="auto", help="the auto setting, e.g. auto or 'auto(k=1)'")
    return run_preserve_span


def run_preserve_span(args):
    at_least("--n", args.n, 1)
    from .editing.preserve import parse_auto

    parse_auto(args.auto)
    check_runtime(args)
    out_folder(args.out)
    needs_world(args.model, "the preserve-span study needs an embedded world's factor table (--model shapes)")

    from .interp.studies import preserve_span_study

    res = preserve_span_study(load(args), n=args.n, seed=args.seed, auto=args.auto, out=args.out)
    print(f"mean share of the exact preserved directions inside the auto span: {res['mean_share']:.3f}")
    print(f"wrote {Path(args.out) / 'preserve_span.json'} and {Path(args.out) / 'preserve_span.md'}")


@command("compare", "several evaluate runs side by side (tables and the cost Pareto figure)")
def _compare_parser(p):
    p.add_argument("results", nargs="+", help="results.json files (or their folders) of evaluate runs")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return run_compare


def run_compare(args):
    from .evaluation.compare import compare, compare_markdown, load_results

    runs = load_results(args.results)  # bad inputs fail before anything is written
    out = out_folder(args.out)
    cmp = compare(runs)
    from .io import atomic_write_json, atomic_write_text, save_figure
    from .views.plots import plot_pareto

    atomic_write_json(Path(out) / "compare.json", cmp)
    md = compare_markdown(cmp)
    atomic_write_text(Path(out) / "compare.md", md)
    # the cost figure averages its runs: one figure per group of runs that differ only by seed
    groups: dict[str, list] = {}
    for r, meta in zip(runs, cmp["runs"]):
        groups.setdefault(meta["label"].partition(", ")[2], []).append(r)
    names = []
    for setting, group in groups.items():
        slug = "".join(c if c.isalnum() or c in ".-" else "-" for c in setting.replace(", ", "_").replace(" ", "-"))
        names.append(f"pareto_{slug}.png" if len(groups) > 1 else "pareto.png")
        seeds = ", ".join(f"seed {r.get('seed')}" for r in group)
        title = (f"{group[0].get('benchmark')} benchmark, {setting}: quality against cost ({seeds})"
                 if setting else None)
        save_figure(Path(out) / names[-1], plot_pareto(group, title=title))
    print(md)
    print(f"wrote {Path(out) / 'compare.md'}, compare.json and {', '.join(names)}")


@command("causal-trace", "which block, stream and noise level causes an attribute? restore one site of the edited "
                         "run into the source run (worlds)")
def _causal_trace_parser(p):
    common(p, out="runs/causal_trace")
    p.add_argument("--n", type=int, default=24, help="generations per factor (source and edited caption, one seed)")
    p.add_argument("--factors", default=None, help="comma-separated factors (default: every factor of the world)")
    p.add_argument("--windows", default="0.67-1,0.34-0.66,0-0.33", help="windows of t (flow sigma), lo-hi, comma-"
                                                                       "separated")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    return run_causal_trace


def _windows(text: str) -> list[tuple[float, float]]:
    from .errors import InputError

    out = []
    for part in text.split(","):
        try:
            lo, hi = (float(x) for x in part.strip().split("-"))
        except ValueError:
            raise InputError(f"--windows takes lo-hi pairs such as 0.67-1, got {part.strip()!r}") from None
        if not 0 <= lo <= hi <= 1:
            raise InputError(f"--windows: each window lies in [0, 1] with lo <= hi, got {part.strip()!r}")
        out.append((lo, hi))
    return out


def _pixel_study_args(args, what: str) -> None:
    """The checks the studies that read generations back from pixels run before loading."""
    needs_world(args.model, f"the {what} study reads attributes from pixels: --model shapes or shapes-pairs")
    at_least("--n", args.n, 1)
    check_runtime(args)
    out_folder(args.out)
    if args.steps is not None:
        at_least("--steps", args.steps, 1)


def run_causal_trace(args):
    _pixel_study_args(args, "causal-trace")
    windows = _windows(args.windows)
    factors = [f.strip() for f in args.factors.split(",") if f.strip()] if args.factors else None

    from .interp.causal import causal_trace_study

    res = causal_trace_study(load(args), factors, n=args.n, seed=args.seed, windows=windows, steps=args.steps,
                             out=args.out)
    for factor, r in res["factors"].items():
        best = max(((s, w, v) for s, per in r["restored"].items() for w, v in per.items() if v is not None),
                   key=lambda x: x[2], default=None)
        where = f"{best[0]} at t {best[1]} restores {100 * best[2]:.0f} %" if best else "no valid item"
        print(f"{factor:>10}: {r['n_valid']} of {r['n']} valid; {where}")
    print(f"wrote {Path(args.out) / 'causal_trace.json'}, .md and .png")


@command("vital-blocks", "bypass each block through a generation: which blocks change which attribute? (worlds)")
def _vital_blocks_parser(p):
    common(p, out="runs/vital_blocks")
    p.add_argument("--n", type=int, default=24, help="generations (one caption and seed each)")
    p.add_argument("--threshold", type=float, default=0.2, help="a block is vital for a factor when its bypass "
                                                                 "changes the reading in this share of items")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    return run_vital_blocks


def run_vital_blocks(args):
    _pixel_study_args(args, "vital-blocks")
    finite("--threshold", args.threshold, 0, 1)

    from .interp.causal import vital_blocks_study

    res = vital_blocks_study(load(args), n=args.n, seed=args.seed, steps=args.steps, threshold=args.threshold,
                             out=args.out)
    for f, v in res["vital"].items():
        print(f"{f:>10}: vital blocks {', '.join(v) or 'none'}")
    print(f"wrote {Path(args.out) / 'vital_blocks.json'}, .md and .png")


@command("lens", "the model's clean-image prediction after each block (its own head applied early), read per "
                 "factor (worlds)")
def _lens_parser(p):
    common(p, out="runs/lens")
    p.add_argument("--n", type=int, default=24, help="renders (full captions)")
    p.add_argument("--timesteps", default="0.3,0.5,0.7,0.9")
    return run_lens


def run_lens(args):
    timesteps = _attention_study_args(args)
    needs_world(args.model, "the lens study reads factors from pixels: --model shapes or shapes-pairs")

    from .interp.lens import lens_study

    res = lens_study(load(args), n=args.n, seed=args.seed, timesteps=timesteps, out=args.out)
    for t, per in res["accuracy"].items():
        first = next((s for s in res["sites"][1:] if min(per[s].values()) >= min(per[res["sites"][-1]].values())),
                     None)
        print(f"t={t}: every factor as well as the model's own prediction from {first or 'the last block only'}")
    print(f"wrote {Path(args.out) / 'lens.json'}, .md and .png")


@command("concept-maps", "per-object masks from attention (noun, object words, segmentation) and concept maps, "
                         "IoU against the exact masks beside the patch-grid ceiling (worlds)")
def _concept_maps_parser(p):
    common(p, out="runs/concept_maps")
    p.add_argument("--n", type=int, default=48, help="renders (every object of each caption is scored)")
    p.add_argument("--timesteps", default="0.3,0.5,0.7,0.9")
    return run_concept_maps


def run_concept_maps(args):
    timesteps = _attention_study_args(args)
    needs_world(args.model, "the concept-maps study needs an embedded world's exact masks: --model shapes or "
                            "shapes-pairs")

    from .interp.segmentation import concept_map_study

    res = concept_map_study(load(args), n=args.n, seed=args.seed, timesteps=timesteps, out=args.out)
    for method, v in res["iou"].items():
        print(f"{method:>24}: IoU {v:.3f}")
    print(f"wrote {Path(args.out) / 'concept_maps.json'}, .md and .png")


@command("inversion", "inversion fidelity: reconstruction PSNR and the readers' agreement at strength 0, against "
                      "steps, for the methods that invert (worlds)")
def _inversion_parser(p):
    common(p, out="runs/inversion")
    p.add_argument("--n", type=int, default=48, help="renders (full captions)")
    p.add_argument("--steps", default="4,8,16,28", help="numbers of inversion steps, comma-separated")
    p.add_argument("--inverters", default="euler,uni-inv,rf-inversion,unieditflow",
                   help="euler (plain Euler inversion, the baseline), uni-inv (UniEdit-Flow's predictor-corrector "
                        "inversion to noise), rf-inversion, unieditflow, fluxspace (their defaults)")
    return run_inversion


def run_inversion(args):
    from .errors import InputError

    at_least("--n", args.n, 1)
    try:
        steps = [int(x) for x in args.steps.split(",") if x.strip()]
    except ValueError as e:
        raise InputError(f"--steps must be whole numbers, comma-separated, got {args.steps!r}") from e
    for k in steps:
        at_least("--steps", k, 1)
    inverters = [x.strip() for x in args.inverters.split(",") if x.strip()]
    from .evaluation.inversion import INVERTERS

    bad = [m for m in inverters if m not in INVERTERS]
    if bad or not inverters:
        raise InputError(f"unknown --inverters {bad or inverters}; known: {', '.join(INVERTERS)}")
    needs_world(args.model, "the inversion study reads the reconstructions back: --model shapes or shapes-pairs")
    check_runtime(args)
    out_folder(args.out)
    from .evaluation.inversion import inversion_study

    res = inversion_study(load(args), n=args.n, seed=args.seed, steps=steps, inverters=inverters, out=args.out)
    for name, per in res["results"].items():
        print(f"{name:>13}: " + ", ".join(f"{k} steps {r['psnr']:.2f} dB ({r['agreement']:.2f})" for k, r in
                                          per.items()))
    print(f"VAE round trip: {res['vae']['psnr']:.2f} dB; wrote {Path(args.out) / 'inversion.json'}, .md and .png")


@command("sensitivity", "success / retention over a small grid of each method's main settings (worlds; the "
                        "development seed 1000 by default); resumable")
def _sensitivity_parser(p):
    common(p, out="runs/sensitivity")
    p.set_defaults(seed=1000)
    p.add_argument("--n", type=int, default=24, help="benchmark items per cell")
    p.add_argument("--methods", default=None, help="comma-separated (default: every method with a grid)")
    return run_sensitivity


def run_sensitivity(args):
    from .evaluation.sensitivity import GRIDS

    at_least("--n", args.n, 1)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(GRIDS)
    bad = [m for m in methods if m not in GRIDS]
    if bad or not methods:
        from .errors import InputError

        raise InputError(f"no sensitivity grid for --methods {bad or methods}; grids: {', '.join(GRIDS)}")
    needs_world(args.model, "the sensitivity study scores edits with a world's readers: --model shapes or "
                            "shapes-pairs")
    check_runtime(args)
    out_folder(args.out)
    from .evaluation.sensitivity import sensitivity_study

    res = sensitivity_study(load(args), methods=methods, n=args.n, seed=args.seed, out=args.out)
    for m, per in res["results"].items():
        best = max(per.items(), key=lambda kv: (kv[1]["success"] if kv[1]["success"] == kv[1]["success"] else -1))
        print(f"{m:>13}: best {best[0]} ({best[1]['success']:.2f} / {best[1]['retention']:.2f}); "
              f"{len(per)} settings")
    print(f"wrote {Path(args.out) / 'sensitivity.json'}, .md and .png")


@command("velocity-masks", "edit-region masks from the target-minus-source velocity (UniEdit-Flow's) beside the "
                           "attention masks, IoU against the exact region on the benchmark's items (worlds)")
def _velocity_masks_parser(p):
    common(p, out="runs/velocity_masks")
    p.add_argument("--n", type=int, default=60, help="benchmark items (the first n of evaluate's)")
    p.add_argument("--timesteps", default="0.3,0.5,0.7,0.9")
    return run_velocity_masks


def run_velocity_masks(args):
    timesteps = _attention_study_args(args)
    needs_world(args.model, "the velocity-mask study needs an embedded world's exact masks: --model shapes or "
                            "shapes-pairs")

    from .interp.segmentation import velocity_mask_study

    res = velocity_mask_study(load(args), n=args.n, seed=args.seed, timesteps=timesteps, out=args.out)
    for name, v in res["iou"].items():
        print(f"{name:>10}: IoU {v:.3f}")
    print(f"wrote {Path(args.out) / 'velocity_masks.json'} and .md")


@command("sae", "sparse autoencoders on a site's image or text tokens (worlds): 'train' one (SAELens; "
                "resumable), 'score' its features against the world's exact factors, or 'steer': edit with them on "
                "the benchmark")
def _sae_parser(p):
    common(p, out="runs/sae")
    p.set_defaults(seed=None)
    p.add_argument("action", choices=("train", "score", "steer"))
    p.add_argument("--site", default="transformer_blocks.2.img",
                   help="an image-stream (*.img) or text-stream (*.txt) site (explore.sites)")
    p.add_argument("--t", default="0.5", help="noise levels whose activations the SAE reads, comma-separated")
    p.add_argument("--n", type=int, default=None, help="renders (train: 1024, score: 512)")
    p.add_argument("--kind", default="topk", choices=("topk", "batchtopk"))
    p.add_argument("--expansion", type=int, default=8, help="features per activation dimension")
    p.add_argument("--k", type=int, default=32, help="active features per token (BatchTopK: on average)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sae", default=None, help="score: the SAE folder (default: --out)")
    p.add_argument("--render-n", type=int, default=24, help="score: renders regenerated with the SAE in the site")
    p.add_argument("--methods", default="sae,hsds,text", help="steer: the methods benchmarked beside each other")
    p.add_argument("--directions", choices=("template", "caption"), default="caption",
                   help="steer: the text directions of the other methods (SAE steering uses only the values)")
    p.add_argument("--features", type=int, default=None,
                   help="steer: features swapped per value (default 32, chosen on seed 1000; 1: one-feature clamp)")
    p.add_argument("--scale", type=float, default=None, help="steer: strength of the inserted features (default 12)")
    p.add_argument("--t-render", type=float, default=None, help="steer: where the steered render starts (default 0.9)")
    return run_sae


def run_sae(args):
    from .errors import InputError

    needs_world(args.model, "SAE features are scored against a world's factors: --model shapes or shapes-pairs")
    try:
        ts = tuple(float(x) for x in args.t.split(",") if x.strip())
    except ValueError as e:
        raise InputError(f"--t must be numbers in (0, 1), comma-separated, got {args.t!r}") from e
    check_runtime(args)
    out = out_folder(args.out)
    if args.action == "train":
        from .interp.sae import SAESettings, token_activations, train_sae

        seed = 1000 if args.seed is None else args.seed
        settings = SAESettings(site=args.site, timesteps=ts, n=args.n or 1024, kind=args.kind,
                               expansion=args.expansion, k=args.k, steps=args.steps, batch_size=args.batch_size,
                               lr=args.lr, seed=seed)
        pipe = load(args)
        from .pipeline.spec import spec
        from .worlds import world_of

        acts = token_activations(pipe, settings.n, seed, args.site, ts, out=out / "activations")
        sae = train_sae(acts, settings, out, model_id=spec(pipe).model_id, world=world_of(pipe).name)
        rec = sae.explore
        print(f"trained {settings.kind} SAE ({rec['d_sae']} features) on {rec['rows']} rows of {args.site}; last loss "
              f"{rec['curve'][-1][1]:.4g}; wrote {out}")
        return rec
    if args.action == "steer":
        return _sae_steer(args, out)
    from .interp.sae_study import sae_score

    at_least("--render-n", args.render_n, 0)
    seed = 1 if args.seed is None else args.seed
    folder = Path(args.sae) if args.sae else out
    res = sae_score(load(args), folder, n=args.n or 512, seed=seed, render_n=args.render_n,
                    out=out / f"score_seed{seed}")
    print(f"variance explained {res['variance_explained']['all']:.3f}, {res['live']} live / {res['dead']} dead "
          f"features, {len(res['monosemantic'])} monosemantic; MIG {res['metrics']['sae']['mig']:.3f} (10 PCs "
          f"{res['metrics']['pca10']['mig']:.3f}); wrote {out / f'score_seed{seed}'}")
    return res


def _sae_steer(args, out: Path):
    """`sae steer`: the benchmark's items edited by SAE steering beside the other methods (`evaluate`), and how
    far the steering moves the site's activations off what the SAE reconstructs."""
    import numpy as np

    from .editing.api import edit_batch
    from .editing.settings import SAESteerSettings
    from .evaluation.items import world_benchmark
    from .evaluation.runner import evaluate, item_direction
    from .interp.sae import load_sae
    from .io import atomic_write_json, envelope
    from .pipeline.latent import encode
    from .pipeline.spec import spec
    from .worlds import world_of

    folder = str(Path(args.sae) if args.sae else out)
    load_sae(folder)  # a missing or unfinished SAE fails before any work
    steer = {"folder": folder} | {k: v for k, v in (("features", args.features), ("scale", args.scale),
                                                     ("t_render", args.t_render)) if v is not None}
    SAESteerSettings.for_method("sae", **steer)  # bad values fail here, before the model loads
    seed = 1 if args.seed is None else args.seed
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    pipe = load(args)
    world = world_of(pipe)
    items = world_benchmark(world, args.n or 200, seed, size=spec(pipe).resolution)
    run = out / f"steer_seed{seed}"
    res = evaluate(pipe, items, run, methods, seed=seed, curve_n=0, benchmark="pairs" if world.name != "shapes"
                   else "shapes", settings={"sae": steer}, directions=args.directions)
    # off-distribution: the SAE's relative reconstruction error of the site's activations, plain vs steered
    sub = items[: min(len(items), 48)]
    lats = [encode(pipe, it.load_image(), it.prompt) for it in sub]
    o = edit_batch(pipe, lats, [item_direction(pipe, it, args.directions) for it in sub], [1.0] * len(sub), "sae",
                   seeds=[it.seed for it in sub], **steer)
    before = np.asarray(o["trace"]["sae_error_before"][0], dtype=float)
    after = np.asarray(o["trace"]["sae_error_after"][0], dtype=float)
    off = envelope(spec(pipe).model_id, seed, {"n": len(sub), "sae": folder, "steer": steer}, 0.0,
                   world=world.name,
                   error_before=float(np.nanmean(before)), error_after=float(np.nanmean(after)),
                   per_item=[[float(a), float(b)] for a, b in zip(before, after)])
    atomic_write_json(run / "off_distribution.json", off)
    print(Path(run, "results.md").read_text())
    print(f"the SAE's relative reconstruction error at its site: {off['error_before']:.3f} plain, "
          f"{off['error_after']:.3f} steered (strength 1, {len(sub)} items); wrote {run}")
    return res
