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

.PHONY: run test lint browser docs clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The default experiment as users run it: `dvc repro` (resolve, prepare, train, evaluate of each
# spec in params.yaml), its stages running as Prefect flow runs on the pipeline's local server.
run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	@$(BIN)/python -c "import json; m = json.load(open('runs/mnist_convnet/metrics.json')); \
	print(f\"test accuracy {m['test_accuracy']:.4f}, macro F1 {m['macro_f1']:.4f} \
	(runs/mnist_convnet/metrics.json; dvc metrics show lists them all)\")"
	@url=$$($(BIN)/pipeline server url 2>/dev/null) && echo "flow runs: $${url%/api}/runs \
	(the local Prefect server keeps running; 'pipeline server stop' stops it)" || true

# Format and lint first: a reformatted file fails here, in seconds, not after the suite.
test: lint browser
	$(BIN)/python -m pytest -q

# tests/orchestration/test_ui.py looks at the Prefect UI in a headless Chromium: installed here
# (Debian's package) when missing and this is root with apt-get; a no-op when one is present.
# Without one that test skips, except under CI, where it fails.
browser:
	@for b in chromium chromium-browser google-chrome google-chrome-stable; do \
		command -v $$b >/dev/null 2>&1 && exit 0; done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "make: no chromium and not root with apt-get: the UI test skips (fails under CI)"; fi

lint: $(STAMP)
	$(BIN)/ruff format --check pipeline tests benchmarks
	$(BIN)/ruff check pipeline tests benchmarks

# The files generated from the spec's schema: spec.schema.json and docs/spec-reference.md.
docs: $(STAMP)
	$(BIN)/pipeline docs

clean-venv:
	rm -rf $(VENV)
