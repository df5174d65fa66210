# The two commands of README: `make repro` runs the pipeline, `make test` runs the tests.
# Both create or refresh .venv from requirements.lock first (every package pinned); the stamp
# makes that free when nothing changed.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.requirements-installed

export PATH := $(abspath $(VENV)/bin):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: repro params test test-fast lint docs deps venv lock

repro: params
	dvc repro

# params.yaml is composed from conf/ (as `dvc exp run` does); a no-op when it is current.
params: $(STAMP)
	python -m tools.compose_params

# Both test targets run on 2 cores (pytest-xdist); the baseline pipeline is built once and
# shared by the workers. `make test` prints its 15 slowest tests.
test: $(STAMP)
	python -m pytest -n 2 --dist worksteal --durations=15

# Everything but the slow tests (real downloads, DVC runs, the browser, the load test and the
# benchmark): about 45 s.
test-fast: $(STAMP)
	python -m pytest -n 2 -m "not slow"

# docs/params.md from the params' pydantic descriptions and params.yaml, composed first (a test
# fails when it is stale).
docs: params
	python -m tools.params_doc

# dvc.yaml's code dependencies: each stage's import closure (a test fails when they are stale).
deps: $(STAMP)
	python -m tools.stage_deps

# ruff on the code; ShellCheck on the GitHub workflows' shell steps (tools/lint_workflows.py).
lint: $(STAMP)
	ruff check .
	ruff format --check .
	python -m tools.lint_workflows

venv: $(STAMP)

$(STAMP): requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
		"error: Python 3.11 or newer is needed, $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -r requirements.lock
	touch $@

# requirements.lock from requirements.txt: a fresh environment, then pip freeze.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
	{ sed -n '1,4p' requirements.lock; .lock-venv/bin/python -m pip freeze; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf .lock-venv
