"""Deriving LaSS's sub-networks (Lin et al. 2021; docs/design.md §11): fine-tune the baseline on
each direction alone (a direction view, ``bilingual.py``; the continuation budget rule with
``steps`` updates, the same for every direction), then per prune fraction α keep, in every
Linear weight of the fine-tuned model, the elements with ``|w| > kthvalue(|w|, int(α·numel))``
(``nmt.lass.lass_mask``). Each direction is a resumable study step whose folder keeps only its
packed masks (``masks.pt``: {α: {weight name: uint8 bits [ceil(numel/8)]}}); the fine-tuned
checkpoint is deleted once its masks are taken.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from neuronspec.nmt import lass
from neuronspec.nmt.checkpoint import load_checkpoint
from neuronspec.study import training
from neuronspec.study.bilingual import direction_view
from neuronspec.study.grid import Grid


def finetune_direction(folder: Path, base: Mapping, prep: str, direction: str, steps: int, seed: int, lr: float,
                       alphas: list[float], progress: bool, device: str) -> dict:
    """One direction's fine-tune in ``folder`` and its masks for every α (saved packed)."""
    view = direction_view(prep, direction, folder / "data")
    cfg = training.continuation_config(base, str(view), folder / "run", steps, seed, lr, device=device,
                                       progress=progress)
    start = {**base, "data": {**base["data"], "directions": [direction]}, "masks": None}
    ck = load_checkpoint(training.run(cfg, init_from=start)["checkpoint"])
    names = [n for n in ck["model"] if n in set(_targets(base))]
    packed = {a: {n: lass.pack_bits(lass.lass_mask(ck["model"][n], a)[None])[0] for n in names} for a in alphas}
    torch.save(packed, folder / "masks.pt")
    for f in (folder / "run").glob("checkpoint_*.pt"):
        f.unlink()
    kept = {str(a): sum(int(lass.unpack_bits(b, ck["model"][n].numel()).sum()) for n, b in m.items())
            / sum(ck["model"][n].numel() for n in m) for a, m in packed.items()}
    return {"direction": direction, "kept_fraction": kept}


def _targets(ck: Mapping) -> list[str]:
    from neuronspec.nmt.model import ModelConfig, Transformer
    return lass.target_names(Transformer(ModelConfig.from_dict(ck["model_config"])))


def derive(grid: Grid, base: Mapping, prep: str, steps: int, seed: int, lr: float, alphas: list[float],
           progress: bool, device: str) -> list[str]:
    """Run (or read back) every direction's step; the step names, in direction order."""
    names = []
    for d in base["data"]["directions"]:
        name = f"lass-derive/{d}"
        grid.step(name, lambda f, d=d: finetune_direction(f, base, prep, d, steps, seed, lr, alphas, progress,
                                                                device))
        names.append(name)
    return names


def masks_for(grid: Grid, steps: list[str], base: Mapping, alpha: float) -> dict[str, torch.Tensor]:
    """{weight name: bool [T, out, in]} for α from the directions' packed masks (task order)."""
    shapes = {n: tuple(base["model"][n].shape) for n in _targets(base)}
    per_dir = [torch.load(grid.folder(s) / "masks.pt", weights_only=True)[alpha] for s in steps]
    return {n: torch.stack([lass.unpack_bits(p[n], int(torch.Size(shp).numel())).view(shp) for p in per_dir])
            for n, shp in shapes.items()}
