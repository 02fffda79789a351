"""Train a multilingual Transformer: the ``Trainer`` and ``train`` (``neuronspec train``: train_cli.py).

fairseq habits (settings in ``config.py``, LR schedules in ``schedule.py``): Adam (0.9, 0.98, eps 1e-6), linear warm-up then an inverse-sqrt LR
(or, the tiny preset's default, a straight line to 0 at the end of the step/time budget),
label-smoothed cross-entropy summed over target tokens and normalised by the number of
target tokens of the whole update (all micro-batches, all ranks), gradient clipping,
bf16 autocast on CUDA, gradient accumulation (``update_freq``), DDP through ``torchrun``
(gloo on CPU, NCCL on GPU) or CUDA graphs on one GPU (``cuda_graphs``, graphed_step.py),
optionally an EMA of the weights (``ema.py``; the tiny preset's default), which is what
validation scores and checkpoints hold as their model. Losses are logged in base 2 like
fairseq (ppl = 2^nll).

Python API (used for continued/specialized training)::

    from neuronspec.nmt.config import TrainConfig
    from neuronspec.nmt.trainer import train
    cfg = TrainConfig(data="prep", out="runs/spec", max_steps=2000)
    summary = train(cfg, init_from="runs/tiny/checkpoint_last.pt", masks={"encoder.layers.0.ffn": m, ...})

``init_from`` (a path) takes the model (architecture + weights) of a checkpoint and starts a fresh
optimizer, scheduler, sampler and step counter; ``masks`` (``{layer: TaskMasks}`` or the
path of a masks file) are set on the model and saved in every checkpoint; ``resume=True``
continues ``out/checkpoint_last.pt`` exactly (same batches, same dropout, same optimizer).
``train`` reads those files once (a caller that has read the checkpoint passes it as
``checkpoint=``); the ``Trainer`` takes the objects.

SIGINT and SIGTERM stop a run cleanly: the update in progress finishes (a validation in
progress is abandoned and runs again on resume), ``checkpoint_last.pt`` is saved and
:class:`~neuronspec.errors.Interrupted` is raised (the CLI: one line, exit status 130/143);
resuming from it is exact. ``save_every`` / ``save_every_minutes`` save checkpoints between
validations.
"""
from __future__ import annotations

import io
import logging
import math
import os
import signal
import threading
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Mapping

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..atomic import check_free_space, check_writable_folder, remove_stale_temps, strict_json, write_atomic
from ..data.batching import TrainSampler, overlong_examples
from ..data.corpus import PreparedData
from ..errors import Interrupted, TrainingDiverged
from ..ops import TaskMasks
from .checkpoint import (check_tokenizer, load_checkpoint, masks_from_state, masks_state, rng_state, run_environment,
                         save_checkpoint, set_rng_state, warn_environment_change)
from .config import TrainConfig
from .decode import sampled_batches
from .ema import EMA
from .evaluate import evaluate_model, to_markdown
from .graphed_step import GraphedTrainStep
from .loss import label_smoothed_loss
from .model import ModelConfig, Transformer
from .run_folder import BEST, ERROR_FILE, LAST, RUN_OUTPUTS, check_run_folder, run_lock
from .run_setup import dist_env, native_bf16, pick_device, read_masks, resolve_data, resumed_config
from .schedule import LR_SCHEDULERS

log = logging.getLogger(__name__)


class _AbandonValidation(BaseException):
    """Raised by the signal handler inside a validation (see Trainer._signals)."""


class Trainer:
    """One training run (see module docstring). ``Trainer(cfg, ...).train()`` -> summary dict."""

    graph_capture = None  # tests: a stand-in for make_graphed_callables (see ops/graphs.py)

    def __init__(self, cfg: TrainConfig, *, init_from: Mapping | None = None,
                 masks: Mapping[str, TaskMasks] | None = None, resume: bool | Mapping = False):
        """``init_from``: a checkpoint (load_checkpoint's dict) whose model the run starts from;
        ``masks``: {layer: TaskMasks}; ``resume``: True continues out/checkpoint_last.pt, read here,
        or pass that checkpoint when the caller has read it. Files are read by the caller (``train``)."""
        self._check_start(init_from, resume)
        if init_from is not None and not isinstance(init_from, Mapping):
            raise TypeError(f"init_from: expected a checkpoint read with load_checkpoint (train() reads a path), "
                            f"got {type(init_from).__name__}")
        if masks is not None and not isinstance(masks, Mapping):
            raise TypeError(f"masks: expected {{layer: TaskMasks}} (a file: run_setup.read_masks), "
                            f"got {type(masks).__name__}")
        self._start_process(cfg)
        resume_ckpt = self._resumed_config(cfg, resume) if resume else None
        cfg = self.cfg
        self.data = PreparedData.load(resolve_data(cfg, self.rank, self.world_size, resume=bool(resume)))
        self.tok = self.data.tokenizer
        self._check_validation_data()
        torch.manual_seed(cfg.seed)
        src = resume_ckpt or init_from
        self._build_model(src, masks)
        self._build_optimization()
        self._init_counters()
        torch.manual_seed(cfg.seed + 1000 * self.rank)  # dropout streams differ across ranks
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        self._it = iter(self.sampler)
        if self.is_main:
            self._check_space_and_log()

    # ---------------------------------------------------------------- setup steps
    def _start_process(self, cfg: TrainConfig) -> None:
        """Rank, world size, device, process group, the run folder."""
        self.cfg = cfg
        self.rank, self.world_size, local_rank = dist_env()
        self.distributed = self.world_size > 1
        self.device = pick_device(cfg.device, local_rank)
        self._check_cuda_graphs(cfg, self.device, self.distributed)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.out = Path(cfg.out)
        self.is_main = self.rank == 0
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _check_start(init_from: object, resume: bool | Mapping) -> None:
        if resume and init_from is not None:
            raise ValueError("resume and init_from are exclusive (resume continues out/checkpoint_last.pt)")

    @classmethod
    def _check_cuda_graphs(cls, cfg: TrainConfig, device: torch.device, distributed: bool) -> None:
        if cfg.cuda_graphs and distributed:
            raise ValueError("cuda_graphs: not with several processes (DDP); run one process or drop --cuda-graphs")
        if cfg.cuda_graphs and device.type != "cuda" and cls.graph_capture is None:
            raise ValueError(f"cuda_graphs: needs a CUDA device, the run is on {device}")

    def _check_validation_data(self) -> None:
        """No valid split means no validation (never a loss of 0); early stopping needs one."""
        self.has_valid = any(self.data.num_examples("valid", d) for d in self.data.directions)
        if self.has_valid:
            return
        if self.cfg.patience:
            raise ValueError(f"patience: early stopping needs validation data and {self.data.root} has no valid "
                             "split for its training directions (add valid.* pair files to the corpus and prepare "
                             "again, or drop --patience)")
        if self.is_main:
            log.warning("%s has no validation data: no valid loss, no chrF++, no %s", self.data.root, BEST)

    def _resumed_config(self, cfg: TrainConfig, resume: bool | Mapping) -> dict:
        """self.cfg becomes the config of the run being resumed (run_setup.resumed_config); returns
        its checkpoint (``resume``, or out/checkpoint_last.pt read here)."""
        path = self.out / LAST
        if resume is True and not path.is_file():
            raise ValueError(f"resume: no checkpoint {path}")
        ckpt = load_checkpoint(path) if resume is True else resume
        self.cfg = resumed_config(cfg, ckpt)
        return ckpt

    def _build_model(self, src: dict | None, masks: Mapping[str, TaskMasks] | None) -> None:
        """The model (a checkpoint's architecture and weights, or the preset's), checked against
        the data's vocabulary and directions, with its masks (given, or the checkpoint's: a
        specialized model stays specialized); DDP around it when distributed."""
        cfg = self.cfg
        if src is not None:
            mcfg = ModelConfig.from_dict(src["model_config"])
        else:
            mcfg = ModelConfig.from_preset(cfg.preset, len(self.tok), pad=self.tok.pad, **cfg.model_overrides())
        if mcfg.vocab_size != len(self.tok):
            raise ValueError(f"checkpoint vocabulary ({mcfg.vocab_size}) differs from the data's ({len(self.tok)})")
        names = ["-".join(d) for d in self.data.directions]
        if src is not None and src["data"]["directions"] != names:
            raise ValueError(f"checkpoint directions {src['data']['directions'][:4]}... differ from the data's "
                             f"{names[:4]}... (task ids would not match)")
        if src is not None:
            check_tokenizer(src, self.data)
        self.data.max_positions = mcfg.max_positions  # longer examples are left out of batches
        self.overlong = {}
        for split in ("train", "valid"):
            lines = overlong_examples(self.data, split, cfg.source_tag, cfg.target_tag)
            self.overlong[split] = len(lines)
            if lines and self.is_main:
                log.warning("%s: %d sentence(s) longer than the model's %d positions are skipped: %s%s", split,
                            len(lines), mcfg.max_positions, ", ".join(lines[:10]), ", ..." if len(lines) > 10 else "")
        self.model = Transformer(mcfg).to(self.device)
        if src is not None:
            self.model.load_state_dict(src["model"])
        if masks is None and src is not None and src.get("masks"):
            masks = masks_from_state(src["masks"])
        if masks:
            for name, m in masks.items():
                if m is None:
                    continue
                named = not all(n.startswith("task") for n in m.names)  # TaskMasks' default names
                if m.num_tasks != len(names) or (named and list(m.names) != names):
                    raise ValueError(f"masks: {name} has tasks {list(m.names)[:4]}..., the data's directions are "
                                     f"{names[:4]}... ({len(names)})")
            self.model.set_masks(masks)
        self.ddp = (torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.distributed else self.model)

    def _build_optimization(self) -> None:
        """Adam, the LR schedule, the batch sampler, the EMA and the autocast decision."""
        cfg = self.cfg
        # fused: one kernel for all parameters (CPU: 5 vs 21 ms per step for the tiny model's 7.6M)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps,
                                          weight_decay=cfg.weight_decay,
                                          fused=True if self.device.type in ("cpu", "cuda") else None)
        self.scheduler = LR_SCHEDULERS[cfg.lr_scheduler](self.optimizer, cfg.lr, cfg.warmup, cfg.warmup_init_lr)
        self._time_progress = 0.0  # share of the time budget used (set by ``train``)
        self._tags = {"source_tag": cfg.source_tag, "target_tag": cfg.target_tag}
        self.sampler = TrainSampler(self.data, cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed,
                                    mixed=cfg.mixed_batches, rank=self.rank, world_size=self.world_size,
                                    upsample=cfg.upsample, **self._tags)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.amp = cfg.amp == "on" or (cfg.amp == "auto" and native_bf16(self.device))
        self.graphed = (GraphedTrainStep(self.model, label_smoothing=cfg.label_smoothing, amp=self.amp,
                                         mixed=cfg.mixed_batches, max_graphs=cfg.max_cuda_graphs,
                                         capture=self.graph_capture) if cfg.cuda_graphs else None)

    def _init_counters(self) -> None:
        self.step = 0
        self.best_valid = math.inf
        self.stale_validations = 0  # validations since the best loss (early stopping)
        self.skipped_updates = self.nonfinite_in_row = 0  # non-finite loss or gradient norm
        self.history: list[dict] = []
        self.pending_valid: str | None = None  # "periodic"/"final": a validation to run before going on
        self._signal: int | None = None  # the first SIGINT/SIGTERM received (see _signals)
        self._in_validation = False
        self._last_save, self._saved_step = time.monotonic(), 0
        self._warned_replaced = False

    def _check_space_and_log(self) -> None:
        # one checkpoint: the weights, Adam's two moments, the online weights with EMA, 1 MiB
        nbytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        check_free_space(self.out, nbytes * (3 + (self.ema is not None)) + 2**20, "out", "the first checkpoint")
        cfg = self.cfg
        log.info("model %s: %.1fM parameters, %d directions, vocab %d, device %s%s, world %d%s",
                 cfg.preset, self.model.num_parameters() / 1e6, len(self.data.directions), len(self.tok),
                 self.device, " (bf16 autocast)" if self.amp else "", self.world_size,
                 f", EMA {cfg.ema_decay}" if self.ema else "")

    # ---------------------------------------------------------------- state
    def _restore(self, ck: dict) -> None:
        if ck.get("ema"):  # ck["model"] holds the average; training goes on from the online weights
            self.model.load_state_dict(ck["ema"]["online"])
            if self.ema is not None:
                self.ema.load(ck["ema"], ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        per_rank = ck["per_rank"]
        if len(per_rank) != self.world_size:
            raise ValueError(f"resume: checkpoint was written by {len(per_rank)} process(es), now {self.world_size}")
        self.sampler.load_state_dict(per_rank[self.rank]["sampler"])
        set_rng_state(per_rank[self.rank]["rng"])
        self.step = int(ck["step"])
        if self.is_main:
            warn_environment_change(ck.get("environment"))
        self.best_valid = float(ck.get("best_valid", math.inf))
        self.stale_validations = int(ck.get("stale_validations", 0))
        self.history = list(ck.get("history", []))
        self.pending_valid = ck.get("pending_valid")
        self._saved_step = self.step
        log.info("resumed from step %d", self.step)

    def state_dict(self) -> dict:
        """Checkpoint contents (call on every rank: it gathers per-rank sampler/RNG states)."""
        mine = {"sampler": self.sampler.state_dict(), "rng": rng_state()}
        per_rank = [mine]
        if self.distributed:  # exchanged as torch.save bytes (tensors inside objects do not pickle here)
            buf = io.BytesIO()
            torch.save(mine, buf)
            blobs = [None] * self.world_size
            dist.all_gather_object(blobs, buf.getvalue())
            per_rank = [torch.load(io.BytesIO(b), weights_only=True) for b in blobs]
        ema = None
        if self.ema is not None:
            ema = {**self.ema.state_dict(), "online": self.model.state_dict()}
        return {
            "step": self.step, "config": self.cfg.to_dict(), "model_config": self.model.cfg.to_dict(),
            # the weights to use (the average with EMA on); the online ones, for resuming, in "ema"
            "model": self.ema.averaged_state(self.model) if self.ema is not None else self.model.state_dict(),
            "ema": ema, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "per_rank": per_rank,
            "masks": masks_state(self.model.masks()) or None,
            "data": {"prep": os.path.abspath(self.data.root), "directions": ["-".join(d) for d in self.data.directions],
                     "tokenizer_sha256": self.data.tokenizer_sha256},
            "environment": run_environment(),
            "best_valid": self.best_valid, "stale_validations": self.stale_validations, "history": self.history,
            "pending_valid": self.pending_valid,
        }

    def save(self, best: bool = False) -> Path:
        """Write out/checkpoint_last.pt (and checkpoint_best.pt) atomically, on rank 0."""
        state = self.state_dict()
        path = self.out / LAST
        if self.is_main:
            save_checkpoint(path, state)
            if best:
                save_checkpoint(self.out / BEST, state)
        if self.distributed:
            dist.barrier()  # no rank goes on (or returns) before the file exists
        self._last_save, self._saved_step = time.monotonic(), self.step
        return path

    # ---------------------------------------------------------------- steps
    def _autocast(self):
        if not self.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_step(self) -> dict:
        """One update over ``update_freq`` micro-batches; returns summed stats of this rank+peers."""
        self.ddp.train()
        self.optimizer.zero_grad(set_to_none=True)
        pad, eps = self.tok.pad, self.cfg.label_smoothing
        stats = torch.zeros(3, dtype=torch.float64)  # loss, nll, ntokens
        if self.graphed is not None:
            self.graphed.start_update()
        for i in range(self.cfg.update_freq):
            batch = next(self._it).to(self.device)
            last = i == self.cfg.update_freq - 1
            if self.graphed is not None:
                loss, nll = self.graphed(batch)
                loss.backward()
                if not last:
                    self.graphed.own_grads()
            else:
                with (nullcontext() if last or not self.distributed else self.ddp.no_sync()), self._autocast():
                    logits = self.ddp(batch.src, batch.tgt_in, batch.task)
                    loss, nll = label_smoothed_loss(logits, batch.tgt_out, eps, pad)
                loss.backward()
            stats += torch.tensor([loss.item(), nll.item(), batch.ntokens], dtype=torch.float64)
        if self.distributed:
            dist.all_reduce(stats)
        ntok = max(stats[2].item(), 1.0)
        # DDP averages gradients over ranks; rescale so they are d(sum of losses)/d(total tokens).
        scale = self.world_size / ntok
        torch._foreach_mul_([p.grad for p in self.model.parameters() if p.grad is not None], scale)
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm if self.cfg.clip_norm > 0 else math.inf)
        loss_sum = stats[0].item()
        if not (math.isfinite(loss_sum) and math.isfinite(float(gnorm))):  # the same on every rank (all-reduced)
            return self._skip_update(loss_sum, float(gnorm))
        self.nonfinite_in_row = 0
        self.optimizer.step()
        self.scheduler.step(self._progress(self.step + 1))
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return {"loss": stats[0].item(), "nll": stats[1].item(), "ntokens": stats[2].item(), "gnorm": float(gnorm)}

    def _skip_update(self, loss_sum: float, gnorm: float) -> dict:
        """Drop an update whose loss or gradient norm is not finite (the weights stay as they
        were); after cfg.max_nonfinite in a row, stop with TrainingDiverged."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_updates += 1
        self.nonfinite_in_row += 1
        log.warning("step %d: loss %s, gradient norm %s: update skipped (%d in a row, %d in all)", self.step + 1,
                    loss_sum, gnorm, self.nonfinite_in_row, self.skipped_updates)
        if self.nonfinite_in_row >= self.cfg.max_nonfinite:
            raise TrainingDiverged(
                f"{self.nonfinite_in_row} updates in a row had a non-finite loss or gradient norm (at step "
                f"{self.step + 1}); the last checkpoint in {self.out} is from before them. Lower --lr or raise "
                f"--warmup, or check the data")
        return {"loss": 0.0, "nll": 0.0, "ntokens": 0.0, "gnorm": gnorm, "skipped": True}

    def _progress(self, step: int) -> float:
        """Share of the run's budget used after ``step`` updates: the larger of step/max_steps
        and the time share ``train`` keeps (0 when neither applies)."""
        by_steps = step / self.cfg.max_steps if self.cfg.max_steps else 0.0
        return max(by_steps, self._time_progress)

    @torch.no_grad()
    def validate(self) -> dict | None:
        """Validation loss over (a sample of) every direction; directions are shared across ranks.
        None when there is no validation example (no valid split, or all too long)."""
        self.model.eval()
        pad, eps = self.tok.pad, self.cfg.label_smoothing
        dirs = [d for d in self.data.directions if self.data.num_examples("valid", d) > 0]
        stats = torch.zeros(len(dirs), 3, dtype=torch.float64)
        for k, d in enumerate(dirs):
            if k % self.world_size != self.rank:
                continue
            for batch in sampled_batches(self.data, "valid", d, 4 * self.cfg.max_tokens, self.cfg.valid_max_sentences,
                                         **self._tags):
                batch = batch.to(self.device)
                with self._autocast():
                    logits = self.model(batch.src, batch.tgt_in, batch.task)
                loss, nll = label_smoothed_loss(logits, batch.tgt_out, eps, pad)
                stats[k] += torch.tensor([loss.item(), nll.item(), batch.ntokens], dtype=torch.float64)
        if self.distributed:
            dist.all_reduce(stats)
        self.model.train()
        tot = stats.sum(0)
        if tot[2].item() == 0:  # nothing to validate on: "no validation", never a loss of 0
            return None
        ln2 = math.log(2)
        out = {"loss": tot[0].item() / max(tot[2].item(), 1) / ln2, "nll": tot[1].item() / max(tot[2].item(), 1) / ln2}
        out["ppl"] = 2 ** out["nll"]
        out["directions"] = {"-".join(d): stats[k, 1].item() / max(stats[k, 2].item(), 1) / ln2 for k, d in enumerate(dirs)}
        return out

    def valid_chrf(self, max_sentences: int | None, write: bool = False) -> dict:
        """chrF++ (beam ``valid_beam``) on ``max_sentences`` evenly spaced valid sentences per
        direction (None: all) on rank 0;
        ``write``: also save the full results (per direction, tier, kind; samples) as
        out/valid_chrf.json and out/valid_chrf.md."""
        res = evaluate_model(self.model, self.data, "valid", beam=self.cfg.valid_beam, max_sentences=max_sentences,
                             device=self.device, progress=False, **self._tags)
        if write:
            res.update(checkpoint=str(self.out / LAST), step=self.step)
            write_atomic(self.out / "valid_chrf.json", strict_json(res))
            write_atomic(self.out / "valid_chrf.md", to_markdown(res))
        by_kind = {k: v["averages"]["all"] for k, v in res["by_kind"].items()}
        return {"chrf": res["averages"]["all"]["chrf"], "copy_chrf": res["averages"]["all"]["copy_chrf"],
                "beats_copy": res["beats_copy"], "by_kind": by_kind}

    def _averaged(self):
        """Context in which the model holds the weights a checkpoint saves (the EMA if on)."""
        return self.ema.applied(self.model) if self.ema is not None else nullcontext()

    def _log_valid(self, final: bool = False) -> dict:
        every = self.cfg.valid_chrf_every
        with self._averaged():
            self._in_validation = True  # a signal abandons the validation (_signals)
            try:
                v = self.validate()
                rec = {"step": self.step, "valid_loss": v and v["loss"], "valid_nll": v and v["nll"],
                       "valid_ppl": v and v["ppl"]}
                if (v is not None and self.cfg.valid_chrf_sentences != 0
                        and (final or (every and self.step % every == 0))):
                    if self.is_main:
                        c = self.valid_chrf(self.cfg.valid_chrf_sentences, write=final)
                        rec.update(valid_chrf=c["chrf"], copy_chrf=c["copy_chrf"], beats_copy=c["beats_copy"],
                                   valid_chrf_by_kind=c["by_kind"])
                    if self.distributed:
                        dist.barrier()
            finally:
                self._in_validation = False
        if self.is_main:
            extra = ""
            if "valid_chrf" in rec:
                extra = f" | chrF++ {rec['valid_chrf']:.1f} (copy {rec['copy_chrf']:.1f})"
                for kind, a in rec["valid_chrf_by_kind"].items():
                    w = rec["beats_copy"][kind]
                    extra += (f" | {kind}s {a['chrf']:.1f} (copy {a['copy_chrf']:.1f}), "
                              f"beat copy {w['wins']}/{w['total']}")
            if v is None:
                log.info("valid | step %d | no validation data", self.step)
            else:
                log.info("valid | step %d | loss %.3f | nll %.3f | ppl %.2f%s", self.step, v["loss"], v["nll"], v["ppl"],
                         extra)
            if self.data.replaced() and not self._warned_replaced:
                self._warned_replaced = True
                log.warning("%s was prepared again while this run reads it: the run goes on with the version it "
                            "opened (a resumed run reads the new one)", self.data.root)
        self.history.append(rec)
        best = v is not None and v["loss"] < self.best_valid
        if v is not None:
            self.best_valid = min(self.best_valid, v["loss"])
            self.stale_validations = 0 if best else self.stale_validations + 1
        self.pending_valid = None
        self.save(best=best)
        return rec

    # ---------------------------------------------------------------- signals
    @contextmanager
    def _signals(self):
        """While training, SIGINT/SIGTERM only record the signal: the loop stops after the
        update in progress; a validation in progress (single process) is abandoned at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._signal is None:
                self._signal = signum
                if self.is_main:
                    log.warning("%s received: stopping after the current step", signal.Signals(signum).name)
            if self._in_validation and not self.distributed:
                raise _AbandonValidation

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _agree(self, save_due: bool) -> tuple[int, bool]:
        """(signal to stop on or 0, save now?), the same on every rank."""
        flags = torch.tensor([float(self._signal or 0), float(save_due)], device=self.device)
        if self.distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return int(flags[0].item()), bool(flags[1].item())

    def _interrupt(self, signum: int) -> None:
        """Save checkpoint_last.pt (the state after the last finished update) and raise Interrupted."""
        self._in_validation = False
        path = self.save()
        raise Interrupted(signum, f"stopped after step {self.step}; saved {path} (continue with "
                                  f"`neuronspec train --resume --out {self.out}`)")

    def _run_pending(self) -> dict:
        """Run the validation ``pending_valid`` names (it stays pending in the checkpoint if a
        signal abandons it)."""
        signum = self._agree(False)[0]
        if signum:
            self._interrupt(signum)
        try:
            return self._log_valid(final=self.pending_valid == "final")
        except _AbandonValidation:
            self._interrupt(self._signal)

    def _save_due(self) -> bool:
        cfg = self.cfg
        if self.step == self._saved_step:
            return False
        return bool((cfg.save_every and self.step % cfg.save_every == 0) or
                    (cfg.save_every_minutes and time.monotonic() - self._last_save >= 60 * cfg.save_every_minutes))

    def _patience_exhausted(self) -> bool:
        if self.cfg.patience and self.stale_validations >= self.cfg.patience:
            if self.is_main:
                log.info("early stop at step %d: no better validation loss in %d validations (best %.3f)",
                         self.step, self.stale_validations, self.best_valid)
            return True
        return False

    def train(self, steps: int | None = None, max_minutes: float | None = None) -> dict:
        """Train until ``steps`` total updates (default cfg.max_steps) or ``max_minutes`` of
        wall-clock time (default cfg.max_minutes); validate + checkpoint on the way and at the end.
        SIGINT/SIGTERM: save and raise Interrupted (module docstring). Any other failure leaves
        ``out/train_error.txt`` (what failed, at which step, the traceback) beside train.log."""
        if self.is_main:
            (self.out / ERROR_FILE).unlink(missing_ok=True)  # of an earlier attempt: this one goes on
            env = run_environment()
            log.info("environment: NEURONSPEC_BACKEND %s, %d torch threads", env["backend"], env["threads"])
        try:
            with self._signals():
                return self._train(steps, max_minutes)
        except Interrupted:
            raise
        except BaseException as e:
            if self.is_main:
                self._record_failure(e)
            raise

    def _record_failure(self, e: BaseException) -> None:
        what = f"{type(e).__name__}: {e}"
        log.error("run failed at step %d: %s (details in %s)", self.step, what, self.out / ERROR_FILE)
        text = (f"neuronspec train failed at step {self.step} (last checkpoint: "
                f"{self.out / LAST if (self.out / LAST).is_file() else 'none'})\n{what}\n\n"
                + "".join(traceback.format_exception(e)))
        try:
            write_atomic(self.out / ERROR_FILE, text)
        except OSError as err:  # e.g. the disk is full: the log line above is what remains
            log.error("could not write %s: %s", self.out / ERROR_FILE, err)

    def _train(self, steps: int | None, max_minutes: float | None) -> dict:
        cfg = self.cfg
        steps = cfg.max_steps if steps is None else steps
        max_minutes = cfg.max_minutes if max_minutes is None else max_minutes
        deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
        t_start = time.monotonic()
        # a resumed run's schedule goes on from where it stopped and ends with this call's minutes
        time_base = self.scheduler.progress
        bar = tqdm(total=steps, initial=self.step, unit="step", disable=not (cfg.progress and self.is_main),
                   mininterval=1.0, dynamic_ncols=True)
        acc = {"loss": 0.0, "nll": 0.0, "ntokens": 0.0, "n": 0}
        t_log = time.monotonic()
        ln2 = math.log(2)
        stop = self.pending_valid == "final"  # interrupted during the final validation
        if self.pending_valid == "periodic":  # interrupted during this validation: run it again
            self._run_pending()
            stop = self._patience_exhausted()
        while not stop and (steps is None or self.step < steps):
            signum, save_now = self._agree(self._save_due())
            if signum:
                self._interrupt(signum)
            if save_now:
                self.save()
            if deadline is not None:
                now = time.monotonic()
                clock = torch.tensor([float(now >= deadline), (now - t_start) / (deadline - t_start)])
                if self.distributed:  # every rank stops at the same step and uses the same lr
                    dist.all_reduce(clock, op=dist.ReduceOp.MAX)
                if clock[0].item() > 0:
                    break
                self._time_progress = time_base + (1.0 - time_base) * min(clock[1].item(), 1.0)
            s = self.train_step()
            if s.get("skipped"):
                continue
            bar.update(1)
            for k in ("loss", "nll", "ntokens"):
                acc[k] += s[k]
            acc["n"] += 1
            if self.step % cfg.log_every == 0:
                now = time.monotonic()
                loss, nll = acc["loss"] / acc["ntokens"] / ln2, acc["nll"] / acc["ntokens"] / ln2
                rec = {"step": self.step, "loss": loss, "nll": nll, "ppl": 2 ** nll,
                       "lr": self.optimizer.param_groups[0]["lr"], "gnorm": s["gnorm"],
                       "tokens_per_s": acc["ntokens"] / max(now - t_log, 1e-9)}
                bar.set_postfix(loss=f"{loss:.3f}", ppl=f"{2 ** nll:.1f}")
                if self.is_main:
                    log.info("train | step %d | loss %.3f | nll %.3f | ppl %.2f | lr %.2e | gnorm %.2f | tok/s %.0f | %.1f min",
                             self.step, loss, nll, 2 ** nll, rec["lr"], s["gnorm"], rec["tokens_per_s"],
                             (now - t_start) / 60)
                self.history.append(rec)
                acc = {"loss": 0.0, "nll": 0.0, "ntokens": 0.0, "n": 0}
                t_log = now
            if cfg.valid_every and self.step % cfg.valid_every == 0 and self.step != steps:
                self.pending_valid = "periodic"
                self._run_pending()
                if self._patience_exhausted():
                    break
        bar.close()
        self.pending_valid = "final"
        final = self._run_pending()
        minutes = (time.monotonic() - t_start) / 60
        best = self.out / BEST
        summary = {"checkpoint": str(self.out / LAST), "best_checkpoint": str(best) if best.is_file() else None,
                   "step": self.step, "minutes": minutes, "final": final, "data": os.path.abspath(self.data.root),
                   "skipped_too_long": self.overlong}
        if self.graphed is not None:  # captures > kept: shapes were evicted and captured again
            summary["cuda_graphs"] = {"captures": self.graphed.captures, "kept": len(self.graphed)}
            log.info("CUDA graphs: %d captured, %d kept", self.graphed.captures, len(self.graphed))
        if self.is_main:
            write_atomic(self.out / "train_summary.json", strict_json(summary))
            log.info("done: %d steps in %.1f min, checkpoint %s", self.step, minutes, summary["checkpoint"])
        return summary


def train(cfg: TrainConfig, *, init_from: str | os.PathLike | None = None, overwrite: bool = False,
          masks: Mapping[str, TaskMasks] | str | os.PathLike | None = None, steps: int | None = None,
          max_minutes: float | None = None, resume: bool = False, checkpoint: Mapping | None = None) -> dict:
    """Build a :class:`Trainer` and train; returns the summary (checkpoint paths, final metrics).

    The edge of a run: the checkpoint (``init_from``'s, or with ``resume`` out/checkpoint_last.pt)
    and a masks file are read here, once, unless the caller passes them read (``checkpoint``: that
    checkpoint's contents; ``masks``: {layer: TaskMasks}); the Trainer takes the objects.
    ``steps``/``max_minutes`` override the config's stop criteria for this call. A folder that
    already holds a run is refused unless ``resume`` or ``overwrite`` (run_folder.py)."""
    Trainer._check_start(init_from, resume)
    _, world_size, local_rank = dist_env()
    Trainer._check_cuda_graphs(cfg, pick_device(cfg.device, local_rank), world_size > 1)  # before any file
    check_run_folder(cfg.out, resume=resume, overwrite=overwrite, init_from=init_from)
    if init_from is not None and checkpoint is None:
        checkpoint = load_checkpoint(init_from)
    masks = read_masks(masks, None if resume else checkpoint, cfg)
    main = dist_env()[0] == 0
    if main:
        check_writable_folder(cfg.out, "out")
    with run_lock(cfg.out) if main else nullcontext():  # one lock per run, held by rank 0
        if main:  # no other writer now: temporary files here are from a killed save
            remove_stale_temps(cfg.out, RUN_OUTPUTS)
        if resume:
            trainer = Trainer(cfg, masks=masks, resume=True if checkpoint is None else checkpoint)
        else:
            trainer = Trainer(cfg, init_from=checkpoint, masks=masks)
        return trainer.train(steps=steps, max_minutes=max_minutes)
