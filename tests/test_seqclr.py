"""SeqCLR: the Appendix B augmentations keep sequence alignment, heads and mappings give the
right instance counts on ragged widths, and the pretrain -> decoder-eval / finetune CLI runs
end to end, resumes exactly and keeps a frozen encoder frozen."""
import json

import pytest
import torch
import yaml

from seqclr_ext import checkpoints
from seqclr_ext.data.augment import OPERATIONS, SeqCLRAugment, make_augment
from seqclr_ext.methods import SeqCLR
from seqclr_ext.data import Batch
from seqclr_ext.methods.contrastive import diagnostics, two_view_task
from seqclr_ext.models import HEADS, ProjectionHead, Recognizer, frames_for_width
from seqclr_ext.ops.seq_nce import pool_instances
from seqclr_ext.train.cli import main

FAST = ["--device", "cpu", "--preset", "small", "--batch-size", "4", "--workers", "0",
        "--no-progress", "--log-every", "1", "--no-tensorboard"]


def _edge_images(batch, width=100, edge=50):
    """Black left of column ``edge``, white from it on."""
    images = -torch.ones(batch, 1, 32, width)
    images[..., edge:] = 1
    return images


def _edge_column(images):
    return (images[:, 0, 16] > 0).float().argmax(1)


# --------------------------------------------------------------------------- augmentations

def test_each_image_draws_one_to_five_operations():
    chosen = SeqCLRAugment().choose(2000, torch.Generator().manual_seed(0))
    counts = chosen.sum(1)
    assert chosen.shape == (2000, len(OPERATIONS))
    assert counts.min() == 1 and counts.max() == 5
    assert chosen.float().mean(0).min() > 0.2     # every operation is used


def test_views_keep_shape_range_and_are_deterministic():
    images = torch.rand(6, 1, 32, 100) * 2 - 1
    aug = SeqCLRAugment()
    a = aug(images, None, torch.Generator().manual_seed(3))
    b = aug(images, None, torch.Generator().manual_seed(3))
    c = aug(images, None, torch.Generator().manual_seed(4))
    assert a.shape == images.shape and a.dtype == images.dtype
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("op", OPERATIONS)
def test_every_operation_keeps_the_left_to_right_order(op):
    """A flip, a large translation or a reordering of columns would move the black-to-white
    edge far from column 50; the SeqCLR set moves it by at most a few percent."""
    aug = SeqCLRAugment(min_ops=1, max_ops=1)
    images = _edge_images(64)
    generator = torch.Generator().manual_seed(0)
    only = torch.zeros(64, len(OPERATIONS), dtype=torch.bool)
    only[:, OPERATIONS.index(op)] = True
    aug.choose = lambda batch, generator=None, device=None: only
    out = aug(images, None, generator)
    edge = _edge_column(out)
    assert (edge - 50).abs().max() <= 5, edge.tolist()
    assert (out[:, 0, 16, :20] < 0).all()        # the left stays dark


def test_padding_columns_stay_padding():
    images = _edge_images(16)
    widths = torch.randint(20, 101, (16,))
    pad = torch.arange(100)[None, :] >= widths[:, None]
    images[pad[:, None, None, :].expand_as(images)] = 0.0
    out = SeqCLRAugment()(images, widths, torch.Generator().manual_seed(1))
    assert torch.equal(out[pad[:, None, None, :].expand_as(out)],
                       images[pad[:, None, None, :].expand_as(images)])


def test_make_augment():
    images = torch.rand(2, 1, 32, 100)
    assert make_augment("none")(images) is images
    assert isinstance(make_augment("seqclr"), SeqCLRAugment)
    with pytest.raises(ValueError, match="augment must be"):
        make_augment("flip")
    with pytest.raises(ValueError, match="max_ops"):
        SeqCLRAugment(max_ops=9)


# --------------------------------------------------------------------------- heads, mappings

@pytest.mark.parametrize("head", HEADS)
def test_heads_keep_frames_and_zero_the_padding(head):
    g = ProjectionHead(head, 16, hidden_size=8, output_size=12)
    frames = torch.randn(3, 7, 16)
    lengths = torch.tensor([7, 3, 1])
    out = g(frames * (torch.arange(7)[None, :, None] < lengths[:, None, None]), lengths)
    assert out.shape == (3, 7, 16 if head == "none" else 12)
    assert (out[1, 3:] == 0).all() and (out[2, 1:] == 0).all()


@pytest.mark.parametrize("mapping", ["all", "window", "frame"])
@pytest.mark.parametrize("representation,head", [("H", "bilstm"), ("V", "mlp"), ("H", "none")])
def test_instances_follow_ragged_widths(mapping, representation, head):
    torch.manual_seed(0)
    recognizer = Recognizer(preset="small", tps=False, decoder="ctc")
    method = SeqCLR(recognizer, representation=representation, head=head, mapping=mapping,
                    num_windows=5)
    widths = torch.tensor([100, 37, 12, 64])
    images = torch.randn(4, 1, 32, 100)
    frames, lengths, _ = method.project(images, widths)
    assert lengths.tolist() == [frames_for_width(int(w)) for w in widths]
    assert frames.shape[0] == int(lengths.sum())
    per_image = {"all": 1, "window": 5, "frame": None}[mapping]
    instances = pool_instances(frames, lengths, mapping, 5)
    assert instances.shape[0] == (int(lengths.sum()) if per_image is None else 4 * per_image)
    loss, _ = method(images, images.flip(0), widths[[0, 0, 0, 0]])
    assert torch.isfinite(loss)


def test_loss_reaches_every_encoder_module():
    method = SeqCLR(Recognizer(preset="small", decoder="ctc"), head="bilstm")
    images = torch.randn(4, 1, 32, 100)
    method(images, images + 0.1 * torch.randn_like(images))[0].backward()
    for name in ("transformation", "feature_extractor", "sequence_model"):
        grads = [p.grad for p in getattr(method.recognizer, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert sorted({k.split(".")[0] for k in method.encoder_state()}) == [
        "feature_extractor", "sequence_model", "transformation"]


def test_diagnostics_measure_retrieval_collapse_and_per_frame_variance():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([4, 8, 4])
    image = torch.repeat_interleave(torch.arange(3), lengths)
    # Each image's frames run through 4 sign patterns whose sum is 0 and whose outer
    # products sum to 4·I, along 3 orthonormal directions: R's covariance has 3 equal
    # eigenvalues (effective rank 3) and every image mean is 0 (all variance within).
    basis = torch.linalg.qr(torch.randn(16, 3, generator=g))[0].T        # [3, 16]
    signs = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]] * 4,
                         dtype=torch.float)
    rows = signs @ basis
    spread = torch.randn(5, 8, generator=g)
    d = diagnostics(rows, lengths, spread, spread + 1e-3 * torch.randn(5, 8, generator=g))
    assert d["retrieval"] == 1 and d["chance_loss"] == pytest.approx(torch.log(torch.tensor(9.)))
    assert d["rep_rank"] == pytest.approx(3, rel=1e-4)
    assert d["rep_within"] == pytest.approx(1, abs=1e-5)
    # Frames constant along each image: nothing within; a collapsed instance set: std 0
    # and no retrieval better than ties allow.
    constant = torch.randn(3, 16, generator=g)[image]
    point = torch.ones(5, 8)
    d = diagnostics(constant, lengths, point, point)
    assert d["rep_within"] == pytest.approx(0, abs=1e-6)
    assert d["instance_std"] == pytest.approx(0, abs=1e-6)
    assert 1 < d["rep_rank"] <= 2 + 1e-4      # 3 centered image means span 2 directions


# --------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def lmdb(tmp_path_factory, word_lmdb):
    return word_lmdb(tmp_path_factory.mktemp("seqclr") / "words",
                     ["cat", "dog", "Hello", "42", "tree", "ok"] * 2)


def _pretrain(lmdb, run_dir, *extra):
    return main(["pretrain", "--train", lmdb, "--run-dir", str(run_dir), "--iterations", "4",
                 *FAST, *extra])


def test_pretrain_resume_is_exact(lmdb, tmp_path):
    assert _pretrain(lmdb, tmp_path / "full") == 0
    assert _pretrain(lmdb, tmp_path / "split", "--stop-after", "2") == 0
    assert main(["pretrain", "--run-dir", str(tmp_path / "split"), "--resume",
                 "--no-progress"]) == 0
    a = checkpoints.load(tmp_path / "full" / "encoder.pt", checkpoints.KINDS)["encoder_state"]
    b = checkpoints.load(tmp_path / "split" / "encoder.pt", checkpoints.KINDS)["encoder_state"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # The diagnostics are logged with the loss (--log-every 1: every step) and plotted.
    tags = [line.split(",")[2] for line in (tmp_path / "full" / "metrics.csv").open()][1:]
    for tag in ("chance_loss", "retrieval", "instance_std", "rep_rank", "rep_within"):
        assert tags.count(f"train/{tag}") == 4, tag
    assert (tmp_path / "full" / "curves.png").is_file()


def test_diagnostics_are_computed_only_on_logged_steps():
    asked = []

    def method(view_a, view_b, widths, diagnose):
        asked.append(diagnose)
        return view_a.sum(), {}

    batch = Batch(images=torch.zeros(2, 1, 32, 100), widths=None, labels=["a", "b"],
                  readable=torch.ones(2, dtype=torch.bool))
    task = two_view_task(method, make_augment("none"), None, lambda step: None, "cpu",
                         log_every=2)
    for step in range(4):   # the Trainer logs after steps 2 and 4 (items 1 and 3)
        task.loss(method, (step, batch))
    assert asked == [False, True, False, True]


def test_decoder_eval_freezes_the_pretrained_encoder(lmdb, tmp_path, capsys):
    assert _pretrain(lmdb, tmp_path / "pre", "--mapping", "frame", "--head", "mlp") == 0
    encoder = checkpoints.load(tmp_path / "pre" / "encoder.pt", checkpoints.KINDS)["encoder_state"]
    assert main(["decoder-eval", "--encoder", str(tmp_path / "pre" / "encoder.pt"),
                 "--train", lmdb, "--test", lmdb, "--run-dir", str(tmp_path / "eval"),
                 "--decoder", "attention", "--iterations", "3", *FAST]) == 0
    assert "word_accuracy" in capsys.readouterr().out
    model = checkpoints.load(tmp_path / "eval" / "last.pt", checkpoints.KINDS)["model"]
    for k, v in encoder.items():   # weights and BatchNorm statistics unchanged
        assert torch.equal(model[k], v), k
    assert (tmp_path / "eval" / "test_metrics.json").exists()

    assert main(["finetune", "--encoder", str(tmp_path / "pre" / "encoder.pt"), "--train", lmdb,
                 "--run-dir", str(tmp_path / "ft"), "--decoder", "ctc", "--iterations", "2",
                 "--label-fraction", "0.5", *FAST]) == 0
    tuned = checkpoints.load(tmp_path / "ft" / "last.pt", checkpoints.KINDS)["model"]
    assert any(not torch.equal(tuned[k], v) for k, v in encoder.items())


def test_decoder_eval_rejects_a_foreign_checkpoint(lmdb, tmp_path):
    bogus = tmp_path / "bogus.pt"
    checkpoints.save({"model": {}}, bogus, "recognizer")
    with pytest.raises(SystemExit, match="a recognizer checkpoint .*, not a pre-trained encoder"):
        main(["decoder-eval", "--encoder", str(bogus), "--train", lmdb,
              "--run-dir", str(tmp_path / "e"), *FAST])


def test_default_run_prints_the_table(tmp_path, capsys):
    runs = tmp_path / "runs"
    # Options without a subcommand go to the demo, as no arguments do.
    assert main(["--data-dir", str(tmp_path / "data"), "--run-dir", str(runs),
                 "--num-train", "48", "--num-val", "8", "--num-test", "8",
                 "--pretrain-steps", "2", "--eval-steps", "2", "--batch-size", "8",
                 "--label-fraction", "0.25", "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| recognizer | word accuracy |" in out
    assert "| supervised |" in out and "| SeqCLR fine-tuned |" in out
    # Both rows learn from the same 12 labelled images; the fine-tuned one from the encoder.
    subsets = [json.loads((runs / r / "label_subset.json").read_text())["indices"]
               for r in ("supervised", "finetune-seqclr")]
    assert len(subsets[0]) == 12 and subsets[0] == subsets[1]
    assert "encoder" in yaml.safe_load((runs / "finetune-seqclr" / "config.yaml").read_text())


def test_simclr_set_flips_and_crops_sometimes():
    out = make_augment("simclr")(_edge_images(256), None, torch.Generator().manual_seed(0))
    left_bright = out[:, 0, 16, :5].mean(1) > 0
    assert 0.2 < left_bright.float().mean() < 0.8    # flips (and crops) move the edge
    assert out.min() >= -1 and out.max() <= 1
    with pytest.raises(ValueError, match="fixed-size"):
        make_augment("simclr")(_edge_images(2), torch.tensor([100, 50]))


def test_simclr_baseline_pretrains_and_hands_over_its_encoder(lmdb, tmp_path):
    assert _pretrain(lmdb, tmp_path / "simclr", "--method", "simclr", "--representation",
                     "V") == 0
    ckpt = checkpoints.load(tmp_path / "simclr" / "encoder.pt", checkpoints.KINDS)
    assert ckpt["representation"] == "V"
    assert sorted({k.split(".")[0] for k in ckpt["encoder_state"]}) == [
        "feature_extractor", "transformation"]
