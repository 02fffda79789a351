"""Bottleneck adapters (nmt/adapters.py) and the adapter arms' starting checkpoints
(study/arms.py): identity at start, per-direction / per-family grouping, and training that
leaves the frozen base unchanged (clipping and EMA on) while the adapters learn."""
import pytest
import torch

from _nmt_cases import TINY_MODEL, prepare
from neuronspec.nmt.adapters import adapter_groups, adapter_parameters
from neuronspec.nmt.checkpoint import load_checkpoint
from neuronspec.nmt.config import TrainConfig
from neuronspec.nmt.model import ModelConfig, Transformer
from neuronspec.study import arms, training

CFG = dict(vocab_size=40, d_model=16, d_ff=32, heads=2, encoder_layers=2, decoder_layers=1, dropout=0.0)


def test_groups():
    dirs = ["en-de", "de-en", "en-af", "af-en", "en-he", "he-en"]
    assert adapter_groups(dirs, "lp") == ([0, 1, 2, 3, 4, 5], dirs)
    table, names = adapter_groups(dirs, "fam")
    assert names == ["Germanic", "Afro-Asiatic"] and table == [0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="no en side"):
        adapter_groups(["de-fr"], "fam")
    with pytest.raises(ValueError, match="kind"):
        adapter_groups(dirs, "family")


def test_config_checks_and_old_configs():
    old = ModelConfig(**CFG).to_dict()
    for k in ("adapter_kind", "adapter_dim", "adapter_of_task", "freeze_base", "lass_tasks"):
        old.pop(k)
    m = Transformer(ModelConfig.from_dict(old))  # a checkpoint written before these fields
    assert m.adapters is None and all(p.requires_grad for p in m.parameters())
    assert not any(k.startswith("adapters") for k in m.state_dict())
    with pytest.raises(ValueError, match="adapter_kind"):
        ModelConfig(**CFG, adapter_dim=4)
    with pytest.raises(ValueError, match="adapter_dim"):
        ModelConfig(**CFG, adapter_kind="lp", adapter_of_task=[0, 1])
    with pytest.raises(ValueError, match="every adapter"):
        ModelConfig(**CFG, adapter_kind="lp", adapter_dim=4, adapter_of_task=[0, 2])


def test_fresh_adapters_are_the_identity_and_mixed_batches():
    torch.manual_seed(0)
    base = Transformer(ModelConfig(**CFG))
    ck = {"model_config": base.cfg.to_dict(), "model": base.state_dict(),
          "data": {"directions": ["en-de", "de-en", "en-he"]}}
    start = arms.with_adapters(ck, "lp", 4)
    model = Transformer(ModelConfig.from_dict(start["model_config"]))
    model.load_state_dict(start["model"])
    src, tgt = torch.randint(1, 40, (3, 5)), torch.randint(1, 40, (3, 4))
    assert torch.allclose(model(src, tgt, 2), base(src, tgt, 2), atol=1e-6)
    assert adapter_parameters(model) == 3 * 3 * (2 * 16 + 4 * 16 + 4 + 16 * 4 + 16)  # 3 layers x 3 adapters
    extra, n_base = arms.extra_parameters(start["model_config"])
    assert extra == adapter_parameters(model) and n_base == base.num_parameters()
    with torch.no_grad():  # adapters that differ: a mixed batch equals each row run alone
        for p in model.adapters.parameters():
            p.normal_()
    mixed = model(src, tgt, torch.tensor([2, 0, 1]))
    for i, t in enumerate([2, 0, 1]):
        assert torch.allclose(mixed[i], model(src[i:i + 1], tgt[i:i + 1], t)[0], atol=1e-5)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """(prepared folder, a 3-update dense checkpoint) on the synthetic de/fr corpus."""
    root = tmp_path_factory.mktemp("adapters")
    prep = prepare(root)
    cfg = TrainConfig(data=str(prep.root), out=str(root / "base"), model_args=TINY_MODEL, max_tokens=400,
                      warmup=5, max_steps=3, valid_every=0, valid_chrf_sentences=0, progress=False)
    return prep, training.run(cfg)["checkpoint"]


@pytest.mark.parametrize("kind", ["lp", "fam"])
def test_training_keeps_the_base_and_changes_the_adapters(base_run, tmp_path, kind):
    prep, base_ckpt = base_run
    ck = load_checkpoint(base_ckpt)
    start = arms.with_adapters(ck, kind, 8)
    cfg = training.continuation_config(ck, str(prep.root), tmp_path / kind, steps=4, seed=2, lr=3e-3, device="cpu")
    assert cfg.ema_decay > 0 and cfg.clip_norm > 0  # the frozen base meets EMA and clipping too
    out = load_checkpoint(training.run(cfg, init_from=start)["checkpoint"])
    changed = [k for k in out["model"] if not torch.equal(out["model"][k], start["model"][k])]
    assert changed and all(k.startswith("adapters.") for k in changed)
    assert all(torch.equal(out["model"][k], v) for k, v in ck["model"].items())  # base weights unchanged
    assert all(torch.equal(out["ema"]["online"][k], v) for k, v in ck["model"].items())
    assert any(k.startswith("adapters.") and "up" in k for k in changed)
