"""Figures of the causal studies (`explore.interp.causal`): restoration heat maps and vital blocks."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .pictures import mask_picture


def causal_trace_figure(res: dict) -> Figure:
    """One heat map per factor: sites (rows) x windows of t (columns), the share of the edit restored."""
    factors = list(res["factors"])
    windows = res["settings"]["windows"]
    sites = res["sites"]
    fig = Figure(figsize=(1.6 + 1.1 * len(windows) * len(factors), 0.8 + 0.28 * len(sites)), layout="constrained")
    axes = fig.subplots(1, len(factors), squeeze=False)[0]
    for ax, factor in zip(axes, factors):
        r = res["factors"][factor]
        grid = np.array([[np.nan if r["restored"][s][w] is None else r["restored"][s][w] for w in windows]
                         for s in sites], dtype=float)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="magma", aspect="auto")
        ax.set_xticks(range(len(windows)), [f"t {w}" for w in windows], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(sites)), sites if ax is axes[0] else [""] * len(sites), fontsize=7)
        ax.set_title(f"{factor} (n={r['n_valid']})", fontsize=9)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if grid[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="share of the edit restored")
    fig.suptitle(f"causal trace, {res['world']}: clean site patched into the corrupted run", fontsize=10)
    return fig


def vital_blocks_figure(res: dict) -> Figure:
    """Blocks (rows) x factors (columns): the share of items whose reading changes when the block is bypassed."""
    blocks = res["blocks"]
    factors = list(next(iter(res["change"].values())))
    grid = np.array([[np.nan if res["change"][b][f] is None else res["change"][b][f] for f in factors]
                     for b in blocks], dtype=float)
    fig = Figure(figsize=(2.5 + 0.8 * len(factors), 1.0 + 0.3 * len(blocks)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(factors)), factors, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(blocks)), blocks, fontsize=7)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if grid[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="share of readings changed")
    ax.set_title(f"vital blocks, {res['world']}: one block bypassed", fontsize=10)
    return fig


def lens_figure(res: dict) -> Figure:
    """One heat map per t: image-stream sites (rows) x factors (columns), the share read correctly."""
    ts = list(res["accuracy"])
    sites = res["sites"]
    factors = list(next(iter(res["accuracy"][ts[0]].values())))
    fig = Figure(figsize=(1.8 + 0.75 * len(factors) * len(ts), 1.0 + 0.3 * len(sites)), layout="constrained")
    axes = fig.subplots(1, len(ts), squeeze=False)[0]
    for ax, t in zip(axes, ts):
        grid = np.array([[res["accuracy"][t][s][f] for f in factors] for s in sites], dtype=float)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(factors)), factors, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(sites)), sites if ax is axes[0] else [""] * len(sites), fontsize=7)
        ax.set_title(f"t = {t}", fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="factor read correctly")
    fig.suptitle(f"lens, {res['world']}: the model's head after each block", fontsize=10)
    return fig


def lens_strip(sites, examples: dict) -> Figure:
    """The lens images of one item: rows t, columns the image-stream sites (block by block)."""
    ts = list(examples)
    fig = Figure(figsize=(1.1 * len(sites), 1.2 * len(ts) + 0.4), layout="constrained")
    axes = fig.subplots(len(ts), len(sites), squeeze=False)
    for r, t in enumerate(ts):
        for c, site in enumerate(sites):
            ax = axes[r][c]
            ax.imshow(np.clip(examples[t][c], 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(site.replace("transformer_blocks", "b").replace("single_transformer_blocks", "s"),
                             fontsize=7)
            if c == 0:
                ax.set_ylabel(f"t={t}", fontsize=8)
    return fig


def object_masks_figure(examples: list[dict], res: dict) -> Figure:
    """Rows: renders; columns: the image, the exact per-object masks and each method's masks (same colours)."""
    columns = ["exact", *[m for m in ("noun", "threshold", "segment", "concepts") if m in examples[0]["found"]]]
    fig = Figure(figsize=(1.5 * (1 + len(columns)), 1.6 * len(examples) + 0.4), layout="constrained")
    axes = fig.subplots(len(examples), 1 + len(columns), squeeze=False)
    for row, ex in zip(axes, examples):
        shape = ex["image"].shape[:2]
        row[0].imshow(ex["image"])
        for ax, col in zip(row[1:], columns):
            masks = ex["exact"] if col == "exact" else ex["found"][col]
            ax.imshow(mask_picture(masks, shape))
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, col in zip(axes[0], ["image", *columns]):
        label = col if col not in res["iou"] else f"{col}\nIoU {res['iou'][col]:.2f}"
        ax.set_title(label, fontsize=8)
    fig.suptitle(f"per-object masks, {res['world']} (seed {res['seed']})", fontsize=9)
    return fig
