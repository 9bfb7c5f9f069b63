"""What `explore` knows about a diffusers pipeline: its `ModelSpec` and its `PipelineState`.

Every pipeline `explore` drives is a stock diffusers pipeline (``StableDiffusion3Pipeline`` or
``FluxPipeline``), so it can still be called, offloaded or handed to other tools. Everything
`explore` keeps about it rides in **one** attribute, ``pipe.explore_state`` (a `PipelineState`),
created on first use by `state` — nothing else is attached:

  ``spec``        the `ModelSpec` (model id, family, resolution, max_sequence_length, sampler, world)
  ``text``        prompt -> (c, p) encodings, LRU (`explore.pipeline.latent.encode_text`)
  ``max_batch``   batch sizes known to fit in memory, per kind of call ("transformer", "vae"; after an OOM)
  ``directions``  preserved text directions cached by value pair (`explore.editing.preserve`)
  ``call``        the transformer batch running now: per-row ``t`` and conditional mask (read by hooks)
  ``pipeline_t``  the timestep a diffusers ``__call__`` passed to the transformer (hooks in ``pipe(...)``)
  ``attention``   the SDPA backends the transformer may use (`set_attention_backend`)

(A wrapper object instead of the pipeline was tried on paper and rejected: every function would
take the wrapper, users would lose the stock pipeline, and the state would still be per-pipeline.)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import InputError
from .families import family, family_of  # noqa: F401  (family_of: explore.pipeline.spec.family_of)

SHAPES = "shapes"
ATTRIBUTE = "explore_state"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What `explore` needs to know about a pipeline beyond its diffusers config."""

    model_id: str
    family: str  # a registered family's name (`explore.pipeline.families`)
    resolution: int  # native image side in pixels
    max_sequence_length: int  # T5 tokens (SD3 pads zeros here when text_encoder_3 is None)
    sampler: dict  # {"steps", "guidance", "shift"?}
    world: str | None = None  # an embedded world ("shapes", "pairs"): readers, exact masks, grammar
    path: str | None = None  # folder it was loaded from, if any

    @property
    def guidance(self) -> float:
        return float(self.sampler.get("guidance", 1.0))

    @property
    def steps(self) -> int:
        return int(self.sampler.get("steps", 28))


@dataclasses.dataclass
class CallInfo:
    """The transformer batch now running: per-row flow sigma ``t`` ``(N,)`` and conditional mask ``(N,)``."""

    t: torch.Tensor
    cond: torch.Tensor


@dataclasses.dataclass
class PipelineState:
    """Everything `explore` keeps about one pipeline (see the module docstring)."""

    spec: ModelSpec
    text: OrderedDict = dataclasses.field(default_factory=OrderedDict)
    max_batch: dict[str, int] = dataclasses.field(default_factory=dict)
    directions: dict[Any, Any] = dataclasses.field(default_factory=dict)
    warned: set = dataclasses.field(default_factory=set)  # warnings already shown for this pipeline
    call: CallInfo | None = None
    pipeline_t: torch.Tensor | None = None
    attention: str = "auto"


# SDPA backends by name. "auto" lets torch choose among all but cuDNN: FLUX's backward through the
# cuDNN kernel crashed with an illegal memory access on an H200 while flash worked (measured by the
# project's prototype, torch 2.11), and on a CPU the choice is between flash and math anyway.
ATTENTION_BACKENDS: dict[str, tuple] = {
    "auto": (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH),
    "flash": (SDPBackend.FLASH_ATTENTION,),
    "efficient": (SDPBackend.EFFICIENT_ATTENTION,),
    "math": (SDPBackend.MATH,),
    "cudnn": (SDPBackend.CUDNN_ATTENTION,),
    "default": (),  # whatever torch picks, cuDNN included
}


def check_attention_backend(name: str) -> None:
    if name not in ATTENTION_BACKENDS:
        raise InputError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}")


def set_attention_backend(pipe, name: str) -> None:
    """Which SDPA kernels the pipeline's transformer calls may use: ``"auto"`` (flash, memory-efficient or
    math; not cuDNN), ``"flash"``, ``"efficient"``, ``"math"``, ``"cudnn"`` or ``"default"`` (torch's choice)."""
    check_attention_backend(name)
    state(pipe).attention = name


@contextlib.contextmanager
def using_attention(pipe, name: str):
    """Use another SDPA setting inside the block (e.g. ``"math"``: the one kernel with forward-mode AD)."""
    check_attention_backend(name)
    st = state(pipe)
    prev, st.attention = st.attention, name
    try:
        yield
    finally:
        st.attention = prev


def attention_context(pipe):
    """The ``sdpa_kernel`` context of the pipeline's attention setting (a no-op for ``"default"``)."""
    backends = ATTENTION_BACKENDS[state(pipe).attention]
    return sdpa_kernel(list(backends)) if backends else contextlib.nullcontext()


def vae_scale_factor(pipe) -> int:
    """Image pixels per latent pixel of the latent ``z`` explore works with."""
    return family(pipe).latent_scale(pipe)


def size_multiple(pipe) -> int:
    """Image sides must be multiples of this (VAE down-sampling x patch / packing size)."""
    return family(pipe).size_multiple(pipe)


def max_image_side(pipe) -> int | None:
    """The largest image side (pixels) the transformer takes, or None where its positions have no bound."""
    return family(pipe).max_image_side(pipe)


def check_image_size(pipe, height: int, width: int) -> None:
    """`InputError` unless an ``height x width`` image fits the transformer (checked before any encode)."""
    side = max_image_side(pipe)
    if side is not None and (height > side or width > side):
        h, w = min(height, side), min(width, side)
        raise InputError(
            f"image is {width}x{height} but {spec(pipe).model_id} takes at most {side}x{side} (its transformer has "
            f"positions for {side // size_multiple(pipe)}x{side // size_multiple(pipe)} patches); pass "
            f"resize=({h}, {w}) (CLI: --resize {h}x{w}) or a smaller image"
        )


def state(pipe) -> PipelineState:
    """The pipeline's `PipelineState`, created (with an inferred `ModelSpec`) on first use."""
    st = getattr(pipe, ATTRIBUTE, None)
    if st is None:
        st = PipelineState(default_spec(pipe, getattr(pipe, "name_or_path", None) or type(pipe).__name__))
        # object.__setattr__: DiffusionPipeline.__setattr__ treats some names as config entries.
        object.__setattr__(pipe, ATTRIBUTE, st)
    return st


def spec(pipe) -> ModelSpec:
    """The pipeline's `ModelSpec` (set by `load_pipeline`; inferred for pipelines built elsewhere).

    Args:
        pipe: a diffusers SD3 / SD3.5 / FLUX.1 pipeline.

    Returns:
        Its `ModelSpec`: model id, family, native resolution, ``max_sequence_length``, sampler
        defaults and the embedded world, if any.
    """
    return state(pipe).spec


def attach_spec(pipe, s: ModelSpec) -> None:
    """Give a pipeline its `ModelSpec` (a fresh `PipelineState`: caches of another spec do not carry over)."""
    object.__setattr__(pipe, ATTRIBUTE, PipelineState(s))


def default_spec(pipe, model_id: str, path: str | None = None) -> ModelSpec:
    """The spec of a pipeline from its own configuration (no ``explore.json``): its family's defaults."""
    fam = family(pipe)
    sampler = fam.sampler(pipe)
    shift = getattr(pipe.scheduler.config, "shift", None)
    if shift is not None:
        sampler["shift"] = float(shift)
    return ModelSpec(model_id=model_id, family=fam.name, resolution=int(fam.resolution(pipe)),
                     max_sequence_length=fam.default_max_sequence_length, sampler=sampler, path=path)
