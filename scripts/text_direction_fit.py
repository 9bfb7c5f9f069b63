"""How well does the template-mean text direction fit one source's own caption? (ShapesWorld vs Pairs)

For each benchmark item, compare the direction every method edits with -- the mean over 32 world
captions of ``E_c(caption with v+) - E_c(caption with v-)`` (`explore.editing.text_direction`) --
with the item's *own* change: ``E_c(its caption with v+) - E_c(its caption)``, the same word swapped
in the caption the source was encoded with. Reported per world and attribute kind:

- ``cos``: cosine of the two (token-wise embeddings flattened);
- ``gain``: the template direction's component along the own change, in units of the own change
  (1.0: at strength 1 the condition moves as far along the own change as swapping the word would);
- ``pooled_cos``: the same cosine for the pooled embedding ``Δp`` (no token positions).

On a one-object world every caption puts the edited word at the same place (one object, a fixed
word order per template), so the template mean lines up with the own change; on Pairs the two
objects come in either order and the edited word's token position varies, so the mean is spread
over positions. Text encoders only (no transformer): about a minute on 2 CPU cores.

    python scripts/text_direction_fit.py --n 200 --seed 1 --out docs/results/json/text_direction_fit.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from explore import load_pipeline
from explore.editing.directions import text_direction
from explore.evaluation.items import world_benchmark
from explore.io import atomic_write_json
from explore.pipeline.latent import encode_text


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().flatten(), b.float().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-12))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="runs/text_direction_fit.json")
    args = ap.parse_args()
    out = {"n": args.n, "seed": args.seed, "worlds": {}}
    for world, model in (("shapes", "shapes"), ("pairs", "shapes-pairs")):
        pipe = load_pipeline(model)
        per = defaultdict(lambda: defaultdict(list))
        for it in world_benchmark(world, args.n, seed=args.seed):
            tgt = it.edited_prompt()  # the world's caption with the edit made (same template and order)
            d = text_direction(pipe, it.source, it.target, attribute=it.attribute)
            c0, p0 = encode_text(pipe, [it.prompt])
            c1, p1 = encode_text(pipe, [tgt])
            own_c, own_p = (c1 - c0)[0].float(), (p1 - p0)[0].float()
            kind = it.attribute.split(".")[-1]
            for key in (kind, "all"):
                per[key]["cos"].append(cos(d.dc, own_c))
                per[key]["gain"].append(float(d.dc.float().flatten() @ own_c.flatten() / own_c.flatten().pow(2).sum()))
                per[key]["pooled_cos"].append(cos(d.dp, own_p))
        out["worlds"][world] = {
            "per_kind": {k: {m: round(sum(v) / len(v), 3) for m, v in ms.items()} | {"n": len(ms["cos"])}
                         for k, ms in per.items()},
        }
        print(world, json.dumps(out["worlds"][world], indent=1))
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
