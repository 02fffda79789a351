"""A specialized model's folder (docs/design.md §9): `save_pretrained` of a wrapped model writes
the weights, `neuronspec_masks.pt` (checksummed, neuronspec.files) and a "neuronspec" entry in
config.json; `load(folder)` restores model, wrap and masks in one call. A plain
`from_pretrained` of such a folder warns that the model it returns is dense (hf/marker.py).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from neuronspec.ops import load_layer_masks

from .marker import CONFIG_MARK, warn_on_plain_load
from .wrap import Specialization, wrap


def load(path: str | os.PathLike, model_class=None, backend: str | None = None, **kwargs):
    """(model, spec) of a folder a wrapped model saved: `model_class.from_pretrained(path,
    **kwargs)` (default: AutoModelForSeq2SeqLM or AutoModelForCausalLM by the config), wrapped
    with the saved directions and mask_bias, masks set."""
    import transformers

    warn_on_plain_load()
    config = transformers.AutoConfig.from_pretrained(path)
    mark = getattr(config, CONFIG_MARK, None)
    if not isinstance(mark, dict) or "masks" not in mark:
        raise ValueError(f"path: {os.fspath(path)!r} is not a specialized model folder (its config.json has no "
                         f"{CONFIG_MARK!r} entry; a wrapped model's save_pretrained writes one)")
    masks, meta = load_layer_masks(Path(path) / mark["masks"])
    if model_class is None:
        model_class = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else \
            transformers.AutoModelForCausalLM
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="neuronspec: .* as a dense model")
        model = model_class.from_pretrained(path, **kwargs)
    delattr(model.config, CONFIG_MARK)  # the model in memory is wrapped; a later save marks it again
    spec: Specialization = wrap(model, meta.get("directions", mark["directions"]), mask_bias=mark["mask_bias"],
                                backend=backend)
    spec.set_masks(masks)
    return model, spec
