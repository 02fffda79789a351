"""`neuronspec demo`: end to end with a tiny budget (a smoke test, well under a minute on 2 cores), and its
pure steps (budgets, settings, the results dict)."""
import json

import pytest
import torch

from neuronspec.cli import main
from neuronspec.demo import DemoConfig, continuation_budget, continuation_settings, dense_train_config, results_summary
from neuronspec.nmt.checkpoint import load_model
from neuronspec.ops import load_layer_masks


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--langs", "de,fr", "--vocab-size", "500", "--dense-steps", "2",
               "--extra-steps", "1", "--eval-sentences", "1", "--record-sentences", "4", "--max-tokens", "200",
               "--warmup", "1", "--valid-sentences", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| specialized | 1 |" in printed and "specialized ≥ fine-tune ≥ random" in printed
    res = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in res["rows"]] == ["baseline", "finetune", "random", "specialized"]
    assert res["extra_steps"] == 1 and res["dense_steps"] == 2
    assert all(r["chrf_all"] is not None for r in res["rows"])
    for f in ("results.md", "analysis/mean_iou.png", "analysis-k0.7/report.md", "counts.pt", "masks.pt",
              "masks-random.pt", "eval/specialized/results.json"):
        assert (out / f).stat().st_size > 0, f
    # the specialized checkpoint carries its masks and loads with them; the fine-tuned one is dense
    masks, meta = load_layer_masks(out / "masks.pt")
    model, ck = load_model(out / "specialized" / "checkpoint_last.pt")
    assert set(model.masks()) == set(masks) == set(model.ffn_layers())
    assert all(model.masks()[k] == masks[k] for k in masks)
    assert load_model(out / "finetune" / "checkpoint_last.pt")[0].masks() == {}
    # random masks: same sizes as the selected ones
    rand, _ = load_layer_masks(out / "masks-random.pt")
    assert all(torch.equal(rand[k].sizes(), masks[k].sizes()) for k in masks)
    # a second run into the same folder is allowed; a foreign non-empty folder is not
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    assert main(["demo", "--out", str(other), "--langs", "de", "--dense-steps", "1", "--no-progress"]) == 2
    assert "was not written by `neuronspec demo`" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["precious.txt"]


def test_continuation_budget():
    # 400 s left, three 20 s evaluations + 60 s reserved: (400 - 120) / 3 s per arm at 85 % of 2 steps/s
    steps, per_arm = continuation_budget(400.0, 20.0, 2.0)
    assert per_arm == pytest.approx(280 / 3) and steps == 158
    # budget already spent: one second per arm and at least one step
    assert continuation_budget(30.0, 20.0, 0.5) == (1, 1.0)


def test_dense_train_config(tmp_path):
    cfg = DemoConfig(tmp_path / "demo", dense_share=0.25, max_tokens=300, warmup=3, seed=7, valid_sentences=4,
                     progress=False)
    tc = dense_train_config(cfg, "cpu", 600.0)
    assert (tc.data, tc.out) == (str(tmp_path / "demo" / "data"), str(tmp_path / "demo" / "dense"))
    assert tc.max_minutes == pytest.approx(2.5) and tc.max_steps is None
    assert (tc.preset, tc.lr_scheduler, tc.max_tokens, tc.warmup, tc.seed) == ("tiny", "inverse_sqrt", 300, 3, 7)
    assert (tc.valid_every, tc.valid_max_sentences, tc.valid_chrf_sentences, tc.log_every) == (0, 4, 0, 25)
    assert (tc.device, tc.progress) == ("cpu", False)
    assert dense_train_config(cfg, "cpu", 1.0).max_minutes == 0.05  # at least 3 s
    fixed = dense_train_config(DemoConfig(tmp_path, dense_steps=5), "cpu", 600.0)
    assert fixed.max_steps == 5 and fixed.max_minutes is None


def test_continuation_settings():
    cfg = DemoConfig(valid_sentences=9, progress=False)
    cont = continuation_settings(cfg, "cpu", 3e-4, 100)
    assert cont == dict(lr=3e-4, warmup=25, lr_scheduler="inverse_sqrt", valid_max_sentences=9,
                        valid_chrf_sentences=0, valid_every=0, progress=False, device="cpu")
    assert [continuation_settings(cfg, "cpu", 1e-3, n)["warmup"] for n in (1, 7, 8, 1000)] == [1, 1, 2, 50]


def test_results_summary(tmp_path):
    cfg = DemoConfig(tmp_path, k=0.9, beam=2, eval_sentences=None)
    pooled = {"supervised": {"n": 4, "d_bleu": 1.0}}
    wins = {"chrf": {"b_better": 1, "a_better": 0, "directions": 2}}
    tests = {("specialized", "baseline"): {"pooled": pooled, "wins": wins, "per_direction": "dropped"}}
    analyses = {"k=0.9": {"encoder": [0.1, 0.2], "decoder": [0.3, 0.2], "heatmaps": "dropped"}}
    timings = {"corpus": 1.5}
    res = results_summary(cfg, ["de"], ["de-en", "en-de"], 2, "cpu", 10, 3, [{"model": "baseline"}], ["note"],
                          tests, analyses, timings, 12.0, 840.0, (1.0, 0.5, 0.25))
    assert res == {"langs": ["de"], "directions": ["de-en", "en-de"], "k": 0.9, "beam": 2, "eval_sentences": None,
                   "dense_steps": 10, "extra_steps": 3, "rows": [{"model": "baseline"}], "verdicts": ["note"],
                   "significance": {"specialized vs baseline": {"pooled": pooled, "wins": wins}},
                   "iou_mean_by_layer": {"k=0.9": {"encoder": [0.1, 0.2], "decoder": [0.3, 0.2]}},
                   "timings_s": {"corpus": 1.5}, "total_s": 12.0, "budget_s": 840.0, "loadavg": [1.0, 0.5, 0.25],
                   "device": "cpu", "threads": 2, "out": str(tmp_path)}
    assert res["timings_s"] is timings  # phases timed after the report (the report itself) show in the result
    assert results_summary(cfg, [], [], 1, "cpu", 1, 1, [], [], {}, {}, {}, 0.0, 1.0, None)["loadavg"] is None


def test_demo_with_one_language_reports_missing_iou_pairs(tmp_path, capsys):
    """One language: each side has one en→x and one x→en direction, so the paper's IoU means
    (pairs of a kind) have no pair; the report says '–' instead of failing at the end."""
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--langs", "de", "--vocab-size", "500", "--dense-steps", "2",
               "--extra-steps", "1", "--eval-sentences", "1", "--record-sentences", "4", "--max-tokens", "200",
               "--warmup", "1", "--valid-sentences", "2", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    report = (out / "results.md").read_text()
    assert "- k=0.95: encoder – → – → –; decoder – → – → –" in report
