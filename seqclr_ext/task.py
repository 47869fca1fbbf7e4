"""What a training run hands the Trainer (``train.trainer``). Below ``methods`` and
``train``, so that each pre-training method builds its own task without importing train."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Task"]


@dataclass
class Task:
    """What a subcommand trains. ``batches(step)`` yields the batches from ``step`` on (a
    deterministic function of the step, for exact resume; under torchrun this rank's share
    of them); ``loss(model, batch)`` returns the scalar loss and optionally more scalars to
    log, calling ``model`` — the task's model, or its DistributedDataParallel wrapper under
    torchrun, whose forward sets up the gradient averaging; ``validate()`` returns
    metrics, of which ``best_metric`` (higher is better) selects ``best.pt``.

    By default the Trainer makes one optimizer (+ schedule) of the config over the model's
    parameters and does the step itself (zero_grad, backward, clipping). A task that
    optimizes differently (SimAN's alternating generator / discriminator updates with Adam)
    passes its own ``optimizers`` / ``schedulers`` by name (all saved and resumed) and a
    ``train_step(batch) -> (loss, scalars)`` that does the backward passes and steps; the
    Trainer still checks the loss, steps the schedulers, logs, validates and saves (such a
    task runs in one process, without autocast)."""
    model: torch.nn.Module
    batches: Callable[[int], Iterator[Any]]
    # loss(model, batch), model being the (DDP-wrapped) task.model; None with train_step.
    loss: Callable[[Callable, Any], tuple[torch.Tensor, dict[str, float]]] | None
    validate: Callable[[], dict[str, float]] | None = None
    best_metric: str = "word_accuracy"
    extra_state: dict = field(default_factory=dict)   # saved in every checkpoint (charset…)
    optimizers: dict[str, torch.optim.Optimizer] | None = None
    schedulers: dict[str, Any] | None = None
    train_step: Callable[[Any], tuple[torch.Tensor, dict[str, float]]] | None = None
    checkpoint_kind: str = "recognizer"   # of last.pt / best.pt (see checkpoints.KINDS)
