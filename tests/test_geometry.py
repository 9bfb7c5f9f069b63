"""Geometry of directions: matrices, PCA/UMAP, cosines, consistency and their figures (synthetic data)."""

import io
import itertools

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from explore.editing.directions import Direction, DirectionLibrary
from explore.errors import InputError
from explore.interp.geometry import (
    DirectionInfo,
    consistency,
    cosine_matrix,
    direction_matrix,
    pca,
    umap,
)
from explore.views.plots import geometry_figure, plot_consistency, plot_cosine, plot_projection


def _clustered(per=8, attrs=("color", "shape", "size"), d=64, noise=0.5, seed=0):
    """Directions that scatter around one random base vector per attribute."""
    rng = np.random.default_rng(seed)
    X, labels = [], []
    for a in attrs:
        base = rng.normal(size=d)
        base /= np.linalg.norm(base)
        for _ in range(per):
            X.append(base + noise * rng.normal(size=d) / np.sqrt(d))
            labels.append(a)
    return np.array(X), labels


def _direction(attribute, source, target, seed, dz=True):
    g = torch.Generator().manual_seed(seed)
    return Direction(dc=torch.randn(5, 6, generator=g), dp=torch.randn(4, generator=g), attribute=attribute,
                     source=source, target=target, model_id="m",
                     dz=torch.randn(4, 2, 2, generator=g) if dz else None)


# ---------------------------------------------------------------------------------------------
# direction_matrix
# ---------------------------------------------------------------------------------------------


def test_direction_matrix_kinds_pools_and_sources(tmp_path):
    ds = [_direction("color", "red", "blue", 0), _direction("shape", "circle", "square", 1)]
    X, meta = direction_matrix(ds, "dc")
    assert X.shape == (2, 30) and meta[0] == DirectionInfo("color", "red", "blue", "color-red-to-blue")
    assert np.allclose(X[0], ds[0].dc.numpy().ravel())
    assert direction_matrix(ds, "dc", pool="mean")[0].shape == (2, 6)
    assert direction_matrix(ds, "dp")[0].shape == (2, 4)
    assert direction_matrix(ds, "dz")[0].shape == (2, 16)
    assert direction_matrix(ds, "dz", pool="mean")[0].shape == (2, 4)
    assert direction_matrix(ds, "dc+dp")[0].shape == (2, 34)
    with pytest.raises(InputError, match="no dz"):
        direction_matrix([_direction("color", "red", "blue", 2, dz=False)], "dz")
    with pytest.raises(InputError, match="kind"):
        direction_matrix(ds, "dq")
    lib = DirectionLibrary(tmp_path / "lib")
    for d in ds:
        lib.add(d)
    Xl, ml = direction_matrix(lib, "dp")
    assert np.allclose(Xl, direction_matrix(ds, "dp")[0], atol=1e-6)
    assert [m.attribute for m in ml] == ["color", "shape"]
    raw, rmeta = direction_matrix(np.ones((3, 5)), labels=["a", ("b", "x", "y"), {"attribute": "c"}])
    assert raw.shape == (3, 5) and [m.attribute for m in rmeta] == ["a", "b", "c"] and rmeta[1].target == "y"
    with pytest.raises(InputError, match="labels"):
        direction_matrix(np.ones((3, 5)))
    with pytest.raises(InputError, match="3 directions but 2 labels"):
        direction_matrix(np.ones((3, 5)), labels=["a", "b"])


# ---------------------------------------------------------------------------------------------
# Cosines and consistency
# ---------------------------------------------------------------------------------------------


def test_cosine_matrix_is_symmetric_with_unit_diagonal():
    X = np.random.default_rng(0).normal(size=(12, 7)) * np.arange(1, 13)[:, None]  # lengths must not matter
    C = cosine_matrix(X)
    assert C.shape == (12, 12) and np.array_equal(C, C.T) and np.all(np.diag(C) == 1.0)
    assert C.min() >= -1 and C.max() <= 1
    assert np.isclose(C[0, 1], X[0] @ X[1] / np.linalg.norm(X[0]) / np.linalg.norm(X[1]))
    with pytest.raises(InputError, match="zero"):
        cosine_matrix(np.vstack([X, np.zeros(7)]))


def _naive(C, attrs, a):
    idx = [i for i, x in enumerate(attrs) if x == a]
    other = [i for i, x in enumerate(attrs) if x != a]
    within = np.mean([C[i, j] for i, j in itertools.permutations(idx, 2)])
    across = np.mean([C[i, j] for i in idx for j in other])
    return within, across


def test_consistency_is_high_for_clustered_directions():
    X, attrs = _clustered()
    res = consistency(X, attrs, n_boot=300, seed=0)
    C = cosine_matrix(X)
    for a in ("color", "shape", "size"):
        within, across = _naive(C, attrs, a)  # the vectorised pair sums equal the plain definition
        assert res[a]["within"] == pytest.approx(within) and res[a]["across"] == pytest.approx(across)
        assert res[a]["score"] > 0.5 and res[a]["ci_low"] > 0.3
        assert res[a]["ci_low"] <= res[a]["score"] <= res[a]["ci_high"] and res[a]["n"] == 8
    assert consistency(X, attrs, n_boot=300, seed=0) == res  # seeded bootstrap


def test_consistency_is_near_zero_for_random_directions():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(24, 256))
    attrs = ["a"] * 8 + ["b"] * 8 + ["c"] * 8
    res = consistency(X, attrs, n_boot=300, seed=0)
    # Cosines of random 256-d vectors have s.d. 1/16; a mean over 28 within-pairs has s.d. ≈ 0.012 and
    # over 128 across-pairs ≈ 0.006, so |score| < 0.05 is about 4 s.d. (and the seed is fixed).
    for a in "abc":
        assert abs(res[a]["score"]) < 0.05
        assert res[a]["ci_low"] < 0.05 and res[a]["ci_high"] > -0.05
    single = consistency(X[:3], ["a", "b", "b"], n_boot=50)
    assert np.isnan(single["a"]["within"]) and np.isnan(single["a"]["score"]) and np.isfinite(single["b"]["score"])


# ---------------------------------------------------------------------------------------------
# Projections and figures
# ---------------------------------------------------------------------------------------------


def test_pca_shapes_and_determinism():
    X, _ = _clustered()
    coords, evr = pca(X, 2)
    assert coords.shape == (24, 2) and evr.shape == (2,)
    assert evr[0] >= evr[1] > 0 and evr.sum() <= 1
    c2, e2 = pca(X, 2)
    assert np.array_equal(coords, c2) and np.array_equal(evr, e2)
    assert pca(X[:3], 10)[0].shape == (3, 3)  # clamped to min(n, d)
    with pytest.raises(InputError, match="at least 2"):
        pca(X[:1])


def test_figures_are_returned_not_shown():
    X, attrs = _clustered(per=4)
    res = consistency(X, attrs, n_boot=50)
    coords, _ = pca(X)
    for fig in (plot_projection(coords, attrs, values=[f"v{i}" for i in range(len(X))]),
                plot_cosine(cosine_matrix(X), attrs), plot_consistency(res)):
        assert isinstance(fig, Figure)
    fig = geometry_figure(X, [DirectionInfo(a, "x", "y") for a in attrs], use_umap=False)
    assert isinstance(fig, Figure) and [ax.get_title() for ax in fig.axes] == ["PCA"]
    fig.savefig(io.BytesIO(), format="png", dpi=40)  # drawing must work too, not only building
    with pytest.raises(InputError, match="points but"):
        plot_projection(coords, attrs[:-1])


def test_umap_is_seeded_and_handles_small_sets():
    pytest.importorskip("umap")
    X, attrs = _clustered(per=10)  # 30 points; the first call also pays numba's compile (cached on disk)
    a = umap(X, seed=0)
    assert a.shape == (30, 2) and np.isfinite(a).all()
    assert np.array_equal(a, umap(X, seed=0))
    assert not np.allclose(a, umap(X, seed=1))
    small = umap(X[:6], seed=0)  # n_neighbors clamps from 15 to 5
    assert small.shape == (6, 2) and np.array_equal(small, umap(X[:6], seed=0))
    with pytest.raises(InputError, match="at least 4"):
        umap(X[:3])
    fig = geometry_figure(X, attrs, seed=0, use_umap=True)
    assert [ax.get_title() for ax in fig.axes] == ["PCA", "UMAP (seed 0)"]


def test_direction_matrix_normalize_gives_unit_rows_and_equal_parts():
    g = torch.Generator().manual_seed(0)
    ds = [Direction(dc=torch.randn(3, 4, generator=g) * (10 if i == 0 else 1), dp=torch.randn(2, generator=g),
                    attribute="a" if i < 2 else "b", source="x", target="y", model_id="m") for i in range(4)]
    X, _ = direction_matrix(ds, "dc", normalize=True)
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0)
    Xr, _ = direction_matrix(ds, "dc")
    assert np.linalg.norm(Xr[0]) > 5 * np.linalg.norm(Xr[1])  # raw: one long direction dominates
    J, _ = direction_matrix(ds, "dc+dp", normalize=True)
    assert np.allclose(np.linalg.norm(J, axis=1), 1.0) and np.allclose(np.linalg.norm(J[:, :12], axis=1) ** 2, 0.5)
    zero = [Direction(dc=torch.zeros(3, 4), dp=torch.zeros(2), attribute="a", source="x", target="y", model_id="m")]
    with pytest.raises(InputError, match="zero vectors"):
        direction_matrix(zero + ds, "dc", normalize=True)


def test_direction_map_scales():
    from explore.views.session import DirectionMap

    g = torch.Generator().manual_seed(1)
    ds = [Direction(dc=torch.randn(3, 4, generator=g) * (10 if i == 0 else 1), dp=torch.randn(2, generator=g),
                    attribute="ab"[i % 2], source="x", target="y", model_id="m") for i in range(6)]
    m = DirectionMap(ds)
    unit, _ = m.coords("dc", "pca", "unit")
    raw, _ = m.coords("dc", "pca", "raw")
    assert unit.shape == raw.shape == (6, 2) and not np.allclose(unit, raw)
    assert m.coords("dc", "pca", "unit")[0] is unit  # cached
    with pytest.raises(InputError, match="scale"):
        m.coords("dc", "pca", "log")
