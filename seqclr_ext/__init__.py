"""seqclr_ext: self-supervised pre-training of text recognizers (SeqCLR, SimAN) with fused
C++/CUDA operators. The operators live in :mod:`seqclr_ext.ops`."""

__version__ = "0.1.0"
