"""Public operator API (DESIGN.md "Operator contracts"): one module per op (its fake
kernels, autograd formula and wrapper), the library loading and the reference-mode switch
in ``_library``, the plain-PyTorch oracles in ``reference``."""
from . import reference
from ._library import USE_REFERENCE
from .seq_nce import nce_rows, seq_nce
from .siman_normalize import siman_normalize
from .tps_grid_sample import tps_grid_sample

__all__ = ["seq_nce", "nce_rows", "tps_grid_sample", "siman_normalize", "reference",
           "USE_REFERENCE"]
