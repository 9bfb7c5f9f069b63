"""The Identify default decided by measurement: template vs caption directions, every method, both worlds, two seeds.

    python scripts/identify_table.py --runs runs --out docs/results

Reads each method's overall success / retention / SDE / NFE per (world, directions, seed) from the
`evaluate` runs' ``results.json`` under ``--runs`` (any folder whose ``run.json`` matches), and, for
runs whose JSON is no longer kept, from the committed results pages that `evaluate` wrote
(``docs/results/seed1.md`` etc., their first table) and the previous ``json/identify.json``.
Writes ``identify_table.md``, ``json/identify.json``
and the quality-against-cost figures of the caption runs (``../img/pareto_caption_{world}.png``).
A number present in both a run and a page must agree (checked): the pages are the same runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from explore.io import atomic_write_json, atomic_write_text, save_figure
from explore.views.plots import plot_pareto

# committed pages: (world, directions, seed) -> page
PAGES = {("shapes", "template", 1): "seed1.md", ("shapes", "template", 2): "seed2.md",
         ("pairs", "template", 1): "pairs_seed1.md", ("pairs", "template", 2): "pairs_seed2.md",
         ("pairs", "caption", 1): "pairs_caption_seed1.md", ("pairs", "caption", 2): "pairs_caption_seed2.md"}
KEYS = ("success", "retention", "sde", "nfe")


def from_page(path: Path) -> dict[str, dict[str, float]]:
    rows, header = {}, None
    for line in path.read_text().splitlines():
        if not line.startswith("|"):
            if header is not None and rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "method":
            header = cells
            continue
        if header is None or set(cells[0]) <= set("-"):
            continue
        col = {h: c for h, c in zip(header, cells)}
        rows[cells[0]] = {"success": float(col["success"]), "retention": float(col["retention"]),
                          "sde": float(col["SDE"]), "nfe": float(col["NFE / edit"])}
    return rows


def from_runs(root: Path) -> dict[tuple, dict[str, dict[str, float]]]:
    out: dict[tuple, dict] = {}
    for res in sorted(root.glob("*/results.json")):
        run = json.loads((res.parent / "run.json").read_text())
        if run.get("n") != 200 or run.get("strength", 1.0) != 1.0:
            continue
        r = json.loads(res.read_text())
        world = "pairs" if run["benchmark"] == "pairs" else "shapes"
        key = (world, run.get("directions", "template"), int(r["seed"]))
        for m, v in r["methods"].items():
            o = v["overall"]
            out.setdefault(key, {})[m] = {"success": o["success"], "retention": o["retention"], "sde": o["sde"],
                                          "nfe": v["evaluations_per_item"], "source": str(res.parent.name)}
    return out


def from_json(path: Path) -> dict[tuple, dict[str, dict]]:
    """The cells of an earlier ``identify.json`` (runs whose folders are gone are kept through it)."""
    if not path.exists():
        return {}
    out = {}
    for key, per in json.loads(path.read_text())["cells"].items():
        w, d, s = key.split("/")
        out[(w, d, int(s.removeprefix("seed")))] = per
    return out


def collect(runs: Path, pages: Path) -> dict[tuple, dict[str, dict]]:
    table = from_json(pages / "json" / "identify.json")
    for k, p in PAGES.items():
        for m, v in from_page(pages / p).items():
            table.setdefault(k, {})[m] = {**v, "source": f"docs/results/{p}"}
    for key, per in from_runs(runs).items():
        for m, v in per.items():
            old = table.setdefault(key, {}).get(m)
            if old is not None:  # the page is the same run, rounded to 2 digits
                for k in ("success", "retention", "sde"):
                    if abs(round(v[k], 2) - old[k]) > 0.005 + 1e-9:
                        raise SystemExit(f"{key} {m} {k}: run {v[k]:.3f} vs page {old[k]:.2f}")
            table[key][m] = v
    return table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    out = Path(args.out)
    table = collect(Path(args.runs), out)
    worlds, kinds, seeds = ("shapes", "pairs"), ("template", "caption"), (1, 2)
    names = list(dict.fromkeys(m for k in table for m in table[k]))
    complete = {w: [m for m in names if all(m in table.get((w, d, s), {}) for d in kinds for s in seeds)]
                for w in worlds}
    methods = [m for m in names if all(m in complete[w] for w in worlds)]
    partial = sorted(set(names) - set(methods))
    lines = ["# Template vs caption directions, every method (cells: seed 1 / seed 2, template → caption)", "",
             "Assembled by `scripts/identify_table.py`; see [identify.md](identify.md). \"—\": not measured yet.", "",
             "| method | world | success template → caption | retention | SDE | NFE |", "|---|---|---|---|---|---|"]
    wins = {w: {"caption": 0, "template": 0, "tie": 0} for w in worlds}
    means: dict = {}

    def cells(w, d, m, k):
        return [table[(w, d, s)][m][k] if m in table.get((w, d, s), {}) else None for s in seeds]

    def fmt(v):
        return " / ".join("—" if x is None else f"{x:.2f}" for x in v)

    for w in worlds:
        for m in names:
            if not any(m in table.get((w, d, s), {}) for d in kinds for s in seeds):
                continue
            if m in complete[w]:
                t_sde, c_sde = np.mean(cells(w, "template", m, "sde")), np.mean(cells(w, "caption", m, "sde"))
                wins[w]["caption" if c_sde > t_sde + 0.005 else "template" if t_sde > c_sde + 0.005 else "tie"] += 1
                for d in kinds:
                    for k in KEYS:
                        means.setdefault(w, {}).setdefault(d, {}).setdefault(k, []).append(
                            np.mean(cells(w, d, m, k)))
            nfe = next(x for d in kinds for x in cells(w, d, m, "nfe") if x is not None)
            lines.append(f"| {m} | {w} | " + " | ".join(
                f"{fmt(cells(w, 'template', m, k))} → {fmt(cells(w, 'caption', m, k))}"
                for k in ("success", "retention", "sde")) + f" | {nfe:.0f} |")
    summary = {w: {d: {k: float(np.mean(v)) for k, v in means[w][d].items()} for d in kinds} for w in worlds}
    atomic_write_json(out / "json" / "identify.json", {
        "cells": {f"{w}/{d}/seed{s}": table[(w, d, s)] for w in worlds for d in kinds for s in seeds},
        "methods": methods, "complete": complete, "partial": partial, "wins_by_sde": wins,
        "mean_over_methods": summary})
    atomic_write_text(out / "identify_table.md", "\n".join(lines) + "\n")
    img = out.parent / "img"
    for w in worlds:
        runs = [{"benchmark": w, "seed": s, "n": 200, "methods": {
            m: {"overall": {k: table[(w, "caption", s)][m][k] for k in ("success", "retention", "sde")},
                "evaluations_per_item": table[(w, "caption", s)][m]["nfe"]} for m in names
            if m in table[(w, "caption", s)] and all(m in table[(w, "caption", q)] for q in seeds)}} for s in seeds]
        save_figure(img / f"pareto_caption_{w}.png", plot_pareto(
            runs, title=f"{w}: quality against cost, caption directions (seeds 1 and 2, n = 200)"))
    print(json.dumps({"complete": complete, "wins_by_sde": wins, "mean": summary}, indent=1))


if __name__ == "__main__":
    main()
