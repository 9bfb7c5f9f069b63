"""The two-object panels (BindingPanel, LeakPanel) on a stand-in: the ShapesWorld model wearing the Pairs world."""

import dataclasses

import pytest

from explore.errors import InputError
from explore.views.binding import BindingPanel, LeakPanel, object_words, pairs_scene, shares_summary
from explore.views.session import EditSession


@pytest.fixture(scope="module")
def pairs_session():
    import explore
    from explore.pipeline.spec import attach_spec, spec

    pipe = explore.load_pipeline("shapes")
    attach_spec(pipe, dataclasses.replace(spec(pipe), world="pairs", model_id="pairs-stand-in"))
    return EditSession(pipe, (0.0, 1.0), {"steps": 2, "t_render": 0.1}, seed=0)


def test_panels_refuse_a_one_object_world(shapes_pipe):
    s = EditSession(shapes_pipe, (0.0, 1.0))
    with pytest.raises(InputError, match="two-object"):
        BindingPanel(s)
    with pytest.raises(InputError, match="two-object"):
        LeakPanel(s)


def test_object_words_name_one_object_each(pairs_session):
    world = pairs_session.world
    for seed in range(5):
        scene, prompt = pairs_scene(world, seed)
        labels = world.labels(scene)
        for word, shape, factor in object_words(world, scene, prompt):
            assert prompt.split().count(word) == 1
            assert (word == shape) if factor == "shape" else labels[f"{shape}.{factor}"] == word


def test_binding_panel_shares_per_block(pairs_session):
    panel = BindingPanel(pairs_session, seed=3, timesteps=(0.5,))
    assert panel.last_error is None and panel.word.options
    assert panel.render_image.value and panel.generated_image.value and panel.shares_image.value
    assert "objects found" in panel.verdict.value
    word = panel.word.options[-1].split(" ")[0]
    shares = panel.shares(3, word)
    assert "mean" in shares and len(shares) == len(panel.layer.options)
    for per in shares.values():
        assert len(per) == 2 and sum(per.values()) <= 1 + 1e-5
    own = next(sh for w, sh, _ in panel.data(3)["words"] if w == word)
    assert all(0 <= v <= 1 for v in shares_summary(shares, own).values())
    before = panel.overlay_image.value
    panel.word.value = panel.word.options[-1]
    panel.layer.value = panel.layer.options[1]
    assert panel.last_error is None and panel.overlay_image.value != before
    panel.scene.value = 4
    assert pairs_scene(pairs_session.world, 4)[1] in panel.caption.value


def test_leak_panel_edits_with_every_method(pairs_session):
    panel = LeakPanel(pairs_session, seed=1, methods=("dds", "text"))
    src = panel.source()
    assert set(panel.attribute.options) == set(src.labels)
    panel.attribute.value = next(k for k in panel.attribute.options if k.endswith(".color"))
    key = panel.attribute.value
    other_colour = next(v for k, v in src.labels.items() if k.endswith(".color") and k != key)
    assert other_colour not in panel.target.options and src.labels[key] not in panel.target.options
    panel.refresh("run")
    assert panel.last_error is None, panel.message
    assert set(panel.results) == {"dds", "text"}
    for r in panel.results.values():
        assert set(r["retention_parts"]) == {"same_object", "other_objects", "scene"}
    assert "other object kept" in panel.table.value and panel.strip_image.value


def test_scenes_and_captions_are_seeded(pairs_session):
    world = pairs_session.world
    assert [pairs_scene(world, s)[1] for s in range(6)] == [pairs_scene(world, s)[1] for s in range(6)]


def test_session_prompt_directions_follow_the_source_caption(pairs_session):
    """templates="prompt" on an embedded world: the direction is the source caption against the
    world's caption with the edit made (only the edited object's word changes)."""
    import torch

    from explore.pipeline.latent import encode_text

    s = EditSession(pairs_session.pipe, (0.0, 1.0), {"steps": 2, "t_render": 0.1}, seed=0, templates="prompt")
    _, prompt = pairs_scene(s.world, 2)
    labels = s.world.labels_from_caption(prompt)
    key = next(k for k in labels if k.endswith(".size"))
    target = next(v for v in s.world.values(key) if v != labels[key])
    d = s.direction(key, labels[key], target, prompt=prompt)
    edited = s.world.edited_caption(prompt, key, target)
    c, p = encode_text(s.pipe, [prompt, edited])
    assert torch.allclose(d.dc, (c[1] - c[0]).float()) and d.templates == [(prompt, edited)]
    with pytest.raises(InputError, match="needs the source prompt"):
        s.direction(key, labels[key], target)
