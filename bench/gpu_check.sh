#!/usr/bin/env bash
# Issue 14, parts 3 and 4, on a machine with an NVIDIA GPU and no network (the device tool),
# prepared by bench/gpu_prepare.sh (its header lists the calls). One stage per call:
#   build  reassemble the models, `make install BACKEND=cuda` (this GPU's architecture only)
#   test   the whole test suite, every layer offloaded (led-local always offloads all)
#   bench  bench/bench.py on both models: plain, LED gated and gate-off with host and graph
#          projection, and solve at --parallel 16 and 1
#   all    the three in order
#   fa     issue 26: solve at a 3,000-token prompt, --parallel 1 against 6, with the default
#          attention (flash attention off on a GPU build) and with CUDA's flash attention
#          forced on (bench/gpu_fa.py; needs build)
# Logs and results go to $OUT (the device tool brings them back).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
STAGE_DIR=${LED_GPU_STAGE:-/tmp/led-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_FIND_LINKS=$PWD/.gpu/wheels
export PIP_DISABLE_PIP_VERSION_CHECK=1
MODELS="models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf"
log() { echo "== $* ($(date +%T))" | tee -a "$OUT/summary.txt"; }

build() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv \
        > "$OUT/gpu.txt" 2>&1
    # the model pieces (gpu_prepare.sh) are one stream of both files: cut it by their sizes
    if [ ! -f models/gemma-3-270m-q4_k_m.gguf ]; then
        cat "$STAGE_DIR"/models.part* > "$STAGE_DIR/models.all" || return 1
        { read -r s1 n1; read -r _ n2; } < .gpu/src/sizes.txt
        head -c "$s1" "$STAGE_DIR/models.all" > "$n1"
        tail -c +"$((s1 + 1))" "$STAGE_DIR/models.all" > "$n2"
        rm -f models/*.gguf.part "$STAGE_DIR/models.all"
    fi
    (cd models && sha256sum -c SHA256SUMS) 2>&1 | tee -a "$OUT/summary.txt" || return 1
    mkdir -p build
    cp .gpu/src/llama_cpp_python-0.3.36.tar.gz build/
    # the image's own packages (numpy, click, matplotlib, pytest, ...) serve the environment
    [ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
    log "make install BACKEND=cuda"
    SECONDS=0
    make install BACKEND=cuda > "$OUT/build.log" 2>&1
    local rc=$?
    log "build rc=$rc in ${SECONDS}s"
    grep -m3 -i "cuda architectures\|CMAKE_CUDA_ARCHITECTURES" "$OUT/build.log" >> "$OUT/summary.txt"
    return $rc
}

test_suite() {
    .venv/bin/python -c "import llama_cpp; print('gpu offload:', llama_cpp.llama_supports_gpu_offload())" \
        | tee -a "$OUT/summary.txt"
    .venv/bin/led-local info models/SmolLM2-135M-Instruct.Q4_1.gguf >> "$OUT/summary.txt" 2>&1
    log "pytest"
    SECONDS=0
    .venv/bin/python -m pytest -q -rfE -p no:cacheprovider > "$OUT/tests.log" 2>&1
    local rc=$?
    log "pytest rc=$rc in ${SECONDS}s: $(tail -1 "$OUT/tests.log")"
    return $rc
}

bench() {
    for m in $MODELS; do
        log "bench $m"
        .venv/bin/python bench/bench.py "$m" --tokens 128 --rounds 3 --n-problems 4 \
            --samples 16 --max-tokens 192 2>&1 | tee "$OUT/bench-$(basename "$m" .gguf).txt" \
            | grep -v "^  " >> "$OUT/summary.txt"
    done
}

case "${1:-all}" in
    build) build ;;
    test) test_suite ;;
    bench) bench ;;
    all) build && test_suite; bench ;;
    fa) .venv/bin/python bench/gpu_fa.py 2>&1 | tee "$OUT/fa.txt" ;;
    *) echo "usage: $0 build|test|bench|all|fa" >&2; exit 2 ;;
esac
