"""The efficiency table (the paper's Table 5, measured here): the cost of deriving each method's
sub-networks (wall time and peak RSS increase of the study steps that derive them: NS = record +
select; LaSS = the per-direction fine-tunes + pruning; adapters and the others: nothing), the
bytes that hold them, and each arm's training-step time against the dense step, measured side by
side (the arms' trainers built on the same data and seed, one step each in turn, ``rounds``
times, after one warm-up step each; median).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable, Mapping

from neuronspec.study import training
from neuronspec.study.grid import load_average

DERIVES = {"ns": ("record", "select"), "ns-enc": ("record", "select"), "ns-dec": ("record", "select"),
           "lass": ("lass-derive/",)}


def derivation(timings: Mapping[str, dict], arm: str) -> dict:
    """{"seconds", "peak_rss_bytes", "peak_cuda_bytes", "steps"} of the study steps that derive
    ``arm``'s sub-networks (a name ending in "/" takes every step under it: their times summed,
    their peaks' maximum; peak_cuda_bytes None where no step ran with CUDA)."""
    names = [n for p in DERIVES.get(arm, ()) for n in timings if (n.startswith(p) if p.endswith("/") else n == p)]
    gpu = [timings[n]["peak_cuda_bytes"] for n in names if "peak_cuda_bytes" in timings[n]]
    return {"seconds": sum(timings[n]["seconds"] for n in names),
            "peak_rss_bytes": max((timings[n]["peak_rss_bytes"] for n in names), default=0),
            "peak_cuda_bytes": max(gpu) if gpu else None, "steps": len(names)}


def _synchronizer(device: str) -> Callable[[], None]:
    """What waits for the device's queued work (CUDA runs kernels asynchronously)."""
    import torch
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def step_times(trainers: Mapping[str, object], rounds: int, sync: Callable[[], None] = lambda: None) -> dict[str, dict]:
    """{arm: {"median_s", "samples", "ratio"}}: one ``train_step`` per trainer in turn, ``rounds``
    times after a warm-up step each, each step timed between two ``sync()`` calls; ratio = median /
    the finetune (dense) median."""
    for t in trainers.values():
        t.train_step()
    samples: dict[str, list[float]] = {a: [] for a in trainers}
    for _ in range(rounds):
        for a, t in trainers.items():
            sync()
            t0 = time.perf_counter()
            t.train_step()
            sync()
            samples[a].append(time.perf_counter() - t0)
    dense = statistics.median(samples["finetune"]) if "finetune" in samples else None
    return {a: {"median_s": statistics.median(v), "samples": v,
                "ratio": None if dense is None else statistics.median(v) / dense} for a, v in samples.items()}


def measure_steps(folder: Path, base: Mapping, prep: str, starts: Mapping[str, tuple[dict | None, object]],
                  rounds: int, progress: bool, device: str) -> dict:
    """Build a trainer per arm (``starts``: {arm: (starting checkpoint dict or None = the baseline,
    masks or None)}) under ``folder`` and time their steps side by side (step_times)."""
    from neuronspec.nmt.trainer import Trainer

    lr = training.final_lr(base)
    trainers = {}
    for arm, (start, masks) in starts.items():
        cfg = training.continuation_config(base, prep, folder / arm, rounds + 1, 1, lr, device=device,
                                           progress=progress)
        trainers[arm] = Trainer(cfg, init_from=start or base, masks=masks)
    load_before = load_average()
    res = step_times(trainers, rounds, _synchronizer(device))
    return {"rounds": rounds, "load_before": load_before, "load_after": load_average(), "arms": res}
