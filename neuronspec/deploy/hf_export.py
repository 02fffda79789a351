"""Native checkpoint → Hugging Face `M2M100ForConditionalGeneration` folder
(`neuronspec export --format hf`).

    neuronspec export --checkpoint C --format hf --out D                    # dense
    neuronspec export --checkpoint C --format hf --direction en-de --out D  # pruned (prune.py)

The native model is fairseq's pre-norm transformer, which is M2M100's layout; the weights map
one to one (``self_attn_norm`` → ``self_attn_layer_norm``, ``cross_attn`` → ``encoder_attn``,
``ffn_norm`` → ``final_layer_norm``, ``fc1``/``fc2`` unchanged, final norms → ``layer_norm``,
embeddings shared and tied to the output). A pruned export pads each stack's FFNs to its widest
layer (``encoder_ffn_dim``, ``decoder_ffn_dim``). What differs from a hub M2M100 folder:

* positions: M2M100 numbers positions from ``pad_token_id + 1``; neuronspec from 0. The config
  therefore has ``pad_token_id = -1`` (positions then start at 0, exactly as in neuronspec),
  while the tokenizer and ``generation_config`` pad with id 0. Train it with explicit
  ``decoder_input_ids`` (the -100 → pad fill of ``labels`` would write -1).
* language tags are neuronspec's ``<2xx>`` pieces inside the sentencepiece vocabulary, not
  M2M100's ``__xx__`` ids: the folder's tokenizer is a `tokenizers` unigram model holding the
  sentencepiece model's pieces and scores (ids equal sentencepiece's, byte fallback kept, tags as
  special tokens), not `M2M100Tokenizer`. With the default tag layout (target tag first in the
  decoder) a line is ``tokenizer(line)`` and decoding starts from the target tag:
  ``generate(..., decoder_start_token_id=tag_id)``; `translate_hf` does this.
* placeholders (``%(name)s``, ``{0}``, markup) are protected by neuronspec's tokenizer, not by
  this one: for a model trained with placeholder slots, encode
  ``neuronspec.data.placeholders.protect(line)`` and ``restore(hypothesis, line)`` afterwards
  (`translate_hf` does).

``neuronspec_export.json`` in the folder records the source checkpoint (path, checksum), the tag
layout, the tag ids and, for a pruned export, the direction and the neurons kept per layer.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from ..atomic import built_folder, strict_json, write_atomic
from ..data.batching import tag_layout, tag_options
from ..data.corpus import as_direction, direction_name
from ..data.placeholders import protect, restore
from ..nmt.decode import direction_tasks
from ..nmt.evaluate import load_for_decoding
from .native import check_deployable, kept_neurons, prune_model
from .outdir import check_out
from .prune import WIDTH_MULTIPLE, padded_width

RECORD = "neuronspec_export.json"
_LAYER_NAMES = {"self_attn_norm": "self_attn_layer_norm", "cross_attn_norm": "encoder_attn_layer_norm",
                "cross_attn": "encoder_attn", "ffn_norm": "final_layer_norm", "ffn": ""}


def hf_tokenizer(tok):
    """A `transformers` fast tokenizer with the ids of neuronspec's ``tok`` (module docstring):
    ``tokenizer(line).input_ids == tok.sp.encode(line) + [eos]``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    sp = tok.sp
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    t = Tokenizer(models.Unigram(pieces, unk_id=tok.unk, byte_fallback=True))
    # sentencepiece with identity normalisation: a dummy "▁" prefix, spaces as "▁", nothing else
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    eos = sp.id_to_piece(tok.eos)
    t.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, tok.eos)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=t, bos_token=sp.id_to_piece(tok.bos), eos_token=eos, unk_token=sp.id_to_piece(tok.unk),
        pad_token=sp.id_to_piece(tok.pad), additional_special_tokens=[sp.id_to_piece(i) for i in tok._tags.values()])


def _hf_state(model, stack_width: dict[str, int]) -> dict[str, torch.Tensor]:
    """M2M100ForConditionalGeneration's state dict from a native (dense, possibly per-layer
    width) model; FFNs zero-padded to ``stack_width[side]``."""
    state = {"model.shared.weight": model.embed.weight.detach()}
    for side in ("encoder", "decoder"):
        stack = getattr(model, side)
        state[f"model.{side}.layer_norm.weight"] = stack.norm.weight.detach()
        state[f"model.{side}.layer_norm.bias"] = stack.norm.bias.detach()
        for i, layer in enumerate(stack.layers):
            for key, value in layer.state_dict().items():
                part, rest = key.split(".", 1)
                part = _LAYER_NAMES.get(part, part)
                name = f"model.{side}.layers.{i}.{part + '.' if part else ''}{rest}"
                state[name] = _pad_ffn(rest, value, stack_width[side]) if part == "" else value
    return state


def _pad_ffn(name: str, value: torch.Tensor, width: int) -> torch.Tensor:
    """fc1.weight [w, d] / fc1.bias [w] / fc2.weight [d, w] zero-padded to width (fc2.bias as is)."""
    if name == "fc2.bias":
        return value
    dim = 1 if name == "fc2.weight" else 0
    pad = width - value.shape[dim]
    return torch.cat([value, value.new_zeros(*(value.shape[:dim] + (pad,) + value.shape[dim + 1:]))], dim)


def to_hf(model):
    """(M2M100ForConditionalGeneration in eval mode, its FFN width per stack) equal to the
    native dense ``model`` (module docstring)."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    check_deployable(model)
    cfg = model.cfg
    if model.masks():
        raise ValueError("model: has masks; export a direction's pruned model (prune_model) or the dense model")
    if cfg.positions != "sinusoidal":
        raise ValueError(f"model: positions {cfg.positions!r} have no M2M100 equivalent (sinusoidal only)")
    widths = {side: padded_width(layer.ffn.fc1.out_features for layer in getattr(model, side).layers)
              for side in ("encoder", "decoder")}
    config = M2M100Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=widths["encoder"], decoder_ffn_dim=widths["decoder"], activation_function=cfg.activation,
        max_position_embeddings=cfg.max_positions, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
        activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0, scale_embedding=True,
        pad_token_id=-1, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2, tie_word_embeddings=True)
    hf = M2M100ForConditionalGeneration(config)
    result = hf.load_state_dict(_hf_state(model, widths), strict=False)
    tied = {"lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise RuntimeError(f"M2M100 weights do not match the native model: missing {result.missing_keys[:4]}, "
                           f"unexpected {result.unexpected_keys[:4]}")
    return hf.eval(), widths


def export_hf_folder(checkpoint: str | os.PathLike, out: str | os.PathLike, direction=None,
                     data: str | os.PathLike | None = None, multiple: int = WIDTH_MULTIPLE) -> dict:
    """Write ``checkpoint`` (dense, or pruned for ``direction``, FFN widths rounded up to
    ``multiple``) as an M2M100 folder with its tokenizer to ``out`` (replaced atomically); returns
    the export record."""
    out = check_out(out, RECORD, [checkpoint, data])
    model, ck, pdata = load_for_decoding(checkpoint, data, "cpu")
    check_out(out, RECORD, [pdata.root])
    check_deployable(model)
    record = {"format": "neuronspec-hf/1",
              "source": {"checkpoint": os.path.abspath(checkpoint), "sha256": ck.get("sha256"), "step": ck.get("step")},
              **tag_options(ck.get("config")), "pad_token_id": pdata.tokenizer.pad,
              "tags": dict(sorted(pdata.tokenizer._tags.items())), "placeholders": pdata.tokenizer.protects,
              "code_identifiers": pdata.tokenizer.protects_code}
    if direction is not None:
        direction = as_direction(direction)
        if not model.masks():
            raise ValueError(f"direction: {os.fspath(checkpoint)} has no masks to prune for {direction_name(direction)}; "
                             "leave --direction out for the dense model")
        kept = kept_neurons(model, *direction_tasks(pdata, direction))
        model = prune_model(model, kept, per_layer=True, multiple=multiple)
        record.update(direction=direction_name(direction), width_multiple=multiple,
                      layers={n: {"kept": len(k), "neurons": k.tolist()} for n, k in kept.items()})
    elif model.masks():
        model.set_masks(None)
        record["dense_of_specialized"] = True
    hf, widths = to_hf(model)
    record["widths"] = widths
    record["parameters"] = sum(p.numel() for p in hf.parameters())
    with built_folder(out) as built:  # replaces out whole; removed on an error
        hf.generation_config.update(pad_token_id=pdata.tokenizer.pad, bos_token_id=pdata.tokenizer.bos,
                                    eos_token_id=pdata.tokenizer.eos, decoder_start_token_id=None,
                                    suppress_tokens=[pdata.tokenizer.pad, pdata.tokenizer.bos], min_new_tokens=1,
                                    num_beams=1, do_sample=False)
        hf.save_pretrained(built)
        hf_tokenizer(pdata.tokenizer).save_pretrained(built)
        write_atomic(built / RECORD, strict_json(record))
    return record


@torch.no_grad()
def generate_hf(model, tokenizer, record: dict, lines: Sequence[str], direction, *, beam: int = 1,
                max_len_a: float = 1.2, max_len_b: int = 10) -> list[list[int] | None]:
    """Token ids (without the start token and EOS; None for an empty line) of ``lines`` translated
    with an exported folder's model and tokenizer (``record``: its neuronspec_export.json) the way
    `neuronspec translate` decodes: same tag layout, placeholder slots, banned tokens (pad, bos;
    EOS first) and length limit ``max_len_a · source tokens + max_len_b``; one `generate` call a
    line (the limit is per line)."""
    s, t = as_direction(direction)
    tags = record["tags"]
    for lang in (s, t):
        if lang not in tags:
            raise ValueError(f"direction: language {lang!r} has no tag in this model ({sorted(tags)})")
    prefix, start = tag_layout(_Tags(tags), (s, t), record["source_tag"], record["target_tag"])
    eos = model.generation_config.eos_token_id
    out = []
    for line in lines:
        if not line.strip():
            out.append(None)
            continue
        text = protect(line, record["code_identifiers"]) if record["placeholders"] else line
        ids = torch.tensor([prefix + tokenizer(text).input_ids])
        max_len = min(int(max_len_a * ids.shape[1] + max_len_b), model.config.max_position_embeddings - 1)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_start_token_id=start,
                             max_new_tokens=max(max_len, 1), num_beams=beam, do_sample=False)[0, 1:].tolist()
        out.append(gen[:gen.index(eos)] if eos in gen else gen)
    return out


def translate_hf(model, tokenizer, record: dict, lines: Sequence[str], direction, **kw) -> list[str]:
    """`generate_hf`'s translations as text, placeholders restored from each source line. A run of
    byte pieces that is not valid UTF-8 decodes to one U+FFFD per piece here, while sentencepiece
    keeps its valid bytes: only such lines can read differently from `neuronspec translate`."""
    out = []
    for line, ids in zip(lines, generate_hf(model, tokenizer, record, lines, direction, **kw)):
        hyp = "" if ids is None else tokenizer.decode(ids, skip_special_tokens=True)
        out.append(restore(hyp, line) if record["placeholders"] and ids is not None else hyp)
    return out


class _Tags:
    """The tag ids of a record, in the interface `tag_layout` reads."""

    bos = 1

    def __init__(self, tags: dict[str, int]):
        self.tags = tags

    def lang_tag(self, lang: str) -> int:
        return self.tags[lang]
