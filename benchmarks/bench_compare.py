"""Paired bootstrap (`evaluate --compare`): neuronspec's per-line-statistics bootstrap vs sacrebleu's PairedTest.

Synthetic systems shaped like an EC30 test comparison: D directions x L lines (default 60 x 2,000),
references of Zipf-distributed words (5,000 types, 4-40 words a line), two systems that substitute
or drop 30 % and 27 % of the words. Each engine runs in its own process (wall time and peak RSS
from wait4) doing what `evaluate --compare` does: BLEU and chrF++, per direction and pooled over all
directions, 1000 resamples. sacrebleu is run side by side on a subset (--baseline-directions) because
on the full size it does not finish in 15 minutes; the ratio is measured on that subset, with p-values
checked equal. Ours extracts the statistics in one process per CPU. Writes a JSON with every number (--out).

    python benchmarks/bench_compare.py                       # 60 x 2000 ours, 3 x 2000 both
    python benchmarks/bench_compare.py --directions 4 --lines 300 --baseline-directions 4   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np


def make_texts(directions: int, lines: int, seed: int = 0) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """{direction: (hyps_a, hyps_b, refs)} of synthetic sentences (see module docstring)."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}{'abcdefghij'[i % 10] * (1 + i % 7)}" for i in range(5000)])
    cdf = np.cumsum(1.0 / np.arange(1, len(vocab) + 1))
    cdf /= cdf[-1]

    def draw(k: int) -> np.ndarray:
        return vocab[np.minimum(np.searchsorted(cdf, rng.random(k)), len(vocab) - 1)]

    out = {}
    for d in range(directions):
        refs, a, b = [], [], []
        for _ in range(lines):
            words = draw(int(rng.integers(4, 41)))
            refs.append(" ".join(words))
            for noise, hyps in ((0.30, a), (0.27, b)):
                u, swap = rng.random(len(words)), draw(len(words))
                keep = np.where(u < noise * 0.7, swap, np.where(u < noise, "", words))
                hyps.append(" ".join(w for w in keep if w))
        out[f"en-x{d:02d}"] = (a, b, refs)
    return out


def run_ours(texts, n_samples: int) -> dict:
    from neuronspec.nmt import bootstrap as bs

    many = bs.line_stats_many([((a, b), r) for a, b, r in texts.values()])
    stats = {d: {m: tuple(v) for m, v in s.items()} for d, s in zip(texts, many)}
    rows = {d: bs.paired_test_stats(s, n_samples) for d, s in stats.items()}
    pooled = {m: tuple(np.concatenate([s[m][i] for s in stats.values()]) for i in (0, 1)) for m in bs.METRICS}
    rows["pooled"] = bs.paired_test_stats(pooled, n_samples)
    return {d: {k: float(v) for k, v in r.items() if k.startswith("p_")} for d, r in rows.items()}


def run_sacrebleu(texts, n_samples: int) -> dict:
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    def test(a, b, r):
        metrics = {"bleu": BLEU(tokenize="13a"), "chrf": CHRF(word_order=2)}
        _, sc = PairedTest([("A", a), ("B", b)], metrics, references=[r], test_type="bs", n_samples=n_samples)()
        keys = [k for k in sc if k != "System"]
        return {f"p_{m}": float(sc[k][1].p_value) for m, k in zip(("bleu", "chrf"), keys)}

    rows = {d: test(a, b, r) for d, (a, b, r) in texts.items()}
    rows["pooled"] = test(*(sum((list(t[i]) for t in texts.values()), []) for i in range(3)))
    return rows


def child(args) -> None:
    texts = make_texts(args.directions, args.lines, args.seed)
    start = time.perf_counter()
    rows = (run_ours if args.child == "ours" else run_sacrebleu)(texts, args.samples)
    json.dump({"seconds": time.perf_counter() - start, "p": rows}, sys.stdout)


def measure(engine: str, directions: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--directions", str(directions), "--lines", str(args.lines),
           "--samples", str(args.samples), "--seed", str(args.seed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"bench_compare: the {engine} run failed (status {status})")
    res = json.loads(out)
    res["peak_rss_mb"] = usage.ru_maxrss / 1024
    print(f"{engine:9s} {directions:3d} directions x {args.lines} lines: {res['seconds']:7.1f} s (bootstrap incl. "
          f"statistics), peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--directions", type=int, default=60)
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--baseline-directions", type=int, default=3, help="directions sacrebleu runs on (side by side)")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write every number as JSON here")
    ap.add_argument("--child", choices=["ours", "sacrebleu"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    sub = args.baseline_directions
    base, ours_sub = measure("sacrebleu", sub, args), measure("ours", sub, args)
    same = base["p"] == ours_sub["p"]
    print(f"subset {sub} x {args.lines}: ours {base['seconds'] / ours_sub['seconds']:.1f}x faster, "
          f"{base['peak_rss_mb'] / ours_sub['peak_rss_mb']:.1f}x less memory; p-values equal: {same}")
    full = measure("ours", args.directions, args)
    result = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "load_avg": os.getloadavg(), "args": {k: v for k, v in vars(args).items() if k != "child"},
              "subset": {"sacrebleu": base, "ours": ours_sub, "p_values_equal": same}, "full": full}
    if args.out:
        from neuronspec.atomic import strict_json, write_atomic

        write_atomic(args.out, strict_json(result, indent=1))
    if not same:
        raise SystemExit("bench_compare: p-values differ from sacrebleu's")


if __name__ == "__main__":
    main()
