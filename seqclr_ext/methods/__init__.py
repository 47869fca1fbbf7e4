"""Self-supervised objectives on top of the recognizer's encoder."""
from .seqclr import SeqCLR

__all__ = ["SeqCLR"]
