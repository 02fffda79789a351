"""Files neuronspec writes (checkpoints, counts, masks): one ``torch.save`` dict each, written
atomically with a checksum and loaded safely (docs/design.md §5, §7).

Every file holds ``"sha256"``: the digest of its contents (tensor bytes, dtypes and shapes,
every other value's repr, in order), checked on load; files written before checksums load with
a debug log. Loading is ``torch.load(weights_only=True)``: no arbitrary pickle is executed. An
empty, truncated, foreign, random or damaged file is a ValueError naming the file and what is
wrong; a failed write (disk full, unwritable folder) an OSError naming the path, with the
previous file kept.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from neuronspec.atomic import atomic_file

log = logging.getLogger(__name__)

CHECKSUM = "sha256"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container


def digest(state: Mapping[str, Any]) -> str:
    """sha256 of a file's contents without its checksum entry (see the module docstring)."""
    h = hashlib.sha256()

    def feed(v):
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(v, Mapping):
            h.update(b"{")
            for k, x in v.items():
                h.update(repr(k).encode())
                feed(x)
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[")
            for x in v:
                feed(x)
            h.update(b"]")
        else:
            h.update(repr(v).encode())

    feed({k: v for k, v in state.items() if k != CHECKSUM})
    return h.hexdigest()


def save_file(state: Mapping[str, Any], path: str | os.PathLike, what: str = "file", fsync: bool = False) -> Path:
    """torch.save ``state`` plus its checksum to ``path`` atomically. A failed write (no space,
    no permission) raises OSError naming the path; the file already there is kept."""
    path = Path(path)
    state = {k: v for k, v in state.items() if k != CHECKSUM}
    state[CHECKSUM] = digest(state)
    try:
        with atomic_file(path, fsync=fsync) as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:
        cause = e if isinstance(e, OSError) else e.__context__  # torch reports a failed write as RuntimeError
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(e).splitlines()[0]
        kept = " (the previous file is kept)" if path.is_file() else ""
        raise OSError(getattr(cause, "errno", None), f"{what}: could not write {path}: {reason}{kept}") from None
    return path


def load_file(path: str | os.PathLike, what: str = "file", map_location: str | torch.device = "cpu") -> dict:
    """``torch.load(weights_only=True)`` of a dict written by :func:`save_file`, its checksum
    verified; ValueError naming the file and what is wrong otherwise."""
    name = os.fspath(path)
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{what}: {name} is a folder, expected a file")
    if not p.is_file():
        raise ValueError(f"{what}: no such file {name!r}")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ValueError(f"{what}: cannot read {name} ({e.strerror})") from None
    if not head:
        raise ValueError(f"{what}: {name} is empty (0 bytes)")
    if head != _ZIP_MAGIC:
        raise ValueError(f"{what}: {name} is not a torch file (random or foreign bytes)")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # its message advises weights_only=False: never repeated
        raise ValueError(f"{what}: {name} was not written by neuronspec: it holds Python objects other than "
                         "tensors and plain values (refused, not unpickled)") from None
    except (RuntimeError, EOFError, ValueError, KeyError, UnicodeDecodeError, OSError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        reason = reason.splitlines()[0].split(". This is an internal")[0]
        raise ValueError(f"{what}: {name} is truncated or damaged ({reason})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{what}: {name} was not written by neuronspec (holds a {type(state).__name__}, "
                         "expected a dict)")
    if CHECKSUM not in state:
        log.debug("%s: %s has no checksum (written before checksums): not verified", what, name)
    elif state[CHECKSUM] != digest(state):
        raise ValueError(f"{what}: {name} is damaged: its contents do not match the checksum stored in it")
    return state


# --------------------------------------------------------------------------- outputs vs inputs
# What a file holds, told by its contents (never by its name): the kinds neuronspec writes, and
# the rest. A text file cannot be told apart from a corpus file, so text is never replaced silently.
KINDS = ("checkpoint", "counts", "masks", "torch file", "text", "binary")
_FORMATS = {"neuronspec-counts": "counts", "neuronspec-masks": "masks"}
_NAMES = {"checkpoint": "a checkpoint", "counts": "a counts file", "masks": "a masks file",
          "torch file": "a torch file", "text": "text (e.g. a corpus file)", "binary": "binary data"}


def file_kind(path: str | os.PathLike) -> str | None:
    """What the existing file at `path` holds (one of KINDS; "empty", "folder", "stream" for a
    pipe or device), or None when nothing is there. Reads a torch file's keys only (mmap)."""
    p = Path(path)
    if not os.path.lexists(p):
        return None
    if p.is_dir():
        return "folder"
    if not p.is_file():
        return "stream"
    with open(p, "rb") as f:
        head = f.read(1 << 16)
    if not head:
        return "empty"
    if head[:4] == _ZIP_MAGIC:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # damaged or foreign: still not text we may replace
            return "torch file"
        if isinstance(state, dict) and state.get("format") in _FORMATS:
            return _FORMATS[state["format"]]
        if isinstance(state, dict) and "model" in state and "model_config" in state:
            return "checkpoint"
        return "torch file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut by the 64 KiB read
            return "binary"
    return "text"


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` are one file or folder (hard links, symbolic links, ``..`` and
    relative paths resolved); two paths that do not exist are compared resolved."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_output_file(path: str | os.PathLike, what: str, inputs: Iterable[str | os.PathLike | None] = (), *,
                      kind: str, overwrite: bool = False, owned: Callable[[Path], bool] | None = None) -> None:
    """ValueError naming `what` unless a `kind` file (one of KINDS) may be written at `path`:
    never over one of `inputs` or a file inside an input folder (the same file by content:
    links and relative paths resolved), whatever `overwrite` says; over an existing file of
    another kind, or over text (a translation cannot be told from a corpus file) unless
    `owned` recognises it as this command's, only with `overwrite`. A pipe or device is
    written through. Also checks that the folder is writable."""
    from neuronspec.atomic import check_writable_file

    for src in inputs:
        if src is None or not os.path.lexists(src):
            continue
        if same_file(path, src):
            raise ValueError(f"{what}: {os.fspath(path)} is the input {os.fspath(src)}; writing it would destroy "
                             "what is being read: choose another path")
        if os.path.isdir(src) and os.path.lexists(path) and _inside(Path(path), Path(src)):
            raise ValueError(f"{what}: {os.fspath(path)} is a file of the input folder {os.fspath(src)}; "
                             "choose another path")
    found = file_kind(path)
    if found == "stream":
        return
    check_writable_file(path, what)
    if found in (None, "empty") or overwrite or (found == kind and (kind != "text" or (owned and owned(Path(path))))):
        return
    raise ValueError(f"{what}: {os.fspath(path)} already holds {_NAMES[found]}; pass --overwrite to replace it "
                     f"with {_NAMES[kind] if kind != 'text' else 'this output'}, or choose another path")


def check_output_folder(path: str | os.PathLike, what: str, inputs: Iterable[str | os.PathLike | None] = (), *,
                        owned: Callable[[Path], bool], command: str, overwrite: bool = False) -> None:
    """ValueError naming `what` unless the folder `path` may be replaced whole by `command`'s
    output: never when it is, or holds, one of `inputs`; when it exists with files `owned`
    does not recognise as `command`'s output, only with `overwrite`. Also checks writability."""
    from neuronspec.atomic import check_writable_folder

    out = Path(path)
    check_writable_folder(out, what)
    for src in inputs:
        if src is not None and os.path.lexists(src) and _inside(Path(src), out):
            raise ValueError(f"{what}: {out} holds the input {os.fspath(src)}; {command} replaces its output "
                             "folder whole: choose another folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite and not owned(out):
        raise ValueError(f"{what}: {out} holds files `{command}` did not write; pass --overwrite to replace the "
                         "folder, or choose another")


# --------------------------------------------------------------------------- text lines
def text_lines(text: str, crlf: bool = True) -> list[str]:
    """The lines of `text` by the one rule used wherever a line is a sentence: split on ``\\n``
    only (a final ``\\n`` ends the last line; with `crlf`, ``\\r\\n`` is one ending); a lone
    ``\\r``, form feed, U+0085 or U+2028 stays inside its line. ``crlf=False`` reads back
    exactly what :func:`lines_text` wrote."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [s[:-1] if crlf and s.endswith("\r") else s for s in lines]


def lines_text(lines: Iterable[str]) -> str:
    """`lines` as text, one ``\\n`` after each; a ``\\n`` inside a line becomes a space, so the
    text has exactly one line per item (read back by :func:`text_lines`)."""
    return "".join(s.replace("\n", " ") + "\n" for s in lines)
