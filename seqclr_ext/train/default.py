"""``default`` (also what ``python -m seqclr_ext.train`` runs with no arguments): the
built-in demonstration of SeqCLR's promise, end to end — pre-training on unlabeled images
makes a better recognizer from few labels (SeqCLR Table 2's semi-supervised setting).

1. renders the built-in data (scene-like by default) into DATA_DIR (reused when present):
   training images, a validation set (training fonts, another seed) and a test set
   (held-out fonts and words),
2. pre-trains the recognizer's encoder with SeqCLR on all the training images without
   their labels — frame-to-instance on the visual features (R = V) with no projection
   head: at this size the paper's window-to-instance with a BiLSTM head collapses the
   ResNet's features to a few directions that vary little along the word, which then
   slowed fine-tuning (python/RESULTS.md, 2026-12-03 "dimensional collapse"),
3. trains a recognizer on ``--label-fraction`` of the labels twice — from scratch
   (supervised) and from the SeqCLR encoder (fine-tuning) — with the same labelled subset
   and the same number of steps,
4. prints the two rows' test scores as a markdown table, what they mean and where the runs
   are.

The defaults (small preset on CPU, the paper's sizes on a GPU) finish in minutes; every size
is an option. Running it again reuses the finished runs and continues an interrupted one
(runner.py: the helpers it shares with the experiment drivers in python/).
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from .runner import (add_experiment_arguments, built_in_data, markdown_table,
                     read_test_metrics, run_flags, run_once)

NAME = "default"
HELP = ("the built-in demo: render data, SeqCLR pre-training, supervised vs SeqCLR "
        "fine-tuning on few labels, table")
REQUIRED = ()


def add_arguments(p) -> None:
    add_experiment_arguments(p)
    p.set_defaults(run_dir="runs/default")
    p.add_argument("--label-fraction", type=float, default=0.1,
                   help="fraction of the training labels the two recognizers learn from")


METRICS = {"word accuracy": "word_accuracy", "ED1 accuracy": "ed1_accuracy", "CER": "cer",
           "1 - NED": "one_minus_ned"}


def run(config: dict) -> int:
    data = built_in_data(config)
    root = Path(config["run_dir"])
    encoder = run_once(["pretrain", "--train", str(data.train), *PRETRAINING,
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
          f"- SeqCLR fine-tuned: its TPS and ResNet first pre-trained with SeqCLR "
          f"({' '.join(PRETRAINING)}) for {config['pretrain_steps']} steps on all "
          f"{config['num_train']} training images without labels ({encoder}), then trained "
          f"end to end on the same labelled images.\n"
          f"Runs, checkpoints and curves: {root}/. The paper's sizes (a GPU): "
          f"{shlex.join(PAPER_SIZE)}")
    return 0


# SeqCLR's options here (pretrain's defaults are the paper's: R = H, BiLSTM head, windows):
# the contrastive loss on each visual frame keeps the ResNet's features per frame and of
# high rank (effective rank 27 of 128 against 5 with the paper's setting after 300 steps).
PRETRAINING = ["--representation", "V", "--head", "none", "--mapping", "frame"]

# The same experiment at the paper's sizes (SeqCLR Appendix D: paper preset, long runs).
PAPER_SIZE = ["python", "-m", "seqclr_ext.train", "default", "--preset", "paper",
              "--recipe", "paper", "--num-train", "200000", "--pretrain-steps", "100000",
              "--eval-steps", "50000", "--device", "cuda", "--workers", "8",
              "--run-dir", "runs/default-paper"]
