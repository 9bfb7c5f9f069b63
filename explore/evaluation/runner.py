"""Benchmarks of editing methods: resumable, batched across items, sharded with accelerate.

Work is cut into fixed batches of items by global index (batch ``b`` = items ``[b*B, (b+1)*B)``);
every batch runs every method in one `edit_batch` call per method (the items at their strength
plus the same items at strength 0, which are the reconstructions ``x_rec``). Each (item, method)
result is appended to ``items.jsonl`` as soon as its batch finishes, so a killed run resumes
where it stopped. With several processes (``torchrun`` / ``accelerate launch``), batch ``b`` goes
to rank ``b % world``; each rank appends to ``items.rank{r}.jsonl`` and rank 0 merges. Batches and
seeds are the same whatever the number of processes, so sharded and unsharded runs agree.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..editing.api import edit_batch, settings_for
from ..editing.directions import text_direction
from ..editing.methods import METHODS, method_names
from ..errors import CorruptFileError, InputError
from ..images import check_resize, fit_size, to_pil_list
from ..interp.attention import object_mask
from ..io import append_jsonl, atomic_write_json, atomic_write_text, envelope
from ..pipeline.latent import decode, encode
from ..pipeline.spec import size_multiple, spec
from .items import BenchItem
from .scorers import get_scorer
from .scoring import score_edit

RESULT_KEYS = ("success", "retention", "sde", "recon_psnr", "recon_accuracy")


# ---------------------------------------------------------------------------------------------
# Records on disk
# ---------------------------------------------------------------------------------------------


def read_records(path: Path) -> list[dict]:
    """Records of a JSONL results file. A truncated last line (a run killed mid-write) is dropped with
    a warning naming the file; a corrupt line elsewhere is an error."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if k == len(lines) - 1:
                warnings.warn(f"{path}: dropping a partial last line (the run was interrupted while writing it)",
                              stacklevel=2)
                atomic_write_text(path, "".join(x + "\n" for x in lines[:k]))
                break
            raise CorruptFileError(f"{path}:{k + 1} is not valid JSON ({e.msg}); fix or delete the file") from e
    return out


def append_records(path: Path, records: Sequence[dict]) -> None:
    """Append whole lines in one write, flushed and fsynced (a kill leaves at most a partial last line)."""
    append_jsonl(path, records)


# ---------------------------------------------------------------------------------------------
# Scoring one batch
# ---------------------------------------------------------------------------------------------


def _score(item: BenchItem, x: np.ndarray, x_rec: np.ndarray, x_edit: np.ndarray, scorer, mask) -> dict[str, Any]:
    rec = score_edit(scorer, item.attribute, item.target, x_edit, x_rec=x_rec, x=x, labels=item.labels, mask=mask)
    return {k: rec[k] for k in ("success", "retention", "sde", "E", "leak", "R", "recon_psnr", "recon_accuracy",
                                "read_edit", "retention_parts")}


def fit_item(pipe, item: BenchItem, resize=None) -> tuple[np.ndarray, np.ndarray | None]:
    """An item's source image and mask at the size the model takes (``resize`` as in `explore.encode`)."""
    multiple = size_multiple(pipe)
    image = np.asarray(fit_size(to_pil_list(item.load_image()), multiple, resize)[0])
    mask = item.load_mask()
    if mask is not None and resize is not None:
        m = Image.fromarray(mask.astype(np.uint8) * 255)
        mask = np.asarray(fit_size([m.convert("RGB")], multiple, resize)[0])[..., 0] > 127
    return image, mask


def attention_masks(pipe, item: BenchItem, x: np.ndarray, x_edit: np.ndarray) -> np.ndarray:
    """An item's object mask from the model's own attention (no mask given, no scorer that finds objects):
    the source word's object in the source, united with the target word's object in the edit."""
    m = object_mask(pipe, x, item.prompt, item.source, item.attribute, seed=item.seed)
    try:
        edited = item.edited_prompt()
    except InputError:
        return m
    x_edit = np.clip(np.rint(np.asarray(x_edit) * 255), 0, 255).astype(np.uint8)
    return m | object_mask(pipe, x_edit, edited, item.target, item.attribute, seed=item.seed)


DIRECTIONS = ("template", "caption")


def item_direction(pipe, item: BenchItem, kind: str = "template"):
    """The text direction an item is edited along.

    ``"template"``: the mean over the world's (or the photo-style) templates, the Identify step as
    the method defines it (`explore.editing.text_direction`); ``"caption"``: the item's own caption
    against it with the edit made (`BenchItem.edited_prompt`), the one pair the source was encoded with.
    """
    if kind == "template":
        return text_direction(pipe, item.source, item.target, attribute=item.attribute)
    if kind == "caption":
        return text_direction(pipe, item.source, item.target, templates=[(item.prompt, item.edited_prompt())],
                              attribute=item.attribute)
    raise InputError(f"directions must be one of {', '.join(DIRECTIONS)}, got {kind!r}")


def run_batch(pipe, items: Sequence[BenchItem], method: str, strength: float, scorer, settings: dict,
              reuse: dict | None = None, keep: dict | None = None, resize=None, preserve=None,
              directions: str = "template") -> list[dict]:
    """Edit and score a batch of items with one method (one `edit_batch` call).

    ``keep``: a dict that receives the raw `edit_batch` output (so ``"image"`` can reuse HSDS's
    optimisation via ``reuse``). ``resize``: how sources whose size the model cannot take are fitted
    (`explore.encode`); the metrics then compare at that size. ``preserve``: HSDS's preserved
    directions (default: the method's, `explore.editing.preserve`). ``directions``: `item_direction`'s kind.
    """
    t0 = time.perf_counter()
    n = len(items)
    fitted = [fit_item(pipe, it, resize) for it in items]
    sources = [encode(pipe, image, it.prompt) for (image, _), it in zip(fitted, items)]
    dirs = [item_direction(pipe, it, directions) for it in items]
    out = edit_batch(pipe, sources * 2, dirs * 2, [strength] * n + [0.0] * n, method, preserve,
                     seeds=[it.seed for it in items] * 2, labels=[it.labels for it in items] * 2, reuse=reuse,
                     **settings)
    if keep is not None:
        keep.update(out)
    images = decode(pipe, out["x"], output_type="np")
    seconds = (time.perf_counter() - t0) / n
    records = []
    for i, it in enumerate(items):
        mask, how = fitted[i][1], "exact"
        if mask is None and hasattr(scorer, "object_masks"):
            how = "scorer"  # the world's readers measure the objects of both images
        elif mask is None:
            mask, how = attention_masks(pipe, it, fitted[i][0], images[i]), "attention"
        rec = _score(it, fitted[i][0], images[n + i], images[i], scorer, mask)
        rec["mask"] = how
        rec.update({"id": it.id, "method": method, "strength": strength, "attribute": it.attribute,
                    "source": it.source, "target": it.target, "seed": it.seed, "seconds": seconds,
                    "evaluations": out["evaluations"] / n, "calls": out["calls"], "batch": n,
                    "reused_optimisation": out["reused"], "directions": directions})
        records.append(rec)
    return records


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------


def _state():
    """accelerate's PartialState when launched with several processes, else a single-process stand-in."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    from accelerate import PartialState  # ~1 s to import; only sharded runs need it

    return PartialState(cpu=not torch.cuda.is_available())


def evaluate(
    pipe,
    items: Sequence[BenchItem],
    out: str | Path,
    methods: Sequence[str] = METHODS,
    *,
    strength: float = 1.0,
    curve_strengths: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
    curve_n: int = 12,
    batch_size: int = 8,
    scorer=None,
    seed: int = 0,
    benchmark: str = "shapes",
    settings: dict[str, dict] | None = None,
    progress: bool = True,
    figures: bool = True,
    resize=None,
    preserve=None,
    directions: str = "template",
) -> dict | None:
    """Run (or resume) a benchmark into ``out``; returns the results dict on rank 0 (None elsewhere).

    ``directions``: the text directions edits follow (`item_direction`); records of the other kind
    already in ``out`` are kept but neither resumed nor summarised.
    """
    t0 = time.perf_counter()
    check_resize(resize)
    if directions not in DIRECTIONS:
        raise InputError(f"directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(methods)
    for m in methods:
        if m not in method_names():
            raise InputError(f"unknown method {m!r}; known: {', '.join(method_names())}")
    if not items:
        raise InputError("the benchmark has no items")
    scorer = scorer or get_scorer(spec(pipe).world)
    settings = settings or {}
    method_settings = {m: settings_for(pipe, m, **settings.get(m, {})) for m in methods}
    state = _state()
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    shard = out / (f"items.rank{rank}.jsonl" if world > 1 else "items.jsonl")
    done = {(r["id"], r["method"], r["strength"]) for path in _record_files(out) for r in read_records(path)
            if r.get("directions", "template") == directions}
    # Work units: (batch of items, method, strength). Curves: the first curve_n items at other strengths.
    units = []
    batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    for b, batch in enumerate(batches):
        for m in methods:
            units.append((b, batch, m, strength))
    curve_items = list(items[:curve_n])
    curve_batches = [curve_items[i : i + batch_size] for i in range(0, len(curve_items), batch_size)]
    for b, batch in enumerate(curve_batches):
        for m in methods:
            for s in curve_strengths:
                if s != strength:
                    units.append((len(batches) + b, batch, m, float(s)))
    mine = [u for u in units if u[0] % world == rank]
    todo = [u for u in mine if not all((it.id, u[2], u[3]) in done for it in u[1])]
    bar = tqdm(total=sum(len(u[1]) for u in todo), desc=f"evaluate[{rank}]" if world > 1 else "evaluate",
               disable=not progress)
    # "image" renders HSDS's optimised z' with the source condition: run it right after "hsds" on the
    # same batch and reuse that optimisation when the settings allow (half the cost).
    order = {"hsds": 0, "image": 1}
    todo.sort(key=lambda u: (u[0], u[3], order.get(u[2], 2)))
    shared: dict = {}
    for b, batch, m, s in todo:
        todo_items = [it for it in batch if (it.id, m, s) not in done]
        reuse = None
        if m == "image" and shared.get("key") == (b, s) and not method_settings[m].same_optimisation(
                shared["out"]["settings"]):
            reuse = shared["out"]
        keep: dict = {}
        # The whole batch is recomputed even if part of it was done: same batch, same results.
        records = run_batch(pipe, batch, m, s, scorer, dict(method_settings[m]), reuse=reuse,
                            keep=keep if m == "hsds" else None, resize=resize, preserve=preserve,
                            directions=directions)
        if m == "hsds":
            shared = {"key": (b, s), "out": keep}
        append_records(shard, [r for r in records if any(r["id"] == it.id for it in todo_items)])
        bar.update(len(batch))
    bar.close()
    if state is not None:
        state.wait_for_everyone()
        if not state.is_main_process:
            return None
    records = [r for path in _record_files(out) for r in read_records(path)]
    if world > 1:  # merge shards into items.jsonl (atomically) so a later unsharded resume sees them
        merged = {(r["id"], r["method"], r["strength"], r.get("directions", "template")): r for r in records}
        atomic_write_text(out / "items.jsonl", "".join(json.dumps(r) + "\n" for r in merged.values()))
        for path in out.glob("items.rank*.jsonl"):
            path.unlink()
        records = list(merged.values())
    ids = {it.id for it in items}
    records = [r for r in records if r["id"] in ids and r.get("directions", "template") == directions]
    results = summarise(records, methods, strength)
    res = envelope(
        spec(pipe).model_id, seed, {"strength": strength, "curve_strengths": list(curve_strengths),
                                    "curve_n": curve_n, "batch_size": batch_size, "processes": world,
                                    "resize": resize, "preserve": preserve, "directions": directions},
        time.perf_counter() - t0, benchmark=benchmark, n=len(items),
        methods={m: {"settings": method_settings[m], **results[m]} for m in methods},
        curves=curves(records, methods),
    )
    atomic_write_json(out / "results.json", res)
    atomic_write_text(out / "results.md", results_markdown(res))
    if figures:
        # views.plots imports matplotlib (~0.5 s): only when figures are wanted
        from ..views.plots import save_results_figures

        save_results_figures(res, out)
    return res


def _record_files(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("items*.jsonl"))


def _mean(vals) -> float | None:
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


RETENTION_PARTS = ("same_object", "other_objects", "scene")


def _parts(records: Sequence[dict]) -> dict[str, float | None]:
    """Mean retention over the edited object's other factors, the other objects' factors, the scene's."""
    return {k: _mean((r.get("retention_parts") or {}).get(k) for r in records) for k in RETENTION_PARTS}


def summarise(records: Sequence[dict], methods: Sequence[str], strength: float) -> dict[str, dict]:
    out = {}
    for m in methods:
        rs = [r for r in records if r["method"] == m and r["strength"] == strength]
        per_attr = defaultdict(list)
        for r in rs:
            per_attr[r["attribute"]].append(r)
        out[m] = {
            "n": len(rs),
            "overall": {k: _mean(r[k] for r in rs) for k in RESULT_KEYS},
            "retention_parts": _parts(rs),
            "per_attribute": {a: {k: _mean(r[k] for r in v) for k in RESULT_KEYS} | {"n": len(v)}
                              | {"retention_parts": _parts(v)} for a, v in sorted(per_attr.items())},
            "seconds_per_item": _mean(r["seconds"] for r in rs),
            "evaluations_per_item": _mean(r["evaluations"] for r in rs),
            # batched transformer calls of the item's batch (edits and reconstructions together; an
            # edit alone makes about as many: one call per loop step and per render step)
            "calls_per_batch": _mean(r.get("calls") for r in rs),
        }
    return out


def curves(records: Sequence[dict], methods: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """method -> strength -> mean of each result key, over the items measured at several strengths."""
    ids_by_strength = defaultdict(set)
    for r in records:
        ids_by_strength[r["strength"]].add(r["id"])
    common = set.intersection(*ids_by_strength.values()) if ids_by_strength else set()
    out: dict[str, dict] = {}
    for m in methods:
        by_s = defaultdict(list)
        for r in records:
            if r["method"] == m and r["id"] in common:
                by_s[r["strength"]].append(r)
        out[m] = {str(s): {k: _mean(r[k] for r in v) for k in RESULT_KEYS} for s, v in sorted(by_s.items())}
    return out


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def results_markdown(res: dict) -> str:
    lines = [f"# {res['benchmark']} benchmark, n = {res['n']} (model {res['model']}, seed {res['seed']})", "",
             "| method | success | retention | SDE | recon PSNR (dB) | recon accuracy | NFE / edit | calls / batch "
             "| s / item |", "|---|---|---|---|---|---|---|---|---|"]
    for m, r in res["methods"].items():
        o = r["overall"]
        nfe = r.get("evaluations_per_item")
        nfe = "—" if nfe is None else f"{nfe:.0f}"
        calls = r.get("calls_per_batch")
        calls = "—" if calls is None else f"{calls:.0f}"
        lines.append(f"| {m} | {_fmt(o['success'])} | {_fmt(o['retention'])} | {_fmt(o['sde'])} | "
                     f"{_fmt(o['recon_psnr'])} | {_fmt(o['recon_accuracy'])} | {nfe} | {calls} | "
                     f"{_fmt(r['seconds_per_item'])} |")
    if any((r.get("retention_parts") or {}).get("other_objects") is not None for r in res["methods"].values()):
        lines += ["", "Retention split: the edited object's other factors / **the other objects' factors** (a "
                  "background edit: every object's) / the background:", "",
                  "| method | same object | other object | background |",
                  "|---|---|---|---|"]
        for m, r in res["methods"].items():
            p = r.get("retention_parts") or {}
            lines.append(f"| {m} | {_fmt(p.get('same_object'))} | {_fmt(p.get('other_objects'))} | "
                         f"{_fmt(p.get('scene'))} |")
    attrs = sorted({a for r in res["methods"].values() for a in r["per_attribute"]})
    lines += ["", "Per attribute (success / retention / SDE):", "",
              "| method | " + " | ".join(attrs) + " |", "|---|" + "---|" * len(attrs)]
    for m, r in res["methods"].items():
        cells = []
        for a in attrs:
            p = r["per_attribute"].get(a)
            cells.append("—" if p is None else f"{_fmt(p['success'])} / {_fmt(p['retention'])} / {_fmt(p['sde'])}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    m = res["machine"]
    lines += ["", "NFE / edit: transformer sequences per item, the edit and its reconstruction (strength 0, same "
              "seed) together, as run (shared work counted once)."]
    lines += ["", f"Measured on {m['gpu'] or str(m['cpu_count']) + 'x ' + m['cpu']}, {res['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"
