"""``supervised --init``: a whole trained recognizer as the starting point, with the output
layers rebuilt when the charset or the decoder changes."""
from dataclasses import asdict

import pytest
import torch

from seqclr_ext import checkpoints, evaluate
from seqclr_ext.data import Charset
from seqclr_ext.models import Recognizer
from seqclr_ext.train.cli import main
from seqclr_ext.train.recognizer_training import init_from_checkpoint

FAST = ["--device", "cpu", "--batch-size", "4", "--workers", "0", "--no-progress",
        "--no-tensorboard", "--log-every", "1", "--val-every", "0"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A checkpoint of a small TPS-less CTC recognizer over the 95 printable symbols."""
    charset = Charset.printable()
    torch.manual_seed(1)
    model = Recognizer(num_chars=len(charset), preset="small", tps=False, decoder="ctc",
                       resnet_output_channel=32, resnet_layers=(1, 1, 1, 1), hidden_size=32)
    path = tmp_path_factory.mktemp("init") / "best.pt"
    checkpoints.save({"model": model.state_dict(), "model_config": asdict(model.config),
                "charset": {"symbols": charset.symbols, "case_insensitive": False},
                "config": {}, "step": 7}, path, "recognizer")
    return str(path), model.state_dict()


def _same(a, b, keys):
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_same_charset_and_decoder_loads_everything(source, capsys):
    path, state = source
    model = init_from_checkpoint(path, Charset.printable(), "ctc", 25, 0.0)
    assert model.config.resnet_output_channel == 32      # the checkpoint's architecture
    assert _same(model.state_dict(), state, state)
    assert f"--init {path} (step 7): loaded {len(state)} tensors\n" in capsys.readouterr().err


def test_charset_change_reinitializes_the_output_layer(source, capsys):
    path, state = source
    model = init_from_checkpoint(path, Charset.alphanumeric(), "ctc", 25, 0.0)
    fresh = ["decoder.fc.weight", "decoder.fc.bias"]
    assert model.decoder.fc.weight.shape[0] == 36 + 1
    assert _same(model.state_dict(), state, [k for k in state if k not in fresh])
    assert (f"re-initialized (charset of 95 -> 36 symbols): {', '.join(fresh)}"
            in capsys.readouterr().err)


def test_decoder_change_rebuilds_the_decoder(source, capsys):
    path, state = source
    model = init_from_checkpoint(path, Charset.alphanumeric(), "attention", 10, 0.3)
    assert model.config.decoder == "attention" and model.config.max_length == 10
    kept = [k for k in state if not k.startswith("decoder.")]
    assert _same(model.state_dict(), state, kept)
    err = capsys.readouterr().err
    assert "re-initialized (decoder ctc -> attention): decoder.attention_cell" in err
    assert "decoder.generator.weight" in err and "decoder.ctc.fc.weight" in err


def test_supervised_init_end_to_end(source, word_lmdb, tmp_path, capsys, monkeypatch):
    path, _ = source
    train = word_lmdb(tmp_path / "train", ["cat", "dog", "42", "ok"])
    assert main(["supervised", "--init", path, "--charset", "alphanumeric", "--decoder", "ctc",
                 "--train", train, "--run-dir", str(tmp_path / "run"), "--iterations", "2",
                 *FAST]) == 0
    assert "re-initialized (charset of 95 -> 36 symbols)" in capsys.readouterr().err
    ckpt = checkpoints.load(tmp_path / "run" / "last.pt", "recognizer")
    assert ckpt["model_config"]["num_chars"] == 36
    assert ckpt["model_config"]["resnet_output_channel"] == 32

    monkeypatch.setattr(evaluate, "BUILTIN_CHECKPOINT", tmp_path / "builtin.pt")
    with pytest.raises(SystemExit, match="--init checkpoint 'builtin': .*file is missing"):
        init_from_checkpoint("builtin", Charset.alphanumeric(), "ctc", 25, 0.0)
