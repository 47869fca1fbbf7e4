"""Where the ops' kernels come from, and what their fake (meta) kernels share.

The compiled kernels are loaded from ``seqclr_ext._C`` (``SEQCLR_EXT_LIBRARY=/path/lib.so``
loads another build of ``csrc/``: the CMake sanitizer build does this). With
``SEQCLR_EXT_REFERENCE=1`` nothing is loaded and every op runs its plain-PyTorch reference
(for machines without the built extension).
"""
import functools
import importlib.util
import os
import sys

import torch

USE_REFERENCE = os.environ.get("SEQCLR_EXT_REFERENCE", "0") == "1"


def _load_library():
    path = os.environ.get("SEQCLR_EXT_LIBRARY")
    if not path:
        spec = importlib.util.find_spec("seqclr_ext._C")
        if spec is None or spec.origin is None:
            raise ImportError(
                f"seqclr_ext's compiled kernels (seqclr_ext._C) are not built next to "
                f"{os.path.dirname(os.path.dirname(__file__))}: run `pip install --no-build-isolation -e .` "
                "in the repository (it builds them in place), or set "
                "SEQCLR_EXT_REFERENCE=1 to use the plain-PyTorch references")
        path = spec.origin
    torch.ops.load_library(path)


if not USE_REFERENCE:
    _load_library()


# seqclr_ext.ops, still being imported: its USE_REFERENCE is the switch the wrappers read at
# every call (the benchmarks set it to race the references).
_package = sys.modules[__package__]


def or_reference(op):
    """The op, or with ``seqclr_ext.ops.USE_REFERENCE`` its namesake in reference.py."""
    @functools.wraps(op)
    def call(*args, **kwargs):
        if _package.USE_REFERENCE:
            return getattr(_package.reference, op.__name__)(*args, **kwargs)
        return op(*args, **kwargs)
    return call


def acc_dtype(dtype):
    """The kernels accumulate in float32, float64 for float64 inputs (csrc/common.h)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_device(like_name, like, **tensors):
    """The kernels' device check (csrc/common.h), for the fake kernels: a call mixing meta
    and real tensors is dispatched to the fake kernel, which must reject it too."""
    for name, t in tensors.items():
        torch._check(t.device == like.device,
                     lambda: f"{name} must be on {like_name}'s device {like.device}, got "
                             f"{t.device}")


def register(op, *, fake, backward_fake, backward, setup_context):
    """The fake kernels of an op and of its backward op, the op's autograd formula, and one
    for the backward op that refuses a double backward with a message that says so (instead
    of autograd's unrelated one about tensors without grad_fn). Nothing to register on with
    USE_REFERENCE: the library is not loaded."""
    if USE_REFERENCE:
        return
    torch.library.register_fake(f"seqclr_ext::{op}", fake)
    torch.library.register_fake(f"seqclr_ext::{op}_backward", backward_fake)
    torch.library.register_autograd(f"seqclr_ext::{op}", backward, setup_context=setup_context)

    def no_double_backward(ctx, *grads):
        raise RuntimeError(f"double backward is not supported for {op}")

    torch.library.register_autograd(f"seqclr_ext::{op}_backward", no_double_backward)
