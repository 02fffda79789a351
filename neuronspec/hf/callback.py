"""`MasksCallback`: the masks in every Trainer checkpoint (docs/design.md §9), also for a PEFT
model, whose save_pretrained writes only the adapters."""
from __future__ import annotations

import os

from transformers import TrainerCallback  # the optional extra neuronspec[hf]

from .wrap import Specialization


class MasksCallback(TrainerCallback):
    """Writes the masks (`neuronspec_masks.pt`, as Specialization.save_masks) into each checkpoint
    folder the Trainer saves."""

    def __init__(self, spec: Specialization):
        if not isinstance(spec, Specialization):
            raise TypeError(f"spec: expected the Specialization that neuronspec.hf.wrap returns, got "
                            f"{type(spec).__name__}")
        self.spec = spec

    def on_save(self, args, state, control, **kwargs):
        if args.should_save and self.spec.masks():
            self.spec.save_masks(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))
        return control
