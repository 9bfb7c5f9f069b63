"""HSDS at lower cost: identify-then-manipulate, cleaned condition, fewer columns and branches."""

import math
import warnings

import pytest
import torch

import explore
from explore.editing.api import edit, edit_batch, identify, manipulate, settings_for
from explore.editing.directions import Direction
from explore.editing.loop import condition_fit
from explore.editing.preserve import reduce_basis, span_share
from explore.editing.settings import method_settings
from explore.pipeline.sampling import render_sequences, schedule

PAIRS = [("car", "truck"), ("here", "there")]


@pytest.fixture()
def case(tiny_sd3):
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    src = explore.encode(tiny_sd3, img, "red car here")
    d = explore.text_direction(tiny_sd3, "red", "blue", templates=["red car here"])
    return tiny_sd3, src, d


FAST = {"steps": 3, "t_render": 0.5}


def test_identify_then_manipulate_scales_one_optimisation(case):
    pipe, src, d = case
    ident = identify(pipe, src, d, "hsds", PAIRS, seed=4, **FAST)
    assert ident.dz is not None and ident.metadata["identified"]["method"] == "hsds"
    one = edit_batch(pipe, [src], [d], [1.0], "hsds", PAIRS, seeds=[4], **FAST)
    assert torch.allclose(ident.dz, one["z"][0] - src.z[0], atol=1e-6)  # identify = the optimisation at λ = 1
    res = manipulate(pipe, src, ident, [0.5, 2.0], seed=4, t_render=0.5)
    # one render per strength, nothing optimised
    assert res.evaluations == render_sequences(pipe, 0.5, settings_for(pipe, "hsds").render_steps, 2,
                                              explore.spec(pipe).guidance)
    out = edit_batch(pipe, [src] * 2, [ident] * 2, [0.5, 2.0], "hsds", seeds=[4, 4], mode="identify", t_render=0.5)
    assert torch.allclose(out["z"][1], src.z[0] + 2.0 * ident.dz, atol=1e-6)
    assert torch.allclose(out["c"][1], src.c[0] + 2.0 * d.dc, atol=1e-6)


def test_identify_mode_of_edit_and_sweep_optimises_once(case):
    pipe, src, d = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sw = explore.sweep(pipe, src, d, [0.0, 1.0, 2.0], "hsds", PAIRS, seed=1, mode="identify", **FAST)
        opt = explore.sweep(pipe, src, d, [0.0, 1.0, 2.0], "hsds", PAIRS, seed=1, mode="optimise", **FAST)
    assert torch.allclose(sw.dz[2], 2 * sw.dz[1], atol=1e-5) and torch.allclose(sw.dz[1], opt.dz[1], atol=1e-4)
    renders = render_sequences(pipe, 0.5, settings_for(pipe, "hsds").render_steps, 3, explore.spec(pipe).guidance)
    # per-strength optimisation pays the loop twice (λ = 1 and 2); identify once
    assert (opt.evaluations - renders) == pytest.approx(2 * (sw.evaluations - renders))


def test_identified_directions_save_and_load(case, tmp_path):
    pipe, src, d = case
    ident = identify(pipe, src, d, "dds", seed=0, **FAST)
    ident.save(tmp_path / "ident")
    back = Direction.load(tmp_path / "ident")
    assert torch.equal(back.dz, ident.dz) and back.metadata["identified"]["method"] == "dds"
    with pytest.raises(explore.InputError, match="identified"):
        manipulate(pipe, src, d, 1.0)
    with pytest.raises(explore.InputError, match="optimises the image"):
        identify(pipe, src, d, "text")


def test_condition_fit_recovers_the_combination():
    h = torch.randn(3, 4, 5, 5)
    h_e = 2 * h[0] - h[2]
    assert torch.allclose(condition_fit(h, h_e), torch.tensor([2.0, 0.0, -1.0]), atol=1e-4)


def test_clean_condition_subtracts_the_preserved_share(case):
    pipe, src, d = case
    out = edit_batch(pipe, [src], [d], [1.5], "hsds", PAIRS, seeds=[0], clean_condition=True, basis=0, **FAST)
    alpha = out["alpha"][0]
    pres = [explore.text_direction(pipe, a, b) for a, b in PAIRS]
    expect = src.c[0] + 1.5 * (d.dc - sum(float(a) * p.dc for a, p in zip(alpha, pres)))
    assert alpha.shape == (2,) and torch.allclose(out["c"][0], expect, atol=1e-5)
    plain = edit_batch(pipe, [src], [d], [1.5], "hsds", PAIRS, seeds=[0], basis=0, **FAST)
    assert torch.equal(plain["z"], out["z"])  # only the rendered condition differs


def test_reduced_basis_keeps_the_best_span(tiny_sd3):
    dirs = [explore.text_direction(tiny_sd3, a, b) for a, b in [("car", "truck"), ("red", "green"),
                                                                 ("here", "there"), ("big", "small")]]
    two = reduce_basis(dirs, 2)
    assert len(two) == 2 and reduce_basis(dirs, 9) == dirs
    # the best rank-2 span holds more of the originals than any two of them
    assert sum(span_share(dirs, two)) >= max(sum(span_share(dirs, [a, b])) for a in dirs for b in dirs if a is not b)


def _rows_per_step(pipe, src, d, **kw):
    # the loop's structure before the cost defaults: CFG in the loop, every column, every step
    kw = {"loop_guidance": explore.spec(pipe).guidance, "basis": 0, "columns_every": 1, **kw}
    out = edit_batch(pipe, [src], [d], [1.0], "hsds", PAIRS * 2, seeds=[0], t_render=0.0, **kw)
    return out["evaluations"]


def test_fewer_columns_and_branches_cost_what_they_say(case):
    pipe, src, d = case
    m = 4  # preserved pairs (two given twice: still four columns)
    # SD3 with CFG: tgt, src, src_hat + 2 unconditional, m columns + the edit's own; step 1 has z = z0 (one fewer)
    full = _rows_per_step(pipe, src, d, steps=4)
    assert full == 4 * (5 + m + 1) - 2
    every2 = _rows_per_step(pipe, src, d, steps=4, columns_every=2)
    assert every2 == full - 2 * (m + 1)
    basis = _rows_per_step(pipe, src, d, steps=4, basis=2)
    assert basis == full - 4 * (m - 2)
    no_cfg = _rows_per_step(pipe, src, d, steps=4, loop_guidance=1.0)
    assert no_cfg == full - (4 * 2 - 1)  # no unconditional rows (step 1 had one group)


def test_descending_schedule(case):
    pipe, src, d = case
    out = edit_batch(pipe, [src], [d], [1.0], "dds", seeds=[0], steps=5, t_schedule="descending", t_range=(0.5, 0.9),
                     t_render=0.0)
    ts = [row[0] for row in out["trace"]["t"]]
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(ts, [0.9, 0.8, 0.7, 0.6, 0.5]))


def test_session_identify_mode_renders_once_per_slider_move(tiny_sd3, count_calls):
    from explore.views.session import EditSession

    session = EditSession(tiny_sd3, (0.0, 1.0, 2.0), {"steps": 2, "t_render": 0.5, "mode": "identify"})
    src = session.source("red car here", seed=0)
    key = session.plan(src, "attribute", "blue", "hsds", preserve=[("car", "truck")], source_value="red")
    session.frame(key, 0.7)  # identifies once (and renders the reconstruction)
    assert session.stats["identified"] == 1
    per_render = len(explore.pipeline.sampling.schedule(tiny_sd3, settings_for(tiny_sd3, "hsds").render_steps,
                                                         t_start=0.5)) - 1
    with count_calls(tiny_sd3) as calls:
        fr = session.frame(key, 1.3)
    assert len(calls) == per_render and fr.origin == "render"  # one render: the sampler steps below t_render
    assert session.stats["identified"] == 1 and session.stats["renders"] == 3


def test_calls_count_one_batched_call_per_step_and_render_step(case):
    pipe, src, d = case
    # two items, one batched call per loop step; no render at t_render = 0
    out = edit_batch(pipe, [src] * 2, [d] * 2, [1.0, 0.5], "hsds", PAIRS, seeds=[0, 1], steps=3, t_render=0.0)
    assert out["calls"] == 3
    k = len(schedule(pipe, settings_for(pipe, "hsds").render_steps, t_start=0.5)) - 1
    full = edit_batch(pipe, [src], [d], [1.0], "hsds", PAIRS, seeds=[0], **FAST)
    assert full["calls"] == 3 + k
    # "image" reusing that optimisation renders only, but its cost counts the optimisation in full
    img = edit_batch(pipe, [src], [d], [1.0], "image", PAIRS, seeds=[0], reuse=full, **FAST)
    assert img["calls"] == 3 + k and img["evaluations"] == full["evaluations"]
    res = explore.edit(pipe, src, d, 1.0, "hsds", PAIRS, seed=0, **FAST)
    assert res.calls == 3 + k  # the edit and its reconstruction share every call
    ident = identify(pipe, src, d, "hsds", PAIRS, seed=0, **FAST)
    assert manipulate(pipe, src, ident, [0.5, 1.5], seed=0, t_render=0.5).calls == k


def test_cost_defaults_follow_the_model_profile():
    shapes, sd3, flux = (method_settings("hsds", p, 4.0) for p in ("shapes", "sd3", "flux"))
    assert shapes.loop_guidance == sd3.loop_guidance == 1.0 and flux.loop_guidance is None  # FLUX: embedded guidance
    assert shapes.render_steps == 6 and sd3.render_steps is None and flux.render_steps is None
    legacy = method_settings("hsds-legacy", "shapes", 4.0)
    assert (legacy.steps, legacy.lr, legacy.loop_guidance, legacy.basis, legacy.columns_every,
            legacy.render_steps) == (40, 0.5, None, 0, 1, None)
    # image renders hsds's optimisation, so they share every optimisation setting on every profile
    for p in ("shapes", "sd3", "flux"):
        assert not method_settings("image", p, 4.0).same_optimisation(method_settings("hsds", p, 4.0))


def test_sweeps_identify_by_default(case):
    from explore.editing.api import default_sweep_mode

    pipe, src, d = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sw = explore.sweep(pipe, src, d, [0.0, 1.0, 2.0], "hsds", PAIRS, seed=1, **FAST)
        opt = explore.sweep(pipe, src, d, [0.0, 1.0, 2.0], "hsds", PAIRS, seed=1, mode="optimise", **FAST)
    assert torch.allclose(sw.dz[2], 2 * sw.dz[1], atol=1e-5)  # one optimisation, scaled
    assert not torch.allclose(opt.dz[2], 2 * opt.dz[1], atol=1e-3)  # one per strength
    assert default_sweep_mode("hsds") == default_sweep_mode("dds") == "identify"
    # a variant that fixes the mode keeps it; methods without an optimisation of z have no mode
    assert default_sweep_mode("hsds-legacy") is None and default_sweep_mode("text") is None
    assert default_sweep_mode("flowedit") is None


def test_hsds_48_fits_flowedits_flux_budget(shapes_pipe):
    # the named low-budget setting: at most 48 transformer sequences per full edit, renders included
    src = explore.encode(shapes_pipe, torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)),
                         "a red circle")
    d = explore.text_direction(shapes_pipe, "red", "blue")
    r = edit(shapes_pipe, src, d, 1.0, "hsds-48")
    assert r.evaluations <= 48 and r.settings["steps"] == 8 and r.settings["lr"] == 1.0
    assert r.evaluations < edit(shapes_pipe, src, d, 1.0, "hsds").evaluations
