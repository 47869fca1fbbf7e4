"""Every CLI turns a user's mistake into one ``error: ...`` line and a non-zero exit before
it writes anything: sizes out of range, devices that do not exist, paths that are not
LMDBs, files or images. (The training CLI's options: tests/test_train.py.)"""
import re

import lmdb
import pytest
import torch

from seqclr_ext import evaluate, export, recognize, synthesize
from seqclr_ext.data.__main__ import main as data_main

CLIS = {"data": data_main, "evaluate": evaluate.main, "recognize": recognize.main,
        "export": export.main, "synthesize": synthesize.main}
NO_GPU = "no CUDA GPU is visible" if not torch.cuda.is_available() else "only"


@pytest.fixture
def lmdbs(tmp_path, word_lmdb):
    """A good LMDB, a text file, and LMDBs whose num-samples is garbage / negative."""
    good = word_lmdb(tmp_path / "good.lmdb", ["cat", "dog"])
    for name, count in (("abc.lmdb", b"abc"), ("neg.lmdb", b"-3")):
        word_lmdb(tmp_path / name, ["cat"])
        with lmdb.open(str(tmp_path / name)) as env, env.begin(write=True) as txn:
            txn.put(b"num-samples", count)
    (tmp_path / "words.txt").write_text("hello\n")
    return good


# (CLI, its arguments ({t}: the test's folder), the error line's pattern)
CASES = [
    ("data", "render --split scene-train --num 0 --out {t}/new.lmdb",
     "--num must be at least 1, got 0"),
    ("data", "render --all --num -5 --out {t}/new", "--num must be at least 1, got -5"),
    ("data", "render --split scene-train --num 2 --workers 0 --out {t}/new.lmdb",
     "--workers must be at least 1, got 0"),
    ("data", "inspect {t}/nope.lmdb", "LMDB {t}/nope.lmdb: no LMDB there"),
    ("data", "inspect {t}/abc.lmdb",
     r"LMDB {t}/abc.lmdb: 'num-samples' is b'abc', not a sample count"),
    ("data", "inspect {t}/neg.lmdb", r"LMDB {t}/neg.lmdb: 'num-samples' is b'-3', not a sample count"),
    ("data", "inspect {t}/good.lmdb --max-images 0", "--max-images must be at least 1, got 0"),
    ("data", "inspect {t}/good.lmdb --max-length -1", "--max-length must be at least 0, got -1"),
    ("data", "preview {t}/good.lmdb --out {t}/new.png --num -3", "--num must be at least 1"),
    ("data", "preview {t}/good.lmdb --out {t}/new.png --cols 0", "--cols must be at least 1"),
    ("data", "convert {t} {t}/words.txt {t}/new.lmdb --show -1", "--show must be at least 0"),
    ("evaluate", "--checkpoint {t}/x.pt --data {t}/abc.lmdb",
     r"--data {t}/abc.lmdb: 'num-samples' is b'abc'"),
    ("evaluate", "--checkpoint {t}/x.pt --data {t}/good.lmdb --batch-size 0",
     "--batch-size must be at least 1, got 0"),
    ("evaluate", "--checkpoint {t}/x.pt --data {t}/good.lmdb --device cuda:99",
     f"--device cuda:99: {NO_GPU}"),
    ("evaluate", "--checkpoint {t}/x.pt --data {t}/good.lmdb",
     "--checkpoint {t}/x.pt: no such file"),
    ("recognize", "--checkpoint {t}/x.pt --batch-size 0 {t}/words.txt",
     "--batch-size must be at least 1, got 0"),
    ("recognize", "--checkpoint {t}/x.pt --device cuda:99 {t}/words.txt",
     f"--device cuda:99: {NO_GPU}"),
    ("export", "--checkpoint {t}/x.pt --format onnx --out {t}/new.onnx --opset 10",
     "--opset must be at least 16, got 10"),
    ("synthesize", "--checkpoint {t}/x.pt --style {t}/nope.png --text a --out-dir {t}/new",
     "--style {t}/nope.png: no such file"),
    ("synthesize", "--checkpoint {t}/x.pt --style {t}/words.txt --text a --out-dir {t}/new",
     "--style {t}/words.txt: not a readable image"),
    ("synthesize", "--checkpoint {t}/x.pt --style {t}/words.txt --texts {t}/nope.txt "
     "--out-dir {t}/new", "--texts {t}/nope.txt: no such file"),
    ("synthesize", "--checkpoint {t}/x.pt --style {t}/words.txt --text a --width 0 "
     "--out-dir {t}/new", "--width must be at least 1, got 0"),
    ("synthesize", "--checkpoint {t}/x.pt --style {t}/words.txt --text a --device cuda:99 "
     "--out-dir {t}/new", f"--device cuda:99: {NO_GPU}"),
    ("synthesize", "--checkpoint {t}/x.pt --style {t}/words.txt --text a --lmdb {t}/good.lmdb",
     "--lmdb {t}/good.lmdb: exists"),
    ("synthesize", "--checkpoint {t}/x.pt --style {t}/words.txt --text a --font {t}/nope.ttf "
     "--out-dir {t}/new", "--font {t}/nope.ttf: no such file"),
]


@pytest.mark.parametrize("cli, args, message", CASES)
def test_bad_input_is_one_error_line_and_writes_nothing(lmdbs, tmp_path, capsys, cli, args,
                                                        message):
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as stop:
        CLIS[cli](args.format(t=tmp_path).split())
    text = str(stop.value.code)
    assert "\n" not in text
    assert re.match(f"error: {message.format(t=tmp_path)}", text), text
    assert capsys.readouterr().err == ""   # no usage dump or traceback beside it
    assert sorted(tmp_path.rglob("*")) == before
