import pytest
import torch

from explore.errors import InputError
from explore.interp.hooks import cache_activations, hooks, resolve_sites, run_with_cache, sites
from explore.interp.steering import steer
from explore.pipeline.latent import encode_text, velocity
from explore.pipeline.spec import family_of, spec


def _inputs(pipe, n=1, prompt="a red circle"):
    torch.manual_seed(0)
    c, p = encode_text(pipe, [prompt] * n)
    return torch.randn(n, 4, 8, 8), c, p


def test_every_site_is_captured_with_its_shape(tiny):
    z, c, p = _inputs(tiny)
    out, cache = run_with_cache(tiny, lambda: velocity(tiny, z, 0.5, c, p, guidance=1.0))
    inner = tiny.transformer.config.num_attention_heads * tiny.transformer.config.attention_head_dim
    n_img = 16
    assert set(cache.sites()) == set(sites(tiny))
    for site in sites(tiny):
        x = cache[(site, 0.5)]
        tokens = n_img if site.endswith(".img") else c.shape[1]
        assert x.shape == (1, tokens, inner), site
    if family_of(tiny) == "sd3":
        last = len(tiny.transformer.transformer_blocks) - 1
        assert f"transformer_blocks.{last}.txt" not in sites(tiny)  # the last SD3 block returns (None, image)
    else:
        assert "single_transformer_blocks.0.txt" in cache.sites()


def test_replacement_hook_changes_output_and_is_removed(tiny):
    z, c, p = _inputs(tiny)
    base = velocity(tiny, z, 0.5, c, p, guidance=1.0)
    site = sites(tiny)[0]
    with hooks(tiny, {site: lambda x, site: x * 0}):
        changed = velocity(tiny, z, 0.5, c, p, guidance=1.0)
    assert not torch.allclose(base, changed)
    assert torch.equal(base, velocity(tiny, z, 0.5, c, p, guidance=1.0))
    with pytest.raises(RuntimeError, match="boom"), hooks(tiny, {site: lambda x, site: x * 0}):
        raise RuntimeError("boom")
    assert torch.equal(base, velocity(tiny, z, 0.5, c, p, guidance=1.0))
    blocks = tiny.transformer.transformer_blocks
    assert all(len(b._forward_hooks) == 0 for b in blocks)


def test_steering_with_alpha_zero_is_a_no_op(tiny):
    z, c, p = _inputs(tiny)
    base = velocity(tiny, z, 0.5, c, p, guidance=1.0)
    d = torch.randn(tiny.transformer.config.num_attention_heads * tiny.transformer.config.attention_head_dim)
    with hooks(tiny, {"transformer_blocks.0.img": steer(d, 0.0)}):
        assert torch.equal(base, velocity(tiny, z, 0.5, c, p, guidance=1.0))
    with hooks(tiny, {"transformer_blocks.0.img": steer(d, 3.0)}):
        assert not torch.allclose(base, velocity(tiny, z, 0.5, c, p, guidance=1.0))


def test_cache_keeps_only_the_conditional_branch_and_keys_by_t(tiny_sd3):
    z, c, p = _inputs(tiny_sd3, n=3)
    t = torch.tensor([0.25, 0.25, 0.75])
    with cache_activations(tiny_sd3, "*.img") as cache:
        velocity(tiny_sd3, z, t, c, p, guidance=4.0)  # 3 conditional + 3 unconditional rows
    assert cache[("transformer_blocks.0.img", 0.25)].shape[0] == 2
    assert cache[("transformer_blocks.0.img", 0.75)].shape[0] == 1
    with cache_activations(tiny_sd3, "transformer_blocks.0.img", branch="uncond", timesteps=[0.75]) as cache:
        velocity(tiny_sd3, z, t, c, p, guidance=4.0)
    assert list(cache) == [("transformer_blocks.0.img", 0.75)]


def test_cache_during_a_pipeline_call(tiny):
    kw = dict(num_inference_steps=2, height=32, width=32, max_sequence_length=spec(tiny).max_sequence_length,
              output_type="latent")
    with cache_activations(tiny, "transformer_blocks.0.img", reduce=lambda x: x.mean(1)) as cache:
        tiny("a red circle", **kw)
    assert len(cache.timesteps()) == 2 and 1.0 in cache.timesteps()
    assert all(v.shape[0] == 1 and v.ndim == 2 for v in cache.values())  # conditional half only, pooled


def test_bad_site_names(tiny_sd3):
    with pytest.raises(InputError, match="unknown site"):
        resolve_sites(tiny_sd3, "blocks.0")
    with pytest.raises(InputError, match="does not exist"):
        resolve_sites(tiny_sd3, "transformer_blocks.9.img")
    with pytest.raises(InputError, match="does not exist"):
        with hooks(tiny_sd3, {"transformer_blocks.1.txt": lambda x, site: None}):
            pass
    assert resolve_sites(tiny_sd3, "*.txt") == ["transformer_blocks.0.txt"]
