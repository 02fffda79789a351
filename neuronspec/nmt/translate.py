"""Translate raw text with a trained checkpoint (fairseq-interactive's job): ``neuronspec translate``.

Lines are encoded with the checkpoint's tokenizer (placeholders and code identifiers become
slots, restored from each source line afterwards), tagged as in training, sorted by length
into batches of at most ``max_tokens`` padded source tokens and decoded with beam search
(greedy with beam 1). Lines are split on ``\n`` only (data.corpus.decoded_lines); empty lines stay
empty; the output has one line per input line, in input order. Input and output may be pipes
or FIFOs (the output is then written through, not replaced atomically); an output that is an
input is refused, an existing file unless ``--overwrite`` (files.check_output_file). A
direction that was not trained (x→y, neither side the pivot) is decoded zero-shot, as
``evaluate --zero-shot`` does: the encoder runs with x→pivot's task, the decoder with pivot→y's.
"""
from __future__ import annotations

import argparse
import importlib
import io
import logging
import os
import sys
import time
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import write_atomic
from ..checks import check_int, check_number
from ..data.batching import Batch, check_budget, length_bounds, tag_layout, tag_options
from ..data.corpus import as_direction, decoded_lines, iter_lines
from .decode import decode_batches, direction_tasks
from ..files import check_output_file, file_kind, lines_text
from .evaluate import load_for_decoding

log = logging.getLogger(__name__)


def encode_lines(tok, lines: Sequence[str], direction, source_tag: bool, target_tag: str,
                 max_positions: int) -> tuple[list[list[int]], int]:
    """(source ids per line: tag prefix + pieces + EOS, or [] for an empty line; first decoder
    input). ValueError naming the line if a source is longer than ``max_positions``."""
    prefix, start = tag_layout(tok, direction, source_tag, target_tag)
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            out.append([])
            continue
        ids = prefix + tok.encode(line) + [tok.eos]
        if len(ids) > max_positions:
            raise ValueError(f"input line {n}: {len(ids)} source tokens, the model takes at most {max_positions}")
        out.append(ids)
    return out, start


def text_batches(srcs: Sequence[list[int]], start: int, task: int, max_tokens: int, pad: int) -> Iterator[Batch]:
    """Non-empty sources sorted by length into batches of ≤ ``max_tokens`` padded tokens (a
    longer source gets a batch of its own); ``batch.ids`` are the line numbers (0-based)."""
    check_budget(max_tokens)
    order = sorted((i for i, s in enumerate(srcs) if s), key=lambda i: len(srcs[i]))
    bounds = length_bounds(np.array([len(srcs[i]) for i in order], dtype=np.int64), max_tokens)
    for a, b in zip(bounds[:-1], bounds[1:]):
        rows = order[a:b]
        src = torch.full((len(rows), len(srcs[rows[-1]])), pad, dtype=torch.long)
        for r, i in enumerate(rows):
            src[r, :len(srcs[i])] = torch.tensor(srcs[i])
        B = len(rows)
        yield Batch(src, torch.full((B, 1), start, dtype=torch.long), torch.full((B, 1), pad, dtype=torch.long),
                    torch.full((B,), task, dtype=torch.long), torch.tensor(rows), 0, pad)


def translate_lines(model, data, lines: Sequence[str], direction, *, beam: int = 5, lenpen: float = 1.0,
                    max_tokens: int = 4000, source_tag: bool = False, target_tag: str = "decoder",
                    device: torch.device | str = "cpu", progress: bool = False) -> list[str]:
    """Translations of ``lines`` (one string each, "" for an empty line) in ``direction``
    (``"en-de"`` or a pair) with ``model`` and the tokenizer and directions of the prepared
    folder ``data``, in the tag layout of training (``source_tag``, ``target_tag``)."""
    direction = as_direction(direction)
    check_number("lenpen", lenpen)
    tok = data.tokenizer
    task, dec_task = direction_tasks(data, direction)
    srcs, start = encode_lines(tok, lines, direction, source_tag, target_tag, model.cfg.max_positions)
    batches = list(text_batches(srcs, start, task, max_tokens, tok.pad))
    hyps = decode_batches(model, tqdm(batches, unit="batch", disable=not progress), tok, beam=beam, lenpen=lenpen,
                          device=device, decoder_task=dec_task)
    return [tok.decode(hyps[i], source=line) if i in hyps else "" for i, line in enumerate(lines)]


def translate_checkpoint(ckpt: str | os.PathLike, lines: Sequence[str], direction, *,
                         data: str | os.PathLike | None = None, device: str | None = None, **kw) -> list[str]:
    """``translate_lines`` with the model (and masks) of a checkpoint file; ``data``: its
    prepared folder (default: the one it was trained on). ``kw``: beam, lenpen, max_tokens, progress."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, ck, pdata = load_for_decoding(ckpt, data, device)
    return translate_lines(model, pdata, lines, direction, device=device, **tag_options(ck.get("config")), **kw)


# --------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint file (e.g. runs/tiny/checkpoint_best.pt)")
    p.add_argument("--direction", required=True, help="e.g. en-de; a direction that was not trained (de-fr) "
                   "is decoded zero-shot")
    p.add_argument("--input", help="text file or pipe, one sentence a line (default: standard input)")
    p.add_argument("--output", help="file to write (atomically; a pipe is written through; default: standard output)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--data", help="prepared folder (default: the checkpoint's)")
    p.add_argument("--beam", type=int, default=5, help="beam size (1: greedy)")
    p.add_argument("--lenpen", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=4000, help="padded source tokens per batch")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=("torch", "ctranslate2"), default="torch",
                   help="ctranslate2: convert once (cached in CHECKPOINT.ct2/) and decode with CTranslate2 "
                        "(neuronspec.deploy.ct2; pip install -e '.[deploy]')")
    p.add_argument("--compute-type", default="default",
                   help="CTranslate2 compute type, e.g. int8, float32 (--engine ctranslate2 only)")


def read_lines(path: str | None) -> list[str]:
    """Lines (data.corpus.decoded_lines: split on ``\\n`` only, UTF-8, a leading byte order mark
    dropped) of the text file or pipe `path` (None: standard input); ValueError naming it otherwise."""
    if path is None:
        if sys.stdin is None or sys.stdin.closed:
            raise ValueError("input: standard input is closed; pass --input FILE")
        raw = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else io.BytesIO(sys.stdin.read().encode("utf-8"))
        return list(decoded_lines(raw, "standard input", "input"))
    if os.path.isdir(path):
        raise ValueError(f"input: {path} is a folder, expected a text file")
    if not os.path.exists(path):
        raise ValueError(f"input: no such file {path!r}")
    return list(iter_lines(path, "input"))  # a FIFO or /dev/fd/N of <(...) too


def _write_stdout(text: str) -> None:
    """Write `text` to standard output; a reader that closed it early (``| head``) is not an
    error: the job is done, the rest of standard output goes to /dev/null."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again
        os.close(devnull)
        log.info("standard output was closed by its reader; %d bytes not delivered", len(text.encode("utf-8")))


def write_lines(path: str | None, lines: Sequence[str]) -> None:
    """`lines` one a line (files.lines_text) to `path`: None = standard output, a pipe, FIFO or
    device written through, a file atomically."""
    text = lines_text(lines)
    if path is None:
        _write_stdout(text)
    elif file_kind(path) == "stream":
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        write_atomic(path, text)


def run(args: argparse.Namespace) -> int:
    check_number("--lenpen", args.lenpen)
    check_int("--beam", args.beam, 1)
    if args.output is None and (sys.stdout is None or sys.stdout.closed):
        raise ValueError("output: standard output is closed; pass --output FILE")
    inputs = [args.checkpoint, args.input, args.data]
    if args.output is not None:
        check_output_file(args.output, "output", inputs, kind="text", overwrite=args.overwrite)
    lines = read_lines(args.input)
    t0 = time.monotonic()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, ck, pdata = load_for_decoding(args.checkpoint, args.data, device)
    if args.output is not None:  # the checkpoint's prepared folder is an input too
        check_output_file(args.output, "output", [pdata.root], kind="text", overwrite=args.overwrite)
    if args.engine == "ctranslate2":  # neuronspec.deploy lies below nmt: reached by name, as cli reaches commands
        ct2 = importlib.import_module("neuronspec.deploy.ct2")
        out = ct2.translate_ct2(ct2.cached_model(args.checkpoint, model, ck, pdata, args.direction), pdata.tokenizer,
                                lines, args.direction, beam=args.beam, lenpen=args.lenpen, max_tokens=args.max_tokens,
                                max_positions=model.cfg.max_positions, device=device, compute_type=args.compute_type,
                                **tag_options(ck.get("config")))
    else:
        out = translate_lines(model, pdata, lines, args.direction, device=device, beam=args.beam, lenpen=args.lenpen,
                              max_tokens=args.max_tokens, progress=not args.no_progress and args.output is not None,
                              **tag_options(ck.get("config")))
    write_lines(args.output, out)
    log.info("translated %d lines (%s) in %.1f s%s", len(lines), args.direction, time.monotonic() - t0,
             f" -> {args.output}" if args.output else "")
    return 0
