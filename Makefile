# MovieGen — `make up` starts the stack, `make test` runs the whole suite.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test reliability lint typecheck bench install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/moviegen up

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy moviegen_dagster api resources sensors
	$(BIN)/python -m pytest

# The fault and abuse suite alone (`make test` runs it too).
reliability: $(STAMP)
	$(BIN)/python -m pytest tests/reliability -m reliability

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy moviegen_dagster api resources sensors

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf .var test-artifacts .pytest_cache .mypy_cache .ruff_cache
