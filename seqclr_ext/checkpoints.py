"""Every file format the project writes, and the only code that reads or writes them.

A checkpoint file is three parts:

1. the line ``seqclr_ext checkpoint`` (MAGIC);
2. one line of JSON: ``{"kind": ..., "payload_bytes": N, "payload_sha256": ..., "version": 1}``
   in canonical form (sorted keys, no spaces);
3. the payload: ``torch.save`` of tensors in plain dicts / lists / tuples / strings /
   numbers (configs and charsets included), read back with ``torch.load(weights_only=True)``.

The payload is loaded only after its size and SHA-256 match the header, and then without
pickle's ability to run code: a corrupted or crafted file gives a :class:`CheckpointError`
naming the file and what is wrong, never an unpickled object. Kinds (``KINDS``):

- ``recognizer``: best.pt / last.pt of supervised, decoder-eval and finetune (training
  state + ``model_config`` + ``charset``), read by ``evaluate``;
- ``pretrain``: last.pt of ``pretrain --method seqclr / simclr`` (training state);
- ``siman``: last.pt of ``pretrain --method siman`` (training state), read by ``synthesize``;
- ``encoder``: encoder.pt of ``pretrain`` (``model_config``, ``encoder_state``,
  ``representation``), read by decoder-eval and finetune.

Saves are atomic: a temporary file in the same folder, fsync, rename; temporary files left
by killed processes are removed by the next save into that folder.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "KINDS", "TRAINING_KINDS", "VERSION", "save", "load",
           "read_kind"]

MAGIC = b"seqclr_ext checkpoint\n"
VERSION = 1
KINDS = {
    "recognizer": "a recognizer checkpoint (best.pt / last.pt of supervised, decoder-eval "
                  "or finetune)",
    "pretrain": "a pre-training state (last.pt of pretrain --method seqclr / simclr)",
    "siman": "a SimAN generator (last.pt of pretrain --method siman)",
    "encoder": "a pre-trained encoder (encoder.pt of pretrain)",
}
TRAINING_KINDS = ("recognizer", "pretrain", "siman")   # what a run's last.pt can be
_HEADER_LIMIT = 4096


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint of the kind asked for; the message is one
    line naming the file and what is wrong."""


def _header(kind: str, payload: bytes) -> bytes:
    fields = {"kind": kind, "payload_bytes": len(payload),
              "payload_sha256": hashlib.sha256(payload).hexdigest(), "version": VERSION}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process
        return True
    return True


_TEMP = re.compile(r"\..+\.tmp(\d+)")   # what save() writes before its rename


def _remove_stale_temps(folder: Path) -> None:
    """Temporary files in ``folder`` whose writer is dead (killed mid-save), of any file:
    a killed save of best.pt may never be followed by another save of best.pt."""
    for tmp in folder.glob(".*.tmp*"):
        match = _TEMP.fullmatch(tmp.name)
        if match and int(match[1]) != os.getpid() and not _pid_alive(int(match[1])):
            tmp.unlink(missing_ok=True)


def save(obj: Any, path: str | os.PathLike, kind: str) -> None:
    """Write ``obj`` (tensors in plain containers) as a ``kind`` checkpoint at ``path``,
    atomically: a crash or an error mid-save leaves any previous file at ``path`` intact."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    _remove_stale_temps(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + _header(kind, payload))
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _what_else(start: bytes) -> str:
    if not start:
        return "an empty file"
    if start.startswith(b"PK\x03\x04"):
        return ("a plain torch.save file (from another program or an older seqclr_ext); "
                "not loaded, as loading it could run code")
    if start[:1] == b"\x80":
        return "a pickle file; not loaded, as loading it could run code"
    return "not a seqclr_ext checkpoint"


def _read(path: Path) -> tuple[dict, bytes]:
    """-> (header, verified payload bytes)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data) and data:
            raise CheckpointError(f"{path}: truncated ({len(data)} bytes, no header)")
        raise CheckpointError(f"{path}: {_what_else(data[:4])}")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + _HEADER_LIMIT)
    if end < 0:
        what = "truncated header" if len(data) < len(MAGIC) + _HEADER_LIMIT else "bad header"
        raise CheckpointError(f"{path}: {what}")
    line = data[len(MAGIC):end + 1]
    try:
        header = json.loads(line)
        kind, size = header["kind"], header["payload_bytes"]
        version, digest = header["version"], header["payload_sha256"]
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: bad header (corrupted)") from None
    if type(version) is not int or canonical != line:
        raise CheckpointError(f"{path}: bad header (corrupted)")
    if version > VERSION:
        raise CheckpointError(f"{path}: format version {version}, written by a newer "
                              f"seqclr_ext (this one reads up to {VERSION}); upgrade it")
    if version != VERSION:
        raise CheckpointError(f"{path}: bad header (format version {version})")
    if kind not in KINDS or type(size) is not int:
        raise CheckpointError(f"{path}: bad header (unknown kind {kind!r})")
    payload = data[end + 1:]
    if len(payload) < size:
        raise CheckpointError(f"{path}: truncated ({len(payload)} of {size} payload bytes)")
    if len(payload) > size:
        raise CheckpointError(f"{path}: {len(payload) - size} bytes past the end of the "
                              "payload (corrupted)")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (the file is corrupted)")
    return header, payload


def read_kind(path: str | os.PathLike) -> str:
    """The kind of a verified checkpoint file (raises CheckpointError if it is none)."""
    return _read(Path(path))[0]["kind"]


def load(path: str | os.PathLike, kinds: str | Iterable[str],
         map_location: Any = "cpu") -> dict:
    """The verified payload of the checkpoint at ``path``, which must be one of ``kinds``."""
    path = Path(path)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    header, payload = _read(path)
    if header["kind"] not in kinds:
        wanted = " or ".join(KINDS[k] for k in kinds)
        raise CheckpointError(f"{path}: {KINDS[header['kind']]}, not {wanted}")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        # Only a file crafted with a valid checksum gets here.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: the payload holds more than tensors and plain "
                              f"values; refused ({first})") from None


def encoder_checkpoint(method) -> dict:
    """The ``encoder`` payload of a pre-training method (SeqCLR, SimCLR or SimAN)."""
    return {"model_config": asdict(method.recognizer.config),
            "encoder_state": method.encoder_state(),
            "representation": method.representation}
