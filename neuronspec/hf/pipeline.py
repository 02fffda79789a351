"""The study on a pretrained encoder-decoder `transformers` model (docs/design.md §9): record
activation counts per direction from parallel text files, continue training with masks, and
translate with masks applied by direction.

Text files use the corpus layout (docs/design.md §5): `{split}.{a}-{b}.{a}` and `.{b}` in one
folder, either order of the pair. Directions are named with the files' language names
(`en-de`); the model's own codes are used for tokenization and decoding:
    M2M100          codes as given ('en' → `__en__`), `tokenizer.src_lang`/`tgt_lang`
    NLLB, mBART-50  codes are tokens (`eng_Latn`, `en_XX`): map file names with lang_codes,
                    e.g. {"en": "eng_Latn", "de": "deu_Latn"}
    Marian          multilingual targets as `>>de<<` source prefixes when the vocabulary has
                    them; a single-pair model takes the direction's names as they are
Counts are written in `neuronspec record`'s format, so `neuronspec select` and `analyze` read
them unchanged; masks are saved beside the model (`neuronspec_masks.pt`).
"""
from __future__ import annotations

import json
import logging
import os
import random
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import torch

from neuronspec.atomic import write_atomic
from neuronspec.data.corpus import as_direction, direction_name, iter_lines
from neuronspec.checks import check_int
from neuronspec.files import save_file
from neuronspec.ops import load_layer_masks, save_layer_masks
from neuronspec.specialization.record import FORMAT, VERSION

from .marker import warn_on_plain_load
from .wrap import MASKS_FILE, Specialization, wrap

log = logging.getLogger(__name__)


def load_pretrained(name_or_path: str, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, tokenizer) of an encoder-decoder checkpoint (a hub name
    or a folder written by save_pretrained)."""
    # transformers is the optional extra neuronspec[hf]: imported only when a model is loaded
    import transformers

    config = transformers.AutoConfig.from_pretrained(name_or_path)
    warn_on_plain_load()
    if not config.is_encoder_decoder:
        raise ValueError(f"model: {name_or_path!r} ({config.model_type}) is decoder-only; the hf record/specialize/"
                         "translate pipeline handles encoder-decoder models (wrap decoder-only models with "
                         "neuronspec.hf.wrap directly)")
    with warnings.catch_warnings():  # a specialized folder loads dense here: the pipeline applies its masks
        warnings.filterwarnings("ignore", message="neuronspec: .* as a dense model")
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(name_or_path).to(device).eval()
    return model, transformers.AutoTokenizer.from_pretrained(name_or_path)


def parse_lang_codes(text: str | None) -> dict[str, str]:
    """'en=eng_Latn,de=deu_Latn' → {"en": "eng_Latn", "de": "deu_Latn"} (None or '' → {})."""
    out: dict[str, str] = {}
    for item in filter(None, (text or "").split(",")):
        name, sep, code = item.partition("=")
        if not sep or not name.strip() or not code.strip():
            raise ValueError(f"lang-codes: expected NAME=CODE items separated by commas, got {item!r}")
        out[name.strip()] = code.strip()
    return out


class LanguageCodes:
    """The tokenizer's language-code convention (module docstring) for file language names."""

    def __init__(self, tokenizer, mapping: Mapping[str, str] | None = None):
        self.tokenizer, self.mapping = tokenizer, dict(mapping or {})
        vocab = tokenizer.get_vocab()
        if hasattr(tokenizer, "lang_code_to_token") and hasattr(tokenizer, "get_lang_id"):
            self.kind = "m2m100"
        elif hasattr(tokenizer, "src_lang"):
            self.kind = "token"
        elif any(t.startswith(">>") and t.endswith("<<") for t in vocab):
            self.kind = "marian"
        else:
            self.kind = "none"
        self._vocab = vocab

    def code(self, lang: str, direction: str) -> str | None:
        """The model's code of file language `lang` (checked), or None if the model has none."""
        code = self.mapping.get(lang, lang)
        known = {"m2m100": lambda c: c in self.tokenizer.lang_code_to_token,
                 "token": lambda c: c in self._vocab,
                 "marian": lambda c: f">>{c}<<" in self._vocab}.get(self.kind)
        if known is None:
            return None
        if not known(code):
            hint = "" if code != lang else " (map file names to codes with lang_codes / --lang-codes en=eng_Latn,...)"
            raise ValueError(f"lang-codes: {code!r} of direction {direction} is not a language code of "
                             f"{type(self.tokenizer).__name__}{hint}")
        return code

    def check(self, directions: Sequence[str]) -> None:
        for d in directions:
            s, t = as_direction(d)
            if self.kind != "marian":
                self.code(s, d)
            self.code(t, d)

    def encode(self, direction: str, src: Sequence[str], tgt: Sequence[str] | None = None,
               max_length: int = 256) -> dict:
        """Model inputs: input_ids, attention_mask [B, S] (and labels [B, L], padding -100)."""
        s, t = as_direction(direction)
        tok = self.tokenizer
        if self.kind in ("m2m100", "token"):
            tok.src_lang, tok.tgt_lang = self.code(s, direction), self.code(t, direction)
        elif self.kind == "marian":
            src = [f">>{self.code(t, direction)}<< {line}" for line in src]
        enc = tok(list(src), text_target=None if tgt is None else list(tgt), padding=True, truncation=True,
                  max_length=max_length, return_tensors="pt")
        out = dict(enc)
        if "labels" in out:
            out["labels"] = out["labels"].masked_fill(out["labels"] == tok.pad_token_id, -100)
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Generated ids [B, L] → text, special tokens and language tokens dropped."""
        drop = set(self.tokenizer.lang_code_to_id.values()) if self.kind == "m2m100" else set()
        return [self.tokenizer.decode([i for i in row if i not in drop], skip_special_tokens=True)
                for row in ids.tolist()]

    def forced_bos(self, direction: str) -> int | None:
        """The first generated token that names the target language (M2M100, NLLB, mBART-50)."""
        t = as_direction(direction)[1]
        if self.kind == "m2m100":
            return self.tokenizer.get_lang_id(self.code(t, direction))
        if self.kind == "token":
            return self.tokenizer.convert_tokens_to_ids(self.code(t, direction))
        return None


def read_pairs(data: str | os.PathLike, split: str, direction: str,
               max_sentences: int | None = None) -> tuple[list[str], list[str]]:
    """(source lines, target lines) of `direction` from `{split}.{a}-{b}.{lang}` in `data`."""
    s, t = as_direction(direction)
    folder = Path(data)
    for a, b in ((s, t), (t, s)):
        src, tgt = folder / f"{split}.{a}-{b}.{s}", folder / f"{split}.{a}-{b}.{t}"
        if src.is_file() and tgt.is_file():
            break
    else:
        raise ValueError(f"data: no files {split}.{s}-{t}.{{{s},{t}}} (or {split}.{t}-{s}.*) in {os.fspath(data)!r}")
    src_lines, tgt_lines = list(iter_lines(src)), list(iter_lines(tgt))
    if len(src_lines) != len(tgt_lines):
        raise ValueError(f"data: {src.name} has {len(src_lines)} lines but {tgt.name} has {len(tgt_lines)}")
    if not src_lines:
        raise ValueError(f"data: {src.name} is empty")
    n = len(src_lines) if max_sentences is None else min(max_sentences, len(src_lines))
    return src_lines[:n], tgt_lines[:n]


def _check_directions(directions: Sequence[str]) -> list[str]:
    if isinstance(directions, str) or not directions:
        raise ValueError(f"directions: expected a non-empty list like ['en-de', 'de-en'], got {directions!r}")
    return [direction_name(d) for d in directions]



@torch.no_grad()
def record(model, tokenizer, data: str | os.PathLike, directions: Sequence[str], out: str | os.PathLike | None = None,
           *, split: str = "valid", max_sentences: int | None = 1000, batch_size: int = 16, max_length: int = 256,
           lang_codes: Mapping[str, str] | None = None, pivot: str = "en", source: str = "") -> dict:
    """Count FFN activations of the dense `model` per direction over `data` (teacher forced,
    padding excluded); save to `out` if given and return the counts dict (record.py's format)."""
    directions = _check_directions(directions)
    check_int("batch_size", batch_size, 1)
    if max_sentences is not None:
        check_int("max_sentences", max_sentences, 1)
    codes = LanguageCodes(tokenizer, lang_codes)
    codes.check(directions)
    pairs = {d: read_pairs(data, split, d, max_sentences) for d in directions}
    spec = wrap(model, directions)
    was_training = model.training
    model.eval()
    sentences = torch.zeros(len(directions), dtype=torch.long)
    try:
        with spec.counting() as rec:
            for t, d in enumerate(directions):
                src, tgt = pairs[d]
                for i in range(0, len(src), batch_size):
                    inputs = codes.encode(d, src[i:i + batch_size], tgt[i:i + batch_size], max_length)
                    with spec.direction(t):
                        model(**{k: v.to(model.device) for k, v in inputs.items()})
                sentences[t] = len(src)
                log.info("recorded %s: %d sentences", d, len(src))
    finally:
        spec.unwrap()
        model.train(was_training)
    rec.update(format=FORMAT, version=VERSION, directions=directions, sentences=sentences, meta={
        "model": source, "model_type": model.config.model_type, "data": os.fspath(data), "split": split,
        "max_sentences": max_sentences, "pivot": pivot, "lang_codes": dict(lang_codes or {})})
    if out is not None:
        save_file(rec, out, "counts")
    return rec


def specialize(model, tokenizer, masks_path: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *,
               split: str = "train", steps: int = 100, batch_size: int = 8, lr: float = 1e-5,
               max_length: int = 256, max_sentences: int | None = None,
               lang_codes: Mapping[str, str] | None = None, seed: int = 0) -> list[float]:
    """Continue training `model` with the masks of `masks_path` (every direction uses only its
    own neurons): Adam (no weight decay, so rows no direction uses stay as they were), one direction per step in turn, `batch_size` pairs drawn at random from
    that direction's files. Saves the model and tokenizer (save_pretrained) and the masks
    (neuronspec_masks.pt, config marked: `neuronspec.hf.load(out)` reads it) to `out`; returns
    the loss of every step."""
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    masks, meta = load_layer_masks(masks_path)
    if not masks:
        raise ValueError(f"masks: {os.fspath(masks_path)!r} has no layers")
    directions = list(next(iter(masks.values())).names)
    codes = LanguageCodes(tokenizer, lang_codes)
    codes.check(directions)
    pairs = {d: read_pairs(data, split, d, max_sentences) for d in directions}
    spec = wrap(model, directions)
    model.train()  # before set_masks, which warns if the model's activation dropout would be lost
    spec.set_masks(masks)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)  # Adam, as the paper: masked rows stay
    losses = []
    try:
        for step in range(steps):
            t = step % len(directions)
            src, tgt = pairs[directions[t]]
            pick = [rng.randrange(len(src)) for _ in range(batch_size)]
            inputs = codes.encode(directions[t], [src[i] for i in pick], [tgt[i] for i in pick], max_length)
            with spec.direction(t):
                loss = model(**{k: v.to(model.device) for k, v in inputs.items()}).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if (step + 1) % max(steps // 10, 1) == 0:
                log.info("step %d/%d  %s  loss %.4f", step + 1, steps, directions[t], losses[-1])
        out = Path(out)
        spec.save_pretrained(out)  # config marked: neuronspec.hf.load(out) restores wrap and masks
    finally:
        spec.unwrap()
        model.eval()
    tokenizer.save_pretrained(out)
    save_layer_masks(masks, out / MASKS_FILE, {**meta, "directions": directions, "mask_bias": False,
                                               "specialized_from": os.fspath(masks_path)})
    write_atomic(out / "neuronspec_specialize.json", json.dumps(
        {"masks": os.fspath(masks_path), "data": os.fspath(data), "split": split, "steps": steps,
         "batch_size": batch_size, "lr": lr, "seed": seed, "losses": losses}, indent=1))
    return losses


def apply_masks(model, masks: str | os.PathLike | None, direction: str) -> Specialization:
    """Wrap `model` for `direction` with the masks of `masks` (a file or a folder holding
    neuronspec_masks.pt), or dense (masks None) with just that direction."""
    if masks is None:
        return wrap(model, [direction])
    path = Path(masks)
    path = path / MASKS_FILE if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"masks: no such file {os.fspath(path)!r}")
    layer_masks, _ = load_layer_masks(path)
    directions = list(next(iter(layer_masks.values())).names)
    if direction not in directions:
        raise ValueError(f"direction: {direction!r} has no masks in {os.fspath(path)!r} (it has {directions})")
    spec = wrap(model, directions)
    spec.set_masks(layer_masks)
    return spec


@torch.no_grad()
def translate(model, tokenizer, lines: Sequence[str], direction: str, *, masks: str | os.PathLike | None = None,
              beam: int = 4, max_new_tokens: int = 128, batch_size: int = 16, max_length: int = 256,
              lang_codes: Mapping[str, str] | None = None) -> list[str]:
    """Translate `lines` in `direction` with beam search, the model's FFNs masked by that
    direction's masks (none given: the dense model)."""
    direction = direction_name(direction)
    check_int("beam", beam, 1)
    check_int("batch_size", batch_size, 1)
    codes = LanguageCodes(tokenizer, lang_codes)
    codes.check([direction])
    spec = apply_masks(model, masks, direction)
    model.eval()
    out: list[str] = []
    try:
        with spec.direction(direction):
            for i in range(0, len(lines), batch_size):
                inputs = codes.encode(direction, lines[i:i + batch_size], None, max_length)
                ids = model.generate(**{k: v.to(model.device) for k, v in inputs.items()}, num_beams=beam,
                                     max_new_tokens=max_new_tokens, forced_bos_token_id=codes.forced_bos(direction))
                out += codes.decode(ids)
    finally:
        spec.unwrap()
    return out
