"""`neuronspec export` (issue #30 items 1-2): a native checkpoint as a pruned one-direction
checkpoint and as a Hugging Face M2M100 folder, equal to the source model; `neuronspec hf export`."""
import importlib.util
import json
import os

import pytest
import torch

from _deploy_cases import specialized_checkpoint
from _nmt_cases import prepare
from neuronspec.cli import main
from neuronspec.data.corpus import PreparedData
from neuronspec.nmt.checkpoint import load_checkpoint, load_model, save_checkpoint
from neuronspec.nmt.translate import translate_checkpoint
from neuronspec.ops import TaskMasks

LINES = ["red blue cat", "le chat rouge", "big house %(name)s two", "", "one two three small bird dog", "x  y"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    prepare(root)
    return {a: specialized_checkpoint(root, root / "prep", a) for a in ("relu", "gelu")}, root


@pytest.mark.parametrize("activation, direction", [("relu", "en-de"), ("gelu", "de-fr")])
def test_native_export_translates_as_the_masked_model(ckpts, tmp_path, activation, direction, capsys):
    from neuronspec.deploy.native import load_pruned

    ckpt = ckpts[0][activation]
    out = tmp_path / "exp"
    assert main(["export", "--checkpoint", ckpt, "--direction", direction, "--out", str(out)]) == 0
    assert "parameters as written" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "data", "export.json"]
    rec = json.loads((out / "export.json").read_text())
    src_model, src = load_model(ckpt)
    data = PreparedData.load(src["data"]["prep"])
    s, t = direction.split("-")
    enc, dec = (f"{s}-{t}", f"{s}-{t}") if "en" in (s, t) else (f"{s}-en", f"en-{t}")
    assert rec["tasks"] == {"encoder": enc, "decoder": dec}
    assert rec["source"]["sha256"] == src["sha256"] and rec["source"]["step"] == 7
    for name, layer in rec["layers"].items():
        want = src_model.ffn_layers()[name].masks.active(data.task_id(dec if name.startswith("dec") else enc))
        assert layer["neurons"] == want.tolist() and layer["kept"] == len(want)
    padded, ck = load_model(out / "checkpoint.pt")
    compact, _ = load_pruned(out, multiple=1)  # the kept counts (default: rounded up to WIDTH_MULTIPLE)
    assert not padded.masks() and ck["export"] == rec
    assert rec["parameters"]["padded"] == padded.num_parameters()
    assert rec["parameters"]["per_layer"] == compact.num_parameters() < padded.num_parameters()
    assert rec["parameters"]["source"] == src_model.num_parameters()
    # logits: the masked source (encoder and decoder tasks) vs the padded and the per-layer export
    src_ids, tgt_ids = torch.randint(8, 300, (3, 9)), torch.randint(8, 300, (3, 6))
    with torch.no_grad():
        ref = src_model.decode(tgt_ids, src_model.encode(src_ids, data.task_id(enc)), data.task_id(dec))
        for m in (padded, compact):
            torch.testing.assert_close(m(src_ids, tgt_ids, 0), ref, rtol=0, atol=1e-5)
    for beam in (1, 4):
        want = translate_checkpoint(ckpt, LINES, direction, beam=beam, device="cpu")
        assert translate_checkpoint(str(out / "checkpoint.pt"), LINES, direction, beam=beam, device="cpu") == want
    with pytest.raises(ValueError, match="direction: .* training direction"):
        translate_checkpoint(str(out / "checkpoint.pt"), LINES, "en-fr" if direction != "en-fr" else "en-de")


def test_native_export_width_multiple(ckpts, tmp_path, capsys):
    """--width-multiple rounds the written and the per-layer widths up (zero neurons: same logits)."""
    from neuronspec.deploy.native import load_pruned

    ckpt, out = ckpts[0]["relu"], tmp_path / "exp16"
    assert main(["export", "--checkpoint", ckpt, "--direction", "en-de", "--out", str(out),
                 "--width-multiple", "16"]) == 0
    rec = json.loads((out / "export.json").read_text())
    padded, _ = load_model(out / "checkpoint.pt")
    compact, _ = load_pruned(out, multiple=16)
    assert rec["width_multiple"] == 16 and rec["width"] == padded.cfg.d_ff
    assert rec["width"] == min(-(-max(v["kept"] for v in rec["layers"].values()) // 16) * 16, rec["d_ff"])
    assert [f.fc1.out_features for f in compact.ffn_layers().values()] == \
        [min(-(-v["kept"] // 16) * 16, rec["d_ff"]) for v in rec["layers"].values()]
    src_ids, tgt_ids = torch.randint(8, 300, (2, 7)), torch.randint(8, 300, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(compact(src_ids, tgt_ids, 0), padded(src_ids, tgt_ids, 0), rtol=0, atol=1e-5)
    assert main(["export", "--checkpoint", ckpt, "--direction", "en-de", "--out", str(tmp_path / "x"),
                 "--width-multiple", "0"]) == 2
    assert "multiple" in capsys.readouterr().err


def test_export_bad_input(ckpts, tmp_path, capsys):
    ckpt = ckpts[0]["relu"]
    root = ckpts[1]
    assert main(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "a")]) == 2
    assert "direction: --format native exports one direction" in capsys.readouterr().err
    assert main(["export", "--checkpoint", ckpt, "--direction", "en-xx", "--out", str(tmp_path / "b")]) == 2
    assert "direction:" in capsys.readouterr().err
    dense = load_checkpoint(ckpt)
    dense["masks"] = None
    dense.pop("sha256")
    save_checkpoint(root / "dense.pt", dense)
    assert main(["export", "--checkpoint", str(root / "dense.pt"), "--direction", "en-de",
                 "--out", str(tmp_path / "c")]) == 2
    assert "has no masks" in capsys.readouterr().err
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())


# ---------------------------------------------------------------------------- Hugging Face
transformers = pytest.importorskip("transformers")


def test_hf_tokenizer_ids_equal_sentencepiece(ckpts):
    from neuronspec.data.placeholders import protect
    from neuronspec.deploy.hf_export import hf_tokenizer

    tok = PreparedData.load(ckpts[1] / "prep").tokenizer
    hf = hf_tokenizer(tok)
    texts = ["red blue  cat", " zwei Häuser ✓ 42", "Katze\tHund", "  two  spaces  ", "a\u202fb\u200fc", "",
             protect("%(x)s red {0} <b>cat</b>"), "日本語 ünïcödé"]
    for text in texts:
        ids = hf(text).input_ids
        assert ids == tok.sp.encode(text) + [tok.eos], text
        assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids), text
    tag = tok.lang_tag("de")
    assert hf.decode([tag] + tok.sp.encode("red") + [tok.eos, tok.pad], skip_special_tokens=True) == "red"


@pytest.mark.parametrize("activation, direction", [("relu", None), ("gelu", "fr-en")])
def test_hf_export_equals_native(ckpts, tmp_path, activation, direction):
    """The M2M100 folder (dense, or pruned for a direction) gives the native model's logits and,
    with generate, `translate --beam 1`'s lines."""
    from neuronspec.deploy.hf_export import generate_hf, translate_hf

    ckpt = ckpts[0][activation]
    out = tmp_path / "hf"
    argv = ["export", "--checkpoint", ckpt, "--format", "hf", "--out", str(out)]
    assert main(argv + (["--direction", direction] if direction else [])) == 0
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    rec = json.loads((out / "neuronspec_export.json").read_text())
    assert type(hf).__name__ == "M2M100ForConditionalGeneration"
    model, src = load_model(ckpt)
    data = PreparedData.load(src["data"]["prep"])
    if direction is None:
        model.set_masks(None)
        task = 0
    else:
        task = data.task_id(direction)
        assert rec["direction"] == direction and len(rec["layers"]) == 4
        assert hf.config.encoder_ffn_dim < model.cfg.d_ff
    enc = tok(["big house two", "red cat"], padding=True, return_tensors="pt")
    src_ids = enc.input_ids
    assert src_ids[1, -1] == 0  # right-padded with neuronspec's pad id
    tgt_ids = torch.tensor([[data.tokenizer.lang_tag("de"), 20, 30, 40], [data.tokenizer.lang_tag("fr"), 9, 0, 0]])
    with torch.no_grad():
        ref = model(src_ids, tgt_ids, task)
        out_logits = hf(input_ids=src_ids, attention_mask=enc.attention_mask, decoder_input_ids=tgt_ids).logits
    torch.testing.assert_close(out_logits[0], ref[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out_logits[1, :2], ref[1, :2], rtol=0, atol=1e-5)  # the non-padding positions
    d = direction or "en-de"
    native = ckpt if direction else _dense(ckpt, tmp_path)
    assert generate_hf(hf, tok, rec, LINES, d) == _native_ids(native, LINES, d)
    for got, want in zip(translate_hf(hf, tok, rec, LINES, d), translate_checkpoint(native, LINES, d, beam=1)):
        assert got == want or "\ufffd" in want  # an invalid byte run (translate_hf's docstring)


def _native_ids(ckpt, lines, direction):
    """Greedy token ids of `neuronspec translate --beam 1` (None for an empty line)."""
    from neuronspec.nmt.decode import decode_batches, direction_tasks
    from neuronspec.nmt.evaluate import load_for_decoding
    from neuronspec.nmt.translate import encode_lines, text_batches

    model, ck, data = load_for_decoding(ckpt, None, "cpu")
    d = tuple(direction.split("-"))
    task, dec_task = direction_tasks(data, d)
    srcs, start = encode_lines(data.tokenizer, lines, d, False, "decoder", model.cfg.max_positions)
    hyps = decode_batches(model, list(text_batches(srcs, start, task, 4000, 0)), data.tokenizer, beam=1,
                          device="cpu", decoder_task=dec_task)
    return [hyps.get(i) for i in range(len(lines))]


def _dense(ckpt, tmp_path):
    state = load_checkpoint(ckpt)
    state["masks"] = None
    state.pop("sha256")
    save_checkpoint(tmp_path / "dense.pt", state)
    return str(tmp_path / "dense.pt")


def test_hf_export_cli_prunes_a_wrapped_m2m100(tmp_path, capsys):
    """`neuronspec hf export`: a tiny M2M100 folder with a masks file → a pruned folder with
    the tokenizer and the record; logits equal the masked model's."""
    from neuronspec.hf import wrap
    from neuronspec.hf.tiny import tiny_m2m100, tiny_tokenizer
    from neuronspec.ops import save_layer_masks

    tok = tiny_tokenizer(tmp_path / "tok", ["red blue cat", "rot blau Katze", "one two three"] * 20, vocab_size=40)
    model = tiny_m2m100(tok, d_model=32, ffn=64, layers=2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.3)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    g = torch.Generator().manual_seed(0)
    spec = wrap(model, ["en-de", "de-en"])
    masks = {n: TaskMasks.from_dense(torch.rand(2, 64, generator=g) < 0.6, ["en-de", "de-en"]) for n in spec.layers}
    save_layer_masks(masks, tmp_path / "m" / "neuronspec_masks.pt", {"directions": ["en-de", "de-en"]})
    spec.set_masks(masks)
    assert main(["hf", "export", "--model", str(tmp_path / "m"), "--direction", "de-en", "--out",
                 str(tmp_path / "p")]) == 0
    assert "parameters as written" in capsys.readouterr().out
    pruned = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "p").eval()
    rec = json.loads((tmp_path / "p" / "neuronspec_export.json").read_text())
    assert rec["direction"] == "de-en" and rec["source"]["masks"].endswith("neuronspec_masks.pt")
    ptok = transformers.AutoTokenizer.from_pretrained(tmp_path / "p")
    ids = torch.tensor([ptok("rot blau Katze").input_ids])
    dec = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad(), spec.direction("de-en"):
        ref = model(input_ids=ids, decoder_input_ids=dec).logits
        got = pruned(input_ids=ids, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert main(["hf", "export", "--model", str(tmp_path / "m"), "--direction", "en-de", "--masks",
                 str(tmp_path / "none.pt"), "--out", str(tmp_path / "q")]) == 2
    assert "masks: no such file" in capsys.readouterr().err


def test_export_never_replaces_a_folder_it_does_not_own(ckpts, tmp_path, capsys):
    """--out is replaced as a whole: a folder holding the inputs, or other files, is refused and
    left as it was; an earlier export is replaced."""
    ckpt, root = ckpts[0]["relu"], ckpts[1]
    before = sorted(p.name for p in root.iterdir())
    for out, match in ((root, "holds the input"), (root / "prep", "other files")):
        assert main(["export", "--checkpoint", ckpt, "--direction", "en-de", "--out", str(out)]) == 2
        assert match in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    for fmt in ("native", "hf"):
        assert main(["export", "--checkpoint", ckpt, "--direction", "en-de", "--format", fmt, "--out", str(other)]) == 2
        assert "other files" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me" and sorted(p.name for p in root.iterdir()) == before
    for _ in range(2):  # the second run replaces the first export
        assert main(["export", "--checkpoint", ckpt, "--direction", "en-de", "--out", str(tmp_path / "e")]) == 0


def _study_arm_checkpoint(spec: str, path, **features) -> str:
    """``spec``'s model with a study arm's parts (adapters or LaSS masks), no NS masks."""
    from neuronspec.nmt.model import ModelConfig, Transformer

    ck = load_checkpoint(spec)
    cfg = ModelConfig.from_dict({**ck["model_config"], **features})
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.load_state_dict(ck["model"], strict=False)  # the arm's own parts stay as built
    ck.update(model_config=cfg.to_dict(), model=model.state_dict(), masks=None)
    ck.pop("sha256")
    save_checkpoint(path, ck)
    return str(path)


@pytest.mark.parametrize("arm", ["adapters", "lass"])
def test_exports_refuse_the_study_arms_they_cannot_carry(ckpts, tmp_path, capsys, arm):
    """An adapter or LaSS checkpoint is refused by every export, naming what would be lost; the old
    code wrote an M2M100 folder (and a CTranslate2 model) without the adapters, which translated
    differently without a word."""
    n_tasks = len(PreparedData.load(ckpts[1] / "prep").directions)
    features = ({"adapter_kind": "lp", "adapter_dim": 4, "adapter_of_task": list(range(n_tasks))} if arm == "adapters"
                else {"lass_tasks": n_tasks})
    ckpt = _study_arm_checkpoint(ckpts[0]["relu"], tmp_path / f"{arm}.pt", **features)
    what = "adapters" if arm == "adapters" else "LaSS element masks"
    runs = [["export", "--checkpoint", ckpt, "--direction", "en-de", "--out", str(tmp_path / "native")],
            ["export", "--checkpoint", ckpt, "--format", "hf", "--out", str(tmp_path / "hf")]]
    if importlib.util.find_spec("ctranslate2") is not None:
        (tmp_path / "in.txt").write_text("red blue cat\n")
        runs.append(["translate", "--checkpoint", ckpt, "--direction", "en-de", "--input", str(tmp_path / "in.txt"),
                     "--output", str(tmp_path / "out.txt"), "--engine", "ctranslate2"])
    for argv in runs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert what in err and "PyTorch engine" in err, err
    assert not any(p.name in ("native", "hf", "out.txt") for p in tmp_path.iterdir())
    assert not (tmp_path / f"{arm}.pt.ct2").exists()
