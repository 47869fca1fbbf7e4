"""Export a recognizer checkpoint to TorchScript or ONNX.

    python -m seqclr_ext.export --checkpoint runs/sup/best.pt --format onnx --out model.onnx
    python -m seqclr_ext.export --checkpoint builtin --format torchscript --out model.pt

The exported graph maps ``images`` [B, C, H, W] (float32, pixels x as (x / 255 - 0.5) / 0.5,
H the model's height) to ``logits``: CTC [B, T, chars + 1] per frame, attention
[B, max_length + 1, chars + 2] per greedy step. The batch is dynamic, and so is the width
of TPS models (which resample any width); models without TPS take the training width.
There are no per-image valid widths: the images of one batch share a width. The TPS
stage is plain PyTorch ops (the
grid as a fixed matrix times the predicted points, then ``grid_sample``), so neither
file needs seqclr_ext. ONNX: opset 18 by default (GridSample needs >= 16), needs
``pip install "seqclr_ext[export]"``.

Greedy decoding of the logits (charset in the metadata below):
- CTC: arg-max per frame, merge repeats, drop 0 (blank); symbol index = class - 1.
- Attention: arg-max per step up to the first 1 ([s]); symbol index = class - 2.

Metadata (``seqclr_ext.json`` in the TorchScript archive's extra files, ``seqclr_ext``
in the ONNX model's metadata_props): charset, decoder, class offset, input size.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_range
from .data import Charset
from .evaluate import load_checkpoint
from .models import Recognizer
from .models.tps import TPSRectifier, resize_valid
from .ops.tps_grid_sample import tps_grid_matrix

__all__ = ["FORMATS", "PlainTPS", "ExportedRecognizer", "metadata", "export", "main"]

FORMATS = ("torchscript", "onnx")
METADATA_KEY = "seqclr_ext"


class PlainTPS(nn.Module):
    """A TPSRectifier whose warp is standard ops: the grid is ``tps_grid_matrix`` (a buffer)
    times the predicted points, sampled by ``F.grid_sample`` (as DTRB's GridGenerator)."""

    def __init__(self, rectifier: TPSRectifier) -> None:
        super().__init__()
        self.output_size = rectifier.output_size
        self.localization = rectifier.localization
        self.register_buffer("grid_matrix", tps_grid_matrix(
            self.localization.num_fiducial, self.output_size, dtype=torch.float32))

    def forward(self, images, widths=None):
        # Always resampled (an identity up to rounding at the output size already): a graph
        # with a dynamic width cannot branch on it.
        images = resize_valid(images, widths, self.output_size)
        points = self.localization(images)
        grid = torch.matmul(self.grid_matrix, points).view(-1, *self.output_size, 2)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                             align_corners=True)


class ExportedRecognizer(nn.Module):
    """images [B, C, H, W] -> logits, with PlainTPS and a fixed number of attention steps."""

    def __init__(self, model: Recognizer) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        if self.model.transformation is not None:
            self.model.transformation = PlainTPS(self.model.transformation)

    def forward(self, images):
        return self.model(images, stop_early=False)["logits"]


def metadata(model: Recognizer, charset: Charset, ckpt: dict) -> dict:
    cfg = model.config
    height, width = cfg.image_size
    return {"charset": charset.symbols, "case_insensitive": charset.case_insensitive,
            "decoder": cfg.decoder, "class_offset": model.decoder.offset,
            "max_length": cfg.max_length, "channels": cfg.in_channels, "height": height,
            "width": width, "keep_ratio": bool(ckpt.get("config", {}).get("keep_ratio", False))}


def _example(model: Recognizer, batch: int = 2) -> torch.Tensor:
    height, width = model.config.image_size
    return torch.rand(batch, model.config.in_channels, height, width) * 2 - 1


def export(model: Recognizer, charset: Charset, ckpt: dict, fmt: str, out, *,
           opset: int = 18) -> Path:
    """Write ``model`` (on the CPU) as ``fmt`` to ``out``; returns the path."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportedRecognizer(model.cpu())
    example = _example(model)
    meta = json.dumps(metadata(model, charset, ckpt), ensure_ascii=False)
    if fmt == "torchscript":
        # The tracer warns of the models' input checks (Python bools): valid for any input
        # the checks let through.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(wrapper, example)
        torch.jit.save(traced, str(out), _extra_files={f"{METADATA_KEY}.json": meta})
        return out
    if opset < 16:
        raise ValueError(f"opset must be >= 16 (ONNX GridSample), got {opset}")
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as e:
        raise ImportError('ONNX export needs onnx and onnxscript: pip install '
                          '"seqclr_ext[export]"') from e
    dims = {0: torch.export.Dim("batch")}
    if model.transformation is not None:   # TPS resamples any width to its output size
        dims[3] = torch.export.Dim("width", min=8, max=4096)
    program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=opset,
                                verbose=False, input_names=["images"],
                                output_names=["logits"], dynamic_shapes=(dims,),
                                external_data=False)
    program.model.metadata_props[METADATA_KEY] = meta
    program.save(str(out))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m seqclr_ext.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="best.pt / last.pt of a training run, or builtin")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 16)")
    args = p.parse_args(argv)
    if args.format == "onnx":
        check_range(args.opset, "--opset", 16)
    try:
        model, charset, ckpt = load_checkpoint(args.checkpoint)
        out = export(model, charset, ckpt, args.format, args.out, opset=args.opset)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    height, width = model.config.image_size
    width = "W" if model.transformation is not None else width
    print(f"{out}: {args.format}, {model.config.decoder} decoder, {len(charset)} symbols, "
          f"input [B, {model.config.in_channels}, {height}, {width}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
