"""Count FFN neuron activations per direction (docs/design.md §1 "Recording"), and `neuronspec record`.

A teacher-forced pass of the dense model (eval mode, no grad) over a sample of each
direction. Every `SpecializedFFN` (encoder and decoder) counts through the fused
`fc1_act_count` op (`start_counting` / `stop_counting`, no Python hooks); the model hands each
FFN the direction id of every token and its non-padding mask, so padding is never counted.

Counts file (torch.save, weights_only-loadable, written atomically)::

    {"format": "neuronspec-counts", "version": 1,
     "directions": ["en-de", ...],                 # task id = position
     "counts": {layer: int64 [T, d_ff]},           # a_n^t, layers in model order
     "tokens": {"encoder": int64 [T], "decoder": int64 [T]},   # non-padding tokens counted
     "sentences": int64 [T],
     "meta": {"checkpoint", "data", "split", "max_sentences", "step", "model_config", "pivot"}}

    neuronspec record --checkpoint runs/dense.pt --data runs/prep --out runs/counts.pt
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from neuronspec.data.batching import eval_batches, tag_options
from neuronspec.data.corpus import PreparedData, direction_name
from neuronspec.checks import check_int
from neuronspec.files import check_output_file, load_file, save_file
from neuronspec.nmt.checkpoint import check_tokenizer, load_model as load_trained

log = logging.getLogger(__name__)

FORMAT, VERSION = "neuronspec-counts", 1


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu"):
    """(dense Transformer in eval mode on `device`, checkpoint dict): the trainer's loader,
    with any masks stored in the checkpoint removed (recording measures the dense model)."""
    model, state = load_trained(checkpoint, device)
    model.set_masks(None)
    return model, state


@torch.no_grad()
def count_activations(model, batches: Iterable, num_tasks: int, progress: bool = False) -> dict:
    """Teacher-forced pass over `batches` (objects with .src [B, S], .tgt_in [B, L], .task [B]).

    Returns {"counts": {layer: int64 [T, f]}, "tokens": {"encoder"/"decoder": int64 [T]},
    "sentences": int64 [T]}. The model must be dense; it is put in eval mode.
    """
    check_int("num_tasks", num_tasks, 1)
    if model.masks():
        raise ValueError("model: has per-direction masks set; record the dense model (model.set_masks(None))")
    was_training = model.training
    model.eval()
    layers = model.ffn_layers()
    pad = model.cfg.pad
    device = next(model.parameters()).device
    enc_tok = torch.zeros(num_tasks, dtype=torch.long)
    dec_tok = torch.zeros(num_tasks, dtype=torch.long)
    sents = torch.zeros(num_tasks, dtype=torch.long)
    for ffn in layers.values():
        ffn.start_counting(num_tasks)
    try:
        for batch in tqdm(batches, desc="record", unit="batch", disable=not progress, leave=False):
            src, tgt_in, task = batch.src.to(device), batch.tgt_in.to(device), batch.task.to(device)
            if task.numel() and (int(task.min()) < 0 or int(task.max()) >= num_tasks):
                raise ValueError(f"batch.task: ids must lie in [0, {num_tasks}), got {task.tolist()[:8]}")
            model(src, tgt_in, task)
            t = task.cpu()
            enc_tok.index_add_(0, t, (src != pad).sum(1).cpu())
            dec_tok.index_add_(0, t, (tgt_in != pad).sum(1).cpu())
            sents.index_add_(0, t, torch.ones_like(t))
    finally:
        counts = {name: ffn.stop_counting().cpu() for name, ffn in layers.items()}
        model.train(was_training)
    return {"counts": counts, "tokens": {"encoder": enc_tok, "decoder": dec_tok}, "sentences": sents}


def _trimmed(batches, limit: int):
    """Yield batches until `limit` sentences were given (the last one cut to fit)."""
    left = limit
    for b in batches:
        if left <= 0:
            return
        if len(b.src) > left:
            b.src, b.tgt_in, b.task = b.src[:left], b.tgt_in[:left], b.task[:left]
        left -= len(b.src)
        yield b


def record(checkpoint: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike | None = None, *,
           split: str = "valid", max_sentences: int | None = 1000, max_tokens: int = 4000,
           device: str | None = None, progress: bool = True, overwrite: bool = False) -> dict:
    """Record counts for every training direction of prepared folder `data`; save to `out`
    (if given; never over an input, over a file other than counts only with `overwrite`:
    files.check_output_file) and return the counts dict (the file's layout, see module docstring)."""
    check_int("max_sentences", max_sentences, 1, allow_none=True)
    if out is not None:  # before the counting, not after it
        check_output_file(out, "out", [checkpoint, data], kind="counts", overwrite=overwrite)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    prep = PreparedData.load(data)
    model, state = load_model(checkpoint, device)
    directions = [direction_name(d) for d in prep.directions]
    trained = (state.get("data") or {}).get("directions")
    if trained is not None and list(trained) != directions:
        raise ValueError(f"data: directions {directions[:4]}... differ from the checkpoint's {list(trained)[:4]}...; "
                         "record with the prepared folder the model was trained on")
    check_tokenizer(state, prep)
    tags = tag_options(state.get("config"))
    empty = [n for d, n in zip(prep.directions, directions) if prep.num_examples(split, d) == 0]
    if empty:
        raise ValueError(f"split: no {split!r} examples for {empty[:6]}; choose another split (e.g. --split train)")

    def all_batches():
        for d in prep.directions:
            n = prep.num_examples(split, d)
            limit = n if max_sentences is None else min(n, max_sentences)
            yield from _trimmed(eval_batches(prep, split, d, max_tokens, max_examples=limit, **tags),
                                limit)

    log.info("recording %d directions × %s sentences of %s on %s", len(directions),
             "all" if max_sentences is None else f"≤{max_sentences}", split, device)
    rec = count_activations(model, all_batches(), len(directions), progress=progress)
    rec.update(format=FORMAT, version=VERSION, directions=directions, meta={
        "checkpoint": os.fspath(checkpoint), "data": os.fspath(data), "split": split,
        "max_sentences": max_sentences, "step": int(state.get("step", 0)),
        "model_config": dict(state["model_config"]), "pivot": prep.pivot,
    })
    if out is not None:
        save_file(rec, out, "counts")
        log.info("saved counts of %d layers to %s", len(rec["counts"]), out)
    return rec


def load_counts(path: str | os.PathLike) -> dict:
    """Load and check a counts file written by `record`."""
    rec = load_file(path, "counts")
    if rec.get("format") != FORMAT or not isinstance(rec.get("counts"), dict):
        raise ValueError(f"counts: {os.fspath(path)!r} is not a neuronspec counts file")
    T = len(rec["directions"])
    for layer, c in rec["counts"].items():
        if not isinstance(c, torch.Tensor) or c.dtype != torch.int64 or c.dim() != 2 or c.shape[0] != T:
            raise ValueError(f"counts: layer {layer!r} of {os.fspath(path)!r} is not an int64 [{T}, f] tensor")
    return rec


def summary(rec: dict) -> str:
    """One line per direction: sentences and tokens counted."""
    lines = [f"{'direction':<10} {'sent':>6} {'enc tok':>8} {'dec tok':>8}"]
    for t, d in enumerate(rec["directions"]):
        lines.append(f"{d:<10} {int(rec['sentences'][t]):>6} {int(rec['tokens']['encoder'][t]):>8} "
                     f"{int(rec['tokens']['decoder'][t]):>8}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="dense model checkpoint")
    p.add_argument("--data", required=True, help="prepared folder (`neuronspec data prepare`)")
    p.add_argument("--out", default=None, help="counts file (default: counts.pt next to the checkpoint)")
    p.add_argument("--split", default="valid", help="split to read (default valid)")
    p.add_argument("--max-sentences", type=int, default=1000,
                   help="sentences per direction (default 1000; 0 = all)")
    p.add_argument("--max-tokens", type=int, default=4000, help="tokens per batch (default 4000)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file that holds something other "
                   "than counts")


def run(args) -> int:
    out = args.out or Path(args.checkpoint).with_name("counts.pt")
    rec = record(args.checkpoint, args.data, out, split=args.split, max_sentences=args.max_sentences or None,
                 max_tokens=args.max_tokens, device=args.device, overwrite=args.overwrite)
    print(summary(rec))
    print(f"saved counts for {len(rec['counts'])} FFN layers to {out}")
    return 0
