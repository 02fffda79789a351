"""CTranslate2 engine for native checkpoints: `neuronspec translate --engine ctranslate2`
(the optional extra ``pip install -e ".[deploy]"``).

The checkpoint is converted once and cached beside it, in ``<checkpoint>.ct2/<key>/`` (key
``dense``, or the direction for a specialized checkpoint, whose direction is pruned first:
`neuronspec.deploy.native`), with ``source.json`` holding the checkpoint's checksum; a
checkpoint that changed is converted again. The conversion goes through the M2M100 layout of
`hf_export` (CTranslate2's own M2M100 reader numbers positions from 2; ours start at 0, so the
position table is set here) and keeps every FFN at its own width (CTranslate2 reads each
layer's weights: no common width needed), rounded up with zero neurons to a multiple of
``WIDTH_MULTIPLE`` (16: measured no slower and mostly faster than the odd kept counts,
benchmarks/results/cpu/translate/README.md). Decoding: the tag layout of
training, pad and bos banned, EOS not first, at most ``1.2 · source tokens + 10`` tokens a line
(decoded to the batch's longest limit, then cut to the line's: exact for greedy search; a beam
that reaches the limit can differ from the torch engine's, which ends it there). Weights are
stored in float32; ``compute_type`` (``int8``, ``int8_float32``, ``float32``, ...) is applied
when the model is loaded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..atomic import built_folder, write_atomic
from ..data.corpus import as_direction, direction_name
from ..nmt.decode import direction_tasks
from .hf_export import hf_tokenizer, to_hf
from .native import check_deployable, kept_neurons, prune_model
from .prune import WIDTH_MULTIPLE

SOURCE = "source.json"


def _require():
    try:
        import ctranslate2
    except ImportError:
        raise ValueError("engine: ctranslate2 is not installed; pip install -e '.[deploy]' "
                         "(or pip install ctranslate2)") from None
    return ctranslate2


def _loader():
    from ctranslate2.converters.transformers import M2M100Loader

    class Loader(M2M100Loader):
        """M2M100 with neuronspec's positions (from 0) and decoding started by the target tag."""

        def set_position_encodings(self, spec, module):
            spec.encodings = module.weights[: module.num_positions]

        def set_config(self, config, model, tokenizer):
            super().set_config(config, model, tokenizer)
            config.decoder_start_token = None  # the first target_prefix token (the tag) starts decoding

    return Loader()


def _per_layer_widths(hf, model) -> None:
    """Give every FFN of ``hf`` its native layer's own width (``to_hf`` pads them per stack)."""
    for side in ("encoder", "decoder"):
        for layer, native in zip(getattr(hf.model, side).layers, getattr(model, side).layers):
            for name in ("fc1", "fc2"):
                src = getattr(native.ffn, name)
                lin = nn.Linear(src.in_features, src.out_features)
                lin.load_state_dict(src.state_dict())
                setattr(layer, name, lin)


def convert(model, tokenizer, out: str | os.PathLike, source: dict | None = None) -> Path:
    """Write the dense native ``model`` (FFNs of any per-layer widths) with ``tokenizer`` (the
    native one) as a CTranslate2 model folder ``out`` (replaced atomically)."""
    _require()
    hf, _ = to_hf(model)
    _per_layer_widths(hf, model)
    spec = _loader()(hf, hf_tokenizer(tokenizer))
    spec.validate()
    spec.optimize(quantization=None)
    out = Path(out)
    with built_folder(out) as built:  # replaces out whole; removed on an error
        spec.save(str(built))
        write_atomic(built / SOURCE, json.dumps(source or {}, indent=1))
    return out


def cached_model(checkpoint: str | os.PathLike, model, ck: dict, pdata, direction,
                 multiple: int = WIDTH_MULTIPLE) -> Path:
    """The CTranslate2 folder of ``checkpoint`` (loaded as ``model``, ``ck``, ``pdata``) for
    ``direction`` (pruned FFN widths rounded up to ``multiple``), converted now unless the cache
    already holds this checkpoint's."""
    check_deployable(model)
    direction = as_direction(direction)
    key = direction_name(direction) if model.masks() else "dense"
    out = Path(f"{os.fspath(checkpoint)}.ct2") / key
    source = {"checkpoint": os.path.abspath(checkpoint), "sha256": ck.get("sha256"), "key": key,
              **({"width_multiple": multiple} if model.masks() else {})}
    try:
        if json.loads((out / SOURCE).read_text()) == source and (out / "model.bin").is_file():
            return out
    except (OSError, ValueError):
        pass
    if model.masks():
        model = prune_model(model, kept_neurons(model, *direction_tasks(pdata, direction)), per_layer=True,
                            multiple=multiple)
    return convert(model.cpu(), pdata.tokenizer, out, source)


def translate_ct2(path: str | os.PathLike, tok, lines: Sequence[str], direction, *, beam: int = 5,
                  lenpen: float = 1.0, max_tokens: int = 4000, max_positions: int = 1024, source_tag: bool = False,
                  target_tag: str = "decoder", device: str = "cpu", compute_type: str = "default",
                  threads: int = 0, translator=None) -> list[str]:
    """Translations of ``lines`` with the CTranslate2 folder ``path`` (or a loaded ``translator``)
    and the native tokenizer ``tok``, batched as `translate_lines` batches (≤ ``max_tokens``
    padded source tokens). Empty lines stay empty."""
    from ..nmt.translate import encode_lines, text_batches

    ct2 = _require()
    if translator is None:
        translator = ct2.Translator(os.fspath(path), device=device, compute_type=compute_type,
                                    intra_threads=threads or torch.get_num_threads())
    direction = as_direction(direction)
    srcs, start = encode_lines(tok, lines, direction, source_tag, target_tag, max_positions)
    piece = tok.sp.id_to_piece
    banned = [[piece(tok.pad)], [piece(tok.bos)]]
    out = [""] * len(lines)
    for batch in text_batches(srcs, start, 0, max_tokens, tok.pad):
        rows = batch.ids.tolist()
        limits = {r: min(int(1.2 * len(srcs[r]) + 10), max_positions - 1) for r in rows}
        max_len = max(limits.values())
        res = translator.translate_batch(
            [[piece(i) for i in srcs[r]] for r in rows], target_prefix=[[piece(start)]] * len(rows),
            beam_size=beam, length_penalty=lenpen, max_decoding_length=max_len, min_decoding_length=1,
            suppress_sequences=banned, return_end_token=False)
        for r, hyp in zip(rows, res):
            ids = [tok.sp.piece_to_id(p) for p in hyp.hypotheses[0][:limits[r]]]  # the tag is not returned
            out[r] = tok.decode(ids, source=lines[r])
    return out
