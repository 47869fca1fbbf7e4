"""What the demo (``default``) and the experiment drivers in python/ share: the built-in
data, running a subcommand once (reused when finished, resumed when interrupted), its test
scores and markdown tables. Above commands.py, whose subcommands it runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NamedTuple

import yaml

from ..data import read_meta, render_meta, render_split
from ..models import PRESETS
from .commands import COMMANDS, parse, removed_if_unstarted
from .options import (DEFAULT_PRESET, DEFAULT_RECIPE, DEFAULT_WORKERS, EXECUTION_KEYS, HAS_CUDA,
                      RECOGNIZER_RECIPES, RUN_CONTROL_KEYS)

__all__ = ["STYLES", "add_experiment_arguments", "BuiltInData", "built_in_data", "run_flags",
           "run_once", "read_test_metrics", "markdown_table"]

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
