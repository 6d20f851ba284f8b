# overlap-audit: `make demo` runs the whole audit on a small bundled example; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_DIR ?= demo-out
DEMO_REAL_DIR ?= demo-real-out

.PHONY: install test demo demo-real bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch and torchvision first, as the pair that lies on this disk and imports together (open_clip needs
	# torchvision; PyPI's torchvision does not import beside the CPU-only torch 2.13.0 file); a bare `torch`
	# requirement would otherwise pull the newest CUDA build from PyPI.
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/overlap-audit demo $(DEMO_DIR)

# openclipart-png as the corpus, tuxpaint-stamps-default as the evaluation set (apt-get download, no root)
demo-real: install
	$(BIN)/overlap-audit demo-real $(DEMO_REAL_DIR)

bench: install
	$(BIN)/python benchmarks/bench_phash.py
	$(BIN)/python benchmarks/bench_search.py
	$(BIN)/python benchmarks/phash_quality.py
	$(BIN)/python benchmarks/calibration.py
	$(BIN)/python benchmarks/bench_detectors.py
	$(BIN)/python benchmarks/bench_detectors.py --photos debian
	$(BIN)/python benchmarks/bench_scale.py --sizes 1e4 1e5 1e6 --queries 10000 --hnsw-max 1e5

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(DEMO_REAL_DIR) .pytest_cache
