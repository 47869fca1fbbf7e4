"""SimAN's probe evaluation at small scale: random init vs SimAN vs SeqCLR encoders.

Renders the built-in scene-like data and pre-trains the recognizer's ResNet on the training
images without labels with SimAN (generative, ``pretrain --method siman``) and with SeqCLR
(window-to-instance on the visual features, R = V), then runs the same probe on each
frozen ResNet and on a randomly initialized one: a BiLSTM and a CTC or attention decoder
trained on the labels (``decoder-eval``). Every run is without the TPS stage, so that the
three probes see the ResNet's features alone. Writes RUN_DIR/siman_probe.md (word accuracy,
ED1 accuracy, CER on the test images) and RUN_DIR/siman_probe.png.

    python python/siman_probe.py [--num-train N] [--pretrain-steps S] [--quick] ...

Finished runs are reused: run it again to complete an interrupted table.
"""
from protocols import (built_in_data, figure, grouped_bars, parse_args, pretrain, scores_table,
                       train_and_test, write_report)

NO_TPS = "--no-tps"
# The encoders under the probe, each as the pretrain method and its flags.
PRETRAINED = {"SimAN": ("SimAN", ()),
              "SeqCLR (R = V)": ("SeqCLR window", ("--representation", "V"))}
# Encoder -> the name of its probe runs' folders (probe-<name>-<decoder>).
ENCODERS = {"random init": "random", "SimAN": "siman", "SeqCLR (R = V)": "seqclr"}


def main(argv=None) -> int:
    config = parse_args(__doc__, "runs/siman_probe", argv=argv)
    data = built_in_data(config)
    weights = {"random init": ["random", "--representation", "V"],
               **{name: [str(pretrain(config, data.train, method, NO_TPS, *flags))]
                  for name, (method, flags) in PRETRAINED.items()}}
    results = {(name, decoder): train_and_test(
                   config, data, f"probe-{ENCODERS[name]}-{decoder}",
                   ["decoder-eval", NO_TPS, "--encoder", *weights[name], "--decoder", decoder])
               for decoder in config["decoders"] for name in ENCODERS}

    table = scores_table(results, "probe")
    path = write_report(config, "siman_probe", "Probe evaluation (SimAN Table 1, small scale)",
                        "Frozen ResNet (no TPS stage); BiLSTM + decoder trained on all labels; "
                        f"scores on {data.test}.\n\n{table}")

    with figure(path.with_suffix(".png")) as (ax,):
        grouped_bars(ax, results, list(ENCODERS), config["decoders"], "word_accuracy",
                     legend="{} probe")
        ax.set_ylabel("word accuracy (%)")
        ax.set_title("probe evaluation (frozen ResNet)")
        ax.legend()
    print(f"{path}\n{path.with_suffix('.png')}\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
