"""Scores of the study's runs: groups of directions (the paper's columns), means over seeds, and
seed-pooled paired bootstrap tests against a reference system (the baseline, or bilingual).

Groups of a supervised direction: ``all``, its tier, its side (``en-x`` / ``x-en``) and
``tier/side``; a direction without the pivot is ``zero-shot``. A group's score is the unweighted
mean of its directions' scores; tests pool the group's lines over its directions and seeds.
"""
from __future__ import annotations

import statistics
from typing import Mapping

import numpy as np

from neuronspec.nmt import bootstrap
from neuronspec.nmt.compare import paired_test_from_stats

METRICS = (("chrf", "chrF++"), ("bleu", "BLEU"))
TIERS = ("high", "medium", "low")


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    if not values:
        raise ValueError("mean_sd: no values")
    m = sum(values) / len(values)
    return m, (statistics.stdev(values) if len(values) > 1 else None)


def group_of(direction: str, tier_of: Mapping[str, str], pivot: str = "en") -> list[str]:
    """The groups a direction belongs to (module docstring)."""
    src, tgt = direction.split("-", 1)
    if pivot not in (src, tgt):
        return ["zero-shot"]
    other = tgt if src == pivot else src
    side = f"{pivot}-x" if src == pivot else f"x-{pivot}"
    return ["all", tier_of[other], side, f"{tier_of[other]}/{side}"]


def members(directions, tier_of: Mapping[str, str], pivot: str = "en") -> dict[str, list[str]]:
    """{group: its directions} over ``directions``."""
    out: dict[str, list[str]] = {}
    for d in directions:
        for g in group_of(d, tier_of, pivot):
            out.setdefault(g, []).append(d)
    return out


def group_scores(per_dir: Mapping[str, dict], tier_of: Mapping[str, str], pivot: str = "en") -> dict[str, dict]:
    """{group: {metric: mean over the group's directions, "directions": n}} from {direction: {"bleu", "chrf"}}."""
    return {g: {m: sum(per_dir[d][m] for d in ds) / len(ds) for m, _ in METRICS} | {"directions": len(ds)}
            for g, ds in members(per_dir, tier_of, pivot).items()}


def aggregate_arms(runs: Mapping[str, Mapping[int, Mapping[str, dict]]], tier_of: Mapping[str, str],
                   pivot: str = "en") -> dict[str, dict[str, dict]]:
    """runs: {arm: {seed: {direction: {"bleu", "chrf"}}}} → {arm: {group: {metric: {mean, sd, n,
    values}}}}; groups: those of group_of and every single direction."""
    out: dict[str, dict[str, dict]] = {}
    for arm, seeds in runs.items():
        per_seed = {s: group_scores(pd, tier_of, pivot) for s, pd in seeds.items()}
        for s, pd in seeds.items():
            per_seed[s].update({d: {m: r[m] for m, _ in METRICS} for d, r in pd.items()})
        out[arm] = {}
        for g in sorted({g for gs in per_seed.values() for g in gs}):
            out[arm][g] = {}
            for m, _ in METRICS:
                vals = [per_seed[s][g][m] for s in sorted(per_seed) if g in per_seed[s]]
                mu, sd = mean_sd(vals)
                out[arm][g][m] = {"mean": mu, "sd": sd, "n": len(vals), "values": vals}
    return out


Texts = Mapping[str, tuple[list[str], list[str]]]  # {direction: (hypotheses, references)}


def direction_stats(reference: Texts, system: Mapping[int, Texts], workers: int = 1) -> dict[tuple[int, str], dict]:
    """Per-line statistics {(seed, direction): {metric: (stats_ref, stats_sys)}} of ``system``
    (per seed) against ``reference`` on the directions both have (the same lines)."""
    keys = [(s, d) for s, texts in system.items() for d in texts if d in reference]
    for s, d in keys:
        if system[s][d][1] != reference[d][1]:
            raise ValueError(f"scores: {d} (seed {s}) was evaluated on other lines than the reference system")
    jobs = [((reference[d][0], system[s][d][0]), reference[d][1]) for s, d in keys]
    out = bootstrap.line_stats_many(jobs, workers=workers) if jobs else []
    return {k: {m: tuple(v) for m, v in st.items()} for k, st in zip(keys, out)}


def pooled_test(stats: Mapping[tuple[int, str], dict], directions: list[str], n_samples: int) -> dict | None:
    """Seed-pooled paired bootstrap over ``directions`` (None when no statistics cover them)."""
    parts = [st for (_, d), st in stats.items() if d in directions]
    if not parts:
        return None
    pooled = {m: tuple(np.concatenate([p[m][i] for p in parts]) for i in (0, 1)) for m in bootstrap.METRICS}
    identical = all(np.array_equal(*p[m]) for p in parts for m in bootstrap.METRICS)
    return paired_test_from_stats(pooled, identical, n_samples)
