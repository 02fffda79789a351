"""Decoding a specialized model: each masked FFN runs as its direction's dense block over the kept
neurons (Transformer.direction_ffns / DirectionFFN), equal to the masked op, without the op's
per-call checks and dispatch (the cost that made masked decoding slower than dense, issue #32)."""
import contextlib

import pytest
import torch

from neuronspec.nmt import decode
from neuronspec.nmt.model import DirectionFFN, ModelConfig, Transformer
from neuronspec.ops import TaskMasks, registry

CASES = [("relu", False), ("gelu", False), ("relu", True)]


def _model(activation="relu", mask_bias=False, kept=0.6, tasks=3, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=40, d_model=16, d_ff=32, heads=2, encoder_layers=2, decoder_layers=2, dropout=0.0,
                      activation=activation, mask_bias=mask_bias)
    model = Transformer(cfg).eval()
    for p in model.parameters():  # nonzero biases: inactive neurons' act(b1) term matters
        torch.nn.init.normal_(p, std=0.3)
    g = torch.Generator().manual_seed(seed + 1)
    k = int(kept * cfg.d_ff)
    model.set_masks({name: TaskMasks.from_indices([torch.randperm(cfg.d_ff, generator=g)[:k].tolist()
                                                   for _ in range(tasks)], cfg.d_ff)
                     for name in model.ffn_layers()})
    return model


@pytest.mark.parametrize("activation,mask_bias", CASES)
def test_direction_ffn_equals_the_masked_op(activation, mask_bias):
    model = _model(activation, mask_bias)
    ffn = model.ffn_layers()["decoder.layers.1.ffn"]
    x = torch.randn(7, 16)
    with torch.no_grad():
        for task in range(3):
            torch.testing.assert_close(DirectionFFN(ffn, task)(x), ffn(x, task_ids=task), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation,mask_bias", CASES)
def test_decoding_with_direction_ffns_equals_the_op_path(activation, mask_bias):
    model = _model(activation, mask_bias)
    src = torch.randint(3, 40, (4, 6), generator=torch.Generator().manual_seed(3))
    tgt = torch.randint(3, 40, (4, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model.decode(tgt, model.encode(src, 1), 2)
        with model.direction_ffns(1, 2):
            fast = model.decode(tgt, model.encode(src, 1), 2)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert all(not layer.direction_ffns for side in (model.encoder, model.decoder) for layer in side.layers)


def test_search_does_not_call_the_masked_op_per_step(monkeypatch):
    """Fails on the old decoding (every FFN call of every step went through the op's checks and
    dispatch); the hypotheses stay those of the op path."""
    model = _model()
    src = torch.randint(3, 40, (3, 6), generator=torch.Generator().manual_seed(5))
    expected = {}
    for name, search in (("greedy", decode.greedy_search), ("beam", decode.beam_search)):
        with torch.no_grad():  # the op path: the same model with direction_ffns turned off
            monkeypatch.setattr(Transformer, "direction_ffns", lambda self, a, b: contextlib.nullcontext())
            expected[name] = search(model, src, 1, max_len_b=4)
            monkeypatch.undo()
    calls = []
    real = registry.masked_ffn_dispatch
    monkeypatch.setattr(registry, "masked_ffn_dispatch", lambda *a: calls.append(1) or real(*a))
    assert decode.greedy_search(model, src, 1, max_len_b=4) == expected["greedy"]
    assert decode.beam_search(model, src, 1, max_len_b=4) == expected["beam"]
    assert calls == []
    # a batch mixing directions still runs through the op (one id per token)
    mixed = torch.tensor([0, 1, 2])
    decode.greedy_search(model, src, mixed, max_len_b=4)
    assert calls


def test_direction_ffns_are_inference_only_and_checked():
    model = _model()
    x = torch.randn(2, 3, 16)
    layer = model.encoder.layers[0]
    with model.direction_ffns(0, 0):
        assert set(layer.direction_ffns) == {0}
        with torch.enable_grad():  # autograd: the op path, gradients reach fc1
            model.ffn_layers()["encoder.layers.0.ffn"].fc1.weight.grad = None
            out = layer(x, None, 0, None)
            out.sum().backward()
            assert layer.ffn.fc1.weight.grad is not None
    with pytest.raises(ValueError, match="task: 3 is not a direction of the masks"):
        with model.direction_ffns(3, 0):
            pass
    assert not layer.direction_ffns  # left clean after the error

