"""Sparse autoencoders (`explore.interp.sae`, `explore.interp.sae_study`): the adapter to SAELens, exact
resume, the SAE in the model's path, scores against the truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")  # the optional 'sae' extra; `make test` installs it

from explore.errors import InputError  # noqa: E402
from explore.interp import sae as S  # noqa: E402
from explore.interp.activations import collect  # noqa: E402
from explore.interp.sae_study import auroc_columns, sae_score  # noqa: E402

SITE = "transformer_blocks.2.img"


@pytest.fixture(scope="module")
def acts(shapes_pipe):
    return S.token_activations(shapes_pipe, 12, 1000, SITE, (0.5,), progress=False)


def test_token_activations_are_the_cached_activations_row_by_row(shapes_pipe, acts):
    data = collect(shapes_pipe, acts.scenes, sites=[SITE], timesteps=(0.5,), pool="token", seed=1000,
                   progress=False)
    cached = np.asarray(data.get(SITE, 0.5))  # (renders, tokens, dim)
    assert acts.x.shape == (12 * cached.shape[1], cached.shape[2]) and acts.grid ** 2 == cached.shape[1]
    assert np.array_equal(acts.x.numpy(), cached.reshape(-1, cached.shape[2]))
    i = 40
    assert np.array_equal(acts.x[i].numpy(), cached[acts.render[i], acts.token[i]])


def test_the_adapter_feeds_sae_lens_exactly_the_cached_rows(acts, monkeypatch, tmp_path):
    fed = []
    step = sae_lens.SAETrainer.step

    def spy(self, batch):
        fed.append(batch.detach().clone())
        return step(self, batch)

    monkeypatch.setattr(sae_lens.SAETrainer, "step", spy)
    settings = S.SAESettings(n=12, steps=5, batch_size=64, k=4, expansion=2, checkpoint_every=100)
    S.train_sae(acts, settings, tmp_path / "a", progress=False)
    expected = S.token_batches(acts.x, 64, settings.seed)
    assert len(fed) == 5
    for b in fed:
        assert b.shape == (64, acts.x.shape[1]) and torch.equal(b, next(expected))
    rows = {tuple(r.tolist()) for r in acts.x}
    assert all(tuple(r.tolist()) in rows for r in fed[0])  # rows of the cache, not a transform of them


def test_batches_cover_an_epoch_and_resume_mid_stream():
    x = torch.arange(40, dtype=torch.float32)[:, None].repeat(1, 3)
    it = S.token_batches(x, 8, seed=3)
    epoch = torch.cat([next(it) for _ in range(5)])
    assert sorted(epoch[:, 0].tolist()) == list(range(40))  # every row once per epoch
    full = [next(S.token_batches(x, 8, seed=3, start_step=s)) for s in range(12)]
    it = S.token_batches(x, 8, seed=3)
    assert all(torch.equal(next(it), f) for f in full)
    with pytest.raises(InputError, match="cannot fill one batch"):
        next(S.token_batches(x[:4], 8, 0))


def test_an_interrupted_training_resumes_to_the_same_weights(acts, tmp_path, monkeypatch):
    settings = S.SAESettings(n=12, steps=30, batch_size=64, k=4, expansion=2, checkpoint_every=10)
    a = S.train_sae(acts, settings, tmp_path / "a", progress=False)
    original = S.token_batches

    class Kill(Exception):
        pass

    def dies_after_25(*args, **kw):
        for i, b in enumerate(original(*args, **kw)):
            if i == 25:
                raise Kill
            yield b

    monkeypatch.setattr(S, "token_batches", dies_after_25)
    with pytest.raises(Kill):
        S.train_sae(acts, settings, tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "b" / "checkpoint" / "latest.json").read_text())["step"] == 20
    monkeypatch.setattr(S, "token_batches", original)
    b = S.train_sae(acts, settings, tmp_path / "b", progress=False)
    assert b.explore["resumed_from"] == 20 and not (tmp_path / "b" / "checkpoint").exists()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    again = S.train_sae(acts, settings, tmp_path / "b", progress=False)  # finished: loaded, not retrained
    assert again.explore["seconds"] == b.explore["seconds"]
    with pytest.raises(InputError, match="other settings"):
        S.train_sae(acts, S.SAESettings(n=12, steps=31, batch_size=64, k=4, expansion=2), tmp_path / "b",
                    progress=False)


class _Identity:
    def encode(self, x):
        return x

    def decode(self, z):
        return z


class _Zero(_Identity):
    def decode(self, z):
        return torch.zeros_like(z)


def test_a_site_patched_with_its_reconstruction_is_what_the_render_uses(shapes_pipe):
    from explore.pipeline.latent import encode
    from explore.pipeline.sampling import render

    res = 64
    img = np.zeros((res, res, 3), np.uint8)
    img[16:40, 20:44] = (200, 30, 30)
    lat = encode(shapes_pipe, img, "a large red square at the center on a black background")

    def run():
        return render(shapes_pipe, lat.z.float(), lat.c.float(), lat.p.float(), 0.6, [7], None)

    plain = run()
    with S.patch_with_sae(shapes_pipe, _Identity(), SITE):
        same = run()
    with S.patch_with_sae(shapes_pipe, _Zero(), SITE):
        zeroed = run()
    assert torch.equal(plain, same)  # an identity SAE changes nothing ...
    assert (zeroed - plain).abs().max() > 1e-2  # ... and what the SAE returns is what the model uses
    after = run()
    assert torch.equal(after, plain)  # the hook is gone afterwards


def test_auroc_columns_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    s = rng.normal(size=(50, 3))
    s[:, 2] = np.round(s[:, 2])  # ties
    y = rng.random(50) > 0.4
    ours = auroc_columns(s, y)
    assert np.allclose(ours, [roc_auc_score(y, s[:, j]) for j in range(3)])
    assert np.isnan(auroc_columns(s, np.ones(50, bool))).all()


def test_scoring_writes_every_measure_and_refuses_the_training_seed(shapes_pipe, acts, tmp_path):
    settings = S.SAESettings(n=12, steps=40, batch_size=64, k=4, expansion=2)
    S.train_sae(acts, settings, tmp_path / "sae", progress=False, world="shapes")
    with pytest.raises(InputError, match="not trained on"):
        sae_score(shapes_pipe, tmp_path / "sae", n=40, seed=1000, render_n=1, progress=False)
    res = sae_score(shapes_pipe, tmp_path / "sae", n=40, seed=1, render_n=1, dci_model="logistic",
                    out=tmp_path / "score", progress=False)
    assert res["variance_explained"]["all"] <= 1 and res["live"] + res["dead"] == res["d_sae"] == 256
    assert abs(res["l0"] - 4) < 1e-6  # TopK: exactly k features per token
    assert {"color=red", "background=white"} <= set(res["best"]) and res["binding"] == {}
    assert set(res["metrics"]) == {"sae", "raw", "pca10"} and 0 <= res["metrics"]["sae"]["mig"] <= 1
    assert res["render"]["plain"]["agreement"] >= 0.8 and res["render"]["n"] == 1
    saved = json.loads((tmp_path / "score" / "sae_score.json").read_text())
    assert saved["best"] == res["best"] and (tmp_path / "score" / "sae_score.png").stat().st_size > 0
    assert "| variance explained |" in (tmp_path / "score" / "sae_score.md").read_text()


@pytest.fixture(scope="module")
def small_sae(acts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae")
    S.train_sae(acts, S.SAESettings(n=12, steps=40, batch_size=64, k=4, expansion=2), folder, progress=False,
                world="shapes")
    return folder


def test_steering_with_a_zero_direction_changes_nothing(shapes_pipe, small_sae, acts):
    from explore.editing.sae_steer import swap_hook
    from explore.interp.hooks import hooks
    from explore.pipeline.latent import encode
    from explore.pipeline.sampling import render

    sae = S.load_sae(small_sae)
    img = np.zeros((64, 64, 3), np.uint8)
    img[10:30, 30:50] = (30, 30, 220)
    lat = encode(shapes_pipe, img, "a small blue square at the top right on a black background")

    def run():
        return render(shapes_pipe, lat.z.float(), lat.c.float(), lat.p.float(), 0.6, [3], None)

    plain = run()
    stats: list = []
    with hooks(shapes_pipe, {SITE: swap_hook(sae, 5, 5, 1.0, 1.0, stats)}):  # take f out, put f back: zero
        zero = run()
    assert torch.equal(zero, plain) and stats and all(abs(a - b) < 1e-9 for a, b in stats)
    with hooks(shapes_pipe, {SITE: swap_hook(sae, 5, 9, 1.0, 0.0)}):  # strength 0
        assert torch.equal(run(), plain)
    live = int(S.encode_rows(sae, acts.x).mean(0).argmax())  # the feature that fires most widely
    with hooks(shapes_pipe, {SITE: swap_hook(sae, live, (live + 1) % 256, 50.0, 1.0)}):
        assert (run() - plain).abs().max() > 1e-3  # a real swap acts


def test_sae_steering_is_an_editing_method_on_the_benchmark(shapes_pipe, small_sae, tmp_path):
    from explore.editing.api import edit_batch
    from explore.editing.settings import SAESteerSettings
    from explore.evaluation.items import shapes_benchmark
    from explore.evaluation.runner import item_direction
    from explore.pipeline.latent import encode
    from explore.pipeline.sampling import render

    items = shapes_benchmark(2, seed=5)
    lats = [encode(shapes_pipe, it.load_image(), it.prompt) for it in items]
    dirs = [item_direction(shapes_pipe, it) for it in items]
    with pytest.raises(InputError, match="trained SAE"):
        edit_batch(shapes_pipe, lats, dirs, [1.0, 1.0], "sae", seeds=[1, 2])
    o = edit_batch(shapes_pipe, lats, dirs, [0.0, 1.0], "sae", seeds=[1, 2], folder=str(small_sae))
    t = SAESteerSettings().t_render
    plain = render(shapes_pipe, lats[0].z.float(), lats[0].c.float(), lats[0].p.float(), t, [1 + 7919], None)
    assert torch.equal(o["x"][0:1], plain)  # strength 0: the plain render from t_render (the reconstruction)
    table = json.loads((small_sae / "features_seed1000.json").read_text())
    assert f"{items[1].attribute}={items[1].target}" in table["features"]
    # evaluate with method "sae" beside another: the CLI test below (`sae steer`)


def test_steering_takes_out_the_source_values_feature_and_puts_in_the_targets(shapes_pipe, small_sae, monkeypatch):
    import explore.editing.sae_steer as st
    from explore.editing.api import edit_batch
    from explore.evaluation.items import shapes_benchmark
    from explore.evaluation.runner import item_direction
    from explore.pipeline.latent import encode

    it = shapes_benchmark(1, seed=9)[0]
    table = st.feature_table(shapes_pipe, str(small_sae), 256)["features"]
    calls = []
    original = st.swap_hook
    monkeypatch.setattr(st, "swap_hook", lambda sae, remove, add, *a, **k: calls.append((remove, add))
                        or original(sae, remove, add, *a, **k))
    edit_batch(shapes_pipe, [encode(shapes_pipe, it.load_image(), it.prompt)], [item_direction(shapes_pipe, it)],
               [1.0], "sae", seeds=[0], folder=str(small_sae), features=1, scale=1.0, t_render=0.6)
    src, tgt = table[f"{it.attribute}={it.source}"], table[f"{it.attribute}={it.target}"]
    assert calls == [(src["feature"], tgt["feature"])]


def test_swapping_sets_of_features_follows_the_formula_and_reduces_to_the_one_feature_swap(small_sae, acts):
    from explore.editing.sae_steer import swap_hook

    sae = S.load_sae(small_sae)
    x = acts.x[:64].clone()
    z = sae.encode(x).detach()
    W = sae.W_dec.detach()
    rm = [int(j) for j in z.sum(0).argsort(descending=True)[:3]]  # features that fire on these rows
    ad, mu_rm, mu_ad = [4, 12, 50], [0.5, 1.5, 2.0], [1.0, 0.25, 3.0]
    stats: list = []
    y = swap_hook(sae, rm, ad, 2.0, 0.5, stats, means=(mu_rm, mu_ad))(x, site=SITE)
    g = z[:, rm].sum(1, keepdim=True) / sum(mu_rm)
    want = x + 0.5 * (-(z[:, rm] @ W[rm]) + g * 2.0 * (torch.tensor(mu_ad)[:, None] * W[ad]).sum(0))
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    assert (y - x).abs().max() > 1e-3 and len(stats) == 1 and stats[0][1] != stats[0][0]
    # one feature each, as a set with its means, is the one-feature swap with ratio = scale mu_add / mu_remove
    one = swap_hook(sae, rm[0], 12, 3.0 * 0.8 / 0.4, 1.0)(x, site=SITE)
    as_set = swap_hook(sae, [rm[0]], [12], 3.0, 1.0, means=([0.4], [0.8]))(x, site=SITE)
    torch.testing.assert_close(as_set, one, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="mean activations"):
        swap_hook(sae, [1, 2], [3, 4], 1.0, 1.0)
    with pytest.raises(InputError, match="one value per feature"):
        swap_hook(sae, [1, 2], [3, 4], 1.0, 1.0, means=([1.0], [1.0, 1.0]))


def test_steering_with_several_features_uses_the_tables_best_ones(shapes_pipe, small_sae, monkeypatch):
    import explore.editing.sae_steer as st
    from explore.editing.api import edit_batch
    from explore.evaluation.items import shapes_benchmark
    from explore.evaluation.runner import item_direction
    from explore.pipeline.latent import encode

    it = shapes_benchmark(1, seed=9)[0]
    table = st.feature_table(shapes_pipe, str(small_sae), 256)["features"]
    src, tgt = table[f"{it.attribute}={it.source}"]["top"], table[f"{it.attribute}={it.target}"]["top"]
    assert src[0]["feature"] == table[f"{it.attribute}={it.source}"]["feature"]
    assert all(a["auroc"] >= b["auroc"] for a, b in zip(src, src[1:]))  # best first
    calls = []
    original = st.swap_hook
    monkeypatch.setattr(st, "swap_hook", lambda sae, remove, add, *a, **k: calls.append((remove, add, k))
                        or original(sae, remove, add, *a, **k))
    edit_batch(shapes_pipe, [encode(shapes_pipe, it.load_image(), it.prompt)], [item_direction(shapes_pipe, it)],
               [1.0], "sae", seeds=[0], folder=str(small_sae), features=3)
    (remove, add, kw), = calls
    assert remove == [r["feature"] for r in src[:3]] and add == [r["feature"] for r in tgt[:3]]
    assert kw["means"] == ([r["mean_active"] for r in src[:3]], [r["mean_active"] for r in tgt[:3]])
    with pytest.raises(InputError, match="at most 32"):
        edit_batch(shapes_pipe, [encode(shapes_pipe, it.load_image(), it.prompt)], [item_direction(shapes_pipe, it)],
                   [1.0], "sae", seeds=[0], folder=str(small_sae), features=33)


def test_a_text_stream_site_is_read_token_by_token_and_scored(shapes_pipe, tmp_path):
    site = "transformer_blocks.2.txt"
    txt = S.token_activations(shapes_pipe, 6, 1000, site, (0.5,), progress=False)
    cached = np.asarray(collect(shapes_pipe, txt.scenes, sites=[site], timesteps=(0.5,), pool="token", seed=1000,
                                progress=False).get(site, 0.5))  # (renders, text tokens, dim)
    assert txt.grid is None and txt.stream == "txt" and txt.token.max() + 1 == cached.shape[1]
    assert np.array_equal(txt.x.numpy(), cached.reshape(-1, cached.shape[2]))
    S.train_sae(txt, S.SAESettings(site=site, n=6, steps=20, batch_size=32, k=4, expansion=2), tmp_path / "sae",
                progress=False, world="shapes")
    res = sae_score(shapes_pipe, tmp_path / "sae", n=40, seed=1, render_n=1, dci_model="logistic", progress=False)
    assert res["site"] == site and res["binding"] == {} and res["live"] > 0 and res["render"]["n"] == 1
    with pytest.raises(InputError, match="unknown site"):
        S.token_activations(shapes_pipe, 2, 1000, "transformer_blocks.2", progress=False)


def test_binding_tells_a_feature_of_one_object_from_one_of_the_value():
    from explore.interp.sae_study import feature_binding

    # 2 renders of 4 tokens: the circle on tokens 0-1, the square on tokens 2-3; both objects red in render 0,
    # the circle red and the square blue in render 1
    acts = S.TokenActivations(torch.zeros(8, 2), np.repeat([0, 1], 4), np.zeros(8), np.tile(np.arange(4), 2),
                              [None, None], {"circle.color": np.array(["red", "red"]),
                                             "square.color": np.array(["red", "blue"])}, 2, "b.img")
    masks = {"circle": np.array([[1, 1, 0, 0]] * 2, bool), "square": np.array([[0, 0, 1, 1]] * 2, bool)}
    circle_only = np.array([1, 1, 0, 0, 1, 1, 0, 0], float)
    any_red = np.array([1, 1, 1, 1, 1, 1, 0, 0], float)  # fires on every red object's tokens
    assert feature_binding(circle_only, acts, masks, "circle.color", "red") == 1.0
    assert feature_binding(any_red, acts, masks, "circle.color", "red") == 0.5
    assert feature_binding(circle_only, acts, masks, "square.color", "blue") is None  # no other blue object


def test_the_feature_browser_shows_patches_maps_and_steers(shapes_pipe, small_sae, tmp_path):
    from explore.views.sae_panels import FeaturePanel

    panel = FeaturePanel(shapes_pipe, small_sae, n=8, seed=1, top=3)
    assert panel.feature.options and panel.top_image.value and panel.map_image.value
    assert "AUROC" in panel.match.value and panel.feature_map(panel.feature.value, 0).shape == (8, 8)
    plain = panel.steer_image.value
    panel.alpha.value = 4.0
    assert panel.steer_image.value != plain and "α +4.0" in panel.status.value
    txt = S.token_activations(shapes_pipe, 6, 1000, "transformer_blocks.2.txt", (0.5,), progress=False)
    S.train_sae(txt, S.SAESettings(site="transformer_blocks.2.txt", n=6, steps=20, batch_size=32, k=4, expansion=2),
                tmp_path / "txt", progress=False, world="shapes")
    tp = FeaturePanel(shapes_pipe, tmp_path / "txt", n=8, seed=1, top=3)
    caption = shapes_pipe.tokenizer.convert_ids_to_tokens(shapes_pipe.tokenizer(
        tp.world.caption(tp.acts.scenes[0], template=0)).input_ids)
    assert tp.text and tp.feature_map(tp.feature.value, 0).ndim == 1
    assert "explore-sae-tokens" in tp.tokens.value and caption[2] in tp.tokens.value


def test_the_cli_trains_scores_and_steers_writing_json_figures_and_pages(tmp_path, capsys):
    from explore.cli import main

    out = tmp_path / "sae"
    assert main(["sae", "train", "--out", str(out), "--n", "12", "--steps", "20", "--expansion", "2", "--k", "4",
                 "--batch-size", "64"]) == 0
    rec = S.sae_json(out)
    assert rec["settings"]["k"] == 4 and rec["settings"]["seed"] == 1000 and rec["done"]
    assert main(["sae", "score", "--out", str(out), "--n", "40", "--render-n", "1"]) == 0
    score = json.loads((out / "score_seed1" / "sae_score.json").read_text())
    assert score["seed"] == 1 and {"sae", "raw", "pca10"} <= set(score["metrics"])
    assert (out / "score_seed1" / "sae_score.png").stat().st_size > 0
    assert (out / "score_seed1" / "sae_score.md").exists()
    assert main(["sae", "steer", "--out", str(out), "--n", "2", "--methods", "sae,text", "--features", "3"]) == 0
    run = out / "steer_seed1"
    res = json.loads((run / "results.json").read_text())
    assert set(res["methods"]) == {"sae", "text"} and res["methods"]["sae"]["n"] == 2
    assert res["methods"]["sae"]["evaluations_per_item"] > 0
    off = json.loads((run / "off_distribution.json").read_text())
    assert off["settings"]["steer"]["features"] == 3 and len(off["per_item"]) == 2
    assert main(["sae", "steer", "--out", str(out), "--n", "2", "--features", "33"]) == 2  # refused before work
    assert "at most 32" in capsys.readouterr().err
