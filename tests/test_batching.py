"""Temperature sampling, token-budget batches, determinism, resume and rank sharding."""
import itertools
import json
from collections import Counter

import numpy as np
import pytest
import torch

from neuronspec.data.batching import Batch, TrainSampler, eval_batches, tag_options, temperature_probs
from neuronspec.data.binarize import prepare_corpus

from test_nmt_data import make_corpus


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root, langs=("de", "fr", "ar"), n_train=(300, 150, 60))
    return prepare_corpus(root, tmp_path_factory.mktemp("prep"), vocab_size=400, progress=False)


def take(sampler, n):
    return list(itertools.islice(sampler, n))


def same(a: Batch, b: Batch) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("src", "tgt_in", "tgt_out", "task", "ids"))


# ------------------------------------------------------------- temperature
def test_temperature_probs_formula():
    n = np.array([5000, 1000, 100, 10])
    for T in (1.0, 2.0, 5.0, 100.0):
        q = (n / n.sum()) ** (1 / T)
        np.testing.assert_allclose(temperature_probs(n, T), q / q.sum(), rtol=1e-12)
    np.testing.assert_allclose(temperature_probs(n, 1.0), n / n.sum())
    p5 = temperature_probs(n, 5.0)
    assert p5[0] < n[0] / n.sum() and p5[-1] > n[-1] / n.sum()  # flattens towards uniform
    np.testing.assert_allclose(temperature_probs(n, 1e9), 0.25, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        temperature_probs(n, 0.0)
    with pytest.raises(ValueError, match="sizes"):
        temperature_probs([10, 0], 5.0)


@pytest.mark.parametrize("T", [1.0, 5.0])
def test_sampler_probabilities_and_empirical_frequencies(data, T):
    s = TrainSampler(data, max_tokens=256, temperature=T, seed=0)
    sizes = [data.num_examples("train", d) for d in data.directions]
    np.testing.assert_allclose(s.probabilities, temperature_probs(sizes, T))
    assert s.directions == data.directions
    n = 4000
    counts = np.bincount([int(b.task[0]) for b in take(s, n)], minlength=len(sizes)) / n
    np.testing.assert_allclose(counts, s.probabilities, atol=0.03)  # ~4 sigma at n = 4000
    # mixed: the share of examples per direction follows the same probabilities
    m = TrainSampler(data, max_tokens=256, temperature=T, seed=0, mixed=True)
    tasks = torch.cat([b.task for b in take(m, 1500)]).numpy()
    np.testing.assert_allclose(np.bincount(tasks, minlength=len(sizes)) / len(tasks), m.probabilities, atol=0.02)


# ---------------------------------------------------------- batch contents
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("source_tag", [False, True])
@pytest.mark.parametrize("target_tag", ["decoder", "encoder"])
def test_batch_layout_and_budget(data, mixed, source_tag, target_tag):
    max_tokens = 150
    s = TrainSampler(data, max_tokens=max_tokens, seed=1, mixed=mixed, source_tag=source_tag, target_tag=target_tag)
    tok = data.tokenizer
    multi = 0
    for b in take(s, 60):
        B = len(b)
        assert b.src.dtype == b.tgt_in.dtype == b.tgt_out.dtype == b.task.dtype == b.ids.dtype == torch.int64
        assert b.tgt_in.shape == b.tgt_out.shape and b.task.shape == b.ids.shape == (B,)
        assert b.num_cells == B * max(b.src.shape[1], b.tgt_out.shape[1]) <= max_tokens
        assert b.ntokens == int(b.tgt_valid.sum())
        assert b.src_valid[:, 0].all() and b.tgt_valid[:, 0].all()
        multi += len(set(b.task.tolist())) > 1
        for r in range(B):
            d = data.directions[int(b.task[r])]
            src_ids, tgt_ids = data.example("train", d, int(b.ids[r]))
            on_dec = target_tag == "decoder"
            prefix = ([tok.lang_tag(d[0])] if source_tag else []) + ([] if on_dec else [tok.lang_tag(d[1])])
            want_src = prefix + src_ids.tolist() + [tok.eos]
            assert b.src[r, :len(want_src)].tolist() == want_src and not b.src_valid[r, len(want_src):].any()
            n = len(tgt_ids)
            start = tok.lang_tag(d[1]) if on_dec else tok.bos
            assert b.tgt_in[r, :n + 1].tolist() == [start] + tgt_ids.tolist()
            assert b.tgt_out[r, :n + 1].tolist() == tgt_ids.tolist() + [tok.eos]
            assert not b.tgt_valid[r, n + 1:].any() and (b.tgt_in[r, n + 1:] == tok.pad).all()
    if mixed:
        assert multi > 0
    else:
        assert multi == 0


@pytest.mark.parametrize("mixed", [False, True])
def test_every_example_appears(data, mixed):
    s = TrainSampler(data, max_tokens=200, seed=2, mixed=mixed)
    sizes = {i: data.num_examples("train", d) for i, d in enumerate(data.directions)}
    seen = {i: [] for i in sizes}
    # (mixed: stop at the end of a bucketing pool, whose batches come out shuffled)
    while any(len(seen[i]) < sizes[i] for i in sizes) or (mixed and s._pool):
        b = next(s)
        for t, i in zip(b.task.tolist(), b.ids.tolist()):
            seen[t].append(i)
    for t, n in sizes.items():
        if mixed:  # pools take stream chunks that cross epochs: every example, evenly often
            c = Counter(seen[t])
            assert set(c) == set(range(n)) and max(c.values()) - min(c.values()) <= 1
        else:  # one epoch of a direction ends on a batch boundary: its first n ids are a permutation
            assert sorted(seen[t][:n]) == list(range(n))


def test_length_bucketing_keeps_padding_low(data):
    s = TrainSampler(data, max_tokens=300, seed=0)
    cells = tokens = 0
    for b in take(s, 200):
        cells += b.num_cells
        tokens += int(b.tgt_valid.sum())
    assert tokens / cells > 0.7


# ------------------------------------------------------ determinism, resume
@pytest.mark.parametrize("mixed", [False, True])
def test_determinism_and_resume(data, mixed):
    kw = dict(max_tokens=180, seed=7, mixed=mixed, pool_batches=4)
    straight = take(TrainSampler(data, **kw), 130)
    assert all(same(a, b) for a, b in zip(straight, take(TrainSampler(data, **kw), 130)))
    other = take(TrainSampler(data, **{**kw, "seed": 8}), 130)
    assert not all(same(a, b) for a, b in zip(straight, other))
    for N in (0, 1, 37, 100):
        s = TrainSampler(data, **kw)
        first = take(s, N)
        state = json.loads(json.dumps(s.state_dict()))  # plain Python, survives JSON
        resumed = TrainSampler(data, **kw)
        resumed.load_state_dict(state)
        rest = take(resumed, 130 - N)
        assert all(same(a, b) for a, b in zip(first + rest, straight)), N
        # the original sampler is unaffected by state_dict()
        assert all(same(a, b) for a, b in zip(take(s, 130 - N), straight[N:]))


def test_load_state_dict_rejects_other_settings(data):
    s = TrainSampler(data, max_tokens=180, seed=7)
    state = s.state_dict()
    with pytest.raises(ValueError, match="seed"):
        TrainSampler(data, max_tokens=180, seed=8).load_state_dict(state)
    with pytest.raises(ValueError, match="mixed"):
        TrainSampler(data, max_tokens=180, seed=7, mixed=True).load_state_dict(state)
    with pytest.raises(ValueError, match="state"):
        s.load_state_dict({"step": 3})


# ------------------------------------------------------------- sharding
@pytest.mark.parametrize("mixed", [False, True])
def test_rank_shards_are_disjoint(data, mixed):
    """Within one epoch of a direction, ranks see disjoint examples that cover it."""
    W = 3  # 300, 150 and 60 examples: all divisible by 3
    share = {t: data.num_examples("train", d) // W for t, d in enumerate(data.directions)}
    seen = []
    for rank in range(W):
        s = TrainSampler(data, max_tokens=200, seed=5, mixed=mixed, rank=rank, world_size=W, pool_batches=1)
        ids = {t: [] for t in share}
        for b in take(s, 400 if not mixed else 12):
            for t, i in zip(b.task.tolist(), b.ids.tolist()):
                ids[t].append(i)
        seen.append(ids)
    checked = 0
    for t, d in enumerate(data.directions):
        if mixed:  # a few small pools: stay inside the first epoch of each rank's share
            if max(len(seen[r][t]) for r in range(W)) > share[t]:
                continue
            firsts = [set(seen[r][t]) for r in range(W)]
            assert all(len(f) == len(seen[r][t]) for r, f in enumerate(firsts))
        else:  # an epoch ends on a batch boundary: the first `share` ids of a rank are its epoch
            firsts = [set(seen[r][t][:share[t]]) for r in range(W)]
            assert all(len(f) == share[t] for f in firsts)
            assert set().union(*firsts) == set(range(data.num_examples("train", d)))
        for r1, r2 in itertools.combinations(range(W), 2):
            assert not firsts[r1] & firsts[r2], (d, r1, r2)
        checked += 1
    assert checked >= (2 if mixed else len(share))
    # ranks draw their own streams
    a = next(TrainSampler(data, max_tokens=200, seed=5, rank=0, world_size=W))
    b = next(TrainSampler(data, max_tokens=200, seed=5, rank=1, world_size=W))
    assert not same(a, b)


def test_rank_shards_uneven_size(data):
    W = 7  # 300 = 42 * 7 + 6: the epoch order is padded by 1 wrapped example
    n = data.num_examples("train", "en-de")
    t = data.task_id("en-de")
    shares = []
    for rank in range(W):
        s = TrainSampler(data, max_tokens=200, seed=5, rank=rank, world_size=W)
        ids = []
        while len(ids) < 43:
            b = next(s)
            if int(b.task[0]) == t:
                ids += b.ids.tolist()
        shares.append(ids[:43])
    union = Counter(i for share in shares for i in share)
    assert set(union) == set(range(n)) and sum(union.values()) - n == 1


# ----------------------------------------------------------- limits, eval
def test_overlong_examples_are_skipped(data):
    sizes = np.concatenate([np.maximum(*data.lengths("train", d)) for d in data.directions])
    max_tokens = int(np.percentile(sizes, 90))
    s = TrainSampler(data, max_tokens=max_tokens, seed=0)
    assert s.num_skipped > 0
    assert all(b.num_cells <= max_tokens for b in take(s, 200))
    with pytest.raises(ValueError, match="max_tokens"):
        TrainSampler(data, max_tokens=1)  # every example here has >= 2 (a piece, eos)


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="max_tokens"):
        TrainSampler(data, max_tokens=0)
    with pytest.raises(ValueError, match="rank"):
        TrainSampler(data, max_tokens=100, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        TrainSampler(data, max_tokens=100, world_size=0)
    with pytest.raises(ValueError, match="temperature"):
        TrainSampler(data, max_tokens=100, temperature=-1)
    with pytest.raises(ValueError, match="max_sentences"):
        TrainSampler(data, max_tokens=100, max_sentences=0)
    with pytest.raises(ValueError, match="split"):
        TrainSampler(data, max_tokens=100, split="dev")
    with pytest.raises(ValueError, match="seed"):
        TrainSampler(data, max_tokens=100, seed=-1)


def test_max_sentences(data):
    s = TrainSampler(data, max_tokens=10_000, seed=0, max_sentences=8)
    assert max(len(b) for b in take(s, 50)) == 8


def test_eval_batches(data):
    tok = data.tokenizer
    for d in data.eval_directions("test"):
        n = data.num_examples("test", d)
        srcs, refs = data.texts("test", d)
        batches = list(eval_batches(data, "test", d, max_tokens=120))
        ids = torch.cat([b.ids for b in batches]).tolist()
        assert sorted(ids) == list(range(n))
        want_task = data.task_id(d) if d in data.directions else -1
        for b in batches:
            assert (b.task == want_task).all()
            assert b.num_cells <= 120 or len(b) == 1
            for r in range(len(b)):
                i = int(b.ids[r])
                assert tok.decode(b.src[r]) == srcs[i] and tok.decode(b.tgt_out[r]) == refs[i]
                assert int(b.tgt_in[r, 0]) == tok.lang_tag(d[1])  # default: the tag is the decoder's start
    assert ("de", "fr") in data.eval_directions("test")
    # an example over the budget still comes, alone
    big = list(eval_batches(data, "valid", "en-de", max_tokens=8))
    assert sorted(torch.cat([b.ids for b in big]).tolist()) == list(range(data.num_examples("valid", "en-de")))
    assert any(len(b) == 1 and b.num_cells > 8 for b in big)
    first = list(eval_batches(data, "valid", "de-en", max_tokens=500, max_examples=5, task=3, source_tag=True,
                              target_tag="encoder"))
    assert sorted(torch.cat([b.ids for b in first]).tolist()) == [0, 1, 2, 3, 4]
    assert all((b.task == 3).all() and (b.src[:, :2] == torch.tensor([tok.lang_tag("de"), tok.lang_tag("en")])).all()
               and (b.tgt_in[:, 0] == tok.bos).all() for b in first)


def test_target_tag_errors_and_saved_configs(data):
    with pytest.raises(ValueError, match="target_tag"):
        TrainSampler(data, max_tokens=100, target_tag="both")
    with pytest.raises(ValueError, match="target_tag"):
        next(eval_batches(data, "valid", "de-en", max_tokens=100, target_tag="src"))
    assert tag_options({}) == {"source_tag": False, "target_tag": "encoder"}  # checkpoints from before the option
    assert tag_options({"source_tag": True, "target_tag": "decoder"}) == {"source_tag": True, "target_tag": "decoder"}
    # a sampler state saved before target_tag existed resumes an encoder-tag sampler, not a decoder one
    enc = TrainSampler(data, max_tokens=100, target_tag="encoder")
    old = enc.state_dict()
    del old["config"]["target_tag"]
    TrainSampler(data, max_tokens=100, target_tag="encoder").load_state_dict(old)
    with pytest.raises(ValueError, match="target_tag"):
        TrainSampler(data, max_tokens=100).load_state_dict(old)


def test_batch_to(data):
    b = next(TrainSampler(data, max_tokens=100))
    c = b.to("cpu")
    assert same(b, c) and c.ntokens == b.ntokens and c.pad == b.pad


@pytest.mark.parametrize("mixed", [False, True])
def test_upsample_repeats_a_kind(tmp_path, data, mixed):
    """upsample={"sentence": 3}: an epoch holds every sentence 3 times and every phrase once."""
    from _nmt_cases import prepare

    kdata = prepare(tmp_path, n_train=60, n_eval=6)
    s = TrainSampler(kdata, max_tokens=200, seed=1, mixed=mixed, upsample={"sentence": 3}, pool_batches=4)
    kinds = {t: kdata.kinds("train", d) for t, d in enumerate(kdata.directions)}
    epoch = {t: sum(3 if k == "sentence" else 1 for k in ks) for t, ks in kinds.items()}
    seen = {t: [] for t in kinds}
    while any(len(seen[t]) < 2 * epoch[t] for t in kinds):
        b = next(s)
        for t, i in zip(b.task.tolist(), b.ids.tolist()):
            seen[t].append(i)
    for t, ks in kinds.items():
        if mixed:  # stream chunks cross epochs: compare how often each kind came
            c = Counter(seen[t][:2 * epoch[t]])
            per = {k: np.mean([c[i] for i, kk in enumerate(ks) if kk == k]) for k in ("phrase", "sentence")}
            assert 2.5 < per["sentence"] / per["phrase"] < 3.5, per
        else:  # the first epoch of a direction, exactly
            c = Counter(seen[t][:epoch[t]])
            assert c == Counter({i: 3 if k == "sentence" else 1 for i, k in enumerate(ks)})
    state = s.state_dict()
    with pytest.raises(ValueError, match="upsample"):
        TrainSampler(kdata, max_tokens=200, seed=1, mixed=mixed, pool_batches=4).load_state_dict(state)
    for bad, match in (({"poem": 2}, "poem"), ({"sentence": 0}, "int >= 1"), ({"sentence": 1.5}, "int >= 1")):
        with pytest.raises(ValueError, match=match):
            TrainSampler(kdata, max_tokens=200, upsample=bad)
    with pytest.raises(ValueError, match="kinds manifest"):
        TrainSampler(data, max_tokens=200, upsample={"sentence": 2})
