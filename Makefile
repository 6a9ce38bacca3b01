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
.PHONY: help install train test lint sweep study ablation search-bench report bench device-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[dev,hub]"
	touch $@

install: $(STAMP)  ## create .venv and install the project (torch pinned)

train: $(STAMP)  ## train the default FocalNet on the embedded digits data (ARGS=overrides)
	$(BIN)/focalnet-train $(ARGS)

# Two workers, one test file each at a time, the longest files first (tests/conftest.py): most tests start
# focalnet-train in a subprocess, whose one-threaded Python start-up leaves a core idle; on 2 cores the suite took
# 500 s this way against 765 s serially.
test: $(STAMP)  ## run the test suite (2 workers; ARGS="-n 0" runs it serially)
	$(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder $(ARGS)

lint: $(STAMP)  ## ruff over the code and tests
	$(BIN)/ruff check src tests

# A sweep reports even when some of its jobs failed (their errors are rows of the table); make then fails.
sweep: $(STAMP)  ## 12-job grid over the card's axes on digits, then its report (ARGS=more overrides)
	@dir=outputs/sweep/$$(date +%Y-%m-%d_%H-%M-%S); \
	$(BIN)/focalnet-train -m model.focal_levels=1,2,3 model.focal_kernel=3,5 model.num_layers=2,4 \
		trainer.max_epochs=4 hydra.sweep.dir=$$dir $(ARGS); \
	status=$$?; $(BIN)/focalnet-report $$dir && exit $$status

# A study runs in rounds of seeds until each row is decided (docs/studies.md); the same command resumes it, here or on
# another machine (the committed experiments/<STUDY>/<DATA>/results.csv records every run). DATA names the benchmark.
study: $(STAMP)  ## run a study until every row is decided; report in experiments/<STUDY>/<DATA>/: make study STUDY=depth DATA=fashion_mnist (ARGS: more overrides, or --dry-run to see the next round)
	$(BIN)/focalnet-study $(STUDY) --data $(DATA) $(ARGS)

ablation:  ## the old name of make study, kept for one release
	@echo "make ablation is the old name of make study (kept for one release)" >&2
	@$(MAKE) --no-print-directory study

# The same 16-trial search of learning rate x width on digits, two trials in flight (hydra/launcher=parallel): ASHA
# with Hydra's batches (batch=true: two trials, then the next two), ASHA with each slot refilled at once, and no
# pruning. The epochs each trained, its wall time, how busy it kept its slots and its best trial, in
# docs/search/digits_<name>/results.md (docs/search.md).
SEARCHES ?= asha_batch asha optuna
SEARCH_BENCH := hydra.sweeper.n_trials=16 'optim.optimizer.lr=tag(log, interval(1e-4, 3e-2))' \
	'model.hidden_size=choice(16,32,64)' optim.optimizer.weight_decay=0.05 model.drop_path_rate=0.1 \
	trainer.max_epochs=9 optim.warmup_epochs=1 optim.warmup_steps=null model.weight_init=official \
	trainer.precision=32-true logger=csv callbacks.progress_bar=null hydra/launcher=parallel hydra.sweeper.n_jobs=2
search-bench: $(STAMP)  ## a 16-trial lr x width search on digits, 2 in flight: ASHA in batches, ASHA, unpruned (~10 min)
	@for name in $(SEARCHES); do \
		search=$${name%_batch}; batch=$$([ $$name = $$search ] && echo false || echo true); \
		rm -rf outputs/search_bench/$$name; mkdir -p outputs/search_bench; start=$$(date +%s); \
		$(BIN)/focalnet-train hparams_search=$$search hydra.sweeper.batch=$$batch $(SEARCH_BENCH) \
			hydra.sweep.dir=outputs/search_bench/$$name $(ARGS) > outputs/search_bench/$$name.log 2>&1 || exit 1; \
		echo "$$name (hparams_search=$$search hydra.sweeper.batch=$$batch): $$(( $$(date +%s) - start )) s for the whole command"; \
		$(BIN)/focalnet-report outputs/search_bench/$$name --out docs/search/digits_$$name --no-wandb | \
			grep -E "^(Wall time|Epochs trained in all|Trial slots busy)"; \
		grep -h -A4 best_trial outputs/search_bench/$$name/optimization_results.yaml; \
	done

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
