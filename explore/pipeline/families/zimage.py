"""Z-Image (`ZImageTransformer2DModel`): a single-stream DiT, text and image tokens in one sequence.

What differs from the MM-DiTs, and how this adapter handles it:

- One stream: a noise refiner (image tokens only) and a context refiner (caption tokens only),
  then ``layers`` with shared weights over the sequence **[image; caption]**, each part padded
  to a multiple of 32 with learned pad tokens (which are attended), the batch padded and masked.
  Hook sites: ``noise_refiner.{i}.img``, ``context_refiner.{i}.txt`` and ``layers.{i}.img`` /
  ``.txt`` (the image tokens; everything after the padded image part).
- Text: Qwen3's second-to-last hidden state over the prompt in its chat template, padding rows
  dropped (prompts have different lengths). ``c`` is the rows cut or padded with zero rows to
  ``max_sequence_length``; the transformer call drops the zero rows again, which is the
  pipeline's own list of embeddings. No pooled embedding: ``p`` is ``(B, 0)``.
- Time and velocity: the transformer takes ``1 - sigma`` and predicts ``x0 - noise``; the adapter
  passes ``1 - t`` and negates, so `velocity` keeps ``v = noise - x0``.
- Guidance: the pipeline's ``pos + s (pos - neg)`` is classifier-free guidance at ``1 + s`` in
  explore's convention (``v_u + g (v_c - v_u)``, where 1 means no unconditional rows); the
  pipeline's default ``s = 5`` is ``g = 6``, Z-Image-Turbo's ``s = 0`` is ``g = 1``.
- Not for FluxSpace (it edits the image tokens' output of a joint attention whose text is a
  separate stream; here there is none).
"""

from __future__ import annotations

import torch

from ...errors import UnsupportedModelError
from .base import Family
from .parts import (
    QWEN3_ADDED,
    QWEN3_CHAT_TEMPLATE,
    QWEN_SPECIAL,
    TINY_RES,
    byte_bpe_tokenizer,
    chat_text,
    eval_mode,
    pad_rows,
    span_tokens,
    tiny_vae,
    valid_rows,
)

SEQ_MULTIPLE = 32  # the transformer pads the image and the caption parts to multiples of this


def _ceil(n: int) -> int:
    return n + (-n) % SEQ_MULTIPLE


class ZImage(Family):
    name = "z-image"
    transformer_classes = ("ZImageTransformer2DModel",)
    tiny_name = "tiny-z-image"  # its tiny random pipeline (explore.load_pipeline)
    cfg = True
    timestep_scale = 1.0
    default_sampler = {"steps": 9, "guidance": 1.0}  # Z-Image-Turbo's published 9 steps, guidance_scale 0
    default_max_sequence_length = 512
    negative_prompt = ""
    block_groups = ("noise_refiner", "context_refiner", "layers")
    unsupported_methods = {"fluxspace": "Z-Image is single-stream: there is no separate text stream in a joint "
                                        "attention whose image output FluxSpace could edit"}
    # FlowEdit and RF-Inversion published no Z-Image settings: the model's own 9-step sampler, no CFG
    peer_defaults = {
        "flowedit": {"steps": 9, "n_max": 7, "source_guidance": 1.0, "target_guidance": 1.0},
        "flowalign": {"steps": 9, "n_max": 7, "target_guidance": 1.0, "consistency": 0.01},
        "rf-inversion": {"steps": 9, "gamma": 0.5, "eta": 0.9, "start": 0.0, "stop": 0.38, "source_guidance": 1.0,
                         "target_guidance": None, "inversion_prompt": "empty"},
        # UniEdit-Flow's diffusers schedulers run any flow pipeline: its published 15 steps, α 0.6, ω 5, guidance 1
        "unieditflow": {"steps": 15, "alpha": 0.6, "omega": 5.0, "guidance": 1.0, "inversion_prompt": "empty",
                        "mask": "signed", "mask_patch": 1},
    }

    # -- text ----------------------------------------------------------------------------------------

    def encode_prompt(self, pipe, prompts, max_sequence_length):
        # one at a time, and a copy: the pipeline writes the templated prompts into the list it is given
        rows = [pipe._encode_prompt([q], device=pipe._execution_device, max_sequence_length=max_sequence_length)[0]
                for q in prompts]
        c = pad_rows(rows, max_sequence_length)
        return c, c.new_zeros(len(prompts), 0)

    def long_tokenizer(self, pipe):
        return pipe.tokenizer

    def _templated(self, pipe, prompt: str) -> str:
        return chat_text(pipe.tokenizer, prompt, enable_thinking=True)

    def word_positions(self, pipe, prompt, spans, max_sequence_length):
        text = self._templated(pipe, prompt)
        return span_tokens(pipe.tokenizer, text, text.index(prompt), spans, 0, max_sequence_length)

    # -- the transformer -----------------------------------------------------------------------------

    def forward(self, pipe, z_t, t, c, p, guidance, dtype):
        x = list(z_t.to(dtype).unsqueeze(2).unbind(0))
        if c.is_meta:  # a memory estimate (no values): every text row counts
            caps = [row.to(dtype) for row in c.unbind(0)]
        else:
            mask = valid_rows(c)
            if not bool(mask.any(1).all()):
                raise UnsupportedModelError("Z-Image needs at least one caption token per row; this c has an empty "
                                            "row")
            caps = [c[i][mask[i]].to(dtype) for i in range(len(c))]
        out = pipe.transformer(x, (1 - t).to(dtype), caps, return_dict=False)[0]
        return -torch.stack([o.float() for o in out]).squeeze(2)

    def set_timesteps_kwargs(self, config, image_tokens, steps):
        kwargs = super().set_timesteps_kwargs(config, image_tokens, steps)
        kwargs.pop("num_inference_steps", None)
        return {**kwargs, "sigmas": torch.linspace(1.0, 1 / steps, steps).tolist()}  # the pipeline's own sigmas

    def pipeline_sigma(self, timestep):
        return 1 - timestep

    def pipeline_kwargs(self, guidance):
        return {"guidance_scale": guidance - 1.0}

    def pipeline_cond_rows(self, pipe, n):
        cond = torch.ones(n, dtype=torch.bool)
        if getattr(pipe, "do_classifier_free_guidance", False) and pipe.guidance_scale > 0 and n % 2 == 0:
            cond[n // 2:] = False  # the pipeline stacks [positive; negative]
        return cond

    # -- images --------------------------------------------------------------------------------------

    def size_multiple(self, pipe):
        return self.latent_scale(pipe) * 2

    def resolution(self, pipe):
        return 1024

    # -- hook sites: one shared stream split into image and text rows ------------------------------

    def embedding_widths(self, config):
        return int(config.cap_feat_dim), 0

    def block_streams(self, group, block):
        return {"noise_refiner": ("img",), "context_refiner": ("txt",)}.get(group, ("img", "txt"))

    def stream_layout(self, transformer, args, kwargs):
        x = kwargs.get("x", args[0] if args else None)
        if not x:
            return {}
        ps = int(transformer.config.all_patch_size[0])
        n_img = (x[0].shape[-2] // ps) * (x[0].shape[-1] // ps)
        return {"n_img": n_img, "img_padded": _ceil(n_img), "grid": (x[0].shape[-2] // ps, x[0].shape[-1] // ps)}

    def read_streams(self, group, output, layout):
        if group == "noise_refiner":
            return {"img": output}
        if group == "context_refiner":
            return {"txt": output}
        return {"img": output[:, : layout["n_img"]], "txt": output[:, layout["img_padded"]:]}

    def write_streams(self, group, output, streams, layout):
        if group == "noise_refiner":
            return streams["img"]
        if group == "context_refiner":
            return streams["txt"]
        n, a = layout["n_img"], layout["img_padded"]
        return torch.cat([streams["img"], output[:, n:a], streams["txt"]], dim=1)

    def block_identity(self, group, block, args, kwargs, output):
        return kwargs.get("x", args[0] if args else None)  # every block maps one sequence to one sequence

    # -- attention -----------------------------------------------------------------------------------

    def attention_layers(self, transformer):
        return [f"layers.{i}" for i in range(len(transformer.layers))]

    def attention_module(self, transformer, layer):
        return transformer.get_submodule(layer).attention

    def attention_processor(self):
        from diffusers.models.transformers.transformer_z_image import ZSingleStreamAttnProcessor

        return ZSingleStreamAttnProcessor

    def attention_kernel_module(self):
        from diffusers.models.transformers import transformer_z_image

        return transformer_z_image

    def joint_layout(self, layer, n_query, n_key, call):
        a = call["img_padded"]
        return 0, call["n_img"], a, n_key - a  # [image; image pads; caption; caption pads]

    def attention_grid(self, transformer, hidden_states, kwargs):
        x = kwargs.get("x", hidden_states)
        if not x:
            return None
        ps = int(transformer.config.all_patch_size[0])
        return x[0].shape[-2] // ps, x[0].shape[-1] // ps

    def query_key(self, attn, hidden_states, encoder_hidden_states, rope):
        raise UnsupportedModelError(self.unsupported_methods["fluxspace"])

    # -- building ------------------------------------------------------------------------------------

    def transformer_class(self):
        from diffusers import ZImageTransformer2DModel

        return ZImageTransformer2DModel

    @staticmethod
    def tokenizer():
        return byte_bpe_tokenizer(QWEN_SPECIAL, added=QWEN3_ADDED, chat_template=QWEN3_CHAT_TEMPLATE)

    @staticmethod
    def text_encoder(tokenizer, width: int, seed: int, layers: int = 2, head_dim: int | None = None,
                     intermediate: int | None = None):
        """A Qwen3 model of ``layers`` layers at ``width`` (the pipeline reads its second-to-last hidden state)."""
        from transformers import Qwen3Config, Qwen3Model

        torch.manual_seed(seed)
        return Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=width,
                                      intermediate_size=intermediate or 2 * width,
                                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                                      head_dim=head_dim or max(8, width // 2), max_position_embeddings=1024,
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                      bos_token_id=None, tie_word_embeddings=True))

    @staticmethod
    def scheduler():
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=False, shift=3.0)

    def tiny(self, seed, **transformer_overrides):
        from diffusers import ZImagePipeline

        tok = self.tokenizer()
        te = self.text_encoder(tok, 32, seed + 2)
        vae = tiny_vae(16, seed + 1)
        torch.manual_seed(seed)
        config = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2,
                      n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=32,
                      rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[1536, 64, 64])
        transformer = self.transformer_class()(**{**config, **transformer_overrides})
        with torch.no_grad():  # diffusers starts the learned pad tokens at zero: random ones make padding count
            transformer.x_pad_token.normal_(0.0, 0.5)
            transformer.cap_pad_token.normal_(0.0, 0.5)
        pipe = ZImagePipeline(scheduler=self.scheduler(), vae=vae, text_encoder=te, tokenizer=tok,
                              transformer=transformer)
        eval_mode(pipe)
        assert TINY_RES % self.size_multiple(pipe) == 0
        return pipe, {"steps": 4, "guidance": 3.0, "max_sequence_length": 64}

    def random_pipeline(self, arch, transformer, vae, stand_ins):
        from diffusers import ZImagePipeline

        tok = self.tokenizer()
        pipe = ZImagePipeline(scheduler=self.scheduler(), vae=vae, transformer=transformer, tokenizer=tok,
                              text_encoder=self.text_encoder(tok, arch["text"]["width"], 0, layers=2, head_dim=16,
                                                             intermediate=16))
        return pipe, 1024
