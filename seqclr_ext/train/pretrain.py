"""``pretrain``: self-supervised pre-training of the recognizer's encoder on unlabeled
images with SeqCLR (§3): each image is augmented twice (Appendix B), both views go through
the base encoder (R = V or H) and a projection head, and ``seq_nce`` contrasts their
instances (all / window / frame mapping). ``--method simclr`` is Table 1's non-sequential
baseline (SimCLR augmentations, the whole flattened map as one instance; with
``--representation H``, "SimCLR contextual"). ``--method siman`` is SimAN's generative
pretext task (Algorithm 1: recover an augmented patch from its neighbour's styles; Adam,
LSGAN); it writes PNG grids (content | style | augmented | recovered) to RUN_DIR/samples/.
Labels in the LMDBs are ignored.

Writes RUN_DIR/encoder.pt (the encoder's weights + the recognizer config) for
``decoder-eval`` and ``finetune``. The views (crops, augmentations) of step s come from a
generator seeded with (seed, s) (and the rank under torchrun), so ``--resume`` sees exactly
those of an uninterrupted run with as many processes.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset

from .. import checkpoints
from ..data import LmdbDataset, RecognitionCollate
from ..data.augment import make_augment
from ..methods import SeqCLR, SimAN, SimCLR
from ..methods.seqclr import MAPPINGS
from ..methods.siman import crop_patches
from ..models import HEADS
from . import distributed
from .options import (PRETRAIN_STEPS, Repeat, add_model_arguments, add_trainer_arguments,
                      apply_recipe, make_charset, make_recognizer)
from .running import resumable_loader, run_task, seed_everything, step_generator
from .trainer import Task

NAME = "pretrain"
HELP = ("self-supervised pre-training of the encoder (SeqCLR, its SimCLR baseline, or SimAN) "
        "on unlabeled LMDB images")
REQUIRED = ("train", "run_dir")

# The recipes of SeqCLR / SimCLR pre-training: "paper" is SeqCLR Appendix D (AdaDelta lr 10,
# batch 1024), "fast" the one measured to learn fastest on CPUs. SimAN has its own Adam
# (§4.2: lr 1e-4, batch 256): a recipe only sets its batch size and lr.
METHODS = ("seqclr", "simclr", "siman")
CONTRASTIVE_RECIPES = {
    "paper": dict(optimizer="adadelta", lr=10.0, weight_decay=1e-4, schedule="step",
                  warmup=0.0, lr_milestones=[0.6, 0.8], lr_gamma=0.1, batch_size=1024),
    "fast": dict(optimizer="adamw", lr=1e-3, weight_decay=0.01, schedule="onecycle",
                 warmup=0.05, lr_milestones=[], lr_gamma=0.1, batch_size=64),
}
SIMAN_RECIPES = {"paper": dict(lr=1e-4, batch_size=256), "fast": dict(lr=1e-4, batch_size=64)}


def add_arguments(p) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--train", action=Repeat, metavar="LMDB",
                   help="LMDB of (unlabeled) images; labels are ignored (repeatable)")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=METHODS, default="seqclr",
                   help="SeqCLR, the SimCLR baseline (fixed-size images only), or SimAN "
                        "(images keep their aspect ratio)")
    g.add_argument("--representation", choices=("H", "V"), default="H",
                   help="R = H (after the BiLSTM) or V (visual features, ResNet output)")
    g.add_argument("--head", choices=HEADS, default="bilstm",
                   help="SeqCLR projection head (SimCLR always uses its MLP)")
    g.add_argument("--mapping", choices=MAPPINGS, default="window",
                   help="SeqCLR instance mapping")
    g.add_argument("--num-windows", type=int, default=5, help="T' of the window mapping")
    g.add_argument("--temperature", type=float, default=0.1, help="τ of the NT-Xent loss")
    g = p.add_argument_group("SimAN (--method siman: its own Adam; --optimizer, --schedule, "
                             "--weight-decay do not apply)")
    g.add_argument("--siman-kernel", type=int, default=3,
                   help="k of the k×k neighbourhood of the local style statistics")
    g.add_argument("--l2-weight", type=float, default=10.0,
                   help="λ of the generator loss L_adv + λ·L2")
    g.add_argument("--final-lr", type=float, default=1e-5,
                   help="the lr decays linearly from --lr to this")
    g.add_argument("--adam-betas", type=float, nargs=2, default=[0.5, 0.999], help="Adam β1 β2")
    g.add_argument("--sample-every", type=int, default=1000,
                   help="steps between PNG grids in RUN_DIR/samples/; 0: none")
    add_model_arguments(p)
    # 400K iterations for scene text in both papers.
    add_trainer_arguments(p, iterations=PRETRAIN_STEPS, recipes=CONTRASTIVE_RECIPES)


def encoder_checkpoint(method: SeqCLR | SimCLR | SimAN) -> dict:
    return {"model_config": asdict(method.recognizer.config),
            "encoder_state": method.encoder_state(),
            "representation": method.representation}


def save_patch_grid(path: Path, columns: list[torch.Tensor], rows: int = 8) -> None:
    """A PNG of the first ``rows`` samples, one column per tensor [B, C, h, w] in [-1, 1]."""
    cells = [c[:rows].detach().float().cpu().clamp(-1, 1) for c in columns]
    grid = torch.cat([torch.cat(list(c), dim=-1) for c in zip(*cells)], dim=-2)   # [C, H, W]
    pixels = ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else np.ascontiguousarray(pixels)
                    ).save(path)


def _contrastive_task(config: dict, recognizer, batches) -> Task:
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

    def loss(model, item):
        step, batch = item
        images = batch["images"].to(device)
        widths = batch["widths"].to(device) if batch["widths"] is not None else None
        generator = step_generator(config, step)
        views = [augment(images, widths, generator) for _ in range(2)]
        return model(*views, widths), {}

    return Task(method, batches, loss, best_metric="none", checkpoint_kind="pretrain")


def _siman_task(config: dict, recognizer, batches) -> Task:
    method = SimAN(recognizer, kernel_size=config["siman_kernel"],
                   l2_weight=config["l2_weight"])
    adam = lambda params: torch.optim.Adam(params, lr=config["lr"],  # noqa: E731
                                           betas=tuple(config["adam_betas"]))
    optimizers = {"generator": adam(method.generator_parameters()),
                  "discriminator": adam(method.discriminator.parameters())}
    end = config["final_lr"] / config["lr"]
    decay = lambda step: 1 - (1 - end) * min(step, config["iterations"]) / config["iterations"]  # noqa: E731,E501
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, decay) for k, o in optimizers.items()}
    augment = make_augment("siman")
    device, every = config["device"], config["sample_every"]
    samples = Path(config["run_dir"], "samples")

    def train_step(item):
        step, batch = item
        generator = step_generator(config, step)
        widths = batch["widths"].to(device) if batch["widths"] is not None else None
        style, content, narrow = crop_patches(batch["images"].to(device), widths, generator)
        augmented = augment(content, None, generator)
        loss, scalars, recovered = method.step(style, content, augmented,
                                               optimizers["generator"],
                                               optimizers["discriminator"])
        if every and (step + 1) % every == 0:
            save_patch_grid(samples / f"step_{step + 1:07d}.png",
                            [content, style, augmented, recovered])
        return loss, {**scalars, "narrow_images": narrow}

    return Task(method, batches, None, best_metric="none", optimizers=optimizers,
                schedulers=schedulers, train_step=train_step, checkpoint_kind="siman")


def resolve_defaults(config: dict) -> None:
    """The recipe's optimization options where the command line and YAML left them unset
    (SimAN: its own lr and batch size first)."""
    if config["method"] == "siman":
        apply_recipe(config, SIMAN_RECIPES)
    apply_recipe(config, CONTRASTIVE_RECIPES)


def run(config: dict) -> int:
    run_dir = Path(config["run_dir"])
    parts = [LmdbDataset(path, None, max_length=None) for path in config["train"]]
    for part in parts:
        distributed.log(part.report())
    data = ConcatDataset(parts)
    # SimAN crops patches from images resized to the height keeping their aspect ratio.
    keep_ratio = config["keep_ratio"] or config["method"] == "siman"
    collate = RecognitionCollate(None, height=config["height"], width=config["width"],
                                 keep_ratio=keep_ratio)
    seed_everything(config["seed"])
    recognizer = make_recognizer(config, make_charset(config))

    def batches(step: int):
        return enumerate(resumable_loader(data, collate, config, step), start=step)

    make_task = _siman_task if config["method"] == "siman" else _contrastive_task
    task = make_task(config, recognizer, batches)
    status = run_task(config, task)
    if status == 0 and distributed.is_main():
        checkpoints.save(encoder_checkpoint(task.model), run_dir / "encoder.pt", "encoder")
        distributed.log(f"encoder: {run_dir / 'encoder.pt'}")
    return status
