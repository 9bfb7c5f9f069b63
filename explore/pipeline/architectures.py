"""Full-size architectures with random weights: SD3-medium, SD3.5-large, SD3.5-medium, FLUX.1-dev.

Speed and memory do not depend on weight values, so benchmarks and GPU tests build the published
transformer and VAE configurations with random weights, directly on the target device in the
target dtype (under ``torch.device(device)`` with that default dtype: never fp32 on the CPU first).
The text encoders are tiny stand-ins with the real output widths (CLIP-L 768, CLIP-G 1280, T5
4096) and the real token counts (77 CLIP tokens, 256 T5 tokens for SD3, 512 for FLUX), so the
transformer sees sequences of the true length; their outputs are meaningless.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from ..errors import InputError
from .families import by_name
from .families.flux import Flux
from .families.sd3 import SD3
from .spec import ModelSpec, attach_spec
from .tiny import clip_tokenizer, t5_tokenizer

SD3_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=16, norm_num_groups=32, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
)

ARCHITECTURES: dict[str, dict] = {
    "sd3-medium": {
        "family": SD3.name,
        "transformer": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192),
        "vae": dict(SD3_VAE, scaling_factor=1.5305, shift_factor=0.0609),
        "text": {"clip_l": 768, "clip_g": 1280, "t5": 4096, "max_sequence_length": 256},
        "sampler": {"steps": 28, "guidance": 7.0, "shift": 3.0},
        "params_b": 2.03,
    },
    "sd3.5-medium": {
        "family": SD3.name,
        "transformer": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                            dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
        "vae": dict(SD3_VAE, scaling_factor=1.5305, shift_factor=0.0609),
        "text": {"clip_l": 768, "clip_g": 1280, "t5": 4096, "max_sequence_length": 256},
        "sampler": {"steps": 40, "guidance": 4.5, "shift": 3.0},
        "params_b": 2.24,
    },
    "sd3.5-large": {
        "family": SD3.name,
        "transformer": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                            num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
                            qk_norm="rms_norm"),
        "vae": dict(SD3_VAE, scaling_factor=1.5305, shift_factor=0.0609),
        "text": {"clip_l": 768, "clip_g": 1280, "t5": 4096, "max_sequence_length": 256},
        "sampler": {"steps": 28, "guidance": 3.5, "shift": 3.0},
        "params_b": 8.06,
    },
    "flux-dev": {
        "family": Flux.name,
        "transformer": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                            pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        "vae": dict(SD3_VAE, scaling_factor=0.3611, shift_factor=0.1159),
        "text": {"clip_l": 768, "t5": 4096, "max_sequence_length": 512},
        "sampler": {"steps": 28, "guidance": 3.5},
        "params_b": 11.9,
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
        vae = AutoencoderKL(**arch["vae"])

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
