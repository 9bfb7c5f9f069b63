"""Load SD3 / SD3.5 / FLUX.1 pipelines (hub id or folder), the embedded worlds and tiny random pipelines.

`load_pipeline` only decides where the weights come from and gives the pipeline its `ModelSpec`
(from the folder's ``explore.json`` when there is one). `weights_source` is the one rule for
"a local folder or a hub id, offline or not" that every loader of weights uses (pipelines here,
CLIP scorers in `explore.evaluation.scorers`), so its error messages say the same things.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from ..errors import InputError, ModelNotFoundError
from ..io import read_json, write_model_json
from .families import family
from .quantize import pipeline_config, quantize_in_place, scheme
from .spec import (
    SHAPES,
    ModelSpec,
    attach_spec,
    check_attention_backend,
    default_spec,
    set_attention_backend,
    spec,
)
from .tiny import (
    tiny_flux,
    tiny_flux2,
    tiny_flux2_dev,
    tiny_qwen_image,
    tiny_sd3,
    tiny_sd3_medium,
    tiny_sd35,
    tiny_z_image,
)

# name -> builder of a tiny random pipeline (tests); "tiny-sd3" is the original (other tests rely on its weights)
_TINY_BUILDERS = {"tiny-sd3": tiny_sd3, "tiny-sd3.5": tiny_sd35, "tiny-sd3-medium": tiny_sd3_medium,
                  "tiny-flux": tiny_flux, "tiny-flux2": tiny_flux2, "tiny-flux2-dev": tiny_flux2_dev,
                  "tiny-qwen-image": tiny_qwen_image, "tiny-z-image": tiny_z_image}
TINY = tuple(_TINY_BUILDERS)
PACKAGE_DIR = Path(__file__).resolve().parent.parent
SHAPES_DIR = PACKAGE_DIR / "shapes" / "model"
PAIRS = "shapes-pairs"
PAIRS_DIR = PACKAGE_DIR / "pairs" / "model"
EMBEDDED = {SHAPES: SHAPES_DIR, PAIRS: PAIRS_DIR}  # name -> folder shipped inside the package


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: weights come from local folders and the hub cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def hub_cache() -> str:
    return os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Where weights named ``name`` come from: ``source`` for ``from_pretrained`` and what to tell the user."""

    name: str
    source: str
    local_files_only: bool
    folder: Path | None  # the local folder, when it is one

    def not_found(self, what: str, layout: str, error: Exception) -> ModelNotFoundError:
        """The one-line error for weights that could not be loaded from this source."""
        label = f"{what} {self.name!r}" if what else repr(self.name)
        if self.folder is not None:
            return ModelNotFoundError(f"could not load {label}: looked in the folder "
                                      f"{self.folder.resolve()}; it must be {layout}. ({error})")
        state = "offline (HF_HUB_OFFLINE=1)" if self.local_files_only else "online"
        where = (f"as a local folder ({Path(self.name).expanduser().resolve()}: not found) and in the Hugging Face "
                 f"cache ({hub_cache()}), {state}")
        how = (f"when online, run `hf download {self.name}` (gated models such as SD3 and FLUX.1-dev need "
               "`hf auth login` and the licence accepted on the model page), or pass " + layout)
        return ModelNotFoundError(f"could not load {label}: looked {where}; {how}. ({error})")


def weights_source(name: str | os.PathLike, what: str = "model") -> WeightsSource:
    """A local folder (used as it is) or a hub id (the local cache when offline); a path that does not
    exist is a `ModelNotFoundError` at once."""
    name = str(name)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return WeightsSource(name, str(folder), True, folder)
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise ModelNotFoundError(f"no folder at {folder.resolve()} (for the {what}); check the path")
    return WeightsSource(name, name, offline(), None)


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}


def as_dtype(dtype: str | torch.dtype, what: str = "dtype") -> torch.dtype:
    """A torch dtype from a dtype or its name (``"fp32"``, ``"bf16"``, ``"bfloat16"``, ``"torch.float16"``...)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InputError(f"{what} must be float32, bfloat16 or float16, got {dtype}")
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    if not isinstance(dtype, str) or name not in DTYPES:
        raise InputError(f"{what} must be one of fp32, bf16, fp16 (or float32, bfloat16, float16, a torch dtype), "
                         f"got {dtype!r}")
    return DTYPES[name]


def resolve_device(device: str | torch.device = "auto", what: str = "device") -> torch.device:
    """The device to run on (`check_device` also checks this machine has it).

    ``"auto"``: the GPU when one is visible, else the CPU. A bare ``"cuda"`` under ``torchrun`` /
    ``accelerate launch`` (``LOCAL_RANK`` set) means this rank's GPU, ``cuda:LOCAL_RANK``, so each
    process has its own.
    """
    if isinstance(device, str) and device.strip().lower() == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InputError(f"{what} must be cpu or cuda (cuda:N), or auto, got {device!r}") from e
    if device.type not in ("cpu", "cuda", "meta", "mps"):
        raise InputError(f"{what} must be cpu or cuda (cuda:N), or auto, got {str(device)!r}")
    rank, world = os.environ.get("LOCAL_RANK"), int(os.environ.get("WORLD_SIZE", "1"))
    if device.type == "cuda" and device.index is None and rank is not None and world > 1:
        return torch.device("cuda", int(rank))
    return device


def check_device(device, what: str = "device") -> torch.device:
    """`resolve_device`, then `InputError` unless this machine has that device."""
    device = resolve_device(device, what)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = ("a CPU-only torch build" if torch.version.cuda is None
                     else f"torch built for CUDA {torch.version.cuda}")
            raise InputError(f"{what} {str(device)!r} but no CUDA GPU is visible ({build}); use 'cpu', or 'auto' to "
                             "take a GPU when there is one")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{what} {str(device)!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return device


def check_runtime(device, dtype, what: tuple[str, str] = ("device", "dtype")) -> tuple[torch.device, torch.dtype]:
    """``(device, dtype)`` checked together: fp16 does not run on the CPU (bf16 and fp32 do)."""
    device, dtype = check_device(device, what[0]), as_dtype(dtype, what[1])
    if device.type == "cpu" and dtype == torch.float16:
        raise InputError(f"{what[1]} fp16 does not run on the CPU; use fp32 (or bf16) there, fp16/bf16 on a GPU")
    return device, dtype


def _null_components(folder: Path) -> dict[str, None]:
    """Components listed as ``[null, null]`` in ``model_index.json`` (e.g. SD3 without T5)."""
    index = folder / "model_index.json"
    if not index.is_file():
        return {}
    cfg = json.loads(index.read_text())
    return {k: None for k, v in cfg.items() if isinstance(v, list) and v[:1] == [None]}


def _spec_from_folder(pipe, folder: Path, model_id: str) -> ModelSpec:
    s = default_spec(pipe, model_id, str(folder))
    cfg_path = folder / "explore.json"
    if cfg_path.is_file():
        cfg = read_json(cfg_path)
        s = dataclasses.replace(
            s,
            model_id=cfg.get("model_id", model_id) if model_id in EMBEDDED else model_id,
            resolution=int(cfg.get("resolution", s.resolution)),
            max_sequence_length=int(cfg.get("max_sequence_length", s.max_sequence_length)),
            sampler={**s.sampler, **cfg.get("sampler", {})},
            world=cfg.get("world"),
        )
    return s


def save_spec(pipe, folder: str | os.PathLike) -> None:
    """Write ``explore.json`` so that `load_pipeline(folder)` restores the same `ModelSpec`."""
    s = spec(pipe)
    write_model_json(folder, {"model_id": s.model_id, "family": s.family, "resolution": s.resolution,
                              "max_sequence_length": s.max_sequence_length, "sampler": s.sampler, "world": s.world})


def _from_pretrained(source: str, dtype, local_files_only: bool, **kwargs):
    return DiffusionPipeline.from_pretrained(source, dtype=dtype, local_files_only=local_files_only, **kwargs)


def load_pipeline(
    name_or_path: str | os.PathLike = SHAPES,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    *,
    offload: str | None = None,
    quantization: str | None = None,
    seed: int = 0,
    attention: str = "auto",
    **kwargs: Any,
):
    """Load a pipeline and give it its `ModelSpec`.

    Args:
        name_or_path: ``"shapes"`` — the embedded ShapesWorld model shipped inside the package
            (default); ``"shapes-pairs"`` — the embedded two-object model; ``"tiny-sd3"`` /
            ``"tiny-sd3.5"`` / ``"tiny-sd3-medium"`` / ``"tiny-flux"`` / ``"tiny-flux2"`` /
            ``"tiny-flux2-dev"`` / ``"tiny-qwen-image"`` / ``"tiny-z-image"`` — tiny random pipelines
            built in code (``seed``), for tests; a local folder in ``save_pretrained`` layout; or a hub id
            such as ``"stabilityai/stable-diffusion-3-medium-diffusers"`` (the local hub cache when
            ``HF_HUB_OFFLINE=1``, downloaded otherwise).
        device: ``"cpu"``, ``"cuda"`` / ``"cuda:N"``, or ``"auto"`` (the GPU when one is visible).
            ``"cuda"`` under ``torchrun`` / ``accelerate launch`` means this process's GPU. A device
            this machine lacks is an `InputError` now, before anything loads.
        dtype: ``torch.float32`` / ``bfloat16`` / ``float16`` or their names (``"fp32"``, ``"bf16"``,
            ``"bfloat16"``, ``"fp16"``...); fp16 does not run on the CPU.
        offload: ``None`` (everything on ``device``), ``"model"`` (diffusers' model CPU offload) or
            ``"sequential"`` (sequential CPU offload: slowest, least memory).
        quantization: the transformer's weights quantised through diffusers' quantisation configs:
            ``"int8"`` (torchao, CPU and GPU), ``"fp8"``, ``"int4"`` (torchao, GPU), ``"nf4"``,
            ``"bnb-int8"`` (bitsandbytes, GPU); see `explore.pipeline.quantize`. None: as saved.
        seed: the weights of a tiny random pipeline.
        attention: the SDPA backends every transformer call may use (`set_attention_backend`).
        **kwargs: passed to ``from_pretrained`` (e.g. ``variant="fp16"``).

    Returns:
        The diffusers pipeline, with its `ModelSpec` attached (`spec`).
    """
    name = str(name_or_path)
    if offload not in (None, "model", "sequential"):
        raise InputError(f"offload must be None, 'model' or 'sequential', got {offload!r}")
    check_attention_backend(attention)
    device, dtype = check_runtime(device, dtype)
    quant = scheme(quantization, torch.device(device))
    if quant is not None and "quantization_config" in kwargs:
        raise InputError("pass quantization= or a diffusers quantization_config, not both")
    if name in TINY:
        pipe = _TINY_BUILDERS[name](seed=seed).to(device=device, dtype=dtype)
        if quant is not None:
            quantize_in_place(pipe, quant)
            pipe.transformer._explore_quantization = quant.name
        set_attention_backend(pipe, attention)
        return pipe
    if quant is not None:
        kwargs["quantization_config"] = pipeline_config(quant, dtype)
    if name in EMBEDDED:
        folder = EMBEDDED[name]
        if not (folder / "model_index.json").is_file():
            how = ("train it with `python -m explore train-shapes --out <dir>`" if name == SHAPES else
                   "train it with `python -m explore train-pairs --out <dir>`")
            raise ModelNotFoundError(f"the embedded {name!r} model is missing from {folder}; reinstall explore, or "
                                     f"{how} and load that folder")
        src = WeightsSource(name, str(folder), True, folder)
    else:
        src = weights_source(name)
    if src.folder is not None:
        if not (src.folder / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{src.folder} is a folder but has no model_index.json; point to a diffusers pipeline folder "
                "(the output of save_pretrained or a downloaded hub snapshot)"
            )
        kwargs = {**_null_components(src.folder), **kwargs}
        pipe = _from_pretrained(src.source, dtype, True, **kwargs)
        s = _spec_from_folder(pipe, src.folder, name if name in EMBEDDED else str(src.folder))
    else:
        try:
            pipe = _from_pretrained(src.source, dtype, src.local_files_only, **kwargs)
        except (OSError, ValueError) as e:
            raise src.not_found("", "a local folder", e) from e
        s = default_spec(pipe, name)
    family(pipe)  # raise early for unsupported pipelines
    if quant is not None:
        pipe.transformer._explore_quantization = quant.name
    attach_spec(pipe, s)
    set_attention_backend(pipe, attention)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
