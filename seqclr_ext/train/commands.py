"""The subcommands' registry and their command line, parsed into one config dict. Each
subcommand module defines NAME, HELP, add_arguments(parser), run(config) -> exit status
and optionally resolve_defaults(config). Option values are layered: parser defaults <
--config YAML < the resumed run's saved config (--resume) < flags given on the command
line.

COMMANDS holds every subcommand but ``default``: default runs them (runner.run_once, which
parses with this registry), so it sits above this module and cli.py adds it."""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from .. import checkpoints
from ..checks import check_device, check_file, check_lmdb, check_range
from ..models.resnet import MIN_HEIGHT, MIN_WIDTH
from . import decoder_eval, distributed, finetune, plot, pretrain, supervised
from .options import EXECUTION_KEYS, RUN_CONTROL_KEYS

USAGE = """With no subcommand (or only options), runs the built-in demo: renders scene-like
word images, pre-trains an encoder with SeqCLR, trains a recognizer on 10 % of the labels
from scratch and from that encoder, and prints their test scores (`default --help`).

Typical use on your own LMDBs (deep-text-recognition-benchmark layout):

    python -m seqclr_ext.train pretrain --train unlabeled.lmdb --run-dir runs/seqclr
    python -m seqclr_ext.train decoder-eval --encoder runs/seqclr/encoder.pt \\
        --train labelled.lmdb --val val.lmdb --test test.lmdb --run-dir runs/eval
    python -m seqclr_ext.train finetune --encoder runs/seqclr/encoder.pt \\
        --train labelled.lmdb --label-fraction 0.05 --run-dir runs/ft5
    python -m seqclr_ext.train supervised --train labelled.lmdb --run-dir runs/sup

Every subcommand but `default` also runs data-parallel on N GPUs (or CPU processes):
`torchrun --nproc_per_node N -m seqclr_ext.train pretrain ...`; --batch-size stays the
global batch. Options can also come from a YAML file (--config)."""

__all__ = ["COMMANDS", "build_parser", "parse", "removed_if_unstarted"]

COMMANDS = {m.NAME: m for m in (pretrain, decoder_eval, finetune, supervised, plot)}


class _Formatter(argparse.HelpFormatter):
    """Shows every option's default, also for options without help text."""

    def _get_help_string(self, action):
        text = action.help or ""
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if action.option_strings and not flag and action.default is not None \
                and action.default is not argparse.SUPPRESS:
            text += f" (default: {action.default})"
        return text


def build_parser(commands: dict = COMMANDS
                 ) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="python -m seqclr_ext.train", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="subcommand")
    subparsers = {}
    for name, module in commands.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=_Formatter)
        module.add_arguments(p)
        subparsers[name] = p
    return parser, subparsers


def _yaml_defaults(path: str, valid: set[str]) -> dict:
    check_file(path, "--config")
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise SystemExit(f"error: --config {path}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise SystemExit(f"error: {path}: expected a mapping of option: value")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise SystemExit(f"error: {path}: unknown options {unknown}")
    return values


def parse(argv: Sequence[str] | None = None, commands: dict = COMMANDS) -> dict:
    """Command line -> config dict (``command`` + every option of the subcommand)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser(commands)
    args = parser.parse_args(argv)
    sub = subparsers[args.command]
    valid = {a.dest for a in sub._actions} - {"help"}
    defaults, saved = {}, {}
    if getattr(args, "config", None):
        defaults.update(_yaml_defaults(args.config, valid))
    if getattr(args, "resume", False):
        last = Path(args.run_dir or defaults.get("run_dir") or "", "last.pt")
        if not last.is_file():
            raise SystemExit(f"error: --resume: no checkpoint at {last}")
        saved = checkpoints.load(last, checkpoints.TRAINING_KINDS)["config"]
        defaults.update({k: v for k, v in saved.items()
                         if k in valid and k not in RUN_CONTROL_KEYS})
    if defaults:
        sub.set_defaults(**defaults)
        args = parser.parse_args(argv)
    config = vars(args)
    config.pop("_repeat_seen", None)
    missing = [f"--{k.replace('_', '-')}" for k in getattr(commands[args.command], "REQUIRED", ())
               if not config.get(k)]
    if missing:
        sub.error(f"the following arguments are required: {', '.join(missing)}")
    resolve = getattr(commands[args.command], "resolve_defaults", None)
    if resolve is not None:  # defaults that depend on other options (e.g. the method)
        resolve(config)
    _validate(sub, config)
    if saved:
        _refuse_changes(sub, saved, config)
    return config


# The range of each option where a subcommand has it, as check_range's (low, high,
# open_low, open_high): counts >= 1 (0 batches would never fill one: the sampler looped
# forever), the smallest image the ResNet reads, rates > 0, fractions.
_RANGES = {
    **{k: (1, None, False, False) for k in (
        "batch_size", "iterations", "log_every", "save_every", "max_length", "num_windows",
        "pretrain_steps", "eval_steps", "hidden_size", "num_train", "num_val", "num_test")},
    **{k: (0, None, False, False) for k in (
        "workers", "threads", "val_every", "stop_after", "sample_every", "weight_decay",
        "grad_clip", "l2_weight")},
    **{k: (0, None, True, False) for k in ("lr", "final_lr", "lr_gamma", "eps", "temperature")},
    "height": (MIN_HEIGHT, None, False, False), "width": (MIN_WIDTH, None, False, False),
    "label_fraction": (0, 1, True, False), "warmup": (0, 1, False, True),
    "rho": (0, 1, False, False),
}
_LMDB_LISTS = ("train", "val", "test")


def _validate(parser: argparse.ArgumentParser, config: dict) -> None:
    """A user's mistake becomes one ``error:`` line before anything is written."""
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    for k, (low, high, open_low, open_high) in _RANGES.items():
        check_range(config.get(k), flags.get(k, k), low, high, open_low=open_low,
                    open_high=open_high)
    for k, low in (("lr_milestones", 0), ("blocks", 1)):
        for value in config.get(k) or ():
            check_range(value, flags[k], low, 1 if k == "lr_milestones" else None)
    if config.get("channels") is not None and (config["channels"] < 16
                                               or config["channels"] % 16):
        raise SystemExit(f"error: --channels must be a positive multiple of 16, got "
                         f"{config['channels']}")
    if config.get("siman_kernel") is not None and (config["siman_kernel"] < 1
                                                   or config["siman_kernel"] % 2 == 0):
        raise SystemExit(f"error: --siman-kernel must be odd and at least 1, got "
                         f"{config['siman_kernel']}")
    for k in _LMDB_LISTS:
        for path in config.get(k) or ():
            check_lmdb(path, flags.get(k, k))
    encoder = config.get("encoder")
    if encoder != "random":
        check_file(encoder, "--encoder")
    if config.get("init") != "builtin":
        check_file(config.get("init"), "--init")
    check_file(config.get("label_subset"), "--label-subset")
    if config.get("device"):
        check_device(config["device"])


def _refuse_changes(parser: argparse.ArgumentParser, saved: dict, config: dict) -> None:
    """--resume continues exactly: an option given that changes what the run computes
    (anything but EXECUTION_KEYS) is an error naming each."""
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    changed = [f"{flags.get(k, k)}: {saved[k]!r} in the run, {config[k]!r} given"
               for k in sorted(saved) if k in config and k not in RUN_CONTROL_KEYS
               and k not in EXECUTION_KEYS and config[k] != saved[k]]
    if changed:
        raise SystemExit(f"error: --resume continues the run exactly, but these options "
                         f"change what it computes: {'; '.join(changed)} (start a new "
                         f"--run-dir to change them)")


@contextlib.contextmanager
def removed_if_unstarted(run_dir: str | os.PathLike | None):
    """A run that fails before its first checkpoint leaves no folder behind: a folder
    this run created (config.yaml, metrics.csv, a label subset, ...) is removed when the
    block raises and nothing under it holds a last.pt."""
    fresh = run_dir is not None and not Path(run_dir).exists()
    try:
        yield
    except BaseException:
        if fresh and distributed.is_main() and Path(run_dir).is_dir() \
                and not any(Path(run_dir).rglob("last.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
