# segflow — everything goes through .venv (made by `make install`).
PY      ?= .venv/bin/python
ARGS    ?=
BG      ?= 0
PORT    ?= 6006
MODE    ?= quick

.PHONY: install train test test-slow lint tensorboard bench report clean

install:  ## create .venv and install segflow with its dev tools
	python3 -m venv .venv
	.venv/bin/pip install -e ".[dev]"

train:  ## train the default model (ARGS="model=csnet data=synthetic_octa ...")
	$(PY) -m segflow.train $(ARGS)

test:  ## the test suite CI runs (no slow, no gpu)
	$(PY) -m pytest -m "not slow and not gpu" -q

test-slow:  ## the slow tests (overfit checks, long runs)
	$(PY) -m pytest -m "slow" -q

report:  ## comparison table + plots of runs (RUNS="outputs/multirun/<sweep>/<time> ..." [OUT=dir])
	$(PY) -m segflow.report $(or $(RUNS),$(error set RUNS to run folders or a multirun folder)) $(if $(OUT),--out $(OUT))

lint:
	$(PY) -m ruff check segflow tests

bench:  ## benchmarks -> outputs/bench/<time>/ (MODE=full on a GPU; ARGS="models=[flow] ...")
	$(PY) -m segflow.bench bench=$(MODE) $(ARGS)

tensorboard:  ## tensorboard over every run
	$(PY) -m tensorboard.main --logdir outputs --port $(PORT) --bind_all

clean:  ## remove caches (keeps outputs/ and data/)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
