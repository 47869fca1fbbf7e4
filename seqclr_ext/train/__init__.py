"""Training: ``python -m seqclr_ext.train <subcommand> ...`` (see ``cli``) and the shared
:class:`Trainer` loop."""
from .trainer import (Trainer, TrainingDiverged, lr_factor, make_optimizer, make_scheduler,
                      rng_state, set_rng_state)

__all__ = ["Trainer", "TrainingDiverged", "lr_factor", "make_optimizer",
           "make_scheduler", "rng_state", "set_rng_state"]
