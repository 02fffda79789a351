"""A tiny random M2M100 model and a real M2M100 tokenizer built offline (nothing downloaded),
for the example, the tests and the benchmark (docs/design.md §9).

The tokenizer is `M2M100Tokenizer` over a sentencepiece model trained here on the given text,
so language codes work as in `facebook/m2m100_418M` ('en' → `__en__`); the model has random
weights and the tokenizer's vocabulary size.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Sequence

import sentencepiece as spm
import torch

from neuronspec.atomic import write_atomic

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's first four ids, as M2M100 expects


def tiny_tokenizer(folder: str | os.PathLike, lines: Sequence[str], vocab_size: int = 200):
    """M2M100Tokenizer with a sentencepiece model trained on `lines`, files in `folder`."""
    # transformers is the optional extra neuronspec[hf]: imported only here
    from transformers import M2M100Tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
                                   normalization_rule_name="identity", minloglevel=2)
    (folder / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    write_atomic(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    return M2M100Tokenizer(str(folder / "vocab.json"), str(folder / "sentencepiece.bpe.model"))


def tiny_m2m100(tokenizer, d_model: int = 32, ffn: int = 128, layers: int = 2, seed: int = 0, init_std: float = 0.02):
    """A random M2M100ForConditionalGeneration sized for M2M100Tokenizer `tokenizer` (ReLU FFNs, no
    dropout; weights drawn with std `init_std`: larger values give less repetitive random output)."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration  # optional extra, as above

    torch.manual_seed(seed)
    # language tokens come after the sentencepiece ids, then fairseq's "made-up words"
    vocab_size = max(tokenizer.lang_code_to_id.values()) + 1 + tokenizer.num_madeup_words
    config = M2M100Config(
        vocab_size=vocab_size, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        max_position_embeddings=256, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id, init_std=init_std)
    return M2M100ForConditionalGeneration(config).eval()


def write_parallel(folder: str | os.PathLike, split: str, pairs: dict[str, tuple[list[str], list[str]]]) -> None:
    """{'en-de': (en lines, de lines)} → `{split}.en-de.en` and `.de` in `folder` (corpus layout)."""
    for name, (a_lines, b_lines) in pairs.items():
        a, b = name.split("-")
        write_atomic(Path(folder) / f"{split}.{name}.{a}", "\n".join(a_lines) + "\n")
        write_atomic(Path(folder) / f"{split}.{name}.{b}", "\n".join(b_lines) + "\n")
