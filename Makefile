# segflow — everything goes through .venv (made by `make install`, or by the first target
# that needs it). `make help` lists the targets.
VENV    := .venv
PY      ?= $(VENV)/bin/python
ARGS    ?=
# make train without ARGS: this experiment (a first run sized for minutes on a CPU);
# PRESET= (empty) or any ARGS: the full recipe of the configs, with those overrides.
PRESET  ?= first_run
BG      ?= 0
PORT    ?= 6006
MODE    ?= quick
# make sweep: the architectures and dataset of the predefined sweep.
MODELS  ?= unet,csnet,medsegdiff_small,flow_small
# make compare: the training seeds.
SEEDS   ?= 0
DATA    ?= synthetic_xca
# make sweep-lr: one model, these peak learning rates.
MODEL   ?= unet
LRS     ?= 1e-4,3e-4,1e-3,3e-3
LAUNCHER ?= local
# What a background run adds: no progress bar (the log shows one line per epoch instead).
BG_ARGS := ++trainer.enable_progress_bar=false

.PHONY: help install train sweep sweep-lr compare logs test test-slow lint tensorboard bench gpu-check report clean

# Targets that run Python depend on the venv only when PY is the default one: a missing
# .venv is created first (one command from a fresh clone); PY=<other python> is used as is.
ifeq ($(PY),$(VENV)/bin/python)
NEEDS_VENV := $(VENV)/bin/python
endif

help:  ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# CPU=1: the CPU build of torch from PyTorch's CPU index first (no CUDA libraries, no
# triton), so that the editable install finds torch satisfied and keeps it; the default
# (CPU=0) takes PyPI's torch, a CUDA build on Linux x86_64. TORCH_SPEC: pyproject's range.
CPU        ?= 0
TORCH_SPEC ?= torch>=2.4,<2.15
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
define make_venv
	python3 -m venv $(VENV)
	$(if $(filter 1,$(CPU)),$(VENV)/bin/pip install --index-url $(TORCH_CPU_INDEX) "$(TORCH_SPEC)")
	$(VENV)/bin/pip install -e ".[dev]"
endef

$(VENV)/bin/python:
	$(make_venv)

install:  ## create (or update) .venv and install segflow with its dev tools (CPU=1: a CPU-only torch)
	$(make_venv)

# BG=1: detached (nohup, own session); prints the PID and the log files, which live in the
# run folder (pinned first with hydra.run.dir so the path is known before the run starts).
TRAIN_ARGS = $(if $(strip $(ARGS)),$(ARGS),$(if $(strip $(PRESET)),experiment=$(PRESET)))

train: | $(NEEDS_VENV)  ## a first run in minutes (experiment=first_run); ARGS="model=csnet ..." the full recipe with overrides; BG=1 in the background
ifeq ($(BG),1)
	@dir=$$($(PY) -m segflow.train $(TRAIN_ARGS) $(BG_ARGS) --cfg all --resolve -p hydra.run 2>/dev/null | sed -n 's/^dir: //p'); \
	if [ -z "$$dir" ]; then $(PY) -m segflow.train $(TRAIN_ARGS) $(BG_ARGS) --cfg job >/dev/null; exit 2; fi; \
	mkdir -p "$$dir"; \
	nohup setsid $(PY) -m segflow.train $(TRAIN_ARGS) $(BG_ARGS) "hydra.run.dir='$$dir'" \
		> "$$dir/console.log" 2>&1 < /dev/null & \
	echo "PID $$!"; echo "log $$dir/train.log"; echo "console $$dir/console.log"; \
	echo "follow: make logs   stop (writes last.ckpt): kill $$!"
else
	$(PY) -m segflow.train $(TRAIN_ARGS)
endif

sweep: | $(NEEDS_VENV)  ## the architecture sweep: MODELS=unet,csnet,medsegdiff_small,flow_small DATA=synthetic_xca [LAUNCHER=joblib] [ARGS=...]
	$(PY) -m segflow.train -m model=$(MODELS) data=$(DATA) launcher=$(LAUNCHER) sweep_name=arch_$(DATA) $(ARGS)

sweep-lr: | $(NEEDS_VENV)  ## a learning-rate sweep: MODEL=unet LRS=1e-4,3e-4,1e-3,3e-3 DATA=... [ARGS=...]
	$(PY) -m segflow.train -m model=$(MODEL) data=$(DATA) model.learning_rate=$(LRS) launcher=$(LAUNCHER) sweep_name=lr_$(MODEL)_$(DATA) $(ARGS)

# make compare: train MODELS x SEEDS on DATA with one budget, choose settings on val, test once, one table.
compare: | $(NEEDS_VENV)  ## fair comparison: DATA=synthetic_xca [MODELS=unet,flow_small] [SEEDS=0,1,2] [ARGS="data.root=... --nfe 1,4"]
	$(if $(strip $(MODELS)),,$(error MODELS is empty: name the models to compare, e.g. make compare MODELS=unet,flow_small))
	$(if $(strip $(DATA)),,$(error DATA is empty: name the dataset, e.g. make compare DATA=synthetic_xca))
	$(PY) -m segflow.compare --data $(DATA) --models $(MODELS) --seeds $(SEEDS) $(ARGS)

logs:  ## follow the newest run's log (console.log of a BG=1 run, else train.log)
	@new=$$(ls -t $$(find $${SEGFLOW_OUTPUT_DIR:-outputs} \( -name console.log -o -name train.log \) 2>/dev/null) 2>/dev/null | head -1); \
	if [ -z "$$new" ]; then echo "no run logs under $${SEGFLOW_OUTPUT_DIR:-outputs}/"; exit 1; fi; \
	dir=$$(dirname "$$new"); log="$$dir/train.log"; [ -f "$$dir/console.log" ] && log="$$dir/console.log"; \
	echo "==> $$log"; tail -n 50 -F "$$log"

test: | $(NEEDS_VENV)  ## the test suite CI runs (no slow, no gpu)
	$(PY) -m pytest -m "not slow and not gpu" -q

test-slow: | $(NEEDS_VENV)  ## the slow tests (overfit checks, long runs)
	$(PY) -m pytest -m "slow" -q

report: | $(NEEDS_VENV)  ## comparison table + plots of runs (RUNS="outputs/multirun/<sweep>/<time> ..." [OUT=dir])
	$(PY) -m segflow.report $(or $(RUNS),$(error set RUNS to run folders or a multirun folder)) $(if $(OUT),--out $(OUT))

lint: | $(NEEDS_VENV)  ## ruff over segflow and tests
	$(PY) -m ruff check segflow tests

bench: | $(NEEDS_VENV)  ## benchmarks -> outputs/bench/<time>/ (MODE=full on a GPU; ARGS="models=[flow] ...")
	$(PY) -m segflow.bench bench=$(MODE) $(ARGS)

gpu-check: | $(NEEDS_VENV)  ## the prepared GPU check (fused attention, speed options, DDP, DRIVE time to Dice, loader wait) -> gpu_check.json + .md (ARGS=--dry-run)
	$(PY) -m segflow.bench.gpu_check $(ARGS)

tensorboard: | $(NEEDS_VENV)  ## tensorboard over every run
	$(PY) -m tensorboard.main --logdir outputs --port $(PORT) --bind_all

clean:  ## remove caches (keeps outputs/ and data/)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
