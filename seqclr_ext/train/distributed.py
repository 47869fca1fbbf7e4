"""Data-parallel training under ``torchrun`` (one process per device).

``torchrun --nproc_per_node N -m seqclr_ext.train <subcommand> ...`` starts N processes
with RANK, WORLD_SIZE and LOCAL_RANK set. :func:`session` joins them in a process group
(NCCL on CUDA, gloo on CPU) and gives each the device LOCAL_RANK. Each rank then loads its
1/N of every global batch (``ResumableBatchSampler(rank=, world_size=)``), the Trainer wraps
the model in DistributedDataParallel (gradients averaged over ranks), the contrastive
losses gather the negatives of every rank (``methods.contrastive``), and only rank 0
writes files and prints progress. Started without torchrun, or with one process, this is
rank 0 of 1 and nothing changes.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.distributed as dist

__all__ = ["session", "active", "rank", "world_size", "is_main", "log", "main_first",
           "mean", "any_rank"]


def active() -> bool:
    """A process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes checkpoints, metrics and reports."""
    return rank() == 0


def log(*args) -> None:
    """A progress message on stderr, from rank 0 only."""
    if is_main():
        print(*args, file=sys.stderr)


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. writes a file), then the other ranks (read it)."""
    if not is_main():
        dist.barrier()
    yield
    if is_main() and active():
        dist.barrier()


def mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over the ranks (itself on one process); no gradient."""
    if not active():
        return value.detach()
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (a stop all must agree on,
    e.g. a SIGTERM that reached the ranks between two different steps)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@contextlib.contextmanager
def session(config: dict):
    """Joins the process group of a torchrun launch with more than one process for the
    duration of a training command, and sets ``config["device"]`` to this rank's GPU
    (``cuda:LOCAL_RANK``) when it is a CUDA device. Without torchrun it does nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield
        return
    if config["batch_size"] % world:
        raise SystemExit(f"error: --batch-size {config['batch_size']} must be a multiple of "
                         f"the number of processes ({world}): it is the global batch")
    device = torch.device(config["device"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        config["device"] = str(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()
