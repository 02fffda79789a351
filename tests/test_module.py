import pytest
import torch
from torch import nn

from neuronspec.ops import SpecializedFFN, TaskMasks, masked_ffn_reference


def make(activation="relu"):
    torch.manual_seed(0)
    return SpecializedFFN(8, 16, activation=activation).double()


def test_dense_checkpoint_loads_unchanged():
    dense = nn.Sequential()
    dense.fc1, dense.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
    ffn = SpecializedFFN(8, 16)
    ffn.load_state_dict(dense.state_dict())  # strict: names and shapes match two nn.Linear
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(ffn(x), dense.fc2(torch.relu(dense.fc1(x))))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_masked_forward_matches_reference(activation):
    ffn = make(activation)
    masks = TaskMasks.from_dense(torch.rand(3, 16, generator=torch.Generator().manual_seed(1)) < 0.5)
    ffn.set_masks(masks)
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    ids = torch.randint(0, 3, (2, 7))
    y = ffn(x, ids)
    ref = masked_ffn_reference(x.reshape(14, 8), ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias,
                               masks.indices, masks.offsets, ids.reshape(14), activation)
    torch.testing.assert_close(y, ref.reshape(2, 7, 8))
    assert "3 task masks" in repr(ffn)
    ffn.set_masks(None)
    dense = ffn.fc2(torch.relu(ffn.fc1(x))) if activation == "relu" else ffn.fc2(nn.functional.gelu(ffn.fc1(x)))
    torch.testing.assert_close(ffn(x), dense)


def test_full_masks_equal_dense_and_grads_flow():
    ffn = make()
    x = torch.randn(4, 8, dtype=torch.float64)
    dense = ffn(x)
    ffn.set_masks(TaskMasks.full(2, 16))
    y = ffn(x, 1)
    torch.testing.assert_close(y, dense)
    y.sum().backward()
    assert all(p.grad is not None for p in ffn.parameters())


def test_counting_mode_counts_valid_tokens_only():
    ffn = make()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    ids = torch.tensor([[0] * 5, [1] * 5])
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    dense = ffn(x)
    ffn.start_counting(2)
    y = ffn(x, ids, valid)
    counts = ffn.stop_counting()
    torch.testing.assert_close(y, dense)
    z = ffn.fc1(x) > 0
    assert counts[0].tolist() == z[0].sum(0).tolist()
    assert counts[1].tolist() == z[1, :2].sum(0).tolist()
    with pytest.raises(RuntimeError, match="start_counting"):
        ffn.stop_counting()


def test_module_errors():
    ffn = make()
    with pytest.raises(ValueError, match="masks: built for 8 neurons but fc1 has 16 rows"):
        ffn.set_masks(TaskMasks.full(1, 8))
    with pytest.raises(TypeError, match="masks: expected a TaskMasks"):
        ffn.set_masks(torch.ones(1, 16))
    ffn.set_masks(TaskMasks.full(1, 16))
    with pytest.raises(ValueError, match="task_ids: required when masks are set"):
        ffn(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="start_counting: remove the masks first"):
        ffn.start_counting(1)
    with pytest.raises(ValueError, match="activation: expected one of"):
        SpecializedFFN(4, 4, activation="swish")


@pytest.mark.parametrize("mode", ["masks", "counting"])
def test_autocast_runs_ops_in_bf16(mode):
    torch.manual_seed(0)
    ffn = SpecializedFFN(8, 16)
    x = torch.randn(6, 8)
    ids = torch.tensor([0, 1, 0, 1, 1, 0])
    masks = TaskMasks.from_dense(torch.rand(2, 16) < 0.5)
    ref = masked_ffn_reference(x, ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias,
                               masks.indices, masks.offsets, ids)
    if mode == "masks":
        ffn.set_masks(masks)
    else:
        ffn.start_counting(2)
        ref = ffn.fc2(torch.relu(ffn.fc1(x)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ffn(x, ids)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, atol=5e-2, rtol=5e-2)
    y.float().sum().backward()
    assert ffn.fc1.weight.grad.dtype == torch.float32 and ffn.fc1.weight.grad.abs().sum() > 0
    if mode == "counting":
        assert ffn.stop_counting().sum() > 0
