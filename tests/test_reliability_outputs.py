"""Issue #28, part 1: no output over an input (by content), one line rule, multi-file outputs
swapped in whole, pipes, and the smaller leftovers (docs/design.md §7)."""
import os

import pytest
import torch

from neuronspec.files import check_output_file, check_output_folder, file_kind, lines_text, save_file, text_lines


# ---------------------------------------------------------------------------- shared helpers
def test_text_lines_split_on_newline_only():
    text = "a\rb\x0cc\u2028d\x85e\r\nf\n\ng"
    assert text_lines(text) == ["a\rb\x0cc\u2028d\x85e", "f", "", "g"]
    assert text_lines(lines_text(["x\r", "y\nz", ""]), crlf=False) == ["x\r", "y z", ""]
    assert text_lines("") == [] and text_lines("\n") == [""]


def test_file_kind_by_content_not_name(tmp_path):
    save_file({"format": "neuronspec-counts", "counts": {}}, tmp_path / "masks.pt")
    save_file({"format": "neuronspec-masks"}, tmp_path / "counts.txt")
    save_file({"format": 1, "model": {"w": torch.zeros(2)}, "model_config": {}}, tmp_path / "a.txt")
    (tmp_path / "t.pt").write_text("hello\n")
    (tmp_path / "b").write_bytes(b"\x00\xff\xfe" * 100)
    (tmp_path / "e").write_bytes(b"")
    assert [file_kind(tmp_path / n) for n in ("masks.pt", "counts.txt", "a.txt", "t.pt", "b", "e", "none")] == \
        ["counts", "masks", "checkpoint", "text", "binary", "empty", None]
    assert file_kind(tmp_path) == "folder"


def test_check_output_file(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    os.link(src, tmp_path / "hard.txt")
    os.symlink(src, tmp_path / "soft.txt")
    for same in (src, tmp_path / "hard.txt", tmp_path / "soft.txt", tmp_path / "sub" / ".." / "in.txt"):
        with pytest.raises(ValueError, match="is the input"):
            check_output_file(same, "output", [src], kind="text", overwrite=True)
    with pytest.raises(ValueError, match=r"already holds text \(e.g. a corpus file\).*--overwrite"):
        check_output_file(tmp_path / "hard.txt", "output", [], kind="text")
    check_output_file(tmp_path / "hard.txt", "output", [], kind="text", overwrite=True)
    save_file({"format": "neuronspec-counts", "counts": {}}, tmp_path / "c.pt")
    check_output_file(tmp_path / "c.pt", "out", [], kind="counts")  # a previous result of the same kind
    with pytest.raises(ValueError, match="out: .*c.pt already holds a counts file; pass --overwrite to replace it with a masks file"):
        check_output_file(tmp_path / "c.pt", "out", [], kind="masks")
    check_output_file(tmp_path / "new.pt", "out", [src], kind="masks")


def test_check_output_folder(tmp_path):
    (tmp_path / "run").mkdir()
    ckpt = tmp_path / "run" / "checkpoint_last.pt"
    ckpt.write_bytes(b"PK\x03\x04")
    for out in (tmp_path / "run", tmp_path):
        with pytest.raises(ValueError, match="holds the input"):
            check_output_folder(out, "out", [ckpt], owned=lambda p: True, command="evaluate", overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not write; pass --overwrite"):
        check_output_folder(tmp_path / "other", "out", [ckpt], owned=lambda p: False, command="evaluate")
    check_output_folder(tmp_path / "other", "out", [ckpt], owned=lambda p: False, command="evaluate", overwrite=True)
    check_output_folder(tmp_path / "fresh", "out", [ckpt], owned=lambda p: False, command="evaluate")


# ---------------------------------------------------------------------------- with a tiny run
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from _reliability_cases import tiny_run

    root = tmp_path_factory.mktemp("outputs")
    return {**tiny_run(root), "root": root}


def _cli(argv, capsys):
    from neuronspec.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# item 2: an input given as --out of a continued run (the masks file named like its checkpoint)
def test_specialize_refuses_masks_at_its_checkpoint_path(run, tmp_path, capsys):
    out = tmp_path / "spec"
    out.mkdir()
    (out / "checkpoint_last.pt").write_bytes(open(run["masks"], "rb").read())
    rc, _, err = _cli(["specialize", "--checkpoint", run["ckpt"], "--masks", out / "checkpoint_last.pt",
                       "--max-steps", "1", "--out", out, "--overwrite"], capsys)
    assert rc == 2 and "is the input" in err, err
    assert (out / "checkpoint_last.pt").read_bytes() == open(run["masks"], "rb").read()


# item 14: a failed specialize leaves no empty --out folder
def test_failed_specialize_leaves_no_empty_out(run, tmp_path, capsys):
    rc, _, err = _cli(["specialize", "--checkpoint", run["ckpt"], "--masks", run["masks"], "--max-steps", "1",
                       "--max-tokens", "1", "--out", tmp_path / "spec"], capsys)
    assert rc == 2 and "max_tokens" in err, err
    assert not (tmp_path / "spec").exists()


# item 5: one line rule for translate (input), evaluation (references) and --compare
def test_translate_keeps_one_line_per_newline(run, tmp_path, capsys):
    src = tmp_path / "in.en"
    src.write_bytes("red cat\x0cblue\u2028dog\x85big\rhouse\r\n\nred\n".encode("utf-8"))
    out = tmp_path / "out.de"
    rc, _, err = _cli(["translate", "--checkpoint", run["ckpt"], "--direction", "en-de", "--input", src,
                       "--output", out, "--beam", "1", "--no-progress"], capsys)
    assert rc == 0, err
    got = out.read_bytes().decode("utf-8")
    assert got.count("\n") == 3 and got.split("\n")[1] == "", repr(got)


def _eval_folder(path, rows, split="test"):
    """A minimal evaluation folder (no checksums, as written before them): {direction: (hyps, refs)}."""
    import json

    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"split": split, "pivot": "en", "directions": {d: {} for d in rows}}))
    for d, (hyps, refs) in rows.items():
        tgt = d.split("-")[1]
        (path / f"hyp.{split}.{d}.{tgt}").write_bytes(lines_text(hyps).encode("utf-8"))
        (path / f"ref.{split}.{d}.{tgt}").write_bytes(lines_text(refs).encode("utf-8"))


def test_compare_reads_lines_by_newline_only_and_refuses_unequal_counts(tmp_path):
    from neuronspec.nmt.compare import compare

    refs = [f"line {i} with a\rcarriage return" if i == 1 else f"the cat {i} sat on the mat" for i in range(8)]
    other = [r.replace("cat", "dog") for r in refs]
    _eval_folder(tmp_path / "a", {"en-de": (refs, refs)})
    _eval_folder(tmp_path / "b", {"en-de": (other, refs)})
    cmp = compare(tmp_path / "a", tmp_path / "b", n_samples=50)
    assert cmp["directions"]["en-de"]["n"] == 8 and cmp["directions"]["en-de"]["chrf_a"] == pytest.approx(100)
    _eval_folder(tmp_path / "short", {"en-de": (refs[:2], refs)})
    with pytest.raises(ValueError, match=r"hyp.test.en-de.de has 2 lines, ref.test.en-de.de 8"):
        compare(tmp_path / "a", tmp_path / "short")


# items 6 and 10: evaluation folders are replaced whole, checked by --compare, named per checkpoint
def test_evaluate_interrupted_keeps_the_old_folder_and_compare_checks_it(run, tmp_path, monkeypatch):
    import neuronspec.nmt.evaluate as ev
    from neuronspec.nmt.compare import compare

    out = tmp_path / "ev"
    ev.evaluate_checkpoint(run["ckpt"], beam=1, max_sentences=3, out_dir=out, progress=False, device="cpu")
    before = _snapshot(out)
    real, calls = ev.translate_direction, []

    def dies_after_one(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(ev, "translate_direction", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate_checkpoint(run["ckpt"], beam=1, max_sentences=2, out_dir=out, progress=False, device="cpu")
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ev"]  # no build folder left behind
    compare(out, out, n_samples=10)
    hyp = next(out.glob("hyp.*"))
    hyp.write_bytes(hyp.read_bytes().replace(b"\n", b" x\n", 1))  # another run's hypotheses, same line count
    with pytest.raises(ValueError, match=f"{hyp.name} does not match the checksum in results.json"):
        compare(out, out, n_samples=10)


def test_evaluate_default_folder_refuses_another_checkpoint(run, tmp_path, capsys):
    import shutil

    folder = tmp_path / "r"
    shutil.copytree(os.path.dirname(run["ckpt"]), folder)
    base = ["evaluate", "--beam", "1", "--max-sentences", "2", "--directions", "en-de", "--device", "cpu"]
    assert _cli([*base, "--checkpoint", folder / "checkpoint_best.pt"], capsys)[0] == 0
    results = (folder / "eval-test-beam1" / "results.json").read_bytes()
    rc, _, err = _cli([*base, "--checkpoint", folder / "checkpoint_last.pt"], capsys)
    assert rc == 2 and "holds the evaluation of another checkpoint" in err, err
    assert (folder / "eval-test-beam1" / "results.json").read_bytes() == results
    assert _cli([*base, "--checkpoint", folder / "checkpoint_last.pt", "--overwrite"], capsys)[0] == 0
    assert b"checkpoint_last.pt" in (folder / "eval-test-beam1" / "results.json").read_bytes()


def test_analyze_interrupted_keeps_the_old_folder(run, tmp_path, monkeypatch):
    import neuronspec.specialization.iou as iou
    from neuronspec.ops import load_layer_masks
    from neuronspec.specialization.select import random_masks

    masks, meta = load_layer_masks(run["masks"])
    out = tmp_path / "an"
    iou.write_analysis(masks, out, meta)
    before = _snapshot(out)

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(iou, "plot_mean_iou", killed)  # after the heatmaps, before the report
    with pytest.raises(KeyboardInterrupt):  # other masks: other heatmaps
        iou.write_analysis(random_masks(masks, seed=1), out, meta)
    assert _snapshot(out) == before and [p.name for p in tmp_path.iterdir()] == ["an"]


def test_a_killed_writers_build_folder_is_removed_by_the_next(run, tmp_path):
    import socket
    import subprocess
    import sys

    from neuronspec.ops import load_layer_masks
    from neuronspec.specialization.iou import write_analysis

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = "".join(c if c.isalnum() or c == "_" else "_" for c in socket.gethostname())
    stale = tmp_path / f".an.tmp-{host}-{int(gone.stdout)}-abcd1234"
    stale.mkdir()
    (stale / "report.md").write_text("half")
    masks, meta = load_layer_masks(run["masks"])
    write_analysis(masks, tmp_path / "an", meta, heatmaps=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["an"]


def test_compare_never_leaves_an_old_file_beside_a_new_one(tmp_path, monkeypatch):
    from neuronspec.nmt.compare import write_compare

    refs = [f"the cat {i} sat" for i in range(6)]
    _eval_folder(tmp_path / "a", {"en-de": (refs, refs)})
    _eval_folder(tmp_path / "b", {"en-de": ([r + " x" for r in refs], refs)})
    write_compare(tmp_path / "a", tmp_path / "b", tmp_path / "b", n_samples=10)
    real = os.replace

    def full_disk(src, dst):
        if os.fspath(dst).endswith("compare.md"):
            raise OSError(28, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        write_compare(tmp_path / "b", tmp_path / "a", tmp_path / "b", n_samples=10)
    assert not (tmp_path / "b" / "compare.json").exists() and not (tmp_path / "b" / "compare.md").exists()


# item 14 and 11: identical systems, a results.json without directions
def test_compare_identical_systems_says_so(tmp_path):
    from neuronspec.nmt.compare import compare, to_markdown

    refs = [f"the cat {i} sat on the mat" for i in range(10)]
    hyps = [r.replace("cat", "dog") for r in refs]
    _eval_folder(tmp_path / "a", {"en-de": (hyps, refs)})
    cmp = compare(tmp_path / "a", tmp_path / "a", n_samples=100)
    r = cmp["directions"]["en-de"]
    md = to_markdown(cmp)
    assert r["p_bleu"] == r["p_chrf"] == 1.0 and r["d_chrf"] == 0 and "0.001" not in md, md
    assert r["identical"] and "1 (identical)" in md


def test_compare_results_without_directions(tmp_path):
    from neuronspec.nmt.compare import compare

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text('{"split": "test"}')
    with pytest.raises(ValueError, match=r"results.json has no 'split' and 'directions'"):
        compare(tmp_path / "a", tmp_path / "a")


# item 12: pipes, FIFOs, closed standard streams
def test_translate_reads_and_writes_fifos(run, tmp_path, capsys):
    import threading

    fin, fout = tmp_path / "in.fifo", tmp_path / "out.fifo"
    os.mkfifo(fin)
    os.mkfifo(fout)
    got = []
    writer = threading.Thread(target=lambda: fin.write_text("red cat\n\nblue dog\n"))
    reader = threading.Thread(target=lambda: got.append(fout.read_text()))
    writer.start()
    reader.start()
    try:
        rc, _, err = _cli(["translate", "--checkpoint", run["ckpt"], "--direction", "en-de", "--input", fin,
                           "--output", fout, "--beam", "1"], capsys)
    finally:
        for p in (fin, fout):  # unblock a thread whose other end was never opened
            fd = os.open(p, os.O_RDWR | os.O_NONBLOCK)
            os.close(fd)
        writer.join(10)
        reader.join(10)
    assert rc == 0, err
    assert got and got[0].count("\n") == 3 and got[0].split("\n")[1] == ""


def test_translate_closed_stdin_is_a_clear_error(run, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "stdin", None)
    rc, _, err = _cli(["translate", "--checkpoint", run["ckpt"], "--direction", "en-de"], capsys)
    assert rc == 2 and "input: standard input is closed; pass --input FILE" in err, err


def test_translate_closed_stdout_is_a_clear_error_before_the_work(run, tmp_path, capsys, monkeypatch):
    import sys

    import neuronspec.nmt.translate as tr

    src = tmp_path / "in.en"
    src.write_text("red cat\n")
    monkeypatch.setattr(tr, "load_for_decoding", lambda *a, **k: pytest.fail("loaded the model first"))
    monkeypatch.setattr(sys, "stdout", None)
    rc, _, err = _cli(["translate", "--checkpoint", run["ckpt"], "--direction", "en-de", "--input", src], capsys)
    assert rc == 2 and "output: standard output is closed; pass --output FILE" in err, err


def test_translate_to_a_reader_that_closed_stdout_exits_0(run, tmp_path):
    import subprocess
    import sys

    src = tmp_path / "in.en"
    src.write_text("red cat\n" * 3)
    p = subprocess.Popen([sys.executable, "-m", "neuronspec.cli", "translate", "--checkpoint", run["ckpt"],
                          "--direction", "en-de", "--input", str(src), "--beam", "1", "--device", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # like `| head -0`: the reader is gone before the job writes
    err = p.stderr.read().decode()
    assert p.wait(300) == 0 and "Traceback" not in err and "Broken pipe" not in err, err
