#!/usr/bin/env bash
# GPU check of neuronspec in one go: build the CUDA module, run the GPU tests, run the three
# benchmarks at GPU sizes; everything lands in one folder. Every step has its own time limit
# and a failed step is recorded and skipped past, never the end of the suite.
#
#   bash benchmarks/gpu_suite.sh [OUTDIR]          # OUTDIR defaults to $OUT, else ./gpu_suite_out
#   NEURONSPEC_SUITE_DRY=1 bash benchmarks/gpu_suite.sh /tmp/suite   # dry run on CPU, tiny sizes
#
# Environment:
#   NEURONSPEC_SUITE_DRY=1     CPU dry run: same steps, tiny benchmark sizes, the CUDA build goes
#                              to a scratch folder instead of the source tree (see README.md)
#   NEURONSPEC_SUITE_BUDGET    total seconds (default 470: an 8-minute slot with margin; dry run 1200)
#   NEURONSPEC_SUITE_SKIP      comma-separated steps to skip: info,build,tests,train_step,train_step_torch,
#                              masked_ffn,counting,masked_ffn_large,masked_ffn_cuda_sm90 (the last one: sm_90 GPUs only)
#   NEURONSPEC_CUDA_ARCH       passed to the build (default there: 80;90; "90" halves the build time)
#   NEURONSPEC_WHEELS          folder holding the nvidia-cutlass wheel (CUTLASS headers, a build
#                              requirement) for a GPU machine without a package index; only used
#                              when the Python running the suite cannot find cutlass_library
# Output: suite.log (one line per step: name, status, seconds), <step>.log for each step,
# nvidia-smi.txt, versions.txt, pytest junit XML, masked_ffn/counting/train_step .csv/.json/.md/.png
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-${OUT:-$PWD/gpu_suite_out}}"
mkdir -p "$OUTDIR" && OUTDIR="$(cd "$OUTDIR" && pwd)"
DRY="${NEURONSPEC_SUITE_DRY:-0}"
if [ "$DRY" = "1" ]; then BUDGET="${NEURONSPEC_SUITE_BUDGET:-1200}"; else BUDGET="${NEURONSPEC_SUITE_BUDGET:-470}"; fi
SKIP=",${NEURONSPEC_SUITE_SKIP:-},"
PY="${PYTHON:-$(command -v python || command -v python3)}"
START=$(date +%s)
cd "$ROOT" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ "$DRY" = "1" ]; then
  export TRITON_INTERPRET=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUTDIR/suite.log"; }

# step NAME LIMIT_S CMD...: run CMD with a time limit (cut to what is left of the budget),
# output to NAME.log, one status line in suite.log; never exits the script.
step() {
  local name="$1" limit="$2"; shift 2
  if [[ "$SKIP" == *",$name,"* ]]; then log "SKIP  $name (NEURONSPEC_SUITE_SKIP)"; return 0; fi
  local left=$(( BUDGET - ($(date +%s) - START) - 5 ))
  if [ "$left" -lt 15 ]; then log "SKIP  $name (suite budget of ${BUDGET}s spent)"; return 0; fi
  [ "$limit" -gt "$left" ] && limit="$left"
  log "START $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child bash
    timeout -k 10 "$limit" bash -c "$*" >"$OUTDIR/$name.log" 2>&1
  else
    timeout -k 10 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
  fi
  local rc=$? dt=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then log "OK    $name ${dt}s"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then log "TIMEOUT $name after ${dt}s (limit ${limit}s; partial results kept)"; FAILED="$FAILED $name"
  else log "FAIL  $name exit $rc after ${dt}s (see $name.log)"; FAILED="$FAILED $name"; fi
  tail -n 5 "$OUTDIR/$name.log" | sed 's/^/      /' | tee -a "$OUTDIR/suite.log" >/dev/null
  return 0
}
FAILED=""

info() {
  { nvidia-smi || echo "nvidia-smi: not available"; } >"$OUTDIR/nvidia-smi.txt" 2>&1
  {
    echo "date_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"; echo "host_cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    echo "cpus: $(getconf _NPROCESSORS_ONLN)"; echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | wc -l) modified files"
    echo "nvcc: $(nvcc --version 2>/dev/null | tail -n 1)"; echo "cmake: $(cmake --version 2>/dev/null | head -n 1)"
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
try:
    print("neuronspec._cuda: CUTLASS", importlib.import_module("neuronspec._cuda").cutlass_version())
except Exception as e:
    print(f"neuronspec._cuda: not importable yet ({e})")
from neuronspec.ops import available_backends, unavailable_reason
dev = "cuda" if torch.cuda.is_available() else "cpu"
print("backends on", dev, ":", available_backends(dev))
for b in ("triton", "cuda"):
    print(f"  {b}:", unavailable_reason(b, torch.device(dev)) or "available")
EOF
  } >"$OUTDIR/versions.txt" 2>&1
  cat "$OUTDIR/versions.txt"
}

build() {
  # No network on the GPU machine and nothing to install: build the pybind11 module with the
  # setup.py CMake hook. GPU run: in place (neuronspec/_cuda*.so, what the cuda backend imports);
  # dry run: into a scratch folder, so the shared source tree is not touched.
  local tmp="${TMPDIR:-/tmp}/neuronspec-suite-build"
  # the CUTLASS headers come from the nvidia-cutlass wheel (pyproject.toml build requirement)
  if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('cutlass_library') is None)"; then
    "$PY" -m pip install -q --no-deps --no-index --find-links "${NEURONSPEC_WHEELS:-$ROOT/shared/wheels}" nvidia-cutlass \
      || "$PY" -m pip install -q --no-deps nvidia-cutlass || { echo "no CUTLASS headers (nvidia-cutlass)"; return 1; }
  fi
  if [ "$DRY" = "1" ]; then
    "$PY" setup.py -q build_ext --build-temp "$tmp/temp" --build-lib "$tmp/lib"
    ls -l "$tmp"/lib/neuronspec/_cuda* 2>/dev/null || { echo "no _cuda module was built"; return 1; }
  else
    "$PY" setup.py -q build_ext --inplace --build-temp "$tmp/temp"
    ls -l neuronspec/_cuda* 2>/dev/null || { echo "no _cuda module was built"; return 1; }
    "$PY" -c "import neuronspec._cuda as m; print('imported', m.__file__, 'CUTLASS', m.cutlass_version())"
  fi
}

tests() {
  local files=() f
  for f in tests/test_triton.py tests/test_cuda.py tests/test_ops.py tests/test_plan.py tests/test_graphs.py \
           tests/test_graphed_step.py; do
    if [ -f "$f" ]; then files+=("$f"); else echo "missing test file: $f"; fi
  done
  [ ${#files[@]} -gt 0 ] || return 1
  # correctness, not tuning: one tile config per kernel (8x fewer compiles), workers in parallel
  local par=()
  "$PY" -c "import xdist" 2>/dev/null && [ "$DRY" != "1" ] && par=(-n 8)
  NEURONSPEC_TRITON_AUTOTUNE=0 "$PY" -m pytest -q -p no:cacheprovider -rs "${par[@]}" \
    --junitxml="$OUTDIR/pytest.xml" "${files[@]}"
}

if [ "$DRY" = "1" ]; then  # CPU: tiny sizes, a few rounds
  MASKED=(--device cpu --shapes tiny --tokens 512 --p 0.25,0.5,1.0 --modes fwd+bwd,fwd --tasks 1,4 --repeats 3 --warmup 1)
  COUNT=(--device cpu --shapes tiny --tokens 512 --tasks 1,4 --repeats 3 --warmup 1)
  TRAIN=(--device cpu --models tiny --batch-tokens 256 --seq-len 16 --vocab 1000 --batches homogeneous,mixed --repeats 2 --warmup 1)
  LARGE=(--device cpu --shapes tiny --tokens 1024 --p 0.25,1.0 --modes fwd+bwd --tasks 1 --providers dense,torch
         --repeats 2 --warmup 1)
  LIMITS=(60 300 300 120 60 90 60)   # info build tests masked counting train large
  # the CUDA build for sm_80 only (the sm_90a CUTLASS 3 kernels take ~6 more minutes on 2 cores)
  export NEURONSPEC_CUDA_ARCH="${NEURONSPEC_CUDA_ARCH:-80}"
else                       # GPU sizes (bf16, N 8192): the bars of the issues first, big before base
  MASKED=(--device cuda --shapes big,base --tokens 8192 --p 0.25,0.5,0.75,1.0 --modes fwd+bwd,fwd --tasks 1,8
          --providers dense,auto,torch,maskmul,triton,cuda --repeats 10 --warmup 3)
  COUNT=(--device cuda --shapes big,base --tokens 8192 --tasks 1,8 --repeats 15)
  TRAIN=(--device cuda --models base,big --batches homogeneous,mixed --repeats 6 --cuda-graphs)
  # the LLM-size FFN, where GPU work dwarfs launch overhead: dense vs the default (auto) and
  # the paths it chooses between (torch: gather + cuBLAS / grouped_mm; maskmul), and triton
  LARGE=(--device cuda --shapes llm --tokens 8192 --p 0.25,0.5,1.0 --modes fwd+bwd --tasks 1,8
         --providers dense,auto,torch,maskmul,triton,cuda --repeats 6 --warmup 2)
  # the cuda backend's sm_90a kernels (opt-in: compile-checked only so far)
  SM90=(--device cuda --shapes big,llm --tokens 8192 --p 0.25,0.5 --modes fwd+bwd --tasks 1,8
        --providers dense,torch,cuda --repeats 6 --warmup 2)
  LIMITS=(15 120 100 130 40 75 75 60)  # build: sm80 + sm_90a CUTLASS kernels (6 min on 2 busy cores)
  # the CUTLASS kernels for this GPU's architecture only (H200: sm_90), half the compile time
  export NEURONSPEC_CUDA_ARCH="${NEURONSPEC_CUDA_ARCH:-$("$PY" -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')" 2>/dev/null || echo 90)}"
fi

export -f info build tests
export OUTDIR DRY PY ROOT
log "neuronspec GPU suite: out $OUTDIR, dry=$DRY, budget ${BUDGET}s"
step info "${LIMITS[0]}" info
step build "${LIMITS[1]}" build
step tests "${LIMITS[2]}" tests
# the training step first (issue #20's bars): default routing, then every FFN call gathering (torch
# backend), both with and without CUDA graphs: does graph replay make gathering pay at these sizes?
step train_step "${LIMITS[5]}" "$PY" benchmarks/bench_train_step.py "${TRAIN[@]}" --out "$OUTDIR"
step train_step_torch "${LIMITS[5]}" env NEURONSPEC_BACKEND=torch "$PY" benchmarks/bench_train_step.py "${TRAIN[@]}" \
  --out "$OUTDIR/train_torch"
step masked_ffn "${LIMITS[3]}" "$PY" benchmarks/bench_masked_ffn.py "${MASKED[@]}" --out "$OUTDIR"
step counting "${LIMITS[4]}" "$PY" benchmarks/bench_counting.py "${COUNT[@]}" --out "$OUTDIR"
step masked_ffn_large "${LIMITS[6]}" "$PY" benchmarks/bench_masked_ffn.py "${LARGE[@]}" --out "$OUTDIR/large"
# the cuda backend's opt-in sm_90a CUTLASS 3 kernels (NEURONSPEC_CUDA_GEMM=sm90) on Hopper, vs dense and torch
if [ "$DRY" != "1" ] && "$PY" -c "import sys, torch; sys.exit(torch.cuda.get_device_capability() != (9, 0))" 2>/dev/null; then
  step masked_ffn_cuda_sm90 "${LIMITS[7]}" env NEURONSPEC_CUDA_GEMM=sm90 "$PY" benchmarks/bench_masked_ffn.py "${SM90[@]}" \
    --out "$OUTDIR/cuda_sm90"
fi
log "done in $(( $(date +%s) - START ))s; failed:${FAILED:- none}"
[ -z "$FAILED" ]  # exit status 1 when a step failed (all steps ran regardless)
