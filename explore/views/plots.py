"""Every figure `explore` draws, in one place: functions that return a matplotlib ``Figure`` and never show it.

Made without pyplot (``matplotlib.figure.Figure``), so nothing is displayed twice in a notebook and
any backend works (CI runs Agg). Grouped by what they show: an edit (trace, joint latent, the SDE
step by step), benchmark results (curves, per attribute), attention maps, probes, direction
geometry. `save_results_figures` writes a benchmark's two figures next to its results.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ..errors import InputError
from ..images import to_array
from ..interp.attention import AttentionMaps, LayerSpec, layer_names, renormalize, upsample
from ..interp.geometry import DirectionInfo, as_matrix, attribute_names, pca, umap
from ..interp.probe import ProbeResults, double_blocks, site_depth
from ..io import save_figure

# ---------------------------------------------------------------------------------------------
# One edit
# ---------------------------------------------------------------------------------------------


def plot_trace(trace: Mapping[str, Sequence[float]], title: str | None = None):
    """Per-step trace of one edit: gradient norms, ``|z - z0|`` and the share of ``g_edit`` HSDS removed."""
    fig = Figure(figsize=(6.4, 2.3), layout="constrained")
    axes = fig.subplots(1, 2)
    n = len(trace.get("dz_norm", []))
    if n == 0:
        for ax in axes:
            ax.axis("off")
        axes[0].text(0, 0.5, "no optimisation: this method renders (z0, c', p') directly", fontsize=9)
    else:
        steps = np.arange(1, n + 1)
        names = {"grad_norm": "|g|", "edit_norm": "|g_edit|", "rec_norm": "|g_rec|"}
        for key, label in names.items():
            y = np.asarray(trace.get(key, [math.nan] * n), dtype=float)
            if np.isfinite(y).any():
                axes[0].plot(steps, y, label=label, linewidth=1.2)
        axes[0].set_xlabel("step")
        axes[0].set_title("update norms", fontsize=9)
        axes[0].legend(fontsize=7)
        axes[1].plot(steps, trace["dz_norm"], color="C3", label="|z - z0|", linewidth=1.2)
        axes[1].set_xlabel("step")
        axes[1].set_title("latent moved / g_edit removed", fontsize=9)
        removed = np.asarray(trace.get("removed", [math.nan] * n), dtype=float)
        if np.isfinite(removed).any():
            ax2 = axes[1].twinx()
            ax2.plot(steps, removed, color="C4", linestyle="--", linewidth=1, label="removed share")
            ax2.set_ylim(0, 1.05)
            ax2.tick_params(labelsize=7)
            ax2.legend(fontsize=7, loc="lower right")
        axes[1].legend(fontsize=7, loc="upper left")
        for ax in axes:
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_joint_latent(latent, max_channels: int = 8):
    """The three parts of a joint latent: ``z`` channels, the token embeddings ``c`` and the pooled ``p``."""
    z = latent.z[0].detach().float().cpu().numpy()
    c = latent.c[0].detach().float().cpu().numpy()
    p = latent.p[0].detach().float().cpu().numpy()
    k = min(len(z), max_channels)
    fig = Figure(figsize=(max(6.0, 0.9 * k), 3.6), layout="constrained")
    gs = fig.add_gridspec(2, k, height_ratios=[1, 1.4])
    lim = float(np.abs(z[:k]).max()) or 1.0
    for i in range(k):
        ax = fig.add_subplot(gs[0, i])
        ax.imshow(z[i], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"z[{i}]", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    split = max(1, (2 * k) // 3)
    ax = fig.add_subplot(gs[1, :split])
    lim = float(np.percentile(np.abs(c), 99)) or 1.0
    ax.imshow(c, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_title(f"c: {c.shape[0]} tokens x {c.shape[1]} dims", fontsize=8)
    ax.set_xlabel("dim", fontsize=7)
    ax.set_ylabel("token", fontsize=7)
    ax.tick_params(labelsize=6)
    if split < k:
        ax = fig.add_subplot(gs[1, split:])
        ax.plot(p, linewidth=0.6)
        ax.set_title(f"p: {p.shape[0]} dims", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"joint latent of {latent.prompt[0]!r}" if latent.prompt else "joint latent", fontsize=8)
    return fig


def sde_figure(x, x_rec, x_edit, mask, parts, attribute: str | None = None, title: str | None = None):
    """The SDE metric of one edit, step by step: source, reconstruction, edit, ``|x_edit - x_rec|``,
    the mask ``M`` and the change outside it (the leak), with ``E``, ``leak``, ``R`` and ``SDE``."""
    def arr(im):
        return to_array(im, "float").astype(np.float32)

    xs, xr, xe = arr(x), arr(x_rec), arr(x_edit)
    m = np.asarray(mask, dtype=bool)
    if attribute == "background":
        m = ~m
    d = np.abs(xe - xr).sum(-1)
    outside = d * (~m)
    fig = Figure(figsize=(11, 2.6), layout="constrained")
    axes = fig.subplots(1, 6)
    panels = [
        (xs, "x (source)"), (xr, f"x_rec  R = {parts['R']:.3f}"), (xe, f"x_edit  E = {parts['E']:+.2f}"),
        (d, "|x_edit - x_rec|"), (m, "mask M" + (" (complement)" if attribute == "background" else "")),
        (outside, f"change outside M  leak = {parts['leak']:.2f}"),
    ]
    vmax = float(d.max()) or 1.0
    for ax, (im, name) in zip(axes, panels):
        if im.ndim == 3:
            ax.imshow(im, interpolation="nearest")
        elif im.dtype == bool:
            ax.imshow(im, cmap="gray", interpolation="nearest")
        else:
            ax.imshow(im, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"SDE = max(E, 0) · (1 - leak) · (1 - min(R, 1)) = {parts['sde']:.3f}", fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------
# Benchmark results
# ---------------------------------------------------------------------------------------------


def plot_curves(res: dict):
    fig = Figure(figsize=(10, 3.2))
    axes = fig.subplots(1, 3)
    for ax, key in zip(axes, ("sde", "success", "retention")):
        for m, by_s in res["curves"].items():
            xs = [float(s) for s in by_s]
            ys = [by_s[s][key] if by_s[s][key] is not None else np.nan for s in by_s]
            ax.plot(xs, ys, marker="o", label=m)
        ax.set_xlabel("strength λ")
        ax.set_title(key)
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower cost ``x`` and higher value ``y``, one at least strictly)."""
    out = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            out.append(i)
    return sorted(out, key=lambda i: points[i][0])


def plot_pareto(results: dict | Sequence[dict], title: str | None = None):
    """Success, retention and SDE against cost (transformer sequences per edit, log scale), one point per method.

    ``results``: one `evaluate` result or several (e.g. two seeds; their overall means are averaged).
    The dashed line joins the methods no other method beats on both cost and the panel's measure.
    """
    runs = [results] if isinstance(results, dict) else list(results)
    methods = [m for m in runs[0]["methods"] if all(m in r["methods"] for r in runs)]

    def mean(m, key):
        vals = [r["methods"][m]["overall"][key] for r in runs if r["methods"][m]["overall"].get(key) is not None]
        return float(np.mean(vals)) if vals else np.nan

    cost = {m: float(np.mean([r["methods"][m]["evaluations_per_item"] or np.nan for r in runs])) for m in methods}
    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]

    def colour(k):
        return cmap(k % cmap.N)

    fig = Figure(figsize=(13, 4.2))
    axes = fig.subplots(1, 3)
    finite_costs = [c for c in cost.values() if np.isfinite(c)]
    ticks = [t for t in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
             if finite_costs and min(finite_costs) / 1.5 <= t <= max(finite_costs) * 1.5]
    for ax, key in zip(axes, ("success", "retention", "sde")):
        pts = [(cost[m], mean(m, key)) for m in methods]
        lo, hi = np.nanmin([y for _, y in pts]), np.nanmax([y for _, y in pts])
        for k, (x, y) in enumerate(pts):
            ax.scatter([x], [y], s=36, color=colour(k), zorder=3)
        # labels of points at about the same place are stacked instead of drawn over each other
        placed: list[tuple[float, float]] = []
        span = max(hi - lo, 1e-9)
        for k, (m, (x, y)) in sorted(enumerate(zip(methods, pts)), key=lambda e: (e[1][1][0], -e[1][1][1])):
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            near = sum(1 for (px, py) in placed if abs(np.log(px / x)) < 0.25 and abs(py - y) < 0.06 * span)
            placed.append((x, y))
            ax.annotate(m, (x, y), textcoords="offset points", xytext=(5, 3 - 9 * near), fontsize=7,
                        color=colour(k))
        front = pareto_front([p for p in pts if np.isfinite(p[0]) and np.isfinite(p[1])])
        finite = [p for p in pts if np.isfinite(p[0]) and np.isfinite(p[1])]
        if len(front) > 1:
            ax.plot([finite[i][0] for i in front], [finite[i][1] for i in front], "--", color="0.5", linewidth=1,
                    zorder=2)
        ax.set_xscale("log")
        if ticks:
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xticks([], minor=True)
        ax.set_xlabel("transformer sequences per edit (NFE, log)")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylim(-0.02, 1.05)
    axes[2].set_ylim(-0.02, 1.0)
    fig.suptitle(title or f"{runs[0]['benchmark']} benchmark: quality against cost "
                 f"({', '.join('seed ' + str(r['seed']) for r in runs)}, n = {runs[0]['n']})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_per_attribute(res: dict, key: str = "sde"):
    methods = list(res["methods"])
    attrs = sorted({a for r in res["methods"].values() for a in r["per_attribute"]})
    fig = Figure(figsize=(max(6, 1.3 * len(attrs)), 3.2))
    ax = fig.subplots()
    w = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        vals = [res["methods"][m]["per_attribute"].get(a, {}).get(key) or 0.0 for a in attrs]
        ax.bar(np.arange(len(attrs)) + i * w - 0.4 + w / 2, vals, w, label=m)
    ax.set_xticks(np.arange(len(attrs)), attrs)
    ax.set_ylabel(key)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, ncol=len(methods))
    fig.tight_layout()
    return fig


def save_results_figures(res: dict, out: str | Path) -> None:
    """``curves.png`` and ``per_attribute.png`` of an `explore.evaluation.runner.evaluate` result."""
    out = Path(out)
    try:
        save_figure(out / "curves.png", plot_curves(res))
        save_figure(out / "per_attribute.png", plot_per_attribute(res))
        save_figure(out / "pareto.png", plot_pareto(res))
    except Exception as e:  # pragma: no cover - plotting must never lose the results
        warnings.warn(f"could not draw the figures: {e}", stacklevel=2)


# ---------------------------------------------------------------------------------------------
# Attention maps
# ---------------------------------------------------------------------------------------------


def _image_array(image) -> np.ndarray:
    return to_array(image, "uint8")


def _draw(ax, image: np.ndarray | None, amap: np.ndarray, alpha: float, cmap: str, size) -> None:
    m = upsample(renormalize(amap), size)
    m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)  # colour range per map: the shape matters
    if image is not None:
        ax.imshow(image)
        ax.imshow(m, cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    else:
        ax.imshow(m, cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def overlay(image, amap, alpha: float = 0.5, cmap: str = "jet", title: str | None = None):
    """A matplotlib ``Figure``: ``image`` with an attention map ``(h, w)`` (any size) laid over it.

    The map is renormalised over patches, upsampled bilinearly to the image and colour-scaled
    from its minimum to its maximum. Never calls ``plt.show()``.
    """
    img = _image_array(image)
    amap = np.asarray(amap, dtype=np.float32)
    if amap.ndim == 3:
        amap = amap.mean(0)
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    _draw(ax, img, amap, alpha, cmap, img.shape[:2])
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def attention_grid(maps: AttentionMaps, image=None, layers: LayerSpec = None,
                   timesteps: Iterable[float] | None = None, alpha: float = 0.5, cmap: str = "jet"):
    """A ``Figure`` of maps, one row per layer and one column per ``t`` (over ``image`` if given)."""
    names = maps.layers() if layers is None else layer_names(maps, layers)
    ts = maps.timesteps() if timesteps is None else [round(float(t), 4) for t in timesteps]
    img = None if image is None else _image_array(image)
    size = img.shape[:2] if img is not None else maps.image_size
    fig = Figure(figsize=(1.8 * len(ts) + 1.5, 1.8 * len(names) + 0.5))
    axes = fig.subplots(len(names), len(ts), squeeze=False)
    for i, name in enumerate(names):
        for j, t in enumerate(ts):
            ax = axes[i][j]
            m = maps.maps.get((name, t))
            if m is None:
                ax.axis("off")
                continue
            _draw(ax, img, m.mean(0) if m.ndim == 3 else m, alpha, cmap, size)
            if i == 0:
                ax.set_title(f"t = {t:g}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name.replace("transformer_blocks", "blocks"), fontsize=7)
    fig.suptitle(f"attention on {maps.word!r}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_region_shares(shares: Mapping[str, Mapping[str, float]], own: str | None = None, title: str | None = None):
    """Bars per block: the share of a word's attention on each region (e.g. each object of a Pairs scene).

    ``shares``: block -> region -> share (`explore.interp.attention.region_shares` per block; a
    "mean" entry is drawn last). ``own``: the region the word names (drawn in green, the others grey).
    """
    blocks = [b for b in shares if b != "mean"] + (["mean"] if "mean" in shares else [])
    if not blocks:
        raise InputError("no attention shares to plot")
    regions = list(next(iter(shares.values())))
    fig = Figure(figsize=(max(3.5, 0.55 * len(blocks) + 1.5), 2.4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(blocks))
    width = 0.8 / max(1, len(regions))
    for i, r in enumerate(regions):
        color = "#1b7f3b" if r == own else ["#888888", "#bbbbbb", "#555555"][i % 3]
        label = f"{r} (named)" if r == own else r
        ax.bar(x + (i - (len(regions) - 1) / 2) * width, [shares[b][r] for b in blocks], width, color=color,
               label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([b.replace("transformer_blocks.", "") for b in blocks], fontsize=7)
    ax.set_ylabel("share of attention", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------


def plot_accuracy(results: ProbeResults, factors: Sequence[str] | None = None, t: float | None = None):
    """Held-out probe accuracy against block index, one panel per stream (``img``, ``txt``).

    One colour per factor; ``t`` None plots the best ``t`` at each site (the title says so), a
    number plots that ``t``. The dashed line in a factor's colour is its chance level (the
    majority class). FLUX single blocks continue the x axis after the double blocks (dotted
    line). Returns a matplotlib ``Figure``.
    """
    factors = list(results.factors if factors is None else ([factors] if isinstance(factors, str) else factors))
    for f in factors:
        if f not in results.factors:
            raise InputError(f"no probes for factor {f!r}; factors: {results.factors}")
    n_double = double_blocks(results.sites)
    streams = [st for st in ("img", "txt") if any(s.endswith("." + st) for s in results.sites)]
    fig = Figure(figsize=(5.2 * len(streams), 3.6), layout="constrained")
    axes = fig.subplots(1, len(streams), sharey=True, squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(factors))]
    for ax, stream in zip(axes, streams):
        stream_sites = sorted((s for s in results.sites if s.endswith("." + stream)),
                              key=lambda s: site_depth(s, n_double))
        x = [site_depth(s, n_double) for s in stream_sites]
        for f, color in zip(factors, colors):
            if t is None:
                acc = [results.best_over_t(f, s)[1] for s in stream_sites]
            else:
                acc = [results.accuracy(f, s, t) for s in stream_sites]
            ax.plot(x, acc, "o-", color=color, label=f, markersize=4)
            chance = float(np.nanmean([results.probe(f, s, results.timesteps[0]).chance_ for s in stream_sites]))
            ax.axhline(chance, color=color, linestyle="--", linewidth=0.9, alpha=0.7)
        if any(s.startswith("single_") for s in results.sites):
            ax.axvline(n_double - 0.5, color="0.5", linestyle=":", linewidth=0.9)
        ax.set_title(f"{stream} stream")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("block (forward order)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("linear probes, best t per site" if t is None else f"linear probes at t = {t:g}")
    return fig


# ---------------------------------------------------------------------------------------------
# Geometry of directions
# ---------------------------------------------------------------------------------------------


def _colors(attrs: Sequence[str]) -> dict[str, str]:
    uniq = list(dict.fromkeys(attrs))
    if len(uniq) <= 10:
        return {a: f"C{i}" for i, a in enumerate(uniq)}
    cmap = colormaps["tab20"]
    return {a: cmap(i % 20) for i, a in enumerate(uniq)}


def _projection_axes(ax, coords, attributes, values=None, title: str | None = None, axis_labels=("1", "2")):
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise InputError(f"coords must be (n, 2+), got shape {coords.shape}")
    attrs = attribute_names(attributes)
    if len(attrs) != len(coords):
        raise InputError(f"{len(coords)} points but {len(attrs)} attributes")
    colors = _colors(attrs)
    for a, col in colors.items():
        m = np.asarray(attrs) == a
        ax.scatter(coords[m, 0], coords[m, 1], s=22, color=col, label=a, alpha=0.85, edgecolors="none")
    if values is not None:
        if len(values) != len(coords):
            raise InputError(f"{len(coords)} points but {len(values)} values")
        if len(coords) > 80:  # past this the labels hide the points
            values = []
        for (x, y), v in zip(coords[:, :2], values):
            if v:
                ax.annotate(str(v), (x, y), fontsize=6, alpha=0.7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def _values(infos) -> list[str] | None:
    if infos and all(isinstance(i, DirectionInfo) for i in infos) and any(i.source or i.target for i in infos):
        return [f"{i.source}→{i.target}" if i.source or i.target else "" for i in infos]
    return None


def plot_projection(coords, attributes: Sequence[Any], values: Sequence[str] | None = None,
                    title: str = "directions", axis_labels: Sequence[str] = ("component 1", "component 2")):
    """Scatter of 2-D coordinates coloured by attribute; ``values`` (e.g. ``"red→blue"``) label the points."""
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.subplots()
    _projection_axes(ax, coords, attributes, values, title, axis_labels)
    ax.legend(fontsize=7, loc="best")
    return fig


def plot_cosine(C, labels: Sequence[Any] | None = None, title: str = "cosine similarity"):
    """Heatmap of a cosine matrix (``RdBu_r``, fixed range [-1, 1]); tick labels when there are at most 60 rows."""
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise InputError(f"C must be a square matrix, got shape {C.shape}")
    n = len(C)
    side = min(10.0, 3.5 + 0.12 * n)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(C, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="cosine")
    if labels is not None:
        if len(labels) != n:
            raise InputError(f"{n} rows but {len(labels)} labels")
        if n <= 60:
            names = [lab.name or lab.attribute if isinstance(lab, DirectionInfo) else str(lab) for lab in labels]
            ax.set_xticks(range(n), names, rotation=90, fontsize=6)
            ax.set_yticks(range(n), names, fontsize=6)
    ax.set_title(title)
    return fig


def plot_consistency(result: Mapping[str, Mapping[str, float]], title: str = "consistency per attribute"):
    """Bar chart of `consistency` scores with their bootstrap intervals as whiskers."""
    if not result:
        raise InputError("empty consistency result")
    names = list(result)
    score = np.array([result[a]["score"] for a in names], dtype=np.float64)
    lo = np.array([result[a].get("ci_low", np.nan) for a in names], dtype=np.float64)
    hi = np.array([result[a].get("ci_high", np.nan) for a in names], dtype=np.float64)
    # No interval (n_boot=0 or one direction): draw no whisker rather than a misleading one.
    err = np.stack([np.where(np.isfinite(lo), score - lo, 0.0), np.where(np.isfinite(hi), hi - score, 0.0)])
    err = np.clip(np.nan_to_num(err), 0, None)
    fig = Figure(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.4), layout="constrained")
    ax = fig.subplots()
    colors = _colors(names)
    ax.bar(range(len(names)), np.nan_to_num(score), yerr=err, capsize=4, color=[colors[a] for a in names])
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("within − across cosine")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig


def geometry_figure(X, attributes: Sequence[Any], values: Sequence[str] | None = None, seed: int = 0,
                    title: str | None = None, use_umap: bool | None = None, n_neighbors: int = 15):
    """PCA and UMAP views of the same directions side by side, coloured by attribute.

    ``attributes``: one name or `DirectionInfo` per row (the metadata of `direction_matrix`;
    value changes label the points). ``use_umap``: None draws the UMAP panel when umap-learn is
    installed (PCA only otherwise); True requires it.
    """
    X = as_matrix(X, 2)
    if values is None:
        values = _values(list(attributes))
    if use_umap is None:
        use_umap = importlib.util.find_spec("umap") is not None and len(X) >= 4
    coords, evr = pca(X, 2)
    if coords.shape[1] < 2:
        coords = np.concatenate([coords, np.zeros((len(coords), 1))], axis=1)
        evr = np.append(evr, 0.0)
    panels = 2 if use_umap else 1
    fig = Figure(figsize=(5.2 * panels, 4.4), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    _projection_axes(axes[0], coords, attributes, values, "PCA",
                     (f"PC1 ({100 * evr[0]:.0f}%)", f"PC2 ({100 * evr[1]:.0f}%)"))
    if use_umap:
        _projection_axes(axes[1], umap(X, 2, seed=seed, n_neighbors=n_neighbors), attributes, values,
                         f"UMAP (seed {seed})", ("UMAP 1", "UMAP 2"))
    axes[-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    return fig


def inversion_figure(res: Mapping[str, Any]) -> Figure:
    """Inversion fidelity against steps: PSNR (left) and the readers' agreement (right), one line per
    inverter; the VAE round trip dashed (the ceiling)."""
    fig = Figure(figsize=(8.5, 3.2), layout="constrained")
    ax_p, ax_a = fig.subplots(1, 2)
    for name, per in res["results"].items():
        ks = [int(k) for k in per]
        ax_p.plot(ks, [per[str(k)]["psnr"] for k in ks], marker="o", label=name)
        ax_a.plot(ks, [per[str(k)]["agreement"] for k in ks], marker="o", label=name)
    ax_p.axhline(res["vae"]["psnr"], ls="--", c="gray", label="VAE round trip")
    ax_a.axhline(res["vae"]["agreement"], ls="--", c="gray", label="VAE round trip")
    for ax, label in ((ax_p, "PSNR to the source (dB)"), (ax_a, "factors read right")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("steps")
        ax.set_ylabel(label)
    ax_a.legend(fontsize=8)
    fig.suptitle(f"inversion at strength 0, {res['world']} (n = {res['settings']['n']}, seed {res['seed']})",
                 fontsize=10)
    return fig


def sensitivity_figure(res: Mapping[str, Any]) -> Figure:
    """One panel per method: its grid of (at most) two settings, each cell coloured by success and
    labelled ``success / retention``; the defaults' cell outlined."""
    methods = [m for m in res["results"] if res["results"][m]]
    if not methods:
        raise InputError("no measured cells to draw")
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig = Figure(figsize=(3.3 * cols, 2.9 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    cmap = colormaps["viridis"]
    for ax, m in zip(axes, methods):
        keys = list(res["grids"][m])
        ys = res["grids"][m][keys[0]]
        xs = res["grids"][m][keys[1]] if len(keys) > 1 else [None]
        S = np.full((len(ys), len(xs)), np.nan)
        labels = [["" for _ in xs] for _ in ys]
        for cell in res["results"][m].values():
            v = cell["settings"]
            i, j = ys.index(v[keys[0]]), (xs.index(v[keys[1]]) if len(keys) > 1 else 0)
            S[i, j] = cell["success"]
            labels[i][j] = "diverged" if "diverged" in cell else f"{cell['success']:.2f}\n{cell['retention']:.2f}"
        ax.imshow(S, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        d = res["defaults"][m]
        for i in range(len(ys)):
            for j in range(len(xs)):
                ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=7,
                        color="black" if (np.isfinite(S[i, j]) and S[i, j] > 0.6) else "white")
        if d[keys[0]] in ys and (len(keys) == 1 or d[keys[1]] in xs):
            i, j = ys.index(d[keys[0]]), (xs.index(d[keys[1]]) if len(keys) > 1 else 0)
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax.set_ylabel(keys[0])
        ax.set_xticks(range(len(xs)), [str(x) for x in xs] if len(keys) > 1 else [""])
        ax.set_xlabel(keys[1] if len(keys) > 1 else "")
        ax.set_title(m, fontsize=10)
    for ax in axes[len(methods):]:
        ax.set_visible(False)
    fig.suptitle(f"sensitivity on {res['world']} (n = {res['settings']['n']}, seed {res['seed']}): cell = success "
                 "over retention, colour = success, red box = default", fontsize=9)
    return fig
