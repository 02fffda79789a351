"""Masked-FFN (plain and gated) and counting ops with reference, maskmul, torch, triton and cuda
backends (docs/design.md §2-3, §9)."""
from .backends import unavailable_reason
from .functional import fc1_act_count, glu_act_count, masked_ffn, masked_glu_ffn
from .masks import TaskMasks, load_layer_masks, save_layer_masks
from .module import SpecializedFFN
from .reference import fc1_act_count_reference, glu_ffn_reference, masked_ffn_reference
from .registry import available_backends, last_backend, resolve_backend
from .torch_backend import reuse_gathered_weights

__all__ = [
    "masked_ffn", "fc1_act_count", "TaskMasks", "SpecializedFFN", "save_layer_masks", "load_layer_masks",
    "masked_ffn_reference", "fc1_act_count_reference", "available_backends", "last_backend",
    "resolve_backend", "unavailable_reason", "masked_glu_ffn", "glu_act_count", "glu_ffn_reference",
    "reuse_gathered_weights",
]
