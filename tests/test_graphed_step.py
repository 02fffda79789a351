"""`neuronspec train --cuda-graphs` (nmt/graphed_step.py): shape buckets, padding that changes
nothing, no host syncs in the graphed loss, and the trainer with graphs equal to the eager one.

On CPU the capture is `StaticBuffers`, a stand-in with a CUDA graph's buffer semantics: inputs
copied into static tensors, outputs and parameter gradients returned in static buffers that the
next replay overwrites (as torch.cuda.make_graphed_callables does). On a GPU the real capture runs.
"""
from __future__ import annotations

import pytest
import torch

from _nmt_cases import TINY_MODEL, prepare
from _sync_audit import HostReads, SyncAudit
from neuronspec.data.batching import Batch, pad_batch, shape_bucket
from neuronspec.nmt.config import TrainConfig
from neuronspec.nmt.graphed_step import GraphedTrainStep, bucket_shape
from neuronspec.nmt.loss import label_smoothed_loss
from neuronspec.nmt.model import ModelConfig, Transformer
from neuronspec.nmt.trainer import Trainer
from neuronspec.ops import TaskMasks

CUDA = torch.cuda.is_available()
PAD, VOCAB, TASKS = 1, 50, 3


class StaticBuffers:
    """Stand-in for make_graphed_callables: (module, sample_args) -> replay(*tensors)."""

    def __init__(self):
        self.captures = 0

    def __call__(self, module, sample_args):
        self.captures += 1
        static_in = [t.clone() for t in sample_args]
        params = tuple(p for p in module.parameters() if p.requires_grad)
        static_grads = [torch.zeros_like(p) for p in params]
        state = {}

        class Replay(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *inputs):
                for s, t in zip(static_in, inputs):
                    s.copy_(t)
                with torch.enable_grad():
                    state["out"] = module(*static_in)
                return tuple(o.detach() for o in state["out"])

            @staticmethod
            def backward(ctx, *grads):
                outs = [o for o in state["out"] if o.requires_grad]
                got = torch.autograd.grad(outs, params, grads[:len(outs)], allow_unused=True)
                for buf, g in zip(static_grads, got):
                    buf.zero_() if g is None else buf.copy_(g)
                return (None,) * len(static_in) + tuple(b.detach() for b in static_grads)

        return lambda *tensors: Replay.apply(*tensors, *params)


def tiny_model(seed=0, masks=True):
    torch.manual_seed(seed)
    cfg = ModelConfig.from_preset("tiny", vocab_size=VOCAB, pad=PAD, dropout=0.0, attention_dropout=0.0, **TINY_MODEL)
    model = Transformer(cfg)
    if masks:
        gen = torch.Generator().manual_seed(seed)
        model.set_masks({name: TaskMasks.from_dense(torch.rand(TASKS, ffn.fc1.out_features, generator=gen) < 0.6)
                         for name, ffn in model.ffn_layers().items()})
    return model


def random_batch(seed, b=5, mixed=True, lengths=None):
    g = torch.Generator().manual_seed(seed)
    s_len, t_len = lengths or (3 + seed % 5, 2 + seed % 7)
    src = torch.randint(2, VOCAB, (b, s_len), generator=g)
    tgt = torch.randint(2, VOCAB, (b, t_len + 1), generator=g)
    for i in range(1, b):  # ragged rows, right-padded
        src[i, torch.randint(1, s_len + 1, (), generator=g):] = PAD
        tgt[i, torch.randint(2, t_len + 2, (), generator=g):] = PAD
    task = torch.randint(0, TASKS, (b,), generator=g) if mixed else torch.full((b,), seed % TASKS)
    tgt_out = tgt[:, 1:].contiguous()
    return Batch(src, tgt[:, :-1].contiguous(), tgt_out, task, torch.arange(b), int((tgt_out != PAD).sum()), PAD)


# ---- shape buckets and padding -------------------------------------------------------------------
def test_shape_bucket_grows_at_most_a_quarter():
    assert [shape_bucket(n) for n in (0, 1, 7, 8, 9, 17, 33, 100, 129)] == [0, 1, 7, 8, 10, 20, 40, 112, 160]
    sizes = [shape_bucket(n) for n in range(1, 5000)]
    assert all(b >= n and b <= n * 1.25 for n, b in enumerate(sizes, 1))
    assert sizes == sorted(sizes) and len(set(sizes)) < 60  # few shapes: 4 per octave
    with pytest.raises(ValueError, match="per_octave"):
        shape_bucket(5, 0)


@pytest.mark.parametrize("mixed", [False, True])
def test_padding_changes_neither_loss_nor_gradients(mixed):
    model = tiny_model().double()
    batch = random_batch(3, mixed=mixed)
    padded = pad_batch(batch, 8, 10, 12)
    assert padded.src.shape == (8, 10) and padded.tgt_in.shape == (8, 12) and padded.ntokens == batch.ntokens
    assert (padded.tgt_out[5:] == PAD).all() and (padded.src[5:, 0] != PAD).all()
    results = []
    for b, task in ((batch, batch.task if mixed else int(batch.task[0])), (padded, padded.task if mixed else padded.task[0])):
        model.zero_grad()
        loss, nll = label_smoothed_loss(model.decode(b.tgt_in, model.encode(b.src, task), task), b.tgt_out, 0.1, PAD)
        loss.backward()
        results.append((loss.detach(), nll, [p.grad.clone() for p in model.parameters()]))
    (loss0, nll0, g0), (loss1, nll1, g1) = results
    torch.testing.assert_close(loss1, loss0)
    torch.testing.assert_close(nll1, nll0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a)


def test_pad_batch_checks_its_arguments():
    batch = random_batch(0)
    with pytest.raises(ValueError, match="rows: must be an int >= 5"):
        pad_batch(batch, 4, 16, 16)
    with pytest.raises(ValueError, match="tgt_len"):
        pad_batch(batch, 8, 16, 1)
    empty = Batch(*(t[:0] for t in (batch.src, batch.tgt_in, batch.tgt_out, batch.task, batch.ids)), 0, PAD)
    with pytest.raises(ValueError, match="empty batch"):
        pad_batch(empty, 8, 8, 8)


# ---- the graphed step ------------------------------------------------------------------------------
@pytest.mark.parametrize("mixed", [False, True])
def test_graphed_loss_reads_nothing_on_the_host(mixed):
    """The loss the graph captures (model + loss, masks set) with a fresh batch per call: no
    host syncs (a capture would fail on one)."""
    model = tiny_model()
    step = GraphedTrainStep(model, label_smoothing=0.1, amp=False, mixed=mixed, capture=StaticBuffers())
    step(random_batch(0, mixed=mixed))  # builds the mask tables (one host read per masks)
    for seed in (1, 2):
        b = pad_batch(random_batch(seed, mixed=mixed), 8, 16, 16)
        task = b.task if mixed else b.task[0].clone()
        with HostReads() as reads, SyncAudit() as audit:
            loss, _ = step._loss(model, None, b.src, b.tgt_in, b.tgt_out, task)
            loss.backward()
        assert reads.calls + audit.syncs == []


@pytest.mark.parametrize("mixed", [False, True])
def test_one_graph_per_shape_bucket(mixed):
    capture = StaticBuffers()
    step = GraphedTrainStep(tiny_model(), label_smoothing=0.1, amp=False, mixed=mixed, capture=capture)
    shapes = set()
    for seed in range(12):
        batch = random_batch(seed, mixed=mixed, lengths=((4, 3), (9, 5))[seed % 2])
        shapes.add(bucket_shape(batch))
        step(batch)[0].backward()
    # the homogeneous batches have directions 0, 1, 2: every direction shares its shape's graph
    assert capture.captures == len(shapes) == step.captures == 2


def layer_masks(directions=4):
    """Random masks for every FFN of a TINY_MODEL Transformer (4 directions: en<->de, en<->fr)."""
    gen = torch.Generator().manual_seed(1)
    model = Transformer(ModelConfig.from_preset("tiny", vocab_size=8, **TINY_MODEL))
    return {name: TaskMasks.from_dense(torch.rand(directions, ffn.fc1.out_features, generator=gen) < 0.6)
            for name, ffn in model.ffn_layers().items()}


def losses(trainer):
    """The logged training losses (log_every=1: one per update)."""
    return [h["loss"] for h in trainer.history if "loss" in h]


def _trained(prep, out, monkeypatch, graphs, **kw):
    if graphs:
        monkeypatch.setattr(Trainer, "graph_capture", StaticBuffers())
    cfg = TrainConfig(data=prep, out=str(out), model_args=TINY_MODEL, max_tokens=300, lr=3e-3, warmup=5, log_every=1,
                      valid_every=0, valid_chrf_sentences=0, valid_max_sentences=8, progress=False, dropout=0.0,
                      attention_dropout=0.0, amp="off", max_steps=6, cuda_graphs=graphs, **kw)
    torch.manual_seed(0)
    t = Trainer(cfg, masks=layer_masks())
    summary = t.train()
    monkeypatch.setattr(Trainer, "graph_capture", None)
    return t, summary


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    prepare(tmp)
    return str(tmp / "prep")


@pytest.mark.parametrize("update_freq, mixed", [(1, False), (3, False), (2, True)])
def test_trainer_with_graphs_equals_eager(prep, tmp_path, monkeypatch, update_freq, mixed):
    """Specialized training, same seed, no dropout: the graphed run's losses and weights are the
    eager run's (gradient accumulation included: the same graph replays within one update)."""
    eager, _ = _trained(prep, tmp_path / "eager", monkeypatch, False, update_freq=update_freq, mixed_batches=mixed)
    graphed, summary = _trained(prep, tmp_path / "graphed", monkeypatch, True, update_freq=update_freq,
                                mixed_batches=mixed)
    assert summary["cuda_graphs"]["captures"] >= 1
    assert len(losses(eager)) == 6
    assert losses(graphed) == pytest.approx(losses(eager), rel=1e-4)
    for (name, p), q in zip(eager.model.named_parameters(), graphed.model.parameters()):
        assert (q - p).abs().max() <= 1e-4, (name, (q - p).abs().max().item())  # Adam amplifies rounding noise


@pytest.mark.parametrize("own", [True, False])
def test_accumulation_takes_gradients_out_of_the_static_buffers(own):
    """Two micro-batches of one shape bucket replay one graph: with own_grads the accumulated
    gradients are the sum of both; without, the second replay overwrites the first's (the
    stand-in has the hazard, as make_graphed_callables does)."""
    eager, graphed = tiny_model(), tiny_model()
    step = GraphedTrainStep(graphed, label_smoothing=0.1, amp=False, mixed=True, capture=StaticBuffers())
    batches = [random_batch(seed, lengths=(4, 3)) for seed in (1, 2)]
    step.start_update()
    for i, b in enumerate(batches):
        label_smoothed_loss(eager(b.src, b.tgt_in, b.task), b.tgt_out, 0.1, PAD)[0].backward()
        step(b)[0].backward()
        if own and i == 0:
            step.own_grads()
    assert step.captures == 1
    same = all(torch.allclose(q.grad, p.grad, rtol=1e-4, atol=1e-6)
               for p, q in zip(eager.parameters(), graphed.parameters()))
    assert same == own


def test_cuda_graphs_needs_cuda_and_one_process(prep, tmp_path):
    if not CUDA:
        with pytest.raises(ValueError, match="cuda_graphs: needs a CUDA device"):
            Trainer(TrainConfig(data=prep, out=str(tmp_path / "x"), max_steps=1, cuda_graphs=True, device="cpu"))
    with pytest.raises(ValueError, match="max_cuda_graphs"):
        TrainConfig(data=prep, max_steps=1, max_cuda_graphs=0)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("update_freq, mixed", [(1, False), (2, True)])
def test_trainer_with_real_graphs_equals_eager_on_gpu(prep, tmp_path, update_freq, mixed):
    """The real capture (fp32, no dropout): losses and weights of a graphed run equal eager ones,
    graphs of different shapes replayed in any order from one shared memory pool."""
    runs = []
    for graphs in (False, True):
        cfg = TrainConfig(data=prep, out=str(tmp_path / str(graphs)), model_args=TINY_MODEL, max_tokens=300, lr=3e-3,
                          warmup=5, log_every=1, valid_every=0, valid_chrf_sentences=0, valid_max_sentences=8,
                          progress=False, dropout=0.0, attention_dropout=0.0, amp="off", max_steps=8, device="cuda",
                          cuda_graphs=graphs, update_freq=update_freq, mixed_batches=mixed)
        torch.manual_seed(0)
        t = Trainer(cfg, masks=layer_masks())
        t.train()
        runs.append(t)
    eager, graphed = runs
    assert graphed.graphed.captures >= 2  # several shapes, interleaved
    assert losses(graphed) == pytest.approx(losses(eager), rel=1e-3)
    for (name, p), q in zip(eager.model.named_parameters(), graphed.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4, msg=name)
