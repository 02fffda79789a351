"""Wrap a loaded `transformers` model in place so that every FFN can be masked per direction
and can count its activations (docs/design.md §9).

    spec = wrap(model, directions=["en-de", "de-en"])    # in place; returns a Specialization
    with spec.direction("en-de"):                          # every sequence of the batch
        model(**batch)
    with spec.direction(["en-de", "de-en", "en-de"]):      # one direction per sequence
        model(**batch)
    spec.set_masks(masks)                                  # {layer: TaskMasks}; None = dense

Families (from `config.model_type`):
    m2m_100 (M2M100, NLLB-200), mbart, marian      fc1 → act → fc2 in every encoder and decoder layer
    llama, mistral, qwen2                           gated mlp: down(act(gate(x)) ⊙ up(x)) (decoder only)
The wrapped modules hold the original `nn.Parameter` objects under the original names, so
`state_dict` keys and `save_pretrained` are unchanged and training updates the model's own
weights. In an fc1/fc2 layer the layer's `fc1` becomes the whole FFN (`FusedFFN`), its
`activation_fn` an identity and its `fc2` a `Passthrough` that keeps fc2's parameters;
`unwrap()` puts the original modules back. Layers are named `encoder.layers.{i}.ffn` and
`decoder.layers.{i}.ffn` (decoder-only models: `decoder.`), as in neuronspec's own model, so
`neuronspec select` and `analyze` read HF counts unchanged.

Token routing: a direction set per sequence ([B]) is expanded to the tokens of each layer's
input [B, S]; a batch of B·k rows (beam search, `num_return_sequences`) repeats each
sequence's direction k times, as `generate` expands its inputs (`repeat_interleave`).
Counting excludes padding: forward pre-hooks on the encoder and decoder stacks read their
`attention_mask` (else `input_ids != pad_token_id`).
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from neuronspec.ops import (TaskMasks, fc1_act_count, glu_act_count, load_layer_masks, masked_ffn, masked_glu_ffn,
                            save_layer_masks)

MASKS_FILE = "neuronspec_masks.pt"  # beside the model's own files (save_pretrained's folder)
FC_FAMILIES = ("m2m_100", "mbart", "marian")
GLU_FAMILIES = ("llama", "mistral", "qwen2")
# HF activation name → the op's name; the fc1/fc2 families run masked_ffn for relu/gelu and the
# ungated masked_glu_ffn for silu (masked_ffn has no silu)
HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu"}


def _autocast(*tensors: torch.Tensor | None) -> tuple:
    """Under torch.autocast, the ops' inputs in the autocast dtype (as nn.Linear would run);
    gradients flow back through the casts to the parameters. None stays None."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(None if t is None else t.to(dtype) for t in tensors)


class Passthrough(nn.Module):
    """Keeps a replaced fc2's parameters (same objects, same state_dict keys) and returns its
    input: the FFN output already came from the layer's FusedFFN."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _SpecializedBase(nn.Module):
    """What both FFN kinds share: the owning Specialization, the layer's masks and counts."""

    def _setup(self, spec: "Specialization", name: str, stack: str, num_neurons: int, activation: str) -> None:
        self._spec, self.layer_name, self.stack = spec, name, stack
        self.num_neurons, self.activation = num_neurons, activation
        self.masks: TaskMasks | None = None
        self.counts: torch.Tensor | None = None

    def _task(self, x: torch.Tensor):
        return self._spec._token_task(x.shape[:-1], x.device)

    def extra_repr(self) -> str:
        m = "dense" if self.masks is None else f"{self.masks.num_tasks} direction masks"
        return f"{self.layer_name}, activation={self.activation}, {m}"


class FusedFFN(_SpecializedBase):
    """fc2(act(fc1(x))) of an fc1/fc2 layer, in place of its fc1 (holds fc1's weight and bias;
    fc2's stay at the layer's `fc2` Passthrough). Masked: `masked_ffn` (relu, gelu) or the
    ungated `masked_glu_ffn` (silu); counting: the fused counting ops. The layer's activation
    dropout is applied here between act and fc2, except with masks (the ops have no dropout)."""

    def __init__(self, fc1: nn.Linear, fc2: Passthrough, activation: str, activation_dropout: float,
                 spec: "Specialization", name: str, stack: str):
        super().__init__()
        self.weight, self.bias = fc1.weight, fc1.bias
        object.__setattr__(self, "_fc2", fc2)  # not a submodule: its parameters stay under layer.fc2
        self.activation_dropout = activation_dropout
        self._setup(spec, name, stack, fc1.out_features, activation)

    def _act(self, z: torch.Tensor) -> torch.Tensor:
        return F.silu(z) if self.activation == "silu" else torch.relu(z) if self.activation == "relu" else F.gelu(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.masks is None and self.counts is None:
            h = self._act(F.linear(x, self.weight, self.bias))
            return F.linear(F.dropout(h, p=self.activation_dropout, training=self.training),
                            self._fc2.weight, self._fc2.bias)
        x, w1, b1, w2, b2 = _autocast(x, self.weight, self.bias, self._fc2.weight, self._fc2.bias)
        task = self._task(x)
        if self.counts is not None:
            count = glu_act_count if self.activation == "silu" else fc1_act_count
            h = count(x, w1, b1, self.counts, task, self._spec._valid(self.stack, x.shape[:-1]), self.activation)
            return F.linear(F.dropout(h, p=self.activation_dropout, training=self.training), w2, b2)
        if self.activation == "silu":
            return masked_glu_ffn(x, w1, b1, None, None, w2, b2, self.masks, task, "silu", self._spec.mask_bias,
                                  self._spec.backend)
        return masked_ffn(x, w1, b1, w2, b2, self.masks, task, self.activation, self._spec.mask_bias,
                          self._spec.backend)


class SpecializedGLU(_SpecializedBase):
    """down(act(gate(x)) ⊙ up(x)) in place of a gated `mlp`; gate_proj, up_proj and down_proj
    are the original nn.Linear modules (same state_dict keys)."""

    def __init__(self, mlp: nn.Module, activation: str, spec: "Specialization", name: str, stack: str):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self._setup(spec, name, stack, mlp.gate_proj.out_features, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u, d = self.gate_proj, self.up_proj, self.down_proj
        if self.masks is None and self.counts is None:
            return d({"silu": F.silu, "relu": torch.relu, "gelu": F.gelu}[self.activation](g(x)) * u(x))
        x, wg, bg, wu, bu, wd, bd = _autocast(x, g.weight, g.bias, u.weight, u.bias, d.weight, d.bias)
        if self.counts is not None:
            a = glu_act_count(x, wg, bg, self.counts, self._task(x), self._spec._valid(self.stack, x.shape[:-1]),
                              self.activation)
            return F.linear(a * F.linear(x, wu, bu), wd, bd)
        return masked_glu_ffn(x, wg, bg, wu, bu, wd, bd, self.masks, self._task(x), self.activation,
                              self._spec.mask_bias, self._spec.backend)


def _activation(config, attr: str, model_name: str) -> str:
    name = getattr(config, attr, None)
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"model: {model_name} uses activation {name!r} ({attr}); neuronspec supports "
                         f"{sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def family(model: nn.Module) -> str:
    """'fc' or 'glu' for a supported model, else a ValueError naming its class."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in FC_FAMILIES:
        return "fc"
    if model_type in GLU_FAMILIES:
        return "glu"
    raise ValueError(f"model: {type(model).__name__} (model_type {model_type!r}) is not supported; supported "
                     f"model types: {', '.join(FC_FAMILIES + GLU_FAMILIES)}")


class Specialization:
    """The handle of a wrapped model: directions, per-direction masks, counting, routing.

    directions: the direction names (task id = position), e.g. ["en-de", "de-en"]. mask_bias
    and backend are passed to the ops (docs/design.md §2-3).
    """

    def __init__(self, model: nn.Module, directions: Sequence[str], mask_bias: bool = False,
                 backend: str | None = None):
        if isinstance(directions, str) or not directions or not all(isinstance(d, str) for d in directions):
            raise ValueError(f"directions: expected a non-empty list of names like 'en-de', got {directions!r}")
        if len(set(directions)) != len(directions):
            raise ValueError(f"directions: names must be unique, got {list(directions)}")
        if getattr(model, "_neuronspec", None) is not None:
            raise ValueError(f"model: {type(model).__name__} is already wrapped; call unwrap() first")
        self.model, self.family = model, family(model)
        self.directions, self.mask_bias, self.backend = list(directions), bool(mask_bias), backend
        self._task_ids: int | torch.Tensor | None = None
        self._valid_masks: dict[str, torch.Tensor | None] = {}
        self._decoder_valid: torch.Tensor | None = None  # from the model call's labels (counting)
        self._tokens: dict[str, torch.Tensor] | None = None
        self._restore: list = []
        self._hooks: list = []
        self.layers: OrderedDict[str, _SpecializedBase] = OrderedDict()
        self._wrap()
        model._neuronspec = self

    # ---- wrapping -------------------------------------------------------------------------
    def _stacks(self) -> list[tuple[str, nn.Module]]:
        m = self.model
        if self.family == "fc":
            return [("encoder", m.get_encoder()), ("decoder", m.get_decoder())]
        return [("decoder", m.get_decoder())]

    def _wrap(self) -> None:
        cls = type(self.model).__name__
        self._hooks.append(self.model.register_forward_pre_hook(self._model_hook, with_kwargs=True))
        for stack, module in self._stacks():
            layers = getattr(module, "layers", None)
            if not isinstance(layers, nn.ModuleList):
                raise ValueError(f"model: {cls}'s {stack} has no `layers` list; its layout is not supported")
            self._hooks.append(module.register_forward_pre_hook(self._stack_hook(stack), with_kwargs=True))
            for i, layer in enumerate(layers):
                name = f"{stack}.layers.{i}.ffn"
                self.layers[name] = self._wrap_fc(layer, name, stack) if self.family == "fc" else \
                    self._wrap_glu(layer, name, stack)

    def _wrap_fc(self, layer: nn.Module, name: str, stack: str) -> FusedFFN:
        cls = type(self.model).__name__
        if not all(isinstance(getattr(layer, a, None), nn.Linear) for a in ("fc1", "fc2")):
            raise ValueError(f"model: {cls} layer {name} has no fc1/fc2 nn.Linear; its layout is not supported")
        if layer.fc1.bias is None or layer.fc2.bias is None:
            raise ValueError(f"model: {cls} layer {name} has an fc1/fc2 without bias; not supported")
        activation = _activation(self.model.config, "activation_function", cls)
        fc2 = Passthrough(layer.fc2)
        dropout = float(getattr(layer, "activation_dropout", 0.0))
        ffn = FusedFFN(layer.fc1, fc2, activation, dropout, self, name, stack)
        self._restore.append((layer, {"fc1": layer.fc1, "fc2": layer.fc2, "activation_fn": layer.activation_fn,
                                      "activation_dropout": dropout}))
        layer.fc1, layer.fc2, layer.activation_fn, layer.activation_dropout = ffn, fc2, nn.Identity(), 0.0
        return ffn

    def _wrap_glu(self, layer: nn.Module, name: str, stack: str) -> SpecializedGLU:
        cls = type(self.model).__name__
        mlp = getattr(layer, "mlp", None)
        if not all(isinstance(getattr(mlp, a, None), nn.Linear) for a in ("gate_proj", "up_proj", "down_proj")):
            raise ValueError(f"model: {cls} layer {name} has no gated mlp (gate_proj, up_proj, down_proj)")
        ffn = SpecializedGLU(mlp, _activation(self.model.config, "hidden_act", cls), self, name, stack)
        self._restore.append((layer, {"mlp": mlp}))
        layer.mlp = ffn
        return ffn

    def unwrap(self) -> nn.Module:
        """Put the original modules back (they share the parameters, so training shows) and
        return the model."""
        for layer, attrs in self._restore:
            for key, value in attrs.items():
                setattr(layer, key, value)
        for h in self._hooks:
            h.remove()
        self._restore, self._hooks = [], []
        self.model._neuronspec = None
        return self.model

    # ---- directions -----------------------------------------------------------------------
    def task_id(self, direction: str | int) -> int:
        """The id of a direction name (or a checked int id)."""
        if isinstance(direction, str):
            if direction not in self.directions:
                raise ValueError(f"direction: {direction!r} is not one of this model's directions {self.directions}")
            return self.directions.index(direction)
        if isinstance(direction, bool) or not isinstance(direction, int) or not 0 <= direction < len(self.directions):
            raise ValueError(f"direction: expected a name or an id in [0, {len(self.directions)}), got {direction!r}")
        return direction

    @property
    def task_ids(self) -> int | torch.Tensor | None:
        """The direction of the next forward passes: an int (every sequence) or int64 [B] (one
        per sequence), or None (dense only: masks and counting need one)."""
        return self._task_ids

    @task_ids.setter
    def task_ids(self, value) -> None:
        if value is None or isinstance(value, (str, int)):
            self._task_ids = None if value is None else self.task_id(value)
            return
        if isinstance(value, torch.Tensor):
            if value.dtype.is_floating_point or value.dtype == torch.bool or value.dim() != 1:
                raise ValueError(f"task_ids: expected an integer tensor [B] (one id per sequence), got "
                                 f"{value.dtype} {tuple(value.shape)}")
            if value.numel() and (int(value.min()) < 0 or int(value.max()) >= len(self.directions)):
                raise ValueError(f"task_ids: ids must lie in [0, {len(self.directions)}), got {value.tolist()[:8]}")
            self._task_ids = value.long()
            return
        if isinstance(value, Sequence):
            self._task_ids = torch.tensor([self.task_id(v) for v in value], dtype=torch.long)
            return
        raise TypeError(f"task_ids: expected a direction, an id, a list of them or a tensor [B], got {value!r}")

    @contextmanager
    def direction(self, which) -> Iterator["Specialization"]:
        """Within the block, forward passes use direction `which`: a name or id for the whole
        batch, or a list / int64 tensor [B] with one per sequence."""
        before = self._task_ids
        self.task_ids = which
        try:
            yield self
        finally:
            self._task_ids = before

    def _token_task(self, lead: torch.Size, device: torch.device):
        """The direction of each token of an FFN input [B, S, ...]: an int, or int64 [B, S]."""
        ids = self._task_ids
        if ids is None:
            raise ValueError("task_ids: no direction set; use `with spec.direction('src-tgt'):` or set "
                             "spec.task_ids (masks and counting need one)")
        if isinstance(ids, int):
            return ids
        if len(lead) < 1 or lead[0] % max(ids.numel(), 1) or ids.numel() == 0:
            raise ValueError(f"task_ids: {ids.numel()} directions (one per sequence) do not fit a batch of "
                             f"{lead[0] if len(lead) else 0} sequences")
        rows = ids.to(device)
        if lead[0] != ids.numel():  # generate's expansion: each sequence repeated k times
            rows = rows.repeat_interleave(lead[0] // ids.numel())
        return rows.reshape(-1, *([1] * (len(lead) - 1))).expand(lead)

    # ---- masks ----------------------------------------------------------------------------
    def set_masks(self, masks: Mapping[str, TaskMasks] | None) -> None:
        """{layer name: TaskMasks over this model's directions} for every layer, or None (dense)."""
        if masks is None:
            for ffn in self.layers.values():
                ffn.masks = None
            return
        if not isinstance(masks, Mapping):
            raise TypeError(f"masks: expected a dict {{layer: TaskMasks}} or None, got {type(masks).__name__}")
        if set(masks) != set(self.layers):
            missing, extra = sorted(set(self.layers) - set(masks)), sorted(set(masks) - set(self.layers))
            raise ValueError(f"masks: layers do not match this model (missing {missing[:4]}, unknown {extra[:4]}); "
                             "were they selected for another model?")
        for name, m in masks.items():
            ffn = self.layers[name]
            if not isinstance(m, TaskMasks):
                raise TypeError(f"masks[{name!r}]: expected a TaskMasks, got {type(m).__name__}")
            if m.num_neurons != ffn.num_neurons:
                raise ValueError(f"masks[{name!r}]: built for {m.num_neurons} neurons, this layer has "
                                 f"{ffn.num_neurons}; were they selected for another model?")
            if list(m.names) != self.directions:
                raise ValueError(f"masks[{name!r}]: directions {m.names[:4]} differ from the model's "
                                 f"{self.directions[:4]}")
        if self.model.training and any(getattr(f, "activation_dropout", 0.0) > 0 for f in self.layers.values()):
            warnings.warn("the model's activation dropout is not applied in masked FFNs", stacklevel=2)
        device = next(self.model.parameters()).device
        for name, m in masks.items():
            self.layers[name].masks = m.to(device)

    def masks(self) -> dict[str, TaskMasks]:
        """{layer: TaskMasks} of the layers that have masks."""
        return {n: f.masks for n, f in self.layers.items() if f.masks is not None}

    def save_masks(self, folder: str | os.PathLike, meta: dict | None = None) -> Path:
        """Write the masks to folder/neuronspec_masks.pt (atomically) and return the path."""
        masks = self.masks()
        if not masks:
            raise ValueError("masks: none set; nothing to save")
        path = Path(folder) / MASKS_FILE
        info = {"model_type": self.model.config.model_type, "directions": self.directions,
                "mask_bias": self.mask_bias, **(meta or {})}
        save_layer_masks(masks, path, info)
        return path

    def load_masks(self, path: str | os.PathLike) -> dict:
        """Set the masks of a masks file (or of folder/neuronspec_masks.pt); returns its meta."""
        path = Path(path)
        if path.is_dir():
            path = path / MASKS_FILE
        if not path.is_file():
            raise ValueError(f"masks: no such file {os.fspath(path)!r}")
        masks, meta = load_layer_masks(path)
        self.set_masks(masks)
        return meta

    # ---- counting -------------------------------------------------------------------------
    def _model_hook(self, module, args, kwargs):
        """Forward pre-hook of the model (counting only): an encoder-decoder's decoder positions
        count where `decoder_attention_mask` is set, else where `labels` != -100 (the positions
        with a target: its decoder inputs are the labels shifted right, padding included)."""
        if self._tokens is not None and self.family == "fc":
            mask, labels = kwargs.get("decoder_attention_mask"), kwargs.get("labels")
            self._decoder_valid = mask.bool() if isinstance(mask, torch.Tensor) else \
                labels != -100 if isinstance(labels, torch.Tensor) else None

    def _stack_hook(self, stack: str):
        """Forward pre-hook of a stack (counting only): its non-padding mask [B, S] and the
        non-padding tokens per direction."""
        def hook(module, args, kwargs):
            if self._tokens is None:
                return None
            mask = kwargs.get("attention_mask")
            ids = kwargs.get("input_ids", args[0] if args else None)
            pad = getattr(self.model.config, "pad_token_id", None)
            hint = self._decoder_valid if stack == "decoder" else None
            if hint is not None and isinstance(ids, torch.Tensor) and hint.shape == ids.shape:
                valid = hint
            elif isinstance(mask, torch.Tensor) and mask.dim() == 2:
                valid = mask.bool()
            elif isinstance(ids, torch.Tensor) and pad is not None:
                valid = ids != pad
            else:
                valid = None
            self._valid_masks[stack] = valid
            if valid is not None:
                task = self._token_task(valid.shape, valid.device)
                per_seq = valid.sum(1).cpu()
                if isinstance(task, int):
                    self._tokens[stack][task] += per_seq.sum()
                else:
                    self._tokens[stack].index_add_(0, task[:, 0].cpu(), per_seq)
            return None
        return hook

    def _valid(self, stack: str, lead: torch.Size) -> torch.Tensor | None:
        valid = self._valid_masks.get(stack)
        if valid is not None and tuple(valid.shape) != tuple(lead):
            raise ValueError(f"attention_mask: shape {tuple(valid.shape)} does not match the {stack}'s tokens "
                             f"{tuple(lead)}; count with teacher forcing (one forward per batch, no cache)")
        return valid

    def start_counting(self) -> None:
        """Until stop_counting(), forward passes count (Z > 0) per (direction, neuron) over
        non-padding tokens. The model must be dense (no masks)."""
        if self.masks():
            raise ValueError("masks: set; counting records the dense model (spec.set_masks(None) first)")
        T = len(self.directions)
        for ffn in self.layers.values():
            device = next(ffn.parameters()).device
            ffn.counts = torch.zeros(T, ffn.num_neurons, dtype=torch.long, device=device)
        self._tokens = {s: torch.zeros(T, dtype=torch.long) for s in ("encoder", "decoder")}

    def stop_counting(self) -> dict:
        """{"counts": {layer: int64 [T, f]}, "tokens": {"encoder", "decoder": int64 [T]}}."""
        if self._tokens is None:
            raise RuntimeError("stop_counting: start_counting() was not called")
        counts = {n: f.counts.cpu() for n, f in self.layers.items()}
        for f in self.layers.values():
            f.counts = None
        tokens, self._tokens, self._valid_masks, self._decoder_valid = self._tokens, None, {}, None
        return {"counts": counts, "tokens": tokens}

    @contextmanager
    def counting(self) -> Iterator[dict]:
        """`with spec.counting() as rec:` counts inside the block; rec holds stop_counting()'s
        result after it."""
        rec: dict = {}
        self.start_counting()
        try:
            yield rec
        finally:
            rec.update(self.stop_counting())


def wrap(model: nn.Module, directions: Sequence[str], mask_bias: bool = False,
         backend: str | None = None) -> Specialization:
    """Wrap `model` in place (module docstring) and return its Specialization handle."""
    return Specialization(model, directions, mask_bias, backend)
