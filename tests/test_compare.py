import json

import pytest

from explore.cli import main
from explore.errors import InputError
from explore.evaluation.compare import compare, compare_markdown, load_results


def _res(seed, success, nfe):
    def m(s):
        return {"overall": {"success": s, "retention": 0.9, "sde": 0.5}, "evaluations_per_item": nfe,
                "calls_per_batch": 24, "seconds_per_item": 0.5,
                "per_attribute": {"color": {"success": s, "retention": 1.0, "sde": 0.4}},
                "retention_parts": {"same_object": 1.0, "other_objects": None, "scene": 1.0}}
    return {"seed": seed, "n": 10, "benchmark": "shapes", "model": "shapes",
            "methods": {"hsds": m(success), "dds": m(0.5), **({"only-here": m(0.1)} if seed == 1 else {})}}


def test_compare_puts_runs_side_by_side():
    cmp = compare([_res(1, 0.25, 90), _res(2, 0.75, 110)])
    assert list(cmp["methods"]) == ["hsds", "dds"]  # only methods every run has
    assert cmp["methods"]["hsds"]["nfe"] == 100
    md = compare_markdown(cmp)
    assert "| hsds | 0.25 / 0.75 | 0.90 / 0.90 | 0.50 / 0.50 | 100 | 24 | 0.50 / 0.50 |" in md
    assert "0.25 / 0.75 · 1.00 / 1.00" in md


def test_compare_labels_runs_by_the_settings_that_differ():
    """Two direction kinds on one seed are told apart; two seeds with equal settings are just seeds."""
    a, b = _res(2, 0.1, 90), _res(2, 0.9, 90)
    a["settings"], b["settings"] = {"strength": 1.0}, {"strength": 1.0, "directions": "caption"}
    md = compare_markdown(compare([a, b]))
    assert md.startswith("Each cell: seed 2, directions template / seed 2, directions caption")
    assert compare_markdown(compare([_res(1, 0.2, 90), _res(2, 0.2, 90)])).startswith("Each cell: seed 1 / seed 2 ")


def test_compare_command_writes_tables_and_figure(tmp_path, capsys):
    for s in (1, 2):
        (tmp_path / f"r{s}").mkdir()
        (tmp_path / f"r{s}" / "results.json").write_text(json.dumps(_res(s, 0.5, 100)))
    assert main(["compare", str(tmp_path / "r1"), str(tmp_path / "r2" / "results.json"),
                 "--out", str(tmp_path / "cmp")]) in (0, None)
    assert (tmp_path / "cmp" / "pareto.png").stat().st_size > 1000
    assert "seed 1 / seed 2" in (tmp_path / "cmp" / "compare.md").read_text()
    # runs with different settings are not averaged into one cost figure: one figure per setting
    for s, kind in ((3, "template"), (4, "caption")):
        r = _res(2, 0.5, 100)
        r["settings"] = {"directions": kind}
        (tmp_path / f"r{s}").mkdir()
        (tmp_path / f"r{s}" / "results.json").write_text(json.dumps(r))
    assert main(["compare", str(tmp_path / "r3"), str(tmp_path / "r4"), "--out", str(tmp_path / "c2")]) in (0, None)
    assert sorted(p.name for p in (tmp_path / "c2").glob("*.png")) == [
        "pareto_directions-caption.png", "pareto_directions-template.png"]


def test_compare_rejects_what_is_not_a_result(tmp_path):
    with pytest.raises(InputError, match="no evaluate results"):
        load_results([tmp_path / "missing.json"])
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InputError, match="not an evaluate results file"):
        load_results([tmp_path / "x.json"])
