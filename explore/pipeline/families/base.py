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


class Family(abc.ABC):
    """A model family: its transformer classes and everything model-specific (see the module docstring)."""

    name: str = "family"
    #: class names of the transformers this family drives (the registry's keys)
    transformer_classes: tuple[str, ...] = ()
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # -- text ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def encode_prompt(self, pipe, prompts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c (B, L, D), p (B, P))`` from the pipeline's own ``encode_prompt`` (no CFG branch)."""

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

    def from_pipeline_latents(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The pipeline's ``output_type="latent"`` result as ``(B, C, h, w)``."""
        return x

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

    def max_image_side(self, pipe) -> int | None:
        """The largest image side the transformer takes (None: no bound)."""
        return None

    def latent_channels(self, pipe) -> int:
        """Channels of the unpacked image latent."""
        return int(pipe.transformer.config.in_channels)

    @abc.abstractmethod
    def resolution(self, pipe) -> int:
        """The native image side of a pipeline without ``explore.json``."""

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
