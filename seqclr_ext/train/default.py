"""``default`` (also what ``python -m seqclr_ext.train`` runs with no arguments): the
built-in demonstration of SeqCLR on the built-in data, end to end.

1. renders the built-in scene-like splits into DATA_DIR (reused when present),
2. pre-trains a recognizer's encoder with SeqCLR (window-to-instance, BiLSTM head) on the
   scene-train images without their labels,
3. runs the decoder evaluation (frozen encoder, CTC decoder trained on the labels) for the
   SeqCLR encoder and for a randomly initialized one,
4. prints the two rows' scene-test metrics.

The defaults (small preset on CPU, the paper preset on a GPU) finish in minutes; every size
is an option. Running it again reuses the finished runs and continues an interrupted one.
The helpers below (built-in data, run a subcommand once, read its test scores, markdown)
also serve the experiment drivers in python/.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml

from ..data import render_split

NAME = "default"
HELP = "the built-in demo: render data, SeqCLR pre-training, decoder evaluation, table"
REQUIRED = ()

_GPU = torch.cuda.is_available()


def add_arguments(p) -> None:
    p.add_argument("--data-dir", default="runs/data", help="built-in data (rendered if missing)")
    p.add_argument("--run-dir", default="runs/default", help="folder of the runs")
    p.add_argument("--num-train", type=int, default=20_000, help="scene-train images")
    p.add_argument("--num-test", type=int, default=1_000, help="scene-test images")
    p.add_argument("--preset", choices=("paper", "small"), default="paper" if _GPU else "small")
    p.add_argument("--pretrain-steps", type=int, default=5_000 if _GPU else 250,
                   help="steps of each pre-training run")
    p.add_argument("--eval-steps", type=int, default=5_000 if _GPU else 250,
                   help="steps of each recognizer run (decoder evaluation, fine-tuning, "
                        "supervised)")
    p.add_argument("--batch-size", type=int, default=256 if _GPU else 64)
    p.add_argument("--contrastive-lr", type=float, default=10.0 if _GPU else 1.0,
                   help="AdaDelta lr of the SeqCLR / SimCLR pre-training runs (default: "
                        "SeqCLR App. D's 10 on a GPU; 1 on CPU, where short small-batch runs "
                        "at 10 collapse to a constant representation)")
    p.add_argument("--workers", type=int, default=4 if _GPU else 1)
    p.add_argument("--device", default="cuda" if _GPU else "cpu")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")


def built_in_data(config: dict) -> tuple[Path, Path]:
    """The scene-train and scene-test LMDBs of config's sizes in config["data_dir"],
    rendered once and reused."""
    paths = []
    for split, num in (("scene-train", config["num_train"]), ("scene-test", config["num_test"])):
        path = Path(config["data_dir"], f"{split}-{num}.lmdb")
        if not (path / "data.mdb").exists():
            print(render_split(split, path, num, workers=max(1, config["workers"]),
                               progress=config["progress"]), file=sys.stderr)
        paths.append(path)
    return paths[0], paths[1]


def run_flags(config: dict) -> list[str]:
    """The options every run of an experiment shares (model size, batch, device)."""
    flags = ["--preset", config["preset"], "--batch-size", str(config["batch_size"]),
             "--workers", str(config["workers"]), "--device", config["device"],
             "--val-every", "0", "--log-every", "50", "--no-tensorboard"]
    return flags if config["progress"] else [*flags, "--no-progress"]


# Options that change how a run executes, not what it computes: a finished run is reused
# whatever they were.
_EXECUTION_KEYS = {"workers", "device", "progress", "tensorboard", "log_every", "save_every"}


def run_once(argv: list[str], run_dir: Path, result: str) -> Path:
    """Runs the subcommand ``argv`` (without --run-dir) in ``run_dir`` unless
    ``run_dir/result`` exists, continuing an interrupted run from its last.pt; returns the
    result's path. A run folder that holds a run of other options is an error, not reused."""
    from .cli import COMMANDS, RUN_CONTROL_KEYS, parse  # cli lists this module
    run_dir = Path(run_dir)
    done = (run_dir / result).exists()
    resume = not done and (run_dir / "last.pt").exists()
    config = parse([*argv, "--run-dir", str(run_dir), *(["--resume"] if resume else [])])
    if done or resume:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        differ = [f"{k}: {saved.get(k)!r}, not {v!r}" for k, v in config.items()
                  if k not in RUN_CONTROL_KEYS and k not in _EXECUTION_KEYS
                  and saved.get(k) != v]
        if differ:
            raise SystemExit(f"error: {run_dir} holds a run of other options "
                             f"({'; '.join(differ)}): remove it or choose another folder")
    if not done:
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


def run(config: dict) -> int:
    train, test = built_in_data(config)
    root = Path(config["run_dir"])
    flags = run_flags(config)
    encoder = run_once(["pretrain", "--train", str(train), "--lr", str(config["contrastive_lr"]),
                        "--iterations", str(config["pretrain_steps"]), *flags],
                       root / "pretrain-seqclr", "encoder.pt")
    rows = []
    for name, weights in (("random init", "random"), ("SeqCLR", str(encoder))):
        run_dir = root / f"decoder-eval-{name.split()[0].lower()}"
        run_once(["decoder-eval", "--encoder", weights, "--train", str(train), "--test",
                  str(test), "--decoder", "ctc", "--iterations", str(config["eval_steps"]),
                  *flags], run_dir, "test_metrics.json")
        m = read_test_metrics(run_dir, test)
        rows.append([name, *(f"{m[k]:.4f}" for k in
                             ("word_accuracy", "ed1_accuracy", "cer", "one_minus_ned"))])
    print(f"\nDecoder evaluation (frozen encoder, CTC decoder), {test}:")
    print(markdown_table(["encoder", "word accuracy", "ED1 accuracy", "CER", "1 - NED"], rows))
    return 0
