# All set-up happens through the venv target: `make test` on a fresh clone installs what it needs.
PYTHON ?= python3
TORCH ?= torch
VENV := .venv
BIN := $(VENV)/bin
WEIGHT ?= 5
# make train, make train-baseline and make experiment share runs/w5 and runs/w1.
RUN_DIR ?= runs/w$(WEIGHT)
TRAIN_ARGS ?=

# One stamp per install level, so each target installs only what it needs, once per pyproject.toml change.
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev test test-fast lint train train-baseline resume experiment bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Training, generation and experiments: the package and its runtime dependencies only.
$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .
	touch $@

# Tests, lint and benchmarks add the dev extra (pytest, ruff, matplotlib, transformers).
$(DEV_STAMP): $(RUNTIME_STAMP)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(RUNTIME_STAMP)

install-dev: $(DEV_STAMP)

test: install-dev
	$(BIN)/pytest -q

test-fast: install-dev
	$(BIN)/pytest -q -m "not slow"

lint: install-dev
	$(BIN)/ruff check tstool tests bench
	$(BIN)/ruff format --check tstool tests bench

# --resume auto: running it again continues an interrupted run, or reuses a finished one.
train: install
	$(BIN)/tstool train --config tiny --article-weight $(WEIGHT) --out-dir $(RUN_DIR) --resume auto $(TRAIN_ARGS)
	$(BIN)/tstool generate --checkpoint $(RUN_DIR) --num-samples 1 --score-articles

train-baseline:
	$(MAKE) train WEIGHT=1

# `make train` already continues an interrupted run; this name says so.
resume: train

experiment: install
	$(BIN)/tstool experiment --config tiny --out-dir runs

bench: install-dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) runs .cache .pytest_cache .ruff_cache build dist *.egg-info
