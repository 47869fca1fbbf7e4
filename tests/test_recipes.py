"""Optimizers, lr schedules and recipes of the training CLI: which options a recipe sets,
the lr at given steps, and the fast recipe's learning on a fixed batch."""
import math

import pytest
import torch
from PIL import Image

from seqclr_ext.data import Charset, RecognitionCollate, write_lmdb
from seqclr_ext.models import Recognizer, RecognizerConfig
from seqclr_ext.train import lr_factor, make_optimizer, make_scheduler
from seqclr_ext.train.commands import parse
from seqclr_ext.train.options import RECOGNIZER_RECIPES
from seqclr_ext.train.pretrain import CONTRASTIVE_RECIPES, SIMAN_RECIPES

SUPERVISED = ["supervised", "--train", "x.lmdb", "--run-dir", "r"]
PRETRAIN = ["pretrain", "--train", "x.lmdb", "--run-dir", "r"]


@pytest.fixture(autouse=True)
def _in_a_folder_with_x_lmdb(tmp_path, monkeypatch):
    """parse() checks that --train is an LMDB."""
    write_lmdb(tmp_path / "x.lmdb", [(Image.new("L", (8, 8)), "w")])
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("recipe", ["paper", "fast"])
def test_recipe_fills_unset_options(recipe):
    c = parse([*SUPERVISED, "--recipe", recipe])
    for key, value in RECOGNIZER_RECIPES[recipe].items():
        assert c[key] == value, key
    assert parse([*PRETRAIN, "--recipe", recipe])["lr"] == CONTRASTIVE_RECIPES[recipe]["lr"]
    siman = parse([*PRETRAIN, "--recipe", recipe, "--method", "siman"])
    assert (siman["lr"], siman["batch_size"]) == (SIMAN_RECIPES[recipe]["lr"],
                                                  SIMAN_RECIPES[recipe]["batch_size"])


def test_paper_recipe_is_appendix_d():
    c = parse([*SUPERVISED, "--recipe", "paper"])
    assert (c["optimizer"], c["lr"], c["schedule"], c["lr_milestones"]) == (
        "adadelta", 1.0, "step", [0.6, 0.8])
    p = parse([*PRETRAIN, "--recipe", "paper"])
    assert (p["optimizer"], p["lr"], p["batch_size"]) == ("adadelta", 10.0, 1024)


def test_options_given_win_over_the_recipe(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.5\nschedule: cosine\n")
    c = parse([*SUPERVISED, "--recipe", "paper", "--config", str(cfg), "--schedule", "step",
               "--optimizer", "adam"])
    assert (c["lr"], c["schedule"], c["optimizer"]) == (0.5, "step", "adam")
    assert c["weight_decay"] == RECOGNIZER_RECIPES["paper"]["weight_decay"]


def _cfg(schedule, **kw):
    return dict(iterations=100, schedule=schedule, warmup=0.0, lr_milestones=[0.6, 0.8],
                lr_gamma=0.1, **kw)


def test_step_schedule():
    cfg = _cfg("step")
    assert [lr_factor(s, cfg) for s in (0, 59, 60, 79, 80, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = _cfg("step") | {"warmup": 0.1}
    assert [lr_factor(s, warm) for s in (0, 4, 9, 10)] == pytest.approx([0.1, 0.5, 1, 1])


def test_cosine_schedule():
    cfg = _cfg("cosine") | {"warmup": 0.1}
    assert lr_factor(0, cfg) == pytest.approx(0.1)        # linear warmup over 10 steps
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)       # then half a cosine ...
    mid = 10 + (99 - 10) / 2
    assert lr_factor(int(mid), cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 44 / 89)))
    assert lr_factor(99, cfg) == pytest.approx(0.0, abs=1e-12)   # ... to 0 at the last step


def test_onecycle_schedule_matches_torch():
    """PARSeq's one-cycle = torch's OneCycleLR (cosine, no momentum cycling), stepped the
    same number of times."""
    cfg = _cfg("onecycle") | {"warmup": 0.2}
    param = torch.nn.Parameter(torch.zeros(1))
    reference = torch.optim.lr_scheduler.OneCycleLR(
        torch.optim.SGD([param], lr=1.0), max_lr=1.0, total_steps=100, pct_start=0.2,
        cycle_momentum=False)
    expected = []
    for _ in range(100):
        expected.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    assert [lr_factor(s, cfg) for s in range(100)] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name,kind", [("adadelta", torch.optim.Adadelta),
                                       ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizer_and_scheduler(name, kind):
    param = torch.nn.Parameter(torch.ones(3))
    cfg = _cfg("cosine") | dict(optimizer=name, lr=0.2, weight_decay=0.01, rho=0.95, eps=1e-8)
    opt = make_optimizer([param], cfg)
    assert type(opt) is kind and opt.param_groups[0]["weight_decay"] == 0.01
    sched = make_scheduler(opt, cfg)
    for _ in range(30):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * lr_factor(30, cfg))
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer([param], cfg | {"optimizer": "sgd"})


def test_fast_recipe_learns_a_fixed_batch():
    """The fast recipe with the default recognizer (TPS, BiLSTM, decoder reading H and V)
    fits one batch of rendered words: the CTC loss falls at least 10-fold in 80 steps."""
    from seqclr_ext.data.render import make_sample
    import io
    from PIL import Image
    torch.manual_seed(0)
    charset = Charset.printable()
    samples = [make_sample("scene-train", i, seed=0)[:2] for i in range(8)]
    batch = RecognitionCollate(charset)([(Image.open(io.BytesIO(png)), label)
                                         for png, label in samples])
    model = Recognizer(RecognizerConfig(num_chars=len(charset), preset="small", decoder="ctc"))
    cfg = dict(RECOGNIZER_RECIPES["fast"], iterations=80, rho=0.95, eps=1e-8)
    opt = make_optimizer(model.parameters(), cfg)
    sched = make_scheduler(opt, cfg)
    losses = []
    for _ in range(cfg["iterations"]):
        loss = model(batch.images, None, batch.targets, batch.target_lengths)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 / 10, losses
