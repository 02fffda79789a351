"""The output folder of an export, which is replaced as a whole: it must be new, empty, or an
earlier export (holding ``marker``), and must not hold the export's inputs."""
from __future__ import annotations

import os
from pathlib import Path

from ..atomic import check_writable_folder


def check_out(out: str | os.PathLike, marker: str, inputs) -> Path:
    """``out`` as a Path; ValueError naming --out if replacing it could destroy other files."""
    out = Path(out)
    check_writable_folder(out, "out")
    root = out.resolve()
    for path in inputs:
        if path is not None and (root == Path(path).resolve() or root in Path(path).resolve().parents):
            raise ValueError(f"out: {out} holds the input {os.fspath(path)}; export to another folder")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise ValueError(f"out: {out} is a folder with other files (no {marker}); an export replaces its folder "
                         "as a whole, so give a new or empty folder")
    return out
