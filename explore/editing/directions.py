"""Identify: editing directions from text (DESIGN §2).

For a factor change ``v- -> v+`` and templates ``T``: ``dc = mean_T[E_c(T(v+)) - E_c(T(v-))]``,
``dp`` likewise, with the pipeline's own ``encode_prompt``. Token positions align through the
tokenizer's padding; pairs whose two prompts tokenize to different lengths are counted
(``metadata["length_mismatch"]``) because their token-wise difference mixes positions.

A `Direction` saves as ``NAME.safetensors`` (tensors) + ``NAME.json`` (everything else), written
atomically; loading against another model id or other embedding shapes is an error.
A `DirectionLibrary` is a folder of directions with an ``index.json``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from ..errors import CorruptFileError, DirectionMismatchError, InputError
from ..io import atomic_write_bytes, atomic_write_json, read_json
from ..pipeline.latent import encode_text
from ..pipeline.spec import spec
from ..worlds import world_of

DEFAULT_TEMPLATES = (
    "a photo of a {} {subject}",
    "a {} {subject}",
    "an image of a {} {subject}",
    "a close-up photo of a {} {subject}",
    "a picture of a {} {subject}",
    "a rendering of a {} {subject}",
    "a {} {subject} in the scene",
    "a photograph of a single {} {subject}",
)


@dataclasses.dataclass
class Direction:
    """A text-side editing direction (and, once an edit made one, its image-side ``dz``).

    dc: ``(L, D)`` token-embedding direction; dp: ``(P,)`` pooled direction;
    dz: optional ``(C, h, w)`` image-latent direction.
    """

    dc: torch.Tensor
    dp: torch.Tensor
    attribute: str
    source: str  # v-
    target: str  # v+
    model_id: str
    templates: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    dz: torch.Tensor | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.attribute}-{self.source}-to-{self.target}"

    def __neg__(self) -> Direction:
        return dataclasses.replace(
            self, dc=-self.dc, dp=-self.dp, dz=None if self.dz is None else -self.dz, source=self.target,
            target=self.source, templates=[(b, a) for a, b in self.templates],
        )

    def norms(self) -> dict[str, float]:
        out = {"dc": float(self.dc.float().norm()), "dp": float(self.dp.float().norm())}
        if self.dz is not None:
            out["dz"] = float(self.dz.float().norm())
        return out

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` and ``path.json`` atomically (``path`` without suffix, or either file)."""
        base = _base(path)
        tensors = {"dc": self.dc.detach().float().cpu().contiguous(),
                   "dp": self.dp.detach().float().cpu().contiguous()}
        if self.dz is not None:
            tensors["dz"] = self.dz.detach().float().cpu().contiguous()
        atomic_write_bytes(base.with_suffix(".safetensors"), save(tensors))
        meta = {
            "attribute": self.attribute, "source": self.source, "target": self.target, "model_id": self.model_id,
            "templates": [list(t) for t in self.templates], "metadata": self.metadata,
            "shapes": {k: list(v.shape) for k, v in tensors.items()},
        }
        atomic_write_json(base.with_suffix(".json"), meta)
        return base

    @classmethod
    def load(cls, path: str | Path, pipe=None, device=None) -> Direction:
        """Load a saved direction; with ``pipe``, check it belongs to that model (id and shapes)."""
        base = _base(path)
        st, js = base.with_suffix(".safetensors"), base.with_suffix(".json")
        for f in (st, js):
            if not f.is_file():
                raise InputError(f"no direction at {base} (missing {f.name})")
        meta = read_json(js)
        try:
            tensors = load_file(str(st))
        except (SafetensorError, OSError, ValueError) as e:
            raise CorruptFileError(f"{st} is not a readable safetensors file ({e}); rebuild the direction") from e
        for k, shape in meta.get("shapes", {}).items():
            if k not in tensors or list(tensors[k].shape) != shape:
                raise CorruptFileError(f"{st} does not match {js.name} (tensor {k!r}); rebuild the direction")
        d = cls(
            dc=tensors["dc"], dp=tensors["dp"], dz=tensors.get("dz"), attribute=meta["attribute"],
            source=meta["source"], target=meta["target"], model_id=meta["model_id"],
            templates=[tuple(t) for t in meta.get("templates", [])], metadata=meta.get("metadata", {}),
        )
        if pipe is not None:
            d.check(pipe)
            device = device or pipe._execution_device
        if device is not None:
            d = d.to(device)
        return d

    def to(self, device=None, dtype=None) -> Direction:
        return dataclasses.replace(
            self, dc=self.dc.to(device, dtype), dp=self.dp.to(device, dtype),
            dz=None if self.dz is None else self.dz.to(device, dtype),
        )

    def check(self, pipe, latent=None) -> None:
        """Raise `DirectionMismatchError` unless this direction fits ``pipe`` (and ``latent``)."""
        s = spec(pipe)
        if self.model_id != s.model_id:
            raise DirectionMismatchError(
                f"direction {self.name!r} was made for model {self.model_id!r}, not {s.model_id!r}; "
                "rebuild it with explore.text_direction for this model"
            )
        c_shape = latent.c.shape[1:] if latent is not None else _embedding_shapes(pipe)[0]
        p_shape = latent.p.shape[1:] if latent is not None else _embedding_shapes(pipe)[1]
        if tuple(self.dc.shape) != tuple(c_shape) or tuple(self.dp.shape) != tuple(p_shape):
            raise DirectionMismatchError(
                f"direction {self.name!r} has shapes dc {tuple(self.dc.shape)}, dp {tuple(self.dp.shape)} but the "
                f"model's embeddings are c {tuple(c_shape)}, p {tuple(p_shape)}"
            )
        if self.dz is not None and latent is not None and tuple(self.dz.shape) != tuple(latent.z.shape[1:]):
            raise DirectionMismatchError(
                f"direction {self.name!r} has dz {tuple(self.dz.shape)} but the latent is {tuple(latent.z.shape[1:])}"
            )


def _base(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def _embedding_shapes(pipe) -> tuple[tuple[int, ...], tuple[int, ...]]:
    c, p = encode_text(pipe, "a", allow_empty=True)
    return tuple(c.shape[1:]), tuple(p.shape[1:])


# ---------------------------------------------------------------------------------------------
# Building directions
# ---------------------------------------------------------------------------------------------


def swap_word(prompt: str, v_minus: str, v_plus: str) -> tuple[str, str]:
    """The pair (prompt, prompt with ``v_minus`` replaced by ``v_plus`` as a whole word)."""
    pattern = re.compile(rf"\b{re.escape(v_minus)}\b", flags=re.IGNORECASE)
    if not pattern.search(prompt):
        raise InputError(f"the prompt {prompt!r} does not contain the word {v_minus!r} to swap for {v_plus!r}")
    return prompt, pattern.sub(v_plus, prompt)


def _pairs_from_templates(templates, v_minus: str, v_plus: str, subject: str) -> list[tuple[str, str]]:
    pairs = []
    for t in templates:
        if isinstance(t, (tuple, list)):
            if len(t) != 2:
                raise InputError(f"template pairs must be (negative, positive) prompts, got {t!r}")
            pairs.append((str(t[0]), str(t[1])))
        elif "{}" in t or "{v}" in t:
            fmt = t.replace("{v}", "{}")
            pairs.append((fmt.format(v_minus, subject=subject), fmt.format(v_plus, subject=subject)))
        else:
            pairs.append(swap_word(t, v_minus, v_plus))
    if not pairs:
        raise InputError("no templates given")
    return pairs


@torch.no_grad()
def text_direction(
    pipe,
    v_minus: str,
    v_plus: str,
    templates: Sequence[str] | Sequence[tuple[str, str]] | None = None,
    subject: str | None = None,
    *,
    attribute: str | None = None,
    n: int = 32,
    seed: int = 0,
) -> Direction:
    """The text direction ``v- -> v+`` as the mean embedding difference over templates.

    ``templates``: strings with ``{}`` where the value goes (``{subject}`` is filled from
    ``subject``), strings containing ``v_minus`` as a word (it is swapped), or explicit
    ``(negative, positive)`` prompt pairs. Default: an embedded world builds ``n`` caption pairs
    from its grammar (all templates, random other factors; `explore.worlds.World.templates`);
    other models use photo-style templates with ``subject`` (default ``"object"``).
    """
    for v in (v_minus, v_plus):
        if not isinstance(v, str) or not v.strip():
            raise InputError("values must be non-empty words, e.g. text_direction(pipe, 'red', 'blue')")
    if v_minus == v_plus:
        raise InputError(f"v- and v+ are both {v_minus!r}; a direction needs two different values")
    s = spec(pipe)
    world = world_of(pipe)
    if world is not None:
        attribute = world.attribute(v_minus, v_plus, attribute)
        pairs = (world.templates(attribute, v_minus, v_plus, n=n, seed=seed) if templates is None
                 else _pairs_from_templates(templates, v_minus, v_plus, subject or "object"))
    else:
        attribute = attribute or "attribute"
        pairs = _pairs_from_templates(templates or DEFAULT_TEMPLATES, v_minus, v_plus, subject or "object")
    neg = [a for a, _ in pairs]
    pos = [b for _, b in pairs]
    c_neg, p_neg = encode_text(pipe, neg)
    c_pos, p_pos = encode_text(pipe, pos)
    dc = (c_pos.float() - c_neg.float()).mean(0)
    dp = (p_pos.float() - p_neg.float()).mean(0)
    tok = pipe.tokenizer
    mismatch = sum(len(tok(a).input_ids) != len(tok(b).input_ids) for a, b in pairs)
    if mismatch:
        warnings.warn(
            f"{mismatch} of {len(pairs)} template pairs tokenize to different lengths for {v_minus!r} / {v_plus!r}: "
            "their token-wise difference mixes positions (dp is unaffected)", stacklevel=2,
        )
    return Direction(
        dc=dc, dp=dp, attribute=attribute, source=v_minus, target=v_plus, model_id=s.model_id, templates=pairs,
        metadata={"n_templates": len(pairs), "length_mismatch": mismatch, "seed": seed},
    )


def compose(directions: Sequence[Direction], weights: Sequence[float] | None = None) -> Direction:
    """Several edits at once: ``Δc = Σ w_i Δc_i``, ``Δp = Σ w_i Δp_i`` (``Δz`` likewise if every part has one).

    The result is a `Direction` whose ``metadata["parts"]`` lists the parts (attribute, source,
    target, weight) and ``metadata["attributes"]`` their attributes, so preserved directions leave
    every edited attribute out. ``strength`` then scales the whole composition.
    """
    directions = list(directions)
    if not directions:
        raise InputError("compose needs at least one direction")
    weights = [1.0] * len(directions) if weights is None else [float(w) for w in weights]
    if len(weights) != len(directions):
        raise InputError(f"{len(directions)} directions but {len(weights)} weights")
    for w in weights:
        if not math.isfinite(w):
            raise InputError(f"weights must be finite numbers, got {w}")
    first = directions[0]
    for d in directions[1:]:
        if d.model_id != first.model_id or d.dc.shape != first.dc.shape or d.dp.shape != first.dp.shape:
            raise DirectionMismatchError(f"cannot compose {first.name!r} and {d.name!r}: made for different models")
    attrs = [a for d in directions for a in d.metadata.get("attributes", [d.attribute])]
    if len(set(attrs)) != len(attrs):
        raise InputError(f"a composed edit changes each attribute once; got {attrs}")
    if len(directions) == 1 and weights == [1.0]:
        return first
    dz = None
    if all(d.dz is not None for d in directions):
        dz = sum(w * d.dz.float() for d, w in zip(directions, weights))
    parts = [{"attribute": d.attribute, "source": d.source, "target": d.target, "weight": w}
             for d, w in zip(directions, weights)]
    return Direction(
        dc=sum(w * d.dc.float() for d, w in zip(directions, weights)),
        dp=sum(w * d.dp.float() for d, w in zip(directions, weights)),
        attribute="+".join(attrs), source="+".join(d.source for d in directions),
        target="+".join(d.target for d in directions), model_id=first.model_id,
        templates=[t for d in directions for t in d.templates], dz=dz,
        metadata={"parts": parts, "attributes": attrs},
    )


# ---------------------------------------------------------------------------------------------
# A folder of directions
# ---------------------------------------------------------------------------------------------


class DirectionLibrary:
    """A folder of saved directions with ``index.json`` (name, attribute, source, target, norms)."""

    def __init__(self, folder: str | Path, model_id: str | None = None):
        self.folder = Path(folder)
        self.model_id = model_id
        self._index: dict[str, dict] = {}
        index = self.folder / "index.json"
        if index.is_file():
            data = read_json(index)
            if not isinstance(data, dict) or "directions" not in data:
                raise CorruptFileError(f"{index} is not a direction-library index; delete it to start over")
            if model_id is not None and data.get("model_id") not in (None, model_id):
                raise DirectionMismatchError(
                    f"library {self.folder} holds directions of model {data.get('model_id')!r}, not {model_id!r}"
                )
            self.model_id = data.get("model_id", model_id)
            self._index = {d["name"]: d for d in data["directions"]}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def names(self) -> list[str]:
        return list(self._index)

    def entries(self) -> list[dict]:
        return list(self._index.values())

    def add(self, direction: Direction, name: str | None = None) -> str:
        if self.model_id is None:
            self.model_id = direction.model_id
        elif direction.model_id != self.model_id:
            raise DirectionMismatchError(
                f"cannot add a direction of model {direction.model_id!r} to a library of {self.model_id!r}"
            )
        name = name or direction.name
        direction.save(self.folder / name)
        self._index[name] = {"name": name, "attribute": direction.attribute, "source": direction.source,
                             "target": direction.target, "has_dz": direction.dz is not None, **direction.norms()}
        self._write_index()
        return name

    def get(self, name: str, pipe=None) -> Direction:
        if name not in self._index:
            raise InputError(f"no direction {name!r} in {self.folder}; it has: {', '.join(self.names()) or 'none'}")
        return Direction.load(self.folder / name, pipe=pipe)

    def find(self, attribute: str | None = None, source: str | None = None, target: str | None = None) -> list[str]:
        return [n for n, d in self._index.items()
                if (attribute is None or d["attribute"] == attribute) and (source is None or d["source"] == source)
                and (target is None or d["target"] == target)]

    def load_all(self, pipe=None) -> list[Direction]:
        return [self.get(n, pipe) for n in self.names()]

    def _write_index(self) -> None:
        atomic_write_json(self.folder / "index.json",
                          {"model_id": self.model_id, "directions": list(self._index.values())})


def build_world_library(pipe, folder: str | Path, n: int = 32, seed: int = 0,
                        progress: bool = True) -> DirectionLibrary:
    """Every ordered value pair of every factor of the pipeline's embedded world as a text direction."""
    world = world_of(pipe)
    if world is None:
        raise InputError("this model has no embedded world to build a library from: pass value pairs instead")
    lib = DirectionLibrary(folder, spec(pipe).model_id)
    for k, a, b in tqdm(world.value_pairs(), desc="directions", disable=not progress):
        lib.add(text_direction(pipe, a, b, attribute=k, n=n, seed=seed))
    return lib
