"""Greedy and batched beam search with the model's key/value cache.

``beam_search`` follows fairseq's ``SequenceGenerator``: at each step every live hypothesis
proposes its ``V`` continuations, the best ``2·beam`` of each sentence are kept, those ending
in EOS among the first ``beam`` ranks are finalised with score ``logp / len^lenpen``, and the
best ``beam`` others continue. A sentence stops once it holds ``beam`` finished hypotheses;
finished sentences are dropped from the batch (and from the cache). Hypotheses are forced
to end at ``max_len = max_len_a · src_len + max_len_b`` tokens.

The first decoder input is ``start`` (default BOS): an int, or a LongTensor ``[B]`` with one
token per sentence — the target-language tag when training put it on the decoder side
(``translate_batches`` passes ``batch.tgt_in[:, 0]``, the token training started from).
Token ids returned exclude that first token and EOS.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import check_int
from ..data.batching import eval_batches
from .model import Transformer, task_arg

log = logging.getLogger(__name__)


def _check(beam: int, max_len_a: float, max_len_b: int, lenpen: float) -> None:
    check_int("beam", beam, 1)
    if not math.isfinite(max_len_a) or max_len_a < 0 or max_len_b < 1:
        raise ValueError(f"max_len_a must be a finite number >= 0 and max_len_b >= 1, got {max_len_a}, {max_len_b}")
    if not math.isfinite(lenpen) or lenpen < 0:
        raise ValueError(f"lenpen must be a finite number >= 0, got {lenpen}")


def _start_tokens(start: int | torch.Tensor | None, bos: int, B: int, device) -> torch.Tensor:
    """The first decoder input of each sentence, ``[B, 1]``."""
    if start is None:
        start = bos
    if isinstance(start, int):
        return torch.full((B, 1), start, dtype=torch.long, device=device)
    if not isinstance(start, torch.Tensor) or start.shape != (B,):
        raise ValueError(f"start must be an int or a tensor [B={B}], got {getattr(start, 'shape', start)!r}")
    return start.to(device=device, dtype=torch.long)[:, None]


def _max_lengths(model: Transformer, src: torch.Tensor, a: float, b: int) -> torch.Tensor:
    src_len = (src != model.cfg.pad).sum(1)
    return (a * src_len.float() + b).long().clamp(min=1, max=model.cfg.max_positions - 1)


def _step_logprobs(model, tokens, enc, task, cache, step, max_len, bos, eos, min_len):
    """log-probs ``[N, V]`` of the next token with PAD/BOS banned, EOS banned before
    ``min_len`` and forced at ``max_len``."""
    logits = model.decode(tokens, enc, task, cache)[:, -1].float()
    lp = F.log_softmax(logits, dim=-1)
    lp[:, model.cfg.pad] = -torch.inf
    lp[:, bos] = -torch.inf
    if step < min_len:
        lp[:, eos] = -torch.inf
    at_max = step >= max_len
    if at_max.any():
        lp[at_max] = -torch.inf
        lp[at_max, eos] = 0.0
    return lp


@torch.no_grad()
def greedy_search(model: Transformer, src: torch.Tensor, task: int | torch.Tensor, *, bos: int = 1, eos: int = 2,
                  max_len_a: float = 1.2, max_len_b: int = 10, min_len: int = 1,
                  start: int | torch.Tensor | None = None,
                  decoder_task: int | torch.Tensor | None = None) -> list[list[int]]:
    """Argmax decoding of ``src [B, S]`` from ``start`` (default ``bos``); returns B token-id
    lists (without the start token and EOS). ``decoder_task``: the decoder's task when it
    differs from the encoder's ``task`` (zero-shot: x→en encoder, en→y decoder)."""
    _check(1, max_len_a, max_len_b, 0.0)
    task = task_arg(task)
    dec_task = task if decoder_task is None else task_arg(decoder_task)
    with model.direction_ffns(task, dec_task):  # the weights are constant while decoding
        return _greedy(model, src, task, dec_task, bos, eos, max_len_a, max_len_b, min_len, start)


def _greedy(model, src, enc_task, task, bos, eos, max_len_a, max_len_b, min_len, start) -> list[list[int]]:
    B = src.shape[0]
    enc = model.encode(src, enc_task)
    max_len = _max_lengths(model, src, max_len_a, max_len_b)
    cache = model.new_cache()
    last = _start_tokens(start, bos, B, src.device)
    out = torch.zeros(B, int(max_len.max()) + 1, dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    lengths = torch.zeros(B, dtype=torch.long, device=src.device)
    for step in range(int(max_len.max()) + 1):
        lp = _step_logprobs(model, last, enc, task, cache, step, max_len, bos, eos, min_len)
        nxt = lp.argmax(-1)
        out[:, step] = nxt
        lengths = torch.where(done, lengths, lengths + 1)
        done |= nxt == eos
        if bool(done.all()):
            break
        last = nxt[:, None]
    return [out[i, : int(lengths[i]) - 1].tolist() for i in range(B)]  # drop the EOS


@torch.no_grad()
def beam_search(model: Transformer, src: torch.Tensor, task: int | torch.Tensor, *, beam: int = 5,
                lenpen: float = 1.0, bos: int = 1, eos: int = 2, max_len_a: float = 1.2, max_len_b: int = 10,
                min_len: int = 1, return_scores: bool = False, start: int | torch.Tensor | None = None,
                decoder_task: int | torch.Tensor | None = None):
    """Beam search over ``src [B, S]`` from ``start`` (default ``bos``); returns the best
    hypothesis per sentence (token ids, without the start token and EOS), and with
    ``return_scores`` also its length-normalised log-probability. ``decoder_task`` as in
    :func:`greedy_search`."""
    _check(beam, max_len_a, max_len_b, lenpen)
    if model.cfg.vocab_size < 2 * beam:
        raise ValueError(f"beam ({beam}) must be at most vocab_size/2 ({model.cfg.vocab_size // 2})")
    task = task_arg(task)
    dec_task = task if decoder_task is None else task_arg(decoder_task)
    with model.direction_ffns(task, dec_task):  # the weights are constant while decoding
        return _beam(model, src, task, dec_task, beam, lenpen, bos, eos, max_len_a, max_len_b, min_len,
                     return_scores, start)


def _beam(model, src, enc_task, task, beam, lenpen, bos, eos, max_len_a, max_len_b, min_len, return_scores, start):
    B, K, dev = src.shape[0], beam, src.device
    V = model.cfg.vocab_size
    enc = model.encode(src, enc_task)
    max_len = _max_lengths(model, src, max_len_a, max_len_b)

    rows = torch.arange(B, device=dev).repeat_interleave(K)  # hypothesis row -> sentence
    enc = enc.index_select(rows)
    task_k = task if isinstance(task, int) else task.index_select(0, rows)
    cache = model.new_cache()
    tokens = _start_tokens(start, bos, B, dev).repeat_interleave(K, 0)
    scores = torch.full((B, K), -torch.inf, device=dev)
    scores[:, 0] = 0.0  # only one live hypothesis at step 0
    alive = torch.arange(B, device=dev)  # sentence id of each live batch row
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    rank = torch.arange(2 * K, device=dev)

    for step in range(int(max_len.max()) + 1):
        n = alive.numel()
        ml = max_len.index_select(0, alive).repeat_interleave(K)
        lp = _step_logprobs(model, tokens[:, -1:], enc, task_k, cache, step, ml, bos, eos, min_len)
        cand = (scores.view(n * K, 1) + lp).view(n, K * V)
        top_s, top_i = cand.topk(2 * K, dim=1)  # [n, 2K]
        src_beam, tok = top_i // V, top_i % V
        is_eos = (tok == eos) & torch.isfinite(top_s)

        # Finalise EOS candidates ranked among the first K.
        fin = is_eos & (rank[None] < K)
        if fin.any():
            for b, j in fin.nonzero().tolist():
                sent = int(alive[b])
                if len(finished[sent]) >= K:
                    continue
                hyp = tokens[b * K + int(src_beam[b, j]), 1:].tolist()
                finished[sent].append((float(top_s[b, j]) / (step + 1) ** lenpen, hyp))

        # Continue with the best K candidates that are not EOS (at most K of the 2K are EOS).
        keep = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :K]
        scores = top_s.gather(1, keep).masked_fill(is_eos.gather(1, keep), -torch.inf)
        parent = (torch.arange(n, device=dev)[:, None] * K + src_beam.gather(1, keep)).view(-1)
        tokens = torch.cat([tokens.index_select(0, parent), tok.gather(1, keep).view(-1, 1)], 1)

        # Drop sentences that have K finished hypotheses. The beams of a sentence share its encoder
        # rows, so the cross-attention cache changes only when sentences drop (live_rows).
        done = torch.tensor([len(finished[int(s)]) >= K for s in alive.tolist()], device=dev)
        if bool(done.all()):
            break
        if done.any():
            live = (~done).nonzero().view(-1)
            live_rows = (live[:, None] * K + torch.arange(K, device=dev)[None]).view(-1)
            alive, scores = alive.index_select(0, live), scores.index_select(0, live)
            tokens = tokens.index_select(0, live_rows)
            parent = parent.index_select(0, live_rows)
            enc = enc.index_select(live_rows)
            if not isinstance(task_k, int):
                task_k = task_k.index_select(0, live_rows)
            Transformer.reorder_cache(cache, live_rows, parts=("cross",))
        Transformer.reorder_cache(cache, parent, parts=("self",))

    best = [max(f, key=lambda x: x[0]) for f in finished]
    hyps = [h for _, h in best]
    return (hyps, [s for s, _ in best]) if return_scores else hyps


def translate_batches(model: Transformer, batches, *, beam: int = 5, lenpen: float = 1.0,
                      max_len_a: float = 1.2, max_len_b: int = 10, bos: int = 1, eos: int = 2,
                      device: torch.device | str = "cpu",
                      decoder_task: int | None = None) -> Iterator[tuple[int, list[int]]]:
    """Yield ``(example id, hypothesis token ids)`` for every sentence of ``Batch`` objects;
    each sentence starts from its batch's first decoder input ``tgt_in[:, 0]``. The encoder
    runs with ``batch.task``, the decoder with ``decoder_task`` when given (zero-shot)."""
    for batch in batches:
        src = batch.src.to(device)
        task = batch.task.to(device)
        start = batch.tgt_in[:, 0]
        if beam == 1:
            hyps = greedy_search(model, src, task, bos=bos, eos=eos, max_len_a=max_len_a, max_len_b=max_len_b,
                                 start=start, decoder_task=decoder_task)
        else:
            hyps = beam_search(model, src, task, beam=beam, lenpen=lenpen, bos=bos, eos=eos,
                               max_len_a=max_len_a, max_len_b=max_len_b, start=start, decoder_task=decoder_task)
        yield from zip(batch.ids.tolist(), hyps)


def sample_ids(n: int, max_sentences: int | None) -> np.ndarray | None:
    """Evenly spaced example ids (covers every part of a split); None = all."""
    if max_sentences is None or max_sentences >= n:
        return None
    if max_sentences < 1:
        raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
    return np.unique(np.linspace(0, n - 1, max_sentences).round().astype(np.int64))


def sampled_batches(data, split: str, direction: Sequence[str], max_tokens: int, max_sentences: int | None,
                    **batch_kw):
    """``eval_batches`` of one direction (``batch_kw`` passed on) restricted to
    ``max_sentences`` evenly spaced examples (``sample_ids``; None: all)."""
    chosen = sample_ids(data.num_examples(split, direction), max_sentences)
    chosen = None if chosen is None else torch.from_numpy(chosen)
    for batch in eval_batches(data, split, direction, max_tokens, **batch_kw):
        if chosen is not None:
            keep = torch.isin(batch.ids, chosen).nonzero().view(-1)
            if keep.numel() == 0:
                continue
            batch = subset_batch(batch, keep)
        yield batch


def zero_shot_tasks(data, direction: Sequence[str]) -> tuple[int, int]:
    """(encoder task, decoder task) of a zero-shot direction x→y: the ids of x→pivot and
    pivot→y; ValueError naming what is missing when either was not trained."""
    s, t = direction
    pivot = data.pivot
    if pivot in (s, t):
        raise ValueError(f"direction: {s}-{t} is not a training direction of {data.root}")
    missing = [f"{a}-{b}" for a, b in ((s, pivot), (pivot, t)) if (a, b) not in data.directions]
    if missing:
        raise ValueError(f"direction: zero-shot {s}-{t} needs the training directions {missing}")
    return data.task_id((s, pivot)), data.task_id((pivot, t))


def direction_tasks(data, direction: Sequence[str]) -> tuple[int, int | None]:
    """(encoder task, decoder task or None for the same) of ``direction``: its own task when
    trained, else the zero-shot pair of ``zero_shot_tasks``."""
    direction = tuple(direction)
    return (data.task_id(direction), None) if direction in data.directions else zero_shot_tasks(data, direction)


def decode_batches(model: Transformer, batches, tok, **kw) -> dict[int, list[int]]:
    """``{example id: hypothesis ids}`` of ``translate_batches`` (``kw`` passed on) with ``model``
    in eval mode, its mode restored afterwards; BOS/EOS from the tokenizer ``tok``."""
    was_training = model.training
    model.eval()
    try:
        return dict(translate_batches(model, batches, bos=tok.bos, eos=tok.eos, **kw))
    finally:
        model.train(was_training)


def translate_direction(model: Transformer, data, split: str, direction: Sequence[str], *, beam: int = 5,
                        lenpen: float = 1.0, max_tokens: int = 4000, max_sentences: int | None = None,
                        max_len_a: float = 1.2, max_len_b: int = 10, source_tag: bool = False,
                        target_tag: str = "decoder",
                        device: torch.device | str = "cpu") -> tuple[list[int], list[str]]:
    """Translate one direction of a prepared split (all of it or ``max_sentences`` evenly
    spaced examples) with the tag layout of training (``source_tag``, ``target_tag``).
    A zero-shot direction x→y (not trained) runs its encoder with the task of x→pivot and its
    decoder with the task of pivot→y, so a specialized model uses those directions' neurons.
    Returns (example ids in order, hypothesis strings with the sources' placeholders restored)."""
    direction = tuple(direction)
    enc_task, dec_task = direction_tasks(data, direction)
    batches = sampled_batches(data, split, direction, max_tokens, max_sentences, source_tag=source_tag,
                              target_tag=target_tag, task=enc_task)
    tok = data.tokenizer
    out = decode_batches(model, batches, tok, beam=beam, lenpen=lenpen, max_len_a=max_len_a, max_len_b=max_len_b,
                         device=device, decoder_task=dec_task)
    ids = sorted(out)
    sources = data.texts(split, direction)[0] if tok.protects else None
    return ids, [tok.decode(out[i], source=None if sources is None else sources[i]) for i in ids]


def subset_batch(batch, keep: torch.Tensor):
    """Rows ``keep`` of a Batch (a new Batch of the same class)."""
    fields = {}
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        fields[f.name] = v.index_select(0, keep) if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == batch.src.shape[0] else v
    if "ntokens" in fields and "tgt_out" in fields:
        fields["ntokens"] = int((fields["tgt_out"] != getattr(batch, "pad", 0)).sum())
    return type(batch)(**fields)
