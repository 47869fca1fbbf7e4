"""``pretrain``: self-supervised pre-training of the recognizer's encoder on unlabeled
images with SeqCLR (§3): each image is augmented twice (Appendix B), both views go through
the base encoder (R = V or H) and a projection head, and ``seq_nce`` contrasts their
instances (all / window / frame mapping). ``--method simclr`` is Table 1's non-sequential
baseline (SimCLR augmentations, the whole flattened map as one instance; with
``--representation H``, "SimCLR contextual"). Labels in the LMDBs are ignored.

Writes RUN_DIR/encoder.pt (the encoder's weights + the recognizer config) for
``decoder-eval`` and ``finetune``. The views of step s come from a generator seeded with
(seed, s) (and the rank under torchrun), so ``--resume`` sees exactly the views of an
uninterrupted run with as many processes.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from ..data import LmdbDataset, RecognitionCollate
from ..data.augment import make_augment
from ..methods import SeqCLR, SimCLR
from ..methods.seqclr import MAPPINGS
from ..models import HEADS
from . import distributed
from .common import (Repeat, add_model_arguments, add_trainer_arguments, make_charset,
                     make_recognizer, resumable_loader, run_task, seed_everything)
from .trainer import Task, save_atomic

NAME = "pretrain"
HELP = "self-supervised pre-training of the encoder (SeqCLR, or SimCLR) on unlabeled LMDB images"
REQUIRED = ("train", "run_dir")


def add_arguments(p) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--train", action=Repeat, metavar="LMDB",
                   help="LMDB of (unlabeled) images; labels are ignored (repeatable)")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=("seqclr", "simclr"), default="seqclr",
                   help="SeqCLR, or the SimCLR baseline (fixed-size images only)")
    g.add_argument("--representation", choices=("H", "V"), default="H",
                   help="R = H (after the BiLSTM) or V (visual features, ResNet output)")
    g.add_argument("--head", choices=HEADS, default="bilstm",
                   help="SeqCLR projection head (SimCLR always uses its MLP)")
    g.add_argument("--mapping", choices=MAPPINGS, default="window",
                   help="SeqCLR instance mapping")
    g.add_argument("--num-windows", type=int, default=5, help="T' of the window mapping")
    g.add_argument("--temperature", type=float, default=0.1, help="τ of the NT-Xent loss")
    add_model_arguments(p)
    # Appendix D: batch 1024, 400K iterations for scene text, AdaDelta lr 10.
    add_trainer_arguments(p, iterations=400_000, batch_size=1024, lr=10.0)


def encoder_checkpoint(method: SeqCLR | SimCLR) -> dict:
    return {"model_config": asdict(method.recognizer.config),
            "encoder_state": method.encoder_state(),
            "representation": method.representation}


def run(config: dict) -> int:
    run_dir = Path(config["run_dir"])
    parts = [LmdbDataset(path, None, max_length=None) for path in config["train"]]
    for part in parts:
        distributed.log(part.report())
    data = ConcatDataset(parts)
    collate = RecognitionCollate(None, height=config["height"], width=config["width"],
                                 keep_ratio=config["keep_ratio"])
    seed_everything(config["seed"])
    recognizer = make_recognizer(config, make_charset(config))
    if config["method"] == "simclr":
        if config["keep_ratio"]:
            raise SystemExit("error: --method simclr needs fixed-size images (no --keep-ratio)")
        method = SimCLR(recognizer, representation=config["representation"],
                        temperature=config["temperature"])
    else:
        method = SeqCLR(recognizer, representation=config["representation"],
                        head=config["head"], mapping=config["mapping"],
                        num_windows=config["num_windows"], temperature=config["temperature"])
    augment = make_augment(config["method"])
    device = config["device"]

    def batches(step: int):
        return enumerate(resumable_loader(data, collate, config, step), start=step)

    def loss(model, item):
        step, batch = item
        images = batch["images"].to(device)
        widths = batch["widths"].to(device) if batch["widths"] is not None else None
        seed = (config["seed"] * 1_000_003 + step) * distributed.world_size() + distributed.rank()
        generator = torch.Generator(device).manual_seed(seed)
        views = [augment(images, widths, generator) for _ in range(2)]
        return model(*views, widths), {}

    status = run_task(config, Task(method, batches, loss, best_metric="none"))
    if status == 0 and distributed.is_main():
        save_atomic(encoder_checkpoint(method), run_dir / "encoder.pt")
        distributed.log(f"encoder: {run_dir / 'encoder.pt'}")
    return status
