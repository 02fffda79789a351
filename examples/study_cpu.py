#!/usr/bin/env python
"""A Neuron-Specialization study that gives specialization a fair chance on a 2-core CPU
(issue #16, item 6). One command, resumable (a step whose outputs exist is skipped):

    nice -n 5 .venv/bin/python examples/study_cpu.py --out runs/study-cpu --report docs/study-cpu

1. built-in corpus (default: the demo's 8 languages, 16 directions) with a few zero-shot test
   pairs, prepared with a 4000-piece vocabulary;
2. dense tiny baseline trained to a validation plateau: validation loss every --valid-every
   steps, early stopping after --patience validations without improvement, a step cap
   (--max-steps) and a wall-clock cap (--max-minutes); the continuations start from its best
   checkpoint;
3. record (valid split) → select k = 0.95 (specialized) and the k sweep (--ks), size-matched
   random masks (one per seed) → IoU analysis;
4. continuations from the baseline, all with the SAME --extra-steps (fresh optimizer, the
   baseline's final learning rate, inverse-sqrt, seed = batch stream): fine-tune (dense),
   random masks, specialized k = 0.95 for every --seeds; specialized at the other k's with the
   first seed;
5. greedy evaluation of every run on the first --eval-sentences evenly spaced test lines per
   direction (supervised + zero-shot), seed-pooled paired bootstrap (specialized vs fine-tune,
   specialized vs random, fine-tune vs random; BLEU and chrF++; overall, per tier, per side,
   zero-shot, per direction), per-seed bootstrap, mean ± sd over seeds, plots and the report.

The pure functions (aggregation, verdict, tables) are tested in tests/test_study.py.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("study_cpu")

ARMS = ("finetune", "random", "specialized")  # run order
ORDER = ("specialized", "finetune", "random")  # the expected ranking: table columns
# (B, A): B tested against A; the expected order is specialized > fine-tune > random
COMPARISONS = (("specialized", "finetune"), ("specialized", "random"), ("finetune", "random"))
METRICS = (("bleu", "BLEU"), ("chrf", "chrF++"))
TIERS = ("high", "medium", "low")
DEFAULT_LANGS = "de,fr,ru,he,it,bg,af,uk"
DEFAULT_ZERO_SHOT = "de-fr,fr-de,ru-uk,uk-ru,he-af,af-he"
ALPHA = 0.05


# ============================================================== pure logic (tested)
def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    if not values:
        raise ValueError("mean_sd: no values")
    m = sum(values) / len(values)
    return m, (statistics.stdev(values) if len(values) > 1 else None)


def fmt_ms(m: float | None, sd: float | None) -> str:
    if m is None:
        return "–"
    return f"{m:.2f}" if sd is None else f"{m:.2f} ± {sd:.2f}"


def group_of(direction: str, tier_of: dict[str, str], pivot: str = "en") -> list[str]:
    """The groups a direction belongs to: 'all' (supervised), its tier, its side, or 'zero-shot'."""
    src, tgt = direction.split("-", 1)
    if pivot not in (src, tgt):
        return ["zero-shot"]
    other = tgt if src == pivot else src
    side = f"{pivot}-x" if src == pivot else f"x-{pivot}"
    return ["all", tier_of[other], side]


def group_scores(per_dir: dict[str, dict], tier_of: dict[str, str], pivot: str = "en") -> dict[str, dict]:
    """{group: {metric: mean over the group's directions}} from {direction: {"bleu", "chrf"}}."""
    acc: dict[str, list[dict]] = {}
    for d, r in per_dir.items():
        for g in group_of(d, tier_of, pivot):
            acc.setdefault(g, []).append(r)
    return {g: {m: sum(r[m] for r in rows) / len(rows) for m, _ in METRICS} | {"directions": len(rows)}
            for g, rows in acc.items()}


def aggregate_arms(runs: dict[str, dict[int, dict[str, dict]]], tier_of: dict[str, str],
                   pivot: str = "en") -> dict[str, dict[str, dict]]:
    """runs: {arm: {seed: {direction: {"bleu", "chrf"}}}} → {arm: {group: {metric: {mean, sd, n,
    values}}}}; groups: all, tiers, sides, zero-shot and every single direction."""
    out: dict[str, dict[str, dict]] = {}
    for arm, seeds in runs.items():
        per_seed = {s: group_scores(pd, tier_of, pivot) for s, pd in seeds.items()}
        for s, pd in seeds.items():
            for d, r in pd.items():
                per_seed[s][d] = {m: r[m] for m, _ in METRICS}
        groups = sorted({g for gs in per_seed.values() for g in gs})
        out[arm] = {}
        for g in groups:
            out[arm][g] = {}
            for m, _ in METRICS:
                vals = [per_seed[s][g][m] for s in sorted(per_seed) if g in per_seed[s]]
                mu, sd = mean_sd(vals)
                out[arm][g][m] = {"mean": mu, "sd": sd, "n": len(vals), "values": vals}
    return out


def order_held(agg: dict[str, dict[str, dict]], group: str, metric: str) -> bool | None:
    """specialized > fine-tune > random on the mean over seeds (None: a group an arm lacks)."""
    try:
        s, f, r = (agg[a][group][metric]["mean"] for a in ("specialized", "finetune", "random"))
    except KeyError:
        return None
    return s > f > r


def verdict_rows(agg: dict, tests: dict[tuple[str, str], dict], groups: list[str]) -> list[dict]:
    """One row per (group, metric): the three means, whether the order held, and the seed-pooled
    bootstrap Δ/p of each comparison; 'significant' = the order held and both adjacent steps
    (specialized vs fine-tune, fine-tune vs random) are significant at ALPHA."""
    rows = []
    for g in groups:
        for m, name in METRICS:
            if any(g not in agg.get(a, {}) for a in ARMS):
                continue
            row = {"group": g, "metric": name, **{a: agg[a][g][m]["mean"] for a in ARMS},
                   **{f"{a}_sd": agg[a][g][m]["sd"] for a in ARMS}, "held": order_held(agg, g, m)}
            sig = []
            for b, a in COMPARISONS:
                t = tests.get((b, a), {}).get(g)
                key = f"{b}-{a}"
                if t is None:
                    row[f"d_{key}"] = row[f"p_{key}"] = None
                    sig.append(False)
                    continue
                row[f"d_{key}"], row[f"p_{key}"] = t[f"d_{m}"], t[f"p_{m}"]
                sig.append(t[f"p_{m}"] < ALPHA and t[f"d_{m}"] != 0)
            row["significant"] = bool(row["held"]) and sig[0] and sig[2]
            rows.append(row)
    return rows


def verdict_table(rows: list[dict]) -> str:
    head = ("| group | metric | specialized | fine-tune | random | spec > ft > rand | Δ spec−ft (p) | "
            "Δ spec−rand (p) | Δ ft−rand (p) | significant |")
    lines = [head, "|" + "---|" * 10]

    def dp(r, key):
        d, p = r[f"d_{key}"], r[f"p_{key}"]
        return "–" if d is None else f"{d:+.2f}{'*' if p < ALPHA and d != 0 else ''} ({p:.3f})"

    for r in rows:
        lines.append(f"| {r['group']} | {r['metric']} | " + " | ".join(
            fmt_ms(r[a], r[f"{a}_sd"]) for a in ORDER) +
            f" | {'yes' if r['held'] else 'no'} | {dp(r, 'specialized-finetune')} | {dp(r, 'specialized-random')} | "
            f"{dp(r, 'finetune-random')} | {'yes' if r['significant'] else 'no'} |")
    return "\n".join(lines)


def direction_counts(rows: list[dict], metric: str) -> dict[str, int]:
    """Over per-direction rows of one metric: in how many directions the order held, and in how
    many each comparison was significantly positive / negative."""
    ds = [r for r in rows if r["metric"] == metric]
    out = {"directions": len(ds), "held": sum(bool(r["held"]) for r in ds)}
    for b, a in COMPARISONS:
        key = f"{b}-{a}"
        out[f"{key}_better"] = sum(r[f"p_{key}"] is not None and r[f"p_{key}"] < ALPHA and r[f"d_{key}"] > 0
                                   for r in ds)
        out[f"{key}_worse"] = sum(r[f"p_{key}"] is not None and r[f"p_{key}"] < ALPHA and r[f"d_{key}"] < 0
                                  for r in ds)
    return out


def plain_verdict(rows: list[dict], dir_rows: list[dict]) -> list[str]:
    """Sentences: overall, per tier, zero-shot, and the per-direction count."""
    out = []
    for g in ["all", *TIERS, "en-x", "x-en", "zero-shot"]:
        rs = [r for r in rows if r["group"] == g]
        if not rs:
            continue
        parts = []
        for r in rs:
            parts.append(f"{r['metric']} {'held' if r['held'] else 'did not hold'}"
                         f"{' (significant)' if r['significant'] else (' (not significant)' if r['held'] else '')}"
                         f" — spec {r['specialized']:.2f}, ft {r['finetune']:.2f}, rand {r['random']:.2f}")
        label = {"all": "Overall (supervised)", "zero-shot": "Zero-shot"}.get(g, f"{g}")
        out.append(f"{label}: " + "; ".join(parts) + ".")
    for m, name in METRICS:
        c = direction_counts(dir_rows, name)
        if c["directions"]:
            out.append(f"Per direction ({name}): the order held in {c['held']} of {c['directions']}; specialized "
                       f"significantly better than fine-tune in {c['specialized-finetune_better']}, worse in "
                       f"{c['specialized-finetune_worse']}; than random better in {c['specialized-random_better']}, "
                       f"worse in {c['specialized-random_worse']}; fine-tune vs random better in "
                       f"{c['finetune-random_better']}, worse in {c['finetune-random_worse']}.")
    return out


def sweep_rows(ks: list[float], kept: dict[float, float], scores: dict[float, dict[str, float]]) -> list[dict]:
    """One row per k: mean kept fraction and the single-seed supervised BLEU / chrF++."""
    return [{"k": k, "kept": kept.get(k), **{m: (scores.get(k) or {}).get(m) for m, _ in METRICS}} for k in ks]


# ============================================================== the study
def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, obj) -> None:
    from neuronspec.atomic import strict_json, write_atomic
    write_atomic(path, strict_json(obj, indent=1))


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent.parent).stdout.strip()
    except Exception:  # noqa: BLE001
        return "?"


class Timer:
    def __init__(self, path: Path):
        self.path = path
        self.t = _json(path) if path.exists() else {}

    def run(self, name: str, fn):
        t0 = time.monotonic()
        log.info("=== %s (load average %s)", name, " ".join(f"{v:.2f}" for v in os.getloadavg()))
        out = fn()
        self.t[name] = round(time.monotonic() - t0, 1)
        _write_json(self.path, self.t)
        log.info("    %s took %.1f s", name, self.t[name])
        return out


def run_study(a: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from neuronspec.data.binarize import prepare_corpus
    from neuronspec.data.builtin_corpus import build_builtin_corpus
    from neuronspec.nmt.compare import paired_test, read_eval, write_compare
    from neuronspec.nmt.evaluate import evaluate_checkpoint
    from neuronspec.data.languages import parse_langs, tier
    from neuronspec.nmt.train import TrainConfig, Trainer
    from neuronspec.ops import save_layer_masks
    from neuronspec.ops.masks import load_layer_masks
    from neuronspec.specialization.iou import write_analysis
    from neuronspec.specialization.record import record
    from neuronspec.specialization.select import kept_table, random_masks, select_masks
    from neuronspec.specialization.specialize import continue_training

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer(out / "timings.json")
    codes = parse_langs(a.langs)
    tier_of = {c: tier(c) for c in codes}
    seeds = [int(s) for s in a.seeds.split(",")]
    ks = [float(k) for k in a.ks.split(",")]
    if a.k not in ks:
        ks = sorted([*ks, a.k])
    t_study = time.monotonic()

    # ---- 1. corpus
    corpus, prep = out / "corpus", out / "data"
    if not (corpus / "summary.json").exists():
        timer.run("corpus", lambda: build_builtin_corpus(corpus, langs=codes, seed=0, zero_shot=a.zero_shot or None,
                                                         progress=False))
    if not (out / "data.done").exists():
        timer.run("prepare", lambda: prepare_corpus(corpus, prep, vocab_size=a.vocab_size, progress=False))
        (out / "data.done").write_text("ok\n")

    # ---- 2. dense baseline to a plateau
    dense = out / "dense"
    if not (dense / "train_summary.json").exists():
        resume = (dense / "checkpoint_last.pt").exists()
        cfg = TrainConfig(data=str(prep), out=str(dense), preset="tiny", max_tokens=a.max_tokens, lr=a.lr,
                          warmup=a.warmup, lr_scheduler="inverse_sqrt", seed=a.seed, max_steps=a.max_steps,
                          max_minutes=a.max_minutes, valid_every=a.valid_every, patience=a.patience,
                          valid_max_sentences=a.valid_sentences, valid_chrf_sentences=0, log_every=50,
                          save_every=a.valid_every, device="cpu", progress=False)
        start_file = out / "dense.start"
        minutes = a.max_minutes
        if resume:  # the run's own settings; the time cap counts from the first start (pauses included)
            cfg = TrainConfig.from_dict(torch.load(dense / "checkpoint_last.pt", map_location="cpu",
                                                   weights_only=False)["config"])
            if start_file.exists():
                minutes = max(0.1, a.max_minutes - (time.time() - float(start_file.read_text())) / 60)
        else:
            from neuronspec.nmt.run_folder import check_run_folder
            check_run_folder(str(dense), resume=False, overwrite=True, init_from=None)
            start_file.write_text(f"{time.time()}\n")
        timer.run("dense", lambda: Trainer(cfg, resume=resume).train(max_minutes=minutes))
    summary = _json(dense / "train_summary.json")
    best = dense / "checkpoint_best.pt"
    base_ckpt = str(best if best.exists() else dense / "checkpoint_last.pt")
    ck = torch.load(base_ckpt, map_location="cpu", weights_only=False)
    base_step = int(ck.get("step") or summary["step"])
    try:
        final_lr = float(ck["optimizer"]["param_groups"][0]["lr"])
    except (KeyError, IndexError, TypeError):
        cfg0 = ck["config"]
        final_lr = cfg0["lr"] * math.sqrt(cfg0["warmup"] / max(base_step, cfg0["warmup"]))
    history = ck.get("history") or []
    del ck
    log.info("baseline: %s at step %s of %s (lr %.2e)", base_ckpt, base_step, summary["step"], final_lr)

    # ---- 3. record, select, analyze
    counts_path = out / "counts.pt"
    if not counts_path.exists():
        timer.run("record", lambda: record(base_ckpt, prep, counts_path, split="valid",
                                           max_sentences=a.record_sentences, max_tokens=4000, device="cpu",
                                           progress=False))
    counts = torch.load(counts_path, map_location="cpu", weights_only=False)
    directions, pivot = counts["directions"], counts["meta"]["pivot"]
    mask_files, kept = {}, {}
    for k in ks:
        p = out / f"masks-k{k}.pt"
        if not p.exists():
            m = select_masks(counts["counts"], directions, k, pivot=pivot)
            save_layer_masks(m, p, {"kind": "selected", "k": k, "directions": directions, "pivot": pivot})
        mask_files[k] = p
        m = load_layer_masks(p)[0]
        rows = kept_table(m)
        kept[k] = sum(r["mean"] for r in rows) / len(rows)
    spec_masks = load_layer_masks(mask_files[a.k])[0]
    rand_files = {}
    for s in seeds:
        p = out / f"masks-random-s{s}.pt"
        if not p.exists():
            save_layer_masks(random_masks(spec_masks, s), p, {"kind": "random", "seed": s, "directions": directions,
                                                              "pivot": pivot, "masks_like": mask_files[a.k].name})
        rand_files[s] = p
    if not (out / "analysis" / "iou.json").exists():
        timer.run("analyze", lambda: write_analysis(spec_masks, out / "analysis", {"k": a.k}, pivot))
    kept_layers = {str(k): kept_table(load_layer_masks(mask_files[k])[0]) for k in ks}

    # ---- 4./5. continuations and evaluations, seed by seed (partial results stay usable)
    cont = dict(lr=final_lr, warmup=max(1, min(50, a.extra_steps // 4)), lr_scheduler="inverse_sqrt", patience=0,
                valid_max_sentences=a.valid_sentences, valid_chrf_sentences=0, valid_every=0, progress=False,
                device="cpu", max_tokens=a.max_tokens)

    def evaluate(name: str, ckpt: str) -> Path:
        d = out / "eval" / name
        if not (d / "results.json").exists():
            timer.run(f"eval {name}", lambda: evaluate_checkpoint(
                ckpt, str(prep), "test", a.beam, a.eval_sentences, out_dir=d, device="cpu", progress=False,
                zero_shot=bool(a.zero_shot)))
        return d

    def continuation(name: str, masks, seed: int) -> Path:
        d = out / "runs" / name
        if not (d / "train_summary.json").exists():
            timer.run(name, lambda: continue_training(base_ckpt, d, None if masks is None else str(masks),
                                                      steps=a.extra_steps, overwrite=True, seed=seed, **cont))
        return evaluate(name, str(d / "checkpoint_last.pt"))

    evaluate("baseline", base_ckpt)
    plan = []
    for s in seeds:
        plan += [(f"finetune-s{s}", "finetune", None, s), (f"random-s{s}", "random", rand_files[s], s),
                 (f"specialized-s{s}", "specialized", mask_files[a.k], s)]
    plan += [(f"specialized-k{k}-s{seeds[0]}", f"k{k}", mask_files[k], seeds[0]) for k in ks if k != a.k]
    evals: dict[str, Path] = {"baseline": out / "eval" / "baseline"}
    for name, arm, masks, s in plan:
        if a.deadline and time.time() > a.deadline and not (out / "eval" / name / "results.json").exists():
            log.warning("deadline passed: %s and the rest are not run", name)
            break
        evals[name] = continuation(name, masks, s)

    return report(a, out, codes, tier_of, seeds, ks, kept, kept_layers, directions, evals, summary, base_step,
                  final_lr, history, timer, time.monotonic() - t_study, read_eval, paired_test, write_compare)


def _scores(folder: Path) -> dict[str, dict]:
    res = _json(folder / "results.json")
    return {d: {"bleu": r["bleu"], "chrf": r["chrf"]} for d, r in res["directions"].items()}


def report(a, out, codes, tier_of, seeds, ks, kept, kept_layers, directions, evals, summary, base_step, final_lr,
           history, timer, study_s, read_eval, paired_test, write_compare) -> dict:
    rep = Path(a.report)
    rep.mkdir(parents=True, exist_ok=True)
    done = {n for n in evals if (evals[n] / "results.json").exists()}
    runs = {arm: {s: _scores(evals[f"{arm}-s{s}"]) for s in seeds if f"{arm}-s{s}" in done} for arm in ARMS}
    runs = {arm: v for arm, v in runs.items() if v}
    runs["baseline"] = {0: _scores(evals["baseline"])}
    agg = aggregate_arms(runs, tier_of)
    complete_seeds = [s for s in seeds if all(f"{arm}-s{s}" in done for arm in ARMS)]

    # seed-pooled paired bootstrap per group (lines of every complete seed concatenated)
    tests: dict[tuple[str, str], dict] = {}
    per_seed: dict[str, dict] = {}
    pooled_path = out / "compare" / f"pooled-{'-'.join(map(str, complete_seeds))}.json"
    if complete_seeds and pooled_path.exists():
        raw = _json(pooled_path)
        tests = {tuple(k.split(" vs ")): v for k, v in raw.items()}
    elif complete_seeds:
        texts = {(arm, s): read_eval(evals[f"{arm}-s{s}"])[1] for arm in ARMS for s in complete_seeds}
        dirs = list(texts[(ARMS[0], complete_seeds[0])])
        groups: dict[str, list[str]] = {}
        for d in dirs:
            for g in [*group_of(d, tier_of), d]:
                groups.setdefault(g, []).append(d)
        for b, a_ in COMPARISONS:
            t0 = time.monotonic()
            res = {}
            for g, ds in groups.items():
                ha, hb, rr = [], [], []
                for s in complete_seeds:
                    for d in ds:
                        ha += texts[(a_, s)][d][0]
                        hb += texts[(b, s)][d][0]
                        rr += texts[(a_, s)][d][1]
                res[g] = paired_test(ha, hb, rr, a.bootstrap)
            tests[(b, a_)] = res
            timer.t[f"bootstrap {b} vs {a_}"] = round(time.monotonic() - t0, 1)
        _write_json(pooled_path, {f"{b} vs {a_}": v for (b, a_), v in tests.items()})
    for s in complete_seeds:
        for b, a_ in COMPARISONS:
            d = out / "compare" / f"{b}-vs-{a_}-s{s}"
            c = _json(d / "compare.json") if (d / "compare.json").exists() else \
                write_compare(evals[f"{a_}-s{s}"], evals[f"{b}-s{s}"], d, a.bootstrap)
            per_seed[f"{b} vs {a_} (seed {s})"] = {"pooled": c["pooled"], "wins": c["wins"]}

    group_order = [g for g in ["all", *TIERS, "en-x", "x-en", "zero-shot"] if g in agg.get("specialized", {})]
    vrows = verdict_rows(agg, tests, group_order) if len(runs) > 3 else []
    dir_rows = verdict_rows(agg, tests, sorted(directions)) if len(runs) > 3 else []
    zs_dirs = sorted(d for d in (runs.get("baseline") or {0: {}})[0] if group_of(d, tier_of) == ["zero-shot"])
    zs_rows = verdict_rows(agg, tests, zs_dirs) if len(runs) > 3 else []
    verdict = plain_verdict(vrows, dir_rows) if vrows else ["not enough finished runs for a verdict"]

    # k sweep
    sweep_scores = {}
    for k in ks:
        name = f"specialized-s{seeds[0]}" if k == a.k else f"specialized-k{k}-s{seeds[0]}"
        if name in done:
            sc = group_scores(_scores(evals[name]), tier_of)
            sweep_scores[k] = {m: sc["all"][m] for m, _ in METRICS}
    sweep = sweep_rows(ks, kept, sweep_scores)

    # plots + data
    plots = make_plots(rep, sweep, agg, runs, seeds, tier_of, a.k)
    result = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="minutes"),
              "commit": _git("rev-parse", "--short", "HEAD"), "langs": codes, "directions": directions,
              "zero_shot": a.zero_shot, "baseline": {"steps_run": summary["step"], "best_step": base_step,
                                                     "minutes": summary["minutes"], "final_lr": final_lr,
                                                     "final": summary.get("final")},
              "extra_steps": a.extra_steps, "seeds": seeds, "complete_seeds": complete_seeds, "k": a.k, "ks": ks,
              "kept_fraction": {str(k): v for k, v in kept.items()}, "kept_by_layer": kept_layers,
              "sweep": sweep, "aggregate": agg, "verdict_rows": vrows, "direction_rows": dir_rows,
              "zero_shot_rows": zs_rows, "verdict": verdict,
              "seed_pooled_bootstrap": {f"{b} vs {a_}": v for (b, a_), v in tests.items()},
              "per_seed_bootstrap": per_seed, "timings_s": timer.t, "study_s": study_s,
              "runs_done": sorted(done), "args": vars(a)}
    _write_json(rep / "results.json", result)
    valid_hist = [(h["step"], h["valid_loss"]) for h in history if "valid_loss" in h]
    _write_json(rep / "baseline_history.json", history)
    log.info("verdict:\n%s", "\n".join(verdict))
    write_markdown(rep, result, agg, vrows, dir_rows, zs_rows, plots, tier_of, valid_hist)
    return result


def make_plots(rep: Path, sweep: list[dict], agg: dict, runs: dict, seeds: list[int], tier_of, k: float) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    # CSVs
    def num(v):
        return "" if v is None else f"{v:.4f}"

    lines = ["k,kept_fraction,bleu,chrf"] + [f"{r['k']},{num(r['kept'])},{num(r['bleu'])},{num(r['chrf'])}" for r in sweep]
    (rep / "k_sweep.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    arm_lines = ["arm,seed,group,bleu,chrf"]
    for arm, ss in runs.items():
        for s, pd in ss.items():
            gs = group_scores(pd, tier_of)
            for g in sorted(gs):
                arm_lines.append(f"{arm},{s},{g},{gs[g]['bleu']:.3f},{gs[g]['chrf']:.3f}")
    (rep / "arm_scores.csv").write_text("\n".join(arm_lines) + "\n", encoding="utf-8")

    done = [r for r in sweep if r["chrf"] is not None]
    if done:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
        for i, (m, name) in enumerate(METRICS):
            ax[i].plot([r["k"] for r in done], [r[m] for r in done], "o-", label=f"specialized (seed {seeds[0]})")
            if "finetune" in agg:
                ft = runs["finetune"].get(seeds[0])
                if ft:
                    ax[i].axhline(group_scores(ft, tier_of)["all"][m], color="gray", ls="--",
                                  label=f"fine-tune (seed {seeds[0]})")
            ax[i].set_xlabel("k")
            ax[i].set_ylabel(f"{name}, supervised mean")
            tw = ax[i].twinx()
            tw.plot([r["k"] for r in sweep], [r["kept"] for r in sweep], "s:", color="tab:orange", label="kept")
            tw.set_ylabel("kept fraction of FFN neurons", color="tab:orange")
            ax[i].legend(loc="lower left", fontsize=8)
        fig.suptitle("score and kept fraction vs k")
        fig.tight_layout()
        fig.savefig(rep / "k_sweep.png", dpi=90)
        plt.close(fig)
        files.append("k_sweep.png")
    arms = [x for x in ARMS if x in agg]
    if arms:
        groups = [g for g in ["all", *TIERS, "zero-shot"] if all(g in agg[x] for x in arms)]
        fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
        w = 0.8 / len(arms)
        for i, (m, name) in enumerate(METRICS):
            for j, arm in enumerate(arms):
                xs = [gi + (j - (len(arms) - 1) / 2) * w for gi in range(len(groups))]
                mu = [agg[arm][g][m]["mean"] for g in groups]
                ax[i].bar(xs, mu, w, label=arm, alpha=0.75)
                for x, g in zip(xs, groups):
                    ax[i].plot([x] * len(agg[arm][g][m]["values"]), agg[arm][g][m]["values"], "k.", ms=4)
            if "baseline" in agg:
                for gi, g in enumerate(groups):
                    ax[i].plot([gi - 0.45, gi + 0.45], [agg["baseline"][g][m]["mean"]] * 2, "r-", lw=1,
                               label="baseline" if gi == 0 else None)
            ax[i].set_xticks(range(len(groups)), groups)
            ax[i].set_ylabel(name)
            lo = min(agg[x][g][m]["mean"] for x in arms for g in groups)
            ax[i].set_ylim(max(0, lo - 5), None)
        ax[0].legend(fontsize=8)
        fig.suptitle(f"per arm (mean over seeds, dots: seeds; k = {k})")
        fig.tight_layout()
        fig.savefig(rep / "arms.png", dpi=90)
        plt.close(fig)
        files.append("arms.png")
    return files


def write_markdown(rep, r, agg, vrows, dir_rows, zs_rows, plots, tier_of, valid_hist) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import _timing as tm  # the benchmarks' machine description (imports torch: only when writing)

    a = r["args"]
    b = r["baseline"]
    t = r["timings_s"]
    lines = ["# Neuron Specialization study on 2 CPU cores (issue #16, item 6)", "",
             "Generated by `examples/study_cpu.py` (the markdown above *Notes* is rewritten on every run).", "",
             "## Setup", "",
             f"- command: `{a['command']}`",
             f"- date: {r['date']}; commit {r['commit']}; machine: {tm.cpu_model()} ({platform.machine()})"
             f", {os.cpu_count()} cores (shared with other engineers' tests), torch threads {a['threads']}, "
             f"nice {a['nice']}",
             f"- corpus: built-in, {len(r['langs'])} languages ({', '.join(r['langs'])}) ↔ en, "
             f"{len(r['directions'])} supervised directions; zero-shot test pairs: {r['zero_shot'] or 'none'}",
             f"- baseline: tiny preset, {a['max_tokens']}-token batches, lr {a['lr']} (warm-up {a['warmup']}, "
             f"inverse-sqrt), EMA 0.995, validation loss every {a['valid_every']} steps on {a['valid_sentences']} "
             f"valid sentences per direction, patience {a['patience']}, caps {a['max_steps']} steps / "
             f"{a['max_minutes']} min; ran {b['steps_run']} steps in {b['minutes']:.1f} min, best checkpoint at "
             f"step {b['best_step']} (the continuations start there, at lr {b['final_lr']:.2e})",
             f"- continuations: {r['extra_steps']} steps each (fresh Adam, warm-up {max(1, min(50, r['extra_steps'] // 4))}"
             f", inverse-sqrt from the baseline's last lr, same batch size; the seed sets the batch stream and, for "
             f"random, the masks); fine-tune / random (size-matched to k = {r['k']}) / specialized k = {r['k']} with "
             f"seeds {r['seeds']} (finished for all three arms: {r['complete_seeds']}); k sweep {r['ks']} with seed "
             f"{r['seeds'][0]}",
             f"- masks recorded on the valid split ({a['record_sentences']} sentences per direction), all FFN layers "
             f"of encoder and decoder",
             f"- evaluation: test split, greedy (beam {a['beam']}), the first {a['eval_sentences']} evenly spaced "
             f"lines per direction (`evaluate_checkpoint(max_sentences={a['eval_sentences']})`), sacrebleu BLEU "
             f"and chrF++; tier and group scores are unweighted means over directions",
             f"- significance: paired bootstrap ({a['bootstrap']} resamples, sacrebleu) on the lines of all "
             f"finished seeds concatenated (seed-pooled), per group and per direction; also per seed "
             f"(compare JSON in results.json); * = p < {ALPHA}",
             f"- wall time: {r['study_s'] / 60:.1f} min for this invocation; per step (s): "
             + ", ".join(f"{k} {v:.0f}" for k, v in t.items()), ""]
    if valid_hist:
        lines += ["Baseline validation loss (label-smoothed, bits/token) by step: "
                  + ", ".join(f"{st} {v:.3f}" for st, v in valid_hist), ""]
    lines += ["## Verdict", "", *[f"- {v}" for v in r["verdict"]], "",
              "'significant': the order held on the means and both specialized − fine-tune and fine-tune − random "
              "are significant in the seed-pooled bootstrap.", "",
              "## Scores (mean ± sd over seeds) and seed-pooled bootstrap", "", verdict_table(vrows) if vrows else "–",
              "", "Baseline (no continuation): " + ", ".join(
                  f"{g} BLEU {agg['baseline'][g]['bleu']['mean']:.2f} / chrF++ {agg['baseline'][g]['chrf']['mean']:.2f}"
                  for g in ["all", *TIERS, "zero-shot"] if g in agg.get("baseline", {})), "",
              "## Per direction", "", verdict_table(dir_rows) if dir_rows else "–", "",
              "## Zero-shot directions", "", verdict_table(zs_rows) if zs_rows else "none evaluated", "",
              "## k sweep (one seed)", "", "| k | kept fraction (mean over layers, directions) | BLEU | chrF++ |",
              "|---|---|---|---|"]
    for s in r["sweep"]:
        lines.append(f"| {s['k']} | {s['kept']:.3f} | " + " | ".join(
            "–" if s[m] is None else f"{s[m]:.2f}" for m, _ in METRICS) + " |")
    lines += [""] + [f"![{p}]({p})" for p in plots] + [
        "", "Data: `results.json` (everything above plus per-seed bootstrap), `k_sweep.csv`, `arm_scores.csv`, "
        "`baseline_history.json` (training/validation log of the baseline).", ""]
    md_path = rep / "README.md"
    notes = ""
    if md_path.exists():
        old = md_path.read_text(encoding="utf-8")
        if "\n## Notes\n" in old:
            notes = old[old.index("\n## Notes\n"):]
    md_path.write_text("\n".join(lines) + notes, encoding="utf-8")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/study-cpu", help="run folder (git-ignored; default runs/study-cpu)")
    p.add_argument("--report", default="docs/study-cpu", help="where the report, plots and JSON go")
    p.add_argument("--langs", default=DEFAULT_LANGS)
    p.add_argument("--zero-shot", default=DEFAULT_ZERO_SHOT, help="x-y test pairs ('' for none)")
    p.add_argument("--vocab-size", type=int, default=4000)
    p.add_argument("--max-tokens", type=int, default=1500, help="tokens per batch (the demo's)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--valid-every", type=int, default=100)
    p.add_argument("--valid-sentences", type=int, default=50)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=4000, help="step cap of the baseline")
    p.add_argument("--max-minutes", type=float, default=32.0, help="wall-clock cap of the baseline")
    p.add_argument("--extra-steps", type=int, default=250, help="steps of every continuation")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--k", type=float, default=0.95)
    p.add_argument("--ks", default="0.8,0.9,0.95,0.99")
    p.add_argument("--record-sentences", type=int, default=200)
    p.add_argument("--eval-sentences", type=int, default=100)
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1, help="baseline seed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nice", type=int, default=5, help="os.nice increment of this process (0: none)")
    p.add_argument("--deadline", default=None,
                   help="UTC time HH:MM: no new continuation starts after it (the report covers what finished)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from what exists")
    a = p.parse_args(argv)
    a.command = " ".join(["python", "examples/study_cpu.py",
                          *(x for x in (sys.argv[1:] if argv is None else argv) if x != "--report-only")])
    if a.deadline:
        hh, mm = map(int, a.deadline.split(":"))
        now = _dt.datetime.now(_dt.timezone.utc)
        a.deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
    return a


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    a = parse_args(argv)
    if a.nice:
        os.nice(a.nice)
    if a.report_only:
        a.deadline = 1.0  # nothing new starts
    run_study(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
