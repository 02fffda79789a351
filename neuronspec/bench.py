"""`neuronspec bench`: run the benchmark scripts of benchmarks/ with defaults for this device.

    neuronspec bench                      # quick: masked FFN, counting, train step (≈ 2 min on CPU)
    neuronspec bench --full               # everything: all shapes, p, modes, a token sweep
    neuronspec bench --only masked_ffn --device cpu --out results/

Each benchmark runs as its own process (`python benchmarks/bench_<name>.py --preset ...`), so a
failure in one does not stop the others; the exit status is non-zero if any failed. Results
(CSV, JSON, Markdown, PNG) go to --out (default ./bench_results/<device type>).
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

BENCHMARKS = ("masked_ffn", "counting", "train_step")
BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true", help="the full grid (same as --preset full)")
    parser.add_argument("--preset", choices=("quick", "default", "full"), default=None,
                        help="quick (the default), default (the benchmark scripts' own defaults) or full")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--out", default=None, help="output folder (default ./bench_results/<device type>)")
    parser.add_argument("--repeats", type=int, default=None, help="override the timed rounds of every benchmark")


def commands(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """[(name, argv)] for the chosen benchmarks; ValueError on a bad option."""
    if args.full and args.preset not in (None, "full"):
        raise ValueError(f"--full conflicts with --preset {args.preset}")
    preset = "full" if args.full else (args.preset or "quick")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(f"--only: expected names from {BENCHMARKS}, got {args.only!r}")
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats: must be >= 1, got {args.repeats}")
    if not BENCH_DIR.is_dir():
        raise ValueError(f"benchmark scripts not found in {BENCH_DIR}: run from a source checkout of neuronspec")
    device = args.device
    if device == "auto":
        import torch  # lazy: only to pick the default device; the benchmarks run in subprocesses

        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out) if args.out else Path.cwd() / "bench_results" / device.split(":")[0]
    cmds = []
    for name in names:
        argv = [sys.executable, str(BENCH_DIR / f"bench_{name}.py"), "--preset", preset, "--device", device,
                "--out", str(out)]
        if args.repeats is not None:
            argv += ["--repeats", str(args.repeats)]
        cmds.append((name, argv))
    return cmds


def run(args: argparse.Namespace) -> int:
    try:
        cmds = commands(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    root = str(BENCH_DIR.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    failed = []
    for name, argv in cmds:
        log.info("bench %s: %s", name, " ".join(argv[1:]))
        t0 = time.perf_counter()
        rc = subprocess.run(argv, env=env).returncode
        log.info("bench %s: exit %d after %.0f s", name, rc, time.perf_counter() - t0)
        if rc != 0:
            failed.append(f"{name} (exit {rc})")
    if failed:
        log.error("failed: %s", ", ".join(failed))
        return 1
    log.info("results in %s", cmds[0][1][cmds[0][1].index("--out") + 1])
    return 0
