"""The plainest speed check: dense `F.linear → act → F.linear` vs `masked_ffn(...)`, interleaved.

One problem (N tokens, d, f, kept fraction p, T tasks: 1 = homogeneous with an int task id,
T > 1 = one random task per token), forward (+ backward of all five inputs unless --no-grad).
Each round times `--inner` dense calls, then `--inner` masked calls per backend; the ratio
dense / masked is taken per round and its median reported (docs/design.md §3 routing was
calibrated with it). No warm caches are shared: fresh task ids are drawn per call when T > 1.

    python benchmarks/bench_plain_call.py --tokens 4096 --d 512 --f 2048 --p 0.25
    python benchmarks/bench_plain_call.py --tokens 800 --d 256 --f 1024 --p 0.9 --tasks 16 --backends torch,maskmul,auto
Writes {out}/plain_call.{json,md} (appends nothing: one run, one file).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing as tm  # noqa: E402

from neuronspec.ops import TaskMasks, available_backends, last_backend, masked_ffn  # noqa: E402
from neuronspec.ops.backends import BACKENDS  # noqa: E402
from neuronspec.ops.activations import act  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--f", type=int, default=2048)
    p.add_argument("--p", type=float, default=0.25, help="kept fraction of every task")
    p.add_argument("--tasks", type=int, default=1, help="1: homogeneous batch; more: a random task per token")
    p.add_argument("--backends", default="auto", help="comma-separated, e.g. auto,torch,maskmul")
    p.add_argument("--activation", default="relu", choices=("relu", "gelu"))
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--no-grad", action="store_true", help="forward only (decoding)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--inner", type=int, default=3, help="calls per timed sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: print only)")
    return p


def check(args) -> None:
    for name in ("tokens", "d", "f", "tasks", "rounds", "inner"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}: expected a positive int, got {getattr(args, name)}")
    if not 0 < args.p <= 1:
        raise ValueError(f"--p: expected a kept fraction in (0, 1], got {args.p}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check(args)
        backends = tm.parse_list(args.backends, str, "--backends")
        dtype, device = tm.parse_dtype(args.dtype), tm.parse_device(args.device)
        unknown = [b for b in backends if b not in ("auto", *BACKENDS)]
        if unknown:
            raise ValueError(f"--backends: unknown backend {unknown[0]!r}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    backends = tm.skip_unavailable(backends, ["auto", *available_backends(device)], device, "--backends")
    gen = torch.Generator().manual_seed(args.seed)
    n, d, f = args.tokens, args.d, args.f
    grad = not args.no_grad
    x, w1, b1, w2, b2, dy = (t.to(device, dtype) for t in (
        torch.randn(n, d, generator=gen), torch.randn(f, d, generator=gen) / d**0.5,
        0.1 * torch.randn(f, generator=gen), torch.randn(d, f, generator=gen) / f**0.5,
        torch.zeros(d), torch.randn(n, d, generator=gen)))
    leaves = [t.requires_grad_(grad) for t in (x, w1, b1, w2, b2)]
    k = max(1, round(args.p * f))
    masks = TaskMasks.from_indices([torch.randperm(f, generator=gen)[:k].tolist() for _ in range(args.tasks)], f)
    masks = masks.to(device)

    def ids():
        return 0 if args.tasks == 1 else torch.randint(0, args.tasks, (n,), device=device)

    def run(fn):
        y = fn()
        if grad:
            torch.autograd.grad(y, leaves, dy)

    calls = {"dense": lambda: run(lambda: F.linear(act(F.linear(x, w1, b1), args.activation), w2, b2))}
    for b in backends:
        calls[b] = (lambda b=b: run(lambda: masked_ffn(x, w1, b1, w2, b2, masks, ids(), args.activation,
                                                       backend=b)))
    ran = {}  # the backend that ran each provider (auto's pick: ops.last_backend)
    for name, fn in calls.items():  # warm-up: kernels, caches of the masks' tables
        fn()
        fn()
        ran[name] = "dense" if name == "dense" else last_backend()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, fn in calls.items():
            tm.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(args.inner):
                fn()
            tm.synchronize(device)
            times[name].append((time.perf_counter() - t0) / args.inner)
    def sig3(x: float) -> float:  # 3 significant digits: a loaded machine's 0.0004x must not print as 0.0
        return float(f"{x:.3g}")

    rows = []
    for name, ts in times.items():
        ratios = [a / b for a, b in zip(times["dense"], ts)]
        rows.append(dict(provider=name, ran=ran[name], median_ms=sig3(1e3 * statistics.median(ts)),
                         ratio=sig3(statistics.median(ratios)),
                         ratio_q1=sig3(statistics.quantiles(ratios, n=4)[0]) if len(ratios) > 1 else None,
                         ratio_q3=sig3(statistics.quantiles(ratios, n=4)[2]) if len(ratios) > 1 else None))
    title = (f"N={n} d={d} f={f} p={args.p} tasks={args.tasks} {args.activation} {args.dtype} "
             f"{'fwd+bwd' if grad else 'forward'} on {tm.device_label(tm.machine_info(device))}")
    md = f"{title}\n\n" + tm.markdown_table(
        ["provider", "ran", "median ms", "dense / it (median of rounds) [q1, q3]"],
        [[r["provider"], r["ran"], r["median_ms"], f"{r['ratio']}× [{r['ratio_q1']}, {r['ratio_q3']}]"] for r in rows])
    print(md)
    if args.out:
        meta = {**tm.machine_info(device), "benchmark": "plain_call", "command": " ".join(sys.argv), **vars(args)}
        tm.write_results(args.out, "plain_call", rows, meta, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
