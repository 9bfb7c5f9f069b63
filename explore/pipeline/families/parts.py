"""Building blocks of tiny random pipelines, shared by the family adapters (`Family.tiny`).

Character-level tokenizers made from in-memory vocabularies (CLIP BPE with no merges; a T5 unigram
vocabulary of single characters), toy-width CLIP / T5 encoders and a three-level AutoencoderKL.
"""

from __future__ import annotations

import string

import torch
from diffusers import AutoencoderKL
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

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


def tiny_vae(latent_channels: int, seed: int):
    """A tiny random AutoencoderKL (three levels: 4x down-sampling)."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 16), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=TINY_RES, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.06, scaling_factor=1.5,
    )


def eval_mode(pipe) -> None:
    """Modules built in code start in training mode (T5 dropout!); from_pretrained gives eval mode."""
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.eval()
