"""What a pipeline *is*, as a short hash: its weights, scheduler and `ModelSpec`.

A benchmark folder records this fingerprint (`explore.evaluation.runner`), so results computed with
other weights (a fine-tune, a LoRA, another precision, a retrained ShapesWorld) are never resumed
or merged into it under the same model id.

Every parameter and buffer of every `torch.nn.Module` component enters by name, dtype and shape.
Their values enter whole while the pipeline has at most ``FULL_HASH_ELEMENTS`` elements (the
embedded worlds, tiny test models: a few ms); above that (SD3, FLUX: billions of elements, which
would take minutes to hash), ``SAMPLES`` evenly spaced elements of each tensor do. A fine-tune or
a LoRA changes nearly every element of the tensors it touches, so a sample sees it; two weight
sets that differ in a few isolated elements of a large model can share a sampled fingerprint
(the result says which kind it is: ``"full"`` or ``"sampled"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import torch

from .spec import spec

FULL_HASH_ELEMENTS = 1 << 26  # 64 M elements
SAMPLES = 4096


def _plain(t: torch.Tensor) -> bool:
    """A dense tensor whose storage holds its values (not quantised, sparse or a tensor subclass)."""
    return type(t) in (torch.Tensor, torch.nn.Parameter) and not t.is_quantized and t.layout == torch.strided


def _tensor_bytes(t: torch.Tensor, sampled: bool) -> bytes:
    """The bytes a tensor enters the hash with: its raw bits (plain tensors), else its values as float32
    (quantised tensors and subclasses such as torchao's, whose storage is not their values)."""
    t = t.detach()
    if not _plain(t):
        t = (t.dequantize() if hasattr(t, "dequantize") else t).float()
    flat = t.reshape(-1)
    if sampled and flat.numel() > SAMPLES:
        flat = flat[torch.linspace(0, flat.numel() - 1, SAMPLES, device=flat.device).long()]
    return flat.contiguous().cpu().view(torch.uint8).numpy().tobytes()


def modules_of(pipe) -> dict[str, torch.nn.Module]:
    """The pipeline's `torch.nn.Module` components by name (transformer, VAE, text encoders...)."""
    comps = getattr(pipe, "components", None) or {}
    return {k: v for k, v in sorted(comps.items()) if isinstance(v, torch.nn.Module)}


def module_fingerprint(modules: dict[str, torch.nn.Module], sampled: bool | None = None) -> tuple[str, str]:
    """``(sha256 hex, "full" | "sampled")`` of the modules' parameters and buffers."""
    tensors = [(f"{k}.{n}", t) for k, m in modules.items() for n, t in m.state_dict(keep_vars=True).items()
               if isinstance(t, torch.Tensor)]
    if sampled is None:
        sampled = sum(t.numel() for _, t in tensors) > FULL_HASH_ELEMENTS
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.device.type != "meta":
            h.update(_tensor_bytes(t, sampled))
    return h.hexdigest(), "sampled" if sampled else "full"


def fingerprint(pipe) -> dict[str, str]:
    """``{"weights": sha256, "kind": "full" | "sampled", "config": sha256}`` of a pipeline.

    ``config`` covers the scheduler's configuration and the `ModelSpec` (sampler defaults, maximum
    sequence length, family, world), which change results as weights do.
    """
    weights, kind = module_fingerprint(modules_of(pipe))
    s = dataclasses.asdict(spec(pipe))
    s.pop("path", None)  # where a folder lies does not change what it computes
    sched = {k: v for k, v in dict(getattr(getattr(pipe, "scheduler", None), "config", {}) or {}).items()
             if not k.startswith("_")}  # not "_name_or_path", "_diffusers_version"
    config = json.dumps({"spec": s, "scheduler": sched}, sort_keys=True, default=str)
    return {"weights": weights, "kind": kind, "config": hashlib.sha256(config.encode()).hexdigest()}
