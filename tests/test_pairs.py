"""ShapesWorld Pairs: scenes, captions, masks and the per-object readers."""

import random
import re

import numpy as np
import pytest

from explore.pairs import CELL_PAIRS, PairScene, caption, dataset, mask, masks, render, sample_pair, vocabulary
from explore.pairs.readers import read, score
from explore.shapes.world import Scene


def test_readers_recover_every_object_factor_on_clean_renders():
    scenes, images = dataset(400, seed=123)
    scores = [score(read(im), s.labels) for im, s in zip(images, scenes)]
    assert all(s["binding"] for s in scores)
    assert not any(v for s in scores for v in s["swap"].values())
    for im, s in zip(images[:50], scenes[:50]):
        r = read(im)
        assert {k: r[k] for k in s.labels} == s.labels


def test_scenes_are_valid_and_objects_never_touch():
    rng = random.Random(0)
    for _ in range(300):
        s = sample_pair(rng)
        a, b = s.objects
        assert a.shape != b.shape and a.color != b.color
        m = masks(s)
        assert not (m[a.shape] & m[b.shape]).any()
        assert m[a.shape].sum() > 20 and m[b.shape].sum() > 20
    assert len(CELL_PAIRS) == 32  # ordered pairs of cells two apart in the 3x3 grid


def test_pinned_keys_and_replace():
    s = sample_pair(1, **{"circle.color": "red", "square.hpos": "left"})
    assert s.labels["circle.color"] == "red" and s.labels["square.hpos"] == "left"
    t = s.replace("circle.color", "blue")
    assert t.labels["circle.color"] == "blue" and t.labels["square.color"] == s.labels["square.color"]
    assert s.replace("background", "white").background == "white"
    with pytest.raises(ValueError, match="different shapes"):
        PairScene((Scene("circle", "red", "small", "left", "top", "gray"),
                   Scene("circle", "blue", "small", "right", "bottom", "gray")), "gray")
    with pytest.raises(ValueError, match="too close"):
        PairScene((Scene("circle", "red", "small", "left", "top", "gray"),
                   Scene("square", "blue", "small", "center", "top", "gray")), "gray")
    with pytest.raises(ValueError, match="unknown factor key"):
        sample_pair(0, color="red")


def test_captions_bind_each_attribute_next_to_its_noun():
    s = PairScene((Scene("circle", "red", "small", "left", "top", "gray"),
                   Scene("square", "blue", "large", "right", "bottom", "gray")), "gray")
    for t in range(4):
        for order in (["circle", "square"], ["square", "circle"]):
            words = caption(s, template=t, order=order).split()
            assert set(words) <= set(vocabulary())
            i_c, i_s = words.index("circle"), words.index("square")
            # each colour word is nearer its own noun than the other noun
            assert abs(words.index("red") - i_c) < abs(words.index("red") - i_s)
            assert abs(words.index("blue") - i_s) < abs(words.index("blue") - i_c)
    c = caption(s, template=0, order=["circle", "square"], omit=["circle.size", "background"])
    assert c == "a red circle at the top left and a large blue square at the bottom right"


def test_render_and_union_mask():
    s = sample_pair(3, jitter=False)
    img = render(s)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    union = mask(s)
    assert union.sum() == sum(m.sum() for m in masks(s).values())
    bg = np.asarray({"black": 0, "white": 255, "gray": 128}[s.background])
    assert (img[~union] == bg).mean() > 0.9


def test_score_counts_a_colour_swap_and_a_missing_object():
    s = PairScene((Scene("circle", "red", "large", "left", "top", "gray"),
                   Scene("square", "blue", "large", "right", "bottom", "gray")), "gray")
    swapped = render(s.replace("circle.color", "green").replace("square.color", "red"))
    r = score(read(swapped), s.labels)
    assert r["swap"]["square"] and not r["swap"]["circle"] and not r["binding"]
    wrong = render(s.replace("square.color", "green"))
    r = score(read(wrong), s.labels)
    assert r["objects"]["circle"] and not r["objects"]["square"] and not any(r["swap"].values())
    empty = np.full((64, 64, 3), 128, np.uint8)
    r = score(read(empty), s.labels)
    assert r["n_objects"] == 0 and not r["objects"]["circle"] and not r["binding"]


def test_pairs_benchmark_reports_the_other_objects_retention(tmp_path):
    """The pairs benchmark end to end on a stand-in pipeline (the ShapesWorld model wearing the Pairs world)."""
    import dataclasses

    import explore
    from explore.evaluation.items import world_benchmark
    from explore.evaluation.runner import evaluate
    from explore.pipeline.spec import attach_spec, spec

    pipe = explore.load_pipeline("shapes")
    attach_spec(pipe, dataclasses.replace(spec(pipe), world="pairs", model_id="pairs-stand-in"))
    items = world_benchmark("pairs", 3, seed=1)
    assert [it.attribute for it in items] == ["circle.color", "circle.size", "circle.hpos"]
    res = evaluate(pipe, items, tmp_path, ["dds"], curve_n=0, settings={"dds": {"steps": 2}}, progress=False,
                   figures=False)
    parts = res["methods"]["dds"]["retention_parts"]
    assert set(parts) == {"same_object", "other_objects", "scene"}
    assert all(parts[k] is not None and 0 <= parts[k] <= 1 for k in parts)
    assert "other object" in (tmp_path / "results.md").read_text()


def test_benchmark_items_carry_the_world_caption_with_the_edit_made():
    """``target_prompt`` is the source's caption (same template, same object order) with only the
    edited object's value changed; swapping the word instead would also change the other object's
    where both share it ("a small red circle ... and a small blue square")."""
    from explore.evaluation.items import world_benchmark
    from explore.worlds import get_world

    world = get_world("pairs")
    items = world_benchmark("pairs", 65, seed=0)
    shared = 0
    for it in items:
        assert world.labels_from_caption(it.prompt) == it.labels
        assert world.labels_from_caption(it.edited_prompt()) == {**it.labels, it.attribute: it.target}
        a, b = it.prompt.split(), it.edited_prompt().split()
        assert len(a) == len(b) and [(x, y) for x, y in zip(a, b) if x != y] == [(it.source, it.target)]
        shared += len(re.findall(rf"\b{it.source}\b", it.prompt)) > 1
    assert shared > 0  # the benchmark has items where swapping the word would edit both objects


def test_edited_caption_changes_only_the_edited_objects_word():
    """`World.edited_caption` rebuilds a Pairs caption in its own template and object order (what the
    benchmark's ``target_prompt`` is); ShapesWorld swaps the one word."""
    from explore.errors import InputError
    from explore.evaluation.items import world_benchmark
    from explore.worlds import get_world

    world = get_world("pairs")
    items = world_benchmark("pairs", 65, seed=0)
    for it in items:
        assert world.edited_caption(it.prompt, it.attribute, it.target) == it.target_prompt
    with pytest.raises(InputError, match="is not a value"):
        world.edited_caption(items[1].prompt, items[1].attribute, "plaid")
    with pytest.raises(InputError, match="not one of the world's templates"):
        world.edited_caption("a red circle on a gray background", "circle.color", "green")  # one object
    shapes = get_world("shapes")
    p = "a small red circle at the top left on a gray background"
    assert shapes.edited_caption(p, "color", "blue") == p.replace("red", "blue")
