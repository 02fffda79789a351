"""Translation speed of deployed models (issue #30 item 4): native PyTorch dense / masked / pruned
and CTranslate2 dense / pruned (fp32, int8), greedy and beam 5, batches of 32 sentences.

    python benchmarks/bench_translate.py --checkpoint runs/tiny/checkpoint_best.pt --masks masks.pt \\
        --direction en-de --threads 2,1 --beams 1,5 --repeats 3

Each configuration translates the same lines (the first --max-sentences of the direction in
--split: test and valid are read as text, train as the prepared token ids) in batches of --batch
sentences sorted by length; timings are interleaved rounds (benchmarks/_timing.py), the reported
speed is target tokens (hypothesis pieces + EOS) per second, and the speedup is the median of
per-round ratios of that speed to native dense's (a masked or pruned model is another model than
the dense one: its outputs, and so its token counts, differ; time_ratio in the csv is the plain
ratio of seconds; speedup_per_step divides out the decoding steps each configuration's batches ran,
each batch running until its longest hypothesis: the speed at equal work). Quality: sacrebleu BLEU
and chrF++ of each configuration's output. Pruned models keep each layer's width (--multiples 1)
or round it up with zero neurons to a multiple.

FLOP limit: the speedup that the linear layers' FLOPs allow, dense / pruned, per target token:
encoder (q, k, v, out projections + FFN at each layer's width) × source tokens, decoder
(self-attention projections, cross-attention q/out per target token and k/v per source token,
FFN) × target tokens, output projection; mean source and hypothesis lengths of the dense
output. Attention score products, layer norms and softmax are left out (small at these lengths).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

from _timing import ROOT, markdown_table, measure, parse_list, ratio_stats, run_meta, save_figure, setup_logging, \
    write_results

from neuronspec.data.batching import Batch, eval_batches, tag_options  # noqa: E402
from neuronspec.data.corpus import as_direction, direction_name  # noqa: E402
from neuronspec.deploy.native import kept_neurons, prune_model  # noqa: E402
from neuronspec.nmt.checkpoint import load_model_masks  # noqa: E402
from neuronspec.nmt.decode import decode_batches, direction_tasks  # noqa: E402
from neuronspec.nmt.evaluate import load_for_decoding  # noqa: E402
from neuronspec.nmt.translate import encode_lines  # noqa: E402


def flops_per_token(cfg, widths: dict[str, int], src_len: float, tgt_len: float) -> float:
    """Linear-layer FLOPs per target token (module docstring); ``widths``: FFN width per layer."""
    d = cfg.d_model
    enc = sum(2 * (4 * d * d + 2 * d * w) for n, w in widths.items() if n.startswith("encoder")) * src_len
    dec_layers = [w for n, w in widths.items() if n.startswith("decoder")]
    dec = sum(2 * (6 * d * d + 2 * d * w) for w in dec_layers) * tgt_len + len(dec_layers) * 2 * 2 * d * d * src_len
    return (enc + dec + 2 * d * cfg.vocab_size * tgt_len) / tgt_len


def read_split(data, split: str, direction, n: int, opts: dict, cfg):
    """(source ids, first decoder input, source texts or Nones, reference texts) of the first ``n``
    lines of ``split``. valid/test keep their raw texts; other splits (train) are read as token
    ids, their references detokenized (placeholders stay as ``<phK>`` on both sides)."""
    tok = data.tokenizer
    try:
        sources, refs = data.texts(split, direction)
    except ValueError:
        sources = None
    if sources is not None:
        sources, refs = sources[:n], refs[:n]
        srcs, start = encode_lines(tok, sources, direction, opts["source_tag"], opts["target_tag"], cfg.max_positions)
        return srcs, start, sources, refs
    rows = {}
    for b in eval_batches(data, split, direction, 10 ** 6, source_tag=opts["source_tag"], max_examples=n,
                          target_tag=opts["target_tag"]):
        start = int(b.tgt_in[0, 0])
        for i, src, tgt in zip(b.ids.tolist(), b.src, b.tgt_out):
            rows[i] = (src[src != tok.pad].tolist(), tok.decode(tgt[tgt != tok.pad].tolist()))
    ids = sorted(rows)
    return [rows[i][0] for i in ids], start, [None] * len(ids), [rows[i][1] for i in ids]


def length_order(srcs) -> list[int]:
    """Line numbers sorted by source length: both engines batch ``size`` consecutive lines of it."""
    return sorted(range(len(srcs)), key=lambda i: len(srcs[i]))


def decoder_steps(hyps, srcs, size: int) -> int:
    """Decoding steps of a configuration's batches: each runs until its longest hypothesis (+ EOS)."""
    order = length_order(srcs)
    return sum(max(len(hyps[i]) + 1 for i in order[a:a + size]) for a in range(0, len(order), size))


def batches_of(srcs, start: int, task: int, pad: int, size: int) -> list[Batch]:
    """Sources sorted by length, ``size`` sentences a batch (ids: line numbers)."""
    order = length_order(srcs)
    out = []
    for a in range(0, len(order), size):
        rows = order[a:a + size]
        src = torch.full((len(rows), max(len(srcs[i]) for i in rows)), pad, dtype=torch.long)
        for r, i in enumerate(rows):
            src[r, :len(srcs[i])] = torch.tensor(srcs[i])
        B = len(rows)
        out.append(Batch(src, torch.full((B, 1), start, dtype=torch.long), torch.full((B, 1), pad, dtype=torch.long),
                         torch.full((B,), task, dtype=torch.long), torch.tensor(rows), 0, pad))
    return out


def pruned_name(multiple: int) -> str:
    return "pruned" if multiple == 1 else f"pruned pad{multiple}"


def model_key(config: str) -> str:
    """'dense', 'masked' or a pruned_name of a configuration name ('ct2 pruned pad16 int8')."""
    return config.split(" ", 1)[1].removesuffix(" fp32").removesuffix(" int8")


def native_runner(model, batches, tok, beam, dec_task):
    def run():
        hyps = decode_batches(model, batches, tok, beam=beam, decoder_task=dec_task)
        return [hyps[i] for i in range(len(hyps))]
    return run


def ct2_runner(translator, srcs, start, tok, beam, size):
    piece = tok.sp.id_to_piece
    order = length_order(srcs)
    banned = [[piece(tok.pad)], [piece(tok.bos)]]

    def run():
        out = [None] * len(srcs)
        for a in range(0, len(order), size):
            rows = order[a:a + size]
            limits = [int(1.2 * len(srcs[r]) + 10) for r in rows]
            res = translator.translate_batch([[piece(i) for i in srcs[r]] for r in rows],
                                             target_prefix=[[piece(start)]] * len(rows), beam_size=beam,
                                             max_decoding_length=max(limits), min_decoding_length=1,
                                             suppress_sequences=banned, max_batch_size=size)
            for r, lim, h in zip(rows, limits, res):
                out[r] = [tok.sp.piece_to_id(p) for p in h.hypotheses[0][:lim]]
        return out
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="dense trained checkpoint")
    p.add_argument("--masks", required=True, help="masks file (neuronspec select) for the checkpoint's directions")
    p.add_argument("--data", help="prepared folder (default: the checkpoint's)")
    p.add_argument("--direction", default="en-de")
    p.add_argument("--split", default="test", help="split of the prepared folder to translate (train: token ids, "
                   "references detokenized)")
    p.add_argument("--max-sentences", type=int, default=1000, help="the split's first N lines")
    p.add_argument("--batch", type=int, default=32, help="sentences per batch")
    p.add_argument("--threads", default="2,1")
    p.add_argument("--beams", default="1,5")
    p.add_argument("--engines", default="native,ct2", help="native and/or ct2")
    p.add_argument("--multiples", default="1", help="pruned models with each FFN width rounded up to these "
                   "multiples (zero neurons; 1 = the kept count)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu" / "translate"))
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    import sacrebleu

    direction = as_direction(args.direction)
    threads, beams = parse_list(args.threads, int, "--threads"), parse_list(args.beams, int, "--beams")
    engines = parse_list(args.engines, str, "--engines")
    multiples = parse_list(args.multiples, int, "--multiples")
    model, ck, data = load_for_decoding(args.checkpoint, args.data, "cpu")
    if model.masks():
        raise SystemExit("error: --checkpoint must be dense (the masks come from --masks)")
    tok = data.tokenizer
    enc_task, dec_task = direction_tasks(data, direction)
    opts = tag_options(ck.get("config"))
    srcs, start, sources, refs = read_split(data, args.split, direction, args.max_sentences, opts, model.cfg)
    batches = batches_of(srcs, start, enc_task, tok.pad, args.batch)

    masked = load_for_decoding(args.checkpoint, args.data, "cpu")[0]
    masked.set_masks(load_model_masks(args.masks, list(masked.ffn_layers())))
    kept = kept_neurons(masked, enc_task, dec_task)
    pruned = {pruned_name(m): prune_model(masked, kept, per_layer=True, multiple=m) for m in multiples}
    widths = {name: {n: f.fc1.out_features for n, f in m.ffn_layers().items()}
              for name, m in {"dense": model, **pruned}.items()}
    models = {"native dense": model, "native masked": masked, **{f"native {n}": m for n, m in pruned.items()}}

    ct2_models = {}
    if "ct2" in engines:
        import ctranslate2

        from neuronspec.deploy.ct2 import convert
        folder = tempfile.mkdtemp(prefix="bench-translate-ct2-")  # converted models (not results)
        ct2_models = {f"ct2 {n}": convert(m, tok, os.path.join(folder, n.replace(" ", "-")))
                      for n, m in {"dense": model, **pruned}.items()}

    rows, dense_ids = [], None
    for t in threads:
        torch.set_num_threads(t)
        for beam in beams:
            fns = {}
            if "native" in engines:
                fns.update({name: native_runner(m, batches, tok, beam, dec_task) for name, m in models.items()})
            for name, path in ct2_models.items():
                for ct in ("float32", "int8"):
                    tr = ctranslate2.Translator(str(path), device="cpu", compute_type=ct, intra_threads=t)
                    fns[f"{name} {ct.replace('float32', 'fp32')}"] = ct2_runner(tr, srcs, start, tok, beam, args.batch)
            hyps = {name: fn() for name, fn in fns.items()}
            load0 = os.getloadavg()[0]
            stats = measure(fns, torch.device("cpu"), repeats=args.repeats, warmup=0)
            base_name = "native dense" if "native" in engines else "ct2 dense fp32"
            base, base_tok = stats[base_name], sum(len(h) + 1 for h in hyps[base_name])
            base_steps = decoder_steps(hyps[base_name], srcs, args.batch)
            for name, st in stats.items():
                ids = hyps[name]
                ntok = sum(len(h) + 1 for h in ids)
                text = [tok.decode(h, source=s) for h, s in zip(ids, sources)]
                dense_ids = ids if dense_ids is None else dense_ids
                time_ratio = ratio_stats(base, st)[0]
                steps = decoder_steps(ids, srcs, args.batch)
                rows.append({
                    "threads": t, "beam": beam, "config": name, "sentences": len(ids), "target_tokens": ntok,
                    "median_s": round(st.median, 4), "q1_s": round(st.q1, 4), "q3_s": round(st.q3, 4),
                    "tokens_per_s": round(ntok / st.median, 1),
                    "speedup_vs_base": round(time_ratio * ntok / base_tok, 3), "time_ratio": round(time_ratio, 3),
                    "decoder_steps": steps, "speedup_per_step": round(time_ratio * steps / base_steps, 3),
                    "bleu": round(sacrebleu.corpus_bleu(text, [refs]).score, 2),
                    "chrf++": round(sacrebleu.corpus_chrf(text, [refs], word_order=2).score, 2),
                    "load_avg_1m": round((load0 + os.getloadavg()[0]) / 2, 2)})
                print(f"threads {t} beam {beam} {name:22s} {rows[-1]['tokens_per_s']:9.1f} tok/s "
                      f"x{rows[-1]['speedup_vs_base']:.2f} BLEU {rows[-1]['bleu']:.2f} chrF++ {rows[-1]['chrf++']:.2f}",
                      flush=True)
    if ct2_models:
        shutil.rmtree(folder, ignore_errors=True)
    src_len, tgt_len = float(np.mean([len(s) for s in srcs])), float(np.mean([len(h) + 1 for h in dense_ids]))
    dense_flops = flops_per_token(model.cfg, widths["dense"], src_len, tgt_len)
    limit = {n: dense_flops / flops_per_token(model.cfg, w, src_len, tgt_len) for n, w in widths.items()}
    kept_frac = sum(len(k) for k in kept.values()) / sum(widths["dense"].values())
    flop_ratio = dense_flops / flops_per_token(model.cfg, {n: len(k) for n, k in kept.items()}, src_len, tgt_len)
    print(f"kept neurons {kept_frac:.1%}; FLOP-limit speedup pruned/dense {flop_ratio:.3f}x")
    limit["masked"] = flop_ratio  # decoding gathers the kept rows once (DirectionFFN): the pruned FLOPs
    for r in rows:
        r["flop_limit"] = round(limit[model_key(r["config"])], 3)
    meta = run_meta({"device": torch.device("cpu"), "preset": "n/a", "repeats": args.repeats, "warmup": 0},
                    "bench_translate", checkpoint=os.path.abspath(args.checkpoint), masks=os.path.abspath(args.masks),
                    direction=direction_name(direction), kept_fraction=round(kept_frac, 4),
                    widths=widths, flop_limit=round(flop_ratio, 3), mean_src_tokens=round(src_len, 2),
                    split=args.split, multiples=multiples, mean_target_tokens_dense=round(tgt_len, 2),
                    load_avg_end=[round(v, 2) for v in os.getloadavg()])
    header = ["threads", "beam", "config", "tok/s", "speedup (tok/s)", "speedup per step", "FLOP limit", "BLEU",
              "chrF++", "load"]
    table = markdown_table(header, [[r["threads"], r["beam"], r["config"], r["tokens_per_s"], r["speedup_vs_base"],
                                     r["speedup_per_step"], r["flop_limit"], r["bleu"], r["chrf++"],
                                     r["load_avg_1m"]] for r in rows])
    write_results(args.out, "translate", rows, meta, f"# bench_translate ({meta['date_utc']} UTC)\n\n"
                  f"{direction_name(direction)}, {len(srcs)} {args.split} lines, batches of {args.batch}, kept neurons "
                  f"{kept_frac:.1%}, FLOP-limit speedup {flop_ratio:.3f}x\n\n{table}")
    _plot(rows, args.out)
    return 0


def _plot(rows, out) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["threads"], r["beam"]) for r in rows})
    names = list(dict.fromkeys(r["config"] for r in rows))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(keys), 4))
    w = 0.8 / len(names)
    for j, name in enumerate(names):
        vals = [next((r["tokens_per_s"] for r in rows if (r["threads"], r["beam"]) == k and r["config"] == name), 0)
                for k in keys]
        ax.bar(np.arange(len(keys)) + j * w, vals, w, label=name)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - w / 2, [f"{t} thr, beam {b}" for t, b in keys])
    ax.set_ylabel("target tokens / s")
    ax.legend(fontsize=7)
    save_figure(fig, os.path.join(out, "translate.png"))


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print(f"{time.time() - t0:.0f} s", file=sys.stderr)
    sys.exit(rc)
