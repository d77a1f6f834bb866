#!/usr/bin/env bash
# specli on one NVIDIA H100/H200, offline, in one go (run from the repo root):
#   1. build llama-cpp-python 0.3.36 with CUDA (sm_90) from the sdist in .devcarry/;
#   2. write synthetic Qwen2.5-Coder-1.5B / 0.5B-shaped GGUF models (in the background);
#   3. measure t_v(n), t_d, c, predicted speedups and the engine's Python overheads
#      through specli's own backend, all layers offloaded (benchmarks/gpu/measure.py);
#   4. greedy exactness on the GPU with the suite's tiny models (benchmarks/gpu/tiny_exact.py);
#   5. a test subset (tests/test_engine.py, tests/test_sampling.py) with the CUDA build.
# Output: $OUT/log.txt (everything), $OUT/gpu_results.json, $OUT/tiny_exact.json,
#   $OUT/build.log.gz, $OUT/llama_log.txt.gz. Each stage prints its wall-clock time.
#
#   bash benchmarks/gpu/gpu_check.sh              # everything
#   bash benchmarks/gpu/gpu_check.sh configure    # only the CMake configure step (a local check)
# Knobs (environment): FA=1 compiles the FlashAttention kernels (slower build);
#   DTYPE=f16 writes F16 models instead of Q8_0; BUILD_TIMEOUT (s, default 360); JOBS;
#   DEADLINE (s, default 530): later stages get what is left of it, so the run ends in time.
#   Local dry run of every other stage on a CPU build: SKIP_BUILD=1 SMALL=1 NGL=0.
# benchmarks/gpu/make_devcarry.sh makes .devcarry/ (trimmed sdist + pure-Python wheels).

set -o pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 1
MODE=${1:-all}
OUT=${OUT:-/tmp/specli-gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
TEE_PID=$!
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/specli-gpu}
SITE=$WORK/site
MODELS=$WORK/models
CARRY=$REPO/.devcarry
SDIST=$CARRY/llama_cpp_python-0.3.36.tar.gz
JOBS=${JOBS:-$(nproc)}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-360}
DEADLINE=${DEADLINE:-530}
FA=${FA:-0}
DTYPE=${DTYPE:-q8_0}
SKIP_BUILD=${SKIP_BUILD:-0}
SMALL=${SMALL:-0}
NGL=${NGL:--1}
[ "$SMALL" = 1 ] && SMALLFLAG=--small || SMALLFLAG=
T0=$(date +%s)
# budget CAP RESERVE: seconds a stage may take: CAP, or what is left of DEADLINE minus RESERVE
# (kept for the stages after it), at least 10.
budget() {
    local left=$(( DEADLINE - ($(date +%s) - T0) - ${2:-0} )) c=$1
    [ "$left" -lt "$c" ] && c=$left
    [ "$c" -lt 10 ] && c=10
    echo "$c"
}
any_exists() { local f; for f in "$@"; do [ -e "$f" ] && return 0; done; return 1; }
stage() { echo; echo "=== [$(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
finish() {
    stage "done (exit $1), total $(( $(date +%s) - T0 ))s"; ls -la "$OUT"
    exec 1>&- 2>&-; wait "$TEE_PID" 2>/dev/null; exit "$1"  # let tee flush log.txt
}
mkdir -p "$WORK" "$MODELS"

stage "preflight"
uname -a; nproc; free -g | head -2; df -h /tmp | tail -1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
# The real compiler, not a wrapper script on PATH (cmake derives the toolkit root from it).
NVCC=$( { [ -n "${CUDA_HOME:-}" ] && ls "$CUDA_HOME/bin/nvcc"; ls /usr/local/cuda/bin/nvcc; command -v nvcc; } 2>/dev/null | head -1)
[ -n "$NVCC" ] && "$NVCC" --version | tail -2 || echo "NO nvcc FOUND"
cmake --version | head -1; ninja --version 2>/dev/null || echo "no ninja binary on PATH"
$PY - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
for m in ("numpy", "typer", "rich", "huggingface_hub", "jinja2", "diskcache", "typing_extensions",
          "gguf", "yaml", "tqdm", "requests", "pytest", "hypothesis", "pexpect", "scikit_build_core", "ninja", "cmake"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m:18} {getattr(mod, '__version__', '?')}")
    except Exception as e:
        print(f"  {m:18} MISSING ({type(e).__name__})")
EOF
ls -la "$CARRY" 2>/dev/null || { echo "no .devcarry/: run benchmarks/gpu/make_devcarry.sh and carry .devcarry"; finish 1; }

stage "pure-Python wheels missing from the image -> $SITE"
mkdir -p "$SITE"
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
for pair in diskcache:diskcache gguf:gguf pexpect:pexpect ptyprocess:ptyprocess hypothesis:hypothesis \
            sortedcontainers:sortedcontainers jinja2:jinja2 markupsafe:MarkupSafe \
            scikit_build_core:scikit_build_core pathspec:pathspec; do
    mod=${pair%%:*}; dist=${pair##*:}
    if ! $PY -c "import $mod" 2>/dev/null; then
        whl=$(ls "$CARRY"/${dist}-*.whl "$CARRY"/${dist,,}-*.whl 2>/dev/null | head -1)
        if [ -n "$whl" ]; then
            echo "installing $(basename "$whl")"
            $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$whl" || echo "  FAILED"
        else
            echo "module $mod missing and no wheel for it in .devcarry"
        fi
    fi
done
$PY -c "import numpy, gguf, jinja2, diskcache, typer, rich, huggingface_hub; print('python deps ok')" || finish 1

if [ "$MODE" != configure ]; then
    stage "synthetic models ($DTYPE) in the background -> $MODELS"
    $PY benchmarks/gpu/gen_models.py "$MODELS" --dtype "$DTYPE" $SMALLFLAG > "$WORK/gen.log" 2>&1 &
    GEN_PID=$!
fi

if [ "$SKIP_BUILD" != 1 ]; then
stage "CUDA toolchain: cuBLAS and the driver library"
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}
[ -n "$NVCC" ] || { echo "no nvcc: cannot build"; finish 1; }
echo "CUDA_HOME=$CUDA_HOME"
EXTRA=()
NVLIBS=()
if any_exists "$CUDA_HOME"/include/cublas_v2.h "$CUDA_HOME"/targets/*/include/cublas_v2.h \
   && any_exists "$CUDA_HOME"/lib64/libcublas.so* "$CUDA_HOME"/lib/libcublas.so* "$CUDA_HOME"/targets/*/lib/libcublas.so*; then
    echo "cuBLAS is in the toolkit"
else
    # The pip wheel (nvidia-cublas, as PyTorch installs it): headers and .so.13 without dev links.
    INC=$($PY - <<'EOF'
import glob, os, sys
roots = []
try:
    import nvidia
    roots += list(nvidia.__path__)
except Exception:
    pass
roots += [os.path.join(p, "nvidia") for p in sys.path if p]
for r in roots:
    hits = glob.glob(os.path.join(r, "*", "include", "cublas_v2.h")) + glob.glob(os.path.join(r, "cublas", "include", "cublas_v2.h"))
    if hits:
        print(os.path.dirname(hits[0])); break
EOF
)
    if [ -z "$INC" ]; then
        INC=$(find / -xdev -name cublas_v2.h -path '*include*' 2>/dev/null | head -1 | xargs -r dirname)
    fi
    LIBDIR=$(dirname "$INC" 2>/dev/null)/lib
    CUBLAS=$(ls "$LIBDIR"/libcublas.so* 2>/dev/null | head -1)
    CUBLASLT=$(ls "$LIBDIR"/libcublasLt.so* 2>/dev/null | head -1)
    echo "cuBLAS headers: ${INC:-NOT FOUND}; libs: ${CUBLAS:-NOT FOUND} ${CUBLASLT:-NOT FOUND}"
    if [ -z "$INC" ] || [ -z "$CUBLAS" ] || [ -z "$CUBLASLT" ]; then
        echo "cannot build ggml-cuda without cuBLAS"; finish 1
    fi
    EXTRA+=("-DCMAKE_CUDA_FLAGS=-I$INC" "-DCMAKE_CXX_FLAGS=-I$INC" "-DCMAKE_C_FLAGS=-I$INC"
            "-DCUDA_cublas_LIBRARY=$CUBLAS" "-DCUDA_cublasLt_LIBRARY=$CUBLASLT")
    NVLIBS+=("$LIBDIR")
fi
if any_exists "$CUDA_HOME"/lib64/stubs/libcuda.so "$CUDA_HOME"/lib/stubs/libcuda.so "$CUDA_HOME"/targets/*/lib/stubs/libcuda.so; then
    echo "driver stub libcuda.so is in the toolkit"
else
    LIBCUDA=$( (ldconfig -p 2>/dev/null | awk '/libcuda\.so(\.1)? /{print $NF}'; \
                ls /usr/local/nvidia/lib64/libcuda.so* /usr/lib/x86_64-linux-gnu/libcuda.so* /usr/lib64/libcuda.so* 2>/dev/null) | head -1)
    if [ -n "$LIBCUDA" ]; then
        echo "driver library: $LIBCUDA"
        EXTRA+=("-DCUDA_cuda_driver_LIBRARY=$LIBCUDA")
    else
        echo "no libcuda.so found: building with GGML_CUDA_NO_VMM=ON (legacy memory pool)"
        EXTRA+=("-DGGML_CUDA_NO_VMM=ON")
    fi
fi
NVLIBS+=("$CUDA_HOME/lib64" "$CUDA_HOME/lib")
for d in "${NVLIBS[@]}"; do [ -d "$d" ] && export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; done
[ "$FA" = 1 ] && FA_FLAG=ON || FA_FLAG=OFF
ARGS=(-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 "-DCMAKE_CUDA_COMPILER=$NVCC"
      -DGGML_CUDA_FA=$FA_FLAG -DGGML_CUDA_NCCL=OFF -DGGML_CUDA_COMPRESSION_MODE=speed
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF
      "${EXTRA[@]}")
# scikit-build-core splits CMAKE_ARGS with shlex: quote each argument.
export CMAKE_ARGS=$(printf '%q ' "${ARGS[@]}")
export CMAKE_BUILD_PARALLEL_LEVEL=$JOBS
echo "CMAKE_ARGS=$CMAKE_ARGS"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

if [ "$MODE" = configure ]; then
    stage "configure only (cmake) in $WORK/cfg"
    rm -rf "$WORK/src" "$WORK/cfg"; mkdir -p "$WORK/src"
    tar xzf "$SDIST" -C "$WORK/src" || finish 1
    eval "cmake -S $WORK/src/llama_cpp_python-0.3.36 -B $WORK/cfg -G Ninja -DCMAKE_BUILD_TYPE=Release $CMAKE_ARGS" \
        > "$WORK/configure.log" 2>&1
    rc=$?
    tail -n 40 "$WORK/configure.log"
    [ $rc = 0 ] && ninja -C "$WORK/cfg" -t targets all 2>/dev/null | grep -c '\.o:' | xargs echo "objects to build:"
    finish $rc
fi

BT=$(budget "$BUILD_TIMEOUT" 110)
stage "build llama-cpp-python 0.3.36 (CUDA sm_90, FA=$FA_FLAG, $JOBS jobs, timeout ${BT}s)"
rm -rf "$SITE/llama_cpp" "$SITE"/llama_cpp_python-*
( while sleep 30 </dev/null >/dev/null 2>&1; do  # sleep must not hold tee's pipe open
    p=$(grep -o '\[[0-9]*/[0-9]*\]' "$WORK/build.log" 2>/dev/null | tail -1)
    echo "  [$(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] build progress ${p:-(configuring)}"
  done ) &
PROG_PID=$!
TB=$(date +%s)
timeout "$BT" $PY -m pip install -v --no-index --no-build-isolation --no-deps --no-cache-dir \
    --target "$SITE" "$SDIST" > "$WORK/build.log" 2>&1
rc=$?
kill "$PROG_PID" 2>/dev/null; wait "$PROG_PID" 2>/dev/null
echo "build exit $rc after $(( $(date +%s) - TB ))s"
gzip -c "$WORK/build.log" > "$OUT/build.log.gz"
if [ $rc != 0 ]; then
    [ $rc = 124 ] && echo "BUILD TIMED OUT after ${BT}s; last progress: $(grep -o '\[[0-9]*/[0-9]*\]' "$WORK/build.log" | tail -1)"
    echo "--- errors in build.log ---"
    grep -n -E 'error:|error [A-Z]*[0-9]+|FAILED:|fatal error|CMake Error|No module named|not found' "$WORK/build.log" \
        | grep -v -E 'Werror|not a git repository' | head -40
    echo "--- tail of build.log ---"
    tail -n 60 "$WORK/build.log"
    kill "$GEN_PID" 2>/dev/null
    finish 1
fi
fi  # SKIP_BUILD
[ -f "$WORK/build.log" ] && grep -E 'CMAKE_CUDA_ARCHITECTURES|CUDA Toolkit found|Including CUDA backend' "$WORK/build.log" | head -8
$PY -c "
import llama_cpp, os
print('llama_cpp', llama_cpp.__version__, 'from', os.path.dirname(llama_cpp.__file__))
print('gpu offload supported:', llama_cpp.llama_supports_gpu_offload())
print(sorted(os.listdir(os.path.join(os.path.dirname(llama_cpp.__file__), 'lib'))))
" || finish 1

stage "diagnose loading (benchmarks/gpu/diag.py): which variant crashes?"
timeout 90 $PY benchmarks/gpu/diag.py | tee "$WORK/diag.txt"
if ! grep -q '^numpy-first load   ngl=-1  rc=0' "$WORK/diag.txt"; then
    for mode in after off; do
        if grep -q "^numpy-first $mode *ngl=-1  rc=0" "$WORK/diag.txt"; then
            export SPECLI_RELEASE_PAGES=$mode; echo "using SPECLI_RELEASE_PAGES=$mode"; break
        fi
    done
fi

stage "wait for the synthetic models"
wait "$GEN_PID"; grc=$?
cat "$WORK/gen.log"
[ $grc = 0 ] || finish 1
ls -la "$MODELS"

stage "measure (benchmarks/gpu/measure.py, n_gpu_layers=$NGL)"
timeout "$(budget 180 50)" $PY benchmarks/gpu/measure.py --target "$MODELS/target.gguf" --draft "$MODELS/draft.gguf" \
    --n-gpu-layers "$NGL" $SMALLFLAG --json "$OUT/gpu_results.json" --llama-log "$WORK/llama_log.txt"
mrc=$?
echo "measure exit $mrc"
[ -f "$WORK/llama_log.txt" ] && gzip -c "$WORK/llama_log.txt" > "$OUT/llama_log.txt.gz"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv

stage "greedy exactness on the GPU, tiny models (benchmarks/gpu/tiny_exact.py)"
timeout "$(budget 60 30)" $PY benchmarks/gpu/tiny_exact.py --n-gpu-layers "$NGL" --json "$OUT/tiny_exact.json"
trc=$?

stage "tests with the CUDA build (the suite's models run on the CPU: n_gpu_layers defaults to 0)"
timeout "$(budget 120)" $PY -m pytest -q -x -p no:cacheprovider tests/test_engine.py tests/test_sampling.py 2>&1
prc=$?

stage "summary: measure=$mrc tiny_exact=$trc pytest=$prc"
[ $mrc = 0 ] && [ $trc = 0 ] && [ $prc = 0 ] && finish 0
finish 1
