"""Pre-training objectives: SeqCLR, its SimCLR baseline and SimAN."""
from .seqclr import SeqCLR
from .siman import SimAN
from .simclr import SimCLR

__all__ = ["SeqCLR", "SimCLR", "SimAN"]
