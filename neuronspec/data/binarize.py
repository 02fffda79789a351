"""Encode a corpus once into memory-mapped token arrays (like fairseq-preprocess).

Prepared folder layout (all files written atomically, ``meta.json`` last):

    spm.model                 shared sentencepiece model (tags <2xx>; placeholder slots
                              <ph1>... unless prepared with placeholders=False)
    {split}.bin               flat token ids of every line of every side of the split
                              (uint16, or int32 when the vocabulary exceeds 65,536)
    {split}.idx               int64 offsets into {split}.bin: side k of pair p owns the
                              n+1 entries from its ``row`` (meta.json) on, and its line i
                              is bin[idx[row+i]:idx[row+i+1]]
    {split}.{a}-{b}.{lang}.txt   raw text (valid/test only), the sacrebleu references
    {split}.{a}-{b}.kind      per-line "phrase"/"sentence" (copied from the corpus's
                              sources.{split}.{a}-{b} when it has one)
    meta.json                 languages, directions, pairs (rows, sizes), tiers, config,
                              the tokenizer's sha256 and a manifest of every other file
                              (bytes, sha256) that PreparedData checks

One token file per split lets a batch mixing any directions be gathered with a single
fancy index. Token arrays hold sentencepiece ids only; tags, bos and eos are added by the batcher.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from neuronspec.atomic import atomic_file, check_writable_folder, replace_folder, write_atomic
from neuronspec.checks import check_int
from neuronspec.data.corpus import (
    FORMAT_VERSION, META_FILE, PIVOT, Corpus, PreparedData, iter_lines, read_kinds,
    scan_corpus,
)
from neuronspec.data.languages import LANGUAGES
from neuronspec.data.manifest import file_entry, remove_stale_temp_folders, temp_folder
from neuronspec.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

TOKENIZER_FILE = "spm.model"
# the names prepare_corpus writes (tokenizer, meta.json, split arrays, eval texts, kinds manifests)
_OURS = re.compile(r"spm\.model|meta\.json|\w+\.(bin|idx)|\w+\.[\w.-]+\.(txt|kind)")
CHUNK_LINES = 8192


def _write_text_atomic(path: Path, lines: Iterable[str]) -> None:
    with atomic_file(path) as f:
        for line in lines:
            f.write(line.encode("utf-8"))
            f.write(b"\n")


# ------------------------------------------------------------ tokenizer sample
def _quotas(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Split ``budget`` sentences over languages as evenly as their sizes allow."""
    quotas, left = {}, budget
    order = sorted(sizes, key=lambda l: (sizes[l], l))
    for k, lang in enumerate(order):
        q = min(sizes[lang], left // (len(order) - k))
        quotas[lang] = q
        left -= q
    return quotas


def tokenizer_sample(corpus: Corpus, max_sentences: int, seed: int = 0) -> list[str]:
    """A deterministic sample of training sentences, balanced over languages.

    Each language gets an equal share of ``max_sentences`` (a small language's unused
    share goes to the others); lines are drawn uniformly without replacement from all
    training files of that language, then read in one streaming pass.
    """
    files: dict[str, list[tuple[Path, int]]] = {}
    for p in corpus.pairs["train"]:
        for lang in (p.a, p.b):
            files.setdefault(lang, []).append((p.path(lang), p.num_lines))
    sizes = {lang: sum(n for _, n in fs) for lang, fs in files.items()}
    quotas = _quotas(sizes, max_sentences)
    rng = np.random.default_rng(seed)
    sample: list[str] = []
    for lang in sorted(files):
        picked = np.sort(rng.choice(sizes[lang], size=quotas[lang], replace=False))
        start = 0
        for path, n in files[lang]:
            wanted = picked[(picked >= start) & (picked < start + n)] - start
            start += n
            if len(wanted) == 0:
                continue
            it = iter(wanted.tolist())
            nxt = next(it)
            for i, line in enumerate(iter_lines(path)):
                if i == nxt:
                    sample.append(line)
                    nxt = next(it, None)
                    if nxt is None:
                        break
    return sample


# --------------------------------------------------------------------- tiers
def resource_tiers(languages: Sequence[str], pivot: str, train_sizes: dict[str, int]) -> dict[str, str]:
    """Resource group per non-pivot language: the EC30 group ("high"/"medium"/"low")
    when the language is in EC30, else by training size relative to the largest pair
    (≥ 1/3 high, ≥ 1/30 medium, else low)."""
    ec30 = {code: lang.tier for code, lang in LANGUAGES.items()}
    biggest = max(train_sizes.values())
    tiers = {}
    for lang in languages:
        if lang == pivot:
            continue
        if lang in ec30:
            tiers[lang] = ec30[lang]
        else:
            r = train_sizes[lang] / biggest
            tiers[lang] = "high" if r >= 1 / 3 else "medium" if r >= 1 / 30 else "low"
    return tiers


# ------------------------------------------------------------------ encoding
def _encode_side(tok: Tokenizer, path: Path, num_lines: int, fb, fi, pos: int, dtype: np.dtype,
                 bar, num_threads: int, keep_text: Path | None) -> int:
    """Append one side file's tokens to ``fb`` and its n+1 offsets (starting at ``pos``)
    to ``fi`` (and write a .txt copy); returns the new token position."""
    row = 0
    np.array([pos], dtype=np.int64).tofile(fi)
    with contextlib.ExitStack() as stack:
        ft = stack.enter_context(atomic_file(keep_text)) if keep_text is not None else None
        lines = iter_lines(path)
        while chunk := list(itertools.islice(lines, CHUNK_LINES)):
            if row + len(chunk) > num_lines:
                raise ValueError(f"corpus: {path} changed while being read (more than {num_lines} lines)")
            ids = tok.encode_batch(chunk, num_threads=num_threads)
            lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            total = int(lens.sum())
            np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=total).tofile(fb)
            (pos + np.cumsum(lens)).tofile(fi)
            pos += total
            row += len(chunk)
            if ft is not None:
                ft.write(("\n".join(chunk) + "\n").encode("utf-8"))
            bar.update(len(chunk))
        if row != num_lines:
            raise ValueError(f"corpus: {path} changed while being read ({row} lines, expected {num_lines})")
    return pos


def prepare_corpus(
    corpus_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 8000,
    langs: Sequence[str] | None = None,
    pivot: str = PIVOT,
    tokenizer_sentences: int = 200_000,
    character_coverage: float = 1.0,
    model_type: str = "unigram",
    placeholders: bool = True,
    code_identifiers: bool = True,
    seed: int = 0,
    num_threads: int | None = None,
    progress: bool = True,
) -> PreparedData:
    """Validate ``corpus_dir``, train the shared tokenizer, binarize every split/pair.

    vocab_size: sentencepiece vocabulary (soft limit). langs: restrict to these languages.
    tokenizer_sentences: size of the balanced, deterministic training sample for the
    tokenizer. placeholders: encode message placeholders (``%(name)s``, ``{0}``, tags) as
    protected slot tokens (``placeholders.py``); code_identifiers: code identifiers that
    translations keep verbatim (``source_suffix``, ``--full``) too (only with placeholders).
    Returns the loaded ``PreparedData`` of ``out_dir``.

    The folder is built beside ``out_dir`` and swapped in once complete: a failed or
    interrupted run keeps the previous prepared folder; the temporary folder of one killed
    (SIGKILL) is removed by the next prepare. A folder holding files this function does not
    write is refused (they would be lost in the swap).
    """
    check_int("tokenizer_sentences", tokenizer_sentences, 1)
    final = Path(out_dir)
    _check_out(final)
    corpus = scan_corpus(corpus_dir, langs=langs, pivot=pivot)
    final.mkdir(parents=True, exist_ok=True)  # (empty until the first prepare succeeds)
    remove_stale_temp_folders(final)
    out = temp_folder(final)
    try:
        _prepare_into(out, final, corpus, corpus_dir, vocab_size, langs, pivot, tokenizer_sentences, character_coverage,
                      model_type, placeholders, code_identifiers, seed, num_threads, progress)
        os.chmod(out, 0o777 & ~_umask())
        replace_folder(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return PreparedData.load(final)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_out(out: Path) -> None:
    """ValueError unless ``out`` may be (re)built: absent, empty, or holding only our files."""
    check_writable_folder(out, "out")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not _OURS.fullmatch(p.name))
        if foreign:
            raise ValueError(f"out: {out} holds files `neuronspec data prepare` does not write ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}); preparing would replace the folder: move them "
                             "or choose another --out")


def _binarize(out: Path, corpus: Corpus, tok: Tokenizer, dtype: np.dtype, total_lines: int, num_threads: int,
              progress: bool) -> tuple[dict, dict, int]:
    """Encode every split into ``out/{split}.bin|.idx`` (and the valid/test texts and kinds files);
    returns (splits meta, pairs meta, tokens written)."""
    pairs_meta: dict[str, dict[str, dict]] = {}
    splits_meta: dict[str, dict] = {}
    n_tokens = 0
    with tqdm(total=total_lines, unit="line", desc="binarize", disable=not progress, mininterval=1.0) as bar:
        for split, pairs in corpus.pairs.items():
            pos = row = 0
            with atomic_file(out / f"{split}.bin") as fb, atomic_file(out / f"{split}.idx") as fi:
                for p in pairs:
                    entry = {"a": p.a, "b": p.b, "num": p.num_lines, "rows": {}, "texts": None, "kinds": None}
                    keep_text = split != "train"
                    if keep_text:
                        entry["texts"] = {}
                    for lang in (p.a, p.b):
                        txt = out / f"{split}.{p.name}.{lang}.txt" if keep_text else None
                        start = pos
                        pos = _encode_side(tok, p.path(lang), p.num_lines, fb, fi, pos, dtype, bar,
                                           num_threads, txt)
                        entry["rows"][lang] = row
                        row += p.num_lines + 1
                        n_tokens += pos - start
                        if keep_text:
                            entry["texts"][lang] = txt.name
                    if p.kinds_path is not None:
                        kinds = read_kinds(p.kinds_path, p.num_lines)
                        name = f"{split}.{p.name}.kind"
                        _write_text_atomic(out / name, kinds)
                        entry["kinds"] = name
                    pairs_meta.setdefault(split, {})[p.name] = entry
            splits_meta[split] = {"bin": f"{split}.bin", "idx": f"{split}.idx", "tokens": pos, "rows": row}
    return splits_meta, pairs_meta, n_tokens


def prepared_meta(corpus: Corpus, pivot: str, vocab: int, dtype: np.dtype, splits_meta: dict, pairs_meta: dict,
                  config: dict) -> dict:
    """The prepared folder's meta.json dict (docs/design.md §5): languages, directions, resource
    tiers and training sizes from ``corpus``, the binarized files' layout, the options used."""
    train_sizes = {p.b if p.a == pivot else p.a: p.num_lines for p in corpus.pairs["train"]}
    return {
        "format": FORMAT_VERSION,
        "tokenizer": TOKENIZER_FILE,
        "vocab_size": vocab,
        "dtype": dtype.name,
        "pivot": pivot,
        "languages": corpus.languages,
        "directions": [list(d) for d in corpus.train_directions],
        "tiers": resource_tiers(corpus.languages, pivot, train_sizes),
        "train_sizes": train_sizes,
        "splits": splits_meta,
        "pairs": pairs_meta,
        "config": config,
    }


def _prepare_into(out: Path, final: Path, corpus: Corpus, corpus_dir, vocab_size, langs, pivot, tokenizer_sentences,
                  character_coverage, model_type, placeholders, code_identifiers, seed, num_threads,
                  progress) -> None:
    """prepare_corpus's work, written into the (new, empty) folder ``out`` (to become ``final``)."""
    t0 = time.perf_counter()
    num_threads = num_threads or min(4, os.cpu_count() or 1)
    code_identifiers = code_identifiers and placeholders  # identifier slots go with placeholder slots

    sample = tokenizer_sample(corpus, tokenizer_sentences, seed=seed)
    log.info("training sentencepiece (vocab %d) on %d sampled sentences", vocab_size, len(sample))
    tok = Tokenizer.train(sample, out / TOKENIZER_FILE[: -len(".model")], vocab_size, corpus.languages,
                          model_type=model_type, character_coverage=character_coverage,
                          placeholders=placeholders, code_identifiers=code_identifiers,
                          num_threads=num_threads)
    del sample
    t_tok = time.perf_counter() - t0
    dtype = np.dtype(np.uint16) if len(tok) <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)

    total_lines = sum(2 * p.num_lines for ps in corpus.pairs.values() for p in ps)
    splits_meta, pairs_meta, n_tokens = _binarize(out, corpus, tok, dtype, total_lines, num_threads, progress)
    config = {
        "corpus": os.path.abspath(os.fspath(corpus_dir)),
        "vocab_size": vocab_size,
        "langs": [l for l in corpus.languages if l != pivot] if langs is not None else None,
        "tokenizer_sentences": tokenizer_sentences,
        "character_coverage": character_coverage,
        "model_type": model_type,
        "placeholders": placeholders,
        "code_identifiers": code_identifiers,
        "seed": seed,
    }
    meta = prepared_meta(corpus, pivot, len(tok), dtype, splits_meta, pairs_meta, config)
    # the manifest readers check every file against (data/manifest.py), the tokenizer's beside the vocabulary
    meta["files"] = {p.name: file_entry(p) for p in sorted(out.iterdir()) if p.is_file()}
    meta["tokenizer_sha256"] = meta["files"][TOKENIZER_FILE]["sha256"]
    write_atomic(out / META_FILE, json.dumps(meta, indent=1, ensure_ascii=False))
    dt = time.perf_counter() - t0
    log.info("prepared %s: %d languages, %d training directions, %d lines, %d tokens, vocab %d "
             "(tokenizer %.1fs, total %.1fs)", final, len(corpus.languages), len(corpus.train_directions),
             total_lines, n_tokens, len(tok), t_tok, dt)
