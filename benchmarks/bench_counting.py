"""Activation counting overhead: fc1 + act alone vs fc1 + act + counting (eval mode, no grad).

Providers:
    fc1+act                 act(F.linear(x, W1, b1)): what the model computes anyway, the baseline
    fused-<backend>         neuronspec.ops.fc1_act_count(..., return_output=True): H and counts
    fused-<backend>-nowrite fc1_act_count(..., return_output=False): counts only, H never written
    hook                    the original method: nn.Sequential(fc1, act) with a forward hook on
                            the activation that adds (h > 0) per task into the counts
Every counting provider skips padding tokens (`--pad-fraction` of the tokens are padding) and
is checked once against fc1_act_count_reference. Overhead = time / time(fc1+act) - 1.

    python benchmarks/bench_counting.py                      # device defaults
    python benchmarks/bench_counting.py --shapes base --tokens 4096 --tasks 1,8 --out /tmp/r
Writes {out}/counting.{csv,json,md}.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing as tm  # noqa: E402

from neuronspec.ops import available_backends, fc1_act_count, fc1_act_count_reference, last_backend  # noqa: E402
from neuronspec.ops.activations import act  # noqa: E402
from neuronspec.ops.backends import BACKENDS  # noqa: E402

log = logging.getLogger("neuronspec.bench.counting")

PRESETS = {
    "quick": {"cpu": dict(shapes="base", tokens="4096", tasks="1", dtype="fp32", repeats=7, warmup=1),
              "cuda": dict(shapes="base,big", tokens="8192", tasks="1", dtype="bf16", repeats=15, warmup=3)},
    "default": {"cpu": dict(shapes="base", tokens="4096", tasks="1,8", dtype="fp32", repeats=11, warmup=2),
                "cuda": dict(shapes="base,big,llm", tokens="8192", tasks="1,8", dtype="bf16", repeats=25, warmup=3)},
    "full": {"cpu": dict(shapes="base,big", tokens="1024,4096,16384", tasks="1,8", dtype="fp32", repeats=11,
                         warmup=2),
             "cuda": dict(shapes="base,big,llm", tokens="2048,8192,32768", tasks="1,8", dtype="bf16", repeats=25,
                          warmup=3)},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--shapes", help=f"names {sorted(tm.SHAPES)} or DxF, comma-separated")
    p.add_argument("--tokens", help="token counts, comma-separated")
    p.add_argument("--tasks", help="1 = homogeneous batch, K > 1 = K-task mixed batch; comma-separated")
    p.add_argument("--backends", help="backends for the fused op (default: all available but reference)")
    p.add_argument("--dtype", help="fp32, bf16, fp16, fp64")
    p.add_argument("--activation", default="relu", choices=("relu", "gelu"))
    p.add_argument("--pad-fraction", type=float, default=0.1, help="fraction of tokens marked as padding")
    tm.add_run_args(p)
    return p


def resolve_args(args) -> dict:
    device, get = tm.preset_values(args, PRESETS)
    avail = [b for b in available_backends(device) if b not in ("reference", "maskmul")]  # maskmul does not count
    # Triton on CPU is its interpreter (TRITON_INTERPRET=1): timed only when asked for
    default = [b for b in avail if not (device.type == "cpu" and b == "triton")]
    backends = default if args.backends is None else tm.parse_list(args.backends, str, "--backends")
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"--backends: unknown backend {b!r}")
    backends = tm.skip_unavailable(backends, avail, device, "--backends")
    tokens, tasks = tm.parse_list(get("tokens"), int, "--tokens"), tm.parse_list(get("tasks"), int, "--tasks")
    if any(v < 1 for v in tokens + tasks):
        raise ValueError("--tokens and --tasks: every entry must be >= 1")
    if not 0 <= args.pad_fraction < 1:
        raise ValueError(f"--pad-fraction: expected a value in [0, 1), got {args.pad_fraction}")
    repeats, warmup = int(get("repeats")), int(get("warmup"))
    if repeats < 1 or warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats}, {warmup}")
    out = Path(args.out) if args.out else tm.ROOT / "benchmarks" / "results" / device.type
    return dict(device=device, shapes=tm.parse_shapes(get("shapes")), tokens=tokens, tasks=tasks, backends=backends,
                dtype=tm.parse_dtype(get("dtype")), activation=args.activation, pad=args.pad_fraction,
                repeats=repeats, warmup=warmup, seed=args.seed, out=out, preset=args.preset)


class HookCounter:
    """The original recording method: a forward hook on the activation module."""

    def __init__(self, module: nn.Module, counts: torch.Tensor, task, task_vec, valid):
        self.counts, self.task, self.task_vec, self.valid = counts, task, task_vec, valid
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, inputs, h):
        pos = h > 0
        if self.valid is not None:
            pos &= self.valid[:, None]
        if isinstance(self.task, int):
            self.counts[self.task] += pos.sum(0)
        else:
            for t in torch.unique(self.task_vec).tolist():
                self.counts[t] += pos[self.task_vec == t].sum(0)


def run_case(cfg: dict, shape, n: int, num_tasks: int) -> list[dict]:
    name, d, f = shape
    device, dtype, activation = cfg["device"], cfg["dtype"], cfg["activation"]
    gen = torch.Generator().manual_seed(cfg["seed"])
    x = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype)
    w1 = (torch.randn(f, d, generator=gen) / math.sqrt(d)).to(device=device, dtype=dtype)
    b1 = (0.02 * torch.randn(f, generator=gen)).to(device=device, dtype=dtype)
    valid = (torch.rand(n, generator=gen) >= cfg["pad"]).to(device)
    task_vec = (torch.zeros(n, dtype=torch.long) if num_tasks == 1
                else torch.randint(0, num_tasks, (n,), generator=gen)).to(device)
    task = 0 if num_tasks == 1 else task_vec
    counts = torch.zeros(num_tasks, f, dtype=torch.long, device=device)
    block = nn.Sequential(nn.Linear(d, f), nn.ReLU() if activation == "relu" else nn.GELU()).to(device, dtype)
    with torch.no_grad():
        block[0].weight.copy_(w1)
        block[0].bias.copy_(b1)
    hook = HookCounter(block[1], counts, task, task_vec, valid)

    fns = {"fc1+act": lambda: act(F.linear(x, w1, b1), activation)}
    for b in cfg["backends"]:
        fns[f"fused-{b}"] = lambda b=b: fc1_act_count(x, w1, b1, counts, task, valid, activation, backend=b)
        fns[f"fused-{b}-nowrite"] = lambda b=b: fc1_act_count(x, w1, b1, counts, task, valid, activation,
                                                              return_output=False, backend=b)
    fns["hook"] = lambda: block(x)

    # correctness: each counting provider once on zeroed counts vs the reference
    want = torch.zeros_like(counts)
    fc1_act_count_reference(x, w1, b1, want, task_vec, valid, activation)
    correct, ran = {}, {}  # ran: the backend that counted for each provider (ops.last_backend)
    with torch.no_grad():
        for key, fn in fns.items():
            if key == "fc1+act":
                continue
            counts.zero_()
            try:
                fn()
                correct[key] = bool(torch.equal(counts, want))
                ran[key] = last_backend("count") if key.startswith("fused-") else key
            except Exception as e:  # noqa: BLE001 - reported in the row, the others go on
                correct[key] = f"error: {type(e).__name__}: {e}"[:200]
        stats = tm.measure(fns, device, cfg["repeats"], cfg["warmup"],
                           min_sample_s=2e-3 if device.type == "cuda" else 0.0)
        kernel = {k: tm.kernel_time(fns[k], device) for k, st in stats.items() if isinstance(st, tm.Stats)}
    hook.handle.remove()
    base = stats["fc1+act"]
    rows = []
    for key, st in stats.items():
        row = dict(shape=name, d=d, f=f, tokens=n, batch="homogeneous" if num_tasks == 1 else f"mixed{num_tasks}",
                   provider=key, ran=ran.get(key, key), dtype=str(dtype).split(".")[-1], device=device.type, activation=activation,
                   pad_fraction=cfg["pad"])
        if isinstance(st, str):
            rows.append({**row, "status": st})
            continue
        row.update(median_ms=tm.sig(st.median * 1e3), q1_ms=tm.sig(st.q1 * 1e3), q3_ms=tm.sig(st.q3 * 1e3),
                   iqr_ms=tm.sig(st.iqr * 1e3), repeats=len(st.samples))
        if isinstance(base, tm.Stats):
            r_med, r_q1, r_q3 = tm.ratio_stats(st, base)  # time ratio provider / baseline
            row.update(overhead_pct=round((st.median / base.median - 1) * 100, 3),
                       overhead_q1_pct=round((r_q1 - 1) * 100, 2), overhead_q3_pct=round((r_q3 - 1) * 100, 2))
        if kernel.get(key) is not None:
            row["kernel_ms"] = tm.sig(kernel[key] * 1e3)
            if kernel.get("fc1+act"):
                row["kernel_overhead_pct"] = round((kernel[key] / kernel["fc1+act"] - 1) * 100, 2)
        ok = correct.get(key, True)
        row["counts_correct"] = ok if key != "fc1+act" else None
        row["status"] = "ok" if ok is True else ("WRONG COUNTS" if ok is False else ok)
        rows.append(row)
    return rows


def case_table(rows: list[dict]) -> str:
    r0 = rows[0]
    title = (f"**{r0['shape']}** d={r0['d']} f={r0['f']}, N={r0['tokens']} tokens ({r0['pad_fraction']:.0%} padding), "
             f"{r0['batch']}, {r0['dtype']}, {r0['activation']} on {r0['device']}")
    body = []
    for r in rows:
        if "median_ms" not in r:
            body.append([r["provider"], r["status"], "", ""])
            continue
        ov = "baseline" if r["provider"] == "fc1+act" else (
            f"{r['overhead_pct']:+.1f} % [{r['overhead_q1_pct']:+.1f}, {r['overhead_q3_pct']:+.1f}]")
        provider = r["provider"] if r.get("ran", "") in r["provider"] else f"{r['provider']} (ran {r['ran']})"
        line = [provider, f"{r['median_ms']:.3g}", f"{r['iqr_ms']:.2g}", ov +
                ("" if r["status"] == "ok" else f" ({r['status']})")]
        if any("kernel_ms" in q for q in rows):
            line += [f"{r['kernel_ms']:.3g}" if "kernel_ms" in r else "",
                     f"{r['kernel_overhead_pct']:+.1f} %" if "kernel_overhead_pct" in r and r["provider"] != "fc1+act"
                     else ("baseline" if r["provider"] == "fc1+act" else "")]
        body.append(line)
    header = ["provider", "median ms", "IQR ms", "overhead vs fc1+act [IQR]"]
    if any("kernel_ms" in q for q in rows):  # CUDA: GPU time alone (torch.profiler), host overhead excluded
        header += ["GPU kernel ms", "kernel overhead"]
    return title + "\n\n" + tm.markdown_table(header, body)


def markdown_report(rows: list[dict], meta: dict) -> str:
    cases: dict[tuple, list] = {}
    for r in rows:
        cases.setdefault((r["shape"], r["tokens"], r["batch"]), []).append(r)
    head = (f"# Counting overhead benchmark\n\nDevice: {tm.device_label(meta)}. Date (UTC): {meta['date_utc']}. "
            f"Commit: {meta.get('git_commit')}. Load average at start: {meta['load_avg_start']}, at end: "
            f"{meta.get('load_avg_end')}.\nOverhead = median time / median time of fc1+act − 1; brackets: "
            f"quartiles of the per-round ratios over {meta['repeats']} interleaved rounds. "
            f"Command: `{meta['cmdline']}`\n")
    return head + "\n" + "\n".join(case_table(c) for c in cases.values())


def main(argv: list[str] | None = None) -> int:
    cfg = tm.parse_config(build_parser(), resolve_args, argv)
    if cfg is None:
        return 2
    meta = tm.run_meta(cfg, "counting", backends=cfg["backends"])
    log.info("counting benchmark on %s: backends %s, out %s", tm.device_label(meta), cfg["backends"], cfg["out"])
    rows: list[dict] = []
    jobs = [(s, n, k) for s in cfg["shapes"] for n in cfg["tokens"] for k in cfg["tasks"]]
    for shape, n, k in tqdm(jobs, desc="counting", unit="case", disable=None):
        try:
            case = run_case(cfg, shape, n, k)
        except torch.OutOfMemoryError as e:
            log.warning("%s N=%d tasks=%d: out of memory, skipped (%s)", shape[0], n, k, str(e)[:120])
            torch.cuda.empty_cache()
            continue
        rows += case
        print("\n" + case_table(case), flush=True)
        meta["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
        tm.write_results(cfg["out"], "counting", rows, meta, markdown_report(rows, meta))
    log.info("wrote %s/counting.{csv,json,md}", cfg["out"])
    return 1 if any(r.get("status") == "WRONG COUNTS" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
