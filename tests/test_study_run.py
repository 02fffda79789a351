"""`neuronspec study --arms all` end to end at toy size on the built-in corpus (2 languages, a
one-layer model, a few updates, 4 test lines): a first invocation killed inside an arm, then a
second that continues (no finished step run again) and writes the report."""
import json

import pytest

from neuronspec.cli import main
from neuronspec.study import arms, training

TOY = ["study", "--arms", "all", "--seeds", "1,2", "--langs", "de,af", "--zero-shot", "de-af,af-de",
       "--model-args", '{"d_model": 32, "d_ff": 64, "heads": 2, "encoder_layers": 1, "decoder_layers": 1}',
       "--vocab-size", "600", "--max-steps", "20", "--max-minutes", "1", "--valid-every", "10", "--patience", "1",
       "--extra-steps", "3", "--lass-steps", "2", "--lass-prune", "0.3,0.6", "--bilingual-max-steps", "6",
       "--bilingual-minutes", "0.5", "--eval-sentences", "4", "--record-sentences", "8", "--bootstrap", "50",
       "--timing-rounds", "1", "--threads", "1", "--no-progress"]


class Killed(BaseException):
    """Stands for the study being killed (not an Exception: nothing may catch it)."""


@pytest.mark.slow
def test_study_toy_killed_then_resumed(tmp_path, monkeypatch):
    out = tmp_path / "study"
    real_run, started = training.run, []

    def run(cfg, *args, **kw):
        started.append(cfg.out)
        if "runs/adapter-lp/s1" in cfg.out:
            (tmp_path / "study" / "runs" / "adapter-lp" / "s1" / "partial.txt").write_text("half done")
            raise Killed
        return real_run(cfg, *args, **kw)

    monkeypatch.setattr(training, "run", run)
    with pytest.raises(Killed):
        main([*TOY, "--out", str(out)])
    est = json.loads((out / "estimate.json").read_text())["ESTIMATE, not measured (planning figures)"]
    assert est["total"] > 0  # written up front, before the kill
    done_before = {p.parent.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("done.json")}
    assert "runs/finetune/s1/done.json" not in done_before and "runs/finetune/s1" in done_before
    assert "runs/adapter-lp/s1" not in done_before and (out / "runs/adapter-lp/s1/partial.txt").exists()

    started.clear()
    real_plateau = training.plateau_run
    monkeypatch.setattr(training, "run", lambda cfg, *a, **k: (started.append(cfg.out), real_run(cfg, *a, **k))[1])
    monkeypatch.setattr(training, "plateau_run",
                        lambda cfg, *a, **k: (started.append(cfg.out), real_plateau(cfg, *a, **k))[1])
    assert main([*TOY, "--out", str(out)]) == 0
    rerun = [p for p in started if any(p.startswith(str(out / name)) for name in done_before)]
    assert rerun == []  # no finished step trained again
    assert str(out / "runs/adapter-lp/s1") in started and not (out / "runs/adapter-lp/s1/partial.txt").exists()
    assert all((out / n / "done.json").stat().st_mtime_ns == t for n, t in done_before.items())

    rep = out / "report"
    res = json.loads((rep / "results.json").read_text())
    conts = [a for a in arms.CONTINUATIONS]
    for arm in conts:  # every arm scored every direction for both seeds
        agg = res["aggregate"][arm]
        assert agg["all"]["chrf"]["n"] == 2 and {"en-de", "de-en", "en-af", "af-en", "de-af"} <= set(agg)
    assert res["aggregate"]["lass@0.6"]["all"]["chrf"]["n"] == 1  # the α sweep's second value, first seed
    assert set(res["tests_vs_baseline"]) == {*conts, "lass@0.6"}
    assert res["dtheta"]["adapter-lp"] > res["dtheta"]["adapter-fam"] > 0 == res["dtheta"]["ns"]
    assert set(res["bilingual_directions"]) == {"en-de", "de-en", "en-af", "af-en"}
    assert set(res["interference"]["chrf"]) >= {"baseline", *conts}
    eff = {r["arm"]: r for r in res["efficiency"]}
    assert set(eff) == set(conts) and eff["lass"]["derive_s"] > 0 and eff["ns"]["derive_s"] > 0
    assert eff["lass"]["held_bytes"] > 0 and eff["adapter-fam"]["held_bytes"] > 0 and eff["finetune"]["held_bytes"] == 0
    assert all(r["step_ratio"] > 0 for r in eff.values()) and eff["finetune"]["step_ratio"] == 1.0
    assert res["zero_shot"]["ns"]["chrf"]["directions"] == 2
    md = (rep / "README.md").read_text()
    for head in ("## Main table: chrF++", "## Main table: BLEU", "## Head to head", "## Interference", "## Efficiency",
                 "ESTIMATE"):
        assert head in md
    assert md.count("| Adapter_Fam |") == 2 + 2 + 2 + 1  # main, head-to-head, interference tables; efficiency
    for f in ("delta_vs_baseline.png", "interference.png", "step_time.png", "efficiency.csv"):
        assert (rep / f).stat().st_size > 0
    assert "--lass-prune 0.3,0.6" in md  # the command as given
    assert f"study steps {sum(t['seconds'] for t in res['timings'].values()) / 60:.1f} min in all" in md

    # a given baseline: no corpus or baseline step, the arms start from it
    ckpt = out / "baseline" / "checkpoint_best.pt"
    out2 = tmp_path / "given"
    argv = [x for x in TOY if x not in ("all",)]
    argv[argv.index("--arms") + 1:argv.index("--arms") + 1] = ["finetune,adapter-fam"]
    assert main([*argv, "--out", str(out2), "--baseline", str(ckpt)]) == 0
    res2 = json.loads((out2 / "report" / "results.json").read_text())
    assert not (out2 / "data").exists() and not (out2 / "baseline").exists()
    assert set(res2["tests_vs_baseline"]) == {"finetune", "adapter-fam"} and res2["bilingual_directions"] == []
    assert res2["aggregate"]["baseline"]["all"] == res["aggregate"]["baseline"]["all"]  # the same baseline

    # a prepared folder instead of the built-in corpus: its languages, a baseline trained on it
    out3 = tmp_path / "prepared"
    argv = [x for x in TOY if x not in ("all",)]
    argv[argv.index("--arms") + 1:argv.index("--arms") + 1] = ["finetune,ns"]
    argv[argv.index("--langs") + 1] = "de,fr,it"  # not what the folder holds: --data wins
    assert main([*argv, "--out", str(out3), "--data", str(out / "data" / "prep"), "--seeds", "1"]) == 0
    res3 = json.loads((out3 / "report" / "results.json").read_text())
    assert not (out3 / "data").exists() and (out3 / "baseline" / "done.json").exists()
    assert res3["args"]["langs"] == ["af", "de"] and set(res3["tests_vs_baseline"]) == {"finetune", "ns"}
    assert res3["args"]["device"] == "cpu"
    assert f"prepared folder {out / 'data' / 'prep'}" in (out3 / "report" / "README.md").read_text()


def test_plateau_run_resumes_a_killed_baseline(tmp_path, caplog):
    """The baseline (and bilingual) step resumes the run a killed study left in its folder: the
    saved config and the first start's time cap, not a fresh run."""
    from _nmt_cases import TINY_MODEL, prepare
    from neuronspec.nmt.checkpoint import load_checkpoint
    from neuronspec.nmt.config import TrainConfig

    prep = prepare(tmp_path)
    folder = tmp_path / "baseline"
    cfg = TrainConfig(data=str(prep.root), out=str(folder), model_args=TINY_MODEL, max_tokens=400, warmup=5,
                      max_steps=2, valid_every=0, valid_chrf_sentences=0, progress=False)
    training.plateau_run(cfg, folder, 5.0)
    started = (folder / "start.txt").read_text()
    weights = load_checkpoint(folder / "checkpoint_last.pt")["model"]
    caplog.set_level("INFO")
    again = TrainConfig.from_dict({**cfg.to_dict(), "max_steps": 50, "seed": 7})  # what a new run would use
    summary = training.plateau_run(again, folder, 5.0)
    assert "resumed from step 2" in caplog.text and summary["step"] == 2  # the saved run's own cap
    assert summary["resumed_at"] == 2
    assert (folder / "start.txt").read_text() == started
    assert all(load_checkpoint(folder / "checkpoint_last.pt")["model"][k].equal(v) for k, v in weights.items())
