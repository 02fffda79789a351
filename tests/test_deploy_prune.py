"""Pruned export (issue #30 item 1): a direction's pruned dense model equals the masked model,
for single FFNs, the native Transformer and Hugging Face M2M100 / Llama via neuronspec.hf."""
import pytest
import torch

from neuronspec.deploy.native import kept_neurons, prune_model
from neuronspec.deploy.prune import prune_ffn, prune_glu
from neuronspec.nmt.model import ModelConfig, Transformer
from neuronspec.ops import TaskMasks, masked_ffn, masked_glu_ffn


def _randn(*shape, scale=0.5):
    return torch.randn(*shape, dtype=torch.float64) * scale


def _masks(f, seed=0, names=("a", "b", "c"), keep=0.7):
    g = torch.Generator().manual_seed(seed)
    return TaskMasks.from_dense(torch.rand(len(names), f, generator=g) < keep, list(names))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("mask_bias", [False, True])
@pytest.mark.parametrize("width", [None, 40])
def test_prune_ffn_equals_masked_ffn(activation, mask_bias, width):
    torch.manual_seed(0)
    x, w1, b1, w2, b2 = _randn(9, 16), _randn(32, 16), _randn(32), _randn(12, 32), _randn(12)
    masks = _masks(32)
    ref = masked_ffn(x, w1, b1, w2, b2, masks, 1, activation, mask_bias, "reference")
    p1, q1, p2, q2 = prune_ffn(w1, b1, w2, b2, masks.active(1), activation, mask_bias=mask_bias, width=width)
    assert p1.shape[0] == (width or len(masks.active(1)))
    act = torch.relu if activation == "relu" else torch.nn.functional.gelu
    out = act(x @ p1.T + q1) @ p2.T + q2
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
@pytest.mark.parametrize("biases", [False, True])
def test_prune_glu_equals_masked_glu(activation, biases):
    torch.manual_seed(1)
    x, wg, wu, wd = _randn(7, 16), _randn(24, 16), _randn(24, 16), _randn(16, 24)
    bg, bu, bd = (_randn(24), _randn(24), _randn(16)) if biases else (None, None, None)
    masks = _masks(24, seed=3)
    ref = masked_glu_ffn(x, wg, bg, wu, bu, wd, bd, masks, 2, activation, False, "reference")
    g, gb, u, ub, d, db = prune_glu(wg, bg, wu, bu, wd, bd, masks.active(2), activation, width=20)
    act = {"silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu, "relu": torch.relu}[activation]
    lin = torch.nn.functional.linear
    out = lin(act(lin(x, g, gb)) * lin(x, u, ub), d, db)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_fold_is_needed():
    """Without the folded constant the pruned FFN would differ (the biases matter here)."""
    torch.manual_seed(2)
    w1, b1, w2, b2 = _randn(16, 8), _randn(16) + 1.0, _randn(8, 16), _randn(8)
    masks = _masks(16)
    _, _, _, q2 = prune_ffn(w1, b1, w2, b2, masks.active(0), "relu")
    assert (q2 - b2).abs().max() > 1e-3


@pytest.mark.parametrize("keep, width, match", [
    (torch.tensor([0, 16]), None, "keep: neuron ids must lie in"),
    (torch.tensor([1, 1]), None, "keep: neuron ids must be unique"),
    (torch.tensor([0.5]), None, "keep: expected an integer tensor"),
    (torch.tensor([0, 1, 2]), 2, "width: 2 is narrower"),
])
def test_prune_bad_input(keep, width, match):
    w1, w2 = torch.zeros(16, 4), torch.zeros(4, 16)
    with pytest.raises((ValueError, TypeError), match=match):
        prune_ffn(w1, None, w2, None, keep, "relu", width=width)
    with pytest.raises(ValueError, match="activation"):
        prune_ffn(w1, None, w2, None, torch.tensor([0]), "tanh")


def _native(activation, mask_bias, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=40, d_model=32, d_ff=64, heads=4, encoder_layers=2, decoder_layers=2, dropout=0.0,
                      activation=activation, mask_bias=mask_bias)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.3)  # biases (fairseq init zeroes them): the folded constants are not 0
    model.set_masks({n: _masks(64, seed=i) for i, n in enumerate(model.ffn_layers())})
    return model


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("mask_bias", [False, True])
@pytest.mark.parametrize("per_layer", [False, True])
def test_native_pruned_equals_masked(activation, mask_bias, per_layer):
    """Encoder with task 1's neurons, decoder with task 2's (a zero-shot pair): logits ≤ 1e-5."""
    model = _native(activation, mask_bias)
    src, tgt = torch.randint(4, 40, (3, 7)), torch.randint(4, 40, (3, 5))
    src[0, 5:] = 0
    kept = kept_neurons(model, 1, 2)
    for name, k in kept.items():
        masks = model.ffn_layers()[name].masks
        assert torch.equal(k, masks.active(2 if name.startswith("decoder") else 1).long())
    pruned = prune_model(model, kept, per_layer=per_layer)
    assert not pruned.masks()
    widths = [ffn.fc1.out_features for ffn in pruned.ffn_layers().values()]
    assert widths == ([len(k) for k in kept.values()] if per_layer else [max(len(k) for k in kept.values())] * 4)
    with torch.no_grad():
        ref = model.decode(tgt, model.encode(src, 1), 2)
        out = pruned(src, tgt, 0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("per_layer", [False, True])
def test_native_pruned_width_multiple(per_layer):
    """Widths rounded up to a multiple with zero neurons (never past d_ff): still equal to the masked model."""
    model = _native("gelu", False)
    kept = kept_neurons(model, 0)
    src, tgt = torch.randint(4, 40, (2, 6)), torch.randint(4, 40, (2, 5))
    with torch.no_grad():
        ref = model.decode(tgt, model.encode(src, 0), 0)
        for multiple in (16, 48):
            pruned = prune_model(model, kept, per_layer=per_layer, multiple=multiple)
            widths = [ffn.fc1.out_features for ffn in pruned.ffn_layers().values()]
            counts = [len(k) for k in kept.values()] if per_layer else [max(len(k) for k in kept.values())] * 4
            assert widths == [min(-(-n // multiple) * multiple, 64) for n in counts]
            torch.testing.assert_close(pruned(src, tgt, 0), ref, rtol=0, atol=1e-5)


def test_round_width():
    from neuronspec.deploy.prune import padded_width, round_width

    assert [round_width(w, 16) for w in (1, 16, 17, 775)] == [16, 16, 32, 784]
    assert round_width(1020, 64, limit=1024) == 1024 and round_width(1000, 64, limit=1000) == 1000
    assert round_width(30, 1) == 30 and padded_width([3, 40, 7], 32) == 64 and padded_width([], 8) == 8
    with pytest.raises(ValueError, match="multiple"):
        round_width(10, 0)


def test_native_layer_without_masks_keeps_every_neuron():
    model = _native("relu", False)
    model.set_masks({"decoder.layers.1.ffn": None})
    kept = kept_neurons(model, 0)
    assert torch.equal(kept["decoder.layers.1.ffn"], torch.arange(64))
    src, tgt = torch.randint(4, 40, (2, 6)), torch.randint(4, 40, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(prune_model(model, kept)(src, tgt, 0), model(src, tgt, 0), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- Hugging Face models
transformers = pytest.importorskip("transformers")


def _random_biases(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.3)
    return model


def _wrapped(model, directions=("a", "b")):
    from neuronspec.hf import wrap

    spec = wrap(model, list(directions))
    spec.set_masks({n: _masks(f.num_neurons, seed=i, names=directions) for i, (n, f) in enumerate(spec.layers.items())})
    return spec


@pytest.mark.parametrize("activation", ["relu", "gelu", "swish"])
def test_hf_m2m100_pruned_equals_masked(activation):
    from neuronspec.deploy.hf_prune import prune_hf

    torch.manual_seed(0)
    cfg = transformers.M2M100Config(
        vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=40, max_position_embeddings=64, dropout=0.0,
        activation_function=activation, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    model = _random_biases(transformers.M2M100ForConditionalGeneration(cfg).eval())
    spec = _wrapped(model)
    ids, dec = torch.randint(3, 64, (2, 6)), torch.randint(3, 64, (2, 5))
    with torch.no_grad(), spec.direction("b"):
        ref = model(input_ids=ids, decoder_input_ids=dec).logits
    pruned, rec = prune_hf(spec, "b")
    assert type(pruned) is type(model) and getattr(pruned, "_neuronspec", None) is None
    kept = {n: len(f.masks.active(1)) for n, f in spec.layers.items()}
    assert rec["widths"] == {"encoder_ffn_dim": max(v for n, v in kept.items() if n.startswith("encoder")),
                             "decoder_ffn_dim": max(v for n, v in kept.items() if n.startswith("decoder"))}
    assert rec["parameters"]["padded"] == sum(p.numel() for p in pruned.parameters())
    assert rec["parameters"]["per_layer"] < rec["parameters"]["padded"] < rec["parameters"]["source"]
    with torch.no_grad():
        out = pruned(input_ids=ids, decoder_input_ids=dec).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
@pytest.mark.parametrize("bias", [False, True])
def test_hf_llama_pruned_equals_masked(activation, bias):
    from neuronspec.deploy.hf_prune import prune_hf

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, mlp_bias=bias, hidden_act=activation,
                                   max_position_embeddings=64)
    model = _random_biases(transformers.LlamaForCausalLM(cfg).eval())
    spec = _wrapped(model)
    ids = torch.randint(3, 64, (2, 6))
    with torch.no_grad(), spec.direction("a"):
        ref = model(input_ids=ids).logits
    pruned, rec = prune_hf(spec, "a")
    assert pruned.config.intermediate_size == max(len(f.masks.active(0)) for f in spec.layers.values())
    assert rec["parameters"]["padded"] == sum(p.numel() for p in pruned.parameters())
    with torch.no_grad():
        out = pruned(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_hf_phi3_fused_gate_up_pruned_equals_masked(activation):
    """Phi-3's one gate_up_proj [2f, d] (gate rows, then up rows): both halves keep the same rows."""
    from neuronspec.deploy.hf_prune import prune_hf

    torch.manual_seed(0)
    cfg = transformers.Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, hidden_act=activation,
                                  max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = transformers.Phi3ForCausalLM(cfg).eval()
    spec = _wrapped(model)
    ids = torch.randint(3, 64, (2, 6))
    with torch.no_grad(), spec.direction("b"):
        ref = model(input_ids=ids).logits
    pruned, rec = prune_hf(spec, "b")
    width = max(len(f.masks.active(1)) for f in spec.layers.values())
    assert pruned.config.intermediate_size == width == rec["widths"]["intermediate_size"] < 48
    keep = next(iter(spec.layers.values())).masks.active(1).long()
    gate_up = pruned.model.layers[0].mlp.gate_up_proj.weight
    assert gate_up.shape == (2 * width, 32)
    source = model.model.layers[0].mlp.gate_up_proj.weight
    assert torch.equal(gate_up[width:width + len(keep)], source[48 + keep])  # the up half: its own rows
    assert rec["parameters"]["padded"] == sum(p.numel() for p in pruned.parameters())
    assert rec["parameters"]["per_layer"] < rec["parameters"]["padded"] < rec["parameters"]["source"]
    with torch.no_grad():
        out = pruned(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_prune_hf_needs_masks_and_a_known_direction():
    from neuronspec.deploy.hf_prune import prune_hf
    from neuronspec.hf import wrap

    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1)
    spec = wrap(transformers.LlamaForCausalLM(cfg), ["a"])
    with pytest.raises(ValueError, match="masks: none set"):
        prune_hf(spec, "a")
    spec.set_masks({n: _masks(24, names=("a",)) for n in spec.layers})
    with pytest.raises(ValueError, match="direction: 'x'"):
        prune_hf(spec, "x")
