"""Pruned export of a Hugging Face model wrapped by `neuronspec.hf.wrap` (`neuronspec hf export`).

    spec = wrap(model, directions); spec.set_masks(masks)
    pruned, record = prune_hf(spec, "en-de")          # a new model of the same class, dense
    pruned.save_pretrained(out)

Every FFN keeps the direction's neurons (fc1 rows and fc2 columns; gated FFNs: gate/up rows and
down columns) and folds the inactive neurons' constant output into the output bias
(`neuronspec.deploy.prune`), so ``pruned`` equals the masked model. Transformers configs hold one
FFN width per stack (M2M100, mBART, Marian: ``encoder_ffn_dim`` / ``decoder_ffn_dim``; Llama,
Mistral, Qwen2, Phi-3: ``intermediate_size``; Phi-3's fused ``gate_up_proj`` keeps the same rows of
its gate half and its up half): each FFN is padded with zero neurons to its stack's
widest layer (exact); the record gives the parameter count with and without that padding.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from ..atomic import built_folder, strict_json, write_atomic
from ..files import digest
from ..hf.wrap import MASKS_FILE, FusedFFN, Specialization, wrap
from ..ops import load_layer_masks
from .outdir import check_out
from .prune import padded_width, prune_ffn, prune_glu

RECORD = "neuronspec_export.json"
# config field holding the FFN width of each stack
WIDTH_FIELDS = {"fc": {"encoder": "encoder_ffn_dim", "decoder": "decoder_ffn_dim"},
                "glu": {"decoder": "intermediate_size"}}


def _kept(spec: Specialization, direction: str, decoder_direction: str | None) -> dict[str, torch.Tensor]:
    enc = spec.task_id(direction)
    dec = enc if decoder_direction is None else spec.task_id(decoder_direction)
    out = {}
    for name, ffn in spec.layers.items():
        task = dec if ffn.stack == "decoder" else enc
        out[name] = torch.arange(ffn.num_neurons) if ffn.masks is None else ffn.masks.active(task).long().cpu()
    return out


def _pruned_tensors(ffn, keep: torch.Tensor, width: int, mask_bias: bool, names: dict) -> dict[str, torch.Tensor]:
    """{state_dict key: tensor} of one FFN pruned to ``keep`` and padded to ``width``."""
    if isinstance(ffn, FusedFFN):
        params = (ffn.weight, ffn.bias, ffn._fc2.weight, ffn._fc2.bias)
        new = prune_ffn(*params, keep, ffn.activation, mask_bias=mask_bias, width=width)
    elif ffn.fused:  # Phi-3: gate_up_proj [2f, d] holds the gate rows, then the up rows (no biases)
        gu, d, f = ffn.gate_up_proj.weight, ffn.down_proj, ffn.num_neurons
        wg, _, wu, _, wd, _ = prune_glu(gu[:f], None, gu[f:], None, d.weight, None, keep, ffn.activation,
                                        mask_bias=mask_bias, width=width)
        return {names[id(gu)]: torch.cat([wg, wu]), names[id(d.weight)]: wd}
    else:
        g, u, d = ffn.gate_proj, ffn.up_proj, ffn.down_proj
        params = (g.weight, g.bias, u.weight, u.bias, d.weight, d.bias)
        new = prune_glu(*params, keep, ffn.activation, mask_bias=mask_bias, width=width)
    return {names[id(p)]: v for p, v in zip(params, new) if p is not None}


def _ffn_parameters(spec: Specialization, widths: dict[str, int]) -> int:
    """Parameters of the FFNs at ``widths`` ({layer: width})."""
    total = 0
    for name, ffn in spec.layers.items():
        if isinstance(ffn, FusedFFN):
            params, out_bias = (ffn.weight, ffn.bias, ffn._fc2.weight), ffn._fc2.bias
        else:
            ups = (ffn.gate_up_proj,) if ffn.fused else (ffn.gate_proj, ffn.up_proj)
            params = (*(t for lin in ups for t in (lin.weight, lin.bias)), ffn.down_proj.weight)
            out_bias = ffn.down_proj.bias
        total += sum(p.numel() // ffn.num_neurons * widths[name] for p in params if p is not None)
        total += 0 if out_bias is None else out_bias.numel()
    return total


def prune_hf(spec: Specialization, direction: str, decoder_direction: str | None = None):
    """(pruned model, record) for ``direction`` of the wrapped model (module docstring);
    ``decoder_direction``: the decoder's masks when they differ (zero-shot x→y: x→en, en→y).
    The wrapped model is left as it was."""
    if not isinstance(spec, Specialization):
        raise TypeError(f"spec: expected the Specialization that neuronspec.hf.wrap returns, got {type(spec).__name__}")
    if not spec.masks():
        raise ValueError("masks: none set (spec.set_masks(...)); a dense model has nothing to prune")
    model = spec.model
    kept = _kept(spec, direction, decoder_direction)
    fields = WIDTH_FIELDS[spec.family]
    stack_width = {s: padded_width(len(k) for n, k in kept.items() if spec.layers[n].stack == s) for s in fields}
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    state = model.state_dict()
    for name, ffn in spec.layers.items():
        state.update(_pruned_tensors(ffn, kept[name], stack_width[ffn.stack], spec.mask_bias, names))
    config = copy.deepcopy(model.config)
    for stack, attr in fields.items():
        setattr(config, attr, stack_width[stack])
    dtype = next(model.parameters()).dtype
    pruned = type(model)(config).to(dtype)
    pruned.load_state_dict(state)
    pruned.to(next(model.parameters()).device).eval()
    per_layer = {n: max(len(k), 1) for n, k in kept.items()}
    padded = {n: stack_width[spec.layers[n].stack] for n in kept}
    source_params = sum(p.numel() for p in model.parameters())
    ffn_source = _ffn_parameters(spec, {n: f.num_neurons for n, f in spec.layers.items()})
    record = {
        "format": "neuronspec-pruned/1",
        "direction": direction,
        "decoder_direction": decoder_direction or direction,
        "source": {"model": getattr(model.config, "_name_or_path", None), "sha256": digest(model.state_dict())},
        "mask_bias": spec.mask_bias,
        "widths": {fields[s]: w for s, w in stack_width.items()},
        "layers": {n: {"kept": len(k), "of": spec.layers[n].num_neurons, "neurons": k.tolist()} for n, k in kept.items()},
        "parameters": {"source": source_params,
                       "padded": source_params - ffn_source + _ffn_parameters(spec, padded),
                       "per_layer": source_params - ffn_source + _ffn_parameters(spec, per_layer)},
    }
    return pruned, record


def export_hf(model_path: str | os.PathLike, direction: str, out: str | os.PathLike, *,
              masks: str | os.PathLike | None = None, decoder_direction: str | None = None) -> dict:
    """Load a transformers model folder (or hub name) with its tokenizer, prune it for
    ``direction`` with ``masks`` (default: the folder's neuronspec_masks.pt) and write
    save_pretrained's folder, the tokenizer and neuronspec_export.json to ``out`` (atomically)."""
    import transformers  # the optional extra neuronspec[hf]

    out = check_out(out, RECORD, [model_path, masks])
    mpath = Path(masks) if masks is not None else Path(model_path) / MASKS_FILE
    mpath = mpath / MASKS_FILE if mpath.is_dir() else mpath
    if not mpath.is_file():
        raise ValueError(f"masks: no such file {os.fspath(mpath)!r} (give --masks)")
    layer_masks, _ = load_layer_masks(mpath)
    directions = list(next(iter(layer_masks.values())).names)
    config = transformers.AutoConfig.from_pretrained(model_path)
    auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(model_path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    spec = wrap(model, directions)
    spec.set_masks(layer_masks)
    pruned, record = prune_hf(spec, direction, decoder_direction)
    record["source"].update(model=os.fspath(model_path), masks=os.path.abspath(mpath))
    with built_folder(out) as built:  # replaces out whole; removed on an error
        pruned.save_pretrained(built)
        tokenizer.save_pretrained(built)
        write_atomic(built / RECORD, strict_json(record))
    return record
