"""The README's "Hugging Face models" example, end to end, on a tiny random M2M100 built here
from a config (nothing is downloaded; docs/design.md §9).

    python examples/hf_tiny.py --out runs/hf_tiny

With network access, replace the tiny model folder by a hub name in the same commands, e.g.
`--model facebook/m2m100_418M`, or `--model facebook/nllb-200-distilled-600M` with
`--lang-codes en=eng_Latn,de=deu_Latn,fr=fra_Latn`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neuronspec.cli import main as neuronspec
from neuronspec.hf.tiny import tiny_m2m100, tiny_tokenizer, write_parallel

PAIRS = {  # a few hand-made translations; the tiny model is random, the pipeline is what runs
    "en-de": (["the cat sits on the mat", "a dog runs in the park", "I drink water", "the house is big",
               "we read a book", "the sun is warm today"],
              ["die Katze sitzt auf der Matte", "ein Hund läuft im Park", "ich trinke Wasser",
               "das Haus ist groß", "wir lesen ein Buch", "die Sonne ist heute warm"]),
    "en-fr": (["the cat sits on the mat", "a dog runs in the park", "I drink water", "the house is big",
               "we read a book", "the sun is warm today"],
              ["le chat est assis sur le tapis", "un chien court dans le parc", "je bois de l'eau",
               "la maison est grande", "nous lisons un livre", "le soleil est chaud aujourd'hui"]),
}
DIRECTIONS = "en-de,de-en,en-fr,fr-en"


def build(out: Path) -> tuple[Path, Path]:
    """The tiny model + tokenizer folder and the corpus folder (train and valid splits)."""
    lines = [s for a, b in PAIRS.values() for s in a + b]
    tokenizer = tiny_tokenizer(out / "tokenizer", lines * 4, vocab_size=120)
    model = tiny_m2m100(tokenizer)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    for split in ("train", "valid"):
        write_parallel(out / "corpus", split, PAIRS)
    return out / "model", out / "corpus"


def run(out: Path, steps: int = 20) -> None:
    model, corpus = build(out)
    steps_run = [
        ["hf", "record", "--model", str(model), "--data", str(corpus), "--directions", DIRECTIONS,
         "--out", str(out / "counts.pt"), "--device", "cpu"],
        ["select", "--counts", str(out / "counts.pt"), "--k", "0.9", "--out", str(out / "masks.pt")],
        ["analyze", "--masks", str(out / "masks.pt"), "--out", str(out / "analysis"), "--no-heatmaps"],
        ["hf", "specialize", "--model", str(model), "--masks", str(out / "masks.pt"), "--data", str(corpus),
         "--out", str(out / "specialized"), "--steps", str(steps), "--lr", "1e-3", "--batch-size", "4",
         "--device", "cpu"],
        ["hf", "translate", "--model", str(out / "specialized"), "--direction", "en-de",
         "--input", str(corpus / "valid.en-de.en"), "--output", str(out / "hyp.en-de.de"), "--beam", "2",
         "--max-new-tokens", "8", "--device", "cpu"],
    ]
    for argv in steps_run:
        print("$ neuronspec " + " ".join(argv), flush=True)
        status = neuronspec(argv)
        if status:
            raise SystemExit(f"neuronspec {argv[0]} failed with status {status}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/hf_tiny", help="output folder (default runs/hf_tiny)")
    parser.add_argument("--steps", type=int, default=20, help="specialize updates (default 20)")
    args = parser.parse_args()
    run(Path(args.out), args.steps)
    sys.exit(0)
