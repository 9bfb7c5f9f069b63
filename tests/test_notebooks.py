"""The notebooks: each runs top to bottom headless on small parameters; .ipynb and .py stay in sync; no outputs in git.

Parameters are injected papermill-style: a cell tagged ``injected-parameters`` is added right after the cell
tagged ``parameters``, so the defaults stay visible and the small CI values win.
"""

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

# Small values so all eight notebooks run in well under 6 minutes on 2 CPU cores.
CI_PARAMETERS = {
    "01_tour": {"n": 4, "steps": 3, "grid_step": 1.0},
    "02_direction_geometry": {"n_templates": 6, "steps": 3, "grid_step": 1.0, "method": "text"},
    "03_probing": {"n": 48, "timesteps": (0.5,), "steps": 3, "grid_step": 1.0, "method": "text"},
    "04_disentanglement": {"n": 6, "curve_n": 2, "curve_strengths": (0.5, 2.0), "steps": 3, "features_n": 48,
                           "grid_step": 1.0},
    "05_real_models": {"model": "tiny-sd3", "dtype": "float32", "device": "cpu", "prompt": "red car",
                       "steps": 2, "grid_step": 1.0, "templates": "prompt", "peer_models": ["tiny-flux"]},
    "06_binding": {"n_show": 3, "n_study": 2, "timesteps": (0.5,), "methods": ("dds", "text"), "steps": 2},
    "07_causal": {"steps": 4, "trace_n": 1, "trace_factors": ("hpos",), "probe_n": 32, "n_study": 1,
                  "timesteps": (0.5, 0.9)},
    "08_sae": {"n_train": 24, "steps": 40, "expansion": 2, "k": 4, "score_n": 40, "render_n": 1, "browse_n": 6,
               "bench_n": 2, "table_n": 40, "dci": "logistic", "folder": None},
}
NAMES = sorted(CI_PARAMETERS)


def inject_parameters(nb, params: dict):
    """Add a cell with ``params`` after the cell tagged ``parameters`` (which must be the first code cell)."""
    import nbformat

    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged and tagged[0] == code[0], "the first code cell must be tagged 'parameters'"
    src = "# Parameters injected by tests/test_notebooks.py\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(tagged[0] + 1, cell)
    return nb


def run_notebook(name: str, params: dict, timeout: int = 300):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    inject_parameters(nb, params)
    env_before = dict(os.environ)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))  # UMAP's compiled code, reused across runs
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOKS)}})
        client.execute()  # raises CellExecutionError on the first failing cell
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    return nb


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name):
    t0 = time.perf_counter()
    nb = run_notebook(name, CI_PARAMETERS[name])
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    print(f"{name}: {time.perf_counter() - t0:.1f} s")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_pairs_are_in_sync_and_stripped(name):
    import jupytext
    import nbformat

    ipynb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    py = jupytext.read(NOTEBOOKS / f"{name}.py")
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    assert cells(ipynb) == cells(py), f"{name}.ipynb and .py differ: run `jupytext --to ipynb notebooks/{name}.py`"
    assert ipynb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    for c in ipynb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, f"{name}.ipynb has outputs: strip them"
    first = next(c for c in ipynb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert "sys.path" not in "".join(c.source for c in ipynb.cells), "notebooks import the installed package"
    assert ipynb.cells[0].cell_type == "markdown", "a notebook starts by saying what it teaches"
