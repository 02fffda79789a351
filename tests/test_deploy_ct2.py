"""`neuronspec translate --engine ctranslate2` (issue #30 item 3): converted once and cached beside
the checkpoint, per-layer pruned widths load, greedy output equals the torch engine's."""
import json
import os

import pytest

from _deploy_cases import specialized_checkpoint
from _nmt_cases import prepare
from neuronspec.cli import main
from neuronspec.data.corpus import PreparedData
from neuronspec.nmt.checkpoint import load_checkpoint, save_checkpoint

ctranslate2 = pytest.importorskip("ctranslate2")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct2")
    prepare(root)
    spec = specialized_checkpoint(root, root / "prep")
    dense = load_checkpoint(spec)
    dense["masks"] = None
    dense.pop("sha256")
    save_checkpoint(root / "dense.pt", dense)
    data = PreparedData.load(root / "prep")
    lines = data.texts("test", ("en", "de"))[0] + ["", "big house %(name)s two"]
    (root / "in.txt").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return root, spec, str(root / "dense.pt")


def _translate(ckpt, root, out, *extra):
    argv = ["translate", "--checkpoint", ckpt, "--direction", "en-de", "--input", str(root / "in.txt"),
            "--output", str(root / out), "--beam", "1", "--overwrite", *extra]
    assert main(argv) == 0
    return (root / out).read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("which", ["dense", "specialized"])
def test_ct2_greedy_equals_torch_engine(case, which):
    root, spec, dense = case
    ckpt = spec if which == "specialized" else dense
    want = _translate(ckpt, root, "torch.txt")
    got = _translate(ckpt, root, "ct2.txt", "--engine", "ctranslate2")
    assert len(got) == len(want) and got[-2] == ""
    assert got == want  # exact: the issue asks >= 99 % of lines
    key = "en-de" if which == "specialized" else "dense"
    model_bin = f"{ckpt}.ct2/{key}/model.bin"
    assert os.path.isfile(model_bin)
    mtime = os.stat(model_bin).st_mtime_ns
    assert _translate(ckpt, root, "ct2.txt", "--engine", "ctranslate2", "--compute-type", "int8") != []
    assert os.stat(model_bin).st_mtime_ns == mtime  # cached: not converted again


def test_ct2_cache_follows_the_checkpoint(case, tmp_path):
    """A checkpoint replaced by another one (different checksum) is converted again."""
    root, spec, _ = case
    ck = load_checkpoint(spec)
    path = tmp_path / "c.pt"
    save_checkpoint(path, {k: v for k, v in ck.items() if k != "sha256"})
    _translate(str(path), root, "a.txt", "--engine", "ctranslate2")
    before = (tmp_path / "c.pt.ct2" / "en-de" / "model.bin").read_bytes()
    ck["model"] = {k: v * 1.5 if k.endswith("fc2.weight") else v for k, v in ck["model"].items()}
    save_checkpoint(path, {k: v for k, v in ck.items() if k != "sha256"})
    second = _translate(str(path), root, "b.txt", "--engine", "ctranslate2")
    assert second == _translate(str(path), root, "t.txt")
    assert (tmp_path / "c.pt.ct2" / "en-de" / "model.bin").read_bytes() != before
    source = json.loads((tmp_path / "c.pt.ct2" / "en-de" / "source.json").read_text())
    assert source["sha256"] == load_checkpoint(path)["sha256"]


def test_ct2_pruned_keeps_per_layer_widths(case, tmp_path):
    """The pruned direction converts at per-layer FFN widths (smaller than padded to the widest)
    and loads; CTranslate2 needs no common width."""
    from neuronspec.deploy.ct2 import convert
    from neuronspec.deploy.native import kept_neurons, prune_model
    from neuronspec.nmt.evaluate import load_for_decoding

    root, spec, _ = case
    model, _, data = load_for_decoding(spec, None, "cpu")
    kept = kept_neurons(model, data.task_id("en-de"))
    assert len({len(k) for k in kept.values()}) > 1  # the layers' widths differ
    per_layer = convert(prune_model(model, kept, per_layer=True), data.tokenizer, tmp_path / "per-layer")
    padded = convert(prune_model(model, kept), data.tokenizer, tmp_path / "padded")
    assert os.path.getsize(per_layer / "model.bin") < os.path.getsize(padded / "model.bin")
    tr = ctranslate2.Translator(str(per_layer))
    assert tr.translate_batch([["▁red", "</s>"]], target_prefix=[["<2de>"]], max_decoding_length=5)[0].hypotheses


def test_ct2_engine_bad_compute_type(case, capsys):
    root, spec, _ = case
    argv = ["translate", "--checkpoint", spec, "--direction", "en-de", "--input", str(root / "in.txt"),
            "--engine", "ctranslate2", "--compute-type", "int3"]
    assert main(argv) == 2
    assert "int3" in capsys.readouterr().err
