"""Several `evaluate` runs side by side (e.g. the two fresh seeds): one table per measure, each cell
holds every run's value (``a / b``), for the methods every run has; NFE and calls are the runs' means.

    python -m explore compare runs/eval_seed1/results.json runs/eval_seed2/results.json --out runs/compare
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, InputError

MEASURES = ("success", "retention", "sde")


def load_results(paths: Sequence[str | Path]) -> list[dict]:
    """Read ``results.json`` files (a folder stands for its ``results.json``)."""
    runs = []
    for p in paths:
        p = Path(p)
        p = p / "results.json" if p.is_dir() else p
        if not p.is_file():
            raise InputError(f"no evaluate results at {p}")
        try:
            res = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise CorruptFileError(f"{p} is not valid JSON ({e.msg})") from e
        if "methods" not in res:
            raise InputError(f"{p} is not an evaluate results file (no 'methods')")
        runs.append(res)
    if not runs:
        raise InputError("compare needs at least one results file")
    return runs


def common_methods(runs: Sequence[dict]) -> list[str]:
    return [m for m in runs[0]["methods"] if all(m in r["methods"] for r in runs)]


def _mean(vals) -> float | None:
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _f(v, fmt="{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


LABEL_SETTINGS = ("strength", "directions", "preserve")


def run_labels(runs: Sequence[dict]) -> list[str]:
    """``seed S`` per run, with the run settings that differ between the runs (e.g. two direction kinds
    on one seed: ``seed 2, directions template`` / ``seed 2, directions caption``)."""
    def setting(r, k):
        return (r.get("settings") or {}).get(k, "template" if k == "directions" else None)

    differ = [k for k in LABEL_SETTINGS if len({str(setting(r, k)) for r in runs}) > 1]
    return [", ".join([f"seed {r.get('seed')}"] + [f"{k} {setting(r, k)}" for k in differ]) for r in runs]


def compare(runs: Sequence[dict]) -> dict:
    """Per method: each run's overall and per-attribute measures and seconds per item; the mean cost in
    sequences (NFE) and batched calls (the same settings give the same counts in every run)."""
    methods = common_methods(runs)
    if not methods:
        raise InputError("the runs share no method")
    out = {"runs": [{"seed": r.get("seed"), "n": r.get("n"), "benchmark": r.get("benchmark"),
                     "model": r.get("model"), "label": label} for r, label in zip(runs, run_labels(runs))],
           "methods": {}}
    attrs = sorted({a for r in runs for m in methods for a in r["methods"][m].get("per_attribute", {})})
    for m in methods:
        rows = [r["methods"][m] for r in runs]
        out["methods"][m] = {
            "overall": [{k: row["overall"].get(k) for k in MEASURES} for row in rows],
            "per_attribute": {a: [{k: (row.get("per_attribute", {}).get(a) or {}).get(k) for k in MEASURES}
                                  for row in rows] for a in attrs},
            "retention_parts": [row.get("retention_parts") for row in rows],
            "nfe": _mean(row.get("evaluations_per_item") for row in rows),
            "calls_per_batch": _mean(row.get("calls_per_batch") for row in rows),
            "seconds_per_item": [row.get("seconds_per_item") for row in rows],
        }
    out["attributes"] = attrs
    return out


def compare_markdown(cmp: dict) -> str:
    """The overall table (success / retention / SDE per run, cost) and one per-attribute table."""
    runs = cmp["runs"]
    tag = " / ".join(r.get("label") or f"seed {r['seed']}" for r in runs)
    lines = [f"Each cell: {tag} (n = {', '.join(str(r['n']) for r in runs)}).", "",
             "| method | success | retention | SDE | NFE / edit | calls / batch | s / item |",
             "|---|---|---|---|---|---|---|"]
    for m, r in cmp["methods"].items():
        cells = [" / ".join(_f(o[k]) for o in r["overall"]) for k in MEASURES]
        secs = " / ".join(_f(x) for x in r["seconds_per_item"])
        lines.append(f"| {m} | {' | '.join(cells)} | {_f(r['nfe'], '{:.0f}')} | "
                     f"{_f(r['calls_per_batch'], '{:.0f}')} | {secs} |")
    attrs = cmp["attributes"]
    if attrs:
        lines += ["", f"Success / retention per attribute ({tag}, success first):", "",
                  "| method | " + " | ".join(attrs) + " |", "|---|" + "---|" * len(attrs)]
        for m, r in cmp["methods"].items():
            cells = []
            for a in attrs:
                v = r["per_attribute"][a]
                cells.append(" / ".join(_f(o["success"]) for o in v) + " · " + " / ".join(_f(o["retention"])
                                                                                       for o in v))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    parts = [(m, r["retention_parts"]) for m, r in cmp["methods"].items()]
    if any(p and p.get("other_objects") is not None for _, ps in parts for p in ps):
        lines += ["", "Retention split: the edited object's other factors / **the other objects' factors** "
                  "(a background edit: every object's) / the background:", "",
                  "| method | same object | other object | background |", "|---|---|---|---|"]
        for m, ps in parts:
            cells = [" / ".join(_f((p or {}).get(k)) for p in ps) for k in ("same_object", "other_objects", "scene")]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
