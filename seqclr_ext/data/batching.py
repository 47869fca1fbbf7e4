"""Recognition batches: image resizing + DTRB normalization, label encoding, the resumable
sample order and the fixed label subsets of the semi-supervised settings."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from .charset import Charset

__all__ = ["Batch", "RecognitionCollate", "ResumableBatchSampler", "label_subset", "load_or_make_subset"]

MIN_WIDTH = 4  # the recognizer's narrowest input (seqclr_ext.models.MIN_WIDTH)


class Batch(NamedTuple):
    """What :class:`RecognitionCollate` returns (fields described there)."""
    images: torch.Tensor
    widths: torch.Tensor | None
    labels: list[str]
    readable: torch.Tensor
    targets: torch.Tensor | None = None
    target_lengths: torch.Tensor | None = None

    def to(self, device) -> Batch:
        """The model's inputs (images, widths, targets) on ``device``; None stays None."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return self._replace(images=move(self.images), widths=move(self.widths),
                             targets=move(self.targets),
                             target_lengths=move(self.target_lengths))


class RecognitionCollate:
    """``[(PIL image, label), ...]`` → a :class:`Batch` for the Recognizer.

    Images become float tensors ``(x / 255 − 0.5) / 0.5`` (DTRB). Default: resized to the
    fixed ``height × width`` (32×100, bicubic, as DTRB). ``keep_ratio``: resized to
    ``height`` keeping the aspect ratio (width clamped to [4, ``max_width``]), padded with 0
    on the right to the batch's widest image, with the valid ``widths`` returned.

    Returns ``images [B, C, H, W]``, ``widths [B]`` (None when fixed-size), ``labels``
    (the strings) and, with a ``charset``, ``targets [B, L]`` (0-based charset indices,
    padded with 0) and ``target_lengths [B]`` (else None). Evaluation samples whose image is None
    (unreadable: ``LmdbDataset(skip_unreadable=False)``) keep their label but have no
    image: ``readable [B]`` marks the samples that are in ``images`` / ``widths``.
    """

    def __init__(self, charset: Charset | None = None, *, height: int = 32, width: int = 100,
                 keep_ratio: bool = False, max_width: int | None = None) -> None:
        self.charset, self.height, self.width = charset, height, width
        self.keep_ratio = keep_ratio
        self.max_width = max_width or 4 * width

    def _resize(self, image: Image.Image) -> Image.Image:
        if not self.keep_ratio:
            return image.resize((self.width, self.height), Image.BICUBIC)
        w = round(image.width * self.height / max(image.height, 1))
        return image.resize((min(max(w, MIN_WIDTH), self.max_width), self.height), Image.BICUBIC)

    def __call__(self, samples: Sequence[tuple[Image.Image | None, str]]) -> Batch:
        readable = [img is not None for img, _ in samples]
        images = [self._resize(img) for img, _ in samples if img is not None]
        labels = [label for _, label in samples]
        arrays = [np.asarray(img, dtype=np.float32) for img in images]
        arrays = [a[:, :, None] if a.ndim == 2 else a for a in arrays]      # HWC
        widths = [a.shape[1] for a in arrays]
        batch = np.zeros((len(arrays), arrays[0].shape[2] if arrays else 1, self.height,
                          max(widths, default=self.width)), dtype=np.float32)
        for i, a in enumerate(arrays):
            batch[i, :, :, : a.shape[1]] = (a.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
        out = Batch(images=torch.from_numpy(batch), labels=labels,
                    widths=torch.tensor(widths, dtype=torch.long) if self.keep_ratio else None,
                    readable=torch.tensor(readable))
        if self.charset is not None:
            encoded = [self.charset.encode(label) for label in labels]
            lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
            targets = torch.zeros(len(encoded), max(1, int(lengths.max())), dtype=torch.long)
            for i, e in enumerate(encoded):
                targets[i, : len(e)] = torch.tensor(e, dtype=torch.long)
            out = out._replace(targets=targets, target_lengths=lengths)
        return out


class ResumableBatchSampler:
    """An endless stream of batches of dataset indices whose order is a pure function of
    ``(seed, position)``: sample k of the stream is element ``k mod n`` of the permutation
    of epoch ``k // n`` (``torch.randperm`` seeded with ``seed + epoch``). Batches run
    across epoch boundaries. Resuming after ``step`` batches = ``start=step * batch_size``,
    whatever the DataLoader workers had prefetched.

    Distributed: ``batch_size`` is the global batch; rank r of ``world_size`` gets the
    contiguous slice ``[r·b/N, (r+1)·b/N)`` of each global batch. The ranks together read
    exactly the batches of one process, so the position (``start``) does not depend on
    the number of processes."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, start: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < 1:
            raise ValueError("no training samples")
        if batch_size % world_size:
            raise ValueError(f"batch_size must be a multiple of world_size {world_size}, "
                             f"got {batch_size}")
        self.n, self.batch_size, self.seed, self.start = num_samples, batch_size, seed, start
        self.shuffle = shuffle
        per_rank = batch_size // world_size
        self.shard = slice(rank * per_rank, (rank + 1) * per_rank)

    def _epoch(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        epoch, order = k // self.n, self._epoch(k // self.n)
        batch: list[int] = []
        while True:
            if k // self.n != epoch:
                epoch, order = k // self.n, self._epoch(k // self.n)
            batch.append(order[k % self.n])
            k += 1
            if len(batch) == self.batch_size:
                yield batch[self.shard]
                batch = []


def label_subset(num_samples: int, fraction: float, seed: int) -> list[int]:
    """A fixed random subset of ``round(fraction · n)`` (at least 1) sample indices,
    sorted; a pure function of its arguments."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    k = max(1, round(fraction * num_samples))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(num_samples, generator=g)[:k].tolist())


def load_or_make_subset(path: str | os.PathLike, num_samples: int, fraction: float,
                        seed: int, sources: Sequence[str] = ()) -> list[int]:
    """The label subset saved at ``path`` (JSON), or a new one made and saved there. A
    saved subset must come from a dataset of the same size (else ``ValueError``), so a
    fine-tuning run given the file trains on exactly the same samples."""
    path = Path(path)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["num_samples"] != num_samples:
            raise ValueError(f"{path}: subset of a {saved['num_samples']}-sample dataset, "
                             f"but the training data has {num_samples} samples")
        return saved["indices"]
    indices = label_subset(num_samples, fraction, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"fraction": fraction, "seed": seed, "num_samples": num_samples,
                               "sources": list(sources), "indices": indices}))
    os.replace(tmp, path)
    return indices
