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
from .settings import RENDER_SEED_OFFSET, SAESteerSettings

TABLE = "features_seed{seed}.json"


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
        if table.get("n") == n:
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
            auc = auroc_columns(rmax[has][:, live], (col == v)[has])
            j = int(live[np.nanargmax(auc)])
            features[f"{f}={v}"] = {"feature": j, "auroc": float(np.nanmax(auc)), "mean_active": float(mean_active[j])}
    table = {"n": n, "seed": seed, "site": rec["site"], "features": features}
    atomic_write_json(path, table)
    return table


def swap_hook(sae, remove: int, add: int, ratio: float, strength: float, stats: list | None = None):
    """The hook of one edit: ``x + λ z_remove(x) (ratio d_add - d_remove)`` per token (module docstring).
    ``stats`` (a list) receives, per call, the SAE's relative reconstruction error of the activations
    before and after the change (how far the steering moves them off what the SAE was trained on)."""
    from ..interp.sae import reconstruct

    W = sae.W_dec.detach()
    vec = ratio * W[add] - W[remove]

    def fn(x, *, site):
        if strength == 0 and stats is None:
            return None
        flat = x.reshape(-1, x.shape[-1]).float()
        z = sae.encode(flat)[:, remove]
        y = flat + strength * z[:, None] * vec.to(flat)
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
            ratio = float(settings.scale) * fp["mean_active"] / max(fm["mean_active"], 1e-8)
            stats: list = []
            with hooks(pipe, {site: swap_hook(sae, fm["feature"], fp["feature"], ratio, float(items[i].strength),
                                              stats)}):
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
