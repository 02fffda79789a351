"""Masked-FFN and counting ops with reference, torch, triton and cuda backends (docs/design.md §2-3)."""
from .functional import fc1_act_count, masked_ffn
from .glu_ffn import glu_act_count, glu_ffn_reference, masked_glu_ffn
from .masks import TaskMasks, load_layer_masks, save_layer_masks
from .module import SpecializedFFN
from .reference import fc1_act_count_reference, masked_ffn_reference
from .registry import available_backends, resolve_backend, unavailable_reason
from .torch_backend import reuse_gathered_weights

__all__ = [
    "masked_ffn", "fc1_act_count", "TaskMasks", "SpecializedFFN", "save_layer_masks", "load_layer_masks",
    "masked_ffn_reference", "fc1_act_count_reference", "available_backends",
    "resolve_backend", "unavailable_reason", "masked_glu_ffn", "glu_act_count", "glu_ffn_reference",
    "reuse_gathered_weights",
]
