"""Attribute scorers (DESIGN §3): what an image shows, as readings, probabilities and object masks.

One interface, two back ends:
  `WorldScorer`   an embedded world's analytic readers (exact labels, measured object masks);
                  `ShapesScorer` is the ShapesWorld one;
  `CLIPScorer`    zero-shot CLIP on real images (weights from a local folder or the hub cache).

Every method takes a batch as `explore.images` accepts it: an ``(N, H, W, 3)`` array (uint8, or
float in [0, 1]), an ``(N, 3, H, W)`` tensor in [0, 1], a list of images, or one image.
`get_scorer` picks a scorer by name.
"""

from __future__ import annotations

import abc
import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

from ..errors import InputError
from ..images import to_arrays
from ..pipeline.load import weights_source
from ..pipeline.spec import ATTRIBUTE
from ..worlds import World, get_world


def as_images(images) -> list[np.ndarray]:
    """A batch (or one image) as a list of ``(H, W, 3)`` uint8 arrays (`explore.images.to_arrays`)."""
    return to_arrays(images, "uint8")


class Scorer(abc.ABC):
    """What an image shows, for the metrics.

    ``attributes``: ``factor -> (value, ...)`` this scorer can judge. Subclasses implement `probs`
    (and `masks` when they can find objects); `read` and `prob` follow from it.
    """

    name: str = "scorer"
    attributes: dict[str, tuple[str, ...]]  # set by each subclass's __init__

    def _check(self, attribute: str, value: str | None = None) -> tuple[str, ...]:
        if attribute not in self.attributes:
            raise InputError(f"{self.name} scorer has no attribute {attribute!r}; known: {', '.join(self.attributes)}")
        values = self.attributes[attribute]
        if value is not None and value not in values:
            raise InputError(
                f"{attribute} has no value {value!r} for the {self.name} scorer; known: {', '.join(values)}"
            )
        return values

    @abc.abstractmethod
    def probs(self, images, attribute: str) -> np.ndarray:
        """``(N, V)`` probabilities of each value of ``attribute`` (columns in ``attributes[attribute]`` order)."""

    def prob(self, images, attribute: str, value: str) -> np.ndarray:
        """``(N,)`` probability that ``attribute == value`` on each image."""
        values = self._check(attribute, value)
        return self.probs(images, attribute)[:, values.index(value)]

    def read(self, images) -> list[dict[str, str | None]]:
        """One reading per image: ``factor -> most probable value``."""
        imgs = as_images(images)
        out: list[dict[str, str | None]] = [{} for _ in imgs]
        for attribute, values in self.attributes.items():
            best = self.probs(imgs, attribute).argmax(axis=1)
            for r, b in zip(out, best):
                r[attribute] = values[int(b)]
        return out

    def masks(self, images) -> list[np.ndarray | None]:
        """The object mask ``(H, W)`` bool of each image, or ``None`` where this scorer cannot tell."""
        return [None] * len(as_images(images))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.attributes)})"


class WorldScorer(Scorer):
    """An embedded world's readers (`explore.worlds.World.read`) behind the `Scorer` interface.

    ``hard=True`` (default, DESIGN §3 "reader: 0/1"): `probs` is the one-hot of the reading, so the
    SDE's ``E`` is the change in the read label. ``hard=False``: the readers' calibrated likelihoods
    where the world has them (ShapesWorld), else the one-hot. Where a factor cannot be read its
    probabilities are uniform. Masks are the pixels the readers measured as object (empty where
    none was found); `object_masks` gives the object a factor key belongs to (the whole scene's
    objects for world-wide keys such as ``background``).
    """

    def __init__(self, world: World | str, hard: bool = True):
        self.world = get_world(world) if isinstance(world, str) else world
        self.name = self.world.name
        self.hard = hard
        self.attributes = {k: tuple(self.world.values(k)) for k in self.world.keys()}

    def readings(self, images) -> list:
        """The readers' full readings (labels, and ``mask``; ShapesWorld also ``probs`` and ``confidence``)."""
        return [self.world.read(im) for im in as_images(images)]

    def read(self, images) -> list[dict[str, str | None]]:
        return [dict(r) for r in self.readings(images)]

    def probs(self, images, attribute: str) -> np.ndarray:
        values = self._check(attribute)
        rows = []
        for r in self.readings(images):
            v = r.get(attribute)
            soft = getattr(r, "probs", None)
            if v is not None and (self.hard or soft is None or attribute not in soft):
                rows.append([float(x == v) for x in values])
            elif soft is not None and attribute in soft:
                rows.append([soft[attribute][x] for x in values])
            else:
                rows.append([1.0 / len(values)] * len(values))
        return np.asarray(rows, dtype=np.float64)

    def masks(self, images) -> list[np.ndarray | None]:
        return [np.asarray(r.mask, dtype=bool) if r.mask is not None else None for r in self.readings(images)]

    def object_masks(self, images, attribute: str) -> list[np.ndarray | None]:
        """The measured mask of the object ``attribute`` belongs to, per image (None where not found)."""
        return [self.world.object_mask(r, attribute) for r in self.readings(images)]


class ShapesScorer(WorldScorer):
    """The ShapesWorld readers (`explore.shapes.readers.read`) behind the `Scorer` interface."""

    def __init__(self, hard: bool = True):
        super().__init__("shapes", hard)


# ---------------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------------


def _image_processor(source: str, local_files_only: bool):
    """CLIP's image processor; the PIL backend when torchvision is missing (transformers 5 falls back
    to it anyway, with a warning)."""
    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        cls = transformers.CLIPImageProcessorPil
    else:
        cls = transformers.CLIPImageProcessor
    return cls.from_pretrained(source, local_files_only=local_files_only)


def _features(out) -> Any:
    """``get_*_features`` return a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class CLIPScorer(Scorer):
    """Zero-shot CLIP: ``prob`` = softmax over the attribute's values of ``logit_scale · cos(image, text)``.

    ``model_name_or_path``: a local folder (``save_pretrained`` layout with tokenizer and
    ``preprocessor_config.json``) or a hub id (from the local hub cache when ``HF_HUB_OFFLINE=1``,
    downloaded otherwise), e.g. ``"openai/clip-vit-large-patch14"``.
    ``attributes``: ``factor -> [value, ...]``. ``template``: the prompt for a value, one string with
    ``{}`` or a dict ``factor -> template`` (factors not in it use ``"a photo of a {} object"``).
    Masks: CLIP cannot localise; `masks` returns ``None`` (use attention maps from `explore.probe`).
    """

    name = "clip"

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        attributes: Mapping[str, Sequence[str]],
        template: str | Mapping[str, str] = "a photo of a {} object",
        device: str = "cpu",
        batch_size: int = 32,
    ):
        if not attributes:
            raise InputError("CLIPScorer needs attributes, e.g. {'color': ['red', 'blue']}")
        self.attributes = {}
        for k, vals in attributes.items():
            vals = tuple(str(v) for v in vals)
            if len(vals) < 2 or len(set(vals)) != len(vals):
                raise InputError(f"attribute {k!r} needs at least two distinct values, got {list(vals)}")
            self.attributes[str(k)] = vals
        templates = template if isinstance(template, Mapping) else {}
        default = template if isinstance(template, str) else "a photo of a {} object"
        self.templates = {k: templates.get(k, default) for k in self.attributes}
        for k, t in self.templates.items():
            if "{}" not in t:
                raise InputError(f"template for {k!r} must contain '{{}}' where the value goes, got {t!r}")
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device = device
        self.model_name_or_path = str(model_name_or_path)
        self.model, self.tokenizer, self.processor = self._load(self.model_name_or_path, device)
        self._text: dict[str, Any] = {}

    @staticmethod
    def _load(name: str, device: str):
        layout = ("a folder with the CLIP model, its tokenizer and preprocessor_config.json (save_pretrained of "
                  "CLIPModel, the tokenizer and CLIPImageProcessor)")
        src = weights_source(name, "CLIP model")
        try:
            model = transformers.CLIPModel.from_pretrained(src.source, local_files_only=src.local_files_only)
            tokenizer = transformers.AutoTokenizer.from_pretrained(src.source, local_files_only=src.local_files_only)
            processor = _image_processor(src.source, src.local_files_only)
        except (OSError, ValueError) as e:
            raise src.not_found("CLIP model", layout, e) from e
        model.eval().to(device)
        return model, tokenizer, processor

    def _text_embeds(self, attribute: str):
        """``(V, d)`` unit text embeddings of the attribute's values (cached)."""
        if attribute not in self._text:
            prompts = [self.templates[attribute].format(v) for v in self.attributes[attribute]]
            tok = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(self.device)
            with torch.no_grad():
                emb = _features(
                    self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask"))
                )
            self._text[attribute] = torch.nn.functional.normalize(emb.float(), dim=-1)
        return self._text[attribute]

    def image_embeds(self, images):
        """``(N, d)`` unit image embeddings."""
        imgs = [Image.fromarray(im) for im in as_images(images)]
        chunks = []
        for i in range(0, len(imgs), self.batch_size):
            pix = self.processor(images=imgs[i : i + self.batch_size], return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                emb = _features(self.model.get_image_features(pixel_values=pix.to(self.device)))
            chunks.append(torch.nn.functional.normalize(emb.float(), dim=-1))
        return torch.cat(chunks)

    def probs(self, images, attribute: str) -> np.ndarray:
        self._check(attribute)
        scale = self.model.logit_scale.exp().float()
        with torch.no_grad():
            logits = scale * self.image_embeds(images) @ self._text_embeds(attribute).T
        return logits.softmax(dim=-1).double().cpu().numpy()

    def read(self, images) -> list[dict[str, str | None]]:
        emb = self.image_embeds(images)  # once for all attributes
        scale = self.model.logit_scale.exp().float()
        out: list[dict[str, str | None]] = [{} for _ in range(len(emb))]
        for attribute, values in self.attributes.items():
            with torch.no_grad():
                best = (scale * emb @ self._text_embeds(attribute).T).argmax(dim=-1).tolist()
            for r, b in zip(out, best):
                r[attribute] = values[b]
        return out

    def __repr__(self) -> str:
        return f"CLIPScorer({self.model_name_or_path!r}, {', '.join(self.attributes)})"


def get_scorer(name_or_obj: Any = "shapes", **kwargs: Any) -> Scorer:
    """A scorer by name.

    A world name (``"shapes"``, ``"pairs"``) → its `WorldScorer` (kwargs: ``hard``); a `Scorer` →
    itself; a pipeline of an embedded world → that world's scorer; a local folder or hub id →
    `CLIPScorer` (kwargs: ``attributes`` (required), ``template``, ``device``, ``batch_size``).
    """
    if isinstance(name_or_obj, Scorer):
        return name_or_obj
    state = getattr(name_or_obj, ATTRIBUTE, None)
    if state is not None:
        spec = state.spec
        if spec.world is not None:
            return ShapesScorer(**kwargs) if spec.world == "shapes" else WorldScorer(spec.world, **kwargs)
        raise InputError(
            f"no built-in scorer for the pipeline {spec.model_id!r}; pass a CLIP model, e.g. "
            "get_scorer('openai/clip-vit-large-patch14', attributes={...})"
        )
    if name_or_obj is None:
        raise InputError("no scorer given: use 'shapes' for ShapesWorld or a CLIP folder / hub id with attributes=")
    if not isinstance(name_or_obj, (str, os.PathLike)):
        raise InputError(f"get_scorer takes a name, a path or a Scorer, got {type(name_or_obj).__name__}")
    name = str(name_or_obj)
    if name == "shapes":
        return ShapesScorer(**kwargs)
    if name in ("pairs",):
        return WorldScorer(name, **kwargs)
    if "attributes" not in kwargs:
        raise InputError(f"a CLIP scorer ({name!r}) needs attributes=, e.g. {{'color': ['red', 'blue']}}")
    return CLIPScorer(name, **kwargs)
