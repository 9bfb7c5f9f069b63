"""Every editing method by name: the score-distillation objectives, the peer methods, their variants.

``text``, ``image``, ``sds``, ``dds``, ``hsds`` (`explore.editing.objectives`, the EIM loop and
render) and ``flowedit``, ``flowalign``, ``rf-inversion``, ``unieditflow``, ``fluxspace`` (`explore.editing.peers`,
`explore.editing.fluxspace`: samplers with the same `Direction` as target); named variants
(`explore.editing.settings.VARIANTS`, e.g. ``hsds-auto``) work wherever a method name does; ``sae``
(`explore.editing.sae_steer`: steering with a trained SAE's features) wherever its SAE is given.
"""

from __future__ import annotations

from .fluxspace import FluxSpace
from .objectives import OBJECTIVES, Objective
from .peers import PEERS, FlowAlign, FlowEdit, PeerMethod, RFInversion, UniEditFlow
from .sae_steer import SAESteer
from .settings import VARIANTS, split_variant

__all__ = ["ALL", "METHODS", "EIM_METHODS", "PEER_METHODS", "get_method", "method_names", "is_peer",
           "FlowEdit", "FlowAlign", "RFInversion", "UniEditFlow", "FluxSpace", "SAESteer", "PeerMethod", "NEEDS_MORE"]

ALL: dict[str, type] = {**OBJECTIVES, **PEERS, FluxSpace.name: FluxSpace, SAESteer.name: SAESteer}
EIM_METHODS = tuple(OBJECTIVES)
PEER_METHODS = (*PEERS, FluxSpace.name)
METHODS = (*EIM_METHODS, *PEER_METHODS)
# methods that need more than the model (a trained SAE: settings folder=); not in the panels' lists
NEEDS_MORE = (SAESteer.name,)


def method_names() -> tuple[str, ...]:
    """Everything a method argument accepts: the methods and their named variants."""
    return (*METHODS, *NEEDS_MORE, *VARIANTS)


def get_method(method: str | Objective | PeerMethod) -> Objective | PeerMethod:
    """A method by name (or a variant's base method), or pass an instance through."""
    if isinstance(method, (Objective, PeerMethod)):
        return method
    from ..errors import InputError

    base = split_variant(method)[0] if isinstance(method, str) else method
    if base not in ALL:
        raise InputError(f"unknown method {method!r}; known: {', '.join(method_names())}")
    return ALL[base]()


def is_peer(method) -> bool:
    return isinstance(get_method(method), PeerMethod)
