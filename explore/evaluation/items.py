"""Editing benchmark items: (source image, source prompt, attribute, v- -> v+), generated or from a file.

Embedded-world items are generated (`world_benchmark`; `shapes_benchmark` for ShapesWorld): clean
renders with their full caption, exact labels and the mask of the edited object, every attribute
in turn and its ordered value pairs sampled evenly. Real-image benchmarks are
JSONL files, one item per line::

    {"id": "cat-1", "image": "images/cat.png", "prompt": "a photo of a black cat", "attribute": "color",
     "source": "black", "target": "white", "mask": "masks/cat.png"}

(``id``, ``mask`` and ``target_prompt`` -- the prompt with the edit made, where swapping the word is
ambiguous -- optional; paths relative to the file).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import CorruptFileError, InputError
from ..images import to_array
from ..io import atomic_write_text, save_image
from ..worlds import World, get_world


@dataclasses.dataclass
class BenchItem:
    """One edit to make and score."""

    id: str
    image: Any  # (H, W, 3) uint8 array or a path
    prompt: str
    attribute: str
    source: str
    target: str
    labels: dict[str, str] | None = None  # exact factor labels (embedded worlds)
    mask: Any = None  # (H, W) bool array of the edited object, path or None
    seed: int = 0
    target_prompt: str | None = None  # the prompt with the edit made (embedded worlds: the world's own caption)

    def edited_prompt(self) -> str:
        """The prompt with the edit made: ``target_prompt``, else ``source`` swapped for ``target`` as a word.

        A two-object caption may name a value twice ("a small red circle ... and a small blue
        square"): swapping the word would edit both objects, so embedded worlds set ``target_prompt``.
        """
        if self.target_prompt is not None:
            return self.target_prompt
        from ..editing.directions import swap_word

        return swap_word(self.prompt, self.source, self.target)[1]

    def load_image(self) -> np.ndarray:
        """The source as ``(H, W, 3)`` uint8."""
        if isinstance(self.image, np.ndarray) and self.image.dtype == np.uint8:
            return self.image
        return to_array(self.image, "uint8", f"benchmark item {self.id}")

    def load_mask(self) -> np.ndarray | None:
        if self.mask is None or isinstance(self.mask, np.ndarray):
            return self.mask
        with Image.open(self.mask) as m:
            return np.asarray(m.convert("L")) > 127


def world_benchmark(world: World | str, n: int, seed: int = 0, attributes: Sequence[str] | None = None,
                    size: int | None = None) -> list[BenchItem]:
    """``n`` edit items of an embedded world: attributes in turn, each attribute's ordered value pairs evenly.

    Item ``i`` is fully determined by ``(seed, i)``: any prefix of a larger benchmark is the
    smaller benchmark, so runs of different ``n`` share their first items. ``attributes``: factor
    keys (default `World.editable`).
    """
    world = get_world(world) if isinstance(world, str) else world
    attributes = list(attributes or world.editable())
    for a in attributes:
        world.values(a)  # raises for an unknown key, listing the known ones
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    size = size or world.resolution
    pairs = {}
    for a in attributes:
        p = [(x, y) for x in world.values(a) for y in world.values(a) if x != y]
        random.Random(f"{seed}-{a}").shuffle(p)
        pairs[a] = p
    prefix = "shapes" if world.name == "shapes" else world.name
    items = []
    for i in range(n):
        a = attributes[i % len(attributes)]
        j = i // len(attributes)
        v_minus, v_plus = pairs[a][j % len(pairs[a])]
        rng = random.Random(f"{seed}-item-{i}")
        scene = world.source_scene(rng, a, v_minus, v_plus)
        prompt = world.caption(scene, rng=rng)
        items.append(BenchItem(
            id=f"{prefix}-{seed}-{i:05d}", image=world.render(scene, size), prompt=prompt,
            attribute=a, source=v_minus, target=v_plus, labels=world.labels(scene),
            mask=world.mask(scene, size, a), seed=seed * 100_003 + i,
            target_prompt=world.edited_caption(prompt, a, v_plus),
        ))
    return items


def shapes_benchmark(n: int, seed: int = 0, attributes: Sequence[str] | None = None,
                     size: int = 64) -> list[BenchItem]:
    """``n`` ShapesWorld edit items (`world_benchmark` of ShapesWorld)."""
    return world_benchmark("shapes", n, seed, attributes, size)


def load_jsonl(path: str | Path) -> list[BenchItem]:
    """Read a real-image benchmark file (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no benchmark file at {path}")
    items = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorruptFileError(f"{path}:{k} is not valid JSON ({e.msg})") from e
        missing = {"image", "prompt", "attribute", "source", "target"} - set(rec)
        if missing:
            raise InputError(f"{path}:{k} misses {', '.join(sorted(missing))}")
        img = (path.parent / rec["image"]).resolve()
        if not img.is_file():
            raise InputError(f"{path}:{k}: no image at {img}")
        mask = rec.get("mask")
        items.append(BenchItem(
            id=str(rec.get("id", f"{path.stem}-{k}")), image=img, prompt=rec["prompt"], attribute=rec["attribute"],
            source=rec["source"], target=rec["target"], labels=rec.get("labels"),
            mask=(path.parent / mask).resolve() if mask else None, seed=int(rec.get("seed", k)),
            target_prompt=rec.get("target_prompt"),
        ))
    return items


def write_example_jsonl(folder: str | Path, n: int = 6, seed: int = 0) -> Path:
    """A small real-image-format benchmark made of ShapesWorld renders (images, masks, items.jsonl)."""
    folder = Path(folder)
    lines = []
    for it in shapes_benchmark(n, seed):
        save_image(folder / "images" / f"{it.id}.png", Image.fromarray(it.image))
        save_image(folder / "masks" / f"{it.id}.png", Image.fromarray((it.mask * 255).astype(np.uint8)))
        lines.append(json.dumps({"id": it.id, "image": f"images/{it.id}.png", "prompt": it.prompt,
                                 "attribute": it.attribute, "source": it.source, "target": it.target,
                                 "mask": f"masks/{it.id}.png", "labels": it.labels, "seed": it.seed}))
    return atomic_write_text(folder / "items.jsonl", "\n".join(lines) + "\n")
