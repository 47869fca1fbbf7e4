"""SimAN (§3, Algorithm 1): patch cropping (neighbours, inside the valid width, the narrow
image rule), the content augmentation (photometric only), the generator learning on a fixed
batch, the pretrain -> probe / finetune CLI with exact resume, and style-guided synthesis."""
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from seqclr_ext import checkpoints
from seqclr_ext.data import LmdbDataset, write_lmdb
from seqclr_ext.data.augment import make_augment
from seqclr_ext.methods import SimAN
from seqclr_ext.methods.siman import crop_patches
from seqclr_ext.models import Recognizer
from seqclr_ext.synthesize import load_generator, main as synthesize_main, synthesize
from seqclr_ext.train.cli import main

FAST = ["--device", "cpu", "--preset", "small", "--batch-size", "4", "--workers", "0",
        "--no-progress", "--log-every", "1", "--no-tensorboard"]


def _column_images(widths, height=8, total=None):
    """Pixel value = its column index (+ 1000 · image index); 0 beyond the valid width."""
    total = total or max(widths)
    cols = torch.arange(total, dtype=torch.float64)
    images = torch.zeros(len(widths), 1, height, total, dtype=torch.float64)
    for i, w in enumerate(widths):
        images[i, :, :, :w] = cols[:w] + 1000 * i
    return images, torch.tensor(widths)


# --------------------------------------------------------------------------- cropping

def test_patches_are_neighbours_inside_the_valid_width():
    images, widths = _column_images([16, 20, 40, 33, 64] * 20, height=8)
    style, content, narrow = crop_patches(images, widths, torch.Generator().manual_seed(0))
    assert style.shape == content.shape == (100, 1, 8, 8) and narrow == 0
    s0, c0 = style[:, 0, 0, 0] % 1000, content[:, 0, 0, 0] % 1000
    # Each patch is 8 consecutive columns of its own image, the two patches side by side.
    for patch, start in ((style, s0), (content, c0)):
        expected = start[:, None] + torch.arange(8) + 1000 * torch.arange(100)[:, None]
        assert torch.equal(patch[:, 0, 3], expected)
    assert torch.equal((s0 - c0).abs(), torch.full((100,), 8.0, dtype=torch.float64))
    assert (torch.maximum(s0, c0) + 8 <= widths).all() and (torch.minimum(s0, c0) >= 0).all()
    assert 0.3 < (s0 < c0).double().mean() < 0.7        # either order
    again = crop_patches(images, widths, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], style) and torch.equal(again[1], content)


def test_narrow_images_are_stretched_and_counted():
    images, widths = _column_images([5, 16, 12], height=8, total=16)
    style, content, narrow = crop_patches(images, widths, torch.Generator().manual_seed(1))
    assert narrow == 2 and style.shape == (3, 1, 8, 8)
    # The 5-column image fills both patches (stretched), never the zero padding.
    both = torch.cat([style[0], content[0]], dim=-1)
    assert both.min() >= 0 and both.max() <= 4 and both.max() > 3
    # The stretch is F.interpolate's bilinear resize of the valid columns.
    want = F.interpolate(images[:1, :, :, :5], size=(8, 16), mode="bilinear")
    got = torch.cat([content[0], style[0]] if torch.equal(style[0], want[0, ..., 8:])
                    else [style[0], content[0]], dim=-1)
    torch.testing.assert_close(got, want[0])


# --------------------------------------------------------------------------- augmentation

def test_content_augmentation_never_moves_pixels():
    """A vertical black/white edge stays at its column: the strongest horizontal step of
    every augmented image (mean over rows) is where the source's is."""
    images = -torch.ones(200, 1, 32, 32)
    images[..., 13:] = 1
    out = make_augment("siman")(images, None, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    step = (out[..., 1:] - out[..., :-1]).mean(2).abs()[:, 0]
    assert torch.equal(step.argmax(1), torch.full((200,), 12))
    changed = (out - images).abs().flatten(1).amax(1) > 0.05
    assert changed.float().mean() > 0.8                   # it does change the style


# --------------------------------------------------------------------------- training

def test_generator_learns_a_fixed_batch():
    torch.manual_seed(0)
    model = SimAN(Recognizer(num_chars=10, preset="small"))
    gen = torch.optim.Adam(model.generator_parameters(), 3e-4, betas=(0.5, 0.999))
    disc = torch.optim.Adam(model.discriminator.parameters(), 3e-4, betas=(0.5, 0.999))
    # Smooth random images: structure that the trunk's features can carry.
    images = F.interpolate(torch.rand(8, 1, 4, 12) * 2 - 1, size=(32, 96), mode="bilinear")
    style, content, _ = crop_patches(images, None, torch.Generator().manual_seed(0))
    augmented = make_augment("siman")(content, None, torch.Generator().manual_seed(1))
    l2 = []
    for _ in range(20):
        loss, scalars, recovered = model.step(style, content, augmented, gen, disc)
        assert torch.isfinite(loss) and all(torch.isfinite(torch.tensor(v))
                                            for v in scalars.values())
        l2.append(scalars["l2"])
    assert recovered.shape == content.shape
    assert sum(l2[-5:]) / 5 < 0.4 * l2[0], l2     # GAN steps oscillate: a wide margin
    assert all(k.startswith("feature_extractor.") for k in model.encoder_state())


def _word(word):
    img = Image.new("L", (10 * len(word) + 8, 20), 255)
    ImageDraw.Draw(img).text((4, 4), word, fill=0)
    return img


@pytest.fixture(scope="module")
def lmdb(tmp_path_factory):
    path = tmp_path_factory.mktemp("siman") / "words"
    write_lmdb(path, [(_word(w), w) for w in ["wonderful", "dog", "Hello", "42", "trees",
                                              "ok"] * 2])
    return str(path)


@pytest.fixture(scope="module")
def pretrained(lmdb, tmp_path_factory):
    run = tmp_path_factory.mktemp("siman-run") / "pre"
    assert main(["pretrain", "--method", "siman", "--train", lmdb, "--run-dir", str(run),
                 "--iterations", "4", "--sample-every", "2", *FAST]) == 0
    return run


def test_pretrain_writes_encoder_samples_and_logs(pretrained):
    ckpt = checkpoints.load(pretrained / "encoder.pt", checkpoints.KINDS)
    assert ckpt["representation"] == "V"
    assert {k.split(".")[0] for k in ckpt["encoder_state"]} == {"feature_extractor"}
    grids = sorted(p.name for p in (pretrained / "samples").iterdir())
    assert grids == ["step_0000002.png", "step_0000004.png"]
    with Image.open(pretrained / "samples" / grids[0]) as grid:
        assert grid.size == (4 * 32, 4 * 32)        # content | style | augmented | recovered
    tags = (pretrained / "metrics.csv").read_text()
    assert all(t in tags for t in ("train/l2", "train/adv", "train/disc", "narrow_images"))


def test_pretrain_resume_is_exact(lmdb, pretrained, tmp_path):
    split = tmp_path / "split"
    assert main(["pretrain", "--method", "siman", "--train", lmdb, "--run-dir", str(split),
                 "--iterations", "4", "--sample-every", "2", "--stop-after", "2", *FAST]) == 0
    assert main(["pretrain", "--run-dir", str(split), "--resume", "--no-progress"]) == 0
    a = checkpoints.load(pretrained / "last.pt", checkpoints.KINDS)
    b = checkpoints.load(split / "last.pt", checkpoints.KINDS)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert a["schedulers"] == b["schedulers"]


def test_probe_freezes_the_siman_encoder_and_finetune_trains_it(lmdb, pretrained, tmp_path):
    encoder = checkpoints.load(pretrained / "encoder.pt", checkpoints.KINDS)["encoder_state"]
    for decoder in ("ctc", "attention"):
        run = tmp_path / f"probe-{decoder}"
        assert main(["decoder-eval", "--encoder", str(pretrained / "encoder.pt"), "--train",
                     lmdb, "--test", lmdb, "--run-dir", str(run), "--decoder", decoder,
                     "--iterations", "2", *FAST]) == 0
        model = checkpoints.load(run / "last.pt", checkpoints.KINDS)["model"]
        for k, v in encoder.items():
            assert torch.equal(model[k], v), k
        assert (run / "test_metrics.json").exists()
    assert main(["finetune", "--encoder", str(pretrained / "encoder.pt"), "--train", lmdb,
                 "--run-dir", str(tmp_path / "ft"), "--decoder", "ctc", "--iterations", "2",
                 *FAST]) == 0
    tuned = checkpoints.load(tmp_path / "ft" / "last.pt", checkpoints.KINDS)["model"]
    assert any(not torch.equal(tuned[k], v) for k, v in encoder.items())


# --------------------------------------------------------------------------- synthesis

def test_synthesis_follows_the_text_and_the_requested_width(pretrained, tmp_path):
    model, _ = load_generator(pretrained / "last.pt")
    style = _word("Hello world")
    short, long = synthesize(model, style, "ab"), synthesize(model, style, "a much longer text")
    assert short.height == long.height == 32 and long.width > 3 * short.width
    assert synthesize(model, style, "hello", width=77).size == (77, 32)

    style.save(tmp_path / "style.png")
    args = ["--checkpoint", str(pretrained / "last.pt"), "--style", str(tmp_path / "style.png"),
            "--text", "hello", "--text", "SimAN", "--width", "120"]
    assert synthesize_main([*args, "--out-dir", str(tmp_path / "png")]) == 0
    pngs = sorted((tmp_path / "png").iterdir())
    assert len(pngs) == 2 and all(Image.open(p).size == (120, 32) for p in pngs)
    assert synthesize_main([*args, "--lmdb", str(tmp_path / "synth.lmdb")]) == 0
    data = LmdbDataset(tmp_path / "synth.lmdb", None, max_length=None)
    assert len(data) == 2 and [data[i][1] for i in range(2)] == ["hello", "SimAN"]


def test_synthesis_refuses_other_checkpoints(tmp_path):
    bogus = tmp_path / "x.pt"
    checkpoints.save({"config": {"method": "seqclr"}, "model": {}}, bogus, "pretrain")
    with pytest.raises(checkpoints.CheckpointError,
                       match="a pre-training state .*, not a SimAN generator"):
        load_generator(bogus)
