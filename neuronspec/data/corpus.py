"""Parallel corpus in the EC30 layout, and the prepared (binarized) form the trainer reads.

Corpus folder (searched recursively): ``{split}.{a}-{b}.{a}`` / ``{split}.{a}-{b}.{b}``,
one sentence per line, line i of one side translating line i of the other; split in
train / valid / test. Pivot-centric (English-centric) pair files ``en-xx`` (or ``xx-en``)
give two training directions, en→xx and xx→en. A valid/test pair without the pivot
(``test.de-fr.*``) gives zero-shot evaluation directions de→fr and fr→de, never trained.
An optional ``sources.{split}.{a}-{b}`` (one "phrase"/"sentence" a line, as the built-in
corpus writes) gives the kind of each line.

``scan_corpus`` validates the folder (missing side, misaligned line counts, malformed
language codes, languages asked for but absent, empty corpus) and returns a ``Corpus``;
``neuronspec.data.binarize.prepare_corpus`` turns it into a prepared folder that
``PreparedData.load`` reads through memory maps.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence, Union

import numpy as np

from neuronspec.data.manifest import check_entry, sha256_of
from neuronspec.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
PIVOT = "en"
KINDS = ("phrase", "sentence")
META_FILE = "meta.json"
FORMAT_VERSION = 2

Direction = tuple[str, str]
DirectionLike = Union[Direction, Sequence[str], str]

# ISO 639 code, optionally with underscore subtags (pt_BR, sr_Latn). No '-' and no '.',
# which separate the parts of a file name.
_LANG_RE = re.compile(r"^[a-z]{2,3}(_[A-Za-z0-9]{2,8})*$")
_FILE_RE = re.compile(r"^(train|valid|test)\.([^.\-]+)-([^.\-]+)\.([^.]+)$")
_SPLIT_PREFIX = re.compile(r"^(train|valid|test)\.")
_COMPRESSED = re.compile(r"\.(gz|bz2|xz|zst|zip)$")


def check_lang(code: str, what: str = "lang") -> str:
    """Return ``code`` if well formed (``de``, ``kab``, ``pt_BR``), else ValueError."""
    if not isinstance(code, str) or not _LANG_RE.match(code):
        raise ValueError(
            f"{what}: malformed language code {code!r} (expected 2-3 lowercase letters, "
            "optionally with '_' subtags such as pt_BR)"
        )
    return code


def as_direction(direction: DirectionLike) -> Direction:
    """``("de", "en")``, ``["de", "en"]`` or ``"de-en"`` -> ``("de", "en")``."""
    if isinstance(direction, str):
        parts = direction.split("-")
    else:
        parts = list(direction)
    if len(parts) != 2 or not all(isinstance(p, str) for p in parts):
        raise ValueError(f"direction: expected 'src-tgt' or (src, tgt), got {direction!r}")
    return (parts[0], parts[1])


def direction_name(direction: DirectionLike) -> str:
    s, t = as_direction(direction)
    return f"{s}-{t}"


def count_lines(path: str | os.PathLike, chunk: int = 1 << 24) -> int:
    """Lines in a file: ``\\n`` count, plus one for a last line without ``\\n``."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while True:
            buf = f.read(chunk)
            if not buf:
                break
            n += buf.count(b"\n")
            last = buf[-1:]
    return n + (last != b"\n")


def iter_lines(path: str | os.PathLike, what: str = "corpus") -> Iterator[str]:
    """Lines of the UTF-8 file (or pipe) ``path`` by :func:`decoded_lines`' rule; ``what`` names
    the input in errors."""
    with open(path, "rb") as f:
        yield from decoded_lines(f, os.fspath(path), what)


def decoded_lines(raw_lines: Iterable[bytes], name: str, what: str = "corpus") -> Iterator[str]:
    """The package's one rule for a text input whose lines are sentences: ``raw_lines`` (a binary
    stream, split on ``\n`` only, so U+2028 or a lone ``\r`` inside a line stay) decoded as
    UTF-8 without the line ending (``\n`` or ``\r\n``); a byte order mark opening the input is
    dropped; a decoding error is a ValueError '``what``: ``name`` line N is not valid UTF-8 (...)'."""
    for i, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{what}: {name} line {i} is not valid UTF-8 ({e.reason}, byte "
                             f"{raw[e.start:e.start + 1]!r})") from None
        if i == 1 and line.startswith("\ufeff"):
            line = line[1:]
        if line.endswith("\n"):
            line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
        yield line


# ------------------------------------------------------------------ raw corpus
@dataclass(frozen=True)
class PairFiles:
    """Both sides of one split of one language pair ``a-b``."""

    split: str
    a: str
    b: str
    path_a: Path
    path_b: Path
    num_lines: int
    kinds_path: Path | None = None  # per-line "phrase"/"sentence" manifest, if the corpus has one

    @property
    def name(self) -> str:
        return f"{self.a}-{self.b}"

    def path(self, lang: str) -> Path:
        if lang == self.a:
            return self.path_a
        if lang == self.b:
            return self.path_b
        raise ValueError(f"lang: {lang!r} is not a side of pair {self.name}")

    def directions(self) -> list[Direction]:
        return [(self.a, self.b), (self.b, self.a)]


@dataclass
class Corpus:
    """A validated corpus folder: which pair files exist per split, and their sizes."""

    root: Path
    pivot: str
    languages: list[str]  # pivot first, then the others sorted
    pairs: dict[str, list[PairFiles]] = field(default_factory=dict)  # split -> pairs

    @property
    def train_directions(self) -> list[Direction]:
        """pivot→x for every x, then x→pivot for every x (x sorted)."""
        others = [l for l in self.languages if l != self.pivot]
        return [(self.pivot, x) for x in others] + [(x, self.pivot) for x in others]

    def pair_for(self, split: str, direction: DirectionLike) -> PairFiles | None:
        s, t = as_direction(direction)
        for p in self.pairs.get(split, []):
            if {p.a, p.b} == {s, t}:
                return p
        return None


def scan_corpus(
    folder: str | os.PathLike,
    langs: Sequence[str] | None = None,
    pivot: str = PIVOT,
) -> Corpus:
    """Find and validate the pair files of ``folder``.

    langs: restrict to these languages (a list, or "de,fr") besides the pivot; each must
    have a training pair with the pivot. Pairs that involve other languages are left out. Languages
    outside EC30 are fine; only malformed codes are rejected.
    Errors (ValueError): folder missing; a pair with one side missing (names the file);
    line counts differ (names both files and counts); malformed codes; a ``langs`` entry
    without training files; an empty training pair; no pivot-centric training pair.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"corpus: folder {os.fspath(folder)!r} does not exist")
    check_lang(pivot, "pivot")
    wanted = wanted_languages(langs, pivot)
    groups = group_pair_files(_corpus_files(root))
    if not groups:
        raise ValueError(
            f"corpus: no pair files found in {root} (expected names like train.{pivot}-de.{pivot} "
            f"and train.{pivot}-de.de)"
        )
    trained = trained_languages(groups, wanted, pivot, root)
    pairs = _pair_files(groups, trained | {pivot}, pivot, log_left_out=wanted is None)
    languages = [pivot] + sorted(trained)
    corpus = Corpus(root=root, pivot=pivot, languages=languages, pairs=pairs)
    log.info("corpus %s: %d languages, pairs per split: %s", root, len(languages),
             {s: len(p) for s, p in corpus.pairs.items()})
    return corpus


def _corpus_files(root: Path) -> list[Path]:
    """The files under ``root``, hidden folders (``.name``, e.g. ``.ec.tmp-*`` of a killed
    `data builtin`) skipped with a warning."""
    files, hidden = [], set()
    for p in sorted(root.rglob("*")):
        parts = p.relative_to(root).parts
        dot = next((k for k, part in enumerate(parts[:-1]) if part.startswith(".")), None)
        if dot is not None:
            hidden.add(root.joinpath(*parts[:dot + 1]))
        elif p.is_file():
            files.append(p)
    for h in sorted(hidden):
        log.warning("corpus: hidden folder %s skipped (a temporary folder of an interrupted build?)", h)
    return files


def wanted_languages(langs: Sequence[str] | str | None, pivot: str) -> set[str] | None:
    """The non-pivot languages ``langs`` asks for ("de,fr" or a list), checked; None for all."""
    if langs is None:
        return None
    if isinstance(langs, str):  # "de,fr"
        langs = [x.strip() for x in langs.split(",") if x.strip()]
    wanted = {check_lang(l, "langs") for l in langs} - {pivot}
    if not wanted:
        raise ValueError(f"langs: no language besides the pivot {pivot!r} in {list(langs)}")
    return wanted


def group_pair_files(paths: Iterable[Path]) -> dict[tuple[str, str, str], dict[str, Path]]:
    """{(split, a, b): {side language: path}} of the pair files among ``paths`` (by name only;
    other names are ignored). The same file name twice (in different folders) is ambiguous."""
    groups: dict[tuple[str, str, str], dict[str, Path]] = {}
    seen: dict[str, Path] = {}
    for path in paths:
        m = _FILE_RE.match(path.name)
        if _COMPRESSED.search(path.name) and _SPLIT_PREFIX.match(path.name):
            log.warning("corpus: %s left out: compressed files are not read (decompress it, e.g. gunzip)", path)
            continue
        if not m or m.group(4) not in m.group(2, 3):
            if _SPLIT_PREFIX.match(path.name):
                log.warning("corpus: %s left out: not a pair file name {split}.{a}-{b}.{side} with side a or b "
                            "(e.g. train.en-de.de; language codes such as pt_BR use '_')", path)
            continue
        split, a, b, side = m.groups()
        check_lang(a, f"corpus file {path}")
        check_lang(b, f"corpus file {path}")
        if a == b:
            raise ValueError(f"corpus: file {path} pairs a language with itself")
        if path.name in seen:
            raise ValueError(f"corpus: {path.name} found twice: {seen[path.name]} and {path}")
        seen[path.name] = path
        groups.setdefault((split, a, b), {})[side] = path
    return groups


def trained_languages(groups: dict[tuple[str, str, str], dict[str, Path]], wanted: set[str] | None,
                      pivot: str, root: Path) -> set[str]:
    """The non-pivot languages that take part: those with a pivot-centric training pair, all of
    ``wanted`` (each must have one) when given. ``root`` only names the folder in errors."""
    trained = {b if a == pivot else a for (split, a, b) in groups if split == "train" and pivot in (a, b)}
    if wanted is not None:
        missing = sorted(wanted - trained)
        if missing:
            raise ValueError(
                f"langs: no training files for {missing} in {root} (expected train.{pivot}-xx.{pivot} / "
                f"train.{pivot}-xx.xx); languages with training pairs: {sorted(trained)}"
            )
        trained = wanted
    if not trained:
        raise ValueError(
            f"corpus: no {pivot}-centric training pair in {root} (expected train.{pivot}-xx.{pivot} "
            f"and train.{pivot}-xx.xx)"
        )
    return trained


def _pair_files(groups: dict[tuple[str, str, str], dict[str, Path]], keep: set[str], pivot: str,
                log_left_out: bool) -> dict[str, list[PairFiles]]:
    """{split: [PairFiles]} of the groups among ``keep`` languages (training pairs pivot-centric
    only), each checked: both sides present, one file per pair, equal line counts, a non-empty
    training pair; splits without pairs are absent."""
    pairs: dict[str, list[PairFiles]] = {s: [] for s in SPLITS}
    pair_keys: dict[tuple[str, frozenset], str] = {}
    for (split, a, b), sides in sorted(groups.items()):
        if not {a, b} <= keep:
            if log_left_out:
                log.warning("corpus: %s.%s-%s left out: a language without a %s-centric training pair",
                            split, a, b, pivot)
            continue
        if split == "train" and pivot not in (a, b):
            log.warning("corpus: train.%s-%s left out: only %s-centric directions are trained", a, b, pivot)
            continue
        for lang in (a, b):
            if lang not in sides:
                other = sides[b if lang == a else a]
                raise ValueError(
                    f"corpus: missing file {other.parent / f'{split}.{a}-{b}.{lang}'} "
                    f"(the other side {other} exists)"
                )
        key = (split, frozenset((a, b)))
        if key in pair_keys:
            raise ValueError(f"corpus: both {pair_keys[key]} and {split}.{a}-{b} exist; keep one of them")
        pair_keys[key] = f"{split}.{a}-{b}"
        na, nb = count_lines(sides[a]), count_lines(sides[b])
        if na != nb:
            raise ValueError(
                f"corpus: misaligned pair: {sides[a]} has {na} lines but {sides[b]} has {nb} lines"
            )
        if na == 0:
            if split == "train":
                raise ValueError(f"corpus: empty training pair: {sides[a]} and {sides[b]} have 0 lines")
            log.warning("corpus: %s and %s are empty; left out", sides[a], sides[b])
            continue
        kinds = find_kinds_file(sides[a].parent, split, a, b)
        pairs[split].append(PairFiles(split, a, b, sides[a], sides[b], na, kinds))
    return {s: p for s, p in pairs.items() if p}


# ------------------------------------------------------------ kinds manifests
def find_kinds_file(folder: Path, split: str, a: str, b: str) -> Path | None:
    """``sources.{split}.{a}-{b}`` next to the pair, if present: one kind a line,
    "phrase" or "sentence" (the manifest ``neuronspec data builtin`` writes)."""
    p = folder / f"sources.{split}.{a}-{b}"
    return p if p.is_file() else None


def read_kinds(path: Path, num_lines: int) -> list[str]:
    """Per-line kinds ("phrase" / "sentence") of a pair; validated against its length."""
    kinds = list(iter_lines(path))
    if len(kinds) != num_lines:
        raise ValueError(f"corpus: kind manifest {path} has {len(kinds)} lines, the pair has {num_lines}")
    bad = sorted(set(kinds) - set(KINDS))
    if bad:
        raise ValueError(f"corpus: kind manifest {path} has unknown kinds {bad[:5]} (expected {KINDS})")
    return kinds


# ------------------------------------------------------------- prepared data
# meta.json keys every reader needs (docs/design.md §5)
META_KEYS = ("format", "tokenizer", "vocab_size", "dtype", "pivot", "languages", "directions", "tiers", "splits",
             "pairs")


def read_meta(root: Path) -> dict:
    """meta.json of a prepared folder, checked for its format and keys; ValueError naming the file."""
    path = root / META_FILE
    if not path.is_file():
        raise ValueError(f"path: {os.fspath(root)!r} is not a prepared folder (no {META_FILE}); "
                         "run `neuronspec data prepare` first")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        what = "empty" if path.stat().st_size == 0 else f"not valid JSON ({str(e).splitlines()[0]})"
        raise ValueError(f"path: {path} is {what}; run `neuronspec data prepare` again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"path: {path} holds a {type(meta).__name__}, expected a JSON object")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"path: {path} has format {meta.get('format')}, expected {FORMAT_VERSION}")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"path: {path} lacks {', '.join(map(repr, missing))} (damaged or edited); "
                         "run `neuronspec data prepare` again")
    return meta


class PreparedData:
    """A prepared folder (``neuronspec data prepare``), read through memory maps.

    ``directions`` are the training directions (task id = index). Any split may also
    hold zero-shot directions (non-pivot pairs); ``eval_directions(split)`` lists all.
    Token arrays hold sentencepiece ids only: no tags, no bos/eos (the batcher adds them).

    One consistent version is read: the tokenizer, texts and kinds files are read when the
    folder is opened and the token arrays are opened then too (mapped on first use), each checked
    against meta.json's manifest (sizes and sha256; arrays also for ids inside the vocabulary and
    a well-formed index), so a folder re-prepared meanwhile is never half read. ``max_positions``
    (set by the trainer from its model): examples longer than that are left out of batches.
    """

    max_positions: int | None = None

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta_path = self.root / META_FILE
        self.meta = read_meta(self.root)
        self._stat = _identity(meta_path)
        self._manifest: dict[str, dict] | None = self.meta.get("files")
        if self._manifest is None:
            log.debug("%s: prepared before manifests: files not checked", self.root)
        try:
            self.pivot: str = self.meta["pivot"]
            self.languages: list[str] = list(self.meta["languages"])
            self.directions: list[Direction] = [tuple(d) for d in self.meta["directions"]]
            self.tiers: dict[str, str] = dict(self.meta["tiers"])
            self.dtype: str = np.dtype(self.meta["dtype"]).name
            # split -> {bin, idx, tokens, rows}; split -> pair name -> {a, b, num, rows, kinds, texts}
            self._splits: dict[str, dict] = self.meta["splits"]
            self._pairs: dict[str, dict[str, dict]] = self.meta["pairs"]
            arrays = {s: (f["bin"], f["idx"]) for s, f in self._splits.items()}
            texts = [n for ps in self._pairs.values() for e in ps.values()
                     for n in [*(e.get("texts") or {}).values(), e.get("kinds")] if n]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"path: {meta_path} is malformed ({type(e).__name__}: {e}); run `neuronspec data "
                             "prepare` again") from None
        self._task = {d: i for i, d in enumerate(self.directions)}
        self._cache: dict[tuple, object] = {}
        raw = self._read(self.meta["tokenizer"])
        self.tokenizer_sha256: str = hashlib.sha256(raw).hexdigest()
        self.tokenizer = Tokenizer.from_bytes(raw, os.fspath(self.root / self.meta["tokenizer"]))
        if len(self.tokenizer) != self.meta["vocab_size"]:
            raise ValueError(f"path: {self.root / self.meta['tokenizer']} has {len(self.tokenizer)} pieces, "
                             f"{meta_path} says {self.meta['vocab_size']}")
        self._texts = {name: list(decoded_lines(io.BytesIO(self._read(name)), os.fspath(self.root / name)))
                       for name in texts}
        self._handles = {n: self._open(n) for pair in arrays.values() for n in pair}

    def _open(self, name: str) -> BinaryIO:
        try:
            return open(self.root / name, "rb")
        except OSError as e:
            raise ValueError(f"prepared folder: cannot open {self.root / name} ({e.strerror})") from None

    def _read(self, name: str) -> bytes:
        """Contents of a (small) file of the folder, checked against the manifest."""
        with self._open(name) as f:
            raw = f.read()
        self._check(name, len(raw), hashlib.sha256(raw).hexdigest())
        return raw

    def _check(self, name: str, nbytes: int, digest: str | None) -> None:
        if self._manifest is not None:
            check_entry(os.fspath(self.root / name), self._manifest.get(name), nbytes, digest)

    def __del__(self):
        for f in getattr(self, "_handles", {}).values():  # maps made from them stay valid
            f.close()

    def replaced(self) -> bool:
        """True when the folder's meta.json is no longer the one read (re-prepared since)."""
        return _identity(self.root / META_FILE) != self._stat

    @classmethod
    def load(cls, root: str | os.PathLike) -> "PreparedData":
        return cls(root)

    def __repr__(self) -> str:
        return (f"PreparedData({os.fspath(self.root)!r}, {len(self.languages)} languages, "
                f"{len(self.directions)} training directions, vocab {len(self.tokenizer)})")

    # ---------------------------------------------------------------- lookup
    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if self._pairs.get(s)]

    def task_id(self, direction: DirectionLike) -> int:
        """Index of a training direction; ValueError for others (e.g. zero-shot)."""
        d = as_direction(direction)
        try:
            return self._task[d]
        except KeyError:
            raise ValueError(f"direction: {direction_name(d)} is not a training direction") from None

    def eval_directions(self, split: str) -> list[Direction]:
        """Every direction with data in ``split``: training ones first, then zero-shot."""
        have = set()
        for e in self._pairs.get(split, {}).values():
            have.update({(e["a"], e["b"]), (e["b"], e["a"])})
        trained = [d for d in self.directions if d in have]
        return trained + sorted(have - set(trained))

    def zero_shot_directions(self, split: str = "test") -> list[Direction]:
        """Directions of ``split`` that are not trained (non-pivot pairs)."""
        return [d for d in self.eval_directions(split) if d not in self._task]

    def has(self, split: str, direction: DirectionLike) -> bool:
        return self._find(split, direction, required=False) is not None

    def _find(self, split: str, direction: DirectionLike, required: bool = True) -> dict | None:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        s, t = as_direction(direction)
        for e in self._pairs.get(split, {}).values():
            if {e["a"], e["b"]} == {s, t}:
                return e
        if required:
            raise ValueError(f"direction: no {split} data for {s}-{t} in {self.root} "
                             f"(available: {[direction_name(d) for d in self.eval_directions(split)]})")
        return None

    def pair_name(self, split: str, direction: DirectionLike) -> str:
        """``a-b`` of the pair files ``direction``'s examples of ``split`` come from."""
        e = self._find(split, direction)
        return f"{e['a']}-{e['b']}"

    def num_examples(self, split: str, direction: DirectionLike) -> int:
        """Examples of ``direction`` in ``split`` (0 if that split has none for it)."""
        e = self._find(split, direction, required=False)
        return 0 if e is None else int(e["num"])

    # ---------------------------------------------------------------- arrays
    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [total], index int64 [rows]) of a whole split, both memory-mapped."""
        key = ("split", split)
        if key not in self._cache:
            if split not in self._splits:
                raise ValueError(f"split: no {split!r} data in {self.root}")
            f = self._splits[split]
            tokens = self._map(f["bin"], self.dtype, int(f["tokens"]))
            index = self._map(f["idx"], np.int64, int(f["rows"]))
            _check_arrays(self.root, f, tokens, index, len(self.tokenizer))
            self._cache[key] = (tokens, index)
        return self._cache[key]

    def rows(self, split: str, direction: DirectionLike) -> tuple[int, int, int]:
        """(src_row, tgt_row, n): example i of ``direction`` has source tokens
        ``tokens[index[src_row+i]:index[src_row+i+1]]`` (same for the target)."""
        s, t = as_direction(direction)
        e = self._find(split, (s, t))
        return int(e["rows"][s]), int(e["rows"][t]), int(e["num"])

    def arrays(self, split: str, direction: DirectionLike):
        """(src_tokens, src_offsets [n+1], tgt_tokens, tgt_offsets [n+1]) of ``direction``;
        line i of a side is ``tokens[offsets[i]:offsets[i+1]]``."""
        tokens, index = self.split_arrays(split)
        sr, tr, n = self.rows(split, direction)
        return tokens, index[sr:sr + n + 1], tokens, index[tr:tr + n + 1]

    def lengths(self, split: str, direction: DirectionLike) -> tuple[np.ndarray, np.ndarray]:
        """sentencepiece lengths (src [n], tgt [n], int64) without tags/bos/eos."""
        _, so, _, to = self.arrays(split, direction)
        return np.diff(so), np.diff(to)

    def example(self, split: str, direction: DirectionLike, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(src_ids, tgt_ids) of example ``i``: int64 arrays without tags/eos."""
        st, so, tt, to = self.arrays(split, direction)
        n = len(so) - 1
        if not 0 <= i < n:
            raise ValueError(f"i: index {i} out of range for {split} {direction_name(direction)} ({n} examples)")
        return (np.asarray(st[so[i]:so[i + 1]], dtype=np.int64),
                np.asarray(tt[to[i]:to[i + 1]], dtype=np.int64))

    # ----------------------------------------------------------------- texts
    def texts(self, split: str, direction: DirectionLike) -> tuple[list[str], list[str]]:
        """Raw (sources, references) of ``direction`` in ``split`` (valid/test only)."""
        s, t = as_direction(direction)
        e = self._find(split, (s, t))
        if not e.get("texts"):
            raise ValueError(f"split: raw texts are kept for valid/test only, not {split!r}")
        return self._text(e["texts"][s]), self._text(e["texts"][t])

    def _text(self, name: str) -> list[str]:
        return list(self._texts[name])

    def kinds(self, split: str, direction: DirectionLike) -> list[str] | None:
        """Per-example kind ("phrase" / "sentence") if the corpus provided it, else None."""
        e = self._find(split, direction)
        if not e.get("kinds"):
            return None
        return self._text(e["kinds"])

    def _map(self, name: str, dtype, count: int) -> np.ndarray:
        """The array in the file opened as ``name`` (size and checksum checked)."""
        f = self._handles[name]
        nbytes = os.fstat(f.fileno()).st_size
        if nbytes != count * np.dtype(dtype).itemsize:
            raise ValueError(f"prepared folder: {self.root / name} has {nbytes} bytes, its meta.json expects "
                             f"{count} x {np.dtype(dtype).name} = {count * np.dtype(dtype).itemsize} (truncated, "
                             "swapped or re-prepared); run `neuronspec data prepare` again")
        self._check(name, *(sha256_of(f) if self._manifest is not None else (nbytes, None)))
        if count == 0:
            return np.zeros(0, dtype=dtype)
        # A plain ndarray view of the map: slicing a np.memmap subclass is several times slower.
        return np.memmap(f, dtype=dtype, mode="r", shape=(count,)).view(np.ndarray)


def _identity(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size


def _check_arrays(root: Path, f: dict, tokens: np.ndarray, index: np.ndarray, vocab: int) -> None:
    """ValueError naming the file unless ``index`` is non-decreasing offsets within ``tokens`` and
    every token id is inside the vocabulary."""
    if len(index) and (index[0] < 0 or index[-1] != len(tokens) or (np.diff(index) < 0).any()):
        raise ValueError(f"prepared folder: {root / f['idx']} is not the index of {root / f['bin']} (offsets "
                         "out of order or past its end); run `neuronspec data prepare` again")
    if len(tokens):
        top = int(tokens.max())
        if top >= vocab:
            at = int(np.argmax(tokens >= vocab))
            raise ValueError(f"prepared folder: {root / f['bin']} holds token id {top} (first at position {at}), "
                             f"outside the vocabulary of {vocab}; run `neuronspec data prepare` again")
