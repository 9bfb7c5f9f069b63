"""`python -m explore bench`: the measurement harness itself (numbers are hardware-dependent, shapes are not)."""

import json

import pytest

from explore.cli import main
from explore.evaluation.perf import run_bench


@pytest.mark.parametrize("fixture", ["tiny_sd3", "tiny_flux"])
def test_bench_measures_in_interleaved_rounds(request, fixture):
    pipe = request.getfixturevalue(fixture)
    res = run_bench(pipe, repeat=2, sweep_n=2, steps=2, preserve_count=2)
    # the raw forward runs at exactly the batch one HSDS step sends through the transformer
    assert res["hsds_sequences_per_step"] == pytest.approx(res["batch"])
    # max(3, 2 * repeat) rounds of 2 * repeat raw forwards and 2 * repeat loop steps each
    assert len(res["step_over_raw_rounds"]) == 4 and res["round_calls"] == 4 and len(res["edit_s_runs"]) == 2
    assert min(res["step_over_raw_rounds"]) <= res["step_over_raw"] <= max(res["step_over_raw_rounds"])
    for key in ("raw_forward_ms", "hsds_step_ms", "edit_s", "sweep_batched_s", "sweep_sequential_s", "generate_s",
                "peak_mem_gb"):
        assert res[key] > 0, key
    assert res["settings"]["preserve_count"] == 2 and res["machine"]


def test_bench_command_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--model", "tiny-sd3", "--repeat", "1", "--sweep-n", "2", "--steps", "1", "--out",
                 str(out)]) == 0
    res = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert res["step_over_raw"] > 0 and "step_over_raw" in printed
    # the cost of one full edit with every method, in seconds and transformer sequences
    from explore.editing.methods import METHODS

    assert list(res["per_method"]) == list(METHODS)
    assert all(r["evaluations"] > 0 and r["seconds"] > 0 for r in res["per_method"].values())
    assert "flowedit:" in printed and "transformer sequences per edit" in printed


def test_measure_latency_keys(tiny_sd3):
    import warnings

    from explore.evaluation.perf import measure_latency

    grid = (0.0, 1.0, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = measure_latency(tiny_sd3, settings={"steps": 2, "t_render": 0.1}, strengths=grid, repeats=1)
    for k in ("cached_move_s", "cached_move_max_s", "fresh_edit_s", "sweep_s"):
        assert out[k] is not None and out[k] >= 0
    assert out["strengths"] == list(grid)


def test_gpu_check_script_runs_on_cpu_with_tiny_models(tmp_path):
    """scripts/gpu_check.sh is the prepared GPU check; on the CPU with --tiny it runs the same path (CI)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--out",
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(summary["models"]) == {"tiny-sd3", "tiny-sd3.5", "tiny-flux", "tiny-flux2", "tiny-flux2-dev",
                                      "tiny-qwen-image", "tiny-z-image"}  # every family
    assert summary["failed"] == []
    for r in summary["models"].values():
        assert r["raw_forward_ms"] > 0 and r["edit_s"] > 0 and r["evaluations_per_edit"] > 0
