"""Evaluate a recognizer checkpoint on LMDB datasets.

    python -m seqclr_ext.evaluate --checkpoint runs/x/best.pt --data IIIT5K_lmdb [--data ...]
        [--alphanumeric] [--json metrics.json] [--predictions preds.tsv]

Prints word accuracy, accuracy up to one edit (ED1), CER, WER and 1 − NED per dataset.
Every sample of the LMDB is scored (no charset / length filtering): labels the model
cannot spell count as errors, and so do unreadable images (as empty predictions; their
number is reported). With --alphanumeric, labels left empty by its normalization (pure
punctuation) cannot be scored; their number is reported.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from . import checkpoints
from .checks import check_device, check_lmdb, check_range
from .data import Charset, LmdbDataset, RecognitionCollate
from .metrics import evaluate as score
from .models import Recognizer, RecognizerConfig

__all__ = ["BUILTIN_CHECKPOINT", "resolve_checkpoint", "load_checkpoint", "predict",
           "evaluate_dataset", "main"]

METRICS = ("word_accuracy", "ed1_accuracy", "cer", "wer", "one_minus_ned")
BUILTIN_CHECKPOINT = Path(__file__).parent / "models" / "builtin.pt"


def resolve_checkpoint(path):
    """``"builtin"`` -> the package's built-in recognizer file; any other path unchanged."""
    if str(path) != "builtin":
        return path
    if not BUILTIN_CHECKPOINT.is_file():
        raise FileNotFoundError(
            f"checkpoint 'builtin': the built-in model's file is missing ({BUILTIN_CHECKPOINT}; "
            f"reinstall seqclr_ext, or see python/builtin_model.py to train it); or pass a "
            f"checkpoint of your own (best.pt / last.pt of a training run)")
    return BUILTIN_CHECKPOINT


def load_checkpoint(path, device="cpu") -> tuple[Recognizer, Charset, dict]:
    """A training checkpoint (or ``"builtin"``) -> (recognizer in eval mode on ``device``,
    charset, checkpoint)."""
    path = resolve_checkpoint(path)
    ckpt = checkpoints.load(path, "recognizer")
    model = Recognizer(RecognizerConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    charset = Charset(ckpt["charset"]["symbols"],
                      case_insensitive=ckpt["charset"]["case_insensitive"])
    return model.to(device).eval(), charset, ckpt


def collate_for(ckpt: dict) -> RecognitionCollate:
    """The training run's image preprocessing, without label encoding."""
    cfg = ckpt.get("config", {})
    h, w = ckpt["model_config"].get("image_size", (32, 100))
    return RecognitionCollate(None, height=h, width=w, keep_ratio=cfg.get("keep_ratio", False))


@torch.no_grad()
def predict(model: Recognizer, charset: Charset, loader, device) -> tuple[list[str], list[str]]:
    """Greedy predictions and the (charset-normalized) labels over a loader's batches; a
    sample without an image (unreadable) is predicted as the empty string."""
    was_training = model.training
    model.eval()
    preds, labels = [], []
    for batch in loader:
        found = iter(())
        if len(batch.images):
            inputs = batch.to(device)
            found = iter(model.predict(inputs.images, inputs.widths))
        preds += [charset.decode(next(found)) if ok else "" for ok in batch.readable]
        labels += [charset.normalize(lab) for lab in batch.labels]
    model.train(was_training)
    return preds, labels


def evaluate_dataset(model, charset, path, collate, *, device="cpu", batch_size=128,
                     workers=0, alphanumeric=False, mode="L"):
    """-> (metrics dict of seqclr_ext.metrics.evaluate + ``unreadable``, the number of
    samples scored as empty predictions for want of a readable image; predictions, labels)."""
    dataset = LmdbDataset(path, None, max_length=None, mode=mode, skip_unreadable=False)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    preds, labels = predict(model, charset, loader, device)
    metrics = score(preds, labels, alphanumeric=alphanumeric)
    return {**metrics, "unreadable": dataset.stats.unreadable}, preds, labels


def format_table(results: dict[str, dict[str, float]]) -> str:
    head = f"{'dataset':<30} {'samples':>8} " + " ".join(f"{m:>13}" for m in METRICS)
    rows = [head, "-" * len(head)]
    for name, m in results.items():
        rows.append(f"{name[-30:]:<30} {m['samples']:>8d} "
                    + " ".join(f"{m[k]:>13.4f}" for k in METRICS))
    rows += [f"{name}: unreadable: {m['unreadable']} (scored as wrong, empty predictions)"
             for name, m in results.items() if m.get("unreadable")]
    rows += [f"{name}: empty labels: {m['empty_labels']} (nothing left under the "
             "alphanumeric normalization; not scored)"
             for name, m in results.items() if m.get("empty_labels")]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m seqclr_ext.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="best.pt / last.pt of a training run, or builtin")
    p.add_argument("--data", required=True, action="append", help="LMDB (repeatable)")
    p.add_argument("--alphanumeric", action="store_true",
                   help="case-insensitive [0-9a-z] scoring (scene-text protocol)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the metrics here as JSON")
    p.add_argument("--predictions", help="write 'dataset<TAB>label<TAB>prediction' lines here")
    args = p.parse_args(argv)
    check_range(args.batch_size, "--batch-size", 1)
    check_range(args.workers, "--workers", 0)
    for path in args.data:
        check_lmdb(path, "--data")
    check_device(args.device)
    try:
        model, charset, ckpt = load_checkpoint(args.checkpoint, args.device)
    except (checkpoints.CheckpointError, FileNotFoundError) as e:  # e names the file
        raise SystemExit(f"error: --checkpoint {e}") from None
    collate = collate_for(ckpt)
    mode = "RGB" if ckpt["model_config"].get("in_channels", 1) == 3 else "L"
    results, lines = {}, []
    for path in args.data:
        try:
            metrics, preds, labels = evaluate_dataset(
                model, charset, path, collate, device=args.device, batch_size=args.batch_size,
                workers=args.workers, alphanumeric=args.alphanumeric, mode=mode)
        except ValueError as e:   # the LMDB's samples (none to score, ...), not a bug here
            raise SystemExit(f"error: --data {path}: {e}") from None
        results[path] = metrics
        lines += [f"{path}\t{g}\t{q}" for q, g in zip(preds, labels)]
    print(f"checkpoint {args.checkpoint} (step {ckpt.get('step')}), "
          f"{'alphanumeric' if args.alphanumeric else 'exact'} scoring")
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"checkpoint": str(args.checkpoint), "step": ckpt.get("step"),
             "alphanumeric": args.alphanumeric, "results": results}, indent=2))
    if args.predictions:
        Path(args.predictions).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
