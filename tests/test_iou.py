"""IoU matrices, statistics and the analysis outputs."""
import json

import numpy as np
import pytest
import torch

from neuronspec.ops import TaskMasks
from neuronspec.specialization.iou import PUBLISHED, iou_matrix, layer_stats, spearman, trend, write_analysis


def random_layer(T=6, f=50, seed=0, names=None):
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(T, f, generator=g) < torch.rand(T, 1, generator=g)
    dense[0] = False  # an empty set
    dense[1] = True  # a full set
    return TaskMasks.from_dense(dense, names)


def test_iou_properties():
    m = random_layer()
    iou = iou_matrix(m)
    assert iou.shape == (6, 6)
    assert np.allclose(iou, iou.T)
    assert np.allclose(np.diag(iou), 1.0)
    assert (iou >= 0).all() and (iou <= 1).all()


def test_iou_values():
    m = TaskMasks.from_indices([[0, 1, 2], [1, 2, 3, 4], [], []], 6)
    iou = iou_matrix(m)
    assert iou[0, 1] == pytest.approx(2 / 5)
    assert iou[0, 2] == 0.0
    assert iou[2, 3] == 1.0  # two empty sets are identical


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(0.894427, abs=1e-5)  # scipy value
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_trend_of_published_values():
    assert trend(PUBLISHED["encoder"]) == "rising"
    assert trend(PUBLISHED["decoder"]) == "falling"


def test_family_and_script_stats():
    names = ["en-de", "en-nl", "en-ru", "de-en", "nl-en", "ru-en"]
    # de/nl share neurons, ru differs; x→en all share
    m = TaskMasks.from_indices([[0, 1, 2, 3], [0, 1, 2, 4], [5, 6, 7, 8], [0, 1, 2], [0, 1, 2], [0, 1, 2]], 10, names)
    s = layer_stats(iou_matrix(m), names)
    assert s["same_script"] > s["diff_script"]  # de/nl Latin vs ru Cyrillic
    assert s["same_family"] is not None and s["diff_family"] is None  # all Indo-European
    assert s["same_branch"] == pytest.approx((1.0 + 3 / 5) / 2)  # de/nl (Germanic) in both kinds
    assert s["diff_branch"] == pytest.approx((0.0 + 0.0 + 1.0 + 1.0) / 4)
    assert s["mean_x2en"] == pytest.approx(1.0)
    assert s["pairs_with_facts"] == 6


def test_write_analysis(tmp_path):
    names = ["en-de", "en-fr", "en-ru", "de-en", "fr-en", "ru-en"]
    masks = {f"{side}.layers.{i}.ffn": random_layer(6, 40, seed=i + 10 * (side == "decoder"), names=names)
             for side in ("encoder", "decoder") for i in range(2)}
    result = write_analysis(masks, tmp_path, {"k": 0.9})
    for f in ("iou.json", "report.md", "mean_iou.png", "heatmap_encoder_layers_0_ffn.png"):
        assert (tmp_path / f).stat().st_size > 0
    data = json.loads((tmp_path / "iou.json").read_text())
    assert len(data["encoder"]) == 2 and len(data["decoder"]) == 2
    assert data["names"] == names
    enc0 = layer_stats(iou_matrix(masks["encoder.layers.0.ffn"]), names, side="encoder")
    assert result["encoder"][0] == pytest.approx(enc0["paper"]) and enc0["paper"] == pytest.approx(enc0["mean_x2en"])
    assert result["encoder_all"][0] == pytest.approx(enc0["mean"])
    dec1 = layer_stats(iou_matrix(masks["decoder.layers.1.ffn"]), names, side="decoder")
    assert result["decoder"][1] == pytest.approx(dec1["mean_en2x"])
    assert "paper's rule" in (tmp_path / "report.md").read_text()
    assert "Tan et al." in (tmp_path / "report.md").read_text()


def test_paper_rule_pairs_and_truncation():
    """Encoder: x→en pairs only; decoder: en→x pairs only; truncation to whole percents per pair."""
    names = ["en-de", "en-fr", "en-ru", "de-en", "fr-en"]
    m = TaskMasks.from_indices([[0, 1, 2], [0, 1, 2, 3], [0, 5, 6], [7, 8], [7, 9]], 10, names)
    iou = iou_matrix(m)
    dec = layer_stats(iou, names, side="decoder")
    assert dec["paper"] == pytest.approx((0.75 + 1 / 5 + 1 / 6) / 3)
    assert layer_stats(iou, names, side="decoder", truncate=True)["paper"] == pytest.approx((0.75 + 0.2 + 0.16) / 3)
    assert layer_stats(iou, names, side="encoder")["paper"] == pytest.approx(1 / 3)  # de-en vs fr-en only
    assert dec["mean"] < dec["paper"]  # all pairs add the disjoint en→x / x→en pairs
