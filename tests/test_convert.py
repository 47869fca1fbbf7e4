"""seqclr_ext.data.convert: each label layout on small fixture files, malformed entries
included, and the ``convert`` command."""
import json

import pytest
from PIL import Image

from seqclr_ext.data import Charset, LmdbDataset, convert_folder
from seqclr_ext.data.__main__ import main


def _image(path, width):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (width, 16), 128).save(path)


def _read(db):
    ds = LmdbDataset(db, Charset.printable(), max_length=None)
    return [(img.width, label) for img, label in (ds[i] for i in range(len(ds)))]


def test_gt_tab_icdar_and_space_lines(tmp_path):
    root = tmp_path / "images"
    for name, width in (("a.png", 10), ("b.png", 20), ("c.png", 30), ("d.png", 40)):
        _image(root / name, width)
    (root / "bad.png").write_bytes(b"not an image")
    # ICDAR 2015 files start with a BOM and escape quotes inside the label.
    (tmp_path / "gt.txt").write_text(
        "\ufeffa.png\ttwo words\n"
        'b.png, "say \\"hi\\""\n'
        "c.png space-separated\n"
        "gone.png\tx\n"
        "bad.png\ty\n"
        "\n"
        "noseparator\n"
        'd.png, "Tiredness"\n', encoding="utf-8")
    stats = convert_folder(root, tmp_path / "gt.txt", tmp_path / "db", progress=False)
    assert (stats.written, stats.missing, stats.unreadable, stats.malformed) == (4, 1, 1, 1)
    assert stats.problems == [("line 4", "missing image gone.png"),
                              ("line 5", "unreadable image bad.png"),
                              ("line 7", "no separator (TAB, ', \"' or space)")]
    assert _read(tmp_path / "db") == [(10, "two words"), (20, 'say "hi"'),
                                      (30, "space-separated"), (40, "Tiredness")]


def test_iam_words(tmp_path):
    words = tmp_path / "words"
    _image(words / "a01/a01-000u/a01-000u-00-00.png", 12)
    _image(words / "a01/a01-000u/a01-000u-00-01.png", 14)
    _image(words / "r06/r06-022/r06-022-03-05.png", 16)
    (tmp_path / "words.txt").write_text(
        "#--- words.txt ---#\n"
        "# format: a01-000u-00-00 ok 154 1 408 768 27 51 AT A\n"
        "a01-000u-00-00 ok 154 408 768 27 51 AT A\n"
        "a01-000u-00-01 err 154 507 766 213 48 NN MOVE\n"   # 'err' words are kept
        "r06-022-03-05 ok 171 1 2 3 4 NN New York\n"         # a label with a space
        "a01-000u-00-02 ok 154\n"                            # too few fields
        "a01-000u-00-03 ok 154 796 764 70 50 TO to\n", encoding="utf-8")
    stats = convert_folder(words, tmp_path / "words.txt", tmp_path / "db", format="iam",
                           progress=False)
    assert (stats.written, stats.missing, stats.malformed) == (3, 1, 1)
    assert [where for where, _ in stats.problems] == ["line 6", "line 7"]
    assert "a01/a01-000u/a01-000u-00-03.png" in stats.problems[1][1]
    assert _read(tmp_path / "db") == [(12, "A"), (14, "MOVE"), (16, "New York")]


def test_doctr_labels_json(tmp_path):
    root = tmp_path / "images"
    _image(root / "img_1.jpg", 10)
    _image(root / "img_2.jpg", 20)
    (tmp_path / "labels.json").write_text(json.dumps(
        {"img_1.jpg": "Hello", "img_2.jpg": 42, "img_3.jpg": "gone"}))
    stats = convert_folder(root, tmp_path / "labels.json", tmp_path / "db", format="doctr",
                           progress=False)
    assert stats.problems == [("img_2.jpg", "label is not a string: 42"),
                              ("img_3.jpg", "missing image img_3.jpg")]
    assert _read(tmp_path / "db") == [(10, "Hello")]

    (tmp_path / "list.json").write_text('["img_1.jpg"]')
    with pytest.raises(ValueError, match="expected a JSON object"):
        convert_folder(root, tmp_path / "list.json", tmp_path / "db2", format="doctr")


def test_labels_in_file_names(tmp_path):
    root = tmp_path / "mj"
    for name, width in (("3000/7/182_slinking_71711.jpg", 10), ("word.png", 20),
                        ("word_3.png", 30), ("12_Apple.png", 40)):
        _image(root / name, width)
    (root / "notes.txt").write_text("not an image, ignored")
    stats = convert_folder(root, None, tmp_path / "db", format="filenames", progress=False)
    assert stats.written == 4 and not stats.problems
    assert sorted(_read(tmp_path / "db")) == [(10, "slinking"), (20, "word"), (30, "word"),
                                              (40, "Apple")]

    stats = convert_folder(root, None, tmp_path / "db2", format="filenames",
                           label_pattern=r"(?P<label>[a-z]+)_\d+", progress=False)
    assert stats.written == 1 and stats.malformed == 3
    assert stats.problems[0] == ("12_Apple.png",
                                 "file name does not match '(?P<label>[a-z]+)_\\\\d+'")
    with pytest.raises(ValueError, match="no group"):
        convert_folder(root, None, tmp_path / "db3", format="filenames", label_pattern="x")


def test_convert_command(tmp_path, capsys):
    root = tmp_path / "images"
    _image(root / "hello_1.png", 10)
    (root / "junk.png").write_bytes(b"junk")
    assert main(["convert", "--format", "filenames", str(root), str(tmp_path / "db"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 written" in out and "1 unreadable" in out
    assert "  junk.png: unreadable image junk.png" in out

    assert main(["convert", str(root), str(tmp_path / "db2")]) == 2
    assert "format 'gt' needs a label file" in capsys.readouterr().err
    assert main(["convert", "--format", "filenames", str(root), "labels.txt",
                 str(tmp_path / "db3")]) == 2
    assert "takes no label file" in capsys.readouterr().err
