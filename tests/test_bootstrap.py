"""The fast paired bootstrap equals sacrebleu's PairedTest (scores and p-values), on random systems."""
import random

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from neuronspec.nmt import bootstrap as bs

WORDS = ("the a cat dog sat on mat house red blue green runs quickly slowly over under tree river "
         "Haus Katze läuft schnell über dem Fluss ёлка дом").split()


def _systems(n: int, seed: int, noise_a: float, noise_b: float):
    rnd = random.Random(seed)
    refs = [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 18))) for _ in range(n)]

    def noisy(line: str, p: float) -> str:
        words = [w if rnd.random() > p else rnd.choice(WORDS) for w in line.split()]
        if rnd.random() < p / 2:
            words = words[: max(1, len(words) // 2)]
        return " ".join(words)

    return [noisy(r, noise_a) for r in refs], [noisy(r, noise_b) for r in refs], refs


def _sacrebleu(a, b, refs, n_samples):
    metrics = {"bleu": BLEU(tokenize="13a"), "chrf": CHRF(word_order=2)}
    _, scores = PairedTest([("A", a), ("B", b)], metrics, references=[refs], test_type="bs", n_samples=n_samples)()
    keys = [k for k in scores if k != "System"]
    return {m: (scores[k][0].score, scores[k][1].score, scores[k][1].p_value) for m, k in zip(("bleu", "chrf"), keys)}


def _ours(a, b, refs, n_samples):
    stats = {m: tuple(bs.line_stats(m, [a, b], refs)) for m in bs.METRICS}
    return bs.paired_test_stats(stats, n_samples=n_samples)


@pytest.mark.parametrize("n,seed,noise_a,noise_b,n_samples", [
    (1, 0, 0.5, 0.2, 50), (7, 1, 0.4, 0.4, 200), (150, 2, 0.5, 0.4, 1000), (333, 3, 0.3, 0.31, 1000),
    (90, 4, 0.2, 0.6, 130)])
def test_equal_to_sacrebleu_paired_test(n, seed, noise_a, noise_b, n_samples):
    a, b, refs = _systems(n, seed, noise_a, noise_b)
    want, got = _sacrebleu(a, b, refs, n_samples), _ours(a, b, refs, n_samples)
    for m, (score_a, score_b, p) in want.items():
        assert got[f"{m}_a"] == pytest.approx(score_a, abs=1e-9)
        assert got[f"{m}_b"] == pytest.approx(score_b, abs=1e-9)
        assert got[f"p_{m}"] == p, m  # same draws, same statistic: exactly equal


def test_equal_to_sacrebleu_with_another_seed(monkeypatch):
    monkeypatch.setenv("SACREBLEU_SEED", "7")
    a, b, refs = _systems(120, 5, 0.45, 0.35)
    want, got = _sacrebleu(a, b, refs, 300), _ours(a, b, refs, 300)
    assert [got[f"p_{m}"] for m in want] == [p for _, _, p in want.values()]


def test_chunked_draws_equal_one_draw():
    stats = np.arange(3 * 203).reshape(203, 3) % 11
    sums = bs.resampled_sums(stats, 150, seed=12345)  # 150 rows: three chunks, the last partial
    idx = np.random.default_rng(12345).choice(203, size=(150, 203), replace=True)
    np.testing.assert_array_equal(sums, stats[idx].sum(1))


def test_identical_systems_are_reported_as_identical_not_significant():
    a, _, refs = _systems(60, 6, 0.4, 0.4)
    got = _ours(a, list(a), refs, 200)
    assert got["identical"] and got["p_bleu"] == 1.0 and got["p_chrf"] == 1.0
    assert got["d_bleu"] == 0 and got["d_chrf"] == 0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="hypotheses vs"):
        bs.line_stats("bleu", [["a", "b"], ["a"]], ["a", "b"])
    with pytest.raises(ValueError, match="n_samples"):
        bs.paired_test_stats({"bleu": (np.ones((2, 10)), np.ones((2, 10)))}, n_samples=0)
    with pytest.raises(ValueError, match="different numbers of lines"):
        bs.paired_test_stats({"bleu": (np.ones((2, 10)), np.ones((3, 10)))})
    with pytest.raises(ValueError, match="unknown metric"):
        bs.new_metric("ter")


def test_compare_pooled_directions_equal_sacrebleu_on_the_concatenation():
    """evaluate --compare's pooled test (statistics stacked per direction) = PairedTest on all lines."""
    from neuronspec.nmt import compare

    parts = [_systems(n, seed, 0.4, 0.33) for n, seed in ((40, 8), (75, 9), (1, 10))]
    stats = [compare.line_stats(a, b, r) for a, b, r in parts]
    got = compare.paired_test_from_stats(compare._pool(stats), identical=False, n_samples=400)
    a, b, refs = (sum((list(p[i]) for p in parts), []) for i in range(3))
    want = _sacrebleu(a, b, refs, 400)
    assert [got[f"p_{m}"] for m in want] == [p for _, _, p in want.values()]
    assert [got[f"{m}_b"] for m in want] == pytest.approx([s for _, s, _ in want.values()], abs=1e-9)
    assert compare.paired_test(a, b, refs, 400)["p_chrf"] == want["chrf"][2]
    with pytest.raises(ValueError, match="no lines"):
        compare.paired_test([], [], [])


def test_line_stats_reuses_equal_lines_and_parallel_extraction_is_the_same():
    a, b, refs = _systems(1200, 11, 0.4, 0.3)
    b[::3] = a[::3]  # a third of the lines equal: taken from A's statistics
    for m in bs.METRICS:
        one = bs.line_stats(m, [a, b], refs)
        alone = [bs.line_stats(m, [s], refs)[0] for s in (a, b)]
        np.testing.assert_array_equal(one[0], alone[0])
        np.testing.assert_array_equal(one[1], alone[1])
    jobs = [((a[:700], b[:700]), refs[:700]), ((a[700:], b[700:]), refs[700:]), ((a[:5], b[:5]), refs[:5])]
    serial = [bs._job_stats(j) for j in jobs]
    parallel = bs.line_stats_many(jobs, workers=2)  # 1,405 lines: below the pool's threshold
    many = bs.line_stats_many(jobs * 2, workers=2)  # 2,810 lines: in two processes
    for got in (parallel, many[:3], many[3:]):
        for s, g in zip(serial, got):
            for m in bs.METRICS:
                np.testing.assert_array_equal(s[m][0], g[m][0])
                np.testing.assert_array_equal(s[m][1], g[m][1])
