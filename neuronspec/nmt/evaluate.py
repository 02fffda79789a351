"""Translate a split and score it: ``neuronspec evaluate`` and ``evaluate_checkpoint``.

Per direction: sacrebleu BLEU (13a tokenisation) and chrF++ (``CHRF(word_order=2)``),
corpus level, plus the chrF++ of copying the source (a floor: many CLDR names are written
identically in several languages). Averages as in the paper: per resource tier (high /
medium / low) and over en→x (O2M) and x→en (M2O) directions; phrases and sentences are
scored separately when the data records kinds. Writes, into the output folder (atomically):
``hyp.{split}.{src}-{tgt}.{tgt}`` (one hypothesis per line, in file order, only the scored
lines), ``ref.{split}.{src}-{tgt}.{tgt}`` (their references), ``results.md`` and ``results.json``
(with the sha256 of every other file, checked by ``--compare``). The folder is built beside
(data.manifest.temp_folder) and swapped in whole: an interrupted run leaves the old folder as it
was, and the build folder of one killed with SIGKILL is removed by the next evaluation. It may
not hold an input, nor another checkpoint's evaluation or foreign files unless ``--overwrite``.
``--compare A B`` instead tests two such folders against each other (compare.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from sacrebleu.metrics import BLEU, CHRF
from tqdm import tqdm

from ..atomic import built_folder, strict_json, write_atomic
from ..checks import check_number
from ..data.batching import tag_options
from ..data.corpus import PreparedData, as_direction
from ..data.manifest import remove_stale_temp_folders, temp_folder
from ..data.languages import tier
from ..files import check_output_folder, lines_text
from .checkpoint import load_model
from .compare import to_markdown as compare_markdown, write_compare
from .decode import sample_ids, translate_direction

log = logging.getLogger(__name__)

TIER_ORDER = ("high", "medium", "low")


# --------------------------------------------------------------------------- scoring
def _metrics():
    return BLEU(tokenize="13a"), CHRF(word_order=2)


def score(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF++ of ``hyps`` against one reference each."""
    if len(hyps) != len(refs):
        raise ValueError(f"hyps and refs must have the same length, got {len(hyps)} and {len(refs)}")
    if not hyps:
        raise ValueError("hyps: nothing to score")
    bleu, chrf = _metrics()
    return {"bleu": bleu.corpus_score(list(hyps), [list(refs)]).score,
            "chrf": chrf.corpus_score(list(hyps), [list(refs)]).score, "n": len(hyps)}


def signatures() -> dict[str, str]:
    """sacrebleu signatures of the two metrics as used here (one reference per line)."""
    bleu, chrf = _metrics()
    for m in (bleu, chrf):  # sacrebleu fills the signature (e.g. nrefs) on first use
        m.corpus_score(["a"], [["a"]])
    return {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def _average(rows: list[dict]) -> dict[str, Any] | None:
    if not rows:
        return None
    return {"directions": len(rows), "bleu": _mean(rows, "bleu"), "chrf": _mean(rows, "chrf"),
            "copy_chrf": _mean(rows, "copy_chrf")}


def summarize(per_dir: dict[str, dict], pivot: str = "en") -> dict[str, Any]:
    """Averages over groups of directions (all, en-x, x-en, tier, tier×side; zero-shot
    directions, neither side the pivot, only in their own group "zero-shot") for the whole
    sets and for each kind, and how many supervised directions beat copying the source."""
    def supervised(r: dict) -> bool:
        return pivot in (r["src"], r["tgt"])

    def groups(rows: dict[str, dict]) -> dict[str, dict]:
        out: dict[str, Any] = {}
        items = [(k, r) for k, r in rows.items() if supervised(r)]
        sel = {"all": items, "zero-shot": [(k, r) for k, r in rows.items() if not supervised(r)],
               f"{pivot}-x": [(k, r) for k, r in items if r["src"] == pivot],
               f"x-{pivot}": [(k, r) for k, r in items if r["tgt"] == pivot]}
        for t in TIER_ORDER:
            sel[t] = [(k, r) for k, r in items if r["tier"] == t]
            sel[f"{t}/{pivot}-x"] = [(k, r) for k, r in sel[t] if r["src"] == pivot]
            sel[f"{t}/x-{pivot}"] = [(k, r) for k, r in sel[t] if r["tgt"] == pivot]
        for name, its in sel.items():
            avg = _average([r for _, r in its])
            if avg is not None:
                out[name] = avg
        return out

    def wins(rows: Iterable[dict]) -> dict[str, Any]:
        rows = list(rows)
        w = sum(r["chrf"] > r["copy_chrf"] for r in rows)
        return {"wins": w, "total": len(rows), "fraction": w / len(rows) if rows else None}

    kinds = sorted({k for r in per_dir.values() for k in (r.get("kinds") or {})})
    by_kind = {}
    for kind in kinds:
        rows = {}
        for name, r in per_dir.items():
            if kind in (r.get("kinds") or {}):
                rows[name] = {**r["kinds"][kind], "src": r["src"], "tgt": r["tgt"], "tier": r["tier"]}
        by_kind[kind] = {"averages": groups(rows), "beats_copy": wins(filter(supervised, rows.values()))}
    beats = {"all": wins(filter(supervised, per_dir.values()))}
    beats.update({k: v["beats_copy"] for k, v in by_kind.items()})
    return {"averages": groups(per_dir), "by_kind": by_kind, "beats_copy": beats}


# --------------------------------------------------------------------------- evaluation
def _tier(data, direction) -> str | None:
    s, t = direction
    other = t if s == data.pivot else s
    if other in data.tiers:
        return data.tiers[other]
    try:
        return tier(other)
    except (ValueError, KeyError):
        return None


def evaluate_model(model, data, split: str = "test", *, beam: int = 5, lenpen: float = 1.0,
                   max_sentences: int | None = None, max_tokens: int = 4000, device: str | torch.device = "cpu",
                   source_tag: bool = False, target_tag: str = "decoder", directions: Sequence | None = None,
                   hyp_dir: str | os.PathLike | None = None, num_samples: int = 3, progress: bool = True,
                   zero_shot: bool = False) -> dict[str, Any]:
    """Translate and score every training direction of ``split`` (or ``directions``), and
    with ``zero_shot`` also the split's zero-shot directions (x→y, neither side the pivot:
    x→pivot encoder task, pivot→y decoder task).

    max_sentences: per direction, evenly spaced (None = all). source_tag / target_tag: the
    tag layout the model was trained with (``batching.tag_options`` of its config). Returns
    the results dict (see module docstring); writes hypothesis files into ``hyp_dir`` when given."""
    if directions is None:
        directions = [d for d in data.directions if data.num_examples(split, d) > 0]
        if zero_shot:
            directions += data.zero_shot_directions(split)
    else:
        directions = [as_direction(d) for d in directions]
    if not directions:
        raise ValueError(f"split: no direction has {split!r} data in {data.root}")
    check_number("lenpen", lenpen)
    per_dir: dict[str, dict] = {}
    samples: dict[str, list] = {}
    for d in tqdm(directions, desc=f"translate {split}", unit="dir", disable=not progress):
        name = f"{d[0]}-{d[1]}"
        ids, hyps = translate_direction(model, data, split, d, beam=beam, lenpen=lenpen, max_tokens=max_tokens,
                                        max_sentences=max_sentences, source_tag=source_tag,
                                        target_tag=target_tag, device=device)
        sources, refs = data.texts(split, d)
        sources, refs = [sources[i] for i in ids], [refs[i] for i in ids]
        row = {"src": d[0], "tgt": d[1], "tier": _tier(data, d), **score(hyps, refs),
               "copy_chrf": score(sources, refs)["chrf"]}
        kinds = data.kinds(split, d)
        if kinds is not None:
            row["kinds"] = {}
            for kind in sorted(set(kinds[i] for i in ids)):
                sel = [j for j, i in enumerate(ids) if kinds[i] == kind]
                h, r, s = [hyps[j] for j in sel], [refs[j] for j in sel], [sources[j] for j in sel]
                row["kinds"][kind] = {**score(h, r), "copy_chrf": score(s, r)["chrf"]}
        per_dir[name] = row
        pick = sample_ids(len(ids), num_samples) if num_samples else []
        pick = range(len(ids)) if pick is None else pick
        samples[name] = [{"src": sources[j], "ref": refs[j], "hyp": hyps[j],
                          **({"kind": kinds[ids[j]]} if kinds is not None else {})} for j in pick]
        if hyp_dir is not None:  # the references too: `evaluate --compare` pairs folders by line
            write_atomic(Path(hyp_dir) / f"hyp.{split}.{name}.{d[1]}", lines_text(hyps))
            write_atomic(Path(hyp_dir) / f"ref.{split}.{name}.{d[1]}", lines_text(refs))
    return {"split": split, "pivot": data.pivot, "beam": beam, "lenpen": lenpen, "max_sentences": max_sentences,
            "signatures": signatures(), "directions": per_dir, **summarize(per_dir, data.pivot), "samples": samples}


def load_for_decoding(ckpt: str | os.PathLike, data: str | os.PathLike | None, device) -> tuple:
    """(model with its masks, in eval mode; checkpoint dict; PreparedData) for decoding.
    data: prepared folder (default: the one the checkpoint was trained on)."""
    model, ck = load_model(ckpt, device)
    prep = data or ck.get("data", {}).get("prep")
    if prep is None:
        raise ValueError("data: the checkpoint does not name its prepared folder; pass data=")
    pdata = PreparedData.load(prep)
    if len(pdata.tokenizer) != model.cfg.vocab_size:
        raise ValueError(f"data: vocabulary of {prep} ({len(pdata.tokenizer)}) differs from the model's "
                         f"({model.cfg.vocab_size})")
    return model, ck, pdata


EVAL_FILES = ("results.json", "results.md", "compare.json", "compare.md")


def is_eval_folder(folder: Path) -> bool:
    """Whether every file in `folder` is one `evaluate` (or `--compare` into it) writes."""
    return all(p.name in EVAL_FILES or p.name.startswith(("hyp.", "ref.")) for p in folder.iterdir())


def _evaluated_checkpoint(folder: Path) -> str | None:
    try:
        return json.loads((folder / "results.json").read_text(encoding="utf-8")).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return None


def check_eval_out(out: Path, ckpt: str | os.PathLike, inputs, overwrite: bool) -> None:
    """ValueError naming --out unless `out` may be replaced by the evaluation of `ckpt` (see
    the module docstring; another checkpoint's evaluation needs `overwrite`)."""
    check_output_folder(out, "out", [ckpt, *inputs], owned=is_eval_folder, command="neuronspec evaluate",
                        overwrite=overwrite)
    other = _evaluated_checkpoint(out) if out.is_dir() else None
    if other is not None and other != os.path.abspath(ckpt) and not overwrite:
        raise ValueError(f"out: {out} holds the evaluation of another checkpoint ({other}); pass --out for this "
                         "one, or --overwrite to replace it")


def evaluate_checkpoint(ckpt: str | os.PathLike, data: str | os.PathLike | None = None, split: str = "test",
                        beam: int = 5, max_sentences: int | None = None, *, out_dir: str | os.PathLike | None = None,
                        lenpen: float = 1.0, max_tokens: int = 4000, device: str | None = None,
                        directions: Sequence | None = None, write: bool = True, progress: bool = True,
                        zero_shot: bool = False, overwrite: bool = False) -> dict:
    """Load a checkpoint (and its masks), evaluate it, write hypotheses + results.json/.md.

    data: prepared folder (default: the one the checkpoint was trained on). out_dir:
    default ``<checkpoint folder>/eval-{split}-beam{beam}``, replaced whole (see the module
    docstring for what it may not hold without ``overwrite``). Returns the results dict with
    ``out_dir`` added."""
    check_number("lenpen", lenpen)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir) if out_dir is not None else Path(ckpt).parent / f"eval-{split}-beam{beam}"
    if write:
        check_eval_out(out, ckpt, [data], overwrite)
    model, ck, pdata = load_for_decoding(ckpt, data, device)
    prep = pdata.root
    if write:  # the checkpoint's own prepared folder is an input too
        check_eval_out(out, ckpt, [prep], overwrite)
    kw = dict(beam=beam, lenpen=lenpen, max_sentences=max_sentences, max_tokens=max_tokens, device=device,
              directions=directions, progress=progress, zero_shot=zero_shot, **tag_options(ck.get("config")))
    info = dict(checkpoint=os.path.abspath(ckpt), data=os.path.abspath(prep), step=ck.get("step"),
                masked=bool(ck.get("masks")), out_dir=str(out))
    if not write:
        return {**evaluate_model(model, pdata, split, **kw), **info}
    remove_stale_temp_folders(out)  # of an evaluation killed with SIGKILL
    with built_folder(out, temp_folder) as built:
        res = {**evaluate_model(model, pdata, split, hyp_dir=built, **kw), **info}
        write_atomic(built / "results.md", to_markdown(res))
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(built.iterdir())}
        write_atomic(built / "results.json", strict_json({**res, "files": files}))
    return res


# --------------------------------------------------------------------------- reports
def _avg_table(avgs: dict, pivot: str = "en") -> list[str]:
    o2m, m2o = f"{pivot}-x", f"x-{pivot}"
    lines = [f"| group | O2M ({o2m}) BLEU | O2M chrF++ | M2O ({m2o}) BLEU | M2O chrF++ | all chrF++ | copy chrF++ |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def cell(key, metric):
        a = avgs.get(key)
        return f"{a[metric]:.1f}" if a else "–"

    for g in (*TIER_ORDER, None):
        pre = f"{g}/" if g else ""
        allkey = g or "all"
        if allkey not in avgs:
            continue
        lines.append(f"| {g or 'all'} | {cell(pre + o2m, 'bleu')} | {cell(pre + o2m, 'chrf')} | "
                     f"{cell(pre + m2o, 'bleu')} | {cell(pre + m2o, 'chrf')} | {cell(allkey, 'chrf')} | "
                     f"{cell(allkey, 'copy_chrf')} |")
    if "zero-shot" in avgs:
        z = avgs["zero-shot"]
        lines.append(f"| zero-shot ({z['directions']} directions, BLEU {z['bleu']:.1f}) | – | – | – | – | "
                     f"{z['chrf']:.1f} | {z['copy_chrf']:.1f} |")
    return lines


def to_markdown(res: dict, max_sample_dirs: int = 6) -> str:
    pivot = res.get("pivot", "en")
    lines = [f"# Evaluation: {res.get('checkpoint', 'model')}", "",
             f"split `{res['split']}`, beam {res['beam']}, lenpen {res['lenpen']}, "
             f"sentences per direction: {res['max_sentences'] or 'all'}" + (", **masked**" if res.get("masked") else ""),
             "", "## Averages", "", *_avg_table(res["averages"], pivot), ""]
    b = res["beats_copy"]
    lines.append("Directions whose chrF++ beats copying the source: " + ", ".join(
        f"{k} {v['wins']}/{v['total']}" for k, v in b.items()))
    for kind, v in res["by_kind"].items():
        lines += ["", f"## Averages: {kind}s only", "", *_avg_table(v["averages"], pivot)]
    kinds = list(res["by_kind"])
    head = "| direction | tier | n | BLEU | chrF++ | copy chrF++ |" + "".join(f" {k} chrF++ (copy) |" for k in kinds)
    lines += ["", "## Per direction", "", head, "|---" * (6 + len(kinds)) + "|"]
    for name, r in res["directions"].items():
        extra = ""
        for k in kinds:
            kr = (r.get("kinds") or {}).get(k)
            extra += f" {kr['chrf']:.1f} ({kr['copy_chrf']:.1f}) |" if kr else " – |"
        lines.append(f"| {name} | {r['tier'] or '–'} | {r['n']} | {r['bleu']:.1f} | {r['chrf']:.1f} | "
                     f"{r['copy_chrf']:.1f} |{extra}")
    lines += ["", "## Samples", ""]
    for name in list(res["samples"])[:max_sample_dirs]:
        for s in res["samples"][name]:
            kind = f" ({s['kind']})" if "kind" in s else ""
            lines += [f"- **{name}**{kind}  ", f"  src: {s['src']}  ", f"  ref: {s['ref']}  ", f"  hyp: {s['hyp']}"]
    lines += ["", "sacrebleu signatures:", "", f"- BLEU: `{res['signatures']['bleu']}`",
              f"- chrF++: `{res['signatures']['chrf']}`", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="checkpoint file (e.g. runs/tiny/checkpoint_best.pt)")
    what.add_argument("--compare", nargs=2, metavar=("A", "B"),
                      help="two evaluation folders: paired bootstrap test of B against A per direction and pooled "
                           "(BLEU, chrF++), written to --out (default B)")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples of --compare (default 1000)")
    p.add_argument("--data", help="prepared folder (default: the checkpoint's)")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--lenpen", type=float, default=1.0)
    p.add_argument("--max-sentences", type=int, help="per direction, evenly spaced (default: all)")
    p.add_argument("--max-tokens", type=int, default=4000)
    p.add_argument("--directions", nargs="+", help="e.g. en-de de-en de-fr (default: all training directions)")
    p.add_argument("--zero-shot", action="store_true",
                   help="also the split's zero-shot directions (x-y test files; x->en encoder, en->y decoder task)")
    p.add_argument("--out", help="output folder, replaced whole (default: eval-SPLIT-beamN next to the checkpoint; "
                   "with --compare: B)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out folder holding another checkpoint's evaluation or other files")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--samples", type=int, default=6, help="directions whose sample outputs are printed")


def run(args: argparse.Namespace) -> int:
    if args.compare:
        if args.bootstrap < 1:
            raise ValueError(f"--bootstrap: expected a positive int, got {args.bootstrap}")
        cmp = write_compare(*args.compare, args.out or args.compare[1], args.bootstrap, overwrite=args.overwrite)
        print(compare_markdown(cmp))
        return 0
    check_number("--lenpen", args.lenpen)
    dirs = [tuple(d.split("-", 1)) for d in args.directions] if args.directions else None
    res = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.beam, args.max_sentences,
                              out_dir=args.out, lenpen=args.lenpen, max_tokens=args.max_tokens,
                              device=args.device, directions=dirs, zero_shot=args.zero_shot, overwrite=args.overwrite)
    md = to_markdown(res, max_sample_dirs=args.samples)
    print(md)
    log.info("wrote %s/results.json, results.md and hypotheses", res["out_dir"])
    return 0
