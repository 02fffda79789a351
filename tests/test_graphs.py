"""CUDA-graph capture of training steps (neuronspec/ops/graphs.py).

On CPU the capture is replaced by a recording stand-in (the bookkeeping: one graph per key,
shapes, masks and mode; LRU eviction; static inputs refreshed per call; gradients equal eager).
On a GPU the real capture runs: replays with new token and task ids equal eager results.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from neuronspec.nmt.model import ModelConfig, Transformer
from neuronspec.ops import TaskMasks, memo, torch_backend
from neuronspec.ops.graphs import GraphedLoss, masks_fingerprint
from neuronspec.ops.plan import mask_tables

from _sync_audit import HostReads, SyncAudit

CUDA = torch.cuda.is_available()


def loss_fn(model, key, src, tgt_in, tgt_out, *task):
    t = task[0] if task else key
    logits = model.decode(tgt_in, model.encode(src, t), t)
    return F.cross_entropy(logits.reshape(-1, model.cfg.vocab_size).float(), tgt_out.reshape(-1))


def tiny_model(device="cpu", tasks=3, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig.from_preset("tiny", vocab_size=64, dropout=0.0, attention_dropout=0.0)
    model = Transformer(cfg).to(device)
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name, ffn in model.ffn_layers().items():
        f = ffn.fc1.out_features
        masks[name] = TaskMasks.from_dense(torch.rand(tasks, f, generator=gen) < 0.6)
    model.set_masks(masks)
    return model


def batch(device="cpu", b=4, length=6, tasks=3, mixed=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    src, tgt = torch.randint(1, 64, (b, length), generator=g), torch.randint(1, 64, (b, length + 1), generator=g)
    t = torch.randint(0, tasks, (b,), generator=g)
    out = (src, tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()) + ((t,) if mixed else ())
    return tuple(x.to(device) for x in out)


class Recorder:
    """Stand-in for make_graphed_callables: counts captures, keeps static inputs and, like a
    graph, computes on them (copied from each call's tensors)."""

    def __init__(self):
        self.captures = []

    def __call__(self, module, static):
        self.captures.append([tuple(t.shape) for t in static])

        def replay(*tensors):
            for s, t in zip(static, tensors):
                s.copy_(t)
            return module(*static)
        return replay


def test_one_capture_per_key_shape_masks_and_mode():
    model, rec = tiny_model(), Recorder()
    g = GraphedLoss(model, loss_fn, capture=rec)
    g("mixed", *batch(seed=1))
    g("mixed", *batch(seed=2))  # new ids, same shapes: replay
    assert len(rec.captures) == 1
    g("mixed", *batch(length=8))  # new shape
    g(1, *batch(mixed=False))  # homogeneous direction 1
    g(2, *batch(mixed=False))  # direction 2
    assert len(rec.captures) == 4
    model.eval()
    g(2, *batch(mixed=False))  # eval mode is another graph
    model.train()
    assert len(rec.captures) == 5
    before = masks_fingerprint(model)
    model.set_masks({n: TaskMasks.from_dense(torch.ones(3, f.fc1.out_features, dtype=torch.bool))
                     for n, f in model.ffn_layers().items()})
    assert masks_fingerprint(model) != before
    g(2, *batch(mixed=False))  # new masks: captured anew
    assert len(rec.captures) == 6 and g.captures == 6


def test_a_device_task_serves_every_direction_with_one_graph():
    """A homogeneous batch's direction as a 0-dim tensor (UNIFORM): one capture for all
    directions, and the replays equal eager calls with the int direction."""
    eager, rec = tiny_model(), Recorder()
    graphed = copy.deepcopy(eager)
    g = GraphedLoss(graphed, loss_fn, capture=rec)
    for seed, direction in enumerate((0, 2, 1, 2)):
        src, tgt_in, tgt_out = batch(mixed=False, seed=seed)
        for model in (eager, graphed):
            model.zero_grad(set_to_none=True)
        want = loss_fn(eager, direction, src, tgt_in, tgt_out)
        want.backward()
        got = g("uniform", src, tgt_in, tgt_out, torch.tensor(direction))
        got.backward()
        torch.testing.assert_close(got, want)
        for p, q in zip(eager.parameters(), graphed.parameters()):
            torch.testing.assert_close(q.grad, p.grad)
    assert g.captures == 1


def test_tuple_outputs_are_copied():
    def two(model, key, *tensors):
        loss = loss_fn(model, key, *tensors)
        return loss, loss.detach() * 2
    g = GraphedLoss(tiny_model(), two, capture=Recorder())
    loss, double = g("mixed", *batch())
    torch.testing.assert_close(double, 2 * loss.detach())


def test_least_recently_used_graph_is_evicted():
    model, rec = tiny_model(), Recorder()
    g = GraphedLoss(model, loss_fn, max_graphs=2, capture=rec)
    for key in (0, 1, 0, 2, 0, 1):
        g(key, *batch(mixed=False))
    # 0, 1 captured; 0 reused; 2 evicts 1; 0 reused; 1 evicts 2 and is captured again
    assert g.captures == 4 and len(g) == 2


def check_steps_equal_eager(eager, graphed_loss, graphed, batches, rtol=None, atol=None):
    """Each (key, batch): the graphed loss and gradients equal eager ones on a twin model."""
    for key, data in batches:
        for model in (eager, graphed):
            model.zero_grad(set_to_none=True)
        want = loss_fn(eager, key, *data)
        want.backward()
        got = graphed_loss(key, *data)
        got.backward()
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
        for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=None if rtol is None else 10 * rtol, atol=atol, msg=name)


@pytest.mark.parametrize("mixed", [False, True])
def test_replayed_loss_and_grads_equal_eager(mixed):
    eager, rec = tiny_model(), Recorder()
    graphed = copy.deepcopy(eager)
    g = GraphedLoss(graphed, loss_fn, capture=rec)
    # new token and task ids on every call
    check_steps_equal_eager(eager, g, graphed, [("mixed" if mixed else seed % 3, batch(mixed=mixed, seed=seed))
                                                for seed in range(3)])
    assert g.captures == (1 if mixed else 3)


class CaptureAudit(SyncAudit):
    """SyncAudit plus tensors made from host data (torch.tensor of Python values, aten::lift_fresh):
    on a GPU a host-to-device copy, which a capture refuses."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in ("aten::lift_fresh", "aten::lift_fresh_copy"):
            self.syncs.append("tensor from host data")
        return super().__torch_dispatch__(func, types, args, kwargs)


class AuditedCapture(Recorder):
    """Stand-in for make_graphed_callables that runs the step's forward and backward once as a
    capture would see it, with no warm-up before: capturing() is True (a table built now raises),
    and any host read, sync or tensor from host data is recorded in `issues`."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.issues, self.monkeypatch = [], monkeypatch

    def __call__(self, module, static):
        with self.monkeypatch.context() as m:
            m.setattr(memo, "capturing", lambda: True)
            with HostReads() as reads, CaptureAudit() as audit:
                out = module(*static)
                loss = out if isinstance(out, torch.Tensor) else out[0]
                torch.autograd.grad(loss, [p for p in module.parameters() if p.requires_grad], allow_unused=True)
        self.issues += reads.calls + audit.syncs
        return super().__call__(module, static)


@pytest.mark.parametrize("kind", ["mixed", "uniform", "homogeneous"])
def test_capture_finds_every_table_built(kind, monkeypatch):
    """GraphedLoss builds every mask table before capturing: the first forward + backward under
    the emulated capture builds none, makes no tensor from host data and reads nothing on the
    host (GPU paths: the torch backend's grouped mixed path)."""
    monkeypatch.setattr(torch_backend, "GROUPED_ON_CPU", True)
    model, cap = tiny_model(seed=4), AuditedCapture(monkeypatch)
    g = GraphedLoss(model, loss_fn, capture=cap)
    src, tgt_in, tgt_out, task = batch(seed=3)
    if kind == "mixed":
        g("mixed", src, tgt_in, tgt_out, task)
    elif kind == "uniform":
        g("uniform", src, tgt_in, tgt_out, torch.tensor(1))
    else:
        g(1, src, tgt_in, tgt_out)
    assert cap.issues == [] and len(cap.captures) == 1


def test_a_table_built_during_capture_raises(monkeypatch):
    monkeypatch.setattr(memo, "capturing", lambda: True)
    masks = TaskMasks.from_dense(torch.rand(3, 16) < 0.5)
    with pytest.raises(RuntimeError, match="during a CUDA graph capture"):
        mask_tables(masks.indices, masks.offsets, 16)


def test_bad_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_graphs"):
        GraphedLoss(model, loss_fn, max_graphs=0, capture=Recorder())
    with pytest.raises(TypeError, match="tensors"):
        GraphedLoss(model, loss_fn, capture=Recorder())("mixed", [1, 2])
    if not CUDA:
        with pytest.raises(ValueError, match="CUDA device"):
            GraphedLoss(model, loss_fn)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("mixed", [False, True])
def test_cuda_graph_replays_equal_eager(mixed):
    """The real capture: forward + backward replays with new token and task ids give the eager
    loss and gradients (fp32, no dropout)."""
    eager = tiny_model("cuda")
    graphed = copy.deepcopy(eager)
    g = GraphedLoss(graphed, loss_fn)
    check_steps_equal_eager(eager, g, graphed, [("mixed" if mixed else 1, batch("cuda", b=8, mixed=mixed, seed=seed))
                                                for seed in range(4)], rtol=1e-4, atol=1e-5)
    assert g.captures == 1
