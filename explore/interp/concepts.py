"""Concept maps (ConceptAttention, Helbling et al. 2025): where in the image is each concept?

A third stream of *concept tokens* (one per concept word, the word's text embedding through the
transformer's context embedder) runs beside the text stream through every joint block with the
text stream's own weights. Concept tokens attend to the image and concept tokens; image and text
tokens never attend to them, so the model's output is exactly unchanged. A block's map is the dot
product of each image token's attention output with each concept token's attention output (before
the output projections, heads concatenated), softmax over the concepts; maps are averaged over the
chosen blocks and noise levels. Each image patch goes to the concept with the largest map value
(``segment``): with every object's noun and ``"background"`` as the concepts, that is one mask per
object. The family adapter does one block's step (`Family.concept_step`); SD3 blocks have one.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..pipeline.families import Family, family
from ..pipeline.latent import JointLatent, encode, encode_text, flow_noise, velocity
from ..pipeline.sampling import seeded_noise
from .attention import attention_layers, word_token_indices
from .hooks import batch_rows


def concept_tokens(pipe, concepts: Sequence[str]) -> torch.Tensor:
    """``(K, text width)``: each concept word's text embedding (the mean over its tokens, encoded alone)."""
    if not concepts or len(set(concepts)) != len(concepts):
        raise InputError(f"concepts must be distinct non-empty words, got {list(concepts)!r}")
    rows = []
    for word in concepts:
        c, _ = encode_text(pipe, [word])
        rows.append(c[0, word_token_indices(pipe, word, word)].float().mean(0))
    return torch.stack(rows)


@contextlib.contextmanager
def concept_stream(pipe, concepts: Sequence[str], layers: Sequence[str] | None = None) -> Iterator[dict]:
    """Run a concept stream beside every transformer call inside the block; yields ``{(layer, t): maps}``
    with maps ``(rows, image tokens, K)`` (the conditional rows of each call)."""
    fam = family(pipe)
    if type(fam).concept_step is Family.concept_step:  # the base class's refusal: say so before any work
        fam.concept_step(None, (), {}, None)
    tr = pipe.transformer
    names = attention_layers(pipe)
    chosen = set(names if layers is None else layers)
    tokens = concept_tokens(pipe, concepts)
    state: dict = {}
    store: dict = {}
    handles = []

    def start(module, args, kwargs):
        state.clear()

    def pre(name):
        def fn(module, args, kwargs):
            state["call"] = (args, kwargs)
        return fn

    def post(name):
        def fn(module, args, output):
            a, kw = state.pop("call")
            img = kw.get("hidden_states", a[0] if a else None)
            if "con" not in state:
                con = tr.context_embedder(tokens.to(img.device, img.dtype))
                state["con"] = con.unsqueeze(0).expand(img.shape[0], -1, -1)
            with torch.no_grad():
                o_img, o_con, state["con"] = fam.concept_step(module, a, kw, state["con"])
            if name in chosen:
                maps = torch.softmax(torch.einsum("bnd,bkd->bnk", o_img.float(), o_con.float()), dim=-1)
                t, keep = batch_rows(pipe, maps.shape[0], "cond")
                for tv in torch.unique(t):
                    rows = keep & (t == tv)
                    if rows.any():
                        key = (name, round(float(tv), 4))
                        m = maps[rows.to(maps.device)].cpu()
                        store[key] = torch.cat([store[key], m]) if key in store else m
            return None
        return fn

    try:
        handles.append(tr.register_forward_pre_hook(start, with_kwargs=True))
        for name in names:
            block = tr.get_submodule(name)
            handles.append(block.register_forward_pre_hook(pre(name), with_kwargs=True))
            handles.append(block.register_forward_hook(post(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


@dataclasses.dataclass
class ConceptMaps:
    """``maps[(layer, t)]``: ``(h, w, K)`` for one image; ``concepts``: the K words; ``grid``: ``(h, w)``."""

    maps: dict
    concepts: list[str]
    grid: tuple[int, int]
    image_size: tuple[int, int]

    def mean(self, layers: Sequence[str] | None = None, timesteps: Sequence[float] | None = None) -> np.ndarray:
        keys = [k for k in self.maps if (layers is None or k[0] in layers)
                and (timesteps is None or any(abs(k[1] - t) < 1e-4 for t in timesteps))]
        if not keys:
            raise InputError("no concept map for these layers / timesteps")
        return np.mean([self.maps[k] for k in keys], axis=0)

    def segment(self, layers=None, timesteps=None) -> np.ndarray:
        """``(H, W)`` int: the index of the winning concept per pixel (each concept's map upsampled
        bilinearly to the image size, as attention maps are for masks)."""
        from .attention import upsample

        return upsample(np.moveaxis(self.mean(layers, timesteps), -1, 0), self.image_size).argmax(0)


@torch.no_grad()
def concept_maps(pipe, source, concepts: Sequence[str], *, t: float | Sequence[float] = (0.3, 0.5, 0.7, 0.9),
                 layers: Sequence[str] | None = None, seed: int = 0) -> ConceptMaps:
    """Concept maps of one image (``source``: a `JointLatent` or ``(image, prompt)``) at each ``t``."""
    latent = source if isinstance(source, JointLatent) else encode(pipe, *source)
    ts = [float(x) for x in np.atleast_1d(np.asarray(t, dtype=np.float64))]
    z0 = latent.z[:1].float()
    eps = seeded_noise(z0.shape[1:], [seed], z0.device)
    z_t = torch.cat([flow_noise(z0, eps, tv) for tv in ts])
    tt = torch.tensor(ts)
    c, p = latent.c[:1].float().expand(len(ts), -1, -1), latent.p[:1].float().expand(len(ts), -1)
    with concept_stream(pipe, concepts, layers) as store:
        velocity(pipe, z_t, tt, c, p, guidance=1.0)
    patch = int(getattr(pipe.transformer.config, "patch_size", 2) or 2)
    grid = (z0.shape[-2] // patch, z0.shape[-1] // patch)
    maps = {k: v[0].reshape(*grid, -1).numpy() for k, v in store.items()}
    return ConceptMaps(maps, list(concepts), grid, tuple(latent.image_size))
