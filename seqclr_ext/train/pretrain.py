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

from functools import partial
from pathlib import Path

from torch.utils.data import ConcatDataset

from .. import checkpoints
from ..data import LmdbDataset, RecognitionCollate
from ..methods import seqclr, siman, simclr
from ..methods.seqclr import MAPPINGS
from ..models import HEADS
from . import distributed
from .options import (PRETRAIN_STEPS, Repeat, add_model_arguments, add_trainer_arguments,
                      apply_recipe, make_charset, make_recognizer)
from .running import resumable_loader, run_task, seed_everything, step_generator

NAME = "pretrain"
HELP = ("self-supervised pre-training of the encoder (SeqCLR, its SimCLR baseline, or SimAN) "
        "on unlabeled LMDB images")
REQUIRED = ("train", "run_dir")

# Each method builds its own training task (methods/<method>.py).
METHODS = {"seqclr": seqclr.training_task, "simclr": simclr.training_task,
           "siman": siman.training_task}
# The recipes of SeqCLR / SimCLR pre-training: "paper" is SeqCLR Appendix D (AdaDelta lr 10,
# batch 1024), "fast" the one measured to learn fastest on CPUs. SimAN has its own Adam
# (§4.2: lr 1e-4, batch 256): a recipe only sets its batch size and lr.
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


def resolve_defaults(config: dict) -> None:
    """The recipe's optimization options where the command line and YAML left them unset
    (SimAN: its own lr and batch size first)."""
    if config["method"] == "simclr" and config["keep_ratio"]:
        raise SystemExit("error: --method simclr needs fixed-size images (no --keep-ratio)")
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

    task = METHODS[config["method"]](config, recognizer, batches, partial(step_generator, config))
    status = run_task(config, task)
    if status == 0 and distributed.is_main():
        checkpoints.save(checkpoints.encoder_checkpoint(task.model), run_dir / "encoder.pt",
                         "encoder")
        distributed.log(f"encoder: {run_dir / 'encoder.pt'}")
    return status
