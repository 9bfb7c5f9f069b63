"""explore: the latent space of text-to-image Diffusion Transformers (SD3/SD3.5 MMDiT, FLUX).

Data flow, left to right, one subpackage per stage (docs/design.md §8):

  pipeline/    load_pipeline -> encode (a `JointLatent`), velocity, decode, sampling
  editing/     text_direction (a `Direction`) -> edit / sweep (HSDS and the other methods)
  evaluation/  scorers, metrics (success, retention, SDE, MIG/DCI/SAP), benchmarks, the runner
  interp/      hooks, attention maps, probes, steering, geometry of directions
  views/       figures, the notebook session and its panels
  shapes/, pairs/  the embedded worlds (leaves: nothing above them is imported there)

Everything runs on the embedded ShapesWorld model (``"shapes"``, the default) on a CPU. The names
below are imported on first use, so ``import explore`` is quick.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from .errors import (
    BusyError,
    CorruptFileError,
    DirectionMismatchError,
    DivergenceError,
    ExploreError,
    InputError,
    ModelNotFoundError,
    ResourceError,
    RunMismatchError,
    WriteError,
)

__version__ = "0.2.0"

_LAZY = {
    "load_pipeline": "pipeline.load",
    "ModelSpec": "pipeline.spec",
    "spec": "pipeline.spec",
    "sites": "interp.hooks",
    "JointLatent": "pipeline.latent",
    "encode": "pipeline.latent",
    "encode_text": "pipeline.latent",
    "decode": "pipeline.latent",
    "velocity": "pipeline.latent",
    "generate": "pipeline.sampling",
    "text_direction": "editing.directions",
    "Direction": "editing.directions",
    "DirectionLibrary": "editing.directions",
    "EditSettings": "editing.settings",
    "edit": "editing.api",
    "sweep": "editing.api",
    "identify": "editing.api",
    "manipulate": "editing.api",
    "EditResult": "editing.api",
    "SweepResult": "editing.api",
}
# explore.<name> for the modules people reach for by name
_MODULES = {
    "metrics": "evaluation.metrics",
    "scorers": "evaluation.scorers",
    "probe": "interp.probe",
    "attention": "interp.attention",
    "geometry": "interp.geometry",
    "hooks": "interp.hooks",
    "widgets": "views.widgets",
    "plots": "views.plots",
    "shapes": "shapes",
    "pairs": "pairs",
    "worlds": "worlds",
    "images": "images",
    "io": "io",
}
# Modules of versions before 0.2 (a flat package) and where they live now.
_MOVED = {
    "models": "pipeline.load", "latent": "pipeline.latent", "tiny": "pipeline.tiny",
    "architectures": "pipeline.architectures", "directions": "editing.directions", "objectives": "editing.objectives",
    "metrics": "evaluation.metrics", "scorers": "evaluation.scorers", "benchmark": "evaluation.items",
    "evaluate": "evaluation.runner", "bench": "evaluation.perf", "hooks": "interp.hooks",
    "attention": "interp.attention", "probe": "interp.probe", "geometry": "interp.geometry",
    "studies": "interp.studies", "widgets": "views.widgets",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{_MODULES[name]}", __name__)
    if name in _MOVED:
        warnings.warn(f"explore.{name} moved to explore.{_MOVED[name]}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(f".{_MOVED[name]}", __name__)
    raise AttributeError(f"module 'explore' has no attribute {name!r}")


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import explore.metrics`` (a short name above) and the module paths of the flat 0.1 layout
    (``import explore.latent``, with a DeprecationWarning) resolve to the modules where the code lives.

    ``explore.edit`` is not aliased: that name is the `edit` function (the module is ``explore.editing``).
    """

    def find_spec(self, fullname, path=None, target=None):
        head, _, tail = fullname.partition(".")
        if head != __name__ or "." in tail:
            return None
        if tail == "edit":
            raise ImportError("explore.edit is the edit() function; the module is explore.editing "
                              "(e.g. from explore.editing.api import edit_batch)")
        if tail in _MODULES or tail in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        tail = spec.name.partition(".")[2]
        new = f"{__name__}.{_MODULES.get(tail) or _MOVED[tail]}"
        if tail not in _MODULES:
            warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass


if not any(isinstance(f, _Aliases) for f in sys.meta_path):
    sys.meta_path.append(_Aliases())

__all__ = [
    "__version__", "ExploreError", "InputError", "ModelNotFoundError", "DirectionMismatchError", "DivergenceError",
    "ResourceError", "CorruptFileError", "WriteError", "BusyError", "RunMismatchError", *_LAZY,
]
