"""The Transformer: shapes, FFN naming, masks reaching every FFN, incremental decoding."""
import pytest
import torch

from neuronspec.nmt.model import PRESETS, ModelConfig, Transformer, sinusoidal_table, task_arg
from neuronspec.ops import TaskMasks

V = 40


def tiny(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, d_model=32, d_ff=48, heads=4, encoder_layers=2, decoder_layers=3,
                      dropout=0.0, **kw)
    return Transformer(cfg).eval()


def batch(B=3, S=7, L=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (B, S), generator=g)
    src[1, S - 3:] = 0  # padding
    tgt = torch.randint(4, V, (B, L), generator=g)
    tgt[:, 0] = 1
    tgt[2, L - 2:] = 0
    return src, tgt


def random_masks(model, num_tasks=2, p=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = model.cfg.d_ff
    return {name: TaskMasks.from_dense(torch.rand(num_tasks, f, generator=g) < p) for name in model.ffn_layers()}


def test_shapes_and_ffn_names():
    m = tiny()
    src, tgt = batch()
    assert m(src, tgt, torch.tensor([0, 1, 0])).shape == (3, 6, V)
    assert list(m.ffn_layers()) == ["encoder.layers.0.ffn", "encoder.layers.1.ffn", "decoder.layers.0.ffn",
                                    "decoder.layers.1.ffn", "decoder.layers.2.ffn"]
    # names match the module tree (state-dict keys), so they are stable across save/load
    for name, ffn in m.ffn_layers().items():
        assert m.get_submodule(name) is ffn
        assert f"{name}.fc1.weight" in m.state_dict()
    # output projection is tied to the shared embedding
    assert sum(p.data_ptr() == m.embed.weight.data_ptr() for p in m.parameters()) == 1


def test_preset_sizes():
    cfg = ModelConfig.from_preset("tiny", vocab_size=8000)
    n = Transformer(cfg).num_parameters()
    assert 6e6 < n < 9e6  # the ~7M model of docs/design.md §8
    assert set(PRESETS) == {"tiny", "base", "big", "wide", "deep"}
    assert ModelConfig.from_preset("big", 100).d_ff == 4096


@pytest.mark.parametrize("kw, match", [
    (dict(d_model=30), "divisible"), (dict(activation="tanh"), "activation"),
    (dict(positions="rotary"), "positions"), (dict(dropout=1.5), "dropout"), (dict(pad=V), "pad"),
])
def test_bad_config(kw, match):
    base = dict(vocab_size=V, d_model=32, d_ff=48, heads=4)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**base, **kw})
    with pytest.raises(ValueError, match="preset"):
        ModelConfig.from_preset("huge", V)


def test_bad_inputs():
    m = tiny()
    src, tgt = batch()
    with pytest.raises(TypeError, match="src"):
        m(src.float(), tgt, 0)
    with pytest.raises(ValueError, match="task"):
        m(src, tgt, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="max_positions"):
        m.encode(torch.ones(1, m.cfg.max_positions + 1, dtype=torch.long), 0)


def test_padding_does_not_change_outputs():
    m = tiny()
    src, tgt = batch()
    full = m(src, tgt, 0)
    one = m(src[1:2, :4], tgt[1:2], 0)  # sentence 1 without its padding
    torch.testing.assert_close(full[1:2], one, atol=1e-5, rtol=1e-5)


def test_masks_reach_every_ffn():
    m = tiny()
    src, tgt = batch()
    task = torch.tensor([0, 1, 1])
    dense = m(src, tgt, task)
    masks = random_masks(m)
    m.set_masks(masks)
    for name, ffn in m.ffn_layers().items():
        assert ffn.masks == masks[name]
    assert set(m.masks()) == set(masks)
    masked = m(src, tgt, task)
    assert not torch.allclose(dense, masked, atol=1e-4)
    m.set_masks(None)
    assert all(f.masks is None for f in m.ffn_layers().values()) and m.masks() == {}
    torch.testing.assert_close(m(src, tgt, task), dense)
    # each single layer's mask changes the output: task ids reach encoder and decoder FFNs
    for name in m.ffn_layers():
        m.set_masks({name: masks[name]})
        assert not torch.allclose(dense, m(src, tgt, task), atol=1e-5), name
        m.set_masks(None)


def test_masks_follow_the_task_of_each_sentence():
    m = tiny()
    src, tgt = batch()
    m.set_masks(random_masks(m))
    mixed = m(src, tgt, torch.tensor([0, 1, 0]))
    only0 = m(src, tgt, 0)
    only1 = m(src, tgt, torch.tensor([1, 1, 1]))  # homogeneous tensor collapses to an int
    torch.testing.assert_close(mixed[[0, 2]], only0[[0, 2]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], only1[1], atol=1e-5, rtol=1e-5)
    # full masks are the dense model
    full = {n: TaskMasks.full(2, m.cfg.d_ff) for n in m.ffn_layers()}
    m.set_masks(full)
    a = m(src, tgt, torch.tensor([0, 1, 0]))
    m.set_masks(None)
    torch.testing.assert_close(a, m(src, tgt, torch.tensor([0, 1, 0])), atol=1e-5, rtol=1e-5)


def test_set_masks_bad_names():
    m = tiny()
    with pytest.raises(ValueError, match="unknown FFN layer"):
        m.set_masks({"encoder.layers.9.ffn": TaskMasks.full(2, m.cfg.d_ff)})
    with pytest.raises(TypeError, match="mapping"):
        m.set_masks([TaskMasks.full(2, m.cfg.d_ff)])


@pytest.mark.parametrize("kw", [dict(), dict(positions="learned", activation="gelu")])
@pytest.mark.parametrize("masked", [False, True])
def test_incremental_decoding_equals_full_recompute(kw, masked):
    m = tiny(**kw)
    if masked:
        m.set_masks(random_masks(m))
    src, tgt = batch()
    task = torch.tensor([1, 0, 1])
    full = m(src, tgt, task)
    enc = m.encode(src, task_arg(task))
    cache = m.new_cache()
    steps = [m.decode(tgt[:, i:i + 1], enc, task, cache) for i in range(tgt.shape[1])]
    inc = torch.cat(steps, 1)
    keep = tgt != 0  # compare at real target positions
    torch.testing.assert_close(inc[keep], full[keep], atol=1e-5, rtol=1e-5)
    # reordering the cache = decoding the reordered batch
    order = torch.tensor([2, 0, 0])
    cache = m.new_cache()
    for i in range(3):
        m.decode(tgt[:, i:i + 1], enc, task, cache)
    Transformer.reorder_cache(cache, order)
    nxt = m.decode(tgt[order, 3:4], enc.index_select(order), task[order], cache)
    torch.testing.assert_close(nxt[:, 0], full[order, 3], atol=1e-5, rtol=1e-5)


def test_sinusoidal_table_matches_fairseq_formula():
    t = sinusoidal_table(10, 8)
    assert t.shape == (10, 8)
    torch.testing.assert_close(t[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # second dim pair: frequency 10000^(-1/(half-1)) at position 3
    f = 10000 ** (-1 / 3)
    torch.testing.assert_close(t[3, 1], torch.tensor(float(torch.sin(torch.tensor(3 * f)))))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=V, d_model=32, d_ff=48, heads=4, encoder_layers=1, decoder_layers=1,
                                dropout=0.3, attention_dropout=0.1))
    src, tgt = batch()
    m.train()
    assert not torch.equal(m(src, tgt, 0), m(src, tgt, 0))
    m.eval()
    assert torch.equal(m(src, tgt, 0), m(src, tgt, 0))


@pytest.mark.parametrize("causal, masked", [(True, False), (False, True), (False, False)])
def test_cpu_bf16_attention_runs_in_float32(causal, masked):
    """Under bf16 autocast on CPU, attention is computed in float32 (faster there) and cast
    back to bf16: values and gradients match float64 attention of the same inputs up to bf16
    rounding, for causal, padding-masked and unmasked attention."""
    import torch.nn.functional as F

    from neuronspec.nmt.model import _attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 5, 8, generator=g).bfloat16().requires_grad_() for _ in range(3))
    mask = (torch.rand(3, 1, 1, 5, generator=g) > 0.3) if masked else None
    if masked:
        mask[..., 0] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _attention(q, k, v, mask, causal, 0.0)
    assert y.dtype == torch.bfloat16
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, is_causal=causal)
    torch.testing.assert_close(y.double(), ref, atol=1e-2, rtol=1e-2)
    gy = torch.randn(y.shape, generator=g)
    got = torch.autograd.grad(y, (q, k, v), gy.bfloat16())
    want = torch.autograd.grad(ref, (qd, kd, vd), gy.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=3e-2, rtol=3e-2)
