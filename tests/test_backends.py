"""The backend table and routing (ops/backends.py, ops/routing.py): a backend is one module
plus one line, declares what it runs in CAPS, and `auto` / a named backend route by them."""
from types import SimpleNamespace

import pytest
import torch

import _toy_backend
from neuronspec.ops import (
    available_backends, fc1_act_count, last_backend, masked_ffn, masked_ffn_reference, masked_glu_ffn,
)
from neuronspec.ops import backends, registry, routing

from _ffn_cases import grads, random_problem


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "toy", "_toy_backend")  # the one line that adds a backend
    _toy_backend.CALLS.clear()
    return "toy"


def test_a_toy_backend_runs_by_name_through_the_op(toy):
    tensors, masks, ids = random_problem(1, 14, 6, 10, 3)
    assert "toy" in available_backends("cpu")
    y, gs = grads(lambda *t: masked_ffn(*t, masks, ids, "gelu", backend="toy"), tensors)
    assert _toy_backend.CALLS == [14] and last_backend() == "toy"
    y_ref, gs_ref = grads(lambda *t: masked_ffn_reference(*t, masks.indices, masks.offsets, ids, "gelu"), tensors)
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(gs, gs_ref):
        torch.testing.assert_close(g, g_ref)
    counts = torch.zeros(3, 10, dtype=torch.long)
    fc1_act_count(tensors[0], tensors[1], tensors[2], counts, ids, backend="toy")
    assert last_backend("count") == "toy" and counts.sum() > 0


def test_a_toy_backend_passes_opcheck(toy):
    tensors, masks, ids = random_problem(2, 10, 6, 8, 3)
    x, w1, b1, w2, b2 = [t.requires_grad_(True) for t in tensors]
    for task_ids, task in ((ids, -1), (torch.empty(0, dtype=torch.long), 1)):
        args = (x, w1, b1, w2, b2, None, None, masks.indices, masks.offsets, task_ids, task, "relu", False, "toy")
        torch.library.opcheck(registry.masked_ffn_fwd_op, args)
    counts = torch.zeros(3, 8, dtype=torch.long)
    args = (x.detach(), w1.detach(), b1.detach(), counts, ids, -1, None, "relu", True, "toy")
    torch.library.opcheck(registry.fc1_act_count_op, args)


def test_a_named_backend_refuses_what_its_caps_do_not_declare(toy):
    tensors, masks, ids = random_problem(3, 6, 4, 8, 2)
    x, w1, b1, w2, b2 = tensors
    with pytest.raises(ValueError, match=r"backend 'toy' does not run gated FFNs .*use backend='auto'"):
        masked_glu_ffn(x, w1, b1, w1.clone(), None, w2, b2, masks, ids, "relu", backend="toy")
    with pytest.raises(ValueError, match=r"backend 'toy' runs the activations \('relu', 'gelu'\), not 'silu'"):
        masked_ffn(x, w1, b1, w2, b2, masks, ids, "silu", backend="toy")
    assert _toy_backend.CALLS == []


def test_auto_picks_a_backend_whose_caps_take_the_call(toy, monkeypatch):
    """With the toy first among auto's gathering backends, plain calls that gather run on it,
    gated ones (which it does not declare) on the next one that takes them."""
    monkeypatch.setattr(routing, "GATHER", ("toy", "torch"))
    tensors, masks, _ = random_problem(4, 12, 6, 10, 3)
    x, w1, b1, w2, b2 = tensors
    masked_ffn(x, w1, b1, w2, b2, masks, 1)  # homogeneous on CPU: auto gathers
    assert last_backend() == "toy"
    masked_glu_ffn(x, w1, b1, w1.clone(), b1.clone(), w2, b2, masks, 1)
    assert last_backend() == "torch" and _toy_backend.CALLS == [12]


def test_auto_sends_gated_calls_past_maskmul():
    """A small mixed batch on CPU: auto's rule says mask-multiply; maskmul declares no gated
    FFNs, so a gated call gathers on the torch backend (an ungated one stays on maskmul)."""
    tensors, masks, ids = random_problem(5, 24, 6, 16, 4, density=0.5)
    x, w1, b1, w2, b2 = tensors
    masked_glu_ffn(x, w1, b1, None, None, w2, b2, masks, ids)
    assert last_backend() == "maskmul"
    masked_glu_ffn(x, w1, b1, w1.clone(), b1.clone(), w2, b2, masks, ids)
    assert last_backend() == "torch"


def test_counting_routes_by_caps():
    """On CUDA auto counts with triton except where its CAPS refuse (fp64: torch), and a named
    triton refuses fp64 instead of running torch's math under its name."""
    cuda = torch.device("cuda")
    if routing.unavailable_reason("triton", cuda) is not None:
        pytest.skip("triton does not import")
    fp32, fp64 = (SimpleNamespace(device=cuda, dtype=t) for t in (torch.float32, torch.float64))
    assert routing.counting_backend("auto", fp32, "relu") == "triton"
    assert routing.counting_backend("auto", fp64, "relu") == "torch"
    assert routing.counting_backend("auto", fp32, "silu") == "torch"  # no triton kernel has silu
    assert routing.counting_backend("maskmul", fp32, "gelu") == "triton"
    with pytest.raises(ValueError, match=r"backend 'triton' takes \['float16', 'bfloat16', 'float32'\] on cuda"):
        routing.counting_backend("triton", fp64, "relu")


def test_every_backend_module_declares_caps_and_the_protocol():
    for name in backends.BACKENDS:
        try:
            mod = backends.module(name)
        except ImportError:
            continue
        assert isinstance(mod.CAPS, backends.Caps), name
        assert callable(mod.forward) and callable(mod.backward), name
        assert not mod.CAPS.counting or callable(mod.act_count), name


def test_unavailable_reason_names_the_caps_for_another_device_type():
    why = backends.unavailable_reason("cuda", torch.device("cpu"))
    assert why is not None and "cpu" in why
    assert backends.unavailable_reason("torch", torch.device("meta")).startswith("it runs on ['cpu', 'cuda']")
    assert backends.unavailable_reason("auto", torch.device("cpu")) is None
    assert backends.unavailable_reason("fast", torch.device("cpu")).startswith("unknown backend 'fast'")
