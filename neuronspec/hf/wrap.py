"""Wrap a loaded `transformers` model in place so that every FFN can be masked per direction
and can count its activations (docs/design.md §9).

    spec = wrap(model, directions=["en-de", "de-en"])    # in place; returns a Specialization
    model(**batch, task_ids=["en-de", "de-en"])            # this call's directions, one per sequence
    with spec.direction("en-de"):                          # or: every call in the block
        model(**batch)
    spec.set_masks(masks)                                  # {layer: TaskMasks}; None = dense
    model.save_pretrained(folder)                          # weights + masks; neuronspec.hf.load(folder)

Families (from `config.model_type`):
    m2m_100 (M2M100, NLLB-200), mbart, marian      fc1 → act → fc2 in every encoder and decoder layer
    llama, mistral, qwen2, qwen3, gemma, gemma2,    gated mlp: down(act(gate(x)) ⊙ up(x)) (decoder only;
    gemma3_text, phi3                               phi3: one gate_up_proj, gate rows first)
The wrapped modules hold the original `nn.Parameter` objects under the original names, so
`state_dict` keys and `save_pretrained` are unchanged and training updates the model's own
weights. In an fc1/fc2 layer the layer's `fc1` becomes the whole FFN (`FusedFFN`), its
`activation_fn` an identity and its `fc2` a `Passthrough` that keeps fc2's parameters; a gated
`mlp` becomes a `SpecializedGLU` whose children are the mlp's linears (PEFT tuners put there
before or after `wrap` run inside the masked FFN, hf/ffn.py). `unwrap()` puts the original
modules back, with the linears (or tuners) the SpecializedGLU holds by then. Layers are named
`encoder.layers.{i}.ffn` and `decoder.layers.{i}.ffn` (decoder-only models: `decoder.`), as in
neuronspec's own model, so `neuronspec select` and `analyze` read HF counts unchanged.

Token routing: a direction set per sequence ([B]) is expanded to the tokens of each layer's
input [B, S]; a batch of B·k rows (beam search, `num_return_sequences`) repeats each
sequence's direction k times, as `generate` expands its inputs (`repeat_interleave`). The
directions of a forward call are fixed for its gradient-checkpointing recomputation (hf/calls.py).
Counting excludes padding: forward pre-hooks on the encoder and decoder stacks read their
`attention_mask` (else `input_ids != pad_token_id`); an encoder-decoder's decoder positions are
those of `decoder_attention_mask`, else of labels that are neither -100 nor the pad id.
"""
from __future__ import annotations

import functools
import os
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from neuronspec.ops import TaskMasks, load_layer_masks, save_layer_masks
from neuronspec.ops.validation import check_masks

from . import calls
from .marker import CONFIG_MARK, warn_on_plain_load_if_loaded
from .ffn import HF_ACTIVATIONS, FusedFFN, Passthrough, SpecializedGLU, _SpecializedBase, refuse_tuner, tuner_name

MASKS_FILE = "neuronspec_masks.pt"  # beside the model's own files (save_pretrained's folder)
FC_FAMILIES = ("m2m_100", "mbart", "marian")
# gated families → the config field their mlp's activation comes from
GLU_FAMILIES = {"llama": "hidden_act", "mistral": "hidden_act", "qwen2": "hidden_act", "qwen3": "hidden_act",
                "gemma": "hidden_act", "gemma2": "hidden_activation", "gemma3_text": "hidden_activation",
                "phi3": "hidden_act"}
_UNSET = object()  # no forward call in progress: FFNs read spec.task_ids


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
                     f"model types: {', '.join(FC_FAMILIES + tuple(GLU_FAMILIES))}")


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
        self._call_ids = _UNSET  # the directions of the forward call in progress
        self._valid_masks: dict[str, torch.Tensor | None] = {}
        self._decoder_valid: torch.Tensor | None = None  # from the model call's labels (counting)
        self._tokens: dict[str, torch.Tensor] | None = None
        self._restore: list = []
        self._hooks: list = []
        self._overrides: dict = {}
        self._checkpointed = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
        self.layers: OrderedDict[str, _SpecializedBase] = OrderedDict()
        self._wrap()
        calls.install(self)
        model._neuronspec = self

    # ---- wrapping -------------------------------------------------------------------------
    def _stacks(self) -> list[tuple[str, nn.Module]]:
        m = self.model
        if self.family == "fc":
            return [("encoder", m.get_encoder()), ("decoder", m.get_decoder())]
        return [("decoder", m.get_decoder())]

    def _wrap(self) -> None:
        cls = type(self.model).__name__
        for stack, module in self._stacks():
            layers = getattr(module, "layers", None)
            if not isinstance(layers, nn.ModuleList):
                raise ValueError(f"model: {cls}'s {stack} has no `layers` list; its layout is not supported")
            for i, layer in enumerate(layers):
                name = f"{stack}.layers.{i}.ffn"
                if self.family == "fc":
                    self._check_fc(layer, name)
                else:
                    self._check_glu(layer, name)
        for stack, module in self._stacks():
            hook = functools.partial(self._stack_hook, stack)  # a bound method: deep copies hook their own spec
            self._hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            for i, layer in enumerate(module.layers):
                name = f"{stack}.layers.{i}.ffn"
                self.layers[name] = self._wrap_fc(layer, name, stack) if self.family == "fc" else \
                    self._wrap_glu(layer, name, stack)

    def _check_fc(self, layer: nn.Module, name: str) -> None:
        """ValueError (before anything is replaced) for an fc1/fc2 layer wrap cannot take."""
        cls = type(self.model).__name__
        for attr in ("fc1", "fc2"):
            refuse_tuner(getattr(layer, attr, None), f"{cls} layer {name}: {attr}")
        if not all(isinstance(getattr(layer, a, None), nn.Linear) for a in ("fc1", "fc2")):
            raise ValueError(f"model: {cls} layer {name} has no fc1/fc2 nn.Linear; its layout is not supported")
        if layer.fc1.bias is None or layer.fc2.bias is None:
            raise ValueError(f"model: {cls} layer {name} has an fc1/fc2 without bias; not supported")
        _activation(self.model.config, "activation_function", cls)

    def _check_glu(self, layer: nn.Module, name: str) -> None:
        cls = type(self.model).__name__
        mlp = getattr(layer, "mlp", None)
        names = ("gate_up_proj", "down_proj") if hasattr(mlp, "gate_up_proj") else ("gate_proj", "up_proj", "down_proj")
        linears = [getattr(mlp, a, None) for a in names]
        if not all(isinstance(m, nn.Linear) or (isinstance(m, nn.Module) and tuner_name(m)) for m in linears):
            raise ValueError(f"model: {cls} layer {name} has no gated mlp (gate_proj, up_proj, down_proj or "
                             "gate_up_proj, down_proj)")
        _activation(self.model.config, GLU_FAMILIES[self.model.config.model_type], cls)

    def _wrap_fc(self, layer: nn.Module, name: str, stack: str) -> FusedFFN:
        activation = _activation(self.model.config, "activation_function", type(self.model).__name__)
        fc2 = Passthrough(layer.fc2)
        dropout = float(getattr(layer, "activation_dropout", 0.0))
        ffn = FusedFFN(layer.fc1, fc2, activation, dropout, self, name, stack)
        self._restore.append((layer, {"fc1": layer.fc1, "fc2": layer.fc2, "activation_fn": layer.activation_fn,
                                      "activation_dropout": dropout}))
        layer.fc1, layer.fc2, layer.activation_fn, layer.activation_dropout = ffn, fc2, nn.Identity(), 0.0
        return ffn

    def _wrap_glu(self, layer: nn.Module, name: str, stack: str) -> SpecializedGLU:
        attr = GLU_FAMILIES[self.model.config.model_type]
        ffn = SpecializedGLU(layer.mlp, _activation(self.model.config, attr, type(self.model).__name__), self,
                             name, stack)
        self._restore.append((layer, {"mlp": layer.mlp}))
        layer.mlp = ffn
        return ffn

    def unwrap(self) -> nn.Module:
        """Put the original modules back (they share the parameters, so training shows; a gated
        mlp gets the linears or PEFT tuners its SpecializedGLU holds now) and return the model."""
        calls.uninstall(self)
        for (layer, attrs), ffn in zip(self._restore, self.layers.values()):
            if isinstance(ffn, SpecializedGLU):
                for name in ffn.linear_names():
                    setattr(attrs["mlp"], name, getattr(ffn, name))
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

    def resolve(self, value, arg: str = "task_ids") -> int | torch.Tensor | None:
        """Directions as the FFNs read them: None, an int (every sequence) or int64 [B] (one per
        sequence) from a name, an id, a list of them or an integer tensor [B] (checked)."""
        if value is None or isinstance(value, (str, int)):
            return None if value is None else self.task_id(value)
        if isinstance(value, torch.Tensor):
            if value.dtype.is_floating_point or value.dtype == torch.bool or value.dim() > 1:
                raise ValueError(f"{arg}: expected an integer tensor [B] (one id per sequence), got "
                                 f"{value.dtype} {tuple(value.shape)}")
            if value.numel() and (int(value.min()) < 0 or int(value.max()) >= len(self.directions)):
                raise ValueError(f"{arg}: ids must lie in [0, {len(self.directions)}), got {value.tolist()[:8]}")
            return int(value) if value.dim() == 0 else value.long()
        if isinstance(value, Sequence):
            return torch.tensor([self.task_id(v) for v in value], dtype=torch.long)
        raise TypeError(f"{arg}: expected a direction, an id, a list of them or a tensor [B], got {value!r}")

    @property
    def task_ids(self) -> int | torch.Tensor | None:
        """The direction of the next forward passes that get none of their own (`task_ids=`):
        an int (every sequence) or int64 [B] (one per sequence), or None (dense only)."""
        return self._task_ids

    @task_ids.setter
    def task_ids(self, value) -> None:
        self._task_ids = self.resolve(value)

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

    def _active_ids(self):
        return self._task_ids if self._call_ids is _UNSET else self._call_ids

    def _run_with(self, ids, fn, *args, **kwargs):
        """fn(*args, **kwargs) with `ids` as the directions of the call in progress."""
        before, self._call_ids = self._call_ids, ids
        try:
            return fn(*args, **kwargs)
        finally:
            self._call_ids = before

    def _forward(self, inner, args, kwargs, given):
        """The wrapped model's forward (hf/calls.py): directions `given` (or spec.task_ids) for
        this call; counting reads the decoder's valid positions."""
        ids = self._active_ids() if given is None else self.resolve(given)
        if self._tokens is not None and self.family == "fc":
            self._decoder_valid = self._labels_valid(kwargs.get("decoder_attention_mask"), kwargs.get("labels"))
        return self._run_with(ids, inner, *args, **kwargs)

    def _labels_valid(self, mask, labels) -> torch.Tensor | None:
        """An encoder-decoder's counted decoder positions: decoder_attention_mask, else the
        labels that are a target (not -100 and, unless it doubles as eos, not the pad id)."""
        if isinstance(mask, torch.Tensor):
            return mask.bool()
        if not isinstance(labels, torch.Tensor):
            return None
        config = self.model.config
        pad, eos = getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)
        valid = labels != -100
        return valid & (labels != pad) if pad is not None and pad != eos else valid

    def _token_task(self, lead: torch.Size, device: torch.device):
        """The direction of each token of an FFN input [B, S, ...]: an int, or int64 [B, S]."""
        ids = self._active_ids()
        if ids is None:
            raise ValueError("task_ids: no direction set; pass task_ids= to the model call (or generate), use "
                             "`with spec.direction('src-tgt'):` or set spec.task_ids (masks and counting need one)")
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
            try:
                check_masks(m, ffn.num_neurons, None, "this layer", f"masks[{name!r}]")
            except ValueError as e:
                raise ValueError(f"{e}; were they selected for another model?") from None
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

    def save_pretrained(self, folder: str | os.PathLike, *args, **kwargs) -> None:
        """model.save_pretrained(folder, ...) with the masks: neuronspec_masks.pt beside the
        weights and config.json's "neuronspec" entry (directions, mask_bias), which
        `neuronspec.hf.load` reads; the wrapped model's own save_pretrained does the same."""
        self.model.save_pretrained(folder, *args, **kwargs)

    def _save_pretrained(self, inner, folder, args, kwargs):
        masks = self.masks()
        if not masks or not kwargs.get("is_main_process", True):
            return inner(folder, *args, **kwargs)
        config = self.model.config
        setattr(config, CONFIG_MARK, {"masks": MASKS_FILE, "directions": self.directions,
                                      "mask_bias": self.mask_bias, "layers": len(masks)})
        try:
            out = inner(folder, *args, **kwargs)
        finally:
            delattr(config, CONFIG_MARK)
        self.save_masks(folder)
        return out

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
    def _stack_hook(self, stack: str, module, args, kwargs):
        """Forward pre-hook of a stack: pins the directions of checkpointed layers (hf/calls.py);
        when counting, its non-padding mask [B, S] and the non-padding tokens per direction."""
        calls.pin_checkpointing(self)
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
    warn_on_plain_load_if_loaded()
    return Specialization(model, directions, mask_bias, backend)
