"""Recognizer training, shared by ``supervised``, ``decoder-eval`` and ``finetune``: the
labelled data options, the training set (label fraction / subset), ``--init`` and the
training run with its validation and final test scores."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset

from ..data import LmdbDataset, RecognitionCollate, load_or_make_subset
from ..data.augment import SeqCLRAugment
from ..evaluate import evaluate_dataset, format_table, load_checkpoint, predict
from ..metrics import evaluate as score
from ..models import Recognizer, RecognizerConfig
from ..task import Task
from . import distributed
from .options import RECOGNIZER_RECIPES, Repeat, apply_recipe
from .running import resumable_loader, run_task, step_generator

__all__ = ["add_data_arguments", "resolve_defaults", "init_from_checkpoint",
           "train_recognizer"]


def add_data_arguments(p) -> None:
    """Labelled data options of supervised, decoder-eval and finetune."""
    g = p.add_argument_group("data")
    g.add_argument("--train", action=Repeat, metavar="LMDB", help="training LMDB (repeatable)")
    g.add_argument("--val", action=Repeat, metavar="LMDB", help="validation LMDB (repeatable)")
    g.add_argument("--test", action=Repeat, metavar="LMDB",
                   help="LMDB scored with the final model after training (repeatable)")
    g.add_argument("--label-fraction", type=float, default=1.0,
                   help="train on a fixed random subset of this fraction of the samples; "
                        "saved as RUN_DIR/label_subset.json")
    g.add_argument("--label-subset", metavar="JSON",
                   help="reuse exactly the subset saved by another run")
    g.add_argument("--alphanumeric", action="store_true",
                   help="validation and test scored case-insensitively on [0-9a-z]")
    g.add_argument("--augment", type=float, default=0.0, metavar="P",
                   help="fraction of the training images drawn through SeqCLR's "
                        "sequence-preserving augmentations each step (contrast, blur, "
                        "sharpen, crops, local warp, perspective); 0 = none")


def resolve_defaults(config: dict) -> None:
    apply_recipe(config, RECOGNIZER_RECIPES)
    if not 0 <= config["augment"] <= 1:
        raise SystemExit(f"error: --augment must lie in [0, 1], got {config['augment']}")


def training_set(config: dict, charset, run_dir: Path):
    parts = [LmdbDataset(p, charset, max_length=config["max_length"]) for p in config["train"]]
    for part in parts:
        distributed.log(part.report())
    data = ConcatDataset(parts)
    subset_file = run_dir / "label_subset.json"
    if not (config["label_subset"] or config["label_fraction"] < 1):
        return data
    with distributed.main_first():  # rank 0 writes the subset file, the others read it
        if config["label_subset"] and \
                Path(config["label_subset"]).resolve() != subset_file.resolve():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(config["label_subset"], subset_file)
        indices = load_or_make_subset(subset_file, len(data), config["label_fraction"],
                                      config["seed"], sources=config["train"])
    distributed.log(f"label subset: {len(indices)} samples ({subset_file})")
    return Subset(data, indices)


def init_from_checkpoint(path, charset, decoder: str, max_length: int,
                         ctc_weight: float) -> Recognizer:
    """The recognizer of checkpoint ``path`` with its weights, for ``charset`` and
    ``decoder``: another decoder is built afresh, another charset re-initializes the
    decoder's class-indexed tensors; a log line names the re-initialized tensors."""
    try:
        source, source_charset, ckpt = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: --init {e}") from None   # e names the file
    model = Recognizer(RecognizerConfig(**{**asdict(source.config), "num_chars": len(charset),
                                           "decoder": decoder, "max_length": max_length,
                                           "ctc_weight": ctc_weight}))
    state, why = source.state_dict(), None
    if source.config.decoder != decoder:
        why = f"decoder {source.config.decoder} -> {decoder}"
        state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    elif source_charset.symbols != charset.symbols:
        why = f"charset of {len(source_charset)} -> {len(charset)} symbols"
        fresh = {"decoder." + name for name in model.decoder.class_parameters}
        state = {k: v for k, v in state.items() if k not in fresh}
    missing = model.load_state_dict(state, strict=False).missing_keys
    note = f"; re-initialized ({why}): {', '.join(missing)}" if missing else ""
    distributed.log(f"--init {path} (step {ckpt.get('step')}): loaded {len(state)} "
                    f"tensors{note}")
    return model


def train_recognizer(config: dict, model, charset) -> int:
    """Trains ``model`` on config["train"] (label fraction / subset applied), validates on
    config["val"], then scores the final model on each config["test"] LMDB (a table on
    stdout, RUN_DIR/test_metrics.json). Shared by supervised, decoder-eval and finetune."""
    run_dir = Path(config["run_dir"])
    train = training_set(config, charset, run_dir)
    collate = RecognitionCollate(charset, height=config["height"], width=config["width"],
                                 keep_ratio=config["keep_ratio"])
    device, bs = config["device"], config["batch_size"]
    eval_collate = RecognitionCollate(None, height=config["height"], width=config["width"],
                                      keep_ratio=config["keep_ratio"])

    augment = SeqCLRAugment()

    def batches(step: int):
        return enumerate(resumable_loader(train, collate, config, step), start=step)

    def loss(model, item):
        step, batch = item
        batch = batch.to(device)
        images = batch.images
        if config["augment"] > 0:
            generator = step_generator(config, step)
            chosen = torch.rand(len(images), generator=generator, device=images.device)
            images = torch.where((chosen < config["augment"])[:, None, None, None],
                                 augment(images, batch.widths, generator), images)
        out = model(images, batch.widths, batch.targets, batch.target_lengths)
        return out["loss"], {}

    validate = None
    if config["val"]:
        val = ConcatDataset([LmdbDataset(p, None, max_length=None, skip_unreadable=False)
                             for p in config["val"]])
        val_loader = DataLoader(val, batch_size=bs, num_workers=config["workers"],
                                collate_fn=eval_collate)

        def validate():
            preds, labels = predict(model, charset, val_loader, device)
            return score(preds, labels, alphanumeric=config["alphanumeric"])

    extra = {"model_config": asdict(model.config),
             "charset": {"symbols": charset.symbols, "case_insensitive": charset.case_insensitive}}
    status = run_task(config, Task(model, batches, loss, validate, extra_state=extra))
    if status == 0 and config["test"] and distributed.is_main():
        results = {path: evaluate_dataset(model, charset, path, eval_collate, device=device,
                                          batch_size=bs, alphanumeric=config["alphanumeric"])[0]
                   for path in config["test"]}
        (run_dir / "test_metrics.json").write_text(json.dumps(results, indent=2))
        print(format_table(results))
    return status
