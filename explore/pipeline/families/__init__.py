"""Model families as adapters: one `Family` per family, a registry keyed by the transformer class.

``family(pipe)`` is the one question the rest of `explore` asks about a pipeline's model; an
unknown transformer is an `UnsupportedModelError` naming the supported classes, never a fallback.
A new family is one module with a `Family` subclass plus one `register` call (a test registers a
toy family from one file).
"""

from __future__ import annotations

from ...errors import UnsupportedModelError
from .base import Family, token_spans
from .flux import Flux
from .flux2 import Flux2
from .qwenimage import QwenImage
from .sd3 import SD3
from .zimage import ZImage

REGISTRY: dict[str, Family] = {}  # transformer class name -> its family
DEFAULT_FAMILY = "sd3"  # whose published defaults a setting takes when no model says otherwise
_BY_NAME: dict[str, Family] = {}


def register(fam: Family) -> Family:
    """Add a family (its transformer classes become supported); returns it."""
    if not fam.transformer_classes:
        raise ValueError(f"{fam!r} names no transformer class")
    for cls in fam.transformer_classes:
        REGISTRY[cls] = fam
    for f in (fam, *fam.variants):
        _BY_NAME[f.name] = f
    return fam


def unregister(fam: Family) -> None:
    for cls in fam.transformer_classes:
        REGISTRY.pop(cls, None)
    for f in (fam, *fam.variants):
        _BY_NAME.pop(f.name, None)


def family(pipe) -> Family:
    """The `Family` of a pipeline, from its transformer's class (img2img / inpaint variants included)."""
    name = type(getattr(pipe, "transformer", None)).__name__
    fam = REGISTRY.get(name)
    if fam is None:
        known = ", ".join(f"{f.name} ({', '.join(f.transformer_classes)})" for f in dict.fromkeys(REGISTRY.values()))
        raise UnsupportedModelError(f"{type(pipe).__name__} with transformer {name} is not supported; explore drives "
                                    f"{known}")
    return fam.variant(pipe)


def family_of(pipe) -> str:
    """The name of the pipeline's family (``family(pipe).name``)."""
    return family(pipe).name


def by_name(name: str | Family) -> Family:
    """A registered family by its name (``"sd3"``, ``"flux"``, ...), or the family itself."""
    if isinstance(name, Family):
        return name
    if name not in _BY_NAME:
        raise UnsupportedModelError(f"no model family {name!r}; registered: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def names() -> list[str]:
    return list(_BY_NAME)


register(SD3())
register(Flux())
register(Flux2())
register(QwenImage())
register(ZImage())

__all__ = ["DEFAULT_FAMILY", "Family", "REGISTRY", "by_name", "family", "family_of", "names", "register",
           "token_spans", "unregister"]
