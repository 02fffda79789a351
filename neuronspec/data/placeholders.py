"""Placeholders of software messages (``%(name)s``, ``%s``, ``{0}``, ``<a href=...>``) as
protected tokens.

A translation must reproduce a message's placeholders verbatim; spelled out in
sentencepiece pieces, ``%(date_field_label)s`` is six tokens the model has to learn to copy.
``protect`` replaces every distinct placeholder of a line by a slot piece ``<ph1>`` ...
``<ph{SLOTS}>`` and ``restore`` puts them back into a translation, given its source.

Slots are numbered by the *sorted text* of the distinct placeholders, not by position, so a
source and a translation that hold the same placeholders in another order get the same
slots without looking at each other (both sides of a pair are encoded independently), and a
hypothesis is restored from its source alone. A line with more than ``SLOTS`` distinct
placeholders keeps the ones beyond the last slot as plain text.

With ``code=True``, code identifiers that translations keep verbatim (``source_suffix``,
``conf.py``, ``get_absolute_url()``, ``:widths:``, ``--full``; see ``CODE``) get slots of
their own, ``<id1>`` ... ``<id{SLOTS}>``, numbered the same way but independently of the
placeholders', so a translator who translated an identifier (about 1 % of the built-in
corpus's) shifts no placeholder slot.
"""
from __future__ import annotations

import re
from collections import Counter

# printf conversions (Python %-formatting; no space flag, so prose such as "50% of" is not
# a placeholder), str.format fields, and markup tags.
PRINTF = re.compile(r"%(?:\([^()]*\))?[#0+\-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[diouxXeEfFgGcrsa%]")
BRACE = re.compile(r"\{[^{}\s]*\}")
TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)\b[^<>]*>")
_ANY = re.compile("|".join(f"(?:{p.pattern})" for p in (TAG, PRINTF, BRACE)))

# Code identifiers (ASCII): options (-v, --full), reST roles/options (:widths:), and names
# that contain an underscore (crossref_type, __all__), a dot between parts of two or more
# characters (conf.py, theme.inherit; not "e.g") or end in a call (setup()). Camel case is
# not one: translators transliterate or translate JavaScript, LogEntry, ManagementForm.
CODE = re.compile(r"(?<![\w%.:-])(?:--?[A-Za-z][A-Za-z0-9_-]*|:[a-z][a-z0-9_-]*:"
                  r"|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*(?:\(\))?)(?![\w(])")

SLOTS = 9
SLOT_PIECES = [f"<ph{i}>" for i in range(1, SLOTS + 1)]
CODE_PIECES = [f"<id{i}>" for i in range(1, SLOTS + 1)]
_SLOT = re.compile(r"<(ph|id)([1-9])>")


def placeholders(text: str) -> Counter:
    """Multiset of placeholders (``%(name)s``, ``%s``, ``%%``, ``{0}``, ``{name}``) and
    markup tag names (``<a ...>`` -> ``<a>``, ``</a>``) in a message."""
    found = Counter(PRINTF.findall(text))
    found.update(BRACE.findall(text))
    found.update(f"<{slash}{name.lower()}>" for slash, name in TAG.findall(text))
    return found


def strip_placeholders(text: str) -> str:
    """``text`` without its placeholders and tags."""
    return _ANY.sub("", text)


def _is_code(name: str) -> bool:
    if name[0] in "-:" or name.endswith("()"):
        return True
    parts = name.split(".")
    return "_" in name.strip("_") or name.startswith("__") or (len(parts) > 1 and min(map(len, parts)) >= 2)


def _spans(text: str, code: bool) -> list[tuple[int, int, str, bool]]:
    """(start, end, text, is_code) of the placeholders and (``code``) code identifiers of
    ``text``, in order; an identifier never overlaps a placeholder (``%(field_name)s``)."""
    spans = [(m.start(), m.end(), m.group(0), False) for m in _ANY.finditer(text)]
    if code:
        taken = [(a, b) for a, b, _, _ in spans]
        spans += [(m.start(), m.end(), m.group(0), True) for m in CODE.finditer(text)
                  if _is_code(m.group(0)) and not any(a < m.end() and m.start() < b for a, b in taken)]
        spans.sort()
    return spans


def _values(spans: list[tuple[int, int, str, bool]], is_code: bool) -> list[str]:
    """The sorted distinct texts of one kind of ``spans`` that get slots (at most ``SLOTS``)."""
    return sorted({v for _, _, v, c in spans if c == is_code})[:SLOTS]


def slot_values(text: str) -> list[str]:
    """The placeholder texts that get slots 1, 2, ... in ``text`` (sorted, distinct, at most
    ``SLOTS``)."""
    return _values(_spans(text, False), False)


def code_values(text: str) -> list[str]:
    """The code identifiers that get slots ``<id1>``, ``<id2>``, ... in ``text`` (sorted,
    distinct, at most ``SLOTS``)."""
    return _values(_spans(text, True), True)


def protect(text: str, code: bool = False) -> str:
    """``text`` with each distinct placeholder replaced by its slot piece ``<phK>`` and, with
    ``code``, each distinct code identifier by ``<idK>``."""
    spans = _spans(text, code)
    if not spans:
        return text
    slots = {(v, c): pieces[k] for c, pieces in ((False, SLOT_PIECES), (True, CODE_PIECES))
             for k, v in enumerate(_values(spans, c))}
    out, pos = [], 0
    for a, b, v, is_code in spans:
        out += [text[pos:a], slots.get((v, is_code), v)]
        pos = b
    return "".join(out) + text[pos:]


def restore(translation: str, source: str) -> str:
    """``translation`` with each ``<phK>`` (``<idK>``) replaced by the placeholder (code
    identifier) that has slot K in ``source``; a slot the source does not have is dropped."""
    spans = _spans(source, True)  # placeholders are the same with or without identifiers
    values = {"ph": _values(spans, False), "id": _values(spans, True)}

    def fill(m: re.Match) -> str:
        vals, k = values[m.group(1)], int(m.group(2))
        return vals[k - 1] if k <= len(vals) else ""

    return _SLOT.sub(fill, translation)
