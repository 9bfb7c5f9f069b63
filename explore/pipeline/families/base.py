"""What a model family is to `explore`: one `Family` object holds everything model-specific.

A family adapter says how to encode a prompt (and which tokens are a word's), how to call its
transformer (timestep scale, latent packing, position ids, guidance as separate CFG rows or as
an embedding), the image size rule, its defaults (resolution, sampler, text length, the peer
methods' published settings), how diffusers lays out a pipeline call's CFG batch, and how its
attention is recorded (the stock processor, the grid, the query/key projections). Everything else
in `explore` asks the adapter (`explore.pipeline.families.family`) instead of branching on names.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

from ...errors import UnsupportedModelError


def token_spans(tokenizer, prompt: str, spans: list[tuple[int, int]], max_length: int) -> list[int]:
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


def vae_shift_scale(pipe) -> tuple[float, float]:
    """An AutoencoderKL's ``(shift_factor, scaling_factor)`` (no shift: 0)."""
    cfg = pipe.vae.config
    return float(cfg.get("shift_factor") or 0.0), float(cfg.scaling_factor)


class Family(abc.ABC):
    """A model family: its transformer classes and everything model-specific (see the module docstring)."""

    name: str = "family"
    #: class names of the transformers this family drives (the registry's keys)
    transformer_classes: tuple[str, ...] = ()
    #: the name of its tiny random pipeline for `explore.load_pipeline` (tests, memory estimates); None: none
    tiny_name: str | None = None
    #: guidance as separate unconditional rows (classifier-free guidance); False: an embedding
    cfg: bool = True
    #: what the transformer's ``timestep`` argument is, per unit of flow sigma t
    timestep_scale: float = 1.0
    #: sampler defaults of a pipeline without ``explore.json``
    default_sampler: dict[str, float] = {"steps": 28, "guidance": 7.0}
    #: text tokens the pipeline encodes by default (``max_sequence_length``)
    default_max_sequence_length: int = 256
    #: the peer methods' published settings for this family: method -> settings
    peer_defaults: dict[str, dict[str, Any]] = {}
    #: editing methods that do not apply to this family: method -> why
    unsupported_methods: dict[str, str] = {}
    #: the unconditional prompt of classifier-free guidance
    negative_prompt: str = ""
    #: checkpoints of the same transformer class that behave differently (`variant` picks one)
    variants: tuple[Family, ...] = ()
    #: the transformer's block lists in forward order (hook sites and attention layers are named after them)
    block_groups: tuple[str, ...] = ("transformer_blocks", "single_transformer_blocks")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def variant(self, pipe) -> Family:
        """The family object for this pipeline's checkpoint (one of `variants`, or this one)."""
        return self

    def sampler(self, pipe) -> dict[str, float]:
        """Sampler defaults of a pipeline without ``explore.json`` (``default_sampler`` unless the checkpoint
        says otherwise)."""
        return dict(self.default_sampler)

    # -- text ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def encode_prompt(self, pipe, prompts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c (B, L, D), p (B, P))`` from the pipeline's own ``encode_prompt`` (no CFG branch).

        ``c`` has one fixed length ``L`` for every prompt; a family whose text encoder gives prompts
        of different lengths pads with zero rows (its `forward` masks them, as the pipeline does). A
        family without a pooled embedding returns ``p`` of width 0, ``(B, 0)``."""

    @abc.abstractmethod
    def long_tokenizer(self, pipe):
        """The tokenizer whose length ``max_sequence_length`` caps (T5), or None."""

    @abc.abstractmethod
    def word_positions(self, pipe, prompt: str, spans: list[tuple[int, int]], max_sequence_length: int) -> list[int]:
        """Positions in ``c`` of the tokens overlapping the character ``spans`` of ``prompt``."""

    # -- the transformer ---------------------------------------------------------------------------

    @abc.abstractmethod
    def forward(self, pipe, z_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, p: torch.Tensor,
                guidance: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """The raw transformer output for ``z_t (N, C, h, w)`` at flow sigma ``t (N,)``, as ``(N, C, h, w)``.

        ``guidance``: per-row guidance for families that embed it (``cfg`` False); None otherwise.
        """

    def pipeline_latents(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, C, h, w)`` as the diffusers pipeline's ``latents=`` argument takes it."""
        return z

    def from_pipeline_latents(self, x: torch.Tensor, h: int, w: int, pipe=None) -> torch.Tensor:
        """The pipeline's ``output_type="latent"`` result as ``(B, C, h, w)`` (``pipe``: for families whose
        pipelines return it denormalised)."""
        return x

    def pipeline_sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """The flow sigma of the ``timestep`` a diffusers pipeline passes its transformer."""
        return timestep / self.timestep_scale

    def combine(self, v_c: torch.Tensor, v_u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance from conditional and unconditional velocities, ``s`` ``(N,)``."""
        return v_u + s.view(-1, *([1] * (v_c.ndim - 1))) * (v_c - v_u)

    def sequences(self, n: int, guidance, groups: int | None = None) -> int:
        """Transformer sequences one `velocity` call of ``n`` rows costs (unconditional rows included)."""
        g = torch.as_tensor(guidance if guidance is not None else 1.0, dtype=torch.float32)
        if not self.cfg or bool((g == 1.0).all()):
            return n
        return n + (n if groups is None else groups)

    def no_guidance(self, default: float) -> float:
        """The guidance value of a plain conditional evaluation (SD3: 1, no CFG rows; FLUX: its default)."""
        return 1.0 if self.cfg else default

    def pipeline_cond_rows(self, pipe, n: int) -> torch.Tensor:
        """Which rows of a transformer call made inside the diffusers pipeline's ``__call__`` are conditional."""
        return torch.ones(n, dtype=torch.bool)

    # -- images ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def size_multiple(self, pipe) -> int:
        """Image sides must be multiples of this."""

    def latent_scale(self, pipe) -> int:
        """Image pixels per latent pixel (the VAE's down-sampling; with a patchifying VAE, times its patch)."""
        return 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    def image_tokens(self, h: int, w: int) -> int:
        """Transformer image tokens of an ``h x w`` latent (2x2 patches)."""
        return (h // 2) * (w // 2)

    def set_timesteps_kwargs(self, config, image_tokens: int, steps: int) -> dict:
        """The scheduler's ``set_timesteps`` keywords for ``steps`` steps, as the pipeline's ``__call__`` passes
        them: SD3 the step count; a dynamically shifted schedule (FLUX) the sigmas ``linspace(1, 1/N, N)``
        and ``mu`` from the image tokens."""
        if not config.get("use_dynamic_shifting", False):
            return {"num_inference_steps": steps}
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = calculate_shift(image_tokens, config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}

    def pipeline_kwargs(self, guidance: float) -> dict:
        """The diffusers pipeline ``__call__`` keywords that give guidance ``guidance`` (for comparisons with
        the pipeline's own sampler)."""
        return {"guidance_scale": guidance}

    def max_image_side(self, pipe) -> int | None:
        """The largest image side the transformer takes (None: no bound)."""
        return None

    def check_method(self, method: str) -> None:
        """Raise `UnsupportedModelError` (one line, with the reason) for a method that does not apply."""
        base = method.split(":")[0].split("+")[0]
        if base in self.unsupported_methods:
            raise UnsupportedModelError(f"{base} does not apply to {self.name} pipelines: "
                                        f"{self.unsupported_methods[base]}")

    def embedding_widths(self, config) -> tuple[int, int]:
        """``(text width, pooled width)`` of the ``c, p`` the transformer of ``config`` takes (0: no pooled)."""
        return int(config.joint_attention_dim), int(config.get("pooled_projection_dim") or 0)

    def latent_channels(self, pipe) -> int:
        """Channels of the unpacked image latent."""
        return int(pipe.transformer.config.in_channels)

    @abc.abstractmethod
    def resolution(self, pipe) -> int:
        """The native image side of a pipeline without ``explore.json``."""

    def vae_encode(self, pipe, x: torch.Tensor) -> torch.Tensor:
        """Images ``(1, 3, H, W)`` in [-1, 1] (the VAE's device and dtype) -> the latent ``z`` ``(1, C, h, w)``
        the transformer sees: the posterior mean, normalised as the pipeline normalises (AutoencoderKL:
        ``(mean - shift) * scale``)."""
        mean = pipe.vae.encode(x).latent_dist.mean
        shift, scale = vae_shift_scale(pipe)
        return (mean - shift) * scale

    def vae_decode(self, pipe, z: torch.Tensor) -> torch.Tensor:
        """``z`` ``(1, C, h, w)`` -> images ``(1, 3, H, W)`` in [-1, 1], as the pipeline's ``__call__`` decodes."""
        shift, scale = vae_shift_scale(pipe)
        return pipe.vae.decode(z.to(pipe.vae.dtype) / scale + shift, return_dict=False)[0]

    # -- hook sites --------------------------------------------------------------------------------

    def block_streams(self, group: str, block) -> tuple[str, ...]:
        """The streams a block's output holds (``"img"``, ``"txt"``); an MM-DiT block whose text stream
        ends there (``context_pre_only``) has only the image one."""
        return ("img",) if getattr(block, "context_pre_only", False) else ("img", "txt")

    def sites(self, transformer) -> list[str]:
        """Every hook site ``{group}.{i}.{stream}`` of the transformer, in forward order."""
        out = []
        for group in self.block_groups:
            for i, block in enumerate(getattr(transformer, group, None) or []):
                out += [f"{group}.{i}.{s}" for s in self.block_streams(group, block)]
        return out

    def stream_layout(self, transformer, args: tuple, kwargs: dict) -> dict:
        """What splitting a block's output into streams needs to know about a transformer call (from its
        inputs; e.g. a single-stream model's image-token count)."""
        return {}

    def read_streams(self, group: str, output, layout: dict) -> dict[str, torch.Tensor | None]:
        """A block's output as ``{stream: (B, tokens, dim)}`` (MM-DiT blocks return ``(text, image)``)."""
        txt, img = output
        return {"img": img, "txt": txt}

    def write_streams(self, group: str, output, streams: dict[str, torch.Tensor | None], layout: dict):
        """The block output with its streams replaced by ``streams`` (the inverse of `read_streams`)."""
        return (streams["txt"], streams["img"])

    def block_identity(self, group: str, block, args: tuple, kwargs: dict, output):
        """What the block would return if it passed its input through unchanged (bypassing it), in the
        structure of its ``output``. MM-DiT blocks take ``hidden_states`` (image) and
        ``encoder_hidden_states`` (text) and return ``(text, image)``; ``(None, image)`` where the text
        stream ends."""
        img = kwargs.get("hidden_states", args[0] if args else None)
        txt = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        return (txt if output[0] is not None else None, img)

    def attention_layers(self, transformer) -> list[str]:
        """Names of the blocks with a joint (image-text) attention, in forward order."""
        return [f"{g}.{i}" for g in self.block_groups for i in range(len(getattr(transformer, g, None) or []))]

    def attention_module(self, transformer, layer: str):
        """The attention module of an attention layer."""
        return transformer.get_submodule(layer).attn

    def attention_kernel_module(self):
        """For families recorded by swapping the attention kernel (not a processor of their own): the module
        whose ``dispatch_attention_fn`` the stock processors call; None: the family names a processor."""
        return None

    def joint_layout(self, layer: str, n_query: int, n_key: int, call: dict) -> tuple[int, int, int, int]:
        """Where the image and text tokens are in one attention call's keys: ``(img_start, n_img, txt_start,
        n_txt)``. ``call``: the `stream_layout` of the running transformer call. Default: ``[image; text]``
        (SD3's joint order) with the image-token count the layout gives (``n_img``)."""
        n_img = call.get("n_img")
        if n_img is None:
            raise UnsupportedModelError(f"{self.name}: the transformer call's layout has no image-token count "
                                        "(n_img); the adapter must say where its image and text tokens are")
        return 0, n_img, n_img, n_key - n_img

    def concept_step(self, block, args: tuple, kwargs: dict, concepts: torch.Tensor):
        """One joint block's step of a ConceptAttention concept stream (`explore.interp.concepts`).

        ``args`` / ``kwargs``: the block's call; ``concepts``: ``(B, K, dim)`` concept tokens entering it.
        Returns ``(o_img, o_con, concepts_out)``: the image tokens' and the concept tokens' attention
        outputs before the output projection (heads concatenated, ``(B, N, dim)`` / ``(B, K, dim)``),
        and the concept tokens leaving the block (through the text stream's weights). The concept
        tokens attend to image and concept tokens; nothing attends to them (the block's own outputs
        are untouched)."""
        raise UnsupportedModelError(f"concept maps are not implemented for {self.name} pipelines yet")

    # -- attention ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def attention_processor(self) -> type:
        """The stock diffusers processor class of the joint blocks (explore's recording processor that
        reproduces it is registered in `explore.interp.attention_processors.RECORDING`)."""

    @abc.abstractmethod
    def attention_grid(self, transformer, hidden_states, kwargs: dict) -> tuple[int, int] | None:
        """The image-token grid ``(h, w)`` of a transformer call, from its inputs (None: unknown)."""

    @abc.abstractmethod
    def query_key(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, rope
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Image queries ``(B, H, N_img, d)`` and text keys ``(B, H, L, d)`` of a joint attention, and ``d``."""

    # -- building pipelines (tests, benchmarks) ------------------------------------------------------

    def vae_class(self) -> type:
        """The diffusers VAE class of full-size architectures."""
        from diffusers import AutoencoderKL

        return AutoencoderKL

    @abc.abstractmethod
    def transformer_class(self) -> type:
        """The diffusers transformer class (for full-size architectures on the meta device)."""

    @abc.abstractmethod
    def tiny(self, seed: int, **transformer_overrides) -> tuple[Any, dict]:
        """A tiny random pipeline of this family built in code (tokenizers included; building blocks in
        `explore.pipeline.families.parts`) and its sampler defaults (`explore.pipeline.tiny` attaches the spec)."""

    @abc.abstractmethod
    def random_pipeline(self, arch: dict, transformer, vae, stand_ins):
        """A pipeline around a full-size random ``transformer`` and ``vae`` of architecture ``arch``, with the
        stand-in text encoders ``stand_ins(kind, width, projection)`` builds; returns ``(pipe, resolution)``."""
