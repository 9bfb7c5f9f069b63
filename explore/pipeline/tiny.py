"""Tiny random SD3 and FLUX pipelines, built entirely in code (tokenizers included), seeded.

They have the real architectures (CLIP-L/G + T5 text encoders, AutoencoderKL, SD3 / FLUX
transformer with qk-norm, RoPE for FLUX) at toy widths, so every code path — ``encode_prompt``,
packing, guidance, hooks, save/load — runs in milliseconds. Weights are random: outputs are
meaningless, which is what tests of plumbing want. The tokenizers are character-level (CLIP BPE
with no merges; a T5 unigram vocabulary of single characters), made from in-memory vocabularies.
"""

from __future__ import annotations

import string

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from .spec import ModelSpec, attach_spec

TINY_RES = 32
_CHARS = string.ascii_lowercase + string.digits + ",.:;!?'-"


def clip_tokenizer(model_max_length: int = 16):
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length, pad_token="!")


def t5_tokenizer(model_max_length: int = 16):
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(ch, -3.0) for ch in _CHARS] + [("\u2581" + ch, -2.5) for ch in _CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def clip_encoder(projection: bool, hidden: int, seed: int, vocab_size: int):
    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, projection_dim=hidden, bos_token_id=0,
        eos_token_id=1, pad_token_id=2,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def t5_encoder(d_model: int, seed: int, vocab_size: int):
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=2,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    return T5EncoderModel(cfg)


def _vae(latent_channels: int, seed: int):
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 16), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=TINY_RES, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.06, scaling_factor=1.5,
    )


def _eval(pipe) -> None:
    """Modules built in code start in training mode (T5 dropout!); from_pretrained gives eval mode."""
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.eval()


def _tiny_sd3(seed: int, model_id: str, **transformer_overrides):
    """The tiny SD3 pipeline; ``transformer_overrides`` change the transformer's config (same seeding order)."""
    tok, tok3 = clip_tokenizer(), t5_tokenizer()
    te1 = clip_encoder(True, 16, seed + 1, len(tok))
    te2 = clip_encoder(True, 16, seed + 2, len(tok))
    te3 = t5_encoder(32, seed + 3, len(tok3))
    torch.manual_seed(seed)
    config = dict(
        sample_size=TINY_RES // 4, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        out_channels=4, pos_embed_max_size=8, qk_norm="rms_norm",
    )
    transformer = SD3Transformer2DModel(**{**config, **transformer_overrides})
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=_vae(4, seed + 4),
        text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=clip_tokenizer(),
        text_encoder_3=te3, tokenizer_3=tok3,
    )
    _eval(pipe)
    attach_spec(pipe, ModelSpec(model_id, "sd3", TINY_RES, 16, {"steps": 4, "guidance": 4.0, "shift": 1.0}))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3(seed: int = 0):
    """A random SD3 pipeline: 32x32 images, 16 image tokens, CLIP-L/G (16 wide) + T5 (32 wide), RMS qk-norm."""
    return _tiny_sd3(seed, "tiny-sd3")


def tiny_sd35(seed: int = 0):
    """SD3.5-medium-like (MMDiT-X): block 0 is a dual-attention block (a second, image-only self-attention
    ``attn2`` beside the joint one), RMS qk-norm, as in stabilityai/stable-diffusion-3.5-medium (blocks 0-12)."""
    return _tiny_sd3(seed, "tiny-sd3.5", dual_attention_layers=(0,), qk_norm="rms_norm")


def tiny_sd3_medium(seed: int = 0):
    """SD3-medium-like: no qk-norm (``norm_q``/``norm_k`` are None), no dual attention."""
    return _tiny_sd3(seed, "tiny-sd3-medium", qk_norm=None)


def tiny_flux(seed: int = 0):
    """A random FLUX.1-dev-like pipeline (guidance-distilled: guidance embedding, no CFG branch)."""
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    te1 = clip_encoder(False, 16, seed + 1, len(tok))
    te2 = t5_encoder(32, seed + 2, len(tok2))
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True), vae=_vae(4, seed + 4),
        text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, transformer=transformer,
    )
    _eval(pipe)
    attach_spec(pipe, ModelSpec("tiny-flux", "flux", TINY_RES, 16, {"steps": 4, "guidance": 3.5}))
    pipe.set_progress_bar_config(disable=True)
    return pipe
