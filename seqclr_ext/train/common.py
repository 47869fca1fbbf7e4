"""Options and helpers shared by the training subcommands."""
from __future__ import annotations

import argparse
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from torch.utils.data import DataLoader

from ..data import Charset, ResumableBatchSampler
from ..models import Recognizer, RecognizerConfig
from . import distributed
from .trainer import Task, Trainer, TrainingDiverged

__all__ = ["Repeat", "add_trainer_arguments", "add_model_arguments", "make_charset",
           "make_recognizer", "seed_everything", "worker_ignore_sigterm", "resumable_loader",
           "run_task", "SIGTERM_EXIT"]

CHARSETS = {"printable": lambda: Charset.printable(),
            "french": lambda: Charset.printable(french=True),
            "alphanumeric": Charset.alphanumeric}


class Repeat(argparse.Action):
    """Like ``action="append"``, but the first use on the command line replaces a default
    (from YAML or a resumed config) instead of appending to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_repeat_seen", set())
        items = list(getattr(namespace, self.dest) or []) if self.dest in seen else []
        seen.add(self.dest)
        setattr(namespace, self.dest, items + [values])


def add_trainer_arguments(p: argparse.ArgumentParser, *, iterations: int,
                          batch_size: int | None, lr: float | None = 1.0,
                          per_method: str = "") -> None:
    """Run, optimizer (SeqCLR Appendix D defaults), schedule and logging options.
    ``batch_size`` / ``lr`` None: the subcommand picks them per method (``per_method``
    says how, in --help)."""
    g = p.add_argument_group("run")
    g.add_argument("--config", help="YAML file of option: value (flags override it)")
    g.add_argument("--run-dir", help="folder for checkpoints, metrics.csv, tensorboard/")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last.pt, exactly")
    g.add_argument("--stop-after", type=int,
                   help="stop (and checkpoint) after this many steps in this invocation")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (under torchrun: cuda means cuda:LOCAL_RANK)")
    g.add_argument("--amp", choices=("off", "bf16"), default="off",
                   help="bf16: training forward and loss under torch.autocast(bfloat16)")
    g.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    g.add_argument("--seed", type=int, default=0,
                   help="model init, data order and label subset")
    g.add_argument("--log-every", type=int, default=100, help="steps between train metrics")
    g.add_argument("--val-every", type=int, default=2000, help="0: no validation")
    g.add_argument("--save-every", type=int, default=1000, help="steps between last.pt saves")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="metrics.csv only")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no tqdm bar")
    g = p.add_argument_group("optimization (AdaDelta, SeqCLR Appendix D)")
    g.add_argument("--iterations", type=int, default=iterations, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=batch_size,
                   help="images per optimizer step, over all processes: under torchrun "
                        "each of the N processes loads batch-size / N"
                        + (f" (default: {per_method})" if batch_size is None else ""))
    g.add_argument("--lr", type=float, default=lr,
                   help="initial learning rate" + (f" (default: {per_method})" if lr is None else ""))
    g.add_argument("--rho", type=float, default=0.95, help="AdaDelta decay rate")
    g.add_argument("--eps", type=float, default=1e-8, help="AdaDelta epsilon (DTRB)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty")
    g.add_argument("--grad-clip", type=float, default=5.0, help="max gradient norm; 0: off")
    g.add_argument("--lr-milestones", type=float, nargs="*", default=[0.6, 0.8],
                   help="fractions of --iterations where the lr is multiplied by --lr-gamma")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="lr factor per milestone")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recognizer")
    g.add_argument("--decoder", choices=("ctc", "attention"), default="attention",
                   help="text decoder")
    g.add_argument("--preset", choices=("paper", "small"), default="paper",
                   help="model sizes: DTRB / SeqCLR, or small for CPU")
    g.add_argument("--tps", action=argparse.BooleanOptionalAction, default=True,
                   help="TPS rectification stage")
    g.add_argument("--bilstm", action=argparse.BooleanOptionalAction, default=True,
                   help="BiLSTM sequence-modelling stage")
    g.add_argument("--charset", choices=sorted(CHARSETS), default="printable",
                   help="95 printable ASCII symbols, + French accents, or [0-9a-z]")
    g.add_argument("--max-length", type=int, default=25, help="longest label kept / decoded")
    g.add_argument("--height", type=int, default=32, help="image height")
    g.add_argument("--width", type=int, default=100,
                   help="image width (with --keep-ratio: the TPS output width)")
    g.add_argument("--keep-ratio", action="store_true",
                   help="resize to --height keeping the aspect ratio, pad per batch")


def make_charset(config: dict) -> Charset:
    return CHARSETS[config["charset"]]()


def make_recognizer(config: dict, charset: Charset) -> Recognizer:
    return Recognizer(RecognizerConfig(
        num_chars=len(charset), preset=config["preset"], tps=config["tps"],
        sequence_model=config["bilstm"], decoder=config["decoder"],
        image_size=(config["height"], config["width"]), max_length=config["max_length"]))


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


def _saved_config(config: dict) -> dict:
    from .cli import RUN_CONTROL_KEYS
    return {k: v for k, v in config.items() if k not in RUN_CONTROL_KEYS}


# What a shell reports for a process ended by SIGTERM: the run stopped early (checkpoint
# saved), so nothing downstream (encoder.pt, test scores, the default run) may treat it
# as finished.
SIGTERM_EXIT = 128 + signal.SIGTERM


def run_task(config: dict, task: Task) -> int:
    """Build the Trainer, resume if asked, train; returns the process exit status: 0 when
    done or paused by --stop-after, 1 diverged, 2 refused, SIGTERM_EXIT on SIGTERM."""
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
