"""What HSDS preserves: the source's factor labels and the preserved text directions (DESIGN §2).

``preserve`` may mix factor keys of an embedded world (one direction from the source's value to
each other value of that factor), `Direction` objects, and ``(v-, v+)`` word pairs (text
directions with the default templates). ``None`` means: every factor of the source but the edited
one on an embedded world; nothing on other models.
"""

from __future__ import annotations

from ..errors import InputError
from ..pipeline.latent import JointLatent, decode
from ..pipeline.spec import state
from ..worlds import world_of
from .directions import Direction, text_direction

PRESERVE_TEMPLATES = 16  # caption pairs per preserved direction (the edit's own direction uses 32)


def source_labels(pipe, latent: JointLatent, image=None) -> dict[str, str] | None:
    """The factor values of a source, read from its pixels (embedded worlds); None for other models."""
    world = world_of(pipe)
    if world is None:
        return None
    img = image if image is not None else decode(pipe, latent.z[:1], output_type="np")[0]
    return {k: v for k, v in world.read(img).items() if v is not None}


def preserved_directions(pipe, direction: Direction, preserve, labels: dict[str, str] | None,
                         n: int = PRESERVE_TEMPLATES) -> list[Direction]:
    """Resolve ``preserve`` (see the module docstring) into a list of directions."""
    world = world_of(pipe)
    if preserve is None:
        if world is None:
            return []
        known = labels if labels is not None else {}
        preserve = [k for k in world.keys(known or None) if k != direction.attribute]
    if isinstance(preserve, (str, Direction)):
        preserve = [preserve]
    out: list[Direction] = []
    for item in preserve:
        if isinstance(item, Direction):
            out.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append(text_direction(pipe, item[0], item[1]))
        elif isinstance(item, str):
            if world is None:
                raise InputError(
                    f"preserve={item!r}: attribute names work on ShapesWorld and the other embedded worlds; for this "
                    "model pass "
                    "Directions or (v-, v+) word pairs, e.g. preserve=[('red', 'blue')]"
                )
            if item not in world.keys():
                raise InputError(f"unknown attribute {item!r} to preserve; known: {', '.join(world.keys())}")
            if item == direction.attribute:
                raise InputError(f"cannot preserve {item!r}: it is the attribute being edited")
            if labels is None or item not in labels:
                raise InputError(f"the source's {item} is unknown; pass labels= or Directions to preserve")
            a = labels[item]
            out += [cached_direction(pipe, a, b, item, n) for b in world.values(item) if b != a]
        else:
            raise InputError(f"cannot preserve {item!r}: give attribute names, Directions or (v-, v+) pairs")
    return out


def cached_direction(pipe, a: str, b: str, attribute: str, n: int = PRESERVE_TEMPLATES) -> Direction:
    """The text direction ``a -> b`` of a world factor, cached on the pipeline (``state(pipe).directions``)."""
    cache = state(pipe).directions
    key = (attribute, a, b, n)
    if key not in cache:
        cache[key] = text_direction(pipe, a, b, attribute=attribute, n=n)
    return cache[key]
