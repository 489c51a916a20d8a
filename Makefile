# All set-up happens through the venv target: `make test` on a fresh clone installs what it needs.
PYTHON ?= python3
TORCH ?= torch
VENV := .venv
BIN := $(VENV)/bin
WEIGHT ?= 5
RUN_DIR ?= runs/w$(WEIGHT)
TRAIN_ARGS ?=
# The seeded study's budget: steps per run and seeds. Fifteen tiny runs of 400 steps (5 seeds) take about
# half an hour of 2 CPU cores; on a GPU, `make experiment STEPS=2000` runs the preset's full budget.
STEPS ?= 400
SEEDS ?= 5

# One stamp per install level, so each target installs only what it needs, once per pyproject.toml change.
RUNTIME_STAMP := $(VENV)/.installed-runtime
PLOT_STAMP := $(VENV)/.installed-plot
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

# The experiment's figures add matplotlib.
$(PLOT_STAMP): $(RUNTIME_STAMP)
	$(BIN)/pip install --quiet -e ".[plot]"
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

# --resume auto: running it again continues an interrupted run, or reuses a finished one. The sample is
# drawn at temperature 1, the only setting whose article rate gets a verdict.
train: install
	$(BIN)/tstool train --config tiny --article-weight $(WEIGHT) --out-dir $(RUN_DIR) --resume auto $(TRAIN_ARGS)
	$(BIN)/tstool generate --checkpoint $(RUN_DIR) --num-samples 1 --temperature 1 --max-new-tokens 150 --score-articles

train-baseline:
	$(MAKE) train WEIGHT=1

# `make train` already continues an interrupted run; this name says so.
resume: train

# Rerunning it reuses finished runs and resumes an interrupted one.
experiment: $(PLOT_STAMP)
	$(BIN)/tstool experiment --config tiny --max-steps $(STEPS) --seeds $(SEEDS) --prompts 48 --out-dir runs/experiment

bench: install-dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) runs .cache .pytest_cache .ruff_cache build dist *.egg-info
