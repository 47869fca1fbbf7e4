"""The training loop shared by every subcommand: AdaDelta, Adam or AdamW with a step,
cosine or one-cycle schedule (``make_optimizer``, ``lr_factor``), gradient clipping, atomic checkpoints with exact resume, best-validation
checkpoint, tqdm progress, TensorBoard + CSV metrics, SIGTERM handling, divergence stop,
DistributedDataParallel under torchrun (see ``distributed``) and bf16 autocast.

A subcommand supplies a :class:`~seqclr_ext.task.Task` (model, batches from a given step, loss of a batch,
optional validation) and a config dict; the Trainer does the rest.
"""
from __future__ import annotations

import csv
import math
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import checkpoints
from ..task import Task
from . import distributed

__all__ = ["Trainer", "TrainingDiverged", "rng_state", "set_rng_state",
           "OPTIMIZERS", "SCHEDULES", "make_optimizer", "lr_factor", "make_scheduler"]


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient norm stopped training."""


def rng_state() -> dict:
    """Every random generator's state, numpy's keys as a tensor (checkpoints hold no
    numpy arrays: they load without pickle)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


OPTIMIZERS = ("adadelta", "adam", "adamw")
SCHEDULES = ("step", "cosine", "onecycle")


def make_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    """``cfg["optimizer"]`` (default adadelta, SeqCLR Appendix D): AdaDelta (lr, rho, eps,
    weight_decay as an L2 penalty), Adam (L2 penalty) or AdamW (decoupled weight decay)."""
    name = cfg.get("optimizer", "adadelta")
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg["lr"], rho=cfg["rho"], eps=cfg["eps"],
                                    weight_decay=cfg["weight_decay"])
    if name in ("adam", "adamw"):
        kind = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return kind(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def _cosine_between(a: float, b: float, fraction: float) -> float:
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))


def lr_factor(step: int, cfg: dict) -> float:
    """The lr multiplier of optimizer step ``step`` (0-based) of ``cfg["iterations"]``:
    a linear warmup from 0 over the first ``warmup`` fraction, then
    - "step": × ``lr_gamma`` at each fraction of the steps in ``lr_milestones``
      (Appendix D: ÷10 after 60 % and 80 %);
    - "cosine": half a cosine from 1 to 0 at the last step;
    - "onecycle": PARSeq's one-cycle shape (torch's OneCycleLR, cosine both ways): from
      1/25 up to 1 over the warmup, then down to 1/25e4 at the last step."""
    schedule, total = cfg.get("schedule", "step"), cfg["iterations"]
    warm = int(cfg.get("warmup", 0.0) * total)
    if schedule == "step":
        factor = cfg["lr_gamma"] ** sum(step >= int(f * total) for f in cfg["lr_milestones"] or ())
        return factor * min(1.0, (step + 1) / warm) if warm else factor
    if schedule == "cosine":
        if step < warm:
            return (step + 1) / warm
        return _cosine_between(1.0, 0.0, (step - warm) / max(1, total - 1 - warm))
    if schedule == "onecycle":
        start, end, peak = 1 / 25, 1 / 25e4, max(0, warm - 1)   # torch's phase boundaries
        if step < peak:
            return _cosine_between(start, 1.0, step / peak)
        return _cosine_between(1.0, end, (step - peak) / max(1, total - 1 - peak))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def make_scheduler(optimizer, cfg: dict):
    """The schedule of :func:`lr_factor`, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


class _Metrics:
    """metrics.csv (step, wall time, tag, value) + TensorBoard; on resume, rows logged
    after the resumed step by the interrupted run are dropped from both."""

    def __init__(self, run_dir: Path, start_step: int, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.csv"
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
            rows = [r for r in rows if r and int(r[0]) <= start_step]  # blank lines dropped
        self.file = open(self.path, "w", newline="")
        self.csv = csv.writer(self.file)
        self.csv.writerows([["step", "time", "tag", "value"], *rows])
        self.file.flush()
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"),
                                    purge_step=start_step + 1 if start_step else None)

    def log(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        for tag, value in values.items():
            self.csv.writerow([step, f"{now:.3f}", tag, repr(float(value))])
            if self.tb is not None:
                self.tb.add_scalar(tag, value, step, walltime=now)
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class Trainer:
    """Runs ``task`` for ``config["iterations"]`` optimizer steps in ``run_dir``.

    Config keys used: iterations, optimizer, lr, rho, eps, weight_decay, schedule, warmup,
    lr_milestones, lr_gamma, grad_clip, log_every, val_every, save_every, device, tensorboard, amp. ``run_dir/last.pt``
    is written every ``save_every`` steps, at the end, when fit() stops early and on
    SIGTERM; ``best.pt`` whenever validation improves.

    Under torchrun every rank runs the same steps on its share of the batch and validates
    (the others would only wait for rank 0 meanwhile); rank 0 alone writes
    checkpoints (the bare model's state, loadable by one process), metrics and progress.
    The loss logged and checked is the mean over ranks; a stop (SIGTERM) on any rank stops
    all at the same step.
    """

    def __init__(self, task: Task, config: dict, run_dir: str | os.PathLike,
                 progress: bool = True) -> None:
        self.task, self.config = task, config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(config["device"])
        self.model = task.model.to(self.device)
        self.main = distributed.is_main()
        self.amp = config.get("amp", "off")
        if task.train_step is not None and (distributed.active() or self.amp != "off"):
            raise SystemExit("error: this method (its own train_step, e.g. pretrain --method "
                             "siman) runs in one process without --amp: no torchrun with "
                             "N > 1, no --amp bf16")
        # What the task's loss calls. static_graph: every step uses the same parameters,
        # and pre-training leaves some out (the recognizer's decoder; for R = V, the BiLSTM).
        self.forward = self.model
        if distributed.active():
            self.forward = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                static_graph=True)
        if task.optimizers is None:
            self.optimizers = {"main": make_optimizer(self.model.parameters(), config)}
            self.schedulers = {"main": make_scheduler(self.optimizers["main"], config)}
        else:
            self.optimizers = dict(task.optimizers)
            self.schedulers = dict(task.schedulers or {})
        self.step = 0
        self.best = -math.inf
        self.progress = progress
        self._stop_signal = None
        self.last_validation: dict[str, float] = {}
        self.elapsed = 0.0       # wall seconds of fit() so far, over resumes
        self.saved_step = None   # step of the last.pt this process wrote or resumed from

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items() if s},
                "step": self.step, "best": self.best, "elapsed": self.elapsed,
                "rng": rng_state(),
                "data": {"consumed_batches": self.step}, "config": self.config,
                **self.task.extra_state}

    def save(self, path: Path) -> None:
        if self.main:
            checkpoints.save(self.state_dict(), path, self.task.checkpoint_kind)
        if path == self.last_path:
            self.saved_step = self.step

    def load(self, path: str | os.PathLike) -> None:
        """Restore everything saved by :meth:`save` (the model already built by the task)."""
        ckpt = checkpoints.load(path, self.task.checkpoint_kind)
        self.model.load_state_dict(ckpt["model"])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(ckpt["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            if scheduler is not None:
                scheduler.load_state_dict(ckpt["schedulers"][name])
        self.step, self.best = ckpt["step"], ckpt["best"]
        self.elapsed = ckpt["elapsed"]
        self.saved_step = self.step
        set_rng_state(ckpt["rng"])

    def _on_sigterm(self, signum, frame) -> None:
        self._stop_signal = signum

    def _validate(self, metrics: _Metrics | None) -> None:
        if self.task.validate is None:
            return
        self.model.eval()
        try:
            values = self.task.validate()
        finally:
            self.model.train()
        self.last_validation = values
        if metrics is not None:
            metrics.log(self.step, {**{f"val/{k}": v for k, v in values.items()},
                                    "val/elapsed_s": self.elapsed})
            tqdm.write(f"step {self.step}: "
                       + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
        score = values.get(self.task.best_metric)
        if score is not None and score > self.best:
            self.best = score
            self.save(self.run_dir / "best.pt")

    def fit(self, stop_after: int | None = None) -> str:
        """Train to the end, for ``stop_after`` more steps, or until SIGTERM. Returns
        "done", "paused" or "terminated"; raises TrainingDiverged on a non-finite loss."""
        cfg = self.config
        total, clip = cfg["iterations"], cfg["grad_clip"]
        stop_at = total if stop_after is None else min(total, self.step + stop_after)
        metrics = (_Metrics(self.run_dir, self.step, cfg.get("tensorboard", True))
                   if self.main else None)
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if main_thread else None
        bar = tqdm(total=total, initial=self.step, desc="train",
                   disable=not (self.progress and self.main), dynamic_ncols=True)
        self.model.train()
        status = "done"
        start = time.monotonic() - self.elapsed
        try:
            batches = self.task.batches(self.step)
            while self.step < stop_at:
                batch = next(batches)
                if self.task.train_step is not None:
                    loss, extra = self.task.train_step(batch)
                    if not torch.isfinite(loss):
                        self._diverged(f"non-finite loss ({loss.item()})")
                else:
                    loss, extra = self._default_step(batch, clip)
                lr = next(iter(self.optimizers.values())).param_groups[0]["lr"]
                for scheduler in self.schedulers.values():
                    if scheduler is not None:
                        scheduler.step()
                self.step += 1
                self.elapsed = time.monotonic() - start
                bar.update(1)
                if metrics is not None and (self.step % cfg["log_every"] == 0
                                            or self.step == stop_at):
                    values = {"train/loss": loss.item(), "train/lr": lr,
                              **{f"train/{k}": v for k, v in extra.items()},
                              "train/elapsed_s": self.elapsed}
                    metrics.log(self.step, values)
                    bar.set_postfix(self._postfix(values["train/loss"], lr))
                val_every = cfg.get("val_every")
                if val_every and (self.step % val_every == 0 or self.step == total):
                    self._validate(metrics)
                terminated = distributed.any_rank(self._stop_signal is not None, self.device)
                if terminated or self.step % cfg["save_every"] == 0 or self.step == stop_at:
                    self.save(self.last_path)
                if terminated:
                    status = "terminated"
                    break
            else:
                status = "done" if self.step >= total else "paused"
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
        return status

    def _postfix(self, loss: float, lr: float) -> dict[str, str]:
        """The progress bar's figures: loss, lr and the last validation's best_metric."""
        shown = {"loss": f"{loss:.4f}", "lr": f"{lr:.3g}"}
        score = self.last_validation.get(self.task.best_metric)
        if score is not None:
            shown[f"val {self.task.best_metric}"] = f"{score:.4f}"
        return shown

    def _default_step(self, batch, clip: float) -> tuple[torch.Tensor, dict[str, float]]:
        """loss (under bf16 autocast with amp "bf16"), backward, clip, step of the single
        default optimizer. Returns the loss averaged over the ranks."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            loss, extra = self.task.loss(self.forward, batch)
        mean_loss = distributed.mean(loss)
        if not torch.isfinite(mean_loss):
            self._diverged(f"non-finite loss ({mean_loss.item()})")
        optimizer = self.optimizers["main"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip else math.inf)
        if not torch.isfinite(norm):
            self._diverged(f"non-finite gradient norm ({norm.item()})")
        optimizer.step()
        return mean_loss, {**extra, "grad_norm": norm.item()}

    def _diverged(self, what: str) -> None:
        last = (f"{self.last_path} (step {self.saved_step})" if self.saved_step is not None
                else "none (nothing saved yet)")
        raise TrainingDiverged(f"{what} at step {self.step + 1}; training stopped. "
                               f"Last good checkpoint: {last}")
