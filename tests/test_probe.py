"""Probing: activation collection (in memory and streamed/resumable) and linear probes.

Synthetic arrays test the estimators; the tiny random SD3/FLUX pipelines test the plumbing of
`collect` (shapes, seeding, shards). Nothing here needs the trained ShapesWorld model.
"""

import io
import random

import numpy as np
import pytest
from matplotlib.figure import Figure

import explore.interp.activations as probe_mod
import explore.pipeline.latent
from explore.errors import CorruptFileError, InputError
from explore.interp.hooks import sites
from explore.interp.probe import ActivationDataset, LinearProbe, collect, probe_all
from explore.shapes.world import render, sample_scene
from explore.views.plots import plot_accuracy


def _planted(n=800, d=32, k=3, signal_dim=3, seed=0):
    """Features where one dimension encodes the class index (3 noise s.d. between classes)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = rng.normal(size=(n, d))
    X[:, signal_dim] += 3.0 * y
    return X, np.array([f"v{c}" for c in y])


# ---------------------------------------------------------------------------------------------
# LinearProbe
# ---------------------------------------------------------------------------------------------


def test_probe_finds_a_planted_signal_and_its_direction():
    X, y = _planted()
    p = LinearProbe().fit(X, y)
    assert p.chance_ < 0.4  # three balanced classes
    assert p.accuracy_ > 0.8 and p.train_accuracy_ > 0.8
    assert list(p.classes_) == ["v0", "v1", "v2"] and p.n_test_ == 200 and p.n_train_ == 600
    # The extreme classes' probe directions and the mean difference point along the signal dimension.
    assert p.direction("v2")[3] > 0.9 and p.direction("v0")[3] < -0.9
    assert np.allclose(np.linalg.norm(p.directions_, axis=1), 1.0)
    assert p.mean_difference("v0", "v2")[3] > 0.95
    assert p.score(X, y) == pytest.approx((p.predict(X) == y).mean())


def test_probe_sits_at_chance_on_shuffled_labels():
    X, y = _planted()
    accs, chances = [], []
    for seed in range(5):
        shuffled = np.random.default_rng(100 + seed).permutation(y)
        p = LinearProbe(random_state=seed).fit(X, shuffled)
        accs.append(p.accuracy_)
        chances.append(p.chance_)
    # 200 held-out rows, 3 classes: one accuracy has s.d. sqrt(1/3 * 2/3 / 200) ≈ 0.033; the mean of five
    # ≈ 0.015. 0.07 is over 4 s.d. — and the seeds are fixed, so this cannot flake.
    assert abs(np.mean(accs) - np.mean(chances)) < 0.07
    assert abs(np.mean(accs) - 1 / 3) < 0.07


def test_probe_is_a_scikit_learn_style_estimator():
    X, y = _planted(n=200)
    p = LinearProbe(C=0.5)
    assert p.fit(X, y) is p and p.C == 0.5
    assert all(hasattr(p, a) for a in ("accuracy_", "train_accuracy_", "classes_", "coef_", "directions_",
                                       "class_means_"))
    # Standardisation is folded into coef_: rescaling a feature changes nothing the probe reports.
    X2 = X.copy()
    X2[:, 3] *= 1000.0
    q = LinearProbe(C=0.5).fit(X2, y)
    assert q.accuracy_ == p.accuracy_
    assert np.array_equal(q.predict(X2), p.predict(X))
    # Binary: coef_ has one row and the two class directions are opposite.
    b = LinearProbe().fit(X, y == "v2")
    assert b.coef_.shape == (1, 32) and np.allclose(b.directions_[0], -b.directions_[1])
    with pytest.raises(InputError, match="not fitted"):
        LinearProbe().predict(X)
    with pytest.raises(InputError, match="two classes"):
        LinearProbe().fit(X, np.zeros(len(X)))
    with pytest.raises(InputError, match="one label per row"):
        LinearProbe().fit(X, y[:-1])
    with pytest.raises(InputError, match="not a class"):
        p.direction("nope")


# ---------------------------------------------------------------------------------------------
# probe_all / ProbeResults / plot
# ---------------------------------------------------------------------------------------------


def _synthetic_dataset(n=240):
    """Two sites x two t; factor 'color' is planted only at (transformer_blocks.1.img, t=0.5)."""
    rng = np.random.default_rng(1)
    color = rng.integers(0, 2, n)
    size = rng.integers(0, 3, n)
    feats = {}
    for s in ("transformer_blocks.0.img", "transformer_blocks.1.img", "transformer_blocks.0.txt"):
        for t in (0.25, 0.5):
            X = rng.normal(size=(n, 8)).astype(np.float32)
            if s == "transformer_blocks.1.img" and t == 0.5:
                X[:, 0] += 6.0 * color  # 6 s.d. apart: the best possible accuracy is 99.9%
            feats[(s, t)] = X
    labels = {"color": np.where(color == 1, "red", "blue"), "size": [f"s{v}" for v in size]}
    labels["size"][0] = ""  # unknown for one item: left out of that factor's probes
    return ActivationDataset(feats, labels)


def test_probe_all_tables_and_best_t():
    ds = _synthetic_dataset()
    res = probe_all(ds)
    assert res.factors == ["color", "size"] and res.timesteps == [0.25, 0.5]
    table = res.as_table()
    assert len(table) == 2 * 3 * 2
    assert {"factor", "site", "block", "stream", "t", "accuracy", "chance"} <= set(table[0])
    assert res.best_over_t("color", "transformer_blocks.1.img") == (0.5, res.accuracy("color",
                                                                                    "transformer_blocks.1.img", 0.5))
    assert res.accuracy("color", "transformer_blocks.1.img", 0.5) > 0.9
    assert res.accuracy("color", "transformer_blocks.0.img", 0.5) < 0.75  # noise only
    assert res.best("color")[:2] == ("transformer_blocks.1.img", 0.5)
    assert set(res.accuracy_by_t("size", "transformer_blocks.0.txt")) == {0.25, 0.5}
    assert res.probe("size", "transformer_blocks.0.img", 0.25).n_train_ + \
        res.probe("size", "transformer_blocks.0.img", 0.25).n_test_ == len(ds) - 1
    dirs = res.probe_directions("color")
    assert len(dirs) == 3 * 2 * 2  # sites x t x values
    site, t, value, v = dirs[0]
    assert v.shape == (8,) and value in ("red", "blue") and np.isclose(np.linalg.norm(v), 1)
    best = [d for d in dirs if d[0] == "transformer_blocks.1.img" and d[1] == 0.5 and d[2] == "red"][0]
    assert best[3][0] > 0.9
    assert len(res.probe_directions("color", kind="mean")) == len(dirs)
    with pytest.raises(InputError, match="no labels"):
        probe_all(ds, factors=["shape"])


def test_token_features_are_flattened_and_directions_keep_their_shape():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    X = rng.normal(size=(120, 4, 8)).astype(np.float32)
    X[:, 2, 5] += 6.0 * y  # one token, one channel
    ds = ActivationDataset({("transformer_blocks.0.img", 0.5): X}, {"color": np.where(y, "red", "blue")},
                           pool="token")
    res = probe_all(ds)
    assert res.accuracy("color", "transformer_blocks.0.img", 0.5) > 0.9
    (_, _, value, v), _ = res.probe_directions("color")
    assert v.shape == (4, 8)  # ready for explore.hooks.steer((tokens, dim))
    assert np.unravel_index(np.abs(v).argmax(), v.shape) == (2, 5)


def test_plot_accuracy_returns_a_figure_with_a_panel_per_stream():
    res = probe_all(_synthetic_dataset(), factors=["color"])
    fig = plot_accuracy(res)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["img stream", "txt stream"]
    assert any(line.get_linestyle() == "--" for line in fig.axes[0].lines)  # chance level
    assert isinstance(plot_accuracy(res, t=0.25), Figure)
    fig.savefig(io.BytesIO(), format="png", dpi=40)  # drawing must work too, not only building


# ---------------------------------------------------------------------------------------------
# collect on tiny pipelines
# ---------------------------------------------------------------------------------------------


def _scenes(n, seed=0):
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(n)]


def _images_prompts(n, seed=0):
    scenes = _scenes(n, seed)
    return np.stack([render(s, 32) for s in scenes]), [f"a {s.color} {s.shape}" for s in scenes], scenes


def test_collect_shapes_for_every_site_and_t(tiny_sd3):
    images, prompts, scenes = _images_prompts(5)
    labels = {"color": [s.color for s in scenes]}
    ds = collect(tiny_sd3, images, timesteps=(0.25, 0.75), prompts=prompts, labels=labels, batch_size=2,
                 progress=False)
    inner = tiny_sd3.transformer.config.num_attention_heads * tiny_sd3.transformer.config.attention_head_dim
    assert ds.sites == sites(tiny_sd3) and ds.timesteps == [0.25, 0.75] and len(ds) == 5
    for s in ds.sites:
        for t in ds.timesteps:
            x = ds.get(s, t)
            assert x.shape == (5, inner) and x.dtype == np.float32 and np.isfinite(x).all()
    assert list(ds.labels["color"]) == labels["color"]
    assert not np.allclose(ds.get(ds.sites[0], 0.25), ds.get(ds.sites[0], 0.75))
    tok = collect(tiny_sd3, (images[:2], prompts[:2]), sites=["transformer_blocks.0.img", "transformer_blocks.0.txt"],
                  timesteps=0.5, pool="token", progress=False)
    assert tok.get("transformer_blocks.0.img", 0.5).shape == (2, 16, inner)  # 32x32 -> 16 image tokens
    assert tok.get("transformer_blocks.0.txt", 0.5).ndim == 3
    with pytest.raises(InputError, match="was not collected"):
        tok.get("transformer_blocks.0.img", 0.25)


@pytest.mark.filterwarnings("ignore:prompt is")  # full ShapesWorld captions overflow the tiny 16-token encoders
def test_collect_does_not_depend_on_batching_and_reads_scenes_and_benchitems(tiny_sd3):
    scenes = _scenes(4)
    site = ["transformer_blocks.1.img"]
    a = collect(tiny_sd3, scenes, sites=site, timesteps=[0.5], batch_size=4, progress=False)
    b = collect(tiny_sd3, scenes, sites=site, timesteps=[0.5], batch_size=3, progress=False)
    assert np.allclose(a.get(site[0], 0.5), b.get(site[0], 0.5), atol=1e-5)
    assert list(a.labels["shape"]) == [s.shape for s in scenes]
    from explore.evaluation.items import shapes_benchmark

    items = shapes_benchmark(3, size=32)
    c = collect(tiny_sd3, items, sites=site, timesteps=[0.5], progress=False)
    assert c.get(site[0], 0.5).shape[0] == 3 and list(c.labels["color"]) == [it.labels["color"] for it in items]
    d = collect(tiny_sd3, [{"image": it.image, "prompt": it.prompt} for it in items], sites=site, timesteps=[0.5],
                progress=False)
    assert np.array_equal(c.get(site[0], 0.5), d.get(site[0], 0.5))


def test_collect_on_flux_covers_single_blocks_and_generated_images(tiny_flux):
    ds = collect(tiny_flux, ["a red circle", "a blue square"], sites="single_transformer_blocks.*",
                 timesteps=[0.5], progress=False)
    assert ds.sites == ["single_transformer_blocks.0.img", "single_transformer_blocks.0.txt",
                        "single_transformer_blocks.1.img", "single_transformer_blocks.1.txt"]
    assert ds.get("single_transformer_blocks.1.txt", 0.5).shape[0] == 2


def test_collect_rejects_bad_arguments(tiny_sd3):
    images, prompts, _ = _images_prompts(2)
    with pytest.raises(InputError, match="prompts="):
        collect(tiny_sd3, images, progress=False)
    with pytest.raises(InputError, match="pool"):
        collect(tiny_sd3, images, prompts=prompts, pool="max", progress=False)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        collect(tiny_sd3, images, prompts=prompts, timesteps=[1.5], progress=False)
    with pytest.raises(InputError, match="2 inputs but 3 prompts"):
        collect(tiny_sd3, images, prompts=prompts + ["x"], progress=False)
    with pytest.raises(InputError, match="labels"):
        collect(tiny_sd3, images, prompts=prompts, labels={"color": ["red"]}, progress=False)
    with pytest.raises(InputError, match="prompt string"):
        collect(tiny_sd3, images, prompts=["  ", "x"], progress=False)  # blank is not the empty prompt
    with pytest.raises(InputError, match="non-empty"):
        collect(tiny_sd3, ["a red circle", ""], progress=False)  # a caption to generate from must say something


def test_collect_accepts_the_empty_prompt_for_images(tiny_sd3):
    """The empty prompt (image-only probing): every item gets the same text input, the images differ."""
    images, _, _ = _images_prompts(3)
    site = ["transformer_blocks.0.img"]
    ds = collect(tiny_sd3, images, prompts="", sites=site, timesteps=[0.5], progress=False)
    assert ds.prompts == ["", "", ""]
    x = ds.get(site[0], 0.5)
    assert x.shape[0] == 3 and np.isfinite(x).all() and not np.allclose(x[0], x[1])
    with pytest.raises(InputError, match="empty"):
        explore.pipeline.latent.encode(tiny_sd3, images[:1], "")  # editing still needs a description


# ---------------------------------------------------------------------------------------------
# Streaming and resume
# ---------------------------------------------------------------------------------------------


class _Spy:
    """Counts `velocity` calls made by collect(); optionally fails on call number ``fail_at``."""

    def __init__(self, fail_at=None):
        self.calls = 0
        self.fail_at = fail_at
        self.real = probe_mod.velocity

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return self.real(*args, **kwargs)


def test_streaming_resumes_and_matches_memory(tiny_sd3, tmp_path, monkeypatch):
    images, prompts, scenes = _images_prompts(5)
    kw = dict(sites=["transformer_blocks.0.img", "transformer_blocks.1.img"], timesteps=(0.25, 0.75),
              prompts=prompts, batch_size=2, labels={"shape": [s.shape for s in scenes]}, progress=False)
    memory = collect(tiny_sd3, images, **kw)
    out = tmp_path / "acts"
    # Interrupted in the second batch (calls 1-2: batch 0 at two t; call 4 is batch 1's second t).
    spy = _Spy(fail_at=4)
    monkeypatch.setattr(probe_mod, "velocity", spy)
    with pytest.raises(KeyboardInterrupt):
        collect(tiny_sd3, images, out=out, **kw)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors"]
    with pytest.raises(InputError, match="incomplete"):
        ActivationDataset.load(out)
    spy = _Spy()
    monkeypatch.setattr(probe_mod, "velocity", spy)
    streamed = collect(tiny_sd3, images, out=out, **kw)
    assert spy.calls == 2 * 2  # batches 1 and 2 (of 3), two t each: the finished shard was skipped
    spy.calls = 0
    again = collect(tiny_sd3, images, out=out, **kw)
    assert spy.calls == 0
    for ds in (streamed, again, ActivationDataset.load(out)):
        assert ds.folder == out and len(ds) == 5
        assert list(ds.labels["shape"]) == kw["labels"]["shape"]
        for key in memory.keys():
            assert np.array_equal(ds.get(*key), memory.get(*key)), key
    with pytest.raises(InputError, match="other settings.*seed"):
        collect(tiny_sd3, images, out=out, **{**kw, "seed": 1})


def test_a_corrupt_shard_is_reported_with_its_path(tiny_sd3, tmp_path):
    images, prompts, _ = _images_prompts(3)
    out = tmp_path / "acts"
    collect(tiny_sd3, images, prompts=prompts, sites=["transformer_blocks.0.img"], timesteps=[0.5], batch_size=2,
            out=out, progress=False)
    shard = out / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CorruptFileError, match="shard-00001"):
        ActivationDataset.load(out).get("transformer_blocks.0.img", 0.5)
    shard.write_bytes(b"\xff" * len(data))  # right size, garbage inside
    with pytest.raises(CorruptFileError, match="shard-00001"):
        ActivationDataset.load(out).get("transformer_blocks.0.img", 0.5)
    # Resuming recomputes the damaged shard (with a warning) and the data is readable again.
    shard.unlink()
    with pytest.warns(UserWarning, match="recomputing"):
        ds = collect(tiny_sd3, images, prompts=prompts, sites=["transformer_blocks.0.img"], timesteps=[0.5],
                     batch_size=2, out=out, progress=False)
    assert ds.get("transformer_blocks.0.img", 0.5).shape[0] == 3
