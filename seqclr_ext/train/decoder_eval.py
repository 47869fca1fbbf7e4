"""``decoder-eval``: SeqCLR's decoder-evaluation protocol (Table 1) — the pre-trained base
encoder is frozen (weights and BatchNorm statistics) and a CTC or attention decoder is
trained on top of it with labels. ``finetune`` (finetune.py) trains everything instead.

``--encoder`` is an ``encoder.pt`` written by ``pretrain``: ``model_config`` (the
recognizer it was trained in), ``encoder_state`` (weights of its encoder modules only) and
``representation``. The recognizer is rebuilt from that config with the decoder asked
for here, the encoder weights are loaded strictly, and exactly the modules they cover are
frozen. ``--encoder random`` is the random-initialization baseline: a recognizer from the
model options, its encoder (TPS, ResNet and, for ``--representation H``, the BiLSTM) frozen
at init.
"""
from __future__ import annotations

import types

import torch.nn as nn

from .. import checkpoints
from ..models import Recognizer, RecognizerConfig
from . import distributed
from .options import (RECOGNIZER_RECIPES, RECOGNIZER_STEPS, add_model_arguments,
                      add_trainer_arguments, make_charset, make_recognizer)
from .recognizer_training import add_data_arguments, resolve_defaults, train_recognizer
from .running import seed_everything

__all__ = ["NAME", "HELP", "REQUIRED", "add_arguments", "resolve_defaults", "run",
           "run_protocol", "load_encoder"]

NAME = "decoder-eval"
HELP = "decoder evaluation: freeze a pre-trained encoder, train a CTC/attention decoder"
REQUIRED = ("encoder", "train", "run_dir")


def add_arguments(p) -> None:
    p.add_argument("--encoder", metavar="ENCODER_PT",
                   help="encoder.pt of a pretrain run, or 'random' for the baseline")
    p.add_argument("--representation", choices=("H", "V"), default="H",
                   help="with --encoder random: freeze up to R (V: TPS + ResNet, H: + BiLSTM); "
                        "an encoder.pt says its own")
    add_data_arguments(p)
    add_model_arguments(p)
    add_trainer_arguments(p, iterations=RECOGNIZER_STEPS, recipes=RECOGNIZER_RECIPES)


def _freeze(module: nn.Module) -> None:
    """No gradients, and BatchNorm statistics kept: train() leaves the module in eval mode."""
    module.requires_grad_(False)
    module.eval()
    module.train = types.MethodType(lambda self, mode=True: nn.Module.train(self, False), module)


def load_encoder(config: dict, charset) -> tuple[Recognizer, list[nn.Module]]:
    """-> (recognizer with the pre-trained encoder loaded, the encoder's modules)."""
    if config["encoder"] == "random":
        model = make_recognizer(config, charset)
        return model, model.encoder_modules(config["representation"])
    try:
        ckpt = checkpoints.load(config["encoder"], "encoder")
    except checkpoints.CheckpointError as e:
        raise SystemExit(f"error: --encoder {e}") from None
    model_config = {**ckpt["model_config"], "num_chars": len(charset),
                    "decoder": config["decoder"], "max_length": config["max_length"],
                    "ctc_weight": config["ctc_weight"], "representation": ckpt["representation"]}
    model = Recognizer(RecognizerConfig(**model_config))
    state = ckpt["encoder_state"]
    prefixes = {k.split(".", 1)[0] for k in state}
    own = {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in prefixes}
    if set(own) != set(state):
        raise SystemExit(f"error: --encoder {config['encoder']}: its weights do not match the "
                         f"recognizer ({len(set(own) ^ set(state))} keys differ)")
    model.load_state_dict(state, strict=False)
    distributed.log(f"loaded encoder {config['encoder']}: {', '.join(sorted(prefixes))} "
                    f"(R = {ckpt['representation']})")
    return model, [getattr(model, name) for name in sorted(prefixes)]


def run_protocol(config: dict, freeze: bool) -> int:
    charset = make_charset(config)
    seed_everything(config["seed"])
    model, encoder = load_encoder(config, charset)
    if freeze:
        for module in encoder:
            _freeze(module)
    return train_recognizer(config, model, charset)


def run(config: dict) -> int:
    return run_protocol(config, freeze=True)
