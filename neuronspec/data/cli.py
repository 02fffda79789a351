"""`neuronspec data ...`: build or prepare corpora.

One function per sub-command adds its parser (``_add_builtin``); ``run`` dispatches
on ``args.data_command`` through ``_RUNNERS``. A new sub-command (e.g. ``prepare``)
adds ``_add_prepare(sub)`` + ``_run_prepare(args)`` and one entry in each of
``_ADDERS`` / ``_RUNNERS``.
"""
from __future__ import annotations

import argparse

from neuronspec.data.binarize import prepare_corpus
from neuronspec.data.builtin_corpus import build_builtin_corpus, summary_table


# ------------------------------------------------------------------ builtin
def _add_builtin(sub) -> None:
    p = sub.add_parser(
        "builtin",
        help="build the offline English-centric EC30 corpus from CLDR/num2words/gettext data",
        description="Build the built-in corpus (English <-> EC30 languages) from data that "
                    "installed packages ship: CLDR phrases (babel), num2words, and the gettext "
                    "catalogs of Django, Sphinx and sphinxcontrib.",
    )
    p.add_argument("--out", required=True, help="output folder (EC30 layout)")
    p.add_argument("--langs", nargs="+", default=None, metavar="LANG",
                   help="EC30 codes, e.g. de fr am or de,fr,am (default: all 30)")
    p.add_argument("--gettext-package", action="append", default=[], metavar="NAME",
                   dest="gettext_packages",
                   help="also read the */LC_MESSAGES/*.po|.mo catalogs of this installed "
                        "package (repeatable)")
    p.add_argument("--no-default-packages", action="store_true",
                   help="do not read Django/Sphinx/sphinxcontrib catalogs")
    p.add_argument("--seed", type=int, default=0, help="split / subsample seed (default 0)")
    p.add_argument("--valid-fraction", type=float, default=0.05)
    p.add_argument("--test-fraction", type=float, default=0.05)
    p.add_argument("--max-eval", type=int, default=200,
                   help="at most this many valid (and test) pairs per direction")
    p.add_argument("--min-eval", type=int, default=20,
                   help="warn when a direction gets fewer valid/test pairs")
    p.add_argument("--max-chars", type=int, default=200,
                   help="drop pairs with a side longer than this many characters")
    p.add_argument("--subsample-tiers", action="store_true",
                   help="cap training pairs like EC30's 5M/1M/100k tiers (medium 1/5, low 1/50 "
                        "of the high-tier median)")
    p.add_argument("--low-floor", type=int, default=100,
                   help="with --subsample-tiers, low-tier languages keep at least this many")
    p.add_argument("--zero-shot", nargs="+", metavar="X-Y",
                   help="also write non-English test pairs (e.g. de-fr ru-uk, or 'all'): the test items both "
                        "languages translate, for `neuronspec evaluate --zero-shot`")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_builtin(args) -> int:
    summary = build_builtin_corpus(
        args.out, langs=None if args.langs is None else ",".join(args.langs), seed=args.seed,
        gettext_packages=args.gettext_packages,
        default_packages=not args.no_default_packages,
        valid_fraction=args.valid_fraction, test_fraction=args.test_fraction,
        max_eval=args.max_eval, min_eval=args.min_eval, max_chars=args.max_chars,
        subsample_tiers=args.subsample_tiers, low_floor=args.low_floor, zero_shot=args.zero_shot,
        progress=not args.no_progress,
    )
    print(summary_table(summary))
    print(f"written to {args.out} in {summary['build_seconds']:.1f} s")
    return 0


# ------------------------------------------------------------------ prepare
def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="train the shared sentencepiece model and binarize a corpus into memory-mapped arrays",
        description="Read a corpus folder in the EC30 layout ({split}.{src}-{tgt}.{lang}), train one "
                    "shared sentencepiece model (language tags <2xx>) on a sample of its training "
                    "text, and encode every split into memory-mapped token arrays + index "
                    "(like fairseq-preprocess). The trainer reads the result via PreparedData.",
    )
    p.add_argument("--corpus", required=True, help="corpus folder (EC30 layout, searched recursively)")
    p.add_argument("--out", required=True, help="prepared folder to write (spm.model, *.bin, *.idx, meta.json)")
    p.add_argument("--vocab-size", type=int, default=8000, help="sentencepiece vocabulary size (default 8000)")
    p.add_argument("--langs", nargs="+", default=None, metavar="LANG",
                   help="only these languages (besides English), e.g. --langs de fr or --langs de,fr "
                        "(default: every language with an English training pair)")
    p.add_argument("--pivot", default="en", help="the pivot language of the training pairs (default en)")
    p.add_argument("--tokenizer-sentences", type=int, default=200_000,
                   help="size of the balanced, deterministic sample the tokenizer is trained on")
    p.add_argument("--character-coverage", type=float, default=1.0,
                   help="sentencepiece character coverage (default 1.0; 0.9995 for huge alphabets)")
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"],
                   help="sentencepiece model type (default unigram)")
    p.add_argument("--no-placeholders", dest="placeholders", action="store_false",
                   help="spell message placeholders (%%(name)s, {0}, <b>) in ordinary pieces instead of "
                        "protected slot tokens <ph1>... restored from the source after decoding")
    p.add_argument("--no-code-identifiers", dest="code_identifiers", action="store_false",
                   help="spell code identifiers (source_suffix, conf.py, --full, :widths:) in ordinary pieces "
                        "instead of protected slot tokens <id1>...")
    p.add_argument("--seed", type=int, default=0, help="tokenizer sample seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="sentencepiece threads (default min(4, cpus))")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_prepare(args) -> int:
    langs = None
    if args.langs is not None:
        langs = [x.strip() for item in args.langs for x in item.split(",") if x.strip()]
    data = prepare_corpus(
        args.corpus, args.out, vocab_size=args.vocab_size, langs=langs, pivot=args.pivot,
        tokenizer_sentences=args.tokenizer_sentences, character_coverage=args.character_coverage,
        model_type=args.model_type, placeholders=args.placeholders,
        code_identifiers=args.code_identifiers, seed=args.seed, num_threads=args.threads,
        progress=not args.no_progress,
    )
    zero_shot = data.zero_shot_directions("test")
    print(f"prepared {args.out}: {len(data.languages)} languages, {len(data.directions)} training "
          f"directions, {len(zero_shot)} zero-shot test directions, vocabulary {len(data.tokenizer)}")
    for split in data.splits:
        n = sum(data.num_examples(split, d) for d in data.eval_directions(split))
        print(f"  {split}: {len(data.eval_directions(split))} directions, {n} examples")
    return 0


# ------------------------------------------------------------------ dispatch
_ADDERS = [_add_builtin, _add_prepare]
_RUNNERS = {"builtin": _run_builtin, "prepare": _run_prepare}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    sub.required = True
    for add in _ADDERS:
        add(sub)


def run(args) -> int:
    try:
        runner = _RUNNERS[args.data_command]
    except KeyError:
        raise ValueError(f"data_command: unknown data sub-command {args.data_command!r}; "
                         f"expected one of {sorted(_RUNNERS)}") from None
    return runner(args)  # bad input: ValueError, one line and exit status 2 (neuronspec.cli)
