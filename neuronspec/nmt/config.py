"""Training configuration: ``TrainConfig`` (every setting of a run, saved in its checkpoints)
and the per-preset optimisation defaults."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ..checks import check_int
from ..data.batching import check_target_tag, tag_options
from .model import PRESETS
from .schedule import LR_SCHEDULERS

# Optimisation defaults per preset (lr, warm-up, schedule, batch tokens, weight averaging, stop):
# the tiny preset trains for minutes, where small batches (more updates) win on 2 CPU cores, an
# EMA of the weights smooths their noise and a learning rate that falls to 0 at the end of the
# budget beat inverse_sqrt by 1-2 chrF++ (docs/nmt-tiny-cpu.md).
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": dict(lr=1e-3, warmup=150, lr_scheduler="linear", max_tokens=800, ema_decay=0.995, max_minutes=9.0),
    "base": dict(lr=7e-4, warmup=4000, lr_scheduler="inverse_sqrt", max_tokens=1500, ema_decay=0.0),
    "big": dict(lr=5e-4, warmup=4000, lr_scheduler="inverse_sqrt", max_tokens=1500, ema_decay=0.0),
    "wide": dict(lr=5e-4, warmup=4000, lr_scheduler="inverse_sqrt", max_tokens=1500, ema_decay=0.0),
    "deep": dict(lr=5e-4, warmup=4000, lr_scheduler="inverse_sqrt", max_tokens=1500, ema_decay=0.0),
}
# Languages of the tiny preset on the built-in corpus when --langs is not given (the demo's
# tier and script spread): all 30 EC30 languages do not fit its minutes on 2 CPU cores
# (docs/nmt-tiny-cpu.md). ``langs=["all"]`` asks for every language.
TINY_BUILTIN_LANGS = ("de", "fr", "ru", "he", "it", "bg", "af", "uk")


@dataclass
class TrainConfig:
    """Everything a run needs; saved in every checkpoint. ``None`` = preset default."""
    data: str | None = None  # prepared folder; None: prepare `corpus` (or the built-in corpus) into out/data
    corpus: str | None = None
    # for on-the-fly preparation; None: all (tiny on the built-in corpus: TINY_BUILTIN_LANGS); ["all"]: all
    langs: list[str] | None = None
    vocab_size: int = 8000  # for on-the-fly preparation
    out: str = "runs/tiny"
    # model
    preset: str = "tiny"
    activation: str | None = None
    positions: str | None = None
    dropout: float | None = None
    attention_dropout: float | None = None
    model_args: dict[str, Any] | None = None  # any other ModelConfig field, e.g. {"d_model": 64}
    # optimisation
    lr: float | None = None
    warmup: int | None = None
    # inverse_sqrt (fairseq's) | linear: to 0 at the end of the budget (max_steps and/or
    # max_minutes, whichever ends first); None: the preset's (tiny: linear)
    lr_scheduler: str | None = None
    warmup_init_lr: float = 1e-7
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0  # 0 = off
    max_tokens: int | None = None  # per batch and process, padding included
    update_freq: int = 1
    # EMA of the weights (ema.py), validated, scored and saved as the checkpoint's model (0: off)
    ema_decay: float | None = None
    # sampling
    temperature: float = 5.0
    mixed_batches: bool = False
    upsample: dict[str, int] | None = None  # {kind: N}: examples of that kind N times per epoch
    source_tag: bool = False
    target_tag: str = "decoder"  # decoder: <2tgt> is the first decoder input; encoder: a source prefix
    seed: int = 1
    # stopping (whichever first; max_steps counts all updates of the run, resumed ones included)
    max_steps: int | None = None
    max_minutes: float | None = None  # wall-clock training time of this invocation
    patience: int = 0  # early stopping: stop after this many validations without a better loss (0: off)
    # an update whose loss or gradient norm is not finite is skipped; this many in a row stop the run
    max_nonfinite: int = 5
    # bookkeeping
    log_every: int = 50
    valid_every: int = 500  # validation loss + checkpoint every N steps (0: only at the end)
    save_every: int = 0  # also save checkpoint_last.pt every N steps (0: off)
    save_every_minutes: float = 0.0  # ... and/or every N minutes of training (0: off)
    valid_max_sentences: int | None = 100  # per direction, for the validation loss (None: all; >= 1)
    # per direction (evenly spaced) for the chrF++ at the end (None: all; 0: off); 200 = every
    # valid line of the built-in corpus, a bounded sample of larger valid sets
    valid_chrf_sentences: int | None = 200
    valid_beam: int = 5  # beam of that chrF++ (1: greedy)
    valid_chrf_every: int = 0  # also every N steps (0: only at the end)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16, else off) | on | off
    cuda_graphs: bool = False  # micro-batches replayed as CUDA graphs, one per shape bucket (graphed_step.py)
    max_cuda_graphs: int = 32  # graphs kept (least recently used dropped)
    progress: bool = True

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for k, v in TRAIN_DEFAULTS[self.preset].items():
            if getattr(self, k) is None and not (k == "max_minutes" and self.max_steps is not None):
                setattr(self, k, v)
        self.betas = tuple(self.betas)
        if self.langs is None and self.preset == "tiny" and self.data is None and self.corpus is None:
            self.langs = list(TINY_BUILTIN_LANGS)
        if self.langs is not None and (not self.langs or ("all" in self.langs and len(self.langs) > 1)):
            raise ValueError(f"TrainConfig.langs must be language codes or ['all'], got {self.langs!r}")
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("give max_steps or max_minutes (no default stop for this preset)")
        checks = [("max_tokens", self.max_tokens, 1), ("update_freq", self.update_freq, 1),
                  ("warmup", self.warmup, 0), ("log_every", self.log_every, 1), ("valid_every", self.valid_every, 0),
                  ("valid_beam", self.valid_beam, 1), ("patience", self.patience, 0),
                  ("max_nonfinite", self.max_nonfinite, 1), ("save_every", self.save_every, 0),
                  ("max_cuda_graphs", self.max_cuda_graphs, 1), ("valid_chrf_every", self.valid_chrf_every, 0),
                  ("vocab_size", self.vocab_size, 8)]
        for name, lo in (("max_steps", 0), ("valid_chrf_sentences", 0), ("valid_max_sentences", 1)):
            if getattr(self, name) is not None:
                checks.append((name, getattr(self, name), lo))
        for name, v, lo in checks:
            check_int(f"TrainConfig.{name}", v, lo)
        for name in ("lr", "warmup_init_lr", "adam_eps", "weight_decay", "label_smoothing", "clip_norm", "max_minutes",
                     "dropout", "attention_dropout", "ema_decay", "temperature", "save_every_minutes"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ValueError(f"TrainConfig.{name} must be a finite number, got {v!r}")
        if not all(isinstance(b, (int, float)) and math.isfinite(b) for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be finite numbers, got {self.betas!r}")
        for name in ("warmup_init_lr", "weight_decay", "clip_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("dropout", "attention_dropout"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.temperature <= 0:
            raise ValueError(f"TrainConfig.temperature must be > 0, got {self.temperature!r}")
        if not self.lr or self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"TrainConfig.lr_scheduler must be one of {sorted(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        if self.save_every_minutes < 0:
            raise ValueError(f"TrainConfig.save_every_minutes must be >= 0, got {self.save_every_minutes!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"TrainConfig.max_minutes must be > 0, got {self.max_minutes!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.patience and not self.valid_every:
            raise ValueError("TrainConfig.patience needs validations: set valid_every > 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        check_target_tag(self.target_tag)
        if self.amp not in ("auto", "on", "off"):
            raise ValueError(f"TrainConfig.amp must be auto|on|off, got {self.amp!r}")

    def model_overrides(self) -> dict[str, Any]:
        keys = ("activation", "positions", "dropout", "attention_dropout")
        return {**(self.model_args or {}), **{k: getattr(self, k) for k in keys if getattr(self, k) is not None}}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides) -> "TrainConfig":
        """A saved config (``to_dict``); saved before ``target_tag`` existed = encoder-side tag,
        before ``lr_scheduler`` existed = inverse_sqrt."""
        known = {f.name for f in fields(cls)}
        d = {**tag_options(d), "lr_scheduler": "inverse_sqrt", **d}
        return cls(**{**{k: v for k, v in d.items() if k in known}, **overrides})
