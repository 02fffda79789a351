"""Specialized training (docs/design.md §1): continue a dense checkpoint with per-direction masks.

Fresh optimizer and schedule (the trainer's `init_from`), each direction restricted to its
own neurons in every masked FFN (`fc1.weight ⊙ m_t` through the masked ops). The masks are
saved in every checkpoint, so `neuronspec evaluate` decodes with them.

    neuronspec specialize --checkpoint runs/dense/checkpoint_best.pt --masks runs/masks.pt \\
        --out runs/spec --max-steps 1000 [--where enc|dec|both]

`continue_training(...)` with masks=None is the dense fine-tuning control (same steps).

`--recipe original` follows the original specialization stage (docs/design.md §6): fresh
optimizer, lr schedule and warm-up (inverse-sqrt), no gradient clipping, label smoothing 0.1,
dropout 0.1, no EMA, and early stopping on the validation loss with patience 20 validations.
The original's step counts (4000 warm-up updates, a validation every 500) are scaled by the
preset's own warm-up over 4000 (tiny: 150/4000, so 150 warm-up updates and a validation every 19);
--max-steps stays the cap. The original's ≈ 645k tokens per update (update_freq 21 × 4 GPUs ×
7680) is out of reach on a CPU: tokens per update stay the checkpoint's unless --update-freq or
--max-tokens say otherwise (logged). The default recipe keeps the dense run's settings
(clipping 1.0, its dropout, a fixed number of steps).
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from neuronspec.checks import check_int
from neuronspec.files import check_output_file
from neuronspec.nmt.checkpoint import load_checkpoint
from neuronspec.nmt.config import TRAIN_DEFAULTS, TrainConfig
from neuronspec.nmt.run_setup import read_masks
from neuronspec.nmt.trainer import train
from neuronspec.ops import TaskMasks

log = logging.getLogger(__name__)

WHERE = ("enc", "dec", "both")
RECIPES = ("default", "original")


def original_recipe(preset: str) -> dict[str, Any]:
    """TrainConfig overrides of the original specialization stage, step counts scaled to `preset`."""
    warmup = TRAIN_DEFAULTS[preset]["warmup"]
    scale = warmup / 4000
    return dict(lr_scheduler="inverse_sqrt", warmup=warmup, clip_norm=0.0, weight_decay=0.0, label_smoothing=0.1,
                dropout=0.1, ema_decay=0.0, valid_every=max(1, round(500 * scale)), patience=20)


def restrict(masks: Mapping[str, TaskMasks], where: str) -> dict[str, TaskMasks]:
    """Keep the encoder layers ('enc'), decoder layers ('dec') or all ('both'); the others stay dense."""
    if where not in WHERE:
        raise ValueError(f"where: expected one of {WHERE}, got {where!r}")
    prefix = {"enc": ("encoder.",), "dec": ("decoder.",), "both": ("encoder.", "decoder.")}[where]
    out = {k: m for k, m in masks.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"masks: no {'encoder' if where == 'enc' else 'decoder' if where == 'dec' else ''} "
                         f"layers among {list(masks)[:4]}")
    return out


def continue_training(checkpoint: str | os.PathLike, out: str | os.PathLike,
                      masks: Mapping[str, TaskMasks] | str | os.PathLike | None, *, steps: int,
                      where: str = "both", max_minutes: float | None = None, recipe: str = "default",
                      overwrite: bool = False, **overrides: Any) -> dict:
    """Train `steps` more updates from `checkpoint`'s weights (fresh optimizer, step counter
    from 0), with `masks` (dict or masks file; None = dense fine-tuning). The run keeps the
    checkpoint's training config (data, batch size, lr, ...) unless the recipe ("original":
    see the module docstring) or `overrides` (TrainConfig fields, e.g. lr=5e-4, warmup=100;
    they win over the recipe) say otherwise. Returns the trainer's summary."""
    check_int("steps", steps, 1)
    if recipe not in RECIPES:
        raise ValueError(f"recipe: expected one of {RECIPES}, got {recipe!r}")
    masks_file = masks if isinstance(masks, (str, os.PathLike)) else None  # (the checkpoint's folder: train refuses)
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):  # the files the run writes: no input among them
        check_output_file(Path(out) / name, "out", [masks_file], kind="checkpoint", overwrite=overwrite)
    existed = os.path.lexists(out)
    try:
        return _continue(checkpoint, out, masks, steps, where, max_minutes, recipe, overwrite, overrides)
    except BaseException:
        if not existed and os.path.isdir(out) and not any(os.scandir(out)):
            os.rmdir(out)  # a failed run that wrote nothing leaves no empty --out folder
        raise


def _continue(checkpoint, out, masks, steps, where, max_minutes, recipe, overwrite, overrides) -> dict:
    ck = load_checkpoint(checkpoint)  # read once, here: train() takes it (and the masks) as objects
    if ck.get("masks"):
        raise ValueError(f"checkpoint: {os.fspath(checkpoint)!r} is already specialized; start from the dense model")
    prep = (ck.get("data") or {}).get("prep")
    if masks is not None:  # a file must cover the checkpoint's FFN layers; the Trainer checks the directions
        masks = restrict(read_masks(masks, ck, None), where)
    base = dict(ck["config"])
    # early stopping is not inherited from the source run: a continuation stops at `steps` unless
    # the recipe or the caller asks for patience (with validations to count it on)
    base.update(data=overrides.pop("data", None) or prep or base.get("data"), out=os.fspath(out),
                max_steps=steps, max_minutes=max_minutes, patience=0)
    if recipe == "original":
        base.update(original_recipe(base.get("preset", "tiny")))
    cfg = TrainConfig.from_dict(base, **overrides)
    log.info("continued training from %s: %d steps, %s, recipe %s", checkpoint, steps,
             "dense" if masks is None else f"{len(masks)} masked FFN layers ({where})", recipe)
    if recipe == "original":
        log.info("original recipe: warm-up %d, inverse_sqrt lr %.2e, clip %s, label smoothing %s, dropout %s, "
                 "validation every %d, patience %d, %d tokens per update (the original: ~645k)", cfg.warmup,
                 cfg.lr, cfg.clip_norm, cfg.label_smoothing, cfg.dropout, cfg.valid_every, cfg.patience,
                 cfg.max_tokens * cfg.update_freq)
    return train(cfg, init_from=checkpoint, checkpoint=ck, masks=masks, overwrite=overwrite)


# ---------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="dense checkpoint to start from")
    p.add_argument("--masks", required=True, help="masks file (`neuronspec select`)")
    p.add_argument("--where", default="both", choices=WHERE, help="mask encoder, decoder or both (default)")
    p.add_argument("--out", default=None, help="output folder (default: spec-<where>/ next to the checkpoint)")
    p.add_argument("--max-steps", type=int, required=True, help="updates of continued training")
    p.add_argument("--max-minutes", type=float, default=None, help="also stop after this many minutes")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the checkpoint's)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up updates (default: the checkpoint's)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per batch (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--valid-every", type=int, default=None)
    p.add_argument("--recipe", default="default", choices=RECIPES,
                   help="default: the dense run's settings; original: the original specialization stage "
                        "(fresh warm-up, no clipping, label smoothing and dropout 0.1, early stopping)")
    p.add_argument("--patience", type=int, default=None, help="early stopping patience in validations")
    p.add_argument("--update-freq", type=int, default=None, help="batches per update (default: the checkpoint's)")
    p.add_argument("--device", default=None)
    p.add_argument("--cuda-graphs", action="store_true", default=None,
                   help="replay each micro-batch as a CUDA graph, one per batch shape (see `neuronspec train`)")
    p.add_argument("--max-cuda-graphs", type=int, default=None, help="graphs kept with --cuda-graphs (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace the run --out already holds")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    out = args.out or str(Path(args.checkpoint).parent / f"spec-{args.where}")
    over = {k: getattr(args, k) for k in ("lr", "warmup", "max_tokens", "seed", "valid_every", "device", "patience",
                                          "update_freq", "cuda_graphs", "max_cuda_graphs") if getattr(args, k) is not None}
    if args.no_progress:
        over["progress"] = False
    summary = continue_training(args.checkpoint, out, args.masks, steps=args.max_steps, where=args.where,
                                max_minutes=args.max_minutes, recipe=args.recipe, overwrite=args.overwrite, **over)
    print(f"specialized checkpoint: {summary['checkpoint']} ({summary['step']} steps, {summary['minutes']:.1f} min)")
    return 0
