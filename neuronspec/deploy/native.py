"""Pruned export of a native checkpoint: one direction, only its neurons (`neuronspec export`).

    neuronspec export --checkpoint runs/spec/checkpoint_best.pt --direction en-de --out runs/en-de

writes the folder ``D``::

    D/checkpoint.pt   a neuronspec checkpoint of the dense pruned model (no masks): every FFN
                      padded to the widest layer (the model config holds one d_ff), so
                      `neuronspec translate` / `evaluate` run it unchanged
    D/data/           its tokenizer (spm.model) and a meta.json naming only this direction
    D/export.json     what it was cut from: source path and checksum, direction, the kept
                      neurons of every layer, parameter counts (padded and per-layer widths)

:func:`load_pruned` rebuilds the model with each FFN at its own width (the padding removed).
A zero-shot direction x→y (not trained) keeps x→pivot's encoder neurons and pivot→y's decoder
neurons, as `translate` decodes it.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import torch

from ..atomic import built_folder, strict_json, write_atomic
from ..data.binarize import TOKENIZER_FILE
from ..data.corpus import META_FILE, as_direction, direction_name
from ..nmt.checkpoint import load_model, save_checkpoint
from ..nmt.decode import direction_tasks
from ..nmt.evaluate import load_for_decoding
from ..nmt.model import Transformer
from ..ops import SpecializedFFN
from .outdir import check_out
from .prune import WIDTH_MULTIPLE, padded_width, prune_ffn, round_width

CHECKPOINT, RECORD, DATA = "checkpoint.pt", "export.json", "data"


def check_deployable(model: Transformer) -> None:
    """ValueError for a model with parts that no export carries: the study's adapters and LaSS
    element masks (every export maps the plain Transformer's weights and FFN neuron masks only, so
    it would drop them and translate differently without a word)."""
    cfg = model.cfg
    use = "translate it with the PyTorch engine (neuronspec translate / evaluate)"
    if cfg.adapter_kind:
        raise ValueError(f"checkpoint: has {cfg.adapter_kind!r} adapters (neuronspec study's adapter arm), which "
                         f"the pruned, Hugging Face and CTranslate2 exports do not carry; {use}")
    if cfg.lass_tasks:
        raise ValueError(f"checkpoint: has LaSS element masks for {cfg.lass_tasks} directions (neuronspec study's "
                         f"lass arm), which the pruned, Hugging Face and CTranslate2 exports do not carry; {use}")


def kept_neurons(model: Transformer, encoder_task: int, decoder_task: int | None = None) -> "OrderedDict":
    """``{layer: int64 [k]}`` the sorted neurons each FFN keeps for a direction (every neuron of
    a layer without masks); decoder layers use ``decoder_task`` when given."""
    out = OrderedDict()
    for name, ffn in model.ffn_layers().items():
        task = decoder_task if decoder_task is not None and name.startswith("decoder.") else encoder_task
        f = ffn.fc1.out_features
        out[name] = torch.arange(f) if ffn.masks is None else ffn.masks.active(task).long().cpu()
    return out


def _set_ffn(model: Transformer, name: str, ffn: SpecializedFFN) -> None:
    side, _, i, _ = name.split(".")
    getattr(model, side).layers[int(i)].ffn = ffn


def prune_model(model: Transformer, kept: "OrderedDict", per_layer: bool = False, multiple: int = 1) -> Transformer:
    """A dense copy of ``model`` (no masks) whose FFN ``name`` keeps only ``kept[name]``, with the
    inactive neurons' constant output folded into fc2's bias: it equals ``model`` run with the
    direction's masks. FFNs are padded to the widest layer, or ``per_layer`` each at its own width;
    widths are rounded up to a multiple of ``multiple`` (zero neurons, exact; at most d_ff)."""
    cfg = model.cfg
    width = padded_width((len(k) for k in kept.values()), multiple, cfg.d_ff)
    new = Transformer(replace(cfg, d_ff=width, mask_bias=False)).to(model.embed.weight.device)
    state = {k: v for k, v in model.state_dict().items() if ".ffn." not in k}
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not unexpected and all(".ffn." in k for k in missing), (missing, unexpected)
    for name, ffn in model.ffn_layers().items():
        keep = kept[name]
        w = round_width(max(len(keep), 1), multiple, cfg.d_ff) if per_layer else width
        w1, b1, w2, b2 = prune_ffn(ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias, keep,
                                   ffn.activation, mask_bias=ffn.mask_bias, width=w)
        out = SpecializedFFN(cfg.d_model, w, activation=ffn.activation).to(w1.device)
        with torch.no_grad():
            for p, v in ((out.fc1.weight, w1), (out.fc1.bias, b1), (out.fc2.weight, w2), (out.fc2.bias, b2)):
                p.copy_(v)
        _set_ffn(new, name, out)
    return new.eval()


def _parameters(cfg, widths) -> int:
    """Parameters of the model ``cfg`` with FFN widths ``widths`` (one per layer)."""
    ffn = sum(2 * cfg.d_model * w + w + cfg.d_model for w in widths)
    dense_ffn = (cfg.encoder_layers + cfg.decoder_layers) * (2 * cfg.d_model * cfg.d_ff + cfg.d_ff + cfg.d_model)
    return _count(cfg) - dense_ffn + ffn


def _count(cfg) -> int:
    with torch.device("meta"):
        return Transformer(cfg).num_parameters()


def export_native(checkpoint: str | os.PathLike, direction, out: str | os.PathLike,
                  data: str | os.PathLike | None = None, multiple: int = WIDTH_MULTIPLE) -> dict:
    """Write the pruned export of ``direction`` of ``checkpoint`` to the folder ``out`` (module
    docstring; replaced as a whole, atomically; the padded width rounded up to ``multiple``) and
    return its record."""
    out = check_out(out, RECORD, [checkpoint, data])
    direction = as_direction(direction)
    model, ck, pdata = load_for_decoding(checkpoint, data, "cpu")
    check_out(out, RECORD, [pdata.root])
    check_deployable(model)
    if not model.masks():
        raise ValueError(f"checkpoint: {os.fspath(checkpoint)} has no masks; a dense model has nothing to prune "
                         "(export a specialized checkpoint, or use --format hf for the dense model)")
    enc_task, dec_task = direction_tasks(pdata, direction)
    kept = kept_neurons(model, enc_task, dec_task)
    pruned = prune_model(model, kept, multiple=multiple)
    cfg = model.cfg
    record = {
        "format": "neuronspec-pruned/1",
        "direction": direction_name(direction),
        "tasks": {"encoder": direction_name(pdata.directions[enc_task]),
                  "decoder": direction_name(pdata.directions[enc_task if dec_task is None else dec_task])},
        "source": {"checkpoint": os.path.abspath(checkpoint), "sha256": ck.get("sha256"), "step": ck.get("step"),
                   "data": os.path.abspath(pdata.root)},
        "mask_bias": cfg.mask_bias,
        "d_ff": cfg.d_ff,
        "width": pruned.cfg.d_ff,
        "width_multiple": multiple,
        "layers": {n: {"kept": len(k), "neurons": k.tolist()} for n, k in kept.items()},
        "parameters": {"source": _count(cfg), "padded": pruned.num_parameters(),
                       "per_layer": _parameters(cfg, [max(len(k), 1) for k in kept.values()])},
    }
    with built_folder(out) as built:  # replaces out whole; removed on an error
        _write_data(pdata, direction, built / DATA)
        save_checkpoint(built / CHECKPOINT, {
            "step": ck.get("step"), "config": ck.get("config"), "model_config": pruned.cfg.to_dict(),
            "model": pruned.state_dict(), "masks": None,
            "data": {"prep": os.path.abspath(out / DATA), "directions": [list(direction)]}, "export": record})
        write_atomic(built / RECORD, strict_json(record))
    return record


def _write_data(pdata, direction, folder: Path) -> None:
    """A prepared folder with the tokenizer and no splits, whose only direction is ``direction``
    (so decoding another direction with the export is an error, not a silent wrong answer)."""
    folder.mkdir(parents=True)
    meta = {**pdata.meta, "directions": [list(direction)], "splits": {}, "pairs": {}, "tokenizer": TOKENIZER_FILE}
    write_atomic(folder / TOKENIZER_FILE, Path(pdata.tokenizer.path).read_bytes())
    write_atomic(folder / META_FILE, json.dumps(meta, ensure_ascii=False, indent=1))


def load_pruned(path: str | os.PathLike, device: str | torch.device = "cpu",
                multiple: int = WIDTH_MULTIPLE) -> tuple[Transformer, dict]:
    """(model with each FFN at its own width rounded up to ``multiple``, checkpoint) of an export
    folder or its checkpoint.pt; equal to the padded model `load_model` gives, with less padding."""
    path = Path(path)
    path = path / CHECKPOINT if path.is_dir() else path
    model, ck = load_model(path, device)
    record = ck.get("export")
    if not record:
        raise ValueError(f"checkpoint: {os.fspath(path)} is not a pruned export (no export record)")
    kept = OrderedDict((n, torch.arange(max(layer["kept"], 1))) for n, layer in record["layers"].items())
    return prune_model(model, kept, per_layer=True, multiple=multiple), ck
