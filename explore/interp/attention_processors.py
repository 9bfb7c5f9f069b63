"""Explicit joint attention: drop-in processors that compute ``softmax(Q Kᵀ / √d) V`` and can record it.

The stock diffusers processors call a fused SDPA kernel, which never exposes the attention weights;
these compute the same joint attention explicitly, in float32 and in chunks of query rows, with the
model's own projections, qk-norms, RoPE (FLUX) and token order, so the output equals the stock one
(tests: max abs difference < 1e-5 in float32) and the recorded weights are exactly the weights that
produced it. `explore.interp.attention.record_attention` installs them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

from ..errors import InputError
from .hooks import batch_rows

# Query rows per chunk are chosen so one chunk of attention weights holds at most this many
# float32 elements (2**26 = 256 MiB): bounded memory at any resolution.
CHUNK_ELEMENTS = 2**26


# ---------------------------------------------------------------------------------------------
# The explicit attention kernel
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """What to take out of one attention call: which batch rows, image rows, key columns."""

    rows: torch.Tensor  # (n,) long: batch rows to record
    img_start: int  # first image token in the joint sequence
    n_img: int
    keys: torch.Tensor  # (n_tok,) long: joint-sequence indices of the chosen text tokens
    txt: slice  # where the text tokens are in the joint sequence (for the text-mass check)
    row_sums: bool


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
           plan: Plan | None = None, chunk_elements: int = CHUNK_ELEMENTS, scale: float | None = None):
    """Explicit attention on ``(B, H, L, d)`` tensors, in float32, chunked over query rows.

    Returns ``out`` ``(B, H, L, d)`` float32 and, with a plan, a dict with ``cols``
    ``(n, H, n_img, n_tok)`` and, if asked, ``row_sum`` / ``text_mass`` ``(n, H, n_img)``.
    """
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    scale = d**-0.5 if scale is None else float(scale)  # SDPA's default (the stock processors pass none)
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


class Recording:
    """Shared state of one `record_attention` context (read by every processor it installs)."""

    def __init__(self, pipe, store: Any, tokens: list[int] | None, heads, branch: str,
                 timesteps: torch.Tensor | None, row_sums: bool):
        self.pipe, self.store, self.tokens, self.heads = pipe, store, tokens, heads
        self.branch, self.timesteps, self.row_sums = branch, timesteps, row_sums
        self.n_txt: int | None = None  # text tokens of the running call (FLUX single blocks need it)
        self.call: dict = {}  # the family's stream layout of the running transformer call

    def rows(self, n: int) -> list[tuple[float, torch.Tensor]]:
        """``[(t, batch rows)]`` to record in a batch of ``n`` rows; empty: nothing to record."""
        t, keep = batch_rows(self.pipe, n, self.branch)
        out = []
        for tv in torch.unique(t[keep]):
            if self.timesteps is not None and not torch.isclose(self.timesteps, tv, atol=1e-4).any():
                continue
            out.append((round(float(tv), 4), (keep & (t == tv)).nonzero().flatten()))
        return out

    def plan(self, n: int, img_start: int, n_img: int, txt_start: int, n_txt: int, device) -> Plan | None:
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
        return Plan(rows, img_start, n_img, keys, slice(txt_start, txt_start + n_txt), self.row_sums)

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

    def __init__(self, recording: Recording | None = None, site: str | None = None, fallback=None,
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
        out, rec = attend(query, key, value, None, plan, self.chunk_elements)
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

    def __init__(self, recording: Recording | None = None, site: str | None = None, fallback=None,
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
        out, rec = attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask, plan,
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


# ---------------------------------------------------------------------------------------------
# Layers and tokens


# The stock diffusers processor each recording processor reproduces (a family names its stock
# processor, `explore.pipeline.families.Family.attention_processor`).
RECORDING: dict[type, type] = {JointAttnProcessor2_0: JointAttentionProcessor,
                               FluxAttnProcessor: FluxAttentionProcessor}


# ---------------------------------------------------------------------------------------------
# Families recorded through the attention kernel
# ---------------------------------------------------------------------------------------------


class KernelSwap:
    """Record attention by swapping the kernel the stock processors call, not the processors.

    The newer diffusers processors (FLUX.2, Qwen-Image, Z-Image) compute their projections, norms
    and RoPE and then call ``dispatch_attention_fn(query, key, value, attn_mask=...)`` with
    ``(B, L, H, d)`` tensors. While installed, that name in the family's transformer module
    (`explore.pipeline.families.Family.attention_kernel_module`) is `kernel`: inside a recorded
    attention module it computes the same attention explicitly with `attend` (float32, chunked,
    SDPA's mask meaning) and records it; everywhere else it calls the original. So the model's own
    code makes every input to the kernel, and the weights recorded are the ones that produced the
    output. Where the image and text tokens are comes from ``Family.joint_layout``.
    """

    def __init__(self, recording: Recording, fam, modules: dict[str, Any], chunk_elements: int = CHUNK_ELEMENTS):
        self.recording, self.fam, self.modules, self.chunk_elements = recording, fam, modules, chunk_elements
        self.current: str | None = None
        self.module = fam.attention_kernel_module()
        self.original = self.module.dispatch_attention_fn
        self.handles: list = []

    def kernel(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False, attention_kwargs=None, **kw):
        layer = self.current
        plan = None
        if layer is not None and not is_causal and not enable_gqa:
            b, n_q, n_k = query.shape[0], query.shape[1], key.shape[1]
            img_start, n_img, txt_start, n_txt = self.fam.joint_layout(layer, n_q, n_k, self.recording.call)
            plan = self.recording.plan(b, img_start, n_img, txt_start, n_txt, query.device)
        if plan is None:
            return self.original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                 scale=scale, enable_gqa=enable_gqa, attention_kwargs=attention_kwargs, **kw)
        mask = attn_mask
        if mask is not None and mask.ndim == 2:  # (B, L_k): per-row key mask
            mask = mask[:, None, None, :]
        out, rec = attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), mask, plan,
                          self.chunk_elements, scale)
        self.recording.save(layer, rec)
        return out.transpose(1, 2).to(query.dtype)

    def __enter__(self):
        def enter(name):
            def pre(module, args, kwargs):
                self.current = name

            return pre

        def leave(module, args, kwargs, output):
            self.current = None

        try:
            for name, m in self.modules.items():
                self.handles.append(m.register_forward_pre_hook(enter(name), with_kwargs=True))
                self.handles.append(m.register_forward_hook(leave, with_kwargs=True))
            self.module.dispatch_attention_fn = self.kernel
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self.module.dispatch_attention_fn = self.original
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.current = None
        return False
