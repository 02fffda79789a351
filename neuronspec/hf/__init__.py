"""Neuron Specialization for Hugging Face `transformers` models (docs/design.md §9).

`wrap` needs no import of transformers (it reads the model's config); the pipeline
(`neuronspec.hf.pipeline`: record, specialize, translate) and `neuronspec hf` need the optional
extra `pip install neuronspec[hf]`.
"""
from .wrap import FusedFFN, Passthrough, Specialization, SpecializedGLU, family, wrap

__all__ = ["wrap", "Specialization", "FusedFFN", "SpecializedGLU", "Passthrough", "family"]
