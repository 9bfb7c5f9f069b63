"""Readers for ShapesWorld Pairs: find the two objects and read each one's factors from pixels.

The background comes from the image border; the object pixels are those that differ from it; the
two largest connected blobs are the objects. Each blob is read by the one-object ShapesWorld
reader on a copy of the image in which everything else is painted background, so shape, colour,
size and position are measured exactly as in ShapesWorld. A `PairReading` keys each object's
factors by the shape it reads as (``circle.color``, ...); when both blobs read as the same shape
the keys would collide, so those keys read ``None`` (the scene is wrong either way).

`score` compares a reading with a scene's labels object by object — objects are matched by
shape, and by position where shapes do not identify them — which is what the model's quality
(per-object accuracy, binding, colour swaps) and the edit benchmark's success and retention use.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from ..images import to_array
from ..shapes.readers import Reading
from ..shapes.readers import read as read_one
from ..shapes.world import BACKGROUNDS, HPOS_CENTER, VPOS_CENTER
from ..shapes.world import FACTORS as SHAPES_FACTORS
from .world import OBJECT_FACTORS, factor_key, split_key

_FG_THRESHOLD = 60.0  # as the one-object reader
_MIN_BLOB = 4  # pixels


class PairReading(dict):
    """``factor key -> value`` (``"background"``, ``"circle.color"``, ...) plus the per-object readings.

    ``objects``: one `explore.shapes.readers.Reading` per blob found (largest first), each with a
    ``centroid`` (x, y) in units of the side; ``masks``: each blob's pixels; ``mask``: their union.
    """

    def __init__(self, labels: dict, objects: list[Reading], masks: list[np.ndarray], background: str):
        super().__init__(labels)
        self.objects = objects
        self.masks = masks
        self.background = background
        self.mask = np.logical_or.reduce(masks) if masks else None

    @property
    def shapes(self) -> list[str | None]:
        return [o["shape"] for o in self.objects]

    def object_mask(self, shape: str) -> np.ndarray | None:
        """The pixels of the object read as ``shape`` (None if none or ambiguous)."""
        hits = [m for o, m in zip(self.objects, self.masks) if o["shape"] == shape]
        return hits[0] if len(hits) == 1 else None


def _blobs(fg: np.ndarray) -> list[np.ndarray]:
    lab, n = ndimage.label(fg, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    sizes = ndimage.sum(fg, lab, index=np.arange(1, n + 1))
    order = np.argsort(-sizes)
    return [lab == (1 + int(i)) for i in order if sizes[i] >= _MIN_BLOB]


def read(image) -> PairReading:
    """Read both objects of a Pairs image (any resolution)."""
    img = to_array(image, "uint8")
    f = img.astype(np.float32)
    border = np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]])
    bg_rgb = np.median(border, axis=0)
    names = SHAPES_FACTORS["background"]
    background = names[int(np.argmin([np.sum((bg_rgb - BACKGROUNDS[n]) ** 2) for n in names]))]
    fg = np.abs(f - bg_rgb).max(axis=-1) > _FG_THRESHOLD
    blobs = _blobs(fg)[:2]
    objects, masks = [], []
    h, w = fg.shape
    for i, blob in enumerate(blobs):
        # paint every other object pixel (grown by its soft edge) as background, then read this blob
        others = np.zeros_like(fg)
        for j, b in enumerate(blobs):
            if j != i:
                others |= b
        others = ndimage.binary_dilation(others, iterations=2) & ~ndimage.binary_dilation(blob, iterations=1)
        solo = img.copy()
        solo[others] = np.rint(bg_rgb).astype(np.uint8)
        r = read_one(solo)
        ys, xs = np.nonzero(blob)
        r.centroid = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
        objects.append(r)
        masks.append(blob)
    labels: dict[str, str | None] = {"background": background}
    shapes = [o["shape"] for o in objects]
    for o in objects:
        s = o["shape"]
        if s is None:
            continue
        for k in OBJECT_FACTORS:
            labels[factor_key(s, k)] = o[k] if shapes.count(s) == 1 else None
    return PairReading(labels, objects, masks, background)


def _match(reading: PairReading, labels: Mapping[str, str]) -> dict[str, Reading | None]:
    """Label shape -> the reading's object that stands for it: same shape if unique, else the nearest."""
    want = list(dict.fromkeys(split_key(k)[0] for k in labels if split_key(k)[0] is not None))
    out: dict[str, Reading | None] = {}
    free = list(range(len(reading.objects)))
    for s in want:  # first the unambiguous shape matches
        hits = [i for i in free if reading.objects[i]["shape"] == s]
        if len(hits) == 1 and [o["shape"] for o in reading.objects].count(s) == 1:
            out[s] = reading.objects[hits[0]]
            free.remove(hits[0])
    for s in want:  # then by distance to where the labels put it
        if s in out:
            continue
        if not free:
            out[s] = None
            continue
        cx = HPOS_CENTER[labels[factor_key(s, "hpos")]]
        cy = VPOS_CENTER[labels[factor_key(s, "vpos")]]
        i = min(free, key=lambda j: (reading.objects[j].centroid[0] - cx) ** 2 + (reading.objects[j].centroid[1] - cy)
                ** 2)
        out[s] = reading.objects[i]
        free.remove(i)
    return out


def score(reading: PairReading, labels: Mapping[str, str]) -> dict:
    """Compare a reading with a scene's labels, object by object.

    Returns ``correct`` (factor key -> bool, shape included as ``{shape}.shape``), ``objects``
    (shape -> every factor of that object right), ``binding`` (both objects and the background
    right), ``swap`` (shape -> the object shows the *other* object's colour), and ``n_objects``
    (blobs found).
    """
    matched = _match(reading, labels)
    shapes = list(matched)
    correct: dict[str, bool] = {"background": reading.background == labels.get("background", reading.background)}
    objects, swap = {}, {}
    for s in shapes:
        o = matched[s]
        ok = {factor_key(s, "shape"): o is not None and o["shape"] == s}
        for k in OBJECT_FACTORS:
            key = factor_key(s, k)
            if key in labels:
                ok[key] = o is not None and o[k] == labels[key]
        correct.update(ok)
        objects[s] = all(ok.values())
        other = [t for t in shapes if t != s]
        other_color = labels.get(factor_key(other[0], "color")) if other else None
        swap[s] = bool(o is not None and other_color is not None and o["color"] == other_color)
    return {"correct": correct, "objects": objects, "binding": all(objects.values()) and correct["background"],
            "swap": swap, "n_objects": len(reading.objects)}
