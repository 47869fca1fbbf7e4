"""Style-guided text synthesis with a SimAN generator (SimAN §4.5).

    python -m seqclr_ext.synthesize --checkpoint runs/siman/last.pt --style photo.png \\
        --text "hello" [--text ...] [--texts words.txt] [--width 160] \\
        (--out-dir synth/ | --lmdb synth.lmdb)

Every target string is rendered in a plain font (DejaVu Sans) as the content image, cut
into H×H patches, and each patch is recovered in the style of a patch of the style image
(the style image's H×H patches are used in turn, left to right), then the patches are put
back side by side: any length of text, in the style image's strokes, colours and
background. With several ``--style`` images, every (style, text) pair gives one sample.
``--lmdb`` writes the samples with their strings as labels (deep-text-recognition-benchmark
layout) for data augmentation.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from . import checkpoints
from .checks import check_device, check_file, check_range
from .data import write_lmdb
from .data.lmdb_dataset import _DECODE_ERRORS, to_mode
from .data.render import FONT_ROOT
from .methods import SimAN
from .train.options import make_charset, make_recognizer

__all__ = ["load_generator", "render_plain", "synthesize", "main"]

PLAIN_FONT = FONT_ROOT / "truetype/dejavu/DejaVuSans.ttf"   # Debian fonts-dejavu-core


def load_generator(path, device="cpu") -> tuple[SimAN, dict]:
    """``last.pt`` of a ``pretrain --method siman`` run -> (SimAN in eval mode, config)."""
    ckpt = checkpoints.load(path, "siman")
    config = ckpt["config"]
    model = SimAN(make_recognizer(config, make_charset(config)),
                  kernel_size=config["siman_kernel"], l2_weight=config["l2_weight"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), config


def render_plain(text: str, height: int, font_path=PLAIN_FONT) -> Image.Image:
    """Black text on white, ``height`` pixels high, as wide as the text (≥ height)."""
    if not text:
        raise ValueError("text must not be empty")
    font = ImageFont.truetype(str(font_path), max(4, round(height * 0.7)))
    left, top, right, bottom = font.getbbox(text)
    pad = height // 8
    image = Image.new("L", (max(height, right - left + 2 * pad), height), 255)
    ImageDraw.Draw(image).text((pad - left, (height - (bottom - top)) // 2 - top), text,
                               font=font, fill=0)
    return image


def _to_tensor(image: Image.Image, channels: int, height: int) -> torch.Tensor:
    """PIL -> [1, C, height, W ≥ height] in [-1, 1], resized to the height keeping the ratio."""
    image = to_mode(image, "RGB" if channels == 3 else "L")
    width = max(height, round(image.width * height / max(1, image.height)))
    array = np.asarray(image.resize((width, height), Image.BICUBIC), dtype=np.float32)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.transpose(2, 0, 1) / 127.5 - 1)[None]


def _patches(image: torch.Tensor, fill: float) -> torch.Tensor:
    """[1, C, H, W] -> [ceil(W/H), C, H, H], the last patch padded with ``fill``."""
    h, w = image.shape[-2:]
    n = -(-w // h)
    padded = F.pad(image, (0, n * h - w), value=fill)
    return padded[0].unfold(2, h, h).permute(2, 0, 1, 3)


@torch.no_grad()
def synthesize(model: SimAN, style: Image.Image, text: str, *, width: int | None = None,
               font_path=PLAIN_FONT) -> Image.Image:
    """``text`` in the style of ``style``: a PIL image of the generator's height and of the
    rendered text's width (or ``width``)."""
    height, _ = model.recognizer.config.image_size
    channels = model.recognizer.config.in_channels
    device = next(model.parameters()).device
    content = _to_tensor(render_plain(text, height, font_path), channels, height)
    content_patches = _patches(content, 1.0).to(device)
    style_patches = _patches(_to_tensor(style, channels, height), 1.0).to(device)
    picks = torch.arange(len(content_patches), device=device) % len(style_patches)
    recovered = model.recover(content_patches, style_patches[picks])        # [n, C, H, H]
    out = torch.cat(list(recovered), dim=-1)[..., :content.shape[-1]]       # [C, H, W]
    if width is not None:
        if width < 1:
            raise ValueError(f"width must be a positive number of pixels, got {width}")
        out = F.interpolate(out[None], size=(height, width), mode="bilinear",
                            align_corners=False)[0]
    pixels = ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m seqclr_ext.synthesize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="last.pt of `pretrain --method siman`")
    p.add_argument("--style", required=True, action="append", help="style image (repeatable)")
    p.add_argument("--text", action="append", default=[], help="target string (repeatable)")
    p.add_argument("--texts", help="file of target strings, one per line")
    p.add_argument("--width", type=int, help="output width in pixels (default: the text's)")
    p.add_argument("--font", default=str(PLAIN_FONT), help="font of the content rendering")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out-dir", help="write one PNG per (style, text) here")
    out.add_argument("--lmdb", help="write the samples (label = text) to this new LMDB")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    check_range(args.width, "--width", 1)
    check_file(args.font, "--font")
    check_device(args.device)
    if args.lmdb and Path(args.lmdb).exists():
        raise SystemExit(f"error: --lmdb {args.lmdb}: exists (synthesize writes a new LMDB)")
    texts = list(args.text)
    if args.texts:
        check_file(args.texts, "--texts")
        texts += [line for line in Path(args.texts).read_text(encoding="utf-8").splitlines()
                  if line.strip()]
    if not texts:
        raise SystemExit("error: give at least one --text or a --texts file with a "
                         "non-blank line")
    styles = []
    for path in args.style:
        check_file(path, "--style")
        try:
            with Image.open(path) as image:
                image.load()
                styles.append(image.copy())
        except _DECODE_ERRORS as e:
            raise SystemExit(f"error: --style {path}: not a readable image ({e})") from None
    try:
        model, _ = load_generator(args.checkpoint, args.device)
    except checkpoints.CheckpointError as e:
        raise SystemExit(f"error: --checkpoint {e}") from None
    samples = ((synthesize(model, style, text, width=args.width, font_path=args.font), text)
               for style in styles for text in texts)
    if args.lmdb:
        count = write_lmdb(args.lmdb, samples)
        print(f"wrote {count} samples to {args.lmdb}", file=sys.stderr)
        return 0
    folder = Path(args.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, text) in enumerate(samples):
        image.save(folder / f"{i:06d}_{re.sub(r'[^A-Za-z0-9]+', '_', text)[:40]}.png")
    print(f"wrote {len(styles) * len(texts)} images to {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
