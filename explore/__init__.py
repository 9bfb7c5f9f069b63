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
import logging
import sys
from typing import TYPE_CHECKING

# torchao (the optional int8 backend) logs at import, from every diffusers model import, that its CUDA
# extensions do not load on a CPU build of torch and that torch's pytree registry changed; diffusers adds
# that torchao tensors cannot be imported. None of it concerns weight-only quantisation: keep errors only.
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)

from .errors import (  # noqa: E402  (after the log levels above)
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

__version__ = "0.3.0"  # the one version: pyproject.toml reads it, every JSON writes it

if TYPE_CHECKING:  # what editors and type checkers see; at run time these import on first use
    from .editing.api import EditResult, SweepResult, edit, identify, manipulate, sweep
    from .editing.directions import Direction, DirectionLibrary, text_direction
    from .editing.settings import EditSettings
    from .interp.hooks import sites
    from .pipeline.latent import JointLatent, decode, encode, encode_text, velocity
    from .pipeline.load import load_pipeline
    from .pipeline.sampling import generate
    from .pipeline.spec import ModelSpec, spec

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
    "patching": "interp.patching",
    "concepts": "interp.concepts",
    "segmentation": "interp.segmentation",
    "lens": "interp.lens",
    "causal": "interp.causal",
    "sae": "interp.sae",
    "sae_study": "interp.sae_study",
    "inversion": "evaluation.inversion",
    "sensitivity": "evaluation.sensitivity",
    "widgets": "views.widgets",
    "plots": "views.plots",
    "shapes": "shapes",
    "pairs": "pairs",
    "worlds": "worlds",
    "images": "images",
    "io": "io",
}
def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{_MODULES[name]}", __name__)
    raise AttributeError(f"module 'explore' has no attribute {name!r}")


def __dir__():
    """What completion and ``dir(explore)`` show: the public names (they import on first use)."""
    return sorted(set(__all__) | set(_MODULES) | {"__version__"})


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import explore.metrics`` (a short name above) resolves to the module where the code lives.

    ``explore.edit`` is not aliased: that name is the `edit` function (the module is ``explore.editing``).
    """

    def find_spec(self, fullname, path=None, target=None):
        head, _, tail = fullname.partition(".")
        if head != __name__ or "." in tail:
            return None
        if tail == "edit":
            raise ImportError("explore.edit is the edit() function; the module is explore.editing "
                              "(e.g. from explore.editing.api import edit_batch)")
        if tail in _MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{_MODULES[spec.name.partition('.')[2]]}")

    def exec_module(self, module):
        pass


if not any(isinstance(f, _Aliases) for f in sys.meta_path):
    sys.meta_path.append(_Aliases())

__all__ = [  # a test checks it lists every lazy name above
    "__version__",
    # pipelines and the joint latent
    "load_pipeline", "spec", "ModelSpec", "JointLatent", "encode", "encode_text", "decode", "velocity", "generate",
    # EIM: identify, manipulate
    "text_direction", "Direction", "DirectionLibrary", "edit", "sweep", "identify", "manipulate", "EditSettings",
    "EditResult", "SweepResult",
    # interpretability
    "sites",
    # errors
    "ExploreError", "InputError", "ModelNotFoundError", "DirectionMismatchError", "DivergenceError", "ResourceError",
    "CorruptFileError", "WriteError", "BusyError", "RunMismatchError",
]
