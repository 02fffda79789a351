"""Shared sentencepiece vocabulary with language tags.

One model for all languages, trained on a bounded sample of the training text.
Special ids are fixed: pad=0, bos=1, eos=2, unk=3; the language tags ``<2xx>``
are user-defined symbols right after them (ids 4, 5, ... in the order given).

Normalisation is the identity (no NFKC, whitespace kept as is), so text such as
CLDR dates with U+202F (narrow no-break space) or U+200F (right-to-left mark)
survives ``decode(encode(s)) == s``; ``byte_fallback`` spells characters the
model never saw as UTF-8 bytes instead of ``<unk>``.

A model trained with ``placeholders=True`` also has the slot pieces ``<ph1>`` ... of
``placeholders.py``: ``encode`` then protects a line's placeholders (``%(name)s``, ``{0}``,
tags) as slots, and ``decode(ids, source=...)`` puts the source's placeholders back. One
trained with ``code_identifiers=True`` as well has the code-identifier slots ``<id1>`` ...
and protects identifiers such as ``source_suffix`` or ``--full`` the same way.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

from neuronspec.atomic import write_atomic
from neuronspec.data.placeholders import CODE_PIECES, SLOT_PIECES, protect, restore
from neuronspec.checks import check_int

PAD, BOS, EOS, UNK = 0, 1, 2, 3
_TAG_RE = re.compile(r"^<2(.+)>$")


def lang_tag_piece(lang: str) -> str:
    """The tag piece of a language: ``"de" -> "<2de>"``."""
    return f"<2{lang}>"


class Tokenizer:
    """Thin wrapper over a ``SentencePieceProcessor`` with language-tag helpers."""

    pad = PAD
    bos = BOS
    eos = EOS
    unk = UNK

    def __init__(self, processor: spm.SentencePieceProcessor, path: str | None = None):
        self.sp = processor
        self.path = path
        if (processor.pad_id(), processor.bos_id(), processor.eos_id(), processor.unk_id()) != (PAD, BOS, EOS, UNK):
            raise ValueError(
                "tokenizer: model must use pad=0, bos=1, eos=2, unk=3, got "
                f"pad={processor.pad_id()} bos={processor.bos_id()} eos={processor.eos_id()} unk={processor.unk_id()}"
            )
        self._tags: dict[str, int] = {}
        for i in range(processor.get_piece_size()):
            m = _TAG_RE.match(processor.id_to_piece(i))
            if m and not processor.is_byte(i):
                self._tags[m.group(1)] = i
        self._strip = set(self._tags.values()) | {PAD, BOS, EOS}
        self.protects = all(processor.piece_to_id(p) != UNK for p in SLOT_PIECES)
        self.protects_code = all(processor.piece_to_id(p) != UNK for p in CODE_PIECES)

    # ---------------------------------------------------------------- creation
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        model_prefix: str | os.PathLike,
        vocab_size: int,
        langs: Sequence[str],
        *,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
        byte_fallback: bool = True,
        split_digits: bool = True,
        placeholders: bool = False,
        code_identifiers: bool = False,
        num_threads: int = 2,
    ) -> "Tokenizer":
        """Train on ``texts`` (already a bounded sample) and write ``{model_prefix}.model``.

        ``placeholders``: add the slot pieces and train on protected text (see module
        docstring); ``code_identifiers``: also the code-identifier slots (needs ``placeholders``).

        ``vocab_size`` is a soft limit (``hard_vocab_limit=False``): on a tiny corpus the
        model may come out smaller; ``len(tok)`` gives the real size. The model file is
        written atomically.
        """
        check_int("vocab_size", vocab_size, 8)
        if not 0.0 < character_coverage <= 1.0:
            raise ValueError(f"character_coverage: must be in (0, 1], got {character_coverage}")
        langs = list(langs)
        if len(set(langs)) != len(langs):
            raise ValueError(f"langs: duplicate language codes in {langs}")
        if code_identifiers and not placeholders:
            raise ValueError("code_identifiers: code-identifier slots need placeholders=True")
        texts = [protect(t, code_identifiers) if placeholders else t for t in texts if t.strip()]
        if not texts:
            raise ValueError("texts: no non-empty sentence to train the tokenizer on")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=model,
                vocab_size=vocab_size,
                hard_vocab_limit=False,
                model_type=model_type,
                character_coverage=character_coverage,
                byte_fallback=byte_fallback,
                split_digits=split_digits,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                user_defined_symbols=[lang_tag_piece(l) for l in langs] + (SLOT_PIECES if placeholders else [])
                + (CODE_PIECES if code_identifiers else []),
                pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK,
                pad_piece="<pad>", bos_piece="<s>", eos_piece="</s>", unk_piece="<unk>",
                input_sentence_size=0,
                num_threads=num_threads,
                minloglevel=2,
            )
        except RuntimeError as e:  # e.g. vocab smaller than the required characters
            raise ValueError(f"vocab_size: sentencepiece training failed with vocab_size={vocab_size}: {e}") from None
        path = Path(f"{os.fspath(model_prefix)}.model")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, model.getvalue())
        return cls.load(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load ``path`` (a ``.model`` file, or its prefix)."""
        p = Path(path)
        if not p.is_file() and Path(f"{p}.model").is_file():
            p = Path(f"{p}.model")
        if not p.is_file():
            raise ValueError(f"path: sentencepiece model {os.fspath(path)!r} not found")
        return cls.from_bytes(p.read_bytes(), str(p))

    @classmethod
    def from_bytes(cls, model: bytes, path: str) -> "Tokenizer":
        """A model from the contents of its ``.model`` file (``path`` names it in errors)."""
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"path: {path} is not a sentencepiece model ({str(e).splitlines()[0]})") from None
        return cls(sp, path)

    # ------------------------------------------------------------------- usage
    def __len__(self) -> int:
        return self.sp.get_piece_size()

    @property
    def langs(self) -> list[str]:
        """Languages that have a tag, in id order."""
        return sorted(self._tags, key=self._tags.get)

    def lang_tag(self, lang: str) -> int:
        """Id of the tag ``<2lang>``; ValueError if the model has none."""
        try:
            return self._tags[lang]
        except KeyError:
            raise ValueError(f"lang: no tag <2{lang}> in the vocabulary (languages: {self.langs})") from None

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (no tags, no bos/eos; placeholders and code identifiers as slots if
        the model has them)."""
        return self.sp.encode(protect(text, self.protects_code) if self.protects else text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """``encode`` over a list (sentencepiece's batched path)."""
        if self.protects:
            texts = [protect(t, self.protects_code) for t in texts]
        return self.sp.encode(texts, num_threads=num_threads)

    def decode(self, ids: Iterable[int], source: str | None = None) -> str:
        """Text of ``ids``; pad/bos/eos and language tags are dropped. ``source``: the line
        ``ids`` translate, whose placeholders and identifiers replace the slot pieces (kept as
        ``<phK>`` text without it)."""
        text = self.sp.decode([int(i) for i in ids if int(i) not in self._strip])
        return restore(text, source) if self.protects and source is not None else text

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))
