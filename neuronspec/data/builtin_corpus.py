"""The built-in offline corpus: English <-> each EC30 language, from installed packages.

Every pair is a real human translation shipped by an installed package; nothing is
invented here.

* **phrases** (``kind = "phrase"``): Unicode CLDR data in ``babel`` — territory,
  language and currency names, stand-alone month and weekday names, dates written
  with each locale's own patterns, unit patterns filled with numbers, list patterns
  filled with CLDR territory names — plus ``num2words`` cardinals/ordinals where it
  covers the language. A pair is the *same CLDR item* computed with the ``en``
  locale and with the other language's locale. Only data the locale defines itself
  is used (CLDR's root fallbacks, e.g. Maltese unit names that are really English,
  are skipped).
* **sentences** (``kind = "sentence"``): gettext catalogs of Django, Sphinx and
  sphinxcontrib, and when installed (``pip install "neuronspec[corpus]"``) those of
  django-allauth, Wagtail and the JupyterLab language packs (and any ``gettext_packages``):
  English msgid -> translated msgstr. The summary records each package's version.

Babel caveat: babel <= 2.18 leaks resolved CLDR aliases between locales through its
shared data cache (python-babel/babel#1234: after reading Hebrew stand-alone months,
Danish stand-alone months come back in Hebrew). Each locale is therefore read right
after clearing ``babel.localedata._cache``, which makes the result independent of the
order languages are processed in (tested).

Output layout (EC30, docs/design.md §5), written into ``out_dir`` atomically::

    {split}.en-{xx}.en   {split}.en-{xx}.{xx}    split in train, valid, test
    sources.{split}.en-{xx}     one word a line: phrase | sentence
    origins.{split}.en-{xx}     finer origin a line, e.g. cldr:territory, gettext:django
    README.md  summary.md  summary.json

The en-xx files serve both directions: en->xx reads them as is, xx->en reads the
same pair in reverse (there are no ``*.xx-en.*`` files).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import gettext
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import pickle
import pkgutil
import re
import shutil
import statistics
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import babel
import babel.localedata
from babel import Locale
from babel.dates import format_date, format_skeleton
from babel.lists import format_list
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from babel.units import format_unit
from tqdm.auto import tqdm

from neuronspec.atomic import replace_folder
from neuronspec.data.manifest import remove_stale_temp_folders, temp_folder
from neuronspec.data.languages import LANGUAGES, catalog_lang, parse_langs
from neuronspec.checks import check_int
from neuronspec.data.placeholders import placeholders, strip_placeholders

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
KINDS = ("phrase", "sentence")
DEFAULT_GETTEXT_PACKAGES = ("django", "sphinx", "sphinxcontrib")
# read when installed (the `corpus` extra): community-translated UI catalogs, ~1.6x the
# training pairs and ~3x the sentences of the languages they cover (docs/design.md §5)
OPTIONAL_GETTEXT_PACKAGES = ("allauth", "wagtail")
JUPYTERLAB_PACKS = "jupyterlab_language_pack_"  # one module per locale, e.g. ..._de_DE
GENERATOR = "neuronspec.nmt.builtin_corpus"

# ------------------------------------------------------------------ text cleaning
# Every character str.splitlines() breaks on, so one pair is always exactly one line.
_LINE_BREAKS = re.compile(r"[ \t]*[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+[ \t]*")


def clean_text(text: str) -> str:
    """Strip, turn line breaks (and tabs) inside a message into single spaces.

    Other characters are kept as they are: no Unicode normalisation, U+202F narrow
    no-break spaces and U+200F right-to-left marks stay.
    """
    return _LINE_BREAKS.sub(" ", text).replace("\t", " ").strip()


def _has_letter(text: str) -> bool:
    return any(unicodedata.category(ch).startswith("L") for ch in text)


# ------------------------------------------------------------------ CLDR phrases
def _own_data(locale_id: str) -> dict:
    """The locale's own CLDR data, without what it inherits from root."""
    with open(babel.localedata.resolve_locale_filename(locale_id), "rb") as f:
        return pickle.load(f)


def _fresh_locale(locale_id: str) -> Locale:
    """A Locale read from a cleared babel cache (works around python-babel/babel#1234)."""
    cache = getattr(babel.localedata, "_cache", None)
    if isinstance(cache, dict):
        cache.clear()
    return Locale.parse(locale_id)


_DATES = [_dt.date(1990 + 3 * i, i % 12 + 1, (7 * i) % 28 + 1) for i in range(24)]
_DATE_FORMATS = ("full", "long", "medium")
_SKELETONS = ("MMMMd", "MMMd", "MMMEd", "yMMMM", "yMMM", "yMMMd", "yMMMEd")
_UNITS = (
    "length-kilometer", "length-meter", "length-centimeter", "length-millimeter",
    "length-mile", "length-foot", "mass-kilogram", "mass-gram", "mass-tonne",
    "duration-year", "duration-month", "duration-week", "duration-day", "duration-hour",
    "duration-minute", "duration-second", "temperature-celsius", "volume-liter",
    "area-square-kilometer", "area-hectare", "speed-kilometer-per-hour",
    "digital-gigabyte", "digital-megabyte", "energy-kilocalorie", "power-kilowatt",
)
_UNIT_VALUES = (1, 2, 3, 5, 12, 21, 100, 2.5)
_LIST_TERRITORIES = (
    "DE", "FR", "IT", "ES", "GB", "US", "CN", "JP", "IN", "BR", "RU", "EG", "NG", "ET",
    "ZA", "CA", "MX", "AR", "AU", "TR", "SE", "PL", "NL", "GR", "PT", "IL", "IR", "PK",
    "KE", "UA",
)
_LIST_LANGUAGES = ("en", "de", "fr", "es", "ar", "zh", "hi", "ru", "pt", "ja", "sw", "it")
_N2W_NUMBERS = (*range(0, 21), 30, 40, 50, 60, 70, 80, 90, 100, 101, 111, 250, 999, 1000,
                1001, 1999, 2024, 10000, 65536, 1000000)


def _list_groups(codes: tuple[str, ...], n: int) -> list[tuple[str, ...]]:
    """Deterministic groups of 2 and 3 codes (a fixed stride walk, no randomness)."""
    m = len(codes)
    groups = []
    for i in range(n):
        groups.append((codes[i % m], codes[(i * 7 + 3) % m]))
        groups.append((codes[(i * 5 + 1) % m], codes[(i * 11 + 4) % m], codes[(i * 3 + 2) % m]))
    return [g for g in groups if len(set(g)) == len(g)]


def cldr_phrases(locale_id: str) -> dict[tuple, tuple[str, str]]:
    """All CLDR items of one locale: ``{item_key: (origin, text)}``.

    ``item_key`` names the CLDR item language-independently (e.g. ``("territory",
    "DE")``, ``("unit", "long", "length-meter", 2.5)``), so the English and the
    foreign phrase of a pair are the same item. Only items the locale defines itself
    are returned.
    """
    own = _own_data(locale_id)
    loc = _fresh_locale(locale_id)
    out: dict[tuple, tuple[str, str]] = {}

    def put(key, origin, text):
        if isinstance(text, str) and text.strip():
            out[key] = (origin, text)

    for name, field in (("territory", "territories"), ("language", "languages"),
                        ("currency", "currency_names")):
        for code, text in sorted(own.get(field, {}).items()):
            put((name, code), f"cldr:{name}", text)

    for field, origin, count in (("months", "month", 12), ("days", "weekday", 7)):
        own_fmt = own.get(field, {}).get("format", {})
        for width in ("wide", "abbreviated"):
            if not own_fmt.get(width):  # never fall back to root's placeholders
                continue
            names = getattr(loc, field)["stand-alone"][width]  # CLDR alias -> format
            for i in range(count):
                idx = i + 1 if field == "months" else i
                if idx in names:
                    put((origin, width, idx), f"cldr:{origin}", names[idx])

    own_formats = own.get("date_formats", {})
    own_skeletons = own.get("datetime_skeletons", {})
    for d in _DATES:
        for fmt in _DATE_FORMATS:
            if fmt in own_formats:
                put(("date", fmt, d.isoformat()), "cldr:date", format_date(d, fmt, locale=loc))
        for sk in _SKELETONS:
            if sk in own_skeletons:
                put(("date", sk, d.isoformat()), "cldr:date",
                    format_skeleton(sk, d, locale=loc))

    own_units = own.get("unit_patterns", {})
    for unit in _UNITS:
        for length in ("long", "short"):
            if not own_units.get(unit, {}).get(length):
                continue
            for value in _UNIT_VALUES:
                text = format_unit(value, unit, length, locale=loc)
                if unit not in text:  # babel writes the unit id when a pattern is missing
                    put(("unit", length, unit, value), "cldr:unit", text)

    own_lists = own.get("list_patterns", {})
    names = {"territory": own.get("territories", {}), "language": own.get("languages", {})}
    groups = ([("territory", g) for g in _list_groups(_LIST_TERRITORIES, 20)]
              + [("language", g) for g in _list_groups(_LIST_LANGUAGES, 8)])
    for style in ("standard", "or"):
        patterns = own_lists.get(style, {})
        if "2" not in patterns or "end" not in patterns:
            continue
        for what, group in groups:
            if all(c in names[what] for c in group):
                put(("list", style, what, group), "cldr:list",
                    format_list([names[what][c] for c in group], style=style, locale=loc))
    return out


def num2words_phrases(n2w_lang: str | None) -> dict[tuple, tuple[str, str]]:
    """Cardinals and ordinals of fixed numbers: ``{("num2words", kind, n): (origin, text)}``.

    An ordinal identical to the cardinal is taken as missing ordinal support and dropped.
    """
    if n2w_lang is None:
        return {}
    from num2words import num2words

    out = {}
    for n in _N2W_NUMBERS:
        texts = {}
        for to in ("cardinal", "ordinal"):
            if to == "ordinal" and n == 0:
                continue
            try:
                texts[to] = num2words(n, lang=n2w_lang, to=to)
            except Exception:  # num2words raises NotImplementedError/TypeError/... per language
                continue
        if texts.get("ordinal") is not None and texts.get("ordinal") == texts.get("cardinal"):
            texts.pop("ordinal")
        for to, text in texts.items():
            if isinstance(text, str) and text.strip():
                out[("num2words", to, n)] = (f"num2words:{to}", text)
    return out


# ------------------------------------------------------------------ gettext sentences
def _plural_index(plural_expr: str | None, n: int) -> int | None:
    try:
        return int(gettext.c2py(plural_expr or "(n != 1)")(n))
    except (ValueError, SyntaxError, TypeError):
        return None


@dataclass(frozen=True)
class CatalogFile:
    package: str
    path: Path
    lang: str  # EC30 code
    rank: int  # preference among this language's locale folders (0 = best)
    folder: str  # locale folder name as shipped, e.g. "pt_BR"


def _package_roots(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(p) for p in spec.submodule_search_locations]
    return [Path(spec.origin).parent] if spec.origin else []


def default_gettext_packages() -> list[str]:
    """django, sphinx, sphinxcontrib, then the optional catalog packages that are installed
    (allauth, wagtail, every jupyterlab_language_pack_* module), in a fixed order."""
    packs = sorted(m.name for m in pkgutil.iter_modules() if m.name.startswith(JUPYTERLAB_PACKS))
    optional = [p for p in OPTIONAL_GETTEXT_PACKAGES if importlib.util.find_spec(p) is not None]
    return [*DEFAULT_GETTEXT_PACKAGES, *optional, *packs]


def package_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """{module: version of the distribution that installs it, None if not installed}."""
    dists = importlib.metadata.packages_distributions()
    out = {}
    for package in packages:
        names = dists.get(package, [])
        out[package] = importlib.metadata.version(names[0]) if names else None
    return out


def find_catalogs(packages: Iterable[str], langs: Iterable[str],
                  required: Iterable[str] = ()) -> list[CatalogFile]:
    """Gettext catalogs ``**/<folder>/LC_MESSAGES/*.po|*.mo`` of installed
    ``packages`` whose locale folder maps to one of ``langs`` (the parent is usually
    ``locale/``, ``locales/`` for sphinxcontrib); ``.po`` preferred over ``.mo``.

    Ordered by (package, catalog, preference rank) so a language's preferred folder
    comes first. A package in ``required`` that is not installed is a ValueError.
    """
    wanted, required = set(langs), set(required)
    found: list[CatalogFile] = []
    for package in packages:
        roots = _package_roots(package)
        if not roots:
            if package in required:
                raise ValueError(f"gettext_packages: package {package!r} is not installed")
            logger.info("gettext package %s not installed, skipped", package)
            continue
        files: dict[tuple, Path] = {}
        for root in roots:
            for path in sorted(root.glob("**/LC_MESSAGES/*")):
                if path.suffix not in (".po", ".mo") or not path.is_file():
                    continue
                key = (path.parent.parent.parent, path.parent.parent.name, path.stem)
                if key not in files or path.suffix == ".po":
                    files[key] = path
        n_before = len(found)
        for (catalog_dir, folder, domain), path in files.items():
            mapped = catalog_lang(folder)
            if mapped is None or mapped[0] not in wanted:
                continue
            found.append(CatalogFile(package, path, mapped[0], mapped[1], folder))
        if package in required and not files:
            logger.warning("gettext package %s ships no */LC_MESSAGES catalogs", package)
        logger.debug("%s: %d catalogs for the chosen languages", package, len(found) - n_before)
    order = {p: i for i, p in enumerate(packages)}
    found.sort(key=lambda c: (order[c.package], str(c.path.parent.parent.parent),
                              c.path.stem, c.rank, c.folder))
    return found


def _read_catalog(path: Path):
    with open(path, "rb") as f:
        if path.suffix != ".po":
            return read_mo(f)
        # read_po print()s its complaints (e.g. Django's fr catalogs carry a third plural
        # form their header does not declare; babel drops it, which is what we want).
        complaints = io.StringIO()
        with contextlib.redirect_stdout(complaints):
            catalog = read_po(f, abort_invalid=False)
    if complaints.getvalue():
        logger.debug("%s: %s", path, complaints.getvalue().strip().replace("\n", "; "))
    return catalog


def catalog_pairs(cat: CatalogFile, drops: Counter) -> Iterator[tuple[str, str]]:
    """(English, translation) message pairs of one catalog, raw (not yet cleaned).

    Skips the header, fuzzy and untranslated entries. A plural entry gives up to two
    pairs: English singular with the form the catalog's Plural-Forms picks for n = 1,
    English plural with the form for n = 5 (e.g. Arabic's msgstr[0] is the *zero* form,
    so index 0 would be wrong).
    """
    try:
        catalog = _read_catalog(cat.path)
    except Exception as exc:  # a broken third-party catalog must not stop the build
        logger.warning("cannot read %s: %s", cat.path, exc)
        drops["unreadable_catalog"] += 1
        return
    for msg in catalog:
        if not msg.id:
            continue
        if msg.fuzzy:
            drops["fuzzy"] += 1
            continue
        if isinstance(msg.id, (tuple, list)):
            strings = list(msg.string) if isinstance(msg.string, (tuple, list)) else [msg.string]
            for en, n in zip(msg.id[:2], (1, 5)):
                idx = _plural_index(catalog.plural_expr, n)
                text = strings[idx] if idx is not None and idx < len(strings) else ""
                if text:
                    yield en, text
                else:
                    drops["untranslated"] += 1
        elif msg.string:
            yield msg.id, msg.string
        else:
            drops["untranslated"] += 1


# ------------------------------------------------------------------ one language
@dataclass(frozen=True)
class Pair:
    en: str
    xx: str
    kind: str  # "phrase" | "sentence"
    origin: str


def _accept(en: str, xx: str, max_chars: int, drops: Counter,
            check_placeholders: bool) -> tuple[str, str] | None:
    en, xx = clean_text(en), clean_text(xx)
    if not en or not xx:
        drops["empty"] += 1
        return None
    if len(en) > max_chars or len(xx) > max_chars:
        drops["too_long"] += 1
        return None
    if check_placeholders and placeholders(en) != placeholders(xx):
        drops["placeholder_mismatch"] += 1
        return None
    if not _has_letter(strip_placeholders(en)) or not _has_letter(strip_placeholders(xx)):
        drops["no_letters"] += 1
        return None
    return en, xx


def language_pairs(lang: str, en_phrases: dict, catalogs: list[CatalogFile],
                   max_chars: int) -> tuple[list[Pair], Counter]:
    """All de-duplicated pairs for English <-> ``lang``: phrases first, then sentences.

    One translation per English text and one English text per translation (the first
    met wins), so no source line of either direction has two references.
    """
    info = LANGUAGES[lang]
    drops: Counter = Counter()
    xx_phrases = cldr_phrases(info.babel_locale)
    xx_phrases.update(num2words_phrases(info.num2words_lang))
    candidates: list[tuple[str, str, str, str]] = []
    for key, (origin, xx) in xx_phrases.items():
        if key in en_phrases:
            candidates.append((en_phrases[key][1], xx, "phrase", origin))
    n_phrase_candidates = len(candidates)
    for cat in catalogs:
        for en, xx in catalog_pairs(cat, drops):
            candidates.append((en, xx, "sentence", f"gettext:{cat.package}"))

    pairs: list[Pair] = []
    seen_en: set[str] = set()
    seen_xx: set[str] = set()
    for i, (en, xx, kind, origin) in enumerate(candidates):
        ok = _accept(en, xx, max_chars, drops, check_placeholders=i >= n_phrase_candidates)
        if ok is None:
            continue
        en, xx = ok
        if en in seen_en:
            drops["duplicate_en"] += 1
            continue
        if xx in seen_xx:
            drops["duplicate_xx"] += 1
            continue
        seen_en.add(en)
        seen_xx.add(xx)
        pairs.append(Pair(en, xx, kind, origin))
    return pairs, drops


# ------------------------------------------------------------------ splits
def stable_hash(text: str, seed: int, salt: str = "split") -> float:
    """A stable number in [0, 1) for an English item (blake2b; not Python's hash())."""
    digest = hashlib.blake2b(f"{salt}\x1f{seed}\x1f{text}".encode("utf-8"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2.0**64


def assign_split(en: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    """The split of an English item: the same for every language and direction."""
    h = stable_hash(en, seed)
    if h < valid_fraction:
        return "valid"
    if h < valid_fraction + test_fraction:
        return "test"
    return "train"


def tier_caps(train_sizes: dict[str, int], low_floor: int) -> dict[str, int | None]:
    """Training-size caps that mimic EC30's 5M / 1M / 100k tiers.

    ``ref`` = median training size of the high-tier languages in the build (the largest
    training size when none is in it). High: no cap; medium: ``ref // 5``; low:
    ``max(low_floor, ref // 50)`` (the floor keeps low languages usable on a corpus this
    small). A cap never raises a language above what it has.
    """
    highs = [n for lang, n in train_sizes.items() if LANGUAGES[lang].tier == "high"]
    ref = int(statistics.median(highs)) if highs else max(train_sizes.values(), default=0)
    caps: dict[str, int | None] = {}
    for lang in train_sizes:
        t = LANGUAGES[lang].tier
        caps[lang] = None if t == "high" else (ref // 5 if t == "medium"
                                                else max(low_floor, ref // 50))
    return caps


# ------------------------------------------------------------------ build
def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: must be a number in [0, 1), got {value!r}")
    return float(value)


def build_builtin_corpus(
    out_dir: str | os.PathLike,
    langs: str | Iterable[str] | None = None,
    seed: int = 0,
    *,
    gettext_packages: Iterable[str] = (),
    default_packages: bool = True,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    max_eval: int = 200,
    min_eval: int = 20,
    max_chars: int = 200,
    subsample_tiers: bool = False,
    low_floor: int = 100,
    zero_shot: str | Iterable[str] | None = None,
    progress: bool = True,
) -> dict:
    """Build the corpus into ``out_dir`` and return the summary (saved as summary.json;
    the returned dict adds ``build_seconds``).

    langs: EC30 codes (list or "de,fr"); None = all 30. seed: changes which English
    items go to valid/test (and which training pairs a tier cap keeps), not the
    content. gettext_packages: extra installed packages whose catalogs are read (on
    top of :func:`default_gettext_packages` unless ``default_packages=False``).
    valid_fraction / test_fraction: share of English items per split; a direction
    keeps at most ``max_eval`` of them (those with the smallest hash; the rest of the
    band is dropped, never moved to train, so no split leaks across directions) and a
    warning is logged when it gets fewer than ``min_eval``. max_chars: pairs with a
    longer side are dropped. subsample_tiers: cap training pairs per tier (see
    :func:`tier_caps`). zero_shot: non-English test pairs ("de-fr", ...; "all" = every pair
    of the chosen languages) written as ``test.x-y.*``: the test items whose English text
    both languages translate (multi-way parallel, like Flores), for zero-shot evaluation.
    An existing ``out_dir`` is replaced only if it is empty or was written by this builder.
    """
    t0 = time.perf_counter()
    codes = parse_langs(list(langs) if langs is not None and not isinstance(langs, str)
                        else langs)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: must be an int, got {seed!r}")
    valid_fraction = _check_fraction("valid_fraction", valid_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(f"valid_fraction + test_fraction must be < 1, got "
                         f"{valid_fraction + test_fraction}")
    max_eval = check_int("max_eval", max_eval, 0)
    min_eval = check_int("min_eval", min_eval, 0)
    max_chars = check_int("max_chars", max_chars, 1)
    low_floor = check_int("low_floor", low_floor, 0)
    extra = [gettext_packages] if isinstance(gettext_packages, str) else list(gettext_packages)
    for p in extra:
        if not isinstance(p, str) or not p:
            raise ValueError(f"gettext_packages: expected package names, got {p!r}")
    packages = list(dict.fromkeys([*(default_gettext_packages() if default_packages else ()), *extra]))
    zs_pairs = _zero_shot_pairs(zero_shot, codes)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)

    catalogs = find_catalogs(packages, codes, required=extra)
    pairs, drops = _all_language_pairs(codes, catalogs, max_chars, progress)
    splits = {lang: split_pairs(pairs[lang], seed, valid_fraction, test_fraction, max_eval, drops[lang])
              for lang in codes}
    for lang in codes:
        for s in ("valid", "test"):
            if len(splits[lang][s]) < min_eval:
                logger.warning("en-%s: only %d %s pairs (min_eval=%d)", lang, len(splits[lang][s]),
                               s, min_eval)
    caps: dict[str, int | None] = {}
    if subsample_tiers:
        caps = tier_caps({lang: len(splits[lang]["train"]) for lang in codes}, low_floor)
        for lang, cap in caps.items():
            splits[lang]["train"] = subsample(splits[lang]["train"], cap, seed, drops[lang])

    zs = {f"{x}-{y}": _multiway(splits[x]["test"], splits[y]["test"]) for x, y in zs_pairs}
    summary = _summary(codes, splits, drops, caps, catalogs, seed=seed, packages=packages,
                       options=dict(valid_fraction=valid_fraction, test_fraction=test_fraction,
                                    max_eval=max_eval, min_eval=min_eval, max_chars=max_chars,
                                    subsample_tiers=subsample_tiers, low_floor=low_floor))
    summary["zero_shot_test"] = {name: len(rows) for name, rows in zs.items()}
    _write_atomically(out_dir, splits, summary, zs)  # the files hold no timing: builds are byte-identical
    summary["build_seconds"] = round(time.perf_counter() - t0, 2)
    logger.info("built-in corpus: %d languages, %d pairs, %.1f s -> %s", len(codes),
                summary["totals"]["all"], summary["build_seconds"], out_dir)
    return summary


def _all_language_pairs(codes: list[str], catalogs: list[CatalogFile], max_chars: int,
                        progress: bool) -> tuple[dict[str, list[Pair]], dict[str, Counter]]:
    """({lang: pairs}, {lang: drop counts}) of every language, from CLDR, num2words and ``catalogs``."""
    by_lang: dict[str, list[CatalogFile]] = defaultdict(list)
    for cat in catalogs:
        by_lang[cat.lang].append(cat)
    en_phrases = cldr_phrases("en")
    en_phrases.update(num2words_phrases("en"))
    pairs: dict[str, list[Pair]] = {}
    drops: dict[str, Counter] = {}
    bar = tqdm(codes, desc="builtin corpus", unit="lang", disable=not progress)
    for lang in bar:
        bar.set_postfix_str(lang)
        pairs[lang], drops[lang] = language_pairs(lang, en_phrases, by_lang[lang], max_chars)
        logger.debug("%s: %d pairs from %d catalogs", lang, len(pairs[lang]), len(by_lang[lang]))
    _fresh_locale("en")  # leave babel's cache clean for whoever uses it next
    return pairs, drops


def split_pairs(pairs: list[Pair], seed: int, valid_fraction: float, test_fraction: float, max_eval: int,
                drops: Counter) -> dict[str, list[Pair]]:
    """{split: pairs} of one language: item-disjoint splits by a stable hash of the English text,
    each ordered by that hash; valid/test keep their first ``max_eval`` (the rest is dropped,
    counted in ``drops["eval_overflow"]``, never moved to train)."""
    parts: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    for p in pairs:
        parts[assign_split(p.en, seed, valid_fraction, test_fraction)].append(p)
    for s in SPLITS:
        parts[s].sort(key=lambda p: (stable_hash(p.en, seed), p.en))
    for s in ("valid", "test"):
        if len(parts[s]) > max_eval:
            drops["eval_overflow"] += len(parts[s]) - max_eval
            parts[s] = parts[s][:max_eval]
    return parts


def subsample(train: list[Pair], cap: int | None, seed: int, drops: Counter) -> list[Pair]:
    """The ``cap`` pairs of ``train`` with the smallest subsample hash, in their order (all when
    ``cap`` is None or not exceeded); the rest counted in ``drops["tier_subsample"]``."""
    if cap is None or len(train) <= cap:
        return train
    keep = sorted(train, key=lambda p: (stable_hash(p.en, seed, "subsample"), p.en))
    keep = set(id(p) for p in keep[:cap])
    drops["tier_subsample"] += len(train) - cap
    return [p for p in train if id(p) in keep]


def _zero_shot_pairs(zero_shot, codes: list[str]) -> list[tuple[str, str]]:
    """Parse ``zero_shot`` ("all", "de-fr,fr-ru" or a list of "x-y") against the chosen languages."""
    if zero_shot is None:
        return []
    items = zero_shot.split(",") if isinstance(zero_shot, str) else list(zero_shot)
    if [i.strip() for i in items] == ["all"]:
        return [(x, y) for i, x in enumerate(codes) for y in codes[i + 1:]]
    out = []
    for item in items:
        x, sep, y = str(item).strip().partition("-")
        if not sep or x == y or x not in codes or y not in codes:
            raise ValueError(f"zero_shot: {item!r} is not a pair x-y of two chosen languages {codes}")
        if (x, y) not in out and (y, x) not in out:
            out.append((x, y))
    return out


def _multiway(xs: list[Pair], ys: list[Pair]) -> list[tuple[str, str, str, str]]:
    """(x text, y text, kind, origin) for the English items both test sets hold, in x's order."""
    by_en = {p.en: p for p in ys}
    return [(p.xx, by_en[p.en].xx, p.kind, p.origin) for p in xs if p.en in by_en]


def _summary(codes, splits, drops, caps, catalogs, *, seed, packages, options) -> dict:
    pairs_info = {}
    totals = Counter()
    for lang in codes:
        row = {"tier": LANGUAGES[lang].tier, "splits": {}, "dropped": dict(sorted(drops[lang].items())),
               "catalog_folders": sorted({f"{c.package}:{c.folder}" for c in catalogs
                                          if c.lang == lang}),
               "train_cap": caps.get(lang),
               "identical_to_english": sum(p.en == p.xx for s in SPLITS for p in splits[lang][s])}
        for s in SPLITS:
            kinds = Counter(p.kind for p in splits[lang][s])
            origins = Counter(p.origin for p in splits[lang][s])
            row["splits"][s] = {"phrase": kinds["phrase"], "sentence": kinds["sentence"],
                                "total": len(splits[lang][s]), "origins": dict(sorted(origins.items()))}
            totals[s] += len(splits[lang][s])
            totals["all"] += len(splits[lang][s])
        pairs_info[f"en-{lang}"] = row
    return {
        "generator": GENERATOR,
        "babel_version": babel.__version__,
        "langs": list(codes),
        "seed": seed,
        "gettext_packages": packages,
        "gettext_package_versions": package_versions(packages),
        "options": options,
        "convention": "one en-xx pair of files per language serves en->xx as is and xx->en "
                      "read in reverse",
        "pairs": pairs_info,
        "totals": dict(totals),
    }


def summary_table(summary: dict) -> str:
    """Markdown table: one row per language pair (= both directions)."""
    head = ("| pair | tier | train | train phrase | train sentence | valid | valid phrase | "
            "valid sentence | test | test phrase | test sentence |")
    lines = [head, "|" + "---|" * 11]
    for name, row in summary["pairs"].items():
        sp = row["splits"]
        cells = [name.replace("-", "↔"), row["tier"]]
        for s in SPLITS:
            cells += [str(sp[s]["total"]), str(sp[s]["phrase"]), str(sp[s]["sentence"])]
        lines.append("| " + " | ".join(cells) + " |")
    t = summary["totals"]
    lines.append(f"\nTotal pairs: {t.get('all', 0)} (train {t.get('train', 0)}, "
                 f"valid {t.get('valid', 0)}, test {t.get('test', 0)}); each pair serves "
                 f"both directions.")
    return "\n".join(lines) + "\n"


_README = """# Built-in offline corpus (neuronspec)

English <-> {n} EC30 languages ({langs}), built by `{gen}` from data installed
packages ship: Unicode CLDR (babel {babel}) and num2words for *phrases*, the gettext
catalogs of {packages} for *sentences*. Real human translations; nothing invented.

## Layout
- `{{split}}.en-{{xx}}.en` and `{{split}}.en-{{xx}}.{{xx}}`: aligned, one pair a line,
  `split` in train, valid, test.
- **Directions**: each en-xx file pair serves *both* en->xx and xx->en (read in
  reverse for xx->en). There are no `*.xx-en.*` files.
- `sources.{{split}}.en-{{xx}}`: `phrase` or `sentence` for each line (report them separately).
- `origins.{{split}}.en-{{xx}}`: finer origin per line (`cldr:territory`, `cldr:date`,
  `cldr:unit`, `num2words:cardinal`, `gettext:django`, ...).
- `summary.md` / `summary.json`: pairs per split, kind and tier; drop reasons.

## Language choices
`pt` is Brazilian Portuguese (CLDR `pt`, gettext `pt_BR` only); `sr` is Serbian in
Cyrillic (CLDR `sr`, gettext `sr`/`sr_RS`, never `sr_Latn`/`sr@latin`); `sd` is Sindhi
in Arabic script. Regional variants with other spellings (`de_CH`, `fr_CA`, `es_AR`,
...) are not used. Gettext folders read per language are listed in `summary.json`.

## How splits are made
An English item goes to valid if h < {vf}, to test if h < {vf} + {tf}, else train,
where h = blake2b(seed, English text) in [0, 1) (seed = {seed}). The same English item
is in the same split for every language and both directions. A direction keeps at most
{max_eval} valid/test lines (smallest h first); the rest of those bands is dropped, never
moved to train. {subsample}

## Cleaning
Lines are stripped and line breaks inside a message become one space; no Unicode
normalisation (U+202F, U+200F etc. are kept). Pairs with an empty side or a side
longer than {max_chars} characters are dropped. Gettext messages are kept only if their
placeholders (`%(name)s`, `%s`, `{{0}}`, `{{name}}`) and markup tags match on both sides;
they are kept verbatim here (`neuronspec data prepare` turns them into protected slot
tokens). One translation per English text and one English text per
translation (first met wins, phrases before sentences).
"""


def _readme(summary: dict) -> str:
    o = summary["options"]
    sub = ("Training pairs were subsampled per tier (medium <= 1/5 and low <= 1/50 of the "
           f"high-tier median, low floor {o['low_floor']})." if o["subsample_tiers"]
           else "No tier subsampling.")
    text = _README.format(n=len(summary["langs"]), langs=" ".join(summary["langs"]),
                          gen=GENERATOR, babel=summary["babel_version"],
                          packages=", ".join(summary["gettext_packages"]) or "no packages",
                          vf=o["valid_fraction"], tf=o["test_fraction"], seed=summary["seed"],
                          max_eval=o["max_eval"], subsample=sub, max_chars=o["max_chars"])
    zs = summary.get("zero_shot_test") or {}
    if zs:
        text += ("\n## Zero-shot test pairs\n`test.x-y.*` hold the test items whose English text both "
                 "languages translate (multi-way parallel through the same English item; never trained): "
                 + ", ".join(f"{k} ({v} lines)" for k, v in zs.items()) + ".\n")
    return text


# the names _write_atomically writes (a rebuild replaces the folder: anything else would be lost)
_OURS = re.compile(r"(train|valid|test)\.[\w-]+\.[\w-]+|(sources|origins)\.(train|valid|test)\.[\w-]+|"
                   r"summary\.(json|md)|README\.md")


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"out_dir: {out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not _is_ours(out_dir):
            raise ValueError(f"out_dir: {out_dir} is a non-empty folder not written by "
                             f"{GENERATOR}; refusing to replace it")
        added = sorted(p.name for p in out_dir.iterdir() if not _OURS.fullmatch(p.name))
        if added:
            raise ValueError(f"out_dir: {out_dir} holds files the built-in corpus does not write "
                             f"({', '.join(added[:3])}{', ...' if len(added) > 3 else ''}); a rebuild replaces the "
                             "folder: move them or choose another --out")


def _is_ours(folder: Path) -> bool:
    try:
        return json.loads((folder / "summary.json").read_text("utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _write_lines(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            if len(line.splitlines()) != 1:
                raise ValueError(f"internal: line for {path.name} is not one line: {line!r}")
            f.write(line + "\n")


def _write_atomically(out_dir: Path, splits: dict, summary: dict, zero_shot: dict | None = None) -> None:
    """Write everything into a temp folder next to ``out_dir``, then swap it in."""
    remove_stale_temp_folders(out_dir)
    tmp = temp_folder(out_dir)
    try:
        for lang, parts in splits.items():
            for s in SPLITS:
                stem = f"{s}.en-{lang}"
                _write_lines(tmp / f"{stem}.en", [p.en for p in parts[s]])
                _write_lines(tmp / f"{stem}.{lang}", [p.xx for p in parts[s]])
                _write_lines(tmp / f"sources.{stem}", [p.kind for p in parts[s]])
                _write_lines(tmp / f"origins.{stem}", [p.origin for p in parts[s]])
        for name, rows in (zero_shot or {}).items():
            x, y = name.split("-")
            for i, suffix in enumerate((f"test.{name}.{x}", f"test.{name}.{y}", f"sources.test.{name}",
                                        f"origins.test.{name}")):
                _write_lines(tmp / suffix, [r[i] for r in rows])
        (tmp / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1,
                                                     default=str) + "\n", encoding="utf-8")
        (tmp / "summary.md").write_text("# Built-in corpus summary\n\n" + summary_table(summary),
                                        encoding="utf-8")
        (tmp / "README.md").write_text(_readme(summary), encoding="utf-8")
        os.chmod(tmp, 0o755)
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
