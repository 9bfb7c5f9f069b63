import json

import numpy as np
import pytest
import torch

import explore
from explore.errors import InputError, ModelNotFoundError, UnsupportedModelError
from explore.interp.hooks import sites
from explore.pipeline.load import save_spec
from explore.pipeline.spec import family_of, size_multiple, spec


def test_tiny_pipelines_are_small_seeded_and_typed(tiny_sd3, tiny_flux):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    assert isinstance(tiny_sd3, StableDiffusion3Pipeline) and family_of(tiny_sd3) == "sd3"
    assert isinstance(tiny_flux, FluxPipeline) and family_of(tiny_flux) == "flux"
    for pipe in (tiny_sd3, tiny_flux):
        n = sum(p.numel() for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters())
        assert n * 4 < 1_000_000  # a few hundred kB of float32
    a = explore.load_pipeline("tiny-sd3", seed=3)
    b = explore.load_pipeline("tiny-sd3", seed=3)
    c = explore.load_pipeline("tiny-sd3", seed=4)
    wa, wb, wc = (next(p.transformer.parameters()) for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert spec(a).model_id == "tiny-sd3" and spec(a).resolution == 32


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_load_from_saved_folder_is_the_real_from_pretrained_path(tmp_path, name):
    pipe = explore.load_pipeline(name)
    pipe.save_pretrained(tmp_path)
    save_spec(pipe, tmp_path)
    loaded = explore.load_pipeline(tmp_path)
    assert type(loaded) is type(pipe)
    s = spec(loaded)
    assert s.family == spec(pipe).family and s.max_sequence_length == spec(pipe).max_sequence_length
    assert s.model_id == str(tmp_path)
    for (k1, v1), (k2, v2) in zip(pipe.transformer.state_dict().items(), loaded.transformer.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_sd3_without_t5_loads_from_folder(tmp_path, tiny_sd3):
    from diffusers import StableDiffusion3Pipeline

    comps = dict(tiny_sd3.components)
    comps["text_encoder_3"] = None
    comps["tokenizer_3"] = None
    pipe = StableDiffusion3Pipeline(**comps)
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["text_encoder_3"] == [None, None]
    loaded = explore.load_pipeline(tmp_path)
    assert loaded.text_encoder_3 is None
    # no T5: diffusers still pads 256 zero tokens by default, and explore encodes what the pipeline would
    # (a folder's explore.json may say 0, as ShapesWorld's does)
    assert spec(loaded).max_sequence_length == 256


def test_missing_folder_and_offline_hub_id_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError) as e:
        explore.load_pipeline("stabilityai/stable-diffusion-3-medium-diffusers")
    msg = str(e.value)
    assert "stabilityai/stable-diffusion-3-medium-diffusers" in msg
    assert "offline" in msg and str(tmp_path / "hf") in msg and "hf download" in msg
    with pytest.raises(ModelNotFoundError, match="no folder"):
        explore.load_pipeline(str(tmp_path / "nope" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        explore.load_pipeline(tmp_path / "empty")


def test_unsupported_pipeline_and_bad_offload():
    class Fake:
        transformer = torch.nn.Linear(1, 1)

    with pytest.raises(UnsupportedModelError, match="SD3"):
        family_of(Fake())
    with pytest.raises(InputError, match="offload"):
        explore.load_pipeline("tiny-sd3", offload="gpu-please")


def test_site_tables(tiny_sd3, tiny_flux):
    s = sites(tiny_sd3)
    assert s == ["transformer_blocks.0.img", "transformer_blocks.0.txt", "transformer_blocks.1.img"]
    f = sites(tiny_flux)
    assert "transformer_blocks.0.txt" in f and "single_transformer_blocks.1.txt" in f
    assert f[-1] == "single_transformer_blocks.1.txt"
    assert size_multiple(tiny_sd3) == 8 and size_multiple(tiny_flux) == 8


def test_generate_equals_the_pipeline_on_a_t5_less_sd3_at_its_defaults(tiny_sd3):
    """Without T5 the SD3 pipeline pads 256 zero tokens by default; explore must encode the same sequence."""
    from diffusers import StableDiffusion3Pipeline

    import explore

    parts = {k: v for k, v in tiny_sd3.components.items()}
    parts.update(text_encoder_3=None, tokenizer_3=None)
    pipe = StableDiffusion3Pipeline(**parts)  # built elsewhere: no ModelSpec, explore infers one
    pipe.set_progress_bar_config(disable=True)
    assert explore.spec(pipe).max_sequence_length == 256
    ours = explore.generate(pipe, "red car", seed=3, steps=4, output_type="np")
    gen = torch.Generator().manual_seed(3)
    theirs = pipe("red car", num_inference_steps=4, generator=gen, output_type="np").images
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-4


def test_cuda_under_torchrun_means_this_ranks_gpu(monkeypatch):
    from explore.pipeline.load import resolve_device

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_device("cuda") == torch.device("cuda")


def test_attention_backend_setting(tiny_sd3):
    from explore.pipeline.latent import encode_text, velocity
    from explore.pipeline.spec import set_attention_backend, state

    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    c, p = encode_text(tiny_sd3, ["red car", "blue car"])
    auto = velocity(tiny_sd3, z, 0.5, c, p, guidance=1.0)
    try:
        set_attention_backend(tiny_sd3, "math")
        assert state(tiny_sd3).attention == "math"
        math_ = velocity(tiny_sd3, z, 0.5, c, p, guidance=1.0)
    finally:
        set_attention_backend(tiny_sd3, "auto")
    assert torch.allclose(auto, math_, atol=1e-5)
    with pytest.raises(InputError, match="attention backend"):
        set_attention_backend(tiny_sd3, "fast")
    with pytest.raises(InputError, match="attention backend"):
        explore.load_pipeline("tiny-sd3", attention="fast")
