"""explore: the latent space of text-to-image Diffusion Transformers (SD3/SD3.5 MMDiT, FLUX).

Data flow, left to right: `load_pipeline` -> `encode` (a `JointLatent`) -> `text_direction`
(a `Direction`) -> `edit` / `sweep` (HSDS and its baselines) -> `decode` -> `metrics` -> plots and
widgets. Everything runs on the embedded ShapesWorld model (``"shapes"``, the default) on a CPU.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    DirectionMismatchError,
    DivergenceError,
    ExploreError,
    InputError,
    ModelNotFoundError,
    ResourceError,
)
from .latent import JointLatent, decode, encode, encode_text, velocity  # noqa: E402
from .models import ModelSpec, load_pipeline, sites, spec  # noqa: E402

_LAZY = {
    "text_direction": ("directions", "text_direction"),
    "Direction": ("directions", "Direction"),
    "DirectionLibrary": ("directions", "DirectionLibrary"),
    "edit": ("edit", "edit"),
    "sweep": ("edit", "sweep"),
    "EditResult": ("edit", "EditResult"),
    "generate": ("edit", "generate"),
}
_SUBMODULES = {"metrics", "probe", "geometry", "widgets", "shapes", "hooks", "plots", "scorers", "evaluate",
               "bench", "objectives", "directions", "io", "tiny", "models", "latent"}


def __getattr__(name):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'explore' has no attribute {name!r}")


__all__ = [
    "__version__", "load_pipeline", "spec", "sites", "ModelSpec", "JointLatent", "encode", "encode_text", "decode",
    "velocity", "ExploreError", "InputError", "ModelNotFoundError", "DirectionMismatchError", "DivergenceError",
    "ResourceError", *_LAZY,
]
