"""Full Transformer training step: dense vs specialized (per-direction FFN masks).

One step = forward (teacher forcing) + label-smoothed cross-entropy + backward + Adam step, on
random token ids (fixed lengths, no padding). Two copies of the same model (same initial
weights, one Adam each) run interleaved: `dense` (no masks) and `specialized` (every FFN layer
restricted per direction, masked_ffn on the default backend of the device).
Masks: `random` (default) keeps a fraction `--keep` (0.75: what k = 0.95 keeps on trained
models, docs/design.md §1) of each layer's neurons per direction at random; `counts` records
activation counts of the model on random data and selects with threshold `--k`.
Batches: homogeneous (one direction, an int task id) or mixed (one direction per sentence).
--cuda-graphs adds `dense+graphs` and `specialized+graphs`: the same steps with forward + backward
replayed from CUDA graphs (neuronspec/ops/graphs.py; Adam stays eager); their speedup is against
eager dense, and the specialized one also against dense+graphs.
Precision: the whole model in --dtype (fp32 on CPU, bf16 on GPU: pure bf16, no autocast, so
that dense and masked FFNs run in the same precision).
Memory, from one extra untimed step per variant: MiB of tensors autograd saves for backward
(parameters excluded; the activation memory the masks change), and on CUDA the peak allocated
during the step minus what was allocated before it (CPU has no allocator statistics). The saved
size counts allocations: the torch backend's saved Z buffer is [N, f] whatever p is, but on CPU
it is calloc'd, so the pages of inactive neurons are never touched (resident memory ∝ p).

    python benchmarks/bench_train_step.py                       # device defaults
    python benchmarks/bench_train_step.py --models tiny --batch-tokens 1024 --repeats 3 --out /tmp/r
Writes {out}/train_step.{csv,json,md}.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing as tm  # noqa: E402

from neuronspec.nmt.model import PRESETS as MODEL_PRESETS, ModelConfig, Transformer  # noqa: E402
from neuronspec.ops import TaskMasks  # noqa: E402
from neuronspec.ops.graphs import GraphedLoss  # noqa: E402

log = logging.getLogger("neuronspec.bench.train_step")

PRESETS = {
    "quick": {"cpu": dict(models="tiny", batch_tokens=1024, batches="homogeneous", dtype="fp32", repeats=3,
                          warmup=1, vocab=8000),
              "cuda": dict(models="big", batch_tokens=8192, batches="homogeneous", dtype="bf16", repeats=10,
                           warmup=3, vocab=32000)},
    "default": {"cpu": dict(models="tiny,base", batch_tokens=2048, batches="homogeneous,mixed", dtype="fp32",
                            repeats=5, warmup=1, vocab=8000),
                "cuda": dict(models="base,big", batch_tokens=8192, batches="homogeneous,mixed", dtype="bf16",
                             repeats=15, warmup=3, vocab=32000)},
    "full": {"cpu": dict(models="tiny,base", batch_tokens=4096, batches="homogeneous,mixed", dtype="fp32",
                         repeats=7, warmup=2, vocab=8000),
             "cuda": dict(models="base,big,wide", batch_tokens=16384, batches="homogeneous,mixed", dtype="bf16",
                          repeats=20, warmup=3, vocab=32000)},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--models", help=f"model presets, comma-separated, from {sorted(MODEL_PRESETS)}")
    p.add_argument("--batch-tokens", type=int, help="target tokens per batch (source has as many)")
    p.add_argument("--seq-len", type=int, default=32, help="source and target length")
    p.add_argument("--batches", help="homogeneous,mixed")
    p.add_argument("--tasks", type=int, default=8, help="number of directions")
    p.add_argument("--masks", choices=("random", "counts"), default="random")
    p.add_argument("--keep", type=float, default=0.75, help="kept fraction for --masks random")
    p.add_argument("--k", type=float, default=0.95, help="cumulative threshold for --masks counts")
    p.add_argument("--vocab", type=int, help="vocabulary size (embedding tied to the output layer)")
    p.add_argument("--dtype", help="fp32 or bf16 (the whole model)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time both variants with forward + backward replayed from CUDA graphs (CUDA only)")
    tm.add_run_args(p)
    return p


def resolve_args(args) -> dict:
    device, get = tm.preset_values(args, PRESETS)
    models = tm.parse_list(get("models"), str, "--models")
    for m in models:
        if m not in MODEL_PRESETS:
            raise ValueError(f"--models: unknown preset {m!r}; choose from {sorted(MODEL_PRESETS)}")
    batches = tm.parse_list(get("batches"), str, "--batches")
    if any(b not in ("homogeneous", "mixed") for b in batches):
        raise ValueError(f"--batches: expected homogeneous and/or mixed, got {batches}")
    bt, vocab = int(get("batch_tokens")), int(get("vocab"))
    if args.seq_len < 2 or bt < args.seq_len:
        raise ValueError(f"--seq-len must be >= 2 and --batch-tokens >= --seq-len, got {args.seq_len}, {bt}")
    if args.tasks < 1 or vocab < 16:
        raise ValueError(f"--tasks must be >= 1 and --vocab >= 16, got {args.tasks}, {vocab}")
    if not 0 < args.keep <= 1 or not 0 < args.k <= 1:
        raise ValueError(f"--keep and --k must lie in (0, 1], got {args.keep}, {args.k}")
    repeats, warmup = int(get("repeats")), int(get("warmup"))
    if repeats < 1 or warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats}, {warmup}")
    dtype = tm.parse_dtype(get("dtype"))
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"--dtype: expected fp32 or bf16, got {dtype}")
    if args.cuda_graphs and device.type != "cuda":
        raise ValueError(f"--cuda-graphs: CUDA graphs need a CUDA device, got --device {device}")
    out = Path(args.out) if args.out else tm.ROOT / "benchmarks" / "results" / device.type
    return dict(device=device, cuda_graphs=args.cuda_graphs, models=models, batch_tokens=bt, seq_len=args.seq_len, batches=batches,
                tasks=args.tasks, masks=args.masks, keep=args.keep, k=args.k, vocab=vocab, dtype=dtype,
                repeats=repeats, warmup=warmup, seed=args.seed, out=out, preset=args.preset)


# ---- masks ---------------------------------------------------------------------------------------
def random_masks(model: Transformer, num_tasks: int, keep: float, gen: torch.Generator) -> dict[str, TaskMasks]:
    out = {}
    for name, ffn in model.ffn_layers().items():
        f = ffn.fc1.out_features
        k = max(1, round(keep * f))
        out[name] = TaskMasks.from_indices([torch.randperm(f, generator=gen)[:k].tolist() for _ in range(num_tasks)], f)
    return out


@torch.no_grad()
def count_masks(model: Transformer, batches: list, num_tasks: int, k: float) -> dict[str, TaskMasks]:
    """Record (Z > 0) counts per direction over `batches` (eval mode), select with threshold k."""
    from neuronspec.specialization.select import select_neurons

    layers = model.ffn_layers()
    was_training = model.training
    model.eval()
    for ffn in layers.values():
        ffn.start_counting(num_tasks)
    for src, tgt_in, _, task in batches:
        model(src, tgt_in, task)
    counts = {name: ffn.stop_counting() for name, ffn in layers.items()}
    model.train(was_training)
    return {name: TaskMasks.from_indices([select_neurons(c[t], k).tolist() for t in range(num_tasks)], c.shape[1])
            for name, c in counts.items()}


# ---- data and step ------------------------------------------------------------------------------------
def random_batch(cfg: dict, vocab: int, kind: str, task: int, gen: torch.Generator):
    """(src [B, L], tgt_in [B, L], tgt_out [B, L], task int or LongTensor [B]) with ids in [1, vocab)."""
    L = cfg["seq_len"]
    B = cfg["batch_tokens"] // L
    src = torch.randint(1, vocab, (B, L), generator=gen)
    tgt = torch.randint(1, vocab, (B, L + 1), generator=gen)
    t = task if kind == "homogeneous" else torch.randint(0, cfg["tasks"], (B,), generator=gen)
    dev = cfg["device"]
    return src.to(dev), tgt[:, :-1].contiguous().to(dev), tgt[:, 1:].contiguous().to(dev), \
        t if isinstance(t, int) else t.to(dev)


def step_loss(model, key, src, tgt_in, tgt_out, *task):
    """Label-smoothed cross-entropy of one batch; the task is `key` (an int: homogeneous) or the
    last tensor ([B] mixed, or 0-dim: homogeneous, read on the device). Calls encode/decode
    directly: no host read of the task ids."""
    t = task[0] if task else key
    logits = model.decode(tgt_in, model.encode(src, t), t)
    return F.cross_entropy(logits.reshape(-1, model.cfg.vocab_size).float(), tgt_out.reshape(-1), label_smoothing=0.1)


def make_step(model, opt, batch, cuda_graphs: bool = False):
    """One training step on `batch` → the loss; with cuda_graphs, forward + backward replay a
    CUDA graph (neuronspec/ops/graphs.py) and the Adam step stays eager. As in `neuronspec train
    --cuda-graphs`, a graphed homogeneous batch passes its direction as a 0-dim device tensor
    (one graph for every direction, computed at the widest direction's width)."""
    src, tgt_in, tgt_out, task = batch
    if not isinstance(task, int):
        key, tensors = "mixed", (src, tgt_in, tgt_out, task)
    elif cuda_graphs:
        key, tensors = "uniform", (src, tgt_in, tgt_out, torch.tensor(task, device=src.device))
    else:
        key, tensors = task, (src, tgt_in, tgt_out)
    loss_of = GraphedLoss(model, step_loss) if cuda_graphs else (lambda k, *t: step_loss(model, k, *t))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_of(key, *tensors)
        loss.backward()
        opt.step()
        return loss
    return step


def ffn_flop_share(step) -> float:
    """Share of one dense step's matmul FLOPs (forward + backward) spent in the FFN blocks,
    counted by torch.utils.flop_counter on an untimed step."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    counts = counter.get_flop_counts()
    total = sum(counts["Global"].values())
    ffn = sum(sum(ops.values()) for name, ops in counts.items() if name.endswith(".ffn"))
    return ffn / total if total else 0.0


def ideal_speedup(ffn_share: float, kept: float) -> float:
    """Speedup of a step whose FFN FLOPs shrink to the kept fraction, everything else unchanged."""
    return 1.0 / (1.0 - (1.0 - kept) * ffn_share)


def memory_probe(step, model, device) -> tuple[float, float | None]:
    """One more (untimed) step → (MiB of tensors autograd saved for backward, parameters excluded;
    CUDA: peak MiB allocated during the step above what was allocated before it, else None)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return sum(saved.values()) / 2**20, peak


def run_case(cfg: dict, model_name: str, kind: str) -> list[dict]:
    device, dtype = cfg["device"], cfg["dtype"]
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    mcfg = ModelConfig.from_preset(model_name, vocab_size=cfg["vocab"])
    dense = Transformer(mcfg).to(device=device, dtype=dtype)
    spec = copy.deepcopy(dense)
    batch = random_batch(cfg, mcfg.vocab_size, kind, 0, gen)
    if cfg["masks"] == "random":
        masks = random_masks(spec, cfg["tasks"], cfg["keep"], gen)
    else:
        rec = [random_batch(cfg, mcfg.vocab_size, "homogeneous", t, gen) for t in range(cfg["tasks"])]
        masks = count_masks(spec, rec, cfg["tasks"], cfg["k"])
    spec.set_masks(masks)
    kept = float(torch.cat([m.fractions() for m in masks.values()]).mean())
    fns, models = {}, {"dense": dense, "specialized": spec}
    if cfg["cuda_graphs"]:  # the same starting weights, replayed from CUDA graphs
        models.update({"dense+graphs": copy.deepcopy(dense), "specialized+graphs": copy.deepcopy(spec)})
    for name, model in models.items():
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
        fns[name] = make_step(model, opt, batch, cuda_graphs=name.endswith("+graphs"))
    stats = tm.measure(fns, device, cfg["repeats"], cfg["warmup"])
    share = ffn_flop_share(fns["dense"])
    kernel = {k: tm.kernel_time(fns[k], device, calls=2) for k, st in stats.items() if isinstance(st, tm.Stats)}
    memory = {}
    for name, fn in fns.items():
        if name.endswith("+graphs"):  # a replay saves nothing through autograd's hooks
            memory[name] = (None, None)
            continue
        try:
            memory[name] = memory_probe(fn, models[name], device)
        except Exception as e:  # noqa: BLE001 - the timing is still worth reporting
            log.warning("%s memory probe failed: %s", name, e)
            memory[name] = (None, None)
    n_tgt = batch[1].numel()
    rows = []
    for name, st in stats.items():
        row = dict(model=model_name, params_m=round(dense.num_parameters() / 1e6, 1), d_model=mcfg.d_model,
                   d_ff=mcfg.d_ff, layers=f"{mcfg.encoder_layers}+{mcfg.decoder_layers}", batch=kind,
                   tasks=cfg["tasks"], tgt_tokens=n_tgt, src_tokens=batch[0].numel(), variant=name,
                   masks="none" if name == "dense" else cfg["masks"], kept_fraction=1.0 if name == "dense"
                   else round(kept, 4), cuda_graphs=name.endswith("+graphs"), dtype=str(dtype).split(".")[-1], device=device.type, vocab=mcfg.vocab_size)
        if isinstance(st, str):
            rows.append({**row, "status": st})
            continue
        saved_mib, peak_mib = memory[name]
        row.update(median_ms=tm.sig(st.median * 1e3), q1_ms=tm.sig(st.q1 * 1e3), q3_ms=tm.sig(st.q3 * 1e3),
                   iqr_ms=tm.sig(st.iqr * 1e3), repeats=len(st.samples),
                   tgt_tokens_per_s=round(n_tgt / st.median, 1),
                   tokens_per_s=round((n_tgt + batch[0].numel()) / st.median, 1),
                   saved_mib=None if saved_mib is None else round(saved_mib, 1),
                   peak_step_mib=None if peak_mib is None else round(peak_mib, 1), status="ok")
        if isinstance(stats["dense"], tm.Stats):
            r_med, r_q1, r_q3 = tm.ratio_stats(stats["dense"], st)
            row.update(speedup=tm.sig(r_med), speedup_q1=tm.sig(r_q1), speedup_q3=tm.sig(r_q3))
        if name == "specialized+graphs" and isinstance(stats["dense+graphs"], tm.Stats):
            row["speedup_vs_dense_graphs"] = tm.sig(tm.ratio_stats(stats["dense+graphs"], st)[0])
        row.update(ffn_flop_share=round(share, 4), ideal_speedup=tm.sig(ideal_speedup(share, row["kept_fraction"])))
        if kernel.get(name) is not None:  # CUDA: GPU busy time of one step, host overhead excluded
            row["kernel_ms"] = tm.sig(kernel[name] * 1e3)
            if kernel.get("dense"):
                row["kernel_speedup"] = tm.sig(kernel["dense"] / kernel[name])
        rows.append(row)
    return rows


def markdown_report(rows: list[dict], meta: dict) -> str:
    head = (f"# Training step benchmark\n\nDevice: {tm.device_label(meta)}. Date (UTC): {meta['date_utc']}. "
            f"Commit: {meta.get('git_commit')}. Load average at start: {meta['load_avg_start']}, at end: "
            f"{meta.get('load_avg_end')}.\nOne step = forward + loss + backward + Adam, median over "
            f"{meta['repeats']} interleaved rounds; speedup = median over rounds of dense / specialized step time "
            f"[quartiles]; ideal = the "
            f"speedup if only the FFN's FLOPs shrank to the kept fraction (FFN share of a dense step's matmul "
            f"FLOPs in brackets). Saved for bwd = tensors autograd keeps for the "
            f"backward (parameters excluded); step peak (CUDA only) = peak allocated during a step minus what "
            f"was allocated before it. "
            f"Command: `{meta['cmdline']}`\n\n")
    body = [[r["model"], f"{r['d_model']}/{r['d_ff']} {r['layers']}", r["batch"], r["tgt_tokens"], r["variant"],
             f"{r['kept_fraction']:.3f}", f"{r['median_ms']:.1f} ±{r['iqr_ms'] / 2:.1f}", f"{r['tgt_tokens_per_s']:.0f}",
             f"{r['speedup']:.2f}× [{r['speedup_q1']:.2f}, {r['speedup_q3']:.2f}]"
             + (f" ({r['speedup_vs_dense_graphs']:.2f}× vs dense+graphs)" if "speedup_vs_dense_graphs" in r else ""),
             f"{r['ideal_speedup']:.2f}× ({100 * r['ffn_flop_share']:.0f} %)",
             "" if r.get("saved_mib") is None else f"{r['saved_mib']:.0f}",
             "n/a (CPU)" if r.get("peak_step_mib") is None else f"{r['peak_step_mib']:.0f}"]
            if "median_ms" in r else [r["model"], "", r["batch"], "", r["variant"], "", r["status"], "", "", "", "", ""]
            for r in rows]
    header = ["model", "d/ff layers", "batch", "tgt tokens", "variant", "kept", "step ms ±IQR/2", "tgt tok/s",
              "speedup [IQR]", "ideal (FFN share of FLOPs)", "saved for bwd MiB", "step peak MiB"]
    if any("kernel_ms" in r for r in rows):  # CUDA: GPU time alone (torch.profiler)
        header += ["GPU kernel ms", "kernel speedup"]
        body = [b + ([f"{r['kernel_ms']:.1f}", f"{r.get('kernel_speedup', float('nan')):.2f}×"]
                     if "kernel_ms" in r else ["", ""]) for b, r in zip(body, rows)]
    return head + tm.markdown_table(header, body)


def main(argv: list[str] | None = None) -> int:
    cfg = tm.parse_config(build_parser(), resolve_args, argv)
    if cfg is None:
        return 2
    meta = tm.run_meta(cfg, "train_step", masks=cfg["masks"],
                       **({"keep": cfg["keep"]} if cfg["masks"] == "random" else {"k": cfg["k"]}))
    log.info("train-step benchmark on %s, out %s", tm.device_label(meta), cfg["out"])
    rows: list[dict] = []
    jobs = [(m, b) for m in cfg["models"] for b in cfg["batches"]]
    for model_name, kind in tqdm(jobs, desc="train_step", unit="case", disable=None):
        try:
            case = run_case(cfg, model_name, kind)
        except torch.OutOfMemoryError as e:
            log.warning("%s %s: out of memory, skipped (%s)", model_name, kind, str(e)[:120])
            torch.cuda.empty_cache()
            continue
        rows += case
        meta["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
        report = markdown_report(rows, meta)
        print("\n" + report.split("\n\n", 2)[-1], flush=True)
        tm.write_results(cfg["out"], "train_step", rows, meta, report)
        if cfg["device"].type == "cuda":
            torch.cuda.empty_cache()
    log.info("wrote %s/train_step.{csv,json,md}", cfg["out"])
    return 0 if rows and all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
