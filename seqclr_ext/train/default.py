"""``default`` (also what ``python -m seqclr_ext.train`` runs with no arguments): the
built-in demonstration of SeqCLR's promise, end to end — pre-training on unlabeled images
makes a better recognizer from few labels (SeqCLR Table 2's semi-supervised setting).

1. renders the built-in data (scene-like by default) into DATA_DIR (reused when present):
   training images, a validation set (training fonts, another seed) and a test set
   (held-out fonts and words),
2. pre-trains the recognizer's encoder with SeqCLR (window-to-instance, BiLSTM head) on all
   the training images without their labels,
3. trains a recognizer on ``--label-fraction`` of the labels twice — from scratch
   (supervised) and from the SeqCLR encoder (fine-tuning) — with the same labelled subset
   and the same number of steps,
4. prints the two rows' test scores as a markdown table, what they mean and where the runs
   are.

The defaults (small preset on CPU, the paper's sizes on a GPU) finish in minutes; every size
is an option. Running it again reuses the finished runs and continues an interrupted one.
The helpers below (built-in data, run a subcommand once, read its test scores, markdown)
also serve the experiment drivers in python/.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import NamedTuple

import yaml

from ..data import read_meta, render_meta, render_split
from ..models import PRESETS
from .common import (DEFAULT_PRESET, DEFAULT_RECIPE, DEFAULT_WORKERS, HAS_CUDA,
                     RECOGNIZER_RECIPES)

NAME = "default"
HELP = ("the built-in demo: render data, SeqCLR pre-training, supervised vs SeqCLR "
        "fine-tuning on few labels, table")
REQUIRED = ()

STYLES = ("scene", "hand")


def add_experiment_arguments(p) -> None:
    """The options the demo shares with the experiment drivers in python/: the built-in
    data, the model size, the steps of each run and how the runs execute."""
    g = p.add_argument_group("data (the built-in renderer)")
    g.add_argument("--data-dir", default="runs/data",
                   help="where the built-in LMDBs are rendered (reused when present)")
    g.add_argument("--style", choices=STYLES, default="scene",
                   help="scene-like (print fonts) or handwriting-like text")
    g.add_argument("--num-train", type=int, default=20_000,
                   help="training images (the unlabeled pool of pre-training too)")
    g.add_argument("--num-val", type=int, default=500,
                   help="validation images (training fonts, another seed)")
    g.add_argument("--num-test", type=int, default=1_000,
                   help="test images (held-out fonts and words)")
    g = p.add_argument_group("runs")
    g.add_argument("--run-dir", help="folder of the runs")
    g.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                   help="recognizer sizes: small without a GPU, paper with one")
    g.add_argument("--recipe", choices=tuple(RECOGNIZER_RECIPES), default=DEFAULT_RECIPE,
                   help="optimization recipe of every run (see train supervised --help)")
    # CPU defaults: the demo's three runs fit 10 minutes on 2 cores (measured, README).
    g.add_argument("--pretrain-steps", type=int, default=5_000 if HAS_CUDA else 300,
                   help="steps of each pre-training run")
    g.add_argument("--eval-steps", type=int, default=5_000 if HAS_CUDA else 900,
                   help="steps of each recognizer run (decoder evaluation, fine-tuning, "
                        "supervised)")
    g.add_argument("--batch-size", type=int, default=None if HAS_CUDA else 32,
                   help="batch of every run: 32 without a GPU; with one, the recipe's for "
                        "each kind of run")
    g.add_argument("--width", type=int, default=100,
                   help="image width of every run (height 32); wider reads long words better")
    g.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help="DataLoader worker processes per run (0: in the training process)")
    g.add_argument("--device", default="cuda" if HAS_CUDA else "cpu", help="torch device")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars")


def add_arguments(p) -> None:
    add_experiment_arguments(p)
    p.set_defaults(run_dir="runs/default")
    p.add_argument("--label-fraction", type=float, default=0.1,
                   help="fraction of the training labels the two recognizers learn from")


class BuiltInData(NamedTuple):
    train: Path
    val: Path
    test: Path


def built_in_data(config: dict) -> BuiltInData:
    """The style's training, validation and test LMDBs of config's sizes in
    config["data_dir"], rendered once and reused while the renderer stays the same.
    Validation images are more of the training split (its fonts and words) from another
    seed; test images come from the held-out fonts and words."""
    style = config["style"]
    splits = {"train": (f"{style}-train", 0, config["num_train"]),
              "val": (f"{style}-train", 1, config["num_val"]),
              "test": (f"{style}-test", 0, config["num_test"])}
    paths = {}
    for part, (split, seed, num) in splits.items():
        name = split if seed == 0 else f"{style}-val"
        path = paths[part] = Path(config["data_dir"], f"{name}-{num}.lmdb")
        if read_meta(path) != render_meta(split, num, seed):
            if path.exists():
                print(f"{path}: rendered by another renderer version; rendering it again",
                      file=sys.stderr)
            print(render_split(split, path, num, seed=seed, workers=2, overwrite=True,
                               progress=config["progress"]), file=sys.stderr)
    return BuiltInData(**paths)


def run_flags(config: dict, *, validate: bool = False) -> list[str]:
    """The options every run of an experiment shares (model size, recipe, device)."""
    flags = ["--preset", config["preset"], "--recipe", config["recipe"],
             "--workers", str(config["workers"]), "--device", config["device"],
             "--width", str(config["width"]), "--log-every", "50", "--no-tensorboard"]
    if config.get("batch_size"):
        flags += ["--batch-size", str(config["batch_size"])]
    if not validate:
        flags += ["--val-every", "0"]
    return flags if config["progress"] else [*flags, "--no-progress"]



def run_once(argv: list[str], run_dir: Path, result: str) -> Path:
    """Runs the subcommand ``argv`` (without --run-dir) in ``run_dir`` unless
    ``run_dir/result`` exists, continuing an interrupted run from its last.pt; returns the
    result's path. A run folder that holds a run of other options is an error, not reused."""
    from .cli import (COMMANDS, EXECUTION_KEYS, RUN_CONTROL_KEYS,  # cli lists this module
                      parse, removed_if_unstarted)
    run_dir = Path(run_dir)
    done = (run_dir / result).exists()
    resume = not done and (run_dir / "last.pt").exists()
    config = parse([*argv, "--run-dir", str(run_dir), *(["--resume"] if resume else [])])
    if done or resume:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        differ = [f"{k}: {saved.get(k)!r}, not {v!r}" for k, v in config.items()
                  if k not in RUN_CONTROL_KEYS and k not in EXECUTION_KEYS
                  and saved.get(k) != v]
        if differ:
            raise SystemExit(f"error: {run_dir} holds a run of other options "
                             f"({'; '.join(differ)}): remove it or choose another folder")
    if not done:
        with removed_if_unstarted(run_dir):
            status = COMMANDS[config["command"]].run(config)
        if status != 0:
            raise SystemExit(status)
    return run_dir / result


def read_test_metrics(run_dir: Path, test: Path) -> dict[str, float]:
    """The scores of a run's final model on ``test`` (RUN_DIR/test_metrics.json)."""
    return json.loads((Path(run_dir) / "test_metrics.json").read_text())[str(test)]


def markdown_table(header: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(map(str, row)) + " |" for row in rows)])


METRICS = {"word accuracy": "word_accuracy", "ED1 accuracy": "ed1_accuracy", "CER": "cer",
           "1 - NED": "one_minus_ned"}


def run(config: dict) -> int:
    data = built_in_data(config)
    root = Path(config["run_dir"])
    encoder = run_once(["pretrain", "--train", str(data.train),
                        "--iterations", str(config["pretrain_steps"]), *run_flags(config)],
                       root / "pretrain-seqclr", "encoder.pt")
    labels = ["--label-fraction", str(config["label_fraction"])]
    runs = {"supervised": (root / "supervised", ["supervised"]),
            "SeqCLR fine-tuned": (root / "finetune-seqclr",
                                  ["finetune", "--encoder", str(encoder)])}
    rows = []
    for name, (run_dir, argv) in runs.items():
        # The first run writes the labelled subset; the second trains on the very same one.
        subset = runs["supervised"][0] / "label_subset.json"
        same = ["--label-subset", str(subset)] if name != "supervised" else []
        run_once([*argv, "--train", str(data.train), "--val", str(data.val), "--test",
                  str(data.test), "--decoder", "ctc", *labels, *same,
                  "--iterations", str(config["eval_steps"]),
                  "--val-every", str(max(1, config["eval_steps"] // 4)),
                  *run_flags(config, validate=True)], run_dir, "test_metrics.json")
        m = read_test_metrics(run_dir, data.test)
        rows.append([name, *(f"{100 * m[k]:.1f} %" if k != "one_minus_ned" else f"{m[k]:.3f}"
                             for k in METRICS.values())])
    labelled = len(json.loads(subset.read_text())["indices"])
    print(f"\nRecognizers trained on {labelled} labelled images "
          f"({100 * config['label_fraction']:g} % of {data.train.name}) for "
          f"{config['eval_steps']} steps each, CTC decoder, {config['preset']} preset; "
          f"scores on {data.test} (fonts and words held out from training):\n")
    print(markdown_table(["recognizer", *METRICS], rows))
    print(f"\n- supervised: trained from random initialization on the labelled images only.\n"
          f"- SeqCLR fine-tuned: its encoder first pre-trained with SeqCLR for "
          f"{config['pretrain_steps']} steps on all {config['num_train']} training images "
          f"without labels ({encoder}), then trained end to end on the same labelled images.\n"
          f"Runs, checkpoints and curves: {root}/. The paper's sizes (a GPU): "
          f"{shlex.join(PAPER_SIZE)}")
    return 0


# The same experiment at the paper's sizes (SeqCLR Appendix D: paper preset, long runs).
PAPER_SIZE = ["python", "-m", "seqclr_ext.train", "default", "--preset", "paper",
              "--recipe", "paper", "--num-train", "200000", "--pretrain-steps", "100000",
              "--eval-steps", "50000", "--device", "cuda", "--workers", "8",
              "--run-dir", "runs/default-paper"]
