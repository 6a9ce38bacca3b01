# Every target sets itself up: a fresh clone needs only `make train` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# This CPU machine carries a local CPU wheel of exactly this torch; an unpinned torch pulls CUDA builds.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
STUDY  ?= focal_levels
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install train test lint sweep ablation report bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[dev,hub]"
	touch $@

install: $(STAMP)  ## create .venv and install the project (torch pinned)

train: $(STAMP)  ## train the default FocalNet on the embedded digits data (ARGS=overrides)
	$(BIN)/focalnet-train $(ARGS)

test: $(STAMP)  ## run the test suite
	$(BIN)/pytest -q $(ARGS)

lint: $(STAMP)  ## ruff over the code and tests
	$(BIN)/ruff check src tests

sweep: $(STAMP)  ## a small grid sweep over the card's axes on digits, then its report
	$(BIN)/focalnet-train -m model.focal_levels=1,2,3 model.focal_kernel=3,5 $(ARGS)

ablation: $(STAMP)  ## run one paper ablation study on digits: make ablation STUDY=focal_levels
	$(BIN)/focalnet-train -m experiment=study/$(STUDY) $(ARGS)

bench: $(STAMP)  ## training/inference throughput, FLOP/s and fraction of matmul peak
	$(BIN)/focalnet-bench $(ARGS)

clean:  ## remove the venv, run outputs and caches
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
