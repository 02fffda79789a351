"""Greedy/beam search, scoring against sacrebleu, and checkpoint evaluation end to end."""
import json

import pytest
import sacrebleu
import torch

from _nmt_cases import TINY_MODEL, prepare
from neuronspec.nmt.decode import beam_search, greedy_search, sample_ids
from neuronspec.nmt.evaluate import evaluate_checkpoint, score, signatures, summarize
from neuronspec.nmt.model import ModelConfig, Transformer

V = 30


def model(seed):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(vocab_size=V, d_model=32, d_ff=48, heads=4, encoder_layers=2, decoder_layers=2,
                                dropout=0.0))
    # flatten the output distribution a little so hypotheses end at different lengths
    with torch.no_grad():
        m.embed.weight.mul_(0.3)
    return m.eval()


def sources(B=5, S=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (B, S), generator=g)
    src[1, 3:] = 0
    src[3, 2:] = 0
    return src


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_one_equals_greedy(seed):
    m, src = model(seed), sources(seed=seed)
    task = torch.tensor([0, 1, 0, 1, 1])
    g = greedy_search(m, src, task, max_len_b=8)
    b = beam_search(m, src, task, beam=1, max_len_b=8)
    assert g == b
    assert all(2 not in h and 1 not in h and 0 not in h for h in g)  # no EOS/BOS/PAD inside
    assert len({len(h) for h in g}) > 1  # the test covers different lengths


@pytest.mark.parametrize("seed", [0, 3])
def test_beam_batched_equals_one_by_one(seed):
    """Finished sentences leave the batch (and the cache): each sentence must get the same
    result as when decoded alone."""
    m, src = model(seed), sources(seed=seed)
    task = torch.tensor([0, 1, 0, 1, 1])
    hyps, scores = beam_search(m, src, task, beam=4, lenpen=1.0, max_len_b=8, return_scores=True)
    for i in range(src.shape[0]):
        s = src[i:i + 1, : int((src[i] != 0).sum())]
        h1, s1 = beam_search(m, s, task[i:i + 1], beam=4, max_len_b=8, return_scores=True)
        assert h1[0] == hyps[i]
        assert s1[0] == pytest.approx(scores[i], abs=1e-5)


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_beam_keeps_cross_attention_cache_rows_exactly(seed, monkeypatch):
    """Beam search leaves the cross-attention cache alone unless sentences drop: the same
    hypotheses and the same scores, bit for bit, as reordering it with the beams at every step."""
    m, src = model(seed), sources(seed=seed)
    task = torch.tensor([0, 1, 0, 1, 1])
    calls = []
    hyps, scores = beam_search(m, src, task, beam=4, max_len_b=8, return_scores=True)
    real = Transformer.reorder_cache

    def every_step(cache, order, parts=("self", "cross")):
        calls.append(parts)
        if "self" in parts:  # the beams' rows (which also drop finished sentences) for both parts
            real(cache, order, ("self", "cross"))

    monkeypatch.setattr(Transformer, "reorder_cache", staticmethod(every_step))
    assert beam_search(m, src, task, beam=4, max_len_b=8, return_scores=True) == (hyps, scores)
    drops = calls.count(("cross",))
    assert 0 < drops < calls.count(("self",))  # steps without and with sentences dropping


def test_beam_finds_at_least_greedy_score():
    m, src = model(5), sources(seed=5)
    _, greedy_scores = beam_search(m, src, 0, beam=1, lenpen=0.0, max_len_b=6, return_scores=True)
    _, beam_scores = beam_search(m, src, 0, beam=5, lenpen=0.0, max_len_b=6, return_scores=True)
    # with lenpen=0 scores are total log-probs; a wider beam never loses here
    assert all(b >= g - 1e-6 for b, g in zip(beam_scores, greedy_scores))
    assert any(b > g + 1e-4 for b, g in zip(beam_scores, greedy_scores))


def test_start_tokens_per_sentence():
    """``start`` (the target-language tag of each sentence) replaces BOS as the first decoder
    input: a [B] tensor gives each sentence what decoding it alone from that int gives."""
    m, src = model(4), sources(seed=4)
    start = torch.tensor([5, 6, 5, 7, 6])
    for search in (lambda s, t, st: greedy_search(m, s, t, max_len_b=8, start=st),
                   lambda s, t, st: beam_search(m, s, t, beam=3, max_len_b=8, start=st)):
        hyps = search(src, 0, start)
        for i in range(src.shape[0]):
            assert search(src[i:i + 1], 0, int(start[i])) == [hyps[i]]
        assert hyps != search(src, 0, None)  # the start token matters
    assert greedy_search(m, src, 0, max_len_b=8, start=1) == greedy_search(m, src, 0, max_len_b=8)  # default: bos
    with pytest.raises(ValueError, match="start"):
        greedy_search(m, src, 0, start=torch.tensor([5, 6]))


@pytest.mark.parametrize("target_tag", ["decoder", "encoder"])
def test_decoding_starts_like_training(tmp_path, target_tag):
    """Decoding a prepared direction feeds the decoder what training fed it: teacher forcing
    the greedy hypothesis on the training layout (tgt_in = start + hyp) predicts that same
    hypothesis, and the first input is <2tgt> (decoder tag) or BOS (encoder tag)."""
    from neuronspec.data.batching import eval_batches
    from neuronspec.nmt.decode import translate_batches

    data = prepare(tmp_path, n_train=40, n_eval=6)
    tok = data.tokenizer
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=len(tok), **TINY_MODEL, dropout=0.0)).eval()
    for d in (("en", "de"), ("fr", "en")):
        batch = next(eval_batches(data, "valid", d, max_tokens=400, target_tag=target_tag))
        want = tok.lang_tag(d[1]) if target_tag == "decoder" else tok.bos
        assert (batch.tgt_in[:, 0] == want).all()
        hyps = dict(translate_batches(m, [batch], beam=1, max_len_a=0.0, max_len_b=5))
        for r, i in enumerate(batch.ids.tolist()):
            h = hyps[i]
            tgt_in = torch.tensor([[want] + h])
            logits = m(batch.src[r:r + 1, : int(batch.src_valid[r].sum())], tgt_in, batch.task[r:r + 1])
            logits[0, :, [tok.pad, tok.bos]] = -torch.inf  # what decoding bans
            logits[0, 0, tok.eos] = -torch.inf  # (min_len 1)
            forced = logits[0].argmax(-1).tolist()
            assert forced[:len(h)] == h


def test_max_length_and_bad_args():
    m, src = model(0), sources()
    for search in (lambda: beam_search(m, src, 0, beam=3, max_len_a=0.0, max_len_b=3),
                   lambda: greedy_search(m, src, 0, max_len_a=0.0, max_len_b=3)):
        lengths = [len(h) for h in search()]
        assert max(lengths) == 3  # at most max_len tokens before the forced EOS (fairseq)
    with pytest.raises(ValueError, match="beam"):
        beam_search(m, src, 0, beam=0)
    with pytest.raises(ValueError, match="beam"):
        beam_search(m, src, 0, beam=V)
    with pytest.raises(ValueError, match="lenpen"):
        beam_search(m, src, 0, beam=2, lenpen=-1)


def test_sample_ids_are_evenly_spaced():
    assert sample_ids(10, None) is None and sample_ids(10, 20) is None
    assert sample_ids(10, 3).tolist() == [0, 4, 9]  # 4.5 rounds to even
    with pytest.raises(ValueError, match="max_sentences"):
        sample_ids(10, 0)


# ------------------------------------------------------------------ scoring
# sacrebleu's README example
REFS = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
        ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]


def test_scores_equal_sacrebleu():
    s = score(HYPS, REFS[0])
    assert s["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS[0]]).score, abs=1e-9)
    assert s["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS[0]], word_order=2).score, abs=1e-9)
    # two-reference README numbers, for the metric settings themselves
    assert sacrebleu.metrics.BLEU(tokenize="13a").corpus_score(HYPS, REFS).score == pytest.approx(48.53, abs=0.01)
    assert score(REFS[0], REFS[0])["chrf"] == pytest.approx(100.0)
    assert score(["xyz"], ["abc"])["bleu"] == 0.0
    sig = signatures()
    assert "tok:13a" in sig["bleu"] and "nw:2" in sig["chrf"] and "nrefs:1" in sig["chrf"]
    with pytest.raises(ValueError, match="same length"):
        score(["a"], ["a", "b"])


def test_summarize_groups_and_copy_wins():
    rows = {
        "en-de": dict(src="en", tgt="de", tier="high", bleu=30, chrf=60, copy_chrf=30, n=5,
                      kinds={"phrase": dict(bleu=40, chrf=70, copy_chrf=50, n=3)}),
        "de-en": dict(src="de", tgt="en", tier="high", bleu=20, chrf=50, copy_chrf=55, n=5),
        "en-am": dict(src="en", tgt="am", tier="low", bleu=2, chrf=10, copy_chrf=1, n=5,
                      kinds={"phrase": dict(bleu=1, chrf=20, copy_chrf=30, n=2)}),
    }
    s = summarize(rows)
    a = s["averages"]
    assert a["all"]["chrf"] == pytest.approx(40) and a["all"]["directions"] == 3
    assert a["en-x"]["bleu"] == pytest.approx(16) and a["x-en"]["bleu"] == pytest.approx(20)
    assert a["high/en-x"]["chrf"] == 60 and a["low"]["chrf"] == 10 and "medium" not in a
    assert s["beats_copy"]["all"] == {"wins": 2, "total": 3, "fraction": pytest.approx(2 / 3)}
    assert s["beats_copy"]["phrase"]["wins"] == 1 and s["by_kind"]["phrase"]["averages"]["all"]["chrf"] == 45


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_evaluate_checkpoint_end_to_end(tmp_path):
    from neuronspec.nmt.config import TrainConfig
    from neuronspec.nmt.trainer import train

    data = prepare(tmp_path)
    cfg = TrainConfig(data=str(tmp_path / "prep"), out=str(tmp_path / "run"), model_args=TINY_MODEL, max_steps=200,
                      max_tokens=500, lr=3e-3, warmup=40, valid_every=0, valid_chrf_sentences=0, progress=False)
    summary = train(cfg)
    res = evaluate_checkpoint(summary["checkpoint"], split="test", beam=3, max_sentences=10, progress=False)
    out = tmp_path / "run" / "eval-test-beam3"
    assert res["out_dir"] == str(out)
    assert set(res["directions"]) == {"en-de", "en-fr", "de-en", "fr-en"}
    for name, r in res["directions"].items():
        assert r["n"] == 10
        hyp = (out / f"hyp.test.{name}.{r['tgt']}").read_text(encoding="utf-8").splitlines()
        assert len(hyp) == 10
        assert set(r["kinds"]) == {"phrase", "sentence"}
        assert sum(k["n"] for k in r["kinds"].values()) == 10
        assert r["chrf"] > r["copy_chrf"]  # 200 updates learn this toy mapping
    # the scores are sacrebleu's on the written hypotheses
    srcs, refs = data.texts("test", ("en", "de"))
    ids = sample_ids(len(refs), 10).tolist()
    hyp = (out / "hyp.test.en-de.de").read_text(encoding="utf-8").splitlines()
    assert res["directions"]["en-de"]["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(hyp, [[refs[i] for i in ids]], word_order=2).score)
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["averages"]["all"]["chrf"] == pytest.approx(res["averages"]["all"]["chrf"])
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| en-de |" in md and "chrF++" in md and "nw:2" in md and "phrases only" in md
    assert res["samples"]["en-de"] and {"src", "ref", "hyp", "kind"} <= set(res["samples"]["en-de"][0])


def test_zero_shot_decoding_uses_encoder_and_decoder_tasks(tmp_path):
    """A zero-shot direction x→y encodes with the task of x→en and decodes with the task of
    en→y: with random masks per task, the hypothesis is the teacher-forced argmax of exactly
    that pairing, and decoding with the encoder's task instead scores other outputs."""
    from neuronspec.data.batching import eval_batches
    from neuronspec.data.binarize import prepare_corpus
    from neuronspec.nmt.decode import translate_direction, zero_shot_tasks
    from neuronspec.ops import TaskMasks
    from test_nmt_data import make_corpus

    make_corpus(tmp_path / "c", langs=("de", "fr"), n_train=(60, 60), n_eval=6)
    data = prepare_corpus(tmp_path / "c", tmp_path / "p", vocab_size=400, progress=False)
    assert data.zero_shot_directions("test") == [("de", "fr"), ("fr", "de")]
    enc_t, dec_t = zero_shot_tasks(data, ("de", "fr"))
    assert (enc_t, dec_t) == (data.task_id("de-en"), data.task_id("en-fr"))
    with pytest.raises(ValueError, match="not a training direction"):
        zero_shot_tasks(data, ("en", "uk"))

    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=len(data.tokenizer), **TINY_MODEL, dropout=0.0)).eval()
    g = torch.Generator().manual_seed(1)
    m.set_masks({n: TaskMasks.from_dense(torch.rand(len(data.directions), m.cfg.d_ff, generator=g) < 0.5)
                 for n in m.ffn_layers()})
    batch = next(eval_batches(data, "test", ("de", "fr"), max_tokens=400, task=enc_t))
    start = batch.tgt_in[:, 0]
    hyps = greedy_search(m, batch.src, enc_t, decoder_task=dec_t, max_len_a=0.0, max_len_b=5, start=start)
    assert beam_search(m, batch.src, enc_t, beam=1, decoder_task=dec_t, max_len_a=0.0, max_len_b=5,
                       start=start) == hyps
    enc = m.encode(batch.src, enc_t)
    # the decoder's task matters: its scores differ from those under the encoder's task
    first = torch.tensor([[int(start[0])] + hyps[0]])
    one = type(enc)(enc.out[:1], enc.valid[:1])
    assert not torch.allclose(m.decode(first, one, dec_t), m.decode(first, one, enc_t))
    for r, h in enumerate(hyps):
        one = type(enc)(enc.out[r:r + 1], enc.valid[r:r + 1])
        logits = m.decode(torch.tensor([[int(start[r])] + h]), one, dec_t)
        logits[0, :, [data.tokenizer.pad, data.tokenizer.bos]] = -torch.inf
        logits[0, 0, data.tokenizer.eos] = -torch.inf
        assert logits[0].argmax(-1).tolist()[:len(h)] == h
    ids, texts = translate_direction(m, data, "test", ("de", "fr"), beam=1, max_len_a=0.0, max_len_b=5)
    assert ids == list(range(data.num_examples("test", "de-fr"))) and len(texts) == len(ids)


def test_evaluate_reports_zero_shot_apart(tmp_path):
    from neuronspec.data.binarize import prepare_corpus
    from neuronspec.nmt.evaluate import evaluate_model, to_markdown
    from test_nmt_data import make_corpus

    make_corpus(tmp_path / "c", langs=("de", "fr"), n_train=(60, 60), n_eval=6)
    data = prepare_corpus(tmp_path / "c", tmp_path / "p", vocab_size=400, progress=False)
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=len(data.tokenizer), **TINY_MODEL, dropout=0.0)).eval()
    res = evaluate_model(m, data, "test", beam=1, progress=False, zero_shot=True)
    assert set(res["directions"]) == {"en-de", "en-fr", "de-en", "fr-en", "de-fr", "fr-de"}
    assert res["averages"]["all"]["directions"] == 4 and res["averages"]["zero-shot"]["directions"] == 2
    assert res["beats_copy"]["all"]["total"] == 4
    assert "| zero-shot (2 directions" in to_markdown(res)
    plain = evaluate_model(m, data, "test", beam=1, progress=False)
    assert set(plain["directions"]) == {"en-de", "en-fr", "de-en", "fr-en"} and "zero-shot" not in plain["averages"]


# ---- significance: evaluate --compare ------------------------------------------------------------
def _eval_folder(path, split, rows):
    """A minimal evaluation folder: {direction: (hyps, refs)}."""
    import json
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"split": split, "pivot": "en", "directions": {d: {} for d in rows}}))
    for d, (hyps, refs) in rows.items():
        tgt = d.split("-")[1]
        (path / f"hyp.{split}.{d}.{tgt}").write_text("".join(h + "\n" for h in hyps))
        (path / f"ref.{split}.{d}.{tgt}").write_text("".join(r + "\n" for r in refs))


def test_compare_finds_a_real_difference_and_not_a_fake_one(tmp_path):
    from neuronspec.nmt.compare import compare, write_compare
    import random
    rng = random.Random(0)
    words = "the cat dog sat ran on a mat big small house tree red blue".split()
    refs = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(120)]
    noisy = [" ".join(w if rng.random() > 0.5 else rng.choice(words) for w in r.split()) for r in refs]
    better = [" ".join(w if rng.random() > 0.1 else rng.choice(words) for w in r.split()) for r in refs]
    _eval_folder(tmp_path / "a", "test", {"en-de": (noisy, refs), "de-en": (noisy, refs), "de-fr": (noisy, refs)})
    _eval_folder(tmp_path / "b", "test", {"en-de": (better, refs), "de-en": (noisy, refs), "de-fr": (better, refs)})
    cmp = write_compare(tmp_path / "a", tmp_path / "b", tmp_path / "out", n_samples=200)
    assert cmp["directions"]["en-de"]["significant"] == {"bleu": True, "chrf": True}
    assert cmp["directions"]["en-de"]["d_bleu"] > 0
    assert cmp["directions"]["de-en"]["d_bleu"] == 0 and not cmp["directions"]["de-en"]["significant"]["bleu"]
    assert cmp["pooled"]["supervised"]["n"] == 240 and cmp["pooled"]["zero-shot"]["n"] == 120
    assert cmp["wins"]["chrf"] == {"b_better": 2, "a_better": 0, "directions": 3}
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "**all supervised**" in md and "*" in md
    _eval_folder(tmp_path / "c", "test", {"en-de": (noisy[:100], refs[:100])})
    with pytest.raises(ValueError, match="different lines"):
        compare(tmp_path / "a", tmp_path / "c")
    with pytest.raises(ValueError, match="no results.json"):
        compare(tmp_path / "a", tmp_path / "nowhere")


def test_evaluate_cli_compare(tmp_path, capsys):
    from neuronspec.cli import main
    refs = ["a b c d", "e f g h"] * 20
    _eval_folder(tmp_path / "a", "test", {"en-de": (refs, refs)})
    _eval_folder(tmp_path / "b", "test", {"en-de": (refs, refs)})
    assert main(["evaluate", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--bootstrap", "50"]) == 0
    assert (tmp_path / "b" / "compare.json").is_file() and "paired bootstrap" in capsys.readouterr().out
