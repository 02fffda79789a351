import itertools
import pickle

import pytest

from neuronspec.data import languages as L

DESIGN_TIERS = {
    "high": "de nl fr es ru cs hi bn ar he".split(),
    "medium": "sv da it pt pl bg kn mr ha mt".split(),
    "low": "af lb ro oc uk sr sd gu ti am".split(),
}


def test_ec30_tiers_match_design():
    assert len(L.EC30) == 30 and len(set(L.EC30)) == 30
    for t, codes in DESIGN_TIERS.items():
        assert L.BY_TIER[t] == codes
        assert all(L.tier(c) == t for c in codes)


def test_family_branch_script_facts():
    assert (L.family("de"), L.branch("de"), L.script("de")) == ("Indo-European", "Germanic", "Latin")
    assert L.branch("ro") == L.branch("oc") == "Romance"
    assert L.branch("uk") == "Slavic" and L.script("uk") == "Cyrillic"
    assert L.script("sr") == "Cyrillic"  # our choice, matches CLDR's default sr
    assert L.script("cs") == "Latin" and L.branch("cs") == "Slavic"
    assert L.script("hi") == L.script("mr") == "Devanagari"
    assert L.script("sd") == "Arabic" and L.branch("sd") == "Indo-Aryan"
    assert L.script("am") == L.script("ti") == "Ethiopic"
    assert L.branch("ha") == "Chadic" and L.family("ha") == "Afro-Asiatic"
    assert L.branch("mt") == "Semitic" and L.script("mt") == "Latin"
    assert L.family("kn") == "Dravidian" and L.script("kn") == "Kannada"
    assert {L.script(c) for c in L.EC30} >= {"Bengali", "Hebrew", "Gujarati", "Arabic"}


def test_relatedness_levels_and_symmetry():
    assert L.relatedness("de", "de") == 3.0
    assert L.relatedness("de", "nl") == 2.0  # same branch
    assert L.relatedness("ar", "he") == 2.0
    assert L.relatedness("de", "fr") == 1.0  # both Indo-European
    assert L.relatedness("ar", "ha") == 1.0  # both Afro-Asiatic
    assert L.relatedness("de", "ar") == 0.0
    assert L.relatedness("kn", "hi") == 0.0
    for a, b in itertools.combinations(L.EC30, 2):
        r = L.relatedness(a, b)
        assert r == L.relatedness(b, a) and r in (0.0, 1.0, 2.0)
        assert isinstance(r, float)


def test_check_lang_and_parse_langs():
    assert L.check_lang("de") == "de"
    with pytest.raises(ValueError, match="'xx'"):
        L.check_lang("xx")
    with pytest.raises(ValueError, match="'en'"):  # English is the pivot, not an EC30 language
        L.check_lang("en")
    with pytest.raises(TypeError):
        L.check_lang(5)
    for fn in (L.tier, L.family, L.script):
        with pytest.raises(ValueError, match="'zz'"):
            fn("zz")
    with pytest.raises(ValueError, match="'qq'"):
        L.relatedness("de", "qq")
    assert L.parse_langs(None) == L.EC30
    assert L.parse_langs("fr, de,fr") == ["de", "fr"]  # EC30 order, de-duplicated
    assert L.parse_langs(["am", "de"]) == ["de", "am"]
    with pytest.raises(ValueError, match="langs"):
        L.parse_langs("")
    with pytest.raises(ValueError, match="'de_CH'"):
        L.parse_langs("de_CH")


def test_locale_folder_mapping():
    n = L.normalize_locale_folder
    assert n("sr@latin") == "sr_Latn" and n("sr@cyrillic") == "sr_Cyrl"
    assert n("pt-br") == "pt_BR" and n("zh_hans") == "zh_Hans" and n("uk_UA") == "uk_UA"
    assert n("ca@valencia") == "ca@valencia"
    c = L.catalog_lang
    assert c("de") == ("de", 0) and c("de_DE") == ("de", 1)
    assert c("uk_UA") == ("uk", 1) and c("hi_IN") == ("hi", 1)
    assert c("pt_BR") == ("pt", 0)
    assert c("pt") is None and c("pt_PT") is None  # European Portuguese is not our pt
    assert c("sr") == ("sr", 0) and c("sr_RS") is not None
    assert c("sr_Latn") is None and c("sr@latin") is None  # Serbian is Cyrillic here
    for other in ("de_CH", "fr_CA", "es_AR", "ar_DZ", "en", "en_GB", "zh_Hans", "nb"):
        assert c(other) is None, other


def test_locale_choices_exist_in_installed_packages():
    import babel.localedata
    from num2words import CONVERTER_CLASSES

    for code in L.EC30:
        info = L.info(code)
        with open(babel.localedata.resolve_locale_filename(info.babel_locale), "rb") as f:
            own = pickle.load(f)
        assert own["territories"].get("DE"), code  # the locale has its own CLDR names
        if info.num2words_lang is not None:
            assert info.num2words_lang in CONVERTER_CLASSES, code
    with open(babel.localedata.resolve_locale_filename("sr"), "rb") as f:
        assert pickle.load(f)["territories"]["DE"] == "Немачка"  # Cyrillic
