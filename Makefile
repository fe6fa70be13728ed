# Two commands do all set-up on a fresh machine: `make train` and `make test`.
# `make test-fast` is the edit-test loop: no slow, subprocess or DDP tests (markers in pyproject.toml), under a minute.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOGDIR ?= outputs

.PHONY: train test test-fast lint tensorboard schedule dashboard-screenshot clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/lightning-optim-train $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow and not subprocess and not ddp" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

schedule: $(STAMP)
	$(BIN)/lightning-optim-schedule $(ARGS)

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir $(LOGDIR) --host localhost --port 6006

dashboard-screenshot: $(STAMP)
	scripts/dashboard_screenshot.sh $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun lightning_logs .pytest_cache .ruff_cache
