"""neuronspec study: the pure logic (groups, means over seeds, pooled tests, the paper's tables,
the efficiency rows, argument checks, the estimate) on synthetic results. Fast, no model."""
import argparse
import math

import numpy as np
import pytest
import torch

from neuronspec.study import arms, cli, efficiency, report, scores

TIERS = {"de": "high", "he": "medium", "af": "low"}


def _dirs(base: float) -> dict[str, dict]:
    """Six supervised directions and one zero-shot, scores base + offsets."""
    return {d: {"bleu": base + i, "chrf": 2 * base + i}
            for i, d in enumerate(["en-de", "de-en", "en-he", "he-en", "en-af", "af-en", "de-he"])}


def test_group_of_and_members():
    assert scores.group_of("en-de", TIERS) == ["all", "high", "en-x", "high/en-x"]
    assert scores.group_of("af-en", TIERS) == ["all", "low", "x-en", "low/x-en"]
    assert scores.group_of("de-he", TIERS) == ["zero-shot"]
    m = scores.members(_dirs(0), TIERS)
    assert m["high/x-en"] == ["de-en"] and m["zero-shot"] == ["de-he"] and len(m["all"]) == 6


def test_group_scores_means():
    g = scores.group_scores(_dirs(10.0), TIERS)
    assert g["all"]["directions"] == 6
    assert g["all"]["bleu"] == pytest.approx(10 + (0 + 1 + 2 + 3 + 4 + 5) / 6)
    assert g["high"]["bleu"] == pytest.approx(10.5)  # en-de 10, de-en 11
    assert g["low"]["chrf"] == pytest.approx(20 + 4.5)
    assert g["en-x"]["bleu"] == pytest.approx(10 + (0 + 2 + 4) / 3)
    assert g["medium/x-en"]["bleu"] == pytest.approx(13.0)
    assert g["zero-shot"]["bleu"] == pytest.approx(16.0) and g["zero-shot"]["directions"] == 1


def test_mean_sd():
    assert scores.mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert scores.mean_sd([5.0]) == (5.0, None)
    with pytest.raises(ValueError):
        scores.mean_sd([])


def _runs():
    runs = {"ns": {s: _dirs(12.0 + d) for s, d in ((1, -0.5), (2, 0.0), (3, 0.5))},
            "finetune": {s: _dirs(11.0 + d) for s, d in ((1, -0.5), (2, 0.0), (3, 0.5))}}
    return {"baseline": {0: _dirs(10.0)}, **runs}


def test_aggregate_over_seeds():
    agg = scores.aggregate_arms(_runs(), TIERS)
    a = agg["ns"]["all"]["bleu"]
    assert a["n"] == 3 and a["mean"] == pytest.approx(12 + 2.5) and a["sd"] == pytest.approx(0.5)
    assert agg["finetune"]["en-de"]["chrf"]["values"] == pytest.approx([21.0, 22.0, 23.0])
    assert agg["baseline"]["zero-shot"]["bleu"]["sd"] is None


def _texts(hyps: list[str], refs: list[str], dirs=("en-de", "de-en")):
    return {d: (list(hyps), list(refs)) for d in dirs}


def test_pooled_test_against_a_reference():
    refs = [f"the cat number {i} sat on the mat" for i in range(30)]
    bad = [f"a dog {i}" for i in range(30)]
    st = scores.direction_stats(_texts(bad, refs), {1: _texts(refs, refs), 2: _texts(refs, refs)})
    assert sorted(st) == [(1, "de-en"), (1, "en-de"), (2, "de-en"), (2, "en-de")]
    t = scores.pooled_test(st, ["en-de"], 100)
    assert t["n"] == 60 and t["d_chrf"] > 50 and t["p_chrf"] < 0.05  # two seeds' lines pooled
    same = scores.pooled_test(scores.direction_stats(_texts(bad, refs), {1: _texts(bad, refs)}), ["de-en"], 100)
    assert same["identical"] and same["p_bleu"] == 1.0
    assert scores.pooled_test(st, ["en-fr"], 100) is None
    with pytest.raises(ValueError, match="other lines"):
        scores.direction_stats(_texts(bad, refs), {1: _texts(refs[:-1], refs[:-1])})


def test_main_table_layout_and_stars():
    agg = scores.aggregate_arms(_runs(), TIERS)
    cols = report.columns(["high", "medium", "low"])
    assert [h for _, h in cols[:3]] == ["high en→x", "high x→en", "high avg"] and cols[-1] == ("all", "all avg")
    tests = {"ns": {"all": {"p_chrf": 0.01, "d_chrf": 4.5}, "high": {"p_chrf": 0.2, "d_chrf": 4.5}}}
    zero = {"ns": report.zero_shot_counts(agg, {}, "ns", ["de-he"])}
    assert zero["ns"]["chrf"] == {"directions": 1, "improved": 1, "declined": 0, "sig_improved": 0,
                                  "sig_declined": 0}
    md = report.main_table(agg, tests, ["baseline", "ns", "finetune"], cols, "chrf", {"ns": 0.0}, zero)
    lines = md.splitlines()
    assert lines[0].startswith("| method | Δθ | high en→x | high x→en | high avg |")
    assert len(lines) == 5 and all(line.count("|") == len(cols) + 4 for line in lines)
    base_row, ns_row = lines[2].split(" | "), lines[3].split(" | ")
    assert base_row[-2] == "22.50"  # baseline: absolute (all avg: 20 + 2.5)
    assert ns_row[-2] == "26.50 (+4.00*)" and ns_row[4] == "24.50 (+4.00)"  # all starred, high avg not
    assert "1 / 0 of 1" in lines[3]
    assert report.cell(None, None, "chrf", 1.0) == "–"


def test_interference_table():
    per = {"baseline": {0: _dirs(10.0)}, "ns": {1: _dirs(12.0), 2: _dirs(13.0)}}
    bil = {d: {"bleu": 11.0, "chrf": 21.0} for d in ("en-de", "de-en", "en-af", "af-en")}
    tests = {"ns": {"high": {"p_chrf": 0.001, "d_chrf": 3.0}}}
    md, data = report.interference_table(per, bil, tests, ["baseline", "ns"], report.columns(["high", "low"]),
                                         "chrf", TIERS)
    assert data["baseline"]["high/en-x"]["delta"] == pytest.approx(20.0 - 21.0)  # interference: < 0
    assert data["ns"]["high/en-x"]["delta"] == pytest.approx(25.0 - 21.0)  # seeds 24, 26
    assert "high" in data["ns"] and data["ns"]["high"]["p"] == 0.001
    lines = md.splitlines()
    assert lines[2].startswith("| Bilingual (absolute) | 21.00 |") and "+4.50*" in lines[4]


def test_head_to_head_pairs_seeds_and_tests_ns_against_each_method():
    refs = [f"the cat number {i} sat on the mat" for i in range(30)]
    bad = [f"a dog {i}" for i in range(30)]
    dirs = ("en-de", "de-en")
    per = {"ns": {1: _dirs(12.0), 2: _dirs(14.0)}, "finetune": {1: _dirs(10.0), 3: _dirs(30.0)},
           "random": {1: _dirs(12.0), 2: _dirs(14.0)}, "lass": {3: _dirs(1.0)}}
    texts = {"ns": {1: _texts(refs, refs, dirs), 2: _texts(refs, refs, dirs)},
             "finetune": {1: _texts(bad, refs, dirs), 3: _texts(refs, refs, dirs)},
             "random": {1: _texts(refs, refs, dirs), 2: _texts(refs, refs, dirs)}, "lass": {3: _texts(bad, refs, dirs)}}
    cols = report.columns(["high", "medium", "low"])
    md, data = report.head_to_head(per, texts, ["baseline", "finetune", "ns", "random", "lass"], cols, TIERS, 100)
    assert set(data) == {"finetune", "random"}  # no seed shared with lass; ns not against itself
    assert data["finetune"]["seeds"] == [1]  # seed 3 unpaired: left out of means and test
    assert data["finetune"]["high/en-x"]["chrf"]["delta"] == pytest.approx(24.0 - 20.0)
    assert data["finetune"]["high/en-x"]["chrf"]["p"] < 0.05  # NS's lines beat fine-tune's
    assert data["random"]["all"]["bleu"]["delta"] == 0.0 and data["random"]["all"]["bleu"]["p"] == 1.0
    assert data["finetune"]["medium"]["chrf"]["p"] is None  # no texts of that tier: no test
    lines = md["chrf"].splitlines()
    assert lines[0].startswith("| Ours (NS) minus | high en→x |") and len(lines) == 4
    assert lines[2].startswith("| Fine-Tune | +4.00* |") and lines[3].startswith("| Random | +0.00 |")


def test_efficiency_rows():
    timings = {"record": {"seconds": 10.0, "peak_rss_bytes": 5}, "select": {"seconds": 1.0, "peak_rss_bytes": 7},
               "lass-derive/en-de": {"seconds": 30.0, "peak_rss_bytes": 100},
               "lass-derive/de-en": {"seconds": 20.0, "peak_rss_bytes": 300}, "eval/x": {"seconds": 99.0,
                                                                                         "peak_rss_bytes": 1}}
    assert efficiency.derivation(timings, "ns") == {"seconds": 11.0, "peak_rss_bytes": 7, "peak_cuda_bytes": None,
                                                    "steps": 2}
    assert efficiency.derivation(timings, "lass") == {"seconds": 50.0, "peak_rss_bytes": 300, "peak_cuda_bytes": None,
                                                      "steps": 2}
    assert efficiency.derivation(timings, "adapter-lp")["seconds"] == 0
    runs = {"finetune/s1": {"arm": "finetune", "mask_bytes": 0, "extra_params": 0, "base_params": 100},
            "adapter-lp/s1": {"arm": "adapter-lp", "mask_bytes": 0, "extra_params": 50, "base_params": 100}}
    eff = {"arms": {"finetune": {"median_s": 0.2, "ratio": 1.0}, "adapter-lp": {"median_s": 0.1, "ratio": 0.5}}}
    rows = report.efficiency_rows(timings, eff, runs, ["finetune", "ns", "adapter-lp"])
    assert [r["arm"] for r in rows] == ["finetune", "adapter-lp"]
    assert rows[1]["held_bytes"] == 200 and rows[1]["dtheta"] == 0.5 and rows[1]["step_ms"] == pytest.approx(100)
    assert "| Adapter_LP | 0.0 s | 0 B | 200 B | +50.0% | 100.0 ms | 0.50x |" in report.efficiency_table(rows)
    assert report.size(3 * 2**20) == "3.00 MiB" and report.size(2048) == "2.0 KiB"
    # a study run with CUDA: the derivation's peak GPU memory gets a column
    timings["lass-derive/en-de"]["peak_cuda_bytes"] = 2**20
    timings["lass-derive/de-en"]["peak_cuda_bytes"] = 3 * 2**20
    assert efficiency.derivation(timings, "lass")["peak_cuda_bytes"] == 3 * 2**20
    runs["lass/s1"] = {"arm": "lass", "mask_bytes": 64, "extra_params": 0, "base_params": 100}
    table = report.efficiency_table(report.efficiency_rows(timings, eff, runs, ["finetune", "lass"]))
    assert "| derive: peak GPU memory |" in table and "| LaSS | 50.0 s | 300 B | 3.00 MiB | 64 B |" in table
    assert "| Fine-Tune | 0.0 s | 0 B | – | 0 B |" in table


def test_step_times_interleaves_and_ratios():
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def train_step(self):
            calls.append(self.name)

    res = efficiency.step_times({"finetune": Fake("f"), "ns": Fake("n")}, 3, lambda: calls.append("sync"))
    assert calls == ["f", "n"] + ["sync", "f", "sync", "sync", "n", "sync"] * 3  # warm-up, then in turn, synced
    assert len(res["ns"]["samples"]) == 3 and res["finetune"]["ratio"] == 1.0


def _args(*argv):
    p = argparse.ArgumentParser()
    cli.configure_parser(p)
    return cli.check_args(p.parse_args(list(argv)))


def test_arguments():
    a = _args()
    assert a.arms == list(arms.ARMS) and a.seeds == [1, 2, 3] and a.langs == ["de", "fr", "ru", "he", "it", "bg",
                                                                                "af", "uk"]
    assert _args("--arms", "lass,ns", "--lass-prune", "0.3,0.5").arms == ["ns", "lass"]
    for argv, msg in ((["--arms", "ns,foo"], "--arms"), (["--seeds", "1,x"], "--seeds"),
                      (["--seeds", "1,1"], "--seeds"),
                      (["--lass-prune", "1.5"], "--lass-prune"), (["--lass-prune", "a"], "--lass-prune"),
                      (["--extra-steps", "0"], "--extra-steps"), (["--langs", "xx"], "xx"),
                      (["--model-args", "[1]"], "--model-args"), (["--baseline", "/nonexistent.pt"], "--baseline"),
                      (["--bilingual-minutes", "0"], "--bilingual-minutes"), (["--preset", "huge"], "--preset"),
                      (["--data", "/nonexistent"], "--data: /nonexistent is not a prepared folder"),
                      (["--device", "tpu"], "--device"), (["--device", "cuda:7"] if not torch.cuda.is_available()
                                                          else ["--device", "cuda:99"], "--device")):
        with pytest.raises(ValueError, match=msg):
            _args(*argv)
    assert _args().device == ("cuda" if torch.cuda.is_available() else "cpu")  # auto
    assert _args("--device", "cpu").device == "cpu"


def test_data_and_baseline_exclude_each_other(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    ck = tmp_path / "base.pt"
    ck.write_bytes(b"")
    with pytest.raises(ValueError, match="--data: give --data or --baseline"):
        _args("--data", str(tmp_path), "--baseline", str(ck))
    assert _args("--data", str(tmp_path)).data == str(tmp_path)


def test_a_rerun_must_give_the_folder_s_settings(tmp_path, capsys):
    """A study folder keeps the options that decide its steps' results: a rerun that changes one
    (here the continuation budget and the LaSS α list) is refused naming each, before any step;
    arms, seeds and the machine-side options may change."""
    from neuronspec.study.grid import Grid

    grid = Grid(tmp_path / "study")
    cli.check_settings(grid, _args("--out", str(grid.root)))
    saved = (grid.root / cli.SETTINGS).read_text()
    cli.check_settings(grid, _args("--out", str(grid.root), "--arms", "ns,finetune", "--seeds", "4", "--threads", "1",
                                   "--bootstrap", "50", "--device", "cpu"))
    with pytest.raises(ValueError, match=r"--extra-steps 400 \(now 800\); --lass-prune \[0.3\] \(now \[0.3, 0.5\]\)"):
        cli.check_settings(grid, _args("--out", str(grid.root), "--extra-steps", "800", "--lass-prune", "0.3,0.5"))
    assert (grid.root / cli.SETTINGS).read_text() == saved  # the folder's record is kept
    from neuronspec.cli import main
    assert main(["study", "--out", str(grid.root), "--k", "0.9", "--no-progress"]) == 2  # one line, no step run
    err = capsys.readouterr().err
    assert err.startswith("neuronspec study: error: --out:") and "--k 0.95 (now 0.9)" in err
    assert sorted(p.name for p in grid.root.iterdir()) == [cli.SETTINGS]


def test_estimate_of_the_default_study():
    """The default command (8 languages, 3 seeds, all arms) is planned to fit ~90 minutes at the
    planning rate; the estimate grows with the budgets."""
    a = _args()
    est = cli.estimate_minutes(a, 16, 6, cli.PLAN_S_PER_STEP)
    assert 45 < est["total"] <= 90 and est["total"] == pytest.approx(sum(v for k, v in est.items() if k != "total"))
    a.extra_steps *= 2
    doubled = cli.estimate_minutes(a, 16, 6, cli.PLAN_S_PER_STEP)
    assert doubled["continuations"] == pytest.approx(2 * est["continuations"])
    assert not math.isnan(est["evaluation"]) and np.isfinite(est["bilingual"])
