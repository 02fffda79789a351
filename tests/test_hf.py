"""neuronspec.hf on tiny random transformers models built from configs (docs/design.md §9).

Nothing is downloaded: models come from configs with random weights, tokenizers are trained
here with sentencepiece.
"""
import copy

import pytest
import torch
from torch.func import functional_call

transformers = pytest.importorskip("transformers")

from neuronspec.hf import Passthrough, load, wrap  # noqa: E402
from neuronspec.ops import TaskMasks  # noqa: E402

DIRS = ["en-de", "de-en", "en-fr"]
VOCAB, PAD = 96, 1


def tiny(kind: str):
    """A tiny random model of family `kind` in eval mode (seeded), dropout off."""
    torch.manual_seed(KINDS.index(kind))
    common = dict(vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=40, max_position_embeddings=64,
                  pad_token_id=PAD, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, dropout=0.0,
                  attention_dropout=0.0, activation_dropout=0.0)
    if kind == "m2m100":
        model = transformers.M2M100ForConditionalGeneration(transformers.M2M100Config(**common))
    elif kind == "mbart":
        model = transformers.MBartForConditionalGeneration(transformers.MBartConfig(**common))
    elif kind == "mbart_gelu_new":
        model = transformers.MBartForConditionalGeneration(transformers.MBartConfig(activation_function="gelu_new",
                                                                                    **common))
    elif kind == "marian":
        model = transformers.MarianMTModel(transformers.MarianConfig(activation_function="swish", **common))
    elif kind in GATED:
        config_cls, model_cls = GATED[kind]
        config = getattr(transformers, config_cls)(vocab_size=VOCAB, hidden_size=16, intermediate_size=36,
                                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                                   head_dim=8, pad_token_id=PAD)
        model = getattr(transformers, model_cls)(config)
    else:
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=36, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=2, pad_token_id=PAD,
                                          mlp_bias=kind == "llama_bias")
        model = transformers.LlamaForCausalLM(config)
    return model.eval()


# more gated families (issue #27): Gemma's gelu_pytorch_tanh, Phi-3's fused gate_up_proj
GATED = {"gemma": ("GemmaConfig", "GemmaForCausalLM"), "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
         "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
         "phi3": ("Phi3Config", "Phi3ForCausalLM")}
KINDS = ["m2m100", "mbart", "marian", "llama", "llama_bias", "mbart_gelu_new", *GATED]
ACT = {"m2m100": "relu", "mbart": "gelu", "marian": "silu", "llama": "silu", "llama_bias": "silu",
       "mbart_gelu_new": "gelu_tanh", "gemma": "gelu_tanh", "gemma2": "gelu_tanh", "gemma3": "gelu_tanh",
       "qwen3": "silu", "phi3": "silu"}


def decoder_only(kind: str) -> bool:
    return kind.startswith("llama") or kind in GATED


def batch(kind: str, seed: int = 0):
    """Model inputs with padding: 4 sequences."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (4, 9), generator=g)
    ids[1, 6:] = PAD
    ids[3, 4:] = PAD
    mask = (ids != PAD).long()
    if decoder_only(kind):
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(ids == PAD, -100)}
    labels = torch.randint(3, VOCAB, (4, 6), generator=g)
    labels[2, 3:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def ffn_weights(model, kind):
    """{layer: (name of the masked weight matrix or matrices)} in neuronspec's layer naming
    (Phi-3: gate_up_proj, whose rows are the gate's then the up's)."""
    if kind == "phi3":
        return {f"decoder.layers.{i}.ffn": [f"model.layers.{i}.mlp.gate_up_proj.weight"]
                for i in range(len(model.model.layers))}
    if decoder_only(kind):
        return {f"decoder.layers.{i}.ffn": [f"model.layers.{i}.mlp.gate_proj.weight",
                                            f"model.layers.{i}.mlp.up_proj.weight"]
                for i in range(len(model.model.layers))}
    out = {}
    for side in ("encoder", "decoder"):
        for i in range(2):
            out[f"{side}.layers.{i}.ffn"] = [f"model.{side}.layers.{i}.fc1.weight"]
    return out


def random_layer_masks(spec, seed=0, density=0.5):
    g = torch.Generator().manual_seed(seed)
    return {name: TaskMasks.from_dense(torch.rand(len(DIRS), f.num_neurons, generator=g) < density, DIRS)
            for name, f in spec.layers.items()}


def loss_and_grads(model, inputs, params=None):
    out = functional_call(model, params, kwargs=inputs) if params is not None else model(**inputs)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def models():
    return {k: tiny(k) for k in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_wrapping_keeps_parameters_and_keys(models, kind):
    model = copy.deepcopy(models[kind])
    before = {n: p for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    spec = wrap(model, DIRS)
    assert list(model.state_dict()) == keys
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)  # shared, not copied
    assert spec.family == ("glu" if decoder_only(kind) else "fc")
    assert len(spec.layers) == (2 if decoder_only(kind) else 4)
    assert all(f.activation == ACT[kind] for f in spec.layers.values())
    spec.unwrap()
    assert not any(isinstance(m, Passthrough) for m in model.modules())
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("kind", KINDS)
def test_full_masks_equal_the_unwrapped_model(models, kind):
    inputs = batch(kind)
    plain = copy.deepcopy(models[kind])
    want_logits, want_grads = loss_and_grads(plain, inputs)
    model = copy.deepcopy(models[kind])
    spec = wrap(model, DIRS)
    dense_logits, _ = loss_and_grads(model, inputs)  # wrapped, no masks
    model.zero_grad()
    spec.set_masks({n: TaskMasks.full(len(DIRS), f.num_neurons, DIRS) for n, f in spec.layers.items()})
    with spec.direction(["en-de", "en-fr", "de-en", "en-de"]):
        logits, grads = loss_and_grads(model, inputs)
    torch.testing.assert_close(dense_logits, want_logits)
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == want_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], want_grads[n], atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", [0, 2])
def test_masks_equal_an_explicit_mask_multiply(models, kind, direction):
    inputs = batch(kind, seed=1)
    model = copy.deepcopy(models[kind])
    spec = wrap(model, DIRS)
    masks = random_layer_masks(spec, seed=direction)
    spec.set_masks(masks)
    with spec.direction(DIRS[direction]):
        logits, grads = loss_and_grads(model, inputs)
    plain = copy.deepcopy(models[kind])
    params = dict(plain.named_parameters())
    for layer, names in ffn_weights(plain, kind).items():
        m = masks[layer].to_dense()[direction].to(torch.float32)[:, None]
        for n in names:
            params[n] = params[n] * (torch.cat([m, m]) if params[n].shape[0] == 2 * m.shape[0] else m)  # the original method: dense weights times dense masks
    want_logits, want_grads = loss_and_grads(plain, inputs, params)
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
    for n in want_grads:
        torch.testing.assert_close(grads[n], want_grads[n], atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("kind", ["m2m100", "llama"])
def test_mixed_directions_equal_each_direction_alone(models, kind):
    inputs = batch(kind, seed=2)
    model = copy.deepcopy(models[kind])
    spec = wrap(model, DIRS)
    spec.set_masks(random_layer_masks(spec, seed=5))
    per_seq = ["en-fr", "de-en", "en-fr", "en-de"]
    with torch.no_grad(), spec.direction(per_seq):
        mixed = model(**inputs).logits
        for i, d in enumerate(per_seq):
            spec.task_ids = d
            torch.testing.assert_close(mixed[i], model(**inputs).logits[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_counts_equal_a_naive_hook_count(models, kind):
    inputs = batch(kind, seed=3)
    per_seq = torch.tensor([2, 0, 2, 1])
    plain = copy.deepcopy(models[kind])
    naive, hooks = {}, []
    is_llama = decoder_only(kind)
    enc_valid = inputs["attention_mask"].bool()
    dec_valid = enc_valid if is_llama else inputs["labels"] != -100

    def hook_for(layer, valid):
        def hook(module, args, out):
            out = out[..., :out.shape[-1] // 2] if kind == "phi3" else out  # gate rows first
            pos = (out > 0) & valid[..., None]
            naive[layer] = torch.zeros(len(DIRS), out.shape[-1], dtype=torch.long).index_add_(
                0, per_seq, pos.sum(1).long())
        return hook

    for layer, names in ffn_weights(plain, kind).items():
        module = plain.get_submodule(names[0].rsplit(".", 1)[0])  # fc1 or gate_proj
        hooks.append(module.register_forward_hook(hook_for(layer, enc_valid if layer.startswith("encoder") else dec_valid)))
    with torch.no_grad():
        want_logits = plain(**inputs).logits
    model = copy.deepcopy(models[kind])
    spec = wrap(model, DIRS)
    with torch.no_grad(), spec.direction(per_seq), spec.counting() as rec:
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, want_logits)
    assert rec["counts"].keys() == naive.keys()
    for layer in naive:
        assert torch.equal(rec["counts"][layer], naive[layer]), layer
    dec_tokens = torch.zeros(len(DIRS), dtype=torch.long).index_add_(0, per_seq, dec_valid.sum(1))
    assert torch.equal(rec["tokens"]["decoder"], dec_tokens)
    if not is_llama:
        enc_tokens = torch.zeros(len(DIRS), dtype=torch.long).index_add_(0, per_seq, enc_valid.sum(1))
        assert torch.equal(rec["tokens"]["encoder"], enc_tokens)


@pytest.mark.parametrize("kind", ["m2m100", "marian", "llama"])
def test_save_load_round_trip(models, kind, tmp_path):
    inputs = batch(kind, seed=4)
    model = copy.deepcopy(models[kind])
    spec = wrap(model, DIRS)
    masks = random_layer_masks(spec, seed=6)
    spec.set_masks(masks)
    with torch.no_grad(), spec.direction("de-en"):
        want = model(**inputs).logits
    model.save_pretrained(tmp_path)
    spec.save_masks(tmp_path)
    cls = type(model)
    with pytest.warns(UserWarning, match="saved with per-direction masks, as a dense model"):
        loaded = cls.from_pretrained(tmp_path).eval()
    for n, p in models[kind].state_dict().items():  # saved weights load into an unwrapped model
        torch.testing.assert_close(loaded.state_dict()[n], p, msg=lambda m: f"{n}: {m}")
    spec2 = wrap(loaded, DIRS)
    meta = spec2.load_masks(tmp_path)
    assert meta["directions"] == DIRS and meta["model_type"] == model.config.model_type
    assert spec2.masks() == masks
    with torch.no_grad(), spec2.direction("de-en"):
        torch.testing.assert_close(loaded(**inputs).logits, want)


def test_generate_with_beams_uses_each_sequences_direction(models):
    model = copy.deepcopy(models["m2m100"])
    spec = wrap(model, DIRS)
    spec.set_masks(random_layer_masks(spec, seed=7, density=0.3))
    inputs = batch("m2m100", seed=5)
    del inputs["labels"]
    per_seq = ["en-de", "en-fr", "de-en", "en-fr"]
    with torch.no_grad(), spec.direction(per_seq):
        mixed = model.generate(**inputs, num_beams=3, max_new_tokens=5, do_sample=False)
    for i, d in enumerate(per_seq):
        with torch.no_grad(), spec.direction(d):
            alone = model.generate(**inputs, num_beams=3, max_new_tokens=5, do_sample=False)
        n = min(mixed.shape[1], alone.shape[1])
        assert torch.equal(mixed[i, :n], alone[i, :n]), d


def test_bad_inputs_give_clear_errors(models):
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=16))
    with pytest.raises(ValueError, match="model: BertModel .*not supported"):
        wrap(bert, DIRS)
    m2m = copy.deepcopy(models["m2m100"])
    spec = wrap(m2m, DIRS)
    with pytest.raises(ValueError, match="already wrapped"):
        wrap(m2m, DIRS)
    llama_spec = wrap(copy.deepcopy(models["llama"]), DIRS)
    with pytest.raises(ValueError, match="masks: layers do not match this model"):
        spec.set_masks(random_layer_masks(llama_spec))
    other = {n: TaskMasks.full(len(DIRS), f.num_neurons + 1, DIRS) for n, f in spec.layers.items()}
    with pytest.raises(ValueError, match=r"masks\[.*another model"):
        spec.set_masks(other)
    with pytest.raises(ValueError, match="differ from the model's"):
        spec.set_masks({n: TaskMasks.full(2, f.num_neurons, ["a-b", "b-a"]) for n, f in spec.layers.items()})
    with pytest.raises(ValueError, match="direction: 'xx-yy'"):
        with spec.direction("xx-yy"):
            pass
    with pytest.raises(ValueError, match="task_ids"):
        spec.task_ids = torch.tensor([0, 5])
    spec.set_masks(random_layer_masks(spec))
    inputs = batch("m2m100")
    with pytest.raises(ValueError, match="task_ids: no direction set"):
        m2m(**inputs)
    with pytest.raises(ValueError, match="task_ids: 3 directions"):
        with spec.direction([0, 1, 2]):
            m2m(**inputs)
    with pytest.raises(ValueError, match="counting records the dense model"):
        spec.start_counting()
    with pytest.raises(ValueError, match="directions: expected"):
        wrap(copy.deepcopy(models["mbart"]), "en-de")


# ---- the pipeline on a tiny M2M100 with a real M2M100Tokenizer ----------------------------------
from neuronspec.hf import pipeline  # noqa: E402
from neuronspec.hf.tiny import tiny_m2m100, tiny_tokenizer, write_parallel  # noqa: E402
from neuronspec.specialization.record import load_counts  # noqa: E402
from neuronspec.specialization.select import select_masks  # noqa: E402

PAIRS = {"en-de": (["the cat sits", "a dog runs fast", "I drink water", "the house"],
                   ["die Katze sitzt", "ein Hund läuft schnell", "ich trinke Wasser", "das Haus"]),
         "en-fr": (["the cat sits", "a dog runs fast", "I drink water", "the house"],
                   ["le chat est assis", "un chien court vite", "je bois de l'eau", "la maison"])}
PIPE_DIRS = ["en-de", "de-en", "en-fr"]


@pytest.fixture(scope="module")
def m2m(tmp_path_factory):
    """(model folder, corpus folder, (model, tokenizer) loaded from the folder): a tiny M2M100."""
    root = tmp_path_factory.mktemp("m2m")
    lines = [s for a, b in PAIRS.values() for s in a + b]
    tok = tiny_tokenizer(root / "tok", lines * 4, vocab_size=80)
    model = tiny_m2m100(tok, d_model=16, ffn=48, init_std=0.5)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    write_parallel(root / "corpus", "valid", PAIRS)
    return root / "model", root / "corpus", pipeline.load_pretrained(str(root / "model"))


def loaded(m2m):
    """A fresh copy of the saved model (loaded once per module) and its tokenizer."""
    model, tok = m2m[2]
    return copy.deepcopy(model), tok


def test_record_uses_language_codes_and_writes_the_counts_format(m2m, tmp_path):
    model, tok = loaded(m2m)
    rec = pipeline.record(model, tok, m2m[1], PIPE_DIRS, tmp_path / "counts.pt", batch_size=3, source="tiny")
    saved = load_counts(tmp_path / "counts.pt")
    assert saved["directions"] == PIPE_DIRS and saved["meta"]["model"] == "tiny"
    assert torch.equal(saved["sentences"], torch.tensor([4, 4, 4]))
    assert list(rec["counts"]) == [f"{s}.layers.{i}.ffn" for s in ("encoder", "decoder") for i in range(2)]
    codes = pipeline.LanguageCodes(tok)
    plain = copy.deepcopy(model)
    for t, d in enumerate(PIPE_DIRS):
        src, tgt = pipeline.read_pairs(m2m[1], "valid", d)
        inputs = codes.encode(d, src, tgt)
        s, g = d.split("-")
        assert bool((inputs["input_ids"][:, 0] == tok.get_lang_id(s)).all())  # M2M100: __src__ first
        assert bool((inputs["labels"][:, 0] == tok.get_lang_id(g)).all())
        assert int(saved["tokens"]["encoder"][t]) == int(inputs["attention_mask"].sum())
        assert int(saved["tokens"]["decoder"][t]) == int((inputs["labels"] != -100).sum())
        z = {}
        hook = plain.model.encoder.layers[1].fc1.register_forward_hook(lambda m, a, o: z.setdefault("z", o))
        with torch.no_grad():
            plain(**inputs)
        hook.remove()
        naive = ((z["z"] > 0) & inputs["attention_mask"].bool()[..., None]).sum((0, 1))
        assert torch.equal(saved["counts"]["encoder.layers.1.ffn"][t], naive), d
    assert list(model.state_dict()) == list(plain.state_dict())  # record unwrapped the model again
    assert select_masks(saved["counts"], PIPE_DIRS, 0.9)["decoder.layers.1.ffn"].names == PIPE_DIRS


def test_unknown_language_code_is_a_clear_error(m2m, tmp_path):
    model, tok = loaded(m2m)
    with pytest.raises(ValueError, match="lang-codes: 'xx' of direction en-xx is not a language code of M2M100"):
        pipeline.record(model, tok, m2m[1], ["en-de", "en-xx"], tmp_path / "c.pt")
    with pytest.raises(ValueError, match="lang-codes: 'eng_Latn'"):
        pipeline.translate(model, tok, ["a"], "en-de", lang_codes={"en": "eng_Latn"})
    with pytest.raises(ValueError, match="data: no files valid.de-fr"):
        pipeline.record(model, tok, m2m[1], ["de-fr"], tmp_path / "c.pt")
    with pytest.raises(ValueError, match="lang-codes: expected NAME=CODE"):
        pipeline.parse_lang_codes("en:eng_Latn")


def test_translate_applies_the_directions_masks(m2m, tmp_path):
    model, tok = loaded(m2m)
    spec = wrap(model, PIPE_DIRS)
    masks = random_layer_masks(spec, seed=3, density=0.4)
    spec.set_masks(masks)
    spec.save_masks(tmp_path)
    spec.unwrap()
    src = PAIRS["en-fr"][0]
    got = pipeline.translate(model, tok, src, "en-fr", masks=tmp_path, beam=2, max_new_tokens=6)
    explicit = copy.deepcopy(model)  # the same masks as a dense mask-multiply of fc1's rows
    with torch.no_grad():
        for name, m in masks.items():
            side, _, i, _ = name.split(".")
            layer = getattr(explicit.model, side).layers[int(i)]
            layer.fc1.weight.mul_(m.to_dense()[2].float()[:, None])
    want = pipeline.translate(explicit, tok, src, "en-fr", beam=2, max_new_tokens=6)
    assert got == want and len(got) == len(src)
    assert got != pipeline.translate(model, tok, src, "en-fr", beam=2, max_new_tokens=6)  # dense differs
    with pytest.raises(ValueError, match="direction: 'fr-en' has no masks"):
        pipeline.translate(model, tok, src, "fr-en", masks=tmp_path)


def test_hf_cli_keeps_line_counts_and_never_writes_over_an_input(m2m, tmp_path):
    """hf translate: one output line per input line by the \\n rule (a lone \\r, U+2028 and a
    form feed stay inside their line), the output never an input; hf record: --out never an input."""
    from neuronspec.cli import main

    src = tmp_path / "in.en"
    src.write_bytes("the cat\rsits\na dog\u2028runs\n\x0cthe house\n".encode("utf-8"))
    out = tmp_path / "out.de"
    argv = ["hf", "translate", "--model", str(m2m[0]), "--direction", "en-de", "--input", str(src), "--dense",
            "--beam", "1", "--max-new-tokens", "3"]
    assert main(argv + ["--output", str(out)]) == 0
    assert out.read_bytes().count(b"\n") == 3
    assert main(argv + ["--output", str(out)]) == 2  # an existing file: --overwrite names the intent
    assert main(argv + ["--output", str(out), "--overwrite"]) == 0
    before = src.read_bytes()
    assert main(argv + ["--output", str(src), "--overwrite"]) == 2 and src.read_bytes() == before
    data_file = next((m2m[1]).iterdir())
    before = data_file.read_bytes()
    assert main(["hf", "record", "--model", str(m2m[0]), "--data", str(m2m[1]), "--directions", "en-de",
                 "--out", str(data_file)]) == 2
    assert data_file.read_bytes() == before


def test_example_script_runs_end_to_end(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "hf_tiny.py"
    spec = importlib.util.spec_from_file_location("hf_tiny", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.run(tmp_path, steps=4)
    hyps = (tmp_path / "hyp.en-de.de").read_text().splitlines()
    assert len(hyps) == len(example.PAIRS["en-de"][0])
    assert (tmp_path / "analysis" / "report.md").is_file()
    saved, _ = pipeline.load_layer_masks(tmp_path / "specialized" / "neuronspec_masks.pt")
    selected, _ = pipeline.load_layer_masks(tmp_path / "masks.pt")
    assert saved == selected
    before = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "model").state_dict()
    with pytest.warns(UserWarning, match="as a dense model"):  # `hf specialize` marks its folder
        after = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "specialized").state_dict()
    unused_rows = 0
    for name, m in selected.items():  # rows no direction uses are never trained (Adam, no decay)
        side, _, i, _ = name.split(".")
        key = f"model.{side}.layers.{i}.fc1.weight"
        unused = ~m.to_dense().any(0)
        unused_rows += int(unused.sum())
        assert torch.equal(after[key][unused], before[key][unused]), name
        assert not torch.equal(after[key][~unused], before[key][~unused]), name
    assert unused_rows > 0
    final = tmp_path / "trainer" / "final"  # the Trainer path: masks saved with the model and its checkpoints
    assert pipeline.load_layer_masks(final / "neuronspec_masks.pt")[0] == selected
    assert pipeline.load_layer_masks(tmp_path / "trainer" / "checkpoint-4" / "neuronspec_masks.pt")[0] == selected
    with pytest.warns(UserWarning, match="as a dense model"):
        trained = transformers.AutoModelForSeq2SeqLM.from_pretrained(final).state_dict()
    loaded, spec = load(tmp_path / "specialized")  # `neuronspec hf specialize` output, masks restored
    assert spec.masks() == selected and spec.directions == selected["encoder.layers.0.ffn"].names
    key = "model.decoder.layers.0.fc1.weight"
    unused = ~selected["decoder.layers.0.ffn"].to_dense().any(0)
    assert torch.equal(trained[key][unused], before[key][unused])
    assert not torch.equal(trained[key][~unused], before[key][~unused])


def test_nllb_style_language_code_tokens():
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "▁the", "▁cat", "▁die", "▁Katze", "▁"])}
    tok = transformers.NllbTokenizer(vocab=vocab, merges=[], additional_special_tokens=["eng_Latn", "deu_Latn"])
    codes = pipeline.LanguageCodes(tok, pipeline.parse_lang_codes("en=eng_Latn,de=deu_Latn"))
    assert codes.kind == "token"
    inputs = codes.encode("en-de", ["the cat", "the"], ["die Katze", "die"])
    eng, deu = tok.convert_tokens_to_ids("eng_Latn"), tok.convert_tokens_to_ids("deu_Latn")
    assert inputs["input_ids"][:, 0].tolist() == [eng, eng] and inputs["labels"][:, 0].tolist() == [deu, deu]
    assert not bool((inputs["labels"] == tok.pad_token_id).any())  # label padding is -100 (ignored by the loss)
    assert inputs["labels"][1, -1] == -100 and inputs["labels"][0, -1] == tok.eos_token_id
    assert codes.forced_bos("en-de") == deu
    with pytest.raises(ValueError, match="lang-codes: 'fr' .*--lang-codes en=eng_Latn"):
        codes.check(["en-fr"])


@pytest.mark.parametrize("kind", ["m2m100", "marian", "llama"])
def test_autocast_bf16_full_masks_and_counting_follow_the_unwrapped_model(models, kind):
    inputs = batch(kind, seed=6)
    plain = copy.deepcopy(models[kind])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = plain(**inputs).logits.float()
    model = copy.deepcopy(models[kind])
    spec = wrap(model, DIRS)
    spec.set_masks({n: TaskMasks.full(len(DIRS), f.num_neurons, DIRS) for n, f in spec.layers.items()})
    with torch.autocast("cpu", dtype=torch.bfloat16), spec.direction(1):
        out = model(**inputs)
    out.loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    assert (out.logits.float() - want).abs().max() <= 0.05 * want.abs().max()
    spec.set_masks(None)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), spec.direction(0), spec.counting() as rec:
        counted = model(**inputs).logits.float()
    assert (counted - want).abs().max() <= 0.05 * want.abs().max()
    assert all(int(c[0].sum()) > 0 and int(c[1:].sum()) == 0 for c in rec["counts"].values())


@pytest.mark.parametrize("kind", ["llama", "llama_bias"])
def test_wrapped_llama_compiles_in_one_graph_and_matches_eager(models, kind):
    """The gated FFN is the masked-FFN custom op (no graph break, e.g. for a mixed batch's
    task grouping): torch.compile(fullgraph=True) of a masked model gives eager's loss and
    gradients. The direction is set outside the compiled call (resolving it reads ids)."""
    inputs = batch(kind)
    model = copy.deepcopy(models[kind])
    spec = wrap(model, DIRS)
    spec.set_masks(random_layer_masks(spec, seed=3))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for which in (["en-de", "en-fr", "de-en", "en-de"], "de-en"):
        with spec.direction(which):
            model.zero_grad()
            want_logits, want_grads = loss_and_grads(model, inputs)
            model.zero_grad()
            got_logits, got_grads = loss_and_grads(compiled, inputs)
        torch.testing.assert_close(got_logits, want_logits)
        got_grads = {n.removeprefix("_orig_mod."): g for n, g in got_grads.items()}
        assert got_grads.keys() == want_grads.keys()
        for name, g in want_grads.items():
            torch.testing.assert_close(got_grads[name], g, msg=name)
