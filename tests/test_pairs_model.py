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
