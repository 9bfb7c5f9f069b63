"""Quantised transformers through diffusers' own quantisation configs (for 24 GB cards).

``load_pipeline(name, quantization="int8")`` loads the transformer with a diffusers
``PipelineQuantizationConfig`` whose mapping holds the backend's config for ``"transformer"``;
a pipeline built in code (the tiny ones) gets the same torchao config applied to its transformer.
The schemes:

============  ===========  =====================================  ===========  =========
name          backend      what                                   bytes/param  runs on
============  ===========  =====================================  ===========  =========
``int8``      torchao      int8 weights, per-channel scales       ~1           CPU, GPU
``fp8``       torchao      float8 (e4m3) weights                  ~1           GPU (sm89+)
``int4``      torchao      int4 weights, groups of 128            ~0.5         GPU
``nf4``       bitsandbytes 4-bit NormalFloat, bf16 compute         ~0.5         GPU
``bnb-int8``  bitsandbytes LLM.int8()                             ~1           GPU
============  ===========  =====================================  ===========  =========

Weight-only schemes keep activations in the compute dtype, so gradients with respect to the
transformer's inputs (what HSDS differentiates) flow through them; `tests/test_quantize.py`
measures how far the input gradient of a quantised tiny transformer is from the unquantised one.
The text encoders and the VAE stay as they are (the text encoders run once per prompt; with
``offload="model"`` they leave the GPU when the transformer runs).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import torch

from ..errors import InputError


@dataclasses.dataclass(frozen=True)
class Scheme:
    name: str
    backend: str  # "torchao" or "bitsandbytes"
    what: str
    bytes_per_param: float
    cpu: bool  # runs on the CPU

    def available(self) -> bool:
        return importlib.util.find_spec(self.backend) is not None

    def torchao_config(self):
        import torchao.quantization as q

        return {"int8": lambda: q.Int8WeightOnlyConfig(),
                "fp8": lambda: q.Float8WeightOnlyConfig(),
                "int4": lambda: q.Int4WeightOnlyConfig(group_size=128)}[self.name]()

    def diffusers_config(self, compute_dtype: torch.dtype):
        """The diffusers quantisation config of the transformer."""
        if self.backend == "torchao":
            from diffusers import TorchAoConfig

            return TorchAoConfig(self.torchao_config())
        from diffusers import BitsAndBytesConfig

        if self.name == "nf4":
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=compute_dtype)
        return BitsAndBytesConfig(load_in_8bit=True)


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("int8", "torchao", "int8 weights, per-channel scales", 1.0, True),
    Scheme("fp8", "torchao", "float8 e4m3 weights", 1.0, False),
    Scheme("int4", "torchao", "int4 weights, groups of 128", 0.5 + 4 / 128, False),
    Scheme("nf4", "bitsandbytes", "4-bit NormalFloat weights, bf16 compute", 0.5 + 4 / 64, False),
    Scheme("bnb-int8", "bitsandbytes", "LLM.int8() weights", 1.0, False),
)}


def scheme(name: str | None, device: torch.device | None = None) -> Scheme | None:
    """The named scheme, checked against the device and the installed backends (None: no quantisation)."""
    if name is None:
        return None
    if name not in SCHEMES:
        raise InputError(f"quantization must be one of {', '.join(SCHEMES)} (or None), got {name!r}")
    s = SCHEMES[name]
    if device is not None and device.type == "cpu" and not s.cpu:
        raise InputError(f"quantization={name!r} ({s.backend}) runs on a GPU only; on the CPU use 'int8'")
    if not s.available():
        extra = "pip install torchao" if s.backend == "torchao" else "pip install bitsandbytes (GPU machines)"
        raise InputError(f"quantization={name!r} needs {s.backend}, which is not installed: {extra}")
    return s


def pipeline_config(s: Scheme, compute_dtype: torch.dtype) -> Any:
    """A diffusers ``PipelineQuantizationConfig`` that quantises the transformer only."""
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping={"transformer": s.diffusers_config(compute_dtype)})


def quantize_in_place(pipe, s: Scheme) -> None:
    """Quantise the transformer of a pipeline built in code with the scheme's torchao config (what
    diffusers' torchao quantiser applies when it loads weights)."""
    if s.backend != "torchao":
        raise InputError(f"quantization={s.name!r} ({s.backend}) applies when weights are loaded; load the pipeline "
                         "from a folder or hub id")
    from torchao.quantization import quantize_

    quantize_(pipe.transformer, s.torchao_config())


def quantization_of(pipe) -> str | None:
    """The scheme a pipeline's transformer was quantised with (None: not quantised)."""
    return getattr(pipe.transformer, "_explore_quantization", None)
