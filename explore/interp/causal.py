"""Causal studies on the embedded worlds, where every factor can be read back from pixels.

``causal_trace_study``: which block, stream and noise level *causes* an attribute? For each item,
two generations with the same seed: the *corrupted* one from the source caption (``a red
circle``) and the *clean* one from the edited caption (``a blue circle``). One site (block x
stream) in one window of ``t`` of the clean run is restored into the corrupted run (`patch`), the
image is rendered and the world's reader reads the attribute: the share of the edit the site
restores. The reverse (``noising``: the corrupted site written into the clean run) gives the share
of the edit that site is necessary for. Only items whose clean and corrupted generations read the
two values count (the edit must exist to be restored). On a two-object world the reader also says
whether the value moved to the right object or to the other one.

``vital_blocks_study``: Stable Flow's test. Each block is bypassed in turn (`bypass`) through a
whole generation; per attribute, the share of items whose reading changes against the generation
without bypass, and the mean pixel change.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..io import atomic_write_json, atomic_write_text, envelope
from ..pipeline.sampling import generate
from ..pipeline.spec import spec
from ..worlds import require_world
from .hooks import resolve_sites, run_with_cache
from .patching import blocks, bypass, patch

WINDOWS = ((0.67, 1.0), (0.34, 0.66), (0.0, 0.33))  # flow sigma: early (noisy), middle, late


def _world(pipe):
    return require_world(pipe, "causal studies read attributes from pixels: they need an embedded world "
                               "(--model shapes or shapes-pairs)")


def _factor(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _object(key: str) -> str | None:
    return key.rsplit(".", 1)[0] if "." in key else None


def edit_items(world, factor: str, n: int, rng: random.Random) -> list[dict]:
    """``n`` edits of ``factor`` (dicts: ``key``, ``v_minus``, ``v_plus``, ``source`` and ``edited`` captions,
    template 0) on seeded scenes whose edit is a valid scene."""
    keys = [k for k in world.keys() if _factor(k) == factor]
    items = []
    for _ in range(n):
        key = rng.choice(keys)
        values = list(world.values(key))
        v_minus, v_plus = rng.sample(values, 2)
        scene = world.source_scene(rng, key, v_minus, v_plus)
        prompt = world.caption(scene, template=0)
        items.append({"key": key, "v_minus": v_minus, "v_plus": v_plus, "source": prompt,
                      "edited": world.edited_caption(prompt, key, v_plus)})
    return items


def _images(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int | None) -> np.ndarray:
    return np.asarray(generate(pipe, list(prompts), seed=list(seeds), steps=steps, output_type="np"))


def _reads(world, images: np.ndarray) -> list[dict]:
    return [world.read((np.clip(im, 0, 1) * 255).round().astype(np.uint8)) for im in images]


def _moved(world, item: dict, reading: dict) -> tuple[bool, bool]:
    """(the edited key reads v+, another object's key of the same factor reads v+ where it did not)."""
    right = reading.get(item["key"]) == item["v_plus"]
    obj, factor = _object(item["key"]), _factor(item["key"])
    wrong = obj is not None and any(
        reading.get(k) == item["v_plus"] and item.get("other", {}).get(k) != item["v_plus"]
        for k in world.keys() if _factor(k) == factor and _object(k) not in (None, obj))
    return right, wrong


def causal_trace_study(pipe, factors: Sequence[str] | None = None, n: int = 24, seed: int = 0,
                       windows: Sequence[tuple[float, float]] = WINDOWS, steps: int | None = None,
                       out: str | Path | None = None, progress: bool = True) -> dict:
    """Restore one (block x stream) x ``t`` window of the clean (edited) run into the corrupted one.

    Returns per factor: ``n_valid`` (items whose edit exists), ``restored[site][window]`` (share of
    valid items whose patched corrupted run reads the edited value; ``denoising``),
    ``necessary[site][window]`` (share of valid items whose clean run patched with the corrupted
    site loses the edited value; ``noising``) and, on a two-object world, ``wrong_object`` (share
    whose value appears on the other object instead).
    """
    world = _world(pipe)
    factors = list(factors) if factors else list(dict.fromkeys(_factor(k) for k in world.keys()))
    known = {_factor(k) for k in world.keys()}
    bad = [f for f in factors if f not in known]
    if bad:
        raise InputError(f"unknown factor(s) {bad}; this world has {sorted(known)}")
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    t0 = time.perf_counter()
    site_list = resolve_sites(pipe, None)
    windows = [tuple(float(x) for x in w) for w in windows]
    labels = [f"{lo:g}-{hi:g}" for lo, hi in windows]
    table: dict = {}
    jobs = len(factors) * (1 + 2 * len(site_list) * len(windows))
    bar = tqdm(total=jobs, desc="causal trace", disable=not progress)
    for factor in factors:
        rng = random.Random(f"causal-{seed}-{factor}")
        items = edit_items(world, factor, n, rng)
        seeds = [seed * 100_000 + i for i in range(n)]
        corrupt = [it["source"] for it in items]
        clean = [it["edited"] for it in items]
        img_c, cache_c = run_with_cache(pipe, lambda c=corrupt, s=seeds: _images(pipe, c, s, steps), branch="all")
        img_e, cache_e = run_with_cache(pipe, lambda c=clean, s=seeds: _images(pipe, c, s, steps), branch="all")
        bar.update(1)
        read_c, read_e = _reads(world, img_c), _reads(world, img_e)
        valid = [i for i, it in enumerate(items)
                 if read_c[i].get(it["key"]) == it["v_minus"] and read_e[i].get(it["key"]) == it["v_plus"]]
        for i, it in enumerate(items):
            it["other"] = {k: read_c[i].get(k) for k in world.keys()}
        restored: dict = {}
        necessary: dict = {}
        wrong: dict = {}
        for site in site_list:
            for (lo, hi), label in zip(windows, labels):
                with patch(pipe, {site: cache_e}, timesteps=(lo, hi), branch="all"):
                    reads = _reads(world, _images(pipe, corrupt, seeds, steps))
                with patch(pipe, {site: cache_c}, timesteps=(lo, hi), branch="all"):
                    back = _reads(world, _images(pipe, clean, seeds, steps))
                bar.update(2)
                moved = [_moved(world, items[i], reads[i]) for i in valid]
                restored.setdefault(site, {})[label] = float(np.mean([m[0] for m in moved])) if valid else None
                wrong.setdefault(site, {})[label] = float(np.mean([m[1] for m in moved])) if valid else None
                necessary.setdefault(site, {})[label] = (
                    float(np.mean([back[i].get(items[i]["key"]) != items[i]["v_plus"] for i in valid]))
                    if valid else None)
        table[factor] = {"n": n, "n_valid": len(valid), "restored": restored, "necessary": necessary,
                         "wrong_object": wrong if any(_object(k) for k in world.keys()) else None}
    bar.close()
    res = envelope(spec(pipe).model_id, seed, {"n": n, "windows": labels, "steps": steps, "factors": factors,
                                                "caption": "template 0", "branch": "all"},
                   time.perf_counter() - t0, world=world.name, sites=site_list, factors=table)
    if out is not None:
        _write(out, "causal_trace", res, causal_trace_markdown)
    return res


def vital_blocks_study(pipe, n: int = 24, seed: int = 0, steps: int | None = None, threshold: float = 0.2,
                       out: str | Path | None = None, progress: bool = True) -> dict:
    """Bypass each block through a whole generation; per attribute, the share of items whose reading changes.

    ``vital[key_factor]``: the blocks whose bypass changes that factor's reading in at least
    ``threshold`` of the items. ``pixel_change[block]``: mean absolute pixel difference (0-1 scale).
    """
    world = _world(pipe)
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    t0 = time.perf_counter()
    rng = random.Random(f"vital-{seed}")
    scenes = [world.sample(rng) for _ in range(n)]
    prompts = [world.caption(s, template=0) for s in scenes]
    seeds = [seed * 100_000 + i for i in range(n)]
    names = blocks(pipe)
    ref = _images(pipe, prompts, seeds, steps)
    ref_reads = _reads(world, ref)
    factors = list(dict.fromkeys(_factor(k) for k in world.keys()))
    change: dict = {}
    pixels: dict = {}
    for name in tqdm(names, desc="vital blocks", disable=not progress):
        with bypass(pipe, name):
            imgs = _images(pipe, prompts, seeds, steps)
        reads = _reads(world, imgs)
        pixels[name] = float(np.abs(imgs - ref).mean())
        per: dict = {}
        for f in factors:
            flips = [reads[i].get(k) != ref_reads[i].get(k) for i in range(n)
                     for k in world.keys(world.labels(scenes[i])) if _factor(k) == f]
            per[f] = float(np.mean(flips)) if flips else None
        change[name] = per
    vital = {f: [b for b in names if (change[b][f] or 0) >= threshold] for f in factors}
    accuracy = {f: float(np.mean([ref_reads[i].get(k) == v for i in range(n)
                                  for k, v in world.labels(scenes[i]).items() if _factor(k) == f]))
                for f in factors}
    res = envelope(spec(pipe).model_id, seed, {"n": n, "steps": steps, "threshold": threshold,
                                                "caption": "template 0"},
                   time.perf_counter() - t0, world=world.name, blocks=names, change=change, pixel_change=pixels,
                   vital=vital, reference_accuracy=accuracy)
    if out is not None:
        _write(out, "vital_blocks", res, vital_blocks_markdown)
    return res


def _write(out, name: str, res: dict, markdown) -> None:
    """``out/name.json``, ``.md`` and ``.png`` (the figure is drawn by ``views``: a later stage, imported here)."""
    from ..io import save_figure
    from ..views.causal_plots import causal_trace_figure, vital_blocks_figure

    out = Path(out)
    atomic_write_json(out / f"{name}.json", res)
    atomic_write_text(out / f"{name}.md", markdown(res))
    fig = causal_trace_figure(res) if name == "causal_trace" else vital_blocks_figure(res)
    save_figure(out / f"{name}.png", fig)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}"


def causal_trace_markdown(res: dict) -> str:
    windows = res["settings"]["windows"]
    lines = [f"# Causal trace on {res['world']} ({res['model']}, seed {res['seed']})", "",
             "Share of the edit (%) restored by patching one site of the clean (edited-caption) run into "
             "the corrupted (source-caption) run over one window of t; in brackets, the share lost when the "
             "corrupted site is written into the clean run.", ""]
    for factor, r in res["factors"].items():
        lines += [f"## {factor} (valid items {r['n_valid']} of {r['n']})", "",
                  "| site | " + " | ".join(f"t {w}" for w in windows) + " |", "|---|" + "---|" * len(windows)]
        for site in res["sites"]:
            cells = [f"{_pct(r['restored'][site][w])} ({_pct(r['necessary'][site][w])})" for w in windows]
            lines.append(f"| {site} | " + " | ".join(cells) + " |")
        if r.get("wrong_object"):
            worst = max(((s, w, v) for s, per in r["wrong_object"].items() for w, v in per.items() if v is not None),
                        key=lambda x: x[2], default=None)
            if worst:
                lines += ["", f"Largest share moved to the other object: {_pct(worst[2])} % ({worst[0]}, "
                          f"t {worst[1]})."]
        lines.append("")
    return "\n".join(lines)


def vital_blocks_markdown(res: dict) -> str:
    factors = list(next(iter(res["change"].values())))
    lines = [f"# Vital blocks on {res['world']} ({res['model']}, seed {res['seed']})", "",
             "Share of items (%) whose reading of a factor changes when the block is bypassed through the whole "
             "generation; mean pixel change (0-255).", "",
             "| block | pixels | " + " | ".join(factors) + " |", "|---|---|" + "---|" * len(factors)]
    for b in res["blocks"]:
        lines.append(f"| {b} | {255 * res['pixel_change'][b]:.1f} | "
                     + " | ".join(_pct(res["change"][b][f]) for f in factors) + " |")
    lines += ["", f"Vital (changes a factor in at least {_pct(res['settings']['threshold'])} % of items): "
              + "; ".join(f"{f}: {', '.join(v) or 'none'}" for f, v in res["vital"].items()), ""]
    return "\n".join(lines)


def readable_vs_causal(probes, trace: dict) -> str:
    """Markdown, one table per factor: each site's linear-probe accuracy (*readable*: the best over the
    probed ``t``, with its chance) beside the largest share of the edit restoring that site restores
    (*causal*: the best window of a `causal_trace_study` result ``trace``)."""
    lines = [f"Readable (probe accuracy, best t; chance in brackets) vs causal (share of the edit restored, "
             f"best window), {trace['world']}, trace seed {trace['seed']}.", ""]
    for factor, r in trace["factors"].items():
        if factor not in probes.factors:
            continue
        lines += [f"**{factor}** (trace: {r['n_valid']} valid items)", "",
                  "| site | readable | causal |", "|---|---|---|"]
        for site in trace["sites"]:
            if site not in probes.sites:
                continue
            t, acc = probes.best_over_t(factor, site)
            chance = probes.probe(factor, site, t).chance_
            windows = {w: v for w, v in r["restored"][site].items() if v is not None}
            best = max(windows, key=windows.get) if windows else None
            cause = "–" if best is None else f"{_pct(windows[best])} % (t {best})"
            lines.append(f"| {site} | {100 * acc:.0f} % ({100 * chance:.0f}) | {cause} |")
        lines.append("")
    return "\n".join(lines)
