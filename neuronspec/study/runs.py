"""The study's steps after the baseline: sub-networks, every arm × seed, the bilingual models,
their evaluations and the side-by-side step timing. Each is a ``Grid`` step (resumable)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping

from neuronspec.study import arms as arm_lib
from neuronspec.study import training
from neuronspec.study.grid import Grid

WHERE = {"ns": "both", "ns-enc": "enc", "ns-dec": "dec"}  # the NS arms' masked side (specialize --where)


def _evaluate(grid: Grid, name: str, ckpt: str | Path, prep: str, a: argparse.Namespace,
              directions: list[str] | None = None) -> Path:
    """Greedy evaluation of ``ckpt`` on the first eval-sentences test lines (zero-shot too unless
    ``directions`` are given); the evaluation folder."""
    from neuronspec.nmt.evaluate import evaluate_checkpoint

    def run(folder: Path) -> dict:
        r = evaluate_checkpoint(ckpt, prep, "test", 1, a.eval_sentences, out_dir=folder / "eval", device=a.device,
                                directions=directions, progress=a.progress, zero_shot=directions is None)
        return {"averages": r.get("averages")}

    grid.step(f"eval/{name}", run)
    return grid.folder(f"eval/{name}") / "eval"


def _ns_masks(grid: Grid, a: argparse.Namespace, base_path: str, prep: str):
    """(NS masks {layer: TaskMasks}, kept fraction) from record (valid split) + select at k."""
    from neuronspec.ops import save_layer_masks
    from neuronspec.ops.masks import load_layer_masks
    from neuronspec.specialization.record import record
    from neuronspec.specialization.select import kept_table, select_masks

    grid.step("record", lambda f: {"directions": record(base_path, prep, f / "counts.pt", split="valid",
                                                        max_sentences=a.record_sentences, device=a.device,
                                                        progress=a.progress)["directions"]})

    def select(folder: Path) -> dict:
        import torch
        counts = torch.load(grid.folder("record") / "counts.pt", map_location="cpu", weights_only=False)
        m = select_masks(counts["counts"], counts["directions"], a.k, pivot=counts["meta"]["pivot"])
        save_layer_masks(m, folder / "masks.pt", {"kind": "selected", "k": a.k, "directions": counts["directions"]})
        rows = kept_table(m)
        return {"kept_fraction": sum(r["mean"] for r in rows) / len(rows)}

    res = grid.step("select", select)
    return load_layer_masks(grid.folder("select") / "masks.pt")[0], res["kept_fraction"]


def _starts(grid: Grid, a: argparse.Namespace, base: Mapping, base_path: str, prep: str) -> dict:
    """{run name: (arm, seed, starting dict or None = the baseline, masks or None)} of every continuation."""
    from neuronspec.specialization.select import random_masks
    from neuronspec.specialization.specialize import restrict
    from neuronspec.study import lass as lass_study

    cont = [x for x in a.arms if x in arm_lib.CONTINUATIONS]
    ns = None
    if any(x in cont for x in ("ns", "ns-enc", "ns-dec", "random")):
        ns, _ = _ns_masks(grid, a, base_path, prep)
    lass_steps = []
    if "lass" in cont:
        lass_steps = lass_study.derive(grid, base, prep, a.lass_steps, a.seeds[0], training.final_lr(base),
                                       a.lass_prune, a.progress, a.device)
    plan = {}
    for s in a.seeds:
        for arm in cont:
            if arm == "finetune":
                plan[f"{arm}/s{s}"] = (arm, s, None, None)
            elif arm in ("ns", "ns-enc", "ns-dec"):
                plan[f"{arm}/s{s}"] = (arm, s, None, restrict(ns, WHERE[arm]))
            elif arm == "random":
                plan[f"{arm}/s{s}"] = (arm, s, None, random_masks(ns, s))
            elif arm == "lass":
                plan[f"{arm}/s{s}"] = (arm, s, ("lass", a.lass_prune[0]), None)
            else:
                plan[f"{arm}/s{s}"] = (arm, s, ("adapter", arm.split("-")[1]), None)
    for alpha in a.lass_prune[1:] if "lass" in cont else ():
        plan[f"lass@{alpha}/s{a.seeds[0]}"] = (f"lass@{alpha}", a.seeds[0], ("lass", alpha), None)
    builders = {"lass": lambda alpha: arm_lib.with_lass(base, lass_study.masks_for(grid, lass_steps, base, alpha)),
                "adapter": lambda kind: arm_lib.with_adapters(base, kind, a.adapter_dim)}
    return {name: (arm, s, None if spec is None else (spec, builders[spec[0]]), masks)
            for name, (arm, s, spec, masks) in plan.items()}


def run_arms(grid: Grid, a: argparse.Namespace, base: Mapping, base_path: str, prep: str, pdata) -> dict:
    """Run (or read back) every step; {"baseline": eval folder, "runs": {name: {arm, seed, eval,
    extra_params}}, "bilingual": {direction: eval folder}, "efficiency": {...}}."""
    from neuronspec.study import bilingual, efficiency

    lr = training.final_lr(base)
    out = {"baseline": _evaluate(grid, "baseline", base_path, prep, a), "runs": {}, "bilingual": {}}
    starts = _starts(grid, a, base, base_path, prep)
    built: dict[tuple, dict] = {}

    def start_of(spec):
        if spec is None:
            return None
        key, make = spec
        if key not in built:
            built[key] = make(key[1])
        return built[key]

    for name, (arm, s, spec, masks) in starts.items():
        def train(folder: Path, spec=spec, masks=masks, s=s) -> dict:
            start = start_of(spec)
            cfg = training.continuation_config(base, prep, folder, a.extra_steps, s, lr, device=a.device,
                                               progress=a.progress)
            summary = training.run(cfg, init_from=start or base, masks=masks)
            extra, n_base = arm_lib.extra_parameters((start or base)["model_config"])
            return {"checkpoint": summary["checkpoint"], "steps": summary["step"], "extra_params": extra,
                    "base_params": n_base, "mask_bytes": _mask_bytes(start, masks)}

        res = grid.step(f"runs/{name}", train)
        out["runs"][name] = {"arm": arm, "seed": s, "eval": _evaluate(grid, name, res["checkpoint"], prep, a), **res}
    if "bilingual" in a.arms:
        for d in bilingual.parse_directions(a.bilingual, pdata):
            res = grid.step(f"bilingual/{d}", lambda f, d=d: _bilingual(f, a, prep, d), keep_partial=True)
            view = str(grid.folder(f"bilingual/{d}") / "data")
            out["bilingual"][d] = _evaluate(grid, f"bilingual-{d}", res["checkpoint"], view, a, [d])
    timing_arms = {arm: (spec, masks) for arm, s, spec, masks in starts.values() if s == a.seeds[0] and "@" not in arm}
    if timing_arms:
        out["efficiency"] = grid.step("efficiency", lambda f: efficiency.measure_steps(
            f, base, prep, {arm: (start_of(spec), m) for arm, (spec, m) in timing_arms.items()},
            a.timing_rounds, a.progress, a.device))
    return out


def _mask_bytes(start: Mapping | None, masks) -> int:
    """Bytes of the run's sub-network masks: LaSS packed bits, or NS neuron masks as bits (F per
    layer and direction)."""
    if start is not None and start["model_config"].get("lass_tasks"):
        return sum(v.numel() for k, v in start["model"].items() if k.endswith(".bits"))
    if masks:
        return sum((m.num_neurons * m.num_tasks + 7) // 8 for m in masks.values())
    return 0


def _bilingual(folder: Path, a: argparse.Namespace, prep: str, direction: str) -> dict:
    """One direction's model from scratch: the baseline's preset and budget rules (plateau,
    patience) with the bilingual caps."""
    from neuronspec.nmt.config import TrainConfig
    from neuronspec.study.bilingual import direction_view

    view = direction_view(prep, direction, folder / "data")
    cfg = TrainConfig(data=str(view), out=str(folder / "run"), preset=a.preset, model_args=a.model_args,
                      max_tokens=a.max_tokens, lr_scheduler="inverse_sqrt", seed=a.seeds[0],
                      max_steps=a.bilingual_max_steps, max_minutes=a.bilingual_minutes, valid_every=a.valid_every,
                      patience=a.patience, valid_max_sentences=a.valid_sentences, valid_chrf_sentences=0,
                      save_every=a.valid_every, device=a.device, progress=a.progress)
    s = training.plateau_run(cfg, folder / "run", a.bilingual_minutes)
    return {"steps": s["step"], "minutes": s["minutes"], "checkpoint": str(training.best_checkpoint(folder / "run"))}
