"""Self-supervised objectives on top of the recognizer's encoder."""
from .seqclr import SeqCLR
from .simclr import SimCLR

__all__ = ["SeqCLR", "SimCLR"]
