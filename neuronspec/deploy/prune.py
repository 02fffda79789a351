"""Cut one direction's FFN neurons out of a specialized model (docs/design.md §2, issue #30).

A specialized FFN computes, for direction t, ``act(X W1[A]ᵀ + b1[A]) W2[:, A]ᵀ + c_t + b2`` with
``c_t = act(b1[I]) W2[:, I]ᵀ`` (0 with ``mask_bias``). The pruned FFN keeps the rows ``A`` of
fc1, the columns ``A`` of fc2 and folds ``c_t`` into fc2's bias: a dense FFN of width ``|A|``
that equals the masked one. Gated FFNs (``down(act(gate(x)) ⊙ up(x))``) keep the rows of gate
and up and the columns of down; their inactive neurons output ``act(b_g) · b_u`` (0 without
biases), folded into down's bias the same way.

``width`` pads a pruned FFN with zero rows/columns (and zero biases) up to a common width, for
formats that hold one FFN width per stack, or up to a multiple of 16/32/64 that GEMM kernels
handle faster than an odd width (``round_width``): a padded neuron outputs ``act(0) · 0 = 0``
for relu, gelu and silu, so padding is exact too. Kept neurons come first, padding last.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_int

ACTIVATIONS = {"relu": torch.relu, "gelu": F.gelu, "silu": F.silu}
# default for exports: pruned FFN widths rounded up to this multiple (benchmarks/results/cpu/translate)
WIDTH_MULTIPLE = 16


def _check_keep(keep: torch.Tensor, f: int, width: int | None) -> torch.Tensor:
    if not isinstance(keep, torch.Tensor) or keep.dim() != 1 or keep.dtype.is_floating_point:
        raise TypeError(f"keep: expected an integer tensor [k] of neuron ids, got {keep!r:.80}")
    keep = keep.long().cpu()
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= f):
        raise ValueError(f"keep: neuron ids must lie in [0, {f}), got {int(keep.min())}..{int(keep.max())}")
    if keep.numel() != torch.unique(keep).numel():
        raise ValueError("keep: neuron ids must be unique")
    if width is not None and not keep.numel() <= width:
        raise ValueError(f"width: {width} is narrower than the {keep.numel()} kept neurons")
    return keep


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def _inactive(keep: torch.Tensor, f: int) -> torch.Tensor:
    mask = torch.ones(f, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero()[:, 0]


def _rows(w: torch.Tensor | None, keep: torch.Tensor, width: int) -> torch.Tensor | None:
    """Rows ``keep`` of ``w [f, ...]`` (or entries of a bias ``[f]``), zero-padded to ``width``."""
    if w is None:
        return None
    out = w.new_zeros((width, *w.shape[1:]))
    out[:keep.numel()] = w.detach()[keep.to(w.device)]
    return out


def _fold(w_out: torch.Tensor, b_out: torch.Tensor | None, keep: torch.Tensor, h_inactive) -> tuple:
    """``b_out + W_out[:, I] h_I`` (summed in float64, returned in b_out's dtype) for the inactive
    neurons ``I`` of ``W_out [d, f]``; ``h_inactive(I)`` gives their constant outputs (None: 0)."""
    f = w_out.shape[1]
    inactive = _inactive(keep, f).to(w_out.device)
    if h_inactive is None or inactive.numel() == 0:
        return b_out
    h = h_inactive(inactive)  # [|I|] float64
    const = w_out.detach().double()[:, inactive] @ h
    if b_out is None:
        if bool((const != 0).any()):
            raise ValueError("bias: the inactive neurons add a constant but the output projection has no bias "
                             "to fold it into")
        return None
    return (b_out.detach().double() + const).to(b_out.dtype)


def _cols(w: torch.Tensor, keep: torch.Tensor, width: int) -> torch.Tensor:
    out = w.new_zeros((w.shape[0], width))
    out[:, :keep.numel()] = w.detach()[:, keep.to(w.device)]
    return out


def prune_ffn(w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None,
              keep: torch.Tensor, activation: str, *, mask_bias: bool = False,
              width: int | None = None) -> tuple:
    """(W1', b1', W2', b2') of ``act(x W1ᵀ + b1) W2ᵀ + b2`` restricted to the neurons ``keep``
    (``W1 [f, d]``, ``W2 [d_out, f]``): ``W1' [w, d]``, ``W2' [d_out, w]`` with ``w = width`` (default
    ``len(keep)``); b2' holds the inactive neurons' ``act(b1[I]) W2[:, I]ᵀ`` unless ``mask_bias``."""
    act = _activation(activation)
    keep = _check_keep(keep, w1.shape[0], width)
    width = keep.numel() if width is None else width
    h = None if b1 is None or mask_bias else (lambda i: act(b1.detach().double()[i]))
    return _rows(w1, keep, width), _rows(b1, keep, width), _cols(w2, keep, width), _fold(w2, b2, keep, h)


def prune_glu(wg: torch.Tensor, bg: torch.Tensor | None, wu: torch.Tensor, bu: torch.Tensor | None,
              wd: torch.Tensor, bd: torch.Tensor | None, keep: torch.Tensor, activation: str, *,
              mask_bias: bool = False, width: int | None = None) -> tuple:
    """(Wg', bg', Wu', bu', Wd', bd') of ``(act(x Wgᵀ + bg) ⊙ (x Wuᵀ + bu)) Wdᵀ + bd`` restricted
    to ``keep``; an inactive neuron's constant ``act(bg_i) · bu_i`` is folded into bd' (it is 0
    when either bias is absent)."""
    act = _activation(activation)
    keep = _check_keep(keep, wg.shape[0], width)
    width = keep.numel() if width is None else width
    h = None if bg is None or bu is None or mask_bias else \
        (lambda i: act(bg.detach().double()[i]) * bu.detach().double()[i])
    return (_rows(wg, keep, width), _rows(bg, keep, width), _rows(wu, keep, width), _rows(bu, keep, width),
            _cols(wd, keep, width), _fold(wd, bd, keep, h))


def padded_width(widths, multiple: int = 1, limit: int | None = None) -> int:
    """The common width of FFNs that keep ``widths`` neurons (at least 1, so no layer is empty),
    rounded up to a multiple of ``multiple`` but not past ``limit`` (the source width)."""
    return round_width(max([1, *widths]), multiple, limit)


def round_width(width: int, multiple: int = 1, limit: int | None = None) -> int:
    """``width`` rounded up to a multiple of ``multiple``, not past ``limit`` when it is wider than
    ``width`` (zero neurons past the source's own width would only add work)."""
    check_int("multiple", multiple, 1)
    up = -(-width // multiple) * multiple
    return up if limit is None or up <= limit else max(width, limit)
