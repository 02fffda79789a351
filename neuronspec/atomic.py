"""Atomic file writes: a temporary file beside the target, renamed over it once complete, so a
crash or a full disk never leaves a half-written checkpoint, mask file, table or plot."""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_file(path: str | os.PathLike, fsync: bool = False) -> Iterator[io.BufferedWriter]:
    """Yield a binary file open beside `path` (its folder is created); on normal exit it is
    renamed over `path` with the permissions of a plain new file, on an error deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` (str as UTF-8) to `path` atomically."""
    with atomic_file(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def save_figure_atomic(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """fig.savefig as PNG to `path` atomically."""
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")


def strict_json(obj) -> str:
    """JSON text of `obj` with NaN and ±inf written as null (json.dumps would write the bare
    NaN / Infinity tokens, which strict JSON readers reject)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), indent=2, ensure_ascii=False, allow_nan=False)
