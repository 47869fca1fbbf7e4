"""``plot RUN_DIR``: the training curves of a run — training loss and, when the run
validated, validation word accuracy against the step; for contrastive pre-training the
loss's chance level and the diagnostics of ``methods.contrastive.diagnostics`` — drawn from
RUN_DIR/metrics.csv into RUN_DIR/curves.png. Every training run draws it when it stops."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

NAME = "plot"
HELP = "draw a run's training loss and validation accuracy (RUN_DIR/curves.png)"
REQUIRED = ("run_dir",)

__all__ = ["NAME", "HELP", "REQUIRED", "add_arguments", "run", "read_metrics", "plot_run"]


def add_arguments(p) -> None:
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a training run's folder")
    p.add_argument("--out", help="the PNG to write (default: RUN_DIR/curves.png)")


def read_metrics(run_dir: str | Path) -> dict[str, list[tuple[int, float, float]]]:
    """RUN_DIR/metrics.csv -> {tag: [(step, wall time, value), ...]} in file order."""
    series = defaultdict(list)
    with open(Path(run_dir, "metrics.csv"), newline="") as f:
        for row in csv.DictReader(f):
            series[row["tag"]].append((int(row["step"]), float(row["time"]), float(row["value"])))
    return dict(series)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draws the run's curves; returns the PNG's path."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    series = read_metrics(run_dir)
    out = Path(out) if out else Path(run_dir, "curves.png")
    val = {tag: points for tag, points in series.items() if tag.startswith("val/")}
    contrastive = "train/rep_rank" in series
    panels = 1 + bool(val) + contrastive
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.0), squeeze=False)
    try:
        loss = series.get("train/loss", [])
        ax = axes[0][0]
        ax.plot([s for s, _, _ in loss], [v for _, _, v in loss], label="loss")
        if contrastive:
            chance = series["train/chance_loss"]
            ax.plot([s for s, _, _ in chance], [v for _, _, v in chance], "--",
                    label="chance: log(2M - 1)")
            ax.legend()
        ax.set(xlabel="step", ylabel="training loss", title=f"{Path(run_dir).name}: loss")
        if loss and min(v for _, _, v in loss) > 0:
            ax.set_yscale("log")
        if contrastive:
            ax = axes[0][-1]
            for tag in ("retrieval", "instance_std", "rep_within"):
                points = series.get(f"train/{tag}", [])
                ax.plot([s for s, _, _ in points], [v for _, _, v in points], label=tag)
            ax.set(xlabel="step", ylabel="share / std", ylim=(0, 1.05),
                   title=f"{Path(run_dir).name}: diagnostics")
            ax.legend(loc="upper left")
            rank = ax.twinx()
            points = series["train/rep_rank"]
            rank.plot([s for s, _, _ in points], [v for _, _, v in points], "k:",
                      label="rep_rank")
            rank.set(ylabel="effective rank of R", ylim=(0, None))
            rank.legend(loc="upper right")
        if val:
            ax = axes[0][1]
            for tag in ("val/word_accuracy", "val/ed1_accuracy"):
                if tag in val:
                    ax.plot([s for s, _, _ in val[tag]], [100 * v for _, _, v in val[tag]],
                            marker="o", label=tag.removeprefix("val/"))
            ax.set(xlabel="step", ylabel="validation accuracy (%)", ylim=(0, 100),
                   title=f"{Path(run_dir).name}: validation")
            ax.legend()
        fig.tight_layout()
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
    return out


def run(config: dict) -> int:
    if not Path(config["run_dir"], "metrics.csv").is_file():
        raise SystemExit(f"error: {config['run_dir']}: no metrics.csv (not a training run)")
    print(plot_run(config["run_dir"], config["out"]))
    return 0
