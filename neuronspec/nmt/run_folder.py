"""A training run's output folder: never overwrite a run by accident, one writer at a time.

- `check_run_folder`: a fresh run refuses a folder that already holds a run (a checkpoint)
  unless told to overwrite it, and a continued run refuses to write into the folder of the
  checkpoint it starts from (which would replace its source).
- `run_lock`: OUT/.lock holds the writer's pid and host while a run writes there (created
  with O_EXCL); a second run is refused. A lock whose process is gone (same host) is stale and
  is taken over with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

LOCK = ".lock"
LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"
RUN_FILES = (LAST, BEST)  # a folder holding one of them holds a run
ERROR_FILE = "train_error.txt"  # what made a started run fail (it keeps its folder and train.log)
# files a run writes into its folder (their stale temporary files are removed when a run starts)
RUN_OUTPUTS = (LAST, BEST, "train_summary.json", "valid_chrf.json", "valid_chrf.md", ERROR_FILE)


def check_run_folder(out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
                     init_from: str | os.PathLike | None = None) -> None:
    """Raise ValueError (naming --out) unless `out` may receive this run."""
    out = Path(out)
    if init_from is not None and Path(init_from).resolve().parent == out.resolve():
        raise ValueError(f"out: {out} is the folder of the checkpoint this run starts from ({init_from}); "
                         "writing there would replace it: choose another --out")
    held = [f for f in RUN_FILES if (out / f).is_file()]
    if held and not resume and not overwrite:
        raise ValueError(f"out: {out} already holds a run ({held[0]}); continue it with --resume, replace it "
                         "with --overwrite, or choose another --out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def run_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold OUT/.lock while the body runs (see module docstring)."""
    path = Path(out) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                owner = {}
            if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                log.warning("%s: stale lock of pid %d (no such process): taken over", path, owner["pid"])
                path.unlink(missing_ok=True)
                continue
            raise ValueError(f"out: {path.parent} is in use by another run (pid {owner.get('pid', '?')} on "
                             f"{owner.get('host', '?')}; {path}); wait for it or choose another --out") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
