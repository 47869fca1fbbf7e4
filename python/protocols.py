"""What the experiment drivers of this folder share: their options, the built-in data,
runs of ``python -m seqclr_ext.train`` subcommands (in this process, each skipped when its
result exists and continued when interrupted), the runs' test scores, the markdown report
and the figure.

Every driver takes the options of ``python -m seqclr_ext.train default`` (the built-in data
and its --style, --preset, --recipe, steps, device). Every run gets its own folder under --run-dir. Running a driver again with the same
options completes what is missing and rewrites the report; a run folder holding a run of
other options (sizes, steps, preset, recipe) is refused, so choose another --run-dir after
changing them. The sizes default to the ``default`` subcommand's: small preset on CPU, the
paper's on a GPU.
"""
import argparse
from contextlib import contextmanager
from pathlib import Path

from seqclr_ext.train import runner
from seqclr_ext.train.runner import built_in_data, markdown_table, read_test_metrics
from seqclr_ext.train.runner import run_flags, run_once

__all__ = ["DECODERS", "PRETRAINING", "METHODS", "slug", "parse_args", "built_in_data",
           "pretrain", "run_flags", "run_once", "read_test_metrics", "train_and_test",
           "percent", "markdown_table", "scores_table", "write_report", "figure",
           "grouped_bars"]

DECODERS = {"ctc": "CTC", "attention": "attention"}

# --quick: a smoke run of the whole protocol, about a minute on two CPU cores.
QUICK = dict(num_train=200, num_val=20, num_test=40, pretrain_steps=5, eval_steps=5,
             batch_size=8, workers=0, preset="small")

# Table 1's pre-training methods (SeqCLR §5): SimCLR contrasts the whole visual feature map
# (R = V), SimCLR contextual the BiLSTM's (R = H); SeqCLR uses R = H, a BiLSTM projection
# head and one of the three instance mappings.
PRETRAINING = {
    "SimCLR": ["--method", "simclr", "--representation", "V"],
    "SimCLR contextual": ["--method", "simclr", "--representation", "H"],
    "SeqCLR all": ["--method", "seqclr", "--mapping", "all"],
    "SeqCLR frame": ["--method", "seqclr", "--mapping", "frame"],
    "SeqCLR window": ["--method", "seqclr", "--mapping", "window"],
}
# Every pre-training method a driver can ask ``pretrain`` for: Table 1's and SimAN.
METHODS = {**PRETRAINING, "SimAN": ["--method", "siman"]}


def slug(name: str) -> str:
    return name.lower().replace(" ", "-")


def parse_args(doc: str, run_dir: str, add_arguments=None, argv=None) -> dict:
    """The driver's options: the ``default`` subcommand's (data, sizes, preset, device),
    --decoders, --quick, and the driver's own ones (``add_arguments(parser)``)."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    runner.add_experiment_arguments(p)
    p.set_defaults(run_dir=run_dir)
    p.add_argument("--decoders", nargs="+", choices=DECODERS, default=list(DECODERS),
                   help="decoders of the recognizer runs")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 200 training / 40 test images, 5 steps, batch 8, small "
                        "preset (unless given), in RUN_DIR-quick")
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    if args.quick:  # the quick sizes replace the defaults, not options given
        p.set_defaults(**QUICK, run_dir=f"{run_dir}-quick")
        args = p.parse_args(argv)
    return vars(args)


def pretrain(config: dict, train: Path, method: str, *flags: str) -> Path:
    """encoder.pt of a ``pretrain`` run of one of METHODS on ``train`` (with more ``flags``)."""
    return run_once(["pretrain", *METHODS[method], *flags, "--train", str(train),
                     "--iterations", str(config["pretrain_steps"]), *run_flags(config)],
                    Path(config["run_dir"], f"pretrain-{slug(method)}"), "encoder.pt")


def train_and_test(config: dict, data, folder: str, argv: list[str]) -> dict[str, float]:
    """Scores on the test set of a recognizer run (supervised, decoder-eval or finetune:
    ``argv`` without data and sizes) trained for --eval-steps on the training set of
    ``data`` (``built_in_data``)."""
    run_dir = Path(config["run_dir"], folder)
    run_once([*argv, "--train", str(data.train), "--test", str(data.test),
              "--iterations", str(config["eval_steps"]), *run_flags(config)],
             run_dir, "test_metrics.json")
    return read_test_metrics(run_dir, data.test)


def percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}"


def scores_table(results: dict, decoder_label: str) -> str:
    """Markdown rows (encoder, decoder, word accuracy, ED1 accuracy, CER in %) of
    ``results[(encoder, decoder)]`` (test metrics), in the dict's order."""
    rows = [[name, DECODERS[decoder], percent(m["word_accuracy"]), percent(m["ed1_accuracy"]),
             percent(m["cer"])] for (name, decoder), m in results.items()]
    return markdown_table(["encoder", decoder_label, "word accuracy (%)", "ED1 accuracy (%)",
                           "CER (%)"], rows)


def write_report(config: dict, name: str, title: str, body: str) -> Path:
    """RUN_DIR/<name>.md: the title, the experiment's settings, then ``body``."""
    path = Path(config["run_dir"], f"{name}.md")
    batch = config["batch_size"] or "the recipe's"
    settings = (f"Built-in {config['style']} data ({config['data_dir']}): {config['num_train']} "
                f"training and {config['num_test']} test images (held-out fonts). Preset "
                f"{config['preset']}, recipe {config['recipe']}, batch {batch}, "
                f"{config['pretrain_steps']} pre-training steps, {config['eval_steps']} steps "
                f"per recognizer run, device {config['device']}. Runs in {config['run_dir']}.")
    path.write_text(f"# {title}\n\n{settings}\n\n{body}\n")
    return path


@contextmanager
def figure(path: Path, ncols: int = 1, size: tuple[float, float] = (6.4, 4.0)):
    """Yields ``ncols`` side-by-side matplotlib axes, then saves the figure to ``path``."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]), squeeze=False)
    try:
        yield list(axes[0])
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def grouped_bars(ax, results: dict, names: list[str], decoders: list[str], metric: str,
                 legend: str = "{}") -> None:
    """One group of bars per encoder name, one bar per decoder: 100 · ``metric`` of
    ``results[(name, decoder)]``, labelled with their values."""
    import numpy as np
    x = np.arange(len(names))
    width = 0.8 / len(decoders)
    for i, decoder in enumerate(decoders):
        bars = ax.bar(x + (i - (len(decoders) - 1) / 2) * width,
                      [100 * results[name, decoder][metric] for name in names], width,
                      label=legend.format(DECODERS[decoder]))
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, names, rotation=30 if len(names) > 3 else 0,
                  ha="right" if len(names) > 3 else "center")
    ax.set_ylim(bottom=0)
