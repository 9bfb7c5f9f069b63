"""Benchmarks of editing methods: resumable, batched across items, sharded with accelerate.

Work is cut into fixed batches of items by global index (batch ``b`` = items ``[b*B, (b+1)*B)``);
every batch runs every method in one `edit_batch` call per method (the items at their strength
plus the same items at strength 0, which are the reconstructions ``x_rec``). Each (item, method)
result is appended to ``items.jsonl`` as soon as its batch finishes, so a killed run resumes
where it stopped. With several processes (``torchrun`` / ``accelerate launch``, or separate jobs
given ``shard=(rank, world)``), batch ``b`` goes to rank ``b % world``; each rank appends to
``items.rank{r}.jsonl`` and an unsharded run (or rank 0 of a launch) merges them.

A result is a function of its inputs only: batches and seeds are the same whatever the number of
processes, the order of the work or where a run was resumed, and nothing a process computed
before (cached text embeddings, directions) changes later numbers; the tests check all of it to
the last digit. A folder holds one configuration: ``run.json`` records the model (id and weights'
fingerprint), the benchmark (its items' fingerprint), the scorer, the directions, preserved
directions, resize, batch size, strengths, and every method's settings; a run asking for anything
else is refused, naming the difference (``fresh=True`` discards the folder's results first).
Methods may be added to a folder. One writer at a time: a second process gets `BusyError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
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
from ..editing.settings import check_strength
from ..errors import BusyError, CorruptFileError, InputError, RunMismatchError
from ..images import check_resize, fit_size, to_pil_list
from ..interp.attention import object_mask
from ..io import append_jsonl, atomic_write_json, atomic_write_text, check_writable, dumps, envelope, read_json
from ..pipeline.fingerprint import fingerprint, module_fingerprint
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


MASK_SOURCES = ("attention", "velocity")


def velocity_masks(pipe, item: BenchItem, x: np.ndarray, x_edit: np.ndarray) -> np.ndarray:
    """An item's edit region from the velocity difference of its captions (`velocity_mask`, after
    UniEdit-Flow) on the source: where the edited caption changes the model's velocity. Falls back to
    `attention_masks` when the item has no edited caption (its source word is not in the prompt)."""
    from ..interp.segmentation import velocity_mask

    try:
        edited = item.edited_prompt()
    except InputError:
        return attention_masks(pipe, item, x, x_edit)
    return velocity_mask(pipe, x, item.prompt, edited, seed=item.seed)


DIRECTIONS = ("template", "caption")
DEFAULT_DIRECTIONS = "caption"  # decided by measurement (docs/results/identify.md); "template": as published


def item_direction(pipe, item: BenchItem, kind: str = DEFAULT_DIRECTIONS):
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
              directions: str = DEFAULT_DIRECTIONS, masks: str = "attention") -> list[dict]:
    """Edit and score a batch of items with one method (one `edit_batch` call).

    ``keep``: a dict that receives the raw `edit_batch` output (so ``"image"`` can reuse HSDS's
    optimisation via ``reuse``). ``resize``: how sources whose size the model cannot take are fitted
    (`explore.encode`); the metrics then compare at that size. ``preserve``: HSDS's preserved
    directions (default: the method's, `explore.editing.preserve`). ``directions``: `item_direction`'s kind.
    ``masks``: where an item without a mask (and a scorer that finds no objects) gets one:
    ``"attention"`` (`attention_masks`) or ``"velocity"`` (`velocity_masks`).
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
            source = velocity_masks if masks == "velocity" else attention_masks
            mask, how = source(pipe, it, fitted[i][0], images[i]), masks
        rec = _score(it, fitted[i][0], images[n + i], images[i], scorer, mask)
        rec["mask"] = how
        rec.update({"id": it.id, "method": method, "strength": strength, "attribute": it.attribute,
                    "source": it.source, "target": it.target, "seed": it.seed, "seconds": seconds,
                    "evaluations": out["evaluations"] / n, "calls": out["calls"], "batch": n,
                    "directions": directions})
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


# ---------------------------------------------------------------------------------------------
# One configuration per folder
# ---------------------------------------------------------------------------------------------

RUN_FILE = "run.json"
RUN_FORMAT = 1


def items_fingerprint(items: Sequence[BenchItem]) -> str:
    """SHA-256 of the benchmark: every item's fields, image and mask (pixels, not paths) in order."""
    h = hashlib.sha256()
    for it in items:
        fields = {k: getattr(it, k) for k in ("id", "prompt", "attribute", "source", "target", "labels", "seed",
                                              "target_prompt")}
        h.update(json.dumps(fields, sort_keys=True, default=str).encode())
        image = np.ascontiguousarray(it.load_image())
        h.update(f"|{image.shape}|".encode() + image.tobytes())
        mask = it.load_mask()
        h.update(b"|mask|" + (b"none" if mask is None else np.packbits(np.asarray(mask, bool)).tobytes()))
    return h.hexdigest()


def scorer_identity(scorer) -> dict[str, Any]:
    """What a scorer is: class, name, attributes, hard/soft, and its weights' fingerprint if it has a model."""
    out: dict[str, Any] = {"class": type(scorer).__name__, "name": getattr(scorer, "name", None),
                           "attributes": {k: list(v) for k, v in sorted(getattr(scorer, "attributes", {}).items())},
                           "hard": getattr(scorer, "hard", None)}
    model = getattr(scorer, "model", None)
    if isinstance(model, torch.nn.Module):
        out["weights"] = module_fingerprint({"model": model})[0]
    return out


def run_config(pipe, items: Sequence[BenchItem], method_settings: dict, *, scorer, benchmark: str, strength: float,
               curve_strengths: Sequence[float], curve_n: int, batch_size: int, resize, preserve,
               directions: str, masks: str = "attention") -> dict[str, Any]:
    """Everything that changes a number of a benchmark run (what ``run.json`` records; the mask source
    only when it is not the default, so folders written before it existed keep their configuration)."""
    fp = fingerprint(pipe)
    extra = {} if masks == "attention" else {"masks": masks}
    return json.loads(dumps({**extra,
        "format": RUN_FORMAT, "model": spec(pipe).model_id, "weights": fp["weights"], "weights_hash": fp["kind"],
        "model_config": fp["config"], "benchmark": benchmark, "items": items_fingerprint(items), "n": len(items),
        "scorer": scorer_identity(scorer), "directions": directions, "preserve": preserve, "resize": resize,
        "batch_size": batch_size, "strength": float(strength), "curve_strengths": [float(x) for x in curve_strengths],
        "curve_n": curve_n, "methods": {m: dict(method_settings[m]) for m in method_settings},
    }))


def _run_hash(config: dict, method: str) -> str:
    """A short id of the configuration one method's records were computed under (stored in each record)."""
    shared = {k: v for k, v in config.items() if k != "methods"}
    text = json.dumps([shared, method, config["methods"][method]], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if prefix == "methods." or (not prefix and k == "methods"):
            if k not in old or k not in new:
                continue  # methods can be added to a folder
        a, b = old.get(k, "(absent)"), new.get(k, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            short = {"weights", "items", "model_config"}
            if k in short and isinstance(a, str) and isinstance(b, str):
                a, b = a[:12], b[:12]
            out.append(f"{prefix}{k} {json.dumps(a)} in the folder, {json.dumps(b)} asked")
    return out


def _folder_config(out: Path, config: dict, fresh: bool) -> dict:
    """Check ``out`` holds ``config`` (or nothing) and record it there; returns the folder's configuration.

    Raises `RunMismatchError` naming every difference; ``fresh``: discard the folder's results first.
    """
    path = out / RUN_FILE
    old = None
    records = _record_files(out)
    if fresh:
        for f in [*records, path, out / "results.json", out / "results.md"]:
            f.unlink(missing_ok=True)
        records = []
    if path.is_file():
        old = read_json(path)
        if not isinstance(old, dict) or old.get("format") != RUN_FORMAT or not isinstance(old.get("methods"), dict):
            raise CorruptFileError(f"{path} is not a run configuration of this explore version; use another "
                                   "folder, or fresh=True (--fresh) to discard its results")
        diff = _differences(old, config)
        if diff:
            raise RunMismatchError(
                f"{out} holds results of another configuration ({'; '.join(diff)}): pass another output folder, or "
                "fresh=True (--fresh) to discard them")
        merged = {**old, "methods": {**old["methods"], **config["methods"]}}
    else:
        if records:
            raise RunMismatchError(
                f"{out} holds results but no {RUN_FILE} (written by an older explore), so their settings are unknown: "
                "pass another output folder, or fresh=True (--fresh) to discard them")
        merged = config
    if merged != old:
        atomic_write_json(path, merged)
    return merged


# ---------------------------------------------------------------------------------------------
# One writer at a time
# ---------------------------------------------------------------------------------------------


def _holder_text(f) -> str:
    try:
        f.seek(0)
        h = json.loads(f.read() or "{}")
        return f"pid {h['pid']} on {h['host']}, started {h['since']}" + (f", shard {h['shard']}" if h.get("shard")
                                                                          else "")
    except (ValueError, KeyError, OSError):
        return "another process"


@contextlib.contextmanager
def folder_lock(out: Path, shard: tuple[int, int] | None = None):
    """Hold ``out`` for writing: exclusively, or (``shard``) shared with the other ranks of a sharded run
    and exclusively for this rank. `BusyError` names the holder. Locks are the system's (``flock``):
    a killed process releases them, so a crash never leaves a folder locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks; say so once
        warnings.warn("no file locks on this system: two runs on one folder are not prevented", stacklevel=3)
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    files = []
    holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                         "shard": None if shard is None else f"{shard[0]}/{shard[1]}"})
    try:
        main = open(out / ".lock", "a+")
        files.append(main)
        try:
            fcntl.flock(main, (fcntl.LOCK_EX if shard is None else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder_text(main)
            if who == "another process":
                ranks = []
                for p in sorted(out.glob(".lock.rank*")):
                    with open(p) as f:
                        ranks.append(_holder_text(f))
                who = "a sharded run (" + "; ".join(r for r in ranks if r != "another process") + ")" if any(
                    r != "another process" for r in ranks) else who
            raise BusyError(f"{out} is being written by {who}; wait for it to end or use another folder") from None
        mine = main
        if shard is not None:
            mine = open(out / f".lock.rank{shard[0]}", "a+")
            files.append(mine)
            try:
                fcntl.flock(mine, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BusyError(f"{out}: shard {shard[0]}/{shard[1]} is being written by {_holder_text(mine)}; wait "
                                "for it to end or use another folder") from None
        mine.seek(0)
        mine.truncate()
        mine.write(holder)
        mine.flush()
        yield
    finally:
        for f in reversed(files):
            if f is not main or shard is None:
                with contextlib.suppress(OSError):
                    f.seek(0)
                    f.truncate()
            f.close()


def _check_shard(shard) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        rank, world = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise InputError(f"shard must be (rank, world), e.g. (0, 2), got {shard!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"shard (rank, world) needs 0 <= rank < world, got {shard!r}")
    return (rank, world) if world > 1 else None


def schedule(units: list[tuple]) -> list[tuple]:
    """The order work units run in: batch by batch, "hsds" right before "image" (which can then reuse its
    optimisation). Any order gives the same numbers; this one does the least work."""
    order = {"hsds": 0, "image": 1}
    return sorted(units, key=lambda u: (u[0], u[3], order.get(u[2], 2)))


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
    directions: str = DEFAULT_DIRECTIONS,
    masks: str = "attention",
    shard: tuple[int, int] | None = None,
    fresh: bool = False,
) -> dict | None:
    """Run (or resume) a benchmark into ``out``; returns the results dict (None on a shard other than a
    launch's rank 0, and on every ``shard`` given explicitly: run once more without it to merge).

    ``directions``: the text directions edits follow (`item_direction`). ``masks``: the mask source for
    items without masks whose scorer finds no objects (`MASK_SOURCES`; `run_batch`). ``shard``: ``(rank, world)``
    of a run split over separate jobs (batch ``b`` goes to rank ``b % world``); launched with
    ``torchrun`` / ``accelerate`` the rank comes from the environment. ``fresh``: discard the results
    ``out`` holds (of any configuration) instead of refusing a folder of another configuration.
    """
    t0 = time.perf_counter()
    check_resize(resize)
    if directions not in DIRECTIONS:
        raise InputError(f"directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
    if masks not in MASK_SOURCES:
        raise InputError(f"masks must be one of {', '.join(MASK_SOURCES)}, got {masks!r}")
    out = check_writable(out, "output folder", folder=True)
    methods = list(methods)
    for m in methods:
        if m not in method_names():
            raise InputError(f"unknown method {m!r}; known: {', '.join(method_names())}")
    if not methods:
        raise InputError("no methods given")
    if len(set(methods)) != len(methods):
        raise InputError(f"methods are listed twice: {methods}")
    if not items:
        raise InputError("the benchmark has no items")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"benchmark item ids must be distinct; repeated: {twice}")
    strength = check_strength(strength)
    curve_strengths = [check_strength(s) for s in curve_strengths]
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    explicit = _check_shard(shard)
    scorer = scorer or get_scorer(spec(pipe).world)
    settings = settings or {}
    method_settings = {m: settings_for(pipe, m, **settings.get(m, {})) for m in methods}
    state = None if explicit else _state()
    rank, world = explicit or ((state.process_index, state.num_processes) if state else (0, 1))
    sharded = world > 1
    config = run_config(pipe, items, method_settings, scorer=scorer, benchmark=benchmark, strength=strength,
                        curve_strengths=curve_strengths, curve_n=curve_n, batch_size=int(batch_size), resize=resize,
                        preserve=preserve, directions=directions, masks=masks)
    with folder_lock(out, (rank, world) if sharded else None):
        with _folder_manifest_lock(out):
            if fresh and sharded:
                raise InputError("fresh=True discards a folder's results: run it unsharded (or before the shards)")
            config = _folder_config(out, config, fresh)
        hashes = {m: _run_hash(config, m) for m in methods}
        shard_file = out / (f"items.rank{rank}.jsonl" if sharded else "items.jsonl")
        done = set(_records_by_key(out, hashes))
        units = work_units(items, methods, strength, curve_strengths, curve_n, int(batch_size))
        mine = [u for u in units if u[0] % world == rank]
        todo = schedule([u for u in mine if not all((it.id, u[2], u[3]) in done for it in u[1])])
        bar = tqdm(total=sum(len(u[1]) for u in todo), desc=f"evaluate[{rank}]" if sharded else "evaluate",
                   disable=not progress)
        shared: dict = {}
        for b, batch, m, s in todo:
            todo_items = [it for it in batch if (it.id, m, s) not in done]
            reuse = None
            # "image" renders HSDS's optimised z' with the source condition: right after "hsds" on the same
            # batch it reuses that optimisation when the settings allow (half the cost, the same bits)
            if m == "image" and shared.get("key") == (b, s) and not method_settings[m].same_optimisation(
                    shared["out"]["settings"]):
                reuse = shared["out"]
            keep: dict = {}
            # The whole batch is recomputed even if part of it was done: same batch, same results.
            records = run_batch(pipe, batch, m, s, scorer, dict(method_settings[m]), reuse=reuse,
                                keep=keep if m == "hsds" else None, resize=resize, preserve=preserve,
                                directions=directions, masks=masks)
            shared = {"key": (b, s), "out": keep} if m == "hsds" else {}
            for r in records:
                r["run"] = hashes[m]
            append_records(shard_file, [r for r in records if any(r["id"] == it.id for it in todo_items)])
            bar.update(len(batch))
        bar.close()
        if explicit is not None:
            return None
        if state is not None:
            state.wait_for_everyone()
            if not state.is_main_process:
                return None
        by_key = _records_by_key(out, hashes)
        if len(_record_files(out)) > 1 or sharded:  # merge shards into items.jsonl so later runs see one file
            _merge(out, by_key)
    # in the benchmark's own order, whatever order the work ran in: a mean's last bit depends on it
    position = {i: k for k, i in enumerate(ids)}
    records = sorted((r for (i, m, _), r in by_key.items() if i in position and m in methods),
                     key=lambda r: (position[r["id"]], methods.index(r["method"]), r["strength"]))
    results = summarise(records, methods, strength)
    res = envelope(
        spec(pipe).model_id, seed, {"strength": strength, "curve_strengths": list(curve_strengths),
                                    "curve_n": curve_n, "batch_size": batch_size, "processes": world,
                                    "resize": resize, "preserve": preserve, "directions": directions},
        time.perf_counter() - t0, benchmark=benchmark, n=len(items),
        weights=config["weights"], items_sha256=config["items"],
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


@contextlib.contextmanager
def _folder_manifest_lock(out: Path):
    """A short exclusive lock around reading and writing ``run.json`` (shards start at the same time)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    with open(out / ".lock.run", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def work_units(items, methods, strength, curve_strengths, curve_n, batch_size) -> list[tuple]:
    """``(batch index, items, method, strength)`` of a benchmark: the main batches at ``strength``, then
    the first ``curve_n`` items at the other curve strengths."""
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
    return units


def _records_by_key(out: Path, hashes: dict[str, str]) -> dict[tuple, dict]:
    """Every record of ``out`` by (id, method, strength), checked: a record of another configuration or
    a key recorded twice with different numbers is an error naming the file. The same record in
    ``items.jsonl`` and a rank's file (a merge interrupted before it removed the rank files) is one."""
    by_key: dict[tuple, dict] = {}
    where: dict[tuple, Path] = {}
    for path in _record_files(out):
        for r in read_records(path):
            try:
                key = (r["id"], r["method"], r["strength"])
            except (KeyError, TypeError):
                raise CorruptFileError(f"{path} holds a record without id, method and strength") from None
            if r["method"] in hashes and r.get("run") != hashes[r["method"]]:
                raise RunMismatchError(f"{path}: the {r['method']} record of item {r['id']} was computed under "
                                       "another configuration than the folder's run.json; use another folder or "
                                       "fresh=True (--fresh)")
            if key in by_key:
                if by_key[key] != r or path.name == where[key].name:
                    raise CorruptFileError(f"{path}: item {r['id']}, {r['method']} at strength {r['strength']} is "
                                           f"recorded twice (also in {where[key].name}); the folder mixes runs")
                continue
            by_key[key], where[key] = r, path
    return by_key


def _merge(out: Path, by_key: dict[tuple, dict]) -> None:
    """Write every record into ``items.jsonl`` (atomically), then remove the rank files."""
    atomic_write_text(out / "items.jsonl", "".join(json.dumps(r) + "\n" for r in by_key.values()))
    for path in out.glob("items.rank*.jsonl"):
        path.unlink()


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
