"""The joint latent of an MMDiT: image latent ``z``, token embeddings ``c``, pooled embedding ``p``.

`encode` builds a `JointLatent` from an image and a prompt with the pipeline's own machinery
(image processor, VAE, ``encode_prompt``); `decode` turns ``z`` back into pixels exactly as the
pipeline's ``__call__`` does; `velocity` is the one place the transformer is called: one batched
call for every branch, ``t`` the flow sigma in [0, 1] (DESIGN §0), FLUX packing inside.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import diffusers
import torch
import transformers

from ..errors import InputError, ResourceError
from ..images import fit_size, to_pil_list
from ..warn import warn
from .families import by_name, family
from .families.flux import pack, unpack  # noqa: F401  (explore.pipeline.latent.pack: FLUX's token layout)
from .spec import (
    CallInfo,
    attention_context,
    check_image_size,
    size_multiple,
    spec,
    state,
    vae_scale_factor,
)


@dataclasses.dataclass
class JointLatent:
    """A batch of joint latents.

    z: ``(B, C, h, w)`` scaled VAE mean, ``(mean - shift) * scale`` (FLUX: unpacked).
    c: ``(B, L, D)`` token embeddings from ``encode_prompt`` (SD3: CLIP-L ‖ CLIP-G padded, then T5).
    p: ``(B, P)`` pooled embedding.
    """

    z: torch.Tensor
    c: torch.Tensor
    p: torch.Tensor
    model_id: str
    image_size: tuple[int, int]  # (H, W) in pixels
    prompt: list[str]

    def __post_init__(self):
        if not (self.z.shape[0] == self.c.shape[0] == self.p.shape[0]):
            raise InputError(
                f"batch sizes differ: z {tuple(self.z.shape)}, c {tuple(self.c.shape)}, p {tuple(self.p.shape)}"
            )

    def __len__(self) -> int:
        return self.z.shape[0]

    def __getitem__(self, i) -> JointLatent:
        idx = slice(i, i + 1) if isinstance(i, int) else i
        prompts = [self.prompt[j] for j in range(len(self.prompt))[idx]] if self.prompt else []
        return JointLatent(self.z[idx], self.c[idx], self.p[idx], self.model_id, self.image_size, prompts)

    def replace(self, **changes) -> JointLatent:
        return dataclasses.replace(self, **changes)

    def to(self, device=None, dtype=None) -> JointLatent:
        return self.replace(z=self.z.to(device, dtype), c=self.c.to(device, dtype), p=self.p.to(device, dtype))

    @staticmethod
    def cat(items: Sequence[JointLatent]) -> JointLatent:
        if not items:
            raise InputError("cannot concatenate an empty list of JointLatents")
        first = items[0]
        for it in items[1:]:
            if it.model_id != first.model_id or it.image_size != first.image_size:
                raise InputError("cannot concatenate JointLatents of different models or image sizes")
        return JointLatent(
            torch.cat([i.z for i in items]), torch.cat([i.c for i in items]), torch.cat([i.p for i in items]),
            first.model_id, first.image_size, [p for i in items for p in i.prompt],
        )


# ---------------------------------------------------------------------------------------------
# Images in (the rules: explore.images)
# ---------------------------------------------------------------------------------------------


def image_tensor(pipe, image, resize=None) -> torch.Tensor:
    """Images -> ``(B, 3, H, W)`` float in [-1, 1] through the pipeline's own image processor."""
    pil = fit_size(to_pil_list(image), size_multiple(pipe), resize)
    w, h = pil[0].size
    check_image_size(pipe, h, w)
    return pipe.image_processor.preprocess(pil, height=h, width=w)


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------

TEXT_CACHE_SIZE = 4096


def clear_text_cache(pipe) -> None:
    """Forget cached prompt encodings (call after changing text-encoder weights)."""
    state(pipe).text.clear()


def check_prompts(prompt, allow_empty: bool = False) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise InputError("no prompt given")
    for p in prompts:
        if not isinstance(p, str):
            raise InputError(f"prompts must be strings, got {type(p).__name__}")
        if not allow_empty and not p.strip():
            raise InputError("prompt is empty; describe the image (e.g. 'a small red circle on a gray background')")
    return prompts


@contextlib.contextmanager
def quiet_libraries():
    """Silence diffusers/transformers warnings we replace with our own (e.g. prompt truncation)."""
    d, t = diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(d)
        transformers.utils.logging.set_verbosity(t)


def _encode_prompt_raw(pipe, prompts: list[str], max_sequence_length: int):
    with quiet_libraries():
        return _encode_prompt_loud(pipe, prompts, max_sequence_length)


def _encode_prompt_loud(pipe, prompts: list[str], max_sequence_length: int):
    return family(pipe).encode_prompt(pipe, prompts, max_sequence_length)


@torch.no_grad()
def encode_text(pipe, prompt, *, allow_empty: bool = False, cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c, p)`` for prompts via the pipeline's own ``encode_prompt``, cached per prompt.

    Each prompt is encoded on its own, so its embedding is the same bits whatever else is encoded
    in the same call or was cached before (results do not depend on the order of work). Prompts
    over the text encoders' limits are cut, with one warning per prompt saying what was kept.

    Args:
        pipe: a pipeline from `load_pipeline`.
        prompt: a string or a list of strings.
        allow_empty: accept ``""`` (the unconditional input).
        cache: read cached embeddings (False encodes again and refreshes the cache).

    Returns:
        ``c`` ``(B, L, D)`` (token embeddings) and ``p`` ``(B, P)`` (pooled), in the transformer's dtype.
    """
    prompts = check_prompts(prompt, allow_empty)
    s = spec(pipe)
    store = state(pipe).text
    missing = [q for q in dict.fromkeys(prompts) if not cache or q not in store]
    if missing:
        with quiet_libraries():
            _warn_truncation(pipe, missing)
        # One prompt per text-encoder call: a batched matmul's rounding depends on the batch's size, so
        # encoding a prompt together with whichever others happen to be uncached would make its
        # embedding (and every result downstream) depend on what the process encoded before.
        for q in missing:
            store[q] = _encode_prompt_raw(pipe, [q], s.max_sequence_length)
    for q in dict.fromkeys(prompts):
        store.move_to_end(q)  # this call's prompts are the most recently used
    cs, ps = zip(*(store[q] for q in prompts))  # read before trimming: a call may hold more than the cache
    while len(store) > TEXT_CACHE_SIZE:
        store.popitem(last=False)
    return torch.cat(cs), torch.cat(ps)


def _warn_truncation(pipe, prompts: list[str]) -> None:
    """Say what the text encoders cut off (diffusers only logs it): once per prompt and pipeline, and
    one warning for all the prompts of one call, at the caller's line."""
    seen = state(pipe).warned
    tok = pipe.tokenizer
    limit = tok.model_max_length
    cut = []
    for q in prompts:
        ids = tok(q, add_special_tokens=True).input_ids
        if len(ids) > limit and ("clip", q) not in seen:
            seen.add(("clip", q))
            cut.append((q, len(ids), tok.decode(ids[1 : limit - 1], skip_special_tokens=True)))
    if len(cut) == 1:
        warn(f"prompt is {cut[0][1]} tokens, over the text encoder's limit of {limit}: only {cut[0][2]!r} is used")
    elif cut:
        warn(f"{len(cut)} prompts are over the text encoder's limit of {limit} tokens and are cut (e.g. "
             f"{cut[0][0]!r}: only {cut[0][2]!r} is used); shorten them")
    tok3 = family(pipe).long_tokenizer(pipe)
    msl = spec(pipe).max_sequence_length
    if tok3 is not None and msl:
        long = []
        for q in prompts:
            n = len(tok3(q, add_special_tokens=True).input_ids)
            if n > msl and ("t5", q) not in seen:
                seen.add(("t5", q))
                long.append(n)
        if long:
            what = f"prompt is {long[0]} T5 tokens," if len(long) == 1 else f"{len(long)} prompts are"
            warn(f"{what} over max_sequence_length={msl}: the rest is cut off")


def null_text(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of the family's unconditional prompt (``""`` for most): the negative prompt of CFG."""
    return encode_text(pipe, family(pipe).negative_prompt, allow_empty=True)


# ---------------------------------------------------------------------------------------------
# Encode / decode
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_image(pipe, image, resize=None) -> torch.Tensor:
    """Images -> ``z`` ``(B, C, h, w)``: the VAE posterior mean, shifted and scaled as the pipeline does."""
    x = image_tensor(pipe, image, resize).to(pipe.vae.device, pipe.vae.dtype)
    what = f"{x.shape[-2]}x{x.shape[-1]} image through the VAE encoder"
    # one image at a time: its latent does not depend on what else is encoded with it
    fam = family(pipe)
    z = torch.cat([split_on_oom(pipe, "vae", 1, lambda sl, i=i: fam.vae_encode(pipe, x[i : i + 1]), what, x.is_cuda)
                   for i in range(len(x))])
    return z.to(compute_dtype(pipe.transformer))


@torch.no_grad()
def encode(pipe, image, prompt, *, resize=None, allow_empty: bool = False) -> JointLatent:
    """Encode images and prompts into a `JointLatent` (one prompt for all images, or one each).

    Args:
        pipe: a pipeline from `load_pipeline`.
        image: one image or a batch: a path, a PIL image, an ``(H, W, 3)`` uint8 / float-in-[0, 1]
            array, a ``(3, H, W)`` float tensor, or a list / ``(N, H, W, 3)`` array / ``(N, 3, H, W)``
            tensor of them (`explore.images`). Sides must fit the model (multiples of its patch
            size, at most its largest side).
        prompt: the caption describing the image(s): one string, or one per image.
        resize: how to fit an image whose size the model cannot take: ``"crop"``, ``"resize"`` or
            ``(H, W)``.
        allow_empty: accept the empty prompt ``""`` (the unconditional text input; for probing what
            the image stream alone carries). Editing needs a description, so it is refused by default.

    Returns:
        A `JointLatent`: ``z`` ``(B, C, h, w)`` (the VAE mean, shifted and scaled), ``c`` ``(B, L, D)``
        and ``p`` ``(B, P)`` in the transformer's dtype.
    """
    prompts = check_prompts(prompt, allow_empty)
    z = encode_image(pipe, image, resize)
    if len(prompts) == 1 and len(z) > 1:
        prompts = prompts * len(z)
    if len(prompts) != len(z):
        raise InputError(f"{len(z)} images but {len(prompts)} prompts; pass one prompt or one per image")
    c, p = encode_text(pipe, prompts, allow_empty=allow_empty)
    vsf = vae_scale_factor(pipe)
    return JointLatent(z, c, p, spec(pipe).model_id, (z.shape[-2] * vsf, z.shape[-1] * vsf), prompts)


@torch.no_grad()
def decode(pipe, z: torch.Tensor | JointLatent, output_type: str = "pil"):
    """``z`` (unpacked, scaled) -> images, exactly as the pipeline's ``__call__`` decodes its final latent.

    One latent at a time (as diffusers' VAE slicing), so an image's pixels do not depend on what
    else is decoded with it.

    Args:
        pipe: a pipeline from `load_pipeline`.
        z: image latents ``(B, C, h, w)`` or a `JointLatent` (its ``z``).
        output_type: ``"pil"``, ``"np"`` or ``"pt"``.

    Returns:
        ``"pil"``: a list of B PIL images; ``"np"``: ``(B, H, W, 3)`` float in [0, 1]; ``"pt"``:
        ``(B, 3, H, W)`` float in [0, 1].
    """
    if isinstance(z, JointLatent):
        z = z.z
    fam = family(pipe)
    latents = z.to(pipe.vae.device)
    what = f"{latents.shape[-2]}x{latents.shape[-1]} latent through the VAE decoder"
    image = torch.cat([split_on_oom(pipe, "vae", 1, lambda sl, i=i: fam.vae_decode(pipe, latents[i : i + 1]),
                                    what, latents.is_cuda) for i in range(len(latents))])
    return pipe.image_processor.postprocess(image, output_type=output_type)


# ---------------------------------------------------------------------------------------------
# The model evaluation
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _running(pipe, t: torch.Tensor, cond: torch.Tensor):
    """Record the batch now in the transformer (``state(pipe).call``) for hooks that need per-row ``t``."""
    st = state(pipe)
    prev = st.call
    st.call = CallInfo(t, cond)
    try:
        yield
    finally:
        st.call = prev


def _as_t(t, n: int, device) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise InputError(f"t must be a scalar or have one value per row ({n}), got shape {tuple(t.shape)}")
    if not bool(((t >= 0) & (t <= 1)).all()):  # NaN fails both comparisons
        raise InputError("t is the flow sigma and must lie in [0, 1] (DESIGN §0)")
    return t


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg
                                            or "DefaultCPUAllocator" in msg)


def split_on_oom(pipe, kind: str, n: int, run: Callable[[slice], torch.Tensor], unit: str,
                 on_gpu: bool) -> torch.Tensor:
    """``run(slice(0, n))``, or the same in chunks when it runs out of memory: ``torch.cat`` of the chunks.

    The size that fits is remembered per pipeline and ``kind`` (``state(pipe).max_batch``, e.g.
    ``"transformer"``, ``"vae"``) with a warning saying so; a single ``unit`` that does not fit
    raises `ResourceError` naming what to change.
    """
    st = state(pipe)
    limit = st.max_batch.get(kind)
    if limit is None or n <= limit:
        try:
            return run(slice(0, n))
        except Exception as e:
            if not _is_oom(e):
                raise
            if on_gpu:
                torch.cuda.empty_cache()
            if n == 1:
                where = "GPU" if on_gpu else "CPU"
                raise ResourceError(f"out of {where} memory for a single {unit}; lower the resolution, use bf16 on a "
                                    "GPU, or offload='model' in load_pipeline") from e
            limit = max(1, n // 2)
            st.max_batch[kind] = limit
            warnings.warn(f"a batch of {n} {unit}s ({kind}) did not fit in memory; running chunks of {limit} from now "
                          "on (results can differ from one batch in the last float bits)", stacklevel=4)
    chunks = []
    for i in range(0, n, limit):
        chunks.append(split_on_oom(pipe, kind, min(limit, n - i),
                                   lambda sl, i=i: run(slice(i + sl.start, i + sl.stop)), unit, on_gpu))
    return torch.cat(chunks)


def transformer_call(pipe, z_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, p: torch.Tensor,
                     guidance: torch.Tensor | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
    """One raw transformer call on a batch (no guidance combination). ``t`` ``(N,)`` in [0, 1].

    SD3 gets ``1000 t``; FLUX gets ``t`` (and ``guidance`` when it is guidance-distilled), with the
    latent packed 2x2 and unpacked again. Returns ``v`` ``(N, C, h, w)`` in float32. A batch that
    does not fit in memory is split (`split_on_oom`).
    """
    n = z_t.shape[0]
    cond = torch.ones(n, dtype=torch.bool, device=z_t.device) if cond is None else cond

    def run(sl):
        g = guidance[sl] if guidance is not None else None
        return _transformer_call(pipe, z_t[sl], t[sl], c[sl], p[sl], g, cond[sl])

    unit = f"sequence of a {z_t.shape[-2] * 8}x{z_t.shape[-1] * 8}-ish latent"
    return split_on_oom(pipe, "transformer", n, run, unit, z_t.is_cuda)


def compute_dtype(module: torch.nn.Module) -> torch.dtype:
    """``module.dtype``, remembered while its first parameter keeps its dtype and device.

    diffusers finds a model's dtype by walking every submodule (about 0.4 ms for the ShapesWorld
    transformer on a CPU core, 2 % of a forward); this looks at one parameter.
    """
    first = next(module.parameters(), None)
    key = None if first is None else (first.dtype, first.device)
    cached = module.__dict__.get("_explore_dtype")
    if cached is None or cached[0] != key:
        cached = (key, module.dtype)
        module.__dict__["_explore_dtype"] = cached  # not a submodule, parameter or buffer: bypass __setattr__
    return cached[1]


def _transformer_call(pipe, z_t, t, c, p, guidance, cond) -> torch.Tensor:
    with _running(pipe, t, cond), attention_context(pipe):
        v = family(pipe).forward(pipe, z_t, t, c, p, guidance, compute_dtype(pipe.transformer))
    return v.float()


@torch.no_grad()
def velocity(
    pipe,
    z_t: torch.Tensor,
    t,
    c: torch.Tensor,
    p: torch.Tensor,
    guidance: float | Sequence[float] | torch.Tensor | None = None,
    *,
    uncond_groups: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """The guided velocity ``v̂(z_t; c, p)`` for a batch of branches, in **one** transformer call.

    Args:
        pipe: a pipeline from `load_pipeline`.
        z_t: noisy image latents ``(N, C, h, w)``.
        t: the flow sigma in [0, 1]: a number or ``(N,)``.
        c: token embeddings ``(N, L, D)``.
        p: pooled embeddings ``(N, P)``.
        guidance: the family's own kind — SD3 classifier-free guidance ``v_u + s (v_c - v_u)`` with
            ``v_u`` from the ``""`` prompt; FLUX-dev the distilled guidance embedding (no
            unconditional branch). ``None``: the spec's default; ``1.0`` (SD3): no CFG branch; one
            value per row (a sequence or ``(N,)`` tensor): each row its own scale (SD3 then
            evaluates an unconditional row for every group).
        uncond_groups: SD3 with CFG: rows with the same group id share one unconditional
            evaluation; they must have the same ``z_t`` and ``t``. Default: one per row.

    Returns:
        ``v̂`` ``(N, C, h, w)``, float32 (``v = ε - z``: ``ẑ0 = z_t - t v``).
    """
    n = z_t.shape[0]
    if c.shape[0] != n or p.shape[0] != n:
        raise InputError(f"z_t, c, p must have the same batch size, got {n}, {c.shape[0]}, {p.shape[0]}")
    device = z_t.device
    tt = _as_t(t, n, device)
    cfg = family(pipe).cfg
    if cfg and isinstance(guidance, (int, float)) and guidance == 1.0:
        return transformer_call(pipe, z_t, tt, c, p)  # CFG at 1: no unconditional rows (the common loop case)
    s = guidance_rows(pipe, guidance, n, device)
    if not cfg:  # guidance embedded in the model (FLUX-dev): one row per branch
        return transformer_call(pipe, z_t, tt, c, p, guidance=s)
    if bool((s == 1.0).all()):
        return transformer_call(pipe, z_t, tt, c, p)
    groups = torch.arange(n, device=device) if uncond_groups is None else torch.as_tensor(uncond_groups, device=device)
    if groups.shape != (n,):
        raise InputError(f"uncond_groups needs one group id per row ({n}), got shape {tuple(groups.shape)}")
    uniq, inverse = torch.unique(groups, return_inverse=True)
    first = torch.stack([(inverse == k).nonzero()[0, 0] for k in range(len(uniq))])
    c_u, p_u = null_text(pipe)
    m = len(first)
    z_all = torch.cat([z_t, z_t[first]])
    t_all = torch.cat([tt, tt[first]])
    c_all = torch.cat([c.to(c_u.dtype), c_u.expand(m, -1, -1)])
    p_all = torch.cat([p.to(p_u.dtype), p_u.expand(m, -1)])
    cond = torch.cat([torch.ones(n, dtype=torch.bool, device=device), torch.zeros(m, dtype=torch.bool, device=device)])
    v = transformer_call(pipe, z_all, t_all, c_all, p_all, cond=cond)
    v_c, v_u = v[:n], v[n:][inverse]
    return family(pipe).combine(v_c, v_u, s)


def guidance_rows(pipe, guidance, n: int, device) -> torch.Tensor:
    """``guidance`` (None: the spec's default; a number; one per row) as a float32 ``(n,)`` tensor, checked."""
    if guidance is None:
        guidance = spec(pipe).guidance
    s = torch.as_tensor(guidance, dtype=torch.float32).to(device)
    if s.ndim == 0:
        s = s.expand(n)
    if s.shape != (n,):
        raise InputError(f"guidance must be a number or one value per row ({n}), got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise InputError(f"guidance must be finite, got {guidance}")
    return s


def count_sequences(n: int, guidance, family_name, groups: int | None = None) -> int:
    """Transformer sequences one `velocity` call costs (for cost accounting in benchmarks).

    ``guidance``: a number or one value per row (a CFG family runs no unconditional rows only when
    all are 1). ``family_name``: a `Family` or its name.
    """
    return by_name(family_name).sequences(n, guidance, groups)


def flow_noise(z0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    """``z_t = (1 - t) z0 + t eps`` (rectified flow, diffusers convention)."""
    t = torch.as_tensor(t, dtype=z0.dtype, device=z0.device)
    t = t.view(-1, *([1] * (z0.ndim - 1))) if t.ndim else t
    return (1 - t) * z0 + t * eps


def info(latent: JointLatent) -> dict[str, Any]:
    """Shapes and norms of a joint latent, for display."""
    return {
        "model": latent.model_id,
        "image_size": latent.image_size,
        "z": tuple(latent.z.shape),
        "c": tuple(latent.c.shape),
        "p": tuple(latent.p.shape),
        "|z|": float(latent.z.float().norm() / max(1, len(latent))),
        "|c|": float(latent.c.float().norm() / max(1, len(latent))),
        "|p|": float(latent.p.float().norm() / max(1, len(latent))),
    }
