"""Sparse autoencoders on a DiT's cached activations, trained with SAELens (the optional ``sae`` extra).

An SAE here reads one hook site (e.g. ``transformer_blocks.2.img``: the image stream after block 2;
or ``transformer_blocks.2.txt``, the text stream) at one or a few noise levels ``t``, one row per
token of that stream: `token_activations` runs the model on
renders of an embedded world (`explore.interp.activations.collect`, ``pool="token"``) and returns
``(renders x t x tokens, dim)`` rows with the render, ``t`` and token of each. `train_sae` trains a
TopK or BatchTopK SAE on them with SAELens' own trainer (`sae_lens.SAETrainer`, its
``TopKTrainingSAE`` / ``BatchTopKTrainingSAE``): SAELens takes any iterator of activation batches,
keeps its training state in checkpoints we can resume from exactly, and saves the SAE with its
config next to the weights (``cfg.json``, ``sae_weights.safetensors``) in the format the field
shares. `token_batches` is the thin adapter between the two: fixed-size batches of the cached rows,
in an order set by the seed and the step alone (a resumed run sees the batches an uninterrupted
one would). Why SAELens: it is maintained, implements TopK and BatchTopK with the auxiliary
dead-feature loss, and installs without torchvision (``overcomplete`` imports torchvision with its
SAEs; ``dictionary-learning`` needs nnsight, which needs it) — but it is heavy (~0.5 GB,
transformer-lens, wandb; ~9 s to import), so it is an optional extra, imported only here and only
when an SAE is trained or loaded.

A folder written by `train_sae`::

    sae.json                    explore's record: site, t, world, settings, training curve, timing
    cfg.json, sae_weights.safetensors   the SAELens inference SAE (BatchTopK saves as JumpReLU)
    checkpoint/                 the latest training state while training (removed when done)

`reconstruct` and `patch_with_sae` put an SAE in the model's path: the site's activation replaced by
its reconstruction (what the SAE keeps of it), as a hook (`explore.interp.hooks.hooks`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..io import atomic_write_json, envelope, read_json
from ..worlds import require_world
from .hooks import hooks, resolve_sites

KINDS = ("topk", "batchtopk")
RECORD = "sae.json"


@dataclasses.dataclass(frozen=True)
class SAESettings:
    """What an SAE is trained on and how.

    ``site``: the hook site (`explore.sites`); ``timesteps``: the noise levels whose activations it
    reads (each render contributes ``len(timesteps) x tokens`` rows); ``n``: training renders (world
    scenes drawn from ``seed``); ``kind``: ``"topk"`` (exactly ``k`` features per token) or
    ``"batchtopk"`` (``k`` per token on average over a batch; saved as a JumpReLU SAE with the
    learned threshold); ``expansion``: features per activation dimension; ``steps`` of
    ``batch_size`` rows at learning rate ``lr``; ``checkpoint_every``: steps between saved states.
    """

    site: str = "transformer_blocks.2.img"
    timesteps: tuple[float, ...] = (0.5,)
    n: int = 1024
    kind: str = "topk"
    expansion: int = 8
    k: int = 32
    steps: int = 3000
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 1000
    checkpoint_every: int = 500

    def __post_init__(self):
        object.__setattr__(self, "timesteps", tuple(float(t) for t in (
            self.timesteps if isinstance(self.timesteps, (list, tuple)) else (self.timesteps,))))
        if self.kind not in KINDS:
            raise InputError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("n", "expansion", "k", "steps", "batch_size", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"{name} must be a whole number >= 1, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")
        if not self.timesteps or any(not 0 < t < 1 for t in self.timesteps):
            raise InputError(f"timesteps must lie in (0, 1), got {list(self.timesteps)}")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["timesteps"] = list(self.timesteps)
        return d


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TokenActivations:
    """Rows of one site's activations: ``x`` ``(rows, dim)`` float32, and for each row its ``render``
    (index into ``scenes``), noise level ``t`` and ``token`` (an image site: row-major on the patch
    grid; a text site: the position in the text sequence); ``labels`` factor -> one value per render;
    ``grid`` the patch grid's side (None for a text-stream site)."""

    x: torch.Tensor
    render: np.ndarray
    t: np.ndarray
    token: np.ndarray
    scenes: list
    labels: dict[str, np.ndarray]
    grid: int | None
    site: str

    @property
    def stream(self) -> str:
        """``"img"`` or ``"txt"``: which stream of the block the rows are tokens of."""
        return "txt" if self.site.endswith(".txt") else "img"

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def per_render_max(self, Z: np.ndarray) -> np.ndarray:
        """``(renders, F)``: each column of per-row values ``Z`` ``(rows, F)`` at its largest over a render's
        rows (how the features' render-level presence is read everywhere)."""
        out = np.zeros((len(self.scenes), Z.shape[1]), np.float32)
        np.maximum.at(out, self.render, Z)
        return out


def world_scenes(world, n: int, seed: int) -> list:
    """``n`` scenes of an embedded world, each fully determined by ``(seed, i)``."""
    return [world.sample(random.Random(f"sae-{seed}-{i}")) for i in range(n)]


def token_activations(pipe, n: int, seed: int, site: str, timesteps: Sequence[float] = (0.5,), *,
                      batch_size: int = 64, out: str | Path | None = None, progress: bool = True
                      ) -> TokenActivations:
    """One row per (render, ``t``, token) of ``site`` on ``n`` renders of the pipeline's world (full
    captions; `explore.interp.activations.collect` with ``pool="token"``: one transformer sequence
    per render and ``t``). An image-stream site (``*.img``) gives the image tokens, a text-stream
    site (``*.txt``) the caption's text tokens (padding included: the transformer sees them too).
    ``out``: a folder to cache the collection in (resumable)."""
    from .activations import collect

    world = require_world(pipe, "SAEs are trained on an embedded world's renders here (--model shapes or "
                                "shapes-pairs): their factors are what the features are scored against")
    (site,) = resolve_sites(pipe, [site])
    scenes = world_scenes(world, n, seed)
    data = collect(pipe, scenes, sites=[site], timesteps=tuple(timesteps), pool="token", batch_size=batch_size,
                   seed=seed, out=out, progress=progress)
    blocks = [np.asarray(data.get(site, t), dtype=np.float32) for t in data.timesteps]  # (n, tokens, dim) each
    tokens, dim = blocks[0].shape[1:]
    x = np.concatenate([b.reshape(-1, dim) for b in blocks])
    render = np.tile(np.repeat(np.arange(n), tokens), len(blocks))
    t = np.repeat(np.asarray(data.timesteps, dtype=np.float32), n * tokens)
    token = np.tile(np.arange(tokens), n * len(blocks))
    labels = {k: np.asarray(v) for k, v in data.labels.items()}
    grid = int(round(math.sqrt(tokens))) if site.endswith(".img") else None
    return TokenActivations(torch.from_numpy(x), render, t, token, scenes, labels, grid, site)


# ---------------------------------------------------------------------------------------------
# The adapter: cached rows -> SAELens' data provider
# ---------------------------------------------------------------------------------------------


def token_batches(x: torch.Tensor, batch_size: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
    """Endless fixed-size batches of the rows of ``x`` (SAELens' ``DataProvider``): each epoch a
    permutation drawn from ``(seed, epoch)``, its last incomplete batch dropped; the batches of
    step ``start_step`` on, so a resumed run sees exactly what an uninterrupted one would."""
    n = int(x.shape[0])
    if n < batch_size:
        raise InputError(f"{n} activation rows cannot fill one batch of {batch_size}: collect more renders "
                         "or use a smaller batch_size")
    per_epoch = n // batch_size
    step = int(start_step)
    while True:
        epoch, i = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        yield x[perm[i * batch_size:(i + 1) * batch_size]]
        step += 1


def _sae_lens():
    try:
        os.environ.setdefault("WANDB_MODE", "disabled")
        import sae_lens
    except ImportError as e:  # pragma: no cover - the message is what a user without the extra sees
        raise InputError("SAEs need the optional 'sae' extra: pip install -e \".[sae]\" (SAELens; it keeps the "
                         "installed torch)") from e
    return sae_lens


def _training_classes(kind: str):
    sl = _sae_lens()
    if kind == "topk":
        return sl.TopKTrainingSAE, sl.TopKTrainingSAEConfig
    return sl.BatchTopKTrainingSAE, sl.BatchTopKTrainingSAEConfig


def _trainer(sae, settings: SAESettings, data):
    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig

    cfg = SAETrainerConfig(total_training_samples=settings.steps * settings.batch_size,
                           train_batch_size_samples=settings.batch_size, lr=settings.lr, lr_end=settings.lr,
                           device="cpu", dead_feature_window=max(50, settings.steps // 10),
                           feature_sampling_window=max(100, settings.steps // 5),
                           logger=LoggingConfig(log_to_wandb=False))
    return SAETrainer(cfg=cfg, sae=sae, data_provider=data)


def _save_checkpoint(trainer, folder: Path, step: int, curve: list) -> None:
    """The training state at ``step`` (weights, optimiser, dead-feature counters), written beside the
    last one and swapped in by an atomic pointer: a kill at any moment leaves one whole checkpoint."""
    root = folder / "checkpoint"
    target = root / f"step{step}"
    if target.exists():
        shutil.rmtree(target)
    trainer.save_checkpoint(f"step{step}", base_path=root)
    old = read_json(root / "latest.json") if (root / "latest.json").exists() else None
    atomic_write_json(root / "latest.json", {"step": step, "dir": target.name, "curve": curve})
    if old and old.get("dir") != target.name and (root / old["dir"]).exists():
        shutil.rmtree(root / old["dir"])


def train_sae(acts: TokenActivations | torch.Tensor, settings: SAESettings, out: str | Path | None = None, *,
              progress: bool = True, model_id: str | None = None, world: str | None = None):
    """Train an SAE on activation rows; returns the SAELens inference SAE (`encode`, `decode`).

    ``out``: the folder to save it in (module docstring) and to checkpoint into every
    ``settings.checkpoint_every`` steps; calling again with the same settings resumes from the
    last checkpoint, to the same weights an uninterrupted run gives. A folder that holds a
    finished SAE of the same settings is loaded, not retrained; one of other settings is refused.
    """
    x = acts.x if isinstance(acts, TokenActivations) else torch.as_tensor(acts, dtype=torch.float32)
    if x.ndim != 2 or not torch.isfinite(x).all():
        raise InputError(f"activations must be finite (rows, dim), got shape {tuple(x.shape)}")
    folder = Path(out) if out is not None else None
    record = folder / RECORD if folder is not None else None
    if record is not None and record.exists():
        old = read_json(record)
        if old.get("settings") != settings.as_dict():
            raise InputError(f"{folder} holds an SAE trained with other settings ({old.get('settings')}); "
                             "use another folder or delete it")
        if old.get("done"):
            return load_sae(folder)
    _sae_lens()
    from sae_lens.saes.sae import SAEMetadata

    train_cls, cfg_cls = _training_classes(settings.kind)
    d_in = int(x.shape[1])
    cfg = cfg_cls(d_in=d_in, d_sae=settings.expansion * d_in, k=settings.k, dtype="float32", device="cpu",
                  normalize_activations="none",
                  metadata=SAEMetadata(model_name=model_id or "explore",
                                       hook_name=getattr(acts, "site", "activations")))
    start, curve = 0, []
    ckpt = folder / "checkpoint" / "latest.json" if folder is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        if ckpt is not None and ckpt.exists():
            state = read_json(ckpt)
            sae = train_cls.load_from_disk(str(ckpt.parent / state["dir"]), device="cpu")
            start, curve = int(state["step"]), list(state["curve"])
        else:
            sae = train_cls(cfg)
        data = token_batches(x, settings.batch_size, settings.seed, start)
        trainer = _trainer(sae, settings, data)
        if start:
            trainer.load_trainer_state(ckpt.parent / state["dir"])
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(record, {"settings": settings.as_dict(), "done": False})
        t0 = time.perf_counter()
        bar = tqdm(total=settings.steps, initial=start, desc=f"SAE {settings.kind}", disable=not progress)
        for step in range(start, settings.steps):
            trainer.maybe_reset_sparsity()
            outp = trainer.step(next(data))
            trainer.n_training_steps += 1
            if (step + 1) % 50 == 0 or step + 1 == settings.steps:
                curve.append([step + 1, float(outp.loss.detach())])
            bar.update(1)
            if folder is not None and (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
                _save_checkpoint(trainer, folder, step + 1, curve)
        bar.close()
        trainer.set_final_sae_metadata()
    if folder is None:
        return _inference(sae)
    sae.save_inference_model(str(folder))
    n_rows = len(acts) if isinstance(acts, TokenActivations) else int(x.shape[0])
    atomic_write_json(record, envelope(model_id or "explore", settings.seed, settings.as_dict(),
                                       time.perf_counter() - t0, done=True, world=world, d_in=d_in,
                                       d_sae=settings.expansion * d_in, rows=n_rows, curve=curve,
                                       resumed_from=start or None))
    shutil.rmtree(folder / "checkpoint", ignore_errors=True)
    return load_sae(folder)


def _inference(training_sae):
    """The inference SAE of a training SAE (what `save_inference_model` writes), in memory."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        training_sae.save_inference_model(d)
        return _sae_lens().SAE.load_from_disk(d, device="cpu")


def load_sae(folder: str | Path):
    """The SAE a `train_sae` folder holds (SAELens' inference SAE; ``sae.cfg``, `encode`, `decode`);
    its explore record is ``sae.explore`` (site, noise levels, settings)."""
    folder = Path(folder)
    if not (folder / "cfg.json").is_file() or not (folder / RECORD).is_file():
        raise InputError(f"no trained SAE in {folder} (cfg.json and {RECORD} missing); run `sae train` first")
    rec = read_json(folder / RECORD)
    if not rec.get("done"):
        raise InputError(f"the SAE in {folder} is not finished training; run `sae train` again to resume it")
    sae = _sae_lens().SAE.load_from_disk(str(folder), device="cpu")
    sae.eval()
    sae.explore = rec
    return sae


# ---------------------------------------------------------------------------------------------
# Codes, reconstructions, the SAE in the model's path
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_rows(sae, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Feature activations ``(rows, d_sae)`` of activation rows (chunked)."""
    return torch.cat([sae.encode(x[i:i + chunk].float()) for i in range(0, len(x), chunk)])


@torch.no_grad()
def reconstruct(sae, x: torch.Tensor) -> torch.Tensor:
    """What the SAE keeps of ``x`` (``(..., dim)``): ``decode(encode(x))`` in ``x``'s shape and dtype."""
    flat = x.reshape(-1, x.shape[-1]).float()
    return sae.decode(sae.encode(flat)).reshape(x.shape).to(x.dtype)


def patch_with_sae(pipe, sae, site: str):
    """A context manager: while it is open, ``site``'s activation is replaced by its SAE reconstruction
    in every transformer call (renders, edits, collections)."""
    return hooks(pipe, {site: lambda x, *, site: reconstruct(sae, x)})


def sae_json(folder: str | Path) -> dict[str, Any]:
    """The explore record of an SAE folder."""
    return json.loads((Path(folder) / RECORD).read_text())


__all__ = ["KINDS", "SAESettings", "TokenActivations", "encode_rows", "load_sae", "patch_with_sae", "reconstruct",
           "sae_json", "token_activations", "token_batches", "train_sae", "world_scenes"]
