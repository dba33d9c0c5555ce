#!/usr/bin/env bash
# The GPU check, for a lent CUDA machine with no network: build, diagnose, test, benchmark.
# Everything it prints also goes to $OUT/gpu_check.log (and per-step files under $OUT).
#
#   python scripts/gpu_prepare.py            # here, with network: writes gpu_carry/ (ignored by git)
#   bash scripts/gpu_check.sh build          # call 1 on the device, carrying gpu_carry/src and
#                                            #   gpu_carry/models/tiny-random.gguf: one CMake build
#                                            #   of the vendored llama.cpp (CUDA), the load variants
#                                            #   on the tiny model
#   bash scripts/gpu_check.sh all            # call 2, carrying gpu_carry/models and gpu_carry/wheels:
#                                            #   load variants on SmolLM2, the engine and pipeline tests
#                                            #   with full offload, benchmarks against llama-server
#
# One CMake build gives both libllama (for llama-cpp-python's Python package, which finds it
# through LLAMA_CPP_LIB_PATH) and llama-server, so the engine and the server use the same
# llama.cpp. The build stays in .gpu_build/ (ignored by git) between calls on a warm machine.
# Each step goes on after a failure of the one before it, so one call says as much as it can.
set -uo pipefail

OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
what="${1:-all}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
carry="$here/gpu_carry"
build="$here/.gpu_build"
step() { echo; echo "== $(date +%T) $*"; }

step "machine"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1 | head -3
command -v nvcc >/dev/null && nvcc --version | tail -1
python3 --version; cmake --version 2>/dev/null | head -1; command -v gdb >/dev/null && gdb --version | head -1
nproc

# ------------------------------------------------------------------ build (call 1)
if [ ! -f "$build/ok" ]; then
    step "build llama.cpp with CUDA (shared libraries and llama-server, one CMake build)"
    mkdir -p "$build"
    tar xJf "$carry/src/llama-cpp-python.tar.xz" -C "$build"
    arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')"
    src="$build/llama-cpp-python/vendor/llama.cpp"
    cmake -S "$src" -B "$build/cmake" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${arch:-90}" \
        -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release > "$OUT/cmake-configure.log" 2>&1 \
        || { tail -30 "$OUT/cmake-configure.log"; echo "configure failed"; }
    cmake --build "$build/cmake" -j "$(nproc)" --target llama llama-server > "$OUT/cmake-build.log" 2>&1 \
        && touch "$build/ok" || { tail -40 "$OUT/cmake-build.log"; echo "build failed"; }
    ls -la "$build/cmake/bin" 2>/dev/null | head -20
fi

# llama-cpp-python's Python package from the same source, on the libraries just built
export LLAMA_CPP_LIB_PATH="$build/cmake/bin"
export PYTHONPATH="$build/llama-cpp-python:$here${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$carry/wheels" ]; then
    step "pure-Python dependencies from the carried wheels (only those missing)"
    python3 -m pip install --no-index --find-links "$carry/wheels" --target "$build/site" \
        $(ls "$carry/wheels" | sed 's/-[0-9].*//' | sort -u) > "$OUT/pip.log" 2>&1 || tail -5 "$OUT/pip.log"
    export PYTHONPATH="$PYTHONPATH:$build/site"
fi
python3 -c "import llama_cpp, sys; print('llama_cpp', llama_cpp.__version__, 'gpu offload:',
bool(llama_cpp.llama_supports_gpu_offload()))" || echo "llama_cpp does not import"

step "load variants on the tiny random model"
python3 "$here/scripts/gpu_load_variants.py" "$carry/models/tiny-random.gguf" --out "$OUT/variants-tiny"
[ "$what" = build ] && exit 0

# ------------------------------------------------------------------ models (call 2)
model="$build/smollm2-135m.gguf"
if [ ! -f "$model" ] && ls "$carry"/models/smollm2-135m.gguf.part* >/dev/null 2>&1; then
    step "join SmolLM2-135M and check its sha256"
    cat "$carry"/models/smollm2-135m.gguf.part* > "$model"
    (cd "$build" && sha256sum -c "$carry/models/smollm2-135m.gguf.sha256") || rm -f "$model"
fi
[ -f "$model" ] || { echo "no SmolLM2 pieces carried: stopping after the tiny model"; exit 0; }

step "load variants on SmolLM2-135M"
python3 "$here/scripts/gpu_load_variants.py" "$model" --out "$OUT/variants-smollm2"

step "engine and pipeline tests with full offload (models: SmolLM2 from the pieces; Qwen if carried)"
export EDGEPREF_MODELS_FILE="$OUT/models.toml"
printf '[models."smollm2-135m"]\nsources = [{ path = "%s" }]\n' "$model" > "$EDGEPREF_MODELS_FILE"
timeout 300 python3 -m pytest -q -x -p no:cacheprovider "$here/tests/test_engine.py" -k "smol or SMOL or batch or stop or bad_requests" \
    > "$OUT/pytest.log" 2>&1; echo "pytest rc=$?"; tail -15 "$OUT/pytest.log"

step "the offload tier (tests/offload, as scripts/vulkan_check.sh runs it on lavapipe): layers on CUDA0, CPU agreement"
EDGEPREF_OFFLOAD_TIER=cuda EDGEPREF_OFFLOAD_REPORT="$OUT/offload-report.json" timeout 300 \
    python3 -m pytest -q -p no:cacheprovider "$here/tests/offload" > "$OUT/offload.log" 2>&1
echo "offload tier rc=$?"; tail -15 "$OUT/offload.log"; cat "$OUT/offload-report.json" 2>/dev/null

step "engine against llama-server (same llama.cpp build), 16 and 64 concurrent requests"
for n in 16 64; do
    timeout 240 python3 "$here/scripts/bench_engine.py" --model "$model" --requests "$n" --max-tokens 128 \
        --llama-server "$build/cmake/bin/llama-server" --json "$OUT/bench_engine_$n.json" 2>&1 | tail -8
done
step "done"
