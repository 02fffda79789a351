#!/usr/bin/env bash
# GPU check of neuronspec in one go, ordered by value: the training step, the masked FFN at the
# LLM and big sizes, then the CUDA build and the GPU tests, then the rest. Every step has its own
# time limit (they sum to 420 s) and a failed step is recorded and skipped past, never the end of
# the suite. After every step the whole results folder is packed into ONE archive under OUTDIR
# (the device tool returns at most 8 files from $OUT), so a lease cut short keeps what ran.
#
#   bash benchmarks/gpu_suite.sh [OUTDIR]          # OUTDIR defaults to $OUT, else ./gpu_suite_out
#   NEURONSPEC_SUITE_DRY=1 bash benchmarks/gpu_suite.sh /tmp/suite   # dry run on CPU, tiny sizes
#
# OUTDIR receives gpu_suite.tgz (every result file; `tar xzf gpu_suite.tgz -C somewhere`) and a
# copy of suite.log. The results themselves are written to a fresh folder under $TMPDIR.
# Environment:
#   NEURONSPEC_SUITE_DRY=1     CPU dry run: the same steps and command lines at tiny sizes, limits
#                              x3; the builds only configure (CMake finds nvcc, pybind11, the
#                              CUTLASS headers), the tests step only collects
#   NEURONSPEC_SUITE_BUDGET    total seconds (default 420, the sum of the step limits; dry run 1260)
#   NEURONSPEC_SUITE_SKIP      comma-separated steps to skip: info,train_step,masked_ffn,build,tests,
#                              masked_ffn_cuda,counting,train_step_torch,build_sm90,masked_ffn_cuda_sm90
#   NEURONSPEC_CUDA_ARCH       passed to the build (default: this GPU's, e.g. 90)
# The CUDA build needs the CUTLASS headers in third_party/cutlass (python benchmarks/vendor_cutlass.py
# here, then carry that folder with the device call: benchmarks/README.md) or an nvidia-cutlass install.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-${OUT:-$PWD/gpu_suite_out}}"
mkdir -p "$OUTDIR" && OUTDIR="$(cd "$OUTDIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/neuronspec-suite.XXXXXX")" || exit 1
DRY="${NEURONSPEC_SUITE_DRY:-0}"
SCALE=1; [ "$DRY" = "1" ] && SCALE=3  # the dry run's limits: x3 (a busy CPU, not a GPU)
BUDGET="${NEURONSPEC_SUITE_BUDGET:-$(( 420 * SCALE ))}"
SKIP=",${NEURONSPEC_SUITE_SKIP:-},"
PY="${PYTHON:-$(command -v python || command -v python3)}"
START=$(date +%s)
cd "$ROOT" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ "$DRY" = "1" ]; then
  export TRITON_INTERPRET=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$WORK/suite.log"; }

# pack: every result so far into OUTDIR/gpu_suite.tgz (written aside, then renamed: never half an archive)
pack() {
  tar czf "$OUTDIR/gpu_suite.tgz.part" -C "$WORK" . && mv -f "$OUTDIR/gpu_suite.tgz.part" "$OUTDIR/gpu_suite.tgz"
  cp "$WORK/suite.log" "$OUTDIR/suite.log.part" && mv -f "$OUTDIR/suite.log.part" "$OUTDIR/suite.log"
}

# step NAME LIMIT_S CMD...: run CMD with a time limit (cut to what is left of the budget),
# output to NAME.log, one status line in suite.log, then pack; never exits the script.
step() {
  local name="$1" limit=$(( $2 * SCALE )); shift 2
  if [[ "$SKIP" == *",$name,"* ]]; then log "SKIP  $name (NEURONSPEC_SUITE_SKIP)"; return 0; fi
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 10 ]; then log "SKIP  $name (suite budget of ${BUDGET}s spent)"; return 0; fi
  [ "$limit" -gt "$left" ] && limit="$left"
  log "START $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child bash
    timeout -k 5 "$limit" bash -c "$*" >"$WORK/$name.log" 2>&1
  else
    timeout -k 5 "$limit" "$@" >"$WORK/$name.log" 2>&1
  fi
  local rc=$? dt=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then log "OK    $name ${dt}s"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then log "TIMEOUT $name after ${dt}s (limit ${limit}s; partial results kept)"; FAILED="$FAILED $name"
  else log "FAIL  $name exit $rc after ${dt}s (see $name.log)"; FAILED="$FAILED $name"; fi
  tail -n 5 "$WORK/$name.log" | sed 's/^/      /' | tee -a "$WORK/suite.log" >/dev/null
  pack
  return 0
}
FAILED=""

info() {
  { nvidia-smi || echo "nvidia-smi: not available"; } >"$WORK/nvidia-smi.txt" 2>&1
  {
    echo "date_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"; echo "host_cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    echo "cpus: $(getconf _NPROCESSORS_ONLN)"; echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | wc -l) modified files"
    echo "nvcc: $(nvcc --version 2>/dev/null | tail -n 1)"; echo "cmake: $(cmake --version 2>/dev/null | head -n 1)"
    echo "cutlass headers: $(cat "$ROOT/third_party/cutlass/VERSION" 2>/dev/null || echo 'not vendored (third_party/cutlass)')"
    "$PY" - <<'EOF'
import importlib, platform, torch
print("python:", platform.python_version())
print("torch:", torch.__version__, "cuda:", torch.version.cuda, "cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu:", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}")
for m in ("triton", "numpy", "pybind11"):
    try:
        print(f"{m}:", importlib.import_module(m).__version__)
    except Exception as e:
        print(f"{m}: not importable ({e})")
from neuronspec.ops import available_backends, unavailable_reason
dev = "cuda" if torch.cuda.is_available() else "cpu"
print("backends on", dev, ":", available_backends(dev))
for b in ("triton", "cuda"):
    print(f"  {b}:", unavailable_reason(b, torch.device(dev)) or "available")
EOF
  } >"$WORK/versions.txt" 2>&1
  cat "$WORK/versions.txt"
}

# build [sm90]: the pybind11 module through setup.py's CMake hook, no network, nothing installed.
# GPU run: in place (neuronspec/_cuda*.so, what the cuda backend imports), first without the
# sm_90a CUTLASS 3 kernels (minutes of compiling), which `build sm90` adds at the end of the
# suite. Dry run: configure only, in a scratch folder (the shared source tree is not touched).
build() {
  local tmp="${TMPDIR:-/tmp}/neuronspec-suite-build"
  if [ "${1:-}" = "sm90" ]; then export NEURONSPEC_CUDA_SM90A=1; else export NEURONSPEC_CUDA_SM90A=0; fi
  if [ "$DRY" = "1" ]; then
    NEURONSPEC_CMAKE_CONFIGURE_ONLY=1 "$PY" setup.py -q build_ext --build-temp "$tmp/temp" --build-lib "$tmp/lib"
  else
    "$PY" setup.py -q build_ext --inplace --build-temp "$tmp/temp"
    ls -l neuronspec/_cuda* 2>/dev/null || { echo "no _cuda module was built"; return 1; }
    "$PY" -c "import neuronspec._cuda as m; print('imported', m.__file__, 'CUTLASS', m.cutlass_version(), 'sm90', m.has_sm90())"
  fi
}

tests() {
  local files=() f
  for f in tests/test_cuda.py tests/test_triton.py tests/test_plan.py tests/test_graphs.py tests/test_graphed_step.py \
           tests/test_ops.py; do
    if [ -f "$f" ]; then files+=("$f"); else echo "missing test file: $f"; fi
  done
  [ ${#files[@]} -gt 0 ] || return 1
  # the tests that run on the GPU (CUDA parametrizations, test_cuda.py), not the CPU ones around
  # them, nor the sm_90 compile check (a subprocess compiling 31 kernels, for machines without a
  # GPU); correctness, not tuning: one tile config per kernel, workers in parallel
  local extra=(-n 8)
  "$PY" -c "import xdist" 2>/dev/null || extra=()
  [ "$DRY" = "1" ] && extra=(--collect-only)
  NEURONSPEC_TRITON_AUTOTUNE=0 "$PY" -m pytest -q -p no:cacheprovider -rfEs "${extra[@]}" \
    -k "(cuda or gpu) and not on_cpu and not compile_for_sm90" --junitxml="$WORK/pytest.xml" "${files[@]}"
}

if [ "$DRY" = "1" ]; then  # CPU: tiny sizes, a round or two
  DEV=(--device cpu)
  TRAIN=(--models tiny --batch-tokens 32 --seq-len 8 --vocab 64 --batches homogeneous,mixed --repeats 1 --warmup 0)
  TRAIN_TORCH=("${TRAIN[@]}")
  MASKED=(--shapes 16x32 --tokens 16 --p 0.25,1.0 --modes fwd+bwd --tasks 1,8 --repeats 1 --warmup 0)
  MASKED_CUDA=(--shapes 16x32 --tokens 16 --p 0.25 --modes fwd+bwd --tasks 1,8 --repeats 1 --warmup 0)
  COUNT=(--shapes 16x32 --tokens 16 --tasks 1,8 --repeats 1 --warmup 0)
else                       # GPU sizes (bf16, N 8192)
  DEV=(--device cuda)
  # eager and graphed (--cuda-graphs adds dense+graphs and specialized+graphs), big before base
  TRAIN=(--models big,base --batches homogeneous,mixed --repeats 6 --cuda-graphs)
  TRAIN_TORCH=(--models big --batches homogeneous,mixed --repeats 4 --cuda-graphs)
  # the LLM-size FFN (the one shape where gathering beat dense on the H200) and the big one
  MASKED=(--shapes llm,big --tokens 8192 --p 0.25,1.0 --modes fwd+bwd --tasks 1,8 --repeats 6 --warmup 2)
  MASKED_CUDA=(--shapes llm,big --tokens 8192 --p 0.25 --modes fwd+bwd --tasks 1,8 --repeats 6 --warmup 2)
  COUNT=(--shapes big --tokens 8192 --tasks 1,8 --repeats 10)
  export NEURONSPEC_CUDA_ARCH="${NEURONSPEC_CUDA_ARCH:-$("$PY" -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')" 2>/dev/null || echo 90)}"
fi
BENCH_MASKED=("$PY" benchmarks/bench_masked_ffn.py "${DEV[@]}")

export -f info build tests
export WORK DRY PY ROOT
log "neuronspec GPU suite: work $WORK, archive $OUTDIR/gpu_suite.tgz, dry=$DRY, budget ${BUDGET}s"
# limits: 15 + 90 + 75 + 45 + 60 + 25 + 20 + 25 + 45 + 20 = 420 s
step info 15 info
step train_step 90 "$PY" benchmarks/bench_train_step.py "${DEV[@]}" "${TRAIN[@]}" --out "$WORK/train_step"
step masked_ffn 75 env NEURONSPEC_TRITON_AUTOTUNE=0 "${BENCH_MASKED[@]}" "${MASKED[@]}" \
  --providers dense,auto,torch,maskmul,triton,cuda --out "$WORK/masked_ffn"
# what the build needs beyond the GPU image (nvcc, cmake, pybind11 are there); a dry run skips it without them
missing() {
  command -v nvcc >/dev/null || echo -n "nvcc "
  "$PY" -c "import pybind11" 2>/dev/null || echo -n "pybind11 "
  [ -f "${NEURONSPEC_CUTLASS_INCLUDE:-$ROOT/third_party/cutlass/include}/cutlass/version.h" ] \
    || "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('cutlass_library') is None)" 2>/dev/null \
    || echo -n "CUTLASS headers (python benchmarks/vendor_cutlass.py)"
}
if [ "$DRY" = "1" ] && [ -n "$(missing)" ]; then
  log "SKIP  build, build_sm90 (missing here: $(missing))"; SKIP="$SKIP,build,build_sm90,"
fi
step build 45 build
step tests 60 tests
step masked_ffn_cuda 25 "${BENCH_MASKED[@]}" "${MASKED_CUDA[@]}" --providers dense,torch,cuda --out "$WORK/masked_ffn_cuda"
step counting 20 "$PY" benchmarks/bench_counting.py "${DEV[@]}" "${COUNT[@]}" --out "$WORK/counting"
# every FFN call gathering (torch backend), with and without graphs
step train_step_torch 25 env NEURONSPEC_BACKEND=torch "$PY" benchmarks/bench_train_step.py "${DEV[@]}" "${TRAIN_TORCH[@]}" \
  --out "$WORK/train_step_torch"
# the cuda backend's opt-in sm_90a CUTLASS 3 kernels (NEURONSPEC_CUDA_GEMM=sm90), Hopper only
if [ "$DRY" = "1" ] || "$PY" -c "import sys, torch; sys.exit(torch.cuda.get_device_capability() != (9, 0))" 2>/dev/null; then
  step build_sm90 45 build sm90
  step masked_ffn_cuda_sm90 20 env NEURONSPEC_CUDA_GEMM=sm90 "${BENCH_MASKED[@]}" "${MASKED_CUDA[@]}" \
    --providers dense,cuda --out "$WORK/masked_ffn_cuda_sm90"
else
  log "SKIP  build_sm90, masked_ffn_cuda_sm90 (not an sm_90 GPU)"
fi
log "done in $(( $(date +%s) - START ))s; failed:${FAILED:- none}"
pack
[ -z "$FAILED" ]  # exit status 1 when a step failed (all steps ran regardless)
