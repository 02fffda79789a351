"""Shared helpers of the benchmark scripts: interleaved timing, machine description, output files.

Timing protocol (every script): each callable is warmed up, then timed `repeats` rounds; in a
round every callable runs once (CUDA: `inner` calls between events) and the order rotates from
round to round, so machine noise and thermal drift hit all providers alike. Reported: median,
quartiles (IQR = q3 - q1) and per-round ratios to a baseline (dense).
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a source checkout
    sys.path.insert(0, str(ROOT))

from neuronspec.atomic import save_figure_atomic, write_atomic  # noqa: E402
from neuronspec.ops import unavailable_reason  # noqa: E402

log = logging.getLogger("neuronspec.bench")


# ---- statistics -------------------------------------------------------------------------
@dataclass
class Stats:
    """Seconds per call over the timed rounds."""
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def q1(self) -> float:
        return float(np.percentile(self.samples, 25))

    @property
    def q3(self) -> float:
        return float(np.percentile(self.samples, 75))

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def sig(v: float, digits: int = 5) -> float:
    """Round to `digits` significant digits (for the result files)."""
    return float(f"{v:.{digits}g}")


def ratio_stats(base: Stats, other: Stats) -> tuple[float, float, float]:
    """(median, q1, q3) of the per-round ratios base/other (> 1: `other` is faster)."""
    r = np.asarray(base.samples) / np.asarray(other.samples)
    return float(np.median(r)), float(np.percentile(r, 25)), float(np.percentile(r, 75))


# ---- timing -------------------------------------------------------------------------------
def parse_device(name: str | None) -> torch.device:
    """'auto'/None → cuda if available else cpu; anything else must name an existing device."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: cuda requested but torch.cuda.is_available() is False")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu, cuda or auto, got {name!r}")
    return dev


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device, inner: int) -> float:
    """Seconds per call of `fn`, averaged over `inner` back-to-back calls."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def kernel_time(fn: Callable[[], object], device: torch.device, calls: int = 5) -> float | None:
    """Seconds of GPU activity (kernels, memcpy, memset) per call of `fn`, read from
    torch.profiler: what the call costs the GPU with the host's launch overhead taken away.
    None on CPU or when the profiler fails (logged)."""
    if device.type != "cuda":
        return None
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize(device)
        return sum(e.self_device_time_total for e in prof.key_averages()) / 1e6 / calls
    except Exception as e:  # noqa: BLE001 - profiling is extra information, never fatal
        log.warning("kernel time unavailable: %s", e)
        return None


def measure(fns: Mapping[str, Callable[[], object]], device: torch.device, repeats: int = 7,
            warmup: int = 2, min_sample_s: float = 0.0) -> dict[str, Stats | str]:
    """Interleaved timing of several callables → {name: Stats, or an error message}.

    `min_sample_s`: one sample runs the callable `inner` times so it lasts at least this long
    (use ~2e-3 on GPUs, where a single call can be shorter than the launch overhead).
    A callable that raises is reported as "error: ..." and left out of later rounds.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    out: dict[str, Stats | str] = {}
    inner: dict[str, int] = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            once = _time_once(fn, device, 1)
            inner[name] = max(1, min(1000, int(np.ceil(min_sample_s / max(once, 1e-9))))) if min_sample_s else 1
            out[name] = Stats()
        except Exception as e:  # noqa: BLE001 - a broken provider must not stop the others
            log.warning("%s failed: %s", name, e)
            out[name] = f"error: {type(e).__name__}: {e}".replace("\n", " ")[:300]
            if device.type == "cuda":
                torch.cuda.empty_cache()
    names = [n for n in fns if isinstance(out[n], Stats)]
    for r in range(repeats):
        k = r % max(len(names), 1)
        for name in names[k:] + names[:k]:
            if isinstance(out[name], Stats):
                try:
                    out[name].samples.append(_time_once(fns[name], device, inner[name]))
                except Exception as e:  # noqa: BLE001
                    out[name] = f"error: {type(e).__name__}: {e}".replace("\n", " ")[:300]
    return out


# ---- machine description ---------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - missing or broken optional package
        return None


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (r.stdout.strip() + ("+dirty" if dirty else "")) if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: torch.device) -> dict:
    """Everything needed to read a result file later: device, cores, versions, date, load."""
    info = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "device": device.type,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "neuronspec": _version("neuronspec"),
        "git_commit": git_commit(),
        "load_avg_start": [round(v, 2) for v in os.getloadavg()],
        "cmdline": " ".join(sys.argv),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}")
    return info


def device_label(info: Mapping) -> str:
    if info.get("gpu"):
        return f"{info['gpu']} (CUDA {info.get('cuda')}, torch {info['torch']})"
    return f"{info['cpu']}, {info['cpu_count']} cores ({info['torch_threads']} torch threads), torch {info['torch']}"


# ---- output files ---------------------------------------------------------------------------
def write_results(out_dir: str | os.PathLike, name: str, rows: Sequence[Mapping], meta: Mapping,
                  markdown: str | None = None) -> None:
    """{out_dir}/{name}.csv (one row per measurement), .json (meta + rows), .md (table)."""
    out = Path(out_dir)
    if rows:
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(out / f"{name}.csv", buf.getvalue())
    write_atomic(out / f"{name}.json", json.dumps({"meta": dict(meta), "rows": list(rows)}, indent=1) + "\n")
    if markdown is not None:
        write_atomic(out / f"{name}.md", markdown)


def save_figure(fig, path: str | os.PathLike) -> None:
    save_figure_atomic(fig, path)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def parse_list(text: str, kind: type, name: str) -> list:
    """'0.25,0.5' → [0.25, 0.5]; a bad item is a ValueError naming the flag."""
    try:
        items = [kind(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError:
        raise ValueError(f"{name}: expected a comma-separated list of {kind.__name__}, got {text!r}") from None
    if not items:
        raise ValueError(f"{name}: empty list")
    return items



def skip_unavailable(names: list[str], avail: Sequence[str], device: torch.device, flag: str) -> list[str]:
    """`names` without the backends not available on `device`, each skipped with one line on
    stderr saying why (a GPU run measures what it can: a failed CUDA build costs only `cuda`)."""
    kept = []
    for name in names:
        if name in avail:
            kept.append(name)
        else:
            why = unavailable_reason(name, device) or "not measured by this benchmark"
            print(f"{flag}: skipping {name!r}, not available on {device}: {why}", file=sys.stderr)
    return kept

SHAPES = {"tiny": (64, 256), "base": (512, 2048), "big": (1024, 4096), "llm": (4096, 14336)}  # (d, f)


def parse_shapes(text: str) -> list[tuple[str, int, int]]:
    """'base,768x3072' → [('base', 512, 2048), ('768x3072', 768, 3072)]."""
    shapes = []
    for s in parse_list(text, str, "--shapes"):
        if s in SHAPES:
            shapes.append((s, *SHAPES[s]))
        elif "x" in s and all(v.isdigit() and int(v) > 0 for v in s.split("x", 1)):
            d, f = (int(v) for v in s.split("x", 1))
            shapes.append((s, d, f))
        else:
            raise ValueError(f"--shapes: {s!r} is neither one of {sorted(SHAPES)} nor DxF like 512x2048")
    return shapes


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, "fp64": torch.float64, "float64": torch.float64}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"--dtype: expected one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def add_run_args(p, repeats_help: str | None = None, warmup_help: str | None = None) -> None:
    """The flags every benchmark script shares: --repeats, --warmup, --seed, --out, -v."""
    p.add_argument("--repeats", type=int, help=repeats_help)
    p.add_argument("--warmup", type=int, help=warmup_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<device type>)")
    p.add_argument("-v", "--verbose", action="store_true")


def preset_values(args, presets: Mapping) -> tuple[torch.device, Callable[[str], object]]:
    """(device of --device, get(flag) = the flag if given, else the --preset default for that
    device type) — the first lines of every script's resolve_args."""
    device = parse_device(args.device)
    preset = presets[args.preset][device.type]
    return device, lambda k: getattr(args, k) if getattr(args, k) is not None else preset[k]


def run_meta(cfg: Mapping, benchmark: str, **extra) -> dict:
    """What every result file records: the machine, the benchmark, its preset and rounds."""
    return {**machine_info(cfg["device"]), "benchmark": benchmark, "preset": cfg["preset"],
            "repeats": cfg["repeats"], "warmup": cfg["warmup"], **extra}


def parse_config(parser, resolve, argv) -> dict | None:
    """Parse argv, set up logging and resolve the config; a bad flag prints one line, → None."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return resolve(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def setup_logging(verbose: bool = False) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
