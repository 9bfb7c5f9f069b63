"""The embedded worlds behind one interface: what the rest of `explore` asks of a world.

A world is a procedural generator with exact ground truth (ShapesWorld: one object; ShapesWorld
Pairs: two) and the model trained on it. Everything world-specific that the package uses goes
through a `World`: its factor keys and values, scenes (sample, render, mask, caption), the pixel
readers, the caption grammar for text directions, and what a caption names. A model's
`ModelSpec.world` names its world; `world_of(pipe)` returns it (None for SD3 / FLUX weights).

To add a world: a leaf package like ``explore/shapes`` (world, readers, trainer, shipped model),
one `World` subclass here and one line in ``WORLDS`` (docs/design.md §8).
"""

from __future__ import annotations

import abc
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InputError
from .pairs import readers as pairs_readers
from .pairs import world as pairs_world
from .pipeline.spec import spec
from .shapes import readers as shapes_readers
from .shapes import world as shapes_world


class World(abc.ABC):
    """What `explore` needs from an embedded world. Factor keys are strings (``"color"``, ``"circle.color"``)."""

    name: str  # ModelSpec.world
    model: str  # the load_pipeline name of its shipped model
    resolution: int = 64
    example: str  # one full caption, for messages
    # which attention block makes `explore.interp.attention.attention_mask`'s masks on this world's model
    # ({"object": i, "background": j, "segment-background": k, "concepts": l}); None: the depth rule
    # measured on ShapesWorld (MASK_DEPTH)
    mask_blocks: dict[str, int] | None = None

    # -- factors --------------------------------------------------------------------------------

    @abc.abstractmethod
    def keys(self, labels: Mapping[str, str] | None = None) -> list[str]:
        """Every factor key a scene can have (``labels=None``), or the keys of one scene's labels, in order."""

    @abc.abstractmethod
    def values(self, key: str) -> tuple[str, ...]:
        """The values of a factor key (`InputError` for an unknown key)."""

    def check(self, key: str, value: str | None = None) -> None:
        values = self.values(key)
        if value is not None and value not in values:
            raise InputError(f"{value!r} is not a value of {key}; known: {', '.join(values)}")

    @abc.abstractmethod
    def attribute(self, v_minus: str, v_plus: str, attribute: str | None = None) -> str:
        """The factor key of an edit ``v- -> v+`` (checked; inferred from the values where it is unambiguous)."""

    def object_of(self, key: str) -> str | None:
        """Which object a factor key belongs to (None: the whole scene, e.g. the background)."""
        return None if key == "background" else "object"

    def caption_objects(self, prompt: str) -> tuple[dict[str, list[str]], str | None]:
        """The objects a caption names, each with the words that name it alone (its noun, then every value
        the caption gives it that no other object shares), and the background's word (None: not named)."""
        from .shapes.world import caption_words

        labels = self.labels_from_caption(prompt)
        words = caption_words(prompt)
        objects: dict[str, list[str]] = {}
        for key, value in labels.items():
            obj = self.object_of(key)
            if obj is None:
                continue
            own = objects.setdefault(obj, [obj] if words.count(obj) == 1 else [])
            if words.count(value) == 1 and value not in own:
                own.append(value)
        return objects, labels.get("background")

    def editable(self) -> list[str]:
        """Factor keys an edit benchmark changes (default: every key)."""
        return self.keys()

    def value_pairs(self) -> list[tuple[str, str, str]]:
        """``(key, v-, v+)`` for every ordered value pair of every key (a direction library)."""
        return [(k, a, b) for k in self.keys() for a in self.values(k) for b in self.values(k) if a != b]

    # -- scenes ---------------------------------------------------------------------------------

    scene_type: type  # the class of this world's scenes

    def is_scene(self, obj) -> bool:
        return isinstance(obj, self.scene_type)

    @abc.abstractmethod
    def sample(self, rng: random.Random, jitter: bool = True, **fixed: str) -> Any:
        """A random scene with the factor keys in ``fixed`` pinned."""

    @abc.abstractmethod
    def labels(self, scene) -> dict[str, str]:
        ...

    @abc.abstractmethod
    def replace(self, scene, key: str, value: str):
        ...

    @abc.abstractmethod
    def render(self, scene, size: int | None = None) -> np.ndarray:
        """``(size, size, 3)`` uint8."""

    @abc.abstractmethod
    def mask(self, scene, size: int | None = None, key: str | None = None) -> np.ndarray:
        """Exact mask ``(size, size)`` bool of the object ``key`` belongs to (every object for None / background)."""

    @abc.abstractmethod
    def caption(self, scene, template: int | None = None, omit: Sequence[str] = (), rng=None) -> str:
        ...

    n_templates: int

    # -- reading pixels and captions --------------------------------------------------------------

    @abc.abstractmethod
    def read(self, image) -> dict:
        """The factor values an image shows (a dict; ``None`` where unreadable), with ``.mask`` (bool, objects)."""

    def score(self, reading, labels: Mapping[str, str]) -> dict:
        """Compare a reading with a scene's labels: ``correct`` (key -> bool), ``objects`` (object -> all
        its factors right), ``binding`` (everything right), ``swap`` (object -> shows another object's
        colour), ``n_objects`` (objects found)."""
        correct = {k: reading.get(k) == v for k, v in labels.items()}
        found = 1 if reading.get(self.keys()[0]) is not None else 0
        return {"correct": correct, "objects": {"object": all(correct.values())}, "binding": all(correct.values()),
                "swap": {}, "n_objects": found}

    def object_mask(self, reading, key: str) -> np.ndarray | None:
        """The measured mask of the object a factor key belongs to (the union of all for world-wide keys)."""
        return getattr(reading, "mask", None)

    @abc.abstractmethod
    def labels_from_caption(self, prompt: str) -> dict[str, str]:
        """The factor keys a caption names (`InputError` for words outside the grammar)."""

    def edited_caption(self, prompt: str, key: str, value: str) -> str:
        """``prompt`` with ``key`` set to ``value`` and nothing else changed (the caption an edit's own
        direction is taken against). Default: the key's current value swapped as a word, when the
        caption names it exactly once."""
        import re

        current = self.labels_from_caption(prompt).get(key)
        if current is None:
            raise InputError(f"the caption {prompt!r} does not name {key}")
        self.check(key, value)
        pattern = re.compile(rf"\b{re.escape(current)}\b")
        if len(pattern.findall(prompt)) != 1:
            raise InputError(f"the caption {prompt!r} names {current!r} more than once: which one is {key}?")
        return pattern.sub(value, prompt)

    @abc.abstractmethod
    def captions(self, n: int = 8, seed: int = 0) -> list[str]:
        """``n`` different full captions of random scenes."""

    @abc.abstractmethod
    def vocabulary(self) -> list[str]:
        ...

    def source_scene(self, rng: random.Random, key: str, v_minus: str, v_plus: str, jitter: bool = True):
        """A random scene with ``key = v-`` whose edit to ``v+`` is a valid scene too (edit benchmarks)."""
        for _ in range(1000):
            scene = self.sample(rng, jitter=jitter, **{key: v_minus})
            try:
                self.replace(scene, key, v_plus)
            except ValueError:
                continue
            return scene
        raise InputError(f"no scene of {self.name} allows the edit {key}: {v_minus} -> {v_plus}")

    def template_scene(self, rng: random.Random, key: str, v_minus: str, v_plus: str):
        """The scene behind one caption pair of a text direction (no jitter: only the caption is used)."""
        return self.source_scene(rng, key, v_minus, v_plus, jitter=False)

    def scene_from_caption(self, prompt: str, seed: int = 0):
        """A random scene with every factor the caption names (the rest drawn from ``seed``)."""
        return self.sample(random.Random(seed), jitter=True, **self.labels_from_caption(prompt))

    def templates(self, key: str, v_minus: str, v_plus: str, n: int = 32, seed: int = 0,
                  p_omit: float = 0.0) -> list[tuple[str, str]]:
        """Caption pairs from the world's grammar that differ only in ``key``'s value (for text directions)."""
        rng = random.Random(seed)
        pairs = []
        for i in range(n):
            scene = self.template_scene(rng, key, v_minus, v_plus)
            template = i % self.n_templates
            omit = [k for k in self.keys(self.labels(scene)) if k != key and rng.random() < p_omit]
            order_rng = random.Random(f"{seed}-{i}")
            pairs.append((
                self.caption(scene, template=template, omit=omit, rng=order_rng),
                self.caption(self.replace(scene, key, v_plus), template=template, omit=omit,
                             rng=random.Random(f"{seed}-{i}")),
            ))
        return pairs


class ShapesWorld(World):
    """One object on a plain background (`explore.shapes`)."""

    name = "shapes"
    model = "shapes"
    example = "a small red circle at the top left on a gray background"

    def __init__(self):
        self._w = shapes_world
        self.n_templates = len(shapes_world.TEMPLATES)
        self.scene_type = shapes_world.Scene

    def keys(self, labels=None):
        keys = list(self._w.FACTOR_KEYS)
        return keys if labels is None else [k for k in keys if k in labels]

    def values(self, key):
        if key not in self._w.FACTORS:
            raise InputError(f"unknown attribute {key!r}; known: {', '.join(self._w.FACTORS)}")
        return self._w.FACTORS[key]

    def attribute(self, v_minus, v_plus, attribute=None):
        if attribute is not None:
            for v in (v_minus, v_plus):
                self.check(attribute, v)
            return attribute
        hits = [k for k, vals in self._w.FACTORS.items() if v_minus in vals and v_plus in vals]
        if not hits:
            known = "; ".join(f"{k}: {', '.join(v)}" for k, v in self._w.FACTORS.items())
            raise InputError(f"no ShapesWorld attribute has both {v_minus!r} and {v_plus!r}; values are {known}")
        return hits[0]

    def sample(self, rng, jitter=True, **fixed):
        return self._w.sample_scene(rng, jitter=jitter, **fixed)

    def template_scene(self, rng, key, v_minus, v_plus):
        # a whole random scene, then the value set (one rng draw per factor: the direction library's
        # caption pairs, and so every number measured with them, stay what they were)
        return self.sample(rng, jitter=False).replace(**{key: v_minus})

    def source_scene(self, rng, key, v_minus, v_plus, jitter=True):
        return self.sample(rng, jitter=jitter, **{key: v_minus})

    def labels(self, scene):
        return scene.labels

    def replace(self, scene, key, value):
        return scene.replace(**{key: value})

    def render(self, scene, size=None):
        return self._w.render(scene, size or self.resolution)

    def mask(self, scene, size=None, key=None):
        return self._w.mask(scene, size or self.resolution)

    def caption(self, scene, template=None, omit=(), rng=None):
        return self._w.caption(scene, template=template, omit=omit, rng=rng)

    def read(self, image):
        return shapes_readers.read(image)

    def labels_from_caption(self, prompt):
        return self._w.labels_from_caption(prompt)

    def captions(self, n=8, seed=0):
        return self._w.captions(n, seed)

    def vocabulary(self):
        return self._w.vocabulary()


class PairsWorld(World):
    """Two objects with their own colour, size and position (`explore.pairs`); keys like ``circle.color``."""

    name = "pairs"
    model = "shapes-pairs"
    example = "a red circle at the top left and a small blue square at the bottom right on a gray background"
    # chosen on the development seed 1000 (`python -m explore attention-masks --model shapes-pairs --n 48`,
    # per-object exact masks): object words' masks are best from block 2 (IoU 0.27 over every t; the depth
    # rule's block 3: 0.02), background words' from block 9 (0.88; the rule's block 5: 0.23)
    # (`python -m explore concept-maps --model shapes-pairs --n 48 --seed 1000`, per-object masks): the
    # segmentation of each object's words against the background word is best with the background
    # word's map from block 9 (0.50; block 5, the depth rule's: 0.23), concept maps at block 7 (0.13)
    mask_blocks = {"object": 2, "background": 9, "segment-background": 9, "concepts": 7}

    def __init__(self):
        self._w = pairs_world
        self.n_templates = len(pairs_world.TEMPLATES)
        self.scene_type = pairs_world.PairScene

    def keys(self, labels=None):
        all_keys = [self._w.factor_key(s, f) for s in self._w.SHAPES for f in self._w.OBJECT_FACTORS] + ["background"]
        return all_keys if labels is None else [k for k in all_keys if k in labels]

    def values(self, key):
        shape, factor = self._w.split_key(key)
        ok = (shape is None and factor == "background") or (shape in self._w.SHAPES and factor in
                                                            self._w.OBJECT_FACTORS)
        if not ok:
            raise InputError(f"unknown factor key {key!r}; keys look like 'circle.color', 'square.hpos' or "
                             "'background'")
        return self._w.values_of(key)

    def attribute(self, v_minus, v_plus, attribute=None):
        if attribute is None:
            if v_minus in self._w.SHAPES_FACTORS["background"] and v_plus in self._w.SHAPES_FACTORS["background"]:
                return "background"
            raise InputError(f"say which object {v_minus!r} -> {v_plus!r} changes: attribute='circle.color' "
                             "(factor keys are '<shape>.<factor>' or 'background')")
        for v in (v_minus, v_plus):
            self.check(attribute, v)
        return attribute

    def object_of(self, key):
        return self._w.split_key(key)[0]

    def sample(self, rng, jitter=True, **fixed):
        return self._w.sample_pair(rng, jitter=jitter, **fixed)

    def labels(self, scene):
        return scene.labels

    def replace(self, scene, key, value):
        return scene.replace(key, value)

    def render(self, scene, size=None):
        return self._w.render(scene, size or self.resolution)

    def mask(self, scene, size=None, key=None):
        shape = None if key is None else self._w.split_key(key)[0]
        return self._w.mask(scene, size or self.resolution, shape)

    def caption(self, scene, template=None, omit=(), rng=None):
        return self._w.caption(scene, template=template, omit=omit, rng=rng)

    def read(self, image):
        return pairs_readers.read(image)

    def score(self, reading, labels):
        return pairs_readers.score(reading, labels)

    def object_mask(self, reading, key):
        shape = self._w.split_key(key)[0]
        return reading.mask if shape is None else reading.object_mask(shape)

    def labels_from_caption(self, prompt):
        return self._w.labels_from_caption(prompt)

    def edited_caption(self, prompt, key, value):
        """The same template and object order with only ``key`` changed: a value word may name both
        objects ("a small red circle ... and a small blue square"), so the caption is rebuilt."""
        labels = self.labels_from_caption(prompt)
        if key not in labels:
            raise InputError(f"the caption {prompt!r} does not name {key}")
        self.check(key, value)
        shapes = list(dict.fromkeys(self._w.split_key(k)[0] for k in labels if "." in k))
        for template in range(self.n_templates):
            for order in (shapes, shapes[::-1]):
                try:
                    same = self._w.caption(labels, template=template, order=order) == prompt
                except ValueError:  # a caption naming only one object's shape, say: not this grammar's
                    same = False
                if same:
                    return self._w.caption({**labels, key: value}, template=template, order=order)
        raise InputError(f"the caption {prompt!r} is not one of the world's templates: cannot rebuild it with "
                         f"{key} = {value}")

    def captions(self, n=8, seed=0):
        return self._w.captions(n, seed)

    def vocabulary(self):
        return self._w.vocabulary()


WORLDS: dict[str, type[World]] = {"shapes": ShapesWorld, "pairs": PairsWorld}
_INSTANCES: dict[str, World] = {}


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise InputError(f"unknown world {name!r}; known: {', '.join(WORLDS)}")
    if name not in _INSTANCES:
        _INSTANCES[name] = WORLDS[name]()
    return _INSTANCES[name]


def world_of_scene(obj) -> World | None:
    """The world a scene object belongs to (None if it is no world's scene)."""
    for name in WORLDS:
        w = get_world(name)
        if w.is_scene(obj):
            return w
    return None


def world_of(pipe) -> World | None:
    """The embedded world of a pipeline (from its `ModelSpec`), or None for other models."""
    name = spec(pipe).world
    return None if name is None else get_world(name)


def require_world(pipe, why: str) -> World:
    """The pipeline's embedded world; `InputError` with ``why`` (what needs it, and how to get one) otherwise."""
    world = world_of(pipe)
    if world is None:
        raise InputError(why)
    return world
