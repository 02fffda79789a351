"""Token-budget batches over prepared data: temperature sampling of directions.

Example layout for a direction src→tgt (ids from ``PreparedData``), with the target-language
tag ``<2tgt>`` on the decoder side (``target_tag="decoder"``, fairseq's ``--decoder-langtok``)
or on the encoder side (``target_tag="encoder"``):
    decoder:  src = [<2src>]? + spm(src) + [eos]            tgt_in = [<2tgt>] + spm(tgt)
    encoder:  src = [<2src>]? + [<2tgt>] + spm(src) + [eos]  tgt_in = [bos] + spm(tgt)
    tgt_out = spm(tgt) + [eos]                                (<2src> only with source_tag)
Decoding starts from ``tgt_in[:, 0]`` of the same batches, so it always agrees with training.
The *size* of an example is max(len(src), len(tgt_out)); a batch of B examples costs
B × (largest size in it), padding included, and never exceeds ``max_tokens``.

``TrainSampler`` is an infinite, deterministic stream of training batches:
- directions drawn with p_d ∝ (n_d / Σ n)^(1/T) (T = 1 proportional, T → ∞ uniform);
- homogeneous (one direction per batch, the reference regime) or ``mixed``;
- each direction is read epoch by epoch in a shuffled order shared by all ranks; rank r
  takes every world_size-th example of it (the order is padded by wrapping to a multiple
  of world_size, so shares are disjoint up to ≤ world_size-1 repeated examples);
- ``upsample`` (e.g. ``{"sentence": 2}``): an epoch of a direction holds each example of
  that kind (the corpus's kinds manifest) N times, as fairseq's ``--upsample-primary``
  does for a whole dataset;
- length-bucketed: examples are sorted by size before cutting batches (a whole epoch
  of the direction when homogeneous; a pool of ~``pool_batches`` batches when mixed),
  then the batches are shuffled;
- training examples larger than ``max_tokens`` are skipped (counted in
  ``num_skipped``); a direction left with none is a ValueError;
- ``state_dict()`` / ``load_state_dict()`` resume the very same stream.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Iterator

import numpy as np
import torch

from neuronspec.checks import check_int
from neuronspec.data.corpus import DirectionLike, PreparedData, as_direction, direction_name

log = logging.getLogger(__name__)

_BLOCK = 1024  # direction draws per RNG block (homogeneous mode)
TARGET_TAGS = ("decoder", "encoder")


def check_target_tag(target_tag: str) -> str:
    if target_tag not in TARGET_TAGS:
        raise ValueError(f"target_tag: must be one of {TARGET_TAGS}, got {target_tag!r}")
    return target_tag


def tag_options(config) -> dict:
    """``source_tag`` / ``target_tag`` of a saved TrainConfig dict (checkpoints written
    before ``target_tag`` existed put the tag on the encoder side)."""
    config = config or {}
    return {"source_tag": bool(config.get("source_tag", False)),
            "target_tag": check_target_tag(config.get("target_tag", "encoder"))}


def tag_layout(tok, direction, source_tag: bool, target_tag: str) -> tuple[list[int], int]:
    """(source prefix ids, first decoder input id) of ``direction`` in a tag layout:
    ``[<2src>]`` if ``source_tag``, then ``<2tgt>`` on the source side (``target_tag`` encoder,
    decoding starts from BOS) or as the first decoder input (``decoder``)."""
    s, t = direction
    on_decoder = check_target_tag(target_tag) == "decoder"
    prefix = ([tok.lang_tag(s)] if source_tag else []) + ([] if on_decoder else [tok.lang_tag(t)])
    return prefix, (tok.lang_tag(t) if on_decoder else tok.bos)


@dataclass
class Batch:
    """src [B, S], tgt_in [B, L], tgt_out [B, L] (int64, right-padded with ``pad``);
    task [B] direction index (-1 for a direction that is not trained); ids [B] example
    index within its direction; ntokens = non-pad target tokens."""

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    task: torch.Tensor
    ids: torch.Tensor
    ntokens: int
    pad: int = 0

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def src_valid(self) -> torch.Tensor:
        return self.src != self.pad

    @property
    def tgt_valid(self) -> torch.Tensor:
        return self.tgt_out != self.pad

    @property
    def num_cells(self) -> int:
        """B × max(S, L): the padded size the token budget bounds."""
        return len(self) * max(self.src.shape[1], self.tgt_out.shape[1])

    def to(self, device, non_blocking: bool = False) -> "Batch":
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        return Batch(**kw)

    def pin_memory(self) -> "Batch":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.pin_memory()
        return Batch(**kw)


def shape_bucket(n: int, per_octave: int = 4) -> int:
    """The smallest of the sizes 1..2·per_octave, then `per_octave` evenly spaced sizes per
    octave (4: ..., 16, 20, 24, 28, 32, 40, ...) that is >= n: at most 1/per_octave more."""
    check_int("n", n, 0)
    check_int("per_octave", per_octave, 1)
    step = max(1, (1 << (max(n, 1).bit_length() - 1)) // per_octave)
    return -(-n // step) * step


def pad_batch(batch: Batch, rows: int, src_len: int, tgt_len: int) -> Batch:
    """``batch`` grown to ``rows`` sentences, sources of ``src_len`` and targets of ``tgt_len``
    tokens (each >= the batch's own), so that batch shapes repeat: CUDA graphs capture one per
    shape (nmt/graphed_step.py).

    Added columns are ``pad``. Added rows are filler sentences that change nothing: their
    source and first decoder input copy row 0's first token (one real key each, so attention
    stays finite), everything else is pad, their targets are all pad (no loss, no gradient) and
    their task is row 0's. ``ntokens`` and ``ids`` keep counting the real examples only.
    """
    b, s, n = len(batch), batch.src.shape[1], batch.tgt_in.shape[1]
    if b == 0:
        raise ValueError("batch: cannot pad an empty batch (no row to take a filler token from)")
    for name, value, least in (("rows", rows, b), ("src_len", src_len, s), ("tgt_len", tgt_len, n)):
        check_int(name, value, least)

    def grown(t: torch.Tensor, cols: int) -> torch.Tensor:
        out = t.new_full((rows, cols), batch.pad)
        out[:b, :t.shape[1]] = t
        return out

    src, tgt_in, tgt_out = grown(batch.src, src_len), grown(batch.tgt_in, tgt_len), grown(batch.tgt_out, tgt_len)
    src[b:, 0], tgt_in[b:, 0] = batch.src[0, 0], batch.tgt_in[0, 0]
    task = torch.cat([batch.task, batch.task[:1].expand(rows - b)])
    return Batch(src, tgt_in, tgt_out, task, batch.ids, batch.ntokens, batch.pad)


def temperature_probs(sizes, temperature: float) -> np.ndarray:
    """p_d ∝ (n_d / Σ n)^(1/T) over directions with sizes n_d (float64 [D])."""
    n = np.asarray(sizes, dtype=np.float64)
    if n.ndim != 1 or len(n) == 0 or (n <= 0).any():
        raise ValueError(f"sizes: expected positive direction sizes, got {sizes!r}")
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0, got {temperature!r}")
    q = (n / n.sum()) ** (1.0 / temperature)
    return q / q.sum()


class _View:
    """One (split, direction): rows in the split's index, source tag prefix, first decoder
    input, example sizes."""

    def __init__(self, data: PreparedData, split: str, direction, task: int, source_tag: bool,
                 target_tag: str = "decoder"):
        self.direction = as_direction(direction)
        self.src_row, self.tgt_row, self.n = data.rows(split, self.direction)
        _, index = data.split_arrays(split)
        prefix, self.start = tag_layout(data.tokenizer, self.direction, source_tag, target_tag)
        self.prefix = np.array(prefix, dtype=np.int64)
        self.task = task
        self.src_len = np.diff(index[self.src_row:self.src_row + self.n + 1]) + len(self.prefix) + 1
        self.tgt_len = np.diff(index[self.tgt_row:self.tgt_row + self.n + 1]) + 1
        self.size = np.maximum(self.src_len, self.tgt_len)
        # longer than the model's positions (data.max_positions, set by the trainer): left out
        self.too_long = self.size > (data.max_positions or np.iinfo(np.int64).max)


def overlong_examples(data: PreparedData, split: str, source_tag: bool = False,
                      target_tag: str = "decoder") -> list[str]:
    """The lines of ``split``'s pair files longer than ``data.max_positions`` in some direction
    (tags and eos included), which batches leave out: "FILE line N (T positions)" of the side that
    is too long, FILE named as in the corpus; one entry a line, in file order."""
    if data.max_positions is None or split not in data.splits:
        return []
    found: dict[tuple[str, int], str] = {}
    for d in data.eval_directions(split):
        v = _View(data, split, d, 0, source_tag, target_tag)
        pair = data.pair_name(split, d)
        for i in np.flatnonzero(v.too_long).tolist():
            lang, n = (d[0], v.src_len[i]) if v.src_len[i] > data.max_positions else (d[1], v.tgt_len[i])
            found.setdefault((pair, i), f"{split}.{pair}.{lang} line {i + 1} ({n} positions)")
    return [found[k] for k in sorted(found)]


def _gather(tokens: np.ndarray, index: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lines ``rows`` of a split: (flat int64 token values, lengths)."""
    starts = index[rows]
    lens = index[rows + 1] - starts
    shift = np.repeat(starts - (np.cumsum(lens) - lens), lens)
    return tokens[np.arange(int(lens.sum())) + shift].astype(np.int64), lens


def _place(out: np.ndarray, flat: np.ndarray, lens: np.ndarray, col0: int) -> None:
    """out[r, col0 + j] = j-th value of row r, for a ragged (flat, lens) over all rows."""
    within = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
    out[np.repeat(np.arange(len(lens)), lens), col0 + within] = flat


class _Collator:
    """Pads examples (view v, index i) of one split into a Batch, vectorized over the batch."""

    def __init__(self, data: PreparedData, split: str, views: list[_View]):
        self.tokens, self.index = data.split_arrays(split)
        self.src_row = np.array([v.src_row for v in views], dtype=np.int64)
        self.tgt_row = np.array([v.tgt_row for v in views], dtype=np.int64)
        self.prefix = np.stack([v.prefix for v in views])  # [V, k]: same k for all views
        self.start = np.array([v.start for v in views], dtype=np.int64)
        self.task = np.array([v.task for v in views], dtype=np.int64)
        tok = data.tokenizer
        self.pad, self.eos = tok.pad, tok.eos

    def __call__(self, vidx: np.ndarray, eidx: np.ndarray) -> Batch:
        vidx = np.asarray(vidx, dtype=np.int64)
        eidx = np.asarray(eidx, dtype=np.int64)
        B, k = len(eidx), self.prefix.shape[1]
        sf, sl = _gather(self.tokens, self.index, self.src_row[vidx] + eidx)
        tf, tl = _gather(self.tokens, self.index, self.tgt_row[vidx] + eidx)
        rows = np.arange(B)
        src = np.full((B, k + int(sl.max()) + 1), self.pad, dtype=np.int64)
        src[:, :k] = self.prefix[vidx]
        _place(src, sf, sl, k)
        src[rows, k + sl] = self.eos
        L = int(tl.max()) + 1
        tin = np.full((B, L), self.pad, dtype=np.int64)
        tout = np.full((B, L), self.pad, dtype=np.int64)
        tin[:, 0] = self.start[vidx]
        _place(tin, tf, tl, 1)
        _place(tout, tf, tl, 0)
        tout[rows, tl] = self.eos
        return Batch(torch.from_numpy(src), torch.from_numpy(tin), torch.from_numpy(tout),
                     torch.from_numpy(self.task[vidx]), torch.from_numpy(eidx.copy()), int(tl.sum()) + B,
                     self.pad)


def _cut(sizes: np.ndarray, max_tokens: int, max_sentences: int | None) -> np.ndarray:
    """Boundaries [0, j1, ..., n] of greedy batches over ascending ``sizes`` (all ≤ max_tokens)."""
    n = len(sizes)
    bounds = [0]
    i = 0
    cap = max_sentences or n
    while i < n:
        w = min(n - i, max_tokens // int(sizes[i]), cap)
        cost = np.arange(1, w + 1) * sizes[i:i + w]  # non-decreasing: sizes are sorted
        i += int(np.searchsorted(cost, max_tokens, side="right"))
        bounds.append(i)
    return np.asarray(bounds, dtype=np.int64)


def length_bounds(sizes: np.ndarray, max_tokens: int, max_sentences: int | None = None) -> list[int]:
    """Boundaries of batches over ascending ``sizes`` for decoding: greedy ≤ ``max_tokens``
    batches, and every example larger than ``max_tokens`` in a batch of its own (never dropped)."""
    fit = int(np.searchsorted(sizes, max_tokens, side="right"))
    return list(_cut(sizes[:fit], max_tokens, max_sentences)) + list(range(fit + 1, len(sizes) + 1))


def check_budget(max_tokens, max_sentences=None):
    check_int("max_tokens", max_tokens, 1)
    check_int("max_sentences", max_sentences, 1, allow_none=True)


class TrainSampler:
    """Infinite deterministic iterator of training ``Batch``es (see module docstring).

    data: PreparedData; max_tokens: budget per batch (padding included); temperature: T
    of the direction sampling; seed; mixed: mix directions inside a batch; rank /
    world_size: this process's share; split: which split to stream; source_tag: also
    prepend ``<2src>``; target_tag: where ``<2tgt>`` goes (``decoder``: first decoder
    input; ``encoder``: source prefix); max_sentences: optional cap on examples per batch;
    pool_batches: bucketing pool size of mixed mode, in batches; upsample: {kind: N}
    repeats of the examples of that kind in every epoch (needs the kinds manifest).
    """

    def __init__(self, data: PreparedData, max_tokens: int, temperature: float = 5.0, seed: int = 0,
                 mixed: bool = False, rank: int = 0, world_size: int = 1, split: str = "train",
                 source_tag: bool = False, max_sentences: int | None = None, pool_batches: int = 64,
                 target_tag: str = "decoder", upsample: dict[str, int] | None = None):
        check_budget(max_tokens, max_sentences)
        check_target_tag(target_tag)
        check_int("world_size", world_size, 1)
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank: must be in [0, {world_size}), got {rank!r}")
        check_int("seed", seed, 0)
        check_int("pool_batches", pool_batches, 1)
        self.data = data
        self.max_tokens = int(max_tokens)
        self.max_sentences = max_sentences
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.mixed = bool(mixed)
        self.rank, self.world_size = rank, world_size
        self.split = split
        self.source_tag = bool(source_tag)
        self.target_tag = target_tag
        self.pool_batches = pool_batches
        self.upsample = dict(upsample) if upsample else None

        self.directions = [d for d in data.directions if data.num_examples(split, d) > 0]
        if not self.directions:
            raise ValueError(f"split: no training direction has {split!r} data in {data.root}")
        self.views = [_View(data, split, d, data.task_id(d), self.source_tag, target_tag) for d in self.directions]
        self._collate = _Collator(data, split, self.views)
        self.probabilities = temperature_probs([v.n for v in self.views], self.temperature)
        self.num_skipped = 0
        self._fit = [np.flatnonzero((v.size <= self.max_tokens) & ~v.too_long) for v in self.views]
        for v in self.views:
            if v.too_long.all():
                raise ValueError(f"max_positions: every {split} example of {direction_name(v.direction)} is longer "
                                 f"than the model's {data.max_positions} positions")
            over = int((v.size > self.max_tokens).sum())
            if over == v.n:
                raise ValueError(f"max_tokens: {self.max_tokens} is smaller than every example of "
                                 f"{direction_name(v.direction)} (shortest: {int(v.size.min())} tokens)")
            if over:
                log.warning("sampler: %d example(s) of %s exceed max_tokens=%d and are skipped",
                            over, direction_name(v.direction), self.max_tokens)
            self.num_skipped += over
        if self.upsample:
            self._upsample_fit()
        mean = float(np.average([v.size.mean() for v in self.views], weights=self.probabilities))
        self._pool_examples = max(1, int(pool_batches * self.max_tokens / mean))
        self._shard_cache: dict[int, tuple[int, np.ndarray]] = {}
        self._epoch_cache: dict[int, tuple[int, tuple]] = {}
        self._block: tuple[int, np.ndarray] | None = None
        self._reset()

    def _upsample_fit(self) -> None:
        """Repeat each example of ``_fit`` as ``upsample`` says for its kind."""
        for kind, n in self.upsample.items():
            if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
                raise ValueError(f"upsample: the factor of {kind!r} must be an int >= 1, got {n!r}")
        kinds = [self.data.kinds(self.split, v.direction) for v in self.views]
        missing = [direction_name(v.direction) for v, k in zip(self.views, kinds) if k is None]
        if missing:
            raise ValueError(f"upsample: no kinds manifest (sources.{{split}}.{{pair}} in the corpus) for {missing}")
        unknown = set(self.upsample) - {k for ks in kinds for k in ks}
        if unknown:
            raise ValueError(f"upsample: no {self.split} example has kind(s) {sorted(unknown)}")
        for d, ks in enumerate(kinds):
            reps = np.array([self.upsample.get(k, 1) for k in ks], dtype=np.int64)
            self._fit[d] = np.repeat(self._fit[d], reps[self._fit[d]])

    # --------------------------------------------------------------- shards
    def _shard(self, d: int, epoch: int) -> np.ndarray:
        """This rank's examples of direction d in ``epoch``, shuffled (only those ≤ max_tokens)."""
        hit = self._shard_cache.get(d)
        if hit is not None and hit[0] == epoch:
            return hit[1]
        fit = self._fit[d]
        perm = fit[np.random.default_rng([self.seed, 1, d, epoch]).permutation(len(fit))]
        W = self.world_size
        if len(perm) % W:
            perm = np.resize(perm, -(-len(perm) // W) * W)
        shard = perm[self.rank::W]
        self._shard_cache[d] = (epoch, shard)
        return shard

    def _epoch_batches(self, d: int, epoch: int):
        """Homogeneous mode: (examples sorted by size, bounds, batch order) of d in ``epoch``."""
        hit = self._epoch_cache.get(d)
        if hit is not None and hit[0] == epoch:
            return hit[1]
        shard = self._shard(d, epoch)
        order = shard[np.argsort(self.views[d].size[shard], kind="stable")]
        bounds = _cut(self.views[d].size[order], self.max_tokens, self.max_sentences)
        rng = np.random.default_rng([self.seed, 2, d, epoch, self.rank])
        out = (order, bounds, rng.permutation(len(bounds) - 1))
        self._epoch_cache[d] = (epoch, out)
        return out

    # ---------------------------------------------------------------- state
    def _reset(self) -> None:
        D = len(self.views)
        self._streams = np.zeros((D, 2), dtype=np.int64)  # per direction: (epoch, position)
        self._step = 0  # homogeneous: batches produced
        self._pool_index = 0  # mixed: pools started
        self._pool_start = self._streams.copy()
        self._pool: list[tuple[np.ndarray, np.ndarray]] = []
        self._consumed = 0

    def _config(self) -> dict:
        return {"max_tokens": self.max_tokens, "max_sentences": self.max_sentences,
                "temperature": self.temperature, "seed": self.seed, "mixed": self.mixed,
                "rank": self.rank, "world_size": self.world_size, "split": self.split,
                "source_tag": self.source_tag, "target_tag": self.target_tag, "pool_batches": self.pool_batches,
                "upsample": self.upsample,
                "directions": [direction_name(v.direction) for v in self.views],
                "sizes": [v.n for v in self.views]}

    def state_dict(self) -> dict:
        """Plain-Python state (JSON/pickle friendly) to resume the same stream."""
        state = {"config": self._config(), "step": self._step}
        if self.mixed:
            state.update(pool_index=self._pool_index, consumed=self._consumed,
                         streams=self._pool_start.tolist())
        else:
            state["streams"] = self._streams.tolist()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``; ValueError if the sampler settings differ."""
        if not isinstance(state, dict) or "config" not in state:
            raise ValueError("state: expected a dict from TrainSampler.state_dict()")
        mine = self._config()
        saved = {"target_tag": "encoder", "upsample": None, **state["config"]}  # states from before those options
        diff = [k for k in mine if saved.get(k) != mine[k]]
        if diff:
            raise ValueError(f"state: sampler settings differ from the saved ones in {diff}")
        self._reset()
        self._step = int(state["step"])
        streams = np.asarray(state["streams"], dtype=np.int64).reshape(len(self.views), 2)
        if self.mixed:
            self._pool_index = int(state["pool_index"])
            consumed = int(state["consumed"])
            if self._pool_index > 0:
                self._pool_index -= 1
                self._streams = streams
                self._build_pool()
                self._pool = self._pool[consumed:]
                self._consumed = consumed
        else:
            self._streams = streams

    # ------------------------------------------------------------- iterate
    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self._next_mixed() if self.mixed else self._next_homogeneous()

    def _next_homogeneous(self) -> Batch:
        block, k = divmod(self._step, _BLOCK)
        if self._block is None or self._block[0] != block:
            rng = np.random.default_rng([self.seed, 3, self.rank, block])
            self._block = (block, rng.choice(len(self.views), size=_BLOCK, p=self.probabilities))
        d = int(self._block[1][k])
        epoch, pos = (int(x) for x in self._streams[d])
        order, bounds, perm = self._epoch_batches(d, epoch)
        b = int(perm[pos])
        eidx = order[bounds[b]:bounds[b + 1]]
        pos += 1
        if pos == len(perm):
            epoch, pos = epoch + 1, 0
        self._streams[d] = (epoch, pos)
        self._step += 1
        return self._collate(np.full(len(eidx), d), eidx)

    def _take(self, d: int, count: int) -> np.ndarray:
        """Next ``count`` examples of direction d's stream (crossing epochs as needed)."""
        parts = []
        epoch, pos = (int(x) for x in self._streams[d])
        while count > 0:
            shard = self._shard(d, epoch)
            got = shard[pos:pos + count]
            parts.append(got)
            count -= len(got)
            pos += len(got)
            if pos >= len(shard):
                epoch, pos = epoch + 1, 0
        self._streams[d] = (epoch, pos)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _build_pool(self) -> None:
        self._pool_start = self._streams.copy()
        rng = np.random.default_rng([self.seed, 4, self.rank, self._pool_index])
        D = len(self.views)
        counts = np.bincount(rng.choice(D, size=self._pool_examples, p=self.probabilities), minlength=D)
        vidx = np.repeat(np.arange(D), counts)
        eidx = np.concatenate([self._take(d, int(c)) for d, c in enumerate(counts)])
        sizes = np.concatenate([self.views[d].size[eidx[vidx == d]] for d in range(D)])
        mix = rng.permutation(len(eidx))
        vidx, eidx, sizes = vidx[mix], eidx[mix], sizes[mix]
        order = np.argsort(sizes, kind="stable")
        bounds = _cut(sizes[order], self.max_tokens, self.max_sentences)
        batches = [(vidx[order[a:b]], eidx[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]
        self._pool = [batches[i] for i in rng.permutation(len(batches))]
        self._pool_index += 1
        self._consumed = 0

    def _next_mixed(self) -> Batch:
        if not self._pool:
            self._build_pool()
        vidx, eidx = self._pool.pop(0)
        self._consumed += 1
        self._step += 1
        return self._collate(vidx, eidx)


def eval_batches(data: PreparedData, split: str, direction: DirectionLike, max_tokens: int,
                 source_tag: bool = False, max_examples: int | None = None,
                 task: int | None = None, max_sentences: int | None = None,
                 target_tag: str = "decoder") -> Iterator[Batch]:
    """All examples of ``direction`` in ``split`` (the first ``max_examples`` if given),
    sorted by size into ≤ max_tokens batches; ``batch.ids`` restore the file order.

    An example larger than ``max_tokens`` gets a batch of its own (over budget, never
    dropped). source_tag / target_tag: the tag layout (module docstring). task: id written
    into ``batch.task``; default the direction's training task id, or -1 for a direction
    that is not trained (zero-shot): the caller decides which masks such a direction uses.
    """
    check_budget(max_tokens, max_sentences)
    d = as_direction(direction)
    if task is None:
        task = data.task_id(d) if d in data.directions else -1
    view = _View(data, split, d, int(task), source_tag, target_tag)
    collate = _Collator(data, split, [view])
    n = view.n if max_examples is None else min(view.n, int(max_examples))
    order = np.argsort(view.size[:n], kind="stable")
    order = order[~view.too_long[order]]  # longer than the model's positions (data.max_positions)
    bounds = length_bounds(view.size[order], max_tokens, max_sentences)
    for a, b in zip(bounds[:-1], bounds[1:]):
        eidx = order[a:b]
        yield collate(np.zeros(len(eidx), dtype=np.int64), eidx)
