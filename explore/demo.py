"""The main job (``make demo``): one edit per ShapesWorld attribute, a table, ``summary.json`` and ``edits.png``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .editing.api import edit_batch
from .errors import InputError
from .evaluation.items import world_benchmark
from .evaluation.runner import item_direction
from .evaluation.scorers import get_scorer
from .evaluation.scoring import score_edit
from .images import image_grid, image_row
from .io import atomic_write_json, envelope, save_image
from .pipeline.latent import decode, encode
from .pipeline.spec import spec
from .worlds import world_of


def demo(pipe, out: str | Path = "runs/demo", seed: int = 0, method: str = "hsds",
         strengths: Sequence[float] = (0.5, 1.0, 1.5, 2.0), progress: bool = True, **settings) -> dict:
    """Edit one seeded source per attribute; success/retention are read at strength 1.

    ``settings`` override the method's defaults (e.g. ``steps=``)."""
    world = world_of(pipe)
    if world is None:
        raise InputError("the demo runs on ShapesWorld or another embedded world (--model shapes); other models "
                         "have no readers to score edits")
    t0 = time.perf_counter()
    out = Path(out)
    strengths = [float(s) for s in strengths]
    run = sorted(set(strengths) | {0.0, 1.0})
    items = world_benchmark(world, len(world.editable()), seed=seed)
    scorer = get_scorer(world.name)
    sources = [encode(pipe, it.image, it.prompt) for it in items]
    directions = [item_direction(pipe, it) for it in items]  # the default: each item's own caption
    k = len(run)
    batch_sources = [s for s in sources for _ in run]
    batch_dirs = [d for d in directions for _ in run]
    batch_strengths = [s for _ in items for s in run]
    res = edit_batch(pipe, batch_sources, batch_dirs, batch_strengths, method, seeds=[it.seed for it in items
                     for _ in run], labels=[it.labels for it in items for _ in run], progress=progress,
                     **settings)
    images = decode(pipe, res["x"], output_type="np")
    edits, rows = [], []
    for i, it in enumerate(items):
        block = images[i * k : (i + 1) * k]
        sc = score_edit(scorer, it.attribute, it.target, block[run.index(1.0)], x_rec=block[run.index(0.0)],
                        labels=it.labels)
        edits.append({
            "attribute": it.attribute, "from": it.source, "to": it.target, "method": method,
            "prompt": it.prompt, "success": sc["success"], "retention": sc["retention"],
            "recon_accuracy": sc["recon_accuracy"], "read_after_edit": sc["read_edit"],
        })
        pil = [Image.fromarray((x * 255).round().astype(np.uint8)) for x in block]
        shown = [Image.fromarray(it.image), pil[run.index(0.0)], *[pil[run.index(s)] for s in strengths]]
        rows.append(image_row(shown, pad=4))
    seconds = time.perf_counter() - t0
    for e in edits:
        e["seconds"] = seconds / len(edits)
    grid = image_grid(rows, pad=4)
    scale = 3
    save_image(out / "edits.png", grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST))
    summary = envelope(
        spec(pipe).model_id, seed, res["settings"], seconds, method=method, strengths=strengths,
        evaluations=res["evaluations"], edits=edits,
        mean={"success": float(np.mean([e["success"] for e in edits])),
              "retention": float(np.mean([e["retention"] for e in edits]))},
        layout="edits.png rows: source | reconstruction | strengths " + ", ".join(f"{s:g}" for s in strengths),
    )
    atomic_write_json(out / "summary.json", summary)
    print(f"{'attribute':<11} {'edit':<22} {'success':>7} {'retention':>9}")
    for e in edits:
        print(f"{e['attribute']:<11} {e['from'] + ' -> ' + e['to']:<22} {e['success']:>7.0f} {e['retention']:>9.2f}")
    print(f"mean success {summary['mean']['success']:.2f}, retention {summary['mean']['retention']:.2f}; "
          f"{seconds:.1f} s on {summary['machine']['cpu_count']} CPU cores; wrote {out / 'summary.json'} and "
          f"{out / 'edits.png'}")
    torch.set_grad_enabled(True)
    return summary
