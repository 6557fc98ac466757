# Two entry points for a fresh machine: `make demo` (the main job on the embedded demo data) and
# `make test` (the test suite). Each creates the virtual environment it needs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo

.PHONY: demo test lint format venv venv-test clean

$(VENV)/.runtime: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt -c constraints.txt
	touch $@

venv: $(VENV)/.runtime
venv-test: $(VENV)/.test

demo: $(VENV)/.runtime
	$(PY) -m ib_jax.train --config=configs/demo.py --workdir=$(WORKDIR)

# Style is checked before any test runs: a formatting or lint error fails `make test` (and CI).
lint: $(VENV)/.test
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(VENV)/.test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -n 2 -q tests

clean:
	rm -rf $(VENV) workdirs
