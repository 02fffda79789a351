"""Masked FFN speed: dense vs the original mask-multiply vs the gather/kernel backends.

Providers (whichever run on the device):
    dense      F.linear(fc1) → act → F.linear(fc2): the model without masks, the baseline
    reference  masked_ffn_reference: fc1.weight ⊙ m_t, then a dense FFN (the original method)
    torch, triton, cuda   neuronspec.ops.masked_ffn(..., backend=...): active neurons only
Modes: fwd (forward with autograd recording, as in training), bwd (backward only, the graph is
kept between calls), fwd+bwd, and inference (forward under no_grad, not in the defaults).
Batches: homogeneous (one task, `task_ids` an int) or mixed (T tasks, random id per token).
Masks: every task keeps round(p·f) random neurons. Gradients are taken w.r.t. x and all weights.

    python benchmarks/bench_masked_ffn.py                       # device defaults (see PRESETS)
    python benchmarks/bench_masked_ffn.py --preset quick --out /tmp/r
    python benchmarks/bench_masked_ffn.py --shapes base --p 0.25,0.5,0.75,0.9 --modes fwd,fwd+bwd \
        --tokens 4096 --dtype fp32 --tasks 1

Writes {out}/masked_ffn.{csv,json,md,png} (rewritten after every group, so a run cut short
keeps what it measured) and prints one table per group.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing as tm  # noqa: E402  (also puts the repo root on sys.path)

from neuronspec.ops import TaskMasks, available_backends, last_backend, masked_ffn, masked_ffn_reference  # noqa: E402
from neuronspec.ops.activations import act  # noqa: E402

log = logging.getLogger("neuronspec.bench.masked_ffn")

MODES = ("fwd", "bwd", "fwd+bwd", "inference")
ALL_P = "0.1,0.25,0.5,0.75,0.9,1.0"
PRESETS = {  # preset → device type → defaults; explicit flags override
    "quick": {
        "cpu": dict(shapes="base", tokens="4096", p="0.25,0.5,0.75", modes="fwd,fwd+bwd", tasks="1",
                    dtype="fp32", repeats=5, warmup=1),
        "cuda": dict(shapes="base,big", tokens="8192", p="0.25,0.5,0.75", modes="fwd,fwd+bwd", tasks="1",
                     dtype="bf16", repeats=10, warmup=3),
    },
    "default": {
        "cpu": dict(shapes="base", tokens="4096", p=ALL_P, modes="fwd+bwd,fwd,bwd", tasks="1,8",
                    dtype="fp32", repeats=7, warmup=2),
        "cuda": dict(shapes="base,big,llm", tokens="8192", p=ALL_P, modes="fwd+bwd,fwd,bwd", tasks="1,8",
                     dtype="bf16", repeats=15, warmup=3),
    },
    "full": {
        "cpu": dict(shapes="base,big", tokens="1024,4096,16384", p=ALL_P, modes="fwd+bwd,fwd,bwd",
                    tasks="1,8", dtype="fp32", repeats=7, warmup=2),
        "cuda": dict(shapes="base,big,llm", tokens="2048,8192,32768", p=ALL_P, modes="fwd+bwd,fwd,bwd",
                     tasks="1,8", dtype="bf16", repeats=15, warmup=3),
    },
}
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}


# ---- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="defaults for the flags below")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--shapes", help=f"names {sorted(tm.SHAPES)} or DxF (e.g. 768x3072), comma-separated")
    p.add_argument("--tokens", help="token counts N, comma-separated (a sweep)")
    p.add_argument("--p", help="kept fractions of neurons, comma-separated")
    p.add_argument("--modes", help=f"comma-separated subset of {MODES}")
    p.add_argument("--tasks", help="1 = homogeneous batch; K > 1 = K-task mixed batch; comma-separated")
    p.add_argument("--providers", help="dense,reference,auto,maskmul,torch,triton,cuda (default: all available)")
    p.add_argument("--dtype", help="fp32, bf16, fp16, fp64")
    p.add_argument("--activation", default="relu", choices=("relu", "gelu"))
    tm.add_run_args(p, repeats_help="timed rounds", warmup_help="untimed calls per provider first")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def resolve_args(args: argparse.Namespace) -> dict:
    """Fill unset flags from the preset of the device and parse the lists (ValueError if bad)."""
    device, get = tm.preset_values(args, PRESETS)
    shapes = tm.parse_shapes(get("shapes"))
    ps = tm.parse_list(get("p"), float, "--p")
    if any(not 0 < v <= 1 for v in ps):
        raise ValueError(f"--p: kept fractions must lie in (0, 1], got {ps}")
    modes = tm.parse_list(get("modes"), str, "--modes")
    if any(m not in MODES for m in modes):
        raise ValueError(f"--modes: expected a subset of {MODES}, got {modes}")
    tokens = tm.parse_list(get("tokens"), int, "--tokens")
    tasks = tm.parse_list(get("tasks"), int, "--tasks")
    if any(v < 1 for v in tokens + tasks):
        raise ValueError("--tokens and --tasks: every entry must be >= 1")
    repeats, warmup = int(get("repeats")), int(get("warmup"))
    if repeats < 1 or warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats}, {warmup}")
    backends = [b for b in available_backends(device) if b != "reference"]
    if device.type == "cpu":  # Triton on CPU is its interpreter (TRITON_INTERPRET=1): not worth timing
        backends = [b for b in backends if b != "triton"] if args.providers is None else backends
    avail = ["dense", "reference", "auto", *backends]
    providers = avail if args.providers is None else tm.parse_list(args.providers, str, "--providers")
    for prov in providers:
        if prov not in ("dense", "reference", "auto", "maskmul", "torch", "triton", "cuda"):
            raise ValueError(f"--providers: unknown provider {prov!r}")
    providers = tm.skip_unavailable(providers, avail, device, "--providers")
    if "dense" not in providers:
        providers = ["dense", *providers]  # the baseline of every ratio
    out = Path(args.out) if args.out else tm.ROOT / "benchmarks" / "results" / device.type
    return dict(device=device, shapes=shapes, p=ps, modes=modes, tokens=tokens, tasks=tasks, repeats=repeats,
                warmup=warmup, providers=providers, dtype=tm.parse_dtype(get("dtype")), out=out,
                activation=args.activation, seed=args.seed, plot=not args.no_plot, preset=args.preset)


# ---- problem setup ------------------------------------------------------------------------------
def make_weights(d: int, f: int, dtype, device, gen: torch.Generator):
    """fc1/fc2 weights like nn.Linear's scale; small random biases (the unmasked b1 matters)."""
    w1 = torch.randn(f, d, generator=gen) / math.sqrt(d)
    b1 = 0.02 * torch.randn(f, generator=gen)
    w2 = torch.randn(d, f, generator=gen) / math.sqrt(f)
    b2 = 0.02 * torch.randn(d, generator=gen)
    return [t.to(device=device, dtype=dtype).requires_grad_(True) for t in (w1, b1, w2, b2)]


def make_masks(f: int, p: float, num_tasks: int, gen: torch.Generator, device) -> TaskMasks:
    """Every task keeps round(p·f) (at least 1) neurons chosen at random."""
    k = max(1, round(p * f))
    sets = [torch.randperm(f, generator=gen)[:k].sort().values for _ in range(num_tasks)]
    return TaskMasks(torch.cat(sets).to(torch.int32), torch.arange(num_tasks + 1, dtype=torch.int32) * k, f).to(device)


def forward_fn(provider: str, x, weights, masks: TaskMasks, task, task_vec, activation: str):
    """A zero-argument callable computing the FFN output with `provider`."""
    w1, b1, w2, b2 = weights
    if provider == "dense":
        return lambda: F.linear(act(F.linear(x, w1, b1), activation), w2, b2)
    if provider == "reference":
        return lambda: masked_ffn_reference(x, w1, b1, w2, b2, masks.indices, masks.offsets, task_vec, activation)
    return lambda: masked_ffn(x, w1, b1, w2, b2, masks, task, activation, backend=provider)


def timed_fn(mode: str, fwd, inputs, dy):
    """Wrap a forward callable for `mode` (bwd runs the forward once here, outside the timing)."""
    if mode == "inference":
        def run():
            with torch.no_grad():
                return fwd()
        return run
    if mode == "fwd":
        return fwd
    if mode == "fwd+bwd":
        return lambda: torch.autograd.grad(fwd(), inputs, dy)
    y = fwd()
    return lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)


OUTPUTS = ("y", "dx", "dw1", "db1", "dw2", "db2")


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """‖y − ref‖ / ‖ref‖ (bf16 operands land near 1e-3 to 1e-2, fp32 far under 1e-4)."""
    return float((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def worst_error(got: list, ref: list) -> tuple[float, str]:
    """(largest relative error, name of that output) over y and the gradients."""
    return max((relative_error(g, r), name) for g, r, name in zip(got, ref, OUTPUTS))


def reference_outputs(inputs, dy, masks: TaskMasks, task_vec, activation: str, grads: bool) -> list:
    """[y] (+ dx, dW1, db1, dW2, db2 when grads) from the float64 oracle (docs/design.md §2)."""
    leaves = [t.detach().double().requires_grad_(grads) for t in inputs]
    with torch.set_grad_enabled(grads):
        y = masked_ffn_reference(*leaves, masks.indices, masks.offsets, task_vec, activation)
    return [y.detach(), *(torch.autograd.grad(y, leaves, dy.double()) if grads else ())]


def provider_outputs(fwd, inputs, dy, grads: bool) -> list:
    """[y] (+ the five gradients when grads) from one provider call."""
    with torch.set_grad_enabled(grads):
        y = fwd()
    return [y.detach(), *(torch.autograd.grad(y, inputs, dy) if grads else ())]


# ---- one group: shape × tokens × batch × mode, all providers and p interleaved ----------------------
def run_group(cfg: dict, shape, n: int, num_tasks: int, mode: str, ps: list[float], errors: dict) -> list[dict]:
    name, d, f = shape
    device, dtype = cfg["device"], cfg["dtype"]
    gen = torch.Generator().manual_seed(cfg["seed"])
    weights = make_weights(d, f, dtype, device, gen)
    x = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    dy = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype)
    inputs = [x, *weights]
    if num_tasks == 1:
        task, task_vec = 0, torch.zeros(n, dtype=torch.long, device=device)
    else:
        task_vec = torch.randint(0, num_tasks, (n,), generator=gen).to(device)
        task = task_vec
    gen_masks = torch.Generator().manual_seed(cfg["seed"] + 1)
    masks = {p: make_masks(f, p, num_tasks, gen_masks, device) for p in cfg["p"]}  # same masks in every chunk
    grads = mode not in ("fwd", "inference")  # check the five gradients too
    fns, ran = {}, {}  # ran: the backend that ran each masked provider (auto's pick, ops.last_backend)
    for p in [None, *ps]:
        ref = None
        for prov in (["dense"] if p is None else [v for v in cfg["providers"] if v != "dense"]):
            key = (prov, p)
            fwd = forward_fn(prov, x, weights, masks[p] if p else None, task, task_vec, cfg["activation"])
            try:
                if p is not None and key not in errors:  # checked once per (shape, N, batch, fwd-only)
                    if ref is None:
                        ref = reference_outputs(inputs, dy, masks[p], task_vec, cfg["activation"], grads)
                    errors[key] = worst_error(provider_outputs(fwd, inputs, dy, grads), ref)
                fns[key] = timed_fn(mode, fwd, inputs, dy)
                if prov not in ("dense", "reference"):
                    with torch.no_grad():
                        fwd()
                    ran[key] = last_backend()
            except Exception as e:  # noqa: BLE001 - record and go on with the other providers
                log.warning("%s p=%s setup failed: %s", prov, p, e)
                fns[key] = _raiser(e)
        del ref
    stats = tm.measure({k: v for k, v in fns.items()}, device, cfg["repeats"], cfg["warmup"],
                       min_sample_s=2e-3 if device.type == "cuda" else 0.0)
    kernel = {k: tm.kernel_time(fns[k], device) for k, st in stats.items() if isinstance(st, tm.Stats)}
    del fns
    base = stats[("dense", None)]
    rows = []
    batch = "homogeneous" if num_tasks == 1 else f"mixed{num_tasks}"
    for (prov, p), st in stats.items():
        row = dict(shape=name, d=d, f=f, tokens=n, batch=batch, mode=mode, provider=prov, ran=ran.get((prov, p), prov),
                   p=p if p is not None else 1.0, ideal=round(1 / p, 4) if p else 1.0, dtype=str(dtype).split(".")[-1],
                   device=device.type, activation=cfg["activation"])
        if isinstance(st, str):
            rows.append({**row, "status": st})
            continue
        row.update(median_ms=tm.sig(st.median * 1e3), q1_ms=tm.sig(st.q1 * 1e3), q3_ms=tm.sig(st.q3 * 1e3),
                   iqr_ms=tm.sig(st.iqr * 1e3), repeats=len(st.samples))
        if isinstance(base, tm.Stats):
            r_med, r_q1, r_q3 = tm.ratio_stats(base, st)
            row.update(speedup=tm.sig(base.median / st.median), speedup_q1=tm.sig(r_q1),
                       speedup_q3=tm.sig(r_q3), speedup_round_median=tm.sig(r_med))
        if kernel.get((prov, p)) is not None:
            row["kernel_ms"] = tm.sig(kernel[(prov, p)] * 1e3)
            if kernel.get(("dense", None)):
                row["kernel_speedup"] = tm.sig(kernel[("dense", None)] / kernel[(prov, p)])
        err, worst = errors.get((prov, p), (None, None))
        row["max_rel_err"] = None if err is None else float(f"{err:.3g}")
        row["worst_output"] = worst
        row["status"] = "WRONG OUTPUT" if err is not None and not err <= TOLERANCE[dtype] else "ok"
        rows.append(row)
    return rows


def p_chunks(cfg: dict, shape, n: int, num_tasks: int, mode: str) -> list[list[float]]:
    """Split the p list so that the graphs that `bwd` keeps alive fit in 40 % of free GPU memory
    (each chunk gets its own dense baseline); everything else runs all p in one group."""
    ps = cfg["p"]
    if mode != "bwd" or cfg["device"].type != "cuda":
        return [ps]
    _, d, f = shape
    elt = torch.tensor([], dtype=cfg["dtype"]).element_size()
    per_p = sum((3 * n * f + num_tasks * f * d) * elt if v == "reference" else 2 * n * f * elt
                for v in cfg["providers"] if v != "dense")
    free = torch.cuda.mem_get_info(cfg["device"])[0]
    size = max(1, int(0.4 * free // max(per_p, 1)))
    return [ps[i:i + size] for i in range(0, len(ps), size)]


def _raiser(exc: Exception):
    def fn():
        raise exc
    return fn


# ---- reporting ---------------------------------------------------------------------------------
def group_key(r: dict) -> tuple:
    return (r["shape"], r["d"], r["f"], r["tokens"], r["batch"], r["mode"], r["dtype"], r["device"])


def group_table(rows: list[dict]) -> str:
    """Markdown: one row per p, per provider 'median ms ±IQR/2 · speedup×'."""
    r0 = rows[0]
    title = (f"**{r0['shape']}** d={r0['d']} f={r0['f']}, N={r0['tokens']} tokens, {r0['batch']}, "
             f"{r0['mode']}, {r0['dtype']}, {r0['activation']} on {r0['device']}")
    dense = next((r for r in rows if r["provider"] == "dense"), None)
    provs = [pv for pv in dict.fromkeys(r["provider"] for r in rows) if pv != "dense"]
    ps = sorted({r["p"] for r in rows if r["provider"] != "dense"})
    cell = {(r["provider"], r["p"]): r for r in rows}
    dense_txt = _fmt(dense) if dense else "n/a"
    body = []
    for p in ps:
        line = [f"{p:g}", dense_txt]
        for pv in provs:
            r = cell.get((pv, p))
            ran = "" if r is None or r.get("ran", pv) == pv else f" (ran {r['ran']})"
            line.append("" if r is None else _fmt(r, speedup=True) + ran)
        line.append(f"{1 / p:.2f}×")
        body.append(line)
    return title + "\n\n" + tm.markdown_table(["p", "dense ms", *[f"{pv}" for pv in provs], "ideal 1/p"], body)


def _fmt(r: dict, speedup: bool = False) -> str:
    if r.get("status", "ok") != "ok" and "median_ms" not in r:
        return r["status"][:60]
    s = f"{r['median_ms']:.3g} ms ±{r['iqr_ms'] / 2:.2g}"
    if speedup and "speedup" in r:
        s += f" · **{r['speedup']:.2f}×**"
    if "kernel_ms" in r:
        s += f" · kernels {r['kernel_ms']:.3g} ms"
    if r.get("status") == "WRONG OUTPUT":
        s += f" (WRONG, {r['worst_output']} err {r['max_rel_err']})"
    return s


def summary_table(rows: list[dict], field: str = "speedup") -> str:
    """README-ready: per (shape, N, batch), `field` (speedup: wall-clock; kernel_speedup: GPU
    kernel time only) vs dense of every provider and mode, by p, with the default backend's bar."""
    out = []
    what = "speedup vs dense" if field == "speedup" else "GPU kernel time only (host overhead excluded): speedup vs dense"
    cases = dict.fromkeys((r["shape"], r["d"], r["f"], r["tokens"], r["batch"], r["dtype"]) for r in rows)
    for shape, d, f, n, batch, dtype in cases:
        sel = [r for r in rows if (r["shape"], r["tokens"], r["batch"]) == (shape, n, batch)]
        bar_provider = "triton" if sel[0]["device"] == "cuda" else "torch"  # the device's default backend
        cols = list(dict.fromkeys((r["mode"], r["provider"]) for r in sel if r["provider"] != "dense"))
        cell = {(r["mode"], r["provider"], r["p"]): r for r in sel}
        body = []
        for p in sorted({r["p"] for r in sel if r["provider"] != "dense"}):
            line = [f"{p:g}", f"{1 / p:.2f}×"]
            for mode, prov in cols:
                r = cell.get((mode, prov, p))
                line.append("–" if r is None or field not in r else
                            f"{r[field]:.2f}×" + (" (wrong)" if r["status"] != "ok" else ""))
            bar = cell.get(("fwd+bwd", bar_provider, p))
            if bar is not None and field in bar:
                ok = bar[field] >= 0.9 / p
                line.append(f"{'✓' if ok else '✗'} {bar[field]:.2f} vs {0.9 / p:.2f}")
            body.append(line)
        header = ["p", "ideal", *[f"{prov} {mode}" for mode, prov in cols]]
        if any(len(b) > len(header) for b in body):
            header.append(f"{bar_provider} fwd+bwd ≥ 0.9/p")
            body = [b + [""] * (len(header) - len(b)) for b in body]
        out.append(f"**{shape}** (d {d}, f {f}), N = {n}, {batch}, {dtype}: {what}\n\n"
                   + tm.markdown_table(header, body))
    return "\n".join(out)


def markdown_report(rows: list[dict], meta: dict) -> str:
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
    head = (f"# Masked FFN benchmark\n\nDevice: {tm.device_label(meta)}. Date (UTC): {meta['date_utc']}. "
            f"Commit: {meta.get('git_commit')}. Load average at start: {meta['load_avg_start']}"
            f"{', at end: ' + str(meta['load_avg_end']) if meta.get('load_avg_end') else ''}.\n"
            f"Cells: median time ±IQR/2 over {meta['repeats']} interleaved rounds · speedup = dense median / "
            f"median (> 1 is faster than dense). Command: `{meta['cmdline']}`\n")
    kernel = ("\n## GPU kernel time only\n\nSum of kernel/memcpy/memset time per call (torch.profiler, 5 calls): "
              "what the op costs the GPU once launch overhead is hidden (CUDA graphs, or enough queued work).\n\n"
              + summary_table(rows, "kernel_speedup")) if any("kernel_speedup" in r for r in rows) else ""
    return (head + "\n## Summary (wall clock)\n\n" + summary_table(rows) + kernel + "\n## All groups\n\n"
            + "\n".join(group_table(g) for g in groups.values()))


def plot(rows: list[dict], path: Path, meta: dict) -> None:
    """Speedup vs p (log y) per (shape, tokens, batch) row and mode column, with the 1/p line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "speedup" in r and r["provider"] != "dense"]
    if not ok:
        return
    sweep: dict[str, list] = {}
    for r in ok:
        sweep.setdefault(r["shape"], []).append(r["tokens"])
    main_tokens = {s: sorted(set(v))[len(set(v)) // 2] for s, v in sweep.items()}  # middle of a token sweep
    combos = list(dict.fromkeys((r["shape"], r["tokens"], r["batch"]) for r in ok
                                if r["tokens"] == main_tokens[r["shape"]]))
    modes = [m for m in MODES if any(r["mode"] == m for r in ok)]
    fig, axes = plt.subplots(len(combos), len(modes), figsize=(4.2 * len(modes), 3.4 * len(combos)),
                             squeeze=False, sharex=True)
    ps = np.linspace(min(r["p"] for r in ok), 1.0, 100)
    colors = {"reference": "tab:red", "torch": "tab:blue", "triton": "tab:green", "cuda": "tab:purple"}
    for i, (shape, n, batch) in enumerate(combos):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            ax.plot(ps, 1 / ps, "k--", lw=1, label="ideal 1/p")
            ax.plot(ps, 0.9 / ps, ":", color="gray", lw=1, label="0.9/p")
            ax.axhline(1.0, color="black", lw=0.8, alpha=0.5)
            for prov in dict.fromkeys(r["provider"] for r in ok):
                sel = sorted((r for r in ok if (r["shape"], r["tokens"], r["batch"], r["mode"], r["provider"])
                              == (shape, n, batch, mode, prov)), key=lambda r: r["p"])
                if not sel:
                    continue
                y = np.array([r["speedup"] for r in sel])
                lo = np.clip(y - np.array([r["speedup_q1"] for r in sel]), 0, None)
                hi = np.clip(np.array([r["speedup_q3"] for r in sel]) - y, 0, None)
                ax.errorbar([r["p"] for r in sel], y, yerr=[lo, hi], marker="o", ms=4, capsize=2,
                            color=colors.get(prov), label=prov)
            ax.set_yscale("log", base=2)
            ax.set_title(f"{shape} N={n} {batch} — {mode}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if j == 0:
                ax.set_ylabel("speedup vs dense")
            if i == len(combos) - 1:
                ax.set_xlabel("kept fraction p")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"masked FFN on {tm.device_label(meta)}, {ok[0]['dtype']}", fontsize=9)
    tm.save_figure(fig, path)
    plt.close(fig)


# ---- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    cfg = tm.parse_config(build_parser(), resolve_args, argv)
    if cfg is None:
        return 2
    meta = tm.run_meta(cfg, "masked_ffn", providers=cfg["providers"])
    log.info("masked FFN benchmark on %s: providers %s, out %s", tm.device_label(meta), cfg["providers"], cfg["out"])
    jobs = [(s, n, k, m) for s in cfg["shapes"] for n in cfg["tokens"] for k in cfg["tasks"] for m in cfg["modes"]]
    rows: list[dict] = []
    errors_by_case: dict[tuple, dict] = {}
    for shape, n, k, mode in tqdm(jobs, desc="masked_ffn", unit="group", disable=None):
        errors = errors_by_case.setdefault((shape, n, k, mode in ("fwd", "inference")), {})
        group = []
        for ps in p_chunks(cfg, shape, n, k, mode):
            try:
                group += run_group(cfg, shape, n, k, mode, ps, errors)
            except torch.OutOfMemoryError as e:  # e.g. the llm shape at large N on a small GPU
                log.warning("%s N=%d tasks=%d %s p=%s: out of memory, skipped (%s)", shape[0], n, k, mode, ps,
                            str(e)[:120])
                torch.cuda.empty_cache()
        if not group:
            continue
        rows += group
        print("\n" + group_table(group), flush=True)
        meta["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
        tm.write_results(cfg["out"], "masked_ffn", rows, meta, markdown_report(rows, meta))
        if cfg["plot"]:
            plot(rows, cfg["out"] / "masked_ffn.png", meta)
        if cfg["device"].type == "cuda":
            torch.cuda.empty_cache()
    bad = [r for r in rows if r.get("status") != "ok"]
    for r in bad:
        log.warning("%s p=%s %s %s: %s", r["provider"], r["p"], r["shape"], r["mode"], r["status"])
    log.info("wrote %s/masked_ffn.{csv,json,md%s}", cfg["out"], ",png" if cfg["plot"] else "")
    return 1 if any(r.get("status") == "WRONG OUTPUT" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
