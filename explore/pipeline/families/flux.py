"""FLUX.1 (`FluxTransformer2DModel`): double- then single-stream blocks, packed 2x2 latents, RoPE
position ids, guidance distilled into an embedding (no unconditional rows)."""

from __future__ import annotations

import torch

from .base import Family, token_spans
from .parts import clip_encoder, clip_tokenizer, eval_mode, t5_encoder, t5_tokenizer, tiny_vae


def pack(z: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> FLUX's packed ``(B, h/2 * w/2, 4C)`` tokens."""
    b, ch, h, w = z.shape
    return z.view(b, ch, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), ch * 4)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """FLUX's packed tokens back to ``(B, C, h, w)``."""
    b, _, d = x.shape
    return x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """FLUX's ``(h * w, 3)`` position ids of an ``h x w`` grid of packed tokens."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)


class Flux(Family):
    name = "flux"
    transformer_classes = ("FluxTransformer2DModel",)
    tiny_name = "tiny-flux"  # its tiny random pipeline (explore.load_pipeline)
    cfg = False
    timestep_scale = 1.0
    default_sampler = {"steps": 28, "guidance": 3.5}
    default_max_sequence_length = 512
    # Published defaults: FlowEdit's official FLUX config; RF-Inversion after the diffusers community
    # pipeline and its example; FluxSpace after its demo and reference inversion
    peer_defaults = {
        "flowedit": {"steps": 28, "n_max": 24, "source_guidance": 1.5, "target_guidance": 5.5},
        # FlowAlign published SD3 only: FlowEdit's FLUX schedule, the model's own embedded guidance for all
        # three evaluations and no true CFG (w 1), the published ζ
        "flowalign": {"steps": 28, "n_max": 24, "target_guidance": 1.0, "consistency": 0.01,
                      "embedded_guidance": None},
        "rf-inversion": {"steps": 28, "gamma": 0.5, "eta": 0.9, "start": 0.0, "stop": 0.38, "source_guidance": 0.0,
                         "target_guidance": 3.5, "inversion_prompt": "empty"},
        # UniEdit-Flow's FLUX code (UniEdit-Flow_FLUX, README): 15 steps, α 0.6, ω 5, the guidance embedding at
        # 1 for the inversion and the edit, the mask from |v_trg - v_src| averaged over each packed token
        "unieditflow": {"steps": 15, "alpha": 0.6, "omega": 5.0, "guidance": 1.0, "inversion_prompt": "empty",
                        "mask": "abs", "mask_patch": 2},
        "fluxspace": {"steps": 30, "gamma": 0.5, "eta": 0.9, "start": 0.0, "stop": 0.25, "source_guidance": 0.0,
                      "target_guidance": 3.5, "inversion_prompt": "empty", "fine": 3.0, "coarse": 0.5,
                      "threshold": 0.5, "edit_start": 3},
    }

    def encode_prompt(self, pipe, prompts, max_sequence_length):
        c, p, _ = pipe.encode_prompt(prompts, None, device=pipe._execution_device,
                                     max_sequence_length=max_sequence_length)
        return c, p

    def long_tokenizer(self, pipe):
        return getattr(pipe, "tokenizer_2", None)

    def word_positions(self, pipe, prompt, spans, max_sequence_length):
        return token_spans(pipe.tokenizer_2, prompt, spans, max_sequence_length)  # c is the T5 tokens

    def forward(self, pipe, z_t, t, c, p, guidance, dtype):
        tr = pipe.transformer
        device, n = z_t.device, z_t.shape[0]
        h, w = z_t.shape[-2:]
        g = None
        if tr.config.guidance_embeds:
            g = (torch.full((n,), 1.0, device=device) if guidance is None else guidance).to(torch.float32)
        out = tr(hidden_states=pack(z_t.to(dtype)), encoder_hidden_states=c.to(dtype), pooled_projections=p.to(dtype),
                 timestep=t.to(dtype), img_ids=image_ids(h // 2, w // 2, device, dtype),
                 txt_ids=torch.zeros(c.shape[1], 3, device=device, dtype=dtype), guidance=g, return_dict=False)[0]
        return unpack(out, h, w)

    def pipeline_latents(self, z):
        return pack(z)

    def from_pipeline_latents(self, x, h, w, pipe=None):
        return unpack(x, h, w)

    def size_multiple(self, pipe):
        return 2 ** (len(pipe.vae.config.block_out_channels) - 1) * 2

    def latent_channels(self, pipe):
        return int(pipe.transformer.config.in_channels) // 4  # packed 2x2

    def resolution(self, pipe):
        return 1024

    def attention_processor(self):
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        return FluxAttnProcessor

    def attention_grid(self, transformer, hidden_states, kwargs):
        ids = kwargs.get("img_ids")
        if ids is None:
            return None
        ids = ids[0] if ids.ndim == 3 else ids
        return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1

    def query_key(self, attn, hidden_states, encoder_hidden_states, rope):
        from diffusers.models.embeddings import apply_rotary_emb

        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (-1, attn.head_dim)))
        k = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
        if rope is not None:  # RoPE over the joint [text; image] sequence, as the processor applies it
            both = apply_rotary_emb(torch.cat([k, q], 1), rope, sequence_dim=1)
            k, q = both[:, : k.shape[1]], both[:, k.shape[1]:]
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        return q, k, q.shape[-1]

    def concept_step(self, block, args, kwargs, concepts):
        """ConceptAttention on a FLUX double-stream block (the text stream's weights) or single-stream
        block (the shared weights); concept tokens get no rotation, as FLUX's text tokens (all ids zero)."""
        import torch.nn.functional as F
        from diffusers.models.embeddings import apply_rotary_emb

        def arg(i, name):
            return kwargs.get(name, args[i] if len(args) > i else None)

        img, txt, temb, rope = (arg(0, "hidden_states"), arg(1, "encoder_hidden_states"), arg(2, "temb"),
                                arg(3, "image_rotary_emb"))
        attn, n_txt = block.attn, txt.shape[1]

        def heads(x):
            return x.unflatten(-1, (-1, attn.head_dim))

        def rotate(x, lo, hi=None):
            return x if rope is None else apply_rotary_emb(x, (rope[0][lo:hi], rope[1][lo:hi]), sequence_dim=1)

        def sdpa(q, k, v):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return out.transpose(1, 2).flatten(2, 3).to(q.dtype)

        if not hasattr(block, "norm1_context"):  # single-stream: text and image share the weights
            norm, _ = block.norm(torch.cat([txt, img], 1), emb=temb)
            norm_con, gate = block.norm(concepts, emb=temb)
            q = rotate(attn.norm_q(heads(attn.to_q(norm))), 0)
            k = rotate(attn.norm_k(heads(attn.to_k(norm))), 0)
            v = heads(attn.to_v(norm))
            q_c, k_c, v_c = (attn.norm_q(heads(attn.to_q(norm_con))), attn.norm_k(heads(attn.to_k(norm_con))),
                             heads(attn.to_v(norm_con)))
            o_img = sdpa(q[:, n_txt:], k, v)
            o_con = sdpa(q_c, torch.cat([k_c, k[:, n_txt:]], 1), torch.cat([v_c, v[:, n_txt:]], 1))
            mlp = block.act_mlp(block.proj_mlp(norm_con))
            return o_img, o_con, concepts + gate.unsqueeze(1) * block.proj_out(torch.cat([o_con, mlp], 2))
        norm_img = block.norm1(img, emb=temb)[0]
        norm_txt = block.norm1_context(txt, emb=temb)[0]
        norm_con, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(concepts, emb=temb)
        q_i = rotate(attn.norm_q(heads(attn.to_q(norm_img))), n_txt)
        k_i = rotate(attn.norm_k(heads(attn.to_k(norm_img))), n_txt)
        v_i = heads(attn.to_v(norm_img))
        k_t = rotate(attn.norm_added_k(heads(attn.add_k_proj(norm_txt))), 0, n_txt)
        v_t = heads(attn.add_v_proj(norm_txt))
        q_c = attn.norm_added_q(heads(attn.add_q_proj(norm_con)))
        k_c, v_c = attn.norm_added_k(heads(attn.add_k_proj(norm_con))), heads(attn.add_v_proj(norm_con))
        o_img = sdpa(q_i, torch.cat([k_t, k_i], 1), torch.cat([v_t, v_i], 1))
        o_con = sdpa(q_c, torch.cat([k_c, k_i], 1), torch.cat([v_c, v_i], 1))
        out = concepts + c_gate_msa.unsqueeze(1) * attn.to_add_out(o_con)
        norm = block.norm2_context(out) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        return o_img, o_con, out + c_gate_mlp.unsqueeze(1) * block.ff_context(norm)

    def transformer_class(self):
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    def tiny(self, seed, **transformer_overrides):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline


        tok, tok2 = clip_tokenizer(), t5_tokenizer()
        te1 = clip_encoder(False, 16, seed + 1, len(tok))
        te2 = t5_encoder(32, seed + 2, len(tok2))
        torch.manual_seed(seed)
        config = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=8,
                      num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
                      axes_dims_rope=(2, 2, 4))
        transformer = self.transformer_class()(**{**config, **transformer_overrides})
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True), vae=tiny_vae(4, seed + 4),
            text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, transformer=transformer,
        )
        eval_mode(pipe)
        return pipe, {"steps": 4, "guidance": 3.5}

    def random_pipeline(self, arch, transformer, vae, stand_ins):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        text = arch["text"]
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
        pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=stand_ins("clip", text["clip_l"], False),
                            tokenizer=stand_ins("clip_tokenizer"), text_encoder_2=stand_ins("t5", text["t5"]),
                            tokenizer_2=stand_ins("t5_tokenizer"), transformer=transformer)
        return pipe, 1024
