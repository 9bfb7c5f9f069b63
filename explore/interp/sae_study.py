"""An SAE's features scored against the embedded world's exact factors (`explore.interp.sae`).

`sae_score` collects the SAE's site on ``n`` fresh renders (another seed than its training) and measures:

* **reconstruction** — variance explained of the activation rows (1 - FVU, the residual's squared
  norm over the rows' total variance about their mean), per noise level; and in the image: the
  renders regenerated from ``t_render`` with the site replaced by its reconstruction at every step
  (`explore.interp.sae.patch_with_sae`), read back by the world's readers — does every factor
  still read right? (beside the same renders without the SAE);
* **dead and dense features** — never active on the rows / active on more than half of them;
* **per factor value, the best single feature** — each render summarised by the feature's largest
  activation over its tokens; the feature with the best AUROC for "this factor has this value"
  is chosen on half the renders (even indices) and its AUROC, precision and recall (at the
  threshold of best F1 on that half) are reported on the other half;
* **monosemantic features against the truth** — a live feature is monosemantic when its AUROC
  for one factor value is >= 0.9 and for every value of every *other* factor < 0.75 (not by
  looking at images); reported as a count and a share of live features;
* **MIG / DCI / SAP** of the render-level codes (tokens averaged) beside the raw activations and
  their first 10 principal components, same renders, factors and splits (`factor_scores`);
* on a two-object world, **whether a feature belongs to one object**: for each factor value's
  best feature ``obj.attr = v``, the AUROC separating the tokens of ``obj`` (renders where it has
  ``v``) from the tokens of another object that has the same value ``v``; >= 0.8 counts as bound
  to its object (image-stream sites: a text token has no place on an object's mask).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..io import atomic_write_json, atomic_write_text, envelope, save_figure
from ..pipeline.spec import spec
from ..stats import auroc_columns
from ..worlds import require_world
from .sae import encode_rows, load_sae, patch_with_sae, token_activations
from .studies import factor_scores

MONO_AUROC, MONO_OTHER, BOUND_AUROC, DENSE = 0.9, 0.75, 0.8, 0.5


def _best_threshold(s: np.ndarray, y: np.ndarray) -> float:
    """The threshold on ``s`` (predict ``s > threshold``) with the best F1 for ``y``."""
    order = np.unique(s)
    cands = np.concatenate([[order[0] - 1], (order[:-1] + order[1:]) / 2]) if len(order) > 1 else order - 1
    best, thr = -1.0, float(cands[0])
    for c in cands:
        p = s > c
        tp = float((p & y).sum())
        f1 = 2 * tp / max(1.0, float(p.sum() + y.sum()))
        if f1 > best:
            best, thr = f1, float(c)
    return thr


def _token_masks(world, scenes, grid: int, key: str, res: int) -> np.ndarray:
    """``(renders, tokens)`` bool: the tokens (patch cells) an object's mask covers at least half of."""
    out = np.zeros((len(scenes), grid * grid), dtype=bool)
    cell = res // grid
    for i, sc in enumerate(scenes):
        try:
            m = np.asarray(world.mask(sc, res, key=key), dtype=float)
        except KeyError:  # the object is not in this scene
            continue
        out[i] = (m.reshape(grid, cell, grid, cell).mean(axis=(1, 3)) >= 0.5).ravel()
    return out


def feature_binding(values: np.ndarray, acts, masks: dict[str, np.ndarray], factor: str, value: str) -> float | None:
    """Does a feature belong to one object? ``values`` ``(rows,)``: the feature on each row of ``acts``
    (`TokenActivations` of an image site); ``masks`` object -> ``(renders, tokens)`` the tokens each
    object covers; ``factor`` ``"obj.attr"``. The AUROC separating the feature on ``obj``'s tokens
    (renders where ``obj.attr == value``) from it on another object's tokens where *that* object has
    the same ``value`` of ``attr``: 1 when it fires only on its own object, 0.5 when it fires on
    whichever object has the value. None when either side has no token."""
    obj, attr = factor.split(".", 1)
    n = len(acts.scenes)
    own, other = [], []
    for i in range(n):
        rows = np.flatnonzero(acts.render == i)
        cells = acts.token[rows]
        if acts.labels[factor][i] == value:
            own.append(values[rows][masks[obj][i][cells]])
        for o in masks:
            if o != obj and acts.labels.get(f"{o}.{attr}", np.array([""] * n))[i] == value:
                other.append(values[rows][masks[o][i][cells]])
    own_a = np.concatenate(own) if own else np.zeros(0)
    oth_a = np.concatenate(other) if other else np.zeros(0)
    if not (len(own_a) and len(oth_a)):
        return None
    y = np.r_[np.ones(len(own_a), bool), np.zeros(len(oth_a), bool)]
    return float(auroc_columns(np.concatenate([own_a, oth_a])[:, None], y)[0])


def sae_score(pipe, folder: str | Path, n: int = 512, seed: int = 1, *, render_n: int = 24, t_render: float = 0.6,
              dci_model: str = "gbt", out: str | Path | None = None, progress: bool = True) -> dict:
    """Score the SAE in ``folder`` against the pipeline's world on ``n`` renders of ``seed`` (module docstring;
    ``dci_model``: DCI's classifier, `explore.evaluation.disentanglement.dci`)."""
    world = require_world(pipe, "scoring SAE features needs an embedded world's exact factors (--model shapes or "
                                "shapes-pairs)")
    if n < 40:
        raise InputError(f"n must be at least 40 renders (two halves of 20 for the held-out figures), got {n}")
    sae = load_sae(folder)
    rec = sae.explore
    site, ts = rec["settings"]["site"], rec["settings"]["timesteps"]
    if int(rec["settings"]["seed"]) == int(seed):
        raise InputError(f"score on renders the SAE was not trained on: its training seed is {seed}; pass another")
    if rec.get("world") not in (None, world.name):
        raise InputError(f"the SAE was trained on {rec['world']!r}, the pipeline is {world.name!r}")
    t0 = time.perf_counter()
    acts = token_activations(pipe, n, seed, site, ts, progress=progress)
    x = acts.x
    z = encode_rows(sae, x)
    xh = torch.cat([sae.decode(z[i:i + 8192]) for i in range(0, len(z), 8192)]).detach()
    resid = ((xh - x) ** 2).sum(1)
    total = ((x - x.mean(0)) ** 2).sum(1)
    ve = {"all": float(1 - resid.sum() / total.sum())}
    for t in np.unique(acts.t):
        rows = torch.from_numpy(acts.t == t)
        xt = x[rows]
        ve[f"t={float(t):g}"] = float(1 - resid[rows].sum() / ((xt - xt.mean(0)) ** 2).sum())
    Z = z.detach().numpy()
    active = Z > 0
    freq = active.mean(0)
    live = np.flatnonzero(freq > 0)
    dead, dense = int((freq == 0).sum()), int((freq > DENSE).sum())
    l0 = float(active.sum(1).mean())
    # render-level summaries: each feature's largest (and mean) activation over a render's rows
    F = Z.shape[1]
    rmax = acts.per_render_max(Z)
    rmean = np.zeros((n, F), np.float64)
    np.add.at(rmean, acts.render, Z)
    rmean /= np.bincount(acts.render, minlength=n)[:, None]
    A, B = np.arange(n) % 2 == 0, np.arange(n) % 2 == 1
    values = [(f, v) for f in acts.labels for v in sorted({x for x in acts.labels[f] if x != ""})
              if len({x for x in acts.labels[f] if x != ""}) >= 2]
    best: dict[str, dict] = {}
    auc_all = {}
    for f, v in tqdm(values, desc="factor values", disable=not progress, leave=False):
        has = acts.labels[f] != ""
        y = acts.labels[f] == v
        a_sel = auroc_columns(rmax[A & has][:, live], y[A & has])
        if not len(live) or not np.isfinite(a_sel).any():  # one class in the selection half: nothing to choose
            best[f"{f}={v}"] = {"factor": str(f), "value": str(v), "feature": None, "auroc": None,
                                "precision": None, "recall": None, "threshold": None}
            continue
        j = int(live[np.nanargmax(a_sel)])
        thr = _best_threshold(rmax[A & has, j], y[A & has])
        sB, yB = rmax[B & has, j], y[B & has]
        pred = sB > thr
        auc_all[(f, v)] = auroc_columns(rmax[has][:, live], y[has])
        auc_b = float(auroc_columns(sB[:, None], yB)[0])
        best[f"{f}={v}"] = {"factor": str(f), "value": str(v), "feature": j,
                            "auroc": None if np.isnan(auc_b) else auc_b,  # None: one class in the held-out half
                            "precision": float((pred & yB).sum() / max(1, pred.sum())),
                            "recall": float((pred & yB).sum() / max(1, yB.sum())), "threshold": thr}
    # monosemantic against the truth
    keys = list(auc_all)
    M = np.stack([auc_all[k] for k in keys])  # (values, live)
    mono = []
    for c, j in enumerate(live):
        col = M[:, c]
        hits = [i for i in range(len(keys)) if col[i] >= MONO_AUROC]
        if len(hits) != 1:
            continue
        f0 = keys[hits[0]][0]
        if all(col[i] < MONO_OTHER for i in range(len(keys)) if keys[i][0] != f0 and np.isfinite(col[i])):
            mono.append({"feature": int(j), "factor": str(f0), "value": str(keys[hits[0]][1]),
                         "auroc": float(col[hits[0]])})
    # MIG / DCI / SAP: SAE codes (tokens averaged, live features), raw activations, their 10 PCs
    raw = np.zeros((n, x.shape[1]), np.float64)
    np.add.at(raw, acts.render, x.numpy())
    raw /= np.bincount(acts.render, minlength=n)[:, None]
    metrics = {"sae": factor_scores(rmean[:, live], acts.labels, None, dci_model=dci_model),
               "raw": factor_scores(raw, acts.labels, None, dci_model=dci_model),
               "pca10": factor_scores(raw, acts.labels, 10, dci_model=dci_model)}
    # two objects: does a factor value's best feature belong to its object?
    objects = sorted({f.split(".", 1)[0] for f in acts.labels if "." in f})
    binding = {}
    if len(objects) > 1 and acts.grid is not None:  # a text-stream SAE's tokens have no place in the image
        res_px = spec(pipe).resolution
        masks = {o: _token_masks(world, acts.scenes, acts.grid, f"{o}.color", res_px) for o in objects}
        for name, b in best.items():
            if "." in b["factor"] and b["feature"] is not None:
                a = feature_binding(Z[:, b["feature"]], acts, masks, b["factor"], b["value"])
                if a is not None:
                    binding[name] = a
    # the SAE in the model's path: renders regenerated with the site reconstructed, read back
    recon = _render_check(pipe, world, sae, site, acts.scenes[:render_n], t_render, seed, progress)
    res = envelope(spec(pipe).model_id, seed, {"n": n, "render_n": render_n, "t_render": t_render, "dci": dci_model,
                                               "sae": rec["settings"], "thresholds": {
        "monosemantic_auroc": MONO_AUROC, "other_factor_auroc_below": MONO_OTHER, "bound_auroc": BOUND_AUROC,
        "dense_frequency": DENSE}}, time.perf_counter() - t0, world=world.name, site=site,
        variance_explained=ve, l0=l0, d_sae=F, live=int(len(live)), dead=dead, dense=dense,
        frequency=freq.tolist(), best=best, monosemantic=mono,
        monosemantic_share=len(mono) / max(1, len(live)),
        factors_matched=sorted({m["factor"] for m in mono}),
        values_with_a_feature=float(np.mean([(b["auroc"] or 0) >= MONO_AUROC for b in best.values()])),
        metrics=metrics, binding=binding,
        bound_share=(float(np.mean([a >= BOUND_AUROC for a in binding.values()])) if binding else None),
        render=recon)
    if out is not None:
        from ..views.sae_plots import sae_score_figure

        out = Path(out)
        atomic_write_json(out / "sae_score.json", res)
        atomic_write_text(out / "sae_score.md", sae_score_markdown(res))
        save_figure(out / "sae_score.png", sae_score_figure(res))
    return res


@torch.no_grad()
def _render_check(pipe, world, sae, site: str, scenes: Sequence, t_render: float, seed: int, progress: bool) -> dict:
    """Renders regenerated from ``t_render`` with and without the SAE in the site, read by the world's readers."""
    from ..editing.settings import RENDER_SEED_OFFSET
    from ..images import psnr
    from ..pipeline.latent import decode, encode
    from ..pipeline.sampling import render

    res_px = spec(pipe).resolution
    rows = {"plain": [], "sae": []}
    gap = []
    for i, sc in enumerate(tqdm(scenes, desc="renders with the SAE", disable=not progress, leave=False)):
        lat = encode(pipe, world.render(sc, res_px), world.caption(sc, template=0))
        labels = world.labels(sc)
        imgs = {}
        for name in rows:
            ctx = patch_with_sae(pipe, sae, site) if name == "sae" else contextlib.nullcontext()
            with ctx:
                zz = render(pipe, lat.z.float(), lat.c.float(), lat.p.float(), t_render,
                            [seed * 1000 + i + RENDER_SEED_OFFSET], None)
            imgs[name] = decode(pipe, zz, "np")[0]
            reading = world.read(imgs[name])
            right = [reading.get(k) == v for k, v in labels.items() if v != ""]
            rows[name].append((float(np.mean(right)), all(right)))
        gap.append(psnr(imgs["sae"], imgs["plain"]))
    return {name: {"agreement": float(np.mean([a for a, _ in r])), "exact": float(np.mean([e for _, e in r]))}
            for name, r in rows.items()} | {"psnr_sae_vs_plain": float(np.mean(gap)), "n": len(scenes)}


def sae_score_markdown(res: dict) -> str:
    s = res["settings"]["sae"]
    m = res["metrics"]
    lines = [f"# SAE features against the truth: {res['world']}, {res['site']} (t = {s['timesteps']})", "",
             f"{s['kind']} SAE, {res['d_sae']} features ({s['expansion']}x), k = {s['k']}, trained on "
             f"{s['n']} renders of seed {s['seed']}; scored on {res['settings']['n']} renders of seed "
             f"{res['seed']}.", "",
             "| measure | value |", "|---|---|",
             f"| variance explained | {res['variance_explained']['all']:.3f} |",
             f"| L0 (features per token) | {res['l0']:.1f} |",
             f"| live / dead / dense features | {res['live']} / {res['dead']} / {res['dense']} |",
             f"| monosemantic features (share of live) | {len(res['monosemantic'])} "
             f"({res['monosemantic_share']:.3f}) |",
             f"| factor values with a feature of AUROC >= {MONO_AUROC} (held out) | "
             f"{res['values_with_a_feature']:.2f} |",
             f"| renders read right, plain / with the SAE in {res['site']} | "
             f"{res['render']['plain']['agreement']:.3f} / {res['render']['sae']['agreement']:.3f} "
             f"(PSNR between them {res['render']['psnr_sae_vs_plain']:.1f} dB) |"]
    if res.get("bound_share") is not None:
        lines.append(f"| best features bound to their object (AUROC >= {BOUND_AUROC}) | {res['bound_share']:.2f} |")
    lines += ["", "| codes | MIG | DCI-D | DCI-C | DCI-I | SAP |", "|---|---|---|---|---|---|"]
    for name, label in (("sae", "SAE codes (tokens averaged)"), ("raw", "raw activations"), ("pca10", "10 PCs")):
        r = m[name]
        lines.append(f"| {label} | {r['mig']:.3f} | {r['dci_d']:.3f} | {r['dci_c']:.3f} | {r['dci_i']:.3f} | "
                     f"{r['sap']:.3f} |")
    lines += ["", "Best single feature per factor value (chosen on the even renders, measured on the odd):", "",
              "| factor = value | feature | AUROC | precision | recall |" + (" bound |" if res["binding"] else ""),
              "|---|---|---|---|---|" + ("---|" if res["binding"] else "")]
    for name, b in res["best"].items():
        bound = f" {res['binding'][name]:.2f} |" if name in res["binding"] else (" — |" if res["binding"] else "")
        auc = "—" if b["auroc"] is None else f"{b['auroc']:.3f}"
        pr = "— | —" if b["precision"] is None else f"{b['precision']:.2f} | {b['recall']:.2f}"
        lines.append(f"| {name} | {'—' if b['feature'] is None else b['feature']} | {auc} | {pr} |"
                     + bound)
    return "\n".join(lines) + "\n"


__all__ = ["auroc_columns", "feature_binding", "sae_score", "sae_score_markdown"]  # auroc_columns: from explore.stats
