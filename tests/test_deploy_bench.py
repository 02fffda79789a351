"""benchmarks/bench_translate.py at tiny sizes (issue #30 item 4): its files, its FLOP limit, and
that the configurations that must translate alike do (quality, never speed, is checked here)."""
import csv
import json
import sys
from pathlib import Path

import pytest
import torch

from _deploy_cases import specialized_checkpoint
from _nmt_cases import prepare
from neuronspec.nmt.checkpoint import load_checkpoint, masks_from_state, save_checkpoint
from neuronspec.nmt.model import ModelConfig
from neuronspec.ops import save_layer_masks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_translate  # noqa: E402


def test_flop_limit_counts_each_part():
    cfg = ModelConfig(vocab_size=100, d_model=8, d_ff=32, heads=2, encoder_layers=1, decoder_layers=1)
    dense = {"encoder.layers.0.ffn": 32, "decoder.layers.0.ffn": 32}
    # per target token with 3 source and 2 target tokens: encoder 2(4·64 + 2·8·32)·3/2, decoder
    # 2(6·64 + 2·8·32) + cross k/v 2·2·64·3/2, output 2·8·100
    want = (2 * (256 + 512) * 3 + 2 * (384 + 512) * 2 + 4 * 64 * 3 + 2 * 800 * 2) / 2
    assert bench_translate.flops_per_token(cfg, dense, 3, 2) == want
    half = {k: 16 for k in dense}
    assert bench_translate.flops_per_token(cfg, half, 3, 2) == want - (2 * 256 * 3 + 2 * 256 * 2) / 2


def test_bench_translate_smoke(tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    pytest.importorskip("sacrebleu")
    prepare(tmp_path)
    spec = load_checkpoint(specialized_checkpoint(tmp_path, tmp_path / "prep"))
    save_layer_masks(masks_from_state(spec["masks"]), tmp_path / "masks.pt", {})
    spec["masks"] = None
    spec.pop("sha256")
    save_checkpoint(tmp_path / "dense.pt", spec)
    out = tmp_path / "res"
    threads = torch.get_num_threads()
    try:
        rc = bench_translate.main(["--checkpoint", str(tmp_path / "dense.pt"), "--masks", str(tmp_path / "masks.pt"),
                                   "--max-sentences", "6", "--batch", "4", "--repeats", "1", "--threads", "1",
                                   "--beams", "1,2", "--split", "train", "--multiples", "1,16", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the script sets --threads
    assert rc == 0
    assert "FLOP-limit speedup" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"translate.csv", "translate.json", "translate.md", "translate.png"}
    rows = list(csv.DictReader(open(out / "translate.csv")))
    assert len(rows) == 2 * 10  # native dense, masked, pruned, pruned pad16; ct2 dense, pruned, pad16 x fp32, int8
    meta = json.loads((out / "translate.json").read_text())["meta"]
    assert meta["flop_limit"] > 1 and 0 < meta["kept_fraction"] < 1 and meta["split"] == "train"
    assert all(int(r["sentences"]) == 6 and int(r["decoder_steps"]) >= 2 for r in rows)
    by = {(r["beam"], r["config"]): r for r in rows}
    for beam in ("1", "2"):
        # the pruned model equals the masked one; CTranslate2 fp32 greedy equals the native engine
        assert by[(beam, "native pruned")]["chrf++"] == by[(beam, "native masked")]["chrf++"]
        assert by[(beam, "native pruned pad16")]["chrf++"] == by[(beam, "native pruned")]["chrf++"]
    assert by[("1", "ct2 dense fp32")]["chrf++"] == by[("1", "native dense")]["chrf++"]
    assert by[("1", "ct2 pruned fp32")]["chrf++"] == by[("1", "native pruned")]["chrf++"]
    assert all(float(r["flop_limit"]) > 1 for r in rows if "pruned" in r["config"])


def test_decoder_steps_follow_each_batch_longest_hypothesis():
    srcs = [[5] * 4, [5] * 1, [5] * 3, [5] * 2]  # length order: lines 1, 3, 2, 0
    hyps = [[7] * 6, [7] * 1, [7] * 2, [7] * 4]
    assert bench_translate.decoder_steps(hyps, srcs, 2) == (4 + 1) + (6 + 1)
    assert bench_translate.decoder_steps(hyps, srcs, 4) == 6 + 1

