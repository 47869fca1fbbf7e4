"""SeqCLR Table 2 at small scale: semi-supervised fine-tuning against supervised training.

Renders the built-in scene-like data, pre-trains a SeqCLR encoder (window-to-instance,
R = H, BiLSTM head) on the training images without labels, unless --encoder gives one, then
for each label fraction (5 %, 10 % and 100 % by default; the same subset for both methods)
and decoder trains a recognizer from scratch (``supervised``) and one from the SeqCLR
encoder, end to end (``finetune``). Writes RUN_DIR/table2.md (word accuracy and ED1
accuracy on the test images) and RUN_DIR/table2.png (word accuracy vs label fraction).

    python python/table2_semi_supervised.py [--fractions 0.05 0.1 1] [--quick] ...

Finished runs are reused: run it again to complete an interrupted table. With the same
--run-dir as table1_decoder_eval.py, its SeqCLR window encoder is reused.
"""
from protocols import (DECODERS, built_in_data, figure, markdown_table, parse_args, percent,
                       pretrain, train_and_test, write_report)

METHODS = ["supervised", "SeqCLR fine-tuned"]


def _arguments(p) -> None:
    p.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 1.0],
                   help="fractions of the training labels")
    p.add_argument("--encoder", metavar="ENCODER_PT",
                   help="encoder.pt to fine-tune (default: pre-train SeqCLR window here)")


def main(argv=None) -> int:
    config = parse_args(__doc__, "runs/table2", _arguments, argv)
    bad = [f for f in config["fractions"] if not 0 < f <= 1]
    if bad:
        raise SystemExit(f"error: --fractions must lie in (0, 1], got {bad}")
    data = built_in_data(config)
    encoder = config["encoder"] or str(pretrain(config, data.train, "SeqCLR window"))
    commands = {"supervised": ["supervised"],
                "SeqCLR fine-tuned": ["finetune", "--encoder", encoder]}
    results = {(method, decoder, f): train_and_test(
                   config, data, f"{commands[method][0]}-{decoder}-{f:g}",
                   [*commands[method], "--decoder", decoder, "--label-fraction", str(f)])
               for decoder in config["decoders"] for method in METHODS
               for f in config["fractions"]}

    header = ["method", "decoder"]
    for f in config["fractions"]:
        header += [f"word acc. ({100 * f:g} % labels)", f"ED1 acc. ({100 * f:g} % labels)"]
    rows = [[method, DECODERS[decoder],
             *(percent(results[method, decoder, f][k]) for f in config["fractions"]
               for k in ("word_accuracy", "ed1_accuracy"))]
            for decoder in config["decoders"] for method in METHODS]
    table = markdown_table(header, rows)
    path = write_report(
        config, "table2", "Semi-supervised fine-tuning (SeqCLR Table 2, small scale)",
        f"Recognizers trained on a fraction of the training labels (a fixed random subset, the "
        f"same for every run), from scratch or from the SeqCLR encoder {encoder}; scores (%) on "
        f"{data.test}.\n\n{table}")

    with figure(path.with_suffix(".png")) as (ax,):
        for decoder in config["decoders"]:
            for method in METHODS:
                ax.plot([100 * f for f in config["fractions"]],
                        [100 * results[method, decoder, f]["word_accuracy"]
                         for f in config["fractions"]],
                        marker="o", linestyle="-" if method == "supervised" else "--",
                        label=f"{method}, {DECODERS[decoder]}")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_xticks([100 * f for f in config["fractions"]],
                      [f"{100 * f:g} %" for f in config["fractions"]])
        ax.set_xlabel("labelled training images")
        ax.set_ylabel("word accuracy (%)")
        ax.set_title("semi-supervised: word accuracy vs label fraction")
        ax.legend()
    print(f"{path}\n{path.with_suffix('.png')}\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
