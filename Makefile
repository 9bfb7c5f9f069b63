# Two commands do all the set-up: `make demo` and `make test` (each creates/reuses .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
export MPLBACKEND ?= Agg

.PHONY: demo test test-fast lab browser-test notebooks lint bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, pinned, so nothing below pulls a multi-GB CUDA build (pyproject says torch>=2.6)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[notebook,test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m explore demo --out runs/demo

# The whole check: unit tests + headless notebooks (pytest), then the real-browser check of the tour.
test: $(STAMP)
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory browser-test

# JupyterLab + Debian's Chromium (installed with apt-get when missing; never a downloaded browser).
browser-test: $(STAMP)
	@test -x $${CHROMIUM:-/usr/bin/chromium} || { echo "installing Debian's chromium (apt-get)"; \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	  sudo sh -c 'apt-get update -qq && apt-get install -y -qq chromium' >/dev/null; }
	$(PY) tests/browser/run_browser_test.py

notebooks: $(STAMP)
	$(PY) -m pytest -q -m notebook tests/test_notebooks.py

test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not notebook and not browser"

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

lint: $(STAMP)
	$(VENV)/bin/ruff check explore tests

bench: $(STAMP)
	$(PY) -m explore bench --out runs/bench/bench.json

clean-venv:
	rm -rf $(VENV)
