"""The main job and the ShapesWorld studies, at small sizes."""

import json

import numpy as np
import pytest

from explore.demo import demo
from explore.errors import InputError
from explore.interp.probe import ActivationDataset
from explore.interp.studies import geometry_study, probe_study, representation_study


def test_demo_writes_table_summary_and_picture(shapes_pipe, tmp_path, capsys):
    res = demo(shapes_pipe, out=tmp_path, strengths=(1.0, 2.0), progress=False, steps=6)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert len(s["edits"]) == 6 and {e["attribute"] for e in s["edits"]} == {
        "shape", "color", "size", "hpos", "vpos", "background"}
    for e in s["edits"]:
        assert set(e) >= {"attribute", "from", "to", "method", "success", "retention", "seconds"}
        assert 0 <= e["retention"] <= 1 and e["success"] in (0.0, 1.0)
    assert s["settings"]["steps"] == 6 and res["mean"] == s["mean"]
    assert (tmp_path / "edits.png").is_file()
    assert "retention" in capsys.readouterr().out


def test_probe_study_small(shapes_pipe, tmp_path):
    res = probe_study(shapes_pipe, n=48, out=tmp_path, timesteps=(0.5,), progress=False)
    data = json.loads((tmp_path / "probe.json").read_text())
    assert set(data["accuracy"]) == {"shape", "color", "size", "hpos", "vpos", "background"}
    assert data["sites"] == res["sites"] and "transformer_blocks.0.img" in data["sites"]
    assert max(data["accuracy"]["background"].values()) > 0.6  # well above chance (1/3) even at n=48
    assert (tmp_path / "probe.png").is_file()


def test_probe_study_image_only(shapes_pipe, tmp_path):
    """captions="empty": every render with the empty prompt; the image stream alone still carries the factors."""
    res = probe_study(shapes_pipe, n=48, out=tmp_path, timesteps=(0.5,), progress=False, captions="empty")
    manifest = json.loads((tmp_path / "activations" / "manifest.json").read_text())
    assert set(manifest["prompts"]) == {""} and res["settings"]["captions"] == "empty"
    img_sites = [s for s in res["sites"] if s.endswith(".img")]
    assert max(res["accuracy"]["background"][s] for s in img_sites) > 0.6


def test_geometry_study_small(shapes_pipe, tmp_path):
    res = geometry_study(shapes_pipe, n=3, out=tmp_path, progress=False, steps=4)
    data = json.loads((tmp_path / "geometry.json").read_text())
    assert set(data["consistency"]) == {"text", "hsds_dz"}
    assert set(data["consistency"]["text"]) == {"shape", "color", "size", "hpos", "vpos", "background"}
    assert res["_arrays"]["dz"].shape[0] == 18
    assert (tmp_path / "geometry.png").is_file()


def test_representation_study_ranks_factors_against_sde(tmp_path):
    """A code that carries factor a cleanly, b noisily and c not at all: per-factor MIG / SAP follow
    a > b > c, and against an SDE ranking in the same order Spearman's ρ is +1 (reversed: -1)."""
    rng = np.random.default_rng(0)
    n = 600
    lab = {k: rng.integers(0, 3, n) for k in "abc"}
    # distinct variances, so the principal axes are the columns themselves
    F = np.stack([3 * lab["a"] + 0.03 * rng.normal(size=n), lab["b"] + 0.45 * rng.normal(size=n),
                  0.1 * rng.normal(size=n), 0.08 * rng.normal(size=n)], axis=1)
    data = ActivationDataset({("site0", 0.5): F}, {k: [str(v) for v in x] for k, x in lab.items()},
                             prompts=[""] * n, model_id="synthetic", settings={"seed": 0})
    results = {"seed": 7, "methods": {
        "good": {"per_attribute": {"a": {"sde": 0.9}, "b": {"sde": 0.5}, "c": {"sde": 0.1}}},
        "bad": {"per_attribute": {"a": {"sde": 0.1}, "b": {"sde": 0.5}, "c": {"sde": 0.9}}}}}
    res = representation_study(data, [results], n_components=4, out=tmp_path)
    pf = res["per_site"]["site0"]["per_factor"]
    assert pf["a"]["mig"] > pf["b"]["mig"] > pf["c"]["mig"] and pf["c"]["mig"] < 0.05
    assert pf["a"]["sap"] > pf["b"]["sap"] > pf["c"]["sap"]
    rho = res["ranking"]["seed 7"]
    assert rho["good"]["spearman"]["site0"]["mig"] == pytest.approx(1.0)
    assert rho["bad"]["spearman"]["site0"]["mig"] == pytest.approx(-1.0)
    assert res["settings"]["captions"] == "empty"
    assert (tmp_path / "representation.json").is_file() and "ρ MIG" in (tmp_path / "representation.md").read_text()
    with pytest.raises(InputError, match="no results file"):
        representation_study(data, [tmp_path / "missing.json"])

def test_representation_study_scores_factors_some_items_lack(tmp_path):
    """A two-object world's labels: ``x.color`` is empty on items without an ``x``. Those factors are
    scored on the items that carry them (groups by the factors present), not dropped."""
    rng = np.random.default_rng(1)
    n = 600
    has_x = np.arange(n) % 3 != 0  # a third of the items have no object x
    a = rng.integers(0, 3, n)
    xc = rng.integers(0, 3, n)
    F = np.stack([2 * a + 0.05 * rng.normal(size=n), np.where(has_x, 3 * xc, 0) + 0.05 * rng.normal(size=n),
                  0.1 * rng.normal(size=n)], axis=1)
    labels = {"a": [str(v) for v in a], "x.color": [str(v) if h else "" for v, h in zip(xc, has_x)]}
    data = ActivationDataset({("site0", 0.5): F}, labels, prompts=[""] * n, model_id="synthetic",
                             settings={"seed": 0})
    results = {"seed": 3, "methods": {"m": {"per_attribute": {"a": {"sde": 0.2}, "x.color": {"sde": 0.8}}}}}
    res = representation_study(data, [results], n_components=3, out=tmp_path)
    assert res["factors"] == ["a", "x.color"]
    assert sorted((g["n"], tuple(g["factors"])) for g in res["groups"]) == [(200, ("a",)), (400, ("a", "x.color"))]
    pf = res["per_site"]["site0"]["per_factor"]
    assert pf["x.color"]["mig"] > 0.5 and pf["a"]["mig"] > 0.5  # both carried cleanly by one code each
    assert res["ranking"]["seed 3"]["m"]["sde"] == {"a": 0.2, "x.color": 0.8}
    with pytest.raises(InputError, match="unknown sites"):
        representation_study(data, sites=["nope"])
