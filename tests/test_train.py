"""seqclr_ext.train / seqclr_ext.evaluate: the supervised CLI end to end on a tiny LMDB,
exact resume, label subsets, atomic checkpoints, divergence and SIGTERM stops."""
import itertools
import json
import math
import os
import signal
import subprocess
import sys

import lmdb
import pytest
import torch
from PIL import Image

from seqclr_ext import checkpoints
from seqclr_ext import evaluate as evaluate_cli
from seqclr_ext.data import (Charset, RecognitionCollate, ResumableBatchSampler, label_subset,
                             load_or_make_subset, write_lmdb)
from seqclr_ext.models import CTCDecoder
from seqclr_ext.train import rng_state, set_rng_state
from seqclr_ext.train.cli import main
from seqclr_ext.train.commands import parse
from seqclr_ext.train.options import RECOGNIZER_RECIPES

WORDS = ["cat", "dog", "Hello", "42", "tree", "ok", "moon", "Sun!"]
FAST = ["--device", "cpu", "--preset", "small", "--no-tps", "--batch-size", "4", "--workers", "0",
        "--no-progress", "--log-every", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, word_lmdb):
    root = tmp_path_factory.mktemp("lmdb")
    return word_lmdb(root / "train", WORDS * 2), word_lmdb(root / "val", WORDS[:4])


def _train(run_dir, train, *extra, iterations=6):
    return main(["supervised", "--train", train, "--run-dir", str(run_dir),
                 "--iterations", str(iterations), *FAST, *extra])


def test_cli_end_to_end(data, tmp_path, subprocess_env):
    train, val = data
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "seqclr_ext.train", "supervised", "--train", train,
           "--val", val, "--run-dir", str(run), "--decoder", "ctc", "--iterations", "6",
           "--val-every", "3", *FAST, "--workers", "1"]
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()
    assert (run / "config.yaml").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,time,tag,value"
    tags = {r.split(",")[2] for r in rows[1:]}
    assert {"train/loss", "train/lr", "val/word_accuracy", "val/cer"} <= tags
    ckpt = checkpoints.load(run / "last.pt", checkpoints.KINDS)
    assert ckpt["step"] == 6 and ckpt["config"]["decoder"] == "ctc"
    assert set(ckpt["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert ckpt["data"] == {"consumed_batches": 6} and ckpt["schedulers"]["main"]

    out = tmp_path / "metrics.json"
    proc = subprocess.run([sys.executable, "-m", "seqclr_ext.evaluate", "--checkpoint",
                           str(run / "best.pt"), "--data", val, "--json", str(out)],
                          env=subprocess_env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "word_accuracy" in proc.stdout and "one_minus_ned" in proc.stdout
    result = json.loads(out.read_text())["results"][val]
    assert result["samples"] == 4 and 0 <= result["word_accuracy"] <= 1


def test_attention_decoder_and_keep_ratio(data, tmp_path, capsys):
    train, val = data
    assert _train(tmp_path / "run", train, "--decoder", "attention", "--keep-ratio",
                  "--val", val, "--val-every", "2", iterations=2) == 0
    preds = tmp_path / "preds.tsv"
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", val,
                              "--alphanumeric", "--predictions", str(preds)]) == 0
    assert "alphanumeric scoring" in capsys.readouterr().out
    assert len(preds.read_text().splitlines()) == 4


def test_evaluation_scores_every_sample(data, tmp_path, capsys):
    """An unreadable test image is one wrong (empty) prediction of its own label, not a
    second scoring of the next sample."""
    train, _ = data
    assert _train(tmp_path / "run", train, "--decoder", "ctc", iterations=1) == 0
    word = Image.new("L", (40, 20), 255)
    write_lmdb(tmp_path / "test", [(word, "cat"), (b"not an image", "dog"), (word, "Hello")])
    preds = tmp_path / "preds.tsv"
    out = tmp_path / "m.json"
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--data",
                              str(tmp_path / "test"), "--predictions", str(preds),
                              "--json", str(out)]) == 0
    assert f"{tmp_path / 'test'}: unreadable: 1" in capsys.readouterr().out
    rows = [line.split("\t") for line in preds.read_text().splitlines()]
    assert [r[1] for r in rows] == ["cat", "dog", "Hello"] and rows[1][2] == ""
    result = json.loads(out.read_text())["results"][str(tmp_path / "test")]
    assert result["samples"] == 3 and result["unreadable"] == 1


def test_labels_empty_under_alphanumeric_are_reported_not_scored(data, tmp_path, capsys):
    """A punctuation-only label has no words under --alphanumeric: scoring it would add
    only insertions (the WER 1.0030 of issue 15); it is counted and left out."""
    train, _ = data
    assert _train(tmp_path / "run", train, "--decoder", "ctc", iterations=1) == 0
    word = Image.new("L", (40, 20), 255)
    write_lmdb(tmp_path / "test", [(word, "cat"), (word, "!!"), (word, "Sun!")])
    out = tmp_path / "m.json"
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--data",
                              str(tmp_path / "test"), "--alphanumeric", "--json", str(out)]) == 0
    assert (f"{tmp_path / 'test'}: empty labels: 1 (nothing left under the alphanumeric"
            in capsys.readouterr().out)
    result = json.loads(out.read_text())["results"][str(tmp_path / "test")]
    assert result["samples"] == 2 and result["empty_labels"] == 1 and result["wer"] <= 1


@pytest.mark.parametrize("optimizer,schedule,augment", [
    ("adadelta", "step", "0"), ("adam", "cosine", "0"), ("adamw", "onecycle", "0.5")])
def test_resume_is_exact(data, tmp_path, capsys, optimizer, schedule, augment):
    train, _ = data
    recipe = ["--optimizer", optimizer, "--schedule", schedule, "--warmup", "0.3",
              "--lr-milestones", "0.5", "--augment", augment]
    assert _train(tmp_path / "straight", train, *recipe) == 0
    assert _train(tmp_path / "split", train, *recipe, "--stop-after", "3") == 0
    assert checkpoints.load(tmp_path / "split" / "last.pt", checkpoints.KINDS)["step"] == 3
    # Everything else comes from the run's saved config.
    assert main(["supervised", "--run-dir", str(tmp_path / "split"), "--resume"]) == 0
    assert "resumed" in capsys.readouterr().err
    a = checkpoints.load(tmp_path / "straight" / "last.pt", checkpoints.KINDS)
    b = checkpoints.load(tmp_path / "split" / "last.pt", checkpoints.KINDS)
    assert a["step"] == b["step"] == 6
    assert not (tmp_path / "straight" / "best.pt").exists()   # best.pt needs --val (README)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for k, state in a["optimizers"]["main"]["state"].items():
        for key, value in state.items():
            other = b["optimizers"]["main"]["state"][k][key]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other))
    steps = [r.split(",")[0] for r in (tmp_path / "split" / "metrics.csv").read_text().splitlines()
             if ",train/loss," in r]
    assert steps == [str(i) for i in range(1, 7)]  # no step logged twice
    # A finished run refuses to be overwritten without --resume.
    assert _train(tmp_path / "straight", train) == 2


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--iterations", "-1"], "--iterations must be at least 1, got -1"),
    (["--train", "nope.lmdb"], "--train nope.lmdb: no LMDB there"),
    (["--device", "cuda:99"], "--device cuda:99: (no CUDA GPU is visible|only)"),
    (["--device", "nonsense"], "--device nonsense: not a torch device"),
    (["--augment", "2"], r"--augment must lie in \[0, 1\], got 2.0"),
    (["--decoder", "attention", "--ctc-weight", "1"],
     r"recognizer options: ctc_weight must lie in \[0, 1\), got 1.0"),
    (["--label-fraction", "0"], r"--label-fraction must be in \(0, 1\], got 0.0"),
    (["--label-fraction", "2"], r"--label-fraction must be in \(0, 1\], got 2.0"),
    (["--lr", "-1"], "--lr must be greater than 0, got -1.0"),
    (["--warmup", "1"], r"--warmup must be in \[0, 1\), got 1.0"),
    (["--lr-milestones", "0.5", "1.5"], r"--lr-milestones must be in \[0, 1\], got 1.5"),
    (["--height", "31"], "--height must be at least 32, got 31"),   # the ResNet's least
    (["--channels", "17"], "--channels must be a positive multiple of 16, got 17"),
    (["--blocks", "1", "0", "1", "1"], "--blocks must be at least 1, got 0"),
    (["--label-subset", "nope.json"], "--label-subset nope.json: no such file"),
    (["--init", "nope.pt"], "--init nope.pt: no such file"),
    (["--config", "nope.yaml"], "--config nope.yaml: no such file"),
])
def test_bad_options_give_one_error_line_and_no_run_folder(data, tmp_path, flags, message):
    train, _ = data
    run = tmp_path / "run"
    with pytest.raises(SystemExit, match=f"^error: {message}"):
        main(["supervised", "--train", train, "--run-dir", str(run), *FAST, *flags])
    assert not run.exists()
    with pytest.raises(SystemExit, match="^error: --data nope: no LMDB"):
        evaluate_cli.main(["--checkpoint", "x.pt", "--data", "nope"])


@pytest.mark.parametrize("command, flags, message", [
    ("pretrain", ["--temperature", "0"], "--temperature must be greater than 0, got 0.0"),
    ("pretrain", ["--method", "simclr", "--keep-ratio"],
     "--method simclr needs fixed-size images"),
    ("pretrain", ["--method", "siman", "--siman-kernel", "4"],
     "--siman-kernel must be odd and at least 1, got 4"),
    ("pretrain", ["--method", "siman", "--sample-every", "-1"],
     "--sample-every must be at least 0, got -1"),
    ("decoder-eval", ["--encoder", __file__], f"--encoder {__file__}: not a seqclr_ext checkpoint"),
])
def test_bad_options_of_other_subcommands(data, tmp_path, command, flags, message):
    run = tmp_path / "run"
    with pytest.raises(SystemExit, match=f"^error: {message}"):
        main([command, "--train", data[0], "--run-dir", str(run), "--iterations", "2", *FAST,
              *flags])
    assert not run.exists()
    with pytest.raises(SystemExit, match="^error: --num-train must be at least 1, got 0"):
        main(["default", "--num-train", "0", "--run-dir", str(run), "--data-dir", str(run)])


@pytest.mark.parametrize("count", [b"abc", b"-3"])
def test_malformed_sample_count_is_one_error_line(tmp_path, word_lmdb, count):
    db = word_lmdb(tmp_path / "db", WORDS)
    with lmdb.open(db) as env, env.begin(write=True) as txn:
        txn.put(b"num-samples", count)
    with pytest.raises(SystemExit, match=rf"^error: --train {db}: 'num-samples' is "
                                         rf"{count!r}, not a sample count"):
        main(["supervised", "--train", db, "--run-dir", str(tmp_path / "run"), *FAST])
    assert not (tmp_path / "run").exists()


def test_a_run_failing_before_its_first_checkpoint_leaves_no_folder(data, tmp_path,
                                                                     monkeypatch):
    """config.yaml, metrics.csv and tensorboard/ are written before the first step; a run
    that dies there is removed, one that saved a checkpoint is kept, and so is a folder
    the run did not create."""
    original, calls = CTCDecoder.loss, []

    def broken(self, *args):
        calls.append(1)
        if len(calls) >= fail_at:
            raise RuntimeError("a bug")
        return original(self, *args)

    monkeypatch.setattr(CTCDecoder, "loss", broken)
    train, _ = data
    fail_at = 1
    with pytest.raises(RuntimeError, match="a bug"):
        _train(tmp_path / "run", train, "--decoder", "ctc", "--label-fraction", "0.5")
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(RuntimeError):
        _train(tmp_path / "mine", train, "--decoder", "ctc")
    assert (tmp_path / "mine").is_dir()
    calls.clear()
    fail_at = 3
    with pytest.raises(RuntimeError):
        _train(tmp_path / "saved", train, "--decoder", "ctc", "--save-every", "1")
    assert checkpoints.load(tmp_path / "saved" / "last.pt", "recognizer")["step"] == 2


def test_metrics_csv_with_a_blank_line_resumes(tmp_path):
    from seqclr_ext.train.trainer import _Metrics
    (tmp_path / "metrics.csv").write_text("step,time,tag,value\n1,0.0,train/loss,2.0\n"
                                          "3,0.0,train/loss,1.0\n\n")
    _Metrics(tmp_path, 2, tensorboard=False).close()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "step,time,tag,value", "1,0.0,train/loss,2.0"]


def test_resume_refuses_options_that_change_the_run(data, tmp_path, capsys):
    train, _ = data
    run = tmp_path / "run"
    assert _train(run, train, "--decoder", "ctc", "--stop-after", "2") == 0
    config = (run / "config.yaml").read_text()
    with pytest.raises(SystemExit, match=r"--batch-size: 4 in the run, 8 given; "
                                         r"--seed: 0 in the run, 3 given \(start a new"):
        main(["supervised", "--run-dir", str(run), "--resume", "--batch-size", "8",
              "--seed", "3", "--workers", "0"])
    assert (run / "config.yaml").read_text() == config   # not rewritten
    # Options of how it runs may change.
    assert main(["supervised", "--run-dir", str(run), "--resume", "--workers", "0",
                 "--log-every", "2", "--no-tensorboard", "--threads", "1"]) == 0
    assert checkpoints.load(run / "last.pt", "recognizer")["step"] == 6


@pytest.mark.parametrize("command", ["supervised", "pretrain"])
def test_bf16_autocast_step_is_finite(data, tmp_path, command):
    train, _ = data
    run = tmp_path / "run"
    assert main([command, "--train", train, "--run-dir", str(run), "--iterations", "1", *FAST,
                 "--tps", "--amp", "bf16", "--no-tensorboard"]) == 0   # TPS: tps_grid_sample
    rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    losses = [float(value) for _, _, tag, value in rows if tag == "train/loss"]
    assert len(losses) == 1 and math.isfinite(losses[0])
    assert checkpoints.load(run / "last.pt", checkpoints.KINDS)["config"]["amp"] == "bf16"


def test_rng_state_round_trip():
    state = rng_state()
    x = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    set_rng_state(state)
    y = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(x[0], y[0]) and x[1:] == y[1:]


def test_sampler_resumes_mid_stream():
    full = ResumableBatchSampler(10, 4, seed=1)
    stream = list(itertools.islice(iter(full), 7))          # crosses epoch boundaries
    later = list(itertools.islice(iter(ResumableBatchSampler(10, 4, seed=1, start=12)), 4))
    assert later == stream[3:]
    assert sorted(sum(stream[:5], [])[:10]) == list(range(10))  # epoch 0 is a permutation


def test_label_fraction_subset(data, tmp_path):
    assert label_subset(100, 0.1, seed=3) == label_subset(100, 0.1, seed=3)
    assert label_subset(100, 0.1, seed=3) != label_subset(100, 0.1, seed=4)
    assert len(label_subset(100, 0.05, seed=0)) == 5
    train, _ = data
    assert _train(tmp_path / "a", train, "--label-fraction", "0.25", iterations=1) == 0
    saved = json.loads((tmp_path / "a" / "label_subset.json").read_text())
    assert saved["num_samples"] == 16 and len(saved["indices"]) == 4
    assert saved["indices"] == label_subset(16, 0.25, seed=0)
    # Another run (e.g. fine-tuning) reuses exactly that subset, whatever its seed.
    subset = str(tmp_path / "a" / "label_subset.json")
    assert _train(tmp_path / "b", train, "--label-subset", subset, "--seed", "7",
                  iterations=1) == 0
    assert json.loads((tmp_path / "b" / "label_subset.json").read_text()) == saved
    with pytest.raises(ValueError, match="16-sample"):
        load_or_make_subset(tmp_path / "a" / "label_subset.json", 20, 0.25, 0)


def test_save_atomic_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoints.save({"step": 1}, path, "recognizer")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save({"step": 2}, path, "recognizer")
    monkeypatch.undo()
    assert checkpoints.load(path, "recognizer")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_nan_loss_stops_with_message(data, tmp_path, monkeypatch, capsys):
    original, calls = CTCDecoder.loss, []

    def loss(self, *args):
        calls.append(1)
        value = original(self, *args)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(CTCDecoder, "loss", loss)
    train, _ = data
    assert _train(tmp_path / "run", train, "--decoder", "ctc", "--save-every", "1") == 1
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "at step 3" in err
    assert f"{tmp_path / 'run' / 'last.pt'} (step 2)" in err


def test_sigterm_saves_and_exits(data, tmp_path, monkeypatch, capsys):
    original, calls = CTCDecoder.loss, []

    def loss(self, *args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args)

    monkeypatch.setattr(CTCDecoder, "loss", loss)
    train, _ = data
    assert _train(tmp_path / "run", train, "--decoder", "ctc") == 128 + signal.SIGTERM
    assert "SIGTERM" in capsys.readouterr().err
    assert checkpoints.load(tmp_path / "run" / "last.pt", checkpoints.KINDS)["step"] == 2


def test_collate():
    cs = Charset("abc")
    samples = [(Image.new("L", (40, 16), 255), "ab"), (Image.new("L", (20, 16), 0), "c")]
    fixed = RecognitionCollate(cs)(samples)
    assert fixed.images.shape == (2, 1, 32, 100) and fixed.widths is None
    assert fixed.images.max() == 1 and fixed.images.min() == -1
    assert fixed.targets.tolist() == [[0, 1], [2, 0]]  # 0-based, padded with 0
    assert fixed.target_lengths.tolist() == [2, 1]
    ragged = RecognitionCollate(None, keep_ratio=True)(samples)
    assert ragged.images.shape == (2, 1, 32, 80) and ragged.widths.tolist() == [80, 40]
    assert (ragged.images[1, :, :, 40:] == 0).all() and ragged.targets is None


def test_yaml_config_and_flag_override(tmp_path):
    a, b, x = (str(tmp_path / name) for name in "abx")
    for path in (a, b, x):
        write_lmdb(path, [(Image.new("L", (8, 8)), "w")])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"train: [{a}, {b}]\nrun-dir: r\nlr: 10\nbatch_size: 8\n")
    c = parse(["supervised", "--config", str(cfg), "--batch-size", "16"])
    assert c["train"] == [a, b] and c["lr"] == 10 and c["batch_size"] == 16
    assert c["rho"] == 0.95 and c["grad_clip"] == 5
    assert c["weight_decay"] == RECOGNIZER_RECIPES[c["recipe"]]["weight_decay"]
    assert parse(["supervised", "--config", str(cfg), "--train", x])["train"] == [x]
    cfg.write_text("trian: a\n")
    with pytest.raises(SystemExit):
        parse(["supervised", "--config", str(cfg)])


def test_help_is_written_for_users(capsys):
    """Every option of every subcommand has a help text, and the top-level help shows no
    developer markup (reST double backticks)."""
    from seqclr_ext.train.cli import COMMANDS
    from seqclr_ext.train.commands import build_parser
    parser, subs = build_parser(COMMANDS)
    for name, sub in subs.items():
        assert [a.option_strings for a in sub._actions if not a.help] == [], name
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults")
def test_pretrain_has_cpu_defaults_without_a_gpu(data, tmp_path):
    config = parse(["pretrain", "--train", data[0], "--run-dir", str(tmp_path / "r")])
    assert (config["device"], config["iterations"], config["workers"], config["preset"]) == (
        "cpu", 5000, 0, "small")
