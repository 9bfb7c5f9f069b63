"""Qwen-Image (`QwenImageTransformer2DModel`): a 60-block MM-DiT over a Qwen2.5-VL text encoder.

What differs from SD3 / FLUX.1, and how this adapter handles it:

- Text: the last hidden state of Qwen2.5-VL over the prompt in a fixed system template (the
  template's first 34 tokens dropped); prompts have different lengths and a mask. ``c`` is those
  rows cut or padded with zero rows to ``max_sequence_length``; the transformer call masks the
  zero rows and drops trailing all-padding columns, which reproduces the pipeline's own masked
  call (text RoPE positions are slot indices, so trailing padding moves nothing). No pooled
  embedding: ``p`` is ``(B, 0)``.
- Guidance: true classifier-free guidance as separate rows with a negative prompt (the model
  card's ``" "``), combined as the pipeline does, rescaled to the conditional velocity's norm per
  token. The transformer takes the flow sigma itself as its timestep.
- Latents: a video VAE (``(B, C, T, H, W)``, normalised by per-channel ``latents_mean`` /
  ``latents_std``); one frame, so ``z`` is ``(B, 16, H/8, W/8)``, packed into 2x2 patches for the
  transformer like FLUX.1's.
- Attention: ``QwenDoubleStreamAttnProcessor2_0`` over **[text; image]**, recorded by swapping its
  attention kernel (`explore.interp.attention_processors.KernelSwap`).
"""

from __future__ import annotations

import torch

from .base import Family
from .flux import pack, unpack
from .parts import QWEN_SPECIAL, byte_bpe_tokenizer, eval_mode, pad_rows, span_tokens, valid_rows
from .sd3 import SD3

TEMPLATE_DROP = 34  # the pipeline's prompt_template_encode_start_idx


class QwenImage(Family):
    name = "qwen-image"
    transformer_classes = ("QwenImageTransformer2DModel",)
    tiny_name = "tiny-qwen-image"  # its tiny random pipeline (explore.load_pipeline)
    cfg = True
    timestep_scale = 1.0  # the pipeline passes sigma (its scheduler timestep / 1000)
    default_sampler = {"steps": 50, "guidance": 4.0}  # the pipeline's num_inference_steps and true_cfg_scale
    default_max_sequence_length = 512
    negative_prompt = " "  # the model card's negative prompt (true CFG needs one)
    block_groups = ("transformer_blocks",)
    unsupported_methods = {}
    # FlowEdit, RF-Inversion and FluxSpace published no Qwen-Image settings: their SD3-style (CFG) ones
    # (FluxSpace's coarse edit acts on the pooled embedding, which this family has not: 0)
    peer_defaults = {**SD3.peer_defaults, "fluxspace": {**SD3.peer_defaults["fluxspace"], "coarse": 0.0},
                     "unieditflow": {**SD3.peer_defaults["unieditflow"], "mask_patch": 2}}  # packed 2x2 tokens

    # -- text ----------------------------------------------------------------------------------------

    def encode_prompt(self, pipe, prompts, max_sequence_length):
        rows = []
        for q in prompts:  # one at a time: a prompt's rows do not depend on the others' lengths
            c, mask = pipe.encode_prompt([q], device=pipe._execution_device, max_sequence_length=max_sequence_length)
            rows.append(c[0] if mask is None else c[0][mask[0].bool()])
        c = pad_rows(rows, max_sequence_length)
        return c, c.new_zeros(len(prompts), 0)

    def long_tokenizer(self, pipe):
        return pipe.tokenizer

    def word_positions(self, pipe, prompt, spans, max_sequence_length):
        template = pipe.prompt_template_encode
        return span_tokens(pipe.tokenizer, template.format(prompt), template.index("{}"), spans,
                            pipe.prompt_template_encode_start_idx, max_sequence_length)

    # -- the transformer -----------------------------------------------------------------------------

    def forward(self, pipe, z_t, t, c, p, guidance, dtype):
        h, w = z_t.shape[-2:]
        if c.is_meta:  # a memory estimate (no values): every text row counts
            mask = torch.ones(c.shape[:2], dtype=torch.bool)
        else:
            mask = valid_rows(c)
            n = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1  # trailing padding columns dropped
            c, mask = c[:, :n], mask[:, :n]
        out = pipe.transformer(hidden_states=pack(z_t.to(dtype)), timestep=t.to(dtype), guidance=None,
                               encoder_hidden_states=c.to(dtype),
                               encoder_hidden_states_mask=None if bool(mask.all()) else mask,
                               img_shapes=[[(1, h // 2, w // 2)]] * z_t.shape[0], return_dict=False)[0]
        return unpack(out, h, w)

    def combine(self, v_c, v_u, s):
        """The pipeline's true CFG: ``v_u + s (v_c - v_u)`` rescaled per token (2x2 patch, all channels) to
        the norm of ``v_c``."""
        h, w = v_c.shape[-2:]
        pc, pu = pack(v_c), pack(v_u)
        comb = pu + s.view(-1, 1, 1) * (pc - pu)
        return unpack(comb * (pc.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True)), h, w)

    def pipeline_kwargs(self, guidance):
        return {"true_cfg_scale": guidance, "negative_prompt": self.negative_prompt}

    def pipeline_latents(self, z):
        return pack(z)

    def from_pipeline_latents(self, x, h, w, pipe=None):
        return unpack(x, h, w)

    def pipeline_cond_rows(self, pipe, n):
        return torch.ones(n, dtype=torch.bool)  # the pipeline calls the transformer once per branch

    # -- images --------------------------------------------------------------------------------------

    def latent_scale(self, pipe):
        return int(pipe.vae_scale_factor)

    def size_multiple(self, pipe):
        return self.latent_scale(pipe) * 2

    def latent_channels(self, pipe):
        return int(pipe.transformer.config.in_channels) // 4

    def resolution(self, pipe):
        return 1024

    def _stats(self, pipe, z):
        cfg = pipe.vae.config
        mean = torch.tensor(cfg.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        return mean, std

    def vae_encode(self, pipe, x):
        z = pipe.vae.encode(x[:, :, None]).latent_dist.mode()  # one frame; the posterior mean
        mean, std = self._stats(pipe, z)
        return ((z - mean) / std)[:, :, 0]

    def vae_decode(self, pipe, z):
        z = z.to(pipe.vae.dtype)[:, :, None]
        mean, std = self._stats(pipe, z)
        return pipe.vae.decode(z / (1.0 / std) + mean, return_dict=False)[0][:, :, 0]

    # -- attention -----------------------------------------------------------------------------------

    def attention_processor(self):
        from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0

        return QwenDoubleStreamAttnProcessor2_0

    def attention_kernel_module(self):
        from diffusers.models.transformers import transformer_qwenimage

        return transformer_qwenimage

    def stream_layout(self, transformer, args, kwargs):
        hs = kwargs.get("hidden_states", args[0] if args else None)
        return {"n_img": int(hs.shape[1])} if torch.is_tensor(hs) else {}

    def joint_layout(self, layer, n_query, n_key, call):
        n_img = call["n_img"]
        return n_key - n_img, n_img, 0, n_key - n_img  # [text; image]

    def attention_grid(self, transformer, hidden_states, kwargs):
        shapes = kwargs.get("img_shapes")
        if not shapes:
            return None
        _, gh, gw = shapes[0][0]
        return int(gh), int(gw)

    def query_key(self, attn, hidden_states, encoder_hidden_states, rope):
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        d = attn.inner_dim // attn.heads
        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (-1, d)))
        k = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, d)))
        if rope is not None:
            img_freqs, txt_freqs = rope
            q = apply_rotary_emb_qwen(q, img_freqs, use_real=False)
            k = apply_rotary_emb_qwen(k, txt_freqs, use_real=False)
        return q.transpose(1, 2), k.transpose(1, 2), d

    # -- building ------------------------------------------------------------------------------------

    def transformer_class(self):
        from diffusers import QwenImageTransformer2DModel

        return QwenImageTransformer2DModel

    @staticmethod
    def scheduler():
        """The published Qwen/Qwen-Image scheduler: exponential dynamic shift 0.5..0.9 over 256..8192 tokens,
        sigmas stretched to end at 0.02."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, num_train_timesteps=1000,
            shift=1.0, shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)

    @staticmethod
    def tokenizer():
        return byte_bpe_tokenizer(QWEN_SPECIAL, whole=(_TEMPLATE,))

    def vae_class(self):
        from diffusers import AutoencoderKLQwenImage

        return AutoencoderKLQwenImage

    @staticmethod
    def text_encoder(tokenizer, width: int, seed: int, layers: int = 2, heads: int = 2,
                     intermediate: int | None = None):
        """A Qwen2.5-VL of ``layers`` layers at ``width`` (heads of ``width / heads`` channels; M-RoPE needs 16)."""
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        ids = tokenizer.convert_tokens_to_ids
        torch.manual_seed(seed)
        cfg = Qwen2_5_VLConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=intermediate or 2 * width,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=1,
                             max_position_embeddings=2048,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                             bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                             pad_token_id=ids("<|endoftext|>")),
            vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, in_channels=3, patch_size=2,
                               spatial_merge_size=2, temporal_patch_size=2, window_size=4, out_hidden_size=width,
                               fullatt_block_indexes=[0]),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
            tie_word_embeddings=False)
        return Qwen2_5_VLForConditionalGeneration(cfg)

    def tiny(self, seed, **transformer_overrides):
        from diffusers import AutoencoderKLQwenImage, QwenImagePipeline

        z_dim = 4
        tok = self.tokenizer()
        te = self.text_encoder(tok, 32, seed + 3)
        g = torch.Generator().manual_seed(seed + 1)
        mean, std = (torch.randn(z_dim, generator=g) * 0.5).tolist(), (torch.rand(z_dim, generator=g) + 0.5).tolist()
        torch.manual_seed(seed + 2)
        vae = AutoencoderKLQwenImage(base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
                                     temperal_downsample=[False, True, True], dropout=0.0, latents_mean=mean,
                                     latents_std=std)
        torch.manual_seed(seed)
        config = dict(patch_size=2, in_channels=4 * z_dim, out_channels=z_dim, num_layers=2, attention_head_dim=16,
                      num_attention_heads=2, joint_attention_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6))
        transformer = self.transformer_class()(**{**config, **transformer_overrides})
        pipe = QwenImagePipeline(scheduler=self.scheduler(), vae=vae, text_encoder=te, tokenizer=tok,
                                 transformer=transformer)
        if pipe.prompt_template_encode != _TEMPLATE:
            raise RuntimeError("diffusers changed Qwen-Image's prompt template; update explore's tiny tokenizer")
        eval_mode(pipe)
        return pipe, {"steps": 4, "guidance": 4.0, "max_sequence_length": 64}

    def random_pipeline(self, arch, transformer, vae, stand_ins):
        from diffusers import QwenImagePipeline

        tok = self.tokenizer()
        pipe = QwenImagePipeline(scheduler=self.scheduler(), vae=vae, transformer=transformer, tokenizer=tok,
                                 text_encoder=self.text_encoder(tok, arch["text"]["width"], 0, layers=1,
                                                                heads=arch["text"]["width"] // 16, intermediate=16))
        return pipe, 1024


# QwenImagePipeline.prompt_template_encode (checked against the pipeline when a tiny one is built)
_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
             "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
             "<|im_start|>assistant\n")
