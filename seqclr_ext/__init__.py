"""seqclr_ext: self-supervised pre-training of text recognizers (SeqCLR, SimAN) with fused
C++/CUDA operators. The operators live in :mod:`seqclr_ext.ops`;
``seqclr_ext.load_recognizer(checkpoint)`` reads images with a trained recognizer."""

__version__ = "0.1.0"


def __getattr__(name):
    # Imported on first use: `import seqclr_ext` stays free of torch and the kernels.
    if name == "load_recognizer":
        from .recognize import load_recognizer
        return load_recognizer
    raise AttributeError(f"module 'seqclr_ext' has no attribute {name!r}")
