"""Trainer: loss, schedule, a falling loss, exact resume, continued training with masks, DDP."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from _nmt_cases import TINY_MODEL, prepare
from neuronspec.demo import DEFAULT_LANGS as DEMO_LANGS, FULL_LANGS as DEMO_FULL_LANGS
from neuronspec.nmt.checkpoint import load_checkpoint, load_model
from neuronspec.nmt.config import TINY_BUILTIN_LANGS, TrainConfig
from neuronspec.nmt.schedule import InverseSqrtSchedule, LinearDecaySchedule
from neuronspec.nmt.loss import label_smoothed_loss
from neuronspec.nmt.trainer import Trainer, train
from neuronspec.ops import TaskMasks, save_layer_masks

LAST = "checkpoint_last.pt"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    prepare(tmp)
    return str(tmp / "prep")


def config(prep, out, **kw):
    base = dict(data=prep, out=str(out), model_args=TINY_MODEL, max_tokens=400, lr=3e-3, warmup=20, log_every=5,
                valid_every=0, valid_chrf_sentences=0, valid_max_sentences=8, progress=False)
    return TrainConfig(**{**base, **kw})


def test_label_smoothed_loss_matches_torch():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    target = torch.randint(1, 11, (2, 5))
    target[1, 3:] = 0
    loss, nll = label_smoothed_loss(logits, target, 0.1, pad=0)
    ref = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=0, label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(nll, F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=0, reduction="sum"))


def test_inverse_sqrt_schedule():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = InverseSqrtSchedule(opt, lr=1e-3, warmup=100, init_lr=0.0)
    assert opt.param_groups[0]["lr"] == 0.0
    for _ in range(50):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    for _ in range(50):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    for _ in range(300):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * math.sqrt(100 / 400))
    s2 = InverseSqrtSchedule(opt, lr=1e-3, warmup=100)
    s2.load_state_dict(s.state_dict())
    assert s2.value(s2.step_count) == pytest.approx(opt.param_groups[0]["lr"])


def test_linear_schedule():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = LinearDecaySchedule(opt, lr=1e-3, warmup=100, init_lr=0.0)
    lr = lambda: opt.param_groups[0]["lr"]  # noqa: E731
    assert lr() == 0.0
    for _ in range(50):
        s.step(progress=0.01)
    assert lr() == pytest.approx(5e-4)  # the ramp, below the line
    for _ in range(50):
        s.step(progress=0.1)
    assert lr() == pytest.approx(9e-4)  # the line, below the ramp's end
    s.step(progress=0.75)
    assert lr() == pytest.approx(2.5e-4)
    s2 = LinearDecaySchedule(opt, lr=1e-3, warmup=100)
    s2.load_state_dict(s.state_dict())
    assert s2.progress == 0.75 and s2.value(s2.step_count) == pytest.approx(2.5e-4)
    s.step(progress=1.3)
    assert lr() == 0.0 and s.progress == 1.0
    s.step(progress=0.5)  # a longer budget (resumed with more steps) raises it again
    assert lr() == pytest.approx(5e-4)
    # inverse_sqrt tracks the progress too (a resumed run's time share starts from it); its lr ignores it
    old = InverseSqrtSchedule(opt, lr=1e-3, warmup=100)
    old.load_state_dict({"step_count": 400})  # a state written before the progress existed
    assert old.progress == 0.0 and lr() == pytest.approx(5e-4)


def test_linear_schedule_in_training(prep, tmp_path):
    """Over max_steps: lr · (1 - step/max_steps) after the warm-up, 0 after the last update;
    over max_minutes: the time share, and a resume goes on from where the lr stopped."""
    t = Trainer(config(prep, tmp_path / "steps", max_steps=12, warmup=3, lr_scheduler="linear", log_every=1))
    t.train()
    lrs = [h["lr"] for h in t.history if "lr" in h]
    assert lrs[:2] == pytest.approx([1e-3, 2e-3], rel=1e-3)  # the ramp (3e-3 · step/3) under the line ...
    assert lrs[2:] == pytest.approx([3e-3 * (1 - s / 12) for s in range(3, 13)])  # ... then the line
    assert lrs[-1] == 0.0
    # time budget only: the lr follows the share of the minutes used, reaching ~0 at the deadline
    cfg = config(prep, tmp_path / "time", max_steps=None, max_minutes=0.1, warmup=1, lr_scheduler="linear",
                 log_every=1)
    t = Trainer(cfg)
    t.train()
    lrs = [h["lr"] for h in t.history if "lr" in h]
    assert len(lrs) >= 2 and all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert 0.5 < t.scheduler.progress <= 1.0 and lrs[-1] == pytest.approx(3e-3 * (1 - t.scheduler.progress))
    r = Trainer(cfg, resume=True)
    assert r.scheduler.progress == t.scheduler.progress
    r.train(max_minutes=0.05)
    first = next(h["lr"] for h in r.history[len(t.history):] if "lr" in h)
    assert first <= lrs[-1] + 1e-12 and r.scheduler.progress >= t.scheduler.progress


def test_bad_config():
    with pytest.raises(ValueError, match="preset"):
        TrainConfig(preset="huge", max_steps=1)
    with pytest.raises(ValueError, match="max_steps or max_minutes"):
        TrainConfig(preset="base")
    with pytest.raises(ValueError, match="max_tokens"):
        TrainConfig(max_steps=1, max_tokens=0)
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(max_steps=1, amp="fp8")
    with pytest.raises(ValueError, match="target_tag"):
        TrainConfig(max_steps=1, target_tag="both")
    with pytest.raises(ValueError, match="lr_scheduler"):
        TrainConfig(max_steps=1, lr_scheduler="cosine")
    assert TrainConfig().lr_scheduler == "linear" and TrainConfig(preset="base", max_steps=1).lr_scheduler == "inverse_sqrt"
    assert TrainConfig(max_steps=1).target_tag == "decoder"
    old = TrainConfig(max_steps=1).to_dict()
    del old["target_tag"], old["lr_scheduler"]  # a checkpoint written before those options:
    assert TrainConfig.from_dict(old).target_tag == "encoder"  # the tag was on the encoder side
    assert TrainConfig.from_dict(old).lr_scheduler == "inverse_sqrt"  # and the lr fell as 1/sqrt(step)
    # tiny on the built-in corpus: a language subset unless asked for ["all"]; a given corpus: all of it
    assert TrainConfig().langs == list(TINY_BUILTIN_LANGS) and TrainConfig(langs=["all"]).langs == ["all"]
    assert ",".join(TINY_BUILTIN_LANGS) == DEMO_FULL_LANGS  # one documented subset for tiny runs
    assert set(DEMO_LANGS.split(",")) < set(TINY_BUILTIN_LANGS)  # the default demo: 4 of them
    assert TrainConfig(corpus="c", max_steps=1).langs is None and TrainConfig(preset="base", max_steps=1).langs is None
    for bad in (["all", "de"], []):
        with pytest.raises(ValueError, match="langs"):
            TrainConfig(max_steps=1, langs=bad)
    assert TrainConfig().max_tokens == 800 and TrainConfig(preset="base", max_steps=1).max_tokens == 1500
    assert TrainConfig().max_minutes == 9.0 and TrainConfig(max_steps=5).max_minutes is None  # tiny default


@pytest.mark.slow
def test_loss_falls_and_translations_beat_copy(prep, tmp_path):
    summary = train(config(prep, tmp_path / "run", max_steps=240, valid_every=120, valid_chrf_sentences=12))
    hist = load_checkpoint(summary["checkpoint"])["history"]
    train_losses = [h["loss"] for h in hist if "loss" in h]
    valid = [h for h in hist if "valid_loss" in h]
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert len(valid) == 2 and valid[1]["valid_loss"] < valid[0]["valid_loss"]
    assert summary["final"]["beats_copy"]["all"]["fraction"] == 1.0
    assert set(summary["final"]["valid_chrf_by_kind"]) == {"phrase", "sentence"}
    assert "phrases only" in (tmp_path / "run" / "valid_chrf.md").read_text()  # the full report, by kind
    assert os.path.isfile(tmp_path / "run" / "checkpoint_best.pt")
    assert os.path.isfile(tmp_path / "run" / "train_summary.json")


def test_ema():
    from neuronspec.nmt.ema import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(model, 0.9)
    ref = [p.detach().clone() for p in model.parameters()]
    for t in range(1, 40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        d = min(0.9, (1 + t) / (10 + t))  # warm-up of the decay
        ref = [d * r + (1 - d) * p.detach() for r, p in zip(ref, model.parameters())]
    for r, s in zip(ref, ema.shadow):
        torch.testing.assert_close(s, r)
    online = [p.detach().clone() for p in model.parameters()]
    with ema.applied(model):
        assert all(torch.equal(p, s) for p, s in zip(model.parameters(), ema.shadow))
    assert all(torch.equal(p, o) for p, o in zip(model.parameters(), online))  # put back
    with pytest.raises(RuntimeError), ema.applied(model):
        raise RuntimeError("boom")
    assert all(torch.equal(p, o) for p, o in zip(model.parameters(), online))  # also after an error
    state = ema.averaged_state(model)
    assert torch.equal(state["0.weight"], ema.shadow[0]) and "1.running_mean" in state
    other = EMA(model, 0.5)
    other.load(ema.state_dict(), state)
    assert other.decay == 0.9 and other.updates == 39 and all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow))
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(max_steps=1, ema_decay=1.5)
    assert TrainConfig(max_steps=1).ema_decay == 0.995 and TrainConfig(preset="base", max_steps=1).ema_decay == 0.0


@pytest.mark.parametrize("update_freq, mixed", [(1, False), (2, True)])
def test_resume_is_exact(prep, tmp_path, update_freq, mixed):
    n = 6
    kw = dict(valid_every=n, update_freq=update_freq, dropout=0.2, mixed_batches=mixed)
    a = Trainer(config(prep, tmp_path / "a", max_steps=2 * n, **kw))
    a.train()
    # the first n of 2n steps: the tiny preset's linear schedule spans all 2n
    train(config(prep, tmp_path / "b", max_steps=2 * n, **kw), steps=n)
    b = Trainer(config(prep, tmp_path / "b", max_steps=2 * n), resume=True)
    assert a.cfg.lr_scheduler == b.cfg.lr_scheduler == "linear"
    assert b.step == n and b.cfg.update_freq == update_freq and b.cfg.dropout == 0.2
    assert b.sampler.mixed == mixed
    b.train()
    assert b.step == 2 * n
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    assert a.sampler.state_dict() == b.sampler.state_dict()
    # the tiny preset's EMA resumes exactly too, and is what the checkpoint holds as its model
    assert a.ema is not None and a.ema.updates == b.ema.updates == 2 * n
    assert all(torch.equal(x, y) for x, y in zip(a.ema.shadow, b.ema.shadow))
    saved = load_checkpoint(tmp_path / "b" / LAST)
    for name, t in zip(b.ema.names, b.ema.shadow):
        assert torch.equal(saved["model"][name], t) and torch.equal(saved["ema"]["online"][name],
                                                                    dict(b.model.named_parameters())[name])


def test_init_from_with_masks(prep, tmp_path, monkeypatch):
    dense = train(config(prep, tmp_path / "dense", max_steps=5))
    model, _ = load_model(dense["checkpoint"])
    f = model.cfg.d_ff
    g = torch.Generator().manual_seed(0)
    m = torch.rand(4, f, generator=g) < 0.6
    m[:, :10] = False  # neurons 0-9 are off for every direction: fc1 rows never change
    masks = {name: TaskMasks.from_dense(m) for name in model.ffn_layers()}
    t = Trainer(config(prep, tmp_path / "spec", max_steps=4), init_from=load_checkpoint(dense["checkpoint"]), masks=masks)
    assert t.step == 0 and not t.optimizer.state  # fresh optimizer
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.train()
    after = t.model.state_dict()
    for name in model.ffn_layers():
        w0, w1 = before[f"{name}.fc1.weight"], after[f"{name}.fc1.weight"]
        assert torch.equal(w0[:10], w1[:10]) and not torch.equal(w0[10:], w1[10:])
    spec, ck = load_model(tmp_path / "spec" / "checkpoint_last.pt")
    assert ck["step"] == 4 and spec.masks() == masks
    assert all(f.masks == masks[n] for n, f in spec.ffn_layers().items())
    # continuing a specialized checkpoint keeps its masks
    t2 = Trainer(config(prep, tmp_path / "spec2", max_steps=1), init_from=load_checkpoint(tmp_path / "spec" / LAST))
    assert t2.model.masks() == masks
    with pytest.raises(ValueError, match="exclusive"):
        Trainer(config(prep, tmp_path / "x", max_steps=1), init_from=load_checkpoint(dense["checkpoint"]), resume=True)
    with pytest.raises(ValueError, match="exclusive"):
        train(config(prep, tmp_path / "x", max_steps=1), init_from=dense["checkpoint"], resume=True)
    with pytest.raises(TypeError, match="init_from: expected a checkpoint read with load_checkpoint"):
        Trainer(config(prep, tmp_path / "x", max_steps=1), init_from=dense["checkpoint"])  # train() reads paths
    # train(init_from=path, masks=path) (the CLI's call) reads the checkpoint once, and gets the same run
    import neuronspec.nmt.trainer as train_mod

    save_layer_masks(masks, tmp_path / "masks.pt")
    reads = []
    monkeypatch.setattr(train_mod, "load_checkpoint", lambda p, **kw: reads.append(p) or load_checkpoint(p, **kw))
    out = train(config(prep, tmp_path / "spec3", max_steps=4), init_from=dense["checkpoint"], masks=tmp_path / "masks.pt")
    assert reads == [dense["checkpoint"]]
    same, ref = load_model(out["checkpoint"])[0].state_dict(), spec.state_dict()
    assert same.keys() == ref.keys() and all(torch.equal(same[k], ref[k]) for k in ref)



def test_continued_and_resumed_runs_read_checkpoint_and_masks_once(prep, tmp_path, monkeypatch):
    """continue_training (`neuronspec specialize`) and `train --resume` read the checkpoint and the
    masks file once, at the edge, and hand the objects on (the Trainer used to read the checkpoint
    again from its path)."""
    import neuronspec.nmt.checkpoint as checkpoint_mod
    import neuronspec.ops.masks as masks_mod
    from neuronspec.cli import main
    from neuronspec.specialization.specialize import continue_training

    dense = train(config(prep, tmp_path / "dense", max_steps=2))
    model, _ = load_model(dense["checkpoint"])
    m = torch.rand(4, model.cfg.d_ff, generator=torch.Generator().manual_seed(0)) < 0.6
    save_layer_masks({name: TaskMasks.from_dense(m) for name in model.ffn_layers()}, tmp_path / "masks.pt")
    reads = []
    for mod in (checkpoint_mod, masks_mod):
        monkeypatch.setattr(mod, "load_file", lambda path, *a, _real=mod.load_file, **kw:
                            reads.append(os.fspath(path)) or _real(path, *a, **kw))
    spec = continue_training(dense["checkpoint"], tmp_path / "spec", tmp_path / "masks.pt", steps=2)
    assert sorted(reads) == sorted([dense["checkpoint"], str(tmp_path / "masks.pt")])
    reads.clear()
    assert main(["train", "--resume", "--out", str(tmp_path / "spec"), "--max-steps", "3", "--no-progress"]) == 0
    assert reads == [spec["checkpoint"]] and load_checkpoint(spec["checkpoint"])["step"] == 3


def test_model_masks_are_what_the_layers_hold():
    """Transformer.masks() (what checkpoints save) reads the FFN layers: a layer's masks set or
    cleared on the layer itself show there (a second copy on the model used to keep the old ones)."""
    from neuronspec.nmt.model import ModelConfig, Transformer

    model = Transformer(ModelConfig.from_preset("tiny", 40, **TINY_MODEL))
    layers = model.ffn_layers()
    masks = {name: TaskMasks.from_dense(torch.rand(3, 128, generator=torch.Generator().manual_seed(i)) < 0.5)
             for i, name in enumerate(layers)}
    model.set_masks(masks)
    assert model.masks() == masks and list(model.masks()) == list(layers)
    first, second = list(layers)[:2]
    layers[first].set_masks(None)
    layers[second].set_masks(masks[first])
    assert first not in model.masks() and model.masks()[second] == masks[first]
    model.set_masks(None)
    assert model.masks() == {}

DDP_SCRIPT = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
from _nmt_cases import TINY_MODEL
from neuronspec.nmt.config import TrainConfig
from neuronspec.nmt.trainer import train

def cfg(out, steps):
    return TrainConfig(data={prep!r}, out=out, model_args=TINY_MODEL, max_tokens=300, lr=3e-3, warmup=5,
                       log_every=1, valid_every=3, valid_chrf_sentences=4, max_steps=steps, progress=False,
                       device="cpu", dropout=0.2)

train(cfg({a!r}, 6))
train(cfg({b!r}, 6), steps=3)
train(cfg({b!r}, 6), resume=True)

# a time budget: the linear schedule's time share is agreed between ranks, so lr and weights stay equal
import os, torch
from neuronspec.nmt.trainer import Trainer
t = Trainer(TrainConfig(data={prep!r}, out={c!r}, model_args=TINY_MODEL, max_tokens=300, lr=3e-3, warmup=2,
                        max_minutes=0.03, lr_scheduler="linear", valid_every=0, valid_chrf_sentences=0,
                        progress=False, device="cpu"))
t.train()
torch.save({{"lr": t.optimizer.param_groups[0]["lr"], "step": t.step,
            "params": [p.detach().clone() for p in t.model.parameters()]}}, {c!r} + f"/rank{{os.environ['RANK']}}.pt")
"""


@pytest.mark.slow
def test_ddp_two_processes_gloo_with_resume(prep, tmp_path):
    """torchrun, 2 CPU processes (gloo): 6 steps straight == 3 steps + resume + 3 steps; a
    time-budgeted run keeps the same lr and weights on both ranks."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"), prep=prep, a=str(a), b=str(b),
                                        c=str(c)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    errors = "\n".join(line for line in r.stderr.splitlines() if line.startswith("[rank"))
    assert r.returncode == 0, (errors or r.stderr)[-4000:]
    ca, cb = load_checkpoint(a / LAST), load_checkpoint(b / LAST)
    assert ca["step"] == cb["step"] == 6 and len(ca["per_rank"]) == 2
    assert [s["sampler"]["config"]["rank"] for s in ca["per_rank"]] == [0, 1]
    assert ca["per_rank"][0]["sampler"] != ca["per_rank"][1]["sampler"]  # disjoint streams
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    assert ca["history"][-1]["valid_chrf"] >= 0  # rank 0 ran the chrF sample while rank 1 waited
    r0, r1 = (torch.load(c / f"rank{r}.pt") for r in (0, 1))
    assert r0["step"] == r1["step"] >= 2 and r0["lr"] == r1["lr"] < 3e-3
    assert all(torch.equal(x, y) for x, y in zip(r0["params"], r1["params"]))


def test_cli_train_and_evaluate(prep, tmp_path, capsys):
    from neuronspec.cli import main

    out = tmp_path / "cli"
    assert main(["train", "--data", prep, "--out", str(out), "--max-steps", "2", "--max-tokens", "300",
                 "--valid-chrf-sentences", "0", "--no-progress", "--activation", "gelu", "--positions", "learned",
                 "--target-tag", "encoder"]) == 0
    ck = load_checkpoint(out / LAST)
    assert ck["step"] == 2 and ck["model_config"]["activation"] == "gelu" and ck["config"]["preset"] == "tiny"
    assert ck["config"]["target_tag"] == "encoder"
    assert (out / "train.log").read_text().count("valid | step 2") == 1
    assert main(["evaluate", "--checkpoint", str(out / LAST), "--beam", "2", "--max-sentences", "3",
                 "--directions", "en-de", "de-en", "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "| en-de |" in printed and "| de-en |" in printed and "| en-fr |" not in printed
    assert (tmp_path / "ev" / "results.md").is_file() and (tmp_path / "ev" / "hyp.test.de-en.en").is_file()


def test_cli_train_prepares_a_raw_corpus(tmp_path):
    from _nmt_cases import make_corpus
    from neuronspec.cli import main

    corpus = make_corpus(tmp_path / "corpus", langs=("de",), n_train=60, n_eval=6)
    out = tmp_path / "run"
    assert main(["train", "--corpus", str(corpus), "--vocab-size", "320", "--out", str(out), "--max-steps", "1",
                 "--max-tokens", "300", "--valid-chrf-sentences", "0", "--no-progress", "--mixed-batches",
                 "--upsample", "sentence=2"]) == 0
    ck = load_checkpoint(out / LAST)
    assert (out / "data" / "meta.json").is_file() and ck["data"]["prep"] == str((out / "data").resolve())
    assert ck["data"]["directions"] == ["en-de", "de-en"] and ck["config"]["mixed_batches"] is True
    assert ck["config"]["target_tag"] == "decoder" and ck["config"]["upsample"] == {"sentence": 2}
    assert ck["per_rank"][0]["sampler"]["config"]["upsample"] == {"sentence": 2}
    for bad in ("sentence=0", "sentence", "=2"):
        with pytest.raises(SystemExit):
            main(["train", "--corpus", str(corpus), "--out", str(out), "--max-steps", "1", "--upsample", bad])


@pytest.mark.parametrize("langs, want", [(None, list(TINY_BUILTIN_LANGS)), (["all"], None), (["de", "fr"], ["de", "fr"])])
def test_builtin_corpus_languages(tmp_path, monkeypatch, langs, want):
    """The tiny preset with no corpus builds the built-in corpus of TINY_BUILTIN_LANGS; ['all']
    builds and prepares every language (None to the builders)."""
    from neuronspec.nmt import run_setup as train_mod

    seen = {}
    monkeypatch.setattr(train_mod, "build_builtin_corpus", lambda out, langs: seen.update(built=langs))
    monkeypatch.setattr(train_mod, "prepare_corpus", lambda corpus, prep, langs, **kw: seen.update(prepared=langs))
    train_mod.resolve_data(TrainConfig(out=str(tmp_path), langs=langs))
    assert seen == {"built": want, "prepared": want}


# ---- early stopping and the original specialization recipe ---------------------------------------
def test_early_stopping_after_patience_validations(prep, tmp_path, monkeypatch):
    losses = iter([3.0, 2.0, 2.5, 2.4, 2.2, 2.3, 9.9])  # best at the 2nd, then 3 without a better one; final 2.3

    def fake_validate(self):
        v = next(losses)
        return {"loss": v, "nll": v, "ppl": 2 ** v}
    monkeypatch.setattr(Trainer, "validate", fake_validate)
    summary = train(config(prep, tmp_path / "run", max_steps=100, valid_every=2, patience=3))
    assert summary["step"] == 10  # validations at 2, 4 (best), 6, 8, 10: three stale → stop
    ck = load_checkpoint(tmp_path / "run" / LAST)
    assert ck["best_valid"] == 2.0 and ck["stale_validations"] == 4  # the final validation counts too
    with pytest.raises(ValueError, match="patience needs validations"):
        config(prep, tmp_path / "x", max_steps=5, patience=2, valid_every=0)


def test_original_recipe_overrides(prep, tmp_path):
    from neuronspec.specialization.specialize import continue_training, original_recipe

    assert original_recipe("big") == dict(lr_scheduler="inverse_sqrt", warmup=4000, clip_norm=0.0, weight_decay=0.0,
                                          label_smoothing=0.1, dropout=0.1, ema_decay=0.0, valid_every=500,
                                          patience=20)
    assert original_recipe("tiny")["valid_every"] == 19 and original_recipe("tiny")["warmup"] == 150
    dense = train(config(prep, tmp_path / "dense", max_steps=4))
    dirs = load_checkpoint(dense["checkpoint"])["data"]["directions"]
    masks = {"encoder.layers.0.ffn": TaskMasks.full(len(dirs), 128, dirs)}
    s = continue_training(dense["checkpoint"], tmp_path / "spec", masks, steps=3, recipe="original", warmup=2,
                          valid_max_sentences=4)
    cfg = load_checkpoint(s["checkpoint"])["config"]
    assert cfg["clip_norm"] == 0.0 and cfg["dropout"] == 0.1 and cfg["patience"] == 20 and cfg["warmup"] == 2
    assert cfg["lr_scheduler"] == "inverse_sqrt" and cfg["label_smoothing"] == 0.1
    with pytest.raises(ValueError, match="recipe: expected one of"):
        continue_training(dense["checkpoint"], tmp_path / "s2", None, steps=1, recipe="fairseq")


def test_continuation_does_not_inherit_patience(prep, tmp_path):
    """A baseline trained with early stopping: its continuation without validations runs (it
    used to fail with 'patience needs validations') and stops at its step count."""
    from neuronspec.specialization.specialize import continue_training

    dense = train(config(prep, tmp_path / "dense", max_steps=2, valid_every=1, patience=5))
    s = continue_training(dense["checkpoint"], tmp_path / "ft", None, steps=2, valid_every=0)
    assert s["step"] == 2 and load_checkpoint(s["checkpoint"])["config"]["patience"] == 0


# ---- non-finite losses -------------------------------------------------------------------------
def test_nonfinite_updates_are_skipped_then_the_run_stops(prep, tmp_path, monkeypatch):
    """A NaN loss skips the update (weights untouched, step not counted); max_nonfinite in a row
    stop with TrainingDiverged and exit status 3 from the CLI, keeping the last good checkpoint."""
    from neuronspec.errors import TrainingDiverged
    import neuronspec.nmt.trainer as train_mod

    real = train_mod.label_smoothed_loss
    calls = {"n": 0}

    def poisoned(logits, target, eps, pad):
        loss, nll = real(logits, target, eps, pad)
        if not torch.is_grad_enabled():  # validation
            return loss, nll
        calls["n"] += 1  # training micro-batches: the 3rd and from the 7th on are NaN
        return (loss * float("nan"), nll) if calls["n"] == 3 or calls["n"] > 6 else (loss, nll)
    monkeypatch.setattr(train_mod, "label_smoothed_loss", poisoned)
    trainer = Trainer(config(prep, tmp_path / "run", max_steps=50, valid_every=2, max_nonfinite=3))
    with pytest.raises(TrainingDiverged, match="3 updates in a row"):
        trainer.train()
    assert trainer.step == 5 and trainer.skipped_updates == 4  # one skipped alone, then three in a row
    ck = load_checkpoint(tmp_path / "run" / LAST)
    assert ck["step"] == 4 and all(torch.isfinite(t).all() for t in ck["model"].values())


def test_float_options_must_be_finite(prep, tmp_path):
    for name in ("lr", "max_minutes", "clip_norm", "temperature"):
        with pytest.raises(ValueError, match=f"TrainConfig.{name} must be a finite number"):
            config(prep, tmp_path, max_steps=1, **{name: float("nan")})
    with pytest.raises(ValueError, match="betas must be finite"):
        config(prep, tmp_path, max_steps=1, betas=(0.9, float("inf")))


def test_strict_json_writes_null_for_non_finite():
    import json
    from neuronspec.atomic import strict_json
    assert json.loads(strict_json({"a": float("nan"), "b": [1.0, float("inf")], "c": "x"})) == {
        "a": None, "b": [1.0, None], "c": "x"}


def test_cli_exits_3_when_training_diverges(prep, tmp_path, capsys):
    """`--lr 1e6` (issue #15): before, NaN from step 5, exit 0 and an all-NaN checkpoint."""
    from neuronspec.cli import main
    rc = main(["train", "--data", prep, "--out", str(tmp_path / "run"), "--lr", "1e6", "--warmup", "1",
               "--max-steps", "60", "--valid-every", "0", "--valid-chrf-sentences", "0", "--no-progress",
               "--max-tokens", "400", "--max-nonfinite", "3"])
    assert rc == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged" in err[0] and "updates in a row" in err[0]


def test_demo_and_decoding_reject_nan_options():
    from neuronspec.demo import run_demo
    from neuronspec.nmt.decode import _check
    with pytest.raises(ValueError, match="minutes: must be a finite number"):
        run_demo("/nonexistent/demo", minutes=float("nan"))
    with pytest.raises(ValueError, match="lenpen must be a finite number"):
        _check(5, 1.2, 10, float("nan"))


# ---- run folders ------------------------------------------------------------------------------------
def test_run_folder_is_not_overwritten_by_accident(prep, tmp_path):
    first = train(config(prep, tmp_path / "run", max_steps=2))
    before = (tmp_path / "run" / LAST).read_bytes()
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoint_last.pt\); continue it with --resume"):
        train(config(prep, tmp_path / "run", max_steps=2))
    assert (tmp_path / "run" / LAST).read_bytes() == before
    train(config(prep, tmp_path / "run", max_steps=2), overwrite=True)
    with pytest.raises(ValueError, match="is the folder of the checkpoint this run starts from"):
        train(config(prep, tmp_path / "run", max_steps=2), init_from=first["checkpoint"], overwrite=True)
    assert not (tmp_path / "run" / ".lock").exists()  # released


def test_run_lock_refuses_a_second_writer_and_takes_over_stale_locks(tmp_path):
    import json
    import socket
    from neuronspec.nmt.run_folder import run_lock
    with run_lock(tmp_path):
        with pytest.raises(ValueError, match="is in use by another run"):
            with run_lock(tmp_path):
                pass
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)  # a pid that has exited
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()
