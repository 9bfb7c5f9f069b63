"""Scorers: ShapesWorld readers and zero-shot CLIP (a tiny random CLIP saved to a folder) behind one interface."""

import numpy as np
import pytest

from explore.errors import InputError, ModelNotFoundError
from explore.evaluation.scorers import CLIPScorer, Scorer, ShapesScorer, as_images, get_scorer
from explore.shapes.world import FACTORS, dataset


@pytest.fixture(scope="module")
def world():
    return dataset(6, seed=3, size=64)


def test_as_images_accepts_batches_and_single_images(world):
    import torch
    from PIL import Image

    _, images, _ = world
    assert len(as_images(images)) == 6
    assert len(as_images(images[0])) == 1
    assert len(as_images(list(images.astype(np.float32) / 255))) == 6
    assert len(as_images(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)) == 6
    assert as_images(Image.fromarray(images[0]))[0].shape == (64, 64, 3)
    with pytest.raises(InputError, match="empty"):
        as_images([])
    with pytest.raises(InputError, match="image 0"):
        as_images(np.zeros((2, 8, 8, 4)))


def test_shapes_scorer_reads_labels(world):
    scenes, images, masks = world
    scorer = get_scorer("shapes")
    assert isinstance(scorer, ShapesScorer) and isinstance(scorer, Scorer)
    readings = scorer.read(images)
    assert readings == [s.labels for s in scenes]
    for attribute, values in FACTORS.items():
        p = scorer.probs(images, attribute)
        assert p.shape == (6, len(values))
        np.testing.assert_allclose(p.sum(axis=1), 1.0)
        # hard (reader: 0/1): probability 1 on the read value
        truth = [s.labels[attribute] for s in scenes]
        np.testing.assert_array_equal(scorer.prob(images, attribute, values[0]), [t == values[0] for t in truth])
    got = scorer.masks(images)
    for m, true in zip(got, masks):
        assert m.shape == true.shape and m.dtype == bool
        assert (m & true).sum() / (m | true).sum() > 0.8  # measured vs exact mask (edges differ)


def test_shapes_scorer_soft_probabilities(world):
    scenes, images, _ = world
    soft = ShapesScorer(hard=False)
    p = soft.probs(images, "color")
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    best = [FACTORS["color"][i] for i in p.argmax(axis=1)]
    assert best == [s.color for s in scenes]
    assert ((p > 0) & (p < 1)).any() or np.allclose(p.max(axis=1), 1.0)


def test_shapes_scorer_errors(world):
    _, images, _ = world
    scorer = ShapesScorer()
    with pytest.raises(InputError, match="no attribute 'texture'"):
        scorer.prob(images, "texture", "rough")
    with pytest.raises(InputError, match="no value 'pink'"):
        scorer.prob(images, "color", "pink")


def test_shapes_scorer_blank_image():
    scorer = ShapesScorer()
    blank = np.zeros((32, 32, 3), np.uint8)
    (reading,) = scorer.read(blank)
    assert reading["background"] == "black" and reading["shape"] is None
    np.testing.assert_allclose(scorer.probs(blank, "shape"), [[1 / 3] * 3])
    assert not scorer.masks(blank)[0].any()


# ---------------------------------------------------------------------------------------------
# CLIP, from a tiny random model saved in save_pretrained layout
# ---------------------------------------------------------------------------------------------

_CHARS = "abcdefghijklmnopqrstuvwxyz"


def _save_tiny_clip(folder):
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor as ImageProcessor

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=48, pad_token="!")
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=48,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=2,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return _save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


ATTRS = {"color": ["red", "green", "blue"], "shape": ["circle", "square"]}


def test_clip_scorer_from_folder(clip_folder, world):
    _, images, _ = world
    scorer = get_scorer(str(clip_folder), attributes=ATTRS, template={"shape": "a {}"})
    assert isinstance(scorer, CLIPScorer)
    assert scorer.templates == {"color": "a photo of a {} object", "shape": "a {}"}
    p = scorer.probs(images, "color")
    assert p.shape == (6, 3) and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    q = scorer.prob(images, "color", "green")
    np.testing.assert_allclose(q, p[:, 1])
    readings = scorer.read(images)
    assert len(readings) == 6 and all(set(r) == set(ATTRS) for r in readings)
    assert all(r["color"] == ATTRS["color"][i] for r, i in zip(readings, p.argmax(axis=1)))
    assert scorer.masks(images) == [None] * 6
    # batching does not change the answer
    small = CLIPScorer(clip_folder, ATTRS, batch_size=2)
    np.testing.assert_allclose(small.probs(images, "color"), p, atol=1e-5)


def test_clip_scorer_validates_arguments(clip_folder):
    with pytest.raises(InputError, match="two distinct values"):
        CLIPScorer(clip_folder, {"color": ["red"]})
    with pytest.raises(InputError, match="contain"):
        CLIPScorer(clip_folder, ATTRS, template="a photo")
    with pytest.raises(InputError, match="attributes="):
        get_scorer(str(clip_folder))


def test_clip_missing_folder_raises(tmp_path):
    missing = tmp_path / "no-clip-here"
    with pytest.raises(ModelNotFoundError, match=str(missing)):
        CLIPScorer(str(missing), ATTRS)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="empty"):
        CLIPScorer(str(empty), ATTRS)


def test_clip_missing_hub_id_offline_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError) as info:
        CLIPScorer("explore-tests/no-such-clip", ATTRS)
    msg = str(info.value)
    assert "explore-tests/no-such-clip" in msg and str(tmp_path / "hub") in msg
    assert "offline" in msg and "hf download" in msg


def test_get_scorer_dispatch():
    from types import SimpleNamespace

    from explore.pipeline.spec import ModelSpec, PipelineState

    s = ShapesScorer()
    assert get_scorer(s) is s
    spec = ModelSpec("shapes", "sd3", 64, 16, {}, world="shapes")
    assert isinstance(get_scorer(SimpleNamespace(explore_state=PipelineState(spec))), ShapesScorer)
    other = SimpleNamespace(explore_state=PipelineState(ModelSpec("tiny-sd3", "sd3", 32, 16, {})))
    with pytest.raises(InputError, match="no built-in scorer"):
        get_scorer(other)
    with pytest.raises(InputError, match="no scorer"):
        get_scorer(None)
    with pytest.raises(InputError, match="name, a path or a Scorer"):
        get_scorer(3)
