"""Where the time of a masked FFN goes: torch.profiler op tables, dense vs a backend, per p.

    python benchmarks/profile_masked_ffn.py --p 0.25,0.5,0.75 --mode fwd+bwd       # CPU, base, N 4096
    python benchmarks/profile_masked_ffn.py --device cuda --dtype bf16 --provider triton --tokens 8192

Prints, per p, the ops sorted by self time (ms per call of the FFN) and a one-line split into
GEMMs (mm/addmm/bmm) vs everything else, next to dense; writes {out}/profile_masked_ffn.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing as tm  # noqa: E402
import bench_masked_ffn as bm  # noqa: E402

GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default="base", help=f"one of {sorted(tm.SHAPES)} or DxF")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--tasks", type=int, default=1, help="1 = homogeneous, K = K-task mixed batch")
    p.add_argument("--p", default="0.25,0.5,0.75")
    p.add_argument("--mode", default="fwd+bwd", choices=bm.MODES)
    p.add_argument("--provider", default="torch")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--iters", type=int, default=3, help="profiled calls (after 2 warm-up calls)")
    p.add_argument("--rows", type=int, default=14, help="ops shown per table")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<device type>)")
    return p


def profile_fn(fn, device: torch.device, iters: int) -> list[tuple[str, float, int]]:
    """[(op name, self ms per call of fn, op calls per call of fn)], biggest first."""
    for _ in range(2):
        fn()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(iters):
            fn()
        tm.synchronize(device)
    rows = []
    for e in prof.key_averages():
        us = e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total
        if us > 0:
            rows.append((e.key, us / 1e3 / iters, e.count // iters))
    return sorted(rows, key=lambda r: -r[1])


def split(rows) -> tuple[float, float]:
    gemm = sum(ms for k, ms, _ in rows if k in GEMMS)
    return gemm, sum(ms for _, ms, _ in rows) - gemm


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = tm.parse_device(args.device)
        (shape,) = tm.parse_shapes(args.shape)
        ps = tm.parse_list(args.p, float, "--p")
        dtype = tm.parse_dtype(args.dtype)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _, d, f = shape
    gen = torch.Generator().manual_seed(0)
    weights = bm.make_weights(d, f, dtype, device, gen)
    x = torch.randn(args.tokens, d, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    dy = torch.randn(args.tokens, d, generator=gen).to(device=device, dtype=dtype)
    task_vec = torch.randint(0, args.tasks, (args.tokens,), generator=gen).to(device)
    task = 0 if args.tasks == 1 else task_vec
    inputs = [x, *weights]
    info = tm.machine_info(device)
    lines = [f"# Profile of masked_ffn ({args.provider}) vs dense\n",
             f"{tm.device_label(info)}; {info['date_utc']} UTC; load average {info['load_avg_start']}; "
             f"shape {shape[0]} (d {d}, f {f}), N {args.tokens}, tasks {args.tasks}, {args.mode}, {dtype}. "
             f"Times are profiler self times in ms per FFN call (the profiler adds some overhead).\n"]
    dense = bm.timed_fn(args.mode, bm.forward_fn("dense", x, weights, None, task, task_vec, "relu"), inputs, dy)
    dense_rows = profile_fn(dense, device, args.iters)
    dg, do = split(dense_rows)
    tables = [("dense", dense_rows)]
    for p in ps:
        masks = bm.make_masks(f, p, args.tasks, gen, device)
        fn = bm.timed_fn(args.mode, bm.forward_fn(args.provider, x, weights, masks, task, task_vec, "relu"),
                         inputs, dy)
        rows = profile_fn(fn, device, args.iters)
        g, o = split(rows)
        lines.append(f"- p = {p:g}: GEMMs {g:.1f} ms (dense {dg:.1f}, ratio {dg / max(g, 1e-9):.2f}×, ideal "
                     f"{1 / p:.2f}×); other ops {o:.1f} ms (dense {do:.1f}); total {g + o:.1f} ms vs dense "
                     f"{dg + do:.1f} → {(dg + do) / max(g + o, 1e-9):.2f}×")
        tables.append((f"{args.provider} p={p:g}", rows))
    for name, rows in tables:
        lines.append(f"\n**{name}**\n\n" + tm.markdown_table(
            ["op", "self ms / call", "calls / call"], [(k, f"{ms:.2f}", n) for k, ms, n in rows[:args.rows]]))
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out) if args.out else tm.ROOT / "benchmarks" / "results" / device.type
    tm.write_atomic(out / "profile_masked_ffn.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
