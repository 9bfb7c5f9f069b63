"""The front door: every documented example runs, the API reference builds, Jupyter finds the API,
the Python API forgives what it can, and the package installs from its wheel."""

import inspect
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import explore
from explore.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "docs" / "results").glob("*.md"))]
GPU_MARK = "# needs: gpu"


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line, code)`` of every fenced ```python block of a Markdown file."""
    out, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            out.append((i + 1, "\n".join(lines[i + 1 : j])))
            i = j
        i += 1
    return out


# ---------------------------------------------------------------------------------------------
# The README and every example
# ---------------------------------------------------------------------------------------------


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    first = next(i for i, line in enumerate(lines) if line.startswith("```"))
    assert first < 40 and lines[first].strip() == "```python"
    for needed in ("Your own SD3 / SD3.5 / FLUX weights", "## Notebooks", "## Headline results",
                   "API reference", "docs/design.md", "What does not work yet"):
        assert needed in "\n".join(lines), needed


def test_every_link_of_the_readme_points_at_a_file_in_git():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), target


@pytest.mark.parametrize("path", [p for p in DOC_FILES if python_blocks(p)], ids=lambda p: p.name)
def test_every_python_block_of_the_docs_runs(path, tmp_path, monkeypatch):
    """Each page's blocks run in order in one namespace (a page is one session), on the embedded model,
    in an empty folder; a block whose first line is ``# needs: gpu`` is skipped without a GPU."""
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__doc_example__"}
    ran = 0
    for line, code in python_blocks(path):
        if code.lstrip().startswith(GPU_MARK) and not torch.cuda.is_available():
            continue
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), ns)
        except Exception as e:  # name the block
            where = f"{path.relative_to(ROOT)} block at line {line}"
            raise AssertionError(f"{where} failed: {type(e).__name__}: {e}") from e
        ran += 1
    assert ran or not torch.cuda.is_available()


def test_the_readme_example_is_what_it_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = python_blocks(ROOT / "README.md")[0][1]
    assert 5 <= len(code.splitlines()) <= 12
    ns: dict = {}
    exec(code, ns)
    assert (tmp_path / "blue.png").is_file() and ns["result"].image.size == (64, 64)
    assert len(ns["strip"].size) == 2 and ns["result"].evaluations > 0


# ---------------------------------------------------------------------------------------------
# The API reference
# ---------------------------------------------------------------------------------------------


def test_the_docs_site_builds_with_warnings_as_errors_and_documents_every_public_name(tmp_path):
    out = tmp_path / "html"
    r = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"),
                        str(out)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    api = (out / "api.html").read_text()
    for name in explore.__all__:
        if name != "__version__":
            assert f'id="explore.{name}"' in api, name
    assert (out / "results" / "benchmark.html").is_file() and (out / "design.html").is_file()
    assert (out / "search.html").is_file()


def _public_functions():
    return [n for n in explore.__all__ if inspect.isfunction(getattr(explore, n, None))]


@pytest.mark.parametrize("name", _public_functions())
def test_every_public_function_documents_its_parameters_and_return(name):
    fn = getattr(explore, name)
    doc = inspect.getdoc(fn) or ""
    assert "Args:" in doc and "Returns:" in doc, name
    args = doc.split("Args:", 1)[1].split("Returns:", 1)[0]
    for p in inspect.signature(fn).parameters.values():
        label = {inspect.Parameter.VAR_KEYWORD: f"**{p.name}", inspect.Parameter.VAR_POSITIONAL: f"*{p.name}"}.get(
            p.kind, p.name)
        assert re.search(rf"^\s*{re.escape(label)}:", args, re.M), f"{name}: parameter {label} is not documented"


# ---------------------------------------------------------------------------------------------
# An API Jupyter finds, and that forgives what it can
# ---------------------------------------------------------------------------------------------


def test_dir_and_completion_show_the_public_api():
    names = dir(explore)
    for n in ("load_pipeline", "encode", "text_direction", "edit", "sweep", "identify", "manipulate", "generate",
              "Direction", "metrics", "widgets"):
        assert n in names
    assert set(explore._LAZY) <= set(explore.__all__)
    assert not [n for n in names if n.startswith("_") and n not in ("__version__",)]


def test_the_flat_layout_shim_is_gone():
    with pytest.raises(ModuleNotFoundError):
        __import__("explore.latent")


def test_load_pipeline_takes_what_the_cli_takes():
    pipe = explore.load_pipeline("tiny-sd3", dtype="bfloat16")
    assert pipe.transformer.dtype == torch.bfloat16
    pipe = explore.load_pipeline("tiny-sd3", device="auto", dtype="fp32")
    assert pipe.transformer.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    for kw, msg in ((dict(dtype="fp64"), "dtype must be one of"), (dict(device="gpu"), "device must be cpu or cuda"),
                    (dict(dtype=torch.int8), "dtype must be")):
        with pytest.raises(InputError, match=msg):
            explore.load_pipeline("tiny-sd3", **kw)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU is visible"):
            explore.load_pipeline("tiny-sd3", device="cuda")
        with pytest.raises(InputError, match="fp16 does not run on the CPU"):
            explore.load_pipeline("tiny-sd3", dtype="fp16")


CAPTION = "a small red circle at the top left on a gray background"


@pytest.fixture(scope="module")
def source(shapes_pipe):
    return explore.generate(shapes_pipe, CAPTION, seed=4, steps=8)[0]


def test_an_edit_in_words_is_the_caption_direction(shapes_pipe, source):
    d = explore.text_direction(shapes_pipe, "red", "blue", prompt=CAPTION)
    assert d.templates == [(CAPTION, CAPTION.replace("red", "blue"))] and d.attribute == "color"
    kw = dict(prompt=CAPTION, steps=2, seed=1)
    a = explore.edit(shapes_pipe, source, "red -> blue", **kw)
    b = explore.edit(shapes_pipe, source, d, **kw)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    with pytest.raises(InputError, match="needs the source's caption"):
        explore.edit(shapes_pipe, explore.encode(shapes_pipe, source, CAPTION).replace(prompt=None), "red -> blue")
    with pytest.raises(InputError, match="no factor with the value 'green'"):
        explore.text_direction(shapes_pipe, "green", "blue", prompt=CAPTION)
    with pytest.raises(InputError, match="templates= or prompt="):
        explore.text_direction(shapes_pipe, "red", "blue", templates=["a {} circle"], prompt=CAPTION)


def test_one_keyword_composes_edits_everywhere(shapes_pipe, source):
    dc = explore.text_direction(shapes_pipe, "red", "blue")
    ds = explore.text_direction(shapes_pipe, "small", "large")
    kw = dict(prompt=CAPTION, steps=2, seed=1)
    e = explore.edit(shapes_pipe, source, [dc, ds], weights=[1.0, 0.5], **kw)
    old = explore.edit(shapes_pipe, source, [dc, ds], [1.0, 0.5], **kw)  # the list-as-strength shorthand
    assert np.array_equal(np.asarray(e.image), np.asarray(old.image))
    s = explore.sweep(shapes_pipe, source, [dc, ds], [1.0], weights=[1.0, 0.5], **kw)
    i = explore.identify(shapes_pipe, source, [dc, ds], weights=[1.0, 0.5], **kw)
    assert len(s.images) == 1 and i.dz is not None and i.metadata["parts"][1]["weight"] == 0.5


def test_a_scalar_where_a_list_is_expected_works(shapes_pipe, source):
    kw = dict(prompt=CAPTION, steps=2, seed=1)
    d = explore.text_direction(shapes_pipe, "red", "blue")
    assert explore.sweep(shapes_pipe, source, d, 1.0, **kw).strengths == [1.0]
    assert explore.sweep(shapes_pipe, source, d, np.array([0.5, 1.0]), **kw).strengths == [0.5, 1.0]
    ident = explore.identify(shapes_pipe, source, d, **kw)
    src = explore.encode(shapes_pipe, source, CAPTION)
    assert explore.manipulate(shapes_pipe, src, ident, torch.tensor(1.0)).strengths == [1.0]


def test_warnings_point_at_the_callers_line_once_per_prompt():
    pipe = explore.load_pipeline("tiny-sd3")
    long = "a very long prompt that goes on and on and on about a red circle and a blue square"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explore.encode_text(pipe, long)
        explore.encode_text(pipe, long, cache=False)
        explore.text_direction(pipe, "red", "blue")
        explore.text_direction(pipe, "red", "blue")
    mine = [w for w in caught if issubclass(w.category, UserWarning)]
    assert mine and all(w.filename == __file__ for w in mine), [(w.filename, str(w.message)) for w in mine]
    clip = [w for w in mine if "text encoder's limit" in str(w.message) and long[:10] in str(w.message)]
    assert len(clip) == 1
    assert sum("tokenize to different lengths" in str(w.message) for w in mine) == 1


# ---------------------------------------------------------------------------------------------
# A package that installs anywhere
# ---------------------------------------------------------------------------------------------


def test_one_version_and_the_package_files():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "explore-dit" and meta["project"]["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "explore.__version__"}
    assert meta["project"]["urls"]
    for f in ("LICENSE", "CITATION.cff", "CHANGELOG.md"):
        assert (ROOT / f).is_file(), f
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert f"version: {explore.__version__}" in (ROOT / "CITATION.cff").read_text()
    assert f"## {explore.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    for card in ("shapes", "pairs"):
        assert "## Licence" in (ROOT / "explore" / card / "model" / "README.md").read_text()
    r = subprocess.run([sys.executable, "-m", "explore", "--version"], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().startswith(f"explore {explore.__version__}")


def test_make_lab_leaves_the_offline_setting_alone():
    makefile = (ROOT / "Makefile").read_text()
    assert "export HF_HUB_OFFLINE" not in makefile
    lab = re.search(r"^lab:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "HF_HUB_OFFLINE" not in lab and "OFFLINE" not in lab


def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_readme_and_the_demo(tmp_path):
    """Build the wheel, install it (no dependencies: they come from this environment through a path
    file, not from the network) into a new virtual environment, and run the README example and
    ``explore demo`` from it, in an empty folder, with the embedded models the wheel carries."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels)], check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("explore_dit-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    Path(site, "_deps_from_the_test_env.pth").write_text(deps + "\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)} | {"HF_HUB_OFFLINE": "1"}
    code = python_blocks(ROOT / "README.md")[0][1]
    check = ("import explore, pathlib; assert pathlib.Path(explore.__file__).is_relative_to(" + repr(str(venv)) +
             "), explore.__file__\n")
    r = subprocess.run([str(py), "-c", check + code], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work / "blue.png").is_file()
    r = subprocess.run([str(venv / "bin" / "explore"), "demo", "--out", "demo"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work / "demo" / "summary.json").is_file() and (work / "demo" / "edits.png").is_file()
    r = subprocess.run([str(venv / "bin" / "explore"), "--help"], cwd=work, env=env, capture_output=True, text=True)
    assert r.stdout.startswith("usage: explore ")
