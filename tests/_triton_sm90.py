"""Compile every Triton kernel of neuronspec for sm_90 (H100/H200) without a GPU.

    python tests/_triton_sm90.py [--dtypes bf16,fp16,fp32] [--all-configs]

Runs Triton's whole pipeline (TTIR → TTGIR → LLVM → PTX → ptxas cubin) for each kernel in each
specialization the launcher uses (forward/backward mode, activation, task permutation, atomic
rows, counting flags), specialized as the runtime specializes aligned pointers and sizes, and
checks what runs: relaxed atomics without fences, no local memory (spills), and for tensor-core
dtypes a pipelined K loop (cp.async copies, no full drain, one wgmma in flight). Prints one line
per compile; exit status 1 if any failed. It first checks that the pipelining check rejects an
unpipelined kernel. Must run
without TRITON_INTERPRET (the interpreter replaces the kernels). tests/test_triton.py calls it
in a subprocess, so a kernel that only the interpreter accepts fails CI, not the first GPU run.
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET: the interpreter replaces the kernels")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from neuronspec.ops import triton_count, triton_masked_ffn  # noqa: E402
from neuronspec.ops.triton_backend import GROUP_M, _gemm_configs, _pass_configs, _scatter_configs  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def _cases(dt: str):
    """(kernel, signature types by argument, constexprs, config list) for one operand dtype."""
    p, i32, acc = f"*{dt}", "*i32", "*fp32"
    common = dict(UPCAST=False, PRECISION="tf32" if dt != "fp32" else "ieee", ACC=tl.float32, GROUP_M=GROUP_M)
    # perm: the plan's int64 token order; tok_start: int32 group bounds (ops/plan.py)
    lists = dict(offsets_ptr=i32, tok_start_ptr=i32)
    for mode, act, has_perm in itertools.product((0, 1), (0, 1), (False, True)):
        sig = dict(a_ptr=p, perm_ptr="*i64", b_ptr=p, idx_ptr=i32, T="i32", N="i32", bias_ptr=p, z_ptr=p, out_ptr=p,
                   h_ptr=p, db_ptr=acc, K="i32", F="i32", **lists)
        # the launcher: forward gathers W1 rows by index, backward reads packed W2ᵀ rows
        yield triton_masked_ffn.gather_n_kernel, sig, dict(MODE=mode, ACT=act, HAS_PERM=has_perm,
                                                           B_PACKED=mode == 1, **common), _gemm_configs()
    for has_bias, has_perm in itertools.product((False, True), (False, True)):
        sig = dict(p_ptr=p, perm_ptr="*i64", b_ptr=p, T="i32", N="i32", bias_ptr=acc if has_bias else p,
                   bias_stride="i32", out_ptr=p, NOUT="i32", F="i32", **lists)
        yield triton_masked_ffn.gather_k_kernel, sig, dict(HAS_BIAS=has_bias, HAS_PERM=has_perm, **common), \
            _gemm_configs()
    for atomic in (False, True):
        sig = dict(p_ptr=p, a_ptr=p, idx_ptr=i32, out_ptr=acc if atomic else p, NOUT="i32", F="i32", **lists)
        yield triton_masked_ffn.scatter_rows_kernel, sig, dict(ATOMIC=atomic, **common), _scatter_configs()
    for act, has_perm, has_valid, write in itertools.product((0, 1), (False, True), (False, True), (False, True)):
        sig = dict(z_ptr=p, perm_ptr="*i64", valid_ptr="*u8", tok_start_ptr=i32, T="i32", counts_ptr="*i32", F="i32")
        yield triton_count.act_count_kernel, sig, dict(ACT=act, HAS_PERM=has_perm, HAS_VALID=has_valid,
                                                       WRITE_OUTPUT=write), _pass_configs()


def _attrs(kernel, sig: dict) -> dict:
    """Specialize like the runtime does for aligned tensors and sizes that are multiples of 16
    (d, f, n_out of real models): tt.divisibility=16 on every pointer and every integer size
    but the task count T and the token count N. Without these attributes Triton emits no
    vectorized cp.async copies, and the pipelining checks would say nothing about what runs."""
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
            if name in sig and (sig[name].startswith("*") or name not in ("T", "N"))}


def _loop_bodies(ttgir: str) -> list[str]:
    """Text of every scf.for body in a TTGIR module (nested loops included)."""
    bodies, lines = [], ttgir.splitlines()
    for i, line in enumerate(lines):
        if "scf.for" in line and line.rstrip().endswith("{"):
            depth, body = 0, []
            for ln in lines[i:]:
                depth += ln.count("{") - ln.count("}")
                body.append(ln)
                if depth <= 0:
                    break
            bodies.append("\n".join(body))
    return bodies


def check_pipelined(ttgir: str) -> None:
    """The K loop (the scf.for holding the wgmma) copies its operands with cp.async, never
    drains every copy (async_wait num = 0) and keeps one wgmma in flight (pendings ≥ 1)."""
    loops = [b for b in _loop_bodies(ttgir) if "ttng.warp_group_dot " in b]
    if not loops:
        raise AssertionError("no K loop with an async wgmma (ttng.warp_group_dot)")
    for body in loops:
        if "ttg.async_copy_global_to_local" not in body:
            raise AssertionError("K loop loads are not cp.async copies (not pipelined)")
        if re.search(r"ttg\.async_wait .*\{num = 0 : i32\}", body):
            raise AssertionError("async_wait {num = 0} inside the K loop: loads do not overlap the MMA")
        pendings = [int(v) for v in re.findall(r"ttng\.warp_group_dot_wait .*\{pendings = (\d+) : i32\}", body)]
        if not pendings or min(pendings) < 1:
            raise AssertionError(f"wgmma waits with pendings {pendings} in the K loop: no MMA overlap")


def local_memory_bytes(cubin: bytes) -> int:
    """LOCAL bytes of the kernel (register spills or local arrays), from cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        out = subprocess.run([tool, "--dump-resource-usage", fh.name], capture_output=True, text=True,
                             check=True).stdout
    found = re.findall(r"LOCAL:(\d+)", out)
    if not found:
        raise AssertionError(f"cuobjdump printed no resource usage: {out[:200]!r}")
    return max(int(v) for v in found)


def compile_one(kernel, sig: dict, constexprs: dict, config, check_pipeline: bool = False):
    """Compile for sm_90 with the runtime's specialization and check the result; returns the
    compiled kernel. Always: atomics relaxed with no memory fence beside them (the default
    acq_rel costs a MEMBAR.ALL.GPU per atomic) and no local memory (spills). With
    check_pipeline (tensor-core dtypes): the K loop is pipelined (check_pipelined)."""
    consts = {**constexprs, **config.kwargs}
    signature = {name: ("constexpr" if name in consts else sig[name]) for name in kernel.arg_names}
    missing = [n for n in kernel.arg_names if n not in consts and n not in sig]
    if missing:
        raise ValueError(f"{kernel.__name__}: no type for arguments {missing}")
    src = ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=_attrs(kernel, sig))
    compiled = triton.compile(src, target=TARGET, options=dict(num_warps=config.num_warps,
                                                               num_stages=config.num_stages))
    lines = compiled.asm["ptx"].splitlines()
    atomics = [ln for ln in lines if ln.strip().split(" ")[-1] and (" red." in ln or " atom." in ln
                                                                       or ln.strip().startswith(("red.", "atom.")))]
    if any(".relaxed" not in ln for ln in atomics):
        raise AssertionError(f"non-relaxed atomics: {[ln.strip() for ln in atomics if '.relaxed' not in ln][:2]}")
    # memory fences (membar, fence.sc / fence.acq_rel); fence.proxy.async and wgmma.fence order
    # the tensor-core pipeline, not global memory
    if atomics and any(ln.strip().startswith(("membar", "fence.sc", "fence.acq_rel")) for ln in lines):
        raise AssertionError("a memory fence next to the atomics")
    local = local_memory_bytes(compiled.asm["cubin"])
    if local:
        raise AssertionError(f"{local} bytes of local memory (register spills)")
    if check_pipeline:
        check_pipelined(compiled.asm["ttgir"])
    return compiled


@triton.jit
def _unpipelined_kernel(p_ptr, b_ptr, idx_ptr, out_ptr, K, NOUT,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """What gather_k looked like before: the gathered B rows' index is loaded inside the K loop."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for j0 in range(0, K, BLOCK_K):
        js = j0 + tl.arange(0, BLOCK_K)
        nid = tl.load(idx_ptr + js).to(tl.int64)
        acc = tl.dot(tl.load(p_ptr + rows[:, None] * K + js[None, :]),
                     tl.load(b_ptr + nid[:, None] * NOUT + cols[None, :]), acc)
    tl.store(out_ptr + rows[:, None] * NOUT + cols[None, :], acc.to(out_ptr.dtype.element_ty))


def self_check() -> None:
    """The pipelining check must reject a K loop that loads an index (so a pass means something)."""
    sig = dict(p_ptr="*bf16", b_ptr="*bf16", idx_ptr="*i32", out_ptr="*bf16", K="i32", NOUT="i32")
    config = triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3)
    try:
        compile_one(_unpipelined_kernel, sig, {}, config, check_pipeline=True)
    except AssertionError as e:
        print(f"self-check: an index load in the K loop is rejected ({e}): ok", flush=True)
        return
    raise AssertionError("self-check: the pipelining check accepted an index load inside the K loop")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="bf16,fp32", help=f"operand dtypes, from {sorted(DTYPES)}")
    ap.add_argument("--all-configs", action="store_true", help="every autotune config (default: the first)")
    args = ap.parse_args(argv)
    self_check()
    failed = 0
    for dt in args.dtypes.split(","):
        if dt not in DTYPES:
            ap.error(f"--dtypes: unknown dtype {dt!r}; choose from {sorted(DTYPES)}")
        for kernel, sig, consts, configs in _cases(DTYPES[dt]):
            for config in configs if args.all_configs else configs[:1]:
                flags = ",".join(f"{k}={v}" for k, v in consts.items() if k not in ("ACC", "UPCAST", "PRECISION", "GROUP_M"))
                t0 = time.perf_counter()
                try:
                    compile_one(kernel, sig, consts, config, check_pipeline=dt != "fp32"
                                and kernel is not triton_count.act_count_kernel)
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
