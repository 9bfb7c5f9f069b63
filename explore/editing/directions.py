"""Identify: editing directions from text (DESIGN §2).

For a factor change ``v- -> v+`` and templates ``T``: ``dc = mean_T[E_c(T(v+)) - E_c(T(v-))]``,
``dp`` likewise, with the pipeline's own ``encode_prompt``. Token positions align through the
tokenizer's padding; pairs whose two prompts tokenize to different lengths are counted
(``metadata["length_mismatch"]``) because their token-wise difference mixes positions.

A `Direction` saves as one ``NAME.safetensors``: the tensors, with everything else and a SHA-256
checksum in its header, written atomically; loading checks the checksum and the fields, and
loading against another model id or other embedding shapes is an error. A `DirectionLibrary` is a
folder of such files; its ``index.json`` is a listing written after them, never the only record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from tqdm.auto import tqdm

from ..errors import CorruptFileError, DirectionMismatchError, InputError
from ..io import atomic_write_bytes, atomic_write_json, dumps, read_json
from ..pipeline.latent import encode_text
from ..pipeline.spec import spec, state
from ..warn import warn
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
        """Write ``path.safetensors`` atomically: the tensors, with everything else in its header.

        ``path``: without suffix, or ending in ``.safetensors``. One file per direction, written whole
        or not at all, so a crash leaves the old direction or the new one, never a mix; the header
        carries a SHA-256 of the metadata and tensor data that `load` checks. A two-file direction of
        an older version at the same path (``path.json``) is replaced.
        """
        base = _base(path)
        tensors = {"dc": self.dc.detach().float().cpu().contiguous(),
                   "dp": self.dp.detach().float().cpu().contiguous()}
        if self.dz is not None:
            tensors["dz"] = self.dz.detach().float().cpu().contiguous()
        meta = {
            "attribute": self.attribute, "source": self.source, "target": self.target, "model_id": self.model_id,
            "templates": [list(t) for t in self.templates], "metadata": self.metadata,
            "shapes": {k: list(v.shape) for k, v in tensors.items()}, "norms": self.norms(),
        }
        text = dumps(meta)
        data = _data_section(save(tensors))  # the tensor bytes: the same whatever the header says
        raw = save(tensors, metadata={"format": FORMAT, "explore": text, "sha256": _digest(text, data)})
        if _data_section(raw) != data:  # pragma: no cover - a safetensors that lays data out by header
            raise RuntimeError("safetensors wrote the tensor data differently with metadata; cannot checksum it")
        atomic_write_bytes(base.with_suffix(".safetensors"), raw)
        legacy = base.with_suffix(".json")
        if legacy.is_file():
            legacy.unlink()
        return base

    @classmethod
    def load(cls, path: str | Path, pipe=None, device=None) -> Direction:
        """Load a saved direction; with ``pipe``, check it belongs to that model (id and shapes).

        A file that is damaged (its checksum, header or fields do not hold) is a `CorruptFileError`
        naming it and what is wrong.
        """
        base = _base(path)
        st = base.with_suffix(".safetensors")
        if not st.is_file():
            raise InputError(f"no direction at {base} (missing {st.name})")
        raw = _read_bytes(st)
        header = _header(st, raw)
        try:
            tensors = load(raw)
        except (SafetensorError, ValueError) as e:
            raise CorruptFileError(f"{st} is not a readable safetensors file ({e}); rebuild the direction") from e
        own = header.get("__metadata__") or {}
        if "explore" in own:
            meta = _meta(st, own["explore"])
            if own.get("sha256") != _digest(own["explore"], _data_section(raw)):
                raise CorruptFileError(f"{st}: the data does not match its checksum (the file is damaged); "
                                       "rebuild the direction")
        else:  # two files, as explore 0.2 saved them: no checksum to verify
            js = base.with_suffix(".json")
            if not js.is_file():
                raise CorruptFileError(f"{st} has no explore metadata and there is no {js.name} beside it")
            meta = _meta(js, read_json(js))
        for k, shape in meta["shapes"].items():
            if k not in tensors or list(tensors[k].shape) != shape:
                raise CorruptFileError(f"{st}: tensor {k!r} does not match its recorded shape; rebuild the direction")
        if "dc" not in tensors or "dp" not in tensors:
            raise CorruptFileError(f"{st} lacks the tensors dc and dp; rebuild the direction")
        d = cls(
            dc=tensors["dc"], dp=tensors["dp"], dz=tensors.get("dz"), attribute=meta["attribute"],
            source=meta["source"], target=meta["target"], model_id=meta["model_id"],
            templates=[tuple(t) for t in meta["templates"]], metadata=meta["metadata"],
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


FORMAT = "explore.direction/2"
_FIELDS = {"attribute": str, "source": str, "target": str, "model_id": str, "templates": list, "metadata": dict,
           "shapes": dict}


def _digest(meta_text: str, data: bytes) -> str:
    return hashlib.sha256(meta_text.encode("utf-8") + b"\0" + data).hexdigest()


def _data_section(raw: bytes) -> bytes:
    return raw[8 + int.from_bytes(raw[:8], "little"):]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CorruptFileError(f"cannot read {path}: {e.strerror or e}") from e


def _header(path: Path, raw: bytes) -> dict:
    """A safetensors file's JSON header (`CorruptFileError` if it is not one)."""
    n = int.from_bytes(raw[:8], "little") if len(raw) >= 8 else -1
    try:
        if not 0 < n <= len(raw) - 8:
            raise ValueError("bad header length")
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        return header
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({e}); rebuild the direction") from e


def _meta(path: Path, meta) -> dict:
    """A direction's metadata with its fields checked (`CorruptFileError` naming ``path`` and the field)."""
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as e:
            raise CorruptFileError(f"{path}: the direction's metadata is not valid JSON ({e.msg})") from e
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{path}: the direction's metadata is not a JSON object")
    meta = {"templates": [], "metadata": {}, "shapes": {}, **meta}
    for k, kind in _FIELDS.items():
        if k not in meta:
            raise CorruptFileError(f"{path}: the direction's metadata has no {k!r}; rebuild the direction")
        if not isinstance(meta[k], kind):
            raise CorruptFileError(f"{path}: the direction's {k!r} is a {type(meta[k]).__name__}, not a "
                                   f"{kind.__name__}; rebuild the direction")
    for t in meta["templates"]:
        if not (isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t)):
            raise CorruptFileError(f"{path}: the direction's templates must be [negative, positive] prompt pairs")
    for k, shape in meta["shapes"].items():
        if not (isinstance(shape, list) and all(isinstance(x, int) for x in shape)):
            raise CorruptFileError(f"{path}: the recorded shape of {k!r} is not a list of integers")
    return meta


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


def parse_swap(text: str) -> tuple[str, str]:
    """``"red -> blue"`` (also ``->``, ``=>``, ``>``, ``:``) as ``("red", "blue")``."""
    if isinstance(text, str):
        for sep in ("->", "=>", "→", ">", ":"):
            if sep in text:
                a, b = (x.strip() for x in text.split(sep, 1))
                if a and b:
                    return a, b
    raise InputError(f"an edit given as words must look like 'red -> blue', got {text!r}")


def caption_pair(world, prompt: str, v_minus: str, v_plus: str, attribute: str | None = None
                 ) -> tuple[str | None, tuple[str, str]]:
    """``(attribute, (prompt, edited prompt))``: the caption with ``v_minus`` changed to ``v_plus``.

    On an embedded world the factor is found in the caption's own labels (`World.edited_caption`
    changes only that factor's word, even where another object shares it); elsewhere the word is
    swapped (`swap_word`)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt= must be the source image's caption, a non-empty string")
    if world is None:
        return attribute, swap_word(prompt, v_minus, v_plus)
    labels = world.labels_from_caption(prompt)
    keys = [attribute] if attribute is not None else [
        k for k, v in labels.items() if v == v_minus and v_plus in world.values(k)]
    if not keys or labels.get(keys[0]) != v_minus:
        raise InputError(f"the caption {prompt!r} has no factor with the value {v_minus!r} that can become {v_plus!r}")
    if len(keys) > 1:
        raise InputError(f"{v_minus!r} in {prompt!r} is the value of {', '.join(keys)}: pass attribute= to say which")
    return keys[0], (prompt, world.edited_caption(prompt, keys[0], v_plus))


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
    prompt: str | None = None,
    attribute: str | None = None,
    n: int = 32,
    seed: int = 0,
) -> Direction:
    """The text direction ``v- -> v+`` as the mean embedding difference over templates.

    Args:
        pipe: a pipeline from `explore.load_pipeline`.
        v_minus: the source value, a word (e.g. ``"red"``).
        v_plus: the target value (e.g. ``"blue"``).
        templates: strings with ``{}`` where the value goes (``{subject}`` is filled from
            ``subject``), strings containing ``v_minus`` as a word (it is swapped), or explicit
            ``(negative, positive)`` prompt pairs. Default: an embedded world builds ``n`` caption
            pairs from its grammar (all templates, random other factors; `explore.worlds.World.templates`);
            other models use photo-style templates with ``subject`` (default ``"object"``).
        subject: the noun the photo-style templates describe.
        prompt: the source image's own caption: the direction is then that one pair, the caption
            against it with ``v_minus`` swapped for ``v_plus`` (on an embedded world, its grammar's
            edited caption). Measured to edit one object of two where the template mean does not
            (docs/results); give ``templates`` or ``prompt``, not both.
        attribute: the factor's name (inferred on embedded worlds).
        n: caption pairs an embedded world draws.
        seed: which caption pairs it draws.

    Returns:
        A `Direction` with ``dc`` ``(L, D)`` and ``dp`` ``(P,)`` (float32, the shapes of the model's
        token and pooled embeddings) and its templates.
    """
    for v in (v_minus, v_plus):
        if not isinstance(v, str) or not v.strip():
            raise InputError("values must be non-empty words, e.g. text_direction(pipe, 'red', 'blue')")
    if v_minus == v_plus:
        raise InputError(f"v- and v+ are both {v_minus!r}; a direction needs two different values")
    s = spec(pipe)
    world = world_of(pipe)
    if prompt is not None:
        if templates is not None:
            raise InputError("give templates= or prompt=, not both")
        attribute, pair = caption_pair(world, prompt, v_minus, v_plus, attribute)
        templates = [pair]
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
        warn(f"{mismatch} of {len(pairs)} template pairs tokenize to different lengths for {v_minus!r} / {v_plus!r}: "
             "their token-wise difference mixes positions (dp is unaffected)",
             once=("lengths", v_minus, v_plus, tuple(pairs)), seen=state(pipe).warned)
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
    """A folder of saved directions, one ``NAME.safetensors`` each, listed in ``index.json``.

    The direction files are the record: each is written whole (`Direction.save`) and carries its own
    name, value pair, norms and checksum, and ``index.json`` (model id; name, attribute, source,
    target, norms, checksum per direction) is rewritten after them. A crash between the two writes
    leaves the new direction in place and the listing one step behind; opening the library reads
    the files' headers (not their tensors), so it shows the direction whole, under its own name.
    `get` verifies the checksum; a damaged file or index is a `CorruptFileError` naming it.
    """

    def __init__(self, folder: str | Path, model_id: str | None = None):
        self.folder = Path(folder)
        self.model_id = model_id
        self._index: dict[str, dict] = {}
        index = self.folder / "index.json"
        listed: dict[str, dict] = {}
        stored_model = None
        if index.is_file():
            data = read_json(index)
            if not isinstance(data, dict) or not isinstance(data.get("directions"), list):
                raise CorruptFileError(f"{index} is not a direction-library index (no list of directions); delete "
                                       "it and the library lists its direction files again")
            for i, d in enumerate(data["directions"]):
                if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in _ENTRY_FIELDS):
                    raise CorruptFileError(f"{index}: entry {i} lacks one of {', '.join(_ENTRY_FIELDS)}; delete the "
                                           "index and the library lists its direction files again")
                listed[d["name"]] = d
            stored_model = data.get("model_id")
            if stored_model is not None and not isinstance(stored_model, str):
                raise CorruptFileError(f"{index}: model_id must be a string")
        for f in sorted(self.folder.glob("*.safetensors")) if self.folder.is_dir() else ():
            entry = _entry(f, listed.get(f.stem))
            if entry is not None:
                self._index[f.stem] = entry
        models = {e["model_id"] for e in self._index.values() if e.get("model_id")} | (
            {stored_model} if stored_model else set())
        if len(models) > 1:
            raise CorruptFileError(f"library {self.folder} mixes directions of models {sorted(models)}")
        found = next(iter(models), None)
        if model_id is not None and found not in (None, model_id):
            raise DirectionMismatchError(
                f"library {self.folder} holds directions of model {found!r}, not {model_id!r}")
        self.model_id = found or model_id

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
        """Save ``direction`` as ``NAME.safetensors`` (default name: ``direction.name``), then the index."""
        if self.model_id is None:
            self.model_id = direction.model_id
        elif direction.model_id != self.model_id:
            raise DirectionMismatchError(
                f"cannot add a direction of model {direction.model_id!r} to a library of {self.model_id!r}"
            )
        name = name or direction.name
        if not name or Path(name).name != name or name.startswith("."):
            raise InputError(f"a direction's name must be a plain file name, got {name!r}")
        direction.save(self.folder / name)
        self._index[name] = _entry(self.folder / f"{name}.safetensors")
        self._write_index()
        return name

    def remove(self, name: str) -> None:
        """Delete a direction (its file first, then the index)."""
        if name not in self._index:
            raise InputError(f"no direction {name!r} in {self.folder}; it has: {', '.join(self.names()) or 'none'}")
        for suffix in (".safetensors", ".json"):
            f = self.folder / f"{name}{suffix}"
            if f.is_file():
                f.unlink()
        del self._index[name]
        self._write_index()

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


_ENTRY_FIELDS = ("name", "attribute", "source", "target")


def _entry(path: Path, listed: dict | None = None) -> dict | None:
    """A library's entry for the direction file ``path``, from its header alone (tensors unread).

    A file of the two-file format (explore 0.2) keeps its ``listed`` index entry; one the index does
    not list either is skipped (it is not a direction of this library).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            raw = head + (f.read(n) if 0 < n < 100_000_000 else b"")
    except OSError as e:
        raise CorruptFileError(f"cannot read {path}: {e.strerror or e}") from e
    own = _header(path, raw).get("__metadata__") or {}
    if "explore" not in own:
        return listed
    meta = _meta(path, own["explore"])
    norms = meta.get("norms") if isinstance(meta.get("norms"), dict) else {}
    return {"name": path.stem, "attribute": meta["attribute"], "source": meta["source"], "target": meta["target"],
            "model_id": meta["model_id"], "has_dz": "dz" in meta["shapes"], **norms, "sha256": own.get("sha256")}


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
