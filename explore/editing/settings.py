"""The one source of names, defaults, per-method overrides and validation of an edit's settings.

Every score-distillation method (``sds``, ``dds``, ``hsds``, ``image``, ``text``) runs the shared
loop of `explore.editing.loop` and renders with `explore.pipeline.sampling.render`;
`EditSettings` holds the knobs of both. `EditSettings.for_method` gives a method's settings: the
base defaults, then the method's own (``METHOD_DEFAULTS``, tuned on the development seed,
docs/editing.md), then the caller's overrides (``None`` means "the default"). The peer methods
(``flowedit``, ``flowalign``, ``rf-inversion``, ``unieditflow``, ``fluxspace``,
`explore.editing.peers`) sample instead of optimising and have their own settings classes
(`FlowEditSettings`, `FlowAlignSettings`, `RFInversionSettings`, `UniEditFlowSettings`,
`FluxSpaceSettings`) with the published defaults per model family (``PEER_DEFAULTS``); `settings_class`
picks the class of a method. Every settings object is immutable and behaves as a
read-only mapping (``s["lr"]``, ``dict(s)``), so it goes into JSON as it is.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..checks import MAX_SEED, check_seed, real_number  # noqa: F401  (re-exported)
from ..errors import InputError
from ..pipeline.families import DEFAULT_FAMILY, by_name

# Seed streams: the optimisation of item i uses seed s_i; its render noise uses s_i + this offset,
# so the two never share random numbers (and x_rec / x_edit of one source share their render noise).
RENDER_SEED_OFFSET = 7919

WEIGHTS = {"1": lambda t: torch.ones_like(t), "1-t": lambda t: 1 - t, "t": lambda t: t}
HESSIANS = ("finite-difference", "jvp")
FD_SCHEMES = ("forward", "central")
T_SCHEDULES = ("uniform", "descending")
MODES = ("optimise", "identify")
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


class SettingsBase(Mapping):
    """What every settings class shares: field names, a read-only mapping, `replace`, checks."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def _build(cls, values: dict[str, Any], overrides: dict[str, Any], method: str):
        unknown = {k for k, v in overrides.items() if v is not None} - set(cls.names())
        if unknown:
            raise InputError(f"unknown edit setting(s) {sorted(unknown)} for {method}; known: "
                             f"{', '.join(cls.names())}")
        values = {**values, **{k: v for k, v in overrides.items() if v is not None}}
        s = cls(**values)
        s.validate()
        return s

    def replace(self, **changes: Any):
        s = dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
        s.validate()
        return s

    @abc.abstractmethod
    def validate(self) -> None:
        """Raise `InputError` naming the first bad setting (each settings class checks its own fields)."""

    def _finite(self, name: str, lo=None, hi=None, allow_zero: bool = True) -> None:
        v = getattr(self, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise InputError(f"{name} must be a finite number, got {v!r}")
        if lo is not None and (v < lo or (v == lo and not allow_zero)):
            raise InputError(f"{name} must be {'>' if not allow_zero else '>='} {lo}, got {v}")
        if hi is not None and v > hi:
            raise InputError(f"{name} must be <= {hi}, got {v}")

    def _count(self, name: str, lo: int = 1) -> None:
        v = getattr(self, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")

    def __getitem__(self, key: str) -> Any:
        if key not in self.names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


@dataclasses.dataclass(frozen=True)
class EditSettings(SettingsBase):
    """Settings of the score-distillation loop and the render (DESIGN §2).

    ``steps`` K, ``lr`` η, ``t_range`` [t_min, t_max] of the noise level drawn each step,
    ``weight`` w(t), ``delta`` δ of the finite-difference Hessian columns and ``fd`` their
    scheme (``"forward"`` ``[v(c + δΔc) - v(c)]/δ`` or ``"central"`` ``[v(c + δΔc) - v(c - δΔc)]/2δ``,
    one more branch per column), ``hessian`` ("finite-difference" or exact "jvp"), ``guidance``
    (None: the model's default), ``max_dz`` (divergence guard: RMS of ``z - z0`` per element),
    ``protect_edit`` (HSDS: keep the edit's own column out of the projection), ``t_schedule``
    (``"uniform"`` draws; ``"descending"``: ``t_max`` to ``t_min`` evenly over the steps),
    ``columns_every`` (HSDS: Hessian columns every k-th step, reused in between), ``basis`` (HSDS:
    the preserved directions reduced to their first principal directions; 0 or None: all), ``loop_guidance``
    (guidance of the optimisation's branches; None: ``guidance``), ``mode`` (``"optimise"`` every
    strength, or ``"identify"``: optimise once at strength 1 and manipulate ``z0 + λ dz``, the
    paper's Identify-then-Manipulate; a direction that already carries ``dz`` is only rendered);
    render: ``t_render``,
    ``render_steps`` (None: the model's sampler steps below ``t_render``) and ``clean_condition``
    (HSDS: render with the condition cleaned of the preserved directions' share, ``Δc* = Δc - Σ
    α_j Δc_j`` with ``α`` the least-squares fit of the edit's column by the preserved columns).
    """

    steps: int = _opt(40, "optimisation steps K")
    lr: float = _opt(0.3, "step size η")
    t_range: tuple[float, float] = _opt((0.5, 0.98), "noise levels drawn uniformly each step")
    weight: str = _opt("1", "w(t): '1', '1-t' or 't'")
    delta: float = _opt(0.1, "finite-difference step δ of the Hessian columns")
    fd: str = _opt("forward", "finite-difference scheme: 'forward' or 'central'")
    hessian: str = _opt("finite-difference", "'finite-difference' or 'jvp'")
    jvp_chunk: int | None = _opt(None, "hessian='jvp': columns per forward-mode call (None: all at once; 1: least "
                                       "memory, the same columns)")
    guidance: float | None = _opt(None, "guidance (None: the model's default)")
    max_dz: float = _opt(20.0, "divergence guard on RMS |z - z0|")
    protect_edit: bool = _opt(False, "HSDS: never remove the edit's own first-order change")
    t_schedule: str = _opt("uniform", "'uniform': t ~ U[t_range] each step; 'descending': t_max to t_min evenly")
    columns_every: int = _opt(1, "HSDS: recompute the Hessian columns every k steps (reused in between)")
    basis: int | None = _opt(None, "HSDS: keep this many principal preserved directions (None or 0: all)")
    loop_guidance: float | None = _opt(None, "guidance inside the optimisation (None: guidance)")
    mode: str = _opt("optimise", "'optimise': one optimisation per strength; 'identify': one at strength 1, "
                                 "then z0 + λ dz")
    t_render: float = _render(0.3, "noise level of the render")
    render_steps: int | None = _render(None, "render sampler steps (None: the model's)")
    clean_condition: bool = _render(False, "HSDS: render with Δc - Σ α_j Δc_j (α from the Hessian columns)")

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def optimisation_keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("optimisation"))

    @classmethod
    def for_method(cls, method: str, model_guidance: float | None = None, half_precision: bool = False,
                   profile: str | None = None, **overrides: Any) -> EditSettings:
        """Base defaults, then ``METHOD_DEFAULTS[method]``, then ``overrides`` (None = keep the default).

        ``model_guidance``: the model's default guidance (used unless the method or the caller sets
        one). ``half_precision``: the model runs in bf16 / fp16, so the Hessian columns default to
        ``HALF_PRECISION_DEFAULTS`` (exact JVPs: finite differences drown in rounding there).
        ``profile`` (the worlds' ``WORLD_PROFILE`` or a family's name; None: the worlds'): defaults
        that only make sense for some models are dropped elsewhere (`PROFILE_ONLY`).
        """
        name = method
        method, variant, _ = split_variant(method)
        own = {k: v for k, v in METHOD_DEFAULTS.get(method, {}).items() if _profile_allows(k, profile)}
        values = {"guidance": model_guidance, **(HALF_PRECISION_DEFAULTS if half_precision else {}),
                  **own, **variant}
        return cls._build(values, overrides, name)

    def __post_init__(self):
        tr = self.t_range
        if isinstance(tr, list):
            object.__setattr__(self, "t_range", tuple(tr))

    def validate(self) -> None:
        """Raise `InputError` naming the first bad setting."""
        finite = self._finite

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
        if self.t_schedule not in T_SCHEDULES:
            raise InputError(f"t_schedule must be one of {', '.join(T_SCHEDULES)}, got {self.t_schedule!r}")
        self._count("columns_every")
        if self.jvp_chunk is not None:
            self._count("jvp_chunk")
        if self.basis is not None:
            self._count("basis", 0)
        if self.loop_guidance is not None:
            finite("loop_guidance", 0)
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.clean_condition, bool):
            raise InputError(f"clean_condition must be True or False, got {self.clean_condition!r}")
        object.__setattr__(self, "t_range", (float(tr[0]), float(tr[1])))

    def same_optimisation(self, other: Mapping) -> list[str]:
        """The optimisation settings in which ``other`` differs (empty: an optimisation run can be reused)."""
        return [k for k in self.optimisation_keys() if other.get(k) != self[k]]


# Per-method defaults (each method at its own best settings, tuned on the development seed 1000;
# docs/editing.md has the grids). protect_edit: the literal projection also removes the part of
# g_edit that *is* the edit wherever it overlaps a preserved factor's column (docs/editing.md).
# HSDS's cost settings (issue 16, development seed; docs/editing.md "What an HSDS edit costs"): 20 steps
# at lr 0.7, the loop's branches without CFG (loop_guidance 1), one principal preserved direction,
# Hessian columns every 2nd step, a 6-step render: 95 sequences per edit (both renders included)
# against 745 for the settings before (kept as the variant "hsds-legacy").
HSDS_DEFAULTS: dict[str, Any] = {"protect_edit": True, "lr": 0.7, "t_render": 0.45, "steps": 20,
                                 "loop_guidance": 1.0, "basis": 1, "columns_every": 2, "render_steps": 6}
HSDS_LEGACY: dict[str, Any] = {"protect_edit": True, "lr": 0.5, "t_render": 0.45, "steps": 40,
                               "loop_guidance": None, "basis": 0, "columns_every": 1, "render_steps": None,
                               "t_schedule": "uniform", "clean_condition": False, "mode": "optimise"}
# Method defaults that hold only for some model profiles: the loop without CFG saves the two
# unconditional rows of CFG models (FLUX's guidance is an embedded input: nothing to save, and
# guidance 1 there changes the model), and the 6-step render is the embedded world's sampler cut
# short (a real model keeps its own sampler steps below t_render).
WORLD_PROFILE = "shapes"  # the profile of every embedded world's model (its own tuned defaults)
PROFILE_ONLY: dict[str, Any] = {
    "loop_guidance": lambda profile: profile == WORLD_PROFILE or by_name(profile).cfg,  # CFG rows to save
    "render_steps": lambda profile: profile == WORLD_PROFILE,
}


def _profile_allows(key: str, profile: str | None) -> bool:
    """Whether the method default ``key`` holds for ``profile`` (a family name or the worlds'; None: the worlds')."""
    rule = PROFILE_ONLY.get(key)
    return rule is None or bool(rule(profile or WORLD_PROFILE))
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "hsds": dict(HSDS_DEFAULTS),
    "dds": {},
    "sds": {},
    "image": dict(HSDS_DEFAULTS),  # renders HSDS's optimisation: must share its optimisation settings
    "text": {"t_render": 0.6},
}


# Named variants: a method with some settings fixed, usable wherever a method name is (edit, sweep,
# evaluate --methods, the panels), so variants compare in one run. ``preserve`` sets the preserved
# directions when the caller passes none.
VARIANTS: dict[str, dict[str, Any]] = {
    "hsds-auto": {"method": "hsds", "preserve": "auto"},  # no factor table: directions from the prompt
    "hsds-legacy": {"method": "hsds", **HSDS_LEGACY},  # the defaults before the cost study (745 sequences)
    "hsds-clean": {"method": "hsds", "clean_condition": True},  # render with the cleaned condition Δc*
    "hsds-identify": {"method": "hsds", "mode": "identify"},  # optimise once at λ = 1, then z0 + λ dz
    # HSDS within FlowEdit's FLUX budget (at most 48 sequences per edit: 8 steps x 3 branches + 4 x 2
    # columns - 1, and two 8-sequence renders = 47); lr 1.0 chosen over 1.5 on the development seed 1000
    "hsds-48": {"method": "hsds", "steps": 8, "lr": 1.0},
    # DDS at HSDS's cost settings
    "dds-fast": {"method": "dds", "steps": 20, "lr": 0.7, "loop_guidance": 1.0, "render_steps": 6},
}


# -- the peer methods (explore.editing.peers) ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _PeerSettings(SettingsBase):
    """Settings of a sampling method; defaults per model profile (a family's name, or the worlds')."""

    @classmethod
    def for_method(cls, method: str, profile: str | None = None, model_guidance: float | None = None,
                   half_precision: bool = False, **overrides: Any):
        """``PEER_DEFAULTS[method][profile]`` (a guidance of None: the model's default), then ``overrides``."""
        base, variant, _ = split_variant(method)
        values = dict(PEER_DEFAULTS[base][WORLD_PROFILE] if profile == WORLD_PROFILE
                      else by_name(profile or DEFAULT_FAMILY).peer_defaults[base])
        values = {k: (model_guidance if v is None and k.endswith("guidance") and model_guidance is not None else v)
                  for k, v in values.items()}
        values = {k: v for k, v in values.items() if v is not None}
        return cls._build({**values, **variant}, overrides, method)


@dataclasses.dataclass(frozen=True)
class _LastStepsSettings(_PeerSettings):
    """A sampler that runs the last ``n_max`` of ``steps`` scheduler steps (FlowEdit, FlowAlign)."""

    @classmethod
    def for_method(cls, method: str, profile: str | None = None, model_guidance: float | None = None,
                   half_precision: bool = False, **overrides: Any):
        """As `_PeerSettings.for_method`; a ``steps`` given without ``n_max`` keeps the default's share
        ``n_max / steps`` (the same starting noise level, e.g. 33 of 50 -> 20 of 30)."""
        if overrides.get("steps") is not None and overrides.get("n_max") is None:
            base = super().for_method(method, profile, model_guidance, half_precision)
            steps = overrides["steps"]
            if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1:
                overrides = {**overrides, "n_max": max(1, min(steps, round(base.n_max * steps / base.steps)))}
        return super().for_method(method, profile, model_guidance, half_precision, **overrides)

    def _check_steps(self) -> None:
        self._count("steps")
        self._count("n_max")
        if self.n_max > self.steps:
            raise InputError(f"n_max ({self.n_max}) cannot exceed steps ({self.steps})")


@dataclasses.dataclass(frozen=True)
class FlowEditSettings(_LastStepsSettings):
    """FlowEdit (Kulikov et al. 2024): an ODE on the difference of target and source velocities.

    ``steps`` T of the scheduler's own schedule, of which only the last ``n_max`` run (from noise
    level ``sigma[T - n_max]`` down); each step ``n_avg`` fresh noise draws; ``source_guidance`` /
    ``target_guidance``: the two branches' guidance (SD3: CFG scales; FLUX: the guidance embedding).
    """

    steps: int = 50
    n_max: int = 33
    source_guidance: float = 3.5
    target_guidance: float = 13.5
    n_avg: int = 1

    def validate(self) -> None:
        self._check_steps()
        self._count("n_avg")
        self._finite("source_guidance", 0)
        self._finite("target_guidance", 0)


@dataclasses.dataclass(frozen=True)
class FlowAlignSettings(_LastStepsSettings):
    """FlowAlign (Kim et al., ICLR 2026): FlowEdit's ODE plus a source-consistency term.

    ``steps`` T of the scheduler's schedule, the last ``n_max`` run (the published loop runs them
    all); ``target_guidance`` w: the target velocity is guided away from the *source* caption,
    ``v(c) + w (v(c') - v(c))`` at the edited point (w = 1: the target velocity alone, one evaluation
    fewer); ``consistency`` ζ: each step adds ``ζ (x̂0_source - x̂0_edit)``, the gap between the two
    clean-image predictions (0: FlowEdit without CFG); ``embedded_guidance``: the guidance input of
    guidance-distilled families (FLUX; None: the model's default; CFG families ignore it).
    """

    steps: int = 33
    n_max: int = 33
    target_guidance: float = 13.5
    consistency: float = 0.01
    embedded_guidance: float | None = None

    def validate(self) -> None:
        self._check_steps()
        self._finite("target_guidance", 0)
        self._finite("consistency", 0, 1)
        if self.embedded_guidance is not None:
            self._finite("embedded_guidance", 0)


@dataclasses.dataclass(frozen=True)
class RFInversionSettings(_PeerSettings):
    """RF-Inversion (Rout et al. 2024): a controlled forward ODE to noise, then a controlled reverse ODE.

    ``steps`` N of both ODEs (the scheduler's sigmas); ``gamma`` pulls the inversion toward one fixed
    noise draw; ``eta`` pulls the regeneration toward the source latent for the steps in
    ``[start * N, stop * N)``; ``source_guidance`` of the inversion and ``target_guidance`` of the
    regeneration (SD3: CFG; FLUX: the guidance embedding); ``inversion_prompt``: ``"empty"``
    (the reference's default) or ``"source"`` (the source prompt).
    """

    steps: int = 28
    gamma: float = 0.5
    eta: float = 0.9
    start: float = 0.0
    stop: float = 0.38
    source_guidance: float = 0.0
    target_guidance: float = 3.5
    inversion_prompt: str = "empty"

    def validate(self) -> None:
        self._count("steps")
        self._finite("gamma", 0, 1)
        self._finite("eta", 0, 1)
        self._finite("start", 0, 1)
        self._finite("stop", 0, 1)
        if self.start > self.stop:
            raise InputError(f"start ({self.start}) must not exceed stop ({self.stop})")
        self._finite("source_guidance", 0)
        self._finite("target_guidance", 0)
        if self.inversion_prompt not in ("empty", "source"):
            raise InputError(f"inversion_prompt must be 'empty' or 'source', got {self.inversion_prompt!r}")


@dataclasses.dataclass(frozen=True)
class UniEditFlowSettings(_PeerSettings):
    """UniEdit-Flow (Jiao et al., ICLR 2026): predictor-corrector inversion, then an edit guided by the
    target-minus-source velocity inside its own mask.

    ``steps`` N of the scheduler's schedule; ``alpha`` the delay rate: the inversion climbs the first
    ``floor(alpha N)`` noise levels and the edit descends from there (1: from pure noise); ``omega`` ω,
    the strength of the correction ``ω (1 + m)(v_trg - v_src)``; ``guidance`` of every evaluation (the
    published 1: no CFG on SD3, the guidance embedding at 1 on FLUX; None: the model's default);
    ``inversion_prompt`` ``"empty"`` (published) or ``"source"``; ``mask`` the map ``m``: the channel
    mean of the velocity difference, ``"signed"`` (the authors' diffusers schedulers) or ``"abs"``
    (their FLUX code), min-max normalised per image; ``mask_patch`` the map's granularity in latent
    pixels (2: one value per FLUX token, as the packed latents give it).
    """

    steps: int = 15
    alpha: float = 0.6
    omega: float = 5.0
    guidance: float | None = 1.0
    inversion_prompt: str = "empty"
    mask: str = "signed"
    mask_patch: int = 1

    def validate(self) -> None:
        self._count("steps")
        self._finite("alpha", 0, 1)
        if math.floor(self.alpha * self.steps) < 1:
            raise InputError(f"alpha * steps must reach one step: floor({self.alpha} * {self.steps}) = 0")
        self._finite("omega", 0)
        if self.guidance is not None:
            self._finite("guidance", 0)
        if self.inversion_prompt not in ("empty", "source"):
            raise InputError(f"inversion_prompt must be 'empty' or 'source', got {self.inversion_prompt!r}")
        if self.mask not in ("signed", "abs"):
            raise InputError(f"mask must be 'signed' or 'abs', got {self.mask!r}")
        self._count("mask_patch")


SAE_TABLE_TOP = 32  # features the SAE steering's table keeps per factor value, best first


@dataclasses.dataclass(frozen=True)
class SAESteerSettings(SettingsBase):
    """``folder``: the trained SAE (`explore.interp.sae.train_sae`); ``t_render`` / ``render_steps``: the
    render (None: the model's sampler steps below ``t_render``); ``scale``: multiplies the inserted
    feature's strength ``r``; ``features``: how many features per value are swapped (1: the best
    one; m: the value's m best-detecting features, taken out together and the target's m put in, up
    to the table's 32); ``table_n`` / ``table_seed``: the renders the feature table is chosen on
    (default: the SAE's own training seed); ``guidance``: the render's (None: the model's)."""

    folder: str | None = None
    t_render: float = 0.9  # these three chosen on seed 1000 by SDE (docs/results/sae.md); the one-feature
    render_steps: int | None = None  # clamp of the papers is features=1, scale=1
    scale: float = 12.0
    features: int = 32
    table_n: int = 256
    table_seed: int | None = None
    guidance: float | None = None

    @classmethod
    def for_method(cls, method: str, profile: str | None = None, model_guidance: float | None = None,
                   half_precision: bool = False, **overrides: Any):
        if overrides.get("folder") is not None and not isinstance(overrides["folder"], str):
            overrides = {**overrides, "folder": str(overrides["folder"])}  # a Path: kept as text (JSON)
        return cls._build({}, overrides, method)

    def validate(self) -> None:
        if self.folder is not None and not isinstance(self.folder, str):
            raise InputError(f"folder must be a path, got {self.folder!r}")
        self._finite("t_render", 0, 1, allow_zero=False)
        if self.render_steps is not None:
            self._count("render_steps")
        self._finite("scale", 0)
        self._count("features")
        if self.features > SAE_TABLE_TOP:
            raise InputError(f"features must be at most {SAE_TABLE_TOP} (the feature table keeps {SAE_TABLE_TOP} "
                             f"per value), got {self.features}")
        self._count("table_n", 40)
        if self.guidance is not None:
            self._finite("guidance", 0)


@dataclasses.dataclass(frozen=True)
class FluxSpaceSettings(RFInversionSettings):
    """FluxSpace (Dalva et al. 2024) after RF-Inversion: the inversion and controlled regeneration of
    `RFInversionSettings`, plus ``fine`` (λ_fine, the attention-output edit), ``coarse`` (λ_coarse,
    the pooled-embedding shift per unit strength), ``threshold`` of the attention mask, and
    ``edit_start``, the regeneration step from which both edits apply."""

    steps: int = 30
    stop: float = 0.25
    fine: float = 3.0
    coarse: float = 0.5
    threshold: float = 0.5
    edit_start: int = 3

    def validate(self) -> None:
        super().validate()
        self._finite("fine")
        self._finite("coarse", 0)
        self._finite("threshold", 0, 1)
        self._count("edit_start", 0)
        if self.edit_start >= self.steps:
            raise InputError(f"edit_start ({self.edit_start}) must be below steps ({self.steps})")


def split_variant(name: str) -> tuple[str, dict[str, Any], Any]:
    """``(base method, setting overrides, preserve or None)`` of a method or variant name."""
    if name not in VARIANTS:
        return name, {}, None
    v = dict(VARIANTS[name])
    base, preserve = v.pop("method"), v.pop("preserve", None)
    return base, v, preserve


def check_strength(x) -> float:
    """A strength λ as a float (`InputError` unless one finite real number; see `real_number`)."""
    return real_number(x, "strength")


def strength_list(x) -> list[float]:
    """Strengths as floats: a sequence, a 1-d array or tensor, or one number (a list of one)."""
    if isinstance(x, (str, bytes)):
        raise InputError(f"strengths must be numbers, got {x!r}")
    if isinstance(x, torch.Tensor) or (hasattr(x, "ndim") and hasattr(x, "tolist")):
        x = x.tolist() if getattr(x, "ndim", 0) else [x]
    elif isinstance(x, numbers.Number) or not hasattr(x, "__iter__"):
        x = [x]
    return [check_strength(s) for s in x]


# The peers' defaults on the embedded worlds, chosen on the development seed 1000 (docs/editing.md
# "Peer methods"); a model family's published defaults live in its adapter
# (`explore.pipeline.families`, ``Family.peer_defaults``). A guidance of None is the model's own default.
PEER_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "flowedit": {
        # dev seed 1000: the published setting (n_max 33, target CFG 13.5) 0.67 success (24 items); n_max 50
        # (the whole schedule), target CFG 7: 1.00 (48 items)
        "shapes": {"steps": 50, "n_max": 50, "source_guidance": 3.5, "target_guidance": 7.0},
    },
    "flowalign": {
        # dev seed 1000 (48 items): the published SD3 setting (33 steps, CFG 13.5 against the source, ζ 0.01)
        # 0.92 success / 0.84 retention; CFG 7, ζ 0.02: 1.00 / 0.96 (docs/editing.md)
        "shapes": {"steps": 33, "n_max": 33, "target_guidance": 7.0, "consistency": 0.02},
    },
    "unieditflow": {
        # dev seed 1000 (48 items): the published setting (15 steps, α 0.6, ω 5, guidance 1, empty inversion
        # prompt) 0.38 success; α 1 (invert all the way), ω 1, the source caption: 1.00 / 0.98 (docs/editing.md)
        "shapes": {"steps": 15, "alpha": 1.0, "omega": 1.0, "guidance": 1.0, "inversion_prompt": "source",
                   "mask": "signed", "mask_patch": 1},
    },
    "rf-inversion": {
        # dev seed (48 items): the published example (gamma 0.5, eta 0.9, stop 0.38, empty prompt) 0.58
        # success; eta 0.5, stop 0.25, gamma 0, the source prompt: 0.96
        "shapes": {"steps": 28, "gamma": 0.0, "eta": 0.5, "start": 0.0, "stop": 0.25, "source_guidance": 1.0,
                   "target_guidance": None, "inversion_prompt": "source"},
    },
    # FluxSpace: the demo's settings (30 steps, guidance 3.5, λ_fine 3, λ_coarse 0.5, mask threshold 0.5,
    # edits from step 3) and the reference's real-image inversion (γ 0.5, η 0.9, stop 0.25).
    "fluxspace": {
        # dev seed: the demo's fine 3 / mask 0.5 on rf-inversion's tuned inversion 0.50 success (24 items);
        # fine 2, no mask (threshold 0), no coarse shift, edits from step 0: 0.98 (48 items)
        "shapes": {"steps": 30, "gamma": 0.0, "eta": 0.5, "start": 0.0, "stop": 0.25, "source_guidance": 1.0,
                   "target_guidance": None, "inversion_prompt": "source", "fine": 2.0, "coarse": 0.0,
                   "threshold": 0.0, "edit_start": 0},
    },
}

SETTINGS_CLASSES: dict[str, type[SettingsBase]] = {"flowedit": FlowEditSettings, "flowalign": FlowAlignSettings,
                                                 "unieditflow": UniEditFlowSettings, "sae": SAESteerSettings,
                                                 "rf-inversion": RFInversionSettings, "fluxspace": FluxSpaceSettings}


def settings_class(method: str) -> type[SettingsBase]:
    """The settings class of a method or variant name (`EditSettings` for the score-distillation methods)."""
    return SETTINGS_CLASSES.get(split_variant(method)[0], EditSettings)


def method_settings(method: str, profile: str | None = None, model_guidance: float | None = None,
                    half_precision: bool = False, **overrides: Any) -> SettingsBase:
    """A method's settings: its class's defaults for ``profile`` (a family's name or the worlds'), then overrides."""
    cls = settings_class(method)
    if cls is EditSettings:
        return EditSettings.for_method(method, model_guidance, half_precision, profile, **overrides)
    return cls.for_method(method, profile, model_guidance, half_precision, **overrides)
