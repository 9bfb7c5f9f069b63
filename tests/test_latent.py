import numpy as np
import pytest
import torch
from PIL import Image

import explore
from explore.errors import InputError
from explore.pipeline.latent import (
    compute_dtype,
    count_sequences,
    encode_image,
    encode_text,
    pack,
    transformer_call,
    unpack,
    velocity,
)
from explore.pipeline.spec import family_of, spec


def _prompt_kwargs(pipe):
    return {"max_sequence_length": spec(pipe).max_sequence_length}


def test_encode_text_is_the_pipelines_encode_prompt(tiny):
    prompts = ["a red circle", "a blue square on white"]
    c, p = encode_text(tiny, prompts, cache=False)
    torch.set_grad_enabled(False)  # the reference under no_grad too: same kernels, bit-identical
    if family_of(tiny) == "sd3":
        ref_c, _, ref_p, _ = tiny.encode_prompt(prompts, None, None, do_classifier_free_guidance=False,
                                                **_prompt_kwargs(tiny))
    else:
        ref_c, ref_p, _ = tiny.encode_prompt(prompts, None, **_prompt_kwargs(tiny))
    # each prompt is encoded on its own (its bits never depend on the other prompts of a call or of
    # the cache): equal to the pipeline's own call on that prompt, and to its batched call up to the
    # last float bits of a batched matmul
    with torch.no_grad():
        alone = [tiny.encode_prompt([q], None, None, do_classifier_free_guidance=False, **_prompt_kwargs(tiny))
                 if family_of(tiny) == "sd3" else tiny.encode_prompt([q], None, **_prompt_kwargs(tiny))
                 for q in prompts]
    torch.set_grad_enabled(True)
    one_c = torch.cat([a[0] for a in alone])
    one_p = torch.cat([a[2] if family_of(tiny) == "sd3" else a[1] for a in alone])
    assert torch.equal(c, one_c) and torch.equal(p, one_p)
    assert torch.allclose(c, ref_c, atol=1e-5) and torch.allclose(p, ref_p, atol=1e-5)
    c2, _ = encode_text(tiny, prompts[::-1])  # cached path, reordered
    assert torch.equal(c2[0], one_c[1])


def test_null_text_is_the_sd3_negative_prompt(tiny_sd3):
    from explore.pipeline.latent import null_text

    c_u, p_u = null_text(tiny_sd3)
    with torch.no_grad():
        _, neg_c, _, neg_p = tiny_sd3.encode_prompt("x", None, None, do_classifier_free_guidance=True,
                                                    max_sequence_length=spec(tiny_sd3).max_sequence_length)
    assert torch.equal(c_u, neg_c) and torch.equal(p_u, neg_p)


def test_decode_equals_pipeline_output_for_the_same_final_latent(tiny):
    kw = dict(num_inference_steps=2, height=32, width=32, **_prompt_kwargs(tiny))
    lat = tiny("a red circle", generator=torch.Generator().manual_seed(0), output_type="latent", **kw).images
    img = tiny("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt", **kw).images
    if family_of(tiny) == "flux":
        lat = unpack(lat, 8, 8)
        assert torch.equal(pack(lat), tiny._pack_latents(lat, 1, lat.shape[1], 8, 8))
        assert torch.equal(lat, tiny._unpack_latents(pack(lat), 32, 32, 4))
    out = explore.decode(tiny, lat, output_type="pt")
    assert torch.allclose(out, img, atol=1e-6)


def _one_step_reference(pipe, z_T, prompt, guidance, steps):
    extra = {"sigmas": [1.0, 0.5]} if steps == 2 else {}
    kw = dict(num_inference_steps=steps, **extra, height=32, width=32, guidance_scale=guidance, output_type="latent",
              **_prompt_kwargs(pipe))
    if family_of(pipe) == "flux":
        out = pipe(prompt, latents=pack(z_T), **kw).images
        return unpack(out, 8, 8)
    return pipe(prompt, latents=z_T, **kw).images


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_velocity_matches_the_pipelines_own_sampling_steps(tiny, guidance):
    """Euler from t=1: one step is z - v(z, 1); sigmas [1, 0.5] (shift 1) evaluate at t=1 then t=0.5."""
    torch.manual_seed(0)
    z_T = torch.randn(1, 4, 8, 8)
    c, p = encode_text(tiny, "a red circle")
    v1 = velocity(tiny, z_T, 1.0, c, p, guidance=guidance)
    ref1 = _one_step_reference(tiny, z_T, "a red circle", guidance, 1)
    assert torch.allclose(z_T - v1, ref1, atol=1e-5)
    if family_of(tiny) == "sd3":  # FLUX's dynamic shift moves the second sigma
        z_half = z_T - 0.5 * v1
        v2 = velocity(tiny, z_half, 0.5, c, p, guidance=guidance)
        ref2 = _one_step_reference(tiny, z_T, "a red circle", guidance, 2)
        assert torch.allclose(z_half - 0.5 * v2, ref2, atol=1e-5)


def test_velocity_batches_branches_and_shares_unconditional_rows(tiny_sd3):
    torch.manual_seed(0)
    z = torch.randn(1, 4, 8, 8)
    c, p = encode_text(tiny_sd3, ["a red circle", "a blue circle", "a green square"])
    zs = z.expand(3, -1, -1, -1)
    batched = velocity(tiny_sd3, zs, 0.7, c, p, guidance=5.0)
    shared = velocity(tiny_sd3, zs, 0.7, c, p, guidance=5.0, uncond_groups=[0, 0, 0])
    single = torch.cat([velocity(tiny_sd3, z, 0.7, c[i : i + 1], p[i : i + 1], guidance=5.0) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(shared, single, atol=1e-5)
    assert count_sequences(3, 5.0, "sd3", groups=1) == 4


def test_velocity_counts_one_transformer_call(tiny_sd3, tiny_flux):
    for pipe, guidance in ((tiny_sd3, 4.0), (tiny_flux, 3.5)):
        calls = []
        h = pipe.transformer.register_forward_hook(lambda m, a, o, calls=calls: calls.append(1))
        try:
            c, p = encode_text(pipe, ["a", "b", "c", "d"])
            velocity(pipe, torch.randn(4, 4, 8, 8), torch.tensor([0.1, 0.2, 0.3, 0.4]), c, p, guidance=guidance)
        finally:
            h.remove()
        assert len(calls) == 1


def test_flux_guidance_is_the_distilled_embedding(tiny_flux):
    z = torch.randn(1, 4, 8, 8)
    c, p = encode_text(tiny_flux, "a red circle")
    a = velocity(tiny_flux, z, 0.5, c, p, guidance=1.0)
    b = velocity(tiny_flux, z, 0.5, c, p, guidance=7.0)
    raw = transformer_call(tiny_flux, z, torch.tensor([0.5]), c, p, guidance=torch.tensor([7.0]))
    assert not torch.allclose(a, b) and torch.allclose(b, raw)


def test_t_must_be_a_flow_sigma(tiny_sd3):
    c, p = encode_text(tiny_sd3, "a")
    for bad in (500.0, -0.1, float("nan"), torch.tensor([0.5, float("nan")])):
        with pytest.raises(InputError, match=r"\[0, 1\]"):
            velocity(tiny_sd3, torch.randn(2, 4, 8, 8), bad, c.expand(2, -1, -1), p.expand(2, -1))


def test_unguided_velocity_shortcut_is_the_general_path(tiny_sd3):
    torch.manual_seed(1)
    c, p = encode_text(tiny_sd3, ["a red circle", "a blue square"])
    z = torch.randn(2, 4, 8, 8)
    fast = velocity(tiny_sd3, z, 0.6, c, p, guidance=1.0)  # a number: straight to the transformer
    general = velocity(tiny_sd3, z, 0.6, c, p, guidance=[1.0, 1.0])  # per-row values: the checked path
    assert torch.equal(fast, general)
    with pytest.raises(InputError, match="same batch size"):
        velocity(tiny_sd3, z, 0.6, c[:1], p, guidance=1.0)


def test_compute_dtype_is_the_models_and_follows_a_cast(tiny_sd3):
    tr = tiny_sd3.transformer
    assert compute_dtype(tr) == tr.dtype == torch.float32
    try:
        tr.to(torch.float64)
        assert compute_dtype(tr) == torch.float64  # the remembered dtype is not stale after .to()
    finally:
        tr.to(torch.float32)
    assert compute_dtype(tr) == torch.float32
    assert compute_dtype(tiny_sd3.vae) == tiny_sd3.vae.dtype


def test_encode_shapes_and_equality_with_vae(tiny):
    img = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    jl = explore.encode(tiny, img, "a red circle")
    assert jl.z.shape == (1, 4, 8, 8) and jl.image_size == (32, 32) and jl.prompt == ["a red circle"]
    x = tiny.image_processor.preprocess(img)
    cfg = tiny.vae.config
    ref = (tiny.vae.encode(x).latent_dist.mean - cfg.shift_factor) * cfg.scaling_factor
    assert torch.allclose(jl.z, ref, atol=1e-6)
    both = explore.encode(tiny, [img, img], ["a", "b"])
    assert len(both) == 2 and both[1].prompt == ["b"]


def test_image_inputs_and_modes(tiny_sd3):
    rgb = np.full((32, 32, 3), 200, np.uint8)
    z_rgb = explore.encode(tiny_sd3, rgb, "x").z
    assert torch.allclose(explore.encode(tiny_sd3, Image.fromarray(rgb), "x").z, z_rgb)
    as_tensor = torch.tensor(rgb).permute(2, 0, 1) / 255.0
    assert torch.allclose(explore.encode(tiny_sd3, as_tensor, "x").z, z_rgb, atol=1e-5)
    assert torch.allclose(explore.encode(tiny_sd3, rgb / 255.0, "x").z, z_rgb, atol=1e-5)
    # grayscale converts to RGB; transparent pixels are composited over white
    gray = Image.fromarray(np.full((32, 32), 200, np.uint8), mode="L")
    assert torch.allclose(explore.encode(tiny_sd3, gray, "x").z, z_rgb)
    rgba = np.zeros((32, 32, 4), np.uint8)
    white = explore.encode(tiny_sd3, np.full((32, 32, 3), 255, np.uint8), "x").z
    assert torch.allclose(explore.encode(tiny_sd3, Image.fromarray(rgba, "RGBA"), "x").z, white)


def test_bad_images_get_clear_errors(tiny_sd3, tmp_path):
    with pytest.raises(InputError, match="multiples of 8.*resize='crop'"):
        explore.encode(tiny_sd3, np.zeros((30, 33, 3), np.uint8), "x")
    assert explore.encode(tiny_sd3, np.zeros((30, 33, 3), np.uint8), "x", resize="crop").image_size == (24, 32)
    assert explore.encode(tiny_sd3, np.zeros((30, 33, 3), np.uint8), "x", resize=(32, 32)).image_size == (32, 32)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        explore.encode(tiny_sd3, torch.full((3, 32, 32), 2.0), "x")
    with pytest.raises(InputError, match="NaN"):
        explore.encode(tiny_sd3, np.full((32, 32, 3), np.nan, np.float32), "x")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        explore.encode(tiny_sd3, empty, "x")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="cannot read"):
        explore.encode(tiny_sd3, bad, "x")
    with pytest.raises(InputError, match="prompt is empty"):
        explore.encode(tiny_sd3, np.zeros((32, 32, 3), np.uint8), "   ")
    with pytest.raises(InputError, match="2 images but 3 prompts"):
        explore.encode(tiny_sd3, [np.zeros((32, 32, 3), np.uint8)] * 2, ["a", "b", "c"])


def test_over_long_prompt_warns_with_what_was_kept(tiny_sd3):
    with pytest.warns(UserWarning, match="over the text encoder's limit"):
        encode_text(tiny_sd3, "a very long prompt that goes on and on and on", cache=False)


def test_out_of_memory_splits_the_batch_then_explains(tiny_sd3, monkeypatch):
    import explore.pipeline.latent as L
    from explore.errors import ResourceError
    from explore.pipeline.spec import state

    real = L._transformer_call
    seen = []

    def fake(pipe, z_t, *args):
        seen.append(z_t.shape[0])
        if z_t.shape[0] > 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")
        return real(pipe, z_t, *args)

    monkeypatch.setattr(L, "_transformer_call", fake)
    z = torch.randn(5, 4, 8, 8)
    c, p = encode_text(tiny_sd3, ["a"] * 5)
    with pytest.warns(UserWarning, match="did not fit in memory"):
        v = velocity(tiny_sd3, z, 0.5, c, p, guidance=1.0)
    assert v.shape == (5, 4, 8, 8) and max(seen[1:]) <= 2
    state(tiny_sd3).max_batch.clear()

    def always(pipe, z_t, *args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(L, "_transformer_call", always)
    with pytest.warns(UserWarning), pytest.raises(ResourceError, match="lower the resolution"):
        velocity(tiny_sd3, z[:2], 0.5, c[:2], p[:2], guidance=1.0)
    state(tiny_sd3).max_batch.clear()


def test_vae_runs_one_image_at_a_time_and_a_single_image_out_of_memory_names_it(tiny_sd3, monkeypatch):
    """The VAE sees one image per call (as diffusers' VAE slicing), so an image's pixels (and a source's
    latent) never depend on what else is in the batch; it therefore never needs to split a batch for
    memory, and one image that does not fit is a `ResourceError` naming the VAE."""
    from explore.errors import ResourceError

    vae = tiny_sd3.vae
    real_decode, real_encode = vae.decode, vae.encode
    seen = []

    def decode(latents, *args, **kwargs):
        seen.append(("decode", latents.shape[0]))
        return real_decode(latents, *args, **kwargs)

    def encode(x, *args, **kwargs):
        seen.append(("encode", x.shape[0]))
        return real_encode(x, *args, **kwargs)

    z = torch.randn(3, 4, 8, 8)
    monkeypatch.setattr(vae, "decode", decode)
    monkeypatch.setattr(vae, "encode", encode)
    whole = explore.decode(tiny_sd3, z, output_type="np")
    alone = np.concatenate([explore.decode(tiny_sd3, z[i : i + 1], output_type="np") for i in range(3)])
    assert np.array_equal(whole, alone) and {n for _, n in seen} == {1}
    images = (np.random.default_rng(0).random((3, 32, 32, 3)) * 255).astype(np.uint8)
    lat = encode_image(tiny_sd3, images)
    assert lat.shape == (3, 4, 8, 8) and torch.equal(lat[1:2], encode_image(tiny_sd3, images[1:2]))
    assert {n for _, n in seen} == {1}

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(vae, "decode", oom)
    with pytest.raises(ResourceError, match="VAE decoder"):
        explore.decode(tiny_sd3, z, output_type="np")
