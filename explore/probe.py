"""Probing: what the transformer's streams know, per site and noise level (DESIGN §4).

Data flow: `collect` runs the model on images + prompts and keeps each site's activations at a few
``t`` (an `ActivationDataset`, in memory or streamed to a resumable folder of shards); `probe_all`
fits one `LinearProbe` per (factor, site, t) and returns `ProbeResults` (held-out accuracy table,
best ``t``, per-value probe directions); `plot_accuracy` draws accuracy against depth.

Cost: one transformer sequence per item and ``t`` (`collect` runs the conditional branch only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CorruptFileError, InputError
from .hooks import cache_activations, parse_site, resolve_sites
from .latent import encode, encode_text, flow_noise, velocity
from .models import family_of, spec
from .shapes.world import Scene

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
        elif hasattr(first, "load_image") and hasattr(first, "prompt"):  # explore.benchmark.BenchItem and alikes
            prompts = [it.prompt for it in items]
            items_labels = [getattr(it, "labels", None) for it in items]
            load = lambda sl: [it.load_image() for it in items[sl]]  # noqa: E731
        elif isinstance(first, Scene):
            from .shapes.world import TEMPLATES, caption, render

            side = spec(pipe).resolution
            # Full captions in every template in turn: the label is exact and the word order varies.
            if prompts is None:
                prompts = [caption(s, template=i % len(TEMPLATES)) for i, s in enumerate(items)]
            items_labels = [s.labels for s in items]
            load = lambda sl: np.stack([render(s, side) for s in items[sl]])  # noqa: E731
        else:
            if prompts is None:
                raise InputError(
                    f"cannot read inputs of type {type(first).__name__}: pass (images, prompts), a list of dicts "
                    "with 'image' and 'prompt', BenchItems, ShapesWorld Scenes, or a list of captions"
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


def _check_timesteps(timesteps) -> list[float]:
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
        from .edit import generate

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
        from .io import read_json

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
    from safetensors import SafetensorError, safe_open

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
        from .io import read_json

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
        from safetensors.numpy import save

        from .io import atomic_write_bytes, atomic_write_json

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
      - a list of `explore.benchmark.BenchItem` (or anything with ``.load_image()``, ``.prompt``, ``.labels``);
      - a list of ShapesWorld `Scene` s: rendered at the model's resolution, full captions, exact labels;
      - a list of captions: each image is generated (`explore.edit.generate`, noise seed ``seed + i``).

    For each batch: encode (`explore.latent.encode`); for each ``t``,
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
    ts = _check_timesteps(timesteps)
    reduce = _pool_fn(pool)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    src = _normalise_inputs(pipe, inputs, prompts, labels)
    n = len(src)
    if guidance is None:
        guidance = 1.0 if family_of(pipe) == "sd3" else spec(pipe).guidance
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
        from .io import envelope

        manifest = envelope(spec(pipe).model_id, seed, settings, 0.0, format=FORMAT, n=n, n_batches=n_batches,
                            prompts=src.prompts, labels=src.labels, shards={})
        store = _ShardStore(Path(out), manifest)
        done = store.done()
    from tqdm.auto import tqdm

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
# ---------------------------------------------------------------------------------------------


def _as_2d(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise InputError(f"features must be (n, dim), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InputError("features contain NaN or inf")
    return X


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > 0)


class LinearProbe:
    """A logistic-regression probe with a held-out split (scikit-learn estimator contract).

    ``fit(X, y)``: ``X`` ``(n, dim)``, ``y`` ``(n,)`` labels. Fitted attributes:
    ``accuracy_`` (held-out), ``train_accuracy_``, ``chance_`` (the majority training class's
    rate on the held-out rows), ``classes_``, ``coef_`` ``(k, dim)`` / ``(1, dim)`` for two classes
    and ``intercept_`` in the *original* feature space (standardisation folded in),
    ``directions_`` ``(k, dim)`` unit vectors — for each class, the direction that raises its
    logit relative to the others (two classes: ``±coef_``) — ``class_means_`` ``(k, dim)`` over all
    rows, ``n_train_``, ``n_test_``, ``converged_``.
    """

    def __init__(self, C: float = 1.0, test_size: float = 0.25, random_state: int = 0, standardize: bool = True,
                 max_iter: int = 1000):
        self.C = C
        self.test_size = test_size
        self.random_state = random_state
        self.standardize = standardize
        self.max_iter = max_iter

    def _split(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.model_selection import train_test_split

        n = len(y)
        idx = np.arange(n)
        if self.test_size == 0:
            return idx, idx[:0]
        n_test = math.ceil(self.test_size * n)
        if n_test < 1 or n - n_test < 2:
            raise InputError(f"{n} rows are too few for test_size={self.test_size}")
        _, counts = np.unique(y, return_counts=True)
        # Stratify when every class can appear on both sides; otherwise a plain seeded split.
        strat = y if counts.min() >= 2 and min(n_test, n - n_test) >= len(counts) else None
        tr, te = train_test_split(idx, test_size=n_test, random_state=self.random_state, stratify=strat)
        return np.sort(tr), np.sort(te)

    def fit(self, X, y) -> LinearProbe:
        """Fit on a seeded (stratified where possible) training split; score on the held-out rest."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        if not (self.C > 0 and math.isfinite(self.C)):
            raise InputError(f"C must be a positive number, got {self.C}")
        if not 0 <= self.test_size < 1:
            raise InputError(f"test_size must lie in [0, 1), got {self.test_size}")
        X = _as_2d(X)
        y = np.asarray(y)
        if y.shape != (len(X),):
            raise InputError(f"y must have one label per row of X ({len(X)}), got shape {y.shape}")
        if len(np.unique(y)) < 2:
            raise InputError(f"a probe needs at least two classes, got only {np.unique(y).tolist()}")
        tr, te = self._split(y)
        if len(np.unique(y[tr])) < 2:
            raise InputError("the training split holds a single class; use more rows or a smaller test_size")
        mean = X[tr].mean(0) if self.standardize else np.zeros(X.shape[1])
        scale = X[tr].std(0) if self.standardize else np.ones(X.shape[1])
        scale[scale == 0] = 1.0  # constant features: leave them unscaled, as StandardScaler does
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit((X[tr] - mean) / scale, y[tr])
        self.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        self._mean, self._scale = mean, scale
        self.classes_ = clf.classes_
        self.coef_ = clf.coef_ / scale
        self.intercept_ = clf.intercept_ - (clf.coef_ * (mean / scale)).sum(1)
        w = self.coef_
        self.directions_ = _unit(np.concatenate([-w, w]) if len(self.classes_) == 2 else w)
        self.class_means_ = np.stack([X[y == c].mean(0) for c in self.classes_])
        self.n_train_, self.n_test_ = len(tr), len(te)
        self.train_accuracy_ = float((self.predict(X[tr]) == y[tr]).mean())
        if len(te):
            values, counts = np.unique(y[tr], return_counts=True)
            self.accuracy_ = float((self.predict(X[te]) == y[te]).mean())
            self.chance_ = float((y[te] == values[counts.argmax()]).mean())
        else:
            self.accuracy_ = self.chance_ = float("nan")
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise InputError("this probe is not fitted yet; call fit(X, y) first")

    def decision_function(self, X) -> np.ndarray:
        self._check_fitted()
        return _as_2d(X) @ self.coef_.T + self.intercept_

    def predict(self, X) -> np.ndarray:
        """Predicted class of each row of ``X`` ``(n, dim)``."""
        s = self.decision_function(X)
        return self.classes_[(s[:, 0] > 0).astype(int)] if s.shape[1] == 1 else self.classes_[s.argmax(1)]

    def score(self, X, y) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())

    def _index(self, value) -> int:
        self._check_fitted()
        hits = np.flatnonzero(self.classes_ == value)
        if not len(hits):
            raise InputError(f"{value!r} is not a class of this probe; classes: {self.classes_.tolist()}")
        return int(hits[0])

    def direction(self, value) -> np.ndarray:
        """The unit probe direction of class ``value`` (a row of ``directions_``)."""
        return self.directions_[self._index(value)]

    def mean_difference(self, a, b) -> np.ndarray:
        """Unit class-mean-difference direction from class ``a`` to class ``b``: ``mean[b] - mean[a]``, normalised."""
        return _unit(self.class_means_[self._index(b)] - self.class_means_[self._index(a)])


# ---------------------------------------------------------------------------------------------
# Probing a dataset
# ---------------------------------------------------------------------------------------------


def site_depth(site: str, n_double: int) -> int:
    """Index of a site's block in forward order (FLUX single blocks come after the ``n_double`` double ones)."""
    group, index, _ = parse_site(site)
    return index if group == "transformer_blocks" else n_double + index


@dataclasses.dataclass
class ProbeResults:
    """Fitted probes keyed ``(factor, site, t)`` and the feature shape of each site."""

    probes: dict[tuple[str, str, float], LinearProbe]
    factors: list[str]
    sites: list[str]
    timesteps: list[float]
    feature_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    def probe(self, factor: str, site: str, t: float) -> LinearProbe:
        hit = self.probes.get((factor, site, round(float(t), 4)))
        if hit is not None:
            return hit
        for (f, s, kt), p in self.probes.items():
            if f == factor and s == site and abs(kt - float(t)) < 1e-4:
                return p
        raise InputError(f"no probe for factor {factor!r} at {site}, t={t}; factors {self.factors}, "
                         f"t in {self.timesteps}")

    def accuracy(self, factor: str, site: str, t: float) -> float:
        return self.probe(factor, site, t).accuracy_

    def as_table(self) -> list[dict[str, Any]]:
        """One row per probe: factor, site, block, stream, t, accuracy, train_accuracy, chance, n_classes, ..."""
        n_double = _n_double(self.sites)
        rows = []
        for (f, s, t), p in self.probes.items():
            _, _, stream = parse_site(s)
            rows.append({
                "factor": f, "site": s, "block": site_depth(s, n_double), "stream": stream, "t": t,
                "accuracy": p.accuracy_, "train_accuracy": p.train_accuracy_, "chance": p.chance_,
                "n_classes": len(p.classes_), "n_train": p.n_train_, "n_test": p.n_test_, "converged": p.converged_,
            })
        return rows

    def accuracy_by_t(self, factor: str, site: str) -> dict[float, float]:
        """Held-out accuracy at each ``t`` for one factor and site."""
        return {t: self.accuracy(factor, site, t) for t in self.timesteps if (factor, site, t) in self.probes}

    def best_over_t(self, factor: str, site: str) -> tuple[float, float]:
        """``(t, accuracy)`` of the best-probing noise level for one factor and site."""
        by_t = self.accuracy_by_t(factor, site)
        if not by_t:
            raise InputError(f"no probes for factor {factor!r} at {site}")
        t = max(by_t, key=lambda k: (by_t[k], -k))
        return t, by_t[t]

    def best(self, factor: str) -> tuple[str, float, float]:
        """``(site, t, accuracy)`` of the best probe for a factor over all sites and ``t``."""
        rows = [(s, t, p.accuracy_) for (f, s, t), p in self.probes.items() if f == factor]
        if not rows:
            raise InputError(f"no probes for factor {factor!r}; factors: {self.factors}")
        return max(rows, key=lambda r: r[2])

    def probe_directions(self, factor: str, kind: str = "probe") -> list[tuple[str, float, str, np.ndarray]]:
        """``(site, t, value, unit vector)`` for every probe of ``factor`` and each of its values.

        ``kind``: ``"probe"`` (the probe's weight direction) or ``"mean"`` (class mean minus the
        mean of the other class means). Vectors have the site's feature shape (``(dim,)`` or
        ``(tokens, dim)``), ready for `explore.hooks.steer`.
        """
        if kind not in ("probe", "mean"):
            raise InputError(f"kind must be 'probe' or 'mean', got {kind!r}")
        out = []
        for (f, s, t), p in self.probes.items():
            if f != factor:
                continue
            shape = self.feature_shapes.get(s, (p.coef_.shape[1],))
            for i, value in enumerate(p.classes_):
                if kind == "probe":
                    v = p.directions_[i]
                else:
                    others = np.delete(p.class_means_, i, axis=0).mean(0)
                    v = _unit(p.class_means_[i] - others)
                out.append((s, t, str(value), v.reshape(shape)))
        if not out:
            raise InputError(f"no probes for factor {factor!r}; factors: {self.factors}")
        return out


def _n_double(site_names: Iterable[str]) -> int:
    idx = [parse_site(s)[1] for s in site_names if s.startswith("transformer_blocks.")]
    return max(idx) + 1 if idx else 0


def probe_all(
    dataset: ActivationDataset,
    factors: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    timesteps: Sequence[float] | None = None,
    *,
    C: float = 1.0,
    test_size: float = 0.25,
    random_state: int = 0,
    standardize: bool = True,
    progress: bool = False,
) -> ProbeResults:
    """Fit one `LinearProbe` per (factor, site, t).

    ``factors``: default every label with at least two values. Items whose label is ``""`` are
    left out of that factor's probe. Token features ``(n, tokens, dim)`` are flattened; the
    directions come back in the ``(tokens, dim)`` shape. Each (site, t) is read once (streamed
    datasets stay memory-bounded).
    """
    from tqdm.auto import tqdm

    if factors is None:
        factors = [k for k, v in dataset.labels.items() if len(set(v) - {""}) >= 2]
        if not factors:
            raise InputError("the dataset has no factor with two or more values; pass labels= to collect()")
    else:
        factors = [factors] if isinstance(factors, str) else list(factors)
        for f in factors:
            if f not in dataset.labels:
                raise InputError(f"no labels for factor {f!r}; the dataset has {list(dataset.labels)}")
            if len(set(dataset.labels[f]) - {""}) < 2:
                raise InputError(f"factor {f!r} has fewer than two values in this dataset; nothing to probe")
    site_list = list(sites) if sites is not None else dataset.sites
    ts = [dataset._t(t) for t in timesteps] if timesteps is not None else dataset.timesteps
    probes: dict[tuple[str, str, float], LinearProbe] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for s, t in tqdm([(s, t) for s in site_list for t in ts], desc="probes", disable=not progress):
        X = dataset.get(s, t)
        shapes[s] = tuple(X.shape[1:])
        X = X.reshape(len(X), -1)
        for f in factors:
            y = dataset.labels[f]
            keep = y != ""
            probes[(f, s, t)] = LinearProbe(C, test_size, random_state, standardize).fit(X[keep], y[keep])
    return ProbeResults(probes, list(factors), site_list, list(ts), shapes)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def plot_accuracy(results: ProbeResults, factors: Sequence[str] | None = None, t: float | None = None):
    """Held-out probe accuracy against block index, one panel per stream (``img``, ``txt``).

    One colour per factor; ``t`` None plots the best ``t`` at each site (the title says so), a
    number plots that ``t``. The dashed line in a factor's colour is its chance level (the
    majority class). FLUX single blocks continue the x axis after the double blocks (dotted
    line). Returns a matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    factors = list(results.factors if factors is None else ([factors] if isinstance(factors, str) else factors))
    for f in factors:
        if f not in results.factors:
            raise InputError(f"no probes for factor {f!r}; factors: {results.factors}")
    n_double = _n_double(results.sites)
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
