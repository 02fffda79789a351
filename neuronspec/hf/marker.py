"""The "neuronspec" entry of a specialized folder's config.json (docs/design.md §9) and the
warning a plain `from_pretrained` of such a folder gives: the model it returns is dense."""
from __future__ import annotations

import functools
import os
import sys
import warnings

CONFIG_MARK = "neuronspec"  # config.json entry of a folder saved with masks (hf/saving.py)
DENSE_WARNING = "neuronspec: {cls} loaded {path!r}, saved with per-direction masks, as a dense model " \
                "(masks not applied); load it with neuronspec.hf.load(path)"


def warn_on_plain_load() -> None:
    """Make `PreTrainedModel.from_pretrained` warn when the config it loads has the "neuronspec"
    entry (idempotent; needs transformers)."""
    from transformers import PreTrainedModel

    original = PreTrainedModel.from_pretrained.__func__
    if getattr(original, "_neuronspec_warns", False):
        return

    @functools.wraps(original)
    def from_pretrained(cls, *args, **kwargs):
        model = original(cls, *args, **kwargs)
        if getattr(getattr(model, "config", None), CONFIG_MARK, None):
            path = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            warnings.warn(DENSE_WARNING.format(cls=cls.__name__, path=os.fspath(path)), UserWarning, stacklevel=2)
        return model

    from_pretrained._neuronspec_warns = True
    PreTrainedModel.from_pretrained = classmethod(from_pretrained)


def warn_on_plain_load_if_loaded() -> None:
    """`warn_on_plain_load` when transformers' models are imported already (no import here)."""
    if "transformers.modeling_utils" in sys.modules:
        warn_on_plain_load()
