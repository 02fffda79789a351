"""Beam search with the cross-attention cache reordered every step (the old code) vs only when
sentences drop (commit bc42cb1): `translate_lines` (what `neuronspec translate` runs), beam 5,
same process, interleaved rounds; prints the time ratio and checks that the outputs are equal.

    python cross_cache.py CHECKPOINT PREPARED_FOLDER THREADS ROUNDS
"""
import statistics
import sys
import time

import torch

from neuronspec.data.corpus import PreparedData
from neuronspec.nmt.checkpoint import load_model
from neuronspec.nmt.model import Transformer
from neuronspec.nmt.translate import translate_lines

ckpt, prep, threads, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model, _ = load_model(ckpt)
data = PreparedData.load(prep)
lines = data.texts("valid", ("en", "de"))[0] + data.texts("test", ("en", "de"))[0]
real = Transformer.reorder_cache
every_step = staticmethod(lambda cache, order, cross="order": real(cache, order, "order"))


def run(old: bool):
    Transformer.reorder_cache = every_step if old else staticmethod(real)
    t0 = time.perf_counter()
    out = translate_lines(model, data, lines, "en-de", beam=5)
    return time.perf_counter() - t0, out


run(False)  # warm-up
times, outs = {True: [], False: []}, {}
for r in range(rounds):
    for old in ((True, False) if r % 2 == 0 else (False, True)):
        t, outs[old] = run(old)
        times[old].append(t)
    assert outs[True] == outs[False], "outputs differ"
o, n = statistics.median(times[True]), statistics.median(times[False])
print(f"{len(lines)} en-de lines (valid + test), beam 5, {threads} thread(s), {rounds} interleaved rounds: "
      f"cross-attention cache reordered every step {o:.2f} s, only when sentences drop {n:.2f} s (medians); "
      f"speedup {o / n:.3f}x; outputs equal")
print("rounds, every step:", [round(x, 2) for x in times[True]], "only on drops:", [round(x, 2) for x in times[False]])
