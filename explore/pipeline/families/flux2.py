"""FLUX.2 (`Flux2Transformer2DModel`): [dev] (Mistral Small 3 text encoder, guidance distilled into an
embedding) and [klein] (Qwen3 text encoder; the base model with classifier-free guidance, the
step-distilled one with none).

What differs from FLUX.1, and how this adapter handles it:

- Text: three hidden layers of a chat LLM stacked per token (``3 x width`` features), the prompt
  in its chat template, padded to ``max_sequence_length`` (512) and attended unmasked — a fixed
  length, so ``c`` is the pipeline's own embedding. No pooled embedding: ``p`` is ``(B, 0)``.
- Latents: the VAE's 32-channel latent patchified 2x2 and normalised by the VAE's batch-norm
  statistics: ``z`` is ``(B, 128, H/16, W/16)``, one transformer token per latent pixel, 4-axis
  position ids ``(T, H, W, L)``. The schedule's shift ``mu`` is FLUX.2's empirical one.
- Guidance: [dev] embeds it (one row per branch); [klein] base runs separate unconditional
  calls with ``""`` (``cfg``); [klein] distilled ignores guidance (its default guidance is 1).
  The [dev] checkpoint is the ``flux2-dev`` variant of this family (chosen by the transformer's
  ``guidance_embeds``).
- Blocks: double blocks return ``(text, image)``; single blocks take and return the joint
  sequence ``[text; image]``; modulation is computed once per call and shared by all blocks.
- Attention: ``Flux2AttnProcessor`` (double) and ``Flux2ParallelSelfAttnProcessor`` (single, fused
  QKV + MLP) over **[text; image]**, recorded by swapping their kernel.
"""

from __future__ import annotations

import torch

from .base import Family
from .flux import Flux
from .parts import (
    QWEN3_ADDED,
    QWEN3_CHAT_TEMPLATE,
    QWEN_SPECIAL,
    byte_bpe_tokenizer,
    chat_text,
    eval_mode,
    span_tokens,
)
from .sd3 import SD3


def pack(z: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, h * w, C)`` tokens, row-major (FLUX.2's ``_pack_latents``)."""
    b, ch, h, w = z.shape
    return z.reshape(b, ch, h * w).permute(0, 2, 1)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, ch = x.shape
    return x.reshape(b, h, w, ch).permute(0, 3, 1, 2)


def image_ids(b: int, h: int, w: int, device) -> torch.Tensor:
    """``(B, h * w, 4)`` position ids ``(T, H, W, L)`` of the image tokens: ``(0, row, col, 0)``."""
    ids = torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))
    return ids.unsqueeze(0).expand(b, -1, -1).to(device)


def text_ids(b: int, n: int, device) -> torch.Tensor:
    """``(B, n, 4)`` position ids of the text tokens: ``(0, 0, 0, l)``."""
    ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(n))
    return ids.unsqueeze(0).expand(b, -1, -1).to(device)


def patchify(x: torch.Tensor) -> torch.Tensor:
    """The VAE latent ``(B, C, H, W)`` -> ``(B, 4C, H/2, W/2)``."""
    b, ch, h, w = x.shape
    return x.view(b, ch, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, ch * 4, h // 2, w // 2)


def unpatchify(z: torch.Tensor) -> torch.Tensor:
    b, c4, h, w = z.shape
    return z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, h * 2, w * 2)


class Flux2(Family):
    name = "flux2"
    transformer_classes = ("Flux2Transformer2DModel",)
    tiny_name = "tiny-flux2"  # its tiny random pipeline (explore.load_pipeline)
    cfg = True  # [klein] base; the [dev] variant embeds guidance
    timestep_scale = 1.0  # the pipelines pass sigma (their scheduler timestep / 1000)
    default_sampler = {"steps": 50, "guidance": 4.0}  # Flux2KleinPipeline's num_inference_steps, guidance_scale
    default_max_sequence_length = 512
    negative_prompt = ""
    # FlowEdit, RF-Inversion and FluxSpace published no FLUX.2 settings: their SD3-style (CFG) ones here,
    # FLUX.1's for the guidance-embedded [dev]
    # (FluxSpace's coarse edit acts on the pooled embedding, which this family has not: 0)
    peer_defaults = {**SD3.peer_defaults, "fluxspace": {**SD3.peer_defaults["fluxspace"], "coarse": 0.0}}

    def variant(self, pipe) -> Family:
        return FLUX2_DEV if pipe.transformer.config.guidance_embeds else self

    def sampler(self, pipe):
        if getattr(pipe.config, "is_distilled", False):
            return {"steps": 4, "guidance": 1.0}  # FLUX.2 [klein]: 4 steps, guidance ignored
        return dict(self.default_sampler)

    # -- text ----------------------------------------------------------------------------------------

    def encode_prompt(self, pipe, prompts, max_sequence_length):
        c, _ = pipe.encode_prompt(list(prompts), device=pipe._execution_device,
                                  max_sequence_length=max_sequence_length)
        return c, c.new_zeros(len(prompts), 0)

    def long_tokenizer(self, pipe):
        return pipe.tokenizer

    def _templated(self, pipe, prompt: str) -> str:
        return chat_text(pipe.tokenizer, prompt, enable_thinking=False)

    def word_positions(self, pipe, prompt, spans, max_sequence_length):
        text = self._templated(pipe, prompt)
        return span_tokens(pipe.tokenizer, text, text.index(prompt), spans, 0, max_sequence_length, padded=True)

    # -- the transformer -----------------------------------------------------------------------------

    def forward(self, pipe, z_t, t, c, p, guidance, dtype):
        tr = pipe.transformer
        b, _, h, w = z_t.shape
        g = None
        if tr.config.guidance_embeds:
            g = (torch.full((b,), 1.0, device=z_t.device) if guidance is None else guidance).to(torch.float32)
        out = tr(hidden_states=pack(z_t.to(dtype)), encoder_hidden_states=c.to(dtype), timestep=t.to(dtype),
                 img_ids=image_ids(b, h, w, z_t.device), txt_ids=text_ids(b, c.shape[1], z_t.device), guidance=g,
                 return_dict=False)[0]
        return unpack(out, h, w)

    def pipeline_cond_rows(self, pipe, n):
        return torch.ones(n, dtype=torch.bool)  # [klein] calls the transformer once per branch

    def pipeline_latents(self, z):
        return z  # prepare_latents takes the (B, 128, h, w) latent and packs it itself

    def from_pipeline_latents(self, x, h, w, pipe=None):
        if x.ndim == 3:  # [dev] returns the packed tokens
            return unpack(x, h, w)
        z = patchify(x)  # [klein] returns the VAE latent, denormalised
        mean, std = self._stats(pipe, z)
        return (z - mean) / std

    def set_timesteps_kwargs(self, config, image_tokens, steps):
        import numpy as np
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": compute_empirical_mu(image_tokens, steps)}

    # -- images --------------------------------------------------------------------------------------

    def latent_scale(self, pipe):
        return int(pipe.vae_scale_factor) * 2  # the VAE's 8, then 2x2 patches

    def image_tokens(self, h, w):
        return h * w

    def size_multiple(self, pipe):
        return self.latent_scale(pipe)

    def resolution(self, pipe):
        return 1024

    def _stats(self, pipe, z):
        bn = pipe.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(z.device, z.dtype)
        return mean, std

    def vae_encode(self, pipe, x):
        z = patchify(pipe.vae.encode(x).latent_dist.mode())  # the posterior mean, as the pipelines encode images
        mean, std = self._stats(pipe, z)
        return (z - mean) / std

    def vae_decode(self, pipe, z):
        z = z.to(pipe.vae.dtype)
        mean, std = self._stats(pipe, z)
        return pipe.vae.decode(unpatchify(z * std + mean), return_dict=False)[0]

    # -- hook sites ----------------------------------------------------------------------------------

    def stream_layout(self, transformer, args, kwargs):
        ehs = kwargs.get("encoder_hidden_states")
        hs = kwargs.get("hidden_states")
        out = {}
        if torch.is_tensor(ehs):
            out["n_txt"] = int(ehs.shape[1])
        if torch.is_tensor(hs):
            out["n_img"] = int(hs.shape[1])
        return out

    def read_streams(self, group, output, layout):
        if group == "single_transformer_blocks":  # the joint sequence [text; image]
            n = layout["n_txt"]
            return {"txt": output[:, :n], "img": output[:, n:]}
        return super().read_streams(group, output, layout)

    def write_streams(self, group, output, streams, layout):
        if group == "single_transformer_blocks":
            return torch.cat([streams["txt"], streams["img"]], dim=1)
        return super().write_streams(group, output, streams, layout)

    def block_identity(self, group, block, args, kwargs, output):
        if group == "single_transformer_blocks":  # called on the joint sequence [text; image]
            return kwargs.get("hidden_states", args[0] if args else None)
        return super().block_identity(group, block, args, kwargs, output)

    # -- attention -----------------------------------------------------------------------------------

    def attention_processor(self):
        from diffusers.models.transformers.transformer_flux2 import Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor

        return (Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor)

    def attention_kernel_module(self):
        from diffusers.models.transformers import transformer_flux2

        return transformer_flux2

    def joint_layout(self, layer, n_query, n_key, call):
        n_img = call["n_img"]
        return n_key - n_img, n_img, 0, n_key - n_img  # [text; image]

    def attention_grid(self, transformer, hidden_states, kwargs):
        return Flux.attention_grid(self, transformer, hidden_states, kwargs)  # ids (t, h, w, l): h, w as FLUX.1's

    def query_key(self, attn, hidden_states, encoder_hidden_states, rope):
        return Flux.query_key(self, attn, hidden_states, encoder_hidden_states, rope)  # the same projections

    # -- building ------------------------------------------------------------------------------------

    def transformer_class(self):
        from diffusers import Flux2Transformer2DModel

        return Flux2Transformer2DModel

    def vae_class(self):
        from diffusers import AutoencoderKLFlux2

        return AutoencoderKLFlux2

    @staticmethod
    def scheduler():
        """FLUX.1-dev's scheduler config (what diffusers' FLUX.2 conversion installs); the pipelines pass their
        own ``mu``, so only ``use_dynamic_shifting`` and the exponential shift matter."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                               base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                               max_image_seq_len=4096, time_shift_type="exponential")

    @staticmethod
    def tokenizer():
        # merges for the template words, so the chat template costs the real tokenizer's 12 tokens
        return byte_bpe_tokenizer(QWEN_SPECIAL, added=QWEN3_ADDED, whole=("user", "assistant", "system", "\n\n"),
                                  chat_template=QWEN3_CHAT_TEMPLATE)

    @staticmethod
    def text_encoder(tokenizer, width: int, seed: int, head_dim: int = 8, intermediate: int = 32):
        """A Qwen3 causal LM of 28 layers (the pipeline stacks hidden layers 9, 18, 27) at ``width``."""
        from transformers import Qwen3Config, Qwen3ForCausalLM

        torch.manual_seed(seed)
        return Qwen3ForCausalLM(Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=intermediate, num_hidden_layers=28,
            num_attention_heads=2, num_key_value_heads=1, head_dim=head_dim, max_position_embeddings=1024,
            tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id))

    def tiny_vae(self, seed: int):
        from diffusers import AutoencoderKLFlux2

        torch.manual_seed(seed)
        vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                                 up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8),
                                 layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32,
                                 use_quant_conv=True, use_post_quant_conv=True, batch_norm_eps=1e-4,
                                 patch_size=(2, 2))
        n = vae.bn.running_mean.numel()  # batch-norm statistics that do something (a checkpoint's are learned)
        vae.bn.running_mean.copy_(0.1 * torch.randn(n))
        vae.bn.running_var.copy_(0.5 + torch.rand(n))
        return vae

    def tiny_transformer(self, seed: int, guidance_embeds: bool, **overrides):
        torch.manual_seed(seed)
        config = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=8,
                      num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=256, mlp_ratio=3.0,
                      axes_dims_rope=(2, 2, 2, 2), rope_theta=2000, eps=1e-6, guidance_embeds=guidance_embeds)
        return self.transformer_class()(**{**config, **overrides})

    def tiny(self, seed, distilled: bool = False, **transformer_overrides):
        from diffusers import Flux2KleinPipeline

        tok = self.tokenizer()
        pipe = Flux2KleinPipeline(scheduler=self.scheduler(), vae=self.tiny_vae(seed + 2),
                                  text_encoder=self.text_encoder(tok, 16, seed + 1), tokenizer=tok,
                                  transformer=self.tiny_transformer(seed, False, **transformer_overrides),
                                  is_distilled=distilled)
        eval_mode(pipe)
        return pipe, {**self.sampler(pipe), "steps": 4, "max_sequence_length": 32}

    def random_pipeline(self, arch, transformer, vae, stand_ins):
        from diffusers import Flux2KleinPipeline

        tok = self.tokenizer()
        # a 28-layer stand-in as wide as the real encoder, with 16 head and MLP channels: cheap, and the
        # transformer sees the real feature width (3 x width) and text length
        te = self.text_encoder(tok, arch["text"]["width"], 0, head_dim=16, intermediate=16)
        pipe = Flux2KleinPipeline(scheduler=self.scheduler(), vae=vae, text_encoder=te, tokenizer=tok,
                                  transformer=transformer, is_distilled=arch.get("distilled", False))
        return pipe, 1024


class Flux2Dev(Flux2):
    """FLUX.2 [dev]: guidance distilled into an embedding (one row per branch), the Mistral text encoder."""

    name = "flux2-dev"
    tiny_name = "tiny-flux2-dev"
    cfg = False
    default_sampler = {"steps": 50, "guidance": 4.0}  # Flux2Pipeline's num_inference_steps, guidance_scale
    peer_defaults = {**Flux2.peer_defaults, **{k: v for k, v in Flux.peer_defaults.items()},
                     "unieditflow": {**Flux.peer_defaults["unieditflow"], "mask_patch": 1}}  # a token per latent pixel

    def variant(self, pipe):
        return self

    def sampler(self, pipe):
        return dict(self.default_sampler)

    def _templated(self, pipe, prompt):
        from diffusers.pipelines.flux2.pipeline_flux2 import format_input

        return pipe.tokenizer.apply_chat_template(format_input([prompt])[0], tokenize=False,
                                                  add_generation_prompt=False)

    @staticmethod
    def tokenizer():
        from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

        return byte_bpe_tokenizer(_TEKKEN_SPECIAL, whole=(SYSTEM_MESSAGE,), chat_template=_MISTRAL_TEMPLATE,
                                  eos="</s>", pad="<pad>", bos="<s>", pretokenize=_TEKKEN_PRETOKENIZE)

    @staticmethod
    def text_encoder(tokenizer, width: int, seed: int, head_dim: int = 8, intermediate: int = 32):
        """A Mistral-3 model of 31 layers (the pipeline stacks hidden layers 10, 20, 30) at ``width``."""
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

        ids = tokenizer.convert_tokens_to_ids
        text = MistralConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=intermediate,
                             num_hidden_layers=31, num_attention_heads=2, num_key_value_heads=1, head_dim=head_dim,
                             max_position_embeddings=1024, bos_token_id=ids("<s>"), eos_token_id=ids("</s>"),
                             pad_token_id=ids("<pad>"))
        vision = PixtralVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     head_dim=4, image_size=32, patch_size=8)
        torch.manual_seed(seed)
        return Mistral3ForConditionalGeneration(Mistral3Config(vision_config=vision, text_config=text,
                                                               image_token_index=ids("[IMG]"), spatial_merge_size=2,
                                                               vision_feature_layer=-1))

    def tiny(self, seed, **transformer_overrides):
        from diffusers import Flux2Pipeline

        tok = self.tokenizer()
        pipe = Flux2Pipeline(scheduler=self.scheduler(), vae=self.tiny_vae(seed + 2),
                             text_encoder=self.text_encoder(tok, 16, seed + 1), tokenizer=tok,
                             transformer=self.tiny_transformer(seed, True, **transformer_overrides))
        eval_mode(pipe)
        return pipe, {"steps": 4, "guidance": 4.0, "max_sequence_length": 64}

    def random_pipeline(self, arch, transformer, vae, stand_ins):
        from diffusers import Flux2Pipeline

        tok = self.tokenizer()
        te = self.text_encoder(tok, arch["text"]["width"], 0, head_dim=16, intermediate=16)
        return Flux2Pipeline(scheduler=self.scheduler(), vae=vae, text_encoder=te, tokenizer=tok,
                             transformer=transformer), 1024


FLUX2_DEV = Flux2Dev()
Flux2.variants = (FLUX2_DEV,)

# Mistral Small 3's special tokens (Tekken) and split regex, and its chat template for what FLUX.2 [dev]
# renders: the system message, then the user's text blocks
_TEKKEN_SPECIAL = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                   "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                   "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]")
_TEKKEN_PRETOKENIZE = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                       r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
                       r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_MISTRAL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') "
    "| join('') %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
