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

SLOTS = 9
SLOT_PIECES = [f"<ph{i}>" for i in range(1, SLOTS + 1)]
_SLOT = re.compile(r"<ph([1-9])>")


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


def slot_values(text: str) -> list[str]:
    """The placeholder texts that get slots 1, 2, ... in ``text`` (sorted, distinct, at most
    ``SLOTS``)."""
    return sorted({m.group(0) for m in _ANY.finditer(text)})[:SLOTS]


def protect(text: str) -> str:
    """``text`` with each distinct placeholder replaced by its slot piece ``<phK>``."""
    slots = {v: SLOT_PIECES[k] for k, v in enumerate(slot_values(text))}
    if not slots:
        return text
    return _ANY.sub(lambda m: slots.get(m.group(0), m.group(0)), text)


def restore(translation: str, source: str) -> str:
    """``translation`` with each ``<phK>`` replaced by the placeholder that has slot K in
    ``source``; a slot the source does not have is dropped."""
    values = slot_values(source)
    return _SLOT.sub(lambda m: values[int(m.group(1)) - 1] if int(m.group(1)) <= len(values) else "", translation)
