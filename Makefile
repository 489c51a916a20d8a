# All set-up happens through the venv target: `make test` on a fresh clone installs what it needs.
PYTHON ?= python3
TORCH ?= torch
VENV := .venv
BIN := $(VENV)/bin
WEIGHT ?= 5
# make train, make train-baseline and make experiment share runs/w5 and runs/w1.
RUN_DIR ?= runs/w$(WEIGHT)
TRAIN_ARGS ?=

.PHONY: install test test-fast lint train train-baseline resume experiment bench clean

$(BIN)/tstool: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/tstool

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

lint: install
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

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) runs .cache .pytest_cache .ruff_cache build dist *.egg-info
