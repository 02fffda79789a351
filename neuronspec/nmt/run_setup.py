"""Where and on what a training run runs, and what a resumed run takes from its caller.

- the process: rank and world size from torchrun's environment (``dist_env``), the device
  (``pick_device``), whether bf16 autocast pays off there (``native_bf16``);
- the data: the prepared folder a run reads (``resolve_data``, preparing a corpus when needed);
- the resume policy: ``RESUME_OPTIONS``, the options of a ``--resume`` command line that apply
  (the CLI's help text and ``check_resume_options``' error both name them from it), and
  ``resumed_config``, the saved run's config with those settings taken from the caller;
- the masks a run trains with, read from a file once (``read_masks``).
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist

from ..data.binarize import prepare_corpus
from ..data.builtin_corpus import build_builtin_corpus
from ..data.corpus import META_FILE, read_meta
from ..ops import TaskMasks
from .checkpoint import load_model_masks, resolve_device
from .config import TrainConfig
from .model import ModelConfig, ffn_layer_names

log = logging.getLogger(__name__)

# the options of a --resume command line that apply to the resumed run, with the TrainConfig fields
# they set; any other option that changes a saved setting is an error (check_resume_options)
RESUME_OPTIONS = {"--data": ("data",), "--max-steps": ("max_steps",), "--max-minutes": ("max_minutes",),
                  "--save-every": ("save_every", "save_every_minutes"), "--log-every": ("log_every",),
                  "--device": ("device",), "--cuda-graphs": ("cuda_graphs",),
                  "--max-cuda-graphs": ("max_cuda_graphs",), "--no-progress": ("progress",)}
# the settings a resumed run takes from its caller: its folder and those options' fields
RESUME_APPLIES = ("out", *(f for fs in RESUME_OPTIONS.values() for f in fs))


def resume_options_text() -> str:
    """'--data, --max-steps, ... and --no-progress': RESUME_OPTIONS for a help text or an error."""
    *first, last = RESUME_OPTIONS
    return f"{', '.join(first)} and {last}"


def native_bf16(device: torch.device) -> bool:
    """bf16 autocast pays off: CUDA, or a CPU with AVX512-BF16/AMX (about 2x the fp32 step rate
    on this project's CPU machines)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) in a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def pick_device(name: str, local_rank: int) -> torch.device:
    """The device of option ``name`` for this process ("auto"/"cuda": its local rank's GPU), made current."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif name == "cuda":
        name = f"cuda:{local_rank}"
    dev = resolve_device(name)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def resolve_data(cfg: TrainConfig, rank: int = 0, world_size: int = 1, *, resume: bool = False) -> str:
    """Path of the prepared folder: ``cfg.data``, else ``cfg.corpus`` (or the built-in corpus,
    built into ``cfg.out/corpus``) prepared into ``cfg.out/data``. An existing ``cfg.out/data`` is
    reused by a resumed run, and by a new one only when it was prepared from the same corpus,
    languages and vocabulary size (so ``--overwrite`` with other data prepares it again)."""
    if cfg.data is not None:
        return cfg.data
    prep = Path(cfg.out) / "data"
    langs = None if cfg.langs == ["all"] else cfg.langs
    corpus = cfg.corpus if cfg.corpus is not None else str(Path(cfg.out) / "corpus")
    want = {"corpus": os.path.abspath(corpus), "vocab_size": cfg.vocab_size,
            "langs": None if langs is None else sorted(set(langs) - {"en"})}
    if rank == 0 and not (resume and (prep / META_FILE).is_file()):
        try:
            have = read_meta(prep)["config"]
            have = {k: have.get(k) for k in want}
        except (ValueError, KeyError, TypeError):
            have = None
        if have != want:
            if have is not None:
                log.info("%s was prepared from %s; preparing it again from %s", prep, have, want)
            if cfg.corpus is None:
                log.info("building the built-in corpus into %s", corpus)
                build_builtin_corpus(corpus, langs=langs)
            log.info("preparing %s into %s", corpus, prep)
            prepare_corpus(corpus, prep, vocab_size=cfg.vocab_size, langs=langs, progress=cfg.progress)
    if world_size > 1:
        dist.barrier()
    return str(prep)



def resumed_config(cfg: TrainConfig, ckpt: Mapping[str, Any]) -> TrainConfig:
    """The config of the run ``ckpt`` (its checkpoint_last.pt) continues: the saved one, except for
    the settings RESUME_APPLIES names, which are ``cfg``'s (``data`` only when given: the folder may
    have moved; the Trainer checks it against the checkpoint's vocabulary and directions)."""
    saved = TrainConfig.from_dict(ckpt["config"])
    keep = [k for k in RESUME_APPLIES if k != "data" or cfg.data is not None]
    return TrainConfig.from_dict(saved.to_dict(), **{k: getattr(cfg, k) for k in keep})


def read_masks(masks: Mapping[str, TaskMasks] | str | os.PathLike | None, start: Mapping[str, Any] | None,
               cfg: TrainConfig | None) -> dict[str, TaskMasks] | None:
    """``masks`` as objects: {layer: TaskMasks} as given, or a masks file read here (the one place
    a run reads one), which must cover every FFN layer of the model trained: that of the checkpoint
    ``start``, else of ``cfg``'s preset (``cfg`` is needed only without ``start``)."""
    if masks is None or isinstance(masks, Mapping):
        return masks
    mcfg = (ModelConfig.from_dict(start["model_config"]) if start is not None
            else ModelConfig.from_preset(cfg.preset, vocab_size=1, **cfg.model_overrides()))
    return load_model_masks(masks, ffn_layer_names(mcfg))


def check_resume_options(args: argparse.Namespace, kw: dict[str, Any], saved: Mapping[str, Any],
                         defaults: Mapping[str, Any]) -> None:
    """ValueError listing the options of a --resume command line (``kw``: its TrainConfig fields,
    ``defaults``: the parser's) that change the saved run's settings (those outside RESUME_APPLIES):
    a resumed run keeps its own."""
    exclusive = [f"--{n.replace('_', '-')}" for n in ("init_from", "masks", "overwrite") if getattr(args, n, None)]
    if exclusive:
        raise ValueError(f"resume: {', '.join(exclusive)} cannot be combined with --resume")
    saved = TrainConfig.from_dict(saved).to_dict()
    changed = [f"--{k.replace('_', '-')} {kw[k]!r} (the run's: {saved.get(k)!r})" for k in kw
               if k not in RESUME_APPLIES and k in saved and kw[k] != defaults.get(k) and kw[k] != saved[k]]
    if changed:
        raise ValueError(f"resume: {', '.join(changed)} would change the run being resumed; a resumed run keeps "
                         f"its settings (only {resume_options_text()} apply): drop them, or start a new run from "
                         "its weights with --init-from")
