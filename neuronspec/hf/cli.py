"""`neuronspec hf record|specialize|translate --model NAME_OR_PATH ...` (docs/design.md §9).

    neuronspec hf record --model facebook/m2m100_418M --data corpus --directions en-de,de-en --out runs/hf/counts.pt
    neuronspec select --counts runs/hf/counts.pt --k 0.95 --out runs/hf/masks.pt
    neuronspec analyze --masks runs/hf/masks.pt --out runs/hf/iou
    neuronspec hf specialize --model facebook/m2m100_418M --masks runs/hf/masks.pt --data corpus --out runs/hf/model
    neuronspec hf translate --model runs/hf/model --direction en-de --input test.en --output hyp.de
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from neuronspec.files import check_output_file
from neuronspec.nmt.translate import read_lines, write_lines
from neuronspec.specialization.record import summary

from . import pipeline


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="hub name or save_pretrained folder (encoder-decoder)")
    p.add_argument("--lang-codes", default=None,
                   help="file language → model code, e.g. en=eng_Latn,de=deu_Latn (NLLB); default: as named")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per batch (default 16)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per sentence, longer ones cut (default 256)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="hf_command", metavar="SUBCOMMAND")
    sub.required = True
    p = sub.add_parser("record", help="count FFN activations per direction from parallel text files")
    _common(p)
    p.add_argument("--data", required=True, help="folder of {split}.{a}-{b}.{a|b} text files")
    p.add_argument("--directions", required=True, help="comma-separated, e.g. en-de,de-en")
    p.add_argument("--out", required=True, help="counts file (read by `neuronspec select` / `analyze`)")
    p.add_argument("--split", default="valid", help="split to read (default valid)")
    p.add_argument("--max-sentences", type=int, default=1000, help="sentences per direction (default 1000; 0 = all)")
    p.add_argument("--pivot", default="en", help="pivot language for select/analyze (default en)")
    p = sub.add_parser("specialize", help="continue training with per-direction masks; save model + masks")
    _common(p)
    p.add_argument("--masks", required=True, help="masks file from `neuronspec select`")
    p.add_argument("--data", required=True, help="folder of {split}.{a}-{b}.{a|b} text files")
    p.add_argument("--out", required=True, help="output folder (save_pretrained + neuronspec_masks.pt)")
    p.add_argument("--split", default="train", help="split to train on (default train)")
    p.add_argument("--steps", type=int, default=100, help="updates, one direction each in turn (default 100)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    p.add_argument("--max-sentences", type=int, default=0, help="pairs per direction to draw from (default 0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p = sub.add_parser("translate", help="translate a text file with the direction's masks applied")
    _common(p)
    p.add_argument("--direction", required=True, help="e.g. en-de")
    p.add_argument("--input", required=True, help="one sentence a line ('-' = stdin)")
    p.add_argument("--output", default=None, help="hypotheses file (default: stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--masks", default=None,
                   help="masks file or folder (default: the model folder's neuronspec_masks.pt if present)")
    p.add_argument("--dense", action="store_true", help="ignore masks (the dense model)")
    p.add_argument("--beam", type=int, default=4, help="beam size (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest output (default 128)")
    p = sub.add_parser("export", help="one direction's pruned model (neuronspec.deploy.hf_prune)")
    p.add_argument("--model", required=True, help="save_pretrained folder or hub name (encoder-decoder or Llama-family)")
    p.add_argument("--direction", required=True, help="e.g. en-de")
    p.add_argument("--out", required=True, help="output folder (save_pretrained + tokenizer + neuronspec_export.json)")
    p.add_argument("--masks", default=None, help="masks file or folder (default: the model folder's neuronspec_masks.pt)")


def _device(args) -> str:
    if args.device:
        return args.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args) -> int:
    if args.hf_command == "export":  # neuronspec.deploy lies below hf: reached by name, as cli reaches commands
        rec = importlib.import_module("neuronspec.deploy.hf_prune").export_hf(args.model, args.direction, args.out,
                                                                               masks=args.masks)
        p = rec["parameters"]
        print(f"{args.direction}: {p['padded']:,} parameters as written ({rec['widths']}), {p['per_layer']:,} at "
              f"per-layer widths, {p['source']:,} in the source; wrote {args.out}")
        return 0
    codes = pipeline.parse_lang_codes(args.lang_codes)
    if args.hf_command == "record":
        check_output_file(args.out, "out", [args.model, args.data], kind="counts")
    elif args.hf_command == "translate":
        if args.output is None and (sys.stdout is None or sys.stdout.closed):
            raise ValueError("output: standard output is closed; pass --output FILE")
        if args.output is not None:
            check_output_file(args.output, "output", [args.model, args.masks, None if args.input == "-" else args.input],
                              kind="text", overwrite=args.overwrite)
    model, tokenizer = pipeline.load_pretrained(args.model, _device(args))
    if args.hf_command == "record":
        rec = pipeline.record(model, tokenizer, args.data, args.directions.split(","), args.out, split=args.split,
                              max_sentences=args.max_sentences or None, batch_size=args.batch_size,
                              max_length=args.max_length, lang_codes=codes, pivot=args.pivot, source=args.model)
        print(summary(rec))
        print(f"saved counts for {len(rec['counts'])} FFN layers to {args.out}")
    elif args.hf_command == "specialize":
        losses = pipeline.specialize(model, tokenizer, args.masks, args.data, args.out, split=args.split,
                                     steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                     max_length=args.max_length, max_sentences=args.max_sentences or None,
                                     lang_codes=codes, seed=args.seed)
        print(f"{len(losses)} updates, loss {losses[0]:.4f} → {losses[-1]:.4f}; model and masks saved to {args.out}")
    else:
        lines = read_lines(None if args.input == "-" else args.input)
        masks = None if args.dense else args.masks
        if masks is None and not args.dense and (Path(args.model) / pipeline.MASKS_FILE).is_file():
            masks = args.model
        hyps = pipeline.translate(model, tokenizer, lines, args.direction, masks=masks, beam=args.beam,
                                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                  max_length=args.max_length, lang_codes=codes)
        write_lines(args.output, hyps)
    return 0
