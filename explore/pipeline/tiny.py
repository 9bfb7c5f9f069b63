"""Tiny random SD3 and FLUX pipelines, built entirely in code (tokenizers included), seeded.

They have the real architectures (CLIP-L/G + T5 text encoders, AutoencoderKL, SD3 / FLUX
transformer with qk-norm, RoPE for FLUX) at toy widths, so every code path — ``encode_prompt``,
packing, guidance, hooks, save/load — runs in milliseconds. Weights are random: outputs are
meaningless, which is what tests of plumbing want. The tokenizers are character-level (CLIP BPE
with no merges; a T5 unigram vocabulary of single characters), made from in-memory vocabularies.
"""

from __future__ import annotations

from .families.flux import Flux
from .families.parts import (  # noqa: F401  (the building blocks, also reached as explore.pipeline.tiny.*)
    TINY_RES,
    clip_encoder,
    clip_tokenizer,
    eval_mode,
    t5_encoder,
    t5_tokenizer,
    tiny_vae,
)
from .families.sd3 import SD3
from .spec import ModelSpec, attach_spec


def _tiny(family, model_id: str, seed: int, **transformer_overrides):
    """The family's tiny pipeline with its `ModelSpec` (``TINY_RES`` images, 16 text tokens)."""
    pipe, sampler = family.tiny(seed, **transformer_overrides)
    attach_spec(pipe, ModelSpec(model_id, family.name, TINY_RES, 16, sampler))
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
