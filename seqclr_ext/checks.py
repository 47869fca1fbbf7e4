"""Up-front checks of command-line options shared by every CLI (train, data, evaluate,
recognize, export, synthesize): a user's mistake becomes one ``error: ...`` line and a
non-zero exit, before anything is written."""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["check_device", "check_file", "check_lmdb", "check_range"]


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
    """Exits with one error line if ``path`` is not a dataset LMDB with a valid sample
    count."""
    from .data.lmdb_dataset import sample_count  # the data layer needs lmdb: only here

    if not Path(path, "data.mdb").is_file():
        raise SystemExit(f"error: {flag} {path}: no LMDB there (expected "
                         f"{Path(path, 'data.mdb')})")
    try:
        sample_count(path)
    except ValueError as e:
        raise SystemExit(f"error: {flag} {e}") from None


def check_file(path: str | None, flag: str) -> None:
    """Exits with one error line if ``path`` is given but is not a file."""
    if path is not None and not Path(path).is_file():
        raise SystemExit(f"error: {flag} {path}: no such file")


def check_range(value, flag: str, low, high=None, *, open_low: bool = False,
                open_high: bool = False) -> None:
    """Exits with one error line if ``value`` (None: not given, no check) lies outside
    [low, high] (an open end with ``open_low`` / ``open_high``; no upper end for None)."""
    if value is None:
        return
    below = value < low or (open_low and value == low)
    above = high is not None and (value > high or (open_high and value == high))
    if below or above:
        if high is not None:
            wanted = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        else:
            wanted = f"greater than {low}" if open_low else f"at least {low}"
        raise SystemExit(f"error: {flag} must be {wanted}, got {value}")
