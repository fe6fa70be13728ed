# Two commands do all set-up on a fresh machine: `make train` and `make test`.
# `make test-fast` is the edit-test loop: no slow, subprocess or DDP tests (markers in pyproject.toml), in two
# pytest-xdist workers: under a minute on 2 cores (1,313 tests, 56 s).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOGDIR ?= outputs
TEST_WORKERS ?= 2

.PHONY: train test test-fast lint tensorboard schedule dashboard-screenshot docs docs-build docs-screenshot gpu-wheels gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/lightning-optim-train $(ARGS)

# Two pytest-xdist workers: the suite is mostly subprocess and Trainer runs, about 11 minutes in one process on 2 cores.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow and not subprocess and not ddp" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

schedule: $(STAMP)
	$(BIN)/lightning-optim-schedule $(ARGS)

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir $(LOGDIR) --host localhost --port 6006

# The documentation site (mkdocs.yml): `make docs` serves it on http://localhost:8000 and rebuilds on edits;
# `make docs-build` builds it into site/ with --strict (a broken link or docstring reference fails; the test suite runs
# it too); `make docs-screenshot` checks the built site in headless Chromium and saves docs/images/site.png.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr localhost:8000

docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-screenshot: docs-build
	scripts/docs_screenshot.sh

dashboard-screenshot: $(STAMP)
	scripts/dashboard_screenshot.sh $(ARGS)

# The GPU machine lent by the device tool has torch and Lightning but no package index: `make gpu-wheels` here puts
# the two pure-Python wheels lightning_optim needs beyond its image into .whl/ (git-ignored), which the device call
# carries; benchmarks/README.md has the one-line device command. `make gpu-check` runs the checks where a GPU is.
gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir .whl
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: -d .whl omegaconf==2.3.1
	$(BIN)/python -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3

gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun lightning_logs site .pytest_cache .ruff_cache
