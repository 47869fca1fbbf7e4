"""``python -m seqclr_ext.data``: render, convert, inspect and preview LMDB datasets.

Examples::

    python -m seqclr_ext.data render --split scene-train --num 10000 --out data/scene-train.lmdb
    python -m seqclr_ext.data render --all --out data/          # the default built-in set
    python -m seqclr_ext.data convert images/ gt.txt data/mine.lmdb
    python -m seqclr_ext.data convert --format iam iam/words iam/ascii/words.txt data/iam.lmdb
    python -m seqclr_ext.data convert --format filenames mjsynth/ data/mj.lmdb
    python -m seqclr_ext.data inspect data/scene-train.lmdb
    python -m seqclr_ext.data preview data/hand-test.lmdb --out grid.png --num 32
    python -m seqclr_ext.data fonts                             # the font split and its status
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..checks import check_lmdb, check_range
from . import render as R
from .charset import Charset
from .convert import DEFAULT_LABEL_PATTERN, FORMATS, convert_folder
from .lmdb_dataset import LmdbDataset, _image_key, _reader, has_alpha

_CHARSETS = {
    "printable": lambda: Charset.printable(),
    "french": lambda: Charset.printable(french=True),
    "alphanumeric": lambda: Charset.alphanumeric(),
    "none": lambda: None,
}


def _write_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an existing LMDB")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m seqclr_ext.data",
        description="Datasets of seqclr_ext in deep-text-recognition-benchmark's LMDB layout: "
                    "render the built-in word images, convert an image folder, inspect or "
                    "preview an LMDB.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"The built-in splits need Debian fonts and word lists:\n  {R.APT_INSTALL}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sizes = ", ".join(f"{k}={v}" for k, v in R.DEFAULT_SIZES.items())
    r = sub.add_parser(
        "render", help="render built-in word images into an LMDB",
        description="Render word images from the installed fonts and word lists into an "
                    "LMDB. Splits: scene-train/scene-test (print fonts, scene-like), "
                    "hand-train/hand-test (handwriting fonts); train and test use disjoint "
                    "font families and vocabularies. The same --seed gives the same bytes "
                    "for any --workers.")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--split", choices=R.SPLITS, help="the split to render")
    which.add_argument("--all", action="store_true",
                       help=f"render every split into OUT/<split>.lmdb ({sizes} samples "
                            f"unless --num is given)")
    r.add_argument("--out", required=True,
                   help="the LMDB directory to write (with --all: the folder to hold them)")
    r.add_argument("--num", type=int, help="samples to render (per split with --all)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                   help="rendering processes (default: CPU count, at most 8)")
    r.add_argument("--lang", nargs="+", default=["en"], choices=sorted(R.WORD_LISTS),
                   help="word lists: en (wamerican), fr (wfrench, adds accented letters)")
    _write_options(r)

    c = sub.add_parser(
        "convert", help="build an LMDB from an image folder and its labels",
        description="Build an LMDB from the images under IMAGE_ROOT and their labels (paths "
                    "relative to IMAGE_ROOT). --format gt: LABEL_FILE lines 'path<TAB>label' "
                    "(DTRB's create_lmdb_dataset), 'path, \"label\"' (ICDAR) or 'path label' "
                    "(split at the first space); iam: IAM's ascii/words.txt with IMAGE_ROOT "
                    "its words/ folder; doctr: a labels.json {file name: label}; filenames: "
                    "no LABEL_FILE, each label in its image's file name. Malformed entries "
                    "and missing or unreadable images are skipped, counted and listed.")
    c.add_argument("image_root", metavar="IMAGE_ROOT")
    c.add_argument("label_file", metavar="LABEL_FILE", nargs="?",
                   help="the labels (not with --format filenames)")
    c.add_argument("out", metavar="OUT")
    c.add_argument("--format", choices=FORMATS, default="gt", help="label layout (default gt)")
    c.add_argument("--label-pattern", default=DEFAULT_LABEL_PATTERN,
                   help="--format filenames: regular expression matching a whole file stem, "
                        "its group 'label' the label (default: 'word', 'word_3', '12_word' "
                        "and MJSynth's '182_slinking_71711')")
    c.add_argument("--show", type=int, default=20, help="skipped entries listed (default 20)")
    _write_options(c)

    i = sub.add_parser(
        "inspect", help="counts, charset coverage, length and width histograms",
        description="Print an LMDB's sample count, what the label filters drop, the "
                    "charset coverage, and histograms of label length and image width "
                    "(at height 32, as the models see them).")
    i.add_argument("lmdb", metavar="LMDB")
    i.add_argument("--charset", choices=list(_CHARSETS), default="printable",
                   help="charset the labels are filtered by (default printable)")
    i.add_argument("--max-length", type=int, default=25,
                   help="longest label kept (default 25; 0: no limit)")
    i.add_argument("--max-images", type=int, default=20000,
                   help="images read for the width histogram, evenly spread (default 20000)")

    v = sub.add_parser(
        "preview", help="a PNG grid of samples with their labels",
        description="Write a PNG grid of the first --num samples (or random ones with "
                    "--random), each image scaled to height 32 with its label underneath.")
    v.add_argument("lmdb", metavar="LMDB")
    v.add_argument("--out", required=True, help="the PNG to write")
    v.add_argument("--num", type=int, default=32, help="samples shown (default 32)")
    v.add_argument("--cols", type=int, default=4, help="grid columns (default 4)")
    v.add_argument("--random", action="store_true", help="random samples, not the first")
    v.add_argument("--seed", type=int, default=0,
                   help="seed of --random and --augment (default 0)")
    v.add_argument("--augment", choices=("seqclr", "simclr", "siman"),
                   help="show each sample (resized to 32x100) next to two independently "
                        "augmented views: SeqCLR's sequence-preserving set, SimCLR's, or SimAN's "
                        "photometric content-patch set")

    sub.add_parser("fonts", help="list the font families of every split and check them",
                   description="List the font families of each built-in split with their "
                               "Debian packages, and whether their files are installed.")
    return p


def _render(args) -> int:
    splits = list(R.SPLITS) if args.all else [args.split]
    for split in splits:
        if args.all:
            out = Path(args.out) / f"{split}.lmdb"
            num = args.num if args.num is not None else R.DEFAULT_SIZES[split]
        else:
            out = Path(args.out)
            if args.num is None:
                raise SystemExit("error: render --split needs --num")
            num = args.num
        stats = R.render_split(split, out, num, args.seed, args.workers,
                               languages=args.lang, overwrite=args.overwrite,
                               progress=not args.no_progress)
        print(f"{out}: {stats}")
    return 0


def _convert(args) -> int:
    stats = convert_folder(args.image_root, args.label_file, args.out, format=args.format,
                           label_pattern=args.label_pattern, overwrite=args.overwrite,
                           progress=not args.no_progress)
    print(f"{args.out}: {stats}")
    for where, reason in stats.problems[:args.show]:
        print(f"  {where}: {reason}")
    if len(stats.problems) > args.show:
        print(f"  ... {len(stats.problems) - args.show} more")
    return 0


def _bars(counter: Counter, keys, width: int = 50) -> list[str]:
    top = max(counter.values(), default=1)
    return [f"  {k:>9} {counter[k]:8d} {'#' * round(width * counter[k] / top)}"
            for k in keys]


def _inspect(args) -> int:
    charset = _CHARSETS[args.charset]()
    ds = LmdbDataset(args.lmdb, charset, max_length=args.max_length or None)
    s = ds.stats
    print(f"samples: {s.total} (kept {s.kept} with charset={args.charset}, "
          f"max length {args.max_length or 'none'})")
    print(ds.report())

    chars = Counter(c for label in ds.labels for c in label)
    print(f"\ncharacters: {len(chars)} distinct in the kept labels")
    if charset is not None:
        absent = [c for c in charset.symbols if c not in chars]
        print(f"charset coverage: {len(charset) - len(absent)}/{len(charset)} symbols seen"
              + (f"; never seen: {''.join(absent)!r}" if absent else ""))
    rare = sorted(chars.items(), key=lambda kv: (kv[1], kv[0]))[:10]
    print("rarest: " + ", ".join(f"{c!r}×{k}" for c, k in rare))

    lengths = Counter(len(label) for label in ds.labels)
    print("\nlabel length (kept labels):")
    print("\n".join(_bars(lengths, range(min(lengths, default=0),
                                         max(lengths, default=-1) + 1))))

    # Widths at height 32 from the image headers (no pixel decoding), over all samples.
    n = s.total
    step = max(1, -(-n // max(1, args.max_images)))
    widths, unreadable, alpha = [], 0, 0
    with _reader(str(args.lmdb)).begin() as txn:
        for k in range(1, n + 1, step):
            data = txn.get(_image_key(k))
            try:
                with Image.open(io.BytesIO(data)) as img:
                    w, h = img.size
                    alpha += has_alpha(img)
                widths.append(round(w * 32 / max(h, 1)))
            except Exception:  # noqa: BLE001 - anything undecodable is just counted
                unreadable += 1
    if widths:
        bins = [0, 16, 32, 48, 64, 96, 128, 160, 192, 256, 320, 400, 512, 10**9]
        hist = Counter()
        for w in widths:
            for lo, hi in zip(bins, bins[1:]):
                if lo <= w < hi:
                    hist[f"{lo}-{hi - 1}" if hi < 10**9 else f">={lo}"] += 1
                    break
        keys = [f"{lo}-{hi - 1}" if hi < 10**9 else f">={lo}" for lo, hi in zip(bins, bins[1:])]
        keys = [k for k in keys if hist[k]]
        ws = sorted(widths)
        print(f"\nimage width at height 32 ({len(widths)} images read"
              f"{f', {unreadable} unreadable' if unreadable else ''}"
              f"{f', {alpha} with an alpha channel (composited on white)' if alpha else ''}"
              f"): min {ws[0]}, "
              f"median {ws[len(ws) // 2]}, max {ws[-1]}")
        print("\n".join(_bars(hist, keys)))
    return 0


def _label_font(size: int = 12):
    path = R.FONT_ROOT / "truetype/dejavu/DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default()


def _augmented_strips(samples, name: str, seed: int):
    """[(image, label)] -> [(original | view a | view b, label)] at 32x100 per view."""
    import torch

    from .augment import make_augment
    from .batching import RecognitionCollate

    images = RecognitionCollate(None, height=32, width=100)(samples).images
    generator = torch.Generator().manual_seed(seed)
    views = [make_augment(name)(images, None, generator) for _ in range(2)]
    strips = torch.cat([images, *views], dim=3)[:, 0]                    # [N, 32, 300]
    pixels = ((strips + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return [(Image.fromarray(p), label) for p, (_, label) in zip(pixels, samples)]


def _preview(args) -> int:
    import numpy as np

    ds = LmdbDataset(args.lmdb, None, max_length=None, mode="L")
    n = min(args.num, len(ds))
    if n == 0:
        raise SystemExit(f"error: {args.lmdb}: no samples to preview")
    if args.random:
        idx = sorted(np.random.default_rng(args.seed).choice(len(ds), n, replace=False))
    else:
        idx = range(n)
    samples = [ds[int(i)] for i in idx]
    if args.augment:
        samples = _augmented_strips(samples, args.augment, args.seed)
    cell_w, img_h, text_h, pad = 300 if args.augment else 256, 32, 16, 6
    cols = max(1, min(args.cols, n))
    rows = -(-n // cols)
    grid = Image.new("L", (cols * (cell_w + pad) + pad, rows * (img_h + text_h + pad) + pad),
                     255)
    draw = ImageDraw.Draw(grid)
    font = _label_font()
    for k, (img, label) in enumerate(samples):
        w = max(1, round(img.width * img_h / img.height))
        img = img.resize((min(w, cell_w), img_h), Image.Resampling.BILINEAR)
        x = pad + (k % cols) * (cell_w + pad)
        y = pad + (k // cols) * (img_h + text_h + pad)
        grid.paste(img, (x, y))
        draw.text((x, y + img_h + 1), label if len(label) <= 36 else label[:35] + "…",
                  font=font, fill=0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"{args.out}: {n} samples of {args.lmdb}")
    return 0


def _fonts(args) -> int:
    ok = True
    for split in R.SPLITS:
        print(f"{split}:")
        for fam in R.split_families(split):
            present = sum((R.FONT_ROOT / f).is_file() for f in fam.files)
            ok &= present == len(fam.files)
            caps = ", capitals only" if fam.caps_only else ""
            print(f"  {fam.name:20s} {present}/{len(fam.files)} faces  ({fam.package}{caps})")
    print(f"\npackages: {R.APT_INSTALL}")
    if not ok:
        print("some font files are missing: install the packages above", file=sys.stderr)
    return 0 if ok else 1


def _check(args) -> None:
    """The options' ranges and the LMDB read, before anything is written."""
    for flag, low in (("num", 1), ("workers", 1), ("show", 0), ("max_length", 0),
                      ("max_images", 1), ("cols", 1)):
        check_range(getattr(args, flag, None), f"--{flag.replace('_', '-')}", low)
    if args.command in ("inspect", "preview"):
        check_lmdb(args.lmdb, "LMDB")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _check(args)
    handler = {"render": _render, "convert": _convert, "inspect": _inspect,
               "preview": _preview, "fonts": _fonts}[args.command]
    try:
        return handler(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
