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
    return d


SRC = "a large red circle at the middle center on a gray background"


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
    (lambda f: ["geometry", "--n", "1", "--out", str(f / "ge")], "at least 2"),
    (lambda f: ["representation", "--activations", str(f / "none"), "--out", str(f / "re")],
     "no activation dataset at"),
    (lambda f: ["directions", "--model", "tiny-sd3", "--out", str(f / "di")], "pass --edit"),
    (lambda f: ["bench", "--device", "cuda", "--out", str(f / "b.json")], "no CUDA GPU"),
    (lambda f: ["generate", "--prompt", "a red circle", "--n", "0", "--out", str(f / "g.png")],
     "--n must be at least 1"),
    (lambda f: ["train-shapes", "--steps", "0", "--out", str(f / "m")], "--steps must be a positive integer"),
    (lambda f: ["demo", "--model", "tiny-sd3", "--out", str(f / "demo")], "the demo runs on ShapesWorld"),
]


@pytest.mark.parametrize("build,fragment", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_invocation_is_one_line_and_exit_2(files, capsys, build, fragment):
    try:
        code = main(build(files))
    except SystemExit as e:  # argparse's own errors (unknown command, missing or invalid option)
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in err, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("explore ") or "usage:" in err


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
