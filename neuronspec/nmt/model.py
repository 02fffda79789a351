"""Pre-norm Transformer encoder-decoder whose FFN blocks are ``SpecializedFFN``.

Layout follows fairseq's ``transformer`` with ``--encoder-normalize-before
--decoder-normalize-before --share-all-embeddings``: scaled token embeddings + positions,
dropout, N pre-norm layers, a final LayerNorm, and an output projection tied to the
embedding matrix. Every FFN receives the direction (task) id of each token and a mask of
the non-padding tokens, so per-direction neuron masks and activation counting work
unchanged in encoder and decoder.

Shapes: ``src [B, S]`` and ``tgt_in [B, L]`` token ids (right-padded with ``pad``),
``task`` an int (whole batch), a 0-dim integer tensor (whole batch, the id read on the device
only: no host sync, so a CUDA graph serves every direction) or LongTensor ``[B]`` (one direction
per sentence).

FFN layers are named ``encoder.layers.{i}.ffn`` and ``decoder.layers.{i}.ffn``
(see :meth:`Transformer.ffn_layers`); :meth:`Transformer.set_masks` takes a dict keyed by
those names.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from neuronspec.checks import check_int
from neuronspec.nmt import lass
from neuronspec.nmt.adapters import Adapters, check_adapter_config
from neuronspec.ops import SpecializedFFN
from neuronspec.ops.activations import act

# Presets. tiny: trains in minutes on 2 CPU cores (docs/design.md §8). base/big: Vaswani et al.
# (big is the paper's EC30 model). wide/deep are our choice for the paper's "wider" and
# "deeper" variants: wide = big with 2x FFN width (more neurons to specialise),
# deep = base width with 12+12 layers. tiny has no dropout: in its minutes-long budget
# (about 10 epochs of the 8-language built-in corpus) dropout 0.1 scored the same at equal
# updates and made each update 20 % slower (docs/nmt-tiny-cpu.md, run E1).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=256, d_ff=1024, heads=4, encoder_layers=3, decoder_layers=3, dropout=0.0),
    "base": dict(d_model=512, d_ff=2048, heads=8, encoder_layers=6, decoder_layers=6),
    "big": dict(d_model=1024, d_ff=4096, heads=16, encoder_layers=6, decoder_layers=6),
    "wide": dict(d_model=1024, d_ff=8192, heads=16, encoder_layers=6, decoder_layers=6),
    "deep": dict(d_model=512, d_ff=2048, heads=8, encoder_layers=12, decoder_layers=12),
}


@dataclass
class ModelConfig:
    vocab_size: int
    pad: int = 0
    d_model: int = 256
    d_ff: int = 1024
    heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    dropout: float = 0.1  # residual / embedding dropout
    attention_dropout: float = 0.0
    activation: str = "relu"  # relu | gelu
    positions: str = "sinusoidal"  # sinusoidal | learned
    max_positions: int = 1024
    mask_bias: bool = False  # SpecializedFFN option: inactive neurons output 0 instead of act(b1)
    # study arms (docs/design.md §11); the defaults leave the model as it was
    adapter_kind: str = ""  # "" none | lp | fam: bottleneck adapters after every layer (adapters.py)
    adapter_dim: int = 0  # their bottleneck width
    adapter_of_task: list[int] | None = None  # task id -> adapter index
    freeze_base: bool = False  # every parameter outside the adapters gets requires_grad=False
    lass_tasks: int = 0  # > 0: LaSS element masks for this many directions on every Linear (lass.py)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_ff", "heads", "encoder_layers", "decoder_layers", "max_positions"):
            check_int(f"ModelConfig.{name}", getattr(self, name), 1)
        if self.d_model % self.heads:
            raise ValueError(f"ModelConfig.d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"ModelConfig.activation must be 'relu' or 'gelu', got {self.activation!r}")
        if self.positions not in ("sinusoidal", "learned"):
            raise ValueError(f"ModelConfig.positions must be 'sinusoidal' or 'learned', got {self.positions!r}")
        for name in ("dropout", "attention_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"ModelConfig.{name} must be in [0, 1), got {v!r}")
        if not 0 <= self.pad < self.vocab_size:
            raise ValueError(f"ModelConfig.pad ({self.pad}) must be a token id < vocab_size ({self.vocab_size})")
        check_adapter_config(self.adapter_kind, self.adapter_dim, self.adapter_of_task, self.freeze_base)
        check_int("ModelConfig.lass_tasks", self.lass_tasks, 0)

    @classmethod
    def from_preset(cls, preset: str, vocab_size: int, **overrides) -> "ModelConfig":
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        return cls(vocab_size=vocab_size, **{**PRESETS[preset], **overrides})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ffn_layer_names(cfg: ModelConfig) -> list[str]:
    """Names of a model's FFN layers (the keys of its masks): encoder layers, then decoder."""
    return [f"{side}.layers.{i}.ffn" for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers))
            for i in range(n)]


def task_arg(task: int | torch.Tensor) -> int | torch.Tensor:
    """Collapse a ``[B]`` task tensor whose entries are all equal to a Python int.

    SpecializedFFN takes a single int for homogeneous batches (one launch, no grouping).
    Call once per batch (it synchronises with the device). A 0-dim tensor stays as it is."""
    if isinstance(task, int):
        return task
    if not isinstance(task, torch.Tensor) or task.dim() > 1 or task.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"task must be an int or an integer tensor [B] or [], got {task!r:.80}")
    if task.dim() == 0:
        return task
    if task.numel() > 0 and bool((task == task[0]).all()):
        return int(task[0])
    return task


def _expand_task(task: int | torch.Tensor, length: int) -> int | torch.Tensor:
    """int stays int; ``[B]`` becomes one contiguous id per token ``[B·length]``, built once per
    encode/decode so that every layer's FFN sees views of one tensor (the ops cache their
    per-batch tables and id checks per tensor); a 0-dim tensor (the whole batch's task) stays."""
    return task if isinstance(task, int) or task.dim() == 0 else task[:, None].expand(-1, length).reshape(-1)


def sinusoidal_table(n: int, d: int) -> torch.Tensor:
    """fairseq's sinusoidal positions ``[n, d]``: sin on the first half, cos on the second."""
    half = d // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    ang = torch.arange(n, dtype=torch.float32)[:, None] * freq[None]
    table = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
    return F.pad(table, (0, d - 2 * half))


class DirectionFFN:
    """One direction's specialized FFN as a plain dense block over its kept neurons, for decoding:
    ``y = act(x W1[A]ᵀ + b1[A]) W2[:, A]ᵀ + b2 + c`` with ``c = W2[:, I] act(b1[I])`` (0 with
    mask_bias), docs/design.md §2. The rows are gathered once (a snapshot: the weights must not
    change while it is used); each call is then two matmuls with no per-call checks or dispatch."""

    def __init__(self, ffn: SpecializedFFN, task: int):
        if not 0 <= task < ffn.masks.num_tasks:
            raise ValueError(f"task: {task} is not a direction of the masks (0..{ffn.masks.num_tasks - 1})")
        w1, b1, w2, b2 = (t.detach() for t in (ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias))
        idx = ffn.masks.active(task).long()
        self.w1, self.b1, self.w2 = w1.index_select(0, idx), b1.index_select(0, idx), w2.index_select(1, idx)
        self.b2 = b2.clone()
        if not ffn.mask_bias:  # inactive neurons output the constant act(b1_i)
            inactive = torch.ones_like(b1).index_fill_(0, idx, 0.0)
            self.b2 += w2 @ (act(b1, ffn.activation) * inactive)
        self.activation = ffn.activation

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(act(F.linear(x, self.w1, self.b1), self.activation), self.w2, self.b2)


def _ffn(layer: nn.Module, x: torch.Tensor, task, valid) -> torch.Tensor:
    """The layer's FFN on x; inside Transformer.direction_ffns, a call for a direction prepared there
    (a host int task, no autograd) runs its DirectionFFN."""
    fast = layer.direction_ffns.get(task) if isinstance(task, int) and not torch.is_grad_enabled() else None
    return fast(x) if fast is not None else layer.ffn(x, task_ids=task, valid=valid)


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()  # p = 0 costs nothing


def _attention(q, k, v, mask, causal: bool, dropout: float) -> torch.Tensor:
    """``scaled_dot_product_attention``; on CPU, bf16 inputs are computed in float32 with
    autocast off (PyTorch's bf16 CPU kernels for it run 2-3x slower than float32 at this
    model's sizes: forward + backward 6.3 vs 2.1-2.8 ms at 24x4x32x64), then cast back."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                               is_causal=causal, dropout_p=dropout)
        return y.to(torch.bfloat16)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout)


class Attention(nn.Module):
    """Multi-head attention with an optional key/value cache for incremental decoding.

    Self-attention: ``forward(x)``; cross-attention: ``forward(x, memory)``.
    ``mask`` bool, broadcastable to ``[B, H, T, S]``, True = may attend.
    ``cache`` (dict, mutated): self-attention appends this step's k/v; cross-attention
    projects ``memory`` once and reuses it."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, d] -> [B, H, T, d/H]
        B, T, d = x.shape
        return x.view(B, T, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, memory=None, mask=None, causal=False, cache=None):
        q = self._split(self.q_proj(x))
        if memory is None:  # self-attention
            k, v = self._split(self.k_proj(x)), self._split(self.v_proj(x))
            if cache is not None:
                if "k" in cache:
                    k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                cache["k"], cache["v"] = k, v
                causal = causal and q.shape[2] > 1  # one new query attends to the whole cache
        elif cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k, v = self._split(self.k_proj(memory)), self._split(self.v_proj(memory))
            if cache is not None:
                cache["k"], cache["v"] = k, v
        if causal and k.shape[2] != q.shape[2]:
            raise ValueError("causal self-attention with a cache takes one new token per step")
        y = _attention(q, k, v, mask, causal and mask is None, self.dropout if self.training else 0.0)
        B, H, T, dh = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, H * dh))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(cfg.d_model)
        self.self_attn = Attention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = SpecializedFFN(cfg.d_model, cfg.d_ff, activation=cfg.activation, mask_bias=cfg.mask_bias)
        self.drop = _dropout(cfg.dropout)
        self.direction_ffns: dict[int, DirectionFFN] = {}

    def forward(self, x, attn_mask, task, valid):
        x = x + self.drop(self.self_attn(self.self_attn_norm(x), mask=attn_mask))
        return x + self.drop(_ffn(self, self.ffn_norm(x), task, valid))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(cfg.d_model)
        self.self_attn = Attention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.cross_attn_norm = nn.LayerNorm(cfg.d_model)
        self.cross_attn = Attention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = SpecializedFFN(cfg.d_model, cfg.d_ff, activation=cfg.activation, mask_bias=cfg.mask_bias)
        self.drop = _dropout(cfg.dropout)
        self.direction_ffns: dict[int, DirectionFFN] = {}

    def forward(self, x, memory, memory_mask, task, valid, cache=None):
        sa = None if cache is None else cache.setdefault("self", {})
        ca = None if cache is None else cache.setdefault("cross", {})
        x = x + self.drop(self.self_attn(self.self_attn_norm(x), causal=True, cache=sa))
        x = x + self.drop(self.cross_attn(self.cross_attn_norm(x), memory, mask=memory_mask, cache=ca))
        return x + self.drop(_ffn(self, self.ffn_norm(x), task, valid))


@dataclass
class EncoderOut:
    """Encoder states ``out [B, S, d]`` and non-padding mask ``valid [B, S]``."""
    out: torch.Tensor
    valid: torch.Tensor

    @property
    def attn_mask(self) -> torch.Tensor:  # [B, 1, 1, S], True = attend
        return self.valid[:, None, None, :]

    def index_select(self, order: torch.Tensor) -> "EncoderOut":
        return EncoderOut(self.out.index_select(0, order), self.valid.index_select(0, order))


class Transformer(nn.Module):
    """Shared-vocabulary pre-norm encoder-decoder (see module docstring)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad)  # shared: enc, dec, output
        self.embed_scale = math.sqrt(d)
        if cfg.positions == "learned":
            self.pos = nn.Embedding(cfg.max_positions, d)
        else:
            self.register_buffer("pos_table", sinusoidal_table(cfg.max_positions, d), persistent=False)
        self.drop = _dropout(cfg.dropout)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.encoder.norm = nn.LayerNorm(d)
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.decoder.norm = nn.LayerNorm(d)
        self.reset_parameters()
        self.adapters = (Adapters(d, cfg.adapter_dim, list(cfg.adapter_of_task), cfg.encoder_layers,
                                  cfg.decoder_layers) if cfg.adapter_kind else None)
        for name, p in self.named_parameters():
            p.requires_grad_(not cfg.freeze_base or name.startswith("adapters."))
        self._lass = lass.attach(self, cfg.lass_tasks) if cfg.lass_tasks else None

    def reset_parameters(self) -> None:
        """fairseq init: xavier-uniform linears with zero bias, N(0, d^-1/2) embeddings."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for emb in (self.embed, getattr(self, "pos", None)):
            if emb is not None:
                nn.init.normal_(emb.weight, std=self.cfg.d_model ** -0.5)
        with torch.no_grad():
            self.embed.weight[self.cfg.pad].zero_()

    # ------------------------------------------------------------------ embeddings
    def _embed(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        T = tokens.shape[1]
        if offset + T > self.cfg.max_positions:
            raise ValueError(f"sequence length {offset + T} exceeds max_positions={self.cfg.max_positions}")
        pos = self.pos.weight[offset:offset + T] if self.cfg.positions == "learned" else self.pos_table[offset:offset + T]
        return self.drop(self.embed_scale * self.embed(tokens) + pos.to(self.embed.weight.dtype))

    def _check_tokens(self, name: str, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.int64, torch.int32) or x.dim() != 2:
            raise TypeError(f"{name} must be an integer tensor [B, T], got {getattr(x, 'dtype', type(x))} "
                            f"with shape {tuple(getattr(x, 'shape', ()))}")

    def _check_task(self, task, batch: int):
        if isinstance(task, torch.Tensor) and task.shape not in ((batch,), ()):
            raise ValueError(f"task must be an int or a tensor [B={batch}] or [], got shape {tuple(task.shape)}")

    # ------------------------------------------------------------------ forward
    def encode(self, src: torch.Tensor, task: int | torch.Tensor) -> EncoderOut:
        """``src [B, S]`` -> :class:`EncoderOut`."""
        self._check_tokens("src", src)
        self._check_task(task, src.shape[0])
        valid = src != self.cfg.pad
        x = self._embed(src)
        t = _expand_task(task, src.shape[1])
        mask = valid[:, None, None, :]
        a = None if self.adapters is None else self.adapters.index(t)
        with lass.side_task(self._lass, "encoder", task):
            for i, layer in enumerate(self.encoder.layers):
                x = layer(x, mask, t, valid)
                if a is not None:
                    x = self.adapters.encoder[i](x, a)
        return EncoderOut(self.encoder.norm(x), valid)

    def decode(self, tgt_in: torch.Tensor, enc: EncoderOut, task: int | torch.Tensor,
               cache: list[dict] | None = None) -> torch.Tensor:
        """Decoder logits ``[B, L, V]``.

        Without ``cache``: teacher forcing over the whole ``tgt_in [B, L]`` (causal).
        With ``cache`` (a list from :meth:`new_cache`, mutated): ``tgt_in [B, 1]`` is the newest
        token of each hypothesis, and its position is the number of tokens already cached."""
        self._check_tokens("tgt_in", tgt_in)
        self._check_task(task, tgt_in.shape[0])
        offset = 0
        if cache is not None:
            if tgt_in.shape[1] != 1:
                raise ValueError(f"incremental decoding takes tgt_in [B, 1], got {tuple(tgt_in.shape)}")
            sa = cache[0].get("self", {})
            offset = sa["k"].shape[2] if "k" in sa else 0
            valid = None
        else:
            valid = tgt_in != self.cfg.pad
        x = self._embed(tgt_in, offset)
        t = _expand_task(task, tgt_in.shape[1])
        a = None if self.adapters is None else self.adapters.index(t)
        with lass.side_task(self._lass, "decoder", task):
            for i, layer in enumerate(self.decoder.layers):
                x = layer(x, enc.out, enc.attn_mask, t, valid, None if cache is None else cache[i])
                if a is not None:
                    x = self.adapters.decoder[i](x, a)
        return F.linear(self.decoder.norm(x), self.embed.weight)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[B, L, V]`` for ``src [B, S]``, ``tgt_in [B, L]``."""
        task = task_arg(task)
        if self._lass is not None and isinstance(task, torch.Tensor) and task.dim() == 1:
            return lass.grouped_forward(self, src, tgt_in, task)  # one direction per LaSS forward
        return self.decode(tgt_in, self.encode(src, task), task)

    def new_cache(self) -> list[dict]:
        """Empty key/value cache for :meth:`decode` (one dict per decoder layer)."""
        return [{} for _ in self.decoder.layers]

    @staticmethod
    def reorder_cache(cache: list[dict], order: torch.Tensor, parts: tuple[str, ...] = ("self", "cross")) -> None:
        """Select rows ``order`` of the cached tensors of ``parts`` ("self": the decoder's own keys
        and values, "cross": those of the encoder states) in place (beam search bookkeeping)."""
        for layer in cache:
            for name in parts:
                part = layer.get(name, {})
                for k in part:
                    part[k] = part[k].index_select(0, order)

    # ------------------------------------------------------------------ specialization
    def ffn_layers(self) -> "OrderedDict[str, SpecializedFFN]":
        """Ordered ``{name: SpecializedFFN}``: encoder layers first, then decoder layers."""
        layers = [layer.ffn for side in ("encoder", "decoder") for layer in getattr(self, side).layers]
        return OrderedDict(zip(ffn_layer_names(self.cfg), layers))

    def set_masks(self, masks: Mapping[str, Any] | None) -> None:
        """Set per-direction neuron masks: ``{layer name: TaskMasks | None}``.

        Layers not named keep their current masks; ``None`` as a value makes that layer dense;
        ``set_masks(None)`` makes every layer dense."""
        layers = self.ffn_layers()
        if masks is None:
            masks = {name: None for name in layers}
        if not isinstance(masks, Mapping):
            raise TypeError(f"masks must be a mapping layer name -> TaskMasks, got {type(masks).__name__}")
        unknown = sorted(set(masks) - set(layers))
        if unknown:
            raise ValueError(f"masks: unknown FFN layer name(s) {unknown[:4]}; expected names like {next(iter(layers))!r}")
        for name, m in masks.items():
            layers[name].set_masks(m)

    @contextmanager
    def direction_ffns(self, encoder_task, decoder_task) -> Iterator[None]:
        """Inside (decoding: no autograd, weights constant), every masked FFN called with the given
        host-int task of its side runs as a DirectionFFN, that direction's neurons gathered once here
        (tensor tasks, other tasks and dense layers run as before). Left on exit."""
        sides = (("encoder", encoder_task), ("decoder", decoder_task))
        layers = [(layer, task) for side, task in sides for layer in getattr(self, side).layers
                  if isinstance(task, int) and layer.ffn.masks is not None]
        try:
            for layer, task in layers:
                layer.direction_ffns[task] = DirectionFFN(layer.ffn, task)
            yield
        finally:
            for layer, _ in layers:
                layer.direction_ffns.clear()

    def masks(self) -> dict[str, Any]:
        """The masks the FFN layers hold (layer name -> TaskMasks, on the model's device), in layer
        order; empty when dense."""
        return {name: f.masks for name, f in self.ffn_layers().items() if f.masks is not None}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
