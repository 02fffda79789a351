"""Training a wrapped Hugging Face model as an HF user would (issue #27, docs/design.md §9):
directions that travel with the batch, gradient checkpointing, PEFT, save/load, counting with
padded labels, and the default Trainer end to end. Tiny random models built from configs.
"""
import copy
import inspect
import json

import pytest
import torch
from torch.func import functional_call

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from neuronspec.hf import DirectionCollator, MasksCallback, load, wrap  # noqa: E402
from neuronspec.hf.wrap import MASKS_FILE  # noqa: E402
from neuronspec.ops import TaskMasks, load_layer_masks  # noqa: E402

DIRS = ["en-de", "de-en", "en-fr"]
VOCAB, PAD, EOS = 64, 1, 2


def tiny(kind: str, seed: int = 0):
    """A tiny random M2M100 or Llama (seeded, no dropout), in train mode."""
    torch.manual_seed(seed)
    if kind == "m2m100":
        config = transformers.M2M100Config(
            vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=32, max_position_embeddings=64,
            pad_token_id=PAD, bos_token_id=0, eos_token_id=EOS, decoder_start_token_id=EOS, dropout=0.0,
            attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0, init_std=0.2)
        return transformers.M2M100ForConditionalGeneration(config).train()
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=36, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, pad_token_id=PAD,
                                      initializer_range=0.2)
    return transformers.LlamaForCausalLM(config).train()


def batch(kind: str, seed: int = 0, label_pad: int = -100) -> dict:
    """4 sequences with padding; label padding -100 or the pad id (`label_pad`)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (4, 9), generator=g)
    ids[1, 6:] = PAD
    ids[3, 4:] = PAD
    mask = (ids != PAD).long()
    if kind == "llama":
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(ids == PAD, -100)}
    labels = torch.randint(3, VOCAB, (4, 6), generator=g)
    labels[2, 3:] = label_pad
    labels[0, 4:] = label_pad
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def random_masks(spec, seed=0, density=0.5, unused=0):
    """Random masks; the last `unused` neurons of every layer belong to no direction."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, f in spec.layers.items():
        dense = torch.rand(len(DIRS), f.num_neurons, generator=g) < density
        dense[:, f.num_neurons - unused:] = False
        out[name] = TaskMasks.from_dense(dense, DIRS)
    return out


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict, want: dict, atol=1e-5):
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=atol, rtol=1e-4, msg=lambda m: f"{n}: {m}")


# ---- 1. the direction travels with the batch ---------------------------------------------------
@pytest.mark.parametrize("kind", ["m2m100", "llama"])
def test_forward_takes_task_ids_for_that_call_only(kind):
    model = tiny(kind).eval()
    spec = wrap(model, DIRS)
    spec.set_masks(random_masks(spec, seed=1))
    inputs = batch(kind)
    per_seq = ["en-fr", "de-en", "en-de", "en-fr"]
    with torch.no_grad():
        with spec.direction(per_seq):
            want = model(**inputs).logits
        for given in (per_seq, torch.tensor([2, 1, 0, 2]), [2, 1, 0, 2]):
            torch.testing.assert_close(model(**inputs, task_ids=given).logits, want)
        torch.testing.assert_close(model(**inputs, direction=per_seq).logits, want)
        with spec.direction("en-de"):  # the call's own ids win over the context's
            torch.testing.assert_close(model(**inputs, task_ids=per_seq).logits, want)
            assert not torch.allclose(model(**inputs).logits, want)
    assert spec.task_ids is None  # nothing left behind
    with pytest.raises(ValueError, match="task_ids: no direction set; pass task_ids="):
        model(**inputs)
    with pytest.raises(ValueError, match="task_ids, direction: give one"):
        model(**inputs, task_ids=0, direction=0)
    with pytest.raises(ValueError, match="task_ids: ids must lie in"):
        model(**inputs, task_ids=torch.tensor([0, 1, 2, 3]))
    assert "task_ids" in inspect.signature(model.forward).parameters
    spec.unwrap()
    assert "task_ids" not in inspect.signature(model.forward).parameters


def test_a_deep_copy_of_a_wrapped_model_runs_its_own_parameters():
    model = tiny("llama").eval()
    model.gradient_checkpointing_enable()
    spec = wrap(model, DIRS)
    spec.set_masks(random_masks(spec, seed=3))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        inputs = batch("llama")
        want = twin.model.layers[0].mlp.down_proj.weight.sum()
        assert not torch.allclose(twin(**inputs, task_ids=1).logits, model(**inputs, task_ids=1).logits)
    assert twin._neuronspec is not spec and twin._neuronspec.model is twin
    assert all(f._spec is twin._neuronspec for f in twin._neuronspec.layers.values())
    twin._neuronspec.unwrap()
    assert twin.model.layers[0].mlp.down_proj.weight.sum() == want and model._neuronspec is spec


def test_generate_takes_task_ids_with_beams():
    model = tiny("m2m100").eval()
    spec = wrap(model, DIRS)
    spec.set_masks(random_masks(spec, seed=2, density=0.3))
    inputs = batch("m2m100")
    del inputs["labels"]
    per_seq = ["en-de", "en-fr", "de-en", "en-fr"]
    with torch.no_grad():
        mixed = model.generate(**inputs, task_ids=per_seq, num_beams=3, max_new_tokens=5, do_sample=False)
        for i, d in enumerate(per_seq):
            alone = model.generate(**inputs, direction=d, num_beams=3, max_new_tokens=5, do_sample=False)
            n = min(mixed.shape[1], alone.shape[1])
            assert torch.equal(mixed[i, :n], alone[i, :n]), d


def test_collator_turns_a_direction_column_into_task_ids():
    model = tiny("m2m100")
    spec = wrap(model, DIRS)
    collate = DirectionCollator(transformers.default_data_collator, spec)
    rows = [{"input_ids": [5, 6, 7], "direction": "de-en"}, {"input_ids": [8, 9, 10], "direction": 2}]
    out = collate(rows)
    assert out["task_ids"].tolist() == [1, 2] and out["input_ids"].shape == (2, 3)
    assert "direction" not in out
    with pytest.raises(ValueError, match=r"features\[0\]: expected one of the columns"):
        collate([{"input_ids": [1]}])
    with pytest.raises(ValueError, match="direction: 'xx-yy'"):
        collate([{"input_ids": [1], "task_ids": "xx-yy"}])
    with pytest.raises(TypeError, match="spec: expected the Specialization"):
        DirectionCollator(transformers.default_data_collator, model)


# ---- 2. gradient checkpointing is exact ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["m2m100", "llama"])
@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_reuses_the_forward_directions(kind, reentrant):
    inputs = batch(kind, seed=3)
    per_seq = ["en-fr", "de-en", "en-de", "en-fr"]
    plain = tiny(kind)
    spec = wrap(plain, DIRS)
    masks = random_masks(spec, seed=4)
    spec.set_masks(masks)
    with spec.direction(per_seq):
        loss = plain(**inputs).loss
    loss.backward()
    want = grads(plain)
    model = tiny(kind)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    spec = wrap(model, DIRS)
    spec.set_masks(masks)
    with spec.direction(per_seq):
        loss = model(**inputs).loss
    with spec.direction("de-en"):  # another direction set before backward: recomputation must not read it
        loss.backward()
    assert_grads_close(grads(model), want)
    model.zero_grad()
    loss = model(**inputs, task_ids=per_seq).loss  # the call's own ids; none set at backward
    loss.backward()
    assert_grads_close(grads(model), want)


# ---- 3. PEFT composes -------------------------------------------------------------------------------
FFN_TARGETS = ["gate_proj", "up_proj", "down_proj"]


def lora_llama(targets, dropout=0.0, seed=0):
    model = tiny("llama", seed)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=dropout, init_lora_weights=False)
    return model, config


def effective_masked_params(plain, peft_model, masks, direction):
    """The mask-multiply oracle: `plain`'s parameters with every LoRA'd weight replaced by
    W + scaling·B A (merged, differentiable in A and B), gate and up rows then masked."""
    params = dict(plain.named_parameters())
    for name, module in peft_model.named_modules():
        if isinstance(module, peft.tuners.lora.Linear):
            key = name.removeprefix("base_model.model.") + ".weight"
            w = module.get_base_layer().weight + module.get_delta_weight("default")
            layer = f"decoder.layers.{key.split('.')[2]}.ffn"
            if key.endswith(("gate_proj.weight", "up_proj.weight")):
                w = w * masks[layer].to_dense()[direction].float()[:, None]
            params[key] = w
    return params


@pytest.mark.parametrize("order", ["wrap_then_peft", "peft_then_wrap"])
def test_lora_on_gated_ffn_runs_inside_the_masks(order):
    inputs = batch("llama", seed=5)
    model, config = lora_llama(FFN_TARGETS)
    if order == "wrap_then_peft":
        spec = wrap(model, DIRS)
        pm = peft.get_peft_model(model, config)
    else:
        pm = peft.get_peft_model(model, config)
        spec = wrap(model, DIRS)
    masks = random_masks(spec, seed=6)
    spec.set_masks(masks)
    out = pm(**inputs, task_ids="de-en")
    out.loss.backward()
    got = {n: p.grad for n, p in pm.named_parameters() if "lora_" in n}
    assert len(got) == 12 and all(g is not None and g.abs().sum() > 0 for g in got.values())
    # oracle: a plain model called with merged, row-masked weights that are functions of A and B
    ref_pm = peft.get_peft_model(lora_llama(FFN_TARGETS)[0], config)
    ref_pm.load_state_dict(pm.state_dict())  # the same adapters (same keys: wrapping keeps names)
    plain = tiny("llama")
    want = functional_call(plain, effective_masked_params(plain, ref_pm, masks, 1), kwargs=inputs)
    torch.testing.assert_close(out.logits, want.logits, atol=1e-5, rtol=1e-5)
    want.loss.backward()
    ref = {n: p.grad for n, p in ref_pm.named_parameters() if "lora_" in n}
    for n in got:
        torch.testing.assert_close(got[n], ref[n], atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")
    for name, module in pm.named_modules():  # masked rows: no LoRA gradient into B's rows
        if isinstance(module, peft.tuners.lora.Linear) and name.endswith(("gate_proj", "up_proj")):
            layer = f"decoder.layers.{name.split('layers.')[1].split('.')[0]}.ffn"
            inactive = ~masks[layer].to_dense()[1]
            assert module.lora_B["default"].weight.grad[inactive].abs().sum() == 0


def test_lora_only_on_ffn_trains_and_unwrap_keeps_adapters_then_merges():
    inputs = batch("llama", seed=7)
    model, config = lora_llama(FFN_TARGETS)
    reference = peft.get_peft_model(copy.deepcopy(model), config)
    spec = wrap(model, DIRS)
    pm = peft.get_peft_model(model, config)
    reference.load_state_dict(pm.state_dict())
    spec.set_masks({n: TaskMasks.full(len(DIRS), f.num_neurons, DIRS) for n, f in spec.layers.items()})
    out = pm(**inputs, task_ids=0)
    out.loss.backward()  # LoRA only on the FFN: the loss must reach the adapters
    want = reference(**inputs)
    torch.testing.assert_close(out.logits, want.logits, atol=1e-5, rtol=1e-5)
    want.loss.backward()
    assert_grads_close({n: p.grad for n, p in pm.named_parameters() if p.grad is not None},
                       {n: p.grad for n, p in reference.named_parameters() if p.grad is not None})
    spec.unwrap()
    assert sum(isinstance(m, peft.tuners.lora.Linear) for m in model.modules()) == 6  # adapters kept
    with torch.no_grad():
        torch.testing.assert_close(pm(**inputs).logits, want.logits, atol=1e-5, rtol=1e-5)
    spec = wrap(model, DIRS)
    merged = pm.merge_and_unload()
    spec.unwrap()
    assert not any(isinstance(m, peft.tuners.lora.Linear) for m in merged.modules())
    assert type(merged.model.layers[0].mlp).__name__ == "LlamaMLP"
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, want.logits, atol=1e-5, rtol=1e-5)


def test_other_tuners_and_lora_dropout_run_the_masked_dense_path():
    """LoRA with dropout in training is not an effective weight: the FFN calls the tuner modules
    and keeps each token's active neurons; equal to the unwrapped PEFT model whose gate and up
    outputs are masked the same way (same dropout draws)."""
    inputs = batch("llama", seed=8)
    model, config = lora_llama(FFN_TARGETS, dropout=0.5)
    reference = peft.get_peft_model(copy.deepcopy(model), config)
    pm = peft.get_peft_model(model, config)
    reference.load_state_dict(pm.state_dict())
    spec = wrap(model, DIRS)
    masks = random_masks(spec, seed=9)
    spec.set_masks(masks)
    torch.manual_seed(0)
    out = pm(**inputs, task_ids=2)
    hooks = []
    for i, layer in enumerate(reference.get_base_model().model.layers):
        keep = masks[f"decoder.layers.{i}.ffn"].to_dense()[2]
        for lin in (layer.mlp.gate_proj, layer.mlp.up_proj):
            hooks.append(lin.register_forward_hook(lambda m, a, o, keep=keep: o * keep))
    torch.manual_seed(0)
    want = reference(**inputs)
    torch.testing.assert_close(out.logits, want.logits, atol=1e-5, rtol=1e-5)
    out.loss.backward()
    want.loss.backward()
    assert_grads_close({n: p.grad for n, p in pm.named_parameters() if p.grad is not None},
                       {n: p.grad for n, p in reference.named_parameters() if p.grad is not None})


def test_lora_on_fc1_fc2_is_refused_naming_the_tuner():
    config = peft.LoraConfig(r=4, target_modules=["fc1", "fc2"])
    pm = peft.get_peft_model(tiny("m2m100"), config)
    with pytest.raises(ValueError, match=r"fc1 is a PEFT tuner layer \(peft\.tuners\.lora\.layer\.Linear\)"):
        wrap(pm.get_base_model(), DIRS)
    assert not any(type(m).__name__ == "FusedFFN" for m in pm.modules())  # refused before any change
    model = tiny("m2m100")
    wrap(model, DIRS)
    with pytest.raises(ValueError, match="FusedFFN"):  # PEFT itself refuses the wrapped fc1
        peft.get_peft_model(model, config)


# ---- 4. masks live with the model ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["m2m100", "llama"])
def test_save_pretrained_writes_masks_and_load_restores_them(kind, tmp_path):
    model = tiny(kind).eval()
    spec = wrap(model, DIRS, mask_bias=True)
    masks = random_masks(spec, seed=10)
    spec.set_masks(masks)
    inputs = batch(kind, seed=11)
    with torch.no_grad():
        want = model(**inputs, task_ids=[0, 2, 1, 0]).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / MASKS_FILE).is_file()
    mark = json.loads((tmp_path / "config.json").read_text())["neuronspec"]
    assert mark["directions"] == DIRS and mark["mask_bias"] is True
    assert not hasattr(model.config, "neuronspec")  # only the saved config is marked
    loaded, spec2 = load(tmp_path)
    assert spec2.directions == DIRS and spec2.mask_bias and spec2.masks() == masks
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs, task_ids=[0, 2, 1, 0]).logits, want)
    with pytest.warns(UserWarning, match="as a dense model .*neuronspec.hf.load"):
        dense = type(model).from_pretrained(pretrained_model_name_or_path=tmp_path)
    with torch.no_grad():
        assert not torch.allclose(dense.eval()(**inputs).logits, want)
    state = torch.load(tmp_path / MASKS_FILE, weights_only=True)  # a changed entry, checksum as it was
    state["meta"]["directions"] = DIRS[::-1]
    torch.save(state, tmp_path / MASKS_FILE)
    with pytest.raises(ValueError, match="masks: .* is damaged"):
        load(tmp_path)
    spec.unwrap()
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="is not a specialized model folder"):
        load(tmp_path / "plain")


# ---- 5. counting never counts padding ------------------------------------------------------------------
def test_counting_excludes_label_padding_of_either_convention():
    model = tiny("m2m100").eval()
    spec = wrap(model, DIRS)
    counted = {}
    for convention in (-100, PAD):
        inputs = batch("m2m100", seed=12, label_pad=convention)
        with torch.no_grad(), spec.counting() as rec:
            model(**inputs, task_ids=[0, 1, 2, 0])
        counted[convention] = rec
    real = int((batch("m2m100", seed=12)["labels"] != -100).sum())
    assert int(counted[PAD]["tokens"]["decoder"].sum()) == real == int(counted[-100]["tokens"]["decoder"].sum())
    for layer in counted[-100]["counts"]:
        assert torch.equal(counted[PAD]["counts"][layer], counted[-100]["counts"][layer]), layer
    inputs = batch("m2m100", seed=12, label_pad=PAD)
    dec_mask = (inputs["labels"] != PAD).long()
    with torch.no_grad(), spec.counting() as rec:
        model(**inputs, decoder_attention_mask=dec_mask, task_ids=[0, 1, 2, 0])
    assert int(rec["tokens"]["decoder"].sum()) == real


# ---- the default Trainer end to end ----------------------------------------------------------------------
def rows(kind: str, n: int = 24, seed: int = 0) -> list[dict]:
    """Training rows with a `direction` column (names), variable lengths, unpadded."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 4 + i % 5
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        row = {"input_ids": ids, "attention_mask": [1] * length, "direction": DIRS[i % 3]}
        row["labels"] = ids if kind == "llama" else torch.randint(3, VOCAB, (3 + i % 4,), generator=g).tolist()
        out.append(row)
    return out


class PadCollator:
    """Pads input_ids/attention_mask with the pad id and labels with -100 (no tokenizer needed)."""

    def __call__(self, features):
        out = {}
        for key, fill in (("input_ids", PAD), ("attention_mask", 0), ("labels", -100)):
            width = max(len(f[key]) for f in features)
            out[key] = torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features])
        return out


@pytest.mark.parametrize("kind,lora", [("m2m100", None), ("m2m100", ["q_proj", "v_proj"]),
                                       ("llama", ["q_proj", "v_proj", *FFN_TARGETS])])
def test_default_trainer_trains_with_mixed_directions_checkpointing_and_lora(kind, lora, tmp_path):
    model = tiny(kind)
    spec = wrap(model, DIRS)
    masks = random_masks(spec, seed=13, density=0.6, unused=4)
    spec.set_masks(masks)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=lora)) if lora else model
    args_cls = transformers.Seq2SeqTrainingArguments if kind == "m2m100" else transformers.TrainingArguments
    args = args_cls(output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=6, learning_rate=1e-2,
                    use_cpu=True, report_to=[], save_strategy="steps", save_steps=10, logging_steps=5,
                    gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": lora is None},
                    disable_tqdm=True, seed=0,
                    **({"predict_with_generate": True, "generation_max_length": 6} if kind == "m2m100" else {}))
    trainer_cls = transformers.Seq2SeqTrainer if kind == "m2m100" else transformers.Trainer
    trainer = trainer_cls(model=trained, args=args, train_dataset=rows(kind), eval_dataset=rows(kind, 6, seed=1),
                          data_collator=DirectionCollator(PadCollator(), spec), callbacks=[MasksCallback(spec)])
    result = trainer.train()
    assert result.global_step == 20
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    for step in (10, 20):
        assert load_layer_masks(tmp_path / f"checkpoint-{step}" / MASKS_FILE)[0] == masks
    if lora:  # rows no direction uses: the merged weights there are unchanged
        merged = {n: p for n, p in trained.merge_and_unload().named_parameters()} if "gate_proj" in lora else \
            dict(model.named_parameters())
    else:
        merged = dict(model.named_parameters())
    moved = 0
    for layer, m in masks.items():
        used = m.to_dense().any(0)
        side, _, i, _ = layer.split(".")
        keys = [f"model.{side}.layers.{i}.fc1.weight"] if kind == "m2m100" else \
            [f"model.layers.{i}.mlp.{p}.weight" for p in ("gate_proj", "up_proj")]
        for key in keys:
            assert torch.equal(merged[key].detach()[~used], before[key][~used]), key
            moved += int(not torch.equal(merged[key].detach()[used], before[key][used]))
    assert moved > 0 or (lora and "gate_proj" not in lora)
    if kind == "m2m100":  # evaluation with generate, each row under its own direction
        trained.eval()
        pred = trainer.predict(rows(kind, 6, seed=1))
        assert pred.predictions.shape[0] == 6
        first = rows(kind, 6, seed=1)[0]
        with torch.no_grad():
            alone = trained.generate(input_ids=torch.tensor([first["input_ids"]]),
                                     attention_mask=torch.tensor([first["attention_mask"]]),
                                     direction=first["direction"], max_length=6)
        n = alone.shape[1]
        assert pred.predictions[0][:n].tolist() == alone[0].tolist()
