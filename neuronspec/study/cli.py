"""`neuronspec study`: the seed paper's comparison (Tan et al. 2024, Neuron Specialization) as one
resumable command on the built-in corpus or a prepared folder (docs/design.md §11):

1. corpus (built-in, --langs, zero-shot test pairs) and its prepared folder, or --data;
2. the dense baseline, trained to its validation plateau (early stopping, step and time caps) or
   given (--baseline);
3. sub-networks: NS masks (record on the valid split + select at --k), random masks of their
   sizes, LaSS masks (per-direction fine-tunes + pruning at --lass-prune);
4. every arm of --arms continues the baseline for --extra-steps updates per seed (bilingual:
   one model per direction from scratch, first seed);
5. greedy evaluation (first --eval-sentences evenly spaced test lines per direction, zero-shot
   included), the efficiency measurements, the report (report.py).

    neuronspec study --arms all --seeds 1,2,3 --out runs/study

Each step is a run folder under --out; a killed study continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from neuronspec.checks import check_int
from neuronspec.study import arms as arm_lib
from neuronspec.study.grid import Grid, load_average, write_json

log = logging.getLogger(__name__)

DEFAULT_LANGS = "de,fr,ru,he,it,bg,af,uk"
DEFAULT_ZERO_SHOT = "de-fr,fr-de,ru-uk,uk-ru,he-af,af-he"
# Planning figures for the up-front estimate (not measurements of this run): seconds per update
# of the tiny preset at 800-token batches on 2 threads (the quiet demo run, docs/demo-cpu: 400
# updates in 55-59 s) and seconds per greedy test sentence (docs/study-cpu: 100 lines x 22
# directions in 33 s on 1 thread). Replaced by the baseline's own rate once it has run.
PLAN_S_PER_STEP = 0.15
PLAN_S_PER_SENTENCE = 0.015
# The options that decide what a finished step computed: a study folder keeps them (SETTINGS) and a
# rerun must give the same, or finished and new steps would mix budgets under one report header.
# --arms, --seeds and --bilingual may grow or shrink (their steps are separate); --threads,
# --device, --bootstrap, --timing-rounds, --report and --no-progress do not change a step's result.
FIXED = ("data", "baseline", "langs", "zero_shot", "preset", "model_args", "vocab_size", "max_tokens", "max_steps",
         "max_minutes", "valid_every", "patience", "valid_sentences", "extra_steps", "lass_steps",
         "bilingual_max_steps", "bilingual_minutes", "k", "record_sentences", "lass_prune", "adapter_dim",
         "eval_sentences")
SETTINGS = "settings.json"


def check_settings(grid: Grid, a: argparse.Namespace) -> None:
    """Record the FIXED options in a new study folder; in one that has them, ValueError naming
    every option given otherwise (old and new value)."""
    now = {k: (os.path.abspath(v) if k in ("data", "baseline") and v else v) for k, v in vars(a).items() if k in FIXED}
    now = json.loads(json.dumps(now))  # the JSON form (tuples as lists) it is compared in
    path = grid.root / SETTINGS
    if not path.exists():
        write_json(path, now)
        return
    old = json.loads(path.read_text())
    diff = [f"--{k.replace('_', '-')} {old.get(k)!r} (now {now[k]!r})" for k in FIXED if old.get(k) != now[k]]
    if diff:
        raise ValueError(f"--out: {grid.root} holds a study run with other settings: {'; '.join(diff)}. Its finished "
                         "steps would be mixed with new ones under one report; give the same values or another --out")


def estimate_minutes(a: argparse.Namespace, n_dirs: int, n_zero: int, s_per_step: float) -> dict[str, float]:
    """An estimate (not a measurement) of each phase's minutes from the budgets and a rate."""
    seeds = len(a.seeds)
    cont = [x for x in a.arms if x != "bilingual"]
    n_bil = 4 * 2 if "bilingual" in a.arms else 0  # default: 4 languages both ways
    evals = 1 + len(cont) * seeds + (len(a.lass_prune) - 1) * ("lass" in a.arms)
    est = {"baseline": 0.0 if a.baseline else min(a.max_minutes, a.max_steps * s_per_step / 60),
           "continuations": len(cont) * seeds * a.extra_steps * s_per_step / 60,
           "lass fine-tunes": n_dirs * a.lass_steps * s_per_step / 60 if "lass" in a.arms else 0.0,
           "bilingual": n_bil * min(a.bilingual_minutes, a.bilingual_max_steps * s_per_step / 60),
           "evaluation": (evals * (n_dirs + n_zero) + n_bil) * a.eval_sentences * PLAN_S_PER_SENTENCE / 60,
           "record, select, efficiency, bootstrap": 3.0}
    est["total"] = sum(est.values())
    return est


def _prepare(grid: Grid, a: argparse.Namespace) -> str:
    from neuronspec.data.binarize import prepare_corpus
    from neuronspec.data.builtin_corpus import build_builtin_corpus

    def data(folder: Path) -> dict:
        zs = [p for p in a.zero_shot.split(",") if p and set(p.split("-")) <= set(a.langs)]
        build_builtin_corpus(folder / "corpus", langs=a.langs, seed=0, zero_shot=",".join(zs) or None,
                             progress=False)
        prepare_corpus(folder / "corpus", folder / "prep", vocab_size=a.vocab_size, progress=False)
        return {"zero_shot": zs}

    grid.step("data", data)
    return str(grid.folder("data") / "prep")


def _baseline(grid: Grid, a: argparse.Namespace, prep: str) -> str:
    from neuronspec.nmt.config import TrainConfig
    from neuronspec.study import training

    def train(folder: Path) -> dict:
        cfg = TrainConfig(data=prep, out=str(folder), preset=a.preset, model_args=a.model_args, max_tokens=a.max_tokens,
                          lr_scheduler="inverse_sqrt", seed=1, max_steps=a.max_steps, max_minutes=a.max_minutes,
                          valid_every=a.valid_every, patience=a.patience, valid_max_sentences=a.valid_sentences,
                          valid_chrf_sentences=0, save_every=a.valid_every, device=a.device, progress=a.progress)
        s = training.plateau_run(cfg, folder, a.max_minutes)
        return {"steps": s["step"], "steps_this_run": s["step"] - s["resumed_at"], "minutes": s["minutes"],
                "checkpoint": str(training.best_checkpoint(folder))}

    return grid.step("baseline", train, keep_partial=True)["checkpoint"]


def run_study(a: argparse.Namespace) -> dict:
    """The whole study (module docstring); returns the report's results dict."""
    import torch

    from neuronspec.data.corpus import PreparedData
    from neuronspec.data.languages import tier
    from neuronspec.nmt.checkpoint import load_checkpoint
    from neuronspec.study import report, runs

    torch.set_num_threads(a.threads)
    grid = Grid(a.out)
    t0 = time.monotonic()
    if a.data:  # the prepared folder's languages and zero-shot test pairs
        given = PreparedData.load(a.data)
        a.langs = [x for x in given.languages if x != given.pivot]
        n_dirs, n_zero = len(given.directions), len(given.zero_shot_directions("test"))
    else:
        n_dirs = 2 * len(a.langs)
        n_zero = sum(set(p.split("-")) <= set(a.langs) for p in a.zero_shot.split(",") if p)
    check_settings(grid, a)
    est = estimate_minutes(a, n_dirs, n_zero, PLAN_S_PER_STEP)
    log.info("ESTIMATE (planning figures, not measured): about %.0f min in all (%s)", est["total"],
             ", ".join(f"{k} {v:.1f}" for k, v in est.items() if k != "total"))
    grid_meta = {"estimate_minutes_up_front": est, "started_load": load_average()}
    write_json(grid.root / "estimate.json", {"ESTIMATE, not measured (planning figures)": est})

    if a.baseline:
        base_path = a.baseline
        prep = (load_checkpoint(base_path).get("data") or {}).get("prep")
        if not prep or not Path(prep).is_dir():
            raise ValueError(f"--baseline: {base_path} names no prepared folder that exists ({prep!r})")
    else:
        prep = a.data or _prepare(grid, a)
        base_path = _baseline(grid, a, prep)
    base = load_checkpoint(base_path)
    pdata = PreparedData.load(prep)
    tier_of = {x: pdata.tiers.get(x) or tier(x) for x in pdata.languages if x != pdata.pivot}
    if not a.baseline:
        done = grid.result("baseline")  # this invocation's time over the updates it ran (validations included)
        s_step = grid.timings.get("baseline", {}).get("seconds", 0) / max(1, done["steps_this_run"])
        if s_step > 0:
            est2 = estimate_minutes(a, n_dirs, n_zero, s_step)
            grid_meta["estimate_minutes_after_baseline"] = est2
            log.info("ESTIMATE with the baseline's %.3f s/update: about %.0f min in all", s_step, est2["total"])

    evals = runs.run_arms(grid, a, base, base_path, prep, pdata)
    results = report.build(grid, a, base, pdata, tier_of, evals, grid_meta, time.monotonic() - t0)
    return results


def _float_list(name: str, text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"{name}: no value in {text!r}")
    return vals


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("--arms", default="all", help=f"'all' or a comma list of {', '.join(arm_lib.ARMS)}")
    p.add_argument("--seeds", default="1,2,3", help="seeds of every continuation (batch stream, random masks)")
    p.add_argument("--langs", default=DEFAULT_LANGS, help="built-in corpus languages (with en)")
    p.add_argument("--zero-shot", default=DEFAULT_ZERO_SHOT, help="x-y test pairs among --langs ('' for none)")
    p.add_argument("--preset", default="tiny", help="model preset of the baseline and bilingual models")
    p.add_argument("--model-args", default=None, help="JSON of ModelConfig overrides, e.g. '{\"d_model\": 64}'")
    p.add_argument("--data", default=None,
                   help="a prepared folder (neuronspec data prepare) instead of the built-in corpus; "
                        "--langs, --zero-shot and --vocab-size then do not apply")
    p.add_argument("--baseline", default=None, help="a dense checkpoint to start from instead of training one "
                                                    "(its own prepared folder is used)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (cuda when available)")
    p.add_argument("--out", default="runs/study", help="study folder (run folders, report)")
    p.add_argument("--report", default=None, help="report folder (default OUT/report)")
    p.add_argument("--vocab-size", type=int, default=4000)
    p.add_argument("--max-tokens", type=int, default=800, help="tokens per batch (the tiny preset's)")
    b = p.add_argument_group("budgets")
    b.add_argument("--max-steps", type=int, default=6000, help="baseline: step cap")
    b.add_argument("--max-minutes", type=float, default=30.0, help="baseline: wall-clock cap (minutes)")
    b.add_argument("--valid-every", type=int, default=200, help="baseline and bilingual: validate every N updates")
    b.add_argument("--patience", type=int, default=4, help="baseline and bilingual: validations without a better loss")
    b.add_argument("--valid-sentences", type=int, default=50, help="valid sentences per direction for the loss")
    b.add_argument("--extra-steps", type=int, default=400, help="updates of every arm's continuation")
    b.add_argument("--lass-steps", type=int, default=100, help="LaSS: updates of each direction's fine-tune")
    b.add_argument("--bilingual-max-steps", type=int, default=1500, help="bilingual: step cap per model")
    b.add_argument("--bilingual-minutes", type=float, default=2.0, help="bilingual: wall-clock cap per model")
    m = p.add_argument_group("arms")
    m.add_argument("--k", type=float, default=0.95, help="NS: cumulative activation share kept")
    m.add_argument("--record-sentences", type=int, default=200, help="NS: valid sentences per direction recorded")
    m.add_argument("--lass-prune", default="0.3",
                   help="LaSS prune fraction(s) alpha (comma list: the first for every seed, the others first seed)")
    m.add_argument("--adapter-dim", type=int, default=64, help="adapter bottleneck width")
    m.add_argument("--bilingual", default="", help="bilingual directions (default: 2 highest- and 2 lowest-resource "
                                                   "languages, both ways)")
    e = p.add_argument_group("evaluation and report")
    e.add_argument("--eval-sentences", type=int, default=50, help="test lines per direction (evenly spaced)")
    e.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples")
    e.add_argument("--timing-rounds", type=int, default=5, help="interleaved training steps per arm (efficiency)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_args(a: argparse.Namespace) -> argparse.Namespace:
    """Parse the list options in place; ValueError naming the option for bad input."""
    from neuronspec.data.languages import parse_langs
    from neuronspec.nmt.checkpoint import resolve_device
    from neuronspec.nmt.model import PRESETS

    a.arms = arm_lib.parse_arms(a.arms) if isinstance(a.arms, str) else a.arms
    try:
        a.seeds = [int(s) for s in str(a.seeds).split(",") if s.strip()] if not isinstance(a.seeds, list) else a.seeds
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers, got {a.seeds!r}") from None
    if not a.seeds or any(s < 0 for s in a.seeds) or len(set(a.seeds)) != len(a.seeds):
        raise ValueError(f"--seeds: expected distinct integers >= 0, got {a.seeds!r}")
    a.langs = parse_langs(a.langs) if isinstance(a.langs, str) else a.langs
    if a.preset not in PRESETS:
        raise ValueError(f"--preset: expected one of {sorted(PRESETS)}, got {a.preset!r}")
    if isinstance(a.model_args, str):
        try:
            a.model_args = json.loads(a.model_args)
        except ValueError as err:
            raise ValueError(f"--model-args: not JSON ({err})") from None
        if not isinstance(a.model_args, dict):
            raise ValueError("--model-args: expected a JSON object")
    if isinstance(a.lass_prune, str):
        try:
            a.lass_prune = _float_list("--lass-prune", a.lass_prune)
        except argparse.ArgumentTypeError as err:
            raise ValueError(str(err)) from None
    if not all(0 < x < 1 for x in a.lass_prune):
        raise ValueError(f"--lass-prune: prune fractions must be in (0, 1), got {a.lass_prune}")
    for name in ("max_steps", "valid_every", "patience", "valid_sentences", "extra_steps", "lass_steps",
                 "bilingual_max_steps", "eval_sentences", "bootstrap", "timing_rounds", "threads", "adapter_dim",
                 "record_sentences", "vocab_size", "max_tokens"):
        check_int(f"--{name.replace('_', '-')}", getattr(a, name), 1)
    for name in ("max_minutes", "bilingual_minutes"):
        if not getattr(a, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(a, name)!r}")
    if not 0 < a.k <= 1:
        raise ValueError(f"--k: must be in (0, 1], got {a.k!r}")
    if a.baseline and not Path(a.baseline).is_file():
        raise ValueError(f"--baseline: {a.baseline} is not a file")
    if a.data is not None:
        if a.baseline:
            raise ValueError("--data: give --data or --baseline, not both (a baseline checkpoint names its own "
                             "prepared folder)")
        if not (Path(a.data) / "meta.json").is_file():
            raise ValueError(f"--data: {a.data} is not a prepared folder (no meta.json; make one with "
                             "`neuronspec data prepare`)")
    try:
        a.device = str(resolve_device(a.device))
    except ValueError as err:
        raise ValueError(f"--device: {err}") from None
    a.progress = not a.no_progress
    a.report = a.report or str(Path(a.out) / "report")
    return a


def run(args: argparse.Namespace) -> int:
    args.command_line = shlex.join(["neuronspec", *sys.argv[1:]])
    res = run_study(check_args(args))
    print(f"study report: {Path(args.report) / 'README.md'} ({res['study_minutes']:.1f} min)")
    return 0

