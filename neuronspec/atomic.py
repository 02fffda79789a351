"""Atomic file writes: a temporary file beside the target, renamed over it once complete, so a
crash or a full disk never leaves a half-written checkpoint, mask file, table or plot."""
from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

log = logging.getLogger(__name__)


@contextmanager
def atomic_file(path: str | os.PathLike, fsync: bool = False) -> Iterator[io.BufferedWriter]:
    """Yield a binary file open beside `path` (its folder is created); on normal exit it is
    renamed over `path` with the permissions of a plain new file, on an error deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # see _temp_name
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_folder(built: Path, final: Path) -> None:
    """Move the finished folder `built` to `final` (a sibling); a folder already at `final` is
    moved aside first and removed only after the swap, so a failure never leaves neither."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.rmdir(old)
        os.replace(final, old)
    os.replace(built, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def built_folder(final: str | os.PathLike, make: Callable[[Path], Path] | None = None) -> Iterator[Path]:
    """Yield an empty folder beside `final` (made by `make(final)`, default a hidden
    ``.{name}.build-*``) to build a multi-file output in; on normal exit it replaces `final`
    whole (replace_folder), on an error it is deleted and `final` is kept as it was, so no
    reader ever sees old and new files mixed. A SIGKILL leaves only the hidden folder."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    built = make(final) if make else Path(tempfile.mkdtemp(prefix=f".{final.name}.build-", dir=final.parent))
    try:
        yield built
        replace_folder(built, final)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise


def write_set(folder: str | os.PathLike, files: dict[str, str | bytes]) -> None:
    """Write `files` ({name: contents}) into `folder`, each atomically, the last one last: every
    old file of the set is removed first, so an interrupted write leaves only new files (the
    last name present means the set is whole), never old ones beside new."""
    folder = Path(folder)
    for name in reversed(list(files)):
        (folder / name).unlink(missing_ok=True)
    for name, data in files.items():
        write_atomic(folder / name, data)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` (str as UTF-8) to `path` atomically."""
    with atomic_file(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def save_figure_atomic(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """fig.savefig as PNG to `path` atomically."""
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")


def strict_json(obj, indent: int = 2, default=None) -> str:
    """JSON text of `obj` with NaN and ±inf written as null (json.dumps would write the bare
    NaN / Infinity tokens, which strict JSON readers reject); `default` as in json.dumps."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), indent=indent, ensure_ascii=False, allow_nan=False, default=default)


def _temp_name(name: str) -> re.Pattern:
    """The names atomic_file's temporary files for `name` get (mkstemp: 8 random characters)."""
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp")


def remove_stale_temps(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files atomic_file left in `folder` for the files `names` (a write
    killed mid-way); call only while no other process writes those files. Returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = [_temp_name(n) for n in names]
    stale = [p for p in folder.iterdir() if any(r.fullmatch(p.name) for r in patterns) and p.is_file()]
    for p in stale:
        log.info("removing %s (left by an interrupted save)", p)
        p.unlink(missing_ok=True)
    return stale


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(path: str | os.PathLike, what: str) -> None:
    """ValueError naming `what` unless `path` is (or can be created as) a folder we may write in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what}: {path} is a file, expected a folder")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise ValueError(f"{what}: cannot create {path}: {base} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: {base} is not writable" + ("" if base == path else f" (to create {path})"))


def check_writable_file(path: str | os.PathLike, what: str) -> None:
    """ValueError naming `what` unless a file may be written (atomically) at `path`."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a folder, expected a file name")
    check_writable_folder(path.parent, what)


def check_free_space(folder: str | os.PathLike, nbytes: int, what: str, purpose: str) -> None:
    """ValueError naming `what` if the file system of `folder` has less than `nbytes` free."""
    free = shutil.disk_usage(_existing_ancestor(Path(folder))).free
    if free < nbytes:
        raise ValueError(f"{what}: {folder} has {free / 2**20:.1f} MiB free, {purpose} needs about "
                         f"{nbytes / 2**20:.1f} MiB")
