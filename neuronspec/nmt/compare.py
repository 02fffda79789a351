"""Is system B better than system A? Paired bootstrap resampling over two evaluation folders.

`neuronspec evaluate --compare A B` reads two folders written by `neuronspec evaluate` (the same
split and lines: ``hyp.*`` and ``ref.*`` files per direction) and runs the paired bootstrap test
(Koehn 2004) of sacrebleu's ``PairedTest(test_type="bs")`` — 1000 resamples, its seed, its index
draws, its statistic, so its p-values — for BLEU and chrF++: per direction, and over all
supervised directions pooled into one test set (and all zero-shot directions pooled, when both
folders have them). The resampling runs on per-line sufficient statistics extracted once
(`neuronspec.nmt.bootstrap`): 60 directions x 2,000 lines in about a minute instead of sacrebleu's
tens of GB. The p-value is two-sided: how often a resampled |B − A|, centred on its resampling
mean, reaches the observed |B − A|. A nonzero difference is significant when p < 0.05; two
identical systems are not resampled: p = 1, reported as identical.

A folder is read only whole: results.json must list its directions, each direction's
hypothesis and reference files must have the same number of lines (``\n`` only, as written)
and match the sha256 results.json records for them (folders written before checksums: a
warning). Writes compare.md, then compare.json (write_set: no old file is left beside a new one).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from neuronspec.atomic import strict_json, write_set
from neuronspec.files import check_output_file, text_lines
from neuronspec.nmt import bootstrap

log = logging.getLogger(__name__)

ALPHA = 0.05


def read_eval(folder: str | os.PathLike) -> tuple[dict, dict[str, tuple[list[str], list[str]]]]:
    """(results.json, {direction: (hypotheses, references)}) of an evaluation folder, checked
    whole (see the module docstring); ValueError naming the file otherwise."""
    folder = Path(folder)
    res_path = folder / "results.json"
    if not res_path.is_file():
        raise ValueError(f"compare: {str(folder)!r} has no results.json (not a `neuronspec evaluate` folder)")
    try:
        res = json.loads(res_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"compare: {res_path} is not valid JSON ({e})") from None
    if not isinstance(res, dict) or not isinstance(res.get("directions"), dict) or not isinstance(res.get("split"), str):
        raise ValueError(f"compare: {res_path} has no 'split' and 'directions' (an incomplete or foreign "
                         "results.json: run `neuronspec evaluate` again)")
    sums = res.get("files")
    if sums is None:
        log.warning("compare: %s records no checksums (written before they were): its files are not verified", res_path)
    split, texts = res["split"], {}
    for name, row in res["directions"].items():
        tgt = name.split("-", 1)[-1]
        hyp, ref = folder / f"hyp.{split}.{name}.{tgt}", folder / f"ref.{split}.{name}.{tgt}"
        if not ref.is_file():
            raise ValueError(f"compare: {str(ref)!r} is missing (evaluation folders from before references were "
                             "written: run `neuronspec evaluate` again)")
        h, r = _lines(hyp, sums), _lines(ref, sums)
        n = row.get("n") if isinstance(row, dict) else None
        if len(h) != len(r) or (n is not None and len(r) != n):
            raise ValueError(f"compare: {hyp} has {len(h)} lines, {ref.name} {len(r)}"
                             + (f", results.json says {n}" if n is not None else "") + ": the folder is not one "
                             "evaluation (mixed or edited): run `neuronspec evaluate` again")
        texts[name] = (h, r)
    return res, texts


def _lines(path: Path, sums: dict | None) -> list[str]:
    """The lines of a hypothesis or reference file, checked against its recorded sha256."""
    if not path.is_file():
        raise ValueError(f"compare: {str(path)!r} is missing")
    data = path.read_bytes()
    if sums is not None and sums.get(path.name) != hashlib.sha256(data).hexdigest():
        raise ValueError(f"compare: {path} does not match the checksum in results.json (changed after "
                         "`neuronspec evaluate`, or left by another run): run `neuronspec evaluate` again")
    try:
        return text_lines(data.decode("utf-8"), crlf=False)
    except UnicodeDecodeError:
        raise ValueError(f"compare: {path} is not UTF-8 text") from None


LineStats = dict  # {metric: (stats_a (N, S), stats_b (N, S))}, see bootstrap.line_stats


def line_stats(hyps_a: list[str], hyps_b: list[str], refs: list[str]) -> LineStats:
    """Per-line BLEU and chrF++ statistics of A and B against the same references."""
    if not len(hyps_a) == len(hyps_b) == len(refs):
        raise ValueError(f"paired_test: A has {len(hyps_a)} lines, B {len(hyps_b)}, the references {len(refs)}")
    if not refs:
        raise ValueError("paired_test: no lines to compare")
    return {m: tuple(bootstrap.line_stats(m, [hyps_a, hyps_b], refs)) for m in bootstrap.METRICS}


def paired_test_from_stats(stats: LineStats, identical: bool, n_samples: int = 1000) -> dict[str, Any]:
    """BLEU and chrF++ of A and B, B − A and the bootstrap p-values from per-line statistics;
    `identical` (the outputs are the same text) gives p = 1 without resampling."""
    if identical:
        out: dict[str, Any] = {"n": len(next(iter(stats.values()))[0])}
        for m, (a, _) in stats.items():
            score = bootstrap.corpus_score(bootstrap.new_metric(m), a)
            out.update({f"{m}_a": score, f"{m}_b": score, f"d_{m}": 0.0, f"p_{m}": 1.0})
    else:
        out = bootstrap.paired_test_stats(stats, n_samples)
    out["identical"] = identical
    # identical outputs give Δ = 0 and a degenerate resampling distribution: never significant
    out["significant"] = {m: out[f"p_{m}"] < ALPHA and out[f"d_{m}"] != 0 for m in bootstrap.METRICS}
    return out


def paired_test(hyps_a: list[str], hyps_b: list[str], refs: list[str], n_samples: int = 1000) -> dict[str, Any]:
    """BLEU and chrF++ of A and B on the same lines, B − A, and the bootstrap p-values (1 for
    identical outputs, which are not resampled: ``"identical": True``)."""
    return paired_test_from_stats(line_stats(hyps_a, hyps_b, refs), list(hyps_a) == list(hyps_b), n_samples)


def compare(folder_a: str | os.PathLike, folder_b: str | os.PathLike, n_samples: int = 1000) -> dict[str, Any]:
    """Per-direction and pooled paired bootstrap tests of B against A (see module docstring)."""
    res_a, texts_a = read_eval(folder_a)
    res_b, texts_b = read_eval(folder_b)
    if res_a["split"] != res_b["split"]:
        raise ValueError(f"compare: split {res_a['split']!r} vs {res_b['split']!r}")
    common = [d for d in texts_a if d in texts_b]
    if not common:
        raise ValueError("compare: the two folders share no direction")
    pivot = res_a.get("pivot", "en")
    for d in common:
        (_, ra), (_, rb) = texts_a[d], texts_b[d]
        if ra != rb:
            raise ValueError(f"compare: direction {d} was scored on different lines in the two folders "
                             f"({len(ra)} vs {len(rb)} references); evaluate both with the same --max-sentences")
        if not ra:
            raise ValueError(f"compare: direction {d} has no lines in {folder_a}")
    all_stats = bootstrap.line_stats_many([((texts_a[d][0], texts_b[d][0]), texts_a[d][1]) for d in common])
    rows, pools = {}, {"supervised": [], "zero-shot": []}
    for d, stats in zip(common, all_stats):
        stats, identical = {m: tuple(v) for m, v in stats.items()}, texts_a[d][0] == texts_b[d][0]
        rows[d] = paired_test_from_stats(stats, identical, n_samples)
        pools["supervised" if pivot in d.split("-") else "zero-shot"].append((stats, identical))
    pooled = {k: paired_test_from_stats(_pool([s for s, _ in p]), all(i for _, i in p), n_samples)
              for k, p in pools.items() if p}
    return {"a": str(folder_a), "b": str(folder_b), "split": res_a["split"], "n_samples": n_samples,
            "alpha": ALPHA, "directions": rows, "pooled": pooled,
            "wins": {m: {"b_better": sum(r["significant"][m] and r[f"d_{m}"] > 0 for r in rows.values()),
                         "a_better": sum(r["significant"][m] and r[f"d_{m}"] < 0 for r in rows.values()),
                         "directions": len(rows)} for m in bootstrap.METRICS}}


def _pool(parts: list[LineStats]) -> LineStats:
    """The directions' lines as one test set: their per-line statistics stacked."""
    return {m: tuple(np.concatenate([p[m][i] for p in parts]) for i in (0, 1)) for m in bootstrap.METRICS}


def mark(delta: float, p: float) -> str:
    """'+1.23*' — the difference, starred when significant at ALPHA."""
    return f"{delta:+.2f}{'*' if p < ALPHA and delta != 0 else ''}"


def _p(r: dict, metric: str) -> str:
    return "1 (identical)" if r.get("identical") else f"{r[f'p_{metric}']:.3f}"


def to_markdown(cmp: dict[str, Any]) -> str:
    lines = [f"# B vs A, paired bootstrap ({cmp['n_samples']} resamples)", "",
             f"A: `{cmp['a']}`  ", f"B: `{cmp['b']}`  ", f"split: {cmp['split']}; * = p < {cmp['alpha']}", "",
             "| directions | lines | BLEU A | BLEU B | ΔBLEU | p | chrF++ A | chrF++ B | ΔchrF++ | p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in [*((f"**all {k}**", v) for k, v in cmp["pooled"].items()), *cmp["directions"].items()]:
        lines.append(f"| {name} | {r['n']} | {r['bleu_a']:.2f} | {r['bleu_b']:.2f} | {mark(r['d_bleu'], r['p_bleu'])} | "
                     f"{_p(r, 'bleu')} | {r['chrf_a']:.2f} | {r['chrf_b']:.2f} | {mark(r['d_chrf'], r['p_chrf'])} | "
                     f"{_p(r, 'chrf')} |")
    for m, label in (("bleu", "BLEU"), ("chrf", "chrF++")):
        w = cmp["wins"][m]
        lines.append(f"\n{label}: B significantly better in {w['b_better']}, A in {w['a_better']} of "
                     f"{w['directions']} directions.")
    return "\n".join(lines) + "\n"


def _is_compare(path: Path) -> bool:
    """Whether `path` is a compare.json / compare.md this module wrote."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".md":
        return text.startswith("# B vs A, paired bootstrap")
    try:
        return {"a", "b", "pooled", "n_samples"} <= set(json.loads(text))
    except (ValueError, TypeError):
        return False


def write_compare(folder_a, folder_b, out: str | os.PathLike, n_samples: int = 1000, *,
                  overwrite: bool = False) -> dict[str, Any]:
    """compare() of the two folders, written to `out`/compare.md and compare.json (existing
    files other than an earlier comparison are replaced only with `overwrite`)."""
    out = Path(out)
    inputs = [Path(f) / "results.json" for f in (folder_a, folder_b)]
    for name in ("compare.md", "compare.json"):
        check_output_file(out / name, "out", inputs, kind="text", overwrite=overwrite, owned=_is_compare)
    cmp = compare(folder_a, folder_b, n_samples)
    write_set(out, {"compare.md": to_markdown(cmp), "compare.json": strict_json(cmp, indent=1)})
    return cmp
