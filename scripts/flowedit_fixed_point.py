"""Is the source a fixed point of FlowEdit's published loop? (docs/editing.md, "FlowEdit")

`explore`'s FlowEdit returns the source unchanged for an item whose target condition equals its
source condition (strength 0). The published loop has no such branch: it steps
``z += (s_next - s) [v̂(z_t; c, cfg_tar) - v̂(z_s; c, cfg_src)]`` regardless, and with
``z_t = z_s`` at the first step that difference is ``(cfg_tar - cfg_src) (v_c - v_u)``: zero only
when the two guidance scales are equal. This script runs the published loop at strength 0 (the
same noise, the branch that returns the source disabled) on a benchmark's sources and writes the
PSNR of its output to the source, per guidance pair, as JSON.

    python scripts/flowedit_fixed_point.py --n 60 --seed 1 --out runs/flowedit_fixed_point.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import explore
from explore.editing import peers
from explore.editing.api import edit_batch, settings_for
from explore.evaluation.items import world_benchmark
from explore.evaluation.runner import fit_item, item_direction
from explore.images import psnr
from explore.io import atomic_write_json, envelope
from explore.pipeline.latent import decode, encode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--out", default="runs/flowedit_fixed_point.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    pipe = explore.load_pipeline(args.model)
    world = explore.spec(pipe).world or "shapes"
    items = world_benchmark(world, args.n, seed=args.seed)
    base = dict(settings_for(pipe, "flowedit"))
    pairs = [(base["source_guidance"], base["target_guidance"]), (base["source_guidance"], base["source_guidance"])]
    real = peers.conditions
    rows = {}
    for src_g, tar_g in pairs:
        out_psnr, kept = [], []
        for b in range(0, len(items), args.batch_size):
            batch = items[b : b + args.batch_size]
            srcs = [encode(pipe, fit_item(pipe, it)[0], it.prompt) for it in batch]
            dirs = [item_direction(pipe, it) for it in batch]
            images = [fit_item(pipe, it)[0] for it in batch]
            for published in (True, False):
                if published:  # the published loop: no branch that returns an unedited source as it is
                    peers.conditions = lambda items: (*real(items)[:5], [False] * len(items))
                try:
                    x = edit_batch(pipe, srcs, dirs, [0.0] * len(batch), "flowedit",
                                   seeds=[it.seed for it in batch], **{**base, "source_guidance": src_g,
                                                                       "target_guidance": tar_g})["x"]
                finally:
                    peers.conditions = real
                dec = decode(pipe, x, output_type="np")
                for im, d in zip(images, dec):
                    (out_psnr if published else kept).append(psnr(np.asarray(im) / 255.0, np.asarray(d)))
        rows[f"{src_g:g}/{tar_g:g}"] = {
            "published_loop_psnr_mean": float(np.mean(out_psnr)), "published_loop_psnr_min": float(np.min(out_psnr)),
            "explore_psnr_mean": float(np.mean(kept)),
        }
        print(f"guidance {src_g:g} / {tar_g:g}: published loop {np.mean(out_psnr):.1f} dB "
              f"(min {np.min(out_psnr):.1f}), "
              f"explore {np.mean(kept):.1f} dB (the VAE round trip)")
    res = envelope(explore.spec(pipe).model_id, args.seed, {"n": args.n, "flowedit": base},
                   time.perf_counter() - t0, psnr_to_source=rows)
    atomic_write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
