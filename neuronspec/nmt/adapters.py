"""Bottleneck adapters after every encoder and decoder layer (the paper's Adapter_LP / Adapter_Fam
arms, docs/design.md §11).

One adapter block is ``x + W_up · relu(W_down · LN(x) + b_down) + b_up`` (LayerNorm → down →
ReLU → up, residual; Bapna & Firat 2019). A model holds ``num`` adapters per layer; direction
(task) ``t`` uses adapter ``adapter_of_task[t]`` (one per language pair, or one per language
family). ``W_up`` starts at zero, so a model with fresh adapters computes exactly what its base
computes. With ``ModelConfig.freeze_base`` every parameter outside the adapters has
``requires_grad=False`` (the trainer's Adam and clipping skip parameters without a gradient).

Shapes: per layer, ``down [num, r, d]``, ``up [num, d, r]``; ``x [B, T, d]``; the task as in
``model.py`` (an int, a 0-dim tensor, or one id per token ``[B·T]``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("lp", "fam")  # one adapter per language pair / per language family


class AdapterBank(nn.Module):
    """``num`` bottleneck adapters of one layer (width ``d``, bottleneck ``r``)."""

    def __init__(self, d: int, r: int, num: int):
        super().__init__()
        self.norm_weight = nn.Parameter(torch.ones(num, d))
        self.norm_bias = nn.Parameter(torch.zeros(num, d))
        self.down = nn.Parameter(torch.empty(num, r, d))
        self.down_bias = nn.Parameter(torch.zeros(num, r))
        self.up = nn.Parameter(torch.zeros(num, d, r))  # zero: a fresh adapter is the identity
        self.up_bias = nn.Parameter(torch.zeros(num, d))
        for i in range(num):
            nn.init.xavier_uniform_(self.down.data[i])

    def block(self, x: torch.Tensor, a: int | torch.Tensor) -> torch.Tensor:
        """Adapter ``a``'s residual block on ``x [..., d]``."""
        h = F.layer_norm(x, x.shape[-1:], self.norm_weight[a], self.norm_bias[a])
        h = F.relu(F.linear(h, self.down[a], self.down_bias[a]))
        return x + F.linear(h, self.up[a], self.up_bias[a])

    def forward(self, x: torch.Tensor, adapter: int | torch.Tensor) -> torch.Tensor:
        """``x [B, T, d]``; ``adapter`` an int / 0-dim tensor (whole batch) or ``[B·T]`` per token."""
        if isinstance(adapter, int) or adapter.dim() == 0:
            return self.block(x, adapter)
        flat = x.reshape(-1, x.shape[-1])
        out = torch.empty_like(flat)
        for a in adapter.unique().tolist():  # one group per adapter (mixed batches)
            rows = (adapter == a).nonzero().squeeze(1)
            out.index_copy_(0, rows, self.block(flat.index_select(0, rows), a))
        return out.view_as(x)


class Adapters(nn.Module):
    """The adapters of a whole model: ``encoder[i]`` / ``decoder[i]`` after layer ``i``; the
    buffer ``table [num_tasks]`` maps a task id to its adapter index."""

    def __init__(self, d: int, r: int, adapter_of_task: list[int], encoder_layers: int, decoder_layers: int):
        super().__init__()
        num = max(adapter_of_task) + 1
        self.register_buffer("table", torch.tensor(adapter_of_task, dtype=torch.long), persistent=False)
        self.encoder = nn.ModuleList(AdapterBank(d, r, num) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(AdapterBank(d, r, num) for _ in range(decoder_layers))

    def index(self, task: int | torch.Tensor) -> int | torch.Tensor:
        """The adapter of ``task`` (int → int; tensor → tensor of the same shape)."""
        if isinstance(task, int):
            if not 0 <= task < len(self.table):
                raise ValueError(f"task: {task} has no adapter (the model has {len(self.table)} directions)")
            return int(self.table[task])
        return self.table.to(task.device)[task]


def check_adapter_config(kind: str, dim: int, adapter_of_task, freeze_base: bool) -> None:
    """ModelConfig's adapter fields: off (kind '') or a kind of KINDS, a bottleneck >= 1 and a
    task → adapter list of ints >= 0 covering 0..max."""
    if kind == "":
        if dim or adapter_of_task or freeze_base:
            raise ValueError("ModelConfig.adapter_dim / adapter_of_task / freeze_base need adapter_kind "
                             f"(one of {KINDS})")
        return
    if kind not in KINDS:
        raise ValueError(f"ModelConfig.adapter_kind must be '' or one of {KINDS}, got {kind!r}")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"ModelConfig.adapter_dim must be an int >= 1 with adapters, got {dim!r}")
    if (not isinstance(adapter_of_task, (list, tuple)) or not adapter_of_task
            or not all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in adapter_of_task)):
        raise ValueError(f"ModelConfig.adapter_of_task must be a non-empty list of adapter indices >= 0, "
                         f"got {adapter_of_task!r:.80}")
    if set(adapter_of_task) != set(range(max(adapter_of_task) + 1)):
        raise ValueError(f"ModelConfig.adapter_of_task must use every adapter 0..{max(adapter_of_task)}, "
                         f"got {sorted(set(adapter_of_task))}")


def adapter_groups(directions: list[str], kind: str, pivot: str = "en") -> tuple[list[int], list[str]]:
    """(task → adapter index, adapter names) for ``directions`` ("x-y", in task order).
    lp: one adapter per direction; fam: one per family of the non-pivot language (an
    Indo-European language's branch, e.g. Germanic; otherwise its family, e.g. Afro-Asiatic:
    the EC30 grouping), shared by both directions of every language in it."""
    from neuronspec.data.languages import info

    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if kind == "lp":
        return list(range(len(directions))), list(directions)
    names: list[str] = []
    table = []
    for d in directions:
        src, tgt = d.split("-", 1)
        if pivot not in (src, tgt):
            raise ValueError(f"directions: {d} has no {pivot} side (family adapters are per non-{pivot} language)")
        lang = info(tgt if src == pivot else src)
        fam = lang.branch if lang.family == "Indo-European" else lang.family
        if fam not in names:
            names.append(fam)
        table.append(names.index(fam))
    return table, names


def adapter_parameters(model: nn.Module) -> int:
    """Number of adapter parameters of ``model`` (0 without adapters)."""
    ad = getattr(model, "adapters", None)
    return 0 if ad is None else sum(p.numel() for p in ad.parameters())
