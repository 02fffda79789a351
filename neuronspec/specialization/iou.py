"""Overlap of neuron sets between directions (docs/design.md §1 "Analysis"), and `neuronspec analyze`.

Per layer, IoU(S_a, S_b) = |S_a ∩ S_b| / |S_a ∪ S_b| for every pair of directions
(two empty sets count as identical: IoU 1). Statistics per layer:
- the paper's mean IoU (the headline, trended and plotted): encoder layers compare x→pivot
  directions with each other, decoder layers pivot→x directions (in the encoder every pivot→x
  direction reads the same source language, which would inflate an all-pairs mean);
  `truncate=True` truncates each pair to a whole percent first, as the original notebook does;
- mean IoU over all pairs of distinct directions (kept as a secondary column), and within
  pivot→x and within x→pivot;
- within one kind (both pivot→x or both x→pivot), comparing the non-pivot languages:
  same-family vs different-family (top-level family, e.g. Indo-European), same-branch vs
  different-branch (e.g. Slavic) and same-script vs different-script mean IoU, and the
  Spearman correlation of IoU with `neuronspec.data.languages.relatedness` (pairs whose
  languages are not EC30 are left out of these).

    neuronspec analyze --masks runs/masks.pt --out runs/analysis
writes iou.json, report.md, mean_iou.png and one heatmap_<layer>.png per layer.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from neuronspec.data import languages
from neuronspec.data.manifest import remove_stale_temp_folders, temp_folder

from neuronspec.atomic import built_folder, save_figure_atomic, strict_json, write_atomic
from neuronspec.files import check_output_folder
from neuronspec.ops import load_layer_masks
from neuronspec.ops import TaskMasks
from neuronspec.specialization.select import K_OPTIONS

log = logging.getLogger(__name__)

# Tan et al., k = 0.7, mean IoU (%) by layer, 6+6 layers (docs/design.md §1).
PUBLISHED = {"encoder": [37.7, 47.9, 52.6, 59.1, 63.0, 65.5], "decoder": [52.2, 49.7, 41.4, 29.9, 24.1, 25.9]}


def iou_matrix(masks: TaskMasks) -> np.ndarray:
    """float64 [T, T]: IoU between the neuron sets of every pair of tasks (symmetric,
    diagonal 1, values in [0, 1])."""
    if not isinstance(masks, TaskMasks):
        raise TypeError(f"masks: expected a TaskMasks, got {type(masks).__name__}")
    d = masks.to("cpu").to_dense().double()
    inter = d @ d.T
    size = d.sum(1)
    union = size[:, None] + size[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    return iou.numpy()


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); nan if either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman: x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return float("nan")
    return float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy))


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for val in np.unique(v):  # average ranks of ties
        sel = v == val
        ranks[sel] = ranks[sel].mean()
    return ranks


def _mean(vals) -> float | None:
    return float(np.mean(vals)) if len(vals) else None


def _lang_facts(code: str):
    try:
        return languages.info(code)
    except ValueError:
        return None


def layer_stats(iou: np.ndarray, names: list[str], pivot: str = "en", side: str | None = None,
                truncate: bool = False) -> dict:
    """Statistics of one layer's IoU matrix (see module docstring); None where no pair applies.
    side: "encoder"/"decoder" selects the pairs of the paper's mean ("paper")."""
    T = len(names)
    dirs = [n.split("-", 1) for n in names]
    kind = ["en2x" if s == pivot else "x2en" if t == pivot else "other" for s, t in dirs]
    other = [t if k == "en2x" else s if k == "x2en" else None for (s, t), k in zip(dirs, kind)]
    all_pairs, by_kind = [], {"en2x": [], "x2en": []}
    fam, br, scr, rel = {True: [], False: []}, {True: [], False: []}, {True: [], False: []}, ([], [])
    for i in range(T):
        for j in range(i + 1, T):
            v = float(iou[i, j])
            all_pairs.append(v)
            if kind[i] != kind[j] or kind[i] == "other":
                continue
            by_kind[kind[i]].append(v)
            a, b = _lang_facts(other[i]), _lang_facts(other[j])
            if a is None or b is None:
                continue
            fam[a.family == b.family].append(v)
            br[a.family == b.family and a.branch == b.branch].append(v)
            scr[a.script == b.script].append(v)
            rel[0].append(languages.relatedness(a.code, b.code))
            rel[1].append(v)
    rho = spearman(rel[0], rel[1]) if len(rel[0]) >= 2 else float("nan")
    paper_pairs = by_kind.get({"encoder": "x2en", "decoder": "en2x"}.get(side), [])
    if truncate:
        paper_pairs = [math.floor(v * 100 + 1e-9) / 100 for v in paper_pairs]
    return {
        "paper": _mean(paper_pairs),
        "mean": _mean(all_pairs), "mean_en2x": _mean(by_kind["en2x"]), "mean_x2en": _mean(by_kind["x2en"]),
        "same_family": _mean(fam[True]), "diff_family": _mean(fam[False]),
        "same_branch": _mean(br[True]), "diff_branch": _mean(br[False]),
        "same_script": _mean(scr[True]), "diff_script": _mean(scr[False]),
        "spearman_relatedness": None if math.isnan(rho) else rho, "pairs_with_facts": len(rel[0]),
        "kept_fraction": None,
    }


def analyze(masks: dict[str, TaskMasks], pivot: str = "en", truncate: bool = False) -> dict:
    """{"layers": {layer: {"iou": [[...]], "stats": {...}}}, "names": [...],
    "encoder"/"decoder": [the paper's mean IoU per layer], "encoder_all"/"decoder_all": [the
    all-pairs mean per layer], "truncate": bool}."""
    if not masks:
        raise ValueError("masks: no layers to analyze")
    names = None
    out = {"layers": {}, "encoder": [], "decoder": [], "encoder_all": [], "decoder_all": [], "truncate": truncate}
    for layer, m in masks.items():
        if names is None:
            names = list(m.names)
        elif list(m.names) != names:
            raise ValueError(f"masks[{layer!r}]: directions {m.names[:3]}... differ from the first layer's")
        iou = iou_matrix(m)
        side = "encoder" if layer.startswith("encoder") else "decoder" if layer.startswith("decoder") else None
        stats = layer_stats(iou, names, pivot, side, truncate)
        stats["kept_fraction"] = float(m.fractions().mean())
        out["layers"][layer] = {"iou": iou.tolist(), "stats": stats}
        if side:
            out[side].append(stats["paper"])
            out[f"{side}_all"].append(stats["mean"])
    out["names"] = names
    return out


def trend(values: list[float | None]) -> str:
    """'rising', 'falling' or 'mixed' from the first to the last layer (Spearman with depth)."""
    v = [x for x in values if x is not None]
    if len(v) < 2:
        return "n/a"
    rho = spearman(np.arange(len(v)), v)
    if math.isnan(rho):
        return "flat"
    return "rising" if rho >= 0.8 else "falling" if rho <= -0.8 else "mixed"


# ---------------------------------------------------------------------------- outputs
def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (lazy: pyplot is slow to import, and the
    backend must be chosen before it is)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heatmap(iou: np.ndarray, names: list[str], title: str, path: Path) -> None:
    plt = _pyplot()
    T = len(names)
    size = max(4.0, 0.32 * T + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(np.asarray(iou) * 100, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(T), names, rotation=90, fontsize=7)
    ax.set_yticks(range(T), names, fontsize=7)
    if T <= 12:
        for i in range(T):
            for j in range(T):
                ax.text(j, i, f"{iou[i][j] * 100:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if iou[i][j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="IoU (%)")
    ax.set_title(title)
    save_figure_atomic(fig, path)
    plt.close(fig)


def plot_mean_iou(result: dict, path: Path, k_label: str = "") -> None:
    """Mean IoU by relative depth for encoder and decoder, ours beside the published trend."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, side in zip(axes, ("encoder", "decoder")):
        layers = [l for l in result["layers"] if l.startswith(side)]
        if layers:
            x = [(i + 1) / len(layers) for i in range(len(layers))]
            paper = "x→en pairs" if side == "encoder" else "en→x pairs"
            for key, label, style in (("paper", f"ours, {paper} (the paper's rule) {k_label}", "o-"),
                                      ("mean", "ours, all pairs", "s--")):
                ys = [result["layers"][l]["stats"][key] for l in layers]
                if all(y is not None for y in ys):
                    ax.plot(x, [y * 100 for y in ys], style, label=label, alpha=1.0 if key == "paper" else 0.5)
        pub = PUBLISHED[side]
        ax.plot([(i + 1) / len(pub) for i in range(len(pub))], pub, "k:", marker="x",
                label="Tan et al. (EC30, k=0.7)")
        ax.set_title(side)
        ax.set_xlabel("relative depth (layer / number of layers)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean IoU (%)")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def _fmt(v, pct: bool = True) -> str:
    if v is None:
        return "–"
    return f"{v * 100:.1f}" if pct else f"{v:+.2f}"


def report_markdown(result: dict, meta: dict | None = None) -> str:
    meta = meta or {}
    lines = ["# Neuron overlap between directions (IoU)", ""]
    if meta:
        lines += [f"Masks: {meta.get('kind', 'selected')}, " + ", ".join(
            f"{k}={meta[k]}" for k in ("k", *K_OPTIONS, "seed") if k in meta), ""]
    lines += [f"{len(result['names'])} directions: {', '.join(result['names'])}", "",
              "| layer | kept | mean IoU (paper's rule) | all pairs | en→x | x→en | same fam. | diff. fam. "
              "| same branch | diff. branch | same script | diff. script | ρ(IoU, relatedness) |", "|" + "---|" * 13]
    for layer, entry in result["layers"].items():
        s = entry["stats"]
        lines.append(f"| {layer} | {_fmt(s['kept_fraction'])} | {_fmt(s['paper'])} | {_fmt(s['mean'])} | "
                     f"{_fmt(s['mean_en2x'])} | "
                     f"{_fmt(s['mean_x2en'])} | {_fmt(s['same_family'])} | {_fmt(s['diff_family'])} | "
                     f"{_fmt(s['same_branch'])} | {_fmt(s['diff_branch'])} | "
                     f"{_fmt(s['same_script'])} | {_fmt(s['diff_script'])} | "
                     f"{_fmt(s['spearman_relatedness'], pct=False)} |")
    rule = ("The paper's rule: encoder layers average the IoU of x→en pairs, decoder layers of en→x pairs"
            + (", each truncated to a whole percent first" if result.get("truncate") else "") + ".")
    lines += ["", f"Values in %. {rule} ρ: Spearman correlation over pairs of the same kind (both en→x or both "
              "x→en).", "", "## Trend by depth", "",
              "| | ours (mean IoU by layer) | trend | Tan et al., k = 0.7 | trend |", "|---|---|---|---|---|"]
    for side in ("encoder", "decoder"):
        pub = " → ".join(f"{v:.1f}" for v in PUBLISHED[side])
        for key, label in ((side, f"{side}, paper's rule"), (f"{side}_all", f"{side}, all pairs")):
            ours = " → ".join(_fmt(v) for v in result[key])
            lines.append(f"| {label} | {ours} | {trend(result[key])} | {pub if key == side else ''} | "
                         f"{trend(PUBLISHED[side]) if key == side else ''} |")
    lines += ["", "![mean IoU by layer](mean_iou.png)", ""]
    return "\n".join(lines)


def write_analysis(masks: dict[str, TaskMasks], out: str | os.PathLike, meta: dict | None = None,
                   pivot: str = "en", heatmaps: bool = True, truncate: bool = False) -> dict:
    """Analyze, then write iou.json, report.md, mean_iou.png and heatmaps into a folder built
    beside `out` that replaces it whole (atomic.built_folder: never old heatmaps beside a new
    report, an interrupted run leaves `out` as it was; a SIGKILLed one's build folder is removed
    here)."""
    result = analyze(masks, pivot, truncate)
    k_label = f"(k={meta['k']})" if meta and "k" in meta else ""
    remove_stale_temp_folders(out)
    with built_folder(out, temp_folder) as built:
        if heatmaps:
            for layer, entry in result["layers"].items():
                plot_heatmap(entry["iou"], result["names"], f"IoU, {layer}",
                             built / f"heatmap_{layer.replace('.', '_')}.png")
        plot_mean_iou(result, built / "mean_iou.png", k_label)
        write_atomic(built / "iou.json", strict_json({**result, "published_k0.7": PUBLISHED, "meta": meta or {}},
                                                     indent=1, default=str))
        write_atomic(built / "report.md", report_markdown(result, meta))
    return result


def is_analysis_folder(folder: Path) -> bool:
    """Whether every file in `folder` is one `write_analysis` writes."""
    return all(p.name in ("iou.json", "report.md", "mean_iou.png") or
               (p.name.startswith("heatmap_") and p.suffix == ".png") for p in folder.iterdir())


# ---------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--masks", required=True, help="masks file from `neuronspec select`")
    p.add_argument("--out", default=None, help="output folder, replaced whole (default: analysis/ next to --masks)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out folder holding other files")
    p.add_argument("--no-heatmaps", action="store_true", help="skip the per-layer heatmap PNGs")
    p.add_argument("--truncate", action="store_true",
                   help="truncate each pair's IoU to a whole percent before averaging (the original notebook)")


def run(args) -> int:
    out = Path(args.out) if args.out else Path(args.masks).with_name("analysis")
    check_output_folder(out, "out", [args.masks], owned=is_analysis_folder, command="neuronspec analyze",
                        overwrite=args.overwrite)
    masks, meta = load_layer_masks(args.masks)
    result = write_analysis(masks, out, meta, meta.get("pivot", "en"), heatmaps=not args.no_heatmaps,
                            truncate=args.truncate)
    print(f"{'layer':<22} {'kept':>6} {'paper':>6} {'all':>6} {'en→x':>6} {'x→en':>6}")
    for layer, e in result["layers"].items():
        s = e["stats"]
        print(f"{layer:<22} {_fmt(s['kept_fraction']):>6} {_fmt(s['paper']):>6} {_fmt(s['mean']):>6} "
              f"{_fmt(s['mean_en2x']):>6} {_fmt(s['mean_x2en']):>6}")
    for side in ("encoder", "decoder"):
        print(f"{side}: mean IoU (paper's rule) {' → '.join(_fmt(v) for v in result[side])} ({trend(result[side])}); "
              f"all pairs {' → '.join(_fmt(v) for v in result[f'{side}_all'])}")
    print(f"wrote {out}/report.md, iou.json, mean_iou.png")
    return 0
