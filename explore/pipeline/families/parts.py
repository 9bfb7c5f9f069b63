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


# ---------------------------------------------------------------------------------------------
# Byte-level BPE tokenizers (Qwen / Mistral text encoders), built in memory
# ---------------------------------------------------------------------------------------------

# the Qwen2 / Qwen3 pre-tokenizer (transformers' tokenization_qwen2.PRETOKENIZE_REGEX)
QWEN_PRETOKENIZE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                    r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
QWEN3_ADDED = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>")
# Qwen3's chat template for what the pipelines render (system and user turns, the generation prompt and
# its empty think block when thinking is off), in the published template's words
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE's alphabet)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_bpe_tokenizer(special: tuple[str, ...] = QWEN_SPECIAL, added: tuple[str, ...] = (),
                       whole: tuple[str, ...] = (), chat_template: str | None = None, eos: str = "<|im_end|>",
                       pad: str = "<|endoftext|>", bos: str | None = None, pretokenize: str = QWEN_PRETOKENIZE,
                       padding_side: str = "right"):
    """A byte-level BPE tokenizer made in memory: the 256 byte symbols, the model's ``special`` tokens
    (never split), ``added`` tokens, and merges that make every pre-token of the texts in ``whole``
    one token (so a pipeline's fixed prompt template has the token count of the real tokenizer).
    ``pretokenize``: the model's split regex (Qwen's by default); every other word is spelled byte by
    byte."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: i for i, b in enumerate(range(256))}
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pretokenize), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    merges: list[tuple[str, str]] = []
    for text in whole:
        for s in special + added:
            text = text.replace(s, "\x00")
        for chunk in text.split("\x00"):
            for piece, _ in pre.pre_tokenize_str(chunk):
                cur = piece[0]
                for ch in piece[1:]:
                    if (cur, ch) not in merges:
                        merges.append((cur, ch))
                    cur += ch
                    vocab.setdefault(cur, len(vocab))
    for s in special + added:
        vocab.setdefault(s, len(vocab))
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in added])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, bos_token=bos, unk_token=None,
                                   model_max_length=131072, padding_side=padding_side,
                                   chat_template=chat_template)


def pad_rows(embeds: list[torch.Tensor], length: int) -> torch.Tensor:
    """Variable-length ``(L_i, D)`` embeddings as one ``(B, length, D)`` tensor: cut at ``length``, zero rows after."""
    out = embeds[0].new_zeros(len(embeds), length, embeds[0].shape[-1])
    for i, e in enumerate(embeds):
        n = min(length, e.shape[0])
        out[i, :n] = e[:n]
    return out


def valid_rows(c: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: the text rows that are not padding (padding rows are exactly zero, `pad_rows`)."""
    return c.ne(0).any(-1)


def span_tokens(tokenizer, text: str, start: int, spans, drop: int, length: int, padded: bool = False) -> list[int]:
    """Positions (after dropping ``drop`` leading tokens, below ``length``) of the tokens of ``text`` that
    overlap the character ``spans`` of the prompt placed at ``start`` in it. ``padded``: the pipeline pads
    to ``length`` on the tokenizer's side (left padding moves every position)."""
    kw = dict(padding="max_length", max_length=length, truncation=True) if padded else {}
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False, **kw)
    ids = enc["input_ids"]
    hits = []
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if ids[i] == tokenizer.pad_token_id and padded:
            continue
        if b > a and any(a < start + e and b > start + s for s, e in spans) and 0 <= i - drop < length:
            hits.append(i - drop)
    return hits


def chat_text(tokenizer, prompt: str, enable_thinking: bool) -> str:
    """The prompt as a Qwen3-style pipeline renders it: one user turn, the generation prompt added."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=enable_thinking)
