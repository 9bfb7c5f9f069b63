"""`EditSettings`: the one source of names, defaults, per-method overrides and validation of an edit.

Every score-distillation method (``sds``, ``dds``, ``hsds``, ``image``, ``text``) runs the shared
loop of `explore.editing.loop` and renders with `explore.pipeline.sampling.render`; these are
the knobs of both. `EditSettings.for_method` gives a method's settings: the base defaults, then
the method's own (``METHOD_DEFAULTS``, tuned on the development seed, docs/editing.md), then the
caller's overrides (``None`` means "the default"). The object is immutable and behaves as a
read-only mapping (``s["lr"]``, ``dict(s)``), so it goes into JSON as it is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..errors import InputError

# Seed streams: the optimisation of item i uses seed s_i; its render noise uses s_i + this offset,
# so the two never share random numbers (and x_rec / x_edit of one source share their render noise).
RENDER_SEED_OFFSET = 7919

WEIGHTS = {"1": lambda t: torch.ones_like(t), "1-t": lambda t: 1 - t, "t": lambda t: t}
HESSIANS = ("finite-difference", "jvp")
FD_SCHEMES = ("forward", "central")
# Hessian columns in a half-precision model (bf16 / fp16): the model's outputs carry ~3 significant
# digits, so finite differences are mostly rounding. Measured on ShapesWorld in bf16 (CPU) against the
# exact fp32 JVP column, 3 edits x 2 noise levels: forward δ = 0.1 cosine 0.38-0.92, central δ = 0.3
# 0.85-0.99, the bf16 JVP 0.999-1.000. So half-precision models take exact JVP columns by default
# (forward-mode AD through the math SDPA kernel; ~2-3 forward passes per column and more attention
# memory); `fd="central"` with a larger `delta` stays available where that memory is short.
HALF_PRECISION_DEFAULTS = {"hessian": "jvp"}


def _opt(default, doc: str):
    """A setting that changes the optimisation itself (an optimisation run can be reused only if these match)."""
    return dataclasses.field(default=default, metadata={"optimisation": True, "doc": doc})


def _render(default, doc: str):
    return dataclasses.field(default=default, metadata={"optimisation": False, "doc": doc})


@dataclasses.dataclass(frozen=True)
class EditSettings(Mapping):
    """Settings of the score-distillation loop and the render (DESIGN §2).

    ``steps`` K, ``lr`` η, ``t_range`` [t_min, t_max] of the noise level drawn each step,
    ``weight`` w(t), ``delta`` δ of the finite-difference Hessian columns and ``fd`` their
    scheme (``"forward"`` ``[v(c + δΔc) - v(c)]/δ`` or ``"central"`` ``[v(c + δΔc) - v(c - δΔc)]/2δ``,
    one more branch per column), ``hessian`` ("finite-difference" or exact "jvp"), ``guidance``
    (None: the model's default), ``max_dz`` (divergence guard: RMS of ``z - z0`` per element),
    ``protect_edit`` (HSDS: keep the edit's own column out of the projection); render:
    ``t_render`` and ``render_steps`` (None: the model's
    sampler steps below ``t_render``).
    """

    steps: int = _opt(40, "optimisation steps K")
    lr: float = _opt(0.3, "step size η")
    t_range: tuple[float, float] = _opt((0.5, 0.98), "noise levels drawn uniformly each step")
    weight: str = _opt("1", "w(t): '1', '1-t' or 't'")
    delta: float = _opt(0.1, "finite-difference step δ of the Hessian columns")
    fd: str = _opt("forward", "finite-difference scheme: 'forward' or 'central'")
    hessian: str = _opt("finite-difference", "'finite-difference' or 'jvp'")
    guidance: float | None = _opt(None, "guidance (None: the model's default)")
    max_dz: float = _opt(20.0, "divergence guard on RMS |z - z0|")
    protect_edit: bool = _opt(False, "HSDS: never remove the edit's own first-order change")
    t_render: float = _render(0.3, "noise level of the render")
    render_steps: int | None = _render(None, "render sampler steps (None: the model's)")

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def optimisation_keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("optimisation"))

    @classmethod
    def for_method(cls, method: str, model_guidance: float | None = None, half_precision: bool = False,
                   **overrides: Any) -> EditSettings:
        """Base defaults, then ``METHOD_DEFAULTS[method]``, then ``overrides`` (None = keep the default).

        ``model_guidance``: the model's default guidance (used unless the method or the caller sets
        one). ``half_precision``: the model runs in bf16 / fp16, so the Hessian columns default to
        ``HALF_PRECISION_DEFAULTS`` (exact JVPs: finite differences drown in rounding there).
        """
        unknown = set(overrides) - set(cls.names())
        if unknown:
            raise InputError(f"unknown edit setting(s) {sorted(unknown)}; known: {', '.join(cls.names())}")
        method, variant, _ = split_variant(method)
        values = {"guidance": model_guidance, **(HALF_PRECISION_DEFAULTS if half_precision else {}),
                  **METHOD_DEFAULTS.get(method, {}), **variant}
        values.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**values)
        s.validate()
        return s

    def replace(self, **changes: Any) -> EditSettings:
        s = dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
        s.validate()
        return s

    def __post_init__(self):
        tr = self.t_range
        if isinstance(tr, list):
            object.__setattr__(self, "t_range", tuple(tr))

    def validate(self) -> None:
        """Raise `InputError` naming the first bad setting."""

        def finite(name, lo=None, hi=None, allow_zero=True):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise InputError(f"{name} must be a finite number, got {v!r}")
            if lo is not None and (v < lo or (v == lo and not allow_zero)):
                raise InputError(f"{name} must be {'>' if not allow_zero else '>='} {lo}, got {v}")
            if hi is not None and v > hi:
                raise InputError(f"{name} must be <= {hi}, got {v}")

        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise InputError(f"steps must be a non-negative integer, got {self.steps!r}")
        finite("lr", 0)
        finite("t_render", 0, 1)
        finite("delta", 0, allow_zero=False)
        if self.guidance is not None:
            finite("guidance", 0)
        finite("max_dz", 0, allow_zero=False)
        tr = self.t_range
        if not (isinstance(tr, (tuple, list)) and len(tr) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in tr)):
            raise InputError(f"t_range must be (t_min, t_max), got {tr!r}")
        if not all(math.isfinite(x) for x in tr) or not (0 <= tr[0] <= tr[1] <= 1):
            raise InputError(f"t_range must satisfy 0 <= t_min <= t_max <= 1 (flow sigma), got {tuple(tr)}")
        if self.weight not in WEIGHTS:
            raise InputError(f"weight must be one of {', '.join(WEIGHTS)}, got {self.weight!r}")
        if self.fd not in FD_SCHEMES:
            raise InputError(f"fd must be 'forward' or 'central', got {self.fd!r}")
        if self.hessian not in HESSIANS:
            raise InputError(f"hessian must be 'finite-difference' or 'jvp', got {self.hessian!r}")
        if not isinstance(self.protect_edit, bool):
            raise InputError(f"protect_edit must be True or False, got {self.protect_edit!r}")
        if self.render_steps is not None and (not isinstance(self.render_steps, int) or self.render_steps < 1):
            raise InputError(f"render_steps must be a positive integer or None, got {self.render_steps!r}")
        object.__setattr__(self, "t_range", (float(tr[0]), float(tr[1])))

    # -- read-only mapping -----------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if key not in self.names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def same_optimisation(self, other: Mapping) -> list[str]:
        """The optimisation settings in which ``other`` differs (empty: an optimisation run can be reused)."""
        return [k for k in self.optimisation_keys() if other.get(k) != self[k]]


# Per-method defaults (each method at its own best settings, tuned on the development seed 1000;
# docs/editing.md has the grids). protect_edit: the literal projection also removes the part of
# g_edit that *is* the edit wherever it overlaps a preserved factor's column (docs/editing.md).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "hsds": {"protect_edit": True, "lr": 0.5, "t_render": 0.45},
    "dds": {},
    "sds": {},
    "image": {"protect_edit": True, "lr": 0.5, "t_render": 0.45},
    "text": {"t_render": 0.6},
}


# Named variants: a method with some settings fixed, usable wherever a method name is (edit, sweep,
# evaluate --methods, the panels), so variants compare in one run. ``preserve`` sets the preserved
# directions when the caller passes none.
VARIANTS: dict[str, dict[str, Any]] = {
    "hsds-auto": {"method": "hsds", "preserve": "auto"},  # no factor table: directions from the prompt
}


def split_variant(name: str) -> tuple[str, dict[str, Any], Any]:
    """``(base method, setting overrides, preserve or None)`` of a method or variant name."""
    if name not in VARIANTS:
        return name, {}, None
    v = dict(VARIANTS[name])
    base, preserve = v.pop("method"), v.pop("preserve", None)
    return base, v, preserve


def check_strength(x) -> float:
    """A strength λ as a float (`InputError` unless a finite number)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        raise InputError(f"strength must be a finite number, got {x!r}")
    return float(x)
