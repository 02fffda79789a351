"""LaSS element masks (Lin et al. 2021, docs/design.md §11): per-direction binary masks over the
elements of every Linear weight matrix (attention projections, fc1, fc2; not the embeddings, not
the LayerNorms), applied in the forward as ``w ⊙ m_t``, so direction t's loss reaches only its
unmasked elements.

The rule (the original release's ``toolbox/generate_mask.py``, ``gen_each_mask_with_prob``): with
prune fraction α, ``kth = int(α · numel)``, ``τ = kthvalue(|w|.view(-1), kth)``, ``m = |w| > τ``,
computed on the weights of the model fine-tuned on direction t alone (:func:`lass_mask`).

In the model (``ModelConfig.lass_tasks = T > 0``) each such weight gets a parametrization whose
persistent buffer ``bits [T, ceil(numel/8)]`` (uint8, big-endian bit order as numpy.packbits)
holds the T masks; :func:`side_task` sets the task of a side (encoder / decoder) around its
layers, and a weight read outside it raises. Shapes: ``weight [out, in]``, one mask per task
``[out, in]`` (bool).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

SIDES = ("encoder", "decoder")


def lass_mask(weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """The mask of one fine-tuned weight: ``|w| > kthvalue(|w|, int(α · numel))`` (bool, w's shape)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha (the LaSS prune fraction): must be in (0, 1), got {alpha!r}")
    kth = int(alpha * weight.numel())
    if kth < 1:
        raise ValueError(f"alpha: {alpha} prunes no element of a {tuple(weight.shape)} weight (int(α·numel) = 0)")
    w = weight.detach().float().abs()
    tau = torch.kthvalue(w.view(-1), k=kth, dim=0).values
    return w > tau


def target_names(model: nn.Module) -> list[str]:
    """State-dict names of the weights LaSS masks: every nn.Linear weight inside the encoder and
    decoder layers (attention projections, fc1, fc2), in module order."""
    return [f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith(("encoder.layers.", "decoder.layers."))]


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """``[T, ...]`` bool → ``[T, ceil(n/8)]`` uint8 (numpy.packbits order)."""
    flat = mask.reshape(mask.shape[0], -1).cpu().numpy().astype(bool)
    return torch.from_numpy(np.packbits(flat, axis=1))


def unpack_bits(bits: torch.Tensor, numel: int) -> torch.Tensor:
    """``[..., ceil(n/8)]`` uint8 → ``[..., n]`` bool (inverse of :func:`pack_bits`)."""
    shifts = torch.arange(7, -1, -1, device=bits.device, dtype=torch.uint8)
    out = (bits.unsqueeze(-1) >> shifts) & 1
    return out.reshape(*bits.shape[:-1], -1)[..., :numel].bool()


class _State:
    """The current task of each side (None: outside a forward)."""

    def __init__(self):
        self.task: dict[str, int | torch.Tensor | None] = {s: None for s in SIDES}


class ElementMask(nn.Module):
    """Parametrization ``w ↦ w ⊙ m_task`` of one weight; the masks live packed in ``bits``."""

    def __init__(self, shape: torch.Size, tasks: int, side: str, state: _State):
        super().__init__()
        self.shape, self.numel, self.side, self.state = tuple(shape), int(np.prod(shape)), side, state
        # all ones until set: a fresh LaSS model computes what its dense weights compute
        self.register_buffer("bits", pack_bits(torch.ones(tasks, self.numel, dtype=torch.bool)))
        self._cache: dict[int, tuple[int, torch.Tensor]] = {}

    def mask(self, task: int | torch.Tensor) -> torch.Tensor:
        """Task ``task``'s mask, bool ``[out, in]`` (unpacked once per task and buffer version)."""
        if isinstance(task, torch.Tensor):
            return unpack_bits(self.bits[task], self.numel).view(self.shape)
        hit = self._cache.get(task)
        if hit is None or hit[0] != self.bits._version:
            hit = (self.bits._version, unpack_bits(self.bits[task], self.numel).view(self.shape))
            self._cache[task] = hit
        return hit[1]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        task = self.state.task[self.side]
        if task is None:
            raise RuntimeError(f"a LaSS-masked {self.side} weight was read outside a forward that names its "
                               "direction (Transformer.encode / decode set it)")
        return w * self.mask(task).to(w.dtype)


def attach(model: nn.Module, tasks: int) -> _State:
    """Parametrize every :func:`target_names` weight of ``model`` with a ``tasks``-direction mask."""
    state = _State()
    for name in target_names(model):
        linear = model.get_submodule(name[:-len(".weight")])
        parametrize.register_parametrization(
            linear, "weight", ElementMask(linear.weight.shape, tasks, name.split(".", 1)[0], state), unsafe=True)
    return state


def _single_task(task: int | torch.Tensor) -> int | torch.Tensor:
    if isinstance(task, int) or task.dim() == 0:
        return task
    flat = task.reshape(-1)
    if flat.numel() and bool((flat == flat[0]).all()):
        return int(flat[0])
    raise ValueError("task: a LaSS model runs one direction per encode/decode call; a batch mixing directions "
                     "goes through Transformer.forward, which groups it by direction")


@contextmanager
def side_task(state: _State | None, side: str, task: int | torch.Tensor) -> Iterator[None]:
    """Inside, the masked weights of ``side`` read as ``w ⊙ m_task`` (no-op without LaSS)."""
    if state is None:
        yield
        return
    old = state.task[side]
    state.task[side] = _single_task(task)
    try:
        yield
    finally:
        state.task[side] = old


def grouped_forward(model, src: torch.Tensor, tgt_in: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits ``[B, L, V]`` of a batch mixing directions (``task [B]``): one
    encode/decode per direction on its rows, scattered back into batch order."""
    out = None
    for t in task.unique().tolist():
        rows = (task == t).nonzero().squeeze(1)
        logits = model.decode(tgt_in.index_select(0, rows), model.encode(src.index_select(0, rows), t), t)
        if out is None:
            out = logits.new_zeros(src.shape[0], *logits.shape[1:])
        out = out.index_copy(0, rows, logits)
    return out


def set_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Store ``{weight name: bool [T, out, in]}`` (names of :func:`target_names`) packed in the
    model's buffers; every target weight must be named."""
    names = target_names(model)
    missing, unknown = sorted(set(names) - set(masks)), sorted(set(masks) - set(names))
    if missing or unknown:
        raise ValueError(f"masks: missing {missing[:3]}, unknown {unknown[:3]} (expected the names of target_names)")
    for name in names:
        p = model.get_submodule(name[:-len(".weight")]).parametrizations.weight[0]
        m = masks[name]
        if tuple(m.shape) != (p.bits.shape[0], *p.shape):
            raise ValueError(f"masks: {name} has shape {tuple(m.shape)}, expected {(p.bits.shape[0], *p.shape)}")
        p.bits.copy_(pack_bits(m))


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{weight name: bool [T, out, in]}`` unpacked from the model's buffers."""
    out = {}
    for name in target_names(model):
        p = model.get_submodule(name[:-len(".weight")]).parametrizations.weight[0]
        out[name] = unpack_bits(p.bits, p.numel).view(-1, *p.shape)
    return out


def dense_key(key: str) -> str:
    """A LaSS model's state-dict key → the dense model's (``x.parametrizations.weight.original`` → ``x.weight``)."""
    return key.replace(".parametrizations.weight.original", ".weight")


def load_dense(model: nn.Module, dense_state: Mapping[str, torch.Tensor]) -> None:
    """Load a dense model's weights into a LaSS model (its masks stay as they are)."""
    own = model.state_dict()
    missing = [k for k in own if not k.endswith(".bits") and dense_key(k) not in dense_state]
    if missing:
        raise ValueError(f"dense state: lacks {missing[:3]}")
    model.load_state_dict({k: (v if k.endswith(".bits") else dense_state[dense_key(k)]) for k, v in own.items()})


def mask_bytes(model: nn.Module) -> int:
    """Bytes of the packed masks held by ``model``."""
    return sum(b.numel() for k, b in model.state_dict().items() if k.endswith(".bits"))
