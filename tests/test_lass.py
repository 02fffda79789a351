"""LaSS element masks (nmt/lass.py): the rule of the original generate_mask.py written out
independently, bit packing, the masked forward and its gradient, mixed batches grouped by task."""
import numpy as np
import pytest
import torch

from neuronspec.nmt import lass
from neuronspec.nmt.model import ModelConfig, Transformer

CFG = dict(vocab_size=40, d_model=16, d_ff=32, heads=2, encoder_layers=2, decoder_layers=1, dropout=0.0)


def _original_rule(state: dict, p: float) -> dict:
    """LaSS toolbox/generate_mask.py, gen_mask_with_prob(gen_part="all") with
    gen_each_mask_with_prob, transcribed with numpy: every "weight" key without "embed", not a
    LayerNorm (our LayerNorm keys end in "norm.weight"); kth = int(p * numel) (1-based smallest);
    keep |w| > that value."""
    out = {}
    for k, v in state.items():
        if "weight" in k and "embed" not in k.lower() and not k.endswith("norm.weight"):
            a = np.abs(v.numpy().astype(np.float32)).reshape(-1)
            kth_value = np.sort(a)[int(p * a.size) - 1]
            out[k] = np.abs(v.numpy()) > kth_value
    return out


def test_masks_equal_the_original_rule_on_a_checkpoint():
    torch.manual_seed(0)
    state = Transformer(ModelConfig(**CFG)).state_dict()
    for p in (0.3, 0.5, 0.9):
        expected = _original_rule(state, p)
        names = lass.target_names(Transformer(ModelConfig(**CFG)))
        assert sorted(names) == sorted(expected)  # the same matrices: attention projections, fc1, fc2
        for k in names:
            got = lass.lass_mask(state[k], p)
            assert np.array_equal(got.numpy(), expected[k]), k
            assert abs(got.float().mean().item() - (1 - p)) < 0.02


def test_bad_alpha():
    w = torch.randn(4, 4)
    for a in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            lass.lass_mask(w, a)
    with pytest.raises(ValueError, match="prunes no element"):
        lass.lass_mask(torch.randn(2, 2), 0.1)


def test_pack_roundtrip():
    m = torch.rand(3, 5, 7) > 0.5
    bits = lass.pack_bits(m)
    assert bits.dtype == torch.uint8 and bits.shape == (3, 5)  # ceil(35 / 8)
    assert torch.equal(lass.unpack_bits(bits, 35).view(3, 5, 7), m)


def _lass_model(tasks=2, seed=0):
    torch.manual_seed(seed)
    dense = Transformer(ModelConfig(**CFG))
    model = Transformer(ModelConfig(**CFG, lass_tasks=tasks))
    lass.load_dense(model, dense.state_dict())
    return dense, model


def test_fresh_masks_compute_the_dense_model_and_old_keys_stay():
    dense, model = _lass_model()
    assert not any("bits" in k or "parametrizations" in k for k in dense.state_dict())
    src, tgt = torch.randint(1, 40, (3, 5)), torch.randint(1, 40, (3, 4))
    assert torch.allclose(model(src, tgt, 1), dense(src, tgt, 1), atol=1e-6)


def test_masked_forward_and_gradient():
    dense, model = _lass_model()
    names = lass.target_names(model)
    masks = {n: torch.rand(2, *dict(dense.named_parameters())[n].shape) > 0.4 for n in names}
    lass.set_masks(model, masks)
    assert all(torch.equal(masks[n], m) for n, m in lass.get_masks(model).items())
    assert lass.mask_bytes(model) == sum(2 * ((m[0].numel() + 7) // 8) for m in masks.values())
    # direction 1's forward equals the dense model with w * m_1 written in
    ref = Transformer(ModelConfig(**CFG))
    ref.load_state_dict({k: v * masks[k][1] if k in masks else v for k, v in dense.state_dict().items()})
    src, tgt = torch.randint(1, 40, (2, 5)), torch.randint(1, 40, (2, 4))
    out = model(src, tgt, 1)
    assert torch.allclose(out, ref(src, tgt, 1), atol=1e-5)
    out.sum().backward()
    for n in names:
        g = model.get_submodule(n[:-7]).parametrizations.weight.original.grad
        assert g.abs().sum() > 0 and torch.all(g[~masks[n][1]] == 0), n  # masked elements get no gradient
    # a batch mixing the two directions: each row as its own direction's forward
    mixed = model(src, tgt, torch.tensor([1, 0]))
    assert torch.allclose(mixed[0], model(src[:1], tgt[:1], 1)[0], atol=1e-5)
    assert torch.allclose(mixed[1], model(src[1:], tgt[1:], 0)[0], atol=1e-5)
    with pytest.raises(ValueError, match="groups it by direction"):
        model.encode(src, torch.tensor([1, 0]))
    with pytest.raises(RuntimeError, match="outside a forward"):
        model.encoder.layers[0].ffn.fc1.weight


def test_checkpoint_roundtrip_and_bad_masks():
    _, model = _lass_model(seed=1)
    names = lass.target_names(model)
    masks = {n: torch.rand(2, *lass.get_masks(model)[n].shape[1:]) > 0.5 for n in names}
    lass.set_masks(model, masks)
    again = Transformer(ModelConfig(**CFG, lass_tasks=2))
    again.load_state_dict(model.state_dict())
    assert all(torch.equal(masks[n], m) for n, m in lass.get_masks(again).items())
    with pytest.raises(ValueError, match="missing"):
        lass.set_masks(model, {names[0]: masks[names[0]]})
    with pytest.raises(ValueError, match="shape"):
        lass.set_masks(model, {**masks, names[0]: masks[names[0]][:1]})
