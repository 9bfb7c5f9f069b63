"""The causal studies (`explore.interp.causal`) on ShapesWorld: tiny runs that check what they report."""

from __future__ import annotations

import json

import pytest

from explore.errors import InputError
from explore.interp.causal import causal_trace_study, vital_blocks_study


def test_causal_trace_reports_shares_and_a_window_outside_every_step_restores_nothing(shapes_pipe, tmp_path):
    res = causal_trace_study(shapes_pipe, ["color"], n=3, seed=1000, windows=[(0.0, 0.01), (0.0, 1.0)], steps=2,
                             out=tmp_path, progress=False)
    r = res["factors"]["color"]
    assert 0 < r["n_valid"] <= 3 and set(r["restored"]) == set(res["sites"])  # seeded: 2 of 3 edits exist
    for site in res["sites"]:
        outside, whole = r["restored"][site]["0-0.01"], r["restored"][site]["0-1"]
        if r["n_valid"]:
            assert outside == 0 and r["necessary"][site]["0-0.01"] == 0  # no step has t <= 0.01: nothing patched
            assert 0 <= whole <= 1
    for name in ("causal_trace.json", "causal_trace.md", "causal_trace.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "causal_trace.json").read_text())["world"] == "shapes"
    with pytest.raises(InputError, match="unknown factor"):
        causal_trace_study(shapes_pipe, ["colour"], n=1)


def test_vital_blocks_bypass_every_block(shapes_pipe, tmp_path):
    res = vital_blocks_study(shapes_pipe, n=2, seed=1000, steps=2, out=tmp_path, progress=False)
    assert res["blocks"] == [f"transformer_blocks.{i}" for i in range(6)]
    for b in res["blocks"]:
        assert res["pixel_change"][b] > 0  # every bypass changes the image
        assert all(v is None or 0 <= v <= 1 for v in res["change"][b].values())
    assert set(res["vital"]) == set(res["reference_accuracy"])
    assert (tmp_path / "vital_blocks.png").stat().st_size > 0


def test_the_cli_runs_both(tmp_path):
    from explore.cli import main

    assert main(["vital-blocks", "--n", "1", "--steps", "2", "--out", str(tmp_path / "v")]) in (0, None)
    assert main(["causal-trace", "--n", "1", "--steps", "2", "--factors", "size", "--windows", "0-1",
                 "--out", str(tmp_path / "c")]) in (0, None)
    assert (tmp_path / "c" / "causal_trace.md").exists() and (tmp_path / "v" / "vital_blocks.md").exists()


def test_the_lens_of_the_last_block_is_the_models_prediction(shapes_pipe):
    import random

    import numpy as np
    import torch

    from explore.interp.lens import BASELINE, image_sites, lens
    from explore.pipeline.latent import decode, encode, flow_noise, velocity
    from explore.pipeline.sampling import seeded_noise
    from explore.worlds import world_of

    world = world_of(shapes_pipe)

    scene = world.sample(random.Random(0))
    latent = encode(shapes_pipe, world.render(scene, 64), world.caption(scene, template=0))
    names, images = lens(shapes_pipe, latent, t=0.6, seed=3)
    assert names == [BASELINE, *image_sites(shapes_pipe)] and images.shape == (len(names), 64, 64, 3)
    z_t = flow_noise(latent.z.float(), seeded_noise(latent.z.shape[1:], [3], "cpu"), 0.6)
    v = velocity(shapes_pipe, z_t, torch.tensor([0.6]), latent.c, latent.p, guidance=1.0)
    model = decode(shapes_pipe, z_t - 0.6 * v, "np")[0]
    assert np.abs(images[-1] - model).max() < 1e-6  # the last block's lens: the model's own prediction
    assert np.abs(images[0] - decode(shapes_pipe, z_t, "np")[0]).max() < 1e-6  # the baseline row: z_t itself
    assert np.abs(images[1] - images[-1]).mean() > 0.01  # an early block sees less


def test_lens_study_writes_its_tables(shapes_pipe, tmp_path):
    from explore.interp.lens import lens_study

    res = lens_study(shapes_pipe, n=1, seed=1000, timesteps=(0.5,), out=tmp_path, progress=False)
    acc = res["accuracy"]["0.5"]
    assert list(acc) == res["sites"] and all(0 <= v <= 1 for per in acc.values() for v in per.values())
    for name in ("lens.json", "lens.md", "lens.png", "lens_example.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_readable_vs_causal_puts_probe_accuracy_beside_restoration(shapes_pipe):
    import random

    from explore.interp.causal import readable_vs_causal
    from explore.interp.probe import collect, probe_all
    from explore.shapes.world import sample_scene

    rng = random.Random(0)
    sites = ["transformer_blocks.0.img", "transformer_blocks.0.txt"]
    probes = probe_all(collect(shapes_pipe, [sample_scene(rng) for _ in range(32)], sites=sites, timesteps=(0.5,),
                               progress=False))
    trace = {"world": "shapes", "seed": 1, "sites": sites + ["transformer_blocks.1.img"], "factors": {
        "hpos": {"n_valid": 4, "restored": {"transformer_blocks.0.img": {"0.67-1": 1.0, "0-0.33": 0.25},
                                            "transformer_blocks.0.txt": {"0.67-1": None, "0-0.33": None},
                                            "transformer_blocks.1.img": {"0.67-1": 0.5, "0-0.33": 0.0}}},
        "weight": {"n_valid": 1, "restored": {}}}}
    md = readable_vs_causal(probes, trace)
    acc = probes.best_over_t("hpos", "transformer_blocks.0.img")[1]
    assert f"| transformer_blocks.0.img | {100 * acc:.0f} % (" in md and "| 100 % (t 0.67-1) |" in md
    assert "| transformer_blocks.0.txt |" in md and md.count("| – |") == 1  # no valid window: a dash
    assert "transformer_blocks.1.img" not in md and "weight" not in md  # not probed: left out
