"""The demo's speed section: dense vs specialized on this machine, timed interleaved.

Two workloads, each at the demo's own masks and at masks keeping p = 0.25 / 0.5 of the neurons:
* ffn: one FFN block (the trained model's first encoder FFN) forward + backward on a homogeneous
  batch of N tokens (one direction: only its active neurons are computed);
* step: one training step of the trained model (teacher-forced forward, label-smoothed loss,
  backward, Adam) on random token ids, one direction per batch as the trainer samples them.
Both run in the trainer's precision (bf16 autocast on CPUs with native bf16). Dense and specialized
alternate call by call (the order rotating every round) for a few seconds after a warm-up, so load
hits both alike; the speedup is the median of the per-round ratios dense / specialized.
FLOP-limit: the speedup if time followed the matrix-multiply FLOPs: 1/p for the FFN; for the step,
the model's matmul FLOPs over those left when the masked FFNs compute only their kept neurons.
"""
from __future__ import annotations

import copy
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Mapping

import torch

from neuronspec.atomic import save_figure_atomic
from neuronspec.nmt.loss import label_smoothed_loss
from neuronspec.nmt.model import Transformer
from neuronspec.ops import SpecializedFFN, TaskMasks

KEPT = (0.25, 0.5)  # the fixed kept fractions besides the demo's own masks


def interleaved(fns: Mapping[str, Callable[[], object]], seconds: float, min_rounds: int = 5) -> dict[str, list[float]]:
    """Seconds per call of every callable over rounds that call each once (order rotating), after
    one warm-up call each; rounds go on until `seconds` have passed and `min_rounds` were run."""
    names = list(fns)
    for name in names:
        fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    end, r = time.monotonic() + seconds, 0
    while r < min_rounds or time.monotonic() < end:
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
        r += 1
    return times


def speedup(dense: list[float], other: list[float]) -> float:
    """Median over rounds of dense time / other time (> 1: `other` is faster)."""
    return statistics.median(d / o for d, o in zip(dense, other))


def random_masks_kept(layers: Mapping[str, int], num_tasks: int, kept: float, seed: int = 0) -> dict[str, TaskMasks]:
    """{layer: TaskMasks} keeping round(kept · f) random neurons per task of each layer ({name: f})."""
    g = torch.Generator().manual_seed(seed)
    return {name: TaskMasks.from_indices([torch.randperm(f, generator=g)[: max(1, round(kept * f))].tolist()
                                          for _ in range(num_tasks)], f)
            for name, f in layers.items()}


def step_flops(model: Transformer, batch: int, src_len: int, tgt_len: int,
               kept: Mapping[str, float] | None = None) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3 × forward) of `model` on
    [batch, src_len] → [batch, tgt_len]; kept: {FFN layer: kept fraction} of a specialized model."""
    c, kept = model.cfg, kept or {}
    d, f, S, L = c.d_model, c.d_ff, batch * src_len, batch * tgt_len
    ffn = {name: 4 * d * f * (S if name.startswith("encoder") else L) * kept.get(name, 1.0)
           for name in model.ffn_layers()}
    enc_attn = c.encoder_layers * (8 * d * d * S + 4 * batch * src_len * src_len * d)
    dec_attn = c.decoder_layers * (8 * d * d * L + 4 * batch * tgt_len * tgt_len * d  # self-attention
                                   + 4 * d * d * (L + S) + 4 * batch * tgt_len * src_len * d)  # cross
    return 3.0 * (sum(ffn.values()) + enc_attn + dec_attn + 2 * d * c.vocab_size * L)


def _ffn_case(model: Transformer, masks: TaskMasks, task: int, tokens: int, amp) -> dict[str, Callable]:
    """Dense and specialized forward+backward calls of the model's first encoder FFN."""
    src = model.ffn_layers()["encoder.layers.0.ffn"]
    dense = SpecializedFFN(src.fc1.in_features, src.fc1.out_features, src.activation, src.mask_bias)
    dense.load_state_dict(src.state_dict())
    spec = copy.deepcopy(dense)
    spec.set_masks(masks)
    x = torch.randn(tokens, src.fc1.in_features, generator=torch.Generator().manual_seed(0)).requires_grad_()

    def run(ffn, t):
        def call():
            with amp():
                y = ffn(x, task_ids=t)
            y.float().sum().backward()
        return call
    return {"dense": run(dense, None), "specialized": run(spec, task)}


def _step_case(model: Transformer, masks: Mapping[str, TaskMasks], task: int, batch: int, length: int, amp,
               label_smoothing: float = 0.1) -> dict[str, Callable]:
    """Dense and specialized training steps (own copy of the weights and own Adam each)."""
    g = torch.Generator().manual_seed(1)
    V, pad = model.cfg.vocab_size, model.cfg.pad
    src, tgt_in, tgt_out = (torch.randint(pad + 3, V, (batch, length), generator=g) for _ in range(3))

    def make(m):
        m = copy.deepcopy(m).train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6)

        def call():
            with amp():
                logits = m(src, tgt_in, task)
            loss, _ = label_smoothed_loss(logits, tgt_out, label_smoothing, pad)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return call
    spec = copy.deepcopy(model)
    spec.set_masks(dict(masks))
    return {"dense": make(model), "specialized": make(spec)}


def _typical(masks: Mapping[str, TaskMasks]) -> tuple[str, int, float]:
    """(layer, task, its kept fraction): the layer and direction of the demo's masks whose kept
    fraction is closest to the mean over all layers and directions."""
    fr = {(name, t): float(v) for name, m in masks.items() for t, v in enumerate(m.fractions())}
    mean = sum(fr.values()) / len(fr)
    (layer, task), p = min(fr.items(), key=lambda kv: (abs(kv[1] - mean), kv[0]))
    return layer, task, p


def measure_speed(model: Transformer, masks: Mapping[str, TaskMasks], *, tokens: int, seconds: float = 3.0,
                  bf16: bool = False, length: int = 20) -> list[dict]:
    """Rows {workload, masks, kept, speedup, flop_limit, dense_ms, specialized_ms, rounds}: the ffn and
    step workloads (module docstring) at the demo's masks and at KEPT, `seconds` each. `tokens`: batch
    tokens (the training batch size); `length`: tokens per sentence of the step's random batches."""
    model = copy.deepcopy(model).cpu()
    model.set_masks(None)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    layer, task, p_layer = _typical(masks)
    num_tasks = next(iter(masks.values())).num_tasks
    widths = {name: ffn.fc1.out_features for name, ffn in model.ffn_layers().items()}
    cases = [("demo", masks, p_layer)] + [(f"p = {p}", random_masks_kept(widths, num_tasks, p), p) for p in KEPT]
    batch = max(1, tokens // length)
    dense_flops = step_flops(model, batch, length, length)
    rows = []
    for label, m, p_ffn in cases:
        ffn_masks = m[layer] if label == "demo" else m["encoder.layers.0.ffn"]
        kept = {name: float(mm.fractions()[task]) for name, mm in m.items()}
        p_step = sum(kept.values()) / len(kept)
        for workload, fns, limit in (
                ("ffn", _ffn_case(model, ffn_masks, task, tokens, amp), 1.0 / p_ffn),
                ("step", _step_case(model, m, task, batch, length, amp),
                 dense_flops / step_flops(model, batch, length, length, kept))):
            t = interleaved(fns, seconds)
            rows.append({"workload": workload, "masks": label, "kept": p_ffn if workload == "ffn" else p_step,
                         "speedup": speedup(t["dense"], t["specialized"]), "flop_limit": limit,
                         "dense_ms": 1e3 * statistics.median(t["dense"]),
                         "specialized_ms": 1e3 * statistics.median(t["specialized"]), "rounds": len(t["dense"])})
    return rows


def speed_markdown(rows: list[dict], tokens: int, threads: int, load: str) -> list[str]:
    """The results.md speed section (lines)."""
    md = ["## Speed: dense vs specialized (measured in this run)", "",
          f"One FFN block forward + backward ({tokens} tokens of one direction) and one training step (forward, "
          f"loss, backward, Adam; {tokens} tokens a side, one direction), dense and specialized timed "
          f"alternately for a few seconds each on this machine ({threads} CPU thread(s), load average {load}). "
          "Speedup: median over rounds of dense time / specialized time; FLOP-limit: the speedup if time "
          "followed the matrix-multiply FLOPs (1/p for the FFN).", "",
          "| workload | masks | kept p | dense ms | specialized ms | speedup | FLOP-limit |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {'FFN fwd+bwd' if r['workload'] == 'ffn' else 'training step'} | {r['masks']} | {r['kept']:.2f} | "
                  f"{r['dense_ms']:.2f} | {r['specialized_ms']:.2f} | {r['speedup']:.2f}× | {r['flop_limit']:.2f}× |")
    md += ["", "The demo's masks: the FFN rows use the layer and direction whose kept fraction is nearest the "
           "mean over layers and directions, the step rows that direction in every layer (p: its mean over "
           "the layers).", "", "![speed](speed.png)", ""]
    return md


def speed_plot(rows: list[dict], path: Path) -> None:
    """Bars of measured speedup beside the FLOP-limit, per workload and masks, saved to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, workload, title in zip(axes, ("ffn", "step"), ("FFN forward + backward", "training step")):
        rs = [r for r in rows if r["workload"] == workload]
        xs = range(len(rs))
        ax.bar([x - 0.2 for x in xs], [r["speedup"] for r in rs], 0.4, label="measured")
        ax.bar([x + 0.2 for x in xs], [r["flop_limit"] for r in rs], 0.4, label="FLOP-limit", alpha=0.6)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(list(xs), [f"{r['masks']}\n(p {r['kept']:.2f})" for r in rs])
        ax.set_title(title)
    axes[0].set_ylabel("speedup over dense (×)")
    axes[0].legend()
    save_figure_atomic(fig, path)
    plt.close(fig)
