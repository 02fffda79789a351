"""Every wrong input raises ValueError/TypeError naming the argument (docs/design.md §2)."""
import pytest
import torch

from neuronspec.ops import TaskMasks, fc1_act_count, masked_ffn

from _ffn_cases import random_problem


@pytest.fixture
def problem():
    (x, w1, b1, w2, b2), masks, ids = random_problem(0, 6, 4, 8, 3, dtype=torch.float32)
    return dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2, masks=masks, task_ids=ids)


CASES = [
    ("x", lambda p: p["x"].long(), TypeError, "x: expected one of"),
    ("x", lambda p: "not a tensor", TypeError, "x: expected a torch.Tensor"),
    ("w1", lambda p: p["w1"][:, :3], ValueError, r"w1: expected shape \[\*, 4\]"),
    ("w1", lambda p: p["w1"].double(), TypeError, "w1: expected dtype torch.float32"),
    ("b1", lambda p: p["b1"][:5], ValueError, r"b1: expected shape \[8\]"),
    ("w2", lambda p: p["w2"][:, :5], ValueError, r"w2: expected shape \[\*, 8\]"),
    ("b2", lambda p: p["b2"][:2], ValueError, r"b2: expected shape \[4\]"),
    ("b2", lambda p: p["b2"].to("meta"), ValueError, "b2: expected a tensor on cpu"),
    ("masks", lambda p: p["masks"].to_dense(), TypeError, "masks: expected a TaskMasks"),
    ("masks", lambda p: TaskMasks.full(3, 9), ValueError, "masks: built for 9 neurons but w1 has 8"),
    ("task_ids", lambda p: 3, ValueError, r"task_ids: task 3 out of range \[0, 3\)"),
    ("task_ids", lambda p: -1, ValueError, "task_ids: task -1 out of range"),
    ("task_ids", lambda p: torch.tensor([0, 1, 2, 3, 0, 0]), ValueError, r"task_ids: ids must lie in \[0, 3\)"),
    ("task_ids", lambda p: torch.tensor([0, -1, 2, 1, 0, 0]), ValueError, r"task_ids: ids must lie in \[0, 3\)"),
    ("task_ids", lambda p: torch.zeros(5, dtype=torch.long), ValueError, "task_ids: expected one id per token"),
    ("task_ids", lambda p: torch.zeros(6), TypeError, "task_ids: expected an integer tensor"),
    ("task_ids", lambda p: 1.0, TypeError, "task_ids: expected an int or an integer tensor"),
    ("task_ids", lambda p: True, TypeError, "task_ids: expected an int or an integer tensor"),
    ("activation", lambda p: "tanh", ValueError, "activation: expected one of"),
    ("backend", lambda p: "cublas", ValueError, "backend: unknown backend 'cublas'"),
]


@pytest.mark.parametrize("arg,make,error,match", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_masked_ffn_bad_input(problem, arg, make, error, match):
    kwargs = dict(problem, activation="relu")
    kwargs[arg] = make(problem)
    with pytest.raises(error, match=match):
        masked_ffn(**kwargs)


def test_unavailable_backend_named(problem, monkeypatch):
    monkeypatch.delenv("NEURONSPEC_BACKEND", raising=False)
    with pytest.raises(ValueError, match="backend: backend 'cuda' is unavailable on cpu"):
        masked_ffn(**problem, backend="cuda")


def test_env_var_backend(problem, monkeypatch):
    monkeypatch.setenv("NEURONSPEC_BACKEND", "nope")
    with pytest.raises(ValueError, match="NEURONSPEC_BACKEND: unknown backend 'nope'"):
        masked_ffn(**problem)
    monkeypatch.setenv("NEURONSPEC_BACKEND", "reference")
    y = masked_ffn(**problem)
    monkeypatch.delenv("NEURONSPEC_BACKEND")
    torch.testing.assert_close(y, masked_ffn(**problem))


def test_tensors_on_other_devices(problem):
    with pytest.raises(ValueError, match="w1: expected a tensor on meta"):
        masked_ffn(**dict(problem, x=problem["x"].to("meta")))
    masks = problem["masks"]
    masks.indices, masks.offsets = masks.indices.to("meta"), masks.offsets.to("meta")
    with pytest.raises(ValueError, match=r"masks: on meta but x is on cpu; call masks.to\(x.device\)"):
        masked_ffn(**problem)


COUNT_CASES = [
    ("counts", lambda p: torch.zeros(3, 8, dtype=torch.int32), TypeError, "counts: expected dtype torch.int64"),
    ("counts", lambda p: torch.zeros(3, 7, dtype=torch.long), ValueError, r"counts: expected shape \[T, 8\]"),
    ("counts", lambda p: torch.zeros(8, 3, dtype=torch.long).t(), ValueError, "counts: must be contiguous"),
    ("valid", lambda p: torch.ones(6), TypeError, "valid: expected dtype torch.bool"),
    ("valid", lambda p: torch.ones(5, dtype=torch.bool), ValueError, r"valid: expected shape \[6\]"),
    ("task_ids", lambda p: torch.tensor([0, 1, 2, 3, 0, 0]), ValueError, r"task_ids: ids must lie in \[0, 3\)"),
    ("b1", lambda p: p["b1"].double(), TypeError, "b1: expected dtype torch.float32"),
]


@pytest.mark.parametrize("arg,make,error,match", COUNT_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(COUNT_CASES)])
def test_fc1_act_count_bad_input(problem, arg, make, error, match):
    kwargs = dict(x=problem["x"], w1=problem["w1"], b1=problem["b1"], counts=torch.zeros(3, 8, dtype=torch.long),
                  task_ids=problem["task_ids"])
    kwargs[arg] = make(problem)
    with pytest.raises(error, match=match):
        fc1_act_count(**kwargs)
