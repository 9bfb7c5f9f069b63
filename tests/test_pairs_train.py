"""The Pairs trainer: identity growth, bit-for-bit resume, continuing from an export, decoder fine-tune, card."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from explore.pairs.train import PairsConfig, _grow_transformer, build_pipeline, train

TINY = PairsConfig(n_data=8, batch=2, steps=2, warmup=1, ckpt_every=1, eval_every=1000, eval_n=2, extra_layers=1)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_grown_transformer_is_the_same_function(shapes_pipe):
    """New joint blocks start as exact identities: the grown transformer predicts what the old one did."""
    tr = shapes_pipe.transformer
    grown = _grow_transformer(tr, 2)
    assert grown.config.num_layers == tr.config.num_layers + 2
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, tr.config.in_channels, 16, 16, generator=g)
    c = torch.randn(2, 7, tr.config.joint_attention_dim, generator=g)
    p = torch.randn(2, tr.config.pooled_projection_dim, generator=g)
    t = torch.tensor([300.0, 800.0])
    with torch.no_grad():
        a = tr(hidden_states=z, encoder_hidden_states=c, pooled_projections=p, timestep=t).sample
        b = grown(hidden_states=z, encoder_hidden_states=c, pooled_projections=p, timestep=t).sample
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_resume_is_bit_for_bit(tmp_path):
    """Two steps in one go == one step, stop, resume from ckpt.pt for the second."""
    train(tmp_path / "a", TINY, progress=False)
    train(tmp_path / "b", dataclasses.replace(TINY, steps=1), progress=False)
    train(tmp_path / "b", dataclasses.replace(TINY, steps=2), progress=False)  # resumes at step 1
    wa, wb = _weights(tmp_path / "a" / "model"), _weights(tmp_path / "b" / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ref = _weights(tmp_path / "a" / "model")
    w0 = build_pipeline(TINY).transformer.state_dict()
    assert any(not torch.equal(ref[k], w0[k]) for k in ref)  # it trained


def test_continue_from_an_export_keeps_its_weights(tmp_path):
    """--init-from a Pairs export: the model is not grown again and starts exactly as exported."""
    train(tmp_path / "a", TINY, progress=False)
    cfg = dataclasses.replace(TINY, init_from=str(tmp_path / "a" / "model"), extra_layers=4)
    pipe = build_pipeline(cfg)
    assert cfg.extra_layers == 1  # read off the export, not re-applied
    exported = _weights(tmp_path / "a" / "model")
    for k, v in pipe.transformer.state_dict().items():
        assert torch.equal(v, exported[k]), k
    assert pipe.tokenizer.model_max_length == TINY.model_max_length


def test_decoder_finetune_changes_only_the_decoder(tmp_path):
    """The encoder (so every latent) stays bit-identical; the decoder improves on what it trains on."""
    from diffusers import AutoencoderKL

    from explore.errors import InputError
    from explore.pairs.decoder import DecoderConfig, finetune_folder_decoder

    train(tmp_path / "a", dataclasses.replace(TINY, steps=1), progress=False)
    folder = tmp_path / "a" / "model"
    before = AutoencoderKL.from_pretrained(str(folder / "vae")).state_dict()
    cfg = DecoderConfig(steps=12, batch=4, n_data=8, held_n=8, held_seed=7, lr=2e-4, warmup=1)  # held = train
    rec = finetune_folder_decoder(folder, cfg, progress=False)
    after = AutoencoderKL.from_pretrained(str(folder / "vae")).state_dict()
    for k in before:
        if k.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert rec["psnr_after_db"] > rec["psnr_before_db"]
    meta = json.loads((folder / "explore.json").read_text())
    assert meta["decoder_finetune"][-1]["psnr_after_db"] == pytest.approx(rec["psnr_after_db"])
    assert not (folder / "vae.tmp").exists() and not (folder / "vae.old").exists()
    with pytest.raises(InputError, match="for Pairs models"):
        from explore.pipeline.load import SHAPES_DIR

        finetune_folder_decoder(SHAPES_DIR, cfg, progress=False)


def test_pairs_card_reports_binding_and_the_learning_curve(tmp_path):
    from explore.evaluation.card import write_card

    train(tmp_path / "a", dataclasses.replace(TINY, steps=1), progress=False)
    folder = tmp_path / "a" / "model"
    (folder / "learning_curve.jsonl").write_text(json.dumps(
        {"step": 0, "seconds": 1.0, "binding_accuracy": 0.0, "swap_rate": 0.5,
         "factor_accuracy": {"shape": 0.5, "color": 0.25}}) + "\n")
    q = write_card(folder, {}, quality_n=2)
    assert q["model"] == "shapes-pairs"
    for k in ("binding_accuracy", "swap_rate", "objects_found_mean"):
        assert k in q and q[k] is not None
    assert np.isfinite(q["vae_psnr_db"])
    card = (folder / "README.md").read_text()
    assert "Binding accuracy" in card and "Colour-swap rate" in card and "| 0 | 0.00 | 0.00 | 0.50 |" in card
    assert json.loads((folder / "quality.json").read_text())["binding_accuracy"] == q["binding_accuracy"]


def test_region_shares_follow_the_attention():
    from explore.interp.attention import AttentionMaps, region_shares

    amap = np.zeros((4, 4), np.float32)
    amap[:2, :2] = 1.0  # all the mass on the top-left quarter of the patch grid
    maps = AttentionMaps({("b0", 0.5): amap}, "red", "a red circle", [1], (8, 8), (4, 4))
    left = np.zeros((8, 8), bool)
    left[:, :4] = True
    top_left = np.zeros((8, 8), bool)
    top_left[:4, :4] = True
    shares = region_shares(maps, {"left": left, "right": ~left, "top_left": top_left})
    assert shares["left"] == pytest.approx(1.0) and shares["right"] == pytest.approx(0.0)
    assert shares["top_left"] == pytest.approx(1.0)
    half = np.zeros((8, 8), bool)
    half[:1, :4] = True  # an eighth of the mass region's pixels -> a quarter of its patches' area
    assert region_shares(maps, {"h": half})["h"] == pytest.approx(0.25)


def test_attention_binding_study_on_a_stand_in(tmp_path):
    """The study's tables on the ShapesWorld model wearing the Pairs world (numbers not meaningful)."""
    import explore
    from explore.errors import InputError
    from explore.interp.studies import attention_binding_study
    from explore.pipeline.spec import attach_spec, spec

    pipe = explore.load_pipeline("shapes")
    with pytest.raises(InputError, match="two-object world"):
        attention_binding_study(pipe, n=1)
    attach_spec(pipe, dataclasses.replace(spec(pipe), world="pairs", model_id="pairs-stand-in"))
    res = attention_binding_study(pipe, n=2, timesteps=(0.5,), out=tmp_path, progress=False)
    assert {"shape", "color"} <= set(res["shares"])
    for per in res["shares"].values():
        assert "all layers" in per
        for v in per.values():
            assert 0 <= v["own"] <= 1 and 0 <= v["other"] <= 1 and v["own"] + v["other"] <= 1 + 1e-5
            assert 0 <= v["binding"] <= 1 and 0 < v["chance"] < 1
    assert "| chance |" in (tmp_path / "attention_binding.md").read_text()
