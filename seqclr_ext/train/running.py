"""Running one training task: seeding, the resumable data order and augmentation
randomness, CPU threads, and the Trainer's run with its exit status."""
from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from torch.utils.data import DataLoader

from ..data import ResumableBatchSampler
from ..task import Task
from . import distributed
from .options import RUN_CONTROL_KEYS
from .plot import plot_run
from .trainer import Trainer, TrainingDiverged

__all__ = ["seed_everything", "worker_ignore_sigterm", "resumable_loader", "step_generator",
           "set_threads", "run_task", "SIGTERM_EXIT"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def worker_ignore_sigterm(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a SIGTERM sent to the whole process group (SLURM,
    ``kill -- -PGID``) must not kill the workers mid-step; the main process saves a
    checkpoint and shuts them down itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def resumable_loader(data, collate, config: dict, step: int) -> DataLoader:
    """The batches of ``data`` from optimizer step ``step`` on: a deterministic function of
    (seed, step), so a resumed run reads exactly the batches an uninterrupted one would.
    Under torchrun, this rank's slice of each (global) batch."""
    bs = config["batch_size"]
    sampler = ResumableBatchSampler(len(data), bs, config["seed"], start=step * bs,
                                    rank=distributed.rank(), world_size=distributed.world_size())
    return DataLoader(data, batch_sampler=sampler, num_workers=config["workers"],
                      collate_fn=collate, pin_memory=config["device"].startswith("cuda"),
                      worker_init_fn=worker_ignore_sigterm)


def step_generator(config: dict, step: int) -> torch.Generator:
    """The random source of step ``step``'s augmentations: a function of (seed, step) and
    the rank, so a resumed run draws what an uninterrupted one would."""
    seed = (config["seed"] * 1_000_003 + step) * distributed.world_size() + distributed.rank()
    return torch.Generator(config["device"]).manual_seed(seed)


def _saved_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RUN_CONTROL_KEYS}


# What a shell reports for a process ended by SIGTERM: the run stopped early (checkpoint
# saved), so nothing downstream (encoder.pt, test scores, the default run) may treat it
# as finished.
SIGTERM_EXIT = 128 + signal.SIGTERM


def set_threads(config: dict) -> int:
    """torch's CPU threads: --threads, or this process's share of the cores (under torchrun,
    cores / processes) less one per DataLoader worker, at least 1. Returns the count."""
    threads = config.get("threads")
    if not threads:
        cores = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = max(1, cores - config["workers"])
    torch.set_num_threads(threads)
    return threads


def run_task(config: dict, task: Task) -> int:
    """Build the Trainer, resume if asked, train; returns the process exit status: 0 when
    done or paused by --stop-after, 1 diverged, 2 refused, SIGTERM_EXIT on SIGTERM."""
    set_threads(config)
    run_dir = Path(config["run_dir"])
    trainer = Trainer(task, _saved_config(config), run_dir, progress=config["progress"])
    if config["resume"]:
        trainer.load(trainer.last_path)
        distributed.log(f"resumed {trainer.last_path} at step {trainer.step}")
    elif trainer.last_path.exists():
        print(f"error: {run_dir} already holds a run (last.pt); pass --resume to continue it "
              "or choose another --run-dir", file=sys.stderr)
        return 2
    if distributed.is_main():
        (run_dir / "config.yaml").write_text(yaml.safe_dump(trainer.config, sort_keys=True))
    try:
        status = trainer.fit(config.get("stop_after"))
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if distributed.is_main() and trainer.step > 0:
        distributed.log(f"curves: {plot_run(run_dir)}")
    if status == "terminated":
        distributed.log(f"SIGTERM: saved {trainer.last_path} at step {trainer.step}; "
                        "continue with --resume")
        return SIGTERM_EXIT
    elif status == "paused":
        distributed.log(f"stopped after step {trainer.step} (--stop-after); continue with --resume")
    else:
        best = run_dir / "best.pt"
        note = f", best {task.best_metric} {trainer.best:.4f} in {best}" if best.exists() else ""
        distributed.log(f"done: {trainer.step} steps; {trainer.last_path}{note}")
    return 0

