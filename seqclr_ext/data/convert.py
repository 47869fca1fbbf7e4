"""Build an LMDB from a folder of images and its labels, in the common layouts:

- ``gt``: deep-text-recognition-benchmark / ICDAR ground-truth files, one sample a line:
  ``path<TAB>label`` (DTRB's create_lmdb_dataset), ``path, "label"`` (ICDAR 2013 / 2015
  word recognition, ``\\"`` escaping a quote), or ``path label`` split at the first space;
- ``iam``: IAM's ``ascii/words.txt`` (``a01-000u-00-00 ok 154 ... AT A``: id, segmentation,
  grey level, box, tag, transcription), images under ``words/`` as
  ``a01/a01-000u/a01-000u-00-00.png``; words marked ``err`` are kept, like ``ok`` ones;
- ``doctr``: docTR's recognition layout, a ``labels.json`` object ``{file name: label}``;
- ``filenames``: no label file, the label is in each image's file name (``--label-pattern``).

Paths are relative to the image root. Every entry that is skipped (malformed, image
missing or undecodable) is counted and reported with where it came from and why.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from PIL import Image
from tqdm import tqdm

from .lmdb_dataset import _DECODE_ERRORS, write_lmdb

__all__ = ["FORMATS", "IMAGE_SUFFIXES", "DEFAULT_LABEL_PATTERN", "ConvertStats", "Entry", "Malformed",
           "read_gt", "read_iam", "read_doctr", "read_filenames", "convert_folder"]

log = logging.getLogger(__name__)

FORMATS = ("gt", "iam", "doctr", "filenames")
# Suffixes of the formats PIL can open (.png, .jpg, .tif, ...).
IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items()
                           if fmt in Image.OPEN)
# File-name labels: "word", "word_3", "12_word" and MJSynth's "182_slinking_71711".
DEFAULT_LABEL_PATTERN = r"(?:\d+_)?(?P<label>.+?)(?:_\d+)?"
_ICDAR_LINE = re.compile(r'(?P<path>[^,]+),\s*"(?P<label>.*)"\s*')


class Entry(NamedTuple):
    where: str   # where it was read ("line 12", a file name), for the report
    path: str    # the image, relative to the image root
    label: str


class Malformed(NamedTuple):
    where: str
    reason: str


@dataclass
class ConvertStats:
    """Outcome of :func:`convert_folder`; ``problems`` lists (where, reason) per skip."""

    written: int = 0
    missing: int = 0
    unreadable: int = 0
    malformed: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.written} written, {self.missing} missing images, "
                f"{self.unreadable} unreadable images, {self.malformed} malformed entries")


def _lines(label_file) -> list[tuple[int, str]]:
    # utf-8-sig: label files saved by Windows editors (and ICDAR 2015's) start with a BOM.
    text = Path(label_file).read_text(encoding="utf-8-sig")
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_gt(label_file) -> list[Entry | Malformed]:
    """``path<TAB>label``, ``path, "label"`` or ``path label``, decided per line."""
    entries = []
    for n, line in _lines(label_file):
        where = f"line {n}"
        if "\t" in line:
            path, label = line.split("\t", 1)
        elif icdar := _ICDAR_LINE.fullmatch(line):
            path = icdar["path"]
            label = icdar["label"].replace('\\"', '"').replace("\\\\", "\\")
        elif " " in line:
            path, label = line.split(" ", 1)
        else:
            entries.append(Malformed(where, "no separator (TAB, ', \"' or space)"))
            continue
        entries.append(Entry(where, path, label))
    return entries


def read_iam(words_txt) -> list[Entry | Malformed]:
    """IAM ``words.txt``: ``#`` comments, then ``id result grey x y w h tag text``."""
    entries = []
    for n, line in _lines(words_txt):
        if line.startswith("#"):
            continue
        where, fields = f"line {n}", line.split(" ")
        parts = fields[0].split("-")
        if len(fields) < 9 or len(parts) < 4:
            entries.append(Malformed(where, "not 'id ok|err grey x y w h tag text' with an "
                                            "id like a01-000u-00-00"))
            continue
        path = f"{parts[0]}/{parts[0]}-{parts[1]}/{fields[0]}.png"
        entries.append(Entry(where, path, " ".join(fields[8:])))
    return entries


def read_doctr(labels_json) -> list[Entry | Malformed]:
    """docTR's ``labels.json``: ``{"image.jpg": "label", ...}``."""
    labels = json.loads(Path(labels_json).read_text(encoding="utf-8-sig"))
    if not isinstance(labels, dict):
        raise ValueError(f"{labels_json}: expected a JSON object {{file name: label}}, got a "
                         f"{type(labels).__name__}")
    return [Entry(name, name, label) if isinstance(label, str)
            else Malformed(name, f"label is not a string: {label!r}")
            for name, label in labels.items()]


def read_filenames(image_root, label_pattern: str = DEFAULT_LABEL_PATTERN
                   ) -> list[Entry | Malformed]:
    """Every image file under ``image_root`` (recursively, sorted), labelled by the
    ``label`` group (else the first group) of ``label_pattern`` matching its whole stem."""
    try:
        pattern = re.compile(label_pattern)
    except re.error as e:
        raise ValueError(f"label pattern {label_pattern!r}: {e}") from None
    if pattern.groups == 0:
        raise ValueError(f"label pattern {label_pattern!r} has no group for the label")
    group = "label" if "label" in pattern.groupindex else 1
    root = Path(image_root)
    entries = []
    for file in sorted(f for f in root.rglob("*")
                       if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()):
        name = file.relative_to(root).as_posix()
        match = pattern.fullmatch(file.stem)
        entries.append(Entry(name, name, match[group]) if match and match[group] else
                       Malformed(name, f"file name does not match {label_pattern!r}"))
    return entries


def convert_folder(image_root: str | os.PathLike, label_file: str | os.PathLike | None,
                   out_path: str | os.PathLike, *, format: str = "gt",
                   label_pattern: str = DEFAULT_LABEL_PATTERN, overwrite: bool = False,
                   progress: bool = True) -> ConvertStats:
    """Build an LMDB at ``out_path`` from the images under ``image_root`` and their labels
    in ``label_file`` (in ``format``, see the module; ``None`` for ``filenames``).

    Images are fully decoded once to check them, then stored as their original bytes.
    Malformed entries and missing or undecodable images are skipped and counted (logged
    as a warning), never fatal.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if (label_file is None) != (format == "filenames"):
        raise ValueError("format 'filenames' takes no label file" if label_file is not None
                         else f"format {format!r} needs a label file")
    if not Path(image_root).is_dir():
        raise FileNotFoundError(f"image root {image_root} is not a folder")
    if format == "filenames":
        entries = read_filenames(image_root, label_pattern)
    else:
        entries = {"gt": read_gt, "iam": read_iam, "doctr": read_doctr}[format](label_file)
    root = Path(image_root)
    stats = ConvertStats()

    def skip(where: str, reason: str, kind: str) -> None:
        setattr(stats, kind, getattr(stats, kind) + 1)
        stats.problems.append((where, reason))

    def samples():
        for entry in tqdm(entries, desc=f"lmdb {out_path}", unit="entry",
                          disable=not progress):
            if isinstance(entry, Malformed):
                skip(entry.where, entry.reason, "malformed")
                continue
            try:
                data = (root / entry.path).read_bytes()
            except OSError:
                skip(entry.where, f"missing image {entry.path}", "missing")
                continue
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    if img.width == 0 or img.height == 0:
                        raise ValueError("empty image")
            except _DECODE_ERRORS:
                skip(entry.where, f"unreadable image {entry.path}", "unreadable")
                continue
            yield data, entry.label

    stats.written = write_lmdb(out_path, samples(), overwrite=overwrite)
    if stats.problems:
        log.warning("convert_folder %s: %s", out_path, stats)
    return stats
