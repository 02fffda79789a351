"""The CLI's bad-input table (issue #15): command × bad input → exit status 2 and one line on
stderr naming the argument or file, no traceback, no file changed (docs/design.md §7)."""
import hashlib
import io
import os
import shutil
import sys

import pytest
import torch

from _reliability_cases import DAMAGES, damage, tiny_run
from neuronspec.ops import load_layer_masks as load_masks, save_layer_masks as save_masks


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    f = tiny_run(root)
    masks, meta = load_masks(f["masks"])
    enc = {k: m for k, m in masks.items() if k.startswith("encoder")}
    save_masks(enc, root / "masks-enc.pt", meta)  # fewer layers than the model
    other = {k: type(m)(m.indices, m.offsets, m.num_neurons, ["en-de", "de-en", "en-it", "it-en"])
             for k, m in masks.items()}
    save_masks(other, root / "masks-other.pt", meta)  # another direction set
    (root / "a-file").write_text("x")
    (root / "a-folder").mkdir()
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    return {**f, "root": str(root), "run": os.path.dirname(f["ckpt"]), "masks_enc": str(root / "masks-enc.pt"),
            "masks_other": str(root / "masks-other.pt"), "file": str(root / "a-file"),
            "folder": str(root / "a-folder"), "latin1": str(root / "latin1.txt")}


def _snapshot(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def check(argv, match, capsys, root, stdin=None, monkeypatch=None):
    """Run the CLI in-process: exit status 2, one line naming `match`, nothing under root changed."""
    from neuronspec.cli import main

    before = _snapshot(root)
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("neuronspec ")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    assert "weights_only" not in err
    assert _snapshot(root) == before


# ---------------------------------------------------------------------------- damaged inputs
# command line (with {bad} for the damaged file) for each kind of file
USES = {
    "ckpt": {
        "evaluate": ["evaluate", "--checkpoint", "{bad}", "--max-sentences", "2"],
        "translate": ["translate", "--checkpoint", "{bad}", "--direction", "en-de", "--input", "{file}"],
        "record": ["record", "--checkpoint", "{bad}", "--data", "{prep}", "--out", "{root}/x/counts.pt"],
        "specialize": ["specialize", "--checkpoint", "{bad}", "--masks", "{masks}", "--max-steps", "1",
                       "--out", "{root}/x/spec"],
        "train --init-from": ["train", "--data", "{prep}", "--init-from", "{bad}", "--out", "{root}/x/t",
                              "--max-steps", "1"],
    },
    "counts": {"select": ["select", "--counts", "{bad}", "--out", "{root}/x/m.pt"]},
    "masks": {
        "analyze": ["analyze", "--masks", "{bad}", "--out", "{root}/x/an"],
        "specialize": ["specialize", "--checkpoint", "{ckpt}", "--masks", "{bad}", "--max-steps", "1",
                       "--out", "{root}/x/spec"],
        "select --masks-like": ["select", "--counts", "{counts}", "--random", "--masks-like", "{bad}",
                                "--out", "{root}/x/m.pt"],
        "train --masks": ["train", "--data", "{prep}", "--masks", "{bad}", "--out", "{root}/x/t", "--max-steps", "1"],
    },
}
DAMAGED = [(what, cmd, kind) for what, cmds in USES.items() for cmd in cmds for kind in DAMAGES]


@pytest.mark.parametrize("what,cmd,kind", DAMAGED, ids=[f"{c}-{w}-{k}" for w, c, k in DAMAGED])
def test_damaged_file(files, tmp_path, capsys, what, cmd, kind):
    bad = tmp_path / f"{what}.pt"
    shutil.copy(files[what], bad)
    want = damage(bad, kind)
    argv = [a.format(bad=bad, **files) for a in USES[what][cmd]]
    label = {"ckpt": "checkpoint"}.get(what, what)
    check(argv, f"{label}: {bad} {want}", capsys, files["root"])
    assert not os.path.exists(os.path.join(files["root"], "x"))


# ---------------------------------------------------------------------------- the other rows
def _no_write_access(monkeypatch, path):
    """Deny write access to `path` as os.access reports it (root writes everywhere, so chmod cannot)."""
    import neuronspec.atomic as atomic

    real = os.access
    monkeypatch.setattr(atomic.os, "access", lambda p, mode: False if os.fspath(p) == path else real(p, mode))


ROWS = {
    # output paths
    "train --out is a file": (["train", "--data", "{prep}", "--out", "{file}", "--max-steps", "1"],
                              "out: {file} is a file, expected a folder"),
    "train --out under a file": (["train", "--data", "{prep}", "--out", "{file}/run", "--max-steps", "1"],
                                 "out: cannot create {file}/run: {file} is a file"),
    "train --out read-only": (["train", "--data", "{prep}", "--out", "{folder}/run", "--max-steps", "1"],
                              "out: {folder} is not writable (to create {folder}/run)"),
    "specialize --out is a file": (["specialize", "--checkpoint", "{ckpt}", "--masks", "{masks}", "--max-steps", "1",
                                    "--out", "{file}"], "out: {file} is a file, expected a folder"),
    "record --out is a folder": (["record", "--checkpoint", "{ckpt}", "--data", "{prep}", "--out", "{folder}"],
                                 "out: {folder} is a folder, expected a file name"),
    "record --out read-only": (["record", "--checkpoint", "{ckpt}", "--data", "{prep}", "--out", "{folder}/c.pt"],
                               "out: {folder} is not writable"),
    "select --out is a folder": (["select", "--counts", "{counts}", "--out", "{folder}"],
                                 "out: {folder} is a folder, expected a file name"),
    "analyze --out is a file": (["analyze", "--masks", "{masks}", "--out", "{file}"],
                                "out: {file} is a file, expected a folder"),
    "evaluate --out is a file": (["evaluate", "--checkpoint", "{ckpt}", "--out", "{file}"],
                                 "out: {file} is a file, expected a folder"),
    "translate --output is a folder": (["translate", "--checkpoint", "{ckpt}", "--direction", "en-de",
                                        "--input", "{file}", "--output", "{folder}"],
                                       "output: {folder} is a folder, expected a file name"),
    # inputs
    "translate --input is a folder": (["translate", "--checkpoint", "{ckpt}", "--direction", "en-de",
                                       "--input", "{folder}"], "input: {folder} is a folder, expected a text file"),
    "translate --input missing": (["translate", "--checkpoint", "{ckpt}", "--direction", "en-de",
                                   "--input", "{root}/nope.txt"], "input: no such file '{root}/nope.txt'"),
    "translate --input not UTF-8": (["translate", "--checkpoint", "{ckpt}", "--direction", "en-de",
                                     "--input", "{latin1}"], "input: {latin1} line 1 is not valid UTF-8"),
    "translate stdin not UTF-8": (["translate", "--checkpoint", "{ckpt}", "--direction", "en-de"],
                                  "input: standard input line 2 is not valid UTF-8"),
    "evaluate --checkpoint missing": (["evaluate", "--checkpoint", "{root}/nope.pt"],
                                      "checkpoint: no such file '{root}/nope.pt'"),
    # devices
    "train --device tpu": (["train", "--data", "{prep}", "--out", "{root}/x/t", "--max-steps", "1", "--device", "tpu"],
                           "device: 'tpu' is not supported"),
    "evaluate --device tpu": (["evaluate", "--checkpoint", "{ckpt}", "--device", "tpu"],
                              "device: 'tpu' is not supported"),
    "translate --device tpu": (["translate", "--checkpoint", "{ckpt}", "--direction", "en-de", "--input", "{file}",
                                "--device", "tpu"], "device: 'tpu' is not supported"),
    "record --device tpu": (["record", "--checkpoint", "{ckpt}", "--data", "{prep}", "--out", "{root}/x/c.pt",
                             "--device", "tpu"], "device: 'tpu' is not supported"),
    "train --device cuda (none)": (["train", "--data", "{prep}", "--out", "{root}/x/t", "--max-steps", "1",
                                    "--device", "cuda"], "device: 'cuda:0' requested but CUDA is not available"),
    "evaluate --device cuda (none)": (["evaluate", "--checkpoint", "{ckpt}", "--device", "cuda"],
                                      "device: 'cuda' requested but CUDA is not available"),
    "train --cuda-graphs on cpu (none)": (["train", "--data", "{prep}", "--out", "{root}/x/g", "--max-steps", "1",
                                          "--device", "cpu", "--cuda-graphs"],
                                         "cuda_graphs: needs a CUDA device, the run is on cpu"),
    "specialize --cuda-graphs on cpu (none)": (["specialize", "--checkpoint", "{ckpt}", "--masks", "{masks}",
                                                "--max-steps", "1", "--out", "{root}/x/g", "--device", "cpu",
                                                "--cuda-graphs"], "cuda_graphs: needs a CUDA device"),
    "train --max-cuda-graphs 0": (["train", "--data", "{prep}", "--out", "{root}/x/g", "--max-steps", "1",
                                   "--max-cuda-graphs", "0"], "TrainConfig.max_cuda_graphs: must be an int >= 1"),
    "select --threads 0": (["select", "--counts", "{counts}", "--out", "{root}/x/m.pt", "--threads", "0"],
                           "--threads: must be an int >= 1, got 0"),
    # run folders and --resume
    "train into a run": (["train", "--data", "{prep}", "--out", "{run}", "--max-steps", "1"],
                         "out: {run} already holds a run (checkpoint_last.pt)"),
    "specialize into its source": (["specialize", "--checkpoint", "{ckpt}", "--masks", "{masks}", "--max-steps", "1",
                                    "--out", "{run}"], "out: {run} is the folder of the checkpoint"),
    "train --resume --lr": (["train", "--resume", "--out", "{run}", "--lr", "0.5"],
                            "resume: --lr 0.5 (the run's: 0.001) would change the run"),
    "train --resume --preset": (["train", "--resume", "--out", "{run}", "--preset", "base"],
                                "resume: --preset 'base' (the run's: 'tiny')"),
    "train --resume --init-from": (["train", "--resume", "--out", "{run}", "--init-from", "{ckpt}"],
                                   "resume: --init-from cannot be combined with --resume"),
    "train --resume without a run": (["train", "--resume", "--out", "{folder}"],
                                     "checkpoint: no such file '{folder}/checkpoint_last.pt'"),
    # masks that do not fit
    "select --masks-like other directions": (["select", "--counts", "{counts}", "--random", "--masks-like",
                                              "{masks_other}", "--out", "{root}/x/m.pt"],
                                             "--masks-like: {masks_other} layer encoder.layers.0.ffn has directions"),
    "specialize masks for fewer layers": (["specialize", "--checkpoint", "{ckpt}", "--masks", "{masks_enc}",
                                           "--max-steps", "1", "--out", "{root}/x/s"],
                                          "masks: {masks_enc} has no masks for 2 of the model's 4 FFN layers"),
    # data folders
    "data prepare into a foreign folder": (["data", "prepare", "--corpus", "{root}/corpus", "--out", "{root}"],
                                           "out: {root} holds files `neuronspec data prepare` does not write"),
    # non-finite options
    "train --lr nan": (["train", "--data", "{prep}", "--out", "{root}/x/t", "--max-steps", "1", "--lr", "nan"],
                       "TrainConfig.lr must be a finite number"),
    "train --save-every 0m": (["train", "--data", "{prep}", "--out", "{root}/x/t", "--save-every", "0m"],
                              "--save-every"),
    "translate --lenpen nan": (["translate", "--checkpoint", "{ckpt}", "--direction", "en-de", "--input", "{file}",
                                "--lenpen", "nan"], "lenpen"),
    # issue #28 part 1: no output over an input or over a file of another kind, by content
    "record --out is the checkpoint": (["record", "--checkpoint", "{ckpt}", "--data", "{prep}", "--out", "{ckpt}"],
                                       "out: {ckpt} is the input {ckpt}"),
    "record --out is a masks file": (["record", "--checkpoint", "{ckpt}", "--data", "{prep}", "--out", "{masks}"],
                                     "out: {masks} already holds a masks file; pass --overwrite"),
    "record --out in the data folder": (["record", "--checkpoint", "{ckpt}", "--data", "{prep}", "--out",
                                         "{prep}/train.bin", "--overwrite"], "out: {prep}/train.bin is a file of the "
                                                                             "input folder {prep}"),
    "select --out is the counts": (["select", "--counts", "{counts}", "--out", "{counts}", "--overwrite"],
                                   "out: {counts} is the input {counts}"),
    "select --out is a checkpoint": (["select", "--counts", "{counts}", "--out", "{ckpt}"],
                                     "out: {ckpt} already holds a checkpoint; pass --overwrite"),
    "translate --output is the input": (["translate", "--checkpoint", "{ckpt}", "--direction", "en-de", "--input",
                                         "{file}", "--output", "{file}", "--overwrite"], "output: {file} is the input"),
    "translate --output a corpus file": (["translate", "--checkpoint", "{ckpt}", "--direction", "en-de", "--input",
                                          "{file}", "--output", "{prep}/test.en-de.de.txt"],
                                         "output: {prep}/test.en-de.de.txt already holds text (e.g. a corpus file)"),
    "translate --output in the checkpoint's data": (["translate", "--checkpoint", "{ckpt}", "--direction", "en-de",
                                                     "--input", "{file}", "--output", "{prep}/test.en-de.de.txt",
                                                     "--overwrite"], "is a file of the input folder {prep}"),
    "evaluate --out holds the checkpoint": (["evaluate", "--checkpoint", "{ckpt}", "--max-sentences", "2", "--out",
                                             "{run}"], "out: {run} holds the input {ckpt}"),
    "evaluate --out a foreign folder": (["evaluate", "--checkpoint", "{ckpt}", "--max-sentences", "2", "--out",
                                         "{prep}"], "out: {prep} holds files `neuronspec evaluate` did not write"),
    "analyze --out holds the masks": (["analyze", "--masks", "{masks}", "--out", "{root}", "--overwrite"],
                                      "out: {root} holds the input {masks}"),
    "translate --lenpen inf greedy": (["translate", "--checkpoint", "{ckpt}", "--direction", "en-de", "--input",
                                       "{file}", "--beam", "1", "--lenpen", "inf"],
                                      "--lenpen: must be a finite number >= 0, got inf"),
    "evaluate --lenpen nan": (["evaluate", "--checkpoint", "{ckpt}", "--beam", "1", "--lenpen", "nan"],
                              "--lenpen: must be a finite number >= 0, got nan"),
    # training options checked before training (issue #28, part 2)
    "train --valid-max-sentences 0": (["train", "--data", "{prep}", "--out", "{root}/x/t", "--max-steps", "1",
                                       "--valid-max-sentences", "0"],
                                      "TrainConfig.valid_max_sentences: must be an int >= 1, got 0"),
    "train --valid-chrf-every -1": (["train", "--data", "{prep}", "--out", "{root}/x/t", "--max-steps", "1",
                                     "--valid-chrf-every", "-1"], "TrainConfig.valid_chrf_every: must be an int >= 0"),
    "train --vocab-size 2": (["train", "--corpus", "{root}/corpus", "--out", "{root}/x/t", "--max-steps", "1",
                              "--vocab-size", "2"], "TrainConfig.vocab_size: must be an int >= 8, got 2"),
    "train --temperature 0": (["train", "--data", "{prep}", "--out", "{root}/x/t", "--max-steps", "1",
                               "--temperature", "0"], "TrainConfig.temperature must be > 0, got 0.0"),
    "train --dropout 1": (["train", "--data", "{prep}", "--out", "{root}/x/t", "--max-steps", "1", "--dropout", "1"],
                          "TrainConfig.dropout must be in [0, 1), got 1.0"),
    "train --weight-decay -1": (["train", "--data", "{prep}", "--out", "{root}/x/t", "--max-steps", "1",
                                 "--weight-decay", "-1"], "TrainConfig.weight_decay must be >= 0, got -1.0"),
    "train --data without meta.json": (["train", "--data", "{root}/corpus", "--out", "{root}/x/t", "--max-steps", "1"],
                                       "is not a prepared folder (no meta.json)"),
    # neuronspec study (issue #29): options checked before anything is written
    "study --arms unknown": (["study", "--arms", "ns,lora", "--out", "{root}/x/s"], "--arms: unknown arm(s) ['lora']"),
    "study --lass-prune 1.5": (["study", "--lass-prune", "0.3,1.5", "--out", "{root}/x/s"],
                               "--lass-prune: prune fractions must be in (0, 1)"),
    "study --baseline missing": (["study", "--baseline", "{root}/nope.pt", "--out", "{root}/x/s"],
                                 "--baseline: {root}/nope.pt is not a file"),
}


def test_threads_option_sets_torch_threads(files, tmp_path):
    from neuronspec.cli import main

    before = torch.get_num_threads()
    try:
        assert main(["select", "--counts", files["counts"], "--k", "0.9", "--out", str(tmp_path / "m.pt"),
                     "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("case", sorted(ROWS))
def test_bad_input(files, capsys, monkeypatch, case):
    if "cuda (none)" in case and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    argv, match = ROWS[case]
    argv = [a.format(**files) for a in argv]
    if "read-only" in case:
        _no_write_access(monkeypatch, files["folder"])
    if case == "record --out read-only":  # found before the counting
        import neuronspec.specialization.record as record

        monkeypatch.setattr(record, "count_activations", lambda *a, **k: pytest.fail("counted first"))
    stdin = b"ok\ncaf\xe9\n" if "stdin" in case else None
    if case == "train --save-every 0m":  # argparse's own message and status 2
        from neuronspec.cli import main

        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and "--save-every: expected a number of steps" in capsys.readouterr().err
        return
    check(argv, match.format(**files), capsys, files["root"], stdin=stdin, monkeypatch=monkeypatch)
    assert not os.path.exists(os.path.join(files["root"], "x"))
