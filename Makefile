# pillow-kae developer tasks. Every target that runs Python first makes sure
# .venv exists and has the project installed (editable, with the dev extra; training adds .[train]).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all venv demo test lint format bench bench-rd bench-speed clean distclean

all: test

venv: $(STAMP)

# Re-run pip only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(PY) -m benchmarks.demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP)
	$(PY) -m benchmarks.kodak

# `kae bench` on Kodak (sample_images/ without ../shared): JSON, table, BD-rate matrices,
# plot and crops in out/bench. More options: make bench-rd ARGS="--codecs kae,jpeg --limit 4".
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -e '.[dev,bench]'
	touch $@

bench-rd: $(BENCH_STAMP)
	$(PY) -m benchmarks.rd $(ARGS)

# Speed and memory against Pillow's JPEG, WebP and AVIF (out/speed/speed.md).
bench-speed: $(STAMP)
	$(PY) -m benchmarks.speed $(ARGS)

clean:
	rm -rf out build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
