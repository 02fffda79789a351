"""Specialized training touches only each direction's rows of W1."""
import pytest
import torch

from neuronspec.nmt.model import ModelConfig, Transformer
from neuronspec.ops import TaskMasks
from neuronspec.specialization.select import random_masks
from neuronspec.specialization.specialize import restrict


def masked_model(seed=0, T=3):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=30, pad=0, d_model=16, d_ff=32, heads=2, encoder_layers=2, decoder_layers=2,
                      dropout=0.0)
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(seed)
    masks = {name: TaskMasks.from_dense(torch.rand(T, 32, generator=g) < 0.5, [f"d{t}" for t in range(T)])
             for name in model.ffn_layers()}
    model.set_masks(masks)
    return model, masks


@pytest.mark.parametrize("task", [0, 2])
def test_sgd_step_leaves_other_rows_unchanged(task):
    model, masks = masked_model()
    before = {n: f.fc1.weight.detach().clone() for n, f in model.ffn_layers().items()}
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 30, (4, 6), generator=g)
    tgt = torch.randint(3, 30, (4, 5), generator=g)
    src[0, 4:] = 0  # padding
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    logits = model(src, tgt, torch.full((4,), task))
    torch.nn.functional.cross_entropy(logits.reshape(-1, 30), torch.randint(3, 30, (20,), generator=g)).backward()
    opt.step()
    for name, ffn in model.ffn_layers().items():
        keep = masks[name].to_dense()[task]
        w = ffn.fc1.weight.detach()
        assert torch.equal(w[~keep], before[name][~keep]), name
        assert not torch.equal(w[keep], before[name][keep]), name  # the direction's own rows did learn


def test_mixed_batch_updates_the_union_only():
    model, masks = masked_model(3)
    before = {n: f.fc1.weight.detach().clone() for n, f in model.ffn_layers().items()}
    g = torch.Generator().manual_seed(4)
    src, tgt = torch.randint(3, 30, (4, 6), generator=g), torch.randint(3, 30, (4, 5), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(src, tgt, torch.tensor([0, 1, 0, 1])).sum().backward()
    opt.step()
    for name, ffn in model.ffn_layers().items():
        dense = masks[name].to_dense()
        outside = ~(dense[0] | dense[1])
        assert torch.equal(ffn.fc1.weight.detach()[outside], before[name][outside])


def test_restrict():
    masks = {f"{s}.layers.{i}.ffn": TaskMasks.full(2, 8) for s in ("encoder", "decoder") for i in range(2)}
    assert list(restrict(masks, "enc")) == ["encoder.layers.0.ffn", "encoder.layers.1.ffn"]
    assert list(restrict(masks, "dec")) == ["decoder.layers.0.ffn", "decoder.layers.1.ffn"]
    assert len(restrict(masks, "both")) == 4
    with pytest.raises(ValueError, match="where"):
        restrict(masks, "middle")
    with pytest.raises(ValueError, match="no decoder layers"):
        restrict({"encoder.layers.0.ffn": TaskMasks.full(2, 8)}, "dec")


def test_random_masks_train_too():
    model, masks = masked_model(5)
    model.set_masks(random_masks(masks, 0))
    out = model(torch.randint(3, 30, (2, 4)), torch.randint(3, 30, (2, 3)), 1)
    assert out.shape == (2, 3, 30) and torch.isfinite(out).all()
