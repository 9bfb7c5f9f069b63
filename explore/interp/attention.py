"""Attention maps: how much each image patch attends to a word's tokens in the joint attention.

An MMDiT block attends over one joint sequence of image and text tokens. The stock diffusers
processors call a fused SDPA kernel, which never exposes the attention weights; the processors
here compute the same joint attention explicitly, ``softmax(Q Kᵀ / √d) V`` in float32 and in
chunks of query rows, with the model's own projections, qk-norms, RoPE (FLUX) and token order, so
the output equals the stock one (tests: max abs difference < 1e-5 in float32) and the recorded
weights are exactly the weights that produced it.

What is recorded (DESIGN §4): for image-patch queries, the columns of the **full** softmax (over
image + text keys, so each row sums to 1 over all keys) that belong to the chosen text tokens.
Only those columns leave the processor, never the ``(tokens x tokens)`` matrix.

    with record_attention(pipe, word="red", prompt="a red circle") as store:
        velocity(pipe, z_t, 0.5, c, p)
    store[("transformer_blocks.3", 0.5)]   # (n, heads, n_img, n_tok), conditional rows, on the CPU

`attention_map` wraps that for one image and a word; `attention_mask` thresholds the averaged map
into an object mask (the mask for real images in the disentanglement metric, DESIGN §3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import JointAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

from ..errors import InputError, UnsupportedModelError
from ..pipeline.latent import JointLatent, encode, flow_noise, velocity
from ..pipeline.spec import family_of, spec
from .hooks import batch_rows, track_pipeline_timestep

# Query rows per chunk are chosen so one chunk of attention weights holds at most this many
# float32 elements (2**26 = 256 MiB): bounded memory at any resolution.
CHUNK_ELEMENTS = 2**26

LayerSpec = str | int | Iterable[str | int] | None


# ---------------------------------------------------------------------------------------------
# The explicit attention kernel
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """What to take out of one attention call: which batch rows, image rows, key columns."""

    rows: torch.Tensor  # (n,) long: batch rows to record
    img_start: int  # first image token in the joint sequence
    n_img: int
    keys: torch.Tensor  # (n_tok,) long: joint-sequence indices of the chosen text tokens
    txt: slice  # where the text tokens are in the joint sequence (for the text-mass check)
    row_sums: bool


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
            plan: _Plan | None = None, chunk_elements: int = CHUNK_ELEMENTS):
    """Explicit attention on ``(B, H, L, d)`` tensors, in float32, chunked over query rows.

    Returns ``out`` ``(B, H, L, d)`` float32 and, with a plan, a dict with ``cols``
    ``(n, H, n_img, n_tok)`` and, if asked, ``row_sum`` / ``text_mass`` ``(n, H, n_img)``.
    """
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    scale = d**-0.5  # SDPA's default (the stock processors pass no scale)
    qf, kt, vf = q.float(), k.float().transpose(-1, -2), v.float()
    out = torch.empty(b, h, n_q, d, dtype=torch.float32, device=q.device)
    step = max(1, chunk_elements // max(1, b * h * n_k))
    parts: dict[str, list[torch.Tensor]] = {"cols": [], "row_sum": [], "text_mass": []}
    for s in range(0, n_q, step):
        e = min(n_q, s + step)
        logits = (qf[:, :, s:e] @ kt) * scale
        if mask is not None:
            m = mask[..., s:e, :] if mask.ndim >= 2 and mask.shape[-2] == n_q else mask
            logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m.float()
        w = logits.softmax(dim=-1)
        out[:, :, s:e] = w @ vf
        if plan is None:
            continue
        a, z = max(s, plan.img_start), min(e, plan.img_start + plan.n_img)
        if a >= z:
            continue
        wi = w[plan.rows][:, :, a - s : z - s]  # (n, H, image rows of this chunk, L)
        parts["cols"].append(wi.index_select(-1, plan.keys).cpu())
        if plan.row_sums:
            parts["row_sum"].append(wi.sum(-1).cpu())
            parts["text_mass"].append(wi[..., plan.txt].sum(-1).cpu())
    rec = None
    if plan is not None:
        rec = {name: torch.cat(ps, dim=2) for name, ps in parts.items() if ps}
    return out, rec


# ---------------------------------------------------------------------------------------------
# Processors (drop-in replacements for the stock ones)
# ---------------------------------------------------------------------------------------------


class _Recording:
    """Shared state of one `record_attention` context (read by every processor it installs)."""

    def __init__(self, pipe, store: AttentionStore, tokens: list[int] | None, heads, branch: str,
                 timesteps: torch.Tensor | None, row_sums: bool):
        self.pipe, self.store, self.tokens, self.heads = pipe, store, tokens, heads
        self.branch, self.timesteps, self.row_sums = branch, timesteps, row_sums
        self.n_txt: int | None = None  # text tokens of the running call (FLUX single blocks need it)

    def rows(self, n: int) -> list[tuple[float, torch.Tensor]]:
        """``[(t, batch rows)]`` to record in a batch of ``n`` rows; empty: nothing to record."""
        t, keep = batch_rows(self.pipe, n, self.branch)
        out = []
        for tv in torch.unique(t[keep]):
            if self.timesteps is not None and not torch.isclose(self.timesteps, tv, atol=1e-4).any():
                continue
            out.append((round(float(tv), 4), (keep & (t == tv)).nonzero().flatten()))
        return out

    def plan(self, n: int, img_start: int, n_img: int, txt_start: int, n_txt: int, device) -> _Plan | None:
        groups = self.rows(n)
        if not groups:
            return None
        tokens = list(range(n_txt)) if self.tokens is None else self.tokens
        bad = [i for i in tokens if not 0 <= i < n_txt]
        if bad:
            raise InputError(f"token indices {bad} are outside the {n_txt} text tokens of this call")
        rows = torch.cat([r for _, r in groups]).to(device)
        keys = torch.tensor(tokens, dtype=torch.long, device=device) + txt_start
        self._groups = groups
        return _Plan(rows, img_start, n_img, keys, slice(txt_start, txt_start + n_txt), self.row_sums)

    def save(self, site: str, rec: dict[str, torch.Tensor]) -> None:
        start = 0
        for t, r in self._groups:
            part = {name: x[start : start + len(r)] for name, x in rec.items()}
            start += len(r)
            self.store._add(site, t, part, self.heads)


class JointAttentionProcessor:
    """Explicit joint attention for SD3 / SD3.5 ``JointTransformerBlock.attn``.

    Matches diffusers' ``JointAttnProcessor2_0``: image projections ``to_q/k/v`` and text projections
    ``add_q/k/v_proj``, heads split as ``(B, H, L, d)``, qk-norms ``norm_q/k`` and
    ``norm_added_q/k``, joint sequence **[image; text]**, output projections ``to_out`` and
    ``to_add_out`` (none for the text stream of a ``context_pre_only`` block). Like the stock
    processor it ignores ``attention_mask``. Without a recorder it only computes; with one (set by
    `record_attention`) it records and, in calls with nothing to record, hands over to ``fallback``.
    """

    def __init__(self, recording: _Recording | None = None, site: str | None = None, fallback=None,
                 chunk_elements: int = CHUNK_ELEMENTS):
        self.recording, self.site, self.fallback, self.chunk_elements = recording, site, fallback, chunk_elements

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs) -> Any:
        b, n_img = hidden_states.shape[:2]
        plan = None
        if self.recording is not None:
            n_txt = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
            plan = self.recording.plan(b, 0, n_img, n_img, n_txt, hidden_states.device)
            if plan is None and self.fallback is not None:
                return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(b, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            eq = attn.add_q_proj(encoder_hidden_states).view(b, -1, attn.heads, head_dim).transpose(1, 2)
            ek = attn.add_k_proj(encoder_hidden_states).view(b, -1, attn.heads, head_dim).transpose(1, 2)
            ev = attn.add_v_proj(encoder_hidden_states).view(b, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query, key, value = torch.cat([query, eq], 2), torch.cat([key, ek], 2), torch.cat([value, ev], 2)
        out, rec = _attend(query, key, value, None, plan, self.chunk_elements)
        if rec is not None:
            self.recording.save(self.site, rec)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
        if encoder_hidden_states is not None:
            out, txt = out[:, :n_img], out[:, n_img:]
            if not attn.context_pre_only:
                txt = attn.to_add_out(txt)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, txt) if encoder_hidden_states is not None else out


class FluxAttentionProcessor:
    """Explicit joint attention for FLUX.1 double blocks and single blocks (``FluxAttention``).

    Matches diffusers' ``FluxAttnProcessor``: the same (fused or separate) projections, heads split
    as ``(B, L, H, d)``, RMS qk-norms, joint sequence **[text; image]** (double blocks concatenate
    it here; single blocks receive it already concatenated), RoPE on queries and keys through
    diffusers' own ``apply_rotary_emb``, an optional ``attention_mask`` with SDPA's meaning, and
    ``to_out`` / ``to_add_out`` in double blocks only (single blocks return the raw attention).
    """

    def __init__(self, recording: _Recording | None = None, site: str | None = None, fallback=None,
                 chunk_elements: int = CHUNK_ELEMENTS):
        self.recording, self.site, self.fallback, self.chunk_elements = recording, site, fallback, chunk_elements

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None) -> Any:
        b, length = hidden_states.shape[:2]
        plan = None
        if self.recording is not None:
            if encoder_hidden_states is not None:  # double block: text is a separate stream
                n_txt, total = encoder_hidden_states.shape[1], encoder_hidden_states.shape[1] + length
            else:  # single block: [text; image] already, the split comes from the transformer call
                n_txt, total = self.recording.n_txt, length
                if n_txt is None or not 0 < n_txt < total:
                    raise RuntimeError(f"record_attention: cannot tell text from image tokens in {self.site}")
            plan = self.recording.plan(b, n_txt, total - n_txt, 0, n_txt, hidden_states.device)
            if plan is None and self.fallback is not None:
                return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query, key, value, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (query, key, value))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            eq, ek, ev = (x.unflatten(-1, (-1, attn.head_dim)) for x in (eq, ek, ev))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            query, key, value = torch.cat([eq, query], 1), torch.cat([ek, key], 1), torch.cat([ev, value], 1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out, rec = _attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask, plan,
                           self.chunk_elements)
        if rec is not None:
            self.recording.save(self.site, rec)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        n_txt = encoder_hidden_states.shape[1]
        txt, out = out.split_with_sizes([n_txt, out.shape[1] - n_txt], dim=1)
        out = attn.to_out[1](attn.to_out[0](out.contiguous()))
        return out, attn.to_add_out(txt.contiguous())


def _stock_classes(family: str) -> tuple[type, type]:
    """(stock processor class, our explicit class) of a family."""
    if family == "sd3":
        return JointAttnProcessor2_0, JointAttentionProcessor
    return FluxAttnProcessor, FluxAttentionProcessor


# ---------------------------------------------------------------------------------------------
# Layers and tokens
# ---------------------------------------------------------------------------------------------


def attention_layers(pipe) -> list[str]:
    """Names of every joint-attention block, in forward order.

    ``transformer_blocks.{i}`` (SD3 and FLUX double blocks), then ``single_transformer_blocks.{i}`` (FLUX).
    """
    tr = pipe.transformer
    return [f"transformer_blocks.{i}" for i in range(len(tr.transformer_blocks))] + [
        f"single_transformer_blocks.{i}" for i in range(len(getattr(tr, "single_transformer_blocks", None) or []))
    ]


def resolve_layers(pipe, layers: LayerSpec = None) -> list[str]:
    """Layer names from None (all), a name, an int (position in `attention_layers`), a glob, or a list.

    Hook-site names (``transformer_blocks.3.img``) are accepted and mean their block.
    """
    available = attention_layers(pipe)
    if layers is None:
        return available
    items = [layers] if isinstance(layers, (str, int)) else list(layers)
    out: list[str] = []
    for it in items:
        if isinstance(it, (int, np.integer)) and not isinstance(it, bool):
            if not -len(available) <= int(it) < len(available):
                raise InputError(f"layer {it} is out of range: this model has {len(available)} attention layers")
            out.append(available[int(it)])
            continue
        if not isinstance(it, str):
            raise InputError(f"layers are names or ints, got {type(it).__name__}")
        name = re.sub(r"\.(img|txt)$", "", it)
        if any(ch in name for ch in "*?["):
            hits = [s for s in available if fnmatch.fnmatch(s, name)]
            if not hits:
                raise InputError(f"pattern {it!r} matches no attention layer of this model")
            out += hits
        elif name in available:
            out.append(name)
        else:
            raise InputError(f"no attention layer {it!r}; this model has {available[0]!r} ... {available[-1]!r}")
    return list(dict.fromkeys(out))


def _token_spans(tokenizer, prompt: str, spans: list[tuple[int, int]], max_length: int) -> list[int]:
    """Positions (in the padded, truncated sequence the pipeline encodes) of tokens overlapping ``spans``.

    Needs character offsets, which only fast (Rust) tokenizers give.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModelError(f"word lookup needs a fast tokenizer with character offsets; "
                                    f"{type(tokenizer).__name__} has none (load it with use_fast=True)")
    enc = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True,
                    return_offsets_mapping=True)
    hits = []
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and any(a < e and b > s for s, e in spans):  # special tokens and padding have (0, 0)
            hits.append(i)
    return hits


def word_token_indices(pipe, prompt: str, word: str) -> list[int]:
    """Positions of ``word``'s tokens in the ``c`` sequence of the joint latent for ``prompt``.

    SD3: ``c`` is the CLIP tokens (``tokenizer.model_max_length``, with start and end tokens) then
    the T5 tokens (``spec(pipe).max_sequence_length``); positions in both parts are returned
    (none in the T5 part when the pipeline has no T5, whose part is zeros). FLUX: T5 tokens only.
    The word is matched case-insensitively as a whole word (or phrase) wherever it occurs; a
    word split into several sub-word tokens gives all of them. Tokens cut off by truncation are
    not in ``c`` and are left out. Raises `InputError` when the word is not in the prompt or
    every occurrence was truncated.
    """
    if not isinstance(word, str) or not word.strip():
        raise InputError("word must be a non-empty string")
    word = word.strip()
    spans = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, flags=re.IGNORECASE)]
    if not spans:
        raise InputError(f"the word {word!r} is not in the prompt {prompt!r}")
    msl = spec(pipe).max_sequence_length
    if family_of(pipe) == "sd3":
        n_clip = pipe.tokenizer_max_length
        out = _token_spans(pipe.tokenizer, prompt, spans, n_clip)
        if getattr(pipe, "text_encoder_3", None) is not None and msl:
            out += [n_clip + i for i in _token_spans(pipe.tokenizer_3, prompt, spans, msl)]
    else:
        out = _token_spans(pipe.tokenizer_2, prompt, spans, msl)
    if not out:
        raise InputError(f"every occurrence of {word!r} in the prompt was cut off by the text encoders' limits")
    return out


# ---------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------


class AttentionStore(dict):
    """``(layer, t) -> tensor`` of image-patch attention on the chosen text tokens, float32, CPU.

    Shapes: ``(n, heads, n_img, n_tok)`` (``heads="all"``), ``(n, n_img, n_tok)`` (``"mean"``),
    ``(n, len(heads), n_img, n_tok)`` (a list of head indices). ``n`` are the recorded batch rows
    at that ``t`` (rounded to 4 decimals) in batch order; several calls at the same ``t`` are
    concatenated. Image tokens are in raster order over ``grid`` = ``(h_patches, w_patches)``.
    ``row_sums`` / ``text_mass`` (with ``row_sums=True``): per key ``(n, H, n_img)`` the sum of
    each image query's softmax row over all keys (≈ 1) and over all text keys.
    """

    def __init__(self, tokens: list[int] | None = None):
        super().__init__()
        self.tokens = tokens
        self.grid: tuple[int, int] | None = None
        self.row_sums: dict[tuple[str, float], torch.Tensor] = {}
        self.text_mass: dict[tuple[str, float], torch.Tensor] = {}

    def layers(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self))

    def timesteps(self) -> list[float]:
        return sorted({k[1] for k in self})

    def _add(self, site: str, t: float, part: dict[str, torch.Tensor], heads) -> None:
        cols = part["cols"]
        if heads == "mean":
            cols = cols.mean(1)
        elif heads != "all":
            cols = cols[:, list(heads)]
        key = (site, t)
        for target, x in ((self, cols), (self.row_sums, part.get("row_sum")), (self.text_mass, part.get("text_mass"))):
            if x is not None:
                target[key] = torch.cat([target[key], x]) if key in target else x

    def maps(self, layer: str, t: float, reduce_tokens: str = "sum") -> torch.Tensor:
        """``(n, [heads,] h, w)``: the columns combined over tokens (``"sum"``: total mass, or ``"mean"``)."""
        if self.grid is None:
            raise InputError("nothing was recorded")
        x = self[(layer, round(float(t), 4))]
        x = x.sum(-1) if reduce_tokens == "sum" else x.mean(-1)
        return x.reshape(*x.shape[:-1], *self.grid)


def _check_heads(heads):
    if heads in ("all", "mean"):
        return heads
    if isinstance(heads, str) or not all(isinstance(h, (int, np.integer)) for h in heads):
        raise InputError(f"heads must be 'all', 'mean' or a list of head indices, got {heads!r}")
    return [int(h) for h in heads]


@contextlib.contextmanager
def record_attention(
    pipe,
    layers: LayerSpec = None,
    *,
    word: str | None = None,
    prompt: str | None = None,
    token_indices: Sequence[int] | None = None,
    heads: str | Sequence[int] = "all",
    branch: str = "cond",
    timesteps: Iterable[float] | None = None,
    row_sums: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Iterator[AttentionStore]:
    """Record image-patch attention on chosen text tokens while the block runs.

    Works for `velocity` calls (rows and ``t`` from the call) and pipeline calls (SD3 with CFG:
    the second half of the batch is conditional). ``layers``: see `resolve_layers` (default all).
    Tokens: ``word`` with the ``prompt`` it is in (see `word_token_indices`), or
    ``token_indices`` into ``c``, or neither (every text token; memory grows with it).
    ``heads``: ``"all"`` (per head), ``"mean"`` or a list of head indices. ``branch``: ``"cond"``
    (default), ``"uncond"`` or ``"all"``. ``timesteps``: record only these ``t`` (within 1e-4);
    calls with nothing to record run the stock processor. ``row_sums``: also store the row sums
    (see `AttentionStore`). The stock processors are restored in ``finally``.
    """
    fam = family_of(pipe)
    if branch not in ("cond", "uncond", "all"):
        raise InputError(f"branch must be 'cond', 'uncond' or 'all', got {branch!r}")
    heads = _check_heads(heads)
    if word is not None and token_indices is not None:
        raise InputError("pass either word (with prompt) or token_indices, not both")
    if word is not None:
        if prompt is None:
            raise InputError("word needs the prompt it is in: record_attention(pipe, word='red', prompt='a red ...')")
        tokens = word_token_indices(pipe, prompt, word)
    else:
        tokens = None if token_indices is None else [int(i) for i in token_indices]
    if tokens is not None and not tokens:
        raise InputError("token_indices is empty")
    names = resolve_layers(pipe, layers)
    ts = None if timesteps is None else torch.tensor([float(x) for x in timesteps], dtype=torch.float32)
    store = AttentionStore(tokens)
    recording = _Recording(pipe, store, tokens, heads, branch, ts, row_sums)
    stock, ours = _stock_classes(fam)
    tr = pipe.transformer
    modules = [tr.get_submodule(name).attn for name in names]
    for name, m in zip(names, modules):
        if not isinstance(m.processor, (stock, ours)):
            raise UnsupportedModelError(
                f"{name} uses {type(m.processor).__name__}; record_attention reproduces only {stock.__name__} "
                "(undo fused projections or adapters first)"
            )

    def pre(module, args, kwargs):
        # The grid and the text length of this call: single FLUX blocks see [text; image] with no split.
        hs = kwargs.get("hidden_states", args[0] if args else None)
        ehs = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        recording.n_txt = None if ehs is None else int(ehs.shape[1])
        if fam == "sd3" and hs is not None:
            ps = tr.config.patch_size
            store.grid = (hs.shape[-2] // ps, hs.shape[-1] // ps)
        elif fam == "flux" and kwargs.get("img_ids") is not None:
            ids = kwargs["img_ids"]
            ids = ids[0] if ids.ndim == 3 else ids
            store.grid = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)

    if isinstance(heads, list) and any(not 0 <= h < m.heads for h in heads for m in modules):
        raise InputError(f"head indices {heads} out of range: this model has {modules[0].heads} heads")
    originals = [m.processor for m in modules]
    handle = None
    try:
        handle = tr.register_forward_pre_hook(pre, with_kwargs=True)
        for name, m, orig in zip(names, modules, originals):
            m.set_processor(ours(recording, name, fallback=orig, chunk_elements=chunk_elements))
        with track_pipeline_timestep(pipe):
            yield store
    finally:
        for m, orig in zip(modules, originals):
            m.set_processor(orig)
        if handle is not None:
            handle.remove()


# ---------------------------------------------------------------------------------------------
# Maps for one image and a word
# ---------------------------------------------------------------------------------------------


def renormalize(amap) -> np.ndarray:
    """Divide a map ``(..., h, w)`` by its sum over patches, so it sums to 1 (for display)."""
    a = np.asarray(amap, dtype=np.float32)
    total = a.sum(axis=(-2, -1), keepdims=True)
    return a / np.where(total > 0, total, 1.0)


def upsample(amap, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map ``(..., h, w)`` to ``size`` = ``(H, W)`` (or an int for square)."""
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    a = torch.as_tensor(np.asarray(amap, dtype=np.float32))
    lead = a.shape[:-2]
    x = a.reshape(-1, 1, *a.shape[-2:])
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return y.reshape(*lead, *size).numpy()


@dataclasses.dataclass
class AttentionMaps:
    """Attention of image patches on a word, per layer and ``t``, for one image.

    maps: ``(layer, t) -> (h_patches, w_patches)`` (heads averaged) or ``(heads, h, w)``: the
    attention mass of each patch query on the word's tokens (summed over them), a share of the
    full softmax row (image + text keys), not renormalised.
    """

    maps: dict[tuple[str, float], np.ndarray]
    word: str
    prompt: str
    token_indices: list[int]
    image_size: tuple[int, int]  # (H, W) pixels
    grid: tuple[int, int]  # (h, w) patches

    def layers(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.maps))

    def timesteps(self) -> list[float]:
        return sorted({k[1] for k in self.maps})

    def __getitem__(self, key: tuple[str, float]) -> np.ndarray:
        return self.maps[(key[0], round(float(key[1]), 4))]

    def mean(self, layers: LayerSpec = None, timesteps: Iterable[float] | None = None) -> np.ndarray:
        """``(h, w)``: each (layer, t) map renormalised over patches (each weighs the same), then averaged.

        ``layers``: names, or ints as positions in ``self.layers()`` (the recorded layers).
        """
        names = self.layers() if layers is None else [n for n in self.layers() if n in layer_names(self, layers)]
        ts = self.timesteps() if timesteps is None else [round(float(t), 4) for t in timesteps]
        picked = [self.maps[(n, t)] for n in names for t in ts if (n, t) in self.maps]
        if not picked:
            raise InputError("no maps for those layers and timesteps")
        per = [renormalize(m.mean(0) if m.ndim == 3 else m) for m in picked]
        return renormalize(np.mean(per, axis=0))

    def display(self, layer: str | None = None, t: float | None = None, size=None) -> np.ndarray:
        """A map for showing: renormalised over patches and upsampled to the image (or ``size``)."""
        m = self.mean() if layer is None else self.mean([layer], None if t is None else [t])
        return upsample(m, self.image_size if size is None else size)


def layer_names(maps: AttentionMaps, layers) -> list[str]:
    items = [layers] if isinstance(layers, (str, int)) else list(layers)
    names = maps.layers()
    return [names[i] if isinstance(i, int) else re.sub(r"\.(img|txt)$", "", i) for i in items]


def _as_latent(pipe, source, resize=None) -> JointLatent:
    if isinstance(source, JointLatent):
        latent = source
    elif isinstance(source, tuple) and len(source) == 2:
        image, prompt = source
        latent = encode(pipe, image, prompt, resize=resize)
    else:
        raise InputError("source must be a JointLatent or an (image, prompt) pair")
    if len(latent) != 1:
        raise InputError(f"attention maps take one image at a time, got a batch of {len(latent)}")
    if not latent.prompt or not latent.prompt[0].strip():
        raise InputError("the latent has no prompt; encode it with the prompt that contains the word")
    return latent


@torch.no_grad()
def attention_map(
    pipe,
    source: JointLatent | tuple[Any, str],
    word: str,
    *,
    t: float | Sequence[float] = 0.5,
    layers: LayerSpec = None,
    heads: str = "mean",
    seed: int = 0,
    guidance: float | None = None,
    resize=None,
) -> AttentionMaps:
    """Attention maps of image patches on ``word`` for one image, from one `velocity` call.

    ``source``: a `JointLatent` (its prompt is searched for the word) or ``(image, prompt)``.
    Every ``t`` in ``t`` (flow sigma, DESIGN §0) is one row of the same batched call on
    ``z_t = (1 - t) z + t ε`` with one seeded ``ε`` (drawn on the CPU: the same on every device).
    ``guidance``: SD3 defaults to 1.0 (the conditional rows do not depend on CFG, so the extra
    branch is skipped); FLUX to the spec's distilled guidance, which does change the attention.
    ``heads``: ``"mean"`` gives ``(h, w)`` maps, ``"all"`` ``(heads, h, w)``.
    """
    latent = _as_latent(pipe, source, resize)
    prompt = latent.prompt[0]
    tokens = word_token_indices(pipe, prompt, word)
    ts = [float(x) for x in (np.atleast_1d(np.asarray(t, dtype=np.float64)))]
    if heads not in ("mean", "all"):
        raise InputError(f"heads must be 'mean' or 'all', got {heads!r}")
    if guidance is None:
        guidance = 1.0 if family_of(pipe) == "sd3" else spec(pipe).guidance
    device = pipe.transformer.device
    z = latent.z.to(device)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(device, z.dtype)
    n = len(ts)
    tt = torch.tensor(ts, dtype=torch.float32, device=device)
    z_t = flow_noise(z.expand(n, *z.shape[1:]), eps.expand(n, *z.shape[1:]), tt)
    c, p = latent.c.to(device).expand(n, -1, -1), latent.p.to(device).expand(n, -1)
    with record_attention(pipe, layers, token_indices=tokens, heads=heads) as store:
        velocity(pipe, z_t, tt, c, p, guidance=guidance)
    maps = {(name, t_): store.maps(name, t_)[0].numpy() for name, t_ in store}
    return AttentionMaps(maps, word, prompt, tokens, tuple(latent.image_size), store.grid)


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


def otsu_threshold(x: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of the values in ``x`` (maximises the between-class variance)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-12:
        return hi  # a constant map: nothing stands out, so nothing lies above the threshold
    hist, edges = np.histogram(x, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][np.argmax(between)])


def attention_mask(
    pipe,
    image,
    prompt: str,
    word: str,
    *,
    threshold: str | float = "otsu",
    t: Sequence[float] = (0.3, 0.5, 0.7),
    layers: LayerSpec = None,
    seed: int = 0,
    resize=None,
) -> np.ndarray:
    """An object mask ``(H, W)`` bool from the attention of image patches on ``word``.

    The rule: each (layer, ``t``) head-averaged map is renormalised over patches, the maps are
    averaged (every layer and ``t`` weighs the same), upsampled bilinearly to the image size and
    min-max scaled to [0, 1]; a pixel is in the mask when its value is above the threshold —
    ``"otsu"`` (Otsu's threshold of that map, the default) or a float τ in [0, 1] (DAAM's
    rule: above τ times the maximum). ``image`` and ``resize`` as in `explore.encode`; the mask
    has the size of the encoded image. A map with no contrast gives an empty mask.
    """
    latent = encode(pipe, image, prompt, resize=resize)
    maps = attention_map(pipe, latent, word, t=t, layers=layers, heads="mean", seed=seed)
    m = upsample(maps.mean(), maps.image_size)
    lo, hi = float(m.min()), float(m.max())
    if hi - lo < 1e-12:
        return np.zeros(m.shape, dtype=bool)
    m = (m - lo) / (hi - lo)
    if threshold == "otsu":
        thr = otsu_threshold(m)
    elif isinstance(threshold, (int, float)) and 0 <= float(threshold) <= 1:
        thr = float(threshold)
    else:
        raise InputError(f"threshold must be 'otsu' or a number in [0, 1], got {threshold!r}")
    return m > thr


__all__ = [
    "AttentionMaps", "AttentionStore", "FluxAttentionProcessor", "JointAttentionProcessor", "attention_layers",
    "attention_map", "attention_mask", "layer_names", "otsu_threshold", "record_attention", "renormalize",
    "resolve_layers", "upsample", "word_token_indices",
]
