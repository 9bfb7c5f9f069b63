import random

import numpy as np
import pytest

from explore.shapes import FACTOR_KEYS, FACTORS, Scene, caption, dataset, mask, render, sample_scene, vocabulary
from explore.shapes.readers import read
from explore.shapes.world import BACKGROUNDS, COLORS


def test_readers_recover_every_factor_on_1000_clean_renders():
    scenes, images, _ = dataset(1000, seed=12345)
    readings = [read(im) for im in images]
    for k in FACTOR_KEYS:
        acc = np.mean([r[k] == s.labels[k] for r, s in zip(readings, scenes)])
        assert acc >= 0.99, (k, acc)
    conf = np.mean([min(r.confidence.values()) for r in readings])
    assert conf > 0.8
    assert all(abs(sum(r.probs["color"].values()) - 1) < 1e-6 for r in readings[:20])


def test_readers_fail_loudly_on_an_empty_image():
    img = np.full((64, 64, 3), 128, np.uint8)
    r = read(img)
    assert r["background"] == "gray" and r["shape"] is None and not r.found
    assert r.confidence["shape"] == 0.0


def test_every_factor_value_renders_and_colours_never_match_background():
    for bg, rgb in BACKGROUNDS.items():
        for name, c in COLORS.items():
            assert np.linalg.norm(np.subtract(c, rgb)) > 100, (name, bg)
    base = Scene("circle", "red", "large", "center", "middle", "gray")
    for k, values in FACTORS.items():
        for v in values:
            r = read(render(base.replace(**{k: v})))
            assert r[k] == v, (k, v, dict(r))


def test_masks_are_exact_and_jitter_changes_pixels():
    s = sample_scene(3)
    m = mask(s)
    img = render(s).astype(int)
    bg = np.array(BACKGROUNDS[s.background])
    assert m.sum() > 20
    assert (np.abs(img[~m] - bg).max(-1) < 128).all()  # outside the mask: background or faint edge
    assert (np.abs(img[m] - bg).max(-1) > 40).all()
    a = sample_scene(1, shape="circle", color="red")
    b = sample_scene(2, shape="circle", color="red")
    assert a.shape == b.shape == "circle" and (a.dx, a.dy) != (b.dx, b.dy)


def test_captions_use_several_word_orders_and_can_omit_factors():
    s = Scene("triangle", "blue", "small", "left", "top", "white")
    caps = {caption(s, template=i) for i in range(5)}
    assert len(caps) == 5
    assert "a small blue triangle at the top left on a white background" in caps
    for c in caps:
        for v in s.labels.values():
            assert v in c.split()
    omitted = caption(s, template=0, omit=["color", "background"])
    assert "blue" not in omitted and "white" not in omitted and "triangle" in omitted
    nothing = caption(s, template=1, omit=FACTOR_KEYS)
    assert nothing == "a object"
    words = set(vocabulary())
    rng = random.Random(0)
    for _ in range(200):
        sc = sample_scene(rng)
        c = caption(sc, rng=rng, omit=[k for k in FACTOR_KEYS if rng.random() < 0.3])
        assert set(c.split()) <= words


def test_unknown_factor_values_are_rejected():
    with pytest.raises(ValueError, match="unknown color 'pink'"):
        Scene("circle", "pink", "large", "center", "middle", "gray")
    with pytest.raises(ValueError, match="unknown factor"):
        sample_scene(0, hue="red")


def test_caption_parsing():
    from explore.errors import InputError
    from explore.shapes.world import captions, labels_from_caption

    assert labels_from_caption("a small red circle at the top left on a gray background") == {
        "shape": "circle", "color": "red", "size": "small", "hpos": "left", "vpos": "top", "background": "gray"}
    assert labels_from_caption("a blue square") == {"shape": "square", "color": "blue"}
    with pytest.raises(InputError, match="vocabulary"):
        labels_from_caption("a small red dog")
    with pytest.raises(InputError, match="2 color values"):
        labels_from_caption("a red blue circle")
    caps = captions(5, seed=1)
    assert len(set(caps)) == 5 and all(labels_from_caption(c) for c in caps)
