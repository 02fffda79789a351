"""`SpecializedFFN`: a drop-in fc1 → act → fc2 block that can restrict each task to its neurons."""
from __future__ import annotations

import torch
from torch import nn

from .activations import act
from .functional import autocast_inputs, fc1_act_count, masked_ffn
from .masks import TaskMasks
from .validation import check_activation, check_masks


class SpecializedFFN(nn.Module):
    """y = fc2(act(fc1(x))) with optional per-task masks on the rows of fc1 (docs/design.md §2).

    Parameters are two nn.Linear layers named `fc1` and `fc2` (fairseq/nanoGPT naming), so a
    dense checkpoint loads unchanged. No dropout inside (apply it to the output). Masks are not
    part of the state dict; save them with the checkpoint yourself (`TaskMasks.state_dict`).
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", mask_bias: bool = False,
                 backend: str | None = None):
        super().__init__()
        check_activation(activation)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.activation, self.mask_bias, self.backend = activation, mask_bias, backend
        self.masks: TaskMasks | None = None
        self.counts: torch.Tensor | None = None

    def set_masks(self, masks: TaskMasks | None) -> None:
        """Restrict task t to masks.active(t); None goes back to dense."""
        if masks is not None:
            check_masks(masks, self.fc1.out_features, None, "fc1")
            masks = masks.to(self.fc1.weight.device)
        self.masks = masks

    def start_counting(self, num_tasks: int) -> None:
        """Until stop_counting(), forward also counts (Z > 0) per (task, neuron) over valid tokens."""
        if self.masks is not None:
            raise ValueError("start_counting: remove the masks first (set_masks(None)); counting records the dense model")
        self.counts = torch.zeros(num_tasks, self.fc1.out_features, dtype=torch.long, device=self.fc1.weight.device)

    def stop_counting(self) -> torch.Tensor:
        """int64 [T, d_ff] counts since start_counting()."""
        if self.counts is None:
            raise RuntimeError("stop_counting: start_counting() was not called")
        counts, self.counts = self.counts, None
        return counts

    def forward(self, x: torch.Tensor, task_ids: int | torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., d_model]; task_ids int or LongTensor [...] (needed with masks or counting);
        valid bool [...] marks non-padding tokens (used by counting only)."""
        if self.masks is None and self.counts is None:
            return self.fc2(act(self.fc1(x), self.activation))
        x, w1, b1, w2, b2 = autocast_inputs(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        if self.counts is not None:
            h = fc1_act_count(x, w1, b1, self.counts, task_ids, valid, self.activation, backend=self.backend)
            return torch.nn.functional.linear(h, w2, b2)
        if task_ids is None:
            raise ValueError("task_ids: required when masks are set (one id per token, or an int)")
        return masked_ffn(x, w1, b1, w2, b2, self.masks, task_ids, self.activation, self.mask_bias, self.backend)

    def extra_repr(self) -> str:
        m = "dense" if self.masks is None else f"{self.masks.num_tasks} task masks"
        return f"activation={self.activation}, {m}, mask_bias={self.mask_bias}"
