"""Hyper-parameter sensitivity (`explore.evaluation.sensitivity`): grids, resume, the figure."""

from __future__ import annotations

import json

import pytest

from explore.errors import InputError
from explore.evaluation import runner
from explore.evaluation.sensitivity import GRIDS, sensitivity_study

GRID = {"text": {"t_render": [0.45, 0.6]}, "unieditflow": {"alpha": [0.6, 1.0], "omega": [1.0]}}


def test_a_grid_is_measured_saved_and_resumed(shapes_pipe, tmp_path, monkeypatch):
    res = sensitivity_study(shapes_pipe, methods=["text", "unieditflow"], n=2, grids=GRID, out=tmp_path,
                            progress=False)
    text, uni = res["results"]["text"], res["results"]["unieditflow"]
    assert set(text) == {"t_render=0.45", "t_render=0.6"} and set(uni) == {"alpha=0.6,omega=1.0",
                                                                       "alpha=1.0,omega=1.0"}
    assert uni["alpha=1.0,omega=1.0"]["nfe"] > uni["alpha=0.6,omega=1.0"]["nfe"]  # inverts further
    assert res["defaults"]["text"] == {"t_render": 0.6} and res["seed"] == 1000
    assert all(0 <= c["success"] <= 1 and 0 <= c["retention"] <= 1 for c in [*text.values(), *uni.values()])
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    assert saved["results"] == res["results"] and (tmp_path / "sensitivity.png").stat().st_size > 0
    assert "| text | **t_render=0.6** |" in (tmp_path / "sensitivity.md").read_text()  # the default in bold

    def no_work(*a, **k):
        raise AssertionError("a measured cell ran again")

    monkeypatch.setattr(runner, "run_batch", no_work)
    again = sensitivity_study(shapes_pipe, methods=["text", "unieditflow"], n=2, grids=GRID, out=tmp_path,
                              progress=False)
    assert again["results"] == res["results"]  # resumed: nothing re-run, the same numbers
    with pytest.raises(AssertionError, match="ran again"):  # another n is another study
        sensitivity_study(shapes_pipe, methods=["text"], n=3, grids=GRID, out=tmp_path, progress=False)


def test_sensitivity_refuses_what_it_cannot_measure(shapes_pipe, tiny_sd3):
    with pytest.raises(InputError, match="no grid"):
        sensitivity_study(shapes_pipe, methods=["nope"], n=1)
    with pytest.raises(InputError, match="embedded world"):
        sensitivity_study(tiny_sd3, n=1)
    with pytest.raises(InputError):
        sensitivity_study(shapes_pipe, methods=["text"], n=1, grids={"text": {"no_such_setting": [1]}})
    assert {"hsds", "flowalign", "unieditflow", "rf-inversion"} <= set(GRIDS)


def test_the_command_refuses_a_method_without_a_grid(capsys):
    from explore.cli import main

    assert main(["sensitivity", "--methods", "nope"]) not in (0, None)
    assert "no sensitivity grid for --methods ['nope']" in capsys.readouterr().err


def test_a_rerun_keeps_other_methods_and_remeasures_cells_whose_settings_changed(shapes_pipe, tmp_path, monkeypatch):
    grid = {"text": {"t_render": [0.6]}, "image": {"t_render": [0.45]}}
    first = sensitivity_study(shapes_pipe, methods=["text", "image"], n=2, grids=grid, out=tmp_path, progress=False)
    sensitivity_study(shapes_pipe, methods=["text"], n=2, grids=grid, out=tmp_path, progress=False)  # a subset
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    assert saved["results"]["image"] == first["results"]["image"]  # not dropped
    ran = []
    original = runner.run_batch

    def counting(*a, **k):
        ran.append(a[2])
        return original(*a, **k)

    monkeypatch.setattr(runner, "run_batch", counting)
    from explore.editing import settings as S

    monkeypatch.setitem(S.METHOD_DEFAULTS, "text", {**S.METHOD_DEFAULTS["text"], "steps": 3})  # a new default
    sensitivity_study(shapes_pipe, methods=["text"], n=2, grids=grid, out=tmp_path, progress=False)
    assert ran == ["text"]  # the cell ran with other settings than today's: measured again
