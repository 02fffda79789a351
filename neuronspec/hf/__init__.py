"""Neuron Specialization for Hugging Face `transformers` models (docs/design.md §9).

`wrap` needs no import of transformers (it reads the model's config); `load`, `MasksCallback`,
the pipeline (`neuronspec.hf.pipeline`: record, specialize, translate) and `neuronspec hf` need
the optional extra `pip install neuronspec[hf]`.
"""
from .collator import DirectionCollator
from .ffn import FusedFFN, Passthrough, SpecializedGLU
from .marker import warn_on_plain_load_if_loaded
from .saving import load
from .wrap import Specialization, family, wrap

__all__ = ["wrap", "load", "Specialization", "DirectionCollator", "MasksCallback", "FusedFFN", "SpecializedGLU",
           "Passthrough", "family"]
warn_on_plain_load_if_loaded()


def __getattr__(name: str):
    if name == "MasksCallback":  # imports transformers' Trainer callbacks: only when asked for
        from .callback import MasksCallback
        return MasksCallback
    raise AttributeError(f"module 'neuronspec.hf' has no attribute {name!r}")
