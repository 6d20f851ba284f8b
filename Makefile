# overlap-audit: `make demo` runs the whole audit on a small bundled example; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
DEMO_DIR ?= demo-out
DEMO_REAL_DIR ?= demo-real-out

.PHONY: install install-demo browser test demo demo-real bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# the demo: the core install plus the photo packages it tiles (no torch)
install-demo: $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[demo]'
	touch $(DEMO_STAMP)

# the tests: everything in the dev extra (test-core, test-torch, test-ray, test-notebooks)
install: $(STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	# torch and torchvision first, as the pair that lies on this disk and imports together (open_clip needs
	# torchvision; PyPI's torchvision does not import beside the CPU-only torch 2.13.0 file); a bare `torch`
	# requirement would otherwise pull the newest CUDA build from PyPI.
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP) $(DEMO_STAMP)

# report.html is checked in a real headless Chromium (tests/test_report_html.py); installed here when missing
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	        || command -v google-chrome >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; \
	else \
	    echo "make test: no Chromium found; the report.html checks need one:" \
	         "run 'sudo apt-get install -y chromium' (or put chromium on PATH), then 'make test' again" >&2; \
	fi

test: install browser
	$(BIN)/python -m pytest -q

demo: $(DEMO_STAMP)
	$(BIN)/overlap-audit demo $(DEMO_DIR)

# openclipart-png as the corpus, tuxpaint-stamps-default as the evaluation set (apt-get download, no root)
demo-real: install
	$(BIN)/overlap-audit demo-real $(DEMO_REAL_DIR)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_phash.py
	$(BIN)/python benchmarks/bench_search.py
	$(BIN)/python benchmarks/phash_quality.py
	$(BIN)/python benchmarks/bench_power.py
	$(BIN)/python benchmarks/bench_detectors.py
	$(BIN)/python benchmarks/bench_detectors.py --photos debian
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_planted.py
	$(BIN)/python benchmarks/bench_scale.py --sizes 1e4 1e5 1e6 --queries 10000 --hnsw-max 1e5

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(DEMO_REAL_DIR) .pytest_cache
