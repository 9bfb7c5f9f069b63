"""Choose the SAE settings on the development seed (1000) only: a grid of kind / expansion / k / steps.

    python scripts/sae_tune.py --model shapes --grid topk:8:8 topk:8:16 topk:8:32 topk:4:32 batchtopk:8:32
    python scripts/sae_tune.py --model shapes-pairs --grid topk:4:16 topk:4:32 topk:8:32

One collection of ``--n`` renders of seed 1000 (cached under ``--cache``): each SAE trains on the
rows of the first ``--train`` renders and is measured on the rest, split in two: the best feature
per factor value is chosen on the first half and its AUROC read on the second (the same rule as
`explore.interp.sae_study.sae_score`, never on the reported seeds). Appends one JSON line per
setting to ``--out`` (docs/results/json/sae_tune_{world}.jsonl): variance explained, live
features, mean held-out best-feature AUROC over the factor values, the share of values whose best
feature reaches 0.9, and seconds. A grid entry is ``kind:expansion:k[:steps]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import explore
from explore.interp.sae import SAESettings, encode_rows, token_activations, train_sae
from explore.stats import auroc_columns

DEV_SEED = 1000


def measure(sae, acts, test: np.ndarray) -> dict:
    rows = torch.from_numpy(test[acts.render])
    x = acts.x[rows]
    z = encode_rows(sae, x)
    xh = torch.cat([sae.decode(z[i:i + 8192]) for i in range(0, len(z), 8192)]).detach()
    ve = float(1 - ((xh - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    Z = z.detach().numpy()
    live = np.flatnonzero((Z > 0).any(0))
    renders = np.flatnonzero(test)
    rmax = np.zeros((len(acts.scenes), Z.shape[1]), np.float32)
    np.maximum.at(rmax, acts.render[rows.numpy()], Z)
    rmax = rmax[renders][:, live]
    A, B = np.arange(len(renders)) % 2 == 0, np.arange(len(renders)) % 2 == 1
    aucs = {}
    for f, vals in acts.labels.items():
        vals = vals[renders]
        kinds = sorted({v for v in vals if v != ""})
        if len(kinds) < 2:
            continue
        has = vals != ""
        for v in kinds:
            y = vals == v
            a = auroc_columns(rmax[A & has], y[A & has])
            if not np.isfinite(a).any():
                continue
            j = int(np.nanargmax(a))
            b = float(auroc_columns(rmax[B & has][:, [j]], y[B & has])[0])
            if np.isfinite(b):
                aucs[f"{f}={v}"] = b
    a = np.array(list(aucs.values()))
    return {"variance_explained": ve, "live": int(len(live)), "d_sae": int(Z.shape[1]),
            "l0": float((Z > 0).sum(1).mean()), "auroc_mean": float(a.mean()), "share_0.9": float((a >= 0.9).mean()),
            "values": len(a)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes", choices=("shapes", "shapes-pairs"))
    p.add_argument("--site", default="transformer_blocks.2.img")
    p.add_argument("--t", type=float, default=0.5)
    p.add_argument("--n", type=int, default=1280)
    p.add_argument("--train", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--grid", nargs="+", required=True)
    p.add_argument("--cache", default="runs/sae_tune")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    world = "shapes" if a.model == "shapes" else "pairs"
    out = Path(a.out or f"docs/results/json/sae_tune_{world}.jsonl")
    pipe = explore.load_pipeline(a.model)
    acts = token_activations(pipe, a.n, DEV_SEED, a.site, (a.t,),
                             out=Path(a.cache) / f"acts_{world}_{a.site}_{a.t:g}_{a.n}")
    test = np.arange(a.n) >= a.train
    train_rows = acts.x[torch.from_numpy(~test[acts.render])]
    for g in a.grid:
        kind, exp, k, *rest = g.split(":")
        s = SAESettings(site=a.site, timesteps=(a.t,), n=a.train, kind=kind, expansion=int(exp), k=int(k),
                        steps=int(rest[0]) if rest else a.steps, seed=DEV_SEED)
        t0 = time.perf_counter()
        sae = train_sae(train_rows, s, progress=False)
        sec = time.perf_counter() - t0
        rec = {"world": world, "site": a.site, "t": a.t, "kind": kind, "expansion": int(exp), "k": int(k),
               "steps": s.steps, "train_renders": a.train, "test_renders": int(test.sum()), "seed": DEV_SEED,
               **measure(sae, acts, test), "seconds": round(sec, 1), "threads": torch.get_num_threads()}
        print(json.dumps(rec), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
