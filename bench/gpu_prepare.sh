#!/usr/bin/env bash
# Prepares .gpu/ for bench/gpu_check.sh, on the CPU machine, after `make install` and
# `make models`. The device machine has no network and takes at most 64 MiB a call, so:
#   .gpu/src     the llama-cpp-python 0.3.36 sdist without its .git/ and vendor/llama.cpp's
#                docs/, models/ (tokenizer test files) and benches/, which the build never
#                reads: ~12 MB instead of 74 MB
#   .gpu/wheels  the Python packages the device's image lacks (it has numpy, click, tqdm,
#                matplotlib, jinja2, pytest, cmake, ninja), for an offline install
#   .gpu/m1..mN  the two bundled models, one stream cut into 56 MiB pieces
# Then, in the checkout the device tool sends, one device call per piece, back to back (a
# machine stays warm 30 s; what it wrote outside $OUT stays while it is warm):
#   run(carry=[".gpu/mI"], command="mkdir -p /tmp/led-gpu && cp .gpu/mI/* /tmp/led-gpu/")
# and then (each under 10 minutes):
#   run(carry=[".gpu/src", ".gpu/wheels"], command="bash bench/gpu_check.sh build")
#   run(command="bash bench/gpu_check.sh test")
#   run(command="bash bench/gpu_check.sh bench")
set -euo pipefail
cd "$(dirname "$0")/.."

SDIST=build/llama_cpp_python-0.3.36.tar.gz
[ -f "$SDIST" ] || { echo "missing $SDIST: run make install first" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu/src .gpu/wheels
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

tar -xzf "$SDIST" -C "$tmp"
rm -rf "$tmp"/llama_cpp_python-0.3.36/.git "$tmp"/llama_cpp_python-0.3.36/vendor/llama.cpp/{docs,models,benches}
tar -czf .gpu/src/llama_cpp_python-0.3.36.tar.gz -C "$tmp" llama_cpp_python-0.3.36

# pure-Python wheels (and ruff's manylinux one) for the device's Python 3.12
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels \
    scikit-build-core==0.11.6 pathspec==0.12.1 packaging==26.4 ninja==1.13.0 \
    setuptools==80.9.0 diskcache==5.6.3 \
    gguf==0.19.0 math-verify==0.9.0 latex2sympy2_extended==1.11.0 \
    antlr4-python3-runtime==4.13.2 ruff==0.17.6

for m in models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf; do
    [ -f "$m" ] || { echo "missing $m: run make models first" >&2; exit 1; }
done
# both models as one stream cut in 56 MiB pieces; gpu_check.sh cuts it back by their sizes
stat -L -c '%s %n' models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf \
    > .gpu/src/sizes.txt
cat models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf \
    | split -b 56M -d - "$tmp/models.part"
i=0
for piece in "$tmp"/models.part*; do
    i=$((i + 1))
    mkdir -p ".gpu/m$i"
    mv "$piece" ".gpu/m$i/"
done
du -sh .gpu/*
echo "pieces: $i (carry .gpu/m1 .. .gpu/m$i, one call each)"
