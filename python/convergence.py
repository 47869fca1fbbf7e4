"""How fast a recognizer learns: supervised training on the built-in data with each
recipe and decoder, validation word accuracy against wall time.

For each --style, --recipes entry and --decoders entry, trains a recognizer on all the
labels of the style's training images (``supervised``) for --eval-steps steps, validating
every --val-every steps on the validation images (training fonts, another seed), then
scores the final model on the test images (fonts and words held out). Writes
RUN_DIR/convergence.md (final test scores, wall time, time to reach given validation
accuracies) and RUN_DIR/convergence.png (validation word accuracy against wall time, one
panel per style, the recipes side by side).

    python python/convergence.py [--styles scene hand] [--recipes fast paper] ...

Times are the runs' own wall-clock seconds (``val/elapsed_s`` in their metrics.csv,
validation included): run it on a quiet machine. Finished runs are reused.
"""
from pathlib import Path

from protocols import (DECODERS, built_in_data, figure, markdown_table, parse_args, percent,
                       read_test_metrics, run_flags, run_once)

from seqclr_ext.train.options import RECOGNIZER_RECIPES
from seqclr_ext.train.plot import read_metrics

THRESHOLDS = (0.5, 0.8, 0.9)


def _arguments(p) -> None:
    p.add_argument("--styles", nargs="+", choices=("scene", "hand"), default=["scene", "hand"])
    p.add_argument("--recipes", nargs="+", choices=tuple(RECOGNIZER_RECIPES),
                   default=list(RECOGNIZER_RECIPES))
    p.add_argument("--val-every", type=int, default=250, help="steps between validations")


def _minutes(seconds):
    return "–" if seconds is None else f"{seconds / 60:.1f}"


def main(argv=None) -> int:
    config = parse_args(__doc__, "runs/convergence", _arguments, argv)
    results, curves = {}, {}
    for style in config["styles"]:
        data = built_in_data({**config, "style": style})
        for recipe in config["recipes"]:
            for decoder in config["decoders"]:
                run_dir = Path(config["run_dir"], f"{style}-{recipe}-{decoder}")
                run_once(["supervised", "--train", str(data.train), "--val", str(data.val),
                          "--test", str(data.test), "--decoder", decoder,
                          "--iterations", str(config["eval_steps"]),
                          *run_flags({**config, "recipe": recipe}, validate=True),
                          "--val-every", str(config["val_every"])],
                         run_dir, "test_metrics.json")
                series = read_metrics(run_dir)
                points = [(elapsed, acc) for (_, _, elapsed), (_, _, acc) in
                          zip(series["val/elapsed_s"], series["val/word_accuracy"])]
                test = read_test_metrics(run_dir, data.test)
                curves[style, recipe, decoder] = points
                results[style, recipe, decoder] = (test, series["train/elapsed_s"][-1][2])

    header = ["style", "recipe", "decoder", "test word acc. (%)", "test CER (%)",
              "wall time (min)", *(f"min to {100 * t:g} % val" for t in THRESHOLDS)]
    rows = []
    for (style, recipe, decoder), (test, seconds) in results.items():
        reach = [next((e for e, acc in curves[style, recipe, decoder] if acc >= t), None)
                 for t in THRESHOLDS]
        rows.append([style, recipe, DECODERS[decoder], percent(test["word_accuracy"]),
                     percent(test["cer"]), _minutes(seconds), *map(_minutes, reach)])
    table = markdown_table(header, rows)
    path = Path(config["run_dir"], "convergence.md")
    path.write_text(
        f"# Convergence of supervised training (built-in data)\n\n"
        f"{config['num_train']} training, {config['num_val']} validation (training fonts) "
        f"and {config['num_test']} test images (held-out fonts and words) per style; preset "
        f"{config['preset']}, 32×{config['width']} images, batch "
        f"{config['batch_size'] or 'of the recipe'}, {config['eval_steps']} steps per run, "
        f"device {config['device']}. Runs in {config['run_dir']}.\n\n{table}\n")

    with figure(path.with_suffix(".png"), ncols=len(config["styles"])) as axes:
        for ax, style in zip(axes, config["styles"]):
            for (s, recipe, decoder), points in curves.items():
                if s == style:
                    ax.plot([e / 60 for e, _ in points], [100 * a for _, a in points],
                            marker="o", markersize=3,
                            linestyle="-" if recipe == "fast" else "--",
                            label=f"{recipe}, {DECODERS[decoder]}")
            ax.set(xlabel="wall time (minutes)", ylabel="validation word accuracy (%)",
                   ylim=(0, 100), title=f"{style}: supervised training")
            ax.legend()
    print(f"{path}\n{path.with_suffix('.png')}\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
