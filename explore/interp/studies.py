"""Whole studies on ShapesWorld, as the ``probe`` and ``geometry`` commands and the notebooks run them.

``probe_study``: where does each factor live? Activations of every site at a few noise levels for
``n`` clean renders with their full captions (or, ``captions="empty"``, with the empty prompt: what
the image stream carries on its own), one linear probe per (factor, site, t) on held-out
data. ``geometry_study``: what do editing directions look like? For every attribute, one value
pair edited on ``n`` sources: the text direction of each source's own prompt (word swapped) and
the HSDS image-side direction ``dz``; their consistency (same attribute vs others), PCA and UMAP.
``representation_study``: MIG / DCI / SAP of the probe activations, per site and per factor, and
whether the factors the representation separates best are the ones edits change best (SDE).
``attention_mask_study``: how well the model's own attention finds the edited object (IoU against
the exact masks). ``attention_binding_study`` (two-object worlds): does a word of one object
("red" of the red circle) attend to that object and not the other? ``preserve_span_study``: how
much of the exact preserved directions (the factor table) the ``preserve="auto"`` directions,
built from the prompt alone, span.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from ..editing.api import edit_batch
from ..editing.directions import text_direction
from ..editing.preserve import preserved_directions, span_share
from ..errors import InputError
from ..evaluation.disentanglement import dci, encode_factors, mig_per_factor, sap_per_factor
from ..evaluation.items import world_benchmark
from ..io import atomic_write_json, atomic_write_text, envelope, read_json, save_figure
from ..pipeline.latent import encode, encode_text
from ..pipeline.spec import spec
from ..worlds import require_world
from .attention import attention_map, mask_from_map, mask_layer, region_shares
from .geometry import consistency, direction_matrix, pca
from .probe import ActivationDataset, collect, probe_all


def _write_tables(out, name: str, res: dict, markdown) -> None:
    """``out/name.json`` and ``out/name.md`` (the study's tables), atomically; nothing when ``out`` is None."""
    if out is not None:
        atomic_write_json(Path(out) / f"{name}.json", res)
        atomic_write_text(Path(out) / f"{name}.md", markdown(res))


def _world(pipe, what: str):
    return require_world(pipe, f"the {what} study needs an embedded world's labels (--model shapes or shapes-pairs)")


def _probe_scenes(world, n: int, seed: int, captions: str) -> list:
    """The checks both probe studies make, then their ``n`` seeded scenes (the same for both)."""
    if n < 16:
        raise InputError(f"--n must be at least 16 for held-out probe accuracy, got {n}")
    if captions not in ("full", "empty"):
        raise InputError(f"captions must be 'full' or 'empty', got {captions!r}")
    rng = random.Random(f"probe-{seed}")
    return [world.sample(rng) for _ in range(n)]


def probe_study(pipe, n: int = 512, seed: int = 0, out: str | Path | None = None,
                timesteps=(0.25, 0.5, 0.75), batch_size: int = 64, progress: bool = True,
                captions: str = "full") -> dict:
    """Collect activations of ``n`` renders of the model's world and probe every factor at every site and t.

    ``captions``: ``"full"`` (each render with its full caption; the text stream then carries the
    labels) or ``"empty"`` (the empty prompt for every render: any factor the probes find came from
    the image, in the text stream through joint attention).
    """
    world = _world(pipe, "probe")
    t0 = time.perf_counter()
    scenes = _probe_scenes(world, n, seed, captions)
    folder = Path(out) / "activations" if out is not None else None
    data = collect(pipe, scenes, timesteps=timesteps, batch_size=batch_size, seed=seed, out=folder,
                   progress=progress, prompts="" if captions == "empty" else None)
    results = probe_all(data, progress=progress)
    sites = list(data.sites)
    factors = sorted(results.factors) if hasattr(results, "factors") else sorted(data.labels)
    accuracy = {f: {s: results.best_over_t(f, s)[1] for s in sites} for f in factors}
    by_t = {f: {s: {str(t): a for t, a in results.accuracy_by_t(f, s).items()} for s in sites} for f in factors}
    best = {f: dict(zip(("site", "t", "accuracy"), results.best(f))) for f in factors}
    res = envelope(spec(pipe).model_id, seed, {"n": n, "timesteps": list(timesteps), "pool": "mean",
                                              "captions": captions, "probe": "LogisticRegression, 25% held out"},
                   time.perf_counter() - t0, sites=sites, t=list(timesteps), accuracy=accuracy,
                   accuracy_by_t=by_t, best=best)
    if out is not None:
        out = Path(out)
        atomic_write_json(out / "probe.json", res)
        from ..views.plots import plot_accuracy  # matplotlib (~0.5 s): only when pictures are written

        save_figure(out / "probe.png", plot_accuracy(results))
    res["_results"] = results
    return res


def object_features(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One object's feature: the image tokens ``(T, dim)`` averaged with the share of each token's
    patch the object's pixel ``mask`` ``(H, W)`` covers (the token grid is row-major, square)."""
    side = int(round(len(tokens) ** 0.5))
    if side * side != len(tokens) or mask.shape[0] % side or mask.shape[1] % side:
        raise InputError(f"{len(tokens)} image tokens do not tile a {mask.shape} mask")
    cover = mask.reshape(side, mask.shape[0] // side, side, mask.shape[1] // side).mean(axis=(1, 3)).reshape(-1)
    if cover.sum() <= 0:
        raise InputError("the object's mask is empty: nothing to pool")
    return (cover / cover.sum()) @ tokens


def object_probe_study(pipe, n: int = 512, seed: int = 0, out: str | Path | None = None,
                       timesteps=(0.25, 0.5, 0.75), batch_size: int = 64, progress: bool = True,
                       captions: str = "empty") -> dict:
    """Per-object probes on a two-object world: each object's image tokens pooled over its own mask.

    One row per object of each of ``n`` renders; its labels are the object's own factors
    (``shape``, ``color``, ``size``, ``hpos``, ``vpos``, whatever the shape and wherever it is) and
    the other object's (``other.color``, ``other.size``): a probe that reads ``other.color`` from an
    object's own patches finds the other object's colour there (leakage in the representation;
    chance is about 1/(colours - 1), since the two colours differ). Image sites only; ``captions``
    as in `probe_study` (default ``"empty"``: what the image stream carries by itself).
    """
    world = _world(pipe, "object probe")
    if world.name != "pairs":
        raise InputError("the object probe needs a two-object world (--model shapes-pairs)")
    t0 = time.perf_counter()
    scenes = _probe_scenes(world, n, seed, captions)
    data = collect(pipe, scenes, sites="*.img", timesteps=timesteps, batch_size=batch_size, seed=seed,
                   pool="token", progress=progress, prompts="" if captions == "empty" else None)
    size = spec(pipe).resolution
    rows: list[tuple[int, np.ndarray]] = []  # (scene index, pooling weights' source mask)
    labels: dict[str, list[str]] = {k: [] for k in ("shape", "color", "size", "hpos", "vpos",
                                                     "other.color", "other.size")}
    for i, sc in enumerate(scenes):
        lab = world.labels(sc)
        shapes = list(dict.fromkeys(k.split(".")[0] for k in lab if "." in k))
        for own, other in ((shapes[0], shapes[1]), (shapes[1], shapes[0])):
            rows.append((i, world.mask(sc, size, f"{own}.color")))
            labels["shape"].append(own)
            for f in ("color", "size", "hpos", "vpos"):
                labels[f].append(lab[f"{own}.{f}"])
            labels["other.color"].append(lab[f"{other}.color"])
            labels["other.size"].append(lab[f"{other}.size"])
    features = {}
    for (site, t) in data.keys():
        tok = data.get(site, t)
        features[(site, t)] = np.stack([object_features(tok[i], m) for i, m in rows]).astype(np.float32)
    pooled = ActivationDataset(features, labels, prompts=[data.prompts[i] for i, _ in rows], pool="object",
                               model_id=data.model_id, settings={**data.settings, "pool": "object"})
    results = probe_all(pooled, progress=progress)
    sites = list(pooled.sites)
    factors = list(labels)
    accuracy = {f: {st: results.best_over_t(f, st)[1] for st in sites} for f in factors}
    best = {f: dict(zip(("site", "t", "accuracy"), results.best(f))) for f in factors}
    chance = {f: max(labels[f].count(v) for v in set(labels[f])) / len(labels[f]) for f in factors}
    res = envelope(spec(pipe).model_id, seed, {"n": n, "rows": len(rows), "timesteps": list(timesteps),
                                              "pool": "object mask", "captions": captions,
                                              "probe": "LogisticRegression, 25% held out"},
                   time.perf_counter() - t0, sites=sites, accuracy=accuracy, best=best, majority=chance)
    if out is not None:
        out = Path(out)
        atomic_write_json(out / "probe_objects.json", res)
        atomic_write_text(out / "probe_objects.md", object_probe_markdown(res))
        from ..views.plots import plot_accuracy

        save_figure(out / "probe_objects.png", plot_accuracy(results))
    res["_results"] = results
    return res


def object_probe_markdown(res: dict) -> str:
    sites = res["sites"]
    st = res["settings"]
    lines = [f"# Per-object probes (object-mask pooled image tokens, n = {st['n']} scenes, {st['rows']} objects, "
             f"captions {st['captions']}, best t per site)", "",
             "| factor | majority | " + " | ".join(s.replace("transformer_blocks.", "b") for s in sites) + " |",
             "|---|---|" + "---|" * len(sites)]
    for f, per in res["accuracy"].items():
        lines.append(f"| {f} | {res['majority'][f]:.2f} | " + " | ".join(f"{per[s]:.2f}" for s in sites) + " |")
    return "\n".join(lines) + "\n"


def geometry_study(pipe, n: int = 8, seed: int = 0, out: str | Path | None = None, method: str = "hsds",
                   progress: bool = True, **edit_settings) -> dict:
    """Text and HSDS directions of one value pair per attribute over ``n`` sources; consistency, PCA, UMAP."""
    world = _world(pipe, "geometry")
    if n < 2:
        raise InputError(f"--n must be at least 2 (consistency compares sources), got {n}")
    t0 = time.perf_counter()
    # items: attribute a takes its first benchmark value pair for all n sources
    items = []
    for a in world.editable():
        pool = world_benchmark(world, 6 * n * 6, seed=seed, attributes=[a])
        first = (pool[0].source, pool[0].target)
        items += [it for it in pool if (it.source, it.target) == first][:n]
    sources = [encode(pipe, it.load_image(), it.prompt) for it in items]
    dirs = [text_direction(pipe, it.source, it.target, attribute=it.attribute) for it in items]
    out_edit = edit_batch(pipe, sources, dirs, [1.0] * len(items), method, seeds=[it.seed for it in items],
                          labels=[it.labels for it in items], progress=progress, **edit_settings)
    dz = (out_edit["z"] - torch.cat([s.z for s in sources]).float()).cpu().numpy().reshape(len(items), -1)
    # per-source text directions: the source's own prompt against it with the edit made
    text_rows = []
    for it in items:
        c, p = encode_text(pipe, [it.prompt, it.edited_prompt()])
        text_rows.append(np.concatenate([(c[1] - c[0]).flatten().cpu().numpy(), (p[1] - p[0]).cpu().numpy()]))
    text_x = np.stack(text_rows)
    attrs = [it.attribute for it in items]
    template_dirs = [text_direction(pipe, a, b, attribute=k) for k, (a, b) in
                     {it.attribute: (it.source, it.target) for it in items}.items()]
    lib_x, lib_info = direction_matrix(template_dirs, kind="dc+dp")
    res_text = consistency(text_x, attrs, seed=seed)
    res_dz = consistency(dz, attrs, seed=seed)
    _, ev_text = pca(text_x, n_components=min(10, len(items) - 1))
    _, ev_dz = pca(dz, n_components=min(10, len(items) - 1))
    res = envelope(
        spec(pipe).model_id, seed, {"n_per_attribute": n, "method": method, **out_edit["settings"]},
        time.perf_counter() - t0,
        pairs={it.attribute: f"{it.source}->{it.target}" for it in items},
        consistency={"text": res_text, "hsds_dz": res_dz},
        explained_variance={"text": [float(x) for x in ev_text], "hsds_dz": [float(x) for x in ev_dz]},
        template_directions=[i._asdict() for i in lib_info],
    )
    if out is not None:
        out = Path(out)
        atomic_write_json(out / "geometry.json", res)
        from ..views.plots import geometry_figure  # matplotlib (~0.5 s): only when pictures are written

        fig = geometry_figure(dz, attrs, title="HSDS image-side directions dz")
        save_figure(out / "geometry.png", fig)
        save_figure(out / "geometry_text.png", geometry_figure(text_x, attrs, title="text directions (Δc, Δp)"))
    res["_arrays"] = {"text": text_x, "dz": dz, "attributes": attrs, "template": lib_x}
    return res


def representation_study(activations, results: Sequence = (), *, t: float = 0.5, sites: Sequence[str] | None = None,
                         n_components: int = 10, out: str | Path | None = None) -> dict:
    """MIG / DCI / SAP of probe activations, per site and per factor, beside the SDE ranking of edits.

    ``activations``: an `explore.interp.activations.ActivationDataset` or the folder `collect` (``probe --out``)
    wrote. Each site's features at noise level ``t`` are reduced to ``n_components`` principal
    components (the metrics assume a handful of scalar codes) and scored against the items' exact
    labels. ``results``: ``evaluate`` results (dicts or paths to ``results.json``); for each method,
    the per-attribute SDE is ranked against each per-factor representation score (Spearman's ρ over
    the factors, per site): does the factor the representation separates best edit best?

    Items that do not carry every factor (a two-object world: ``circle.color`` is ``""`` where the
    scene has no circle) are scored in groups of items that carry the same factors (each group with
    its own principal components); a site's figures are the item-weighted means over the groups,
    a factor's over the groups that carry it (``groups`` lists them). A world whose items all carry
    every factor is one group.
    """
    t0 = time.perf_counter()
    data = activations if isinstance(activations, ActivationDataset) else ActivationDataset.load(activations)
    site_list = list(sites) if sites is not None else list(data.sites)
    unknown = [s for s in site_list if s not in data.sites]
    if unknown:
        raise InputError(f"unknown sites {unknown}; the activations have {data.sites}")
    groups = _factor_groups(data.labels, len(data))
    if not groups:
        raise InputError("the activations carry no factor labels with two or more values on 20 or more items")
    factors = list(dict.fromkeys(f for g_factors, _ in groups for f in g_factors))
    per_site = {s: factor_scores(data.get(s, t), data.labels, n_components, groups=groups) for s in site_list}
    ranking: dict[str, dict] = {}
    for r in results:
        if not isinstance(r, dict) and not Path(r).is_file():
            raise InputError(f"no results file at {r} (evaluate --out DIR writes DIR/results.json)")
        res = r if isinstance(r, dict) else read_json(r)
        if "methods" not in res:
            raise InputError(f"{r if not isinstance(r, dict) else 'results'} is not an evaluate results.json")
        name = f"seed {res.get('seed')}" if res.get("seed") is not None else f"results {len(ranking)}"
        for method, mr in res["methods"].items():
            sde_k = [(mr["per_attribute"].get(f) or {}).get("sde") for f in factors]
            if any(v is None for v in sde_k):
                continue
            rho = {}
            for s in site_list:
                rho[s] = {}
                for key in ("mig", "sap", "dci_c", "dci_i"):
                    x = [per_site[s]["per_factor"][f][key] for f in factors]
                    val = spearmanr(x, sde_k).statistic if np.ptp(x) > 0 and np.ptp(sde_k) > 0 else float("nan")
                    rho[s][key] = float(val)
            ranking.setdefault(name, {})[method] = {"sde": dict(zip(factors, sde_k)), "spearman": rho}
    captions = "empty" if set(data.prompts) == {""} else "given"
    res = envelope(data.model_id or "unknown", int(data.settings.get("seed", 0)),
                   {"t": t, "n_components": n_components, "captions": captions, "n": len(data)},
                   time.perf_counter() - t0, factors=factors, sites=site_list, per_site=per_site,
                   ranking=ranking, groups=[{"factors": list(g), "n": len(idx)} for g, idx in groups])
    _write_tables(out, "representation", res, representation_markdown)
    return res


def factor_scores(X, labels: dict, n_components: int | None = 10, *, groups=None, dci_model: str = "gbt") -> dict:
    """MIG / DCI (disentanglement, completeness, informativeness) / SAP of features ``X`` ``(n, dim)``
    against the items' exact labels (factor -> one value per item), overall and per factor.

    ``n_components``: reduce ``X`` to that many principal components first (the metrics assume a
    handful of scalar codes; the representation study's 10), or None to score the features as
    they are (e.g. SAE codes). Items that do not carry every factor are scored in groups of items
    carrying the same factors (`representation_study`); the figures are item-weighted means.
    ``dci_model``: `explore.evaluation.disentanglement.dci`'s classifier (default disentanglement_lib's GBT).
    """
    X = np.asarray(X, dtype=np.float64)
    groups = groups if groups is not None else _factor_groups(labels, len(X))
    if not groups:
        raise InputError("the items carry no factor labels with two or more values on 20 or more items")
    factors = list(dict.fromkeys(f for g_factors, _ in groups for f in g_factors))
    parts = []
    for g_factors, idx in groups:
        codes, _ = encode_factors([{f: labels[f][i] for f in g_factors} for i in idx], keys=g_factors)
        F = pca(X[idx], n_components)[0] if n_components else X[idx]
        d = dci(F, codes, model=dci_model)
        m_k, s_k = mig_per_factor(F, codes), sap_per_factor(F, codes)  # `mig` / `sap` are their means
        parts.append((len(idx), {
            "mig": float(np.mean(m_k)), "dci_d": d["disentanglement"], "dci_c": d["completeness"],
            "dci_i": d["informativeness"], "sap": float(np.mean(s_k)),
            "per_factor": {f: {"mig": float(m_k[k]), "sap": float(s_k[k]),
                               "dci_c": float(d["completeness_per_factor"][k]),
                               "dci_i": float(d["informativeness_per_factor"][k])}
                           for k, f in enumerate(g_factors)}}))
    return _weighted_mean(parts, factors)


def _factor_groups(labels: dict, n: int, min_items: int = 20) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """Items grouped by the factors they carry (a non-empty label); per group the factors with two or
    more values among its items, and the items' indices. Groups under ``min_items`` items are left out."""
    by_pattern: dict[tuple[str, ...], list[int]] = {}
    for i in range(n):
        by_pattern.setdefault(tuple(f for f in labels if labels[f][i] != ""), []).append(i)
    groups = []
    for pattern, idx in by_pattern.items():
        if len(idx) < min_items:
            continue
        varied = tuple(f for f in pattern if len({labels[f][i] for i in idx}) >= 2)
        if varied:
            groups.append((varied, np.asarray(idx)))
    return groups


def _weighted_mean(parts: list[tuple[int, dict]], factors: list[str]) -> dict:
    """Item-weighted means of per-group site figures; a factor's over the groups that carry it."""
    w = np.array([n for n, _ in parts], dtype=float)
    out = {key: float(np.average([p[key] for _, p in parts], weights=w))
           for key in ("mig", "dci_d", "dci_c", "dci_i", "sap")}
    out["per_factor"] = {}
    for f in factors:
        have = [(n, p["per_factor"][f]) for n, p in parts if f in p["per_factor"]]
        wf = np.array([n for n, _ in have], dtype=float)
        out["per_factor"][f] = {key: float(np.average([v[key] for _, v in have], weights=wf))
                                for key in ("mig", "sap", "dci_c", "dci_i")}
    return out


def representation_markdown(res: dict) -> str:
    f = res["factors"]
    lines = [f"# MIG / DCI / SAP of activations (t = {res['settings']['t']}, {res['settings']['n_components']} PCs, "
             f"n = {res['settings']['n']}, captions {res['settings']['captions']})", "",
             "| site | MIG | DCI-D | DCI-C | DCI-I | SAP |", "|---|---|---|---|---|---|"]
    for s, v in res["per_site"].items():
        lines.append(f"| {s} | {v['mig']:.2f} | {v['dci_d']:.2f} | {v['dci_c']:.2f} | {v['dci_i']:.2f} | "
                     f"{v['sap']:.2f} |")
    lines += ["", "Per factor, mean over sites (MIG / SAP / DCI-C / DCI-I):", "", "| " + " | ".join(f) + " |",
              "|" + "---|" * len(f)]
    cells = []
    for k in f:
        m = {key: np.mean([v["per_factor"][k][key] for v in res["per_site"].values()])
             for key in ("mig", "sap", "dci_c", "dci_i")}
        cells.append(f"{m['mig']:.2f} / {m['sap']:.2f} / {m['dci_c']:.2f} / {m['dci_i']:.2f}")
    lines.append("| " + " | ".join(cells) + " |")
    for name, per_method in res["ranking"].items():
        lines += ["", f"Spearman ρ between per-factor score and per-attribute SDE ({name}), mean over sites:", "",
                  "| method | SDE per factor | ρ MIG | ρ SAP | ρ DCI-C | ρ DCI-I |", "|---|---|---|---|---|---|"]
        for method, v in per_method.items():
            sde_cells = ", ".join(f"{k} {v['sde'][k]:.2f}" for k in f)
            rho = {key: np.nanmean([x[key] for x in v["spearman"].values()])
                   for key in ("mig", "sap", "dci_c", "dci_i")}
            lines.append(f"| {method} | {sde_cells} | {rho['mig']:+.2f} | {rho['sap']:+.2f} | {rho['dci_c']:+.2f} | "
                         f"{rho['dci_i']:+.2f} |")
    return "\n".join(lines) + "\n"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def attention_mask_study(pipe, n: int = 48, seed: int = 0, timesteps: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
                         out: str | Path | None = None, progress: bool = True) -> dict:
    """How well the model's own attention finds the object, against the world's exact masks.

    For ``n`` renders with full captions and every factor word of the caption: the attention of
    image patches on the word (`explore.interp.attention.attention_map`, all layers and
    ``timesteps`` in one call), thresholded (Otsu) into a mask for each setting — one layer at one
    ``t``, one layer over every ``t``, every layer at one ``t``, and every layer and ``t`` — and its
    IoU with the exact object mask (for background words: with the complement, the background).
    Returns per word factor and setting the mean IoU, the best setting over the object factors, and
    the IoU of the default (`explore.interp.attention.attention_mask`'s).
    """
    world = _world(pipe, "attention-mask")
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    t0 = time.perf_counter()
    rng = random.Random(f"attention-masks-{seed}")
    ts = [round(float(t), 4) for t in timesteps]
    scores: dict[str, dict[str, list[float]]] = {}
    for i in tqdm(range(n), desc="attention masks", disable=not progress):
        scene = world.sample(rng)
        prompt = world.caption(scene, template=0)
        image = world.render(scene, spec(pipe).resolution)
        exact_objects = world.mask(scene, spec(pipe).resolution)
        latent = encode(pipe, image, prompt)
        for key, value in world.labels(scene).items():
            factor = key.split(".", 1)[-1]
            if value not in prompt.split():
                continue
            exact = world.mask(scene, spec(pipe).resolution, key)
            truth = ~exact_objects if factor == "background" else exact
            maps = attention_map(pipe, latent, value, t=ts, seed=seed + i)
            layers = maps.layers()
            settings = {f"{name} t={t:g}": maps.mean([name], [t]) for name in layers for t in ts}
            settings.update({f"{name} all t": maps.mean([name], None) for name in layers})
            settings.update({f"all layers t={t:g}": maps.mean(None, [t]) for t in ts})
            settings["all layers, all t"] = maps.mean()
            for name, amap in settings.items():
                scores.setdefault(factor, {}).setdefault(name, []).append(iou(mask_from_map(amap, maps.image_size),
                                                                              truth))
    table = {f: {s: float(np.mean(v)) for s, v in per.items()} for f, per in scores.items()}
    object_factors = [f for f in table if f != "background"]
    names = list(next(iter(table.values())))
    mean_objects = {s: float(np.mean([table[f][s] for f in object_factors])) for s in names}
    best = max(mean_objects, key=mean_objects.get)
    default = {kind: f"{mask_layer(pipe, kind)} all t" for kind in ("object", "background")}
    default_iou = {"object": mean_objects.get(default["object"]),
                   "background": table.get("background", {}).get(default["background"])}
    res = envelope(spec(pipe).model_id, seed, {"n": n, "timesteps": ts, "threshold": "otsu", "caption": "template 0"},
                   time.perf_counter() - t0, iou=table, mean_over_object_factors=mean_objects, best=best,
                   best_iou=mean_objects[best], default=default, default_iou=default_iou)
    _write_tables(out, "attention_masks", res, attention_mask_markdown)
    return res


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def attention_mask_markdown(res: dict) -> str:
    factors = list(res["iou"])
    rows = sorted(res["mean_over_object_factors"], key=res["mean_over_object_factors"].get, reverse=True)
    lines = [f"# Attention masks vs exact masks (IoU), n = {res['settings']['n']}, seed {res['seed']}", "",
             f"Default (`attention_mask`): object words {res['default']['object']} "
             f"({_fmt(res['default_iou']['object'])}), background words {res['default']['background']} "
             f"({_fmt(res['default_iou']['background'])}); best over the object factors: {res['best']} "
             f"({res['best_iou']:.3f}).", "",
             "| setting | mean over object factors | " + " | ".join(factors) + " |",
             "|---|---|" + "---|" * len(factors)]
    for s in rows:
        lines.append(f"| {s} | {res['mean_over_object_factors'][s]:.3f} | " +
                     " | ".join(f"{res['iou'][f][s]:.3f}" for f in factors) + " |")
    return "\n".join(lines) + "\n"


def attention_binding_study(pipe, n: int = 48, seed: int = 0, timesteps: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
                            out: str | Path | None = None, progress: bool = True) -> dict:
    """Attribute binding in attention: does each object's word attend to its own object?

    For ``n`` two-object renders with full captions (template 0) and every word that names one
    object only (its shape, its colour, its size word when the other's differs): the word's
    attention over image patches (`attention_map`, every layer and ``timesteps`` in one call),
    and the share of it on the word's own object and on the other object (`region_shares`, exact
    masks). Per factor and layer (and all layers): ``own``, ``other``, ``binding`` = own / (own +
    other), its ``chance`` (the own object's area / both areas: a map that ignores the word), and
    ``wins`` (the share of words with own > other).
    """
    world = _world(pipe, "attention-binding")
    if world.name != "pairs":
        raise InputError("the attention-binding study needs a two-object world (--model shapes-pairs)")
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    t0 = time.perf_counter()
    res_px = spec(pipe).resolution
    rng = random.Random(f"attention-binding-{seed}")
    ts = [round(float(t), 4) for t in timesteps]
    rows: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for i in tqdm(range(n), desc="attention binding", disable=not progress):
        scene = world.sample(rng)
        prompt = world.caption(scene, template=0, rng=rng)  # seeded object order
        labels = world.labels(scene)
        shapes = [k.split(".")[0] for k in labels if k.endswith(".color")]
        masks = {sh: world.mask(scene, res_px, f"{sh}.color") for sh in shapes}
        latent = encode(pipe, world.render(scene, res_px), prompt)
        words = prompt.split()
        for sh in shapes:
            other = next(o for o in shapes if o != sh)
            area_own, area_other = float(masks[sh].sum()), float(masks[other].sum())
            for factor, word in (("shape", sh), ("color", labels[f"{sh}.color"]), ("size", labels.get(f"{sh}.size"))):
                if word is None or words.count(word) != 1:
                    continue  # not named, or named for both objects: not a word of one object
                maps = attention_map(pipe, latent, word, t=ts, seed=seed + i)
                for layer in [*maps.layers(), "all layers"]:
                    sh_ = region_shares(maps, {"own": masks[sh], "other": masks[other]},
                                        None if layer == "all layers" else [layer])
                    rows.setdefault(factor, {}).setdefault(layer, []).append(
                        (sh_["own"], sh_["other"], area_own / max(area_own + area_other, 1.0)))
    if not rows:
        raise InputError("no word names one object only in these captions")
    table: dict[str, dict[str, dict[str, float]]] = {}
    for factor, per in rows.items():
        for layer, vals in per.items():
            a = np.asarray(vals)
            own, other = a[:, 0], a[:, 1]
            table.setdefault(factor, {})[layer] = {
                "own": float(own.mean()), "other": float(other.mean()),
                "binding": float(np.mean(own / np.maximum(own + other, 1e-12))), "chance": float(a[:, 2].mean()),
                "wins": float(np.mean(own > other)), "n": len(vals)}
    best = {f: max((la for la in per if la != "all layers"), key=lambda la: per[la]["binding"])
            for f, per in table.items()}
    res = envelope(spec(pipe).model_id, seed, {"n": n, "timesteps": ts, "caption": "template 0"},
                   time.perf_counter() - t0, shares=table, best_layer=best)
    _write_tables(out, "attention_binding", res, attention_binding_markdown)
    return res


def attention_binding_markdown(res: dict) -> str:
    factors = list(res["shares"])
    layers = list(next(iter(res["shares"].values())))
    lines = [f"# Attention binding, n = {res['settings']['n']}, seed {res['seed']}", "",
             "Per layer: binding = own / (own + other) of the word's attention on the two objects "
             "(chance: the own object's share of their area); in brackets, the share of words whose "
             "own object gets more than the other.", "",
             "| layer | " + " | ".join(factors) + " |", "|---|" + "---|" * len(factors)]
    for la in layers:
        cells = [f"{res['shares'][f][la]['binding']:.2f} ({res['shares'][f][la]['wins']:.2f})"
                 if la in res["shares"][f] else "-" for f in factors]
        lines.append(f"| {la} | " + " | ".join(cells) + " |")
    lines.append("| chance | " + " | ".join(f"{res['shares'][f]['all layers']['chance']:.2f}" for f in factors)
                 + " |")
    return "\n".join(lines) + "\n"


def preserve_span_study(pipe, n: int = 120, seed: int = 1, auto: str = "auto", out: str | Path | None = None,
                        progress: bool = True) -> dict:
    """How much of the exact preserved directions the ``auto`` ones span, on a world's benchmark items.

    For each of the ``n`` items of `explore.evaluation.items.world_benchmark` (the items ``evaluate``
    edits): the exact preserved set (every value pair of every other factor, from the factor table)
    and the ``auto`` set (built from the item's prompt alone, `explore.editing.preserve.auto_directions`);
    for every exact ``Δc_j`` the share of its norm inside the auto span (`span_share`). Reported as
    the mean share per preserved factor, per edited attribute and overall.
    """
    world = _world(pipe, "preserve-span")
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    t0 = time.perf_counter()
    items = world_benchmark(world, n, seed, size=spec(pipe).resolution)
    directions: dict = {}
    by_factor: dict[str, list[float]] = {}
    by_edit: dict[str, list[float]] = {}
    sizes = []
    for it in tqdm(items, desc="preserved spans", disable=not progress):
        key = (it.attribute, it.source, it.target)
        if key not in directions:
            directions[key] = text_direction(pipe, it.source, it.target, attribute=it.attribute)
        d = directions[key]
        exact = preserved_directions(pipe, d, None, it.labels)
        basis = preserved_directions(pipe, d, auto, it.labels, prompt=it.prompt)
        sizes.append((len(exact), len(basis)))
        for e, share in zip(exact, span_share(exact, basis)):
            by_factor.setdefault(e.attribute, []).append(share)
            by_edit.setdefault(it.attribute, []).append(share)
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    every = [s for v in by_factor.values() for s in v]
    res = envelope(spec(pipe).model_id, seed, {"n": n, "auto": auto}, time.perf_counter() - t0,
                   mean_share=mean(every), per_preserved_factor={f: mean(v) for f, v in by_factor.items()},
                   per_edited_attribute={a: mean(v) for a, v in by_edit.items()},
                   n_directions={"exact_mean": float(np.mean([a for a, _ in sizes])),
                                 "auto_mean": float(np.mean([b for _, b in sizes]))})
    _write_tables(out, "preserve_span", res, preserve_span_markdown)
    return res


def preserve_span_markdown(res: dict) -> str:
    lines = [f"# Share of the exact preserved directions inside the {res['settings']['auto']!r} span, "
             f"n = {res['settings']['n']}, seed {res['seed']}", "",
             f"Mean over every exact direction: **{res['mean_share']:.3f}** "
             f"({res['n_directions']['exact_mean']:.1f} exact vs {res['n_directions']['auto_mean']:.1f} auto "
             "directions per item).", "",
             "| preserved factor | mean share |", "|---|---|"]
    lines += [f"| {f} | {v:.3f} |" for f, v in res["per_preserved_factor"].items()]
    lines += ["", "| edited attribute | mean share of its preserved directions |", "|---|---|"]
    lines += [f"| {a} | {v:.3f} |" for a, v in res["per_edited_attribute"].items()]
    return "\n".join(lines) + "\n"
