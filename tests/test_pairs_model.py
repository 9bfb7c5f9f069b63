"""The shipped ShapesWorld Pairs model: loads offline, quality.json re-measured on a sample, bars of the card."""

import json

import pytest

import explore
from explore.pipeline.load import PAIRS_DIR


@pytest.fixture(scope="module")
def pairs_pipe():
    return explore.load_pipeline("shapes-pairs")


def test_loads_offline_and_is_small(pairs_pipe):
    from diffusers import StableDiffusion3Pipeline

    s = explore.spec(pairs_pipe)
    assert isinstance(pairs_pipe, StableDiffusion3Pipeline) and s.world == "pairs" and s.model_id == "shapes-pairs"
    assert s.resolution == 64 and pairs_pipe.text_encoder_3 is None
    size_mb = sum(f.stat().st_size for f in PAIRS_DIR.rglob("*") if f.is_file()) / 1e6
    assert size_mb <= 40, size_mb
    card = (PAIRS_DIR / "README.md").read_text()
    assert "Binding accuracy" in card and "train-pairs" in card and "train-pairs-decoder" in card


def test_quality_json_re_measured_on_a_sample(pairs_pipe):
    """64 captions of another seed than quality.json's; thresholds under the shipped numbers by what
    64 samples can miss (binding: about two standard errors)."""
    from explore.evaluation.quality import factor_accuracy

    shipped = json.loads((PAIRS_DIR / "quality.json").read_text())
    q = factor_accuracy(pairs_pipe, n=64, seed=77, progress=False)
    for k, acc in q["factor_accuracy"].items():
        assert acc >= shipped["factor_accuracy"][k] - 0.08, (k, acc, shipped["factor_accuracy"][k])
    assert q["binding_accuracy"] >= shipped["binding_accuracy"] - 0.12, (q["binding_accuracy"], shipped)
    assert q["swap_rate"] <= shipped["swap_rate"] + 0.05


def test_vae_psnr_re_measured(pairs_pipe):
    from explore.evaluation.quality import vae_psnr

    shipped = json.loads((PAIRS_DIR / "quality.json").read_text())["vae_psnr_db"]
    assert vae_psnr(pairs_pipe, n=64, seed=5) >= shipped - 1.0


def test_object_features_pool_a_mask_over_the_token_grid():
    import numpy as np

    from explore.interp.studies import object_features

    tokens = np.arange(16 * 3, dtype=float).reshape(16, 3)  # a 4x4 token grid, dim 3
    mask = np.zeros((8, 8), bool)
    mask[0:2, 2:4] = True  # exactly token (0, 1)
    assert np.allclose(object_features(tokens, mask), tokens[1])
    mask[2, 0] = True  # a quarter of token (1, 0): weight 1 against 1/4
    assert np.allclose(object_features(tokens, mask), (tokens[1] + 0.25 * tokens[4]) / 1.25)
    with pytest.raises(explore.InputError, match="do not tile"):
        object_features(tokens[:15], mask)


def test_object_probe_study_reads_each_object_from_its_own_patches(pairs_pipe, tmp_path):
    """One row per object; its own colour, size and position are read from its own patches far above
    the majority class, and the table, JSON and figure are written."""
    from explore.interp.studies import object_probe_study

    res = object_probe_study(pairs_pipe, n=64, out=tmp_path, timesteps=(0.5,), progress=False)
    assert res["settings"]["rows"] == 128 and set(res["accuracy"]) == {
        "shape", "color", "size", "hpos", "vpos", "other.color", "other.size"}
    assert all(s.endswith(".img") for s in res["sites"])
    for f in ("color", "size", "hpos", "vpos"):  # measured at n = 64: 0.91, 1.00, 1.00, 1.00 (majority <= 0.55)
        assert res["best"][f]["accuracy"] > res["majority"][f] + 0.3, f
    for name in ("probe_objects.json", "probe_objects.md", "probe_objects.png"):
        assert (tmp_path / name).is_file()
    with pytest.raises(explore.InputError, match="two-object world"):
        object_probe_study(explore.load_pipeline("shapes"), n=16)
