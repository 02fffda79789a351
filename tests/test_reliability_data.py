"""Issue #28, training and data: no fake validation numbers, data that cannot change under a run,
prepared folders checked against their manifest, crashed runs that keep their evidence, corpus
files that are never skipped in silence (docs/design.md §7)."""
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from _nmt_cases import TINY_MODEL, make_corpus
from neuronspec.data.binarize import prepare_corpus
from neuronspec.data.corpus import PreparedData, iter_lines, scan_corpus
from neuronspec.nmt.config import TrainConfig
from neuronspec.nmt.run_folder import ERROR_FILE
from neuronspec.nmt.trainer import Trainer, train


def _prepare(root, name="prep", corpus=None, **kw):
    corpus = corpus or make_corpus(root / f"corpus-{name}", seed=kw.pop("seed", 0), langs=kw.pop("langs", ("de", "fr")))
    return str(prepare_corpus(corpus, root / name, vocab_size=320, progress=False, **kw).root)


def _cfg(data, out, **kw):
    base = dict(data=data, out=str(out), model_args=TINY_MODEL, max_tokens=400, warmup=5, max_steps=2, valid_every=0,
                valid_chrf_sentences=0, valid_max_sentences=4, progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return _prepare(tmp_path_factory.mktemp("data"))


def _cli(argv, capsys):
    from neuronspec.cli import main

    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


# ------------------------------------------------------------------ 1: no validation data
@pytest.fixture(scope="module")
def prep_no_valid(tmp_path_factory):
    root = tmp_path_factory.mktemp("novalid")
    corpus = make_corpus(root / "corpus")
    for name in os.listdir(corpus):
        if ".valid." in f".{name}":
            os.remove(os.path.join(corpus, name))
    return _prepare(root, corpus=corpus)


def test_no_validation_data_is_no_validation_never_loss_0(prep_no_valid, tmp_path):
    summary = train(_cfg(prep_no_valid, tmp_path / "run", max_steps=4, valid_every=2))
    assert summary["final"]["valid_loss"] is None and summary["final"]["valid_ppl"] is None
    assert summary["best_checkpoint"] is None and not (tmp_path / "run" / "checkpoint_best.pt").exists()
    saved = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert saved["final"]["valid_loss"] is None and saved["step"] == 4


def test_no_validation_data_refuses_patience(prep_no_valid, tmp_path, capsys):
    with pytest.raises(ValueError, match="patience: early stopping needs validation data"):
        train(_cfg(prep_no_valid, tmp_path / "run", max_steps=9, valid_every=3, patience=2))
    rc, err = _cli(["train", "--data", prep_no_valid, "--out", str(tmp_path / "cli"), "--max-steps", "9",
                    "--valid-every", "3", "--patience", "2"], capsys)
    assert rc == 2 and "patience: early stopping needs validation data" in err and "Traceback" not in err
    assert not (tmp_path / "cli").exists()  # a run that never started leaves no folder


# ------------------------------------------------------------------ 3: --overwrite prepares again
def test_overwrite_does_not_reuse_old_out_data(tmp_path):
    a = make_corpus(tmp_path / "a", langs=("de", "fr"))
    b = make_corpus(tmp_path / "b", langs=("de",), seed=3)
    out = tmp_path / "run"
    kw = dict(vocab_size=320, langs=["all"])
    train(_cfg(None, out, corpus=str(a), **kw))
    train(_cfg(None, out, corpus=str(b), **kw), overwrite=True)
    data = PreparedData(out / "data")
    assert data.meta["config"]["corpus"] == os.path.abspath(b) and data.directions == [("en", "de"), ("de", "en")]
    ckpt = torch.load(out / "checkpoint_last.pt", weights_only=True)
    assert ckpt["data"]["directions"] == ["en-de", "de-en"]


# ------------------------------------------------------------------ 4: the tokenizer's checksum
@pytest.fixture(scope="module")
def two_tokenizers(tmp_path_factory):
    """A run on `prep` and a folder with the same vocabulary size and directions, another tokenizer."""
    root = tmp_path_factory.mktemp("tok")
    corpus = make_corpus(root / "corpus")
    prep = _prepare(root, "prep", corpus=corpus)
    other = _prepare(root, "other", corpus=corpus, seed=1, tokenizer_sentences=300)
    a, b = PreparedData(prep), PreparedData(other)
    assert len(a.tokenizer) == len(b.tokenizer) and a.tokenizer_sha256 != b.tokenizer_sha256
    assert a.meta["tokenizer_sha256"] == a.tokenizer_sha256
    ckpt = train(_cfg(prep, root / "run"))["checkpoint"]
    return prep, other, ckpt


def test_resume_init_from_and_record_refuse_another_tokenizer(two_tokenizers, tmp_path):
    prep, other, ckpt = two_tokenizers
    run = tmp_path / "run"
    shutil.copytree(os.path.dirname(ckpt), run)
    with pytest.raises(ValueError, match="prepared with another tokenizer"):
        train(_cfg(other, run, max_steps=3), resume=True)
    with pytest.raises(ValueError, match="prepared with another tokenizer"):
        train(_cfg(other, tmp_path / "init"), init_from=ckpt)
    from neuronspec.specialization.record import record

    with pytest.raises(ValueError, match="prepared with another tokenizer"):
        record(ckpt, other, tmp_path / "counts.pt", max_sentences=4, device="cpu")
    assert not (tmp_path / "counts.pt").exists()
    assert torch.load(ckpt, weights_only=True)["data"]["tokenizer_sha256"] == PreparedData(prep).tokenizer_sha256


def test_swapped_tokenizer_file_is_refused(two_tokenizers, tmp_path):
    prep, other, _ = two_tokenizers
    bad = tmp_path / "bad"
    shutil.copytree(prep, bad)
    shutil.copy(os.path.join(other, "spm.model"), bad / "spm.model")
    with pytest.raises(ValueError, match=f"{bad / 'spm.model'} (has .* bytes|does not match the checksum)"):
        PreparedData(bad)


# ------------------------------------------------------------------ 7: re-prepared under a run
def test_data_prepared_again_under_a_run_is_not_half_read(tmp_path, caplog):
    prep = _prepare(tmp_path, "prep")
    copy = tmp_path / "copy"
    shutil.copytree(prep, copy)
    ref = Trainer(_cfg(prep, tmp_path / "ref"))
    live = Trainer(_cfg(str(copy), tmp_path / "live"))
    _prepare(tmp_path, "copy", corpus=make_corpus(tmp_path / "new", seed=5))  # same shape, other sentences
    assert live.data.replaced() and not ref.data.replaced()
    assert live.validate() == ref.validate()  # the version it opened, not new arrays under the old meta.json
    assert live.data.texts("valid", "en-de") == ref.data.texts("valid", "en-de")
    with caplog.at_level(logging.WARNING):
        live._log_valid()
    assert "was prepared again while this run reads it" in caplog.text


# ------------------------------------------------------------------ 8 and 14: failed runs
def test_a_crashed_run_keeps_its_folder_log_and_error(prep, tmp_path, monkeypatch):
    from neuronspec.cli import main

    real = Trainer.train_step

    def crash(self):
        if self.step == 1:
            raise RuntimeError("disk on fire")
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", crash)
    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError):
        main(["train", "--data", prep, "--out", str(out), "--max-steps", "5", "--valid-every", "0",
              "--valid-chrf-sentences", "0", "--max-tokens", "400", "--no-progress"])
    assert "disk on fire" in (out / "train.log").read_text()
    error = (out / ERROR_FILE).read_text()
    assert "failed at step 1" in error and "RuntimeError: disk on fire" in error and "Traceback" in error


def test_a_run_that_never_started_removes_only_what_it_made(tmp_path, capsys):
    ckpt = train(_cfg(_prepare(tmp_path, "prep"), tmp_path / "src"))["checkpoint"]
    corpus = make_corpus(tmp_path / "de-only", langs=("de",))  # directions the checkpoint was not trained on
    argv = ["--corpus", str(corpus), "--vocab-size", "320", "--init-from", ckpt, "--max-steps", "1", "--no-progress"]
    rc, err = _cli(["train", "--out", str(tmp_path / "a" / "b"), *argv], capsys)
    assert rc == 2 and "checkpoint" in err and not (tmp_path / "a").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    rc, err = _cli(["train", "--out", str(kept), *argv], capsys)
    assert rc == 2 and sorted(os.listdir(kept)) == ["notes.txt", "train.log"]  # no corpus/, no data/


def test_resume_warns_when_backend_or_threads_change(prep, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    train(_cfg(prep, out))
    env = torch.load(out / "checkpoint_last.pt", weights_only=True)["environment"]
    assert env == {"backend": os.environ.get("NEURONSPEC_BACKEND") or "auto", "threads": threads}
    monkeypatch.setenv("NEURONSPEC_BACKEND", "torch" if env["backend"] != "torch" else "reference")
    try:
        torch.set_num_threads(threads + 1)
        with caplog.at_level(logging.WARNING):
            train(_cfg(prep, out, max_steps=3), resume=True)
    finally:
        torch.set_num_threads(threads)
    assert "NEURONSPEC_BACKEND was" in caplog.text and f"torch threads (--threads) was {threads}" in caplog.text


# ------------------------------------------------------------------ 9: over-long sentences
def test_over_long_sentences_are_skipped_and_reported(tmp_path, caplog):
    corpus = make_corpus(tmp_path / "corpus")
    for split, line in (("train", 7), ("valid", 3)):
        for lang in ("en", "de"):
            path = corpus / f"{split}.en-de.{lang}"
            lines = path.read_text(encoding="utf-8").split("\n")
            lines[line - 1] = " ".join(["Katze Hund Vogel" if lang == "de" else "cat dog bird"] * 40)
            path.write_text("\n".join(lines), encoding="utf-8")
    prep = _prepare(tmp_path, corpus=corpus)
    cfg = _cfg(prep, tmp_path / "run", max_steps=4, valid_every=2, model_args={**TINY_MODEL, "max_positions": 64},
               max_tokens=2000)
    with caplog.at_level(logging.WARNING):
        summary = train(cfg)
    assert summary["skipped_too_long"] == {"train": 1, "valid": 1}  # one line of each pair file
    assert "train.en-de.en line 7" in caplog.text and "valid.en-de.en line 3" in caplog.text
    assert summary["final"]["valid_loss"] is not None


# ------------------------------------------------------------------ 11: damaged prepared folders
def _write_meta(folder, edit):
    meta = json.loads((folder / "meta.json").read_text())
    edit(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def _damage(folder, kind):
    """Damage a copy of a prepared folder; returns (file named, message part)."""
    if kind == "empty meta.json":
        (folder / "meta.json").write_text("")
        return "meta.json", "is empty"
    if kind == "meta.json without tiers":
        _write_meta(folder, lambda m: m.pop("tiers"))
        return "meta.json", "lacks 'tiers'"
    if kind == "truncated train.bin":
        raw = (folder / "train.bin").read_bytes()
        (folder / "train.bin").write_bytes(raw[: len(raw) // 2])
        return "train.bin", "has"
    if kind == "swapped valid.idx":
        shutil.copy(folder / "test.idx", folder / "valid.idx")
        return "valid.idx", "does not match the checksum"
    if kind == "id outside the vocabulary":  # the manifest rewritten to match: only the range check sees it
        ids = np.fromfile(folder / "train.bin", dtype=np.uint16)
        ids[10] = 60000
        ids.tofile(folder / "train.bin")
        entry = {"bytes": ids.nbytes, "sha256": hashlib.sha256(ids.tobytes()).hexdigest()}
        _write_meta(folder, lambda m: m.get("files", {}).update({"train.bin": entry}))
        return "train.bin", "holds token id 60000"
    if kind == "swapped idx, old folder":  # prepared before manifests: the index check sees it
        shutil.copy(folder / "valid.idx", folder / "train.idx")
        _write_meta(folder, lambda m: m.pop("files", None))
        return "train.idx", "has"
    raise ValueError(kind)


DAMAGES = ("empty meta.json", "meta.json without tiers", "truncated train.bin", "swapped valid.idx",
           "id outside the vocabulary", "swapped idx, old folder")


@pytest.mark.parametrize("kind", DAMAGES)
def test_damaged_prepared_folder_is_one_line_naming_the_file(prep, tmp_path, capsys, kind):
    bad = tmp_path / "bad"
    shutil.copytree(prep, bad)
    name, want = _damage(bad, kind)
    rc, err = _cli(["train", "--data", str(bad), "--out", str(tmp_path / "run"), "--max-steps", "1",
                    "--valid-max-sentences", "4", "--no-progress"], capsys)
    line = [x for x in err.splitlines() if x.startswith("neuronspec train: error:")]
    assert rc == 2 and "Traceback" not in err and len(line) == 1, err
    assert str(bad / name) in line[0] and want in line[0], line[0]
    assert not (tmp_path / "run").exists()


def test_index_check_catches_a_swapped_idx_without_manifest(prep, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(prep, bad)
    _write_meta(bad, lambda m: m.pop("files", None))
    rows = json.loads((bad / "meta.json").read_text())["splits"]["valid"]["rows"]
    idx = np.fromfile(bad / "valid.idx", dtype=np.int64)
    idx[[3, 4]] = idx[[4, 3]]  # same size, offsets out of order
    assert len(idx) == rows
    idx.tofile(bad / "valid.idx")
    with pytest.raises(ValueError, match=f"{bad / 'valid.idx'} is not the index of"):
        PreparedData(bad).split_arrays("valid")


# ------------------------------------------------------------------ 13 and 14: corpus files
def test_unexpected_corpus_names_are_warned_about(tmp_path, caplog):
    corpus = make_corpus(tmp_path / "corpus", langs=("de",))
    for name in ("train.en-fr-FR.en", "train.en-fr-FR.fr", "train.en-es.es.gz", "valid.en-de.xx"):
        (corpus / name).write_text("hello\n")
    with caplog.at_level(logging.WARNING):
        c = scan_corpus(corpus)
    assert c.languages == ["en", "de"]
    for name in ("train.en-fr-FR.en", "train.en-fr-FR.fr", "train.en-es.es.gz", "valid.en-de.xx"):
        assert f"{corpus / name} left out" in caplog.text
    assert "compressed files are not read" in caplog.text


def test_utf8_bom_is_stripped(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", langs=("de",))
    for split in ("train", "valid"):
        for lang in ("en", "de"):
            path = corpus / f"{split}.en-de.{lang}"
            path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    first = next(iter_lines(corpus / "valid.en-de.de"))
    assert not first.startswith("\ufeff")
    data = PreparedData(_prepare(tmp_path, corpus=corpus))
    src, ref = data.texts("valid", "en-de")
    assert not src[0].startswith("\ufeff") and not ref[0].startswith("\ufeff")
    assert "\ufeff" not in data.tokenizer.decode(data.example("train", "en-de", 0)[0].tolist())


def test_translate_input_and_corpus_files_are_read_by_one_rule(tmp_path, monkeypatch):
    """`translate`'s input (a file or standard input) and corpus files go through one line reader:
    a leading BOM dropped, \\r\\n one ending, a lone \\r and U+2028 kept, the same error for bad
    UTF-8 (translate used to keep the BOM in the first sentence)."""
    import io
    from neuronspec.nmt.translate import read_lines

    raw = b"\xef\xbb\xbfHallo\r\nWelt\rund \xe2\x80\xa8 mehr\n\nEnde"
    (tmp_path / "in.txt").write_bytes(raw)
    want = ["Hallo", "Welt\rund \u2028 mehr", "", "Ende"]
    assert list(iter_lines(tmp_path / "in.txt")) == read_lines(str(tmp_path / "in.txt")) == want
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
    assert read_lines(None) == want
    (tmp_path / "bad.txt").write_bytes(b"ok\ncaf\xe9\n")
    for read, what in ((lambda p: list(iter_lines(p)), "corpus"), (read_lines, "input")):
        with pytest.raises(ValueError, match=rf"^{what}: .*bad.txt line 2 is not valid UTF-8 \(invalid "
                                             r"continuation byte, byte b'\\xe9'\)$"):
            read(str(tmp_path / "bad.txt"))


def test_killed_builds_leave_no_folder_that_breaks_prepare(tmp_path, caplog):
    corpus = make_corpus(tmp_path / "root" / "ec", langs=("de",))
    leftover = tmp_path / "root" / ".ec.tmp-abcd1234"  # an older killed `data builtin` (no pid in the name)
    shutil.copytree(corpus, leftover)
    with caplog.at_level(logging.WARNING):
        c = scan_corpus(tmp_path / "root")  # found twice before
    assert c.languages == ["en", "de"] and "hidden folder" in caplog.text
    from neuronspec.data.manifest import remove_stale_temp_folders, temp_folder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = temp_folder(tmp_path / "prep")
    stale = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
    mine.rename(stale)
    alive = temp_folder(tmp_path / "prep")  # this process's build, still running
    prepare_corpus(corpus, tmp_path / "prep", vocab_size=320, progress=False)
    assert not stale.exists() and alive.exists() and leftover.exists()
    assert remove_stale_temp_folders(tmp_path / "prep") == []
