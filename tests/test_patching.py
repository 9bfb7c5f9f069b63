"""Trace and patch (`explore.interp.patching`): exact replacement, ablation and bypass on tiny SD3 and FLUX."""

from __future__ import annotations

import pytest
import torch

from explore.errors import InputError
from explore.interp.hooks import run_with_cache, sites
from explore.interp.patching import ablate, blocks, bypass, patch
from explore.pipeline.latent import encode_text, velocity
from explore.pipeline.sampling import latent_shape
from explore.pipeline.tiny import TINY_RES


@pytest.fixture(params=["sd3", "flux"])
def pipe(request, tiny_sd3, tiny_flux):
    return {"sd3": tiny_sd3, "flux": tiny_flux}[request.param]


def _inputs(pipe, n=1, seed=0, prompt="a red circle"):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *latent_shape(pipe, TINY_RES, TINY_RES), generator=g)
    c, p = encode_text(pipe, [prompt] * n)
    return z, c, p


def test_patching_every_site_of_run_a_into_run_b_gives_run_a(pipe):
    za, c, p = _inputs(pipe, seed=0)
    zb, _, _ = _inputs(pipe, seed=1)
    t = torch.tensor([0.6])
    va, cache_a = run_with_cache(pipe, lambda: velocity(pipe, za, t, c, p, guidance=1.0), branch="all")
    vb = velocity(pipe, zb, t, c, p, guidance=1.0)
    assert not torch.equal(va, vb)
    with patch(pipe, {s: cache_a for s in sites(pipe)}, branch="all"):
        patched = velocity(pipe, zb, t, c, p, guidance=1.0)
    assert torch.equal(patched, va)  # bit for bit


def test_patching_nothing_changes_nothing(pipe):
    z, c, p = _inputs(pipe)
    t = torch.tensor([0.4])
    plain = velocity(pipe, z, t, c, p, guidance=2.0)
    _, cache = run_with_cache(pipe, lambda: velocity(pipe, z, t, c, p, guidance=2.0))
    with patch(pipe, {}):
        assert torch.equal(velocity(pipe, z, t, c, p, guidance=2.0), plain)
    with patch(pipe, {s: cache for s in sites(pipe)}, timesteps=(0.7, 0.9)):  # a window the call is outside of
        assert torch.equal(velocity(pipe, z, t, c, p, guidance=2.0), plain)


def test_a_token_set_patch_moves_only_those_tokens(pipe):
    za, c, p = _inputs(pipe, seed=0)
    zb, _, _ = _inputs(pipe, seed=1)
    t = torch.tensor([0.6])
    site = sites(pipe)[0]
    _, a = run_with_cache(pipe, lambda: velocity(pipe, za, t, c, p, guidance=1.0), sites=[site])
    _, b = run_with_cache(pipe, lambda: velocity(pipe, zb, t, c, p, guidance=1.0), sites=[site])
    tokens = [0, 2]
    with patch(pipe, {site: a}, tokens=tokens):
        _, patched = run_with_cache(pipe, lambda: velocity(pipe, zb, t, c, p, guidance=1.0), sites=[site])
    key = (site, 0.6)
    assert torch.equal(patched[key][:, tokens], a[key][:, tokens])
    rest = [i for i in range(a[key].shape[1]) if i not in tokens]
    assert torch.equal(patched[key][:, rest], b[key][:, rest])


def test_the_cfg_branch_is_respected(tiny_sd3):
    pipe = tiny_sd3
    za, c, p = _inputs(pipe, seed=0)
    zb, _, _ = _inputs(pipe, seed=1)
    t = torch.tensor([0.6])
    site = sites(pipe)[1]
    _, a = run_with_cache(pipe, lambda: velocity(pipe, za, t, c, p, guidance=3.0), sites=[site], branch="cond")
    _, before = run_with_cache(pipe, lambda: velocity(pipe, zb, t, c, p, guidance=3.0), sites=[site],
                               branch="uncond")
    with patch(pipe, {site: a}, branch="cond"):
        _, after = run_with_cache(pipe, lambda: velocity(pipe, zb, t, c, p, guidance=3.0), sites=[site],
                                  branch="all")
    # the batch is [cond; uncond] rows of one call: the conditional row took run A's, the other kept its own
    assert torch.equal(after[(site, 0.6)][:1], a[(site, 0.6)])
    assert torch.equal(after[(site, 0.6)][1:], before[(site, 0.6)])


def test_zero_and_mean_ablation(pipe):
    z, c, p = _inputs(pipe, n=2)
    t = torch.tensor([0.5, 0.5])
    site = sites(pipe)[0]
    plain, ref = run_with_cache(pipe, lambda: velocity(pipe, z, t, c, p, guidance=1.0), sites=[site])
    with ablate(pipe, [site], "zero"):
        zeroed, seen = run_with_cache(pipe, lambda: velocity(pipe, z, t, c, p, guidance=1.0), sites=[site])
    assert not torch.equal(zeroed, plain) and seen[(site, 0.5)].abs().max() == 0
    with ablate(pipe, [site], "mean", reference=ref):
        meaned, seen = run_with_cache(pipe, lambda: velocity(pipe, z, t, c, p, guidance=1.0), sites=[site])
    mean = ref[(site, 0.5)].mean(dim=(0, 1))
    assert torch.allclose(seen[(site, 0.5)], mean.expand_as(seen[(site, 0.5)]), atol=1e-6)
    assert not torch.equal(meaned, plain)
    with pytest.raises(InputError, match="needs reference="):
        with ablate(pipe, [site], "mean"):
            pass


def test_bypass_passes_a_blocks_input_through(pipe):
    z, c, p = _inputs(pipe)
    t = torch.tensor([0.5])
    names = blocks(pipe)
    assert names[0] == "transformer_blocks.0" and len(names) == len({s.rsplit(".", 1)[0] for s in sites(pipe)})
    plain = velocity(pipe, z, t, c, p, guidance=1.0)
    for k in range(1, len(names)):
        prev, this = names[k - 1], names[k]
        with bypass(pipe, this):
            out, cache = run_with_cache(pipe, lambda: velocity(pipe, z, t, c, p, guidance=1.0))
        for stream in ("img", "txt"):
            if (f"{this}.{stream}", 0.5) in cache and (f"{prev}.{stream}", 0.5) in cache:
                assert torch.equal(cache[(f"{this}.{stream}", 0.5)], cache[(f"{prev}.{stream}", 0.5)]), this
        assert not torch.equal(out, plain), this
    with pytest.raises(InputError, match="no block"):
        with bypass(pipe, "transformer_blocks.99"):
            pass


def test_bypass_of_some_rows_only(tiny_sd3):
    pipe = tiny_sd3
    z, c, p = _inputs(pipe)
    t = torch.tensor([0.5])
    plain = velocity(pipe, z, t, c, p, guidance=3.0)
    with bypass(pipe, "transformer_blocks.1", branch="uncond"):
        mixed = velocity(pipe, z, t, c, p, guidance=3.0)
    with bypass(pipe, "transformer_blocks.1"):
        full = velocity(pipe, z, t, c, p, guidance=3.0)
    assert not torch.equal(mixed, plain) and not torch.equal(mixed, full)
    with bypass(pipe, "transformer_blocks.1", timesteps=[0.9]):  # not this call's t
        assert torch.equal(velocity(pipe, z, t, c, p, guidance=3.0), plain)


def test_a_patched_generation_takes_every_step_from_the_traced_one(tiny_sd3):
    """Across the steps and CFG rows of a generation: each (site, t) takes the traced rows in order.

    (The sampler's state is not in the transformer: a generation from other noise keeps its own
    starting point, so only the activations, not the image, equal the traced run's.)"""
    from explore.pipeline.sampling import generate

    pipe = tiny_sd3
    run = lambda seed: generate(pipe, "a red circle", seed=seed, steps=3, output_type="pt")  # noqa: E731
    img_a, cache_a = run_with_cache(pipe, lambda: run(1), branch="all")
    img_b = run(2)
    with patch(pipe, {s: cache_a for s in sites(pipe)}, branch="all"):
        img_b_patched, seen = run_with_cache(pipe, lambda: run(2), branch="all")
    assert len(cache_a.timesteps()) == 3 and set(seen) == set(cache_a)
    assert all(torch.equal(seen[k], cache_a[k]) for k in cache_a)
    assert not torch.equal(img_b_patched, img_b)
    with patch(pipe, {s: cache_a for s in sites(pipe)}, branch="all"):
        assert torch.equal(run(1), img_a)  # its own trace patched back: itself, bit for bit
