"""Analytic readers: recover every ShapesWorld factor from pixels, with a confidence.

The readers know the world's geometry (world.py) and measure it directly: background from the
border, the object as the pixels that differ from it, colour from the object's median pixel,
shape by matching the object's coverage map against the world's own render of each shape at the
measured centroid and area (both blurred by one pixel, so the softened corners of a decoded or
generated small object do not read as a circle), size from its extent, position from its
bounding-box centre. Each factor also gets a probability for every
value (a Gaussian or logistic likelihood of the measurement, normalised), which the metrics use
as the scorer's "probability that the factor equals v+".
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage
from scipy.ndimage import gaussian_filter

from ..images import to_array
from .world import BACKGROUNDS, COLORS, FACTOR_KEYS, FACTORS, HPOS_CENTER, SIZE_RADIUS, VPOS_CENTER, Scene, coverage

_AREA = {"circle": np.pi, "square": 1.8**2, "triangle": 2 * 1.05**2}  # area / radius^2 (world.py)
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 0.35}  # centroid below the centre, / radius
_EXTENT = {"circle": 2.0, "square": 1.8, "triangle": 2.1}  # bounding-box side / radius (world.py)
_FG_THRESHOLD = 60.0  # max channel difference from the background that makes a pixel "object"
_COLOR_SIGMA = 35.0
_SHAPE_BLUR = 1.0  # pixels, applied to the coverage map and every template alike
_SHAPE_TEMP = 0.02  # template mismatch -> probability (softmax temperature)
_POS_SIGMA = 0.06
_SIZE_SCALE = 0.01


class Reading(dict):
    """``factor -> value`` (``None`` where no object was found), plus ``confidence`` (factor -> p of the
    chosen value) and ``probs`` (factor -> {value: p}) and the object ``mask`` that was measured."""

    def __init__(self, labels: dict, probs: dict, mask: np.ndarray):
        super().__init__(labels)
        self.probs = probs
        self.confidence = {k: (probs[k][v] if v is not None else 0.0) for k, v in labels.items()}
        self.mask = mask

    @property
    def found(self) -> bool:
        return self["shape"] is not None


def _softmax_neg(d2: np.ndarray) -> np.ndarray:
    d2 = d2 - d2.min()
    w = np.exp(-d2)
    return w / w.sum()


def _probs(values: Iterable[str], d2: np.ndarray) -> dict[str, float]:
    return dict(zip(values, map(float, _softmax_neg(d2))))


def read(image) -> Reading:
    """Read every factor of one ShapesWorld image (any resolution)."""
    img = to_array(image, "uint8").astype(np.float32)
    h, w, _ = img.shape
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg_rgb = np.median(border, axis=0)
    bg_names = FACTORS["background"]
    bg_d2 = np.array([np.sum((bg_rgb - BACKGROUNDS[n]) ** 2) for n in bg_names]) / (2 * _COLOR_SIGMA**2)
    probs: dict[str, dict[str, float]] = {"background": _probs(bg_names, bg_d2)}
    background = bg_names[int(np.argmin(bg_d2))]

    diff = np.abs(img - bg_rgb).max(axis=-1)
    fg = diff > _FG_THRESHOLD
    labels: dict[str, str | None] = {k: None for k in FACTOR_KEYS}
    labels["background"] = background
    if fg.sum() < 4:
        for k in FACTOR_KEYS:
            if k != "background":
                probs[k] = {v: 1.0 / len(FACTORS[k]) for v in FACTORS[k]}
        return Reading(labels, probs, fg)

    # Keep the largest blob's bounding box robustly: use pixel quantiles, not min/max, so a stray
    # speck elsewhere in a generated image does not stretch the box.
    ys, xs = np.nonzero(fg)
    lo_y, hi_y = np.quantile(ys, [0.005, 0.995])
    lo_x, hi_x = np.quantile(xs, [0.005, 0.995])
    bw = (hi_x - lo_x + 1) / w
    bh = (hi_y - lo_y + 1) / h
    cx = (lo_x + hi_x + 1) / 2 / w
    cy = (lo_y + hi_y + 1) / 2 / h

    # Object colour from its interior (pixels nearly as far from the background as the farthest).
    interior = fg & (diff >= 0.85 * diff[fg].max())
    obj_rgb = np.median(img[interior], axis=0)
    color_names = FACTORS["color"]
    col_d2 = np.array([np.sum((obj_rgb - COLORS[n]) ** 2) for n in color_names]) / (2 * _COLOR_SIGMA**2)
    probs["color"] = _probs(color_names, col_d2)

    # Coverage of each pixel: where it lies between background and object colour (anti-aliased
    # edges count partially). Extents are the sums of the row/column coverage maxima, which are
    # exact for the square and the triangle's base, and area is the coverage sum; all inside the
    # (slightly grown) robust bounding box.
    axis = obj_rgb - bg_rgb
    cover = np.clip(((img - bg_rgb) @ axis) / max(float(axis @ axis), 1.0), 0.0, 1.0)
    y0, y1 = max(int(lo_y) - 1, 0), min(int(hi_y) + 2, h)
    x0, x1 = max(int(lo_x) - 1, 0), min(int(hi_x) + 2, w)
    box = cover[y0:y1, x0:x1]
    bw = float(box.max(axis=0).sum()) / w
    bh = float(box.max(axis=1).sum()) / h
    shape_names = FACTORS["shape"]
    mismatch = _shape_mismatch(cover * _largest_blob(fg, cover))
    probs["shape"] = _probs(shape_names, np.array([mismatch[s] for s in shape_names]) / _SHAPE_TEMP)
    shape = shape_names[int(np.argmin([mismatch[s] for s in shape_names]))]

    radius = max(bw, bh) / _EXTENT[shape]
    threshold = float(np.sqrt(SIZE_RADIUS["small"] * SIZE_RADIUS["large"]))
    p_large = float(1.0 / (1.0 + np.exp(-(radius - threshold) / _SIZE_SCALE)))
    probs["size"] = {"small": 1.0 - p_large, "large": p_large}

    hp = FACTORS["hpos"]
    probs["hpos"] = _probs(hp, np.array([(cx - HPOS_CENTER[v]) ** 2 for v in hp]) / (2 * _POS_SIGMA**2))
    vp = FACTORS["vpos"]
    probs["vpos"] = _probs(vp, np.array([(cy - VPOS_CENTER[v]) ** 2 for v in vp]) / (2 * _POS_SIGMA**2))

    for k in FACTOR_KEYS:
        labels[k] = max(probs[k], key=probs[k].get)
    return Reading(labels, probs, fg)


def _largest_blob(fg: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """1 on the largest connected object blob, grown by 2 px (its soft edge), 0 elsewhere."""
    lab, n = ndimage.label(fg)
    if n <= 1:
        keep = fg
    else:
        sizes = ndimage.sum(cover, lab, index=np.arange(1, n + 1))
        keep = lab == (1 + int(np.argmax(sizes)))
    return ndimage.binary_dilation(keep, iterations=2).astype(np.float32)


def _shape_mismatch(cover: np.ndarray) -> dict[str, float]:
    """Blurred squared difference between ``cover`` and each shape rendered at its centroid and area."""
    h, w = cover.shape
    total = float(cover.sum())
    area = total / (h * w)
    ys, xs = np.mgrid[0:h, 0:w]
    mx = float((cover * (xs + 0.5)).sum()) / total / w
    my = float((cover * (ys + 0.5)).sum()) / total / h
    obs = gaussian_filter(cover, _SHAPE_BLUR)
    out = {}
    for s in FACTORS["shape"]:
        r = float(np.sqrt(area / _AREA[s]))
        scene = Scene(s, "red", "small", "center", "middle", "black", dx=mx - HPOS_CENTER["center"],
                      dy=my - _CENTROID_DY[s] * r - VPOS_CENTER["middle"], scale=r / SIZE_RADIUS["small"])
        template = gaussian_filter(coverage(scene, max(h, w))[:h, :w], _SHAPE_BLUR)
        out[s] = float(((template - obs) ** 2).sum()) / max(total, 1e-6)
    return out
