"""The package's built-in recognizer (``--checkpoint builtin``): trains it and writes it.

Renders the built-in data of both styles (--num-train images of each style's training
fonts, validation images of the same fonts from another seed, test images of the held-out
fonts and words), trains one CTC recognizer on both styles' training images together with
every printable symbol (``supervised``, --eval-steps steps, SeqCLR's sequence-preserving
augmentations on --augment of each batch, for images the renderer does not make), scores
the final model on each style's test set and writes the model alone (weights, sizes,
charset, preprocessing; no optimizer state) to --out. RUN_DIR/builtin.md holds its scores.

    python python/builtin_model.py [--out seqclr_ext/models/builtin.pt] ...

The defaults are the settings of the shipped model (README "The built-in model").
"""
from pathlib import Path

from protocols import (DECODERS, built_in_data, markdown_table, parse_args, percent,
                       read_test_metrics, run_flags, run_once)

from seqclr_ext import checkpoints
from seqclr_ext.evaluate import load_checkpoint
from seqclr_ext.train.runner import STYLES

# What a recognizer checkpoint needs to read images (evaluate.load_checkpoint, collate_for).
MODEL_KEYS = ("model", "model_config", "charset", "config", "step")


def _arguments(p) -> None:
    # The shipped model's settings, on any device (the drivers' GPU defaults are larger).
    p.set_defaults(num_train=30_000, eval_steps=5_000, width=128, preset="small",
                   batch_size=32, decoders=["ctc"])
    p.add_argument("--augment", type=float, default=0.5,
                   help="fraction of each batch drawn through SeqCLR's augmentations")
    p.add_argument("--val-every", type=int, default=500, help="steps between validations")
    p.add_argument("--out", default="seqclr_ext/models/builtin.pt",
                   help="where the model is written")


def main(argv=None) -> int:
    config = parse_args(__doc__, "runs/builtin", _arguments, argv)
    if len(config["decoders"]) != 1:
        raise SystemExit(f"error: --decoders: the built-in model has one decoder, got "
                         f"{config['decoders']}")
    data = {style: built_in_data({**config, "style": style}) for style in STYLES}
    run_dir = Path(config["run_dir"], "supervised")
    argv = ["supervised", "--decoder", config["decoders"][0],
            "--iterations", str(config["eval_steps"]), "--augment", str(config["augment"]),
            *run_flags(config, validate=True), "--val-every", str(config["val_every"])]
    for part in ("train", "val", "test"):
        for style in STYLES:
            argv += [f"--{part}", str(getattr(data[style], part))]
    run_once(argv, run_dir, "test_metrics.json")

    ckpt = checkpoints.load(run_dir / "last.pt", "recognizer")
    out = Path(config["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save({k: ckpt[k] for k in MODEL_KEYS}, out, "recognizer")
    load_checkpoint(out)   # what --checkpoint builtin will do

    rows = []
    for style in STYLES:
        m = read_test_metrics(run_dir, data[style].test)
        rows.append([f"{style}-test", m["samples"], percent(m["word_accuracy"]),
                     percent(m["ed1_accuracy"]), percent(m["cer"])])
    table = markdown_table(["test set (held-out fonts)", "images", "word accuracy (%)",
                            "ED1 accuracy (%)", "CER (%)"], rows)
    size_mb = out.stat().st_size / 2 ** 20
    report = Path(config["run_dir"], "builtin.md")
    report.write_text(
        f"# The built-in recognizer\n\n{config['preset']} preset, {DECODERS[config['decoders'][0]]}"
        f" decoder, {ckpt['step']} steps of recipe {config['recipe']} on {config['num_train']} "
        f"images of each style, 32x{config['width']}, augment {config['augment']}; "
        f"{out} ({size_mb:.1f} MB). Run: {run_dir}.\n\n{table}\n")
    print(report.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
