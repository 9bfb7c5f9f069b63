"""ShapesWorld: a procedural world of one object on a plain background, with exact ground truth.

Every image is drawn from a `Scene` (factor labels plus continuous jitter). Rendering is
supersampled (anti-aliased edges); the object mask is exact (pixel coverage >= 0.5).

Factor keys (DESIGN §0): ``shape``, ``color``, ``size``, ``hpos``, ``vpos``, ``background``.
"""

from __future__ import annotations

import dataclasses
import random as _random
import re
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import InputError

FACTORS: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle"),
    "color": ("red", "green", "blue", "yellow", "purple", "cyan"),
    "size": ("small", "large"),
    "hpos": ("left", "center", "right"),
    "vpos": ("top", "middle", "bottom"),
    "background": ("black", "white", "gray"),
}
FACTOR_KEYS: tuple[str, ...] = tuple(FACTORS)

# sRGB in [0, 255]. Object colours are far from each other and from every background colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 210, 50),
    "purple": (150, 60, 210),
    "cyan": (40, 200, 210),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}

# Geometry in units of the image side (so any resolution works).
HPOS_CENTER = {"left": 0.23, "center": 0.5, "right": 0.77}
VPOS_CENTER = {"top": 0.23, "middle": 0.5, "bottom": 0.77}
# "radius": half the side of the object's bounding box.
SIZE_RADIUS = {"small": 0.105, "large": 0.175}
POS_JITTER = 0.03  # uniform +- in units of the side
SIZE_JITTER = 0.08  # relative, uniform +-
COLOR_JITTER = 10  # uniform +- per channel, in [0, 255]
SUPERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class Scene:
    """One ShapesWorld image: its factor labels and the continuous jitter that makes it unique."""

    shape: str
    color: str
    size: str
    hpos: str
    vpos: str
    background: str
    dx: float = 0.0  # position jitter, units of the side
    dy: float = 0.0
    scale: float = 1.0  # size jitter, relative
    rgb_jitter: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self):
        for key in FACTOR_KEYS:
            value = getattr(self, key)
            if value not in FACTORS[key]:
                raise ValueError(f"unknown {key} {value!r}; known: {', '.join(FACTORS[key])}")

    @property
    def labels(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in FACTOR_KEYS}

    def replace(self, **changes) -> Scene:
        return dataclasses.replace(self, **changes)

    @property
    def center(self) -> tuple[float, float]:
        """Object centre (x, y) in units of the side."""
        return HPOS_CENTER[self.hpos] + self.dx, VPOS_CENTER[self.vpos] + self.dy

    @property
    def radius(self) -> float:
        return SIZE_RADIUS[self.size] * self.scale

    @property
    def rgb(self) -> tuple[int, int, int]:
        base = COLORS[self.color]
        return tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(base, self.rgb_jitter))  # type: ignore[return-value]


def sample_scene(rng: _random.Random | int | None = None, jitter: bool = True, **fixed: str) -> Scene:
    """A random scene; ``fixed`` pins factors (e.g. ``color="red"``)."""
    rng = rng if isinstance(rng, _random.Random) else _random.Random(rng)
    for key in fixed:
        if key not in FACTORS:
            raise ValueError(f"unknown factor {key!r}; known: {', '.join(FACTOR_KEYS)}")
    labels = {k: fixed.get(k) or rng.choice(FACTORS[k]) for k in FACTOR_KEYS}
    if not jitter:
        return Scene(**labels)
    return Scene(
        **labels,
        dx=rng.uniform(-POS_JITTER, POS_JITTER),
        dy=rng.uniform(-POS_JITTER, POS_JITTER),
        scale=1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER),
        rgb_jitter=tuple(rng.randint(-COLOR_JITTER, COLOR_JITTER) for _ in range(3)),
    )


def coverage(scene: Scene, size: int) -> np.ndarray:
    """Fraction of each pixel covered by the object, ``(size, size)`` float32 in [0, 1]."""
    n = size * SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    x = coords[None, :]
    y = coords[:, None]
    cx, cy = scene.center
    r = scene.radius
    if scene.shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif scene.shape == "square":
        # Same area as the circle of radius r would be too small to tell apart by size; use the
        # bounding box of side 2r * 0.9 so squares and circles read as the same "size".
        h = r * 0.9
        inside = (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    else:  # triangle, apex up, base at the bottom of the bounding box
        h = r * 1.05
        top, bottom = cy - h, cy + h
        t = (y - top) / (bottom - top)  # 0 at apex, 1 at base
        inside = (t >= 0) & (t <= 1) & (np.abs(x - cx) <= t * h)
    inside = inside.astype(np.float32)
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """``(size, size, 3)`` uint8 image of the scene."""
    cov = coverage(scene, size)[..., None]
    fg = np.asarray(scene.rgb, dtype=np.float32)
    bg = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)
    img = cov * fg + (1.0 - cov) * bg
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def mask(scene: Scene, size: int = 64) -> np.ndarray:
    """Exact object mask, ``(size, size)`` bool: pixels at least half covered by the object."""
    return coverage(scene, size) >= 0.5


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------

def _noun(lab: dict) -> list[str]:
    return [w for w in (lab["size"], lab["color"], lab["shape"] or "object") if w]


def _pos(lab: dict) -> list[str]:
    return [w for w in (lab["vpos"], lab["hpos"]) if w]


def _t0(lab):  # a small red circle at the top left on a gray background
    out = ["a", *_noun(lab)]
    if _pos(lab):
        out += ["at", "the", *_pos(lab)]
    if lab["background"]:
        out += ["on", "a", lab["background"], "background"]
    return out


def _t1(lab):  # a gray background with a red circle , small , top left
    out = ["a", lab["background"], "background", "with"] if lab["background"] else []
    out += ["a", *[w for w in (lab["color"], lab["shape"] or "object") if w]]
    if lab["size"]:
        out += [",", lab["size"]]
    if _pos(lab):
        out += [",", *_pos(lab)]
    return out


def _t2(lab):  # small red circle in the top left , gray background
    out = list(_noun(lab))
    if _pos(lab):
        out += ["in", "the", *_pos(lab)]
    if lab["background"]:
        out += [",", lab["background"], "background"]
    return out


def _t3(lab):  # top left : a red circle , small , on gray
    out = [*_pos(lab), ":"] if _pos(lab) else []
    out += ["a", *[w for w in (lab["color"], lab["shape"] or "object") if w]]
    if lab["size"]:
        out += [",", lab["size"]]
    if lab["background"]:
        out += [",", "on", lab["background"]]
    return out


def _t4(lab):  # on a gray background , a small circle in red at the top left
    out = ["on", "a", lab["background"], "background", ","] if lab["background"] else []
    out += ["a", *[w for w in (lab["size"], lab["shape"] or "object") if w]]
    if lab["color"]:
        out += ["in", lab["color"]]
    if _pos(lab):
        out += ["at", "the", *_pos(lab)]
    return out


# Caption templates: several word orders. A factor that is left out drops its words; a caption
# that names no shape says "object".
TEMPLATES = (_t0, _t1, _t2, _t3, _t4)


def caption(
    labels: Scene | dict[str, str],
    template: int | None = None,
    omit: Iterable[str] = (),
    rng: _random.Random | int | None = None,
) -> str:
    """A caption of ``labels`` from template ``template`` (random if None), leaving out ``omit``."""
    labels = labels.labels if isinstance(labels, Scene) else dict(labels)
    omit = set(omit)
    unknown = omit - set(FACTOR_KEYS)
    if unknown:
        raise ValueError(f"unknown factor(s) {sorted(unknown)}; known: {', '.join(FACTOR_KEYS)}")
    rng = rng if isinstance(rng, _random.Random) else _random.Random(rng)
    if template is None:
        template = rng.randrange(len(TEMPLATES))
    kept = {k: (None if k in omit else labels.get(k)) for k in FACTOR_KEYS}
    return " ".join(TEMPLATES[template](kept))


def random_caption(scene: Scene, rng: _random.Random, p_omit: float = 0.15) -> str:
    """Training captions: a random template, each factor left out with probability ``p_omit``."""
    omit = [k for k in FACTOR_KEYS if rng.random() < p_omit]
    return caption(scene, rng=rng, omit=omit)


def vocabulary() -> list[str]:
    """Every word the caption grammar can produce (sorted, stable)."""
    words: set[str] = set()
    for values in FACTORS.values():
        words.update(values)
    words.update({"object", "at", "the", "in", "on", "a", "background", "with", ",", ":"})
    return sorted(words)


def dataset(n: int, seed: int = 0, size: int = 64, jitter: bool = True, **fixed: str):
    """``n`` seeded scenes with their images ``(n, size, size, 3)`` uint8 and masks ``(n, size, size)``."""
    rng = _random.Random(seed)
    scenes = [sample_scene(rng, jitter=jitter, **fixed) for _ in range(n)]
    images = np.stack([render(s, size) for s in scenes]) if n else np.zeros((0, size, size, 3), np.uint8)
    masks = np.stack([mask(s, size) for s in scenes]) if n else np.zeros((0, size, size), bool)
    return scenes, images, masks


def captions(n: int = 8, seed: int = 0) -> list[str]:
    """``n`` different full captions of random scenes, in every template in turn."""
    rng = _random.Random(seed)
    out: list[str] = []
    tries = 0
    while len(out) < n and tries < 50 * max(n, 1):
        s = sample_scene(rng, jitter=False)
        cap = caption(s, template=len(out) % len(TEMPLATES))
        if cap not in out:
            out.append(cap)
        tries += 1
    return out


def caption_words(prompt: str) -> list[str]:
    """The words of a caption as the grammar writes them (lower case; ``,`` and ``:`` are words)."""
    return re.findall(r"[a-z]+|[,:;]|[^\sa-z,:;]+", prompt.lower())


def check_vocabulary(words: Sequence[str], vocab: Iterable[str], world: str, example: str) -> None:
    """`InputError` naming the first words a caption uses that the world's grammar does not know."""
    vocab = set(vocab)
    unknown = list(dict.fromkeys(w for w in words if w not in vocab))
    if unknown:
        raise InputError(f"{', '.join(repr(w) for w in unknown[:4])} not in {world}'s vocabulary; captions use "
                         f"words like {example!r}")


def labels_from_caption(prompt: str) -> dict[str, str]:
    """The factor values a caption names (factors it leaves out are absent).

    Raises `InputError` for words outside the vocabulary and for a factor named twice.
    """
    words = caption_words(prompt)
    check_vocabulary(words, vocabulary(), "ShapesWorld", "a small red circle at the top left on a gray background")
    labels = {}
    for k, values in FACTORS.items():
        hits = [v for v in values if v in words]
        if len(hits) > 1:
            raise InputError(f"the caption names {len(hits)} {k} values ({', '.join(hits)}); name one")
        if hits:
            labels[k] = hits[0]
    return labels
