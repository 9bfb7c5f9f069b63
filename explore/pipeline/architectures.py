"""Full-size architectures with random weights: SD3-medium, SD3.5-large, SD3.5-medium, FLUX.1-dev, FLUX.2
[dev] and [klein] 4B / 9B, Qwen-Image, Z-Image-Turbo.

Speed and memory do not depend on weight values, so benchmarks and GPU tests build the published
transformer and VAE configurations with random weights, directly on the target device in the
target dtype (under ``torch.device(device)`` with that default dtype: never fp32 on the CPU first).
The text encoders are tiny stand-ins with the real output widths (CLIP-L 768, CLIP-G 1280, T5
4096; the LLM encoders' hidden width: Qwen2.5-VL-7B 3584, Qwen3-4B 2560, Qwen3-8B 4096, Mistral-Small-3
5120) and the real token counts (77 CLIP tokens, 256 T5 tokens for SD3, 512 for FLUX and the LLM
encoders), so the transformer sees sequences of the true length; their outputs are meaningless.

Where a configuration comes from is written beside it; tests/test_architectures.py checks each against
the published ``transformer/config.json`` and the parameter count against the published size.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from ..errors import InputError
from .families import by_name
from .families.flux import Flux
from .families.flux2 import FLUX2_DEV, Flux2
from .families.qwenimage import QwenImage
from .families.sd3 import SD3
from .families.zimage import ZImage
from .spec import ModelSpec, attach_spec
from .tiny import clip_tokenizer, t5_tokenizer

SD3_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=16, norm_num_groups=32, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
)


def _flux2(double: int, single: int, heads: int, joint: int, guidance_embeds: bool) -> dict:
    """A FLUX.2 transformer config (what diffusers' convert_flux2_to_diffusers.py writes; the rest is shared)."""
    return dict(patch_size=1, in_channels=128, num_layers=double, num_single_layers=single, attention_head_dim=128,
                num_attention_heads=heads, joint_attention_dim=joint, timestep_guidance_channels=256, mlp_ratio=3.0,
                axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6, guidance_embeds=guidance_embeds)


# Text encoders' parameters (for memory estimates: they are loaded beside the transformer), counted on the
# meta device from their published configs: CLIP-L with projection 123,650,304 (without: 123,060,480), CLIP-G
# 694,659,840, the T5-XXL encoder 4,762,310,656; Qwen3-4B 4,022,468,096, Qwen3-8B 8,190,735,360, Qwen2.5-VL-7B
# 8,292,166,656. Mistral-Small-3.2-24B (FLUX.2 [dev]): its published size, 24B.
SD3_TEXT = 123_650_304 + 694_659_840 + 4_762_310_656
FLUX_TEXT = 123_060_480 + 4_762_310_656

ARCHITECTURES: dict[str, dict] = {
    "sd3-medium": {
        "hub": ("stabilityai/stable-diffusion-3-medium-diffusers",),
        "family": SD3.name,
        "transformer": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192),
        "vae": dict(SD3_VAE, scaling_factor=1.5305, shift_factor=0.0609),
        "text": {"clip_l": 768, "clip_g": 1280, "t5": 4096, "max_sequence_length": 256, "encoder_params": SD3_TEXT},
        "sampler": {"steps": 28, "guidance": 7.0, "shift": 3.0},
        "params_b": 2.03,
    },
    "sd3.5-medium": {
        "hub": ("stabilityai/stable-diffusion-3.5-medium",),
        "family": SD3.name,
        "transformer": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                            dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
        "vae": dict(SD3_VAE, scaling_factor=1.5305, shift_factor=0.0609),
        "text": {"clip_l": 768, "clip_g": 1280, "t5": 4096, "max_sequence_length": 256, "encoder_params": SD3_TEXT},
        "sampler": {"steps": 40, "guidance": 4.5, "shift": 3.0},
        "params_b": 2.24,
    },
    "sd3.5-large": {
        "hub": ("stabilityai/stable-diffusion-3.5-large",),
        "family": SD3.name,
        "transformer": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                            num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
                            qk_norm="rms_norm"),
        "vae": dict(SD3_VAE, scaling_factor=1.5305, shift_factor=0.0609),
        "text": {"clip_l": 768, "clip_g": 1280, "t5": 4096, "max_sequence_length": 256, "encoder_params": SD3_TEXT},
        "sampler": {"steps": 28, "guidance": 3.5, "shift": 3.0},
        "params_b": 8.06,
    },
    "flux-dev": {
        "hub": ("black-forest-labs/FLUX.1-dev",),
        "family": Flux.name,
        "transformer": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                            pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        "vae": dict(SD3_VAE, scaling_factor=0.3611, shift_factor=0.1159),
        "text": {"clip_l": 768, "t5": 4096, "max_sequence_length": 512, "encoder_params": FLUX_TEXT},
        "sampler": {"steps": 28, "guidance": 3.5},
        "params_b": 11.9,
    },
    # FLUX.2: diffusers' scripts/convert_flux2_to_diffusers.py (get_flux2_transformer_config); the VAE is
    # AutoencoderKLFlux2's defaults (what that script instantiates). Text: 3 stacked hidden layers of the
    # LLM (joint_attention_dim = 3 x its width).
    "flux2-dev": {
        "hub": ("black-forest-labs/FLUX.2-dev",),
        "family": FLUX2_DEV.name,
        "transformer": _flux2(8, 48, 48, 15360, guidance_embeds=True),
        "vae": {},
        "text": {"width": 5120, "max_sequence_length": 512, "encoder_params": 24.0e9},
        "sampler": dict(FLUX2_DEV.default_sampler),
        "params_b": 32.2,
    },
    "flux2-klein-4b": {
        "hub": ("black-forest-labs/FLUX.2-klein-4B",),
        "family": Flux2.name,
        "transformer": _flux2(5, 20, 24, 7680, guidance_embeds=False),
        "vae": {},
        "text": {"width": 2560, "max_sequence_length": 512, "encoder_params": 4_022_468_096},
        "distilled": True,
        "sampler": {"steps": 4, "guidance": 1.0},
        "params_b": 3.9,
    },
    "flux2-klein-9b": {
        "hub": ("black-forest-labs/FLUX.2-klein-9B",),
        "family": Flux2.name,
        "transformer": _flux2(8, 24, 32, 12288, guidance_embeds=False),
        "vae": {},
        "text": {"width": 4096, "max_sequence_length": 512, "encoder_params": 8_190_735_360},
        "distilled": True,
        "sampler": {"steps": 4, "guidance": 1.0},
        "params_b": 9.1,
    },
    # Qwen/Qwen-Image transformer/config.json and vae/config.json (both equal diffusers' class defaults)
    "qwen-image": {
        "hub": ("Qwen/Qwen-Image",),
        "family": QwenImage.name,
        "transformer": dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                            axes_dims_rope=(16, 56, 56)),
        "vae": {},
        "text": {"width": 3584, "max_sequence_length": 512, "encoder_params": 8_292_166_656},
        "sampler": dict(QwenImage.default_sampler),
        "params_b": 20.4,
    },
    # Tongyi-MAI/Z-Image-Turbo transformer/config.json; its VAE is FLUX.1's
    "z-image-turbo": {
        "hub": ("Tongyi-MAI/Z-Image-Turbo",),
        "family": ZImage.name,
        "transformer": dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
                            n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True,
                            cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0, axes_dims=(32, 48, 48),
                            axes_lens=(1536, 512, 512)),
        "vae": dict(SD3_VAE, scaling_factor=0.3611, shift_factor=0.1159),
        "text": {"width": 2560, "max_sequence_length": 512, "encoder_params": 4_022_468_096},
        "sampler": dict(ZImage.default_sampler),
        "params_b": 6.15,
    },
}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


def _stand_in_clip(hidden: int, projection: bool, vocab: int):
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=8 if hidden % 8 == 0 else 1, max_position_embeddings=77,
                         projection_dim=hidden, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _stand_in_t5(d_model: int, vocab: int):
    cfg = T5Config(vocab_size=vocab, d_model=d_model, d_kv=64, d_ff=64, num_layers=1, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg)


def transformer_params(name: str) -> int:
    """Parameter count of an architecture's transformer (built on the meta device: no memory)."""
    arch = _get(name)
    with torch.device("meta"):
        tr = _transformer(arch)
    return sum(p.numel() for p in tr.parameters())


def _get(name: str) -> dict:
    if name not in ARCHITECTURES:
        raise InputError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def _transformer(arch: dict):
    return by_name(arch["family"]).transformer_class()(**arch["transformer"])


def architecture(name: str, device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A pipeline with the published transformer and VAE of ``name`` and random weights (see module doc)."""
    arch = _get(name)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device='cuda' but no CUDA GPU is visible; use device='cpu' (slow) or a GPU machine")
    torch.manual_seed(seed)
    text = arch["text"]
    tokenizers = {"clip_tokenizer": clip_tokenizer(model_max_length=77),
                  "t5_tokenizer": t5_tokenizer(model_max_length=text["max_sequence_length"])}
    with device, _default_dtype(dtype):
        transformer = _transformer(arch)
        vae = by_name(arch["family"]).vae_class()(**arch["vae"])

        def stand_ins(kind: str, width: int | None = None, projection: bool = False):
            if kind in tokenizers:
                return tokenizers[kind]
            if kind == "clip":
                return _stand_in_clip(width, projection, len(tokenizers["clip_tokenizer"]))
            return _stand_in_t5(width, len(tokenizers["t5_tokenizer"]))

        pipe, res = by_name(arch["family"]).random_pipeline(arch, transformer, vae, stand_ins)
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.eval()
            m.requires_grad_(False)
    attach_spec(pipe, ModelSpec(f"random:{name}", arch["family"], res, text["max_sequence_length"],
                                dict(arch["sampler"])))
    pipe.set_progress_bar_config(disable=True)
    return pipe
