"""Trace and patch: run again with chosen activations replaced, zeroed, mean-ablated, or a block bypassed.

The same named sites as `explore.interp.hooks` (``transformer_blocks.2.img``, ...) on every
family. A run is traced with `cache_activations` / `run_with_cache` (per site, per ``t``, per CFG
branch: an `ActivationCache` of ``(site, t) -> (rows, tokens, dim)``); a second run then takes
those activations where this module says:

- `patch(pipe, {site: cache})`: the site's output becomes the cached one (another caption, another
  image, the clean run of an edit);
- `ablate(pipe, sites, "zero" | "mean", reference=cache)`: zeros, or the mean over the reference
  cache's rows at the same ``t``;
- `bypass(pipe, blocks)`: a block passes its input through unchanged (Stable Flow's test of which
  blocks matter).

Each takes ``timesteps`` (only at these ``t``: a window), ``tokens`` (only these positions of the
stream: a word's text tokens, an object's image patches) and ``branch`` (``"cond"``, ``"uncond"``
or ``"all"`` rows of a CFG batch). All are context managers: the hooks exist only inside the
``with`` block.

Rows are matched in order: at a site and ``t``, the k-th row the patched run sends takes the k-th
cached row of that site and ``t`` (so the patched run makes the same calls as the traced one, e.g. a
`generate` with the same steps, or a `velocity` call of the same batch). Shapes must agree (the same
resolution and text length); a mismatch raises naming the site.

Exactness: patching every site of run A into run B reproduces A's output bit for bit when A and B
differ only in what enters the blocks (the latent, the image). The output head also reads the
time embedding, which includes the pooled text embedding in SD3 and FLUX.1, so for two captions
the blocks carry everything but that conditioning of the final norm.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping

import torch

from ..errors import InputError
from ..pipeline.families import family
from .hooks import ActivationCache, batch_rows, hooks, resolve_sites, track_pipeline_timestep

BRANCHES = ("cond", "uncond", "all")


def _check_branch(branch: str) -> None:
    if branch not in BRANCHES:
        raise InputError(f"branch must be one of {', '.join(BRANCHES)}, got {branch!r}")


def _in_window(tv: float, timesteps) -> bool:
    if timesteps is None:
        return True
    if isinstance(timesteps, tuple) and len(timesteps) == 2 and not isinstance(timesteps[0], (list, tuple)):
        lo, hi = sorted(float(x) for x in timesteps)
        return lo - 1e-4 <= tv <= hi + 1e-4
    return any(abs(tv - float(x)) <= 1e-4 for x in timesteps)


def _token_index(tokens, n: int, site: str):
    if tokens is None:
        return slice(None)
    idx = torch.as_tensor(list(tokens) if not isinstance(tokens, slice) else range(n)[tokens], dtype=torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise InputError(f"tokens {idx.tolist()[:8]}... out of range for {site}, which has {n} tokens")
    return idx


def _rows_by_t(pipe, n: int, branch: str):
    t, keep = batch_rows(pipe, n, branch)
    for tv in torch.unique(t):
        rows = keep & (t == tv)
        if rows.any():
            yield round(float(tv), 4), rows


def _replacer(pipe, site: str, value_at, branch: str, timesteps, tokens):
    """A hook function writing ``value_at(t, k, x_rows)`` (the rows' new values) into the site's output."""

    def fn(x, *, site=site):
        out = None
        for tv, rows in _rows_by_t(pipe, x.shape[0], branch):
            if not _in_window(tv, timesteps):
                continue
            if out is None:
                out = x.clone()
            idx = rows.nonzero().flatten().to(x.device)
            current = out[idx]
            new = value_at(tv, current).to(device=x.device, dtype=x.dtype)
            if new.shape != current.shape:
                raise InputError(f"patch at {site}, t={tv}: the source has shape {tuple(new.shape)}, this run "
                                 f"{tuple(current.shape)} (same resolution, text length and batch rows needed)")
            tok = _token_index(tokens, x.shape[1], site)
            if isinstance(tok, slice):
                out[idx] = new
            else:
                tok = tok.to(x.device)
                part = current.clone()
                part[:, tok] = new[:, tok]
                out[idx] = part
        return out

    return fn


def _source_rows(cache: ActivationCache, site: str):
    """``value_at(t, current)``: the next rows of ``cache[(site, t)]`` in order (a cursor per ``t``)."""
    cursor: dict[float, int] = defaultdict(int)

    def value_at(tv, current):
        key = (site, tv)
        if key not in cache:
            have = sorted(t for s, t in cache if s == site)
            raise InputError(f"the source cache has no {site} at t={tv}" + (f"; it has t = {have}" if have else
                                                                            "; it has no such site"))
        src = cache[key]
        k, n = cursor[tv], current.shape[0]
        if k + n > src.shape[0]:
            raise InputError(f"the source cache has {src.shape[0]} rows of {site} at t={tv}; this run asks for "
                             f"rows {k}..{k + n - 1} (trace the run that makes the same calls)")
        cursor[tv] = k + n
        return src[k:k + n]

    return value_at


@contextlib.contextmanager
def patch(pipe, sources: Mapping[str, ActivationCache], *, timesteps=None, tokens=None,
          branch: str = "cond") -> Iterator[None]:
    """Replace the outputs of sites with traced ones while the block runs.

    ``sources``: site (or a pattern such as ``"transformer_blocks.*.img"``) -> the `ActivationCache`
    of the run to copy from (traced with the same ``branch``). ``timesteps``: None (every ``t``), a
    ``(t_lo, t_hi)`` window, or a list of ``t``. ``tokens``: positions of the stream to replace
    (None: all). Example::

        _, clean = run_with_cache(pipe, lambda: velocity(pipe, z_edit, t, c, p))
        with patch(pipe, {"transformer_blocks.2.img": clean}, timesteps=(0.5, 1.0)):
            v = velocity(pipe, z_src, t, c, p)
    """
    _check_branch(branch)
    fns = {}
    for spec, cache in sources.items():
        if not isinstance(cache, ActivationCache):
            raise InputError(f"patch source for {spec!r} must be an ActivationCache (run_with_cache), got "
                             f"{type(cache).__name__}")
        for site in resolve_sites(pipe, spec):
            fns[site] = _replacer(pipe, site, _source_rows(cache, site), branch, timesteps, tokens)
    with track_pipeline_timestep(pipe), hooks(pipe, fns):
        yield


@contextlib.contextmanager
def ablate(pipe, sites, how: str = "zero", *, reference: ActivationCache | None = None, timesteps=None,
           tokens=None, branch: str = "cond") -> Iterator[None]:
    """Zero the outputs of ``sites`` (``how="zero"``) or set them to the mean over the ``reference``
    cache's rows (and tokens) at the same ``t`` (``how="mean"``: mean ablation)."""
    _check_branch(branch)
    if how not in ("zero", "mean"):
        raise InputError(f"how must be 'zero' or 'mean', got {how!r}")
    if how == "mean" and not isinstance(reference, ActivationCache):
        raise InputError("how='mean' needs reference=, an ActivationCache of the runs to average over")
    fns = {}
    for site in resolve_sites(pipe, sites):
        if how == "zero":
            def value_at(tv, current):
                return torch.zeros_like(current)
        else:
            def value_at(tv, current, site=site):
                if (site, tv) not in reference:
                    raise InputError(f"the reference cache has no {site} at t={tv}")
                mean = reference[(site, tv)].float().mean(dim=(0, 1), keepdim=True)
                return mean.expand_as(current)
        fns[site] = _replacer(pipe, site, value_at, branch, timesteps, tokens)
    with track_pipeline_timestep(pipe), hooks(pipe, fns):
        yield


def blocks(pipe) -> list[str]:
    """Every block of the transformer, ``{group}.{i}``, in forward order (what `bypass` takes)."""
    return list(dict.fromkeys(s.rsplit(".", 1)[0] for s in resolve_sites(pipe, None)))


@contextlib.contextmanager
def bypass(pipe, names: str | Iterable[str], *, timesteps=None, branch: str = "all") -> Iterator[None]:
    """Skip blocks: each named block (``"transformer_blocks.3"``; patterns allowed) returns its input.

    ``timesteps`` / ``branch`` restrict the rows skipped (default: every row of every call, Stable
    Flow's bypass); the other rows keep the block's own output.
    """
    _check_branch(branch)
    names = [names] if isinstance(names, str) else list(names)
    available = blocks(pipe)
    chosen: list[str] = []
    for name in names:
        hits = [b for b in available if fnmatch.fnmatch(b, name)]
        if not hits:
            raise InputError(f"no block {name!r}; blocks look like {available[0]!r} (explore.interp.patching.blocks)")
        chosen += hits
    fam = family(pipe)
    handles = []
    inputs: dict[str, tuple] = {}

    def make(name, group, module):
        def pre(mod, args, kwargs):
            inputs[name] = (args, kwargs)

        def post(mod, args, output):
            a, kw = inputs.pop(name)
            identity = fam.block_identity(group, mod, a, kw, output)
            if branch == "all" and timesteps is None:
                return identity
            return _mix(pipe, fam, group, output, identity, branch, timesteps)

        return pre, post

    try:
        for name in dict.fromkeys(chosen):
            group, index = name.rsplit(".", 1)
            module = getattr(pipe.transformer, group)[int(index)]
            pre, post = make(name, group, module)
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(post))
        with track_pipeline_timestep(pipe):
            yield
    finally:
        for h in handles:
            h.remove()


def _mix(pipe, fam, group, output, identity, branch, timesteps):
    """``output`` with the chosen rows taken from ``identity`` (same structure: tensors or tuples)."""
    first = output if torch.is_tensor(output) else next(o for o in output if torch.is_tensor(o))
    take = torch.zeros(first.shape[0], dtype=torch.bool)
    for tv, rows in _rows_by_t(pipe, first.shape[0], branch):
        if _in_window(tv, timesteps):
            take |= rows
    if not take.any():
        return None

    def pick(o, i):
        if not torch.is_tensor(o):
            return o
        m = take.to(o.device).view(-1, *([1] * (o.dim() - 1)))
        return torch.where(m, i, o)

    if torch.is_tensor(output):
        return pick(output, identity)
    return type(output)(pick(o, i) for o, i in zip(output, identity))

