"""The main job (``make demo``): one edit per ShapesWorld attribute, a table, ``summary.json`` and ``edits.png``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .benchmark import shapes_benchmark
from .directions import text_direction
from .edit import edit_batch, image_row
from .errors import InputError
from .io import atomic_write_json, envelope, save_image
from .latent import decode, encode
from .metrics import accuracy, retention, success
from .models import spec


def demo(pipe, out: str | Path = "runs/demo", seed: int = 0, method: str = "hsds",
         strengths: Sequence[float] = (0.5, 1.0, 1.5, 2.0), progress: bool = True, **settings) -> dict:
    """Edit one seeded source per attribute; success/retention are read at strength 1.

    ``settings`` override the method's defaults (e.g. ``steps=``)."""
    from PIL import Image

    from .shapes.readers import read
    from .shapes.world import FACTOR_KEYS

    if spec(pipe).world != "shapes":
        raise InputError("the demo runs on ShapesWorld (--model shapes); other models have no readers to score edits")
    t0 = time.perf_counter()
    out = Path(out)
    strengths = [float(s) for s in strengths]
    run = sorted(set(strengths) | {0.0, 1.0})
    items = shapes_benchmark(len(FACTOR_KEYS), seed=seed)
    sources = [encode(pipe, it.image, it.prompt) for it in items]
    directions = [text_direction(pipe, it.source, it.target, attribute=it.attribute) for it in items]
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
        r1 = read(block[run.index(1.0)])
        rec = read(block[run.index(0.0)])
        edits.append({
            "attribute": it.attribute, "from": it.source, "to": it.target, "method": method,
            "prompt": it.prompt, "success": success(r1, it.attribute, it.target),
            "retention": retention(r1, it.labels, it.attribute), "recon_accuracy": accuracy(rec, it.labels),
            "read_after_edit": dict(r1),
        })
        pil = [Image.fromarray((x * 255).round().astype(np.uint8)) for x in block]
        shown = [Image.fromarray(it.image), pil[run.index(0.0)], *[pil[run.index(s)] for s in strengths]]
        rows.append(image_row(shown,
                              pad=4))
    seconds = time.perf_counter() - t0
    for e in edits:
        e["seconds"] = seconds / len(edits)
    grid = Image.new("RGB", (rows[0].width, sum(r.height for r in rows) + 4 * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height + 4
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
