# Every target sets itself up: a fresh clone needs only `make train` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# This CPU machine carries a local CPU wheel of exactly this torch; an unpinned torch pulls CUDA builds.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
STUDY  ?= focal_levels
DATA   ?= digits
SWEEP  ?=
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install train test lint sweep ablation report bench device-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[dev,hub]"
	touch $@

install: $(STAMP)  ## create .venv and install the project (torch pinned)

train: $(STAMP)  ## train the default FocalNet on the embedded digits data (ARGS=overrides)
	$(BIN)/focalnet-train $(ARGS)

# Two workers, one test file each at a time: most tests start focalnet-train in a subprocess, whose one-threaded
# Python start-up leaves a core idle; on 2 cores the suite took 500 s this way against 765 s serially.
test: $(STAMP)  ## run the test suite (2 workers; ARGS="-n 0" runs it serially)
	$(BIN)/pytest -q -n 2 --dist loadfile $(ARGS)

lint: $(STAMP)  ## ruff over the code and tests
	$(BIN)/ruff check src tests

# A sweep reports even when some of its jobs failed (their errors are rows of the table); make then fails.
sweep: $(STAMP)  ## 12-job grid over the card's axes on digits, then its report (ARGS=more overrides)
	@dir=outputs/sweep/$$(date +%Y-%m-%d_%H-%M-%S); \
	$(BIN)/focalnet-train -m model.focal_levels=1,2,3 model.focal_kernel=3,5 model.num_layers=2,4 \
		trainer.max_epochs=4 hydra.sweep.dir=$$dir $(ARGS); \
	status=$$?; $(BIN)/focalnet-report $$dir && exit $$status

# A study runs in rounds of seeds until each row is decided (README "Studies"); the same command resumes it, here or
# on another machine (the committed experiments/<STUDY>/<DATA>/results.csv records every run).
ablation: $(STAMP)  ## run a study until every row is decided; report in experiments/<STUDY>/<DATA>/: make ablation STUDY=depth DATA=fashion_mnist (ARGS: more overrides, or --dry-run to see the next round)
	$(BIN)/focalnet-study $(STUDY) --data $(DATA) $(ARGS)

report: $(STAMP)  ## table and plots of a finished sweep: make report SWEEP=outputs/sweep/<time>
	$(BIN)/focalnet-report $(SWEEP) $(ARGS)

bench: $(STAMP)  ## training/inference throughput, FLOP/s and fraction of matmul peak
	$(BIN)/focalnet-bench $(ARGS)

# On a machine without a CUDA GPU it says so in one line and succeeds. OUT=folder (default outputs/device-check).
device-check: $(STAMP)  ## the GPU checks: pytest -m gpu, a 2-epoch GPU training run, bench fp32/bf16 eager/compile, the timm ratio (scripts/device-check.sh)
	bash scripts/device-check.sh $(OUT)

clean:  ## remove the venv, run outputs and caches
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
