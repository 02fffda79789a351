"""``neuronspec train``: the command line (options, --resume, ``OUT/train.log``) over trainer.train.

A failed command that never started a run removes what it made (the --out folder it created, or
the corpus and prepared data it built there); a started run keeps its folder, train.log and
train_error.txt. See trainer.py for the run itself and run_setup.py for the resume policy.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator

import torch.distributed as dist

from ..atomic import check_writable_folder
from .checkpoint import load_checkpoint
from .config import TINY_BUILTIN_LANGS, TrainConfig
from .model import PRESETS
from .run_folder import ERROR_FILE, LAST
from .run_setup import RESUME_APPLIES, check_resume_options, dist_env, resume_options_text
from .schedule import LR_SCHEDULERS
from .trainer import train


def configure_parser(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("data (default: the built-in corpus, prepared into OUT/data)")
    src.add_argument("--data", help="prepared folder (`neuronspec data prepare`)")
    src.add_argument("--corpus", help="raw corpus folder in EC30 layout, prepared into OUT/data")
    src.add_argument("--langs", nargs="+", help="languages to use when preparing, or 'all' (default: all; the tiny "
                     f"preset on the built-in corpus: {' '.join(TINY_BUILTIN_LANGS)})")
    src.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--out", help="output folder (default: runs/PRESET)")
    p.add_argument("--resume", action="store_true",
                   help=f"continue OUT/checkpoint_last.pt exactly with the run's own settings; only "
                        f"{resume_options_text()} apply (--data is checked against the run's vocabulary and "
                        "directions), any other changed option is an error")
    p.add_argument("--overwrite", action="store_true", help="replace the run OUT already holds")
    p.add_argument("--init-from", help="start from this checkpoint's weights with a fresh optimizer")
    p.add_argument("--masks", help="masks file (`neuronspec select`) to train with")
    m = p.add_argument_group("model")
    m.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    m.add_argument("--activation", choices=["relu", "gelu"])
    m.add_argument("--positions", choices=["sinusoidal", "learned"])
    m.add_argument("--dropout", type=float)
    m.add_argument("--attention-dropout", type=float)
    o = p.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, help="peak learning rate (preset default)")
    o.add_argument("--warmup", type=int, help="warm-up updates (preset default)")
    o.add_argument("--lr-scheduler", choices=sorted(LR_SCHEDULERS),
                   help="after the warm-up: inverse_sqrt (fairseq's) or linear (to 0 at the end of --max-steps / "
                        "--max-minutes); preset default: tiny linear, others inverse_sqrt")
    o.add_argument("--label-smoothing", type=float, default=0.1)
    o.add_argument("--clip-norm", type=float, default=1.0)
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--max-tokens", type=int, help="tokens per batch and process, padding included (preset default)")
    o.add_argument("--update-freq", type=int, default=1, help="accumulate gradients over N batches")
    o.add_argument("--ema-decay", type=float, help="exponential moving average of the weights, validated and saved "
                   "as the model (0: off; tiny default 0.995, other presets off)")
    o.add_argument("--temperature", type=float, default=5.0, help="direction sampling temperature")
    o.add_argument("--mixed-batches", action="store_true", help="mix directions inside a batch")
    o.add_argument("--upsample", nargs="+", type=_kind_factor, metavar="KIND=N",
                   help="see the examples of a kind (the corpus's kinds manifest, e.g. sentence) N times per epoch")
    o.add_argument("--source-tag", action="store_true", help="also prepend the source-language tag")
    o.add_argument("--target-tag", choices=["decoder", "encoder"], default="decoder",
                   help="where the target-language tag goes: first decoder input (fairseq's --decoder-langtok, "
                        "default) or source prefix")
    o.add_argument("--seed", type=int, default=1)
    s = p.add_argument_group("stopping and logging")
    s.add_argument("--max-steps", type=int, help="total updates")
    s.add_argument("--max-minutes", type=float, help="wall-clock training budget (tiny default: 9; the whole command then takes about 10)")
    s.add_argument("--log-every", type=int, default=50)
    s.add_argument("--valid-every", type=int, default=500)
    s.add_argument("--save-every", type=_save_every, metavar="N|Mm",
                   help="also save OUT/checkpoint_last.pt every N steps or every M minutes (e.g. 200 or 10m)")
    s.add_argument("--max-nonfinite", type=int, default=5,
                   help="updates with a non-finite loss or gradient norm are skipped; this many in a row stop "
                        "the run with exit status 3 (default 5)")
    s.add_argument("--patience", type=int, default=0,
                   help="early stopping: stop after this many validations without a better loss (default 0: off)")
    s.add_argument("--valid-max-sentences", type=int, default=100, help="per direction, for the valid loss")
    s.add_argument("--valid-chrf-sentences", type=int, default=200,
                   help="valid sentences per direction (evenly spaced) for the chrF++ at the end (default 200: "
                        "all of the built-in corpus's; 0: off)")
    s.add_argument("--valid-beam", type=int, default=5, help="beam of that chrF++ (default 5; 1: greedy)")
    s.add_argument("--valid-chrf-every", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--cuda-graphs", action="store_true",
                   help="replay each micro-batch's forward + backward as a CUDA graph, one per batch shape (batches "
                        "padded to 4 sizes per octave; one process, CUDA only)")
    s.add_argument("--max-cuda-graphs", type=int, default=32,
                   help="graphs kept with --cuda-graphs (least recently used dropped; default 32)")
    s.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                   help="bf16 autocast; auto = on for CUDA and CPUs with native bf16")
    s.add_argument("--no-progress", action="store_true")


def _identity(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _save_every(text: str) -> tuple[str, float]:
    """--save-every: N steps or Mm minutes."""
    minutes = text.endswith("m")
    try:
        value = float(text[:-1]) if minutes else int(text)
    except ValueError:
        value = -1
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of steps N >= 1 or minutes Mm > 0 (e.g. 10m), got {text!r}")
    return ("save_every_minutes", value) if minutes else ("save_every", value)


def _kind_factor(text: str) -> tuple[str, int]:
    kind, _, n = text.partition("=")
    if not kind or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"expected KIND=N with N >= 1, got {text!r}")
    return kind, int(n)


def _parser_defaults() -> dict[str, Any]:
    ref = argparse.ArgumentParser()
    configure_parser(ref)
    return vars(ref.parse_args([]))


def _config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields the command line gives (options left unset are not among them)."""
    names = [f.name for f in fields(TrainConfig)]
    kw = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if "upsample" in kw:
        kw["upsample"] = dict(kw["upsample"])
    if "save_every" in kw:
        name, value = kw.pop("save_every")
        kw[name] = value
    kw["out"] = args.out or f"runs/{args.preset}"
    kw["progress"] = not args.no_progress
    return kw


def _made_here(out: Path) -> list[Path]:
    """What this command creates and removes again when no run starts: the first folder of
    ``out`` it creates, else the corpus and prepared data it would build in ``out``."""
    if not out.exists():
        created = out.absolute()
        while not created.parent.exists():
            created = created.parent
        return [created]
    return [out / n for n in ("data", "corpus") if not (out / n).exists()]


@contextmanager
def _train_log(out: Path | None) -> Iterator[None]:
    """While the body runs, the package's log lines (INFO and up) also go to ``out``/train.log,
    created by the first line; ``out`` None (ranks > 0): warnings only."""
    pkg = logging.getLogger("neuronspec")
    if out is None:
        pkg.setLevel(logging.WARNING)
        yield
        return
    fh = logging.FileHandler(out / "train.log", encoding="utf-8", delay=True)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    fh.setLevel(logging.INFO)
    pkg.addHandler(fh)
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    try:
        yield
    finally:
        pkg.removeHandler(fh)
        fh.close()


def _train(args: argparse.Namespace, kw: dict[str, Any]) -> dict:
    """trainer.train with the command line's settings (``kw``), or --resume's (run_setup)."""
    if not args.resume:
        return train(TrainConfig(**kw), init_from=args.init_from, masks=args.masks, overwrite=args.overwrite)
    ckpt = load_checkpoint(Path(kw["out"]) / LAST)  # read once: train() takes it
    defaults = _parser_defaults()  # options left at their defaults keep the run's values
    check_resume_options(args, kw, ckpt["config"], defaults)
    applies = {k: kw[k] for k in RESUME_APPLIES if k in kw and (k in ("out", "progress") or kw[k] != defaults.get(k))}
    return train(TrainConfig.from_dict(ckpt["config"], **applies), resume=True, checkpoint=ckpt)


def run(args: argparse.Namespace) -> int:
    kw = _config_fields(args)
    rank, out = dist_env()[0], Path(kw["out"])
    made = _made_here(out) if rank == 0 else []
    before = {n: _identity(out / n) for n in (ERROR_FILE, LAST)}  # a run started: one of them changes
    if rank == 0:
        check_writable_folder(out, "out")
        out.mkdir(parents=True, exist_ok=True)
    try:
        with _train_log(out if rank == 0 else None):
            summary = _train(args, kw)
        if rank == 0:
            print(json.dumps({k: summary[k] for k in ("checkpoint", "step", "minutes")}, indent=2))
    except BaseException:
        if rank == 0 and all(_identity(out / n) == i for n, i in before.items()):  # it never started
            for p in made:  # what this command made; a started run keeps all
                if p.exists():
                    shutil.rmtree(p)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
