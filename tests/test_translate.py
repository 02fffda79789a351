"""`neuronspec translate`: raw text in, translations out, equal to evaluate's hypotheses."""
import pytest

from _nmt_cases import TINY_MODEL, prepare
from neuronspec.cli import main
from neuronspec.nmt.decode import translate_direction
from neuronspec.nmt.evaluate import load_for_decoding
from neuronspec.nmt.translate import encode_lines, text_batches, translate_checkpoint, translate_lines


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from neuronspec.nmt.config import TrainConfig
    from neuronspec.nmt.trainer import train

    tmp = tmp_path_factory.mktemp("translate")
    prepare(tmp)
    cfg = TrainConfig(data=str(tmp / "prep"), out=str(tmp / "run"), model_args=TINY_MODEL, max_steps=200,
                      max_tokens=500, lr=3e-3, warmup=40, valid_every=0, valid_chrf_sentences=0, progress=False)
    return train(cfg)["checkpoint"], tmp


@pytest.mark.parametrize("direction", ["en-de", "fr-en"])
@pytest.mark.parametrize("beam", [1, 4])
def test_translate_equals_evaluate_hypotheses(trained, direction, beam):
    """Raw test sources, shuffled and with empty lines between them, translate exactly as
    evaluate translates the prepared test split."""
    ckpt, _ = trained
    model, _, data = load_for_decoding(ckpt, None, "cpu")
    s, t = direction.split("-")
    ids, ref_hyps = translate_direction(model, data, "test", (s, t), beam=beam)
    sources = data.texts("test", (s, t))[0]
    order = list(reversed(ids))
    lines = []
    for i in order:
        lines += [sources[i], ""]
    out = translate_lines(model, data, lines, direction, beam=beam, max_tokens=40)
    assert len(out) == len(lines)
    assert out[1::2] == [""] * len(order)
    assert out[0::2] == [ref_hyps[ids.index(i)] for i in order]


def test_zero_shot_direction_uses_both_tasks(trained):
    """de-fr (not trained): each line decoded on its own with the encoder task of de-en and
    the decoder task of en-fr, from the <2fr> tag."""
    import torch

    from neuronspec.nmt.decode import beam_search

    ckpt, _ = trained
    model, _, data = load_for_decoding(ckpt, None, "cpu")
    tok = data.tokenizer
    lines = data.texts("test", ("de", "en"))[0][:6]
    out = translate_lines(model, data, lines, "de-fr", beam=3)
    for line, hyp in zip(lines, out):
        src = torch.tensor([tok.encode(line) + [tok.eos]])
        ids = beam_search(model, src, data.task_id("de-en"), beam=3, decoder_task=data.task_id("en-fr"),
                          start=tok.lang_tag("fr"))[0]
        assert hyp == tok.decode(ids, source=line)


def test_text_batches_bound_and_cover():
    srcs = [[5] * n for n in (3, 0, 9, 1, 4, 4, 30, 2)]
    batches = list(text_batches(srcs, start=7, task=2, max_tokens=12, pad=0))
    seen = sorted(i for b in batches for i in b.ids.tolist())
    assert seen == [0, 2, 3, 4, 5, 6, 7]  # the empty line is not decoded
    for b in batches:
        assert b.src.numel() <= 12 or len(b) == 1  # a 30-token line gets a batch of its own
        assert (b.tgt_in[:, 0] == 7).all() and (b.task == 2).all()
        for r, i in enumerate(b.ids.tolist()):
            assert b.src[r, :len(srcs[i])].tolist() == srcs[i] and (b.src[r, len(srcs[i]):] == 0).all()


def test_bad_inputs_name_the_problem(trained):
    ckpt, _ = trained
    model, _, data = load_for_decoding(ckpt, None, "cpu")
    with pytest.raises(ValueError, match="direction"):
        translate_lines(model, data, ["red cat"], "en-xx")
    with pytest.raises(ValueError, match="direction"):
        translate_lines(model, data, ["red cat"], "en")
    with pytest.raises(ValueError, match="input line 2: .* at most 8"):
        encode_lines(data.tokenizer, ["red", "red cat dog bird one two three big"], ("en", "de"), False,
                     "decoder", max_positions=8)
    with pytest.raises(ValueError, match="max_tokens"):
        translate_lines(model, data, ["red cat"], "en-de", max_tokens=0)
    assert translate_lines(model, data, [], "en-de") == []


def test_cli_translates_files_and_stdin(trained, capsys, monkeypatch):
    ckpt, tmp = trained
    src = tmp / "in.en"
    src.write_text("red cat\n\nblue dog big house\n", encoding="utf-8")
    out = tmp / "out.de"
    assert main(["translate", "--checkpoint", ckpt, "--direction", "en-de", "--input", str(src),
                 "--output", str(out), "--beam", "3", "--no-progress"]) == 0
    got = out.read_text(encoding="utf-8").splitlines()
    assert got == translate_checkpoint(ckpt, ["red cat", "", "blue dog big house"], "en-de", beam=3, device="cpu")
    assert got[1] == "" and got[0] and got[2]
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("red cat\n"))
    assert main(["translate", "--checkpoint", ckpt, "--direction", "en-de", "--beam", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == got[:1]
    assert main(["translate", "--checkpoint", ckpt, "--direction", "en-qq", "--input", str(src)]) == 2
    assert "direction" in capsys.readouterr().err
