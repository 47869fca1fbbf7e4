"""Up-front checks of command-line options shared by every CLI (train, evaluate): a user's
mistake becomes one ``error: ...`` line and a non-zero exit, before anything is written."""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["check_device", "check_lmdb"]


def check_device(name: str, flag: str = "--device") -> None:
    """Exits with one error line if torch device ``name`` does not exist here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"error: {flag} {name}: not a torch device (cpu, cuda, "
                         "cuda:N, ...)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SystemExit(f"error: {flag} {name}: no CUDA GPU is visible (torch "
                             f"{torch.__version__}); use {flag} cpu")
        if device.index is not None and device.index >= count:
            raise SystemExit(f"error: {flag} {name}: only {count} CUDA GPU(s) visible")


def check_lmdb(path: str, flag: str) -> None:
    """Exits with one error line if ``path`` is not an LMDB folder."""
    if not Path(path, "data.mdb").is_file():
        raise SystemExit(f"error: {flag} {path}: no LMDB there (expected "
                         f"{Path(path, 'data.mdb')})")
