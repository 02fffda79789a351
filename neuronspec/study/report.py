"""The study's report in the seed paper's layout (README.md, results.json, CSV and PNG plots):

* main table per metric: rows = methods, columns = resource tier × en→x / x→en / average and the
  overall averages; a method's cell is its mean over seeds with Δ vs the baseline, starred when
  the seed-pooled paired bootstrap (nmt/bootstrap.py) gives p < 0.05; Δθ (extra parameters) and
  the zero-shot directions improved / declined vs the baseline;
* interference table: on the bilingual directions, the bilingual models' scores and every
  multilingual system as Δ against them, per tier and side;
* head to head: Ours (NS) against every other method, seed by seed (same seed = same batch
  stream), Δ starred by the paired bootstrap on the lines of the seeds both have;
* efficiency table: deriving the sub-networks (time, peak RSS increase), holding them (bytes),
  and the training-step time vs dense, measured side by side.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import platform
from pathlib import Path
from typing import Mapping

from neuronspec.atomic import save_figure_atomic, write_atomic
from neuronspec.nmt.compare import ALPHA, read_eval
from neuronspec.study import efficiency, scores
from neuronspec.study.arms import ARMS, LABELS
from neuronspec.study.grid import Grid, write_json
from neuronspec.study.scores import METRICS, TIERS


def columns(tiers: list[str]) -> list[tuple[str, str]]:
    """(group, header) of the main table: tier × (en→x, x→en, avg), then all × the same."""
    out = []
    for t in [*tiers, "all"]:
        pre = "" if t == "all" else f"{t}/"
        out += [(f"{pre}en-x", f"{t} en→x"), (f"{pre}x-en", f"{t} x→en"), (t, f"{t} avg")]
    return out


def _per_dir(folder: Path) -> tuple[dict, dict]:
    res, texts = read_eval(folder)
    return {d: {"bleu": r["bleu"], "chrf": r["chrf"]} for d, r in res["directions"].items()}, texts


def star(test: dict | None, metric: str) -> str:
    """'*' when the paired test found a difference with p < ALPHA, else ''."""
    return "*" if test is not None and test[f"p_{metric}"] < ALPHA and test[f"d_{metric}"] != 0 else ""


def cell(mean: float | None, test: dict | None, metric: str, base: float | None) -> str:
    """'32.10 (+0.42*)' — the mean, Δ vs the reference, * when significant; '–' when missing."""
    if mean is None:
        return "–"
    if base is None:
        return f"{mean:.2f}"
    d = mean - base
    return f"{mean:.2f} ({d:+.2f}{star(test, metric)})"


def main_table(agg: dict, tests: dict, rows: list[str], cols: list[tuple[str, str]], metric: str,
               dtheta: Mapping[str, float], zero: Mapping[str, dict]) -> str:
    """Markdown: one row per method (baseline first, absolute), the paper's columns."""
    head = "| method | Δθ | " + " | ".join(h for _, h in cols) + " | zero-shot improved / declined |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    for r in rows:
        base = agg.get("baseline", {})
        cells = []
        for g, _ in cols:
            m = agg.get(r, {}).get(g, {}).get(metric, {}).get("mean")
            b = None if r == "baseline" else base.get(g, {}).get(metric, {}).get("mean")
            cells.append(cell(m, tests.get(r, {}).get(g), metric, b))
        z = zero.get(r, {}).get(metric)
        zs = "–" if not z else (f"{z['improved']} / {z['declined']} of {z['directions']} "
                                f"(sig. {z['sig_improved']} / {z['sig_declined']})")
        lines.append(f"| {LABELS.get(r, r)} | {dtheta.get(r, 0.0):+.1%} | " + " | ".join(cells) + f" | {zs} |")
    return "\n".join(lines)


def zero_shot_counts(agg: dict, tests: dict, arm: str, zs_dirs: list[str]) -> dict:
    """Per metric: zero-shot directions whose mean over seeds is above / below the baseline's
    (and of those, significant in the seed-pooled per-direction bootstrap)."""
    out = {}
    for m, _ in METRICS:
        d = {x: agg[arm][x][m]["mean"] - agg["baseline"][x][m]["mean"] for x in zs_dirs
             if x in agg.get(arm, {}) and x in agg["baseline"]}
        sig = {x: tests.get(arm, {}).get(x) for x in d}
        out[m] = {"directions": len(d), "improved": sum(v > 0 for v in d.values()),
                  "declined": sum(v < 0 for v in d.values()),
                  "sig_improved": sum(v > 0 and sig[x] is not None and sig[x][f"p_{m}"] < ALPHA for x, v in d.items()),
                  "sig_declined": sum(v < 0 and sig[x] is not None and sig[x][f"p_{m}"] < ALPHA for x, v in d.items())}
    return out


def interference_table(per: Mapping[str, Mapping[int, dict]], bil: dict, tests: dict, rows: list[str],
                       groups: list[tuple[str, str]], metric: str, tier_of) -> tuple[str, dict]:
    """Markdown and data: on the bilingual directions, the bilingual score per group (first row)
    and each system's mean over seeds as Δ against it (starred by the seed-pooled bootstrap)."""
    dirs = list(bil)
    mem = scores.members(dirs, tier_of)
    data: dict[str, dict] = {}
    lines = ["| system | " + " | ".join(h for _, h in groups) + " |", "|" + "---|" * (len(groups) + 1)]
    b_scores = {g: sum(bil[d][metric] for d in mem[g]) / len(mem[g]) for g, _ in groups if g in mem}
    lines.append("| Bilingual (absolute) | " + " | ".join(
        f"{b_scores[g]:.2f}" if g in b_scores else "–" for g, _ in groups) + " |")
    for r in rows:
        if r not in per:
            continue
        data[r] = {}
        cells = []
        for g, _ in groups:
            if g not in mem:
                cells.append("–")
                continue
            vals = [sum(per[r][s][d][metric] for d in mem[g]) / len(mem[g]) for s in per[r]]
            delta = sum(vals) / len(vals) - b_scores[g]
            t = tests.get(r, {}).get(g)
            data[r][g] = {"delta": delta, "p": None if t is None else t[f"p_{metric}"]}
            cells.append(f"{delta:+.2f}{star(t, metric)}")
        lines.append(f"| {LABELS.get(r, r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), data


def head_to_head(per: Mapping[str, Mapping[int, dict]], texts: Mapping[str, Mapping[int, dict]], rows: list[str],
                 cols: list[tuple[str, str]], tier_of, n_samples: int, lead: str = "ns") -> tuple[dict, dict]:
    """Markdown per metric and data: ``lead`` minus each other method in ``rows`` on the seeds both
    ran (means over those seeds), starred when the paired bootstrap of ``lead`` against that method,
    seed with seed, on the group's lines pooled gives p < ALPHA."""
    md = {m: ["| Ours (NS) minus | " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * (len(cols) + 1)]
          for m, _ in METRICS}
    data: dict[str, dict] = {}
    for r in rows:
        seeds = sorted(set(per.get(lead, {})) & set(per.get(r, {})))
        if r == lead or not seeds:
            continue
        agg = scores.aggregate_arms({lead: {s: per[lead][s] for s in seeds}, r: {s: per[r][s] for s in seeds}},
                                    tier_of)
        st: dict = {}
        for s in seeds:
            st.update(scores.direction_stats(texts[r][s], {s: texts[lead][s]}))
        mem = scores.members(per[lead][seeds[0]], tier_of)
        tests = {g: scores.pooled_test(st, mem[g], n_samples) for g, _ in cols if g in mem}  # both metrics
        data[r] = {"seeds": seeds}
        for m, _ in METRICS:
            cells = []
            for g, _ in cols:
                if g not in mem:
                    cells.append("–")
                    continue
                t = tests[g]
                delta = agg[lead][g][m]["mean"] - agg[r][g][m]["mean"]
                data[r].setdefault(g, {})[m] = {"delta": delta, "p": None if t is None else t[f"p_{m}"]}
                cells.append(f"{delta:+.2f}{star(t, m)}")
            md[m].append(f"| {LABELS.get(r, r)} | " + " | ".join(cells) + " |")
    return {m: "\n".join(v) for m, v in md.items()}, data


def efficiency_rows(timings: Mapping[str, dict], eff: dict | None, runs: Mapping[str, dict],
                    arms: list[str]) -> list[dict]:
    """One row per continuation arm: derivation cost, storage bytes, Δθ, step time vs dense."""
    out = []
    steps = (eff or {}).get("arms", {})
    for arm in arms:
        r = next((v for v in runs.values() if v["arm"] == arm), None)
        if r is None:
            continue
        der = efficiency.derivation(timings, arm)
        held = r["mask_bytes"] + 4 * r["extra_params"]  # masks as bits, adapters as float32
        st = steps.get(arm)
        out.append({"arm": arm, "derive_s": der["seconds"], "derive_peak_rss_bytes": der["peak_rss_bytes"],
                    "derive_peak_cuda_bytes": der["peak_cuda_bytes"],
                    "held_bytes": held, "dtheta": r["extra_params"] / r["base_params"],
                    "step_ms": None if st is None else 1000 * st["median_s"],
                    "step_ratio": None if st is None else st["ratio"]})
    return out


def size(nbytes: float) -> str:
    """'512 B', '3.4 KiB', '10.50 MiB'."""
    if nbytes < 1024:
        return f"{nbytes:.0f} B"
    return f"{nbytes / 1024:.1f} KiB" if nbytes < 2**20 else f"{nbytes / 2**20:.2f} MiB"


def efficiency_table(rows: list[dict]) -> str:
    """Markdown; a "peak GPU memory" column when a derivation ran with CUDA."""
    gpu = any(r.get("derive_peak_cuda_bytes") is not None for r in rows)
    lines = ["| method | derive: wall time | derive: peak RSS increase | " + ("derive: peak GPU memory | " if gpu else "")
             + "held: bytes | Δθ | train step (median) | vs dense |", "|---|---|---|---|---|---|---|" + "---|" * gpu]
    for r in rows:
        g = r.get("derive_peak_cuda_bytes")
        lines.append(f"| {LABELS[r['arm']]} | {r['derive_s']:.1f} s | {size(r['derive_peak_rss_bytes'])} | "
                     + (("–" if g is None else size(g)) + " | " if gpu else "")
                     + f"{size(r['held_bytes'])} | {r['dtheta']:+.1%} | "
                     + ("–" if r["step_ms"] is None else f"{r['step_ms']:.1f} ms") + " | "
                     + ("–" if r["step_ratio"] is None else f"{r['step_ratio']:.2f}x") + " |")
    return "\n".join(lines)


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_atomic(path, buf.getvalue())


def _bars(plt, path: Path, series: Mapping[str, list[float]], ticks: list[str], ylabel: str) -> None:
    """Grouped bars: one group per tick, one bar per series; a line at 0."""
    fig, ax = plt.subplots(figsize=(max(8, len(ticks) * 0.9), 4))
    w = 0.8 / max(1, len(series))
    for j, (label, values) in enumerate(series.items()):
        ax.bar([i + (j - (len(series) - 1) / 2) * w for i in range(len(ticks))], values, w, label=label)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(ticks)), ticks, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=90)
    plt.close(fig)


def plots(rep: Path, agg: dict, rows: list[str], cols: list[tuple[str, str]], inter: dict,
          eff_rows: list[dict]) -> list[str]:
    """PNG plots (and their CSV data): Δ chrF++ vs baseline per column, interference, step time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    arms = [r for r in rows if r != "baseline" and r in agg]
    data = [[r, g, agg[r][g]["chrf"]["mean"] - agg["baseline"][g]["chrf"]["mean"]]
            for r in arms for g, _ in cols if g in agg[r] and g in agg["baseline"]]
    _csv(rep / "delta_vs_baseline.csv", ["method", "group", "delta_chrf"], data)
    if data:
        series = {LABELS.get(r, r): [agg[r][g]["chrf"]["mean"] - agg["baseline"][g]["chrf"]["mean"] if g in agg[r]
                                     else 0 for g, _ in cols] for r in arms}
        _bars(plt, rep / "delta_vs_baseline.png", series, [h for _, h in cols],
              "Δ chrF++ vs baseline (mean over seeds)")
        files.append("delta_vs_baseline.png")
    idata = [[r, g, v["delta"]] for r, gs in inter.items() for g, v in gs.items()]
    _csv(rep / "interference.csv", ["system", "group", "delta_chrf_vs_bilingual"], idata)
    if idata:
        present = {g for _, g, _ in idata}
        groups = [(g, h) for g, h in cols if g in present]  # the table's column order
        series = {LABELS.get(r, r): [gs.get(g, {}).get("delta", 0) for g, _ in groups] for r, gs in inter.items()}
        _bars(plt, rep / "interference.png", series, [h for _, h in groups],
              "Δ chrF++ vs bilingual (< 0: interference)")
        files.append("interference.png")
    timed = [r for r in eff_rows if r["step_ratio"] is not None]
    _csv(rep / "efficiency.csv", ["method", "derive_s", "derive_peak_rss_bytes", "held_bytes", "dtheta", "step_ms",
                                  "step_ratio"],
         [[r["arm"], r["derive_s"], r["derive_peak_rss_bytes"], r["held_bytes"], r["dtheta"], r["step_ms"],
           r["step_ratio"]] for r in eff_rows])
    if timed:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar([LABELS[r["arm"]] for r in timed], [r["step_ratio"] for r in timed])
        ax.axhline(1, color="k", lw=0.8)
        ax.set_ylabel("training step time / dense")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        fig.tight_layout()
        save_figure_atomic(fig, rep / "step_time.png", dpi=90)
        plt.close(fig)
        files.append("step_time.png")
    return files


def build(grid: Grid, a, base: Mapping, pdata, tier_of: Mapping[str, str], evals: dict, meta: dict,
          seconds: float) -> dict:
    """Read every finished evaluation, test, tabulate, plot; write the report folder."""
    rep = Path(a.report)
    rep.mkdir(parents=True, exist_ok=True)
    base_scores, base_texts = _per_dir(evals["baseline"])
    per: dict[str, dict[int, dict]] = {"baseline": {0: base_scores}}
    texts: dict[str, dict[int, dict]] = {}
    for r in evals["runs"].values():
        sc, tx = _per_dir(r["eval"])
        per.setdefault(r["arm"], {})[r["seed"]] = sc
        texts.setdefault(r["arm"], {})[r["seed"]] = tx
    agg = scores.aggregate_arms(per, tier_of)
    tiers = [t for t in TIERS if t in agg["baseline"]]
    cols = columns(tiers)
    zs_dirs = sorted(d for d in base_scores if scores.group_of(d, tier_of) == ["zero-shot"])
    tests: dict[str, dict] = {}
    for arm, tx in texts.items():
        st = scores.direction_stats(base_texts, tx)
        mem = scores.members(base_scores, tier_of)
        tests[arm] = {g: scores.pooled_test(st, mem[g], a.bootstrap) for g, _ in cols if g in mem}
        tests[arm].update({d: scores.pooled_test(st, [d], a.bootstrap) for d in zs_dirs})
    rows = ["baseline"] + [x for x in [*ARMS, *sorted(k for k in per if "@" in k)] if x in per and x != "baseline"]
    dtheta = {r["arm"]: r["extra_params"] / r["base_params"] for r in evals["runs"].values()}
    zero = {r: zero_shot_counts(agg, tests, r, zs_dirs) for r in rows if r != "baseline" and zs_dirs}
    tables = {m: main_table(agg, tests, rows, cols, m, dtheta, zero) for m, _ in METRICS}

    h2h_md, h2h = head_to_head({**per, "baseline": {s: base_scores for s in per.get("ns", {})}},
                               {**texts, "baseline": {s: base_texts for s in texts.get("ns", {})}},
                               rows, cols, tier_of, a.bootstrap) if "ns" in per else ({}, {})
    inter_md, inter = {}, {}
    if evals["bilingual"]:
        bil, bil_texts = {}, {}
        for d, folder in evals["bilingual"].items():
            sc, tx = _per_dir(folder)
            bil[d], bil_texts[d] = sc[d], tx[d]
        itests = {}
        all_texts = {**texts, "baseline": {0: base_texts}}
        for r, tx in all_texts.items():
            st = scores.direction_stats(bil_texts, tx)
            mem = scores.members(list(bil), tier_of)
            itests[r] = {g: scores.pooled_test(st, mem[g], a.bootstrap) for g in mem}
        for m, _ in METRICS:
            inter_md[m], data = interference_table(per, bil, itests, rows, cols, m, tier_of)
            inter[m] = data
    eff_rows = efficiency_rows(grid.timings, evals.get("efficiency"), evals["runs"],
                               [x for x in ARMS if x != "bilingual"])
    files = plots(rep, agg, rows, cols, inter.get("chrf", {}), eff_rows)
    results = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="minutes"),
               "args": {k: (v if isinstance(v, (int, float, str, list, dict, type(None))) else str(v))
                        for k, v in vars(a).items()},
               "directions": sorted(base_scores), "zero_shot_directions": zs_dirs, "tiers": tier_of,
               "baseline_checkpoint_step": base.get("step"), "aggregate": agg, "tests_vs_baseline": tests,
               "zero_shot": zero, "head_to_head": h2h, "dtheta": dtheta, "interference": inter,
               "bilingual_directions": list(evals["bilingual"]), "efficiency": eff_rows,
               "step_timing": evals.get("efficiency"), "timings": grid.timings, "study_minutes": seconds / 60,
               "steps_run_now": grid.ran, **meta}
    write_json(rep / "results.json", results)
    write_atomic(rep / "README.md", markdown(results, tables, h2h_md, inter_md, eff_rows, files))
    return results


def markdown(r: dict, tables: dict, h2h_md: dict, inter_md: dict, eff_rows: list[dict], files: list[str]) -> str:
    a = r["args"]
    st = r.get("step_timing") or {}
    est = r.get("estimate_minutes_up_front", {})
    lines = ["# Neuron Specialization vs the paper's baselines (`neuronspec study`)", "",
             f"- command: `{a.get('command_line') or 'neuronspec study (called from Python)'}`; arms "
             f"{', '.join(a['arms'])}, seeds {a['seeds']}, languages {', '.join(a['langs'])}, preset {a['preset']}, "
             f"device {a.get('device', 'cpu')}" + (f", prepared folder {a['data']}" if a.get("data") else "")
             + (f", baseline given: {a['baseline']}" if a.get("baseline") else ""),
             f"- date {r['date']}; {platform.machine()}, {os.cpu_count()} CPUs, torch threads {a['threads']}; "
             f"study steps {sum(t['seconds'] for t in r['timings'].values()) / 60:.1f} min in all (timings.json), "
             f"{r['study_minutes']:.1f} min this invocation (up-front ESTIMATE, not measured: "
             f"{est.get('total', float('nan')):.0f} min)",
             f"- budgets: every continuation {a['extra_steps']} updates per seed (fresh Adam, inverse-sqrt from "
             f"the baseline's last lr); LaSS fine-tunes {a['lass_steps']} updates per direction, prune α "
             f"{a['lass_prune']}; NS k {a['k']}; adapters bottleneck {a['adapter_dim']}; bilingual: plateau "
             f"(patience {a['patience']}), caps {a['bilingual_max_steps']} updates / {a['bilingual_minutes']} min",
             f"- evaluation: greedy, the first {a['eval_sentences']} evenly spaced test lines per direction; "
             f"scores are unweighted means over a group's directions and over seeds; Δ vs baseline, * = p < {ALPHA} "
             f"in the paired bootstrap ({a['bootstrap']} resamples) on the group's lines of every seed pooled", ""]
    for m, name in METRICS:
        lines += [f"## Main table: {name}", "", tables[m], ""]
    if h2h_md:
        lines += ["## Head to head: Ours (NS) minus each method", "",
                  "Each method's seeds paired with NS's seed of the same number (same batch stream; the baseline "
                  "against every NS seed); Δ = NS − method, * = p < 0.05 in the paired bootstrap of NS against it "
                  "on the group's lines of those seeds pooled.", ""]
        for m, name in METRICS:
            lines += [f"### {name}", "", h2h_md[m], ""]
    if inter_md:
        lines += ["## Interference: multilingual systems vs bilingual models", "",
                  f"Directions: {', '.join(r['bilingual_directions'])}. First row: the bilingual models' scores; "
                  "the others: Δ against them (< 0: the multilingual system loses to bilingual = interference).", ""]
        for m, name in METRICS:
            lines += [f"### {name}", "", inter_md[m], ""]
    lines += ["## Efficiency", "",
              "Deriving the sub-networks: wall time and peak RSS increase (resident set size sampled every 20 ms "
              "minus its value at the start) of the study steps that derive them (NS: record + select; LaSS: the "
              "per-direction fine-tunes + pruning; the others derive nothing). Held: NS masks as bits "
              "(neurons × directions per layer), LaSS masks as packed bits, adapters as float32 weights. Training "
              f"step: median of {st.get('rounds', '–')} interleaved steps per arm on the same batches, load average "
              f"before / after {st.get('load_before', '–')} / {st.get('load_after', '–')}.", "",
              efficiency_table(eff_rows), ""]
    lines += [f"![{f}]({f})" for f in files]
    lines += ["", "Data: results.json (every score, test and timing), delta_vs_baseline.csv, interference.csv, "
              "efficiency.csv.", ""]
    return "\n".join(lines)
