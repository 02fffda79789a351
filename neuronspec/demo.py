"""`neuronspec demo`: the whole Neuron-Specialization study on the built-in corpus.

build corpus → prepare → dense baseline (tiny preset) → evaluate it → record → select
(k, plus k = 0.7 for the published IoU trend, plus size-matched random masks) → analyze →
speed (dense vs specialized FFN and training step, timed here: nmt/speed.py) →
three continuations of the baseline with the *same* number of extra steps, fresh optimizer,
same batch stream: dense fine-tuning, random masks, specialized masks → evaluate them →
paired bootstrap tests (each continuation vs the baseline, specialized vs fine-tune and vs
random) → final table (BLEU / chrF++ per resource tier and average, Δ vs the baseline with
significance) and IoU plots.

Default: fixed steps (DENSE_STEPS for the baseline, EXTRA_STEPS per continuation) on 4 languages,
so the baseline translates and a busy machine takes longer instead of training less; CPU threads
are picked per phase (and every DENSE_CHUNK baseline steps) as the cores other jobs leave free.
With `--minutes` (the 8-language study: `--langs` FULL_LANGS): after corpus + preparation the
baseline gets `--dense-share` of what is left; the baseline's evaluation is timed and three more
are reserved; the rest goes to the three continuations, whose common step count comes from the
baseline's measured steps/s. Everything lands in `--out` (default runs/demo):

    results.md / results.json    final table, trends, speed, timings;  speed.png
    analysis/, analysis-k0.7/    IoU heatmaps, mean IoU by layer vs the paper, report.md
    dense/ finetune/ random/ specialized/   checkpoints;  eval/<arm>/  hypotheses + scores
    compare/<b>-vs-<a>/          paired bootstrap per direction and pooled (compare.md/.json)
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from neuronspec.atomic import strict_json, write_atomic
from neuronspec.checks import check_int
from neuronspec.data.binarize import prepare_corpus
from neuronspec.data.builtin_corpus import build_builtin_corpus
from neuronspec.data.languages import parse_langs
from neuronspec.nmt.compare import mark, write_compare
from neuronspec.nmt.config import TrainConfig
from neuronspec.nmt.checkpoint import load_model
from neuronspec.nmt.evaluate import evaluate_checkpoint
from neuronspec.nmt.speed import measure_speed, speed_markdown, speed_plot
from neuronspec.nmt.run_setup import native_bf16
from neuronspec.nmt.trainer import Trainer
from neuronspec.ops import save_layer_masks
from neuronspec.specialization.iou import trend, write_analysis
from neuronspec.specialization.record import record
from neuronspec.specialization.select import check_k, format_kept, random_masks, select_masks
from neuronspec.specialization.specialize import continue_training

log = logging.getLogger(__name__)

# 4 of the EC30 languages, 8 directions: every tier (high de/ru, medium it, low uk), three branches
# (Germanic, Romance, Slavic), two scripts, and one close pair (ru/uk). Few enough directions that the
# dense baseline translates after the default steps on 2 cores; FULL_LANGS is the 8-language study
# (`--langs` with `--minutes`).
DEFAULT_LANGS = "de,ru,it,uk"
FULL_LANGS = "de,fr,ru,he,it,bg,af,uk"
# Fixed step counts of the default run (no --minutes): a busy machine takes longer, not fewer steps.
DENSE_STEPS = 3000
EXTRA_STEPS = 400
# the continuations' peak learning rate, as a share of the baseline's (whose linear schedule ends at 0)
CONTINUATION_LR_SHARE = 0.25
SPEED_SECONDS = 3.0  # of interleaved timing per workload and masks (6 of them)
DENSE_CHUNK = 500  # baseline steps between two looks at the machine's load (set_threads)
ARMS = ("finetune", "random", "specialized")
MARKER = ".neuronspec-demo"
# (B, A): B tested against A
COMPARISONS = (("finetune", "baseline"), ("random", "baseline"), ("specialized", "baseline"),
               ("specialized", "finetune"), ("specialized", "random"))
PHASES = ("corpus", "prepare", "dense", "eval baseline", "record", "select", "analyze", "speed", *ARMS,
          "eval continued", "significance", "report")


class Clock:
    """Wall-clock budget (None: fixed steps, no budget) and per-phase timings."""

    def __init__(self, minutes: float | None):
        self.t0, self.phases = time.monotonic(), {}
        self.budget = None if minutes is None else 60.0 * minutes

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        """Seconds left of the budget (infinite without one)."""
        return math.inf if self.budget is None else self.budget - self.elapsed()

    def record(self, name: str, since: float) -> float:
        self.phases[name] = time.monotonic() - since
        return self.phases[name]


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _runnable_threads() -> tuple[int, int]:
    """(runnable threads on the machine, runnable threads of this process), from /proc."""
    with open("/proc/loadavg", encoding="ascii") as f:
        total = int(f.read().split()[3].split("/")[0])
    own = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat", encoding="ascii", errors="replace") as f:
                own += f.read().rsplit(")", 1)[1].split()[0] == "R"
        except OSError:  # the thread ended meanwhile
            continue
    return total, own


def other_jobs(samples: int = 20, interval: float = 0.05) -> float | None:
    """Mean number of other processes' runnable threads over `samples` looks `interval` s apart
    (None where /proc is missing). Unlike the load average, it leaves out this process's own
    threads, so it reads the same before and during the demo."""
    if not os.path.exists("/proc/loadavg"):
        return None
    busy = []
    for i in range(samples):
        total, own = _runnable_threads()
        busy.append(max(0, total - own))
        if i + 1 < samples:
            time.sleep(interval)
    return sum(busy) / len(busy)


def free_cores(n_cores: int, others: float | None) -> int:
    """Threads for torch: the cores that other jobs leave free (at least 1). More intra-op threads
    than free cores make each of the many small parallel regions of a tiny-model step wait for a
    descheduled thread (measured on 2 cores beside other jobs: 0.3 s/step with both cores free,
    5 s/step with 2 threads under a load of 5; 1.6 s/step with 1 thread vs 16 s/step with 2
    beside one busy process)."""
    if others is None:
        return n_cores
    return max(1, min(n_cores, n_cores - int(others + 0.5)))


def set_threads(fixed: int | None, where: str) -> int:
    """torch's intra-op threads for the next stretch of work: `fixed` (--threads) if given, else
    free_cores of what other jobs use right now (logged when it is fewer than the cores)."""
    if fixed is not None:
        n = fixed
    else:
        n_cores, others = cores(), other_jobs()
        n = free_cores(n_cores, others)
        if n < n_cores:
            log.warning("%s: other jobs keep %.1f of %d cores busy: %d thread(s); the steps stay the same, "
                        "the demo takes longer", where, others, n_cores, n)
    torch.set_num_threads(n)
    return n


def _check_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"out: {out} exists, is not empty and was not written by `neuronspec demo`; "
                         "choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by neuronspec demo\n", encoding="utf-8")


def _pick(res: dict, key: str, metric: str):
    a = res["averages"].get(key)
    return None if a is None else a[metric]


def results_table(evals: dict[str, dict], steps: dict[str, int], tests: dict | None = None) -> tuple[str, list[dict]]:
    """Markdown table: one row per arm, BLEU / chrF++ for high / medium / low / all, Δ vs baseline
    (starred where the paired bootstrap over all supervised test lines gives p < 0.05)."""
    cols = [k for k in ("high", "medium", "low", "all") if any(k in r["averages"] for r in evals.values())]
    base = evals["baseline"]
    rows = []
    head = "| model | extra steps | " + " | ".join(f"BLEU {c}" for c in cols) + " | " + \
        " | ".join(f"chrF++ {c}" for c in cols) + " | ΔBLEU | ΔchrF++ |"
    lines = [head, "|" + "---|" * (4 + 2 * len(cols))]
    for name, res in evals.items():
        row = {"model": name, "extra_steps": steps.get(name, 0)}
        cells = []
        for metric in ("bleu", "chrf"):
            for c in cols:
                v = _pick(res, c, metric)
                row[f"{metric}_{c}"] = v
                cells.append("–" if v is None else f"{v:.2f}")
        row["d_bleu"] = row["bleu_all"] - _pick(base, "all", "bleu")
        row["d_chrf"] = row["chrf_all"] - _pick(base, "all", "chrf")
        pooled = ((tests or {}).get((name, "baseline")) or {}).get("pooled", {}).get("supervised")
        if pooled:
            row.update(p_bleu=pooled["p_bleu"], p_chrf=pooled["p_chrf"])
        star = {m: "*" if pooled and pooled["significant"][m] else "" for m in ("bleu", "chrf")}
        rows.append(row)
        d = "" if name == "baseline" else f"{row['d_bleu']:+.2f}{star['bleu']} | {row['d_chrf']:+.2f}{star['chrf']}"
        lines.append(f"| {name} | {row['extra_steps']} | " + " | ".join(cells) + f" | {d or '– | –'} |")
    return "\n".join(lines), rows


def significance_lines(tests: dict) -> list[str]:
    """One line per comparison: pooled Δ with p, and directions significantly better either way."""
    out = []
    for (b, a), c in tests.items():
        parts = []
        for group, r in c["pooled"].items():
            parts.append(f"{group} ({r['n']} lines): ΔBLEU {mark(r['d_bleu'], r['p_bleu'])} (p {r['p_bleu']:.3f}), "
                         f"ΔchrF++ {mark(r['d_chrf'], r['p_chrf'])} (p {r['p_chrf']:.3f})")
        w = c["wins"]["chrf"]
        out.append(f"- {b} vs {a}: " + "; ".join(parts) + f"; chrF++ significantly better in {w['b_better']} "
                   f"directions, worse in {w['a_better']}, of {w['directions']}")
    return out


def verdicts(evals: dict[str, dict], analyses: dict[str, dict]) -> list[str]:
    """The seed's expectations, as observed here (not assumed)."""
    out = []
    for label, res in analyses.items():
        enc, dec = trend(res["encoder"]), trend(res["decoder"])
        out.append(f"IoU ({label}): encoder {enc} with depth (paper: rising) — "
                   f"{'held' if enc == 'rising' else 'did not hold'}; decoder {dec} (paper: falling) — "
                   f"{'held' if dec == 'falling' else 'did not hold'}.")
    if all(a in evals for a in ARMS):
        for metric, name in (("chrf", "chrF++"), ("bleu", "BLEU")):
            s, f, r = (_pick(evals[a], "all", metric) for a in ("specialized", "finetune", "random"))
            held = s >= f >= r
            out.append(f"{name}: specialized {s:.2f}, fine-tune {f:.2f}, random {r:.2f} — "
                       f"specialized ≥ fine-tune ≥ random {'held' if held else 'did not hold'}.")
    return out


@dataclass
class DemoConfig:
    """Every setting of a demo run (the CLI's options; see configure_parser for their meaning)."""
    out: Path = Path("runs/demo")
    langs: str = DEFAULT_LANGS
    minutes: float | None = None
    vocab_size: int = 4000
    k: float = 0.95
    beam: int = 1
    eval_sentences: int | None = 100
    record_sentences: int = 100
    max_tokens: int | None = None
    dense_share: float = 0.5
    dense_steps: int | None = None
    extra_steps: int | None = None
    warmup: int | None = None
    valid_sentences: int = 50
    seed: int = 1
    device: str = "auto"
    threads: int | None = None
    speed: bool = True
    progress: bool = True

    def __post_init__(self):
        """Checked before anything runs (a bad k must not cost a dense baseline first). Without
        `minutes`, unset step counts take the defaults DENSE_STEPS / EXTRA_STEPS."""
        self.out, self.k = Path(self.out), check_k(self.k)
        if self.minutes is not None and (not isinstance(self.minutes, (int, float)) or
                                         not math.isfinite(self.minutes) or self.minutes <= 0):
            raise ValueError(f"minutes: must be a finite number > 0 (or None: fixed steps), got {self.minutes!r}")
        if not 0 < self.dense_share < 1:
            raise ValueError(f"dense_share: must lie in (0, 1), got {self.dense_share!r}")
        check_int("max_tokens", self.max_tokens, 1, allow_none=True)
        for name in ("dense_steps", "extra_steps", "threads"):
            check_int(name, getattr(self, name), 1, allow_none=True)
        if self.minutes is None:
            self.dense_steps = self.dense_steps or DENSE_STEPS
            self.extra_steps = self.extra_steps or EXTRA_STEPS


def run_demo(out: str | os.PathLike = "runs/demo", **settings) -> dict:
    """Run the study (see module docstring) with DemoConfig(out, **settings); returns the
    results dict also saved as results.json."""
    cfg = DemoConfig(Path(out), **settings)
    codes = parse_langs(cfg.langs)
    previous = torch.get_num_threads()
    try:
        return _study(cfg, codes)
    finally:
        torch.set_num_threads(previous)


def _study(cfg: DemoConfig, codes: list[str]) -> dict:
    """The study's phases in order (see the module docstring); returns write_report's results."""
    run = _start(cfg, codes)
    _build_data(run)
    dense, peak_lr, steps_per_s = _dense_baseline(run)
    with run.phase("eval baseline"):
        evals = {"baseline": _evaluate(run, "baseline", dense["checkpoint"])}
    counts = _record(run, dense["checkpoint"])
    masks, masks_07, rand = _select(run, counts)
    analyses = _analyze(run, masks, masks_07, counts["meta"]["pivot"])
    speed = _speed(run, dense["checkpoint"], masks) if cfg.speed else None
    extra_steps = _extra_steps(run, run.clock.phases["eval baseline"], steps_per_s)
    cont = continuation_settings(cfg, run.dev, peak_lr, extra_steps)
    ckpts, steps = _continuations(run, dense["checkpoint"], {"finetune": None, "random": rand, "specialized": masks},
                                  extra_steps, cont)
    with run.phase("eval continued"):
        for arm in ARMS:
            evals[arm] = _evaluate(run, arm, ckpts[arm])
    with run.phase("significance"):
        tests = {(b, a): write_compare(cfg.out / "eval" / a, cfg.out / "eval" / b, cfg.out / "compare" / f"{b}-vs-{a}")
                 for b, a in COMPARISONS}
    with run.phase("report"):
        res = write_report(cfg, codes, counts["directions"], run.threads, run.dev, dense["step"], extra_steps, evals,
                           steps, tests, analyses, run.clock, speed)
    run.bar.close()
    return res


@dataclass
class _Run:
    """One demo run's context: its settings, languages, resolved device, clock, phase bar and the CPU
    threads used ({stretch of work: threads}, one entry per phase and per chunk of the baseline)."""
    cfg: DemoConfig
    codes: list[str]
    dev: str
    clock: Clock
    bar: tqdm
    threads: dict[str, int]

    def use_threads(self, where: str) -> None:
        """set_threads for the work `where` names (recorded in self.threads)."""
        self.threads[where] = set_threads(self.cfg.threads, where)

    @contextmanager
    def phase(self, name: str):
        """One phase of PHASES: threads set and logged at its start, timed into clock.phases and
        ticked on the bar at its end."""
        self.bar.set_description(f"demo: {name}")
        self.use_threads(name)
        budget = "" if self.cfg.minutes is None else f" of {self.cfg.minutes:.1f}"
        log.info("=== %s (%.1f%s min used, %d thread(s), load average %s)", name, self.clock.elapsed() / 60, budget,
                 self.threads[name], _loadavg())
        t = time.monotonic()
        yield
        s = self.clock.record(name, t)
        self.bar.update(1)
        log.info("    %s took %.1f s", name, s)


def _start(cfg: DemoConfig, codes: list[str]) -> _Run:
    """Claim the output folder, start the clock and the phase bar; returns the run's context."""
    _check_out(cfg.out)
    clock = Clock(cfg.minutes)
    auto = cfg.device == "auto"
    dev = "cuda" if auto and torch.cuda.is_available() else ("cpu" if auto else cfg.device)
    log.info("demo on %s, %d cores, threads %s (load average %s)", dev, cores(),
             cfg.threads or "per phase: the cores other jobs leave free", _loadavg())
    bar = tqdm(total=len(PHASES) - (not cfg.speed), desc="demo", unit="phase", disable=not cfg.progress, position=0)
    return _Run(cfg, codes, dev, clock, bar, {})


def _build_data(run: _Run) -> None:
    """Build the built-in corpus into out/corpus and prepare (tokenize, binarize) it into out/data."""
    out = run.cfg.out
    with run.phase("corpus"):
        build_builtin_corpus(out / "corpus", langs=run.codes, seed=0, progress=False)
    with run.phase("prepare"):
        prepare_corpus(out / "corpus", out / "data", vocab_size=run.cfg.vocab_size, progress=False)


def dense_train_config(cfg: DemoConfig, dev: str, seconds_left: float) -> TrainConfig:
    """The dense baseline's TrainConfig (tiny preset and its optimisation defaults: learning rate
    falling linearly to 0 at the end, EMA of the weights; out/data → out/dense): cfg.dense_steps
    steps, or else cfg.dense_share of the seconds left (at least 3 s)."""
    dense_minutes = None if cfg.dense_steps else max(0.05, cfg.dense_share * seconds_left / 60)
    return TrainConfig(data=str(cfg.out / "data"), out=str(cfg.out / "dense"), preset="tiny",
                       max_tokens=cfg.max_tokens, warmup=cfg.warmup, seed=cfg.seed,
                       max_steps=cfg.dense_steps, max_minutes=dense_minutes,
                       valid_every=0, valid_max_sentences=cfg.valid_sentences, valid_chrf_sentences=0, log_every=25,
                       device=dev, progress=cfg.progress)


def _dense_baseline(run: _Run) -> tuple[dict, float, float]:
    """Train the dense baseline; returns its train summary, its peak learning rate and its steps/s."""
    with run.phase("dense"):
        trainer = Trainer(dense_train_config(run.cfg, run.dev, run.clock.left()))
        t_train = time.monotonic()
        if trainer.cfg.max_steps is None:  # a time share of the budget
            summary = trainer.train()
        for end in chunk_ends(trainer.cfg.max_steps or 0, DENSE_CHUNK):  # threads re-picked between chunks
            if end > DENSE_CHUNK:
                run.use_threads(f"dense to step {end}")
            summary = trainer.train(steps=end)
        train_seconds = time.monotonic() - t_train
        peak_lr = trainer.cfg.lr
        steps_per_s = summary["step"] / max(train_seconds, 1e-6)
        del trainer
    log.info("dense baseline: %d steps in %.1f min (%.2f steps/s, load average %s)",
             summary["step"], train_seconds / 60, steps_per_s, _loadavg())
    return summary, peak_lr, steps_per_s


def chunk_ends(total: int, chunk: int) -> list[int]:
    """Step counts at which chunks of `chunk` steps end, the last at `total` ([] for 0)."""
    return [min(total, e) for e in range(chunk, total + chunk, chunk)] if total else []


def _evaluate(run: _Run, name: str, ckpt) -> dict:
    """Scores of checkpoint `ckpt` on the test split (hypotheses and scores in out/eval/<name>)."""
    cfg = run.cfg
    return evaluate_checkpoint(ckpt, str(cfg.out / "data"), "test", cfg.beam, cfg.eval_sentences,
                               out_dir=cfg.out / "eval" / name, device=run.dev, progress=cfg.progress)


def _record(run: _Run, ckpt) -> dict:
    """Activation counts of `ckpt` on the valid split (saved as out/counts.pt)."""
    cfg = run.cfg
    with run.phase("record"):
        return record(ckpt, cfg.out / "data", cfg.out / "counts.pt", split="valid",
                      max_sentences=cfg.record_sentences, max_tokens=4000, device=run.dev, progress=cfg.progress)


def _select(run: _Run, counts: dict) -> tuple[dict, dict, dict]:
    """Masks at k, at k = 0.7 and size-matched random ones (saved as out/masks*.pt); returns the three."""
    out, k, seed = run.cfg.out, run.cfg.k, run.cfg.seed
    with run.phase("select"):
        directions, pivot = counts["directions"], counts["meta"]["pivot"]
        masks = select_masks(counts["counts"], directions, k, pivot=pivot)
        masks_07 = select_masks(counts["counts"], directions, 0.7, pivot=pivot)
        rand = random_masks(masks, seed)
        save_layer_masks(masks, out / "masks.pt", {"kind": "selected", "k": k, "directions": directions,
                                                   "pivot": pivot})
        save_layer_masks(masks_07, out / "masks-k0.7.pt", {"kind": "selected", "k": 0.7, "directions": directions,
                                                           "pivot": pivot})
        save_layer_masks(rand, out / "masks-random.pt", {"kind": "random", "seed": seed, "directions": directions,
                                                         "pivot": pivot, "masks_like": "masks.pt"})
        log.info("kept fraction per layer (k=%s):\n%s", k, format_kept(masks))
    return masks, masks_07, rand


def _analyze(run: _Run, masks: dict, masks_07: dict, pivot) -> dict[str, dict]:
    """IoU analyses of the masks at k (out/analysis) and at k = 0.7 (out/analysis-k0.7), keyed "k=<k>"."""
    out, k = run.cfg.out, run.cfg.k
    with run.phase("analyze"):
        return {f"k={k}": write_analysis(masks, out / "analysis", {"k": k}, pivot),
                "k=0.7": write_analysis(masks_07, out / "analysis-k0.7", {"k": 0.7}, pivot)}


def _speed(run: _Run, dense_ckpt, masks: dict) -> dict:
    """The speed section's measurements (nmt/speed.py) on this machine's CPU: the trained baseline,
    dense vs with the demo's masks and with masks keeping p = 0.25 / 0.5; plot in out/speed.png."""
    with run.phase("speed"):
        model, ck = load_model(dense_ckpt)
        tokens = ck["config"]["max_tokens"]
        rows = measure_speed(model, masks, tokens=tokens, seconds=SPEED_SECONDS, bf16=native_bf16(torch.device("cpu")))
        speed_plot(rows, run.cfg.out / "speed.png")
    return {"rows": rows, "tokens": tokens, "threads": run.threads["speed"], "loadavg": _loadavg()}


def continuation_budget(seconds_left: float, eval_seconds: float, steps_per_s: float) -> tuple[int, float]:
    """Steps per continuation and seconds per continuation when three continuations share what is left
    after reserving three evaluations (as long as the baseline's) and 60 s for the tests and the report."""
    reserve = 3 * eval_seconds + 60.0
    per_arm = max(1.0, (seconds_left - reserve) / 3)
    return max(1, int(0.85 * per_arm * steps_per_s)), per_arm  # margin: start-up, validation, load


def _extra_steps(run: _Run, eval_seconds: float, steps_per_s: float) -> int:
    """Steps per continuation: cfg.extra_steps, or else continuation_budget of the time left (logged)."""
    if run.cfg.extra_steps is not None:
        return run.cfg.extra_steps
    extra_steps, per_arm = continuation_budget(run.clock.left(), eval_seconds, steps_per_s)
    log.info("%.0f s left: %d extra steps per continuation (%.0f s each at the baseline's speed)",
             run.clock.left(), extra_steps, per_arm)
    return extra_steps


def continuation_settings(cfg: DemoConfig, dev: str, peak_lr: float, extra_steps: int) -> dict:
    """continue_training's keyword arguments common to the three continuations: fresh warm-up (a
    quarter of the steps, 1 to 50) to CONTINUATION_LR_SHARE of the baseline's peak learning rate,
    then linearly to 0 at the last step (as the baseline ended); the validation loss only."""
    return dict(lr=CONTINUATION_LR_SHARE * peak_lr, warmup=max(1, min(50, extra_steps // 4)), lr_scheduler="linear",
                valid_max_sentences=cfg.valid_sentences, valid_chrf_sentences=0, valid_every=0,
                progress=cfg.progress, device=dev)


def _continuations(run: _Run, dense_ckpt, arm_masks: dict, extra_steps: int, cont: dict) -> tuple[dict, dict]:
    """Continue the baseline once per arm of ARMS (masks arm_masks[arm], None: dense) into out/<arm>;
    returns the checkpoints by arm and the extra steps by model (baseline: 0)."""
    ckpts, steps = {}, {"baseline": 0}
    for arm in ARMS:
        with run.phase(arm):
            s = continue_training(dense_ckpt, run.cfg.out / arm, arm_masks[arm], steps=extra_steps, overwrite=True,
                                  **cont)
            ckpts[arm], steps[arm] = s["checkpoint"], s["step"]
    return ckpts, steps


def results_summary(cfg: DemoConfig, codes, directions, threads, dev, dense_steps, extra_steps, rows, notes, tests,
                    analyses, timings: dict, total_s: float, budget_s: float, load) -> dict:
    """The results.json dict: settings, table rows, verdicts, pooled significance and wins per comparison,
    mean IoU by layer, timings (the `timings` dict itself), load average (None: unknown), device."""
    return {"langs": codes, "directions": directions, "k": cfg.k, "beam": cfg.beam,
            "eval_sentences": cfg.eval_sentences, "dense_steps": dense_steps, "extra_steps": extra_steps, "rows": rows,
            "verdicts": notes,
            "significance": {f"{b} vs {a}": {"pooled": c["pooled"], "wins": c["wins"]} for (b, a), c in tests.items()},
            "iou_mean_by_layer": {lab: {"encoder": a["encoder"], "decoder": a["decoder"]}
                                  for lab, a in analyses.items()},
            "timings_s": timings, "total_s": total_s, "budget_s": budget_s,
            "loadavg": list(load) if load else None, "device": dev, "threads": threads, "out": str(cfg.out)}


def _percent_trend(values: list[float | None]) -> str:
    """'68.1 → 71.7 → …' of per-layer means; '–' where a layer has no pair (one direction of a kind)."""
    return " → ".join("–" if v is None else f"{v * 100:.1f}" for v in values)


def write_report(cfg: DemoConfig, codes, directions, threads, dev, dense_steps, extra_steps, evals, steps, tests,
                 analyses, clock, speed: dict | None = None) -> dict:
    """results.md and results.json of a finished study; returns the results (plus the table)."""
    table, rows = results_table(evals, steps, tests)
    notes = verdicts(evals, analyses)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    res = results_summary(cfg, codes, directions, threads, dev, dense_steps, extra_steps, rows, notes, tests, analyses,
                          clock.phases, clock.elapsed(), clock.budget, load)
    res["speed"] = speed
    md = ["# Neuron Specialization demo", "",
          f"{len(codes)} languages ({', '.join(codes)}) ↔ en, {len(directions)} directions, tiny preset; "
          f"dense baseline {dense_steps} steps, then {extra_steps} extra steps per continuation "
          f"(fresh optimizer, same batches). Test split, beam {cfg.beam}, "
          f"{cfg.eval_sentences or 'all'} sentences per direction; masks from k = {cfg.k}.", "", table, "",
          "Δ: the average over directions minus the baseline's; * = the paired bootstrap (1000 resamples) over "
          "all supervised test lines pooled gives p < 0.05 against the baseline (its pooled Δ is in the next "
          "section).", "", "## Significance (paired bootstrap)", "", *significance_lines(tests), "",
          "## Observed trends", "", *[f"- {n}" for n in notes], "",
          "## Mean IoU by layer (%)", ""]
    for lab, a in analyses.items():
        md.append(f"- {lab}: encoder {_percent_trend(a['encoder'])}; decoder {_percent_trend(a['decoder'])}")
    md += ["- Tan et al. (k = 0.7): encoder 37.7 → 47.9 → 52.6 → 59.1 → 63.0 → 65.5; "
           "decoder 52.2 → 49.7 → 41.4 → 29.9 → 24.1 → 25.9", "",
           "![mean IoU, k=0.7](analysis-k0.7/mean_iou.png)", ""]
    if speed:
        md += speed_markdown(speed["rows"], speed["tokens"], speed["threads"], speed["loadavg"])
    md += ["## Timings", "", *[f"- {n}: {s:.1f} s" for n, s in clock.phases.items()],
           f"- total: {clock.elapsed() / 60:.1f} min ("
           + ("fixed steps" if cfg.minutes is None else f"budget {cfg.minutes} min") + ")"
           + (f", load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else ""),
           "- CPU threads: " + ", ".join(f"{k} {v}" for k, v in threads.items()), ""]
    write_atomic(cfg.out / "results.md", "\n".join(md))
    write_atomic(cfg.out / "results.json", strict_json(res))
    res["table"] = table
    return res


# ---------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--langs", default=DEFAULT_LANGS,
                   help=f"EC30 codes, comma-separated (default {DEFAULT_LANGS}; the 8-language study: {FULL_LANGS} "
                        "with --minutes)")
    p.add_argument("--minutes", type=float, default=None,
                   help=f"wall-clock budget of the whole demo: the baseline gets --dense-share of it and the "
                        f"continuations what is left (default: none, fixed steps {DENSE_STEPS} + {EXTRA_STEPS} per "
                        "continuation, so a busy machine takes longer instead of training less)")
    p.add_argument("--vocab-size", type=int, default=4000, help="sentencepiece vocabulary (default 4000)")
    p.add_argument("--k", type=float, default=0.95, help="selection threshold for the specialized masks")
    p.add_argument("--beam", type=int, default=1, help="beam size for evaluation (default 1: greedy, fast)")
    p.add_argument("--eval-sentences", type=int, default=100, help="test sentences per direction (0 = all)")
    p.add_argument("--record-sentences", type=int, default=100, help="valid sentences per direction to record")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per training batch (default: the tiny "
                   "preset's)")
    p.add_argument("--dense-share", type=float, default=0.5, help="share of the budget for the dense baseline")
    p.add_argument("--dense-steps", type=int, default=None,
                   help=f"baseline steps (default {DENSE_STEPS}; with --minutes: a share of the budget)")
    p.add_argument("--extra-steps", type=int, default=None,
                   help=f"steps per continuation (default {EXTRA_STEPS}; with --minutes: what the budget leaves)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up updates of the baseline (default: the preset's)")
    p.add_argument("--valid-sentences", type=int, default=50,
                   help="valid sentences per direction for the trainer's validation loss")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core)")
    p.add_argument("--no-speed", action="store_true", help="skip the speed measurements of the report")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    res = run_demo(args.out, langs=args.langs, minutes=args.minutes, vocab_size=args.vocab_size, k=args.k,
                   beam=args.beam, eval_sentences=args.eval_sentences or None,
                   record_sentences=args.record_sentences, max_tokens=args.max_tokens, dense_share=args.dense_share,
                   dense_steps=args.dense_steps, extra_steps=args.extra_steps, warmup=args.warmup,
                   valid_sentences=args.valid_sentences, seed=args.seed,
                   device=args.device, threads=args.threads, speed=not args.no_speed, progress=not args.no_progress)
    print()
    print(res["table"])
    print()
    for n in res["verdicts"]:
        print("-", n)
    print(f"\nwritten to {res['out']}/results.md (plots in analysis/, analysis-k0.7/) — "
          f"{res['total_s'] / 60:.1f} min")
    return 0
