"""The SAE results page: settings chosen on seed 1000, features scored and steering measured on a fresh seed.

    python scripts/sae_page.py --runs runs --seed 1 --out docs/results

Reads, per world, ``{runs}/sae_{world}/score_seed{seed}/sae_score.json`` (`python -m explore sae score`),
``{runs}/sae_{world}/steer_seed{seed}/results.json`` and ``off_distribution.json`` (`sae steer`), and
the tuning lines ``docs/results/json/sae_tune_{world}.jsonl`` (`scripts/sae_tune.py`). Copies the JSON
into ``docs/results/json/``, the score figures into ``docs/img/``, and writes ``sae.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

from explore.io import atomic_write_json, atomic_write_text, read_json

WORLDS = {"shapes": ("ShapesWorld", "shapes"), "pairs": ("Pairs", "shapes-pairs")}
# the items of scripts/tune_eim.py's steering grids (its --n and --attributes)
STEER_TUNE_ITEMS = {"shapes": "48 items over all six attributes",
                    "pairs": "48 items over circle.color, square.size, triangle.hpos and background"}


def f(x, d=2):
    return "—" if x is None else f"{x:.{d}f}"


def tune_table(lines: list[dict], chosen: dict) -> list[str]:
    out = ["| kind | expansion | k | steps | VE (held out) | live / features | best-feature AUROC, mean "
           "| values >= 0.9 | s (1 thread) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in lines:
        mark = " **chosen**" if all(r[k] == chosen[k] for k in ("kind", "expansion", "k", "steps")) else ""
        out.append(f"| {r['kind']}{mark} | {r['expansion']} | {r['k']} | {r['steps']} | "
                   f"{r['variance_explained']:.3f} | {r['live']} / {r['d_sae']} | {r['auroc_mean']:.3f} | "
                   f"{r['share_0.9']:.2f} | {r['seconds']:.0f} |")
    return out


def score_lines(s: dict) -> list[str]:
    r = s["render"]
    out = ["| measure | value |", "|---|---|",
           f"| variance explained (rows of {s['settings']['n']} fresh renders) | "
           f"{s['variance_explained']['all']:.3f} |",
           f"| L0 (features per token) | {s['l0']:.1f} |",
           f"| live / dead / dense (> half the tokens) features of {s['d_sae']} | {s['live']} / {s['dead']} / "
           f"{s['dense']} |",
           f"| monosemantic against the truth (share of live) | {len(s['monosemantic'])} "
           f"({s['monosemantic_share']:.3f}) |",
           f"| factors with a monosemantic feature | {', '.join(s['factors_matched']) or 'none'} |",
           f"| factor values whose best feature reaches AUROC 0.9 (held out) | {s['values_with_a_feature']:.2f} |",
           f"| renders read right: plain / site replaced by its reconstruction ({r['n']} renders) | "
           f"{r['plain']['agreement']:.3f} / {r['sae']['agreement']:.3f} (exact {r['plain']['exact']:.2f} / "
           f"{r['sae']['exact']:.2f}; PSNR between them {r['psnr_sae_vs_plain']:.1f} dB) |"]
    if s.get("bound_share") is not None:
        out.append(f"| best features bound to their object (AUROC >= 0.8) | {s['bound_share']:.2f} "
                   f"({len(s['binding'])} values) |")
    out += ["", "| codes (same renders, factors, splits) | MIG | DCI-D | DCI-C | DCI-I | SAP |",
            "|---|---|---|---|---|---|"]
    for name, label in (("sae", "SAE codes (tokens averaged, live features)"), ("raw", "raw activations"),
                        ("pca10", "first 10 principal components")):
        m = s["metrics"][name]
        out.append(f"| {label} | {m['mig']:.3f} | {m['dci_d']:.3f} | {m['dci_c']:.3f} | {m['dci_i']:.3f} | "
                   f"{m['sap']:.3f} |")
    return out


def steer_lines(res: dict, off: dict, pairs: bool) -> list[str]:
    head = "| method | success | retention |" + (" other-object retention |" if pairs else "") + " SDE | NFE / edit |"
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for m, v in res["methods"].items():
        o = v["overall"]
        oo = f" {f(v['retention_parts'].get('other_objects'))} |" if pairs else ""
        out.append(f"| {m} | {f(o['success'])} | {f(o['retention'])} |{oo} {f(o['sde'])} | "
                   f"{v['evaluations_per_item']:.0f} |")
    attrs = sorted(next(iter(res["methods"].values()))["per_attribute"])
    out += ["", "Per attribute, success / SDE:", "", "| method | " + " | ".join(attrs) + " |",
            "|---|" + "---|" * len(attrs)]
    for m, v in res["methods"].items():
        pa = v["per_attribute"]
        out.append(f"| {m} | " + " | ".join(f"{f(pa[a]['success'])} / {f(pa[a]['sde'])}" if a in pa else "—"
                                             for a in attrs) + " |")
    out += ["", f"Off the training distribution: the SAE's relative reconstruction error of the site's activations "
                f"is {off['error_before']:.3f} on the plain renders' steps and {off['error_after']:.3f} once "
                f"steered ({off['settings']['n']} edits at strength 1; "
                f"x {off['error_after'] / off['error_before']:.2f})."]
    return out


def steer_tune_table(lines: list[dict]) -> list[str]:
    out = ["| features | scale | t_render | success | retention | SDE |", "|---|---|---|---|---|---|"]
    for r in lines:
        out.append(f"| {r['features']} | {r['scale']:g} | {r['t_render']:g} | {r['success']:.2f} | "
                   f"{r['retention']:.2f} | {r['sde']:.2f} |")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="runs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="docs/results")
    p.add_argument("--machine", default=f"{platform.machine()}, 2 AMD EPYC cores, no GPU")
    a = p.parse_args(argv)
    out, runs = Path(a.out), Path(a.runs)
    img = out.parent / "img"
    verdicts, body = [], []
    for world, (label, model) in WORLDS.items():
        folder = runs / f"sae_{world}"
        score = read_json(folder / f"score_seed{a.seed}" / "sae_score.json")
        steer = read_json(folder / f"steer_seed{a.seed}" / "results.json")
        off = read_json(folder / f"steer_seed{a.seed}" / "off_distribution.json")
        tune = [json.loads(x) for x in (out / "json" / f"sae_tune_{world}.jsonl").read_text().splitlines() if x]
        stune = [json.loads(x) for x in (out / "json" / f"sae_steer_tune_{world}.jsonl").read_text().splitlines()
                 if x]
        cpath = runs / f"sae_{world}_clamp" / f"steer_seed{a.seed}" / "results.json"
        clamp = read_json(cpath) if cpath.exists() else None
        cfg = score["settings"]["sae"]
        atomic_write_json(out / "json" / f"sae_score_{world}_s{a.seed}.json", score)
        atomic_write_json(out / "json" / f"sae_steer_{world}_s{a.seed}.json", {"results": steer, "off": off,
                                                                              "clamp": clamp})
        shutil.copyfile(folder / f"score_seed{a.seed}" / "sae_score.png", img / f"sae_score_{world}.png")
        sae, hsds = steer["methods"]["sae"]["overall"], steer["methods"]["hsds"]["overall"]
        verdicts.append(f"{label}: SAE steering success {sae['success']:.2f} / SDE {sae['sde']:.2f} against HSDS "
                        f"{hsds['success']:.2f} / {hsds['sde']:.2f} — touching the features "
                        + ("pays" if sae["sde"] >= hsds["sde"] else "does not pay") + " here")
        site = cfg["site"]
        body += [f"## {label}", "",
                 f"Settings chosen on seed 1000 (`scripts/sae_tune.py --model {model}`: trained on the rows of 1024 "
                 "renders, measured on 256 others; the best feature per factor value chosen on half of those and "
                 "read on the other half):", "", *tune_table(tune, cfg), "",
                 f"The SAE: `python -m explore sae train --model {model} --out runs/sae_{world} --kind {cfg['kind']} "
                 f"--expansion {cfg['expansion']} --k {cfg['k']} --steps {cfg['steps']}` ({site}, t = "
                 f"{', '.join(f'{t:g}' for t in cfg['timesteps'])}, {cfg['n']} renders of seed {cfg['seed']}).", "",
                 f"### Features against the truth (`sae score --model {model} --out runs/sae_{world}`, seed {a.seed})",
                 "", *score_lines(score), "",
                 f"![{label}: SAE features against the truth](../img/sae_score_{world}.png)",
                 "", f"### Steering on the benchmark (`sae steer --model {model} --out runs/sae_{world}`, seed "
                 f"{a.seed}, n = {steer['methods']['sae']['n']}, caption directions for the text methods)", "",
                 "Steering settings chosen on seed 1000 by SDE (`scripts/tune_eim.py --model "
                 f"{model} --method sae`, {STEER_TUNE_ITEMS[world]}; features 1 at scale 1 is the one-feature "
                 "clamp of the SAE-steering papers):", "", *steer_tune_table(stune), "",
                 *steer_lines(steer, off, world == "pairs"), ""]
        if clamp is not None:
            c = clamp["methods"]["sae"]["overall"]
            body += [f"The one-feature clamp on the same items (`sae steer --model {model} --sae runs/sae_{world} "
                     f"--out runs/sae_{world}_clamp --methods sae --features 1 --scale 1 --t-render 0.6`): success "
                     f"{f(c['success'])}, retention {f(c['retention'])}, SDE {f(c['sde'])}.", ""]
    txt = out / "json" / "sae_steer_tune_shapes_txt1.jsonl"
    txt_lines = [json.loads(x) for x in txt.read_text().splitlines() if x] if txt.exists() else []
    findings = ["## What the numbers say", "",
                "- **Reading**: at k = 32 the SAE reconstructs the site almost exactly, and the renders "
                "regenerated with the reconstruction in the model's path read nearly as right as without it. "
                "About one live feature in eleven is monosemantic against the labels. Its codes beat PCA and the "
                "raw activations on DCI on both worlds, and on MIG on Pairs but not on ShapesWorld, where "
                "MIG's gap penalises a factor split over several features and the 10 principal components "
                "each carry more of one factor.",
                "- **Binding**: on Pairs most factor values' best features are not bound to one object: they "
                "fire for the value on whichever object has it (the share bound, in the table), which fits "
                "steering one object moving the others (other-object retention of the SAE row).",
                "- **Steering**: the one-feature clamp changes almost nothing; more features and a larger "
                "scale flip some edits only by breaking the render (retention falls faster than success rises), "
                "and the steered activations sit well off what the SAE reconstructs (the error ratios above). "
                "HSDS (95 transformer sequences per edit against the steered render's 76) wins on every "
                "attribute of both worlds. This is consistent with the causal trace "
                "([causal.md](causal.md)): colour is restored by the text tokens of blocks 0-1, so an image-"
                "stream intervention at block 2 is re-read from the unchanged caption by the later blocks."]
    if txt_lines:
        findings.append("- **A text-stream site** (`transformer_blocks.1.txt`, an SAE of the same settings, seed "
                        "1000 only): the one-feature clamp's success on the 48 tuning items is " + ", ".join(
                            f"{r['success']:.2f} at scale {r['scale']:g}" for r in txt_lines) + " — no better.")
    body += [*findings, ""]
    head = ["# Sparse autoencoders scored against the truth", "",
            f"Measured on {a.machine}, settings chosen on the development seed 1000 only, numbers on seed {a.seed}. "
            "Regenerate with `python scripts/sae_page.py --runs runs --seed 1` after the commands below.", "",
            "In one line per world: " + "; ".join(verdicts) + ".", ""]
    atomic_write_text(out / "sae.md", "\n".join(head + body))
    print(f"wrote {out / 'sae.md'}")


if __name__ == "__main__":
    main()
