"""Hyper-parameter sensitivity: success and retention over a small grid of each method's main settings.

What users of an editor ask before trusting its defaults: how far can a setting move before the
result changes? For each method, a grid of (at most) two of its main hyper-parameters, every cell
run on the same ``n`` items of an embedded world's benchmark (strength 1, the default caption directions, the
method's defaults for everything not in the grid), scored by the world's readers. Meant for the
development seed (1000): the grids show where the defaults sit, they are not reported results.

The work is saved after every cell (``sensitivity.json``, atomically) and a rerun with the same
model, ``n``, seed and directions skips the cells already measured with the same grid and the
same resolved settings (a changed default outside the grid measures the cell again), so a long
study resumes; methods measured before but not asked for are kept.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import DivergenceError, InputError
from ..io import atomic_write_json, atomic_write_text, envelope, read_json, save_figure
from ..pipeline.spec import spec
from ..worlds import require_world

# method -> {setting: values}; the ShapesWorld defaults lie inside every grid
GRIDS: dict[str, dict[str, list]] = {
    "hsds": {"lr": [0.3, 0.7, 1.2], "t_render": [0.3, 0.45, 0.6]},
    "dds": {"lr": [0.1, 0.3, 0.7], "t_render": [0.2, 0.3, 0.45]},
    "sds": {"lr": [0.1, 0.3, 0.7], "t_render": [0.2, 0.3, 0.45]},
    "flowedit": {"n_max": [30, 40, 50], "target_guidance": [4.0, 7.0, 13.5]},
    "flowalign": {"target_guidance": [4.0, 7.0, 13.5], "consistency": [0.0, 0.01, 0.02]},
    "rf-inversion": {"eta": [0.3, 0.5, 0.9], "stop": [0.15, 0.25, 0.38]},
    "unieditflow": {"alpha": [0.6, 0.8, 1.0], "omega": [1.0, 2.0, 5.0]},
    "fluxspace": {"fine": [1.0, 2.0, 3.0], "threshold": [0.0, 0.25, 0.5]},
}


def _key(cell: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in cell.items())


def sensitivity_study(pipe, methods: Sequence[str] | None = None, n: int = 24, seed: int = 1000,
                      grids: Mapping[str, Mapping[str, Sequence]] | None = None, batch_size: int = 12,
                      out: str | Path | None = None, progress: bool = True) -> dict:
    """Success / retention / SDE of every cell of every method's grid (module docstring).

    Returns ``results[method][cell]`` = ``{"success", "retention", "sde", "nfe", "settings"}``
    (means over the items; ``cell`` names the grid values, ``"lr=0.7,t_render=0.45"``), with
    ``grids`` and each method's ``defaults`` (its resolved settings for the grid keys).
    """
    from ..editing.api import settings_for
    from .items import world_benchmark
    from .runner import DEFAULT_DIRECTIONS, run_batch
    from .scorers import get_scorer

    world = require_world(pipe, "the sensitivity study scores edits with an embedded world's readers "
                                "(--model shapes or shapes-pairs)")
    grids = {m: {k: list(v) for k, v in g.items()} for m, g in (grids or GRIDS).items()}
    methods = list(methods or grids)
    bad = [m for m in methods if m not in grids]
    if bad:
        raise InputError(f"no grid for method(s) {bad}; grids exist for {', '.join(grids)}")
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    for m in methods:
        if not grids[m] or any(len(v) == 0 for v in grids[m].values()):
            raise InputError(f"the grid of {m} is empty: {grids[m]}")
        settings_for(pipe, m, **{k: v[0] for k, v in grids[m].items()})  # a bad name fails before any work
    t0 = time.perf_counter()
    path = Path(out) / "sensitivity.json" if out is not None else None
    key = {"world": world.name}
    results: dict = {}
    kept: dict = {}  # methods measured before in this study but not asked now: written back untouched

    def resolved(m, cell):  # every setting a cell ran with, as JSON holds it
        return json.loads(json.dumps(dict(settings_for(pipe, m, **cell))))

    if path is not None and path.exists():
        old = read_json(path)
        if {k: old.get(k) for k in ("world", "seed", "model")} == {"world": world.name, "seed": seed,
                                                                   "model": spec(pipe).model_id} \
                and old["settings"].get("n") == n and old["settings"].get("directions") == DEFAULT_DIRECTIONS:
            for m, per in old["results"].items():
                if m not in methods:
                    kept[m] = (old["grids"][m], old["defaults"][m], per)
                elif old["grids"].get(m) == grids[m]:  # a cell is reused only if it ran with today's settings
                    results[m] = {c: r for c, r in per.items() if r.get("resolved") == resolved(m, r["settings"])}
    scorer = get_scorer(world.name)
    items = world_benchmark(world, n, seed, size=spec(pipe).resolution)
    cells = [(m, dict(zip(grids[m], combo))) for m in methods for combo in itertools.product(*grids[m].values())]
    todo = [(m, c) for m, c in cells if _key(c) not in results.get(m, {})]
    bar = tqdm(total=len(todo) * n, desc="sensitivity", disable=not progress)

    def envelope_now():
        defaults = {m: {k: dict(settings_for(pipe, m))[k] for k in grids[m]} for m in methods}
        return envelope(spec(pipe).model_id, seed, {"n": n, "strength": 1.0, "directions": DEFAULT_DIRECTIONS},
                        time.perf_counter() - t0, **key,
                        grids={**{m: g for m, (g, _, _) in kept.items()}, **{m: grids[m] for m in methods}},
                        defaults={**{m: d for m, (_, d, _) in kept.items()}, **defaults},
                        results={**{m: r for m, (_, _, r) in kept.items()},
                                 **{m: results.get(m, {}) for m in methods}})

    for m, cell in todo:
        settings = settings_for(pipe, m, **cell)
        recs: list[dict] = []
        try:
            for b in range(0, n, batch_size):
                recs += run_batch(pipe, items[b:b + batch_size], m, 1.0, scorer, settings,
                                  directions=DEFAULT_DIRECTIONS)
                bar.update(len(items[b:b + batch_size]))
            row = {k: float(np.nanmean([r[k] for r in recs if r[k] is not None])) for k in
                   ("success", "retention", "sde")}
            row["nfe"] = float(np.mean([r["evaluations"] for r in recs]))
        except DivergenceError as e:  # a setting that diverges is a result too
            bar.update(n - len(recs))
            row = {"success": float("nan"), "retention": float("nan"), "sde": float("nan"), "nfe": float("nan"),
                   "diverged": str(e)}
        results.setdefault(m, {})[_key(cell)] = {**row, "settings": cell, "resolved": resolved(m, cell)}
        if path is not None:
            atomic_write_json(path, envelope_now())
    bar.close()
    res = envelope_now()
    if out is not None:
        from ..views.plots import sensitivity_figure

        atomic_write_json(path, res)
        atomic_write_text(Path(out) / "sensitivity.md", sensitivity_markdown(res))
        save_figure(Path(out) / "sensitivity.png", sensitivity_figure(res))
    return res


def sensitivity_markdown(res: dict) -> str:
    lines = [f"# Sensitivity on {res['world']} (n = {res['settings']['n']} items, seed {res['seed']})", "",
             "Success / retention / SDE at strength 1 per setting; **bold**: the defaults.", "",
             "| method | setting | success | retention | SDE | NFE |", "|---|---|---|---|---|---|"]
    for m, per in res["results"].items():
        default = _key(res["defaults"][m])
        for cell, r in per.items():
            name = f"**{cell}**" if cell == default else cell
            lines.append(f"| {m} | {name} | {r['success']:.2f} | {r['retention']:.2f} | {r['sde']:.2f} | "
                         f"{r['nfe']:.0f} |")
    return "\n".join(lines) + "\n"


__all__ = ["GRIDS", "sensitivity_markdown", "sensitivity_study"]
