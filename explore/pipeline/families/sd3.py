"""Stable Diffusion 3 / 3.5 (`SD3Transformer2DModel`): MM-DiT, classifier-free guidance, T5 optional."""

from __future__ import annotations

import torch

from .base import Family, token_spans
from .parts import TINY_RES, clip_encoder, clip_tokenizer, eval_mode, t5_encoder, t5_tokenizer, tiny_vae


def _vae_factor(pipe) -> int:
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


class SD3(Family):
    name = "sd3"
    transformer_classes = ("SD3Transformer2DModel",)
    tiny_name = "tiny-sd3"  # its tiny random pipeline (explore.load_pipeline)
    cfg = True
    timestep_scale = 1000.0
    default_sampler = {"steps": 28, "guidance": 7.0}
    # diffusers' default, with or without T5 (without, the pipeline pads 256 zero tokens); a model folder's
    # explore.json may say otherwise (ShapesWorld: 0, its text stream is the CLIP tokens)
    default_max_sequence_length = 256
    # Published defaults: FlowEdit's official SD3 config; RF-Inversion and FluxSpace after their FLUX
    # references, with CFG in the regeneration (the model's own guidance)
    peer_defaults = {
        "flowedit": {"steps": 50, "n_max": 33, "source_guidance": 3.5, "target_guidance": 13.5},
        # FlowAlign's run_edit.py: 33 steps, all of them run, CFG 13.5 (against the source caption), ζ 0.01
        "flowalign": {"steps": 33, "n_max": 33, "target_guidance": 13.5, "consistency": 0.01},
        "rf-inversion": {"steps": 28, "gamma": 0.5, "eta": 0.9, "start": 0.0, "stop": 0.38, "source_guidance": 1.0,
                         "target_guidance": None, "inversion_prompt": "empty"},
        # UniEdit-Flow's diffusers demo (scripts/edit.sh): 15 steps, α 0.6, ω 5, guidance_scale 1 (no CFG),
        # the inversion with the empty prompt, the schedulers' signed mask on the unpacked latents
        "unieditflow": {"steps": 15, "alpha": 0.6, "omega": 5.0, "guidance": 1.0, "inversion_prompt": "empty",
                        "mask": "signed", "mask_patch": 1},
        "fluxspace": {"steps": 30, "gamma": 0.5, "eta": 0.9, "start": 0.0, "stop": 0.25, "source_guidance": 1.0,
                      "target_guidance": None, "inversion_prompt": "empty", "fine": 3.0, "coarse": 0.5,
                      "threshold": 0.5, "edit_start": 3},
    }

    def concept_step(self, block, args, kwargs, concepts):
        """ConceptAttention on an SD3 `JointTransformerBlock` (its modules, the stock processor's maths)."""
        import torch.nn.functional as F

        img = kwargs.get("hidden_states", args[0] if args else None)
        txt = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        temb = kwargs.get("temb", args[2] if len(args) > 2 else None)
        attn = block.attn
        norm_img = block.norm1(img, emb=temb)[0]
        if block.context_pre_only:
            norm_txt = block.norm1_context(txt, temb)
            norm_con = block.norm1_context(concepts, temb)
        else:
            norm_txt = block.norm1_context(txt, emb=temb)[0]
            norm_con, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(concepts, emb=temb)
        heads = attn.heads

        def split(x, proj, norm):
            y = proj(x)
            y = y.view(y.shape[0], -1, heads, y.shape[-1] // heads).transpose(1, 2)
            return norm(y) if norm is not None else y

        q_i, k_i, v_i = split(norm_img, attn.to_q, attn.norm_q), split(norm_img, attn.to_k, attn.norm_k), \
            split(norm_img, attn.to_v, None)
        k_t, v_t = split(norm_txt, attn.add_k_proj, attn.norm_added_k), split(norm_txt, attn.add_v_proj, None)
        q_c, k_c, v_c = (split(norm_con, attn.add_q_proj, attn.norm_added_q),
                         split(norm_con, attn.add_k_proj, attn.norm_added_k), split(norm_con, attn.add_v_proj, None))
        o_img = F.scaled_dot_product_attention(q_i, torch.cat([k_i, k_t], 2), torch.cat([v_i, v_t], 2))
        o_con = F.scaled_dot_product_attention(q_c, torch.cat([k_i, k_c], 2), torch.cat([v_i, v_c], 2))
        o_img = o_img.transpose(1, 2).flatten(2)
        o_con = o_con.transpose(1, 2).flatten(2)
        if block.context_pre_only:
            return o_img, o_con, concepts
        out = concepts + c_gate_msa.unsqueeze(1) * attn.to_add_out(o_con)
        norm = block.norm2_context(out) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        return o_img, o_con, out + c_gate_mlp.unsqueeze(1) * block.ff_context(norm)

    def encode_prompt(self, pipe, prompts, max_sequence_length):
        c, _, p, _ = pipe.encode_prompt(prompts, None, None, device=pipe._execution_device,
                                        do_classifier_free_guidance=False, max_sequence_length=max_sequence_length)
        return c, p

    def long_tokenizer(self, pipe):
        return getattr(pipe, "tokenizer_3", None)

    def word_positions(self, pipe, prompt, spans, max_sequence_length):
        # c is the CLIP tokens (padded to the CLIP length) then the T5 tokens, when there is a T5
        n_clip = pipe.tokenizer_max_length
        out = token_spans(pipe.tokenizer, prompt, spans, n_clip)
        if getattr(pipe, "text_encoder_3", None) is not None and max_sequence_length:
            out += [n_clip + i for i in token_spans(pipe.tokenizer_3, prompt, spans, max_sequence_length)]
        return out

    def forward(self, pipe, z_t, t, c, p, guidance, dtype):
        return pipe.transformer(hidden_states=z_t.to(dtype), encoder_hidden_states=c.to(dtype),
                                pooled_projections=p.to(dtype), timestep=(t * self.timestep_scale).to(dtype),
                                return_dict=False)[0]

    def pipeline_cond_rows(self, pipe, n):
        cond = torch.ones(n, dtype=torch.bool)
        if getattr(pipe, "do_classifier_free_guidance", False) and n % 2 == 0:
            cond[: n // 2] = False  # SD3 pipelines stack [negative; positive]
        return cond

    def size_multiple(self, pipe):
        return _vae_factor(pipe) * pipe.transformer.config.patch_size

    def max_image_side(self, pipe):
        # SD3/SD3.5 learn a pos_embed_max_size x pos_embed_max_size grid of patch positions
        cfg = pipe.transformer.config
        grid = getattr(cfg, "pos_embed_max_size", None)
        return None if grid is None else int(grid) * int(cfg.patch_size) * _vae_factor(pipe)

    def resolution(self, pipe):
        return int(pipe.transformer.config.sample_size * _vae_factor(pipe))

    def attention_processor(self):
        from diffusers.models.attention_processor import JointAttnProcessor2_0

        return JointAttnProcessor2_0

    def attention_grid(self, transformer, hidden_states, kwargs):
        if hidden_states is None:
            return None
        ps = transformer.config.patch_size
        return hidden_states.shape[-2] // ps, hidden_states.shape[-1] // ps

    def query_key(self, attn, hidden_states, encoder_hidden_states, rope):
        heads = attn.heads
        q = attn.to_q(hidden_states)
        d = q.shape[-1] // heads
        q = q.view(q.shape[0], -1, heads, d).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        enc = encoder_hidden_states
        k = attn.add_k_proj(enc).view(enc.shape[0], -1, heads, d).transpose(1, 2)
        if attn.norm_added_k is not None:
            k = attn.norm_added_k(k)
        return q, k, d

    def transformer_class(self):
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel

    def tiny(self, seed, **transformer_overrides):
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline


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
        transformer = self.transformer_class()(**{**config, **transformer_overrides})
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
            vae=tiny_vae(4, seed + 4), text_encoder=te1, tokenizer=tok, text_encoder_2=te2,
            tokenizer_2=clip_tokenizer(), text_encoder_3=te3, tokenizer_3=tok3,
        )
        eval_mode(pipe)
        return pipe, {"steps": 4, "guidance": 4.0, "shift": 1.0}

    def random_pipeline(self, arch, transformer, vae, stand_ins):
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        text = arch["text"]
        sched = FlowMatchEulerDiscreteScheduler(shift=arch["sampler"].get("shift", 3.0))
        tok_clip, tok_t5 = stand_ins("clip_tokenizer"), stand_ins("t5_tokenizer")
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=sched, vae=vae,
            text_encoder=stand_ins("clip", text["clip_l"], True), tokenizer=tok_clip,
            text_encoder_2=stand_ins("clip", text["clip_g"], True), tokenizer_2=stand_ins("clip_tokenizer"),
            text_encoder_3=stand_ins("t5", text["t5"]), tokenizer_3=tok_t5)
        return pipe, arch["transformer"]["sample_size"] * 8
