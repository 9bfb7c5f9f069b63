import math

import numpy as np
import pytest
import torch

from explore.editing.api import edit, edit_batch, settings_for, sweep
from explore.editing.directions import text_direction
from explore.editing.loop import EditItem as _Item
from explore.editing.loop import optimise
from explore.editing.objectives import DDS, HSDS, get_objective, project_out
from explore.errors import DivergenceError, InputError
from explore.interp.hooks import hooks
from explore.pipeline.latent import encode
from explore.pipeline.sampling import generate, render


@pytest.fixture(scope="module")
def case(tiny_sd3):
    img = generate(tiny_sd3, "a red circle", seed=0)[0]
    src = encode(tiny_sd3, img, "a red circle")
    d = text_direction(tiny_sd3, "red", "blue", templates=["a {} circle", "a {} ball"])
    keep = [text_direction(tiny_sd3, "circle", "square", templates=["a red {}"])]
    return src, d, keep


KW = dict(steps=4)


@pytest.mark.parametrize("method", ["sds", "dds", "hsds", "image", "text"])
def test_every_method_runs_and_fills_the_result(tiny_sd3, case, method):
    src, d, keep = case
    r = edit(tiny_sd3, src, d, 1.0, method=method, preserve=keep, **KW)
    assert r.image.size == (32, 32) and r.reconstruction.size == (32, 32)
    assert r.dz.shape == (4, 8, 8) and r.method == method and r.evaluations > 0
    if method == "text":
        assert torch.count_nonzero(r.dz) == 0 and r.trace["t"] == []
    else:
        assert len(r.trace["t"]) == 4 and torch.count_nonzero(r.dz) > 0
    assert r.settings["t_range"] == (0.5, 0.98) and r.settings["guidance"] == 4.0
    if method == "hsds":
        assert all(0 <= x <= 1 for x in r.trace["removed"])
    img_dir = r.image_direction()
    assert torch.equal(img_dir.dz, r.dz) and img_dir.metadata["method"] == method


def test_strength_zero_is_the_reconstruction_exactly(tiny_sd3, case):
    src, d, keep = case
    r0 = edit(tiny_sd3, src, d, 0.0, method="hsds", preserve=keep, seed=3, **KW)
    assert torch.equal(r0.latent.z, src.z) and torch.equal(r0.latent.c, src.c.float())
    # the loop itself (not only the shortcut) keeps z0: identical branches are evaluated once
    item = _Item(src, d, 0.0, keep, 3)
    z, _, _ = optimise(tiny_sd3, [item], HSDS(), settings_for(tiny_sd3, "hsds", **KW), skip_fixed_points=False)
    assert torch.equal(z, src.z.float())
    hs = settings_for(tiny_sd3, "hsds")
    x = render(tiny_sd3, src.z.float(), src.c.float(), src.p.float(), hs["t_render"], [3 + 7919], 4.0,
               hs["render_steps"])
    from explore.pipeline.latent import decode

    assert np.array_equal(np.asarray(r0.image), np.asarray(decode(tiny_sd3, x)[0]))
    r1 = edit(tiny_sd3, src, d, 1.0, method="hsds", preserve=keep, seed=3, **KW)
    assert np.abs(np.asarray(r1.reconstruction, int) - np.asarray(r0.image, int)).max() <= 1


def test_one_batched_transformer_call_per_step(tiny_sd3, case):
    src, d, keep = case
    for protect in (False, True):
        calls: list[int] = []
        h = tiny_sd3.transformer.register_forward_hook(
            lambda m, a, o, calls=calls: calls.append(a[0].shape[0] if a else 0))
        try:
            out = edit_batch(tiny_sd3, [src] * 3, [d] * 3, [0.5, 1.0, 2.0], "hsds", keep, seeds=[0, 1, 2], steps=5,
                             t_render=0.0, protect_edit=protect, loop_guidance=4.0, columns_every=1, basis=0)
        finally:
            h.remove()
        assert len(calls) == 5  # no render steps at t_render=0
        # per step: 3 items x (tgt, src, src_hat, 1 fd [+ the edit's own fd]) conditional + 3 x 2 unconditional
        # (z_t and ẑ_t); at step 1 z = z0, so ẑ_t = z_t and its two rows are shared with src
        assert out["evaluations"] == 4 * (3 * (4 + protect) + 3 * 2) + (3 * (3 + protect) + 3 * 1)


def test_items_do_not_depend_on_their_batch(tiny_sd3, case):
    src, d, keep = case
    alone = edit_batch(tiny_sd3, [src], [d], [1.0], "hsds", keep, seeds=[5], **KW)
    together = edit_batch(tiny_sd3, [src, src], [d, d], [2.0, 1.0], "hsds", keep, seeds=[9, 5], **KW)
    assert torch.allclose(alone["z"][0], together["z"][1], atol=1e-4)


@pytest.mark.parametrize("fd", ["forward", "central"])
def test_batch_with_fixed_points_and_reused_columns_matches_each_item_alone(tiny_sd3, case, fd):
    # the loop plans its rows once per structure (which items sit at z0, fresh or reused columns)
    # and gathers branches for the moving items only: each item must still get exactly its own run
    src, d, keep = case
    st = settings_for(tiny_sd3, "hsds", steps=5, columns_every=2, fd=fd, clean_condition=True, loop_guidance=3.0)
    items = [_Item(src, d, 1.0, keep, 4), _Item(src, d, 0.0, keep, 5), _Item(src, d, 2.0, [], 6)]
    info: dict = {}
    z, trace, seq = optimise(tiny_sd3, items, HSDS(), st, info=info)
    assert torch.equal(z[1], src.z[0].float())  # strength 0: a fixed point, not moved
    assert math.isnan(trace["grad_norm"][0][1]) and seq > 0  # NaN for the item that did not move
    assert info["alpha"][1] is None and info["alpha"][0] is not None
    for i in (0, 2):
        alone: dict = {}
        z1, trace1, _ = optimise(tiny_sd3, [items[i]], HSDS(), st, info=alone)
        assert torch.allclose(z[i], z1[0], atol=1e-5)
        assert np.allclose([r[i] for r in trace["removed"]], [r[0] for r in trace1["removed"]], atol=1e-5)
        if i == 0:
            assert torch.allclose(info["alpha"][0], alone["alpha"][0], atol=1e-4)


def test_sweep_batches_all_strengths(tiny_sd3, case):
    src, d, keep = case
    s = sweep(tiny_sd3, src, d, [0.0, 1.0, 2.0], preserve=keep, **KW)
    assert len(s.images) == 3 and s.dz.shape == (3, 4, 8, 8)
    assert torch.count_nonzero(s.dz[0]) == 0 and s.dz[2].norm() > s.dz[1].norm() > 0
    assert s.strip().size == (5 * 32 + 4 * 2, 32)


def test_divergence_is_detected_with_the_step_and_last_good_state(tiny_sd3, case):
    src, d, keep = case
    with hooks(tiny_sd3, {"transformer_blocks.1.img": lambda x, site: x * float("nan")}):
        with pytest.raises(DivergenceError, match="step 1/4.*lower lr") as e:
            edit(tiny_sd3, src, d, 1.0, method="dds", **KW)
    assert e.value.step == 0 and torch.isfinite(e.value.last_good).all()
    with pytest.raises(DivergenceError, match="RMS"):
        edit(tiny_sd3, src, d, 1.0, method="sds", lr=1e6, **KW)


def test_finite_difference_hessian_matches_the_exact_jvp(tiny_sd3, case):
    src, d, keep = case
    objective = HSDS()
    cols = {}

    def spy(s):
        cols.setdefault(name, []).append(s.v["h"][0].clone())
        return HSDS.gradient(objective, s)

    objective.gradient = spy
    for name, hess, delta in (("fd", "finite-difference", 1e-3), ("jvp", "jvp", 0.1)):  # noqa: B007 (spy reads name)
        item = _Item(src, d, 1.0, keep, 0)
        optimise(tiny_sd3, [item], objective, settings_for(tiny_sd3, "hsds", steps=1, hessian=hess, delta=delta))
    fd, exact = cols["fd"][0], cols["jvp"][0]
    assert fd.shape == exact.shape == (1, 4, 8, 8)
    assert (fd - exact).norm() / exact.norm() < 0.02


def test_projection_removes_only_the_preserved_span():
    torch.manual_seed(0)
    h = torch.randn(3, 50)
    g = torch.randn(50)
    kept, removed = project_out(g, h)
    assert torch.allclose(h @ kept, torch.zeros(3), atol=1e-5)
    assert torch.allclose(kept + removed, g, atol=1e-6)
    dup = torch.cat([h, h[:1] * 2, torch.zeros(1, 50)])  # dependent and zero columns are dropped
    assert torch.allclose(project_out(g, dup)[0], kept, atol=1e-5)
    assert torch.equal(project_out(g, torch.zeros(0, 50))[0], g)


def test_projection_is_rank_revealing_when_a_dependent_column_comes_first():
    """An unpivoted QR judged by diag(R) drops the wrong column here and leaves g not orthogonal to the span."""
    torch.manual_seed(2)
    a, b = torch.randn(50), torch.randn(50)
    g = torch.randn(50)
    for h in (torch.stack([a, 2 * a, b]), torch.stack([a + b, a, b]), torch.stack([3 * b, a + 1e-9 * b, b])):
        kept, removed = project_out(g, h)
        span = torch.linalg.qr(torch.stack([a, b]).T)[0]  # the true span of the rows
        assert (span.T @ kept).abs().max() < 1e-4 * g.norm(), h
        assert torch.allclose(kept + removed, g, atol=1e-5)


def test_protect_edit_never_removes_the_edit_own_column():
    torch.manual_seed(1)
    h = torch.randn(3, 50)
    h_e = h[0] + 0.3 * torch.randn(50)  # the edit's column overlaps a preserved one
    g = 2.0 * h_e + torch.randn(50)
    plain, _ = project_out(g, h)
    kept, removed = project_out(g, h, protect=h_e)
    u = h_e / h_e.norm()
    assert abs(float(removed @ u)) < 1e-4  # nothing along h_e is removed ...
    assert float(plain @ u) < 0.5 * float(g @ u)  # ... while the literal projection removes most of it
    hp = h - (h @ u)[:, None] * u[None, :]
    assert torch.allclose(hp @ kept, torch.zeros(3), atol=1e-4)  # the rest of the preserved span is removed
    assert torch.allclose(kept + removed, g, atol=1e-5)


def test_hsds_protect_edit_is_the_default_and_is_wired(tiny_sd3, case):
    src, d, pres = case
    assert settings_for(tiny_sd3, "hsds")["protect_edit"] is True
    assert settings_for(tiny_sd3, "dds")["protect_edit"] is False
    out = {p: edit(tiny_sd3, src, d, 1.0, "hsds", preserve=pres, steps=3, protect_edit=p) for p in (False, True)}
    assert out[True].settings["protect_edit"] and not out[False].settings["protect_edit"]
    # the edit's own column costs one more finite-difference branch per step, and changes the update
    assert out[True].evaluations > out[False].evaluations
    assert not torch.allclose(out[True].dz, out[False].dz)


def test_hsds_never_projects_the_restoring_term():
    from explore.editing.objectives import StepState

    torch.manual_seed(0)
    z0 = torch.zeros(1, 2, 2, 2)
    z = torch.ones(1, 2, 2, 2)
    v = {"tgt": torch.ones(1, 2, 2, 2), "src": torch.ones(1, 2, 2, 2), "src_hat": torch.ones(1, 2, 2, 2),
         "h": [torch.ones(1, 2, 2, 2)]}  # the Hessian column is exactly along z - z0
    g, diag = HSDS().gradient(StepState(z=z, z0=z0, eps=z0, t=torch.tensor([0.5]), v=v))
    assert torch.allclose(g, z - z0)  # the pull back to the source survives the projection


def test_settings_are_validated(tiny_sd3, case):
    src, d, keep = case
    for bad, match in [(dict(lr=float("nan")), "lr must be a finite"), (dict(steps=-1), "steps"),
                       (dict(t_range=(0.9, 0.2)), "t_min <= t_max"), (dict(t_render=2), "t_render"),
                       (dict(weight="cubic"), "weight"), (dict(hessian="bfgs"), "hessian")]:
        with pytest.raises(InputError, match=match):
            edit(tiny_sd3, src, d, 1.0, preserve=keep, **bad)
    with pytest.raises(InputError, match="strength must be a finite"):
        edit(tiny_sd3, src, d, float("inf"), preserve=keep)
    with pytest.raises(InputError, match="unknown method 'magic'"):
        get_objective("magic")
    with pytest.raises(InputError, match="attribute names work on ShapesWorld"):
        edit(tiny_sd3, src, d, 1.0, preserve=["shape"])
    with pytest.raises(InputError, match="prompt="):
        edit(tiny_sd3, np.zeros((32, 32, 3), np.uint8), d)


def test_generate_matches_the_pipeline_call(tiny_sd3):
    from explore.pipeline.latent import decode

    _, z = generate(tiny_sd3, "a red circle", seed=0, return_latents=True, output_type="pt")
    ref = tiny_sd3("a red circle", num_inference_steps=4, guidance_scale=4.0, height=32, width=32,
                   max_sequence_length=16, output_type="latent",
                   latents=torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0))[None]).images
    assert torch.allclose(z, ref, atol=1e-5)
    assert decode(tiny_sd3, z, "pt").shape == (1, 3, 32, 32)


def test_dds_has_the_restoring_term_sign():
    """v-form DDS with the +(z - z0) term is (1 - t)^-1 times the ε-space DDS gradient."""
    from explore.editing.objectives import StepState

    torch.manual_seed(0)
    z0, z, eps = torch.randn(3, 1, 4, 2, 2)
    t = torch.tensor([0.3])
    v_tgt, v_hat = torch.randn(2, 1, 4, 2, 2)
    g, _ = DDS().gradient(StepState(z=z, z0=z0, eps=eps, t=t, v={"tgt": v_tgt, "src_hat": v_hat}))
    z_t, zh_t = (1 - t) * z + t * eps, (1 - t) * z0 + t * eps
    eps_hat_t = z_t + (1 - t) * v_tgt  # ε̂ = z_t + (1 - t) v
    eps_hat_h = zh_t + (1 - t) * v_hat
    assert torch.allclose((1 - t) * g, eps_hat_t - eps_hat_h, atol=1e-6)


def test_half_precision_hessian_columns_follow_the_exact_fp32_column(shapes_pipe):
    """bf16 outputs carry ~3 digits: a finite difference there is mostly rounding, the JVP is not. The
    half-precision default (exact JVP columns) must agree with the fp32 JVP; the fp32 default (forward
    differences, δ = 0.1) is shown not to."""
    import copy

    import explore
    from explore.editing.loop import jvp_columns
    from explore.pipeline.latent import velocity
    from explore.shapes.world import Scene, caption, render

    scene = Scene("square", "red", "large", "left", "middle", "gray")
    src = explore.encode(shapes_pipe, render(scene), caption(scene, template=0))
    d = explore.text_direction(shapes_pipe, "left", "right", n=8)
    z, c, p = src.z.float(), src.c.float(), src.p.float()
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.55])
    zt = (1 - t) * z + t * eps
    exact = jvp_columns(shapes_pipe, zt[0], t[0], c[0], p[0], [d], 4.0)[0]
    half = copy.deepcopy(shapes_pipe).to(dtype=torch.bfloat16)
    assert settings_for(half, "hsds").hessian == "jvp" and settings_for(shapes_pipe, "hsds").hessian != "jvp"

    def cos(h):
        return float(torch.nn.functional.cosine_similarity(h.detach().float().flatten(), exact.flatten(), dim=0))

    assert cos(jvp_columns(half, zt[0], t[0], c[0], p[0], [d], 4.0)[0]) > 0.99
    up = velocity(half, zt, t, c + 0.1 * d.dc, p + 0.1 * d.dp, guidance=4.0)
    assert cos(((up - velocity(half, zt, t, c, p, guidance=4.0)) / 0.1)[0]) < 0.95


def test_central_differences_are_one_more_row_per_column_and_closer(tiny_sd3, case):
    src, d, keep = case
    objective = HSDS()
    cols = {}

    def spy(s):
        cols.setdefault(name, []).append(s.v["h"][0].clone())
        return HSDS.gradient(objective, s)

    objective.gradient = spy
    seq = {}
    for name, hess, fd in (("forward", "finite-difference", "forward"), ("central", "finite-difference", "central"),
                           ("jvp", "jvp", "forward")):
        item = _Item(src, d, 1.0, keep, 0)
        _, _, seq[name] = optimise(tiny_sd3, [item], objective, settings_for(tiny_sd3, "hsds", steps=1, hessian=hess,
                                                                             fd=fd, delta=0.1, protect_edit=False))
    err = {k: float((cols[k][0] - cols["jvp"][0]).norm() / cols["jvp"][0].norm()) for k in ("forward", "central")}
    assert err["central"] < err["forward"]
    assert seq["central"] - seq["forward"] == len(keep)  # one more row per preserved column (SD3: CFG shared)
