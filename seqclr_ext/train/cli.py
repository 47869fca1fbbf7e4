"""``python -m seqclr_ext.train``: the top of ``train``, the one place that registers every
subcommand (commands.COMMANDS and, above them, ``default``, which runs them)."""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .. import checkpoints
from . import default, distributed
from .commands import COMMANDS as TRAINING_COMMANDS
from .commands import parse, removed_if_unstarted

__all__ = ["COMMANDS", "main"]

COMMANDS = {default.NAME: default, **TRAINING_COMMANDS}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["default", *argv]  # no subcommand: the built-in demo, with these options
    try:
        config = parse(argv, COMMANDS)
        if config["command"] == "default" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SystemExit("error: default runs in one process; under torchrun run its "
                             "pretrain and decoder-eval steps")
        with distributed.session(config), removed_if_unstarted(config.get("run_dir")):
            return COMMANDS[config["command"]].run(config)
    except checkpoints.CheckpointError as e:  # a user's file, not a bug: no traceback
        raise SystemExit(f"error: {e}") from None
