"""Activation datasets: what each hook site carries for a set of images and prompts (DESIGN §4).

`collect` runs the model on images + prompts and keeps each site's activations at a few noise
levels ``t``: an `ActivationDataset`, in memory or streamed to a resumable folder of shards (one
safetensors file per batch, a manifest, atomic writes). Probes (`explore.interp.probe`) and the
representation metrics read it. Cost: one transformer sequence per item and ``t`` (the
conditional branch only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save
from tqdm.auto import tqdm

from ..errors import CorruptFileError, InputError
from ..io import atomic_write_bytes, atomic_write_json, envelope, read_json
from ..pipeline.families import family
from ..pipeline.latent import encode, encode_text, flow_noise, velocity
from ..pipeline.sampling import generate
from ..pipeline.spec import spec
from ..worlds import world_of_scene
from .hooks import cache_activations, resolve_sites

FORMAT = "explore.activations/1"
MANIFEST = "manifest.json"
POOLS = ("mean", "token")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Inputs:
    """What `collect` iterates over: ``n`` items, loaded one batch at a time (memory stays bounded)."""

    prompts: list[str]
    labels: dict[str, list[str]]
    load: Callable[[slice], Any] | None  # slice -> images for `encode`; None: generate from the prompt

    def __len__(self) -> int:
        return len(self.prompts)


def _normalise_inputs(pipe, inputs, prompts, labels) -> _Inputs:
    """Accept the input forms `collect` documents and return one `_Inputs`."""
    items_labels: list[Mapping[str, str] | None] = []
    if isinstance(inputs, tuple) and len(inputs) == 2 and prompts is None:
        inputs, prompts = inputs
    if isinstance(inputs, np.ndarray) or torch.is_tensor(inputs):
        if prompts is None:
            raise InputError("an image array needs prompts=: one prompt per image (or one for all)")
        images = inputs
        n = len(images)
        load = lambda sl: images[sl]  # noqa: E731
    else:
        items = list(inputs)
        if not items:
            raise InputError("collect() got no inputs")
        n = len(items)
        first = items[0]
        if isinstance(first, str):
            if prompts is not None:
                raise InputError("inputs are captions already; do not pass prompts= as well")
            prompts, load = items, None
        elif isinstance(first, Mapping):
            for i, it in enumerate(items):
                if "image" not in it or "prompt" not in it:
                    raise InputError(f"input {i} is a dict without 'image' and 'prompt' keys: {sorted(it)}")
            prompts = [it["prompt"] for it in items]
            items_labels = [it.get("labels") for it in items]
            load = lambda sl: [it["image"] for it in items[sl]]  # noqa: E731
        elif hasattr(first, "load_image") and hasattr(first, "prompt"):  # BenchItems and alikes
            prompts = [it.prompt for it in items]
            items_labels = [getattr(it, "labels", None) for it in items]
            load = lambda sl: [it.load_image() for it in items[sl]]  # noqa: E731
        elif world_of_scene(first) is not None:
            world = world_of_scene(first)  # scenes of an embedded world, rendered at the model's resolution
            side = spec(pipe).resolution
            # Full captions in every template in turn: the label is exact and the word order varies.
            if prompts is None:
                prompts = [world.caption(s, template=i % world.n_templates, rng=random.Random(i))
                           for i, s in enumerate(items)]
            items_labels = [world.labels(s) for s in items]
            load = lambda sl: np.stack([world.render(s, side) for s in items[sl]])  # noqa: E731
        else:
            if prompts is None:
                raise InputError(
                    f"cannot read inputs of type {type(first).__name__}: pass (images, prompts), a list of dicts "
                    "with 'image' and 'prompt', BenchItems, scenes of an embedded world, or a list of captions"
                )
            load = lambda sl: items[sl]  # noqa: E731
    prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    if len(prompts) != n:
        raise InputError(f"{n} inputs but {len(prompts)} prompts; pass one prompt per input")
    for p in prompts:
        # The empty prompt is a valid condition for an image (an image-only probe: nothing about the
        # factors comes from text); captions alone must say what to generate.
        if not isinstance(p, str) or (not p.strip() and (load is None or p != "")):
            raise InputError(f"every input needs a prompt string (\"\" for none, with images), got {p!r}"
                             if load is not None else f"every caption must be a non-empty string, got {p!r}")
    return _Inputs(prompts, _merge_labels(n, items_labels, labels), load)


def _merge_labels(n: int, per_item: Sequence[Mapping[str, str] | None], extra) -> dict[str, list[str]]:
    """Factor -> one value string per item; ``""`` where an item has no value for that factor."""
    keys = list(dict.fromkeys(k for lab in per_item if lab for k in lab))
    out = {k: [str(lab.get(k, "")) if lab else "" for lab in per_item] for k in keys}
    for k, values in (extra or {}).items():
        values = [str(v) if v is not None else "" for v in values]
        if len(values) != n:
            raise InputError(f"labels[{k!r}] has {len(values)} values for {n} inputs")
        out[k] = values
    return out


def check_timesteps(timesteps) -> list[float]:
    ts = [float(timesteps)] if isinstance(timesteps, (int, float)) else [float(t) for t in timesteps]
    if not ts:
        raise InputError("timesteps is empty; pass e.g. (0.25, 0.5, 0.75)")
    for t in ts:
        if not math.isfinite(t) or not 0.0 <= t <= 1.0:
            raise InputError(f"timesteps are flow sigmas in [0, 1] (DESIGN §0), got {t}")
    # Caches key t to 4 decimals (hooks.ActivationCache); two t that round together would collide.
    rounded = [round(t, 4) for t in ts]
    if len(set(rounded)) != len(rounded):
        raise InputError(f"timesteps must differ at 4 decimals, got {ts}")
    return rounded


def _pool_fn(pool: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if pool == "mean":
        return lambda x: x.float().mean(1)  # float before the mean: bf16 sums over 4096 tokens lose digits
    if pool == "token":
        return None
    raise InputError(f"pool must be one of {POOLS}, got {pool!r}")


def _item_noise(shape, start: int, stop: int, seed: int, device) -> torch.Tensor:
    """One ε per item, seeded by ``seed + index``: features never depend on how items were batched."""
    return torch.stack([
        torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed + i)) for i in range(start, stop)
    ]).to(device)


def _key(site: str, t: float) -> str:
    return f"{site}@{t:.4f}"


def _lookup(cache: Mapping, site: str, t: float):
    for (s, kt), v in cache.items():
        if s == site and abs(kt - t) < 1e-4:
            return v
    raise RuntimeError(f"no activation was cached for {site} at t={t}")  # a hook bug, not a user error


@torch.no_grad()
def _batch_features(pipe, src: _Inputs, sl: slice, site_list: list[str], ts: list[float], reduce, guidance: float,
                    seed: int, resize) -> dict[str, np.ndarray]:
    prompts = src.prompts[sl]
    if src.load is None:
        # Captions alone: generate the image from noise seed + i, then reuse that same ε for noising, so
        # z_t lies near the path the sampler itself took (in-distribution states).
        c, p = encode_text(pipe, prompts)
        _, z = generate(pipe, prompts, seed=[seed + i for i in range(sl.start, sl.stop)], output_type="np",
                        return_latents=True)
    else:
        lat = encode(pipe, src.load(sl), prompts, resize=resize, allow_empty=True)
        z, c, p = lat.z, lat.c, lat.p
    eps = _item_noise(z.shape[1:], sl.start, sl.stop, seed, z.device)
    out: dict[str, np.ndarray] = {}
    for t in ts:
        z_t = flow_noise(z.float(), eps, t)
        with cache_activations(pipe, site_list, timesteps=[t], reduce=reduce) as cache:
            velocity(pipe, z_t, t, c, p, guidance=guidance)  # one batched call per (batch, t)
        for s in site_list:
            out[_key(s, t)] = _lookup(cache, s, t).numpy()
    return out


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


class ActivationDataset:
    """Activations of ``n`` items at chosen sites and noise levels, with the items' factor labels.

    ``get(site, t)``: ``(n, dim)`` (``pool="mean"``) or ``(n, tokens, dim)`` (``pool="token"``)
    float32. In memory when built from ``features``; when loaded from a folder (`collect` with
    ``out=``), each ``get`` reads only that (site, t) from the shards, so memory stays bounded.
    ``labels``: factor -> ``(n,)`` array of value strings (``""`` where an item has no value).
    """

    def __init__(self, features: Mapping[tuple[str, float], np.ndarray] | None = None,
                 labels: Mapping[str, Sequence[str]] | None = None, *, prompts: Sequence[str] | None = None,
                 pool: str = "mean", model_id: str | None = None, settings: Mapping[str, Any] | None = None,
                 folder: str | Path | None = None, shards: Sequence[Mapping[str, Any]] | None = None,
                 sites: Sequence[str] | None = None, timesteps: Sequence[float] | None = None, n: int | None = None):
        self.pool = pool
        self.model_id = model_id
        self.settings = dict(settings or {})
        self.folder = None if folder is None else Path(folder)
        self._shards = list(shards or [])
        self._features: dict[tuple[str, float], np.ndarray] = {}
        if features is not None:
            for (s, t), x in features.items():
                self._features[(s, round(float(t), 4))] = np.asarray(x, dtype=np.float32)
            if not self._features:
                raise InputError("an ActivationDataset needs at least one (site, t) array")
            lengths = {len(x) for x in self._features.values()}
            if len(lengths) > 1:
                raise InputError(f"feature arrays have different numbers of rows: {sorted(lengths)}")
            n = lengths.pop()
            sites = list(dict.fromkeys(s for s, _ in self._features))
            timesteps = sorted({t for _, t in self._features})
        elif self.folder is None:
            raise InputError("pass features= (in memory) or use ActivationDataset.load(folder)")
        self.n = int(n or 0)
        self.sites: list[str] = list(sites or [])
        self.timesteps: list[float] = [round(float(t), 4) for t in (timesteps or [])]
        self.labels: dict[str, np.ndarray] = {}
        for k, v in (labels or {}).items():
            arr = np.asarray([("" if x is None else str(x)) for x in v], dtype=str)
            if len(arr) != self.n:
                raise InputError(f"labels[{k!r}] has {len(arr)} values for {self.n} items")
            self.labels[k] = arr
        self.prompts = list(prompts) if prompts is not None else []

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        where = f"folder={str(self.folder)!r}" if self.folder else "in memory"
        return (f"ActivationDataset(n={self.n}, sites={len(self.sites)}, timesteps={self.timesteps}, "
                f"pool={self.pool!r}, factors={list(self.labels)}, {where})")

    def keys(self) -> list[tuple[str, float]]:
        return [(s, t) for s in self.sites for t in self.timesteps]

    def _t(self, t: float) -> float:
        for kt in self.timesteps:
            if abs(kt - float(t)) < 1e-4:
                return kt
        raise InputError(f"t={t} was not collected; this dataset has t in {self.timesteps}")

    def get(self, site: str, t: float) -> np.ndarray:
        """Features of every item at ``site`` and ``t``: ``(n, dim)`` or ``(n, tokens, dim)`` float32."""
        if site not in self.sites:
            raise InputError(f"site {site!r} was not collected; this dataset has {len(self.sites)} sites, "
                             f"e.g. {self.sites[:3]}")
        t = self._t(t)
        if self._features:
            return self._features[(site, t)]
        parts = [_read_tensor(self.folder / sh["file"], _key(site, t), sh.get("bytes")) for sh in self._shards]
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    @classmethod
    def load(cls, folder: str | Path) -> ActivationDataset:
        """Open a folder written by `collect(..., out=folder)` (features stay on disk until `get`)."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise InputError(f"no activation dataset at {folder} (missing {MANIFEST}); run probe.collect(out=...)")
        m = read_json(path)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise CorruptFileError(f"{path} is not an activation-dataset manifest (format {FORMAT})")
        n_batches = m["n_batches"]
        done = m.get("shards", {})
        if len(done) < n_batches:
            raise InputError(f"the collection in {folder} is incomplete ({len(done)} of {n_batches} shards); "
                             "run collect() again with the same arguments and out= to resume")
        shards = [done[str(k)] for k in range(n_batches)]
        st = m["settings"]
        return cls(None, m.get("labels", {}), prompts=m.get("prompts"), pool=st["pool"], model_id=m.get("model"),
                   settings=st, folder=folder, shards=shards, sites=st["sites"], timesteps=st["timesteps"],
                   n=m["n"])


def _read_tensor(path: Path, key: str, expected_bytes: int | None) -> np.ndarray:
    if not path.is_file():
        raise CorruptFileError(f"shard {path} is missing; delete its entry from {MANIFEST} or rerun collect()")
    if expected_bytes is not None and path.stat().st_size != expected_bytes:
        raise CorruptFileError(f"shard {path} has {path.stat().st_size} bytes, the manifest says {expected_bytes}; "
                               "delete the shard and rerun collect() with the same out= to recompute it")
    try:
        with safe_open(str(path), framework="np") as f:
            if key not in f.keys():
                raise CorruptFileError(f"shard {path} has no tensor {key!r}; recompute it")
            return f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, CorruptFileError):
            raise
        raise CorruptFileError(f"shard {path} is not a readable safetensors file ({e}); delete it and rerun "
                               "collect() with the same out= to recompute it") from e


class _ShardStore:
    """A folder of one safetensors shard per batch plus a manifest of the finished ones (atomic writes)."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder = folder
        self.path = folder / MANIFEST
        self.manifest = manifest
        if self.path.is_file():
            old = read_json(self.path)
            if not isinstance(old, dict) or old.get("format") != FORMAT:
                raise CorruptFileError(f"{self.path} is not an activation-dataset manifest; use another out= folder")
            diff = sorted(k for k in set(old["settings"]) | set(manifest["settings"])
                          if old["settings"].get(k) != manifest["settings"].get(k))
            if diff or old.get("model") != manifest["model"]:
                raise InputError(
                    f"{folder} holds a collection made with other settings ({', '.join(diff) or 'model'} differ); "
                    "use another out= folder or delete this one"
                )
            self.manifest["shards"] = old.get("shards", {})
            self.manifest["seconds"] = old.get("seconds", 0.0)

    def done(self) -> set[int]:
        """Shards listed in the manifest whose file is there with the recorded size."""
        ok = set()
        for k, sh in self.manifest["shards"].items():
            f = self.folder / sh["file"]
            if f.is_file() and f.stat().st_size == sh["bytes"]:
                ok.add(int(k))
            else:
                warnings.warn(f"shard {f} is missing or damaged; recomputing it", stacklevel=3)
        self.manifest["shards"] = {k: v for k, v in self.manifest["shards"].items() if int(k) in ok}
        return ok

    def write(self, k: int, sl: slice, features: Mapping[str, np.ndarray], seconds: float) -> None:
        name = f"shard-{k:05d}.safetensors"
        data = save({key: np.ascontiguousarray(x, dtype=np.float32) for key, x in features.items()})
        atomic_write_bytes(self.folder / name, data)
        self.manifest["shards"][str(k)] = {"file": name, "start": sl.start, "stop": sl.stop, "bytes": len(data)}
        self.manifest["seconds"] = round(self.manifest.get("seconds", 0.0) + seconds, 3)
        # The manifest is written after the shard: a shard it lists is always complete on disk.
        atomic_write_json(self.path, self.manifest)


def collect(
    pipe,
    inputs,
    sites: str | Iterable[str] | Callable[[str], bool] | None = None,
    timesteps: float | Sequence[float] = (0.25, 0.5, 0.75),
    *,
    prompts: str | Sequence[str] | None = None,
    pool: str = "mean",
    batch_size: int = 32,
    seed: int = 0,
    labels: Mapping[str, Sequence[str]] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    guidance: float | None = None,
    resize=None,
) -> ActivationDataset:
    """Run the model on items and keep each site's activations at each ``t``.

    ``inputs``, one of:
      - ``(images, prompts)`` or an image array ``(N, H, W, 3)`` (uint8, or float in [0, 1]) with ``prompts=``;
      - a list of dicts ``{"image": ..., "prompt": ..., "labels": {...}}`` (image: array, PIL or path);
      - a list of `explore.evaluation.items.BenchItem` (or anything with ``.load_image()``, ``.prompt``,
        ``.labels``);
      - a list of scenes of an embedded world (ShapesWorld `Scene` s, Pairs `PairScene` s): rendered at the
        model's resolution, full captions, exact labels;
      - a list of captions: each image is generated (`explore.generate`, noise seed ``seed + i``).

    For each batch: encode (`explore.encode`); for each ``t``,
    ``z_t = (1 - t) z + t ε`` with one ε per item seeded by ``seed + i`` (features do not depend on
    batching), then ONE `velocity` call caching the conditional branch. ``guidance`` (None):
    SD3 runs without CFG (``1.0``): the conditional rows' activations are the same as under CFG,
    at half the cost; FLUX uses the spec's distilled guidance, because the guidance embedding
    is an input of every block. ``pool``: ``"mean"`` averages tokens -> ``(N, dim)``;
    ``"token"`` keeps ``(N, tokens, dim)`` (large: for small models or a few sites).

    ``labels``: factor -> one value per item, added to (and overriding) labels the items carry.
    ``out``: a folder to stream one safetensors shard per batch into, with ``manifest.json``
    updated after each shard; calling again with the same arguments skips finished shards
    (resume); other arguments raise `InputError`. Only the prompts are fingerprinted, not the
    image pixels: resume with the same images.
    """
    site_list = resolve_sites(pipe, sites)
    ts = check_timesteps(timesteps)
    reduce = _pool_fn(pool)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    src = _normalise_inputs(pipe, inputs, prompts, labels)
    n = len(src)
    if guidance is None:
        guidance = family(pipe).no_guidance(spec(pipe).guidance)
    n_batches = math.ceil(n / batch_size)
    settings = {
        "sites": site_list, "timesteps": ts, "pool": pool, "batch_size": batch_size, "seed": seed,
        "guidance": float(guidance), "resize": resize if resize is None or isinstance(resize, str) else list(resize),
        "generated": src.load is None, "n": n,
        "prompts_sha256": hashlib.sha256("\n".join(src.prompts).encode()).hexdigest(),
    }
    store = None
    done: set[int] = set()
    if out is not None:
        manifest = envelope(spec(pipe).model_id, seed, settings, 0.0, format=FORMAT, n=n, n_batches=n_batches,
                            prompts=src.prompts, labels=src.labels, shards={})
        store = _ShardStore(Path(out), manifest)
        done = store.done()
    bar = tqdm(total=n, desc="collect", unit="item", disable=not progress,
               initial=sum(min(n, (k + 1) * batch_size) - k * batch_size for k in done))
    parts: dict[str, list[np.ndarray]] = {}
    try:
        for k in range(n_batches):
            if k in done:
                continue
            sl = slice(k * batch_size, min(n, (k + 1) * batch_size))
            t0 = time.perf_counter()
            feats = _batch_features(pipe, src, sl, site_list, ts, reduce, guidance, seed, resize)
            if store is not None:
                store.write(k, sl, feats, time.perf_counter() - t0)
            else:
                for key, x in feats.items():
                    parts.setdefault(key, []).append(x)
            bar.update(sl.stop - sl.start)
    finally:
        bar.close()
    if store is not None:
        return ActivationDataset.load(out)
    features = {(s, t): np.concatenate(parts[_key(s, t)]) for s in site_list for t in ts}
    return ActivationDataset(features, src.labels, prompts=src.prompts, pool=pool, model_id=spec(pipe).model_id,
                             settings=settings)


# ---------------------------------------------------------------------------------------------
# Linear probes
