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
        "rf-inversion": {"steps": 28, "gamma": 0.5, "eta": 0.9, "start": 0.0, "stop": 0.38, "source_guidance": 0.0,
                         "target_guidance": 3.5, "inversion_prompt": "empty"},
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
