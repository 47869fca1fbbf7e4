"""``finetune``: SeqCLR's fine-tuning protocols (Table 2) — the recognizer starts from a
pre-trained encoder (see decoder_eval.py for ``--encoder``) and is trained end to end;
``--label-fraction 0.05`` / ``0.1`` give the semi-supervised settings."""
from .decoder_eval import add_arguments, resolve_defaults, run_protocol

NAME = "finetune"
HELP = "fine-tune a recognizer from a pre-trained encoder on (a fraction of) the labels"
REQUIRED = ("encoder", "train", "run_dir")

__all__ = ["NAME", "HELP", "REQUIRED", "add_arguments", "resolve_defaults", "run"]


def run(config: dict) -> int:
    return run_protocol(config, freeze=False)
