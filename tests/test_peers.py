"""The peer methods: FlowEdit, RF-Inversion, FluxSpace — correctness against transcriptions, and costs."""

import contextlib
import json
import warnings

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import explore
from explore.editing.api import edit_batch, settings_for
from explore.editing.fluxspace import binary_mask, coarse_pooled, project_away
from explore.editing.methods import METHODS, PEER_METHODS, get_method
from explore.editing.settings import FlowEditSettings, method_settings
from explore.errors import InputError
from explore.pipeline.latent import pack, unpack

PROMPT = "a large red circle at the top left on a gray background"


def _source(pipe, prompt="red car here"):
    res = explore.pipeline.spec.spec(pipe).resolution
    img = torch.rand(3, res, res, generator=torch.Generator().manual_seed(0))
    return explore.encode(pipe, img, prompt)


def _direction(pipe, a="red", b="blue", prompt="red car here"):
    return explore.text_direction(pipe, a, b, templates=[prompt]) if not explore.pipeline.spec.spec(pipe).world \
        else explore.text_direction(pipe, a, b)


@contextlib.contextmanager
def counting_rows(pipe):
    """Count the rows (sequences) every transformer forward call runs."""
    rows = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: rows.append(int(k["hidden_states"].shape[0])), with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------
# FlowEdit
# ---------------------------------------------------------------------------------------------


def test_flowedit_with_target_equal_to_source_returns_the_source_exactly(tiny):
    src = _source(tiny)
    d = _direction(tiny)
    zero = d.__class__(**{**d.__dict__, "dc": torch.zeros_like(d.dc), "dp": torch.zeros_like(d.dp)})
    out = edit_batch(tiny, [src, src], [d, zero], [0.0, 1.0], "flowedit", seeds=[3, 3], steps=6, n_max=6)
    assert torch.equal(out["z"][0], src.z[0].float()) and torch.equal(out["z"][1], src.z[0].float())
    assert out["evaluations"] == 0  # both are fixed points: nothing runs
    moved = edit_batch(tiny, [src], [d], [1.0], "flowedit", seeds=[3], steps=6, n_max=6)
    assert not torch.allclose(moved["z"][0], src.z[0].float())


def _reference_schedule(pipe, x_src, c, T):
    """The published loops' scheduler (SD3: the pipeline's, T steps; FLUX: its sigmas and shift), and
    FLUX's position ids."""
    sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    flux = hasattr(pipe.transformer.config, "guidance_embeds")
    img_ids = txt_ids = None
    if flux:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        h, w = x_src.shape[-2:]
        cfg = sched.config
        mu = calculate_shift(h * w // 4, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / T, T), mu=mu)
        img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, x_src.device, x_src.dtype)
        txt_ids = torch.zeros(c.shape[1], 3)
    else:
        sched.set_timesteps(T)
    return sched, flux, img_ids, txt_ids


def _reference_flowedit(pipe, x_src, c, p, c_t, p_t, seed, T, n_max, cfg_src, cfg_tar):
    """A straightforward transcription of FlowEdit's published loop (FlowEdit_utils.py), on the raw transformer."""
    sched, flux, img_ids, txt_ids = _reference_schedule(pipe, x_src, c, T)
    tr = pipe.transformer
    h, w = x_src.shape[-2:]
    if not flux:
        neg_c, _, neg_p, _ = pipe.encode_prompt("", "", "", do_classifier_free_guidance=False,
                                                max_sequence_length=explore.pipeline.spec.spec(pipe)
                                                .max_sequence_length)
    timesteps = sched.timesteps
    gen = torch.Generator().manual_seed(seed)
    zt_edit = x_src.clone()
    for i, t in enumerate(timesteps):
        if T - i > n_max:
            continue
        t_i = t / 1000
        t_im1 = timesteps[i + 1] / 1000 if i + 1 < len(timesteps) else torch.zeros_like(t_i)
        fwd_noise = torch.randn(x_src.shape[1:], generator=gen)[None]
        zt_src = (1 - t_i) * x_src + t_i * fwd_noise
        zt_tar = zt_edit + zt_src - x_src
        if flux:
            def v(z, cc, pp, g, t=t):
                out = tr(hidden_states=pack(z), timestep=t.expand(1) / 1000, guidance=torch.tensor([g]),
                         encoder_hidden_states=cc, txt_ids=txt_ids, img_ids=img_ids, pooled_projections=pp,
                         return_dict=False)[0]
                return unpack(out, h, w)

            Vt_src, Vt_tar = v(zt_src, c, p, cfg_src), v(zt_tar, c_t, p_t, cfg_tar)
        else:
            inp = torch.cat([zt_src, zt_src, zt_tar, zt_tar])
            out = tr(hidden_states=inp, timestep=t.expand(4), encoder_hidden_states=torch.cat([neg_c, c, neg_c, c_t]),
                     pooled_projections=torch.cat([neg_p, p, neg_p, p_t]), return_dict=False)[0]
            su, sc, tu, tc = out.chunk(4)
            Vt_src, Vt_tar = su + cfg_src * (sc - su), tu + cfg_tar * (tc - tu)
        zt_edit = zt_edit + (t_im1 - t_i) * (Vt_tar - Vt_src)
    return zt_edit


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flowedit_matches_a_transcription_of_the_published_loop(family, tiny_sd3, tiny_flux):
    pipe = tiny_sd3 if family == "sd3" else tiny_flux
    src = _source(pipe)
    d = _direction(pipe)
    T, n_max, g_src, g_tar = 8, 6, 1.5, 5.0
    out = edit_batch(pipe, [src], [d], [1.0], "flowedit", seeds=[11], steps=T, n_max=n_max, source_guidance=g_src,
                     target_guidance=g_tar)
    c, p = src.c.float(), src.p.float()
    ref = _reference_flowedit(pipe, src.z.float(), c, p, c + d.dc[None].float(), p + d.dp[None].float(), 11, T,
                              n_max, g_src, g_tar)
    assert torch.allclose(out["z"], ref, atol=1e-5), float((out["z"] - ref).abs().max())
    assert out["evaluations"] == n_max * (4 if family == "sd3" else 2)


def test_flowedit_defaults_follow_the_model_family(tiny_sd3, tiny_flux, shapes_pipe):
    assert dict(settings_for(tiny_sd3, "flowedit")) | {} == {"steps": 50, "n_max": 33, "source_guidance": 3.5,
                                                          "target_guidance": 13.5, "n_avg": 1}
    f = settings_for(tiny_flux, "flowedit")
    assert (f.steps, f.n_max, f.source_guidance, f.target_guidance) == (28, 24, 1.5, 5.5)
    s = settings_for(shapes_pipe, "flowedit")
    assert (s.steps, s.n_max) == (50, 50)
    with pytest.raises(InputError, match="unknown edit setting.*lr"):
        settings_for(tiny_sd3, "flowedit", lr=0.3)
    with pytest.raises(InputError, match="n_max"):
        method_settings("flowedit", steps=10, n_max=20)
    assert isinstance(method_settings("flowedit"), FlowEditSettings)
    assert method_settings("flowedit", steps=30).n_max == 20  # fewer steps keep the share n_max / steps


# ---------------------------------------------------------------------------------------------
# RF-Inversion
# ---------------------------------------------------------------------------------------------


def test_rf_inversion_without_controllers_is_plain_inversion_and_regeneration(shapes_pipe):
    from explore.pipeline.sampling import sample, schedule
    from explore.shapes.world import Scene, caption, render

    scene = Scene("circle", "red", "large", "left", "top", "gray")
    image = render(scene)
    src = explore.encode(shapes_pipe, image, caption(scene, template=0))
    d = explore.text_direction(shapes_pipe, "red", "blue")
    out = edit_batch(shapes_pipe, [src], [d], [0.0], "rf-inversion", seeds=[0], gamma=0.0, eta=0.0,
                     source_guidance=1.0, target_guidance=1.0, inversion_prompt="source", steps=28)
    # the same thing written out: Euler steps up the reference's time grid, then the sampler back down
    sig = schedule(shapes_pipe, 28)
    from explore.pipeline.latent import velocity

    y = src.z.float()
    for i in range(28):
        y = y + velocity(shapes_pipe, y, i / 29, src.c, src.p, guidance=1.0) * (sig[i] - sig[i + 1])
    back = sample(shapes_pipe, y, src.c, src.p, sig, guidance=1.0)
    assert torch.allclose(out["z"], back, atol=1e-4)
    rec = explore.pipeline.latent.decode(shapes_pipe, out["z"], output_type="np")[0]
    mse = float(np.mean((rec - np.asarray(image, dtype=np.float32) / 255) ** 2))
    psnr = 10 * np.log10(1 / mse)
    # measured over 16 renders: 33.0 dB mean, 28.4 min (the VAE round trip alone: 33.5); docs/editing.md
    assert psnr > 27.0, psnr


def test_rf_inversion_shares_one_inversion_between_an_edit_and_its_reconstruction(tiny_sd3):
    src = _source(tiny_sd3)
    d = _direction(tiny_sd3)
    with counting_rows(tiny_sd3) as rows:
        out = edit_batch(tiny_sd3, [src, src], [d, d], [1.0, 0.0], "rf-inversion", seeds=[5, 5], steps=4)
    # inversion: 4 steps x 1 row (no CFG on SD3), regeneration: 4 steps x (2 rows + 2 unconditional)
    assert sum(rows) == out["evaluations"] == 4 * 1 + 4 * 4
    alone = edit_batch(tiny_sd3, [src], [d], [1.0], "rf-inversion", seeds=[5], steps=4)
    assert torch.allclose(alone["z"][0], out["z"][0], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# FluxSpace
# ---------------------------------------------------------------------------------------------


def test_fluxspace_pieces():
    a_e, a_ref = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    d = project_away(a_e, a_ref)
    assert torch.allclose((d * a_ref).sum(-1), torch.zeros(2, 5), atol=1e-5)
    p, p_e = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(coarse_pooled(p, p_e, torch.zeros(3)), p)
    m = binary_mask(torch.tensor([[0.0, 0.2, 0.9, 1.0]]), 0.5)
    assert m.tolist() == [[0.0, 0.0, 1.0, 1.0]] and binary_mask(torch.rand(1, 4), 0.0).all()


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_fluxspace_at_scale_zero_is_the_plain_regeneration_and_edits_otherwise(family, tiny_sd3, tiny_flux):
    pipe = tiny_sd3 if family == "sd3" else tiny_flux
    src = _source(pipe)
    d = _direction(pipe)
    common = dict(seeds=[2], steps=5, gamma=0.3, eta=0.5, stop=0.4)
    # the plain regeneration: the source condition (FluxSpace's source stream keeps it; edits come from the
    # edit stream), i.e. RF-Inversion at strength 0
    plain = edit_batch(pipe, [src], [d], [0.0], "rf-inversion", **common)
    common["edit_start"] = 1
    zero = edit_batch(pipe, [src], [d], [1.0], "fluxspace", fine=0.0, coarse=0.0, **common)
    assert torch.equal(zero["z"], plain["z"])
    with counting_rows(pipe) as rows:
        edited = edit_batch(pipe, [src], [d], [1.0], "fluxspace", fine=3.0, coarse=0.5, threshold=0.5, **common)
    assert not torch.allclose(edited["z"], plain["z"])
    assert sum(rows) == edited["evaluations"]
    # inversion 5 x 1; regeneration: step 0 plain, steps 1..4 with the reference and edit rows
    per = (lambda k: k + (1 if family == "sd3" else 0))  # SD3 adds one unconditional row per item
    inv = 5 * (1 if family == "sd3" else 1)
    assert edited["evaluations"] == inv + per(1) + 4 * per(3)


# ---------------------------------------------------------------------------------------------
# Every method: the cost it reports is the cost it ran; it runs through edit and sweep
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_reported_evaluations_equal_the_sequences_run(method, tiny):
    src = _source(tiny)
    d = _direction(tiny)
    fast = {"steps": 3} if method in PEER_METHODS else {"steps": 2, "t_render": 0.5}
    if method == "flowedit":
        fast["n_max"] = 3
    if method == "fluxspace":
        fast["edit_start"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with counting_rows(tiny) as rows:
            out = edit_batch(tiny, [src, src], [d, d], [1.0, 0.0], method, [("car", "truck")] if method in
                             ("hsds", "image") else None, seeds=[1, 1], **fast)
    assert sum(rows) == out["evaluations"] > 0


@pytest.mark.parametrize("method", PEER_METHODS)
def test_peers_run_through_edit_and_sweep(method, tiny_flux):
    src = _source(tiny_flux)
    d = _direction(tiny_flux)
    fast = {"steps": 3, **({"n_max": 3} if method == "flowedit" else {}),
            **({"edit_start": 1} if method == "fluxspace" else {})}
    res = explore.edit(tiny_flux, src, d, 1.0, method, **fast)
    assert res.method == method and res.evaluations > 0 and res.image.size == res.source_image.size
    sw = explore.sweep(tiny_flux, src, d, [0.0, 1.0], method, **fast)
    assert len(sw.images) == 2 and sw.evaluations > 0
    assert get_method(method).name == method


def test_evaluate_runs_the_peers_and_reports_their_cost(shapes_pipe, tmp_path):
    import json

    from explore.evaluation.items import shapes_benchmark
    from explore.evaluation.runner import evaluate

    items = shapes_benchmark(2, seed=3)
    fast = {"flowedit": {"steps": 4, "n_max": 4}, "rf-inversion": {"steps": 4},
            "fluxspace": {"steps": 4}, "dds": {"steps": 2}}
    res = evaluate(shapes_pipe, items, tmp_path, list(fast), curve_n=0, settings=fast, progress=False)
    recs = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert {r["method"] for r in recs} == set(fast)
    for m in fast:
        assert res["methods"][m]["evaluations_per_item"] > 0 and res["methods"][m]["seconds_per_item"] > 0
    # FlowEdit's reconstruction is the source itself (a fixed point): its edit alone is the cost, 4 steps x 4 rows
    assert res["methods"]["flowedit"]["evaluations_per_item"] == 16
    assert "NFE / edit" in (tmp_path / "results.md").read_text() and (tmp_path / "pareto.png").is_file()


def test_cli_edit_with_a_peer_method(tmp_path):
    from explore.cli import main
    from explore.shapes.world import Scene, caption, render

    scene = Scene("circle", "red", "large", "left", "top", "gray")
    from PIL import Image

    Image.fromarray(render(scene)).save(tmp_path / "src.png")
    out = tmp_path / "edit.png"
    assert main(["edit", "--image", str(tmp_path / "src.png"), "--prompt", caption(scene, template=0), "--edit",
                 "red->blue", "--method", "flowedit", "--steps", "6", "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["method"] == "flowedit" and meta["evaluations"] > 0 and out.is_file()
    assert main(["edit", "--image", str(tmp_path / "src.png"), "--prompt", "x", "--edit", "red->blue", "--method",
                 "flowedit", "--lr", "0.3", "--out", str(out)]) == 2  # FlowEdit has no learning rate


def test_the_panel_offers_and_runs_the_peers(tiny_sd3):
    from explore.views.session import EditSession
    from explore.views.widgets import EditPanel

    session = EditSession(tiny_sd3, settings={"steps": 2, "t_render": 0.1})
    panel = EditPanel(session)
    assert set(PEER_METHODS) <= set(panel.method.options)
    src = session.source("red car here", seed=0)
    key = session.plan(src, "attribute", "blue", method="flowedit", source_value="red")
    frame = session.frame(key, 1.0)
    assert frame.image is not None and "lr" not in dict(session.resolved_settings("flowedit"))


# ---------------------------------------------------------------------------------------------
# FlowAlign
# ---------------------------------------------------------------------------------------------


def _reference_flowalign(pipe, x_src, c, p, c_t, p_t, seed, T, w, zeta, g_embed):
    """A transcription of FlowAlign's published loop (``SD3FlowAlign.sample``, sd3_edit.py) on the raw
    transformer; FLUX (not published) the same loop with the guidance embedding at ``g_embed``."""
    sched, flux, img_ids, txt_ids = _reference_schedule(pipe, x_src, c, T)
    tr = pipe.transformer
    h, wd = x_src.shape[-2:]
    timesteps = sched.timesteps
    sigmas = timesteps / 1000

    def predict_vector(z, t, cc, pp):
        if flux:
            out = tr(hidden_states=pack(z), timestep=t.expand(1) / 1000, guidance=torch.tensor([g_embed]),
                     encoder_hidden_states=cc, txt_ids=txt_ids, img_ids=img_ids, pooled_projections=pp,
                     return_dict=False)[0]
            return unpack(out, h, wd)
        return tr(hidden_states=z, timestep=t.expand(1), pooled_projections=pp, encoder_hidden_states=cc,
                  return_dict=False)[0]

    gen = torch.Generator().manual_seed(seed)
    xt = x_src.clone()
    for i, t in enumerate(timesteps):
        eps = torch.randn(x_src.shape[1:], generator=gen)[None]
        sigma = sigmas[i]
        sigma_next = sigmas[i + 1] if i + 1 < T else 0.0
        qt = (1 - sigma) * x_src + sigma * eps
        pt = xt + qt - x_src
        vpc = predict_vector(pt, t, c_t, p_t)
        vpn = predict_vector(pt, t, c, p)
        vp = vpn + w * (vpc - vpn)
        vq = predict_vector(qt, t, c, p)
        xt = xt + (sigma_next - sigma) * (vp - vq) + zeta * (qt - sigma * vq - pt + sigma * vp)
    return xt


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flowalign_matches_a_transcription_of_the_published_loop(family, tiny_sd3, tiny_flux):
    pipe = tiny_sd3 if family == "sd3" else tiny_flux
    src = _source(pipe)
    d = _direction(pipe)
    T, w, zeta, g = 6, 5.0, 0.05, 3.0
    out = edit_batch(pipe, [src], [d], [1.0], "flowalign", seeds=[11], steps=T, n_max=T, target_guidance=w,
                     consistency=zeta, embedded_guidance=g)
    c, p = src.c.float(), src.p.float()
    ref = _reference_flowalign(pipe, src.z.float(), c, p, c + d.dc[None].float(), p + d.dp[None].float(), 11, T,
                               w, zeta, g)
    assert torch.allclose(out["z"], ref, atol=1e-5), float((out["z"] - ref).abs().max())
    assert out["evaluations"] == 3 * T  # three conditional evaluations per step, no CFG rows


def test_flowalign_without_consistency_is_flowedit_and_strength_zero_is_the_source(tiny):
    src = _source(tiny)
    d = _direction(tiny)
    fa = edit_batch(tiny, [src], [d], [1.0], "flowalign", seeds=[5], steps=6, n_max=4, target_guidance=1.0,
                    consistency=0.0, embedded_guidance=1.0)
    fe = edit_batch(tiny, [src], [d], [1.0], "flowedit", seeds=[5], steps=6, n_max=4, source_guidance=1.0,
                    target_guidance=1.0)
    assert torch.allclose(fa["z"], fe["z"], atol=1e-6) and fa["evaluations"] == fe["evaluations"] == 2 * 4
    pulled = edit_batch(tiny, [src], [d], [1.0], "flowalign", seeds=[5], steps=6, n_max=4, target_guidance=1.0,
                        consistency=0.5, embedded_guidance=1.0)
    assert not torch.allclose(pulled["z"], fa["z"])  # the consistency term acts
    assert (pulled["z"] - src.z.float()).norm() < (fa["z"] - src.z.float()).norm()  # ... toward the source
    same = edit_batch(tiny, [src], [d], [0.0], "flowalign", seeds=[5], steps=6)
    assert torch.equal(same["z"][0], src.z[0].float()) and same["evaluations"] == 0


def test_flowalign_defaults_follow_the_model_family(tiny_sd3, tiny_flux, shapes_pipe):
    assert dict(settings_for(tiny_sd3, "flowalign")) == {"steps": 33, "n_max": 33, "target_guidance": 13.5,
                                                         "consistency": 0.01, "embedded_guidance": None}
    f = settings_for(tiny_flux, "flowalign")
    assert (f.steps, f.n_max, f.target_guidance) == (28, 24, 1.0)
    assert settings_for(shapes_pipe, "flowalign").steps >= 1
    with pytest.raises(InputError, match="consistency"):
        method_settings("flowalign", consistency=2.0)
    with pytest.raises(InputError, match="n_max"):
        method_settings("flowalign", steps=10, n_max=20)


# ---------------------------------------------------------------------------------------------
# UniEdit-Flow
# ---------------------------------------------------------------------------------------------


class _UniInvEuler(FlowMatchEulerDiscreteScheduler):
    """A transcription of the authors' ``UniInvEulerScheduler`` (schedulers/UniInvEulerScheduler.py)."""

    alpha = 1

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu)  # same sigmas, then:
        n = self.num_inference_steps
        self.timesteps = torch.cat([self.timesteps, torch.zeros(1)]).flip(dims=[0])
        self.sigmas = self.sigmas.flip(dims=[0])
        self.sample = None
        if self.alpha < 1:
            skip = n - int(np.floor(self.alpha * n))
            self.timesteps, self.sigmas = self.timesteps[:-skip], self.sigmas[:-skip]
        self._step_index, self._begin_index = 0, 0

    def step(self, model_output, timestep, sample, return_dict=True, **kw):
        sample = sample.to(torch.float32)
        if self.sample is None:
            sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
            self.sample = sample
            prev_sample = sample + model_output * (sigma_next - sigma)
        else:
            sigma, sigma_next = self.sigmas[self.step_index - 1], self.sigmas[self.step_index]
            self.sample = self.sample + (sigma_next - sigma) * model_output
            if self.step_index + 1 < len(self.sigmas):
                prev_sample = self.sample + (self.sigmas[self.step_index + 1] - sigma_next) * model_output
            else:
                prev_sample = self.sample
        self._step_index += 1
        return (prev_sample,)


class _UniEditEuler(FlowMatchEulerDiscreteScheduler):
    """A transcription of the authors' ``UniEditEulerScheduler`` (schedulers/UniEditEulerScheduler.py)."""

    alpha, omega = 0.6, 5.0

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu)
        n = self.num_inference_steps
        if self.alpha < 1:
            skip = n - int(np.floor(self.alpha * n))
            self.timesteps, self.sigmas = self.timesteps[skip:], self.sigmas[skip:]
        self._step_index, self._begin_index = 0, 0

    def step(self, model_output, timestep, sample, return_dict=True, **kw):
        sample = sample.to(torch.float32)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        v_src, v_trg = model_output.chunk(2, dim=0)
        guidance = v_trg - v_src
        b = guidance.shape[0]
        mask = guidance.mean(dim=1, keepdim=True)
        lo = mask.reshape(b, -1).min(dim=1).values.reshape(b, 1, 1, 1)
        hi = mask.reshape(b, -1).max(dim=1).values.reshape(b, 1, 1, 1)
        mask = (mask - lo) / (hi - lo + 1e-7)
        stride_corr = self.omega * (sigma_next - sigma) * (1 + mask) * guidance
        fused = mask * v_trg + (1 - mask) * v_src
        prev = sample + torch.cat([stride_corr, stride_corr]) + (sigma_next - sigma) * torch.cat([fused, fused])
        self._step_index += 1
        return (prev,)


def _reference_unieditflow_sd3(pipe, x_src, c, p, c_t, p_t, N, alpha, omega):
    """UniEdit-Flow's diffusers demo (demo_edit.py) on SD3: the pipeline itself with the transcribed
    schedulers, the inversion with the empty prompt and guidance_scale 1, then the edit with [src; trg]."""
    from explore.pipeline.latent import null_text

    cu, pu = null_text(pipe)
    kw = dict(num_inference_steps=N, guidance_scale=1.0, output_type="latent", height=x_src.shape[-2] * 8,
              width=x_src.shape[-1] * 8)
    saved = pipe.scheduler
    try:
        inv = _UniInvEuler.from_config(saved.config)
        inv.alpha = alpha
        pipe.scheduler = inv
        noise = pipe(prompt_embeds=cu.float(), pooled_prompt_embeds=pu.float(), latents=x_src, **kw).images
        ed = _UniEditEuler.from_config(saved.config)
        ed.alpha, ed.omega = alpha, omega
        pipe.scheduler = ed
        out = pipe(prompt_embeds=torch.cat([c, c_t]), pooled_prompt_embeds=torch.cat([p, p_t]),
                   latents=torch.cat([noise, noise]), **kw).images
    finally:
        pipe.scheduler = saved
    return out[:1]


def _reference_unieditflow_flux(pipe, x_src, c, p, c_t, p_t, N, alpha, omega, guidance):
    """UniEdit-Flow's FLUX code (``denoise_uniinv`` / ``edit_uniedit``, sampling.py) on the raw transformer and
    packed tokens: the inversion with the empty prompt, the mask ``|v_trg - v_src|`` averaged per token."""
    from explore.pipeline.latent import null_text

    sched, _, img_ids, txt_ids = _reference_schedule(pipe, x_src, c, N)
    timesteps = [float(s) for s in sched.sigmas]  # 1 -> 0, N + 1 values
    tr = pipe.transformer
    h, w = x_src.shape[-2:]
    cu, pu = null_text(pipe)

    def model(img, t, cc, pp):
        return tr(hidden_states=img, timestep=torch.tensor([t]), guidance=torch.tensor([guidance]),
                  encoder_hidden_states=cc.float(), txt_ids=txt_ids, img_ids=img_ids, pooled_projections=pp.float(),
                  return_dict=False)[0]

    step_threshold = int(np.floor(alpha * N))
    img = pack(x_src)
    ts = timesteps[::-1]
    nxt = None
    for i, (t_curr, t_prev) in enumerate(zip(ts[:-1], ts[1:])):
        if i >= step_threshold:
            continue
        pred = model(img, t_curr, cu, pu) if nxt is None else nxt
        img_next = img + (t_prev - t_curr) * pred
        nxt = model(img_next, t_prev, cu, pu)
        img = img + (t_prev - t_curr) * nxt
    for i, (t_curr, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        if i < N - step_threshold:
            continue
        pred_trg, pred_src = model(img, t_curr, c_t, p_t), model(img, t_curr, c, p)
        cfg = pred_trg - pred_src
        m = cfg.abs().mean(dim=2, keepdim=True)
        m = (m - m.min()) / (m.max() - m.min())
        img = img + (t_prev - t_curr) * (m * pred_trg + (1 - m) * pred_src + (m + 1) * omega * cfg)
    return unpack(img, h, w)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_unieditflow_matches_transcriptions_of_the_published_code(family, tiny_sd3, tiny_flux):
    pipe = tiny_sd3 if family == "sd3" else tiny_flux
    src = _source(pipe)
    d = _direction(pipe)
    N, alpha, omega = 10, 0.7, 3.0
    out = edit_batch(pipe, [src], [d], [1.0], "unieditflow", seeds=[3], steps=N, alpha=alpha, omega=omega)
    c, p = src.c.float(), src.p.float()
    c_t, p_t = c + d.dc[None].float(), p + d.dp[None].float()
    if family == "sd3":
        ref = _reference_unieditflow_sd3(pipe, src.z.float(), c, p, c_t, p_t, N, alpha, omega)
    else:
        ref = _reference_unieditflow_flux(pipe, src.z.float(), c, p, c_t, p_t, N, alpha, omega, 1.0)
    assert torch.allclose(out["z"], ref, atol=1e-5), float((out["z"] - ref).abs().max())
    k = int(np.floor(alpha * N))
    assert out["evaluations"] == (k + 1) + 2 * k  # Uni-Inv: one evaluation per level (+ the first); edit: two


def test_unieditflow_mask_and_defaults(tiny_sd3, tiny_flux, shapes_pipe):
    from explore.editing.peers import UniEditFlow

    d = torch.zeros(1, 4, 4, 4)
    d[0, :, 0, 0], d[0, :, 3, 3] = 2.0, -2.0
    signed, ab = UniEditFlow.mask(d, "signed", 1), UniEditFlow.mask(d, "abs", 1)
    assert signed[0, 0, 0, 0] > 0.99 and signed[0, 0, 3, 3] < 1e-6 and abs(float(signed[0, 0, 1, 1]) - 0.5) < 1e-5
    assert ab[0, 0, 0, 0] > 0.99 and ab[0, 0, 3, 3] > 0.99 and float(ab[0, 0, 1, 1]) < 1e-6
    tok = UniEditFlow.mask(d, "abs", 2)  # one value per 2x2 token
    assert torch.equal(tok[0, 0, :2, :2], tok[0, 0, :1, :1].expand(2, 2)) and tok[0, 0, 1, 1] > 0.99
    assert dict(settings_for(tiny_sd3, "unieditflow")) == {"steps": 15, "alpha": 0.6, "omega": 5.0, "guidance": 1.0,
                                                           "inversion_prompt": "empty", "mask": "signed",
                                                           "mask_patch": 1}
    f = settings_for(tiny_flux, "unieditflow")
    assert (f.mask, f.mask_patch, f.guidance) == ("abs", 2, 1.0)
    assert settings_for(shapes_pipe, "unieditflow").steps >= 1
    with pytest.raises(InputError, match="alpha"):
        method_settings("unieditflow", alpha=0.05, steps=10)
    with pytest.raises(InputError, match="mask"):
        method_settings("unieditflow", mask="soft")


def test_unieditflow_inversion_reconstructs_and_shares_one_inversion(shapes_pipe):
    """Uni-Inv then regeneration with the inversion's own caption (strength 0) gets the source back: on
    ShapesWorld within 0.5 dB of the VAE round trip (measured: 33.9 dB, VAE 33.9, plain Euler inversion 31.5 at
    15 steps); and the edit and the
    reconstruction of one source run one inversion between them."""
    import random

    from explore.images import psnr
    from explore.pipeline.latent import decode
    from explore.worlds import world_of

    world = world_of(shapes_pipe)
    scene = world.sample(random.Random(4))
    res = explore.pipeline.spec.spec(shapes_pipe).resolution
    image = world.render(scene, res)
    src = explore.encode(shapes_pipe, image, world.caption(scene, template=0))
    d = explore.text_direction(shapes_pipe, *world.value_pairs()[0][1:], attribute=world.value_pairs()[0][0])
    o = edit_batch(shapes_pipe, [src, src], [d, d], [0.0, 1.0], "unieditflow", seeds=[0, 0], steps=15, alpha=1.0,
                   inversion_prompt="source")
    rec = decode(shapes_pipe, o["z"][:1], "np")[0]
    vae = decode(shapes_pipe, src.z, "np")[0]
    ref = np.asarray(image, dtype=np.float32)
    ref = ref / 255.0 if ref.max() > 1 else ref
    p_rec, p_vae = psnr(rec, ref), psnr(vae, ref)
    assert p_rec > p_vae - 0.5, (p_rec, p_vae)
    assert o["evaluations"] == 16 + 15 * 3  # one inversion (16); the edit's two rows and the reconstruction's one
    euler = edit_batch(shapes_pipe, [src], [d], [0.0], "rf-inversion", seeds=[0], steps=15, gamma=0.0, eta=0.0,
                       inversion_prompt="source", source_guidance=1.0, target_guidance=1.0)
    assert psnr(decode(shapes_pipe, euler["z"], "np")[0], ref) < p_rec  # the corrector beats plain Euler inversion


def test_unieditflow_items_in_a_batch_are_edited_as_alone(tiny):
    """A batch mixing a reconstruction (strength 0) with edits of two sources gives each edit what it gets
    alone: the mask is per image and the source-only rows line up with their items."""
    a, b = _source(tiny), _source(tiny, "blue car here")
    d = _direction(tiny)
    both = edit_batch(tiny, [a, a, b], [d, d, d], [0.0, 1.0, 0.5], "unieditflow", seeds=[1, 1, 2], steps=6)
    alone = edit_batch(tiny, [a], [d], [1.0], "unieditflow", seeds=[1], steps=6)
    rec = edit_batch(tiny, [a], [d], [0.0], "unieditflow", seeds=[1], steps=6)
    other = edit_batch(tiny, [b], [d], [0.5], "unieditflow", seeds=[2], steps=6)
    assert torch.allclose(both["z"][1], alone["z"][0], atol=1e-5)
    assert torch.allclose(both["z"][0], rec["z"][0], atol=1e-5)
    assert torch.allclose(both["z"][2], other["z"][0], atol=1e-5)
    assert not torch.allclose(both["z"][0], both["z"][1])
