"""Training runs of the study through the unchanged Trainer: the baseline to its validation
plateau (resumable), and continuations from a starting checkpoint dict (``arms.py``) with the
same update budget for every arm: fresh Adam, ``steps`` updates, warm-up min(50, steps/4),
inverse-sqrt from the baseline's last learning rate, the baseline's batch size; the seed sets
the batch stream (and, for random masks, the masks).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping

from neuronspec.nmt.checkpoint import load_checkpoint
from neuronspec.nmt.config import TrainConfig
from neuronspec.nmt.run_folder import check_run_folder
from neuronspec.nmt.trainer import Trainer


def final_lr(ck: Mapping) -> float:
    """The learning rate the checkpoint's run ended at (its optimizer's; else inverse-sqrt's)."""
    try:
        return float(ck["optimizer"]["param_groups"][0]["lr"])
    except (KeyError, IndexError, TypeError):
        cfg, step = ck["config"], int(ck.get("step") or 1)
        return cfg["lr"] * math.sqrt(cfg["warmup"] / max(step, cfg["warmup"]))


def continuation_config(base: Mapping, prep: str, out: Path, steps: int, seed: int, lr: float, *, device: str,
                        **overrides: Any) -> TrainConfig:
    """The baseline's training config with the continuation budget (module docstring), on ``device``."""
    cfg = dict(base["config"])
    cfg.update(data=str(prep), out=str(out), max_steps=steps, max_minutes=None, patience=0, seed=seed, lr=lr,
               warmup=max(1, min(50, steps // 4)), lr_scheduler="inverse_sqrt", valid_every=0,
               valid_chrf_sentences=0, save_every=0, save_every_minutes=0.0, device=device)
    return TrainConfig.from_dict(cfg, **overrides)


def run(cfg: TrainConfig, init_from: Mapping | None = None, masks=None) -> dict:
    """One training run into the (fresh) folder ``cfg.out``; the trainer's summary."""
    check_run_folder(cfg.out, resume=False, overwrite=True, init_from=None)
    return Trainer(cfg, init_from=init_from, masks=masks).train()


def plateau_run(cfg: TrainConfig, folder: Path, max_minutes: float | None) -> dict:
    """Train ``cfg`` (early stopping on the validation loss) into ``folder``, resuming a run a
    killed study left there; the time cap counts from the first start. Returns the summary with
    ``resumed_at`` (the step this invocation started from)."""
    folder.mkdir(parents=True, exist_ok=True)
    start_file = folder / "start.txt"
    resume = (folder / "checkpoint_last.pt").exists() and start_file.exists()
    minutes, resumed_at, last = max_minutes, 0, None
    if resume:
        last = load_checkpoint(folder / "checkpoint_last.pt")
        cfg, resumed_at = TrainConfig.from_dict(last["config"], progress=cfg.progress), int(last["step"])
        if max_minutes is not None:
            minutes = max(0.1, max_minutes - (time.time() - float(start_file.read_text())) / 60)
    else:
        check_run_folder(str(folder), resume=False, overwrite=True, init_from=None)
        start_file.write_text(f"{time.time()}\n")
    return {**Trainer(cfg, resume=last if resume else False).train(max_minutes=minutes), "resumed_at": resumed_at}


def best_checkpoint(folder: Path) -> Path:
    best = folder / "checkpoint_best.pt"
    return best if best.exists() else folder / "checkpoint_last.pt"

