"""Named intervention points in the transformer, temporary hooks, and `run_with_cache`.

Sites: ``{block list}.{i}.img`` / ``.txt`` — the image / text stream output of a block (shape
``(B, tokens, dim)``), e.g. ``transformer_blocks.{i}.img`` (SD3, FLUX, Qwen-Image joint blocks),
``single_transformer_blocks.{i}.txt`` (FLUX single blocks), ``layers.{i}.img`` (a single-stream
DiT, its shared stream split into image and text rows). The model's family adapter says which
blocks exist and how their outputs hold the streams (`explore.pipeline.families.Family.sites`);
the last SD3 block returns ``(None, image)``, so it has no ``.txt`` site. `sites(pipe)` lists them.

A hook function is ``fn(tensor, *, site) -> tensor | None``; returning a tensor replaces the
stream's output. Hooks exist only inside ``with hooks(pipe, {...}):`` and are removed in
``finally``, whatever happens inside. Hooks that need to know which rows of the running batch are
conditional, and at which ``t``, ask `batch_rows`; inside a diffusers ``pipe(...)`` call that is
known only while `track_pipeline_timestep` is active (`cache_activations` does both).
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from ..errors import InputError
from ..pipeline.families import family
from ..pipeline.spec import state

HookFn = Callable[..., "torch.Tensor | None"]
_SITE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.(\d+)\.(img|txt)$")


def parse_site(site: str) -> tuple[str, int, str]:
    m = _SITE.match(site)
    if not m:
        raise InputError(
            f"unknown site {site!r}; sites look like 'transformer_blocks.3.img' or "
            "'single_transformer_blocks.0.txt' (see explore.sites(pipe))"
        )
    return m.group(1), int(m.group(2)), m.group(3)


def resolve_sites(pipe, spec: str | Iterable[str] | Callable[[str], bool] | None) -> list[str]:
    """Site names from a name, a list, a glob-like pattern (``"*.img"``), a predicate, or None (all)."""
    available = sites(pipe)
    if spec is None:
        return available
    if callable(spec):
        return [s for s in available if spec(s)]
    names = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for name in names:
        if any(ch in name for ch in "*?["):
            hits = [s for s in available if fnmatch.fnmatch(s, name)]
            if not hits:
                raise InputError(f"pattern {name!r} matches no site of this model")
            out += hits
        else:
            parse_site(name)
            if name not in available:
                raise InputError(f"site {name!r} does not exist in this model; it has {len(available)} sites, "
                                 f"from {available[0]!r} to {available[-1]!r}")
            out.append(name)
    return list(dict.fromkeys(out))


def sites(pipe) -> list[str]:
    """Every canonical hook site of the pipeline's transformer, in forward order.

    SD3: ``transformer_blocks.{i}.img`` / ``.txt`` (the last block has no ``.txt`` output: it
    returns ``(None, image)``). FLUX: the same for double blocks, then
    ``single_transformer_blocks.{i}.img`` / ``.txt``. Other families: their adapter's block lists.

    Args:
        pipe: a pipeline from `load_pipeline`.

    Returns:
        The site names, a list of strings (for `explore.hooks` and the probes).
    """
    return family(pipe).sites(pipe.transformer)


def _module(pipe, group: str, index: int):
    return getattr(pipe.transformer, group)[index]


@contextlib.contextmanager
def hooks(pipe, fns: Mapping[str, HookFn | list[HookFn]]) -> Iterator[None]:
    """Add hook functions by site name for the duration of the ``with`` block.

    ``fns``: site -> function or list of functions, called in order. Example::

        with hooks(pipe, {"transformer_blocks.2.img": lambda x, site: x + alpha * d}):
            v = velocity(pipe, ...)
    """
    by_module: dict[tuple[str, int], dict[str, list[HookFn]]] = defaultdict(lambda: {"img": [], "txt": []})
    available = set(sites(pipe))
    for site, f in fns.items():
        group, index, stream = parse_site(site)
        if site not in available:
            resolve_sites(pipe, [site])  # raises with the explanation
        by_module[(group, index)][stream] += f if isinstance(f, list) else [f]
    fam = family(pipe)
    layout: dict = {}

    def pre(module, args, kwargs):  # what splitting a block's output into streams needs, per transformer call
        layout.clear()
        layout.update(fam.stream_layout(module, args, kwargs))

    handles = []
    try:
        if by_module:
            handles.append(pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True))
        for (group, index), streams in by_module.items():
            module = _module(pipe, group, index)
            handles.append(module.register_forward_hook(_make_hook(fam, group, index, streams, layout)))
        yield
    finally:
        for h in handles:
            h.remove()


def _make_hook(fam, group: str, index: int, streams: dict[str, list[HookFn]], layout: dict):
    def hook(module, args, output):
        current = fam.read_streams(group, output, layout)  # e.g. (text, image) of a joint block; SD3's last: no text
        changed = False
        for stream, fs in streams.items():
            site = f"{group}.{index}.{stream}"
            for f in fs:
                x = current.get(stream)
                if x is None:
                    continue
                y = f(x, site=site)
                if y is not None:
                    if y.shape != x.shape:
                        raise InputError(f"hook on {site} returned shape {tuple(y.shape)}, expected {tuple(x.shape)}")
                    current[stream] = y
                    changed = True
        return fam.write_streams(group, output, current, layout) if changed else None

    return hook


class ActivationCache(dict):
    """``(site, t) -> tensor`` ``(n_rows, tokens, dim)`` of the cached branch rows, on the CPU.

    ``t`` is rounded to 4 decimals. Rows come in the order of the batch; several calls at the same
    ``t`` are concatenated along the batch axis.
    """

    def sites(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self))

    def timesteps(self) -> list[float]:
        return sorted({k[1] for k in self})

    def stack(self, site: str) -> torch.Tensor:
        """``(T, n, tokens, dim)`` over the cached timesteps of one site."""
        return torch.stack([self[(site, t)] for t in self.timesteps() if (site, t) in self])


def batch_rows(pipe, n: int, branch: str = "cond") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``t`` ``(n,)`` and a mask of the rows of ``branch`` in the transformer batch now running.

    ``branch``: ``"cond"``, ``"uncond"`` or ``"all"``. In an `explore` call the batch says it
    itself (`explore.pipeline.latent.transformer_call`); inside a diffusers ``pipe(...)`` call the
    timestep comes from `track_pipeline_timestep` and SD3 with CFG stacks [negative; positive].
    """
    st = state(pipe)
    if st.call is not None and st.call.t.shape[0] == n:
        t, cond = st.call.t, st.call.cond
    else:  # inside a diffusers pipeline call: read the timestep the pipeline passed
        t = st.pipeline_t
        if t is None:
            raise RuntimeError("no timestep known for this transformer call (use track_pipeline_timestep)")
        t = t.expand(n) if t.numel() == 1 else t
        cond = family(pipe).pipeline_cond_rows(pipe, n)  # e.g. SD3 pipelines stack [negative; positive]
    keep = {"cond": cond, "uncond": ~cond, "all": torch.ones_like(cond)}[branch]
    return t.detach().float().cpu(), keep.cpu()


@contextlib.contextmanager
def track_pipeline_timestep(pipe):
    """Record the timestep diffusers passes to the transformer (``pipe(...)`` calls), as flow sigma t."""
    fam = family(pipe)
    st = state(pipe)

    def pre(module, args, kwargs):
        ts = kwargs.get("timestep", args[1] if len(args) > 1 else None)  # Z-Image passes it second, positionally
        if ts is not None:
            st.pipeline_t = fam.pipeline_sigma(torch.as_tensor(ts).detach().float().cpu().flatten())

    h = pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        h.remove()
        st.pipeline_t = None


@contextlib.contextmanager
def cache_activations(
    pipe,
    site_spec: str | Iterable[str] | Callable[[str], bool] | None = None,
    timesteps: Iterable[float] | None = None,
    branch: str = "cond",
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[ActivationCache]:
    """Cache activations of chosen sites while the block runs (velocity calls or pipeline calls).

    ``timesteps``: keep only these ``t`` (within 1e-4); None keeps all. ``branch``: ``"cond"``
    (default: the conditional rows), ``"uncond"`` or ``"all"``. ``reduce``: applied to each cached
    ``(n, tokens, dim)`` tensor before storing (e.g. ``lambda x: x.mean(1)`` to pool tokens).
    """
    if branch not in ("cond", "uncond", "all"):
        raise InputError(f"branch must be 'cond', 'uncond' or 'all', got {branch!r}")
    wanted = resolve_sites(pipe, site_spec)
    ts = None if timesteps is None else torch.tensor(list(timesteps), dtype=torch.float32)
    cache = ActivationCache()

    def make(site):
        def fn(x, *, site=site):
            t, keep = batch_rows(pipe, x.shape[0], branch)
            for tv in torch.unique(t):
                if ts is not None and not torch.isclose(ts, tv, atol=1e-4).any():
                    continue
                rows = keep & (t == tv)
                if rows.any():
                    a = x[rows.to(x.device)].detach()
                    a = (reduce(a) if reduce else a).to("cpu", dtype)
                    key = (site, round(float(tv), 4))
                    cache[key] = torch.cat([cache[key], a]) if key in cache else a
            return None

        return fn

    with track_pipeline_timestep(pipe), hooks(pipe, {s: make(s) for s in wanted}):
        yield cache


def run_with_cache(pipe, run: Callable[[], Any], sites=None, timesteps=None, branch: str = "cond",
                   reduce=None) -> tuple[Any, ActivationCache]:
    """Run ``run()`` (a `velocity` call, a pipeline call...) and return ``(its output, the cache)``."""
    with cache_activations(pipe, sites, timesteps, branch, reduce) as cache:
        out = run()
    return out, cache
