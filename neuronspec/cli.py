"""`neuronspec` command line: one sub-command per module.

Each command lives in the module that implements it; that module defines
``configure_parser(parser)`` and ``run(args) -> int``. Modules are imported
lazily so that ``neuronspec --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from neuronspec.checks import check_int
from neuronspec.errors import Interrupted, TrainingDiverged

# command -> (module, one-line help)
COMMANDS = {
    "data": ("neuronspec.data.cli", "build the built-in corpus or binarize a corpus"),
    "train": ("neuronspec.nmt.train_cli", "train a dense multilingual Transformer"),
    "evaluate": ("neuronspec.nmt.evaluate", "translate test sets and score them with sacrebleu"),
    "translate": ("neuronspec.nmt.translate", "translate text with a checkpoint (one sentence a line)"),
    "record": ("neuronspec.specialization.record", "count FFN neuron activations per direction"),
    "select": ("neuronspec.specialization.select", "turn activation counts into per-direction masks"),
    "analyze": ("neuronspec.specialization.iou", "IoU of masks between directions, plots and stats"),
    "specialize": ("neuronspec.specialization.specialize", "continue training with per-direction masks"),
    "demo": ("neuronspec.demo", "the whole study on the built-in corpus, end to end"),
    "study": ("neuronspec.study.cli", "the paper's comparison: NS, LaSS, adapters, bilingual; report and efficiency"),
    "bench": ("neuronspec.bench", "run the benchmarks with defaults for this device"),
    "hf": ("neuronspec.hf.cli", "record, specialize and translate with a Hugging Face transformers model"),
    "export": ("neuronspec.deploy.cli", "one direction's pruned model, or a Hugging Face M2M100 folder"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuronspec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = next((a for a in sys.argv[1:] if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen command's module is imported (its options may pull heavy deps).
        if name == chosen:
            importlib.import_module(module).configure_parser(p)
            if not any("--threads" in a.option_strings for a in p._actions):
                p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        if args.command != "demo" and args.threads is not None:  # the demo picks its own from the load
            import torch  # lazy, like the commands: `neuronspec --help` does not load torch

            torch.set_num_threads(check_int("--threads", args.threads, 1))
        return int(module.run(args) or 0)
    except (ValueError, TypeError, OSError, UnicodeError) as e:
        if args.verbose:
            raise
        print(f"neuronspec {args.command}: error: {_describe(e)} (run with -v for the traceback)", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"neuronspec {args.command}: training diverged: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(f"neuronspec {args.command}: {e.signal_name}: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print(f"neuronspec {args.command}: interrupted (SIGINT)", file=sys.stderr)
        return 130


def _describe(e: BaseException) -> str:
    """One line for an error (an OSError as 'path: reason')."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror if e.filename is None else f"{e.filename}: {e.strerror}"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
