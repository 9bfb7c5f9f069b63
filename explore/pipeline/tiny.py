"""Tiny random pipelines of every family, built entirely in code (tokenizers included), seeded.

They have the real architectures (CLIP-L/G + T5 text encoders, AutoencoderKL, SD3 / FLUX
transformer with qk-norm, RoPE for FLUX; the Qwen / Mistral chat encoders, video and batch-norm
VAEs, FLUX.2, Qwen-Image and Z-Image transformers) at toy widths, so every code path —
``encode_prompt``, chat templates, packing, guidance, hooks, save/load — runs in milliseconds.
Weights are random: outputs are meaningless, which is what tests of plumbing want. The tokenizers
are character-level (CLIP BPE with no merges; a T5 unigram vocabulary of single characters) or
byte-level BPE with the model's special tokens and chat template, made from in-memory vocabularies.
"""

from __future__ import annotations

from .families.flux import Flux
from .families.flux2 import FLUX2_DEV, Flux2
from .families.parts import (  # noqa: F401  (the building blocks, also reached as explore.pipeline.tiny.*)
    TINY_RES,
    clip_encoder,
    clip_tokenizer,
    eval_mode,
    t5_encoder,
    t5_tokenizer,
    tiny_vae,
)
from .families.qwenimage import QwenImage
from .families.sd3 import SD3
from .families.zimage import ZImage
from .spec import ModelSpec, attach_spec


def _tiny(family, model_id: str, seed: int, **transformer_overrides):
    """The family's tiny pipeline with its `ModelSpec` (``TINY_RES`` images, 16 text tokens unless the family's
    byte-level tokenizer needs more)."""
    pipe, sampler = family.tiny(seed, **transformer_overrides)
    length = sampler.pop("max_sequence_length", 16)
    attach_spec(pipe, ModelSpec(model_id, family.name, TINY_RES, length, sampler))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3(seed: int = 0):
    """A random SD3 pipeline: 32x32 images, 16 image tokens, CLIP-L/G (16 wide) + T5 (32 wide), RMS qk-norm."""
    return _tiny(SD3(), "tiny-sd3", seed)


def tiny_sd35(seed: int = 0):
    """SD3.5-medium-like (MMDiT-X): block 0 is a dual-attention block (a second, image-only self-attention
    ``attn2`` beside the joint one), RMS qk-norm, as in stabilityai/stable-diffusion-3.5-medium (blocks 0-12)."""
    return _tiny(SD3(), "tiny-sd3.5", seed, dual_attention_layers=(0,), qk_norm="rms_norm")


def tiny_sd3_medium(seed: int = 0):
    """SD3-medium-like: no qk-norm (``norm_q``/``norm_k`` are None), no dual attention."""
    return _tiny(SD3(), "tiny-sd3-medium", seed, qk_norm=None)


def tiny_flux(seed: int = 0):
    """A random FLUX.1-dev-like pipeline (guidance-distilled: guidance embedding, no CFG branch)."""
    return _tiny(Flux(), "tiny-flux", seed)


def tiny_flux2(seed: int = 0):
    """A random FLUX.2 [klein]-like pipeline (Qwen3 text encoder, classifier-free guidance, batch-norm VAE)."""
    return _tiny(Flux2(), "tiny-flux2", seed)


def tiny_flux2_dev(seed: int = 0):
    """A random FLUX.2 [dev]-like pipeline (Mistral-3 text encoder, guidance embedding)."""
    return _tiny(FLUX2_DEV, "tiny-flux2-dev", seed)


def tiny_qwen_image(seed: int = 0):
    """A random Qwen-Image-like pipeline (Qwen2.5-VL text encoder, video VAE, true CFG with a norm rescale)."""
    return _tiny(QwenImage(), "tiny-qwen-image", seed)


def tiny_z_image(seed: int = 0):
    """A random Z-Image-like pipeline (single-stream DiT, Qwen3 text encoder)."""
    return _tiny(ZImage(), "tiny-z-image", seed)
