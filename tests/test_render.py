"""seqclr_ext.data.render and the ``python -m seqclr_ext.data`` CLI.

The fonts and word lists are Debian packages that CI installs (render.APT_INSTALL); a
missing one fails these tests with the apt-get line to run, it does not skip them.
"""
import io
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from seqclr_ext.data import Charset, LmdbDataset, read_meta, render_split, write_lmdb
from seqclr_ext.data import render as R
from seqclr_ext.data.__main__ import main
from seqclr_ext.train.runner import built_in_data

SPLITS = ("scene-train", "scene-test", "hand-train", "hand-test")


@pytest.fixture(scope="module", autouse=True)
def _installed():
    for split in SPLITS:
        R.check_fonts(split)  # raises FileNotFoundError naming the apt-get command
    R.load_words("en")


def test_font_splits_are_disjoint_and_fixed():
    assert R.SPLITS == SPLITS
    for style in ("scene", "hand"):
        train, test = R.split_families(f"{style}-train"), R.split_families(f"{style}-test")
        assert train and test
        assert not {f.name for f in train} & {f.name for f in test}
        assert not set(R.font_files(f"{style}-train")) & set(R.font_files(f"{style}-test"))
    # Handwriting and print fonts never mix.
    assert not set(R.font_files("scene-train")) & set(R.font_files("hand-train"))
    assert {f.name for f in R.split_families("scene-test")} == {
        "Caladea", "Open Sans", "Inconsolata"}
    assert {f.name for f in R.split_families("hand-test")} == {
        "Dancing Script", "DKG handwriting", "Steve Hand", "Because We Learn"}
    # The vocabulary is split too.
    assert not set(R.load_words("en", "train")) & set(R.load_words("en", "test"))


def test_missing_fonts_name_the_apt_command(monkeypatch, tmp_path):
    monkeypatch.setattr(R, "FONT_ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install -y .*fonts-dejavu-core"):
        R.check_fonts("scene-train")


def test_samples_are_deterministic_and_well_formed():
    charset = Charset.printable()
    for split in SPLITS:
        for i in range(6):
            png, label, family, _, _ = R.make_sample(split, i, seed=3)
            assert R.make_sample(split, i, seed=3)[:2] == (png, label)
            assert family in {f.name for f in R.split_families(split)}
            assert 1 <= len(label) <= R.MAX_LENGTH and charset.contains(label)
            img = Image.open(io.BytesIO(png))
            assert img.mode == "L" and img.height == R.HEIGHT
            assert 4 <= img.width <= 40 * max(len(label), 2), (label, img.size)
            pixels = np.asarray(img, dtype=np.float32)
            assert pixels.std() > 10, f"{split}/{i} {label!r}: no visible text"
    assert R.make_sample("scene-train", 0, seed=3)[:2] != R.make_sample("scene-train", 0, 4)[:2]
    assert R.make_sample("hand-train", 0, 3)[:2] != R.make_sample("hand-test", 0, 3)[:2]


def test_caps_only_fonts_render_upper_case():
    fam = next(f for f in R.split_families("hand-train") if f.caps_only)
    rng = np.random.default_rng(0)
    got, path, text, skipped = R._pick_font(rng, [fam], "Hello")
    assert got is fam and text == "HELLO" and skipped == 0


def test_missing_glyphs_skip_the_font():
    # Because We Learn has no '~': a text with one must come from another family.
    families = R.split_families("hand-test")
    bwl = next(f for f in families if f.name == "Because We Learn")
    assert "~" not in R._coverage(str(R.FONT_ROOT / bwl.files[0]))
    for s in range(20):
        fam, _, text, _ = R._pick_font(np.random.default_rng(s), families, "a~b")
        assert fam is not None and fam is not bwl and text == "a~b"
    fam, _, _, skipped = R._pick_font(np.random.default_rng(0), [bwl], "a~b")
    assert fam is None and skipped == 1


def test_render_split_is_independent_of_workers(tmp_path):
    a = render_split("hand-test", tmp_path / "a", 12, seed=1, workers=1, progress=False)
    b = render_split("hand-test", tmp_path / "b", 12, seed=1, workers=2, progress=False)
    assert a.written == b.written == 12 and sum(a.per_family.values()) == 12
    dumps = []
    for name in ("a", "b"):
        with lmdb.open(str(tmp_path / name), readonly=True, lock=False) as env:
            with env.begin() as txn:
                dumps.append(dict(txn.cursor()))
    assert dumps[0] == dumps[1] and dumps[0][b"num-samples"] == b"12"

    ds = LmdbDataset(tmp_path / "a", Charset.printable(), max_length=25)
    assert len(ds) == 12 and ds.stats.total == 12
    img, label = ds[0]
    assert img.height == 32 and label == R.make_sample("hand-test", 0, 1)[1]


def test_rendered_data_is_made_again_by_a_new_renderer(tmp_path, monkeypatch):
    config = {"style": "scene", "num_train": 4, "num_val": 2, "num_test": 3,
              "data_dir": tmp_path, "progress": False}
    data = built_in_data(config)
    assert read_meta(data.train) == R.render_meta("scene-train", 4, 0)
    assert read_meta(data.val) == R.render_meta("scene-train", 2, 1)
    assert read_meta(data.test)["renderer"] == R.RENDER_VERSION
    # Reused as long as the renderer is the same ...
    mtime = (data.train / "data.mdb").stat().st_mtime_ns
    assert built_in_data(config) == data and (data.train / "data.mdb").stat().st_mtime_ns == mtime
    # ... made again when it changed, or when the LMDB does not say (older versions).
    write_lmdb(data.test, [(R.make_sample("scene-test", 0, 0)[0], "stale")], overwrite=True)
    assert read_meta(data.test) == {}
    monkeypatch.setattr(R, "RENDER_VERSION", R.RENDER_VERSION + 1)
    built_in_data(config)
    assert read_meta(data.train)["renderer"] == R.RENDER_VERSION
    assert len(LmdbDataset(data.test, Charset.printable(), max_length=25)) == 3


def test_cli_render_inspect_preview(tmp_path, capsys, subprocess_env):
    out = tmp_path / "scene.lmdb"
    proc = subprocess.run(
        [sys.executable, "-m", "seqclr_ext.data", "render", "--split", "scene-test",
         "--num", "8", "--out", str(out), "--seed", "0", "--workers", "1", "--no-progress"],
        capture_output=True, text=True, env=subprocess_env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "8 written" in proc.stdout
    assert len(LmdbDataset(out, Charset.printable())) == 8

    assert main(["render", "--split", "scene-test", "--num", "8", "--out", str(out),
                 "--no-progress", "--workers", "1"]) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "samples: 8" in text and "charset coverage:" in text
    assert "label length" in text and "image width at height 32" in text

    grid = tmp_path / "grid.png"
    assert main(["preview", str(out), "--out", str(grid), "--num", "6", "--cols", "3"]) == 0
    with Image.open(grid) as g:
        assert g.format == "PNG" and g.width > 3 * 32 and g.height >= 2 * 32
    pairs = tmp_path / "pairs.png"
    assert main(["preview", str(out), "--out", str(pairs), "--num", "4", "--cols", "2",
                 "--augment", "seqclr"]) == 0
    with Image.open(pairs) as g:   # two cells of original + two 100-pixel views per row
        assert g.size == (2 * (300 + 6) + 6, 2 * (32 + 16 + 6) + 6)

    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (40, 20), 200).save(images / "a.png")
    (tmp_path / "gt.txt").write_text("a.png\tword\nmissing.png\tx\n")
    assert main(["convert", str(images), str(tmp_path / "gt.txt"), str(tmp_path / "conv"),
                 "--no-progress"]) == 0
    assert "1 written, 1 missing" in capsys.readouterr().out

    assert main(["fonts"]) == 0
    assert "apt-get install" in capsys.readouterr().out


def test_readme_commands_install_every_font_package():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "apt-get install" in line]
    assert len(commands) >= 2, "README: both set-up commands must install the Debian packages"
    for line in commands:
        missing = [p for p in R.APT_PACKAGES if f" {p}" not in line]
        assert not missing, f"README command lacks {missing}: {line}"
