"""``supervised``: train a recognizer (CTC or attention) on labelled LMDBs, optionally on a
fixed random fraction of the labels (the 5 % / 10 % settings of SeqCLR Table 3)."""
from __future__ import annotations

from .options import (RECOGNIZER_RECIPES, RECOGNIZER_STEPS, add_model_arguments,
                      add_trainer_arguments, make_charset, make_recognizer)
from .recognizer_training import (add_data_arguments, init_from_checkpoint, resolve_defaults,
                                  train_recognizer)
from .running import seed_everything

__all__ = ["NAME", "HELP", "REQUIRED", "add_arguments", "resolve_defaults", "run"]

NAME = "supervised"
HELP = "supervised training of a recognizer on labelled LMDB datasets"
REQUIRED = ("train", "run_dir")


def add_arguments(p) -> None:
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from a trained recognizer (best.pt / last.pt, or builtin): its "
                        "architecture and weights (of the recognizer options only --decoder, "
                        "--charset and --max-length apply); the output layers start afresh "
                        "when the charset or the decoder differs")
    add_data_arguments(p)
    add_model_arguments(p)
    add_trainer_arguments(p, iterations=RECOGNIZER_STEPS, recipes=RECOGNIZER_RECIPES)


def run(config: dict) -> int:
    charset = make_charset(config)
    seed_everything(config["seed"])
    if config["init"]:
        model = init_from_checkpoint(config["init"], charset, config["decoder"],
                                     config["max_length"], config["ctc_weight"])
    else:
        model = make_recognizer(config, charset)
    return train_recognizer(config, model, charset)
