"""Real-browser check of every notebook: JupyterLab + Debian's Chromium driven by Playwright (never a downloaded
browser).

    python tests/browser/run_browser_test.py            # what `make browser-test` runs
    python tests/browser/run_browser_test.py 03_probing # one notebook

Starts JupyterLab on 127.0.0.1 with throw-away config, settings, workspace and runtime folders and a
random token, and for each notebook opens a copy whose parameters are the CI ones (the same small
values tests/test_notebooks.py injects), runs all cells from the Run menu, waits for the kernel to
finish, then moves one control of each of its panels (a slider with the keyboard, a dropdown, a
toggle button — `CHECKS`) and checks that

* every panel rendered (no "Error displaying widget"), with its output image;
* that image's ``src`` changed after the control moved, and the panel's status line is no error;
* no cell shows an error output.

The notebook's kernel is shut down before the next one opens. Screenshots go to .ci/artifacts/
(git-ignored), timings to .ci/artifacts/browser_test.json. Exit status 0 on success, 1 on failure.
Environment: CHROMIUM (default /usr/bin/chromium), BROWSER_TIMEOUT (seconds for run-all per notebook,
default 900).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".ci" / "artifacts"


@dataclasses.dataclass(frozen=True)
class Check:
    """Move ``control`` of the panel ``panel`` and expect the image ``output`` inside it to change.

    ``control``: ``("slider", css)`` (keyboard on the slider's handle), ``("select", css)`` (the next
    option of a dropdown) or ``("toggle", css, label)`` (click that toggle button).
    """

    name: str
    panel: str
    control: tuple
    output: str


CHECKS: dict[str, list[Check]] = {
    "01_tour": [Check("edit panel: strength slider", ".explore-edit-panel", ("slider", ".explore-strength"),
                      "img.explore-result")],
    "02_direction_geometry": [Check("geometry panel: unit -> raw lengths", ".explore-geometry-panel",
                                    ("toggle", ".explore-geometry-scale", "raw"), "img.explore-map")],
    "03_probing": [
        Check("probe panel: t", ".explore-probe-panel", ("select", ".explore-probe-t"), "img.explore-probe"),
        Check("attention panel: layer slider", ".explore-attention-panel", ("slider", ".explore-attention-layer"),
              "img.explore-attention"),
        Check("steering panel: alpha slider", ".explore-steering-panel", ("slider", ".explore-steering-alpha"),
              "img.explore-steering"),
    ],
    "04_disentanglement": [Check("metric panel: strength slider", ".explore-metric-panel",
                                 ("slider", ".explore-metric-strength"), "img.explore-metric")],
    "05_real_models": [
        Check("edit panel (tiny SD3): strength slider", ".explore-edit-panel", ("slider", ".explore-strength"),
              "img.explore-result"),
        Check("attention panel (tiny SD3): t slider", ".explore-attention-panel", ("slider", ".explore-attention-t"),
              "img.explore-attention"),
    ],
    "06_binding": [Check("binding panel: next word", ".explore-binding-panel", ("select", ".explore-binding-word"),
                         "img.explore-binding-overlay")],
    "07_causal": [
        Check("patch panel: next factor", ".explore-patch-panel", ("select", ".explore-patch-factor"),
              "img.explore-patch-result"),
        Check("lens panel: block slider", ".explore-lens-panel", ("slider", ".explore-lens-block"),
              "img.explore-lens"),
        Check("mask panel: next method", ".explore-mask-panel", ("select", ".explore-mask-method"),
              "img.explore-mask"),
    ],
    "08_sae": [
        Check("feature browser: next feature", ".explore-sae-panel", ("select", ".explore-sae-feature"),
              "img.explore-sae-top"),
        Check("feature browser: steering slider", ".explore-sae-panel", ("slider", ".explore-sae-alpha"),
              "img.explore-sae-steer"),
    ],
}
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
RUN_TIMEOUT = float(os.environ.get("BROWSER_TIMEOUT", "900"))


def log(msg: str) -> None:
    print(f"[browser-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _ci_notebook(name: str, dest: Path) -> Path:
    """Copy a notebook with the CI parameters injected (shared with tests/test_notebooks.py)."""
    import nbformat

    spec = importlib.util.spec_from_file_location("_nbtests", ROOT / "tests" / "test_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    mod.inject_parameters(nb, mod.CI_PARAMETERS[name])
    nb.metadata.pop("jupytext", None)  # a lone copy: no pairing with a .py
    path = dest / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Lab:
    proc: subprocess.Popen
    url: str
    token: str

    def notebook_url(self, name: str) -> str:
        # a workspace of its own, reset: only this notebook opens (no tabs restored from the one before)
        return f"{self.url}/lab/workspaces/{name}/tree/{name}.ipynb?reset&token={self.token}"

    def shutdown_kernels(self) -> None:
        """Delete every session (and its kernel) so the next notebook has the CPU to itself."""
        with urllib.request.urlopen(f"{self.url}/api/sessions?token={self.token}", timeout=10) as r:
            sessions = json.loads(r.read())
        for sess in sessions:
            req = urllib.request.Request(f"{self.url}/api/sessions/{sess['id']}?token={self.token}", method="DELETE")
            urllib.request.urlopen(req, timeout=30).close()


def start_lab(tmp: Path, names: list[str]) -> Lab:
    root = tmp / "root"
    root.mkdir()
    for name in names:
        _ci_notebook(name, root)
    settings = tmp / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Render every cell (no windowing), so the whole notebook is in the DOM to check.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    notes = tmp / "settings" / "@jupyterlab" / "apputils-extension"
    notes.mkdir(parents=True)  # no "official Jupyter news?" toast over the screenshots
    (notes / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                       "checkForUpdates": False}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.update({
        "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
        "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg",
        "NUMBA_CACHE_DIR": env.get("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache")),
    })
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]  # nothing that reaches the network
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    out = open(tmp / "lab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = (tmp / "lab.log").read_text()[-2000:]
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return Lab(proc, url, token)
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("JupyterLab did not answer within 120 s")


def stop_lab(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started (its own session)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _prompts(page) -> list[str]:
    return page.eval_on_selector_all(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt",
                                     "els => els.map(e => e.textContent.trim())")


def _run_all(page, name: str, timings: dict, failures: list[str]) -> None:
    t0 = time.perf_counter()
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-CodeCell", timeout=120_000)
    # The kernel must be connected and idle (the status bar says "… | Idle"), or "Run All" does nothing.
    page.locator("#jp-main-statusbar").get_by_text("Idle").wait_for(timeout=300_000)
    timings[f"{name}.open_s"] = time.perf_counter() - t0
    log(f"{name}: open, kernel idle in {timings[name + '.open_s']:.1f} s; running all cells")
    t0 = time.perf_counter()
    for _attempt in range(2):
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        started = time.time() + 60
        while time.time() < started and all(p == "[ ]:" for p in _prompts(page)):
            time.sleep(0.5)
        if not all(p == "[ ]:" for p in _prompts(page)):
            break
        log(f"{name}: no cell started after 'Run All Cells'; trying again")
    deadline = time.time() + RUN_TIMEOUT
    last_log = time.time()
    done = False
    while True:
        prompts = _prompts(page)
        done = bool(prompts) and all(p not in ("[ ]:", "[*]:", "") for p in prompts)
        if done or time.time() > deadline:
            break
        if time.time() - last_log > 30:
            finished = sum(p not in ("[ ]:", "[*]:", "") for p in prompts)
            log(f"{name}:   {finished}/{len(prompts)} code cells done")
            last_log = time.time()
        time.sleep(1.0)
    timings[f"{name}.run_all_s"] = time.perf_counter() - t0
    if not done:
        failures.append(f"{name}: cells still running after {RUN_TIMEOUT:.0f} s")
    log(f"{name}: run all {timings[name + '.run_all_s']:.1f} s")


def _move(page, panel, control: tuple) -> None:
    kind, css = control[0], control[1]
    if kind == "slider":
        readout = panel.locator(f"{css} .widget-readout").first
        before = readout.text_content()
        handle = panel.locator(f"{css} .noUi-handle").first
        handle.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(300)
        if readout.text_content() == before:  # at the top of the range: one step down instead
            handle.focus()
            page.keyboard.press("ArrowLeft")
    elif kind == "select":
        select = panel.locator(f"{css} select").first
        values = select.evaluate("s => Array.from(s.options).map(o => o.value)")
        current = select.evaluate("s => s.value")
        select.select_option(value=next(v for v in values if v != current))
    elif kind == "toggle":
        panel.locator(f"{css} button", has_text=control[2]).first.click()
    else:
        raise ValueError(f"unknown control kind {kind!r}")


def _check_panel(page, name: str, i: int, check: Check, timings: dict, failures: list[str]) -> None:
    label = f"{name}: {check.name}"
    panel = page.locator(check.panel).first
    panel.wait_for(state="visible", timeout=60_000)
    panel.scroll_into_view_if_needed()
    output = panel.locator(check.output).first
    output.wait_for(state="attached", timeout=60_000)
    before = output.get_attribute("src")
    if not before:
        failures.append(f"{label}: the output image has no src after running the notebook")
    t0 = time.perf_counter()
    _move(page, panel, check.control)
    changed = False
    deadline = time.time() + 120
    while time.time() < deadline:
        if output.get_attribute("src") != before:
            changed = True
            break
        time.sleep(0.05)
    timings[f"{name}.panel{i}_redraw_s"] = time.perf_counter() - t0
    if not changed:
        failures.append(f"{label}: the output image did not change after the control moved")
    page.wait_for_timeout(300)
    panel.screenshot(path=str(ARTIFACTS / f"{name}_panel{i}.png"))
    status = panel.locator(".explore-status").first.text_content()
    if panel.locator(".explore-status-error").count():
        failures.append(f"{label}: the panel status shows an error: {status!r}")
    log(f"{label}: redraw seen after {timings[name + f'.panel{i}_redraw_s']:.2f} s; status {status!r}")


def run(lab: Lab, names: list[str]) -> dict:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    failures: list[str] = []
    with sync_playwright() as pw:
        t0 = time.perf_counter()
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        timings["launch_s"] = time.perf_counter() - t0
        try:
            for name in names:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                try:
                    page.goto(lab.notebook_url(name))
                    _run_all(page, name, timings, failures)
                    page.screenshot(path=str(ARTIFACTS / f"{name}_after_run.png"))
                    for i, check in enumerate(CHECKS[name]):
                        _check_panel(page, name, i, check, timings, failures)
                    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
                    if errors.count():
                        failures.append(f"{name}: {errors.count()} cell output(s) show an error")
                    if page.get_by_text("Error displaying widget").count():
                        failures.append(f"{name}: a widget failed to render ('Error displaying widget')")
                except Exception as e:  # record, screenshot, and go on with the next notebook
                    failures.append(f"{name}: {type(e).__name__}: {e}")
                    page.screenshot(path=str(ARTIFACTS / f"{name}_failure.png"))
                finally:
                    page.close()
                    lab.shutdown_kernels()
        finally:
            browser.close()
    return {"timings": timings, "failures": failures, "notebooks": names}


def main(argv: list[str] | None = None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        log(f"unknown notebook(s) {unknown}; known: {', '.join(CHECKS)}")
        return 1
    if not Path(CHROMIUM).is_file():
        log(f"no browser at {CHROMIUM}; install Debian's chromium (apt-get install -y chromium)")
        return 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="explore-browser-"))
    t0 = time.perf_counter()
    lab = None
    try:
        lab = start_lab(tmp, names)
        log(f"JupyterLab up in {time.perf_counter() - t0:.1f} s")
        out = run(lab, names)
    finally:
        if lab is not None:
            stop_lab(lab.proc)
        if (tmp / "lab.log").is_file():
            shutil.copy(tmp / "lab.log", ARTIFACTS / "jupyterlab.log")
        shutil.rmtree(tmp, ignore_errors=True)
    out["timings"]["total_s"] = time.perf_counter() - t0
    (ARTIFACTS / "browser_test.json").write_text(json.dumps(out, indent=2))
    log("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in out["timings"].items()))
    for f in out["failures"]:
        log(f"FAIL: {f}")
    log("PASS" if not out["failures"] else "FAILED")
    return 0 if not out["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
