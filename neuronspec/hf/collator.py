"""The Hugging Face Trainer path (docs/design.md §9): a dataset column of directions becomes the
model call's `task_ids` through `DirectionCollator`; `MasksCallback` (hf/callback.py) writes the
masks into every Trainer checkpoint.

    spec = wrap(model, directions); spec.set_masks(masks)
    collator = DirectionCollator(DataCollatorForSeq2Seq(tokenizer, model), spec)
    trainer = Seq2SeqTrainer(model, args, train_dataset=ds, data_collator=collator,
                             callbacks=[MasksCallback(spec)])   # rows: input_ids, labels, direction
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from .wrap import Specialization

COLUMNS = ("direction", "task_ids")  # the column names a row's direction may have


class DirectionCollator:
    """collate(features) with each row's `direction` (or `task_ids`) column (a name or an id)
    taken out before the base collator runs and returned as `task_ids` int64 [B]."""

    def __init__(self, collate: Callable[[list], Mapping], spec: Specialization):
        if not callable(collate):
            raise TypeError(f"collate: expected a data collator (callable), got {type(collate).__name__}")
        if not isinstance(spec, Specialization):
            raise TypeError(f"spec: expected the Specialization that neuronspec.hf.wrap returns, got "
                            f"{type(spec).__name__}")
        self.collate, self.spec = collate, spec

    def __call__(self, features: Sequence[Mapping]) -> dict:
        ids, rest = [], []
        for i, row in enumerate(features):
            found = [c for c in COLUMNS if c in row]
            if len(found) != 1:
                raise ValueError(f"features[{i}]: expected one of the columns {COLUMNS} (the row's direction), got "
                                 f"columns {sorted(row)}")
            value = row[found[0]]
            value = value.item() if isinstance(value, torch.Tensor) else value
            ids.append(self.spec.task_id(value))
            rest.append({k: v for k, v in row.items() if k != found[0]})
        batch = dict(self.collate(rest))
        batch["task_ids"] = torch.tensor(ids, dtype=torch.long)
        return batch
