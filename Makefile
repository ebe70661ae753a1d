# Everything a fresh machine needs: `make demo` and `make test` create .venv if missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-slow lint bench results zoo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per set of extras, rebuilt when the project's requirements change.
$(VENV)/.installed-base: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[dev]"
	touch $@

$(VENV)/.installed-bench: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[dev,bench]"
	touch $@

demo: $(VENV)/.installed-base
	$(BIN)/backprobe demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m slow

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/esn_vs_reservoirpy.py

# The diagnosis over the external zoo of real architectures: docs/zoo.md.
zoo: $(VENV)/.installed-dev
	$(BIN)/python -m tests.zoo.table --out docs/zoo.md

# The lab's full experiments, three seeds each (about an hour on 2 cores with JOBS=2), then
# docs/results.md from the stored runs. RESULTS="adding copy" reruns only those;
# RESULTS= rewrites the page from the stored runs. The bench extra brings ReservoirPy, which
# the ESN rows compare with (without it they say so).
RESULTS ?= all
JOBS    ?= 2
# RESUME=1 skips the runs the database already holds finished with the same config.
RESUME  ?=
results: $(VENV)/.installed-bench
	$(BIN)/python -m backprobe.lab.experiments.results --run $(RESULTS) --jobs $(JOBS) \
		--db backprobe-runs/results.db --out docs/results.md $(if $(RESUME),--resume)

clean:
	rm -rf $(VENV) backprobe-runs .pytest_cache .ruff_cache
