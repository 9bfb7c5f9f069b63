"""ShapesWorld Pairs: two objects on a plain background, each with its own colour, size and position.

The second embedded world, for what a one-object world cannot show: attribute binding ("the
circle is red, the square is blue") and leakage (an edit of one object that changes the other).
Each object is a ShapesWorld object (same shapes, colours, sizes, 3x3 positions and jitter, drawn
by `explore.shapes.world.coverage`); the two have different shapes and different colours, and
sit in cells two apart in the 3x3 grid (Chebyshev distance 2: left vs right column, or top vs
bottom row), so even two large objects never touch and each is one connected blob.

Factor keys (one object is named by its shape): ``{shape}.color``, ``{shape}.size``,
``{shape}.hpos``, ``{shape}.vpos`` for the two shapes present, and ``background``. E.g. a red
circle at the top left and a blue square at the bottom right on gray:
``{"background": "gray", "circle.color": "red", "circle.size": ..., "square.color": "blue", ...}``.
"""

from __future__ import annotations

import dataclasses
import itertools
import random as _random
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import InputError
from ..shapes.world import BACKGROUNDS, Scene, caption_words, check_vocabulary, coverage, sample_scene
from ..shapes.world import FACTORS as SHAPES_FACTORS

SHAPES = SHAPES_FACTORS["shape"]
OBJECT_FACTORS: tuple[str, ...] = ("color", "size", "hpos", "vpos")  # per object (shape names the object)
CELLS: tuple[tuple[str, str], ...] = tuple(
    (v, h) for v in SHAPES_FACTORS["vpos"] for h in SHAPES_FACTORS["hpos"]
)
_INDEX = {"top": 0, "middle": 1, "bottom": 2, "left": 0, "center": 1, "right": 2}


def _far(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Two cells (vpos, hpos) two apart in the grid (Chebyshev distance 2): objects never overlap."""
    return max(abs(_INDEX[a[0]] - _INDEX[b[0]]), abs(_INDEX[a[1]] - _INDEX[b[1]])) == 2


CELL_PAIRS: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = tuple(
    (a, b) for a, b in itertools.permutations(CELLS, 2) if _far(a, b)
)


def factor_key(shape: str, factor: str) -> str:
    return f"{shape}.{factor}"


def split_key(key: str) -> tuple[str | None, str]:
    """``"circle.color"`` -> ``("circle", "color")``; ``"background"`` -> ``(None, "background")``."""
    if "." in key:
        shape, factor = key.split(".", 1)
        return shape, factor
    return None, key


def values_of(key: str) -> tuple[str, ...]:
    """The values a factor key can take (``circle.color`` -> the six colours)."""
    _, factor = split_key(key)
    return SHAPES_FACTORS[factor]


@dataclasses.dataclass(frozen=True)
class PairScene:
    """Two objects (`explore.shapes.world.Scene` s, their ``background`` field ignored) and a background."""

    objects: tuple[Scene, Scene]
    background: str

    def __post_init__(self):
        a, b = self.objects
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; known: {', '.join(BACKGROUNDS)}")
        if a.shape == b.shape:
            raise ValueError(f"the two objects must have different shapes, both are {a.shape}")
        if a.color == b.color:
            raise ValueError(f"the two objects must have different colours, both are {a.color}")
        if not _far((a.vpos, a.hpos), (b.vpos, b.hpos)):
            raise ValueError(f"cells {a.vpos} {a.hpos} and {b.vpos} {b.hpos} are too close (need two cells apart)")

    @property
    def labels(self) -> dict[str, str]:
        out = {"background": self.background}
        for o in self.objects:
            for f in OBJECT_FACTORS:
                out[factor_key(o.shape, f)] = getattr(o, f)
        return out

    def other(self, shape: str) -> Scene:
        return next(o for o in self.objects if o.shape != shape)

    def replace(self, key: str, value: str) -> PairScene:
        """The scene with one factor key changed (``"circle.color"``, ``"background"``)."""
        shape, factor = split_key(key)
        if shape is None:
            return dataclasses.replace(self, background=value)
        objs = tuple(o.replace(**{factor: value}) if o.shape == shape else o for o in self.objects)
        return dataclasses.replace(self, objects=objs)

    @property
    def keys(self) -> list[str]:
        return list(self.labels)


def sample_pair(rng: _random.Random | int | None = None, jitter: bool = True, **fixed: str) -> PairScene:
    """A random two-object scene; ``fixed`` pins factor keys, e.g. ``sample_pair(0, **{"circle.color": "red"})``.

    Pinning a key of a shape makes that shape one of the two objects. The other object's values
    are drawn so the scene stays valid (different shape and colour, cells two apart).
    """
    rng = rng if isinstance(rng, _random.Random) else _random.Random(rng)
    pinned_shapes = list(dict.fromkeys(split_key(k)[0] for k in fixed if split_key(k)[0] is not None))
    for k, v in fixed.items():
        shape, factor = split_key(k)
        if shape is not None and shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r} in {k!r}; known: {', '.join(SHAPES)}")
        if factor not in SHAPES_FACTORS or factor == "shape" or (shape is None) != (factor == "background"):
            raise ValueError(f"unknown factor key {k!r}; keys look like 'circle.color' or 'background'")
        if v not in SHAPES_FACTORS[factor]:
            raise ValueError(f"{v!r} is not a {factor}; known: {', '.join(SHAPES_FACTORS[factor])}")
    if len(pinned_shapes) > 2:
        raise ValueError(f"a pair scene has two objects, got keys for {', '.join(pinned_shapes)}")
    shapes = pinned_shapes + [s for s in rng.sample(SHAPES, len(SHAPES)) if s not in pinned_shapes]
    shapes = shapes[:2]
    want = {s: {split_key(k)[1]: v for k, v in fixed.items() if split_key(k)[0] == s} for s in shapes}
    for _ in range(1000):
        colors = [want[s].get("color") or rng.choice(SHAPES_FACTORS["color"]) for s in shapes]
        cells = [(want[s].get("vpos") or rng.choice(SHAPES_FACTORS["vpos"]),
                  want[s].get("hpos") or rng.choice(SHAPES_FACTORS["hpos"])) for s in shapes]
        if colors[0] != colors[1] and _far(cells[0], cells[1]):
            break
    else:
        raise ValueError(f"no valid scene has {fixed}: the two objects need different colours and cells two apart")
    background = fixed.get("background") or rng.choice(SHAPES_FACTORS["background"])
    objs = []
    for s, col, (vp, hp) in zip(shapes, colors, cells):
        size = want[s].get("size") or rng.choice(SHAPES_FACTORS["size"])
        o = sample_scene(rng, jitter=jitter, shape=s, color=col, size=size, hpos=hp, vpos=vp, background=background)
        objs.append(o)
    return PairScene((objs[0], objs[1]), background)


def render(scene: PairScene, size: int = 64) -> np.ndarray:
    """``(size, size, 3)`` uint8 image: both objects composited over the background (anti-aliased)."""
    img = np.broadcast_to(np.asarray(BACKGROUNDS[scene.background], np.float32), (size, size, 3)).copy()
    for o in scene.objects:
        cov = coverage(o, size)[..., None]
        img = cov * np.asarray(o.rgb, np.float32) + (1.0 - cov) * img
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def masks(scene: PairScene, size: int = 64) -> dict[str, np.ndarray]:
    """Exact object masks by shape: ``{"circle": (size, size) bool, "square": ...}`` (coverage >= 0.5)."""
    return {o.shape: coverage(o, size) >= 0.5 for o in scene.objects}


def mask(scene: PairScene, size: int = 64, shape: str | None = None) -> np.ndarray:
    """The mask of one object (``shape``) or of both (the union, ``shape=None``)."""
    m = masks(scene, size)
    if shape is not None:
        if shape not in m:
            raise KeyError(f"no {shape} in this scene")
        return m[shape]
    return np.logical_or.reduce(list(m.values()))


# ---------------------------------------------------------------------------------------------
# Captions: each object's words stay next to its noun (bound), objects in either order
# ---------------------------------------------------------------------------------------------


def _where(o: dict) -> list[str]:
    return [w for w in (o["vpos"], o["hpos"]) if w]


def _np0(o):  # a small red circle at the top left
    out = ["a", *[w for w in (o["size"], o["color"], o["shape"]) if w]]
    return out + (["at", "the", *_where(o)] if _where(o) else [])


def _np1(o):  # a red circle , small , top left
    out = ["a", *[w for w in (o["color"], o["shape"]) if w]]
    if o["size"]:
        out += [",", o["size"]]
    return out + ([",", *_where(o)] if _where(o) else [])


def _np2(o):  # a small circle in red at the top left
    out = ["a", *[w for w in (o["size"], o["shape"]) if w]]
    if o["color"]:
        out += ["in", o["color"]]
    return out + (["at", "the", *_where(o)] if _where(o) else [])


def _t0(a, b, bg):  # a small red circle at the top left and a blue square at the bottom right on a gray background
    out = [*_np0(a), "and", *_np0(b)]
    return out + (["on", "a", bg, "background"] if bg else [])


def _t1(a, b, bg):  # a gray background with a red circle , small , top left , and a blue square , large , bottom right
    out = ["a", bg, "background", "with"] if bg else []
    return out + [*_np1(a), ",", "and", *_np1(b)]


def _t2(a, b, bg):  # top left : a small red circle ; bottom right : a large blue square ; gray background
    parts = []
    for o in (a, b):
        w = _where(o)
        parts.append(([*w, ":"] if w else []) + ["a", *[x for x in (o["size"], o["color"], o["shape"]) if x]])
    if bg:
        parts.append([bg, "background"])
    return [w for i, part in enumerate(parts) for w in ([";"] if i else []) + part]


def _t3(a, b, bg):  # on a gray background , a small circle in red at the top left and a square in blue ...
    out = ["on", "a", bg, "background", ","] if bg else []
    return out + [*_np2(a), "and", *_np2(b)]


TEMPLATES = (_t0, _t1, _t2, _t3)


def caption(scene: PairScene | dict[str, str], template: int | None = None, omit: Iterable[str] = (),
            order: Sequence[str] | None = None, rng: _random.Random | int | None = None) -> str:
    """A caption naming both objects with their attributes bound to their nouns.

    ``omit``: factor keys to leave out (``"circle.size"``, ``"background"``); shapes are always
    named (they identify the objects). ``order``: the two shapes in caption order (default: a
    random order drawn from ``rng``).
    """
    labels = scene.labels if isinstance(scene, PairScene) else dict(scene)
    omit = set(omit)
    present = list(dict.fromkeys(split_key(k)[0] for k in labels if split_key(k)[0] is not None))
    if len(present) != 2:
        raise ValueError(f"a pair caption needs two objects, got {present}")
    unknown = omit - set(labels)
    if unknown:
        raise ValueError(f"cannot omit {sorted(unknown)}: not keys of this scene ({', '.join(labels)})")
    rng = rng if isinstance(rng, _random.Random) else _random.Random(rng)
    if template is None:
        template = rng.randrange(len(TEMPLATES))
    if order is None:
        order = present if rng.random() < 0.5 else present[::-1]
    if sorted(order) != sorted(present):
        raise ValueError(f"order must list the scene's two shapes {present}, got {list(order)}")

    def obj(shape):
        d = {"shape": shape}
        for f in OBJECT_FACTORS:
            k = factor_key(shape, f)
            d[f] = None if k in omit else labels.get(k)
        return d

    bg = None if "background" in omit else labels.get("background")
    return " ".join(TEMPLATES[template](obj(order[0]), obj(order[1]), bg))


def random_caption(scene: PairScene, rng: _random.Random, p_omit: float = 0.1) -> str:
    """Training captions: random template and object order, each factor key left out with ``p_omit``."""
    omit = [k for k in scene.labels if rng.random() < p_omit]
    return caption(scene, rng=rng, omit=omit)


def vocabulary() -> list[str]:
    """Every word the pair caption grammar can produce (sorted, stable)."""
    words: set[str] = set()
    for values in SHAPES_FACTORS.values():
        words.update(values)
    words.update({"at", "the", "in", "on", "a", "background", "with", "and", ",", ":", ";"})
    return sorted(words)


def dataset(n: int, seed: int = 0, size: int = 64, jitter: bool = True):
    """``n`` seeded scenes with their images ``(n, size, size, 3)`` uint8."""
    rng = _random.Random(seed)
    scenes = [sample_pair(rng, jitter=jitter) for _ in range(n)]
    images = np.stack([render(s, size) for s in scenes]) if n else np.zeros((0, size, size, 3), np.uint8)
    return scenes, images


def captions(n: int = 8, seed: int = 0) -> list[str]:
    """``n`` different full captions of random pair scenes, in every template in turn."""
    rng = _random.Random(seed)
    out: list[str] = []
    tries = 0
    while len(out) < n and tries < 50 * max(n, 1):
        cap = caption(sample_pair(rng, jitter=False), template=len(out) % len(TEMPLATES), rng=rng)
        if cap not in out:
            out.append(cap)
        tries += 1
    return out


def labels_from_caption(prompt: str) -> dict[str, str]:
    """The factor keys a pair caption names, e.g. ``{"circle.color": "red", ..., "background": "gray"}``.

    The caption is cut at ``and`` / ``;`` into one phrase per object (the background's ``X
    background`` words taken out first); each phrase must name exactly one shape. Raises
    `InputError` for unknown words, a phrase without (or with two) shapes, or a value named twice.
    """
    words = caption_words(prompt)
    check_vocabulary(words, vocabulary(), "ShapesWorld Pairs",
                     "a red circle at the top left and a small blue square at the bottom right on a gray background")
    labels: dict[str, str] = {}
    rest = []
    for i, w in enumerate(words):
        if w == "background":
            if i == 0 or words[i - 1] not in SHAPES_FACTORS["background"]:
                raise InputError("'background' must follow its colour, e.g. 'on a gray background'")
            if "background" in labels:
                raise InputError("the caption names the background twice")
            labels["background"] = words[i - 1]
            rest = rest[:-1]
        else:
            rest.append(w)
    phrases, cur = [], []
    for w in rest:
        if w in ("and", ";"):
            phrases.append(cur)
            cur = []
        else:
            cur.append(w)
    phrases.append(cur)
    phrases = [p for p in phrases if any(w in SHAPES for w in p)] + [p for p in phrases if
                                                                   not any(w in SHAPES for w in p)]
    for p in phrases:
        shapes = [w for w in p if w in SHAPES]
        named = [w for w in p if any(w in SHAPES_FACTORS[f] for f in OBJECT_FACTORS)]
        if not shapes:
            if named:
                raise InputError(f"the words {' '.join(named)!r} belong to no shape; name the object, e.g. 'a red "
                                 "circle'")
            continue
        if len(shapes) > 1:
            raise InputError(f"one phrase names {' and '.join(shapes)}; join two objects with 'and'")
        s = shapes[0]
        if any(split_key(k)[0] == s for k in labels):
            raise InputError(f"the caption names the {s} twice; a pair scene has two different shapes")
        for f in OBJECT_FACTORS:
            hits = [w for w in p if w in SHAPES_FACTORS[f]]
            if len(hits) > 1:
                raise InputError(f"the {s} is given {len(hits)} {f} values ({', '.join(hits)}); name one")
            if hits:
                labels[factor_key(s, f)] = hits[0]
    if sum(1 for k in labels if k.endswith(".color")) == 2 and len({v for k, v in labels.items()
                                                                    if k.endswith(".color")}) == 1:
        raise InputError("the two objects have the same colour; pair scenes use two different colours")
    return labels
