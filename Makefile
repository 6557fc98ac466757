# Two entry points for a fresh machine: `make demo` (the main job on the embedded demo data) and
# `make test` (style, then the test suite on both supported stacks). Each creates what it needs.
#
# Lane 1 (the reference lane): Python 3.11, jax 0.10, the PyTorch CPU reference (torch + transformers).
# Lane 2 (the newest stack): Python 3.12 with the newest jax/flax/optax/orbax/grain that
# requirements.txt allows; every test that does not need the PyTorch reference, plus a short demo.
PYTHON ?= python3.11
PYTHON_NEWEST ?= env PYENV_VERSION=3.12.1 python3.12
VENV ?= .venv
VENV_NEWEST ?= .venv-newest
VENV_BEAM ?= .venv-beam
PY := $(VENV)/bin/python
PY_NEWEST := $(VENV_NEWEST)/bin/python
WORKDIR ?= workdirs/demo
PIP_QUIET := -q --disable-pip-version-check

.PHONY: demo test test-reference test-newest test-beam lint format venv venv-test venv-newest clean

$(VENV)/.runtime: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip
	$(PY) -m pip install $(PIP_QUIET) -r requirements.txt -c constraints.txt
	$(PY) -m pip install $(PIP_QUIET) --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt requirements-reference.txt
	$(PY) -m pip install $(PIP_QUIET) -r requirements-reference.txt -c constraints.txt
	touch $@

$(VENV_NEWEST)/.test: requirements.txt requirements-test.txt constraints-newest.txt pyproject.toml
	$(PYTHON_NEWEST) -m venv $(VENV_NEWEST)
	$(PY_NEWEST) -m pip install $(PIP_QUIET) --upgrade pip
	$(PY_NEWEST) -m pip install $(PIP_QUIET) -r requirements-test.txt -c constraints-newest.txt
	$(PY_NEWEST) -m pip install $(PIP_QUIET) --no-deps -e .
	touch $@

# Lane 3 (Beam): apache-beam 2.77 cannot sit beside constraints.txt (it needs pillow<13, protobuf<7,
# python-dateutil<3, pyarrow<26), so `prepare` on Beam is tested in a venv of its own.
$(VENV_BEAM)/.test: requirements.txt constraints-beam.txt pyproject.toml
	$(PYTHON) -m venv $(VENV_BEAM)
	$(VENV_BEAM)/bin/python -m pip install $(PIP_QUIET) --upgrade pip
	$(VENV_BEAM)/bin/python -m pip install $(PIP_QUIET) -r requirements.txt "pytest>=8,<10" apache-beam -c constraints-beam.txt
	$(VENV_BEAM)/bin/python -m pip install $(PIP_QUIET) --no-deps -e .
	touch $@

venv: $(VENV)/.runtime
venv-test: $(VENV)/.test
venv-newest: $(VENV_NEWEST)/.test

demo: $(VENV)/.runtime
	$(PY) -m ib_jax.train --config=configs/demo.py --workdir=$(WORKDIR)

# Style is checked before any test runs: a formatting or lint error fails `make test` (and CI).
lint: $(VENV)/.test
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(VENV)/.test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test-reference: $(VENV)/.test
	$(PY) -m pytest -n 2 -q tests

# Tests marked `reference` need torch: the CPU wheel on these machines is for Python 3.11 only (PyPI's
# cp312 torch is the CUDA build, a 527 MB wheel plus GBs of CUDA libraries); those marked
# `slow` (multi-process runs, the rehearsal, kill-and-resume: minutes each on 2 cores) run in the
# reference lane only, to keep CI within its time.
# ... after the demo config for a few steps through the real entry point (train, then its eval).
test-newest: $(VENV_NEWEST)/.test
	rm -rf workdirs/newest-demo
	$(PY_NEWEST) -m ib_jax.train --config=configs/demo.py --workdir=workdirs/newest-demo \
		--config.train.num_steps=20 --config.checkpoint.every_steps=10
	$(PY_NEWEST) -m pytest -n 2 -q -m "not reference and not slow" tests

test-beam: $(VENV_BEAM)/.test
	$(VENV_BEAM)/bin/python -m pytest -q tests/test_prepare_beam.py

test: lint test-reference test-beam test-newest

clean:
	rm -rf $(VENV) $(VENV_NEWEST) $(VENV_BEAM) workdirs
