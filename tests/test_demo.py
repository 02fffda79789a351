"""`neuronspec demo` end to end with a tiny budget (a smoke test, well under a minute on 2 cores)."""
import json

import torch

from neuronspec.cli import main
from neuronspec.nmt.checkpoint import load_model
from neuronspec.ops import load_layer_masks


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--langs", "de,fr", "--vocab-size", "500", "--dense-steps", "2",
               "--extra-steps", "1", "--eval-sentences", "1", "--record-sentences", "4", "--max-tokens", "200",
               "--warmup", "1", "--valid-sentences", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| specialized | 1 |" in printed and "specialized ≥ fine-tune ≥ random" in printed
    res = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in res["rows"]] == ["baseline", "finetune", "random", "specialized"]
    assert res["extra_steps"] == 1 and res["dense_steps"] == 2
    assert all(r["chrf_all"] is not None for r in res["rows"])
    for f in ("results.md", "analysis/mean_iou.png", "analysis-k0.7/report.md", "counts.pt", "masks.pt",
              "masks-random.pt", "eval/specialized/results.json"):
        assert (out / f).stat().st_size > 0, f
    # the specialized checkpoint carries its masks and loads with them; the fine-tuned one is dense
    masks, meta = load_layer_masks(out / "masks.pt")
    model, ck = load_model(out / "specialized" / "checkpoint_last.pt")
    assert set(model.masks()) == set(masks) == set(model.ffn_layers())
    assert all(model.masks()[k] == masks[k] for k in masks)
    assert load_model(out / "finetune" / "checkpoint_last.pt")[0].masks() == {}
    # random masks: same sizes as the selected ones
    rand, _ = load_layer_masks(out / "masks-random.pt")
    assert all(torch.equal(rand[k].sizes(), masks[k].sizes()) for k in masks)
    # a second run into the same folder is allowed; a foreign non-empty folder is not
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    assert main(["demo", "--out", str(other), "--langs", "de", "--dense-steps", "1", "--no-progress"]) == 2
    assert "was not written by `neuronspec demo`" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["precious.txt"]
