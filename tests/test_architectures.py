"""The architectures beyond tiny SD3 with qk-norm: SD3.5-medium-like dual attention, SD3-medium-like no qk-norm,
FLUX edit behaviour, the full-size configurations (meta device) and, on a CUDA GPU, bf16 and full-size HSDS steps.

The tiny pipelines (`explore.pipeline.tiny`) have the real features at toy widths: ``tiny_sd35`` has a second,
image-only self-attention ``attn2`` in block 0 (MMDiT-X) and RMS qk-norm; ``tiny_sd3_medium`` has no qk-norm
(``norm_q``/``norm_k`` are None). Everything on the CPU runs in seconds; the ``gpu`` tests are skipped without CUDA.
"""

import gc
import inspect

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0

import explore
from explore.editing.api import edit, edit_batch, settings_for
from explore.editing.directions import text_direction
from explore.editing.loop import EditItem, optimise
from explore.editing.objectives import HSDS
from explore.editing.settings import RENDER_SEED_OFFSET
from explore.interp.activations import collect
from explore.interp.attention import (
    JointAttentionProcessor,
    attention_layers,
    attention_map,
    record_attention,
)
from explore.interp.hooks import hooks, sites
from explore.pipeline.architectures import ARCHITECTURES, transformer_params
from explore.pipeline.families import by_name
from explore.pipeline.latent import decode, encode, encode_text, velocity
from explore.pipeline.sampling import render
from explore.pipeline.spec import family_of, spec

PROMPT = "a Red circle"  # short: the tiny tokenizers keep 16 characters
NEW_SD3 = ["tiny-sd3.5", "tiny-sd3-medium"]


@pytest.fixture(scope="module")
def tiny_sd35():
    from explore.pipeline.tiny import tiny_sd35

    return tiny_sd35(seed=0)


@pytest.fixture(scope="module")
def tiny_sd3_medium():
    from explore.pipeline.tiny import tiny_sd3_medium

    return tiny_sd3_medium(seed=0)


@pytest.fixture(params=NEW_SD3)
def new_sd3(request, tiny_sd35, tiny_sd3_medium):
    return tiny_sd35 if request.param == "tiny-sd3.5" else tiny_sd3_medium


def _image(seed=1):
    return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _case(pipe):
    """A source, an edit direction and two preserved Directions whose prompts fit the 16-character tokenizers."""
    src = encode(pipe, _image(), "a red circle")
    d = text_direction(pipe, "red", "blue", templates=["a {} circle", "a {} ball"])
    keep = [text_direction(pipe, "circle", "square", templates=["a red {}"]),
            text_direction(pipe, "small", "large", templates=["a {} ball"])]
    return src, d, keep


# ---------------------------------------------------------------------------------------------
# The tiny builders
# ---------------------------------------------------------------------------------------------


def test_tiny_builders_have_the_architecture_features(tiny_sd35, tiny_sd3_medium, tiny_sd3):
    b35 = tiny_sd35.transformer.transformer_blocks
    assert tiny_sd35.transformer.config.dual_attention_layers == (0,)
    assert b35[0].use_dual_attention and isinstance(b35[0].attn2, Attention) and b35[1].attn2 is None
    assert b35[0].attn2.norm_q is not None and b35[0].attn.norm_q is not None  # RMS qk-norm in both attentions
    for block in tiny_sd3_medium.transformer.transformer_blocks:
        assert block.attn.norm_q is None and block.attn.norm_k is None and block.attn.norm_added_q is None
        assert block.attn2 is None
    assert tiny_sd3_medium.transformer.config.qk_norm is None
    assert {spec(p).model_id for p in (tiny_sd3, tiny_sd35, tiny_sd3_medium)} == {"tiny-sd3", "tiny-sd3.5",
                                                                                     "tiny-sd3-medium"}
    for p in (tiny_sd35, tiny_sd3_medium):
        assert family_of(p) == "sd3" and spec(p).resolution == 32 and not p.transformer.training
    # "tiny-sd3" is the builder other tests were written against: its weights are pinned
    w = sum(float(x.detach().double().abs().sum()) for x in tiny_sd3.transformer.parameters())
    assert w == pytest.approx(2280.8933494416415, rel=1e-9)


@pytest.mark.parametrize("name", NEW_SD3)
def test_new_tiny_names_load_seeded(name):
    a, b, c = (explore.load_pipeline(name, seed=s) for s in (3, 3, 4))
    assert spec(a).model_id == name
    wa, wb, wc = (next(p.transformer.parameters()) for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert name in explore.pipeline.load.TINY


# ---------------------------------------------------------------------------------------------
# (a) encode / edit / attention / probe on SD3.5-medium-like and SD3-medium-like pipelines
# ---------------------------------------------------------------------------------------------


def test_encode_is_the_pipelines_encode_prompt_and_vae(new_sd3):
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    lat = encode(new_sd3, image, PROMPT)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 * 2 - 1  # the image processor's [-1, 1]
    with torch.no_grad():
        ref_c, _, ref_p, _ = new_sd3.encode_prompt([PROMPT], None, None, do_classifier_free_guidance=False,
                                                   max_sequence_length=spec(new_sd3).max_sequence_length)
        mean = new_sd3.vae.encode(x).latent_dist.mean
    cfg = new_sd3.vae.config
    assert torch.equal(lat.c, ref_c) and torch.equal(lat.p, ref_p)
    assert torch.allclose(lat.z, (mean - cfg.shift_factor) * cfg.scaling_factor, atol=1e-5)  # conv threads
    assert lat.z.shape == (1, 4, 8, 8) and lat.model_id == spec(new_sd3).model_id


def _strength_zero_is_the_reconstruction(pipe, src, d, keep, steps=2, seed=3):
    """Strength 0 keeps z0 bit for bit and its rendered latent is bit for bit the render of (z0, c, p) with the
    reconstruction's seed; the reconstruction item of a strength-1 edit (batched with the edit) equals it up to
    batched-kernel rounding, and so do the decoded images (decode batches differ: at most 1 grey level)."""
    r0 = edit(pipe, src, d, 0.0, "hsds", preserve=keep, seed=seed, steps=steps)
    assert torch.equal(r0.latent.z, src.z) and torch.equal(r0.latent.c, src.c.float())
    assert torch.count_nonzero(r0.dz) == 0 and r0.trace["t"] == []
    # the loop itself (not only the skip of fixed points) keeps z0: identical branches are evaluated once
    z, _, _ = optimise(pipe, [EditItem(src, d, 0.0, keep, seed)], HSDS(),
                       settings_for(pipe, "hsds", steps=steps), skip_fixed_points=False)
    assert torch.equal(z, src.z.float())
    s = settings_for(pipe, "hsds")
    x = render(pipe, src.z.float(), src.c.float(), src.p.float(), s["t_render"], [seed + RENDER_SEED_OFFSET],
               s["guidance"])
    alone = edit_batch(pipe, [src], [d], [0.0], "hsds", keep, seeds=[seed], steps=steps)
    assert torch.equal(alone["z"], src.z.float()) and torch.equal(alone["x"], x)
    assert np.abs(np.asarray(r0.image, int) - np.asarray(decode(pipe, x)[0], int)).max() <= 1
    # the reconstruction item: [1.0, 0.0] in one batch, item 2 against [0.0] alone
    both = edit_batch(pipe, [src, src], [d, d], [1.0, 0.0], "hsds", keep, seeds=[seed] * 2, steps=steps)
    assert torch.equal(both["z"][1], alone["z"][0]) and not torch.equal(both["z"][0], alone["z"][0])
    assert torch.allclose(both["x"][1], alone["x"][0], atol=1e-5)
    r1 = edit(pipe, src, d, 1.0, "hsds", preserve=keep, seed=seed, steps=steps)
    assert np.abs(np.asarray(r1.reconstruction, int) - np.asarray(r0.image, int)).max() <= 1
    return r1


def test_hsds_edit_on_the_new_sd3_pipelines(new_sd3):
    src, d, keep = _case(new_sd3)
    r1 = _strength_zero_is_the_reconstruction(new_sd3, src, d, keep)
    assert r1.image.size == (32, 32) and r1.dz.shape == (4, 8, 8) and torch.isfinite(r1.dz).all()
    assert torch.count_nonzero(r1.dz) > 0 and len(r1.trace["t"]) == 2
    assert all(0 < x <= 1 for x in r1.trace["removed"])


@pytest.mark.parametrize("chunk_elements", [2**26, 100])
def test_explicit_processor_reproduces_every_stock_attention(new_sd3, chunk_elements):
    """Every Attention module, including SD3.5's image-only ``attn2`` (no text stream: encoder_hidden_states=None)."""
    c, p = encode_text(new_sd3, [PROMPT, "a blue square"])
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 0.8])
    base = velocity(new_sd3, z, t, c, p, guidance=2.0)
    mods = [m for m in new_sd3.transformer.modules() if isinstance(m, Attention)]
    n_dual = len(new_sd3.transformer.config.dual_attention_layers)
    assert len(mods) == len(new_sd3.transformer.transformer_blocks) + n_dual
    assert all(isinstance(m.processor, JointAttnProcessor2_0) for m in mods)
    before = [m.processor for m in mods]
    try:
        for m in mods:
            m.set_processor(JointAttentionProcessor(chunk_elements=chunk_elements))
        explicit = velocity(new_sd3, z, t, c, p, guidance=2.0)
    finally:
        for m, proc in zip(mods, before):
            m.set_processor(proc)
    assert (explicit - base).abs().max() < 1e-5
    with record_attention(new_sd3, chunk_elements=chunk_elements) as store:
        recorded = velocity(new_sd3, z, t, c, p, guidance=2.0)
    assert (recorded - base).abs().max() < 1e-5
    assert set(store.layers()) == set(attention_layers(new_sd3))
    assert all(a is b for a, b in zip((m.processor for m in mods), before))  # restored, attn2 included


def test_attention_map_on_the_new_sd3_pipelines(new_sd3):
    latent = encode(new_sd3, _image(), PROMPT)
    maps = attention_map(new_sd3, latent, "red", t=[0.25, 0.75], seed=3)
    assert maps.grid == (4, 4) and maps.image_size == (32, 32) and maps.timesteps() == [0.25, 0.75]
    assert set(maps.layers()) == {"transformer_blocks.0", "transformer_blocks.1"}
    for m in maps.maps.values():
        assert m.shape == (4, 4) and np.isfinite(m).all() and (m >= 0).all() and 0 < m.sum() < 16
    assert np.isclose(maps.mean().sum(), 1.0, atol=1e-5)
    with record_attention(new_sd3, heads="all", row_sums=True) as store:  # the full softmax rows sum to one
        velocity(new_sd3, latent.z, 0.5, latent.c, latent.p, guidance=1.0)
    for key in store:
        assert torch.allclose(store.row_sums[key], torch.ones(1, 2, 16), atol=1e-5)


def test_activations_and_hooks_on_the_new_sd3_pipelines(new_sd3):
    assert sites(new_sd3) == ["transformer_blocks.0.img", "transformer_blocks.0.txt", "transformer_blocks.1.img"]
    images = torch.stack([_image(s) for s in range(3)])
    ds = collect(new_sd3, images, sites=["transformer_blocks.0.img", "transformer_blocks.0.txt",
                                         "transformer_blocks.1.img"], timesteps=(0.25, 0.75), prompts=PROMPT,
                 batch_size=2, progress=False)
    assert len(ds) == 3 and ds.timesteps == [0.25, 0.75]
    for s in ds.sites:
        for t in ds.timesteps:
            x = ds.get(s, t)
            assert x.shape == (3, 16) and x.dtype == np.float32 and np.isfinite(x).all()
    assert not np.allclose(ds.get("transformer_blocks.0.img", 0.25)[0], ds.get("transformer_blocks.0.img", 0.25)[1])
    # block 0's image output (after the dual attention, on SD3.5) is an intervention point like any other
    latent = encode(new_sd3, _image(), PROMPT)
    base = velocity(new_sd3, latent.z, 0.5, latent.c, latent.p, guidance=1.0)
    with hooks(new_sd3, {"transformer_blocks.0.img": lambda x, site: torch.zeros_like(x)}):
        zeroed = velocity(new_sd3, latent.z, 0.5, latent.c, latent.p, guidance=1.0)
    assert not torch.allclose(base, zeroed)


# ---------------------------------------------------------------------------------------------
# (b) FLUX edits: behaviour, not timing
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flux_case(tiny_flux):
    return _case(tiny_flux)


def test_flux_strength_zero_is_the_reconstruction(tiny_flux, flux_case):
    src, d, keep = flux_case
    r1 = _strength_zero_is_the_reconstruction(tiny_flux, src, d, keep)
    assert torch.count_nonzero(r1.dz) > 0 and torch.isfinite(r1.dz).all()


def _flux_step(pipe, src, d, keep, protect: bool):
    """The StepState of one real HSDS step (finite-difference columns) and the g the loop used."""
    seen = {}

    class Spy(HSDS):
        def gradient(self, s):
            g, diag = super().gradient(s)
            seen.update(state=s, g=g, diag=diag)
            return g, diag

    optimise(pipe, [EditItem(src, d, 1.0, keep, 0)], Spy(), settings_for(pipe, "hsds", steps=1, protect_edit=protect))
    return seen["state"], seen["g"]


def _cosines(x: torch.Tensor, cols: torch.Tensor) -> list[float]:
    return [float(x @ h) / float(x.norm() * h.norm()) for h in cols]


def test_flux_hsds_edit_part_is_orthogonal_to_the_preserved_columns(tiny_flux, flux_case):
    src, d, keep = flux_case
    state, g_loop = _flux_step(tiny_flux, src, d, keep, protect=False)
    g, diag = HSDS().gradient(state)
    assert torch.equal(g, g_loop)
    h = state.v["h"][0].flatten(1)
    assert h.shape[0] == len(keep) and (h.norm(dim=1) > 0).all()
    g_rec = state.v["src"] - state.v["src_hat"] + (state.z - state.z0)
    kept = (g - g_rec)[0].flatten()
    g_edit = (state.v["tgt"] - state.v["src"])[0].flatten()
    assert max(abs(x) for x in _cosines(kept, h)) < 1e-5  # cos(g - g_rec, h_j) ≈ 0 for every column j
    assert max(abs(x) for x in _cosines(g_edit, h)) > 1e-2  # ... which the raw edit part is not
    removed = g_edit - kept
    assert float(diag["removed"][0]) == pytest.approx(float(removed.norm() / g_edit.norm()), rel=1e-4)
    assert 0 < float(diag["removed"][0]) <= 1


def test_flux_hsds_with_protect_edit_removes_nothing_along_the_edit_column(tiny_flux, flux_case):
    """protect_edit (the hsds default): the columns are first made orthogonal to the edit's own column h_e, so the
    edit part is orthogonal to those protected columns, not to the raw h_j, and keeps its component along h_e."""
    src, d, keep = flux_case
    state, _ = _flux_step(tiny_flux, src, d, keep, protect=True)
    g, diag = HSDS().gradient(state)
    g_rec = state.v["src"] - state.v["src_hat"] + (state.z - state.z0)
    kept = (g - g_rec)[0].flatten()
    g_edit = (state.v["tgt"] - state.v["src"])[0].flatten()
    u = state.v["h_edit"][0].flatten()
    u = u / u.norm()
    h = state.v["h"][0].flatten(1)
    h_protected = h - (h @ u)[:, None] * u[None, :]
    assert max(abs(x) for x in _cosines(kept, h_protected)) < 1e-5
    assert float(kept @ u) == pytest.approx(float(g_edit @ u), rel=1e-4, abs=1e-6 * float(g_edit.norm()))
    assert 0 < float(diag["removed"][0]) <= 1


@pytest.mark.filterwarnings("ignore:prompt is")  # the default templates overflow the 16-token encoders
def test_flux_edit_trace_removes_a_share_with_preserved_directions(tiny_flux, flux_case):
    src, d, keep = flux_case
    r = edit(tiny_flux, src, d, 1.0, "hsds", preserve=keep, steps=3)
    assert len(r.trace["removed"]) == 3 and all(0 < x <= 1 for x in r.trace["removed"])
    # word pairs resolve to text directions too; and without preserved directions nothing is removed
    pairs = edit(tiny_flux, src, d, 1.0, "hsds", preserve=[("circle", "square")], steps=1)
    assert 0 < pairs.trace["removed"][0] <= 1
    none = edit(tiny_flux, src, d, 1.0, "hsds", preserve=[], steps=2)
    assert none.trace["removed"] == [0.0, 0.0]


def test_flux_finite_difference_columns_match_the_exact_jvp(tiny_flux, flux_case):
    src, d, keep = flux_case
    cols = {}
    for name, hess, delta in (("fd", "finite-difference", 1e-3), ("jvp", "jvp", 0.1)):

        class Spy(HSDS):
            def gradient(self, s, name=name):
                cols[name] = s.v["h"][0].clone()
                return super().gradient(s)

        optimise(tiny_flux, [EditItem(src, d, 1.0, keep, 0)], Spy(),
                 settings_for(tiny_flux, "hsds", steps=1, hessian=hess, delta=delta))
    assert cols["fd"].shape == cols["jvp"].shape == (2, 4, 8, 8)
    assert (cols["fd"] - cols["jvp"]).norm() / cols["jvp"].norm() < 0.02


# ---------------------------------------------------------------------------------------------
# (c) The full-size configurations against the published transformer/config.json (meta device)
# ---------------------------------------------------------------------------------------------

# Transcribed from the published diffusers `transformer/config.json` of each hub repo (the repos are gated; the
# values were read from public copies of those files: re-uploads whose `_name_or_path` is the official snapshot,
# and the diffusers conversion scripts). Keys a file does not have take the class default in `from_pretrained`,
# and `test_configs_match_the_published_ones` checks that every other argument is at that default.
PUBLISHED = {
    # stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json (_diffusers_version 0.29/0.30.dev0;
    # copies: hf.co/bhoomikagp/sd3-interior-model, snapshot ea42f8ce of the official repo). The original file has
    # no qk_norm / dual_attention_layers keys (re-saves by newer diffusers add their defaults: null, []).
    "sd3-medium": {"attention_head_dim": 64, "caption_projection_dim": 1536, "in_channels": 16,
                   "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24, "out_channels": 16,
                   "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "sample_size": 128},
    # stabilityai/stable-diffusion-3.5-medium, transformer/config.json (_diffusers_version 0.31.0.dev0; copies:
    # hf.co/frankjoshua/stable-diffusion-3.5-medium, hf.co/Prgckwb/trpfrog-sd3.5-medium from snapshot b940f670).
    # diffusers' scripts/convert_sd3_to_diffusers.py: "sd3.5 2b use pos_embed_max_size=384", attn2 in 0..12.
    "sd3.5-medium": {"attention_head_dim": 64, "caption_projection_dim": 1536,
                     "dual_attention_layers": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "in_channels": 16,
                     "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24, "out_channels": 16,
                     "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
                     "qk_norm": "rms_norm", "sample_size": 128},
    # stabilityai/stable-diffusion-3.5-large, transformer/config.json (_diffusers_version 0.31.0.dev0, "SD3.5 Large
    # Public Release"; copy: hf.co/frankjoshua/stable-diffusion-3.5-large). No dual_attention_layers key.
    "sd3.5-large": {"attention_head_dim": 64, "caption_projection_dim": 2432, "in_channels": 16,
                    "joint_attention_dim": 4096, "num_attention_heads": 38, "num_layers": 38, "out_channels": 16,
                    "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "qk_norm": "rms_norm",
                    "sample_size": 128},
    # black-forest-labs/FLUX.1-dev, transformer/config.json (_diffusers_version 0.30.0.dev0; copies from snapshots
    # 0ef5fff7 / 01aa605f of the official repo: hf.co/markury/flux-fused-v19, hf.co/Disty0/FLUX.1-dev-qint8).
    # No out_channels key (default None: = in_channels).
    "flux-dev": {"attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": True,
                 "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
                 "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768},
    # FLUX.2: diffusers' scripts/convert_flux2_to_diffusers.py, get_flux2_transformer_config (the script that wrote
    # the hub's transformer/config.json); the klein heads / layers / joint width also match the klein config.json
    # files found in public code.
    "flux2-dev": {"attention_head_dim": 128, "axes_dims_rope": [32, 32, 32, 32], "eps": 1e-6, "guidance_embeds": True,
                  "in_channels": 128, "joint_attention_dim": 15360, "mlp_ratio": 3.0, "num_attention_heads": 48,
                  "num_layers": 8, "num_single_layers": 48, "patch_size": 1, "rope_theta": 2000,
                  "timestep_guidance_channels": 256},
    "flux2-klein-4b": {"attention_head_dim": 128, "axes_dims_rope": [32, 32, 32, 32], "eps": 1e-6,
                       "guidance_embeds": False, "in_channels": 128, "joint_attention_dim": 7680, "mlp_ratio": 3.0,
                       "num_attention_heads": 24, "num_layers": 5, "num_single_layers": 20, "patch_size": 1,
                       "rope_theta": 2000, "timestep_guidance_channels": 256},
    "flux2-klein-9b": {"attention_head_dim": 128, "axes_dims_rope": [32, 32, 32, 32], "eps": 1e-6,
                       "guidance_embeds": False, "in_channels": 128, "joint_attention_dim": 12288, "mlp_ratio": 3.0,
                       "num_attention_heads": 32, "num_layers": 8, "num_single_layers": 24, "patch_size": 1,
                       "rope_theta": 2000, "timestep_guidance_channels": 256},
    # Qwen/Qwen-Image transformer/config.json (quoted verbatim in kohya-ss/musubi-tuner,
    # src/musubi_tuner/qwen_image/qwen_image_model.py; its pooled_projection_dim key is not an argument of the class)
    "qwen-image": {"attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": False,
                   "in_channels": 64, "joint_attention_dim": 3584, "num_attention_heads": 24, "num_layers": 60,
                   "out_channels": 16, "patch_size": 2},
    # Tongyi-MAI/Z-Image-Turbo transformer/config.json (quoted verbatim in public code)
    "z-image-turbo": {"all_f_patch_size": [1], "all_patch_size": [2], "axes_dims": [32, 48, 48],
                      "axes_lens": [1536, 512, 512], "cap_feat_dim": 2560, "dim": 3840, "in_channels": 16,
                      "n_heads": 30, "n_kv_heads": 30, "n_layers": 30, "n_refiner_layers": 2, "norm_eps": 1e-05,
                      "qk_norm": True, "rope_theta": 256.0, "t_scale": 1000.0},
}

# Exact counts reported independently of this code for the released weights: FLUX.1-dev 11,901,408,320 (the hub's
# safetensors parameter total, quoted e.g. as "totalParams: 11901408320"); SD3-medium 2,028,328,000 (the
# "number of parameters" a profiler logged for the loaded stable-diffusion-3-medium transformer). None found for
# the SD3.5 transformers: those are checked against params_b only. Qwen-Image 20,430,401,088 and Z-Image-Turbo
# 6,154,908,736: the hub's safetensors totals ("totalParams") as quoted in public model catalogues (Qwen-Image-2512,
# same architecture). FLUX.2 is published only rounded (BFL: [dev] "32B", [klein] "4B" and "9B"): PUBLISHED_SIZE_B.
PUBLISHED_PARAMS = {"flux-dev": 11_901_408_320, "sd3-medium": 2_028_328_000,
                    "qwen-image": 20_430_401_088, "z-image-turbo": 6_154_908_736}
PUBLISHED_SIZE_B = {"flux2-dev": 32, "flux2-klein-4b": 4, "flux2-klein-9b": 9, "qwen-image": 20, "z-image-turbo": 6}


def _plain(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def test_every_architecture_has_a_published_config():
    assert set(ARCHITECTURES) == set(PUBLISHED)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_configs_match_the_published_ones(name):
    arch = ARCHITECTURES[name]
    cls = by_name(arch["family"]).transformer_class()
    with torch.device("meta"):
        tr = cls(**arch["transformer"])
    cfg = {k: _plain(v) for k, v in tr.config.items() if not k.startswith("_")}
    published = PUBLISHED[name]
    assert {k: cfg[k] for k in published} == {k: _plain(v) for k, v in published.items()}
    defaults = {k: _plain(p.default) for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    assert {k: cfg[k] for k in defaults if k not in published} == {k: v for k, v in defaults.items()
                                                                  if k not in published}
    assert next(tr.parameters()).device.type == "meta"


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_counts_round_to_params_b(name):
    n = transformer_params(name)
    params_b = ARCHITECTURES[name]["params_b"]
    decimals = len(repr(float(params_b)).split(".")[1])
    assert round(n / 1e9, decimals) == params_b, f"{name}: {n:,} parameters, params_b says {params_b}"
    if name in PUBLISHED_PARAMS:
        assert n == PUBLISHED_PARAMS[name]
    if name in PUBLISHED_SIZE_B:
        assert round(n / 1e9) == PUBLISHED_SIZE_B[name], f"{name}: {n:,}, published {PUBLISHED_SIZE_B[name]}B"

# ---------------------------------------------------------------------------------------------
# (d) On a CUDA GPU: bf16 against fp32, and one HSDS step of each full-size architecture in its memory budget
# ---------------------------------------------------------------------------------------------

# Final images in [0, 1]. bf16 keeps 8 mantissa bits (relative rounding 2**-9 ≈ 0.2 % per op), and the edit goes
# through 2 optimisation steps, a render and a bf16 VAE decode. The same comparison run with bf16 on the CPU (same
# fp32 accumulation in the matmuls) gave mean |Δ| 0.003-0.005 for the four tiny pipelines and cos(dz) ≥ 0.98.
# 0.02 (5 grey levels of 255 on average) leaves 4-6x headroom for the GPU's other kernels (cuBLAS, flash SDPA,
# TF32 convolutions in the fp32 run) and still fails a cast that loses the conditioning or the latent; the cosine
# bound 0.8 on dz (the optimisation itself, before the render) does the same for the edit direction.
BF16_IMAGE_TOL = 0.02
BF16_DZ_COSINE = 0.8


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-sd3.5", "tiny-sd3-medium", "tiny-flux"])
def test_tiny_bf16_edit_matches_fp32_on_cuda(name):
    rng = np.random.default_rng(0)
    image = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = explore.load_pipeline(name, device="cuda", dtype=dtype)
        src = encode(pipe, image, "a red circle")
        d = text_direction(pipe, "red", "blue", templates=["a {} circle", "a {} ball"])
        keep = [text_direction(pipe, "circle", "square", templates=["a red {}"])]
        r = edit(pipe, src, d, 1.0, "hsds", preserve=keep, seed=0, steps=2)
        out[dtype] = (np.asarray(r.image, np.float32) / 255, r.dz.float().cpu())
    (img32, dz32), (img16, dz16) = out[torch.float32], out[torch.bfloat16]
    assert np.abs(img32 - img16).mean() < BF16_IMAGE_TOL
    cos = float((dz32.flatten() @ dz16.flatten()) / (dz32.norm() * dz16.norm()))
    assert cos > BF16_DZ_COSINE


# Peak torch.cuda.max_memory_allocated from before the pipeline is built (weights included) to the end of an HSDS
# step at 1024² with 3 preserved directions, in GB (1e9 bytes). Two steps run: step 1 is cheaper (z = z0, so the
# ẑ_t rows are shared with z_t), step 2 sends the full steady-state batch (SD3 with CFG: 3 + 3 + 1 conditional rows
# and 2 unconditional ones; FLUX: 7 rows), which is the step whose memory matters. bf16 weights: SD3-medium 4.1 GB,
# SD3.5-medium 4.5 GB (same class: 24 GB), SD3.5-large 16.1 GB, FLUX.1-dev 23.8 GB (+ VAE, small stand-in encoders).
MEMORY_BUDGET_GB = {"sd3-medium": 24, "sd3.5-medium": 24, "sd3.5-large": 48, "flux-dev": 80}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(MEMORY_BUDGET_GB))
def test_one_full_size_hsds_step_fits_its_memory_budget(name):
    from explore.pipeline.architectures import architecture

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    pipe = architecture(name, device="cuda", dtype=torch.bfloat16)
    try:
        rng = np.random.default_rng(0)
        src = encode(pipe, (rng.random((1024, 1024, 3)) * 255).astype(np.uint8), "a photo of a red object")
        assert src.z.shape[-2:] == (128, 128)
        templates = ["a photo of a {} object"]
        d = text_direction(pipe, "red", "blue", templates=templates)
        keep = [text_direction(pipe, a, b, templates=templates)
                for a, b in [("circle", "square"), ("small", "large"), ("left", "right")]]
        # random weights: the size of the update means nothing, so the divergence guard is off (NaN still raises)
        settings = settings_for(pipe, "hsds", steps=2, max_dz=1e30)
        z, trace, sequences = optimise(pipe, [EditItem(src, d, 1.0, keep, 0)], HSDS(), settings)
        torch.cuda.synchronize()
        peak_gb = torch.cuda.max_memory_allocated() / 1e9
        assert z.shape == src.z.shape and torch.isfinite(z).all() and len(trace["t"]) == 2 and sequences > 0
        assert peak_gb < MEMORY_BUDGET_GB[name], f"{name}: peak {peak_gb:.1f} GB > {MEMORY_BUDGET_GB[name]} GB"
    finally:
        del pipe
        gc.collect()
        torch.cuda.empty_cache()
