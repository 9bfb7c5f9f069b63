"""The command line answers bad invocations with one line and a non-zero exit code (no traceback)."""

import json

import numpy as np
import pytest
from PIL import Image

from explore.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    from explore.shapes.world import Scene, render

    Image.fromarray(render(Scene("circle", "red", "large", "center", "middle", "gray"))).save(d / "src.png")
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(d / "odd.png")
    (d / "empty.png").write_bytes(b"")
    (d / "corrupt.png").write_bytes(b"this is not an image")
    (d / "bad.jsonl").write_text('{"image": "x.png"\n{"also": "bad"}\n')
    item = {"image": "corrupt.png", "prompt": "a red circle", "attribute": "color", "source": "red", "target": "blue"}
    (d / "corrupt_item.jsonl").write_text(json.dumps(item) + "\n")
    (d / "attrs.json").write_text(json.dumps({"color": ["red"]}))
    (d / "folder.png").mkdir()  # an output path that is a folder
    (d / "clash.json").mkdir()  # edit --out clash.png writes clash.json: a folder is in the way
    acts = d / "acts"  # a (complete, empty) activation dataset: the manifest is all `representation` reads first
    acts.mkdir()
    (acts / "manifest.json").write_text(json.dumps({
        "format": "explore.activations/1", "n": 0, "n_batches": 0, "shards": {}, "labels": {},
        "settings": {"pool": "mean", "sites": ["block0.image"], "timesteps": [0.5]}}))
    return d


SRC = "a large red circle at the middle center on a gray background"


def under_file(f, name="out"):
    """A path whose parent is a regular file: unwritable for everyone, root included (tests run as root in CI)."""
    return str(f / "src.png" / name)


def edit(files, *extra, image="src.png"):
    return ["edit", "--image", str(files / image), "--prompt", SRC, "--edit", "red->blue",
            "--out", str(files / "out.png"), "--steps", "2", *extra]


BAD = [
    # (argv builder, message fragment)
    (lambda f: ["frobnicate"], "invalid choice"),
    (lambda f: ["edit", "--prompt", SRC, "--edit", "red->blue"], "required: --image"),
    (lambda f: edit(f, "--edit", "redblue"), "--edit must look like 'red->blue'"),
    (lambda f: edit(f, image="missing.png"), "no image file at"),
    (lambda f: edit(f, image="empty.png"), "is empty"),
    (lambda f: edit(f, image="corrupt.png"), "cannot read image"),
    (lambda f: edit(f, "--prompt", "   "), "--prompt is empty"),
    (lambda f: edit(f, "--method", "magic"), "unknown method 'magic'"),
    (lambda f: edit(f, "--strength", "nan"), "strength must be a finite number"),
    (lambda f: edit(f, "--steps", "-3"), "steps must be a non-negative integer"),
    (lambda f: edit(f, "--edit", "red->pink"), "no ShapesWorld attribute has both 'red' and 'pink'"),
    (lambda f: edit(f, "--attribute", "hue"), "unknown attribute 'hue'"),
    (lambda f: edit(f, "--preserve", "shapes"), "unknown attribute 'shapes' to preserve"),
    (lambda f: edit(f, "--preserve", "color"), "cannot preserve 'color'"),
    (lambda f: edit(f, "--out", str(f / "result.gif")), "--out must end in .png or .jpg"),
    (lambda f: edit(f, image="odd.png"), "multiples of 8"),
    (lambda f: edit(f, "--model", str(f / "no" / "such" / "model")), "no folder at"),
    (lambda f: edit(f, "--model", "nobody/no-such-model"), "could not load 'nobody/no-such-model'"),
    (lambda f: edit(f, "--dtype", "fp64"), "--dtype must be one of"),
    (lambda f: edit(f, "--device", "cuda"), "no CUDA GPU is visible"),
    (lambda f: edit(f, "--dtype", "fp16"), "fp16 does not run on the CPU"),
    (lambda f: edit(f, "--t-render", "1.5"), "t_render must be <= 1"),
    (lambda f: edit(f, "--lr", "inf"), "lr must be a finite number"),
    (lambda f: edit(f, "--guidance", "-1"), "guidance must be >= 0"),
    (lambda f: edit(f, "--sweep", "a,b"), "--sweep must be comma-separated numbers"),
    (lambda f: edit(f, "--resize", "stretch"), "invalid choice: 'stretch'"),
    (lambda f: ["evaluate", "--n", "0", "--out", str(f / "ev")], "--n must be at least 1"),
    (lambda f: ["evaluate", "--n", "2", "--methods", "hsds,magic", "--out", str(f / "ev")], "unknown method 'magic'"),
    (lambda f: ["evaluate", "--benchmark", str(f / "missing.jsonl"), "--out", str(f / "ev")], "no benchmark file"),
    (lambda f: ["evaluate", "--benchmark", str(f / "bad.jsonl"), "--out", str(f / "ev")], "is not valid JSON"),
    (lambda f: ["probe", "--n", "4", "--out", str(f / "pr")], "at least 16"),
    (lambda f: ["probe", "--pool", "object", "--out", str(f / "pr")], "--pool object needs a two-object world"),
    (lambda f: ["geometry", "--n", "1", "--out", str(f / "ge")], "at least 2"),
    (lambda f: ["representation", "--activations", str(f / "none"), "--out", str(f / "re")],
     "no activation dataset at"),
    (lambda f: ["directions", "--model", "tiny-sd3", "--out", str(f / "di")], "pass --edit"),
    (lambda f: ["bench", "--device", "cuda", "--out", str(f / "b.json")], "no CUDA GPU"),
    (lambda f: ["generate", "--prompt", "a red circle", "--n", "0", "--out", str(f / "g.png")],
     "--n must be at least 1"),
    (lambda f: ["train-shapes", "--steps", "0", "--out", str(f / "m")], "--steps must be a positive integer"),
    (lambda f: ["demo", "--model", "tiny-sd3", "--out", str(f / "demo")], "the demo runs on ShapesWorld"),
    # --- checked before any model is loaded (see test_rejected_invocations_load_nothing) ---
    # edit
    (lambda f: edit(f, "--out", under_file(f, "x.png")), "is a file, not a folder"),
    (lambda f: edit(f, "--out", str(f / "folder.png")), "it is a folder"),
    (lambda f: edit(f, "--out", str(f / "clash.png")), "cannot write the output JSON"),
    (lambda f: edit(f, "--sweep", "1,nan"), "--sweep must be finite numbers"),
    (lambda f: edit(f, "--strength", "inf"), "strength must be a finite number"),
    (lambda f: edit(f, "--preserve", "shape,"), "--preserve has an empty item"),
    (lambda f: edit(f, "--preserve", "circle->pink"), "no ShapesWorld attribute has both 'circle' and 'pink'"),
    (lambda f: edit(f, "--model", "tiny-sd3", "--preserve", "shape"), "attribute names work on ShapesWorld"),
    (lambda f: edit(f, "--model", "tiny-sd3", "--prompt", "a blue square"), "the prompt does not mention 'red'"),
    (lambda f: edit(f, "--device", "gpu"), "--device must be cpu or cuda"),
    (lambda f: edit(f, "--image", str(f)), "no image file at"),
    # generate
    (lambda f: ["generate", "--prompt", "a red circle", "--out", str(f / "g.gif")], "--out must end in .png or .jpg"),
    (lambda f: ["generate", "--prompt", " ", "--out", str(f / "g.png")], "--prompt is empty"),
    (lambda f: ["generate", "--prompt", "a red circle", "--steps", "0", "--out", str(f / "g.png")],
     "--steps must be at least 1"),
    (lambda f: ["generate", "--prompt", "a red circle", "--guidance", "nan", "--out", str(f / "g.png")],
     "--guidance must be a finite number"),
    (lambda f: ["generate", "--prompt", "a red circle", "--out", under_file(f, "g.png")], "is a file, not a folder"),
    (lambda f: ["generate", "--prompt", "a red circle", "--device", "cuda", "--out", str(f / "g.png")],
     "no CUDA GPU is visible"),
    # demo
    (lambda f: ["demo", "--method", "magic", "--out", str(f / "demo")], "unknown method 'magic'"),
    (lambda f: ["demo", "--strengths", "1,inf", "--out", str(f / "demo")], "--strengths must be finite numbers"),
    (lambda f: ["demo", "--out", str(f / "src.png")], "it is a file, not a folder"),
    # directions
    (lambda f: ["directions", "--n", "0", "--out", str(f / "di")], "--n must be at least 1"),
    (lambda f: ["directions", "--edit", "redblue", "--out", str(f / "di")], "--edit must look like 'red->blue'"),
    (lambda f: ["directions", "--edit", "red->pink", "--out", str(f / "di")], "no ShapesWorld attribute has both"),
    (lambda f: ["directions", "--out", under_file(f)], "is a file, not a folder"),
    # evaluate
    (lambda f: ["evaluate", "--strength", "nan", "--out", str(f / "ev")], "strength must be a finite number"),
    (lambda f: ["evaluate", "--curve-strengths", "1,nan", "--out", str(f / "ev")],
     "--curve-strengths must be finite numbers"),
    (lambda f: ["evaluate", "--curve-n", "-1", "--out", str(f / "ev")], "--curve-n must be at least 0"),
    (lambda f: ["evaluate", "--batch-size", "0", "--out", str(f / "ev")], "--batch-size must be at least 1"),
    (lambda f: ["evaluate", "--methods", ",", "--out", str(f / "ev")], "--methods is empty"),
    (lambda f: ["evaluate", "--steps", "-1", "--out", str(f / "ev")], "steps must be a non-negative integer"),
    (lambda f: ["evaluate", "--attributes", "hue", "--out", str(f / "ev")], "unknown attribute 'hue'"),
    (lambda f: ["evaluate", "--benchmark", str(f / "bad.jsonl"), "--attributes", "color", "--out", str(f / "ev")],
     "--attributes picks the attributes of a generated benchmark"),
    (lambda f: ["evaluate", "--benchmark", "pairs", "--out", str(f / "ev")], "pass --model shapes-pairs"),
    (lambda f: ["evaluate", "--benchmark", "pairs", "--model", "shapes-pairs", "--attributes", "color", "--out",
                str(f / "ev")], "unknown factor key 'color'"),
    (lambda f: ["evaluate", "--model", "tiny-sd3", "--out", str(f / "ev")], "has no built-in scorer"),
    (lambda f: ["evaluate", "--scorer", "openai/clip-vit-base-patch32", "--out", str(f / "ev")],
     "a CLIP scorer needs --attributes-json"),
    (lambda f: ["evaluate", "--scorer", "openai/clip-vit-base-patch32", "--attributes-json", str(f / "attrs.json"),
                "--out", str(f / "ev")], "needs a list of at least two distinct values"),
    (lambda f: ["evaluate", "--benchmark", str(f / "corrupt_item.jsonl"), "--out", str(f / "ev")],
     "cannot read image"),
    (lambda f: ["evaluate", "--n", "2", "--out", under_file(f)], "is a file, not a folder"),
    (lambda f: ["evaluate", "--device", "cuda", "--out", str(f / "ev")], "no CUDA GPU is visible"),
    # probe
    (lambda f: ["probe", "--n", "16", "--timesteps", "0.5,nan", "--out", str(f / "pr")],
     "--timesteps must be finite numbers"),
    (lambda f: ["probe", "--n", "16", "--timesteps", "1.5", "--out", str(f / "pr")], "flow sigmas in [0, 1]"),
    (lambda f: ["probe", "--n", "16", "--batch-size", "0", "--out", str(f / "pr")], "--batch-size must be at least 1"),
    (lambda f: ["probe", "--n", "16", "--model", "tiny-sd3", "--out", str(f / "pr")],
     "the probe study needs an embedded world"),
    (lambda f: ["probe", "--n", "16", "--out", str(f / "src.png")], "it is a file, not a folder"),
    # geometry
    (lambda f: ["geometry", "--method", "magic", "--out", str(f / "ge")], "unknown method 'magic'"),
    (lambda f: ["geometry", "--model", "tiny-flux", "--out", str(f / "ge")], "the geometry study needs an embedded"),
    (lambda f: ["geometry", "--out", under_file(f)], "is a file, not a folder"),
    # preserve-span
    (lambda f: ["preserve-span", "--n", "0", "--out", str(f / "ps")], "--n must be at least 1"),
    (lambda f: ["preserve-span", "--auto", "auto(k=x)", "--out", str(f / "ps")], "options"),
    (lambda f: ["preserve-span", "--model", "tiny-sd3", "--out", str(f / "ps")], "needs an embedded world"),
    # representation
    (lambda f: ["representation", "--activations", str(f / "acts"), "--components", "0", "--out", str(f / "re")],
     "--components must be at least 1"),
    (lambda f: ["representation", "--activations", str(f / "acts"), "--t", "nan", "--out", str(f / "re")],
     "--t must be a finite number"),
    (lambda f: ["representation", "--activations", str(f / "acts"), "--t", "0.75", "--out", str(f / "re")],
     "--t 0.75 was not collected"),
    (lambda f: ["representation", "--activations", str(f / "acts"), "--results", str(f / "none.json"), "--out",
                str(f / "re")], "no results file at"),
    (lambda f: ["representation", "--activations", str(f / "acts"), "--out", under_file(f)],
     "is a file, not a folder"),
    # bench
    (lambda f: ["bench", "--repeat", "0", "--out", str(f / "b.json")], "--repeat must be at least 1"),
    (lambda f: ["bench", "--sweep-n", "0", "--out", str(f / "b.json")], "--sweep-n must be at least 1"),
    (lambda f: ["bench", "--preserve-count", "11", "--out", str(f / "b.json")], "--preserve-count is at most 10"),
    (lambda f: ["bench", "--steps", "-1", "--out", str(f / "b.json")], "steps must be a non-negative integer"),
    (lambda f: ["bench", "--res", "50", "--out", str(f / "b.json")], "--res must be a multiple of 8"),
    (lambda f: ["bench", "--dtype", "fp64", "--out", str(f / "b.json")], "--dtype must be one of"),
    (lambda f: ["bench", "--out", str(f / "b.txt")], "--out must end in .json"),
    (lambda f: ["bench", "--out", under_file(f, "b.json")], "is a file, not a folder"),
    # train-shapes / train-pairs
    (lambda f: ["train-shapes", "--lr", "nan", "--out", str(f / "m")], "--lr must be a finite number"),
    (lambda f: ["train-shapes", "--init-from", str(f / "none"), "--out", str(f / "m")], "--init-from: no folder at"),
    (lambda f: ["train-shapes", "--init-from", str(f), "--out", str(f / "m")], "has no model_index.json"),
    (lambda f: ["train-shapes", "--device", "cuda", "--out", str(f / "m")], "no CUDA GPU is visible"),
    (lambda f: ["train-shapes", "--out", under_file(f)], "is a file, not a folder"),
    (lambda f: ["train-shapes", "--out", "/"], "must name a folder"),
    (lambda f: ["train-pairs", "--steps", "0", "--out", str(f / "p")], "--steps must be a positive integer"),
    (lambda f: ["train-pairs", "--extra-layers", "-1", "--out", str(f / "p")], "--extra-layers must be at least 0"),
    (lambda f: ["train-pairs", "--lr", "0", "--out", str(f / "p")], "--lr must be > 0"),
    (lambda f: ["train-pairs", "--out", under_file(f)], "is a file, not a folder"),
    (lambda f: ["train-pairs", "--init-from", str(f / "none"), "--out", str(f / "p")], "--init-from: no folder at"),
    # train-pairs-decoder / model-card / attention-binding
    (lambda f: ["train-pairs-decoder", "--model", str(f), "--steps", "0"], "--steps must be at least 1"),
    (lambda f: ["train-pairs-decoder", "--model", str(f), "--lr", "-1"], "--lr must be > 0"),
    (lambda f: ["train-pairs-decoder", "--model", str(f)], "no explore.json there"),
    (lambda f: ["model-card", "--model", str(f), "--quality-n", "0"], "--quality-n must be at least 1"),
    (lambda f: ["model-card", "--model", str(f)], "no explore.json there"),
    (lambda f: ["attention-binding", "--n", "0", "--out", str(f / "ab")], "--n must be at least 1"),
    (lambda f: ["attention-binding", "--out", str(f / "ab")], "needs a two-object world"),
    (lambda f: ["attention-binding", "--model", "tiny-sd3", "--out", str(f / "ab")], "needs a two-object world"),
]

# Rows whose error only the loader can know (weights looked up in the hub cache): every other row is
# rejected before anything is loaded.
REACH_THE_LOADER = {"could not load 'nobody/no-such-model'"}


@pytest.fixture()
def nothing_loads(monkeypatch):
    """Make every way a command loads a model or starts training fail loudly."""
    import explore.evaluation.card
    import explore.evaluation.perf
    import explore.pairs.decoder
    import explore.pairs.train
    import explore.pipeline.load
    import explore.shapes.train

    def refuse(*args, **kwargs):
        raise AssertionError("a rejected invocation loaded a model or started work")

    monkeypatch.setattr(explore.pipeline.load, "load_pipeline", refuse)
    monkeypatch.setattr(explore.evaluation.perf, "load_for_bench", refuse)
    monkeypatch.setattr(explore.shapes.train, "train", refuse)
    monkeypatch.setattr(explore.pairs.train, "train", refuse)
    monkeypatch.setattr(explore.pairs.decoder, "finetune_folder_decoder", refuse)
    monkeypatch.setattr(explore.evaluation.card, "write_card", refuse)


@pytest.mark.parametrize("build,fragment", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_invocation_is_one_line_and_exit_2(files, capsys, request, build, fragment):
    if fragment not in REACH_THE_LOADER:
        request.getfixturevalue("nothing_loads")  # rejected before any model is loaded
    try:
        code = main(build(files))
    except SystemExit as e:  # argparse's own errors (unknown command, missing or invalid option)
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in err, err
    assert "Traceback" not in err
    assert "Loading pipeline components" not in err  # no loading progress bars before the error
    last = err.splitlines()[-1]
    assert last.startswith("explore ") or "usage:" in err


def test_file_error_during_the_work_is_one_line(files, capsys, monkeypatch):
    import explore.cli

    def fail(args):  # e.g. the disk filled up, or a folder became read-only after the checks
        raise PermissionError(13, "Permission denied", str(files / "g.png"))

    monkeypatch.setattr(explore.cli, "run_generate", fail)
    assert main(["generate", "--prompt", "a red circle", "--out", str(files / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"explore generate: error: cannot access {files / 'g.png'}: Permission denied"


def test_debug_flag_shows_the_traceback(files):
    with pytest.raises(Exception, match="unknown method"):
        main(edit(files, "--method", "magic", "--debug"))


def test_edit_command_writes_image_grid_and_json(files):
    out = files / "ok.png"
    assert main(["edit", "--image", str(files / "src.png"), "--prompt", SRC, "--edit", "red->blue", "--out",
                 str(out), "--steps", "2", "--sweep", "1,2"]) == 0
    assert out.is_file() and (files / "ok.grid.png").is_file()
    rec = json.loads((files / "ok.json").read_text())
    for key in ("explore_version", "torch", "diffusers", "transformers", "model", "seed", "settings", "machine",
                "seconds"):
        assert key in rec
    assert rec["edit"] == {"attribute": "color", "from": "red", "to": "blue"} and rec["settings"]["steps"] == 2


def test_edit_command_composes_several_edits(tmp_path):
    from explore.evaluation.items import shapes_benchmark

    it = next(i for i in shapes_benchmark(12, seed=4) if i.attribute == "color" and i.labels["size"] == "large")
    img = tmp_path / "src.png"
    from PIL import Image

    Image.fromarray(it.image).save(img)
    out = tmp_path / "both.png"
    argv = ["edit", "--image", str(img), "--prompt", it.prompt, "--edit", f"{it.source}->{it.target}",
            "--edit", "large->small", "--strength", "1,1", "--steps", "2", "--sweep", "1", "--out", str(out)]
    assert main(argv) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    assert [e["attribute"] for e in rec["edit"]] == ["color", "size"] and len(rec["reading"]["success"]) == 2
