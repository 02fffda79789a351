"""Paired bootstrap resampling (Koehn 2004) equal to sacrebleu's `PairedTest(test_type="bs")`, fast.

sacrebleu draws the resample indices as one (n_samples, N) array and gathers the per-line
statistics into an (n_samples, N, S) float32 array: on 60 directions x 2,000 lines pooled that is
~10 GB, and the baseline's confidence interval (which `evaluate --compare` does not report) is a
second pass of the same. Here each line's sufficient statistics are extracted once per system and
metric (BLEU: n-gram matches/totals and lengths; chrF++: character and word n-gram counts), the
pooled test reuses the per-direction lines, and each resample's sums are a row of
``counts @ stats`` where ``counts[r, i]`` is how often line i is drawn in resample r (built in
chunks of rows, so memory stays O(chunk x N)).

Same numbers as sacrebleu: the indices are drawn with the same generator, seed
(``SACREBLEU_SEED``, default 12345) and call, in chunks of rows (numpy's stream is the same), the
scores come from the metric's own ``_compute_score_from_stats`` and the p-value is sacrebleu's
``(#{|d_r| - mean |d| > |d|} + 1) / (n_samples + 1)``. One known difference: sacrebleu accumulates
the resampled sums in float32, which rounds once a sum passes 2**24; these sums are exact.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

METRICS = ("bleu", "chrf")
_ROWS_PER_CHUNK = 64


def new_metric(name: str):
    """The metric objects `evaluate` scores with: BLEU (13a) and chrF++ (chrF, word order 2)."""
    if name == "bleu":
        return BLEU(tokenize="13a")
    if name == "chrf":
        return CHRF(word_order=2)
    raise ValueError(f"metric: unknown metric {name!r} (expected one of {METRICS})")


def sacrebleu_seed() -> int | None:
    """The seed `PairedTest` uses: SACREBLEU_SEED (default 12345); 'none' or 0 -> unseeded."""
    seed = os.environ.get("SACREBLEU_SEED", "12345")
    value = None if seed.lower() == "none" else int(seed)
    return value if value else None


def line_stats(metric_name: str, systems: Sequence[Sequence[str]], refs: Sequence[str]) -> list[np.ndarray]:
    """[(N, S) int64 per system]: the metric's sufficient statistics of each line (one reference per
    line). The references' n-grams are extracted once for all systems, and a line whose hypothesis
    equals the first system's is not extracted again."""
    for i, hyps in enumerate(systems):
        if len(hyps) != len(refs):
            raise ValueError(f"line_stats: system {i} has {len(hyps)} hypotheses vs {len(refs)} references")
    metric = new_metric(metric_name)
    if not refs:
        return [np.zeros((0, 0), dtype=np.int64) for _ in systems]
    cache = metric._cache_references([list(refs)])
    metric._ref_cache = cache
    out = [np.asarray(metric._extract_corpus_statistics(list(systems[0]), None), dtype=np.int64)]
    for hyps in systems[1:]:
        stats = out[0].copy()
        todo = [i for i, (h, h0) in enumerate(zip(hyps, systems[0])) if h != h0]
        if todo:
            metric._ref_cache = [cache[i] for i in todo]
            stats[todo] = np.asarray(metric._extract_corpus_statistics([hyps[i] for i in todo], None), dtype=np.int64)
        out.append(stats)
    return out


def line_stats_many(jobs: Sequence[tuple[Sequence[Sequence[str]], Sequence[str]]],
                    workers: int | None = None) -> list[dict[str, list[np.ndarray]]]:
    """line_stats of every metric for each (systems, refs) job, in `workers` processes (default:
    the CPUs; extraction is pure Python, so processes are what makes it parallel)."""
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers <= 1 or sum(len(r) for _, r in jobs) < 2000:
        return [_job_stats(job) for job in jobs]
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        return pool.map(_job_stats, jobs, chunksize=1)


def _job_stats(job) -> dict[str, list[np.ndarray]]:
    systems, refs = job
    return {m: line_stats(m, systems, refs) for m in METRICS}


def corpus_score(metric, stats: np.ndarray) -> float:
    """Corpus-level score from per-line statistics (sacrebleu's own aggregation, exact integer sums)."""
    return float(metric._compute_score_from_stats([int(x) for x in stats.sum(0)]).score)


def resampled_sums(stats: np.ndarray, n_samples: int, seed: int | None) -> np.ndarray:
    """(n_samples, S) float64: for each bootstrap resample of the N lines, the sums of `stats` (N, S).

    Resample r draws the same N indices as sacrebleu's r-th row of
    ``default_rng(seed).choice(N, size=(n_samples, N), replace=True)``."""
    import torch  # its GEMM: numpy's OpenBLAS threads slow ~100x on a loaded machine

    n = stats.shape[0]
    rng = np.random.default_rng(seed)
    stats64 = torch.from_numpy(stats.astype(np.float64))
    out = np.empty((n_samples, stats.shape[1]), dtype=np.float64)
    for start in range(0, n_samples, _ROWS_PER_CHUNK):
        rows = min(_ROWS_PER_CHUNK, n_samples - start)
        idx = rng.choice(n, size=(rows, n), replace=True)
        flat = (idx + n * np.arange(rows)[:, None]).ravel()
        counts = np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)
        out[start:start + rows] = (torch.from_numpy(counts) @ stats64).numpy()  # exact: integers < 2**53
    return out


def p_value(sample_diffs: np.ndarray, observed: float) -> float:
    """sacrebleu's two-sided bootstrap p-value: centred |B − A| of the resamples above the observed."""
    centred = sample_diffs - sample_diffs.mean()
    return (int(np.sum(centred > observed)) + 1) / (len(sample_diffs) + 1)


def paired_test_stats(stats: dict[str, tuple[np.ndarray, np.ndarray]], n_samples: int = 1000,
                      seed: int | None | str = "env") -> dict[str, Any]:
    """B against A from per-line statistics {metric: (stats_a (N, S), stats_b (N, S))}.

    Returns {"n", "<m>_a", "<m>_b", "d_<m>", "p_<m>", "identical"} for every metric m; "identical"
    is True when A's and B's statistics are equal on every line (then p is 1.0: no difference can
    be attributed to chance). All metrics share one draw of indices, as in sacrebleu."""
    if n_samples < 1:
        raise ValueError(f"n_samples: must be >= 1, got {n_samples}")
    seed = sacrebleu_seed() if seed == "env" else seed
    n = {a.shape[0] for a, b in stats.values()} | {b.shape[0] for a, b in stats.values()}
    if len(n) != 1:
        raise ValueError(f"paired_test_stats: systems and metrics cover different numbers of lines {sorted(n)}")
    n_lines = n.pop()
    out: dict[str, Any] = {"n": n_lines}
    if n_lines == 0:
        raise ValueError("paired_test_stats: no lines to compare")
    widths = [a.shape[1] for a, _ in stats.values()]
    sums = resampled_sums(np.concatenate([m for pair in stats.values() for m in pair], axis=1), n_samples, seed)
    sums = sums.astype(np.float32)
    col = 0
    identical = True
    for (name, (a, b)), width in zip(stats.items(), widths):
        metric = new_metric(name)
        sa, sb = sums[:, col:col + width], sums[:, col + width:col + 2 * width]
        col += 2 * width
        score_a, score_b = corpus_score(metric, a), corpus_score(metric, b)
        diffs = np.abs(np.array([metric._compute_score_from_stats(r).score for r in sb])
                       - np.array([metric._compute_score_from_stats(r).score for r in sa]))
        same = bool(np.array_equal(a, b))
        identical &= same
        out.update({f"{name}_a": score_a, f"{name}_b": score_b, f"d_{name}": score_b - score_a,
                    f"p_{name}": 1.0 if same else p_value(diffs, abs(score_b - score_a))})
    out["identical"] = identical
    return out
