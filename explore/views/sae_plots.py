"""Figures of an SAE scored against the truth (`explore.interp.sae_study.sae_score`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure


def sae_score_figure(res: Mapping[str, Any]) -> Figure:
    """Three panels: how often each feature fires (dead / dense marked), the best single feature's
    held-out AUROC per factor value, and MIG / DCI / SAP of the SAE codes beside the raw activations
    and their principal components."""
    many = len(res["best"]) > 24  # two-object worlds: long factor names under the bars
    fig = Figure(figsize=(14, 4.8 if many else 3.8), layout="constrained")
    ax_f, ax_b, ax_m = fig.subplots(1, 3, width_ratios=[1, 2.2, 1.2])
    freq = np.asarray(res["frequency"], dtype=float)
    live = freq[freq > 0]
    ax_f.hist(np.log10(live), bins=30, color="tab:blue")
    ax_f.axvline(np.log10(0.5), ls="--", c="tab:red", lw=1, label="dense (> 0.5)")
    ax_f.set_xlabel("log10 share of tokens a feature fires on")
    ax_f.set_ylabel("features")
    ax_f.set_title(f"{res['live']} live, {res['dead']} dead, {res['dense']} dense; L0 {res['l0']:.1f}", fontsize=9)
    ax_f.legend(fontsize=7)
    names = list(res["best"])
    auc = [np.nan if res["best"][k]["auroc"] is None else res["best"][k]["auroc"] for k in names]
    factors = [res["best"][k]["factor"] for k in names]
    order = list(dict.fromkeys(factors))
    cmap = matplotlib.colormaps["tab20" if len(order) > 10 else "tab10"]
    palette = {f: cmap(i % cmap.N) for i, f in enumerate(order)}
    ax_b.bar(range(len(names)), auc, color=[palette[f] for f in factors])
    ax_b.axhline(0.9, ls="--", c="0.4", lw=1)
    ax_b.axhline(0.5, ls=":", c="0.6", lw=1)
    ax_b.set_xticks(range(len(names)), [k.split("=", 1)[1] if "." not in k else k for k in names],
                    fontsize=6, rotation=90)
    ax_b.set_ylim(0.4, 1.01)
    ax_b.set_ylabel("held-out AUROC of the best feature")
    ax_b.set_title(f"{len(res['monosemantic'])} monosemantic features ({res['monosemantic_share']:.0%} of live); "
                   "colour = factor", fontsize=9)
    keys = ("mig", "dci_d", "dci_c", "dci_i", "sap")
    reps = (("sae", "SAE codes"), ("raw", "raw"), ("pca10", "10 PCs"))
    w = 0.27
    for r, (name, label) in enumerate(reps):
        ax_m.bar(np.arange(len(keys)) + (r - 1) * w, [res["metrics"][name][k] for k in keys], w, label=label)
    ax_m.set_xticks(range(len(keys)), ["MIG", "DCI-D", "DCI-C", "DCI-I", "SAP"], fontsize=8)
    ax_m.set_ylim(0, 1)
    ax_m.legend(fontsize=7)
    ax_m.set_title("disentanglement of the codes", fontsize=9)
    fig.suptitle(f"SAE on {res['world']}, {res['site']}: variance explained {res['variance_explained']['all']:.3f}; "
                 f"renders read right {res['render']['plain']['agreement']:.2f} plain / "
                 f"{res['render']['sae']['agreement']:.2f} with the SAE "
                 f"(n = {res['settings']['n']}, seed {res['seed']})",
                 fontsize=10)
    return fig
