"""Real-browser check of the tour: JupyterLab + Debian's Chromium driven by Playwright (never a downloaded browser).

    python tests/browser/run_browser_test.py            # what `make browser-test` runs

Starts JupyterLab on 127.0.0.1 with throw-away config, settings, workspace and runtime folders and a
random token, opens a copy of notebooks/01_tour.ipynb whose parameters are the CI ones (the same
small values tests/test_notebooks.py injects), runs all cells from the Run menu, waits for the
kernel to finish, moves the strength slider one step with the keyboard, and checks that

* the edit panel rendered (no "Error displaying widget"), with a result image;
* the result image's ``src`` changed after the slider move, and the status line is not an error;
* no cell shows an error output.

Screenshots go to .ci/artifacts/ (git-ignored). Exit status 0 on success, 1 on failure.
Environment: CHROMIUM (default /usr/bin/chromium), BROWSER_TIMEOUT (seconds for run-all, default 900).
"""

from __future__ import annotations

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
NOTEBOOK = "01_tour"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
RUN_TIMEOUT = float(os.environ.get("BROWSER_TIMEOUT", "900"))


def log(msg: str) -> None:
    print(f"[browser-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _ci_notebook(dest: Path) -> Path:
    """Copy the tour with the CI parameters injected (shared with tests/test_notebooks.py)."""
    import nbformat

    spec = importlib.util.spec_from_file_location("_nbtests", ROOT / "tests" / "test_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    nb = nbformat.read(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb", as_version=4)
    mod.inject_parameters(nb, mod.CI_PARAMETERS[NOTEBOOK])
    nb.metadata.pop("jupytext", None)  # a lone copy: no pairing with a .py
    path = dest / f"{NOTEBOOK}.ipynb"
    nbformat.write(nb, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(tmp: Path) -> tuple[subprocess.Popen, str]:
    root = tmp / "root"
    root.mkdir()
    _ci_notebook(root)
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
                    return proc, f"{url}/lab/tree/{NOTEBOOK}.ipynb?token={token}"
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
    return page.eval_on_selector_all(".jp-CodeCell .jp-InputPrompt", "els => els.map(e => e.textContent.trim())")


def run(url: str) -> dict:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    failures: list[str] = []
    with sync_playwright() as pw:
        t0 = time.perf_counter()
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        timings["launch_s"] = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            page.goto(url)
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-CodeCell", timeout=120_000)
            # The kernel must be connected and idle (the status bar says "… | Idle"), or "Run All" does nothing.
            page.locator("#jp-main-statusbar").get_by_text("Idle").wait_for(timeout=300_000)
            timings["open_s"] = time.perf_counter() - t0
            log(f"notebook open, kernel idle in {timings['open_s']:.1f} s; running all cells")

            t0 = time.perf_counter()
            for _attempt in range(2):
                page.click(".lm-MenuBar-itemLabel:text-is('Run')")
                page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
                started = time.time() + 60
                while time.time() < started and all(p == "[ ]:" for p in _prompts(page)):
                    time.sleep(0.5)
                if not all(p == "[ ]:" for p in _prompts(page)):
                    break
                log("no cell started after 'Run All Cells'; trying again")
            page.screenshot(path=str(ARTIFACTS / "01_tour_running.png"))
            deadline = time.time() + RUN_TIMEOUT
            last_log = time.time()
            while True:
                prompts = _prompts(page)
                done = prompts and all(p not in ("[ ]:", "[*]:", "") for p in prompts)
                if done or time.time() > deadline:
                    break
                if time.time() - last_log > 30:
                    finished = sum(p not in ("[ ]:", "[*]:", "") for p in prompts)
                    log(f"  {finished}/{len(prompts)} code cells done")
                    last_log = time.time()
                time.sleep(1.0)
            timings["run_all_s"] = time.perf_counter() - t0
            if not done:
                failures.append(f"cells still running after {RUN_TIMEOUT:.0f} s: {prompts}")
            log(f"run all: {timings['run_all_s']:.1f} s")

            panel = page.locator(".explore-edit-panel")
            panel.wait_for(state="visible", timeout=60_000)
            result = page.locator(".explore-result img, img.explore-result").first
            result.wait_for(state="attached", timeout=60_000)
            panel.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "01_tour_after_run.png"))
            before = result.get_attribute("src")
            if not before:
                failures.append("the result image has no src after running the notebook")

            t0 = time.perf_counter()
            handle = page.locator(".explore-strength .noUi-handle").first
            handle.focus()
            page.keyboard.press("ArrowLeft")  # one grid step down: a cached strength of the sweep
            changed = False
            deadline = time.time() + 120
            while time.time() < deadline:
                if result.get_attribute("src") != before:
                    changed = True
                    break
                time.sleep(0.05)
            timings["slider_redraw_s"] = time.perf_counter() - t0
            if not changed:
                failures.append("the result image did not change after moving the strength slider")
            page.wait_for_timeout(500)
            panel.screenshot(path=str(ARTIFACTS / "01_tour_panel.png"))
            page.screenshot(path=str(ARTIFACTS / "01_tour_after_slider.png"))
            readout = page.locator(".explore-strength .widget-readout").first.text_content()
            status = page.locator(".explore-status").first.text_content()
            log(f"slider -> {readout!r}; status: {status!r}; redraw seen after {timings['slider_redraw_s']:.2f} s")

            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']").count()
            if errors:
                failures.append(f"{errors} cell output(s) show an error")
            if page.locator(".explore-status-error").count():
                failures.append(f"a panel status shows an error: {status!r}")
            if page.get_by_text("Error displaying widget").count():
                failures.append("a widget failed to render ('Error displaying widget')")
        except Exception as e:  # record, screenshot, and fail
            failures.append(f"{type(e).__name__}: {e}")
            page.screenshot(path=str(ARTIFACTS / "01_tour_failure.png"))
        finally:
            browser.close()
    return {"timings": timings, "failures": failures}


def main() -> int:
    if not Path(CHROMIUM).is_file():
        log(f"no browser at {CHROMIUM}; install Debian's chromium (apt-get install -y chromium)")
        return 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="explore-browser-"))
    t0 = time.perf_counter()
    proc = None
    try:
        proc, url = start_lab(tmp)
        log(f"JupyterLab up in {time.perf_counter() - t0:.1f} s")
        out = run(url)
    finally:
        if proc is not None:
            stop_lab(proc)
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
