"""Decoding speed: a specialized model (per-direction FFN masks) vs the same weights dense.

Providers, timed interleaved (each round runs every provider once, the order rotating):
  dense       the model without masks
  masked      with masks: beam/greedy search run each masked FFN as its direction's dense block over the
              kept neurons, gathered once per search (Transformer.direction_ffns, DirectionFFN)
  masked-op   with masks through the masked_ffn op on every call (the path before DirectionFFN: checks,
              routing and dispatch per call, gathered rows reused inside ops.reuse_gathered_weights)
Workload: `--batches` batches of `--sentences` random source sentences of `--src-len` tokens, one
direction per batch (as `translate` and `evaluate` decode), beam `--beam` (1: greedy). EOS is banned
until the length limit (min_len), so every provider decodes exactly the same number of steps.
Weights: `--checkpoint` (a specialized checkpoint: its weights and masks, e.g. the demo's
runs/demo/specialized/checkpoint_last.pt) or a random tiny model with random masks keeping `--kept`.
Reported: median seconds per round and the median of per-round ratios dense / provider (> 1: faster).

    python benchmarks/bench_decode.py --beam 5,1 --rounds 7 --threads 2 --out benchmarks/results/cpu
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing as tm  # noqa: E402

from neuronspec.nmt.checkpoint import load_model  # noqa: E402
from neuronspec.nmt.decode import beam_search, greedy_search  # noqa: E402
from neuronspec.nmt.model import ModelConfig, Transformer  # noqa: E402
from neuronspec.nmt.speed import random_masks_kept  # noqa: E402
from neuronspec.ops import reuse_gathered_weights  # noqa: E402


def build_models(args) -> tuple[Transformer, Transformer, str]:
    """(dense, masked) copies of the same weights, and a description of them."""
    if args.checkpoint:
        masked, _ = load_model(args.checkpoint)
        if not masked.masks():
            raise ValueError(f"--checkpoint: {args.checkpoint} has no masks (give a specialized checkpoint)")
        what = f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(0)
        masked = Transformer(ModelConfig.from_preset("tiny", args.vocab, dropout=0.0))
        widths = {n: f.fc1.out_features for n, f in masked.ffn_layers().items()}
        masked.set_masks(random_masks_kept(widths, args.tasks, args.kept, seed=1))
        what = f"random tiny model (vocab {args.vocab}), random masks keeping {args.kept}"
    dense = Transformer(masked.cfg)
    dense.load_state_dict(masked.state_dict())
    kept = [float(m.fractions().mean()) for m in masked.masks().values()]
    return dense.eval(), masked.eval(), f"{what}; mean kept fraction {sum(kept) / len(kept):.3f}"


@contextmanager
def _op_path(model: Transformer, encoder_task, decoder_task):
    """Transformer.direction_ffns replaced by the op path (reused gathered rows, per-call dispatch)."""
    with reuse_gathered_weights():
        yield


def decoder(model: Transformer, batches: list[torch.Tensor], beam: int, num_tasks: int, op_path: bool = False):
    """A callable decoding every batch (batch i as direction i mod num_tasks)."""
    def run():
        if op_path:
            model.direction_ffns = _op_path.__get__(model)
        try:
            for i, src in enumerate(batches):
                kw = dict(min_len=10**6, max_len_a=1.0, max_len_b=5)
                if beam == 1:
                    greedy_search(model, src, i % num_tasks, **kw)
                else:
                    beam_search(model, src, i % num_tasks, beam=beam, **kw)
        finally:
            if op_path:
                del model.direction_ffns
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="specialized checkpoint (default: a random tiny model)")
    p.add_argument("--kept", type=float, default=0.9, help="kept fraction of the random masks (default 0.9)")
    p.add_argument("--tasks", type=int, default=8, help="directions of the random masks (default 8)")
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--beam", default="5,1", help="beam sizes, comma-separated (1 = greedy)")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--sentences", type=int, default=16, help="sentences per batch")
    p.add_argument("--src-len", type=int, default=15, help="source tokens per sentence")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help="folder for decode.{csv,json,md} (default: print only)")
    args = p.parse_args(argv)
    tm.setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        beams = tm.parse_list(args.beam, int, "--beam")
        dense, masked, what = build_models(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    num_tasks = next(iter(masked.masks().values())).num_tasks
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(4, masked.cfg.vocab_size, (args.sentences, args.src_len), generator=g)
               for _ in range(args.batches)]
    device = torch.device("cpu")
    meta = tm.machine_info(device)  # the load average before the rounds
    rows = []
    for beam in beams:
        fns = {"dense": decoder(dense, batches, beam, num_tasks), "masked": decoder(masked, batches, beam, num_tasks),
               "masked-op": decoder(masked, batches, beam, num_tasks, op_path=True)}
        stats = tm.measure(fns, device, repeats=args.rounds, warmup=1)
        for name, s in stats.items():
            ratio = tm.ratio_stats(stats["dense"], s)
            rows.append({"beam": beam, "provider": name, "median_s": tm.sig(s.median), "q1_s": tm.sig(s.q1),
                         "q3_s": tm.sig(s.q3), "speedup_vs_dense": tm.sig(ratio[0], 3),
                         "speedup_q1": tm.sig(ratio[1], 3), "speedup_q3": tm.sig(ratio[2], 3)})
    meta.update(benchmark="decode", models=what, batches=args.batches, sentences=args.sentences,
                src_len=args.src_len, rounds=args.rounds, load_avg_end=[round(v, 2) for v in os.getloadavg()])
    md = (f"# Decoding: masked vs dense\n\n{tm.device_label(meta)}; {what}; {args.batches} batches × "
          f"{args.sentences} sentences × {args.src_len} tokens, every hypothesis decoded to the length limit; "
          f"{args.rounds} interleaved rounds; load average {meta['load_avg_start']} → {meta['load_avg_end']}.\n\n"
          + tm.markdown_table(["beam", "provider", "median s", "speedup vs dense (q1–q3)"],
                              [(r["beam"], r["provider"], r["median_s"],
                                f"{r['speedup_vs_dense']}× ({r['speedup_q1']}–{r['speedup_q3']})") for r in rows]))
    print(md)
    if args.out:
        tm.write_results(args.out, "decode", rows, meta, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
