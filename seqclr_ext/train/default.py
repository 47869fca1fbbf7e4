"""``default`` (also what ``python -m seqclr_ext.train`` runs with no arguments): the
built-in demonstration of SeqCLR on the built-in data, end to end.

1. renders the built-in scene-like splits into DATA_DIR (reused when present),
2. pre-trains a recognizer's encoder with SeqCLR (window-to-instance, BiLSTM head) on the
   scene-train images without their labels,
3. runs the decoder evaluation (frozen encoder, CTC decoder trained on the labels) for the
   SeqCLR encoder and for a randomly initialized one,
4. prints the two rows' scene-test metrics.

The defaults (small preset on CPU, the paper preset on a GPU) finish in minutes; every size
is an option.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..data import render_split

NAME = "default"
HELP = "the built-in demo: render data, SeqCLR pre-training, decoder evaluation, table"
REQUIRED = ()

_GPU = torch.cuda.is_available()


def add_arguments(p) -> None:
    p.add_argument("--data-dir", default="runs/data", help="built-in data (rendered if missing)")
    p.add_argument("--run-dir", default="runs/default", help="folder of the three runs")
    p.add_argument("--num-train", type=int, default=20_000, help="scene-train images")
    p.add_argument("--num-test", type=int, default=1_000, help="scene-test images")
    p.add_argument("--preset", choices=("paper", "small"), default="paper" if _GPU else "small")
    p.add_argument("--pretrain-steps", type=int, default=5_000 if _GPU else 250)
    p.add_argument("--eval-steps", type=int, default=5_000 if _GPU else 250)
    p.add_argument("--batch-size", type=int, default=256 if _GPU else 64)
    p.add_argument("--workers", type=int, default=4 if _GPU else 1)
    p.add_argument("--device", default="cuda" if _GPU else "cpu")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")


def _data(config: dict) -> tuple[Path, Path]:
    paths = []
    for split, num in (("scene-train", config["num_train"]), ("scene-test", config["num_test"])):
        path = Path(config["data_dir"], f"{split}-{num}.lmdb")
        if not (path / "data.mdb").exists():
            print(render_split(split, path, num, workers=max(1, config["workers"]),
                               progress=config["progress"]), file=sys.stderr)
        paths.append(path)
    return paths[0], paths[1]


def _train(args: list[str]) -> None:
    from .cli import COMMANDS, parse  # cli lists this module
    config = parse(args)
    status = COMMANDS[config["command"]].run(config)
    if status != 0:
        raise SystemExit(status)


def run(config: dict) -> int:
    train, test = _data(config)
    root = Path(config["run_dir"])
    common = ["--preset", config["preset"], "--batch-size", str(config["batch_size"]),
              "--workers", str(config["workers"]), "--device", config["device"],
              "--val-every", "0", "--log-every", "50", "--no-tensorboard"]
    if not config["progress"]:
        common.append("--no-progress")
    pretrain_dir = root / "pretrain-seqclr"
    if not (pretrain_dir / "encoder.pt").exists():
        _train(["pretrain", "--train", str(train), "--run-dir", str(pretrain_dir),
                "--iterations", str(config["pretrain_steps"]), *common])
    results = {}
    for name, encoder in (("random init", "random"), ("SeqCLR", str(pretrain_dir / "encoder.pt"))):
        run_dir = root / f"decoder-eval-{name.split()[0].lower()}"
        if not (run_dir / "test_metrics.json").exists():
            _train(["decoder-eval", "--encoder", encoder, "--train", str(train), "--test",
                    str(test), "--run-dir", str(run_dir), "--decoder", "ctc",
                    "--iterations", str(config["eval_steps"]), *common])
        results[name] = json.loads((run_dir / "test_metrics.json").read_text())[str(test)]
    print(f"\nDecoder evaluation (frozen encoder, CTC decoder), {test}:")
    print("| encoder | word accuracy | ED1 accuracy | CER | 1 - NED |")
    print("|---|---|---|---|---|")
    for name, m in results.items():
        print(f"| {name} | {m['word_accuracy']:.4f} | {m['ed1_accuracy']:.4f} | {m['cer']:.4f} "
              f"| {m['one_minus_ned']:.4f} |")
    return 0
