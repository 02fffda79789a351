import pytest
import torch

from neuronspec.ops import TaskMasks, load_layer_masks, save_layer_masks


def test_dense_and_indices_round_trip(tmp_path):
    dense = torch.rand(5, 33, generator=torch.Generator().manual_seed(0)) < 0.4
    dense[1] = False  # empty task
    dense[2] = True  # full task
    m = TaskMasks.from_dense(dense, names=list("abcde"))
    assert torch.equal(m.to_dense(), dense)
    assert m.sizes().tolist() == dense.sum(1).tolist()
    again = TaskMasks.from_indices([s.nonzero().squeeze(1).flip(0).tolist() for s in dense], 33, list("abcde"))
    assert again == m  # unsorted input lists are sorted
    assert torch.equal(m.active("c"), torch.arange(33, dtype=torch.int32))
    m.save(tmp_path / "m.pt")
    assert TaskMasks.load(tmp_path / "m.pt") == m
    save_layer_masks({"encoder.layers.0.ffn": m}, tmp_path / "all.pt", meta={"k": 0.95})
    layers, meta = load_layer_masks(tmp_path / "all.pt")
    assert layers["encoder.layers.0.ffn"] == m and meta == {"k": 0.95}
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporary files


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    """neuronspec.atomic (used by every writer: masks, checkpoints, tables, plots): a write that
    fails midway leaves the previous file whole and no temporary file behind."""
    from neuronspec.atomic import atomic_file, write_atomic

    path = tmp_path / "results.json"
    write_atomic(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and not list(tmp_path.glob(".*"))


def test_fractions_and_repr():
    m = TaskMasks.from_indices([[0, 1], [1, 2, 3, 4]], 8)
    assert m.fractions().tolist() == [0.25, 0.5]
    assert "tasks=2" in repr(m)


@pytest.mark.parametrize(
    "sets,f,match",
    [
        ([[0, 8]], 8, r"indices: neuron ids must lie in \[0, 8\)"),
        ([[-1, 2]], 8, r"indices: neuron ids must lie"),
        ([[1, 1, 2]], 8, r"task 0 .* unsorted or duplicate"),
    ],
)
def test_from_indices_rejects_bad_ids(sets, f, match):
    with pytest.raises(ValueError, match=match):
        TaskMasks.from_indices(sets, f)


def test_unsorted_csr_rejected():
    with pytest.raises(ValueError, match=r"task 1 \(t1\) has unsorted or duplicate neuron ids"):
        TaskMasks(torch.tensor([0, 3, 5, 2], dtype=torch.int32), torch.tensor([0, 2, 4], dtype=torch.int32), 8,
                  ["t0", "t1"])


def test_structure_errors():
    with pytest.raises(TypeError, match="TaskMasks.indices: expected a 1-D int32"):
        TaskMasks(torch.tensor([0, 1]), torch.tensor([0, 2], dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="TaskMasks.offsets: must start at 0"):
        TaskMasks(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0, 3], dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="TaskMasks.names: 1 names for 2 tasks"):
        TaskMasks(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0, 1, 2], dtype=torch.int32), 4, ["a"])
    with pytest.raises(ValueError, match="masks: a non-boolean mask must contain only 0 and 1"):
        TaskMasks.from_dense(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="not a neuronspec masks file"):
        import tempfile, os
        with tempfile.TemporaryDirectory() as d:
            torch.save({"x": 1}, os.path.join(d, "f.pt"))
            load_layer_masks(os.path.join(d, "f.pt"))


def test_masks_files_are_checksummed(tmp_path):
    """save_layer_masks and TaskMasks.save (the demo's, select's and the HF wrapper's masks)
    store a sha256; a flipped byte in the tensor data is refused with one line naming the file."""
    m = TaskMasks.from_dense(torch.rand(3, 4096, generator=torch.Generator().manual_seed(1)) < 0.5)
    for path, save, load in ((tmp_path / "all.pt", lambda p: save_layer_masks({"l": m}, p), load_layer_masks),
                             (tmp_path / "one.pt", m.save, TaskMasks.load)):
        save(path)
        load(path)  # intact
        data = bytearray(path.read_bytes())
        pos = data.find(m.indices[1000:1004].numpy().tobytes())
        assert pos > 0
        data[pos] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=f"masks: {path} is damaged"):
            load(path)


def test_demo_rejects_bad_k_before_training(tmp_path):
    from neuronspec.demo import run_demo

    with pytest.raises(ValueError, match=r"k: must lie in \(0, 1\]"):
        run_demo(tmp_path / "demo", k=0.0, minutes=0.01)
    assert not (tmp_path / "demo").exists()
