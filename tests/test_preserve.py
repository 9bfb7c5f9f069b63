"""Preserved directions: ShapesWorld's factor table, 'auto' from the prompt alone, composed edits."""

import warnings

import pytest
import torch

import explore
from explore.editing.api import edit, edit_batch
from explore.editing.directions import compose
from explore.editing.preserve import (
    auto_directions,
    content_words,
    neighbours,
    parse_auto,
    preserved_directions,
    span_share,
)
from explore.errors import InputError

PROMPT = "a large red circle at the top left on a gray background"
LABELS = {"shape": "circle", "color": "red", "size": "large", "hpos": "left", "vpos": "top", "background": "gray"}


def test_content_words_skip_stopwords_and_the_edit():
    assert content_words(PROMPT, {"red", "blue"}) == ["large", "circle", "top", "left", "gray", "background"]
    assert content_words("a photo of a red car on a street") == ["red", "car", "street"]


def test_auto_removes_each_other_content_word_and_spans_the_exact_directions(shapes_pipe):
    d = explore.text_direction(shapes_pipe, "red", "blue")
    auto = auto_directions(shapes_pipe, PROMPT, exclude={"red", "blue"})
    assert [a.source for a in auto] == ["large", "circle", "top", "left", "gray", "background"]
    assert all(a.target == "<unk>" and a.metadata["auto"] for a in auto)
    exact = preserved_directions(shapes_pipe, d, None, LABELS)
    shares = span_share(exact, auto)
    assert len(exact) == 9 and all(0.0 < s <= 1.0 + 1e-6 for s in shares)
    assert span_share(exact, exact) == pytest.approx([1.0] * 9, abs=1e-4)
    with_neighbours = auto_directions(shapes_pipe, PROMPT, exclude={"red", "blue"}, k=1)
    assert len(with_neighbours) == 12 and len(neighbours(shapes_pipe, "large", 2)) == 2


def test_auto_is_the_default_without_a_factor_table_and_resolves_per_source(tiny_sd3):
    src = explore.encode(tiny_sd3, torch.rand(3, 32, 32), "red car here")
    d = explore.text_direction(tiny_sd3, "red", "blue", templates=["red car"])
    pres = preserved_directions(tiny_sd3, d, None, None, prompt="red car here")
    assert [p.source for p in pres] == ["car", "here"]
    out = edit_batch(tiny_sd3, [src], [d], [1.0], "hsds", seeds=[0], steps=1, t_render=0.0)
    assert out["evaluations"] > 0
    with pytest.warns(UserWarning, match="DDS"):
        edit_batch(tiny_sd3, [src], [d], [1.0], "hsds", [], seeds=[0], steps=1, t_render=0.0)


def test_parse_auto_options():
    assert parse_auto("auto") == {} and parse_auto("auto(k=3,remove=0)") == {"k": 3, "remove": False}
    with pytest.raises(InputError, match="options"):
        parse_auto("auto(k=x)")


def test_composed_edit_changes_both_and_preserves_neither(shapes_pipe):
    from explore.shapes.readers import read
    from explore.shapes.world import Scene, caption, render

    scene = Scene("circle", "red", "large", "left", "top", "gray")
    src = explore.encode(shapes_pipe, render(scene), caption(scene, template=0))
    color = explore.text_direction(shapes_pipe, "red", "blue")
    size = explore.text_direction(shapes_pipe, "large", "small")
    both = compose([color, size], [1.0, 1.0])
    assert both.metadata["attributes"] == ["color", "size"] and torch.allclose(both.dc, color.dc + size.dc)
    pres = preserved_directions(shapes_pipe, both, None, scene.labels)
    assert {p.attribute for p in pres} == {"shape", "hpos", "vpos", "background"}
    with pytest.raises(InputError, match="attribute being edited"):
        preserved_directions(shapes_pipe, both, ["size"], scene.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = edit(shapes_pipe, src, [color, size], [1.5, 1.5], labels=scene.labels, steps=20)
    r = read(res.image)
    assert r["color"] == "blue" and r["size"] == "small"
    with pytest.raises(InputError, match="once"):
        compose([color, color])


def test_preserve_span_study_reports_shares_per_factor(shapes_pipe, tmp_path):
    from explore.interp.studies import preserve_span_study

    res = preserve_span_study(shapes_pipe, n=3, seed=1, out=tmp_path, progress=False)
    assert set(res["per_edited_attribute"]) == {"shape", "color", "size"}
    shares = [v for v in res["per_preserved_factor"].values() if v is not None]
    assert shares and all(0.0 <= v <= 1.0 + 1e-6 for v in shares)
    assert res["n_directions"]["exact_mean"] > res["n_directions"]["auto_mean"] > 0
    # removing the source's own value word is one of the auto directions: a real share of each exact one
    assert 0.2 < res["mean_share"] < 1.0
    assert (tmp_path / "preserve_span.md").read_text().startswith("# Share of the exact")
