"""evaluate: per-item results, resume after a kill, identical results sharded and unsharded."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from explore.errors import InputError
from explore.evaluation.items import load_jsonl, shapes_benchmark, write_example_jsonl
from explore.evaluation.runner import evaluate, read_records

ARGS = ["--items", "6", "--methods", "dds,text", "--steps", "2", "--batch-size", "2", "--curve-n", "2",
        "--curve-strengths", "0.5,1", "--seed", "3"]


def _cli(out, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return [sys.executable, "-m", "explore", "evaluate", "--out", str(out), *ARGS, *extra], env


def _by_key(path):
    return {(r["id"], r["method"], r["strength"]): r for r in read_records(path)}


def test_benchmark_items_are_even_and_prefix_stable():
    items = shapes_benchmark(60, seed=1)
    assert [it.attribute for it in items[:6]] == ["shape", "color", "size", "hpos", "vpos", "background"]
    color = [(it.source, it.target) for it in items if it.attribute == "color"]
    assert len(set(color)) == len(color) == 10  # 30 ordered pairs, drawn without repeats
    small = shapes_benchmark(12, seed=1)
    assert [it.id for it in small] == [it.id for it in items[:12]]
    for it in items[:12]:
        assert it.labels[it.attribute] == it.source and it.mask.any()


def test_jsonl_format_round_trip(tmp_path):
    path = write_example_jsonl(tmp_path / "bench", n=3, seed=0)
    items = load_jsonl(path)
    assert len(items) == 3 and items[0].load_image().shape == (64, 64, 3) and items[0].load_mask().dtype == bool


def test_evaluate_writes_results_and_resumes_after_a_kill(shapes_pipe, tmp_path):
    # uninterrupted reference, in-process (cold text cache, as in the CLI processes: cached embeddings
    # computed in other batch shapes can differ in the last float bit)
    from explore.pipeline.latent import clear_text_cache

    clear_text_cache(shapes_pipe)
    items = shapes_benchmark(6, seed=3)
    ref = evaluate(shapes_pipe, items, tmp_path / "ref", ["dds", "text"], curve_n=2, curve_strengths=(0.5, 1.0),
                   batch_size=2, settings={"dds": {"steps": 2}, "text": {"steps": 2}}, progress=False)
    for key in ("explore_version", "model", "seed", "settings", "machine", "seconds", "benchmark", "n", "methods"):
        assert key in ref
    o = ref["methods"]["dds"]["overall"]
    assert set(o) == {"success", "retention", "sde", "recon_psnr", "recon_accuracy"}
    assert 0 <= o["sde"] <= 1 and 0 <= o["retention"] <= 1
    assert (tmp_path / "ref" / "results.md").is_file() and (tmp_path / "ref" / "curves.png").is_file()
    # a CLI run killed after its first records, then resumed, gives the same records
    out = tmp_path / "killed"
    cmd, env = _cli(out)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_records(out / "items.jsonl") if (out / "items.jsonl").exists()
                                           else []) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_records(out / "items.jsonl")
    assert 2 <= len(partial) < 18, "the kill should land mid-run"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the reference for "identical": the same command run uninterrupted (a separate process, like the resumed one)
    whole, env = _cli(tmp_path / "whole")
    subprocess.run(whole, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed, reference = _by_key(out / "items.jsonl"), _by_key(tmp_path / "whole" / "items.jsonl")
    assert resumed.keys() == reference.keys()
    for k, r in reference.items():
        for field in ("success", "retention", "sde", "recon_psnr"):
            assert resumed[k][field] == r[field], (k, field)
    res = json.loads((out / "results.json").read_text())
    ref_res = json.loads((tmp_path / "whole" / "results.json").read_text())
    for m in ("dds", "text"):  # every measured number (timings aside) is identical
        assert res["methods"][m]["overall"] == ref_res["methods"][m]["overall"]
    # and the in-process API agrees with the command line (up to float rounding across processes)
    inproc = _by_key(tmp_path / "ref" / "items.jsonl")
    assert inproc.keys() == reference.keys()
    for k, r in reference.items():
        assert inproc[k]["success"] == r["success"] and inproc[k]["sde"] == pytest.approx(r["sde"], abs=1e-3), k


def test_partial_last_line_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "a", "method": "m", "strength": 1.0}\n{"id": "b", "meth')
    with pytest.warns(UserWarning, match="partial last line"):
        assert len(read_records(path)) == 1
    assert path.read_text().count("\n") == 1


def test_sharded_run_equals_unsharded(tmp_path):
    pytest.importorskip("torch.distributed.run")
    one, env = _cli(tmp_path / "one")
    subprocess.run(one, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "explore", "evaluate",
           "--out", str(tmp_path / "two"), *ARGS]
    subprocess.run(two, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a, b = _by_key(tmp_path / "one" / "items.jsonl"), _by_key(tmp_path / "two" / "items.jsonl")
    assert a.keys() == b.keys() and not list((tmp_path / "two").glob("items.rank*.jsonl"))
    for k in a:
        for field in ("success", "retention"):
            assert a[k][field] == b[k][field]
        assert abs(a[k]["sde"] - b[k]["sde"]) < 1e-4
    res = json.loads((tmp_path / "two" / "results.json").read_text())
    assert res["settings"]["processes"] == 2


def test_a_jsonl_of_mixed_sizes_needs_resize_and_runs_with_it(tmp_path, tiny_sd3):
    """Mixed image sizes: a one-line error naming resize=, and with resize the metrics compare at the model size."""
    from PIL import Image

    from explore.errors import InputError
    from explore.evaluation.items import BenchItem
    from explore.evaluation.runner import evaluate
    from explore.evaluation.scorers import WorldScorer

    rng = np.random.default_rng(0)
    items = []
    for i, side in enumerate((32, 40)):
        img = (rng.random((side, side, 3)) * 255).astype(np.uint8)
        path = tmp_path / f"im{i}.png"
        Image.fromarray(img).save(path)
        m = np.zeros((side, side), bool)
        m[4:12, 4:12] = True
        items.append(BenchItem(id=f"it{i}", image=path, prompt="red car", attribute="color", source="red",
                               target="blue", mask=m, seed=i))
    scorer = WorldScorer("shapes")  # any scorer: it only has to read the images
    settings = {"dds": {"steps": 1, "t_render": 0.0}}
    with pytest.raises(InputError, match="resize"):
        evaluate(tiny_sd3, items, tmp_path / "a", ["dds"], scorer=scorer, settings=settings, curve_n=0,
                 progress=False, figures=False)
    res = evaluate(tiny_sd3, items, tmp_path / "b", ["dds"], scorer=scorer, settings=settings, curve_n=0,
                   progress=False, figures=False, resize=(32, 32))
    assert res["n"] == 2 and tuple(res["settings"]["resize"]) == (32, 32)


def test_items_without_masks_get_attention_masks_and_a_finite_sde(tmp_path, shapes_pipe):
    """A scorer that cannot find objects (like CLIP) and items without masks: SDE from the model's own attention."""
    from explore.evaluation.items import shapes_benchmark
    from explore.evaluation.runner import evaluate
    from explore.evaluation.scorers import Scorer, ShapesScorer

    class NoMasks(Scorer):  # reads like ShapesWorld's readers, but finds no objects (masks None)
        name = "no-masks"

        def __init__(self):
            self.inner = ShapesScorer()
            self.attributes = self.inner.attributes

        def probs(self, images, attribute):
            return self.inner.probs(images, attribute)

    items = shapes_benchmark(2, seed=5)
    for it in items:
        it.mask = None
    res = evaluate(shapes_pipe, items, tmp_path, ["dds"], scorer=NoMasks(), settings={"dds": {"steps": 2}},
                   curve_n=0, progress=False, figures=False)
    recs = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert all(r["mask"] == "attention" and r["sde"] is not None and np.isfinite(r["sde"]) for r in recs)
    assert res["methods"]["dds"]["overall"]["sde"] is not None
    # the velocity difference as the mask source: another configuration (a folder of its own)
    from explore.errors import RunMismatchError

    with pytest.raises(RunMismatchError, match='masks "\\(absent\\)" in the folder, "velocity" asked'):
        evaluate(shapes_pipe, items, tmp_path, ["dds"], scorer=NoMasks(), settings={"dds": {"steps": 2}},
                 curve_n=0, progress=False, figures=False, masks="velocity")
    with pytest.raises(InputError, match="masks must be one of"):
        evaluate(shapes_pipe, items, tmp_path / "v", ["dds"], scorer=NoMasks(), masks="exact")
    evaluate(shapes_pipe, items, tmp_path / "v", ["dds"], scorer=NoMasks(), settings={"dds": {"steps": 2}},
             curve_n=0, progress=False, figures=False, masks="velocity")
    vel = [json.loads(x) for x in (tmp_path / "v" / "items.jsonl").read_text().splitlines()]
    assert all(r["mask"] == "velocity" and np.isfinite(r["sde"]) for r in vel)
    assert [r["success"] for r in vel] == [r["success"] for r in recs]  # the same edits, another mask
    assert json.loads((tmp_path / "v" / "run.json").read_text())["masks"] == "velocity"


def test_attention_mask_study_reports_iou_per_factor_and_setting(shapes_pipe, tmp_path):
    from explore.interp.studies import attention_mask_study

    res = attention_mask_study(shapes_pipe, n=2, seed=1, timesteps=(0.5,), out=tmp_path, progress=False)
    assert set(res["iou"]) >= {"shape", "color", "background"}
    vals = [v for per in res["iou"].values() for v in per.values()]
    assert all(0.0 <= v <= 1.0 for v in vals) and res["best"] in res["mean_over_object_factors"]
    assert res["default"]["object"] == "transformer_blocks.2 all t" and 0.0 <= res["default_iou"]["object"] <= 1.0
    assert (tmp_path / "attention_masks.md").read_text().startswith("# Attention masks")


def test_caption_directions_follow_each_items_own_caption_and_keep_their_own_records(shapes_pipe, tmp_path):
    """``directions="caption"``: the edit follows E(caption with the edit made) - E(caption); its
    records are marked, and a folder holds one kind: neither resumed from nor mixed with the other."""
    from explore.evaluation.runner import item_direction
    from explore.pipeline.latent import encode_text

    items = shapes_benchmark(2, seed=5)
    d = item_direction(shapes_pipe, items[0], "caption")
    c, p = encode_text(shapes_pipe, [items[0].prompt, items[0].edited_prompt()])
    assert torch.allclose(d.dc, (c[1] - c[0]).float()) and torch.allclose(d.dp, (p[1] - p[0]).float())
    t = item_direction(shapes_pipe, items[0], "template")
    assert t.metadata["n_templates"] == 32 and not torch.allclose(t.dc, d.dc)
    with pytest.raises(InputError, match="directions must be one of"):
        item_direction(shapes_pipe, items[0], "own")
    kw = dict(curve_n=0, batch_size=2, settings={"text": {"steps": 2}}, progress=False, figures=False)
    tmpl = evaluate(shapes_pipe, items, tmp_path, ["text"], directions="template", **kw)
    # the kind of direction is part of a folder's configuration: never resumed from, nor mixed with,
    # the other kind's records (a folder of template records refuses a caption run)
    from explore.errors import RunMismatchError

    with pytest.raises(RunMismatchError, match="directions"):
        evaluate(shapes_pipe, items, tmp_path, ["text"], directions="caption", **kw)
    cap = evaluate(shapes_pipe, items, tmp_path / "caption", ["text"], directions="caption", **kw)
    recs = read_records(tmp_path / "items.jsonl") + read_records(tmp_path / "caption" / "items.jsonl")
    assert sorted(r["directions"] for r in recs) == ["caption", "caption", "template", "template"]
    assert cap["settings"]["directions"] == "caption" and tmpl["settings"]["directions"] == "template"
    again = evaluate(shapes_pipe, items, tmp_path, ["text"], directions="template", **kw)  # resumes: nothing new
    assert len(read_records(tmp_path / "items.jsonl")) == 2
    assert again["methods"]["text"]["overall"] == tmpl["methods"]["text"]["overall"]
    # the default is the caption direction (decided by measurement, docs/results/identify.md)
    default = evaluate(shapes_pipe, items, tmp_path / "default", ["text"], **kw)
    assert default["settings"]["directions"] == "caption"
    assert default["methods"]["text"]["overall"] == cap["methods"]["text"]["overall"]
