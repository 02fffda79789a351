"""Reliability (issue #15, docs/design.md §7): damaged files, signals and exact resume,
--save-every, stale temporary files, changed options on --resume, failed writes, disk space,
re-preparing data."""
import errno
import json
import logging
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from _nmt_cases import TINY_MODEL, make_corpus, prepare
from _reliability_cases import DAMAGES, damage, tiny_run
from neuronspec.errors import Interrupted
from neuronspec.files import load_file, save_file
from neuronspec.nmt.checkpoint import load_checkpoint
from neuronspec.ops import load_layer_masks as load_masks
from neuronspec.nmt.config import TrainConfig
from neuronspec.nmt.trainer import Trainer, train
from neuronspec.specialization.record import load_counts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAST = "checkpoint_last.pt"


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("rel"))


def config(prep, out, **kw):
    base = dict(data=prep, out=str(out), model_args=TINY_MODEL, max_tokens=400, lr=3e-3, warmup=5, log_every=5,
                valid_every=0, valid_chrf_sentences=0, valid_max_sentences=8, progress=False, dropout=0.2)
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------------- file integrity
LOADERS = {"ckpt": (load_checkpoint, "checkpoint"), "counts": (load_counts, "counts"), "masks": (load_masks, "masks")}


@pytest.mark.parametrize("kind", DAMAGES)
@pytest.mark.parametrize("what", sorted(LOADERS))
def test_damaged_files_give_one_line_naming_the_file(run_files, tmp_path, what, kind):
    path = tmp_path / f"{what}.pt"
    shutil.copy(run_files[what], path)
    want = damage(path, kind)
    loader, label = LOADERS[what]
    with pytest.raises(ValueError) as e:
        loader(path)
    msg = str(e.value)
    assert msg.startswith(f"{label}: {path}") and want in msg and "\n" not in msg, msg
    assert "weights_only" not in msg


def test_files_carry_a_format_and_a_checksum(run_files):
    ck, counts = load_checkpoint(run_files["ckpt"]), load_counts(run_files["counts"])
    masks = load_file(run_files["masks"], "masks")
    assert ck["format"] == 1 and counts["format"] == "neuronspec-counts" and counts["version"] == 1
    assert masks["format"] == "neuronspec-masks" and masks["version"] == 1
    assert all(len(s["sha256"]) == 64 for s in (ck, counts, masks))


def test_files_without_a_checksum_still_load(run_files, tmp_path, caplog):
    """A masks file as save_layer_masks wrote them before checksums (no format, no sha256)."""
    masks = load_masks(run_files["masks"])[0]
    path = tmp_path / "old.pt"
    torch.save({"layers": {k: m.state_dict() for k, m in masks.items()}, "meta": {"k": 0.9}}, path)
    with caplog.at_level(logging.DEBUG, logger="neuronspec.files"):
        again, meta = load_masks(path)
    assert meta == {"k": 0.9} and "has no checksum" in caplog.text and again == masks


def test_a_changed_value_outside_tensors_is_caught_too(run_files, tmp_path):
    state = torch.load(run_files["ckpt"], weights_only=True)
    state["step"] += 1
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="do not match the checksum"):
        load_checkpoint(tmp_path / "c.pt")


# ---------------------------------------------------------------------------- failed writes
def test_a_failed_write_names_the_path_and_keeps_the_previous_file(tmp_path):
    from neuronspec.cli import _describe

    path = tmp_path / "f.pt"
    save_file({"x": torch.zeros(10)}, path, "checkpoint")
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OSError) as e:
            save_file({"x": torch.zeros(100_000)}, path, "checkpoint")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert e.value.errno == errno.EFBIG
    assert _describe(e.value) == f"checkpoint: could not write {path}: File too large (the previous file is kept)"
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["f.pt"]


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs (needs root and mount; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_during_a_save(small_fs):
    from neuronspec.cli import _describe

    path = small_fs / "counts.pt"
    save_file({"x": torch.zeros(1000)}, path, "counts")
    with pytest.raises(OSError) as e:
        save_file({"x": torch.zeros(100_000)}, path, "counts")
    assert e.value.errno == errno.ENOSPC and "unexpected pos" not in str(e.value)
    assert _describe(e.value) == f"counts: could not write {path}: No space left on device (the previous file is kept)"
    assert torch.equal(load_file(path, "counts")["x"], torch.zeros(1000)) and os.listdir(small_fs) == ["counts.pt"]


def test_not_enough_space_for_a_checkpoint_is_found_before_training(run_files, tmp_path, monkeypatch):
    import neuronspec.atomic as atomic

    real = shutil.disk_usage
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: real(p)._replace(free=100_000))
    with pytest.raises(ValueError, match=r"out: .* has 0\.1 MiB free, the first checkpoint needs about 3\.\d MiB"):
        train(config(run_files["prep"], tmp_path / "r", max_steps=3))
    assert not (tmp_path / "r" / LAST).exists()


# ---------------------------------------------------------------------------- signals, exact resume
def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def assert_same_run(a, b):
    """Every tensor (model, EMA, optimizer, RNG states...), step, sampler and validation state equal."""
    ta, tb = dict(_tensors(a)), dict(_tensors(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert a["step"] == b["step"] and a["per_rank"][0]["sampler"] == b["per_rank"][0]["sampler"]
    assert (a["best_valid"], a["stale_validations"]) == (b["best_valid"], b["stale_validations"])
    valid = lambda ck: [h for h in ck["history"] if "valid_loss" in h]  # noqa: E731
    assert valid(a) == valid(b)


N, VALID = 12, 5


@pytest.fixture(scope="module")
def uninterrupted(run_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    Trainer(config(run_files["prep"], out, max_steps=N, valid_every=VALID)).train()
    return load_checkpoint(out / LAST)


@pytest.mark.parametrize("where", ["between_steps", "mid_step", "validation"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_resumes_exactly(run_files, uninterrupted, tmp_path, monkeypatch, where, signum):
    import neuronspec.nmt.trainer as train_mod

    rng = random.Random(f"{where}{signum}")
    k = VALID if where == "validation" else rng.randrange(1, N)  # the step the signal comes at
    t = Trainer(config(run_files["prep"], tmp_path, max_steps=N, valid_every=VALID))
    calls = {"loss": 0, "valid": 0}
    if where == "between_steps":
        step = t.train_step
        monkeypatch.setattr(t, "train_step", lambda: (s := step(), t.step == k and os.kill(os.getpid(), signum))[0])
    elif where == "mid_step":  # during the forward pass of update k: the update finishes
        loss = train_mod.label_smoothed_loss

        def hooked(*a, **kw):
            calls["loss"] += t.model.training
            if calls["loss"] == k and t.model.training:
                os.kill(os.getpid(), signum)
            return loss(*a, **kw)
        monkeypatch.setattr(train_mod, "label_smoothed_loss", hooked)
    else:  # inside the first validation: abandoned, and run again on resume
        batches = train_mod.sampled_batches

        def hooked(*a, **kw):
            calls["valid"] += 1
            if calls["valid"] == 2:
                os.kill(os.getpid(), signum)
            yield from batches(*a, **kw)
        monkeypatch.setattr(train_mod, "sampled_batches", hooked)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # SIG_IGN under nohup
    with pytest.raises(Interrupted) as e:
        t.train()
    assert e.value.exit_status == 128 + signum and f"stopped after step {k}" in str(e.value)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored
    saved = load_checkpoint(tmp_path / LAST)
    assert saved["step"] == k and saved["pending_valid"] == ("periodic" if k % VALID == 0 else None)
    monkeypatch.undo()
    stale = tmp_path / f".{LAST}.k3j9_x0q.tmp"  # a save killed mid-way; other names are not ours
    stale.write_bytes(b"x" * 100)
    for other in (".notes.k3j9_x0q.tmp", "notes.tmp"):
        (tmp_path / other).write_text("mine")
    r = train(config(run_files["prep"], tmp_path, max_steps=N), resume=True)
    assert r["step"] == N and not stale.exists()
    assert (tmp_path / ".notes.k3j9_x0q.tmp").exists() and (tmp_path / "notes.tmp").exists()
    assert_same_run(uninterrupted, load_checkpoint(tmp_path / LAST))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_signal_saves_prints_one_line_and_exits_128_plus_signal(run_files, tmp_path, signum):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "neuronspec.cli", "train", "--data", run_files["prep"], "--out", str(out),
           "--max-steps", "100000", "--max-tokens", "300", "--valid-every", "0", "--valid-chrf-sentences", "0",
           "--log-every", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log_file, t0 = out / "train.log", time.monotonic()
    while not (log_file.is_file() and "train | step 2 " in log_file.read_text()):
        assert proc.poll() is None and time.monotonic() - t0 < 120, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"neuronspec train: {name}: stopped after step ") and str(out / LAST) in last
    step = load_checkpoint(out / LAST)["step"]
    assert step >= 2 and f"stopped after step {step};" in last
    done = subprocess.run([*cmd[:3], "train", "--resume", "--out", str(out), "--max-steps", str(step + 2),
                           "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out / LAST)["step"] == step + 2


def test_save_every_steps_and_minutes(run_files, tmp_path, monkeypatch):
    saves = []
    real = Trainer.save
    monkeypatch.setattr(Trainer, "save", lambda self, best=False: (saves.append(self.step), real(self, best))[1])
    Trainer(config(run_files["prep"], tmp_path / "a", max_steps=7, save_every=3)).train()
    assert saves == [3, 6, 7]  # the last one: the final validation's
    saves.clear()
    Trainer(config(run_files["prep"], tmp_path / "b", max_steps=4, save_every_minutes=1e-9)).train()
    assert saves == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="save_every_minutes must be a finite number"):
        config(run_files["prep"], tmp_path, max_steps=1, save_every_minutes=float("nan"))


def test_resume_with_a_moved_data_folder(run_files, tmp_path):
    from neuronspec.cli import main

    prep = tmp_path / "prep"
    shutil.copytree(run_files["prep"], prep)
    out = tmp_path / "run"
    train(config(str(prep), out, max_steps=4), steps=2)
    moved = tmp_path / "moved"
    prep.rename(moved)
    assert main(["train", "--resume", "--out", str(out), "--data", str(moved), "--no-progress"]) == 0
    ck = load_checkpoint(out / LAST)
    assert ck["step"] == 4 and ck["data"]["prep"] == str(moved) and ck["config"]["data"] == str(moved)
    other = tmp_path / "other"  # another prepared folder: one direction only
    prepare(other, langs=("de",))
    with pytest.raises(ValueError, match="checkpoint (vocabulary|directions)"):
        train(config(str(other / "prep"), out, max_steps=6), resume=True)



def test_resume_help_and_error_name_every_option_that_applies(tmp_path, capsys):
    """`train --resume`'s help text and the error for a changed setting both name every option a
    resumed run takes from its command line, from one list (run_setup.RESUME_OPTIONS); each of them
    is an option of `train` that sets those settings (RESUME_APPLIES). Hand-made copies had drifted:
    the error left out --no-progress."""
    import argparse
    from neuronspec.cli import main
    from neuronspec.nmt.checkpoint import save_checkpoint
    from neuronspec.nmt.run_setup import RESUME_APPLIES, RESUME_OPTIONS
    from neuronspec.nmt.train_cli import configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    actions = {o: a for a in parser._actions for o in a.option_strings}
    for flag, settings in RESUME_OPTIONS.items():
        assert flag in actions and actions[flag].dest in (settings[0], f"no_{settings[0]}"), flag
    assert sorted(RESUME_APPLIES) == sorted(["out", *(f for fs in RESUME_OPTIONS.values() for f in fs)])
    save_checkpoint(tmp_path / LAST, {"config": TrainConfig(max_steps=4).to_dict(), "model": {}})
    assert main(["train", "--resume", "--out", str(tmp_path), "--lr", "0.5"]) == 2
    error = capsys.readouterr().err
    assert "resume: --lr 0.5 (the run's: " in error
    for text in (actions["--resume"].help, error):  # whole options: --cuda-graphs is in --max-cuda-graphs
        assert [f for f in RESUME_OPTIONS if not re.search(rf"(?<![\w-]){f}(?![\w-])", text)] == []

# ---------------------------------------------------------------------------- data folders
def test_failed_reprepare_keeps_the_previous_folder(tmp_path):
    from neuronspec.data.binarize import prepare_corpus

    corpus = make_corpus(tmp_path / "c")
    prepare_corpus(corpus, tmp_path / "p", vocab_size=320, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()}
    (tmp_path / "c" / "valid.en-fr.fr").write_bytes(b"ok\n" * 5 + b"\xff bad\n" + b"ok\n" * 18)
    with pytest.raises(ValueError, match="is not valid UTF-8"):
        prepare_corpus(corpus, tmp_path / "p", vocab_size=320, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["c", "p"]  # no temporary folder left
    (tmp_path / "p" / "notes.md").write_text("mine")
    with pytest.raises(ValueError, match=r"out: .*p holds files `neuronspec data prepare` does not write \(notes.md\)"):
        prepare_corpus(corpus, tmp_path / "p", vocab_size=320, progress=False)
    assert (tmp_path / "p" / "notes.md").read_text() == "mine"


def test_builtin_rebuild_refuses_a_folder_with_added_files(tmp_path):
    from neuronspec.data.builtin_corpus import GENERATOR, build_builtin_corpus

    out = tmp_path / "corpus"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"generator": GENERATOR}))
    (out / "train.en-de.en").write_text("a\n")
    (out / "my-notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files the built-in corpus does not write \(my-notes.txt\)"):
        build_builtin_corpus(out, langs="de", progress=False)
    assert (out / "my-notes.txt").read_text() == "mine"


def test_specialize_is_interrupted_like_train_and_resumes_with_its_masks(run_files, tmp_path, monkeypatch, capsys):
    from neuronspec.cli import main

    step = Trainer.train_step

    def hooked(self):
        s = step(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return s
    monkeypatch.setattr(Trainer, "train_step", hooked)
    out = tmp_path / "spec"
    argv = ["specialize", "--checkpoint", run_files["ckpt"], "--masks", run_files["masks"], "--max-steps", "4",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 143
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("neuronspec")]
    assert err == [f"neuronspec specialize: SIGTERM: stopped after step 2; saved {out / LAST} (continue with "
                   f"`neuronspec train --resume --out {out}`)"]
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    ck = load_checkpoint(out / LAST)
    assert ck["step"] == 4 and ck["masks"] and ck["masks"].keys() == load_masks(run_files["masks"])[0].keys()


def test_ctrl_c_outside_the_training_loop_is_one_line(run_files, tmp_path, monkeypatch, capsys):
    from neuronspec.cli import main

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("neuronspec.data.corpus.PreparedData.load", interrupted)  # while loading the data
    assert main(["train", "--data", run_files["prep"], "--out", str(tmp_path / "r"), "--max-steps", "1"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "neuronspec train: interrupted (SIGINT)" and not (tmp_path / "r").exists()


def test_report_json_is_strict(run_files, tmp_path):
    from neuronspec.specialization.iou import write_analysis

    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")
    masks, _ = load_masks(run_files["masks"])
    write_analysis(masks, tmp_path, {"k": float("nan"), "note": [float("inf")]}, heatmaps=False)
    meta = json.loads((tmp_path / "iou.json").read_text(), parse_constant=refuse)["meta"]
    assert meta == {"k": None, "note": [None]}
