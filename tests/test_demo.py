"""`neuronspec demo`: end to end with a tiny budget (a smoke test, well under a minute on 2 cores), and its
pure steps (budgets, settings, the results dict)."""
import json
import math

import pytest
import torch

from neuronspec import demo
from neuronspec.cli import main
from neuronspec.demo import DemoConfig, continuation_budget, continuation_settings, dense_train_config, results_summary
from neuronspec.nmt import speed
from neuronspec.nmt.checkpoint import load_model
from neuronspec.nmt.model import ModelConfig, Transformer
from neuronspec.ops import load_layer_masks


def test_demo_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "SPEED_SECONDS", 0.0)  # the speed section's minimum rounds only
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
    cfg = DemoConfig(tmp_path / "demo", minutes=10.0, dense_share=0.25, max_tokens=300, warmup=3, seed=7,
                     valid_sentences=4, progress=False)
    tc = dense_train_config(cfg, "cpu", 600.0)
    assert (tc.data, tc.out) == (str(tmp_path / "demo" / "data"), str(tmp_path / "demo" / "dense"))
    assert tc.max_minutes == pytest.approx(2.5) and tc.max_steps is None
    assert (tc.preset, tc.max_tokens, tc.warmup, tc.seed) == ("tiny", 300, 3, 7)
    assert (tc.valid_every, tc.valid_max_sentences, tc.valid_chrf_sentences, tc.log_every) == (0, 4, 0, 25)
    assert (tc.device, tc.progress) == ("cpu", False)
    assert dense_train_config(cfg, "cpu", 1.0).max_minutes == 0.05  # at least 3 s
    fixed = dense_train_config(DemoConfig(tmp_path, dense_steps=5), "cpu", 600.0)
    assert fixed.max_steps == 5 and fixed.max_minutes is None


def test_default_demo_trains_fixed_steps_with_the_tiny_recipe(tmp_path):
    """No --minutes: fixed step counts (a busy machine takes longer, it does not train less), and the
    baseline trains with the tiny preset's own recipe (linear decay to 0, EMA, its batch size), the one
    that reaches chrF++ 42 in `neuronspec train`, not inverse-sqrt on 1500-token batches."""
    cfg = DemoConfig(tmp_path)
    assert (cfg.minutes, cfg.dense_steps, cfg.extra_steps) == (None, demo.DENSE_STEPS, demo.EXTRA_STEPS)
    assert cfg.langs == demo.DEFAULT_LANGS and len(cfg.langs.split(",")) == 4
    tc = dense_train_config(cfg, "cpu", math.inf)
    assert (tc.max_steps, tc.max_minutes) == (demo.DENSE_STEPS, None)
    assert (tc.lr_scheduler, tc.ema_decay, tc.max_tokens, tc.lr) == ("linear", 0.995, 800, 1e-3)
    budget = DemoConfig(tmp_path, minutes=30.0)
    assert (budget.dense_steps, budget.extra_steps) == (None, None)
    for bad, match in ((dict(minutes=0), "minutes: must be a finite number > 0"),
                       (dict(minutes=math.nan), "minutes"), (dict(max_tokens=0), "max_tokens: must be an int >= 1"),
                       (dict(dense_steps=0), "dense_steps"), (dict(threads=0), "threads: must be an int >= 1")):
        with pytest.raises(ValueError, match=match):
            DemoConfig(tmp_path, **bad)


def test_continuation_settings():
    cfg = DemoConfig(valid_sentences=9, progress=False)
    cont = continuation_settings(cfg, "cpu", 1e-3, 100)
    # fresh warm-up to a quarter of the baseline's peak, then linearly to 0 (the baseline's lr ended at 0)
    assert cont == dict(lr=2.5e-4, warmup=25, lr_scheduler="linear", valid_max_sentences=9,
                        valid_chrf_sentences=0, valid_every=0, progress=False, device="cpu")
    assert [continuation_settings(cfg, "cpu", 1e-3, n)["warmup"] for n in (1, 7, 8, 1000)] == [1, 1, 2, 50]


def test_threads_follow_the_free_cores(monkeypatch):
    assert demo.free_cores(2, 0.0) == 2 and demo.free_cores(2, 0.4) == 2
    assert demo.free_cores(2, 1.0) == 1 and demo.free_cores(2, 6.0) == 1 and demo.free_cores(8, 2.6) == 5
    assert demo.free_cores(4, None) == 4  # no /proc: every core
    others = demo.other_jobs(samples=2, interval=0.0)
    assert others is None or others >= 0
    previous = torch.get_num_threads()
    try:
        monkeypatch.setattr(demo, "other_jobs", lambda: 1.0)
        monkeypatch.setattr(demo, "cores", lambda: 2)
        assert demo.set_threads(None, "test") == 1 == torch.get_num_threads()
        assert demo.set_threads(2, "test") == 2 == torch.get_num_threads()  # --threads wins
    finally:
        torch.set_num_threads(previous)


def test_chunk_ends():
    assert demo.chunk_ends(1200, 500) == [500, 1000, 1200]
    assert demo.chunk_ends(500, 500) == [500] and demo.chunk_ends(2, 500) == [2] and demo.chunk_ends(0, 500) == []


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


# ---- the speed section (neuronspec/nmt/speed.py) ----------------------------------------------
def test_interleaved_rotates_the_order_and_times_every_call():
    calls = []
    times = speed.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 0.0, min_rounds=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rounds starting a, b, a
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert speed.speedup([2.0, 4.0, 3.0], [1.0, 1.0, 3.0]) == 2.0  # median of 2, 4, 1


def test_step_flops_counts_the_kept_ffn_share():
    model = Transformer(ModelConfig(vocab_size=50, d_model=8, d_ff=32, heads=2, encoder_layers=1, decoder_layers=1))
    d, f, V, B, S, L = 8, 32, 50, 3, 5, 4
    enc = 8 * d * d * B * S + 4 * B * S * S * d + 4 * d * f * B * S
    dec = 8 * d * d * B * L + 4 * B * L * L * d + 4 * d * d * (B * L + B * S) + 4 * B * L * S * d + 4 * d * f * B * L
    dense = 3 * (enc + dec + 2 * d * V * B * L)
    assert speed.step_flops(model, B, S, L) == dense
    half = {name: 0.5 for name in model.ffn_layers()}
    assert speed.step_flops(model, B, S, L, half) == dense - 3 * 2 * d * f * (B * S + B * L)


def test_measure_speed_rows():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=60, d_model=16, d_ff=64, heads=2, encoder_layers=1, decoder_layers=1))
    widths = {name: 64 for name in model.ffn_layers()}
    masks = speed.random_masks_kept(widths, 3, 0.75, seed=1)
    assert all(m.num_tasks == 3 and m.sizes().tolist() == [48] * 3 for m in masks.values())
    rows = speed.measure_speed(model, masks, tokens=40, seconds=0.0, length=5)
    assert [(r["workload"], r["masks"]) for r in rows] == [(w, m) for m in ("demo", "p = 0.25", "p = 0.5")
                                                          for w in ("ffn", "step")]
    assert [r["kept"] for r in rows] == [0.75, 0.75, 0.25, 0.25, 0.5, 0.5]
    assert [r["flop_limit"] for r in rows if r["workload"] == "ffn"] == [1 / 0.75, 4.0, 2.0]
    assert all(1.0 < r["flop_limit"] < 1 / r["kept"] for r in rows if r["workload"] == "step")
    assert all(r["rounds"] >= 5 and r["speedup"] > 0 and r["dense_ms"] > 0 for r in rows)
    assert model.masks() == {}  # the caller's model is left as it was
    md = "\n".join(speed.speed_markdown(rows, 40, 1, "0.5 0.5 0.5"))
    assert "| FFN fwd+bwd | p = 0.25 | 0.25 |" in md and "| 4.00× |" in md
