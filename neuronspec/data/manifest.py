"""Checksums of the files of a prepared folder, and the temporary folders that corpus builders
and ``data prepare`` swap in (docs/design.md §5, §7).

- ``file_entry`` / ``check_entry``: ``{"bytes": n, "sha256": hex}`` of a file's contents, as
  meta.json's ``"files"`` manifest stores them, and the check of contents against one.
- ``temp_folder``: a folder ``.NAME.tmp-HOST-PID-XXXXXXXX`` beside ``final`` to build into;
  ``remove_stale_temp_folders``: the ones whose process (on this host) is gone, i.e. left by a
  build killed with SIGKILL, are deleted; a build still running keeps its folder.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

_CHUNK = 1 << 22


def sha256_of(f: BinaryIO) -> tuple[int, str]:
    """(bytes, sha256 hex) of an open binary file's whole contents (read from its start)."""
    f.seek(0)
    h, n = hashlib.sha256(), 0
    while buf := f.read(_CHUNK):
        h.update(buf)
        n += len(buf)
    return n, h.hexdigest()


def file_entry(path: str | os.PathLike) -> dict:
    """The manifest entry of the file at ``path``: ``{"bytes": n, "sha256": hex}``."""
    with open(path, "rb") as f:
        n, digest = sha256_of(f)
    return {"bytes": n, "sha256": digest}


def check_entry(name: str, entry: dict | None, nbytes: int, digest: str | None) -> None:
    """ValueError naming the file ``name`` unless its size (and ``digest`` when given) match
    the manifest ``entry`` (None: a folder prepared before manifests, not checked)."""
    if entry is None:
        return
    if nbytes != entry["bytes"]:
        raise ValueError(f"prepared folder: {name} has {nbytes} bytes, its meta.json says {entry['bytes']} "
                         "(truncated, replaced or re-prepared while in use); run `neuronspec data prepare` again")
    if digest is not None and digest != entry["sha256"]:
        raise ValueError(f"prepared folder: {name} does not match the checksum in its meta.json (damaged, "
                         "swapped with another file or re-prepared while in use); run `neuronspec data prepare` again")


# ------------------------------------------------------------------ temporary folders
def _prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def temp_folder(final: str | os.PathLike) -> Path:
    """A new empty folder beside ``final`` named for this host and process (see module docstring)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())
    return Path(tempfile.mkdtemp(prefix=f"{_prefix(final)}{host}-{os.getpid()}-", dir=final.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_folders(final: str | os.PathLike) -> list[Path]:
    """Delete the temporary folders beside ``final`` whose builder (same host) has exited; a
    folder of another host, or of an older version (no pid in its name), is kept. Returns them."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())
    pattern = re.compile(re.escape(_prefix(final)) + re.escape(host) + r"-(\d+)-[A-Za-z0-9_]{8}")
    stale = []
    for p in final.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_dir() and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            log.warning("removing %s (left by a build that was killed)", p)
            shutil.rmtree(p, ignore_errors=True)
            stale.append(p)
    return stale
