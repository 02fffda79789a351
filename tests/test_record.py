"""Recorded counts equal a naive dense count (padding excluded), every FFN, per direction."""
from types import SimpleNamespace

import pytest
import torch

from neuronspec.nmt.model import ModelConfig, Transformer
from neuronspec.specialization.record import count_activations

PAD = 0


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=40, pad=PAD, d_model=16, d_ff=24, heads=2, encoder_layers=2, decoder_layers=2,
                      dropout=0.3)  # dropout must be off in recording (eval mode)
    m = Transformer(cfg)
    with torch.no_grad():  # non-zero biases so counts are not ~half by symmetry
        for ffn in m.ffn_layers().values():
            ffn.fc1.bias.uniform_(-0.5, 0.5)
    return m


def padded_batch(g, B, S, L, tasks):
    src = torch.randint(4, 40, (B, S), generator=g)
    tgt = torch.randint(4, 40, (B, L), generator=g)
    for b in range(B):  # right padding of random length (at least one real token)
        src[b, int(torch.randint(1, S + 1, (1,), generator=g)):] = PAD
        tgt[b, int(torch.randint(1, L + 1, (1,), generator=g)):] = PAD
    return SimpleNamespace(src=src, tgt_in=tgt, task=torch.tensor(tasks))


def naive_counts(model, batches, T):
    """Dense forward with hooks on fc1: count Z > 0 at non-padding positions per direction."""
    counts = {name: torch.zeros(T, ffn.fc1.out_features, dtype=torch.long) for name, ffn in model.ffn_layers().items()}
    state = {}

    def hook(name):
        def fn(mod, inp, out):
            valid, task = state["enc"] if name.startswith("encoder") else state["dec"]
            pos = (out > 0) & valid[..., None]  # [B, T, f]
            for b in range(pos.shape[0]):
                counts[name][task[b]] += pos[b].sum(0)
        return fn

    hs = [ffn.fc1.register_forward_hook(hook(n)) for n, ffn in model.ffn_layers().items()]
    model.eval()
    with torch.no_grad():
        for batch in batches:
            state["enc"] = (batch.src != PAD, batch.task)
            state["dec"] = (batch.tgt_in != PAD, batch.task)
            model(batch.src, batch.tgt_in, batch.task)
    for h in hs:
        h.remove()
    return counts


def test_counts_match_naive_dense_count():
    g = torch.Generator().manual_seed(0)
    T = 3
    batches = [padded_batch(g, 4, 7, 6, [0, 0, 0, 0]),  # homogeneous
               padded_batch(g, 5, 9, 5, [2, 1, 2, 0, 1]),  # mixed directions
               padded_batch(g, 3, 4, 8, [1, 1, 1])]
    model = tiny_model()
    model.train()
    rec = count_activations(model, batches, T)
    assert model.training  # mode restored
    ref = naive_counts(model, batches, T)
    assert list(rec["counts"]) == list(model.ffn_layers())
    assert len(rec["counts"]) == 4
    for name in ref:
        assert rec["counts"][name].dtype == torch.int64
        assert torch.equal(rec["counts"][name], ref[name]), name
    enc = sum(torch.nn.functional.one_hot(b.task, T).T @ (b.src != PAD).sum(1) for b in batches)
    assert torch.equal(rec["tokens"]["encoder"], enc)
    assert torch.equal(rec["sentences"], torch.tensor([5, 5, 2]))
    # padding was excluded: every count is bounded by the tokens of its direction
    for name, c in rec["counts"].items():
        tok = rec["tokens"]["encoder" if name.startswith("encoder") else "decoder"]
        assert (c <= tok[:, None]).all() and c.sum() > 0
    # counting is switched off afterwards
    assert all(f.counts is None for f in model.ffn_layers().values())


def test_counts_ignore_padding_content():
    """The same sentences padded to a wider batch give the same counts."""
    g = torch.Generator().manual_seed(1)
    b = padded_batch(g, 3, 5, 5, [0, 1, 0])
    wide = SimpleNamespace(src=torch.nn.functional.pad(b.src, (0, 4), value=PAD),
                           tgt_in=torch.nn.functional.pad(b.tgt_in, (0, 3), value=PAD), task=b.task)
    model = tiny_model(3)
    a = count_activations(model, [b], 2)["counts"]
    c = count_activations(model, [wide], 2)["counts"]
    for name in a:
        assert torch.equal(a[name], c[name])


def test_bad_inputs():
    model = tiny_model()
    g = torch.Generator().manual_seed(2)
    with pytest.raises(ValueError, match="num_tasks"):
        count_activations(model, [], 0)
    with pytest.raises(ValueError, match="batch.task"):
        count_activations(model, [padded_batch(g, 2, 3, 3, [0, 5])], 2)
    assert all(f.counts is None for f in model.ffn_layers().values())
