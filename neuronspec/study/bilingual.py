"""Bilingual baselines (the paper's interference table) and one-direction data.

A *direction view* of a prepared folder is a folder of symbolic links to its files with a
meta.json that lists one training direction: the trainer then samples only that direction (task
id 0), with the same tokenizer and token arrays. LaSS fine-tunes the baseline on such views;
a bilingual model is trained on one from scratch with the baseline's preset and budget rules
(validation-loss plateau, the same patience, its own step and time caps).

Default directions: the two highest- and the two lowest-resource languages of the run (by
training pairs), both ways.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from neuronspec.atomic import strict_json, write_atomic
from neuronspec.data.corpus import META_FILE, PreparedData


def direction_view(prep: str | os.PathLike, direction: str, out: str | os.PathLike) -> Path:
    """Folder ``out`` (created or refreshed): ``prep`` with ``direction`` as its only training direction."""
    prep, out = Path(prep).resolve(), Path(out)
    meta = json.loads((prep / META_FILE).read_text(encoding="utf-8"))
    pair = direction.split("-", 1)
    if pair not in [list(d) for d in meta["directions"]]:
        raise ValueError(f"direction: {direction} is not a training direction of {prep}")
    out.mkdir(parents=True, exist_ok=True)
    for f in prep.iterdir():
        link = out / f.name
        if f.name != META_FILE and not link.is_symlink():
            link.symlink_to(f)
    write_atomic(out / META_FILE, strict_json({**meta, "directions": [pair]}, indent=1))
    return out


def default_directions(prep: PreparedData, n: int = 2) -> list[str]:
    """Both directions of the ``n`` languages with the most and the ``n`` with the fewest training
    pairs (all languages when there are at most 2n)."""
    pivot = prep.pivot
    langs = sorted({x for d in prep.directions for x in d if x != pivot},
                   key=lambda x: (-prep.num_examples("train", (pivot, x)), x))
    chosen = langs if len(langs) <= 2 * n else langs[:n] + langs[-n:]
    return [f"{a}-{b}" for x in chosen for a, b in ((pivot, x), (x, pivot))]


def parse_directions(text: str, prep: PreparedData) -> list[str]:
    """``--bilingual``: '' → default_directions, else a comma list of training directions."""
    if not text:
        return default_directions(prep)
    names = ["-".join(d) for d in prep.directions]
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in chosen if x not in names]
    if bad or not chosen:
        raise ValueError(f"--bilingual: {bad or text!r} not among the training directions ({', '.join(names)})")
    return chosen
