"""SAE steering as an editing method (``method="sae"``): swap the source value's feature for the target's.

An edit ``attribute: v- -> v+`` at strength λ looks up, in the SAE's feature table
(`feature_table`: per factor value the single feature that best detects it, chosen on the SAE's
training renders, never on the renders it is scored on), the feature ``f-`` of ``v-`` and ``f+``
of ``v+``. The source is then rendered from ``t_render`` with its own caption (the same render,
noise and steps as the other methods' reconstruction) while, at the SAE's site and at every step,
each token's activation moves by

    λ · z_{f-}(x) · (r · d_{f+} - d_{f-}),

``z_{f-}(x)`` the token's activation of ``f-`` (so only where the source value's feature fires),
``d`` the decoder directions and ``r`` the ratio of the two features' mean activations when they
fire (the feature table's ``scale``): at λ = 1 the source feature is taken out and the target
feature put in at its usual strength — the "clamp" intervention of the SAE-steering papers,
applied where the feature is. λ = 0 renders the reconstruction. The direction's text embedding
is not used (only its attribute and values). Costs what one render costs (the SAE is a few
matrix products). Needs a trained SAE: ``settings={"sae": {"folder": "runs/sae"}}`` (the CLI's
``sae steer``); not offered in the panels' method lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..io import atomic_write_json, read_json
from ..pipeline.families import family
from ..pipeline.latent import count_sequences
from ..pipeline.sampling import image_tokens, render, schedule
from ..pipeline.spec import spec
from ..stats import auroc_columns
from .loop import conditions
from .peers import PeerMethod
from .settings import RENDER_SEED_OFFSET, SAE_TABLE_TOP, SAESteerSettings

TABLE = "features_seed{seed}.json"
TOP = SAE_TABLE_TOP  # features kept per factor value in the table, best first


_CACHE: dict[tuple, Any] = {}


def _sae(folder: str):
    from ..interp.sae import load_sae

    path = Path(folder)
    key = (str(path.resolve()), (path / "sae_weights.safetensors").stat().st_mtime_ns
           if (path / "sae_weights.safetensors").exists() else None)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_sae(path)
    return _CACHE[key]


def feature_table(pipe, folder: str | Path, n: int = 256, seed: int | None = None, progress: bool = False) -> dict:
    """Per factor value (``"color=red"``, ``"circle.color=red"``) the feature that best detects it (AUROC of
    its largest activation over a render's tokens) and its mean activation when it fires, on ``n``
    renders of ``seed`` (default: the SAE's training seed). Cached in the SAE folder."""
    from ..interp.sae import encode_rows, token_activations

    sae = _sae(str(folder))
    rec = sae.explore["settings"]
    seed = int(rec["seed"]) if seed is None else int(seed)
    path = Path(folder) / TABLE.format(seed=seed)
    if path.exists():
        table = read_json(path)
        if table.get("n") == n and table.get("top") == TOP:
            return table
    acts = token_activations(pipe, n, seed, rec["site"], rec["timesteps"], progress=progress)
    Z = encode_rows(sae, acts.x).detach().numpy()
    rmax = acts.per_render_max(Z)
    fires = Z > 0
    mean_active = np.where(fires.any(0), (Z * fires).sum(0) / np.maximum(1, fires.sum(0)), 0.0)
    live = np.flatnonzero(fires.any(0))
    features = {}
    for f, col in acts.labels.items():
        vals = sorted({v for v in col if v != ""})
        if len(vals) < 2:
            continue
        has = col != ""
        for v in vals:
            auc = np.nan_to_num(auroc_columns(rmax[has][:, live], (col == v)[has]), nan=-1.0)
            order = np.argsort(-auc, kind="stable")[:TOP]
            ranked = [{"feature": int(live[c]), "auroc": float(auc[c]), "mean_active": float(mean_active[live[c]])}
                      for c in order]
            features[f"{f}={v}"] = {**ranked[0], "top": ranked}
    table = {"n": n, "seed": seed, "site": rec["site"], "top": TOP, "features": features}
    atomic_write_json(path, table)
    return table


def swap_hook(sae, remove: int | Sequence[int], add: int | Sequence[int], ratio: float, strength: float,
              stats: list | None = None, *, means: tuple[Sequence[float], Sequence[float]] | None = None):
    """The hook of one edit, per token (module docstring). One feature each: ``x + λ z_remove(x) (ratio
    d_add - d_remove)``. Sets of features (``means``: their mean activations when they fire, removed
    set then added set): ``x + λ (-Σ_j z_j d_j + ratio g Σ_i μ_i d_i)`` with ``g = Σ_j z_j / Σ_j μ_j``
    (how strongly the source value's features fire at this token, 1 where they fire as usual): the
    source features taken out, the target's put in at their usual strengths times ``ratio``; with one
    feature each and ``ratio`` = r μ_add / μ_remove this is the one-feature swap.
    ``stats`` (a list) receives, per call, the SAE's relative reconstruction error of the activations
    before and after the change (how far the steering moves them off what the SAE was trained on)."""
    from ..interp.sae import reconstruct

    W = sae.W_dec.detach()
    rm = [int(remove)] if isinstance(remove, (int, np.integer)) else [int(j) for j in remove]
    ad = [int(add)] if isinstance(add, (int, np.integer)) else [int(j) for j in add]
    if means is None:
        if len(rm) != 1 or len(ad) != 1:
            raise InputError("swapping sets of features needs their mean activations (means=)")
        mu_rm, mu_ad, scale = torch.ones(1), torch.tensor([float(ratio)]), 1.0
    else:
        mu_rm, mu_ad = (torch.as_tensor(np.asarray(m, dtype=np.float32)) for m in means)
        if len(mu_rm) != len(rm) or len(mu_ad) != len(ad):
            raise InputError(f"means must give one value per feature ({len(rm)} removed, {len(ad)} added)")
        scale = float(ratio)
    vec_add = scale * (mu_ad.to(W)[:, None] * W[ad]).sum(0)
    norm = float(mu_rm.sum().clamp_min(1e-8))

    def fn(x, *, site):
        if strength == 0 and stats is None:
            return None
        flat = x.reshape(-1, x.shape[-1]).float()
        z = sae.encode(flat)[:, rm]
        g = z.sum(1, keepdim=True) / norm
        y = flat + strength * (g * vec_add.to(flat) - z @ W[rm].to(flat))
        if stats is not None:
            def err(a):
                return float(((reconstruct(sae, a) - a) ** 2).sum() / (a ** 2).sum().clamp_min(1e-12))

            stats.append((err(flat), err(y)))
        return y.reshape(x.shape).to(x.dtype) if strength != 0 else None

    return fn


class SAESteer(PeerMethod):
    """SAE steering: the source rendered with its value's feature swapped for the target's (module docstring)."""

    name = "sae"
    settings_class = SAESteerSettings
    edits_text = False

    @torch.no_grad()
    def run(self, pipe, items, settings: SAESteerSettings, progress: bool = False):
        from ..interp.hooks import hooks

        if settings.folder is None:
            raise InputError("method 'sae' steers with a trained SAE: pass folder= (python -m explore sae train "
                             "writes one; the CLI's `sae steer --sae FOLDER` runs the benchmark)")
        sae = _sae(settings.folder)
        table = feature_table(pipe, settings.folder, settings.table_n, settings.table_seed)["features"]
        site = sae.explore["settings"]["site"]
        z0, c, p, _, _, same = conditions(items)
        g = settings.guidance
        steps = settings.render_steps
        seeds = [int(it.seed) + RENDER_SEED_OFFSET for it in items]
        x = torch.empty_like(z0)
        plain = [i for i in range(len(items)) if same[i]]
        if plain:
            x[plain] = render(pipe, z0[plain], c[plain], p[plain], settings.t_render, [seeds[i] for i in plain], g,
                              steps)
        trace: dict[str, list] = {"sae_error_before": [], "sae_error_after": []}
        errs = [(np.nan, np.nan)] * len(items)
        for i in tqdm([i for i in range(len(items)) if not same[i]], desc=self.name, disable=not progress,
                      leave=False):
            d = items[i].direction
            key_m, key_p = f"{d.attribute}={d.source}", f"{d.attribute}={d.target}"
            if key_m not in table or key_p not in table:
                raise InputError(f"the SAE's feature table has no feature for {key_m if key_m not in table else key_p}"
                                 f"; its factor values: {', '.join(sorted(table))}")
            fm, fp = table[key_m], table[key_p]
            m, stats = settings.features, []
            if m == 1:
                ratio = float(settings.scale) * fp["mean_active"] / max(fm["mean_active"], 1e-8)
                hook = swap_hook(sae, fm["feature"], fp["feature"], ratio, float(items[i].strength), stats)
            else:
                tm, tp = fm["top"][:m], fp["top"][:m]
                hook = swap_hook(sae, [r["feature"] for r in tm], [r["feature"] for r in tp], float(settings.scale),
                                 float(items[i].strength), stats, means=([r["mean_active"] for r in tm],
                                                                             [r["mean_active"] for r in tp]))
            with hooks(pipe, {site: hook}):
                x[i:i + 1] = render(pipe, z0[i:i + 1], c[i:i + 1], p[i:i + 1], settings.t_render, [seeds[i]], g,
                                    steps)
            errs[i] = tuple(np.mean(stats, axis=0)) if stats else (np.nan, np.nan)
        trace["sae_error_before"].append([e[0] for e in errs])
        trace["sae_error_after"].append([e[1] for e in errs])
        guidance = spec(pipe).guidance if g is None else g
        k = len(schedule(pipe, steps, t_start=settings.t_render, image_tokens=image_tokens(pipe, z0.shape))) - 1
        sequences = k * count_sequences(len(items), guidance, family(pipe))
        return x, trace, sequences


__all__ = ["SAESteer", "SAESteerSettings", "feature_table", "swap_hook"]
