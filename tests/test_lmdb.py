"""seqclr_ext.data.lmdb_dataset: the deep-text-recognition-benchmark LMDB layout."""
import io

import lmdb
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from seqclr_ext.data import Charset, LmdbDataset, convert_folder, write_lmdb


def _image(width: int, height: int = 16, mode: str = "L") -> Image.Image:
    return Image.new(mode, (width, height), color=width % 256)


def _png(width: int, height: int = 16) -> bytes:
    buf = io.BytesIO()
    _image(width, height).save(buf, format="PNG")
    return buf.getvalue()


def test_round_trip_layout(tmp_path):
    labels = [f"word{i}" for i in range(7)]
    # Mix PIL images and encoded bytes; a tiny map_size forces the map to grow.
    samples = [(_image(10 + i, mode="RGB") if i % 2 else _png(10 + i), lab)
               for i, lab in enumerate(labels)]
    path = tmp_path / "db"
    assert write_lmdb(path, samples, commit_every=3, map_size=16 << 10) == 7
    assert not (tmp_path / "db.partial").exists()

    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        assert txn.get(b"num-samples") == b"7"
        assert txn.get(b"label-000000001") == b"word0"  # 1-based keys
        assert txn.get(b"label-000000000") is None and txn.get(b"image-000000008") is None
        assert txn.get(b"image-000000001") == samples[0][0]  # bytes stored as given

    for mode in ("L", "RGB"):
        ds = LmdbDataset(path, Charset.printable(), mode=mode)
        assert len(ds) == 7
        for i in range(7):
            img, lab = ds[i]
            assert lab == labels[i] and img.size == (10 + i, 16) and img.mode == mode
    with pytest.raises(FileExistsError):
        write_lmdb(path, samples)
    assert write_lmdb(path, samples[:2], overwrite=True) == 2
    assert len(LmdbDataset(path, None)) == 2


def test_label_filters_are_counted(tmp_path):
    labels = ["ok", "", "x" * 26, "x" * 25, "café", "naïve", "Upper"]
    write_lmdb(tmp_path / "db", [(_png(8), lab) for lab in labels])

    ds = LmdbDataset(tmp_path / "db", Charset.printable(), max_length=25)
    s = ds.stats
    assert (s.total, s.kept, s.empty, s.too_long, s.out_of_charset) == (7, 3, 1, 1, 2)
    assert s.unknown_chars == {"é": 1, "ï": 1}
    assert [ds[i][1] for i in range(len(ds))] == ["ok", "x" * 25, "Upper"]
    assert "3/7 samples kept" in ds.report() and "'é'" in ds.report()

    # A case-insensitive charset lower-cases labels before filtering and returns them so.
    alnum = LmdbDataset(tmp_path / "db", Charset.alphanumeric(), max_length=None)
    assert [alnum[i][1] for i in range(len(alnum))] == ["ok", "x" * 26, "x" * 25, "upper"]


def test_corrupt_image_is_counted_and_skipped(tmp_path):
    samples = [(_png(8), "a"), (b"\x89PNG garbage bytes", "b"), (_png(12), "c")]
    write_lmdb(tmp_path / "db", samples)
    ds = LmdbDataset(tmp_path / "db", Charset.printable())
    assert len(ds) == 3  # labels are fine: the image is only found bad when read
    img, lab = ds[1]
    assert lab == "c" and img.size == (12, 16)  # the next readable sample
    assert ds.stats.unreadable == 1
    ds[1]
    assert ds.stats.unreadable == 1  # counted once per sample, not per read
    assert "1 unreadable" in ds.report()


def test_evaluation_keeps_unreadable_samples(tmp_path):
    samples = [(_png(8), "a"), (b"\x89PNG garbage bytes", "b"), (_png(12), "c")]
    write_lmdb(tmp_path / "db", samples)
    ds = LmdbDataset(tmp_path / "db", None, max_length=None, skip_unreadable=False)
    assert [lab for _, lab in (ds[i] for i in range(3))] == ["a", "b", "c"]  # each once
    assert ds[1][0] is None and ds.stats.unreadable == 1
    assert "1 unreadable images scored as wrong" in ds.report()


def _rgba_png(width: int = 12) -> bytes:
    """Black text pixels on a fully transparent background that is black underneath."""
    img = Image.new("RGBA", (width, 16), (0, 0, 0, 0))
    img.putpixel((3, 3), (0, 0, 0, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _transparent_palette_png() -> bytes:
    img = Image.new("P", (10, 16), 0)
    img.putpalette([0, 0, 0, 255, 255, 255])
    img.info["transparency"] = 0
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_transparency_is_composited_on_white_and_counted(tmp_path, mode):
    write_lmdb(tmp_path / "db", [(_rgba_png(), "a"), (_png(8), "b"),
                                 (_transparent_palette_png(), "c")])
    ds = LmdbDataset(tmp_path / "db", Charset.printable(), mode=mode)
    img = ds[0][0]
    white = 255 if mode == "L" else (255, 255, 255)
    black = 0 if mode == "L" else (0, 0, 0)
    assert img.mode == mode and img.getpixel((0, 0)) == white and img.getpixel((3, 3)) == black
    assert ds[2][0].getpixel((0, 0)) == white
    ds[1]
    assert ds.stats.alpha == 2
    assert "2 images with an alpha channel composited on white" in ds.report()


def test_all_images_unreadable_raises(tmp_path):
    write_lmdb(tmp_path / "db", [(b"junk", "a")])
    ds = LmdbDataset(tmp_path / "db", None)
    with pytest.raises(RuntimeError, match="no readable image"):
        ds[0]
    with pytest.raises(IndexError):
        ds[1]


@pytest.mark.parametrize("count", [b"abc", b"-3"])
def test_malformed_sample_count_names_the_path(tmp_path, count):
    write_lmdb(tmp_path / "db", [(_png(8), "a")])
    with lmdb.open(str(tmp_path / "db")) as env, env.begin(write=True) as txn:
        txn.put(b"num-samples", count)
    message = f"{tmp_path / 'db'}: 'num-samples' is b'{count.decode()}', not a sample count"
    with pytest.raises(ValueError, match=message):
        LmdbDataset(tmp_path / "db", None)


def test_report_without_length_limit(tmp_path):
    write_lmdb(tmp_path / "db", [(_png(8), "a")])
    assert "longer than" not in LmdbDataset(tmp_path / "db", None, max_length=None).report()


def test_not_a_dataset(tmp_path):
    with lmdb.open(str(tmp_path / "db")) as env, env.begin(write=True) as txn:
        txn.put(b"foo", b"bar")
    with pytest.raises(ValueError, match="num-samples"):
        LmdbDataset(tmp_path / "db", None)


def test_convert_folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    _image(20).save(root / "sub" / "a.png")
    _image(30).save(root / "b.jpg")
    (root / "corrupt.png").write_bytes(b"not an image")
    _image(40).save(root / "d.png")
    (tmp_path / "gt.txt").write_text(
        "sub/a.png\ttwo words\n"   # tab form: the label keeps its space
        "missing.png\tgone\n"
        "corrupt.png\tbad\n"
        "\n"
        "b.jpg space-separated\n"  # no tab: split at the first space
        "noseparator\n"
        "d.png\tlast\n",
        encoding="utf-8",
    )
    stats = convert_folder(root, tmp_path / "gt.txt", tmp_path / "db", progress=False)
    assert (stats.written, stats.missing, stats.unreadable, stats.malformed) == (3, 1, 1, 1)
    assert [where for where, _ in stats.problems] == ["line 2", "line 3", "line 6"]

    ds = LmdbDataset(tmp_path / "db", Charset.printable())
    assert [(img.size[0], lab) for img, lab in (ds[i] for i in range(len(ds)))] == [
        (20, "two words"), (30, "space-separated"), (40, "last")]


def test_dataloader_workers(tmp_path):
    labels = [f"w{i}" for i in range(10)]
    samples = [(_png(5 + i), lab) for i, lab in enumerate(labels)]
    samples[4] = (b"garbage", "w4")
    write_lmdb(tmp_path / "db", samples)
    ds = LmdbDataset(tmp_path / "db", Charset.printable())
    ds[0]  # an environment opened in the parent must not leak into the workers

    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=list)
    got = [lab for batch in loader for _, lab in batch]
    # Sample 4 is replaced by sample 5, so "w5" comes twice and "w4" never.
    assert got == ["w0", "w1", "w2", "w3", "w5", "w5", "w6", "w7", "w8", "w9"]
    assert ds.stats.unreadable == 1  # flagged in a worker, seen by the main process
