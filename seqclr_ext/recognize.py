"""Read the text of image files with a trained recognizer.

    python -m seqclr_ext.recognize [--checkpoint builtin|RUN/best.pt] IMAGE|FOLDER ...
        [--json] [--batch-size 64] [--device cpu]

Prints ``path<TAB>text<TAB>confidence`` per image (a folder: every image file under it,
sorted), or with --json one object per line. From Python::

    reader = seqclr_ext.load_recognizer("runs/sup/best.pt")
    reader.recognize(["word.png", pil_image, uint8_array])   # -> [(text, confidence), ...]

Images of any size and mode are prepared as the model was trained: transparency composited
on white, converted to grey (RGB for 3-channel models), resized to the model's height (and
width, or keeping the aspect ratio for --keep-ratio models), normalized to [-1, 1].
Confidence is the probability of the greedy decoding path (as DTRB's demo): the product of
the per-step maximum probabilities, over the valid frames (CTC) or up to [s] (attention).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .checks import check_device, check_range
from .data import Charset, RecognitionCollate
from .data.convert import IMAGE_SUFFIXES
from .data.lmdb_dataset import _DECODE_ERRORS
from .evaluate import collate_for, load_checkpoint
from .models import ATTN_EOS, Recognizer
from .models.sequence import length_mask

__all__ = ["TextRecognizer", "load_recognizer", "path_confidence", "image_files", "main"]


def path_confidence(model: Recognizer, output: dict) -> torch.Tensor:
    """[B] probability of each image's greedy path in an inference ``output`` of ``model``."""
    logits = output["logits"].float()
    best = logits.softmax(-1).amax(-1)                                      # [B, S]
    if model.config.decoder == "ctc":
        valid = length_mask(output["lengths"].to(logits.device), logits.shape[1])
    else:  # the steps up to and including the first [s]
        eos = (logits.argmax(-1) == ATTN_EOS).long()
        valid = (eos.cumsum(1) - eos) == 0
    return torch.where(valid, best, torch.ones_like(best)).prod(1)


def _prepare(image, mode: str) -> Image.Image:
    """A path, PIL image or uint8 array -> PIL image in ``mode``, transparency on white."""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as img:
            return _prepare(img, mode)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise TypeError(f"image arrays must be uint8 [H, W] or [H, W, 3 | 4], got "
                            f"{image.dtype} of shape {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"images must be paths, PIL images or uint8 arrays, got "
                        f"{type(image).__name__}")
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image.convert(mode)


class TextRecognizer:
    """A recognizer with its charset and its training run's preprocessing; see
    :func:`load_recognizer`."""

    def __init__(self, model: Recognizer, charset: Charset, collate: RecognitionCollate,
                 device="cpu") -> None:
        self.model, self.charset, self.collate = model.eval(), charset, collate
        self.device = torch.device(device)
        self.mode = "RGB" if model.config.in_channels == 3 else "L"

    @torch.no_grad()
    def recognize(self, images, batch_size: int = 64) -> list[tuple[str, float]]:
        """Paths, PIL images or uint8 arrays (one, or a list) -> [(text, confidence)]."""
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        images = list(images)
        results = []
        for start in range(0, len(images), batch_size):
            chunk = [_prepare(x, self.mode) for x in images[start:start + batch_size]]
            batch = self.collate([(img, "") for img in chunk]).to(self.device)
            out = self.model(batch.images, batch.widths)
            texts = [self.charset.decode(ids) for ids in self.model.decode(out)]
            results += zip(texts, path_confidence(self.model, out).tolist())
        return results


def load_recognizer(checkpoint="builtin", device=None) -> TextRecognizer:
    """A recognizer checkpoint (``best.pt`` / ``last.pt`` of a training run, or
    ``"builtin"``) ready to read images: ``load_recognizer(path).recognize(images)``.
    ``device`` defaults to CUDA when available."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, charset, ckpt = load_checkpoint(checkpoint, device)
    return TextRecognizer(model, charset, collate_for(ckpt), device)


def image_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and the image files under each folder (recursively, sorted)."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(f for f in item.rglob("*")
                           if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise FileNotFoundError(f"{item}: no image files in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    return files


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m seqclr_ext.recognize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER")
    p.add_argument("--checkpoint", default="builtin",
                   help="best.pt / last.pt of a training run, or builtin (default)")
    p.add_argument("--json", action="store_true",
                   help='one {"path", "text", "confidence"} object per line')
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    check_range(args.batch_size, "--batch-size", 1)
    check_device(args.device)
    try:
        files = image_files(args.inputs)
        reader = load_recognizer(args.checkpoint, args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    failed = 0
    bar = tqdm(total=len(files), unit="image", file=sys.stderr,
               disable=args.no_progress or len(files) <= args.batch_size)
    for start in range(0, len(files), args.batch_size):
        paths, images = [], []
        for path in files[start:start + args.batch_size]:
            try:
                images.append(_prepare(path, reader.mode))
                paths.append(path)
            except _DECODE_ERRORS as e:
                failed += 1
                tqdm.write(f"warning: {path}: unreadable image ({e})", file=sys.stderr)
        for path, (text, conf) in zip(paths, reader.recognize(images, args.batch_size)):
            line = (json.dumps({"path": str(path), "text": text, "confidence": round(conf, 4)},
                               ensure_ascii=False)
                    if args.json else f"{path}\t{text}\t{conf:.4f}")
            tqdm.write(line, file=sys.stdout)
        bar.update(len(files[start:start + args.batch_size]))
    bar.close()
    if failed:
        print(f"{failed} of {len(files)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
