"""`neuronspec export`: a native checkpoint as a pruned one-direction checkpoint (``--format
native``, needs ``--direction``) or as a Hugging Face M2M100 folder (``--format hf``: dense, or
pruned with ``--direction``).

    neuronspec export --checkpoint runs/spec/checkpoint_best.pt --direction en-de --out runs/en-de
    neuronspec export --checkpoint runs/spec/checkpoint_best.pt --format hf --direction en-de --out runs/en-de-hf
"""
from __future__ import annotations

import argparse

from .prune import WIDTH_MULTIPLE


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint file (a specialized one, with masks, to prune)")
    p.add_argument("--out", required=True, help="output folder (replaced as a whole)")
    p.add_argument("--direction", help="keep only this direction's neurons, e.g. en-de (zero-shot x-y: x-en's "
                   "encoder and en-y's decoder neurons); required for --format native")
    p.add_argument("--format", choices=("native", "hf"), default="native",
                   help="native: neuronspec checkpoint + tokenizer; hf: M2M100ForConditionalGeneration folder")
    p.add_argument("--data", help="prepared folder (default: the checkpoint's)")
    p.add_argument("--width-multiple", type=int, default=WIDTH_MULTIPLE,
                   help="round pruned FFN widths up to a multiple of N with zero neurons (exact; default "
                        f"{WIDTH_MULTIPLE}, measured in benchmarks/results/cpu/translate)")


def run(args: argparse.Namespace) -> int:
    if args.format == "native":
        if args.direction is None:
            raise ValueError("direction: --format native exports one direction's pruned model; give --direction "
                             "(or --format hf for the dense model)")
        from .native import export_native

        rec = export_native(args.checkpoint, args.direction, args.out, data=args.data, multiple=args.width_multiple)
    else:
        from .hf_export import export_hf_folder

        rec = export_hf_folder(args.checkpoint, args.out, direction=args.direction, data=args.data,
                               multiple=args.width_multiple)
    params = rec["parameters"]
    if isinstance(params, dict):
        print(f"{rec['direction']}: {params['padded']:,} parameters as written (FFNs padded to {rec['width']}), "
              f"{params['per_layer']:,} at per-layer widths, {params['source']:,} in the source")
    else:
        what = f"{rec['direction']} pruned" if "direction" in rec else "dense"
        print(f"{what}: {params:,} parameters, FFN widths {rec['widths']}")
    print(f"wrote {args.out}")
    return 0
