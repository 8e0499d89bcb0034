# Two entry points do all the set-up on a fresh machine:
#   make run   - the main job (the default experiment end to end)
#   make test  - the test suite (what CI runs)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: run test lint schema docs clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/pipeline validate specs/mnist_convnet.yaml
	$(BIN)/pipeline validate specs/mnist_convnet.yaml
	$(BIN)/pipeline summary specs/mnist_convnet.yaml

test: $(STAMP)
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/ruff format --check pipeline tests

schema: $(STAMP)
	$(BIN)/pipeline schema -o spec.schema.json
	$(BIN)/pipeline docs -o docs/spec-reference.md

clean-venv:
	rm -rf $(VENV)
