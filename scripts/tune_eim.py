"""Tune EIM settings on a development seed of the ShapesWorld benchmark (never the reported seeds).

    python scripts/tune_eim.py --attributes color --n 48 --method hsds --grid lr=0.1,0.3,0.5 t_render=0.2,0.3
    python scripts/tune_eim.py --model shapes-pairs --attributes circle.color --method sae \
        --grid folder=runs/sae_pairs scale=1,4 t_render=0.6,0.8

Prints success / retention / SDE / recon accuracy, transformer sequences per item (``nfe``: the edit
and its reconstruction) and seconds per setting; the chosen defaults live in
explore/editing/settings.py (METHOD_DEFAULTS) and docs/editing.md records what was tried.
"""

import argparse
import itertools
import json
import time

import numpy as np

import explore
from explore.editing.api import settings_for
from explore.errors import DivergenceError
from explore.evaluation.items import world_benchmark
from explore.evaluation.runner import run_batch
from explore.evaluation.scorers import get_scorer

DEV_SEED = 1000


def parse_grid(items):
    grid = {}
    for it in items:
        k, v = it.split("=", 1)
        vals = []
        for x in v.split(","):
            if x.startswith("(") or ":" in x:
                a, b = x.strip("()").split(":")
                vals.append((float(a), float(b)))
            else:
                try:
                    vals.append(int(x))
                except ValueError:
                    try:
                        vals.append(float(x))
                    except ValueError:
                        vals.append(x)
        grid[k] = vals
    return grid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes", choices=("shapes", "shapes-pairs"))
    ap.add_argument("--attributes", default="color")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--method", default="hsds")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=DEV_SEED)
    ap.add_argument("--grid", nargs="*", default=[])
    args = ap.parse_args()
    pipe = explore.load_pipeline(args.model)
    world = "shapes" if args.model == "shapes" else "pairs"
    scorer = get_scorer(world)
    items = world_benchmark(world, args.n, seed=args.seed, attributes=args.attributes.split(","))
    grid = parse_grid(args.grid)
    keys = list(grid)
    for combo in itertools.product(*[grid[k] for k in keys]) if keys else [()]:
        settings = dict(zip(keys, combo))
        t0 = time.perf_counter()
        recs = []
        try:
            for i in range(0, len(items), args.batch):
                recs += run_batch(pipe, items[i : i + args.batch], args.method, args.strength, scorer,
                                  settings_for(pipe, args.method, **settings))
        except DivergenceError as e:  # a setting that diverges is a result too; go on with the grid
            print(json.dumps({"method": args.method, **settings, "diverged": str(e)}), flush=True)
            continue
        m = {k: float(np.nanmean([r[k] for r in recs if r[k] is not None])) for k in
             ("success", "retention", "sde", "recon_accuracy", "recon_psnr")}
        per = {}
        for a in args.attributes.split(","):
            rs = [r for r in recs if r["attribute"] == a]
            per[a] = (round(float(np.mean([r["success"] for r in rs])), 3),
                      round(float(np.mean([r["retention"] for r in rs])), 3))
        nfe = float(np.mean([r["evaluations"] for r in recs]))
        print(json.dumps({"method": args.method, "strength": args.strength, **settings,
                          **{k: round(v, 3) for k, v in m.items()}, "per": per, "nfe": round(nfe, 1),
                          "s": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
