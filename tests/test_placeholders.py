"""Placeholders as protected slot tokens: protect/restore, the tokenizer, decoding."""
import torch

from neuronspec.data import placeholders as ph
from neuronspec.data.tokenizer import Tokenizer

EN = 'Delete %(b)s and %(a)s? <a href="/x">%s</a> of %s, {0}'
DE = '%(a)s und %(b)s löschen? <a href="/x">%s</a> von %s, {0}'


def test_slots_follow_text_not_position():
    assert ph.slot_values(EN) == ph.slot_values(DE) == sorted(
        ["%(a)s", "%(b)s", '<a href="/x">', "</a>", "%s", "{0}"])
    pe, pd = ph.protect(EN), ph.protect(DE)
    assert "%" not in pe and "{0}" not in pe and "<a" not in pe
    # the same placeholder gets the same slot on both sides, whatever its position
    slot = {v: f"<ph{k}>" for k, v in enumerate(ph.slot_values(EN), 1)}
    link = slot['<a href="/x">']
    assert pe == (f"Delete {slot['%(b)s']} and {slot['%(a)s']}? {link}{slot['%s']}"
                  f"{slot['</a>']} of {slot['%s']}, {slot['{0}']}")
    assert pd.startswith(f"{slot['%(a)s']} und {slot['%(b)s']}")
    # a translation is restored from its source alone
    assert ph.restore(pd, EN) == DE and ph.restore(pe, DE) == EN


def test_prose_and_edge_cases():
    for text in ["50% of the vote", "100 % d'accord", "a < b > c", "", "plain"]:
        assert ph.protect(text) == text and ph.slot_values(text) == []
    assert ph.protect("50%% done: %d") == "50<ph1> done: <ph2>"  # slots in sorted order: "%%" < "%d"
    many = " ".join(f"%(v{i})s" for i in range(12))
    assert ph.protect(many).count("<ph") == ph.SLOTS and "%(v9)s" in ph.protect(many)
    assert ph.restore(ph.protect(many), many) == many
    assert ph.restore("<ph1> <ph7>!", "only %s here") == "%s !"  # unknown slot dropped
    assert ph.placeholders("%(n)s %s {0} <b>x</b>") == {"%(n)s": 1, "%s": 1, "{0}": 1, "<b>": 1, "</b>": 1}


def test_code_identifiers():
    """Identifiers translations keep get <idK> slots of their own; prose, placeholders and
    words with non-ASCII letters do not."""
    en = "The %r crossref_type of %(field_name)s needs conf.py, get_url() and --full; :widths: is ignored."
    fr = "Le type %r crossref_type de %(field_name)s requiert --full, get_url() et conf.py ; :widths: est ignoré."
    assert ph.code_values(en) == ph.code_values(fr) == sorted(["crossref_type", "conf.py", "get_url()", "--full",
                                                               ":widths:"])
    pe, pf = ph.protect(en, code=True), ph.protect(fr, code=True)
    assert "crossref_type" not in pe and "field_name" not in pe and "<ph" in pe
    assert ph.protect(en) == en.replace("%r", "<ph2>").replace("%(field_name)s", "<ph1>")  # code off
    assert ph.restore(pf, en) == fr and ph.restore(pe, fr) == en
    # placeholder slots do not depend on whether identifiers are protected or translated
    assert ph.protect(en, code=True).count("<ph1>") == ph.protect(en).count("<ph1>")
    for text in ["e-mail, i.e. e.g. U.S. 3.14 -- x", "naïve_name", "JavaScript and LogEntry", "50% of it",
                 "%(date_field_label)s"]:
        assert ph.code_values(text) == [] and ph.protect(text, code=True) == ph.protect(text), text
    assert ph.code_values("__all__ and theme.inherit, -v") == ["-v", "__all__", "theme.inherit"]
    assert ph.restore("<id1> <id4>", "only setup() here") == "setup() "  # unknown slot dropped


def test_tokenizer_slots_are_single_pieces(tmp_path):
    texts = [EN, DE, "Add another %(model)s", "Noch ein %(model)s hinzufügen", "50% of it"] * 20
    tok = Tokenizer.train(texts, tmp_path / "spm", 400, ["en", "de"], placeholders=True)
    plain = Tokenizer.train(texts, tmp_path / "plain", 400, ["en", "de"])
    assert tok.protects and not plain.protects
    slot_ids = [tok.sp.piece_to_id(p) for p in ph.SLOT_PIECES]
    assert slot_ids == list(range(6, 6 + ph.SLOTS))  # after pad/bos/eos/unk and the two tags
    ids = tok.encode("Add another %(model)s")
    assert ids[-1] == slot_ids[0] and len(ids) < len(plain.encode("Add another %(model)s"))
    for text in texts[:5]:
        assert tok.decode(tok.encode(text), source=text) == text
        assert tok.encode_batch([text]) == [tok.encode(text)]
    assert tok.decode(tok.encode("Add %(model)s")) == "Add <ph1>"  # no source: the slot stays
    assert tok.decode(tok.encode("Add %(model)s"), source="Noch %(x)s") == "Add %(x)s"
    assert Tokenizer.load(tmp_path / "spm.model").protects
    assert not tok.protects_code and tok.decode(tok.encode("see conf.py")) == "see conf.py"
    code = Tokenizer.train(texts + ["see conf.py or --full"] * 5, tmp_path / "code", 400, ["en", "de"],
                           placeholders=True, code_identifiers=True)
    assert code.protects and code.protects_code
    ids = code.encode("Add %(model)s from conf.py")
    assert ids[-1] == code.sp.piece_to_id("<id1>") and slot_ids[0] in ids
    assert code.decode(ids, source="Add %(model)s from conf.py") == "Add %(model)s from conf.py"
    try:
        Tokenizer.train(texts, tmp_path / "bad", 400, ["en", "de"], code_identifiers=True)
    except ValueError as e:
        assert "code_identifiers" in str(e)
    else:
        raise AssertionError("code_identifiers without placeholders must fail")


def test_decoding_restores_placeholders(tmp_path, monkeypatch):
    """translate_direction hands each hypothesis its source: an oracle that outputs the
    prepared target ids gives back the reference text, placeholders included."""
    import neuronspec.nmt.decode as dec
    from neuronspec.data.binarize import prepare_corpus

    en = [f"Add {i} %(model)s to %(site)s" for i in range(30)] + ["50% of %s items"] * 2
    de = [f"%(site)s: {i} %(model)s hinzufügen" for i in range(30)] + ["50% von %s Dingen"] * 2
    for split in ("train", "valid"):
        for lang, lines in (("en", en), ("de", de)):
            (tmp_path / f"{split}.en-de.{lang}").write_text("".join(x + "\n" for x in lines), "utf-8")
    for protect in (True, False):
        data = prepare_corpus(tmp_path, tmp_path / f"prep{protect}", vocab_size=400, placeholders=protect,
                              progress=False)
        assert data.tokenizer.protects is protect and data.meta["config"]["placeholders"] is protect

        def oracle(model, batches, **kw):
            for b in batches:
                for i in b.ids.tolist():
                    yield i, data.example("valid", d, i)[1].tolist()

        monkeypatch.setattr(dec, "translate_batches", oracle)
        for d in (("en", "de"), ("de", "en")):
            ids, hyps = dec.translate_direction(torch.nn.Identity(), data, "valid", d)
            refs = data.texts("valid", d)[1]
            assert hyps == [refs[i] for i in ids]
            if protect:  # a slot is one token of the prepared arrays
                src = data.example("valid", d, 0)[0].tolist()
                assert data.tokenizer.sp.piece_to_id("<ph1>") in src
