# Two commands do all the set-up: `make demo` and `make test` (each creates/reuses .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# The tests, the demo and the docs run offline unless you say otherwise; `make lab` leaves your setting
# alone (notebook 05 downloads real weights when online).
OFFLINE := HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1}
export TOKENIZERS_PARALLELISM ?= false
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
export MPLBACKEND ?= Agg

.PHONY: demo test test-fast lab browser-test notebooks lint bench docs clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, pinned, so nothing below pulls a multi-GB CUDA build (pyproject says torch>=2.6)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[notebook,test,docs,quant,sae]" "torch==$(TORCH_VERSION)"
	@touch $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(PY) -m explore demo --out runs/demo

# The whole check: the tests (pytest), then the real-browser check, which runs every notebook top to
# bottom in JupyterLab with the same CI parameters and fails on any error output; so pytest leaves out
# its own headless run of the same notebooks here (`make notebooks` runs it alone).
test: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q -m "not notebook"
	$(MAKE) --no-print-directory browser-test

# JupyterLab + Debian's Chromium (installed with apt-get when missing; never a downloaded browser).
browser-test: $(STAMP)
	@test -x $${CHROMIUM:-/usr/bin/chromium} || { echo "installing Debian's chromium (apt-get)"; \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	  sudo sh -c 'apt-get update -qq && apt-get install -y -qq chromium' >/dev/null; }
	$(OFFLINE) $(PY) tests/browser/run_browser_test.py

notebooks: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q -m notebook tests/test_notebooks.py

test-fast: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q -x -m "not notebook and not browser"

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

lint: $(STAMP)
	$(VENV)/bin/ruff check explore tests

bench: $(STAMP)
	$(OFFLINE) $(PY) -m explore bench --out runs/bench/bench.json

# The API reference and the design and results pages as one site (warnings are errors; make test builds it too).
docs: $(STAMP)
	$(OFFLINE) $(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

clean-venv:
	rm -rf $(VENV)
