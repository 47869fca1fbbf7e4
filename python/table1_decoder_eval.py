"""SeqCLR Table 1 at small scale: decoder evaluation of pre-trained encoders.

Renders the built-in scene-like data, pre-trains the recognizer's encoder on the training
images (labels unused) with SimCLR (R = V), SimCLR contextual (R = H) and SeqCLR with the
all-, frame- and window-to-instance mappings, then freezes each encoder (and a randomly
initialized one) and trains a CTC and an attention decoder on the labels
(``decoder-eval``). Writes RUN_DIR/table1.md (word accuracy, ED1 accuracy and CER on the
test images, one row per encoder and decoder) and RUN_DIR/table1.png.

    python python/table1_decoder_eval.py [--num-train N] [--pretrain-steps S] [--quick] ...

Finished runs are reused: run it again to complete an interrupted table.
"""
from protocols import (PRETRAINING, built_in_data, figure, grouped_bars, parse_args, pretrain,
                       scores_table, slug, train_and_test, write_report)

ENCODERS = ["random init", *PRETRAINING]


def _arguments(p) -> None:
    p.add_argument("--encoders", nargs="+", choices=ENCODERS, default=ENCODERS,
                   help="the table's rows (default: all)")


def main(argv=None) -> int:
    config = parse_args(__doc__, "runs/table1", _arguments, argv)
    encoders = [name for name in ENCODERS if name in config["encoders"]]
    data = built_in_data(config)
    weights = {name: "random" if name == "random init"
               else str(pretrain(config, data.train, name)) for name in encoders}
    results = {(name, decoder): train_and_test(
                   config, data, f"decoder-eval-{slug(name)}-{decoder}",
                   ["decoder-eval", "--encoder", weights[name], "--decoder", decoder])
               for decoder in config["decoders"] for name in encoders}

    table = scores_table(results, "decoder")
    path = write_report(config, "table1", "Decoder evaluation (SeqCLR Table 1, small scale)",
                        "Frozen pre-trained encoder, decoder trained on all labels; scores on "
                        f"{data.test}.\n\n{table}")

    with figure(path.with_suffix(".png"), ncols=2) as axes:
        for ax, (metric, label) in zip(axes, (("word_accuracy", "word accuracy (%)"),
                                              ("ed1_accuracy", "ED1 accuracy (%)"))):
            grouped_bars(ax, results, encoders, config["decoders"], metric)
            ax.set_ylabel(label)
            ax.legend(title="decoder")
        axes[0].set_title("decoder evaluation (frozen encoder)")
    print(f"{path}\n{path.with_suffix('.png')}\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
