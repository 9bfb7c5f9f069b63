"""Pipelines: load SD3 / SD3.5 / FLUX.1 (hub id or folder), the embedded ShapesWorld model, tiny
random pipelines for tests, and what the toolkit needs to know about each (`ModelSpec`).

Every pipeline `explore` drives is a stock diffusers pipeline (``StableDiffusion3Pipeline`` or
``FluxPipeline``); `load_pipeline` only decides where the weights come from and attaches a
`ModelSpec` (``pipe.explore_spec``) with the settings the rest of the package reads: model id,
family, native resolution, ``max_sequence_length``, default sampler.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, ModelNotFoundError, UnsupportedModelError

SHAPES = "shapes"
TINY = ("tiny-sd3", "tiny-flux")
SHAPES_DIR = Path(__file__).parent / "shapes" / "model"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What `explore` needs to know about a pipeline beyond its diffusers config."""

    model_id: str
    family: str  # "sd3" | "flux"
    resolution: int  # native image side in pixels
    max_sequence_length: int  # T5 tokens (SD3 pads zeros here when text_encoder_3 is None)
    sampler: dict  # {"steps", "guidance", "shift"?}
    world: str | None = None  # "shapes" for ShapesWorld (enables readers, exact masks, grammar)
    path: str | None = None  # folder it was loaded from, if any

    @property
    def guidance(self) -> float:
        return float(self.sampler.get("guidance", 1.0))

    @property
    def steps(self) -> int:
        return int(self.sampler.get("steps", 28))


def family_of(pipe) -> str:
    """``"sd3"`` or ``"flux"`` from the transformer class (covers img2img/inpaint variants too)."""
    name = type(getattr(pipe, "transformer", None)).__name__
    if name == "SD3Transformer2DModel":
        return "sd3"
    if name == "FluxTransformer2DModel":
        return "flux"
    raise UnsupportedModelError(
        f"{type(pipe).__name__} with transformer {name} is not supported; explore drives SD3/SD3.5 "
        "(SD3Transformer2DModel) and FLUX.1 (FluxTransformer2DModel) pipelines"
    )


def vae_scale_factor(pipe) -> int:
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def size_multiple(pipe) -> int:
    """Image sides must be multiples of this (VAE down-sampling x patch / packing size)."""
    if family_of(pipe) == "flux":
        return vae_scale_factor(pipe) * 2
    return vae_scale_factor(pipe) * pipe.transformer.config.patch_size


def spec(pipe) -> ModelSpec:
    """The pipeline's `ModelSpec` (attached by `load_pipeline`; inferred for pipelines built elsewhere)."""
    s = getattr(pipe, "explore_spec", None)
    if s is not None:
        return s
    s = _default_spec(pipe, model_id=getattr(pipe, "name_or_path", None) or type(pipe).__name__)
    attach_spec(pipe, s)
    return s


def attach_spec(pipe, s: ModelSpec) -> None:
    # object.__setattr__: DiffusionPipeline.__setattr__ treats some names as config entries.
    object.__setattr__(pipe, "explore_spec", s)


def _default_spec(pipe, model_id: str, path: str | None = None) -> ModelSpec:
    fam = family_of(pipe)
    if fam == "sd3":
        res = pipe.transformer.config.sample_size * vae_scale_factor(pipe)
        has_t5 = getattr(pipe, "text_encoder_3", None) is not None
        sampler = {"steps": 28, "guidance": 7.0}
        msl = 256 if has_t5 else 0
    else:
        res = 1024
        sampler = {"steps": 28, "guidance": 3.5}
        msl = 512
    shift = getattr(pipe.scheduler.config, "shift", None)
    if shift is not None:
        sampler["shift"] = float(shift)
    return ModelSpec(model_id=model_id, family=fam, resolution=int(res), max_sequence_length=msl, sampler=sampler,
                     path=path)


def _spec_from_folder(pipe, folder: Path, model_id: str) -> ModelSpec:
    s = _default_spec(pipe, model_id, str(folder))
    cfg_path = folder / "explore.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        s = dataclasses.replace(
            s,
            model_id=cfg.get("model_id", model_id) if model_id == SHAPES else model_id,
            resolution=int(cfg.get("resolution", s.resolution)),
            max_sequence_length=int(cfg.get("max_sequence_length", s.max_sequence_length)),
            sampler={**s.sampler, **cfg.get("sampler", {})},
            world=cfg.get("world"),
        )
    return s


def save_spec(pipe, folder: str | os.PathLike) -> None:
    """Write ``explore.json`` so that `load_pipeline(folder)` restores the same `ModelSpec`."""
    from .io import atomic_write_json

    s = spec(pipe)
    atomic_write_json(
        Path(folder) / "explore.json",
        {"model_id": s.model_id, "family": s.family, "resolution": s.resolution,
         "max_sequence_length": s.max_sequence_length, "sampler": s.sampler, "world": s.world},
    )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _null_components(folder: Path) -> dict[str, None]:
    """Components listed as ``[null, null]`` in ``model_index.json`` (e.g. SD3 without T5)."""
    index = folder / "model_index.json"
    if not index.is_file():
        return {}
    cfg = json.loads(index.read_text())
    return {k: None for k, v in cfg.items() if isinstance(v, list) and v[:1] == [None]}


def _from_pretrained(source: str, dtype, local_files_only: bool, **kwargs):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(source, dtype=dtype, local_files_only=local_files_only, **kwargs)


def load_pipeline(
    name_or_path: str | os.PathLike = SHAPES,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    offload: str | None = None,
    seed: int = 0,
    **kwargs: Any,
):
    """Load a pipeline and attach its `ModelSpec`.

    ``name_or_path``:
      - ``"shapes"`` — the embedded ShapesWorld model shipped inside the package (default);
      - ``"tiny-sd3"`` / ``"tiny-flux"`` — tiny random pipelines built in code (``seed``), for tests;
      - a local folder in ``save_pretrained`` layout, or a hub id such as
        ``"stabilityai/stable-diffusion-3-medium-diffusers"`` (found in the local hub cache when
        offline, downloaded otherwise).

    ``offload``: ``None`` (everything on ``device``), ``"model"`` (diffusers' model CPU offload) or
    ``"sequential"`` (sequential CPU offload, slowest, least memory). Extra ``kwargs`` go to
    ``from_pretrained`` (e.g. ``variant="fp16"``).
    """
    name = str(name_or_path)
    if offload not in (None, "model", "sequential"):
        raise InputError(f"offload must be None, 'model' or 'sequential', got {offload!r}")
    if name in TINY:
        from .tiny import tiny_flux, tiny_sd3

        pipe = (tiny_sd3 if name == "tiny-sd3" else tiny_flux)(seed=seed)
        pipe = pipe.to(device=device, dtype=dtype)
        return pipe
    if name == SHAPES:
        folder = SHAPES_DIR
        if not (folder / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"the embedded ShapesWorld model is missing from {folder}; reinstall explore, or train it with "
                "`python -m explore train-shapes --out <dir>` and load that folder"
            )
    else:
        folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{folder} is a folder but has no model_index.json; point to a diffusers pipeline folder "
                "(the output of save_pretrained or a downloaded hub snapshot)"
            )
        kwargs = {**_null_components(folder), **kwargs}
        pipe = _from_pretrained(str(folder), dtype, True, **kwargs)
        model_id = SHAPES if name == SHAPES else str(folder)
        s = _spec_from_folder(pipe, folder, model_id)
    else:
        if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
            raise ModelNotFoundError(f"no folder at {folder.resolve()}; check the path")
        offline = _offline()
        try:
            pipe = _from_pretrained(name, dtype, offline, **kwargs)
        except (OSError, ValueError) as e:
            cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
                os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
            )
            how = (
                f"when online, run `hf download {name}` (gated models such as SD3 and FLUX.1-dev need "
                "`hf auth login` and the licence accepted on the model page), or pass a local folder"
            )
            where = f"as a local folder ({folder.resolve()}: not found) and in the Hugging Face cache ({cache})"
            state = "offline (HF_HUB_OFFLINE=1)" if offline else "online"
            raise ModelNotFoundError(f"could not load {name!r}: looked {where}, {state}; {how}. ({e})") from e
        s = _default_spec(pipe, name)
    family_of(pipe)  # raise early for unsupported pipelines
    attach_spec(pipe, s)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------
# Hook sites (DESIGN §4): one table per architecture
# ---------------------------------------------------------------------------------------------


def sites(pipe) -> list[str]:
    """Every canonical hook site of the pipeline's transformer, in forward order.

    SD3: ``transformer_blocks.{i}.img`` / ``.txt`` (the last block has no ``.txt`` output: it
    returns ``(None, image)``). FLUX: the same for double blocks, then
    ``single_transformer_blocks.{i}.img`` / ``.txt``.
    """
    tr = pipe.transformer
    out = []
    for i, block in enumerate(tr.transformer_blocks):
        out.append(f"transformer_blocks.{i}.img")
        if not getattr(block, "context_pre_only", False):
            out.append(f"transformer_blocks.{i}.txt")
    for i, _ in enumerate(getattr(tr, "single_transformer_blocks", [])):
        out += [f"single_transformer_blocks.{i}.img", f"single_transformer_blocks.{i}.txt"]
    return out
