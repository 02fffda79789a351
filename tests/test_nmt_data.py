"""Corpus reading/validation, tokenizer, and the prepared (memory-mapped) data."""
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from neuronspec.data.binarize import prepare_corpus, tokenizer_sample
from neuronspec.data.corpus import (PreparedData, count_lines, group_pair_files, scan_corpus, trained_languages,
                                   wanted_languages)
from neuronspec.data.tokenizer import Tokenizer

NNBSP, RLM = "\u202f", "\u200f"
WORDS = {
    "en": "the cat sees a dog near our house today".split(),
    "de": "die Katze sieht einen Hund nahe unserem Haus heute".split(),
    "fr": "le chat voit un chien près notre maison aujourd'hui".split(),
    "ar": "القط يرى كلبا قرب بيتنا اليوم و في من".split(),
    "uk": "кіт бачить собаку біля нашого дому сьогодні та".split(),
    "qaa": "ka ti so mu ne la pe ri wo".split(),
}


def _sentence(lang, seq):
    w = WORDS[lang]
    text = " ".join(w[k % len(w)] for k in seq)
    if len(seq) % 3 == 0:  # CLDR-like: a number with a narrow no-break space
        text += f" {len(seq)}{NNBSP}000"
    if lang == "ar" and len(seq) % 2 == 0:
        text = RLM + text
    return text


def make_corpus(root, langs=("de", "fr", "ar"), n_train=(300, 150, 60), n_eval=20, zero_shot=True, seed=0):
    """EC30-layout corpus in ``root``: train/valid/test en-xx for each lang (train sizes
    n_train), plus test.{l0}-{l1} when ``zero_shot``. Returns {(split, pair): (a_lines, b_lines)}."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    out = {}

    def write(split, a, b, m):
        seqs = [[rng.randrange(9) for _ in range(rng.randint(1, 14))] for _ in range(m)]
        lines = {}
        for lang in (a, b):
            lines[lang] = [_sentence(lang, s) for s in seqs]
            with open(os.path.join(root, f"{split}.{a}-{b}.{lang}"), "w", encoding="utf-8") as f:
                f.write("".join(x + "\n" for x in lines[lang]))
        out[(split, f"{a}-{b}")] = (lines[a], lines[b])

    for x, n in zip(langs, n_train):
        write("train", "en", x, n)
        write("valid", "en", x, n_eval)
        write("test", "en", x, n_eval)
    if zero_shot:
        write("test", langs[0], langs[1], 15)
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    lines = make_corpus(root)
    data = prepare_corpus(root, tmp_path_factory.mktemp("prep"), vocab_size=400, progress=False)
    return data, lines


# ------------------------------------------------------------------ tokenizer
def test_tokenizer_roundtrip_keeps_nnbsp_and_rlm(tmp_path):
    texts = [_sentence(l, [i % 9, (i * 7) % 9, 3]) for l in ("en", "ar", "fr") for i in range(60)]
    tok = Tokenizer.train(texts, tmp_path / "spm", 400, ["en", "ar", "fr"])
    assert (tok.pad, tok.bos, tok.eos, tok.unk) == (0, 1, 2, 3)
    assert [tok.lang_tag(l) for l in ("en", "ar", "fr")] == [4, 5, 6]
    for s in [f"{RLM}القط 3{NNBSP}000", f"le 3{NNBSP}mars", "  two  spaces ", "unseen Ω 😀"]:
        ids = tok.encode(s)
        assert tok.unk not in ids  # byte fallback
        assert tok.decode(ids) == s
        # tags and special ids are dropped by decode
        assert tok.decode([tok.lang_tag("fr"), tok.bos, *ids, tok.eos, tok.pad]) == s
    again = Tokenizer.load(tmp_path / "spm.model")
    assert again.encode("le chat") == tok.encode("le chat") and len(again) == len(tok)
    with pytest.raises(ValueError, match="lang"):
        tok.lang_tag("de")


def test_tokenizer_bad_args(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(["a b c"] * 10, tmp_path / "spm", 20, ["en"])  # below the 256 byte pieces
    with pytest.raises(ValueError, match="texts"):
        Tokenizer.train(["", "  "], tmp_path / "spm", 400, ["en"])
    with pytest.raises(ValueError, match="path"):
        Tokenizer.load(tmp_path / "missing.model")


# --------------------------------------------------------------- prepared data
def test_prepared_structure(prepared):
    data, _ = prepared
    assert data.languages == ["en", "ar", "de", "fr"]
    assert data.directions == [("en", "ar"), ("en", "de"), ("en", "fr"), ("ar", "en"), ("de", "en"), ("fr", "en")]
    assert [data.task_id(d) for d in data.directions] == list(range(6))
    assert data.task_id("de-en") == 4
    assert data.zero_shot_directions("test") == [("de", "fr"), ("fr", "de")]
    assert data.eval_directions("valid") == data.directions
    assert data.num_examples("train", "en-de") == data.num_examples("train", "de-en") == 300
    assert data.num_examples("train", "ar-en") == 60
    assert data.num_examples("train", "de-fr") == 0
    assert data.num_examples("test", "fr-de") == 15
    assert data.tiers == {"ar": "high", "de": "high", "fr": "high"}
    assert data.splits == ["train", "valid", "test"]
    with pytest.raises(ValueError, match="not a training direction"):
        data.task_id("de-fr")
    with pytest.raises(ValueError, match="direction"):
        data.example("train", "de-fr", 0)
    with pytest.raises(ValueError, match="out of range"):
        data.example("train", "en-ar", 60)
    with pytest.raises(ValueError, match="valid/test"):
        data.texts("train", "en-de")
    assert data.kinds("test", "en-de") is None
    assert not [f for f in os.listdir(data.root) if f.endswith(".tmp")]


def test_arrays_decode_to_original_text(prepared):
    data, lines = prepared
    tok = data.tokenizer
    for (split, pair), (a_lines, b_lines) in lines.items():
        a, b = pair.split("-")
        for src, tgt, src_lines, tgt_lines in ((a, b, a_lines, b_lines), (b, a, b_lines, a_lines)):
            n = data.num_examples(split, (src, tgt))
            assert n == len(src_lines)
            for i in range(n):
                s, t = data.example(split, (src, tgt), i)
                assert s.dtype == np.int64
                assert tok.decode(s) == src_lines[i]
                assert tok.decode(t) == tgt_lines[i]
            if split != "train":
                assert data.texts(split, (src, tgt)) == (src_lines, tgt_lines)
    # the marks survived end to end
    src, _ = data.texts("test", "ar-en")
    assert any(RLM in s for s in src) and any(NNBSP in s for s in src)
    sl, tl = data.lengths("train", "de-en")
    st, so, tt, to = data.arrays("train", "de-en")
    assert (sl == np.diff(so)).all() and (tl == np.diff(to)).all() and len(so) == len(sl) + 1 == 301
    assert so[-1] <= len(st) and to[-1] <= len(tt) and (sl >= 1).all()
    # every split is one token file + one index; all sides together tile the token file
    for split in data.splits:
        tokens, index = data.split_arrays(split)
        assert index[0] == 0 and index[-1] == len(tokens) and (np.diff(index) >= 0).all()


def test_prepare_is_deterministic_and_overwrites(tmp_path):
    make_corpus(tmp_path / "c", langs=("de", "uk"), n_train=(80, 40), zero_shot=False)
    d1 = prepare_corpus(tmp_path / "c", tmp_path / "p", vocab_size=350, progress=False)
    before = {f: (tmp_path / "p" / f).read_bytes() for f in sorted(os.listdir(tmp_path / "p"))}
    d2 = prepare_corpus(tmp_path / "c", tmp_path / "p", vocab_size=350, progress=False)
    after = {f: (tmp_path / "p" / f).read_bytes() for f in sorted(os.listdir(tmp_path / "p"))}
    assert before == after
    assert d1.directions == d2.directions == [("en", "de"), ("en", "uk"), ("de", "en"), ("uk", "en")]
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["pairs"]["train"]["en-de"]["num"] == 80 and meta["dtype"] == "uint16"


def test_langs_subset_and_non_ec30_language(tmp_path):
    make_corpus(tmp_path / "c", langs=("de", "fr", "qaa"), n_train=(200, 100, 20))
    data = prepare_corpus(tmp_path / "c", tmp_path / "p", vocab_size=400, langs=["qaa", "fr"], progress=False)
    assert data.languages == ["en", "fr", "qaa"]
    assert data.directions == [("en", "fr"), ("en", "qaa"), ("fr", "en"), ("qaa", "en")]
    assert data.zero_shot_directions() == []  # test.de-fr needs de, which was left out
    # EC30 tier for fr; a non-EC30 language: by size vs the largest kept pair (20 / 100)
    assert data.tiers == {"fr": "high", "qaa": "medium"}
    s, t = data.example("train", "qaa-en", 0)
    assert data.tokenizer.decode(s).split()[0] in WORDS["qaa"]


def test_kinds_manifest(tmp_path):
    lines = make_corpus(tmp_path / "c", langs=("de", "fr"), n_train=(60, 60), zero_shot=False)
    n = len(lines[("test", "en-de")][0])
    kinds = ["phrase" if i % 3 else "sentence" for i in range(n)]
    (tmp_path / "c" / "sources.test.en-de").write_text("".join(k + "\n" for k in kinds))
    data = prepare_corpus(tmp_path / "c", tmp_path / "p", vocab_size=350, progress=False)
    assert data.kinds("test", "en-de") == kinds == data.kinds("test", "de-en")
    assert data.kinds("test", "en-fr") is None
    (tmp_path / "c" / "sources.test.en-de").write_text("phrase\nbogus\n")
    with pytest.raises(ValueError, match="kind manifest"):
        prepare_corpus(tmp_path / "c", tmp_path / "p2", vocab_size=350, progress=False)


def test_tokenizer_sample_is_bounded_balanced_deterministic(tmp_path):
    make_corpus(tmp_path / "c", langs=("de", "fr"), n_train=(300, 20), zero_shot=False)
    corpus = scan_corpus(tmp_path / "c")
    s1 = tokenizer_sample(corpus, 100, seed=3)
    assert s1 == tokenizer_sample(corpus, 100, seed=3) and len(s1) == 100
    de_words, fr_words = set(WORDS["de"]), set(WORDS["fr"])
    n_fr = sum(1 for s in s1 if s.split()[0] in fr_words)
    n_de = sum(1 for s in s1 if s.split()[0] in de_words)
    assert n_fr == 20 and n_de == 40  # fr has only 20 lines; its unused share goes to en and de


def test_wanted_languages():
    assert wanted_languages(None, "en") is None
    assert wanted_languages("de, fr,en", "en") == {"de", "fr"}
    assert wanted_languages(["uk"], "en") == {"uk"}
    with pytest.raises(ValueError, match="langs: no language besides the pivot"):
        wanted_languages("en", "en")
    with pytest.raises(ValueError, match="langs"):
        wanted_languages(["DE!"], "en")


def test_group_pair_files_by_name():
    paths = [Path(x) for x in ("a/train.en-de.en", "a/train.en-de.de", "a/sources.train.en-de",
                                 "b/test.de-fr.fr", "b/README", "b/valid.en-fr.xx")]
    assert group_pair_files(paths) == {("train", "en", "de"): {"en": Path("a/train.en-de.en"),
                                                               "de": Path("a/train.en-de.de")},
                                       ("test", "de", "fr"): {"fr": Path("b/test.de-fr.fr")}}
    with pytest.raises(ValueError, match="found twice"):
        group_pair_files([Path("a/train.en-de.en"), Path("b/train.en-de.en")])
    with pytest.raises(ValueError, match="with itself"):
        group_pair_files([Path("train.en-en.en")])


def test_trained_languages():
    groups = {("train", "en", "de"): {}, ("train", "fr", "en"): {}, ("train", "de", "fr"): {},
              ("test", "en", "uk"): {}}
    assert trained_languages(groups, None, "en", Path("c")) == {"de", "fr"}  # fr-en counts; de-fr does not
    assert trained_languages(groups, {"fr"}, "en", Path("c")) == {"fr"}
    with pytest.raises(ValueError, match=r"langs: no training files for \['uk'\] in c"):
        trained_languages(groups, {"uk", "de"}, "en", Path("c"))
    with pytest.raises(ValueError, match="no en-centric training pair"):
        trained_languages({("train", "de", "fr"): {}}, None, "en", Path("c"))


def test_count_lines(tmp_path):
    p = tmp_path / "f"
    for content, n in [(b"", 0), (b"a", 1), (b"a\n", 1), (b"a\nb", 2), (b"\n\n", 2), (b"a\r\nb\r\n", 2)]:
        p.write_bytes(content)
        assert count_lines(p) == n, content


# ------------------------------------------------------------------ bad data
def _prep(tmp_path, **kw):
    return prepare_corpus(tmp_path / "c", tmp_path / "p", vocab_size=400, progress=False, **kw)


def test_error_missing_side_file(tmp_path):
    make_corpus(tmp_path / "c", langs=("de", "fr"), n_train=(50, 50))
    os.remove(tmp_path / "c" / "train.en-fr.fr")
    with pytest.raises(ValueError, match=r"missing file .*train\.en-fr\.fr"):
        _prep(tmp_path)


def test_error_misaligned(tmp_path):
    make_corpus(tmp_path / "c", langs=("de", "fr"), n_train=(50, 50))
    with open(tmp_path / "c" / "valid.en-de.de", "a", encoding="utf-8") as f:
        f.write("one more line\n")
    with pytest.raises(ValueError, match=r"misaligned.*valid\.en-de\.en has 20 lines.*valid\.en-de\.de has 21"):
        _prep(tmp_path)


def test_error_malformed_language_code(tmp_path):
    make_corpus(tmp_path / "c", langs=("de", "fr"), n_train=(50, 50))
    for side in ("en", "De"):
        (tmp_path / "c" / f"train.en-De.{side}").write_text("x\n")
    with pytest.raises(ValueError, match="malformed language code 'De'"):
        _prep(tmp_path)


def test_error_langs_not_in_corpus(tmp_path):
    make_corpus(tmp_path / "c", langs=("de", "fr"), n_train=(50, 50))
    with pytest.raises(ValueError, match=r"langs: no training files for \['es'\]"):
        _prep(tmp_path, langs=["de", "es"])
    with pytest.raises(ValueError, match="langs: malformed"):
        _prep(tmp_path, langs=["de", "Deutsch"])


def test_error_empty_corpus(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "README").write_text("nothing here\n")
    with pytest.raises(ValueError, match="no pair files"):
        _prep(tmp_path)
    for side in ("en", "de"):
        (tmp_path / "c" / f"train.en-de.{side}").write_text("")
    with pytest.raises(ValueError, match="empty training pair"):
        _prep(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        prepare_corpus(tmp_path / "nope", tmp_path / "p", progress=False)


def test_error_no_english_centric_training(tmp_path):
    (tmp_path / "c").mkdir()
    for side in ("de", "fr"):
        (tmp_path / "c" / f"train.de-fr.{side}").write_text("a\nb\n")
    with pytest.raises(ValueError, match="no en-centric training pair"):
        _prep(tmp_path)


def test_error_duplicate_pair_and_bad_utf8(tmp_path):
    make_corpus(tmp_path / "c", langs=("de", "fr"), n_train=(50, 50))
    for side in ("en", "de"):
        (tmp_path / "c" / f"test.de-en.{side}").write_text("x\n")
    with pytest.raises(ValueError, match="both test.de-en and test.en-de"):
        _prep(tmp_path)
    for side in ("en", "de"):
        os.remove(tmp_path / "c" / f"test.de-en.{side}")
    (tmp_path / "c" / "valid.en-fr.fr").write_bytes(b"ok\n" * 5 + b"\xff\xfe bad\n" + b"ok\n" * 14)
    with pytest.raises(ValueError, match=r"valid\.en-fr\.fr line 6 is not valid UTF-8"):
        _prep(tmp_path)
    assert not [f for f in os.listdir(tmp_path / "p") if f.endswith(".tmp")]
    assert not (tmp_path / "p" / "meta.json").exists()


def test_error_not_prepared(tmp_path):
    with pytest.raises(ValueError, match="not a prepared folder"):
        PreparedData.load(tmp_path)


def test_cli_prepare(tmp_path, monkeypatch, capsys):
    from neuronspec import cli

    monkeypatch.setattr("sys.argv", ["neuronspec"])
    make_corpus(tmp_path / "c", langs=("de", "fr", "uk"), n_train=(60, 60, 60))
    rc = cli.main(["data", "prepare", "--corpus", str(tmp_path / "c"), "--out", str(tmp_path / "p"),
                   "--vocab-size", "400", "--langs", "de,fr", "--no-progress"])
    assert rc == 0 and "2 zero-shot test directions" in capsys.readouterr().out
    assert PreparedData.load(tmp_path / "p").languages == ["en", "de", "fr"]
    rc = cli.main(["data", "prepare", "--corpus", str(tmp_path / "c"), "--out", str(tmp_path / "q"),
                   "--langs", "es", "--no-progress"])
    assert rc == 2 and not (tmp_path / "q" / "meta.json").exists()


def test_prepared_meta_sizes_tiers_and_directions():
    from neuronspec.data.binarize import prepared_meta
    from neuronspec.data.corpus import Corpus, PairFiles

    def pair(a, b, n):
        return PairFiles("train", a, b, Path(f"train.{a}-{b}.{a}"), Path(f"train.{a}-{b}.{b}"), n)

    corpus = Corpus(Path("c"), "en", ["en", "de", "qaa"], {"train": [pair("en", "de", 900), pair("qaa", "en", 20)]})
    meta = prepared_meta(corpus, "en", 4000, np.dtype(np.uint16), {"train": {}}, {"train": {}}, {"seed": 3})
    assert meta["train_sizes"] == {"de": 900, "qaa": 20}
    assert meta["tiers"] == {"de": "high", "qaa": "low"}  # de: EC30 tier; qaa: 20/900 < 1/30 of the largest
    assert meta["directions"] == [["en", "de"], ["en", "qaa"], ["de", "en"], ["qaa", "en"]]
    assert (meta["vocab_size"], meta["dtype"], meta["config"]) == (4000, "uint16", {"seed": 3})
