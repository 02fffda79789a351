"""Cumulative-threshold selection (docs/design.md §1) and the masks file round trip."""
import pytest
import torch

from neuronspec.files import save_file
from neuronspec.ops import TaskMasks, load_layer_masks, save_layer_masks
from neuronspec.specialization.select import direction_k, random_masks, select_masks, select_neurons


def ids(t):
    return t.tolist()


def test_basic_prefix():
    c = torch.tensor([5, 0, 3, 2])  # total 10; sorted 5,3,2,0
    assert ids(select_neurons(c, 0.5)) == [0]  # 5 >= 5
    assert ids(select_neurons(c, 0.51)) == [0, 2]  # 8 >= 5.1
    assert ids(select_neurons(c, 0.8)) == [0, 2]
    assert ids(select_neurons(c, 0.81)) == [0, 2, 3]


def test_k_one_keeps_exactly_the_neurons_that_fired():
    c = torch.tensor([0, 4, 0, 1, 7, 0])
    assert ids(select_neurons(c, 1.0)) == [1, 3, 4]


def test_tiny_k_keeps_the_top_neuron():
    c = torch.tensor([3, 9, 9, 1])  # tie at the top: lower index wins
    assert ids(select_neurons(c, 1e-9)) == [1]


def test_ties_broken_by_index_deterministically():
    c = torch.tensor([2, 2, 2, 2, 2])  # any 3 reach 0.6; must be the first three
    for _ in range(3):
        assert ids(select_neurons(c, 0.6)) == [0, 1, 2]
    c = torch.tensor([1, 3, 2, 3, 2, 1])  # sorted: 1,3 (3) then 2,4 (2) then 0,5 (1)
    assert ids(select_neurons(c, 0.7)) == [1, 2, 3, 4]  # 3+3+2 = 8 < 8.4, +2 = 10
    assert ids(select_neurons(c, 0.6)) == [1, 2, 3]


def test_prefix_is_the_smallest():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        c = torch.randint(0, 50, (64,), generator=g)
        k = float(torch.rand(1, generator=g)) * 0.99 + 0.01
        s = select_neurons(c, k)
        kept = int(c[s].sum())
        assert kept >= k * int(c.sum())
        # dropping the weakest kept neuron goes below the threshold
        assert kept - int(c[s].min()) < k * int(c.sum())


def test_all_zero_is_a_clear_error():
    with pytest.raises(ValueError, match="all zero"):
        select_neurons(torch.zeros(8, dtype=torch.long), 0.9)
    counts = {"encoder.layers.0.ffn": torch.tensor([[1, 2, 3], [0, 0, 0]])}
    with pytest.raises(ValueError, match=r"direction en-de: .*all zero"):
        select_masks(counts, ["de-en", "en-de"], 0.9)


@pytest.mark.parametrize("k", [0.0, -0.1, 1.5, float("nan")])
def test_bad_k(k):
    with pytest.raises((ValueError, TypeError), match="k"):
        select_neurons(torch.tensor([1, 2]), k)


def test_bad_counts():
    with pytest.raises(TypeError, match="counts"):
        select_neurons(torch.tensor([1.0, 2.0]), 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        select_neurons(torch.tensor([1, -2]), 0.5)
    with pytest.raises(ValueError, match="shape"):
        select_masks({"encoder.layers.0.ffn": torch.ones(3, 4, dtype=torch.long)}, ["en-de", "de-en"])


def test_k_precedence():
    kw = dict(k=0.9, k_enc=0.8, k_dec=0.7, k_en2x=0.6, k_x2en=None)
    assert direction_k("encoder.layers.0.ffn", "en-de", "en", **kw) == 0.6
    assert direction_k("encoder.layers.0.ffn", "de-en", "en", **kw) == 0.8
    assert direction_k("decoder.layers.1.ffn", "de-en", "en", **kw) == 0.7
    assert direction_k("decoder.layers.1.ffn", "de-en", "en", k=0.9) == 0.9


def test_four_ks_of_the_original_beat_the_shorthands():
    kw = dict(k=0.9, k_en2x_enc=0.5, k_en2x_dec=0.55, k_x2en_enc=0.6, k_x2en_dec=0.65, k_en2x=0.1, k_enc=0.2)
    assert direction_k("encoder.layers.0.ffn", "en-de", "en", **kw) == 0.5
    assert direction_k("decoder.layers.0.ffn", "en-de", "en", **kw) == 0.55
    assert direction_k("encoder.layers.2.ffn", "de-en", "en", **kw) == 0.6
    assert direction_k("decoder.layers.2.ffn", "de-en", "en", **kw) == 0.65
    assert direction_k("encoder.layers.0.ffn", "en-de", "en", k=0.9, k_en2x=0.1, k_enc=0.2) == 0.1
    with pytest.raises(TypeError, match="unknown options"):
        direction_k("encoder.layers.0.ffn", "en-de", "en", k=0.9, k_enx=0.5)


def test_select_cli_takes_four_ks(tmp_path):
    from neuronspec.cli import main
    gen = torch.Generator().manual_seed(0)
    counts = {f"{side}.layers.0.ffn": torch.randint(0, 50, (2, 64), generator=gen) for side in ("encoder", "decoder")}
    save_file({"format": "neuronspec-counts", "version": 1, "directions": ["en-de", "de-en"], "counts": counts,
                 "meta": {"pivot": "en"}}, tmp_path / "counts.pt", "counts")
    assert main(["select", "--counts", str(tmp_path / "counts.pt"), "--k-en2x-enc", "0.3", "--k-en2x-dec", "0.99",
                 "--k-x2en-enc", "0.99", "--k-x2en-dec", "0.3", "--out", str(tmp_path / "m.pt")]) == 0
    masks, meta = load_layer_masks(tmp_path / "m.pt")
    enc, dec = masks["encoder.layers.0.ffn"].sizes().tolist(), masks["decoder.layers.0.ffn"].sizes().tolist()
    assert enc[0] < enc[1] and dec[0] > dec[1]  # en-de small in the encoder, de-en small in the decoder
    assert meta["k_en2x_enc"] == 0.3 and meta["k_x2en_dec"] == 0.3


def test_select_masks_uses_side_k():
    c = torch.tensor([[4, 3, 2, 1]])
    m = select_masks({"encoder.layers.0.ffn": c, "decoder.layers.0.ffn": c}, ["en-de"], 1.0, k_dec=0.4)
    assert ids(m["encoder.layers.0.ffn"].active(0)) == [0, 1, 2, 3]
    assert ids(m["decoder.layers.0.ffn"].active(0)) == [0]


def test_random_masks_match_sizes_and_are_seeded():
    g = torch.Generator().manual_seed(1)
    counts = {f"encoder.layers.{i}.ffn": torch.randint(0, 9, (3, 40), generator=g) + 1 for i in range(2)}
    sel = select_masks(counts, ["en-de", "de-en", "en-fr"], 0.6)
    r1, r2, r3 = random_masks(sel, 0), random_masks(sel, 0), random_masks(sel, 1)
    for layer in sel:
        assert torch.equal(r1[layer].sizes(), sel[layer].sizes())
        assert r1[layer] == r2[layer]
    assert any(r1[l] != r3[l] for l in sel)


def test_masks_round_trip(tmp_path):
    g = torch.Generator().manual_seed(2)
    counts = {"encoder.layers.0.ffn": torch.randint(0, 5, (4, 33), generator=g) + 1,
              "decoder.layers.0.ffn": torch.randint(0, 5, (4, 33), generator=g) + 1}
    masks = select_masks(counts, ["en-de", "de-en", "en-fr", "fr-en"], 0.9)
    save_layer_masks(masks, tmp_path / "m.pt", {"k": 0.9})
    back, meta = load_layer_masks(tmp_path / "m.pt")
    assert meta == {"k": 0.9}
    assert back.keys() == masks.keys()
    for layer in masks:
        assert back[layer] == masks[layer]
        assert isinstance(back[layer], TaskMasks) and back[layer].names == ["en-de", "de-en", "en-fr", "fr-en"]
