"""LMDB datasets in deep-text-recognition-benchmark's layout (DESIGN.md "Conventions").

Keys, all ASCII: ``num-samples`` → decimal count N; for i in 1..N (1-based),
``image-%09d`` → the encoded image file's bytes (PNG, JPEG, …) and ``label-%09d`` → the
label in UTF-8. Existing IAM / RIMES / IIIT5K / Real-300K LMDBs load unchanged. This
project's writers may add ``meta`` → a JSON object saying how the data was made
(:func:`read_meta`), which other readers ignore.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import struct
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import lmdb
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .charset import Charset

__all__ = ["write_lmdb", "read_meta", "LmdbDataset", "DatasetStats", "has_alpha", "to_mode",
           "sample_count"]

log = logging.getLogger(__name__)

# What PIL raises on bytes that are not a decodable image (UnidentifiedImageError and
# truncated files are OSErrors; some plugins raise the others on garbage headers).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error,
                  Image.DecompressionBombError)


def _image_key(i: int) -> bytes:
    return b"image-%09d" % i


def _label_key(i: int) -> bytes:
    return b"label-%09d" % i


def _to_bytes(image: bytes | bytearray | memoryview | Image.Image, image_format: str) -> bytes:
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format=image_format)
        return buf.getvalue()
    return bytes(image)


def _commit(env: lmdb.Environment, items: list[tuple[bytes, bytes]]) -> None:
    """Write ``items`` in one transaction, doubling the map size until they fit. The batch
    is kept in memory so that a transaction aborted by MapFullError can be replayed."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in items:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            # The aborted transaction is closed, so the map may be resized now.
            env.set_mapsize(env.info()["map_size"] * 2)


def write_lmdb(
    path: str | os.PathLike,
    samples: Iterable[tuple[bytes | Image.Image, str]],
    *,
    overwrite: bool = False,
    commit_every: int = 1000,
    map_size: int = 64 << 20,
    image_format: str = "PNG",
    meta: dict | None = None,
) -> int:
    """Write ``(image, label)`` samples to a new LMDB directory at ``path``; returns the
    number of samples written.

    Images are encoded bytes (stored as given) or PIL images (encoded as ``image_format``).
    The database is built in ``<path>.partial`` with a commit every ``commit_every``
    samples and moved to ``path`` only once complete (``num-samples`` written last), so an
    interrupted run never leaves a truncated dataset behind. ``map_size`` is the initial
    map size; it doubles whenever a commit does not fit. An existing ``path`` raises
    ``FileExistsError`` unless ``overwrite``. ``meta`` (JSON-serializable) is stored
    under the ``meta`` key.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        n = _fill(tmp, samples, commit_every, map_size, image_format, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    os.replace(tmp, path)
    return n


def _fill(tmp: Path, samples: Iterable[tuple[bytes | Image.Image, str]], commit_every: int,
          map_size: int, image_format: str, meta: dict | None) -> int:
    env = lmdb.open(str(tmp), map_size=map_size)
    try:
        n = 0
        batch: list[tuple[bytes, bytes]] = []
        for image, label in samples:
            n += 1
            batch.append((_image_key(n), _to_bytes(image, image_format)))
            batch.append((_label_key(n), label.encode("utf-8")))
            if n % commit_every == 0:
                _commit(env, batch)
                batch.clear()
        if meta is not None:
            batch.append((b"meta", json.dumps(meta, sort_keys=True).encode()))
        batch.append((b"num-samples", str(n).encode()))
        _commit(env, batch)
        return n
    finally:
        env.close()


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` object :func:`write_lmdb` stored at ``path`` ({} when none, or when
    ``path`` is no LMDB)."""
    if not (Path(path) / "data.mdb").is_file():
        return {}
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            raw = txn.get(b"meta")
    finally:
        env.close()
    try:
        meta = json.loads(raw) if raw is not None else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def has_alpha(image: Image.Image) -> bool:
    """Whether ``image`` has transparency (an alpha channel or a transparent palette entry)."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` converted to ``mode`` ("L" / "RGB"), transparent parts composited on white:
    a plain convert() drops the alpha and shows what is under it, usually black."""
    if has_alpha(image):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image.convert(mode)


# Read-only environments of this process, keyed by the identity of their data file.
# LMDB refuses to open one file twice per process, so datasets over the same file share
# one (held weakly: it closes with the last dataset using it). Keying on the inode rather
# than the path makes a dataset rewritten in place (write_lmdb(overwrite=True)) a new key.
_readers: weakref.WeakValueDictionary[tuple[int, int], lmdb.Environment] = (
    weakref.WeakValueDictionary())
_readers_pid = os.getpid()


def _reader(path: str) -> lmdb.Environment:
    global _readers_pid
    if _readers_pid != os.getpid():
        # Environments inherited through fork must not be used in the child; closing them
        # only unmaps the child's copy, and frees their files to be opened again here.
        for env in list(_readers.values()):
            env.close()
        _readers.clear()
        _readers_pid = os.getpid()
    st = os.stat(os.path.join(path, "data.mdb"))
    key = (st.st_dev, st.st_ino)
    env = _readers.get(key)
    if env is None:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False)
        _readers[key] = env
    return env


@dataclass
class DatasetStats:
    """Counts of an :class:`LmdbDataset`. ``total`` is ``num-samples``; ``kept`` passed the
    label filters; ``invalid_label`` covers missing and non-UTF-8 labels; ``unreadable``
    counts distinct kept samples whose image was missing or undecodable when read (across
    DataLoader workers); ``alpha`` counts those with an alpha channel, composited on white;
    ``unknown_chars`` counts, per character, the labels it excluded."""

    total: int
    kept: int
    empty: int
    too_long: int
    out_of_charset: int
    invalid_label: int
    unreadable: int
    alpha: int
    unknown_chars: Counter[str]


def _sample_count(txn: lmdb.Transaction, path: str) -> int:
    """The ``num-samples`` value; a ValueError naming ``path`` and the value if it is
    missing or not a count."""
    raw = txn.get(b"num-samples")
    if raw is None:
        raise ValueError(f"{path} has no 'num-samples' key: not a dataset LMDB")
    try:
        total = int(raw)
    except ValueError:
        total = -1
    if total < 0:
        raise ValueError(f"{path}: 'num-samples' is {raw!r}, not a sample count: not a "
                         "dataset LMDB, or a damaged one")
    return total


def sample_count(path: str | os.PathLike) -> int:
    """The number of samples the LMDB at ``path`` declares (ValueError as above)."""
    with _reader(str(path)).begin() as txn:
        return _sample_count(txn, str(path))


def _scan_labels(
    txn: lmdb.Transaction, path: str, charset: Charset | None, max_length: int | None
) -> tuple[int, list[int], list[str], Counter[str], Counter[str]]:
    """(num-samples, kept indices, kept labels, filter counts, unknown characters)."""
    total = _sample_count(txn, path)
    keys: list[int] = []
    labels: list[str] = []
    counts: Counter[str] = Counter()
    unknown_chars: Counter[str] = Counter()
    seen = 0
    # One sequential cursor pass over the label keys (they sort together and, zero-padded,
    # in index order) instead of N random lookups.
    cursor = txn.cursor()
    if cursor.set_range(_label_key(1)):
        for key, value in cursor:
            if not key.startswith(b"label-"):
                break
            if not key[6:].isdigit():
                continue  # a foreign key in the label range is not a sample
            index = int(key[6:])
            if index > total:
                break
            seen += 1
            try:
                label = value.decode("utf-8")
            except UnicodeDecodeError:
                counts["invalid_label"] += 1
                continue
            if charset is not None:
                label = charset.normalize(label)
            if not label:
                counts["empty"] += 1
            elif max_length is not None and len(label) > max_length:
                counts["too_long"] += 1
            elif charset is not None and not charset.contains(label):
                counts["out_of_charset"] += 1
                unknown_chars.update(charset.unknown(label))
            else:
                keys.append(index)
                labels.append(label)
    counts["invalid_label"] += total - seen  # indices with no label key at all
    return total, keys, labels, counts, unknown_chars


class LmdbDataset(Dataset):
    """A deep-text-recognition-benchmark LMDB as a map-style dataset of
    ``(image, label)``: a PIL image in ``mode`` (or ``transform(image)``) and the label as
    the charset sees it (lower-cased for a case-insensitive charset).

    Construction reads the labels only and drops samples whose label is empty, longer than
    ``max_length`` characters (``None``: no limit), or has characters outside ``charset``
    (``None``: any), counting each reason (:attr:`stats`, :meth:`report`).

    An image found missing or undecodable at read time is flagged and counted. For
    training (``skip_unreadable``) it is replaced by the next readable sample (wrapping
    around; flagged samples are skipped without being decoded again, and only when no
    sample at all is readable does ``__getitem__`` raise); for evaluation
    (``skip_unreadable=False``) the sample is returned as ``(None, label)``, so that every
    sample is scored once. Images with transparency are composited on white (transparent
    text backgrounds are black underneath) and counted.

    Safe with DataLoader workers: the environment is opened lazily, once per process
    (``readonly``, no lock, no readahead), and the unreadable flags live in shared memory.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        charset: Charset | None,
        max_length: int | None = 25,
        mode: str = "L",
        transform: Callable[[Image.Image], Any] | None = None,
        skip_unreadable: bool = True,
    ) -> None:
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
        self.path = str(path)
        self.charset = charset
        self.max_length = max_length
        self.mode = mode
        self.transform = transform
        self.skip_unreadable = skip_unreadable
        if not Path(path, "data.mdb").is_file():
            raise FileNotFoundError(f"no LMDB at {path} (expected {path}/data.mdb)")
        self._env: lmdb.Environment | None = None
        self._env_pid: int | None = None

        with self._open().begin() as txn:
            total, keys, self.labels, counts, unknown_chars = _scan_labels(
                txn, self.path, charset, max_length)

        self._indices = np.asarray(keys, dtype=np.int64)
        self._total = total
        self._counts = counts
        self._unknown_chars = unknown_chars
        # One flag per kept sample, in shared memory so that flags set by DataLoader
        # workers reach the main process (fork and spawn alike); setting a flag is
        # idempotent, so concurrent writers need no lock and re-reads count once.
        self._unreadable = torch.zeros(len(keys), dtype=torch.bool).share_memory_()
        self._alpha = torch.zeros(len(keys), dtype=torch.bool).share_memory_()

    def _open(self) -> lmdb.Environment:
        if self._env is None or self._env_pid != os.getpid():
            self._env = _reader(self.path)
            self._env_pid = os.getpid()
        return self._env

    def __getstate__(self) -> dict:
        # Spawned workers get the dataset pickled: environments do not pickle.
        state = self.__dict__.copy()
        state["_env"] = None
        state["_env_pid"] = None
        return state

    def __len__(self) -> int:
        return len(self._indices)

    def _read(self, position: int) -> Image.Image | None:
        with self._open().begin() as txn:
            data = txn.get(_image_key(int(self._indices[position])))
        if data is None:
            return None
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # decodes: errors surface here
                if has_alpha(img):
                    self._alpha[position] = True
                return to_mode(img, self.mode)
        except _DECODE_ERRORS:
            return None

    def __getitem__(self, position: int) -> tuple[Any, str]:
        n = len(self)
        if not -n <= position < n:
            raise IndexError(f"index {position} out of range for {n} samples")
        position %= n
        for offset in range(n):
            p = (position + offset) % n
            image = None if self._unreadable[p] else self._read(p)
            if image is None and not self._unreadable[p]:
                self._unreadable[p] = True
                log.warning("%s: unreadable image %s", self.path,
                            _image_key(int(self._indices[p])).decode())
            if image is None:
                if not self.skip_unreadable:
                    return None, self.labels[p]
                continue
            if self.transform is not None:
                image = self.transform(image)
            return image, self.labels[p]
        raise RuntimeError(f"{self.path}: no readable image among the {n} kept samples")

    @property
    def stats(self) -> DatasetStats:
        return DatasetStats(
            total=self._total,
            kept=len(self),
            empty=self._counts["empty"],
            too_long=self._counts["too_long"],
            out_of_charset=self._counts["out_of_charset"],
            invalid_label=self._counts["invalid_label"],
            unreadable=int(self._unreadable.sum()),
            alpha=int(self._alpha.sum()),
            unknown_chars=Counter(self._unknown_chars),
        )

    def report(self) -> str:
        """A one-paragraph human-readable summary of :attr:`stats`."""
        s = self.stats
        longer = f"{s.too_long} longer than {self.max_length}, " if self.max_length else ""
        text = (f"{self.path}: {s.kept}/{s.total} samples kept; filtered: {s.empty} empty, "
                f"{longer}{s.out_of_charset} out of "
                f"charset, {s.invalid_label} missing/invalid labels; {s.unreadable} "
                f"unreadable images {'skipped' if self.skip_unreadable else 'scored as wrong'}"
                f"; {s.alpha} images with an alpha channel composited on white")
        if s.unknown_chars:
            top = ", ".join(f"{c!r}×{k}" for c, k in s.unknown_chars.most_common(10))
            text += f"; most frequent unknown characters: {top}"
        return text
