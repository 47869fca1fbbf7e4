"""The options of the training subcommands (option groups, recipes, defaults) and the
recognizer they describe: the bottom of ``train``, which ``synthesize`` reads too."""
from __future__ import annotations

import argparse

import torch

from ..data import Charset
from ..models import DECODER_INPUTS, PRESETS, Recognizer, RecognizerConfig
from .trainer import OPTIMIZERS, SCHEDULES

__all__ = ["Repeat", "add_trainer_arguments", "add_model_arguments", "apply_recipe",
           "make_charset", "make_recognizer", "RUN_CONTROL_KEYS", "EXECUTION_KEYS"]

# Options that steer one invocation and are not part of a run's saved config.
RUN_CONTROL_KEYS = ("command", "config", "resume", "stop_after")
# Saved options that change how a run executes, not what it computes: --resume may change
# them (and a finished run of the default job is reused whatever they were).
EXECUTION_KEYS = ("run_dir", "workers", "threads", "device", "progress", "tensorboard",
                  "log_every", "save_every")

HAS_CUDA = torch.cuda.is_available()
# On a CPU, data loading in worker processes competes with torch's threads for the few
# cores (one step took 10x longer with 4 workers beside 2 threads on 2 cores): load in
# the training process there.
DEFAULT_WORKERS = 4 if HAS_CUDA else 0
DEFAULT_PRESET = "paper" if HAS_CUDA else "small"
# Default --iterations: SeqCLR Appendix D's with a GPU; on a CPU, runs that finish in about
# 12 minutes (recognizer: 88-91 % on scene-test at 3,000 steps, widths 100-128,
# python/RESULTS.md) and about an hour.
RECOGNIZER_STEPS = 50_000 if HAS_CUDA else 3_000
PRETRAIN_STEPS = 400_000 if HAS_CUDA else 5_000

CHARSETS = {"printable": lambda: Charset.printable(),
            "french": lambda: Charset.printable(french=True),
            "alphanumeric": Charset.alphanumeric}


class Repeat(argparse.Action):
    """Like ``action="append"``, but the first use on the command line replaces a default
    (from YAML or a resumed config) instead of appending to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_repeat_seen", set())
        items = list(getattr(namespace, self.dest) or []) if self.dest in seen else []
        seen.add(self.dest)
        setattr(namespace, self.dest, items + [values])


# The options a recipe sets (when neither the command line, --config nor a resumed run
# gives them), and the recipes of recognizer training: "paper" is SeqCLR Appendix D,
# "fast" the one measured to converge fastest on CPUs (python/RESULTS.md).
RECIPE_KEYS = ("optimizer", "lr", "weight_decay", "schedule", "warmup", "lr_milestones",
               "lr_gamma", "batch_size")
RECOGNIZER_RECIPES = {
    "paper": dict(optimizer="adadelta", lr=1.0, weight_decay=1e-4, schedule="step",
                  warmup=0.0, lr_milestones=[0.6, 0.8], lr_gamma=0.1, batch_size=256),
    "fast": dict(optimizer="adamw", lr=1e-3, weight_decay=0.01, schedule="onecycle",
                 warmup=0.05, lr_milestones=[], lr_gamma=0.1, batch_size=32),
}
DEFAULT_RECIPE = "fast"


def apply_recipe(config: dict, recipes: dict[str, dict]) -> None:
    """Fills the RECIPE_KEYS options left unset (None) from ``recipes[config["recipe"]]``."""
    for key, value in recipes[config["recipe"]].items():
        if config.get(key) is None:
            config[key] = value


def _recipe_help(recipes: dict[str, dict], key: str) -> str:
    return "default: " + ", ".join(f"{value!r} with --recipe {name}" if key != "lr_milestones"
                                   else f"{value or 'none'} with --recipe {name}"
                                   for name, value in ((n, r[key]) for n, r in recipes.items()))


def add_trainer_arguments(p: argparse.ArgumentParser, *, iterations: int,
                          recipes: dict[str, dict]) -> None:
    """Run, optimization and logging options. The optimization options of RECIPE_KEYS
    default to None and are filled from ``recipes`` by ``apply_recipe`` after parsing
    (their help lists each recipe's value)."""
    g = p.add_argument_group("run")
    g.add_argument("--config", help="YAML file of option: value (flags override it)")
    g.add_argument("--run-dir", help="folder for checkpoints, metrics.csv, tensorboard/")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last.pt, exactly")
    g.add_argument("--stop-after", type=int,
                   help="stop (and checkpoint) after this many steps in this invocation")
    g.add_argument("--device", default="cuda" if HAS_CUDA else "cpu",
                   help="torch device (under torchrun: cuda means cuda:LOCAL_RANK)")
    g.add_argument("--amp", choices=("off", "bf16"), default="off",
                   help="bf16: training forward and loss under torch.autocast(bfloat16)")
    g.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help="DataLoader worker processes (0: load in the training process)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of the training process (default: the CPU cores "
                        "not taken by --workers, at least 1)")
    g.add_argument("--seed", type=int, default=0,
                   help="model init, data order and label subset")
    g.add_argument("--log-every", type=int, default=100, help="steps between train metrics")
    g.add_argument("--val-every", type=int, default=2000, help="0: no validation")
    g.add_argument("--save-every", type=int, default=1000, help="steps between last.pt saves")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="metrics.csv only")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no tqdm bar")
    h = lambda key: f" ({_recipe_help(recipes, key)})"  # noqa: E731
    g = p.add_argument_group("optimization")
    g.add_argument("--recipe", choices=tuple(recipes), default=DEFAULT_RECIPE,
                   help="the defaults of the options below: paper = SeqCLR Appendix D "
                        "(AdaDelta, lr ÷10 at 60 %% and 80 %%), fast = AdamW with a one-cycle "
                        "schedule, the fastest to converge measured on CPUs")
    g.add_argument("--iterations", type=int, default=iterations, help="optimizer steps")
    g.add_argument("--batch-size", type=int,
                   help="images per optimizer step, over all processes: under torchrun "
                        "each of the N processes loads batch-size / N" + h("batch_size"))
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer" + h("optimizer"))
    g.add_argument("--lr", type=float, help="peak learning rate" + h("lr"))
    g.add_argument("--weight-decay", type=float,
                   help="AdaDelta / Adam: L2 penalty; AdamW: decoupled decay" + h("weight_decay"))
    g.add_argument("--schedule", choices=SCHEDULES,
                   help="lr schedule: step (× --lr-gamma at --lr-milestones), cosine (to 0), "
                        "onecycle (PARSeq's: up from lr/25 over the warmup, down to "
                        "lr/25e4)" + h("schedule"))
    g.add_argument("--warmup", type=float,
                   help="fraction of --iterations of lr warmup" + h("warmup"))
    g.add_argument("--lr-milestones", type=float, nargs="*",
                   help="step schedule: fractions of --iterations where the lr is multiplied "
                        "by --lr-gamma" + h("lr_milestones"))
    g.add_argument("--lr-gamma", type=float, help="step schedule: lr factor per milestone"
                   + h("lr_gamma"))
    g.add_argument("--rho", type=float, default=0.95, help="AdaDelta decay rate")
    g.add_argument("--eps", type=float, default=1e-8, help="AdaDelta epsilon (DTRB)")
    g.add_argument("--grad-clip", type=float, default=5.0, help="max gradient norm; 0: off")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recognizer")
    g.add_argument("--decoder", choices=("ctc", "attention"), default="attention",
                   help="text decoder")
    g.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                   help="model sizes: paper = DTRB / SeqCLR (the default with a GPU), small "
                        "for CPUs (without one)")
    g.add_argument("--tps", action=argparse.BooleanOptionalAction, default=True,
                   help="TPS rectification stage")
    g.add_argument("--bilstm", action=argparse.BooleanOptionalAction, default=True,
                   help="BiLSTM sequence-modelling stage")
    g.add_argument("--decoder-input", choices=DECODER_INPUTS, default="HV",
                   help="what the decoder reads: H (the BiLSTM's output, as DTRB), V (the "
                        "ResNet's) or HV (both, concatenated: a shortcut past the BiLSTM "
                        "that learns far faster; see python/RESULTS.md)")
    g.add_argument("--channels", type=int,
                   help="ResNet output channels (multiple of 16; default: the preset's)")
    g.add_argument("--blocks", type=int, nargs=4, metavar="N",
                   help="ResNet blocks per stage (default: the preset's)")
    g.add_argument("--hidden-size", type=int,
                   help="BiLSTM and attention hidden size (default: the preset's)")
    g.add_argument("--ctc-weight", type=float, default=0.3, metavar="LAMBDA",
                   help="attention decoder: weight of an auxiliary CTC loss on the same "
                        "frames (joint CTC-attention training; it leaves the attention's "
                        "long initial plateau far sooner, python/RESULTS.md); 0 = none")
    g.add_argument("--charset", choices=sorted(CHARSETS), default="printable",
                   help="95 printable ASCII symbols, + French accents, or [0-9a-z]")
    g.add_argument("--max-length", type=int, default=25, help="longest label kept / decoded")
    g.add_argument("--height", type=int, default=32, help="image height")
    g.add_argument("--width", type=int, default=100,
                   help="image width (with --keep-ratio: the TPS output width)")
    g.add_argument("--keep-ratio", action="store_true",
                   help="resize to --height keeping the aspect ratio, pad per batch")


def make_charset(config: dict) -> Charset:
    return CHARSETS[config["charset"]]()


def make_recognizer(config: dict, charset: Charset) -> Recognizer:
    try:
        return _make_recognizer(config, charset)
    except ValueError as e:  # a model size or weight the options set out of range
        raise SystemExit(f"error: recognizer options: {e}") from None


def _make_recognizer(config: dict, charset: Charset) -> Recognizer:
    return Recognizer(RecognizerConfig(
        num_chars=len(charset), preset=config["preset"], tps=config["tps"],
        sequence_model=config["bilstm"], decoder=config["decoder"],
        decoder_input=config["decoder_input"], image_size=(config["height"], config["width"]),
        max_length=config["max_length"], resnet_output_channel=config["channels"],
        resnet_layers=config["blocks"], hidden_size=config["hidden_size"],
        attention_hidden_size=config["hidden_size"],
        ctc_weight=config["ctc_weight"]))
