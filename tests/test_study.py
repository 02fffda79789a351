"""examples/study_cpu.py: the non-training logic (aggregation over seeds, verdict table) on
synthetic results. Fast, no model."""
import importlib.util
import math
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "examples" / "study_cpu.py"
_spec = importlib.util.spec_from_file_location("study_cpu", _PATH)
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)

TIERS = {"de": "high", "he": "medium", "af": "low"}


def _dirs(base: float) -> dict[str, dict]:
    """Six supervised directions and one zero-shot, scores base + offsets."""
    out = {}
    for i, d in enumerate(["en-de", "de-en", "en-he", "he-en", "en-af", "af-en", "de-he"]):
        out[d] = {"bleu": base + i, "chrf": 2 * base + i}
    return out


def test_group_of():
    assert study.group_of("en-de", TIERS) == ["all", "high", "en-x"]
    assert study.group_of("af-en", TIERS) == ["all", "low", "x-en"]
    assert study.group_of("de-he", TIERS) == ["zero-shot"]


def test_group_scores_means():
    g = study.group_scores(_dirs(10.0), TIERS)
    assert g["all"]["directions"] == 6
    assert g["all"]["bleu"] == pytest.approx(10 + (0 + 1 + 2 + 3 + 4 + 5) / 6)
    assert g["high"]["bleu"] == pytest.approx(10.5)  # en-de 10, de-en 11
    assert g["low"]["chrf"] == pytest.approx(20 + 4.5)
    assert g["en-x"]["bleu"] == pytest.approx(10 + (0 + 2 + 4) / 3)
    assert g["zero-shot"]["bleu"] == pytest.approx(16.0) and g["zero-shot"]["directions"] == 1


def test_mean_sd():
    assert study.mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    m, sd = study.mean_sd([5.0])
    assert m == 5.0 and sd is None
    with pytest.raises(ValueError):
        study.mean_sd([])


def _runs():
    # specialized > fine-tune > random by 1 point everywhere, seeds differ by ±0.5
    return {"specialized": {s: _dirs(12.0 + d) for s, d in ((1, -0.5), (2, 0.0), (3, 0.5))},
            "finetune": {s: _dirs(11.0 + d) for s, d in ((1, -0.5), (2, 0.0), (3, 0.5))},
            "random": {s: _dirs(10.0 + d) for s, d in ((1, -0.5), (2, 0.0), (3, 0.5))}}


def test_aggregate_over_seeds():
    agg = study.aggregate_arms(_runs(), TIERS)
    a = agg["specialized"]["all"]["bleu"]
    assert a["n"] == 3 and a["mean"] == pytest.approx(12 + 2.5) and a["sd"] == pytest.approx(0.5)
    assert agg["random"]["en-de"]["chrf"]["values"] == pytest.approx([19.0, 20.0, 21.0])
    assert agg["finetune"]["zero-shot"]["bleu"]["mean"] == pytest.approx(17.0)
    assert study.order_held(agg, "all", "bleu") is True
    assert study.order_held(agg, "high", "chrf") is True
    assert study.order_held(agg, "nonexistent", "bleu") is None


def _tests(p_sf: float, p_fr: float, groups):
    """Synthetic seed-pooled bootstrap results {(B, A): {group: {...}}}."""
    def t(d, p):
        return {"d_bleu": d, "p_bleu": p, "d_chrf": d, "p_chrf": p}
    return {("specialized", "finetune"): {g: t(1.0, p_sf) for g in groups},
            ("specialized", "random"): {g: t(2.0, 0.001) for g in groups},
            ("finetune", "random"): {g: t(1.0, p_fr) for g in groups}}


def test_verdict_rows_significance():
    agg = study.aggregate_arms(_runs(), TIERS)
    groups = ["all", "high", "zero-shot"]
    rows = study.verdict_rows(agg, _tests(0.01, 0.02, groups), groups)
    assert len(rows) == 6  # 3 groups × 2 metrics
    assert all(r["held"] and r["significant"] for r in rows)
    # one adjacent step not significant → the order holds but is not significant
    rows = study.verdict_rows(agg, _tests(0.2, 0.02, groups), groups)
    assert all(r["held"] and not r["significant"] for r in rows)
    # missing tests → not significant, Δ None
    rows = study.verdict_rows(agg, {}, ["all"])
    assert rows[0]["d_specialized-finetune"] is None and not rows[0]["significant"]
    table = study.verdict_table(rows)
    assert table.count("\n") == 3 and "| all | BLEU |" in table
    # columns in the header's order: specialized, fine-tune, random
    assert table.splitlines()[0].startswith("| group | metric | specialized | fine-tune | random |")
    assert "| all | BLEU | 14.50 ± 0.50 | 13.50 ± 0.50 | 12.50 ± 0.50 | yes |" in table


def test_verdict_when_order_fails():
    runs = _runs()
    runs["specialized"], runs["random"] = runs["random"], runs["specialized"]  # random best now
    agg = study.aggregate_arms(runs, TIERS)
    rows = study.verdict_rows(agg, _tests(0.001, 0.001, ["all"]), ["all"])
    assert not any(r["held"] or r["significant"] for r in rows)
    text = study.plain_verdict(rows, [])
    assert text[0].startswith("Overall (supervised): BLEU did not hold")


def test_direction_counts_and_plain_verdict():
    agg = study.aggregate_arms(_runs(), TIERS)
    dirs = ["en-de", "de-en", "en-he"]
    tests = _tests(0.01, 0.5, dirs)
    tests[("specialized", "finetune")]["en-he"] = {"d_bleu": -1.0, "p_bleu": 0.01, "d_chrf": -1.0, "p_chrf": 0.01}
    rows = study.verdict_rows(agg, tests, dirs)
    c = study.direction_counts(rows, "BLEU")
    assert c == {"directions": 3, "held": 3, "specialized-finetune_better": 2, "specialized-finetune_worse": 1,
                 "specialized-random_better": 3, "specialized-random_worse": 0, "finetune-random_better": 0,
                 "finetune-random_worse": 0}
    text = study.plain_verdict(study.verdict_rows(agg, tests, ["all"]), rows)
    assert any("Per direction (BLEU): the order held in 3 of 3" in s for s in text)


def test_sweep_rows():
    rows = study.sweep_rows([0.8, 0.95], {0.8: 0.4, 0.95: 0.7}, {0.95: {"bleu": 10.0, "chrf": 30.0}})
    assert rows[0] == {"k": 0.8, "kept": 0.4, "bleu": None, "chrf": None}
    assert rows[1]["chrf"] == 30.0 and not math.isnan(rows[1]["kept"])
