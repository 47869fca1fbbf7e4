"""The experiment drivers in python/ (SeqCLR Tables 1 and 2 at small scale) end to end with
--quick, each in a subprocess outside the source folder: every row of their markdown tables
holds the scores of its run, the figures exist, finished runs are reused, an interrupted
one is continued, and a run folder of other options is refused."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from seqclr_ext import checkpoints

pytest.importorskip("matplotlib")

DRIVERS = Path(__file__).resolve().parents[1] / "python"
ENCODERS = ["random init", "SimCLR", "SimCLR contextual", "SeqCLR all", "SeqCLR frame",
            "SeqCLR window"]
DECODERS = {"CTC": "ctc", "attention": "attention"}


def _drive(script, root, env, *extra):
    return subprocess.run([sys.executable, str(DRIVERS / script), "--quick", "--data-dir",
                           "data", "--run-dir", "runs", "--no-progress", *extra],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)


def _table(path):
    """-> (header, rows) of the markdown table in ``path``."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert set(cells[1]) == {"---"}
    return cells[0], cells[2:]


def _scores(run_dir):
    (metrics,) = json.loads((run_dir / "test_metrics.json").read_text()).values()
    return metrics


def _percent(x):
    return f"{100 * x:.1f}"


def _check_png(path):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100


@pytest.fixture(scope="module")
def table1(tmp_path_factory, subprocess_env):
    root = tmp_path_factory.mktemp("drivers")
    proc = _drive("table1_decoder_eval.py", root, subprocess_env)
    assert proc.returncode == 0, proc.stderr
    return root


def test_table1_decoder_evaluation(table1):
    runs = table1 / "runs"
    header, rows = _table(runs / "table1.md")
    assert header == ["encoder", "decoder", "word accuracy (%)", "ED1 accuracy (%)", "CER (%)"]
    assert [r[:2] for r in rows] == [[e, d] for d in DECODERS for e in ENCODERS]
    for encoder, decoder, acc, ed1, cer in rows:
        slug = encoder.lower().replace(" ", "-")
        m = _scores(runs / f"decoder-eval-{slug}-{DECODERS[decoder]}")
        assert m["samples"] == 40
        assert [acc, ed1, cer] == [_percent(m[k]) for k in ("word_accuracy", "ed1_accuracy", "cer")]
    _check_png(runs / "table1.png")
    # Each method pre-trained its own encoder; SimCLR's is the visual one (R = V).
    for name, representation in (("simclr", "V"), ("simclr-contextual", "H"),
                                 ("seqclr-frame", "H")):
        assert (runs / f"pretrain-{name}" / "encoder.pt").is_file()
        config = (runs / f"pretrain-{name}" / "config.yaml").read_text()
        assert f"representation: {representation}" in config


def test_table1_reuses_finished_runs_and_continues_interrupted_ones(table1, subprocess_env):
    runs = table1 / "runs"
    checkpoints = {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pt")}
    assert len(checkpoints) == 5 + 12
    interrupted = runs / "decoder-eval-seqclr-all-ctc"
    expected = (interrupted / "test_metrics.json").read_text()
    (interrupted / "test_metrics.json").unlink()   # killed after training, before scoring
    (runs / "table1.md").unlink()
    proc = _drive("table1_decoder_eval.py", table1, subprocess_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("resumed") == 1 and "at step 5" in proc.stderr
    assert (interrupted / "test_metrics.json").read_text() == expected
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pt")} == checkpoints
    assert (runs / "table1.md").is_file()


def test_table1_encoders_picks_rows_from_finished_runs(table1, subprocess_env):
    runs = table1 / "runs"
    checkpoints = {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pt")}
    proc = _drive("table1_decoder_eval.py", table1, subprocess_env,
                  "--encoders", "SeqCLR window", "random init")
    assert proc.returncode == 0, proc.stderr
    _, rows = _table(runs / "table1.md")
    assert [r[:2] for r in rows] == [[e, d] for d in DECODERS
                                     for e in ("random init", "SeqCLR window")]
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pt")} == checkpoints


def test_table2_semi_supervised(table1, subprocess_env):
    runs = table1 / "runs"
    encoder = runs / "pretrain-seqclr-window" / "last.pt"
    mtime = encoder.stat().st_mtime_ns
    proc = _drive("table2_semi_supervised.py", table1, subprocess_env)
    assert proc.returncode == 0, proc.stderr
    assert encoder.stat().st_mtime_ns == mtime   # Table 1's SeqCLR window encoder, reused
    header, rows = _table(runs / "table2.md")
    fractions = ("5", "10", "100")
    assert header == ["method", "decoder", *(f"{m} acc. ({f} % labels)" for f in fractions
                                              for m in ("word", "ED1"))]
    methods = {"supervised": "supervised", "SeqCLR fine-tuned": "finetune"}
    assert [r[:2] for r in rows] == [[m, d] for d in DECODERS for m in methods]
    for method, decoder, *cells in rows:
        for i, f in enumerate(("0.05", "0.1", "1")):
            m = _scores(runs / f"{methods[method]}-{DECODERS[decoder]}-{f}")
            assert cells[2 * i:2 * i + 2] == [_percent(m["word_accuracy"]),
                                              _percent(m["ed1_accuracy"])]
    # Both methods learn from the same labelled subset: 5 % of 200 images.
    subsets = [json.loads((runs / f"{c}-ctc-0.05" / "label_subset.json").read_text())["indices"]
               for c in ("supervised", "finetune")]
    assert len(subsets[0]) == 10 and subsets[0] == subsets[1]
    assert not (runs / "supervised-ctc-1" / "label_subset.json").exists()
    _check_png(runs / "table2.png")

    # Other sizes in the same folder are refused rather than mixed with these runs.
    proc = _drive("table2_semi_supervised.py", table1, subprocess_env, "--eval-steps", "6")
    assert proc.returncode != 0 and "holds a run of other options" in proc.stderr
    assert "iterations: 5, not 6" in proc.stderr


def test_siman_probe(tmp_path, subprocess_env):
    proc = _drive("siman_probe.py", tmp_path, subprocess_env)
    assert proc.returncode == 0, proc.stderr
    runs = tmp_path / "runs"
    header, rows = _table(runs / "siman_probe.md")
    assert header == ["encoder", "probe", "word accuracy (%)", "ED1 accuracy (%)", "CER (%)"]
    encoders = {"random init": "random", "SimAN": "siman", "SeqCLR (R = V)": "seqclr"}
    assert [r[:2] for r in rows] == [[e, d] for d in DECODERS for e in encoders]
    for encoder, decoder, acc, ed1, cer in rows:
        m = _scores(runs / f"probe-{encoders[encoder]}-{DECODERS[decoder]}")
        assert [acc, ed1, cer] == [_percent(m[k]) for k in ("word_accuracy", "ed1_accuracy", "cer")]
    _check_png(runs / "siman_probe.png")
    # The same probe everywhere: a frozen ResNet (no TPS), the BiLSTM and decoder trained.
    import torch
    for name in encoders.values():
        ckpt = checkpoints.load(runs / f"probe-{name}-ctc" / "last.pt", checkpoints.KINDS)
        assert ckpt["model_config"]["tps"] is False
        assert not any(k.startswith("transformation.") for k in ckpt["model"])
    for method in ("siman", "seqclr-window"):
        encoder = checkpoints.load(runs / f"pretrain-{method}" / "encoder.pt", checkpoints.KINDS)
        assert encoder["representation"] == "V"
        probed = checkpoints.load(runs / f"probe-{method.split('-')[0]}-ctc" / "last.pt",
                                  checkpoints.KINDS)["model"]
        for k, v in encoder["encoder_state"].items():
            assert torch.equal(probed[k], v), k


def test_convergence(tmp_path, subprocess_env):
    proc = _drive("convergence.py", tmp_path, subprocess_env, "--styles", "scene",
                  "--val-every", "2")
    assert proc.returncode == 0, proc.stderr
    runs = tmp_path / "runs"
    header, rows = _table(runs / "convergence.md")
    assert header[:6] == ["style", "recipe", "decoder", "test word acc. (%)", "test CER (%)",
                          "wall time (min)"]
    from seqclr_ext.train.options import RECOGNIZER_RECIPES
    assert [r[:3] for r in rows] == [["scene", recipe, decoder] for recipe in RECOGNIZER_RECIPES
                                     for decoder in DECODERS]
    for style, recipe, decoder, acc, cer, *_ in rows:
        m = _scores(runs / f"{style}-{recipe}-{DECODERS[decoder]}")
        assert [acc, cer] == [_percent(m[k]) for k in ("word_accuracy", "cer")]
        config = (runs / f"{style}-{recipe}-{DECODERS[decoder]}" / "config.yaml").read_text()
        assert f"recipe: {recipe}" in config
    _check_png(runs / "convergence.png")


def test_builtin_model(tmp_path, subprocess_env):
    out = tmp_path / "builtin.pt"
    proc = _drive("builtin_model.py", tmp_path, subprocess_env, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    runs = tmp_path / "runs"
    header, rows = _table(runs / "builtin.md")
    assert header == ["test set (held-out fonts)", "images", "word accuracy (%)",
                      "ED1 accuracy (%)", "CER (%)"]
    scores = json.loads((runs / "supervised" / "test_metrics.json").read_text())
    assert [r[0] for r in rows] == ["scene-test", "hand-test"]
    for (name, images, acc, ed1, cer), (path, m) in zip(rows, scores.items()):
        assert Path(path).name.startswith(name)
        assert [images, acc, ed1, cer] == [str(m["samples"]), *(_percent(m[k]) for k in
                                           ("word_accuracy", "ed1_accuracy", "cer"))]
    # One recognizer of both styles' training images, every printable symbol.
    config = (runs / "supervised" / "config.yaml").read_text()
    assert "scene-train-200.lmdb" in config and "hand-train-200.lmdb" in config
    # The written model is the run's final one, without the training state.
    model = checkpoints.load(out, "recognizer")
    last = checkpoints.load(runs / "supervised" / "last.pt", "recognizer")
    assert set(model) == {"model", "model_config", "charset", "config", "step"}
    assert model["step"] == last["step"] == 5
    import torch
    assert all(torch.equal(v, last["model"][k]) for k, v in model["model"].items())
    from seqclr_ext.data import Charset
    assert model["charset"]["symbols"] == Charset.printable().symbols
