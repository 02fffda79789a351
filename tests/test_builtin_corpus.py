import importlib
import json
from collections import Counter
from pathlib import Path

import pytest

from neuronspec.data import builtin_corpus as bc

LANGS = ["de", "fr", "kn", "ha", "am"]  # high, high, medium, medium, low


def read(folder: Path, name: str) -> list[str]:
    text = (folder / name).read_text("utf-8")
    return text.split("\n")[:-1] if text else []


def all_pairs(folder: Path, lang: str, split: str):
    stem = f"{split}.en-{lang}"
    return list(zip(read(folder, f"{stem}.en"), read(folder, f"{stem}.{lang}"),
                    read(folder, f"sources.{stem}"), read(folder, f"origins.{stem}")))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("builtin") / "corpus"
    summary = bc.build_builtin_corpus(out, langs=LANGS, seed=0, progress=False)
    return out, summary


def test_files_aligned_and_counted(corpus):
    out, summary = corpus
    assert summary["langs"] == LANGS
    for lang in LANGS:
        for split in bc.SPLITS:
            stem = f"{split}.en-{lang}"
            sizes = {len(read(out, n)) for n in
                     (f"{stem}.en", f"{stem}.{lang}", f"sources.{stem}", f"origins.{stem}")}
            assert len(sizes) == 1, (stem, sizes)
            n = sizes.pop()
            assert n == summary["pairs"][f"en-{lang}"]["splits"][split]["total"]
            assert set(read(out, f"sources.{stem}")) <= {"phrase", "sentence"}
            assert all(en and xx and en == en.strip() for en, xx, _, _ in all_pairs(out, lang, split))
        assert not list(out.glob(f"*.{lang}-en.*"))  # xx->en reads the en-xx files in reverse
        assert 20 <= summary["pairs"][f"en-{lang}"]["splits"]["test"]["total"] <= 200
        assert summary["pairs"][f"en-{lang}"]["splits"]["train"]["total"] > 1000


def test_splits_disjoint_across_all_directions(corpus):
    out, _ = corpus
    english = {s: set() for s in bc.SPLITS}
    for lang in LANGS:
        foreign = {}
        for split in bc.SPLITS:
            en_lines = read(out, f"{split}.en-{lang}.en")
            xx_lines = read(out, f"{split}.en-{lang}.{lang}")
            assert len(set(en_lines)) == len(en_lines)  # one reference per source, both ways
            assert len(set(xx_lines)) == len(xx_lines)
            english[split].update(en_lines)
            foreign[split] = set(xx_lines)
        assert not foreign["train"] & (foreign["valid"] | foreign["test"])
    assert not english["train"] & english["valid"]
    assert not english["train"] & english["test"]
    assert not english["valid"] & english["test"]
    # the split is a function of the English text alone
    for split, items in english.items():
        for en in list(items)[:50]:
            assert bc.assign_split(en, 0, 0.05, 0.05) == split


def test_deterministic(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    bc.build_builtin_corpus(again, langs=LANGS, seed=0, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


def test_babel_alias_leak_worked_around(tmp_path):
    """python-babel/babel#1234: after Hebrew stand-alone months are read, other locales
    loaded later in the process get Hebrew month names unless the cache is isolated."""
    import babel.localedata

    babel.localedata._cache.clear()  # as in a fresh process: nothing loaded yet
    after_he, alone = tmp_path / "he_da", tmp_path / "da"
    bc.build_builtin_corpus(after_he, langs=["he", "da"], progress=False, default_packages=False)
    bc.build_builtin_corpus(alone, langs=["da"], progress=False, default_packages=False)
    months = {en: da for s in bc.SPLITS for en, da, _, o in all_pairs(after_he, "da", s)
              if o == "cldr:month"}
    assert len(months) >= 20
    assert not [v for v in months.values() if any("\u0590" <= ch <= "\u05ff" for ch in v)]
    for split in bc.SPLITS:
        assert read(alone, f"{split}.en-da.da") == read(after_he, f"{split}.en-da.da")


def test_seed_changes_split_not_content(corpus, tmp_path):
    out, _ = corpus
    other = tmp_path / "seed1"
    bc.build_builtin_corpus(other, langs=["am"], seed=1, progress=False)
    pairs0 = {p[:2] for s in bc.SPLITS for p in all_pairs(out, "am", s)}
    pairs1 = {p[:2] for s in bc.SPLITS for p in all_pairs(other, "am", s)}
    assert pairs0 == pairs1
    assert set(read(out, "test.en-am.en")) != set(read(other, "test.en-am.en"))


def test_tier_spread(corpus):
    _, summary = corpus

    def sentences(lang):
        return sum(summary["pairs"][f"en-{lang}"]["splits"][s]["sentence"] for s in bc.SPLITS)

    assert sentences("de") > 500 and sentences("fr") > 1000
    assert 0 < sentences("am") < 100
    assert 100 < sentences("kn") < sentences("de")
    assert sentences("ha") == 0  # no Hausa catalogs in Django or Sphinx
    assert sentences("de") > 5 * sentences("am")
    assert summary["pairs"]["en-kn"]["tier"] == "medium"


def test_known_cldr_items(corpus):
    out, _ = corpus
    de = {en: (xx, kind, origin) for s in bc.SPLITS for en, xx, kind, origin in all_pairs(out, "de", s)}
    assert de["Germany"] == ("Deutschland", "phrase", "cldr:territory")
    assert de["France"][0] == "Frankreich"
    assert de["January"] == ("Januar", "phrase", "cldr:month")
    assert de["Monday"] == ("Montag", "phrase", "cldr:weekday")
    assert de["twenty"] == ("zwanzig", "phrase", "num2words:cardinal")
    assert de["Sunday, November 15, 2020"] == ("Sonntag, 15. November 2020", "phrase", "cldr:date")
    assert de["2 hours"] == ("2 Stunden", "phrase", "cldr:unit")
    assert de["Spain or Portugal"] == ("Spanien oder Portugal", "phrase", "cldr:list")
    fr = {en: xx for s in bc.SPLITS for en, xx, _, _ in all_pairs(out, "fr", s)}
    assert fr["Germany"] == "Allemagne"
    am = {en: xx for s in bc.SPLITS for en, xx, _, _ in all_pairs(out, "am", s)}
    assert am["Germany"] == "ጀርመን"
    origins = Counter(o for s in bc.SPLITS for *_, o in all_pairs(out, "de", s))
    for o in ("cldr:territory", "cldr:language", "cldr:currency", "cldr:date", "cldr:unit",
              "cldr:list", "gettext:django", "gettext:sphinx"):
        assert origins[o] > 0, o


def test_sentence_placeholders_preserved(corpus):
    out, _ = corpus
    with_placeholder = 0
    for lang in LANGS:
        for split in bc.SPLITS:
            for en, xx, kind, origin in all_pairs(out, lang, split):
                if kind == "sentence":
                    assert origin.startswith("gettext:")
                    assert bc.placeholders(en) == bc.placeholders(xx), (en, xx)
                    with_placeholder += "%(" in en
    assert with_placeholder > 20
    de = {en: xx for s in bc.SPLITS for en, xx, _, _ in all_pairs(out, "de", s)}
    assert de["The %(site_name)s team"] == "Das Team von %(site_name)s"


def test_sentence_placeholders_become_matching_slots(corpus):
    """Protected as slots (placeholders.py), a message and its translation hold the same
    slots, and the translation is restored from the English source alone (and vice versa)."""
    from neuronspec.data.placeholders import protect, restore, slot_values, code_values

    out, _ = corpus
    checked = same = 0
    for lang in LANGS:
        for split in bc.SPLITS:
            for en, xx, kind, _ in all_pairs(out, lang, split):
                if kind != "sentence" or protect(en, code=True) == en:
                    continue
                checked += 1
                # not so when e.g. a link's URL is localised or an identifier translated
                if slot_values(en) == slot_values(xx) and code_values(en) == code_values(xx):
                    same += 1
                    for code in (False, True):
                        assert restore(protect(xx, code), en) == xx and restore(protect(en, code), xx) == en, (en, xx)
    assert checked > 100 and same / checked > 0.97, (same, checked)


def test_summary_and_readme(corpus):
    out, summary = corpus
    md = (out / "summary.md").read_text("utf-8")
    for lang in LANGS:
        assert f"en↔{lang}" in md
    saved = json.loads((out / "summary.json").read_text("utf-8"))
    assert saved["generator"] == bc.GENERATOR and "build_seconds" not in saved
    assert summary["build_seconds"] > 0
    assert saved["pairs"]["en-de"]["splits"] == summary["pairs"]["en-de"]["splits"]
    readme = (out / "README.md").read_text("utf-8")
    assert "xx->en" in readme and "sources." in readme
    assert not list(out.parent.glob(".corpus.tmp-*"))  # temp folder renamed away


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="'xx'"):
        bc.build_builtin_corpus(tmp_path / "o", langs=["de", "xx"], progress=False)
    with pytest.raises(ValueError, match="'qq'"):
        bc.build_builtin_corpus(tmp_path / "o", langs="de,qq", progress=False)
    with pytest.raises(ValueError, match="valid_fraction"):
        bc.build_builtin_corpus(tmp_path / "o", langs="ha", valid_fraction=1.5, progress=False)
    with pytest.raises(ValueError, match="max_chars"):
        bc.build_builtin_corpus(tmp_path / "o", langs="ha", max_chars=0, progress=False)
    with pytest.raises(ValueError, match="no_such_pkg_xyz"):
        bc.build_builtin_corpus(tmp_path / "o", langs="ha", gettext_packages=["no_such_pkg_xyz"],
                                progress=False)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="out_dir"):
        bc.build_builtin_corpus(user, langs="ha", progress=False)
    assert (user / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "o").exists()


def test_rebuild_replaces_own_folder(tmp_path):
    out = tmp_path / "c"
    bc.build_builtin_corpus(out, langs="ha", progress=False)
    bc.build_builtin_corpus(out, langs="mt", progress=False)
    assert (out / "train.en-mt.mt").exists() and not (out / "train.en-ha.ha").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_clean_text_keeps_unicode():
    assert bc.clean_text("  a\n  b\r\nc\u2028d\te ") == "a b c d e"
    assert bc.clean_text("10:30\u202fAM") == "10:30\u202fAM"
    assert bc.clean_text("\u200f14 مارس") == "\u200f14 مارس"
    assert bc.placeholders("%(n)s of %s, {0} {name} 50%% <a href='x'>y</a>") == Counter(
        {"%(n)s": 1, "%s": 1, "{0}": 1, "{name}": 1, "%%": 1, "<a>": 1, "</a>": 1})


PO_HEADER = r'''msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=6; plural=n==0 ? 0 : n==1 ? 1 : n==2 ? 2 : n%100>=3 && n%100<=10 ? 3 : n%100>=11 ? 4 : 5;\n"

'''
PO_BODY = r'''msgid "%(count)d zebra file"
msgid_plural "%(count)d zebra files"
msgstr[0] "form0 %(count)d ملف"
msgstr[1] "form1 %(count)d ملف"
msgstr[2] "form2 %(count)d ملف"
msgstr[3] "form3 %(count)d ملفات"
msgstr[4] "form4 %(count)d ملفا"
msgstr[5] "form5 %(count)d ملف"

#, fuzzy
msgid "Fuzzy zebra"
msgstr "حمار وحشي غامض"

msgid "Untranslated zebra"
msgstr ""

msgid "Hello zebra %(name)s"
msgstr "مرحبا يا حمار وحشي"

msgid ""
"Zebra line one\n"
"zebra line two"
msgstr ""
"سطر واحد\n"
"سطر اثنان"

msgid "{0} zebra items"
msgstr "{0} عناصر الحمار"

msgid "<b>Bold</b> zebra"
msgstr "<b>عريض</b> حمار"

msgid "<a href=\"%(url)s\">Zebra link</a>"
msgstr "رابط %(url)s"
'''


def test_gettext_package_option(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "nsfakecatalogs"
    for folder, body in (("ar", PO_BODY), ("pt", 'msgid "Zebra"\nmsgstr "Zebra europeia"\n'),
                         ("pt_BR", 'msgid "Zebra"\nmsgstr "Zebra brasileira"\n'),
                         ("sr@latin", 'msgid "Zebra"\nmsgstr "Zebra latinica"\n')):
        d = pkg / "locale" / folder / "LC_MESSAGES"
        d.mkdir(parents=True)
        (d / "app.po").write_text(PO_HEADER + body, encoding="utf-8")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()

    out = tmp_path / "out"
    summary = bc.build_builtin_corpus(out, langs="ar,pt,sr", default_packages=False,
                                      gettext_packages=["nsfakecatalogs"], progress=False)
    ar = {en: xx for s in bc.SPLITS for en, xx, kind, _ in all_pairs(out, "ar", s)
          if kind == "sentence"}
    assert ar == {
        "%(count)d zebra file": "form1 %(count)d ملف",  # Arabic n=1 form is msgstr[1]
        "%(count)d zebra files": "form3 %(count)d ملفات",  # n=5 form is msgstr[3]
        "Zebra line one zebra line two": "سطر واحد سطر اثنان",
        "{0} zebra items": "{0} عناصر الحمار",
        "<b>Bold</b> zebra": "<b>عريض</b> حمار",
    }
    dropped = summary["pairs"]["en-ar"]["dropped"]
    assert dropped["fuzzy"] == 1 and dropped["untranslated"] == 1
    assert dropped["placeholder_mismatch"] == 2
    pt = {en: xx for s in bc.SPLITS for en, xx, _, _ in all_pairs(out, "pt", s)}
    assert pt["Zebra"] == "Zebra brasileira"  # pt_BR, not European pt
    sr = [en for s in bc.SPLITS for en, *_ in all_pairs(out, "sr", s)]
    assert "Zebra" not in sr  # sr@latin is not our (Cyrillic) Serbian
    assert summary["pairs"]["en-ar"]["catalog_folders"] == ["nsfakecatalogs:ar"]


def test_subsample_tiers(corpus, tmp_path):
    _, full = corpus
    out = tmp_path / "sub"
    summary = bc.build_builtin_corpus(out, langs=LANGS, subsample_tiers=True, low_floor=100,
                                      progress=False)
    train = {lang: summary["pairs"][f"en-{lang}"]["splits"]["train"]["total"] for lang in LANGS}
    ref = sorted([full["pairs"]["en-de"]["splits"]["train"]["total"],
                  full["pairs"]["en-fr"]["splits"]["train"]["total"]])
    median = (ref[0] + ref[1]) // 2
    assert train["de"] == full["pairs"]["en-de"]["splits"]["train"]["total"]
    assert train["kn"] == median // 5 and train["ha"] == median // 5
    assert train["am"] == max(100, median // 50)
    assert len(read(out, "train.en-am.en")) == train["am"]
    for lang in LANGS:  # valid/test untouched
        assert summary["pairs"][f"en-{lang}"]["splits"]["test"] == full["pairs"][f"en-{lang}"]["splits"]["test"]
    assert bc.tier_caps({"de": 1000, "nl": 3000, "sv": 5000, "af": 900}, 10) == {
        "de": None, "nl": None, "sv": 400, "af": 40}


def test_split_pairs_and_subsample_are_hash_ordered_and_count_drops():
    from collections import Counter

    pairs = [bc.Pair(f"item {i}", f"Ding {i}", "phrase", "t") for i in range(400)]
    drops = Counter()
    parts = bc.split_pairs(pairs, 3, 0.2, 0.2, 10, drops)
    for split, items in parts.items():
        assert all(bc.assign_split(p.en, 3, 0.2, 0.2) == split for p in items)
        assert items == sorted(items, key=lambda p: (bc.stable_hash(p.en, 3), p.en))
    assert len(parts["valid"]) == len(parts["test"]) == 10
    n_eval = sum(bc.assign_split(p.en, 3, 0.2, 0.2) != "train" for p in pairs)
    assert drops["eval_overflow"] == n_eval - 20 and len(parts["train"]) == 400 - n_eval
    train = parts["train"]
    kept = bc.subsample(train, 50, 3, drops)
    smallest = sorted(train, key=lambda p: (bc.stable_hash(p.en, 3, "subsample"), p.en))[:50]
    assert kept == [p for p in train if p in smallest] and drops["tier_subsample"] == len(train) - 50
    assert bc.subsample(train, None, 3, drops) is train and bc.subsample(train, len(train), 3, drops) is train


def test_cli_builtin(tmp_path, capsys, monkeypatch):
    import sys

    from neuronspec import cli

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main(argv) rewrites sys.argv

    out = tmp_path / "cli"
    rc = cli.main(["data", "builtin", "--out", str(out), "--langs", "ha", "--no-progress",
                   "--max-eval", "30"])
    assert rc == 0
    assert "en↔ha" in capsys.readouterr().out
    assert len(read(out, "test.en-ha.en")) == 30
    assert cli.main(["data", "builtin", "--out", str(tmp_path / "bad"), "--langs", "zz"]) == 2
    # languages space- or comma-separated, as train/prepare take them; zero-shot pairs
    assert cli.main(["data", "builtin", "--out", str(tmp_path / "two"), "--langs", "ha", "mt,am",
                     "--zero-shot", "am-mt", "--no-progress"]) == 0
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["langs"] == ["ha", "mt", "am"]
    assert (tmp_path / "two" / "test.am-mt.am").is_file()


def test_zero_shot_test_pairs(tmp_path):
    """zero_shot=["de-fr"] writes test.de-fr.*: the test items of both languages with the
    same English text, aligned, with kinds; prepared data then has de→fr and fr→de."""
    from neuronspec.data.binarize import prepare_corpus

    out = tmp_path / "c"
    summary = bc.build_builtin_corpus(out, langs=["de", "fr"], zero_shot=["de-fr"], progress=False)
    de = {en: xx for en, xx, _, _ in all_pairs(out, "de", "test")}
    fr = {en: xx for en, xx, _, _ in all_pairs(out, "fr", "test")}
    both = [en for en in de if en in fr]
    x, y = read(out, "test.de-fr.de"), read(out, "test.de-fr.fr")
    assert len(x) == len(y) == len(both) == summary["zero_shot_test"]["de-fr"] > 20
    assert list(zip(x, y)) == [(de[en], fr[en]) for en in both]
    assert len(read(out, "sources.test.de-fr")) == len(x) and "Zero-shot test pairs" in (out / "README.md").read_text()
    data = prepare_corpus(out, tmp_path / "p", vocab_size=2000, progress=False)
    assert data.zero_shot_directions("test") == [("de", "fr"), ("fr", "de")]
    assert data.kinds("test", "fr-de") is not None
    for bad in (["de-uk"], ["de"], ["de-de"]):
        with pytest.raises(ValueError, match="zero_shot"):
            bc.build_builtin_corpus(tmp_path / "bad", langs=["de", "fr"], zero_shot=bad, progress=False)
    assert bc._zero_shot_pairs("all", ["de", "fr", "ru"]) == [("de", "fr"), ("de", "ru"), ("fr", "ru")]


def test_optional_catalog_packages_used_when_installed(tmp_path, monkeypatch):
    """The `corpus` extra's packages (allauth, wagtail, jupyterlab_language_pack_*) join the
    defaults when importable, in a fixed order, and the summary records their versions."""
    site = tmp_path / "site"
    for module, folder in (("jupyterlab_language_pack_zz_ZZ", "de_DE"), ("allauth", "de")):
        d = site / module / "locale" / folder / "LC_MESSAGES"
        d.mkdir(parents=True)
        (d / "django.po").write_text(PO_HEADER + f'msgid "Zebra from {module}"\nmsgstr "Zebra aus {module}"\n',
                                     encoding="utf-8")
        (site / module / "__init__.py").write_text("")
    dist = site / "jupyterlab_language_pack_zz_zz-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: jupyterlab-language-pack-zz-ZZ\nVersion: 1.2.3\n")
    (dist / "top_level.txt").write_text("jupyterlab_language_pack_zz_ZZ\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()

    packages = bc.default_gettext_packages()
    assert packages[:3] == list(bc.DEFAULT_GETTEXT_PACKAGES)
    assert packages.index("allauth") < packages.index("jupyterlab_language_pack_zz_ZZ")
    assert bc.package_versions(["jupyterlab_language_pack_zz_ZZ", "no_such_pkg_xyz"]) == {
        "jupyterlab_language_pack_zz_ZZ": "1.2.3", "no_such_pkg_xyz": None}

    summary = bc.build_builtin_corpus(tmp_path / "out", langs="de", progress=False)
    de = {en: xx for s in bc.SPLITS for en, xx, kind, _ in all_pairs(tmp_path / "out", "de", s)}
    assert de["Zebra from allauth"] == "Zebra aus allauth"
    assert de["Zebra from jupyterlab_language_pack_zz_ZZ"] == "Zebra aus jupyterlab_language_pack_zz_ZZ"
    assert summary["gettext_package_versions"]["jupyterlab_language_pack_zz_ZZ"] == "1.2.3"
    assert "allauth" in summary["gettext_packages"]
