"""The study's run folders: one folder a step (a trained arm, an evaluation, a set of masks), done
when its ``done.json`` exists (written atomically, last). A killed study continues where it
stopped: finished steps are read back, an unfinished step's folder is cleared and the step run
again. Wall time and peak memory of every step go to ``timings.json``.

Memory is the peak resident set size (RSS, /proc/self/statm, sampled every 20 ms by a thread)
minus the RSS at the step's start: what the step added to the process, tensors included
(tracemalloc would miss torch's allocations).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from neuronspec.atomic import strict_json, write_atomic

log = logging.getLogger(__name__)

DONE = "done.json"


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: Path, obj) -> None:
    write_atomic(path, strict_json(obj, indent=1))


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def measure(fn: Callable[[], Any], every: float = 0.02) -> tuple[Any, float, int]:
    """(fn(), wall seconds, peak RSS increase in bytes while it ran)."""
    start = rss_bytes()
    peak = [start]
    stop = threading.Event()

    def sample():
        while not stop.wait(every):
            peak[0] = max(peak[0], rss_bytes())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.monotonic()
    try:
        out = fn()
    finally:
        secs = time.monotonic() - t0
        stop.set()
        t.join()
    return out, secs, max(0, max(peak[0], rss_bytes()) - start)


def cuda_peak(fn: Callable[[], Any]) -> tuple[Any, int | None]:
    """(fn(), peak CUDA memory allocated above its value at the start, in bytes; None without CUDA)."""
    import torch
    if not torch.cuda.is_available():
        return fn(), None
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    return out, max(0, torch.cuda.max_memory_allocated() - start)


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


class Grid:
    """The study folder ``root``: ``step(name, fn)`` runs ``fn(folder)`` once (see module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.timings_path = self.root / "timings.json"
        self.timings: dict[str, dict] = read_json(self.timings_path) if self.timings_path.exists() else {}
        self.ran: list[str] = []  # steps this invocation ran (not read back)

    def folder(self, name: str) -> Path:
        return self.root / name

    def done(self, name: str) -> bool:
        return (self.folder(name) / DONE).is_file()

    def result(self, name: str) -> dict:
        return read_json(self.folder(name) / DONE)

    def step(self, name: str, fn: Callable[[Path], dict | None], keep_partial: bool = False) -> dict:
        """``fn(folder)``'s result (a JSON-able dict) for step ``name``, run only if not done;
        ``keep_partial``: an unfinished folder is left for ``fn`` to resume from."""
        folder = self.folder(name)
        if self.done(name):
            return self.result(name)
        if folder.exists() and not keep_partial:
            log.info("%s: unfinished (no %s): run again", name, DONE)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        log.info("=== %s (load average %s)", name, load_average())
        (res, gpu), secs, peak = measure(lambda: cuda_peak(lambda: fn(folder) or {}))
        self.timings[name] = {"seconds": round(secs, 2), "peak_rss_bytes": peak, "load": load_average(),
                              **({} if gpu is None else {"peak_cuda_bytes": gpu})}
        write_json(self.timings_path, self.timings)
        write_json(folder / DONE, res)
        self.ran.append(name)
        log.info("    %s took %.1f s", name, secs)
        return res
