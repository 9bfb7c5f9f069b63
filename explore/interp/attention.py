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

from ..errors import InputError, UnsupportedModelError
from ..pipeline.families import family, token_spans
from ..pipeline.latent import JointLatent, encode, flow_noise, velocity
from ..pipeline.spec import spec
from .attention_processors import (
    CHUNK_ELEMENTS,
    RECORDING,
    FluxAttentionProcessor,
    JointAttentionProcessor,
    KernelSwap,
    Recording,
)
from .hooks import track_pipeline_timestep

LayerSpec = str | int | Iterable[str | int] | None


# ---------------------------------------------------------------------------------------------


def attention_layers(pipe) -> list[str]:
    """Names of every joint-attention block, in forward order.

    ``transformer_blocks.{i}`` (SD3 and FLUX double blocks), then ``single_transformer_blocks.{i}`` (FLUX);
    other families: their adapter's attention blocks (`explore.pipeline.families.Family.attention_layers`).
    """
    return family(pipe).attention_layers(pipe.transformer)


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


_token_spans = token_spans  # the rule lives with the families (explore.pipeline.families.base)


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
    out = family(pipe).word_positions(pipe, prompt, spans, spec(pipe).max_sequence_length)
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
    fam = family(pipe)
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
    recording = Recording(pipe, store, tokens, heads, branch, ts, row_sums)
    stock = fam.attention_processor()  # a class, or a tuple of them
    kernel = fam.attention_kernel_module() is not None  # recorded by swapping the kernel, not the processor
    if not kernel and stock not in RECORDING:
        raise UnsupportedModelError(f"record_attention has no recording processor for {stock.__name__} ({fam.name})")
    ours = None if kernel else RECORDING[stock]
    tr = pipe.transformer
    modules = [fam.attention_module(tr, name) for name in names]
    allowed = stock if kernel else (stock, ours)
    for name, m in zip(names, modules):
        if not isinstance(m.processor, allowed):
            what = " / ".join(c.__name__ for c in (stock if isinstance(stock, tuple) else (stock,)))
            raise UnsupportedModelError(
                f"{name} uses {type(m.processor).__name__}; record_attention reproduces only {what} "
                "(undo fused projections or adapters first)"
            )

    def pre(module, args, kwargs):
        # The grid and the text length of this call: single FLUX blocks see [text; image] with no split.
        hs = kwargs.get("hidden_states", args[0] if args else None)
        ehs = kwargs.get("encoder_hidden_states")  # diffusers pipelines pass it by name
        recording.n_txt = int(ehs.shape[1]) if torch.is_tensor(ehs) and ehs.ndim == 3 else None
        recording.call = fam.stream_layout(module, args, kwargs)
        grid = fam.attention_grid(tr, hs, kwargs)
        if grid is not None:
            store.grid = grid

    if isinstance(heads, list) and any(not 0 <= h < m.heads for h in heads for m in modules):
        raise InputError(f"head indices {heads} out of range: this model has {modules[0].heads} heads")
    originals = [m.processor for m in modules]
    handle = None
    with contextlib.ExitStack() as stack:
        try:
            handle = tr.register_forward_pre_hook(pre, with_kwargs=True)
            if kernel:
                stack.enter_context(KernelSwap(recording, fam, dict(zip(names, modules)), chunk_elements))
            else:
                for name, m, orig in zip(names, modules, originals):
                    m.set_processor(ours(recording, name, fallback=orig, chunk_elements=chunk_elements))
            with track_pipeline_timestep(pipe):
                yield store
        finally:
            if not kernel:
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


def patch_fractions(mask, grid: tuple[int, int]) -> np.ndarray:
    """A pixel mask ``(H, W)`` as the share of each patch it covers, ``(h, w)`` (area average)."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(m, tuple(int(g) for g in grid))[0, 0].numpy()


def region_shares(maps: AttentionMaps, regions: dict[str, np.ndarray], layers: LayerSpec = None,
                  timesteps: Iterable[float] | None = None) -> dict[str, float]:
    """Share of the word's attention (over image patches) that falls on each region, e.g. each object.

    ``regions``: name -> pixel mask at the image's size. The map is `AttentionMaps.mean` of the
    given layers and ``t`` (each renormalised to sum to 1 over patches), so the shares of disjoint
    regions add up to at most 1; a region's share by chance is its area fraction.
    """
    amap = maps.mean(layers, timesteps)
    return {name: float((amap * patch_fractions(m, maps.grid)).sum()) for name, m in regions.items()}


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
        guidance = family(pipe).no_guidance(spec(pipe).guidance)
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


# Which block's attention makes the mask, as a fraction of the depth (block ⌊f·(blocks-1)⌋), and at
# which noise levels. Measured on ShapesWorld, development seed 1000, 48 renders, IoU with the exact
# masks (`python -m explore attention-masks`, docs/analysis.md): words of the object (shape, colour,
# size, position) are best found one third of the way in (block 2 of 6, all t: 0.36; every block
# averaged, the earlier default: 0.24); background words half way in (block 3: 0.71), whose
# complement is then the object. Per-object segmentation (`python -m explore concept-maps`, same seed and
# n): the background word's map competes best from the last block (block 5: 0.53 with the object
# words at block 2; block 3: 0.42); concept maps are best at block 3 (0.17).
MASK_DEPTH = {"object": 1 / 3, "background": 1 / 2, "segment-background": 1.0, "concepts": 3 / 5}
MASK_TIMESTEPS = (0.3, 0.5, 0.7, 0.9)


def mask_layer(pipe, kind: str = "object") -> str:
    """The attention block whose map makes `attention_mask`'s mask (``kind``: object or background word;
    ``segment-background`` and ``concepts``: `explore.interp.segmentation`'s blocks):
    the embedded world's own choice (``World.mask_blocks``, measured on its development seed), else
    the fraction of the depth measured on ShapesWorld (``MASK_DEPTH``)."""
    from ..worlds import world_of

    if kind not in MASK_DEPTH:
        raise InputError(f"kind must be one of {', '.join(MASK_DEPTH)}, got {kind!r}")
    layers = attention_layers(pipe)
    world = world_of(pipe)
    if world is not None and world.mask_blocks and kind in world.mask_blocks:
        return layers[world.mask_blocks[kind]]
    return layers[int(MASK_DEPTH[kind] * (len(layers) - 1) + 0.5)]


def attention_mask(
    pipe,
    image,
    prompt: str,
    word: str,
    *,
    threshold: str | float = "otsu",
    t: Sequence[float] = MASK_TIMESTEPS,
    layers: LayerSpec | str = "auto",
    seed: int = 0,
    resize=None,
) -> np.ndarray:
    """An object mask ``(H, W)`` bool from the attention of image patches on ``word``.

    The rule: each (layer, ``t``) head-averaged map is renormalised over patches, the maps are
    averaged (every layer and ``t`` weighs the same), upsampled bilinearly to the image size and
    min-max scaled to [0, 1]; a pixel is in the mask when its value is above the threshold —
    ``"otsu"`` (Otsu's threshold of that map, the default) or a float τ in [0, 1] (DAAM's
    rule: above τ times the maximum). ``layers="auto"``: the block `mask_layer` picks (measured on
    ShapesWorld; see ``MASK_DEPTH``); None: every block. ``image`` and ``resize`` as in
    `explore.encode`; the mask has the size of the encoded image. A map with no contrast gives an
    empty mask.
    """
    if layers == "auto":
        layers = [mask_layer(pipe, "object")]
    latent = encode(pipe, image, prompt, resize=resize)
    maps = attention_map(pipe, latent, word, t=t, layers=layers, heads="mean", seed=seed)
    return mask_from_map(maps.mean(), maps.image_size, threshold)


def object_mask(pipe, image, prompt: str, word: str, attribute: str | None = None, *, seed: int = 0,
                resize=None) -> np.ndarray:
    """The mask of the object ``word`` describes, for the disentanglement metric on real images.

    ``attribute == "background"``: ``word`` names the background, so the mask is the complement of
    that word's map at the background depth (the objects); otherwise the word's own map.
    """
    if attribute == "background":
        return ~attention_mask(pipe, image, prompt, word, layers=[mask_layer(pipe, "background")], seed=seed,
                               resize=resize)
    return attention_mask(pipe, image, prompt, word, seed=seed, resize=resize)


def mask_from_map(amap, size, threshold: str | float = "otsu") -> np.ndarray:
    """``(H, W)`` bool: a patch map ``(h, w)`` upsampled bilinearly to ``size``, min-max scaled and
    thresholded (``"otsu"`` or τ in [0, 1]); a map with no contrast gives an empty mask."""
    m = upsample(amap, size)
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
    "attention_map", "attention_mask", "layer_names", "mask_from_map", "mask_layer", "object_mask", "otsu_threshold",
    "record_attention",
    "renormalize", "resolve_layers", "upsample", "word_token_indices",
]
