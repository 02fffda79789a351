"""Compile every Triton kernel of neuronspec for sm_90 (H100/H200) without a GPU.

    python tests/_triton_sm90.py [--dtypes bf16,fp16,fp32] [--all-configs]

Runs Triton's whole pipeline (TTIR → TTGIR → LLVM → PTX → ptxas cubin) for each kernel in each
specialization the launcher uses (forward/backward mode, activation, task permutation, atomic
rows, counting flags) and prints one line per compile; exit status 1 if any failed. Must run
without TRITON_INTERPRET (the interpreter replaces the kernels). tests/test_triton.py calls it
in a subprocess, so a kernel that only the interpreter accepts fails CI, not the first GPU run.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET: the interpreter replaces the kernels")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from neuronspec.ops import triton_count, triton_masked_ffn  # noqa: E402
from neuronspec.ops.triton_backend import _gemm_configs, _pass_configs, _scatter_configs  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def _cases(dt: str):
    """(kernel, signature types by argument, constexprs, config list) for one operand dtype."""
    p, i32, acc = f"*{dt}", "*i32", "*fp32"
    common = dict(UPCAST=False, PRECISION="tf32" if dt != "fp32" else "ieee", ACC=tl.float32)
    # perm: the plan's int64 token order; tok_start: int32 group bounds (ops/plan.py)
    grouping = dict(perm_ptr="*i64", idx_ptr=i32, offsets_ptr=i32, tok_start_ptr=i32)
    for mode, act, has_perm in itertools.product((0, 1), (0, 1), (False, True)):
        sig = dict(a_ptr=p, b_ptr=p, T="i32", bias_ptr=p, z_ptr=p, out_ptr=p, h_ptr=p, db_ptr=acc, K="i32",
                   F="i32", **grouping)
        yield triton_masked_ffn.gather_n_kernel, sig, dict(MODE=mode, ACT=act, HAS_PERM=has_perm, **common), \
            _gemm_configs()
    for has_bias, has_perm in itertools.product((False, True), (False, True)):
        sig = dict(p_ptr=p, b_ptr=p, T="i32", bias_ptr=acc if has_bias else p, bias_stride="i32", out_ptr=p,
                   NOUT="i32", F="i32", **grouping)
        yield triton_masked_ffn.gather_k_kernel, sig, dict(HAS_BIAS=has_bias, HAS_PERM=has_perm, **common), \
            _gemm_configs()
    for atomic, has_perm in itertools.product((False, True), (False, True)):
        sig = dict(p_ptr=p, a_ptr=p, out_ptr=acc if atomic else p, NOUT="i32", F="i32", **grouping)
        yield triton_masked_ffn.scatter_rows_kernel, sig, dict(ATOMIC=atomic, HAS_PERM=has_perm, **common), \
            _scatter_configs()
    for act, has_perm, has_valid, write in itertools.product((0, 1), (False, True), (False, True), (False, True)):
        sig = dict(z_ptr=p, perm_ptr="*i64", valid_ptr="*u8", tok_start_ptr=i32, T="i32", counts_ptr="*i32", F="i32")
        yield triton_count.act_count_kernel, sig, dict(ACT=act, HAS_PERM=has_perm, HAS_VALID=has_valid,
                                                       WRITE_OUTPUT=write), _pass_configs()


def compile_one(kernel, sig: dict, constexprs: dict, config) -> str:
    """Compile for sm_90 and check the PTX; returns it. Atomics must be relaxed with no fence
    beside them (the default acq_rel costs a MEMBAR.ALL.GPU per atomic)."""
    consts = {**constexprs, **config.kwargs}
    signature = {name: ("constexpr" if name in consts else sig[name]) for name in kernel.arg_names}
    missing = [n for n in kernel.arg_names if n not in consts and n not in sig]
    if missing:
        raise ValueError(f"{kernel.__name__}: no type for arguments {missing}")
    src = ASTSource(fn=kernel, signature=signature, constexprs=consts)
    compiled = triton.compile(src, target=TARGET, options=dict(num_warps=config.num_warps,
                                                               num_stages=config.num_stages))
    ptx = compiled.asm["ptx"]
    lines = ptx.splitlines()
    atomics = [ln for ln in lines if ln.strip().split(" ")[-1] and (" red." in ln or " atom." in ln
                                                                       or ln.strip().startswith(("red.", "atom.")))]
    if any(".relaxed" not in ln for ln in atomics):
        raise AssertionError(f"non-relaxed atomics: {[ln.strip() for ln in atomics if '.relaxed' not in ln][:2]}")
    # memory fences (membar, fence.sc / fence.acq_rel); fence.proxy.async and wgmma.fence order
    # the tensor-core pipeline, not global memory
    if atomics and any(ln.strip().startswith(("membar", "fence.sc", "fence.acq_rel")) for ln in lines):
        raise AssertionError("a memory fence next to the atomics")
    return ptx


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="bf16,fp32", help=f"operand dtypes, from {sorted(DTYPES)}")
    ap.add_argument("--all-configs", action="store_true", help="every autotune config (default: the first)")
    args = ap.parse_args(argv)
    failed = 0
    for dt in args.dtypes.split(","):
        if dt not in DTYPES:
            ap.error(f"--dtypes: unknown dtype {dt!r}; choose from {sorted(DTYPES)}")
        for kernel, sig, consts, configs in _cases(DTYPES[dt]):
            for config in configs if args.all_configs else configs[:1]:
                flags = ",".join(f"{k}={v}" for k, v in consts.items() if k not in ("ACC", "UPCAST", "PRECISION"))
                t0 = time.perf_counter()
                try:
                    compile_one(kernel, sig, consts, config)
                    status = "ok"
                except Exception as e:  # report every failing specialization, not just the first
                    failed += 1
                    status = f"FAILED: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                print(f"{dt} {kernel.__name__}[{flags}] {config.kwargs} w{config.num_warps}s{config.num_stages}: "
                      f"{status} ({time.perf_counter() - t0:.1f}s)", flush=True)
    print(f"{failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
