"""Memory estimates per model x method x resolution, before anything is loaded (``bench --estimate``).

Nothing here allocates real memory or needs a GPU: the full-size transformer and VAE are built on
the meta device and run there, and a dispatch mode adds up the bytes of every tensor that is alive,
op by op. What is counted:

- **weights**: every parameter at the run's dtype; the Linear weights of the transformer at the
  quantisation scheme's bytes per weight (+ its scales); the VAE; the text encoders at their published
  sizes (``ARCHITECTURES[...]["text"]["encoder_params"]``) or, for a loaded pipeline, their real size.
- **activations**: the live bytes of the transformer calls the method makes, at the batch rows it
  sends. The call pattern (rows per call; plain forward or forward-mode JVP) is recorded by running
  the same method on the family's tiny pipeline, so it is the code's own pattern, not a table.
  On a GPU the default attention kernels (flash / memory-efficient) never hold the full score matrix:
  a stand-in with their memory (output + log-sum-exp) replaces SDPA for plain calls. Under JVP explore
  uses the math kernel (the one with forward-mode AD) on every device, and so does the estimate.
- **VAE decode** of one image at the resolution (the render at the end of an edit).

Not counted: the CUDA context and cuBLAS workspaces (about 0.5-1 GB on an H100), allocator
fragmentation, text-encoder activations (one prompt: small beside the rest). ``fits`` keeps a
margin for them (``MARGIN``).
"""

from __future__ import annotations

import contextlib
import functools
import weakref

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import InputError, ResourceError

GB = 1e9
MARGIN = 0.10  # of the device's memory, for what the estimate leaves out (see the module doc)
# bytes per Linear weight of each quantisation scheme (weight-only; per-channel / per-group scales added)
WEIGHT_BYTES = {None: None, "int8": 1.0, "fp8": 1.0, "int4": 0.5, "nf4": 0.5, "bnb-int8": 1.0}
GROUP = {"int4": 128, "nf4": 64}  # elements per scale (per-row scales otherwise)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class LiveBytes(TorchDispatchMode):
    """Adds up the bytes of the storages of tensors created under it while any tensor on them is alive.

    Storages, not tensors: views, aliases (``detach``, ``_unsafe_view`` after a matmul) and in-place
    results share their storage, which counts once.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage id -> [bytes, tensors alive on it]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                entry = self._storages.get(key)
                if entry is None:
                    entry = self._storages[key] = [storage.nbytes(), 0]
                    self.live += entry[0]
                    self.peak = max(self.peak, self.live)
                entry[1] += 1
                weakref.finalize(t, self._free, key)
        return out

    def _free(self, key: int) -> None:
        entry = self._storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[key]


class _FusedAttention(torch.autograd.Function):
    """The memory of a fused attention kernel: the output, and for backward q, k, v, output, log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def fused_attention():
    """``F.scaled_dot_product_attention`` (as the attention processors call it) becomes `_FusedAttention`."""
    stock = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if key.shape[-3] != query.shape[-3]:  # grouped-query attention: heads repeated
            rep = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
        return _FusedAttention.apply(query, key, value)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = stock


# -- the call pattern of a method (recorded on the family's tiny pipeline) ---------------------------------


@contextlib.contextmanager
def recording_calls(fam):
    """Records ``(rows, kind)`` of every transformer call through ``fam.forward``; kind: forward / jvp / grad."""
    calls: list[tuple[int, str]] = []
    stock = fam.forward

    def forward(pipe, z_t, t, c, p, guidance, dtype):
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor
        if any(wrapped(x) for x in (z_t, t, c, p) if isinstance(x, torch.Tensor)):
            kind = "jvp"
        elif torch.is_grad_enabled() and any(x.requires_grad for x in (z_t, c, p) if isinstance(x, torch.Tensor)):
            kind = "grad"
        else:
            kind = "forward"
        calls.append((int(z_t.shape[0]), kind))
        return stock(pipe, z_t, t, c, p, guidance, dtype)

    fam.forward = forward
    try:
        yield calls
    finally:
        del fam.forward


@functools.lru_cache(maxsize=64)
def call_pattern(tiny: str, method: str, preserve: int, hessian: str | None, jvp_chunk: int | None = None
                 ) -> dict[str, int]:
    """Most rows per transformer call, per kind, of one ``method`` edit (2 steps) on the tiny pipeline ``tiny``."""
    import numpy as np

    from ..editing.api import edit, settings_for
    from ..editing.directions import text_direction
    from ..editing.settings import EditSettings
    from ..pipeline.families import family
    from ..pipeline.latent import encode
    from ..pipeline.load import load_pipeline

    pipe = load_pipeline(tiny)
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    src = encode(pipe, image, "a red circle")
    templates = ["a {} circle"]
    d = text_direction(pipe, "red", "blue", templates=templates)
    words = [("small", "large"), ("left", "right"), ("dark", "light"), ("round", "square")]
    keep = [text_direction(pipe, a, b, templates=templates) for a, b in (words * 3)[:preserve]]
    overrides = {}
    if isinstance(settings_for(pipe, method), EditSettings):  # score distillation: 2 steps show every call
        overrides = {"steps": 2, "basis": 0}  # every preserved direction is a column
        if hessian is not None:
            overrides["hessian"] = hessian
        if jvp_chunk is not None:
            overrides["jvp_chunk"] = jvp_chunk
    with recording_calls(family(pipe)) as calls:
        edit(pipe, src, d, 1.0, method, preserve=keep, seed=0, **overrides)
    rows: dict[str, int] = {}
    for n, kind in calls:
        rows[kind] = max(rows.get(kind, 0), n)
    return rows


# -- the full-size model on the meta device --------------------------------------------------------------


def _bytes(module: torch.nn.Module, dtype: torch.dtype, quantization: str | None = None) -> int:
    """Weight bytes of ``module`` at ``dtype``, its Linear weights at the scheme's bytes (+ scales in ``dtype``)."""
    size = torch.empty((), dtype=dtype).element_size()
    total = 0
    quantised = set()
    if quantization is not None:
        per = WEIGHT_BYTES[quantization]
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                out_f, in_f = m.weight.shape
                group = GROUP.get(quantization, in_f)
                total += int(m.weight.numel() * per) + out_f * -(-in_f // group) * size
                quantised.add(id(m.weight))
    total += sum(p.numel() * size for p in module.parameters() if id(p) not in quantised)
    return total


def _inputs(pipe, rows: int, res: int, dtype: torch.dtype):
    """Meta ``z_t, t, c, p`` of the full-size shapes at ``rows`` rows and ``res`` pixels a side."""
    from ..pipeline.families import family
    from ..pipeline.spec import spec

    fam = family(pipe)
    s = fam.latent_scale(pipe)
    ch = fam.latent_channels(pipe)
    width, pooled = fam.embedding_widths(pipe.transformer.config)
    length = spec(pipe).max_sequence_length
    meta = dict(device="meta", dtype=torch.float32)
    return (torch.empty(rows, ch, res // s, res // s, **meta), torch.empty(rows, **meta),
            torch.empty(rows, length, width, **meta), torch.empty(rows, pooled, **meta))


@functools.lru_cache(maxsize=8)
def _meta_pipeline(name: str, dtype: torch.dtype):
    """The full-size architecture ``name`` on the meta device (weights without memory), built once."""
    from ..pipeline.architectures import architecture

    return architecture(name, device="meta", dtype=dtype)


@functools.lru_cache(maxsize=256)
def _peak(name: str, rows: int, kind: str, res: int, dtype: torch.dtype) -> int:
    return _call_peak(_meta_pipeline(name, dtype), rows, kind, res, dtype)


def _call_peak(pipe, rows: int, kind: str, res: int, dtype: torch.dtype) -> int:
    """Peak live bytes (beyond the weights) of one transformer call of ``kind`` at ``rows`` rows."""
    from torch.func import jvp

    from ..pipeline.families import family

    fam = family(pipe)
    mode = LiveBytes()
    with mode:
        z, t, c, p = _inputs(pipe, rows, res, dtype)
        g = None if fam.cfg else torch.full((rows,), 3.5, device="meta")
        if kind == "jvp":
            def f(c_, p_):
                return fam.forward(pipe, z, t, c_, p_, g, dtype)

            with torch.enable_grad():  # the math kernel: scores materialised, as on every device under JVP
                jvp(f, (c, p), (torch.empty_like(c), torch.empty_like(p)))
        elif kind == "grad":
            z.requires_grad_(True)
            with torch.enable_grad(), fused_attention():
                fam.forward(pipe, z, t, c, p, g, dtype).float().sum().backward()
        else:
            with torch.no_grad(), fused_attention():
                fam.forward(pipe, z, t, c, p, g, dtype)
    return mode.peak


def _decode_peak(pipe, res: int) -> int:
    from ..pipeline.families import family

    fam = family(pipe)
    mode = LiveBytes()
    with mode, torch.no_grad(), fused_attention():
        s = fam.latent_scale(pipe)
        z = torch.empty(1, fam.latent_channels(pipe), res // s, res // s, device="meta")
        fam.vae_decode(pipe, z)
    return mode.peak


def _tiny_name(family_name: str) -> str:
    from ..pipeline.families import by_name

    tiny = by_name(family_name).tiny_name
    if tiny is None:
        raise InputError(f"the {family_name} family has no tiny pipeline to record a method's call pattern on")
    return tiny


def estimate(model: str, method: str = "hsds", res: int = 1024, dtype: str = "bf16",
             quantization: str | None = None, preserve: int = 3, hessian: str | None = None,
             jvp_chunk: int | None = None) -> dict:
    """Estimated peak GPU memory (GB, 1e9 bytes) of one ``method`` edit of a ``res``² image with ``model``.

    ``model``: a name in ``explore.pipeline.architectures.ARCHITECTURES``. Returns the parts (weights of
    transformer / VAE / text encoders, the method's peak transformer call, the VAE decode) and two totals:
    ``peak_gb`` with every component resident, ``peak_gb_offload`` with diffusers' model CPU offload (one
    component on the GPU at a time; the text encoders' weights are then the largest single part for some
    families). ``hessian``: HSDS's Hessian columns, ``"jvp"`` (exact, forward-mode AD: explore's default in
    half precision, and the costly one: the math attention kernel materialises the scores) or
    ``"finite-difference"`` (more rows, plain forwards; the fp32 default); ``jvp_chunk``: JVP columns per
    call (the setting of that name; 1 needs the least memory). Unsupported methods return
    ``{"unsupported": reason}``.
    """
    from ..editing.methods import method_names
    from ..pipeline.architectures import ARCHITECTURES
    from ..pipeline.families import by_name

    if model not in ARCHITECTURES:
        raise InputError(f"unknown architecture {model!r}; known: {', '.join(ARCHITECTURES)}")
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if quantization not in WEIGHT_BYTES:
        raise InputError(f"quantization must be one of {', '.join(str(k) for k in WEIGHT_BYTES)}, got "
                         f"{quantization!r}")
    if method not in method_names():
        raise InputError(f"unknown method {method!r}; known: {', '.join(method_names())}")
    arch = ARCHITECTURES[model]
    fam = by_name(arch["family"])
    if method in fam.unsupported_methods:
        return {"model": model, "method": method, "res": res, "unsupported": fam.unsupported_methods[method]}
    multiple = 16
    if res % multiple:
        raise InputError(f"res must be a multiple of {multiple}, got {res}")
    torch_dtype = DTYPES[dtype]
    if hessian is None:
        hessian = "jvp" if torch_dtype != torch.float32 else "finite-difference"  # explore's defaults
    pattern = call_pattern(_tiny_name(arch["family"]), method, preserve, hessian, jvp_chunk)
    pipe = _meta_pipeline(model, torch_dtype)
    calls = {kind: _peak(model, rows, kind, res, torch_dtype) for kind, rows in pattern.items()}
    decode = _decode_peak(pipe, res)
    size = torch.empty((), dtype=torch_dtype).element_size()
    weights = {"transformer": _bytes(pipe.transformer, torch_dtype, quantization),
               "vae": _bytes(pipe.vae, torch_dtype), "text_encoders": int(arch["text"]["encoder_params"] * size)}
    transformer_phase = weights["transformer"] + max(calls.values(), default=0)
    decode_phase = weights["vae"] + decode
    resident = sum(weights.values()) + max(max(calls.values(), default=0), decode)
    offload = max(transformer_phase, decode_phase, weights["text_encoders"])
    return {
        "model": model, "method": method, "res": res, "dtype": dtype, "quantization": quantization,
        "preserve": preserve, "hessian": hessian if method == "hsds" else None, "jvp_chunk": jvp_chunk,
        "rows_per_call": pattern,
        "weights_gb": {k: round(v / GB, 2) for k, v in weights.items()},
        "activations_gb": {k: round(v / GB, 2) for k, v in calls.items()},
        "vae_decode_gb": round(decode / GB, 2),
        "phases_gb": {"text_encoders": round(weights["text_encoders"] / GB, 2),
                      "transformer": round(transformer_phase / GB, 2), "vae_decode": round(decode_phase / GB, 2)},
        "peak_gb": round(resident / GB, 1),
        "peak_gb_offload": round(offload / GB, 1),
    }


def fits(estimate_: dict, device_gb: float, offload: bool = False) -> bool:
    """Whether the estimate fits a device of ``device_gb`` GB with the margin."""
    need = estimate_["peak_gb_offload" if offload else "peak_gb"]
    return need <= device_gb * (1 - MARGIN)


def check_fits(estimate_: dict, device_gb: float, offload: bool = False) -> None:
    """Raise `ResourceError` before a run that would not fit (with what would)."""
    if "unsupported" in estimate_ or fits(estimate_, device_gb, offload):
        return
    need = estimate_["peak_gb_offload" if offload else "peak_gb"]
    raise ResourceError(
        f"{estimate_['method']} on {estimate_['model']} at {estimate_['res']}² needs about {need} GB "
        f"({'offloaded' if offload else 'all resident'}; weights {estimate_['weights_gb']}, activations "
        f"{estimate_['activations_gb']}), more than {device_gb:.0f} GB less a {MARGIN:.0%} margin: try "
        f"offload='model', quantization='int8', jvp_chunk=1 or hessian='finite-difference' (HSDS), fewer "
        f"preserved directions or a smaller resolution")


def architecture_of(model: str) -> str | None:
    """The `ARCHITECTURES` name of ``model`` (an architecture name or a hub id it lists), else None."""
    from ..pipeline.architectures import ARCHITECTURES

    if model in ARCHITECTURES:
        return model
    return next((name for name, a in ARCHITECTURES.items() if model in a.get("hub", ())), None)


def without_text_encoders(est: dict) -> dict:
    """The estimate of a random architecture (`explore.pipeline.architectures.architecture`), whose text
    encoders are small stand-ins: their published weights taken out of both totals."""
    text = est["weights_gb"]["text_encoders"]
    out = {**est, "weights_gb": {**est["weights_gb"], "text_encoders": 0.0}}
    out["peak_gb"] = round(est["peak_gb"] - text, 1)
    out["peak_gb_offload"] = round(max(est["phases_gb"]["transformer"], est["phases_gb"]["vae_decode"]), 1)
    return out


def preflight(model: str, device: str, method: str = "hsds", res: int | None = None, dtype: str = "bf16",
              quantization: str | None = None, offload: str | None = None, stand_in_text: bool = False) -> dict | None:
    """Before loading ``model`` on a CUDA ``device``: raise `ResourceError` if the estimate does not fit it.

    Only for models whose architecture explore knows (`architecture_of`); returns the estimate (None when
    there is nothing to check: a CPU run, an unknown architecture, sequential offload). ``stand_in_text``:
    a random architecture, whose text encoders are stand-ins (`without_text_encoders`).
    """
    name = architecture_of(model)
    if name is None or not str(device).startswith("cuda") or offload == "sequential" or not torch.cuda.is_available():
        return None
    est = estimate(name, method, res or 1024, dtype if dtype in DTYPES else "bf16", quantization)
    if stand_in_text:
        est = without_text_encoders(est)
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory / GB
    check_fits(est, total, offload == "model")
    return est
