"""The study's arms (docs/design.md §11): how each continues the dense baseline. Every arm starts
from the baseline's weights with a fresh optimizer and gets the same number of updates; what
differs is the model the trainer builds from the starting checkpoint dict (``init_from``) and the
neuron masks it trains with:

    finetune      dense, all weights
    ns            Neuron Specialization masks (record + select at k) on every FFN
    ns-enc/-dec   the same masks on the encoder / decoder FFNs only (the others dense)
    random        random masks of the NS masks' sizes (one draw per seed)
    lass          LaSS element masks on every Linear weight (``nmt/lass.py``)
    adapter-lp    a bottleneck adapter per language pair after every layer, base frozen
    adapter-fam   the same, one adapter per language family

``bilingual`` is not a continuation (one model per direction from scratch, ``bilingual.py``).
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch

from neuronspec.nmt import lass
from neuronspec.nmt.adapters import adapter_groups, adapter_parameters
from neuronspec.nmt.model import ModelConfig, Transformer

CONTINUATIONS = ("finetune", "ns", "ns-enc", "ns-dec", "random", "lass", "adapter-lp", "adapter-fam")
ARMS = CONTINUATIONS + ("bilingual",)
LABELS = {"baseline": "Baseline (dense, multilingual)", "finetune": "Fine-Tune", "ns": "Ours (NS)",
          "ns-enc": "Ours^Enc", "ns-dec": "Ours^Dec", "random": "Random", "lass": "LaSS",
          "adapter-lp": "Adapter_LP", "adapter-fam": "Adapter_Fam", "bilingual": "Bilingual"}


def parse_arms(text: str) -> list[str]:
    """``"all"`` or a comma list of ARMS → the arms in ARMS order; ValueError naming --arms."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    if names == ["all"]:
        return list(ARMS)
    unknown = [n for n in names if n not in ARMS]
    if unknown or not names:
        raise ValueError(f"--arms: unknown arm(s) {unknown or names} (expected 'all' or a comma list of "
                         f"{', '.join(ARMS)})")
    return [a for a in ARMS if a in names]


def with_adapters(ck: Mapping, kind: str, dim: int) -> dict:
    """A starting checkpoint dict: ``ck``'s model plus fresh adapters (identity at start) of
    ``kind`` with bottleneck ``dim``, the base frozen."""
    directions = list(ck["data"]["directions"])
    table, _ = adapter_groups(directions, kind)
    mcfg = ModelConfig.from_dict({**ck["model_config"], "adapter_kind": kind, "adapter_dim": dim,
                                  "adapter_of_task": table, "freeze_base": True})
    model = Transformer(mcfg)
    missing, unexpected = model.load_state_dict(ck["model"], strict=False)
    if unexpected or any(not k.startswith("adapters.") for k in missing):
        raise ValueError(f"checkpoint: not the dense model of this preset (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return _starting(ck, mcfg, model)


def with_lass(ck: Mapping, masks: Mapping[str, torch.Tensor]) -> dict:
    """A starting checkpoint dict: ``ck``'s model with LaSS element masks ``{weight: bool [T, out, in]}``."""
    mcfg = ModelConfig.from_dict({**ck["model_config"], "lass_tasks": len(ck["data"]["directions"])})
    model = Transformer(mcfg)
    lass.load_dense(model, ck["model"])
    lass.set_masks(model, masks)
    return _starting(ck, mcfg, model)


def _starting(ck: Mapping, mcfg: ModelConfig, model: Transformer) -> dict:
    return {"model_config": mcfg.to_dict(), "model": model.state_dict(), "data": copy.deepcopy(dict(ck["data"])),
            "masks": None, "step": 0}


def extra_parameters(model_config: Mapping) -> tuple[int, int]:
    """(extra parameters of the arm's model, base parameters): Δθ = extra / base."""
    mcfg = ModelConfig.from_dict(model_config)
    model = Transformer(mcfg)
    extra = adapter_parameters(model)
    return extra, model.num_parameters() - extra
