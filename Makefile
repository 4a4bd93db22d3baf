# The few commands a person types. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench sandbox clean

$(BIN)/syncengine: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/syncengine
	$(BIN)/syncengine demo

test: $(BIN)/syncengine
	$(BIN)/python -m pytest -q

.PHONY: soak
soak: $(BIN)/syncengine
	SIM_SCENARIOS=$${SIM_SCENARIOS:-5000} $(BIN)/python -m pytest -q tests/sim

lint: $(BIN)/syncengine
	$(BIN)/ruff check syncengine tests benchmarks
	$(BIN)/mypy

bench: $(BIN)/syncengine
	$(BIN)/python -m benchmarks

sandbox: $(BIN)/syncengine
	$(BIN)/syncengine sandbox --port 8080

clean:
	rm -rf $(VENV) .demo build *.egg-info
