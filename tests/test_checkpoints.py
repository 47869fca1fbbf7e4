"""seqclr_ext.checkpoints: files that load without pickle, verified before loading, one
clear error line for every bad file, atomic saves without stale temporaries."""
import io
import os
import pickle
import subprocess
import sys
import tempfile

import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from seqclr_ext import checkpoints
from seqclr_ext import evaluate as evaluate_cli
from seqclr_ext.checkpoints import CheckpointError
from seqclr_ext.data import write_lmdb
from seqclr_ext.train.cli import main as train_main

STATE = {"model": {"w": torch.arange(12.0).reshape(3, 4), "b": torch.zeros(3)},
         "config": {"lr": 1.0, "name": "run", "milestones": [0.6, 0.8], "size": (32, 100),
                    "none": None},
         "charset": {"symbols": "abc", "case_insensitive": False}, "step": 7}


def _saved_bytes(obj=STATE, kind="recognizer") -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "x.pt")
        checkpoints.save(obj, path, kind)
        with open(path, "rb") as f:
            return f.read()


GOOD = _saved_bytes()


def test_round_trip_of_every_kind(tmp_path):
    for kind in checkpoints.KINDS:
        checkpoints.save(STATE, tmp_path / f"{kind}.pt", kind)
        got = checkpoints.load(tmp_path / f"{kind}.pt", kind)
        assert torch.equal(got["model"]["w"], STATE["model"]["w"])
        assert got["config"] == STATE["config"] and got["charset"] == STATE["charset"]
        assert checkpoints.read_kind(tmp_path / f"{kind}.pt") == kind


def _lmdb(folder) -> str:
    if not (folder / "db").exists():
        write_lmdb(folder / "db", [(Image.new("L", (8, 8)), "a")])
    return str(folder / "db")


class _Evil:
    """Unpickling it creates the file ``marker``: what a crafted checkpoint can do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_files(folder, marker) -> dict:
    """Files whose unpickling would create ``marker``: a plain torch.save, a plain pickle,
    and a seqclr_ext container around such a payload with a valid checksum."""
    folder.mkdir(parents=True, exist_ok=True)
    evil = {"model": {}, "config": {}, "step": _Evil(marker)}
    files = {name: folder / f"{name}.pt" for name in ("torch", "pickle", "container")}
    torch.save(evil, files["torch"])
    files["pickle"].write_bytes(pickle.dumps(evil))
    buffer = io.BytesIO()
    torch.save(evil, buffer)
    payload = buffer.getvalue()
    files["container"].write_bytes(checkpoints.MAGIC + checkpoints._header("recognizer", payload)
                                   + payload)
    return files


def test_a_crafted_checkpoint_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "marker"
    for name, path in _crafted_files(tmp_path / "files", marker).items():
        with pytest.raises(CheckpointError, match="not loaded|refused"):
            checkpoints.load(path, checkpoints.KINDS)
        with pytest.raises(SystemExit, match=f"error: --checkpoint {path}: "):
            evaluate_cli.main(["--checkpoint", str(path), "--data", _lmdb(tmp_path)])
        run = tmp_path / f"run-{name}"
        run.mkdir()
        os.replace(path, run / "last.pt")
        with pytest.raises(SystemExit, match=f"error: {run / 'last.pt'}: "):
            train_main(["supervised", "--run-dir", str(run), "--resume"])
        assert not marker.exists(), name
    # The same bytes unpickled the ordinary way do create it.
    pickle.loads(_crafted_files(tmp_path / "again", marker)["pickle"].read_bytes())
    assert marker.exists()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(1, 255)),
                min_size=1, max_size=8))
def test_any_overwritten_bytes_are_detected(changes):
    data = bytearray(GOOD)
    for position, flip in changes:
        data[position] ^= flip
    if data == GOOD:  # flips of one position that cancel out
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "last.pt")
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(CheckpointError) as error:
            checkpoints.load(path, checkpoints.KINDS)
    assert str(error.value).startswith(path + ": ") and "\n" not in str(error.value)


def test_an_overwritten_block_is_a_checksum_mismatch(tmp_path):
    path = tmp_path / "last.pt"
    data = bytearray(_saved_bytes({"model": {"w": torch.randn(4096)}}))
    data[-9000:-5000] = os.urandom(4000)
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoints.load(path, "recognizer")


@pytest.mark.parametrize("content, message", [
    (b"", "an empty file"),
    (GOOD[:10], r"truncated \(10 bytes, no header\)"),
    (GOOD[:len(checkpoints.MAGIC) + 20], "truncated header"),
    (GOOD[:-1], r"truncated \(\d+ of \d+ payload bytes\)"),
    (GOOD[:len(GOOD) // 2], "truncated"),
    (GOOD + b"x", "1 bytes past the end"),
    (bytes(range(256)) * 8, "not a seqclr_ext checkpoint"),
    (GOOD.replace(b'"version":1', b'"version":2'), "format version 2, written by a newer"),
])
def test_bad_files_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"^{path}: {message}"):
        checkpoints.load(path, "recognizer")


def test_the_wrong_kind_is_named(tmp_path, capsys):
    path = tmp_path / "encoder.pt"
    checkpoints.save({"model_config": {}}, path, "encoder")
    with pytest.raises(SystemExit, match=r"encoder.pt: a pre-trained encoder \(encoder.pt of "
                                         r"pretrain\), not a recognizer checkpoint"):
        evaluate_cli.main(["--checkpoint", str(path), "--data", _lmdb(tmp_path)])
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoints.load(tmp_path / "missing.pt", "encoder")


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".last.pt.tmp{dead}"
    other = tmp_path / f".best.pt.tmp{dead}"           # another file's: best.pt may never
    alive = tmp_path / f".last.pt.tmp{os.getppid()}"   # be saved again; a save elsewhere
    mine = tmp_path / "notes.tmp1"                     # not a name save() writes
    for path in (stale, other, alive, mine):
        path.write_bytes(b"partial")
    checkpoints.save(STATE, tmp_path / "last.pt", "recognizer")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last.pt", alive.name, mine.name])
