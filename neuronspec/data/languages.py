"""The EC30 languages: resource tier, family, script and locale choices.

EC30 (30 languages <-> English) groups its languages by how much training data
they have: High (5M pairs each), Medium (1M) and Low (100k). This module holds
those facts plus the choices the built-in corpus makes for each language:

* ``babel_locale``: the CLDR locale used for phrases. Two choices matter:
  ``pt`` is Brazilian Portuguese (CLDR's ``pt`` *is* pt_BR) and ``sr`` is
  Serbian in **Cyrillic** (CLDR's ``sr`` = ``sr_Cyrl``), the script EC30 uses.
* ``catalog_locales``: the gettext locale folder names (normalised, see
  :func:`normalize_locale_folder`) accepted as this language, in order of
  preference. They are all the same written standard as ``babel_locale``:
  ``pt`` takes ``pt_BR`` only (Django's ``pt`` and Sphinx's ``pt_PT`` are
  European Portuguese), ``sr`` takes Cyrillic folders only (not ``sr_Latn`` or
  ``sr@latin``), and regional variants with other spelling rules (``de_CH``,
  ``fr_CA``, ``es_AR``, ``ar_DZ`` ...) are not used.
* ``num2words_lang``: the num2words converter, or None where num2words has no
  converter for the language or writes it in another script (its ``sr`` is Latin).

``relatedness(a, b)``: 3.0 same language, 2.0 same branch (e.g. both Slavic),
1.0 same top-level family only (e.g. Germanic vs Romance, both Indo-European;
Semitic vs Chadic, both Afro-Asiatic), 0.0 unrelated.
"""
from __future__ import annotations

from dataclasses import dataclass

TIERS = ("high", "medium", "low")


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    tier: str  # "high" | "medium" | "low"
    family: str  # top-level family, e.g. "Indo-European"
    branch: str  # e.g. "Germanic", "Indo-Aryan", "Semitic"
    script: str  # e.g. "Latin", "Cyrillic", "Ethiopic"
    babel_locale: str
    catalog_locales: tuple[str, ...]
    num2words_lang: str | None


def _lang(code, name, tier, family, branch, script, *, babel=None, catalogs=None,
          n2w=None) -> Language:
    babel = babel or code
    return Language(code, name, tier, family, branch, script, babel,
                    tuple(catalogs) if catalogs is not None else (code,), n2w)


_IE, _AA = "Indo-European", "Afro-Asiatic"
_LIST = [
    # --- high
    _lang("de", "German", "high", _IE, "Germanic", "Latin", catalogs=("de", "de_DE"), n2w="de"),
    _lang("nl", "Dutch", "high", _IE, "Germanic", "Latin", catalogs=("nl", "nl_NL"), n2w="nl"),
    _lang("fr", "French", "high", _IE, "Romance", "Latin", catalogs=("fr", "fr_FR"), n2w="fr"),
    _lang("es", "Spanish", "high", _IE, "Romance", "Latin", catalogs=("es", "es_ES"), n2w="es"),
    _lang("ru", "Russian", "high", _IE, "Slavic", "Cyrillic", catalogs=("ru", "ru_RU"), n2w="ru"),
    _lang("cs", "Czech", "high", _IE, "Slavic", "Latin", catalogs=("cs", "cs_CZ"), n2w="cs"),
    _lang("hi", "Hindi", "high", _IE, "Indo-Aryan", "Devanagari", catalogs=("hi", "hi_IN")),
    _lang("bn", "Bengali", "high", _IE, "Indo-Aryan", "Bengali", catalogs=("bn", "bn_BD"), n2w="bn"),
    _lang("ar", "Arabic", "high", _AA, "Semitic", "Arabic", n2w="ar"),
    _lang("he", "Hebrew", "high", _AA, "Semitic", "Hebrew", catalogs=("he", "he_IL"), n2w="he"),
    # --- medium
    _lang("sv", "Swedish", "medium", _IE, "Germanic", "Latin", catalogs=("sv", "sv_SE"), n2w="sv"),
    _lang("da", "Danish", "medium", _IE, "Germanic", "Latin", catalogs=("da", "da_DK"), n2w="da"),
    _lang("it", "Italian", "medium", _IE, "Romance", "Latin", catalogs=("it", "it_IT"), n2w="it"),
    _lang("pt", "Portuguese (Brazil)", "medium", _IE, "Romance", "Latin",
          catalogs=("pt_BR",), n2w="pt_BR"),
    _lang("pl", "Polish", "medium", _IE, "Slavic", "Latin", catalogs=("pl", "pl_PL"), n2w="pl"),
    _lang("bg", "Bulgarian", "medium", _IE, "Slavic", "Cyrillic", catalogs=("bg", "bg_BG")),
    _lang("kn", "Kannada", "medium", "Dravidian", "South Dravidian", "Kannada",
          catalogs=("kn", "kn_IN"), n2w="kn"),
    _lang("mr", "Marathi", "medium", _IE, "Indo-Aryan", "Devanagari", catalogs=("mr", "mr_IN")),
    _lang("ha", "Hausa", "medium", _AA, "Chadic", "Latin", catalogs=("ha", "ha_NG")),
    _lang("mt", "Maltese", "medium", _AA, "Semitic", "Latin", catalogs=("mt", "mt_MT")),
    # --- low
    _lang("af", "Afrikaans", "low", _IE, "Germanic", "Latin", catalogs=("af", "af_ZA")),
    _lang("lb", "Luxembourgish", "low", _IE, "Germanic", "Latin", catalogs=("lb", "lb_LU")),
    _lang("ro", "Romanian", "low", _IE, "Romance", "Latin", catalogs=("ro", "ro_RO"), n2w="ro"),
    _lang("oc", "Occitan", "low", _IE, "Romance", "Latin", catalogs=("oc", "oc_FR")),
    _lang("uk", "Ukrainian", "low", _IE, "Slavic", "Cyrillic", catalogs=("uk", "uk_UA"), n2w="uk"),
    _lang("sr", "Serbian (Cyrillic)", "low", _IE, "Slavic", "Cyrillic",
          catalogs=("sr", "sr_Cyrl", "sr_RS", "sr_Cyrl_RS")),
    _lang("sd", "Sindhi", "low", _IE, "Indo-Aryan", "Arabic",
          catalogs=("sd", "sd_Arab", "sd_PK")),
    _lang("gu", "Gujarati", "low", _IE, "Indo-Aryan", "Gujarati", catalogs=("gu", "gu_IN")),
    _lang("ti", "Tigrinya", "low", _AA, "Semitic", "Ethiopic", catalogs=("ti", "ti_ER", "ti_ET")),
    _lang("am", "Amharic", "low", _AA, "Semitic", "Ethiopic", catalogs=("am", "am_ET"), n2w="am"),
]

LANGUAGES: dict[str, Language] = {lang.code: lang for lang in _LIST}
EC30: list[str] = [lang.code for lang in _LIST]  # in tier order: 10 high, 10 medium, 10 low
BY_TIER: dict[str, list[str]] = {t: [c for c in EC30 if LANGUAGES[c].tier == t] for t in TIERS}


def check_lang(code: str) -> str:
    """Return ``code`` if it is an EC30 language code, else raise ValueError naming it."""
    if not isinstance(code, str):
        raise TypeError(f"language code must be a str, got {type(code).__name__}: {code!r}")
    if code not in LANGUAGES:
        raise ValueError(f"unknown language code {code!r}: expected one of the EC30 codes "
                         f"{', '.join(EC30)}")
    return code


def parse_langs(langs: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``None`` -> all of EC30; ``"de,fr"`` or ``["de", "fr"]`` -> validated, de-duplicated,
    in EC30 order. Raises ValueError for an unknown code or an empty selection."""
    if langs is None:
        return list(EC30)
    if isinstance(langs, str):
        langs = [x.strip() for x in langs.split(",") if x.strip()]
    chosen = {check_lang(c) for c in langs}
    if not chosen:
        raise ValueError("langs: empty language selection")
    return [c for c in EC30 if c in chosen]


def info(lang: str) -> Language:
    return LANGUAGES[check_lang(lang)]


def tier(lang: str) -> str:
    """Resource tier: 'high', 'medium' or 'low'."""
    return info(lang).tier


def family(lang: str) -> str:
    """Top-level language family, e.g. 'Indo-European'."""
    return info(lang).family


def branch(lang: str) -> str:
    """Branch inside the family, e.g. 'Slavic'."""
    return info(lang).branch


def script(lang: str) -> str:
    """Writing system used in the corpus, e.g. 'Cyrillic'."""
    return info(lang).script


def relatedness(a: str, b: str) -> float:
    """3.0 same language, 2.0 same branch, 1.0 same top-level family, 0.0 unrelated."""
    la, lb = info(a), info(b)
    if la.code == lb.code:
        return 3.0
    if la.family == lb.family:
        return 2.0 if la.branch == lb.branch else 1.0
    return 0.0


def normalize_locale_folder(name: str) -> str:
    """Normalise a gettext locale folder name: ``pt-br`` -> ``pt_BR``, ``sr@latin`` ->
    ``sr_Latn``, ``sr@cyrillic`` -> ``sr_Cyrl``, ``zh_hans`` -> ``zh_Hans``. Other ``@``
    modifiers (``ca@valencia``) are kept, so they match no EC30 language."""
    base, _, modifier = name.replace("-", "_").partition("@")
    parts = [p for p in base.split("_") if p]
    if not parts:
        return name
    out = [parts[0].lower()]
    for p in parts[1:]:
        if len(p) == 4 and p.isalpha():
            out.append(p.title())  # script subtag
        else:
            out.append(p.upper())  # territory
    if modifier in ("latin", "Latn"):
        out.insert(1, "Latn")
    elif modifier in ("cyrillic", "Cyrl"):
        out.insert(1, "Cyrl")
    elif modifier:
        return "_".join(out) + "@" + modifier
    return "_".join(out)


def catalog_lang(folder: str) -> tuple[str, int] | None:
    """Map a gettext locale folder name to ``(ec30_code, preference_rank)`` or None.

    Rank 0 is the preferred folder for that language (e.g. ``de`` before ``de_DE``).
    """
    norm = normalize_locale_folder(folder)
    for code in EC30:
        prefs = LANGUAGES[code].catalog_locales
        if norm in prefs:
            return code, prefs.index(norm)
    return None
