# seqmnist: `make train` and `make test` set up the environment on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

# An offline copy of the datasets beside the project is used when present; otherwise
# data.root defaults to data/ and torchvision downloads into it.
ifneq ($(wildcard ../shared/data/MNIST/raw),)
export SEQMNIST_DATA_ROOT ?= $(abspath ../shared/data)
endif

.PHONY: help install install-extras browser train test test-fast lint format tensorboard sweep \
	report results results-table results-anytime evaluate predict export export-parity demo mlflow bench bench-accuracy bench-early-exit \
	search-compare dashboard gpu-check cluster-up cluster-down clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	@# hydra-optuna-sweeper (replaced by src/hydra_plugins/seqmnist_optuna_sweeper) registered the
	@# same hydra/sweeper=optuna name; an environment made before the switch must lose it.
	$(PY) -m pip uninstall -y -q hydra-optuna-sweeper 2>/dev/null || true
	touch $@

install: $(STAMP)  ## create .venv and install the project with dev tools

# The optional extras (pyproject's `extras`: MLflow, W&B, ONNX export, the Gradio demo and
# Selenium, CMA-ES for sampler=cmaes), which `make test` exercises; `make train` never needs them.
EXTRAS_STAMP := $(VENV)/.installed-extras
$(EXTRAS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,extras]'
	touch $@

install-extras: $(EXTRAS_STAMP) browser  ## + MLflow, W&B, ONNX, Gradio, and Chromium for the browser test

# Debian's Chromium and ChromeDriver, for the demo's browser test (no browser download: the
# test drives the system's). Installed when missing and apt-get can (root); otherwise the
# browser tests are skipped with this reason.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium and chromium-driver for the browser test"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null; } \
		|| echo "note: apt-get could not install chromium: the browser tests will be skipped"; \
	else \
		echo "note: no chromium/chromedriver and no root apt-get: the browser tests will be" \
			"skipped (sudo apt-get install chromium chromium-driver)"; \
	fi

train: install  ## train the default model (extra overrides: make train ARGS="cell=gru layers=3")
	$(PY) -m seqmnist.train $(ARGS)

# Two pytest workers (pytest-xdist); a file's tests stay on one worker (its fixtures run
# once), and the tests of the local cluster form one group that runs one test at a time
# (tests/conftest.py). Each test runs torch on one thread, so two workers fit the two cores.
# Skips are listed with their reasons at the end; under CI=true any skip fails the run.
XDIST ?= -n 2 --dist loadgroup

test: install-extras  ## run the test suite (PYTEST_ARGS="-m 'not e2e'" to narrow it)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# In-process tests only: no file-wide fixture is worth keeping on one worker, so the tests
# themselves are spread over the two (--dist load).
XDIST_FAST ?= -n 2 --dist load
test-fast: install  ## the in-process tests only (no subprocess, no slow ones), on 2 workers: ~2 minutes
	$(PY) -m pytest $(XDIST_FAST) -m "not slow and not e2e" $(PYTEST_ARGS)

lint: install  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

tensorboard: install  ## TensorBoard over every run in outputs/
	$(VENV)/bin/tensorboard --logdir outputs

# Sweeps on this machine run two jobs at a time, the cores split between them (1 thread each
# on 2 cores): small recurrent nets use one core better than two. Measured on a
# 2-core machine, `make sweep`'s 12 jobs alternately both ways: see docs/performance.md.
# LAUNCHER= (empty) runs one job at a time with every core.
LAUNCHER ?= hydra/launcher=joblib hydra.launcher.n_jobs=2

# A new sweep dir, named before the sweep starts (not found afterwards as the newest one) so
# another sweep running at the same time cannot be mistaken for it.
NEW_SWEEP_DIR = outputs/train/multiruns/$$(date +%Y-%m-%d_%H-%M-%S_%6N)

sweep: install  ## cells x depths x 2 seeds, 2 short epochs each (~1.5 min on 2 cores), then the report
	@dir="$(NEW_SWEEP_DIR)"; status=0; \
	$(PY) -m seqmnist.train -m cell=rnn,lstm,gru layers=1,2 seed=0,1 trainer.max_epochs=2 \
		trainer.limit_train_batches=150 trainer.enable_progress_bar=false \
		callbacks.model_summary=null $(LAUNCHER) "hydra.sweep.dir=$$dir" $(ARGS) || status=$$?; \
	$(PY) -m seqmnist.report "$$dir" || status=$$?; \
	exit $$status

report: install  ## summarise a sweep: make report DIR=outputs/train/multiruns/<time>
	@test -n "$(DIR)" || { echo "usage: make report DIR=<sweep dir>"; exit 2; }
	$(PY) -m seqmnist.report "$(DIR)"

# The experiments behind the results table (docs/results.md): those whose conf/experiment/*.yaml says
# `results: run: true` (the CPU ones; the pixel-by-pixel smnist_lstm/psmnist_lstm need a GPU),
# each over seeds 0,1,2, as one multirun. Read when the target runs, after the install.
RESULTS_EXPERIMENTS ?= $(shell $(PY) -m seqmnist.results --list)
RESULTS_SEEDS ?= 0,1,2
# Two runs at a time, as `make sweep` (LAUNCHER above).
# The pages whose markers the two tables go between.
RESULTS_PAGE ?= docs/results.md
ANYTIME_PAGE ?= docs/answering-early.md
RESULTS_LAUNCHER ?= $(LAUNCHER)

# The table is built even when a job failed; the target then exits 1.
results: install  ## CPU experiments x seeds 0,1,2 (~1 h on 2 cores), then the tables of docs/results.md and docs/answering-early.md
	@dir="$(NEW_SWEEP_DIR)"; status=0; \
	echo "results: sweep dir $$dir"; \
	$(PY) -m seqmnist.train -m experiment=$(RESULTS_EXPERIMENTS) seed=$(RESULTS_SEEDS) \
		$(RESULTS_LAUNCHER) trainer.enable_progress_bar=false callbacks.model_summary=null \
		"hydra.sweep.dir=$$dir" $(ARGS) || status=$$?; \
	$(PY) -m seqmnist.results "$$dir" --page $(RESULTS_PAGE) || status=$$?; \
	$(PY) -m seqmnist.results "$$dir" --anytime --page $(ANYTIME_PAGE) || status=$$?; \
	exit $$status

results-table: install  ## rebuild the results table only: make results-table DIRS="<sweep dir> ..."
	@test -n "$(DIRS)" || { echo "usage: make results-table DIRS=\"<sweep dir> [<sweep dir> ...]\""; exit 2; }
	$(PY) -m seqmnist.results $(DIRS) --page $(RESULTS_PAGE)

# Early exit over the test set for every run of the sweeps (a forward pass each, ~10 s a run).
results-anytime: install  ## rebuild the answering-early table: make results-anytime DIRS="<sweep dir> ..."
	@test -n "$(DIRS)" || { echo "usage: make results-anytime DIRS=\"<sweep dir> [<sweep dir> ...]\""; exit 2; }
	$(PY) -m seqmnist.results $(DIRS) --anytime --page $(ANYTIME_PAGE)

# The pruning measurement of docs/sweeps-and-search.md: the same seeded search with each pruner, one after the
# other (each runs two trials at a time on the two cores), then one table comparing them.
SEARCH_PRUNERS ?= none median percentile hyperband asha
search-compare: install  ## the same Optuna search with each pruner (~15 min on 2 cores), then a comparison
	@base="outputs/train/multiruns/search-compare-$$(date +%Y-%m-%d_%H-%M-%S)"; dirs=""; \
	for p in $(SEARCH_PRUNERS); do \
		$(PY) -m seqmnist.train hparams_search=optuna_compare hydra.sweeper.pruner=$$p \
			"hydra.sweep.dir=$$base/$$p" $(ARGS) || exit $$?; dirs="$$dirs $$base/$$p"; \
	done; set -- $$dirs; first=$$1; shift; $(PY) -m seqmnist.report $$first --compare "$$@"

# An optional extra: installed on first use, not by `make install`.
dashboard: install  ## optuna-dashboard on a study: make dashboard STORAGE=sqlite:///outputs/.../optuna.db
	@test -n "$(STORAGE)" || { echo "usage: make dashboard STORAGE=sqlite:///<sweep dir>/optuna.db"; exit 2; }
	$(PY) -m pip install --quiet -e '.[dashboard]'
	$(VENV)/bin/optuna-dashboard "$(STORAGE)"

evaluate: install  ## test-set report of a checkpoint: make evaluate CKPT=<.ckpt or run dir>
	@test -n "$(CKPT)" || { echo "usage: make evaluate CKPT=<.ckpt file or run dir> [ARGS=\"data.root=DIR device=cpu\"]"; exit 2; }
	$(PY) -m seqmnist.evaluate ckpt_path="$(CKPT)" $(ARGS)

predict: install  ## classify pictures: make predict CKPT=<.ckpt or run dir> IMAGES="a.png dir/"
	@test -n "$(CKPT)" && test -n "$(IMAGES)" || { echo "usage: make predict CKPT=<.ckpt or run dir> IMAGES=\"a.png dir/\" [ARGS=\"--json --save-preprocessed DIR\"]"; exit 2; }
	$(PY) -m seqmnist.predict --ckpt "$(CKPT)" $(ARGS) $(IMAGES)

export: install-extras  ## ONNX/TorchScript: make export CKPT=<.ckpt or run dir> [FORMAT=torchscript]
	@test -n "$(CKPT)" || { echo "usage: make export CKPT=<.ckpt or run dir> [FORMAT=onnx|torchscript] [ARGS=\"out=FILE\"]"; exit 2; }
	$(PY) -m seqmnist.export ckpt_path="$(CKPT)" format=$(or $(FORMAT),onnx) $(ARGS)

# The parity table of docs/using-a-model.md: a short real-data run of each model kind (every cell, the fused
# CPU GRU, 3 layers, bidirectional, permuted pixels), each exported both ways and checked on
# 256 test images (~3 min). Runs land in outputs/export-parity/.
PARITY_KINDS ?= rnn:cell=rnn lstm:cell=lstm gru-fused:cell=gru \
	lstm-3x64:cell=lstm,layers=3,hidden=64 gru-2x-bidirectional:cell=gru,layers=2,bidirectional=true \
	lstm-permuted:cell=lstm,data.sequence=permuted,hidden=32
export-parity: install-extras  ## export every model kind both ways; print each parity check (~3 min)
	@out=outputs/export-parity; mkdir -p $$out; for kind in $(PARITY_KINDS); do \
		name=$${kind%%:*}; args=$$(echo $${kind#*:} | tr , ' '); \
		$(PY) -m seqmnist.train $$args trainer.max_epochs=1 trainer.limit_train_batches=40 \
			trainer.limit_val_batches=5 trainer.enable_progress_bar=false test=false \
			callbacks.model_summary=null hydra.run.dir=$$out/$$name > $$out/$$name-console.log 2>&1 \
			|| { echo "training $$name failed: $$out/$$name-console.log"; exit 1; }; \
		for fmt in onnx torchscript; do \
			$(PY) -m seqmnist.export ckpt_path=$$out/$$name format=$$fmt out=$$out/$$name/model \
				2>&1 | sed -n "s/^.*- check on/$$name $$fmt: check on/p"; \
		done; \
	done

PORT ?= 7860
demo: install-extras  ## the draw-a-digit page: make demo CKPT=<.ckpt, run dir or .onnx> [PORT=7860]
	@test -n "$(CKPT)" || { echo "usage: make demo CKPT=<.ckpt, run dir, .onnx or .pt> [PORT=7860]"; exit 2; }
	$(PY) -m seqmnist.demo --ckpt "$(CKPT)" --port $(PORT) $(ARGS)

# logger=mlflow writes to this database (conf/logger/mlflow.yaml).
MLFLOW_DIR ?= outputs/mlflow
mlflow: install-extras  ## the MLflow UI on the runs of logger=mlflow (outputs/mlflow/mlflow.db)
	$(VENV)/bin/mlflow ui --backend-store-uri "sqlite:///$(abspath $(MLFLOW_DIR))/mlflow.db" \
		--port $(or $(MLFLOW_PORT),5000)

# A SLURM cluster of two nodes (slurmctld, slurmdbd over MariaDB, slurmd n1 and n2), PostgreSQL
# and an MLflow server on this machine, all under outputs/cluster/ (scripts/local_cluster.sh):
# installs what is missing (Debian packages, as root), starts what is not running, waits
# until the nodes are idle and the servers answer, and writes outputs/cluster/env.sh.
cluster-up: install-extras  ## start the local cluster (SLURM x2, PostgreSQL, MLflow): then source outputs/cluster/env.sh
	bash scripts/local_cluster.sh up

cluster-down:  ## stop what cluster-up started (by pid)
	bash scripts/local_cluster.sh down

bench: install  ## training throughput: Lightning path vs a plain PyTorch loop (outputs/bench/)
	$(PY) -m seqmnist.bench $(ARGS)

bench-early-exit: install  ## predict's images/s with early exit vs all rows: make bench-early-exit CKPT=<run> [ARGS="--threshold 0.99"]
	@test -n "$(CKPT)" || { echo "usage: make bench-early-exit CKPT=<run dir or .ckpt> [ARGS=\"--threshold P\"]"; exit 2; }
	$(PY) -m seqmnist.bench.early_exit --ckpt "$(CKPT)" --root "$${SEQMNIST_DATA_ROOT:-data}" $(ARGS)

gpu-check: install  ## on a GPU machine: fp16/bf16 on cuDNN, device-resident data, NCCL, bench (pass/fail table)
	$(PY) -m seqmnist.bench.gpu_check

# Time to 99%: one fast99 run (validation picks the checkpoint; the full test set scores it).
# The last log line gives val and test accuracy and the training seconds.
bench-accuracy: install  ## time to 99%: train experiment=fast99, then its plain PyTorch counterpart
	$(PY) -m seqmnist.train experiment=fast99 trainer.enable_progress_bar=false $(ARGS)
	@# The same recipe (conf/experiment/fast99.yaml) as a plain PyTorch script, timed alike:
	@# its JSON line gives each epoch's validation accuracy and seconds, and the test accuracy.
	$(PY) -m seqmnist.bench.plain_script --root "$${SEQMNIST_DATA_ROOT:-data}" \
		--experiment fast99 --test

clean:  ## remove caches (keeps .venv, data/ and outputs/)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -not -path './.venv/*' -prune -exec rm -rf {} +
