"""The README's "Hugging Face models" example, end to end, on a tiny random M2M100 built here
from a config (nothing is downloaded; docs/design.md §9): the command-line pipeline (record,
select, analyze, specialize, translate), then the same masks trained with the default
`Seq2SeqTrainer` (a `direction` column, mixed directions per batch, gradient checkpointing),
saved with its masks and loaded back with `neuronspec.hf.load`.

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
from neuronspec.hf import DirectionCollator, MasksCallback, load, wrap
from neuronspec.hf.pipeline import LanguageCodes, load_pretrained, read_pairs
from neuronspec.hf.tiny import tiny_m2m100, tiny_tokenizer, write_parallel
from neuronspec.ops import load_layer_masks

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
    train_with_trainer(model, corpus, out / "masks.pt", out / "trainer", steps)


def train_with_trainer(model_dir: Path, corpus: Path, masks_path: Path, out: Path, steps: int) -> None:
    """The Trainer path: rows with a `direction` column, the default Seq2SeqTrainer, masks saved
    with the model (and in each checkpoint), `neuronspec.hf.load` to get it back."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    model, tokenizer = load_pretrained(str(model_dir))
    masks, _ = load_layer_masks(masks_path)
    directions = list(next(iter(masks.values())).names)
    spec = wrap(model, directions)
    spec.set_masks(masks)
    codes, rows = LanguageCodes(tokenizer), []
    for d in directions:
        src, tgt = read_pairs(corpus, "train", d)
        enc = codes.encode(d, src, tgt)  # padded tensors; the collator pads each batch again
        for i in range(len(src)):
            keep = enc["attention_mask"][i].bool()
            rows.append({"input_ids": enc["input_ids"][i][keep].tolist(), "attention_mask": [1] * int(keep.sum()),
                         "labels": [t for t in enc["labels"][i].tolist() if t != -100], "direction": d})
    args = Seq2SeqTrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=8,
                                    learning_rate=1e-3, save_steps=max(steps // 2, 1), logging_steps=max(steps // 4, 1),
                                    gradient_checkpointing=True, use_cpu=True, report_to=[], disable_tqdm=True)
    collator = DirectionCollator(DataCollatorForSeq2Seq(tokenizer, model), spec)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                             callbacks=[MasksCallback(spec)])
    trainer.train()
    trainer.save_model(str(out / "final"))  # weights, neuronspec_masks.pt, config marked
    tokenizer.save_pretrained(out / "final")
    loaded, spec = load(out / "final")
    src = read_pairs(corpus, "valid", "en-fr")[0][:2]
    inputs = codes.encode("en-fr", src)
    ids = loaded.eval().generate(**inputs, direction="en-fr", num_beams=2, max_new_tokens=8,
                                 forced_bos_token_id=codes.forced_bos("en-fr"))
    print("trainer path, en-fr:", codes.decode(ids), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/hf_tiny", help="output folder (default runs/hf_tiny)")
    parser.add_argument("--steps", type=int, default=20, help="specialize updates (default 20)")
    args = parser.parse_args()
    run(Path(args.out), args.steps)
    sys.exit(0)
