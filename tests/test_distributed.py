"""Distributed training on CPU with the gloo backend (2 processes under torchrun): the
contrastive loss with every rank's negatives is the 1-process loss of the global batch
(value, input gradients, DistributedDataParallel parameter gradients), the sampler shards
the global batches resumably, and ``torchrun -m seqclr_ext.train pretrain`` runs end to
end with checkpoints a 1-process run resumes.

Run as a script (``torchrun ... test_distributed.py OUT``), this file is the worker: each
rank saves what it computed on its share of the global batch to OUT/rank<r>.pt.
"""
import itertools
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from seqclr_ext import checkpoints
from seqclr_ext.data import ResumableBatchSampler
from seqclr_ext.methods import SeqCLR, SimCLR
from seqclr_ext.methods.contrastive import contrastive_loss
from seqclr_ext.models import Recognizer
from seqclr_ext.ops import reference
from seqclr_ext.ops.seq_nce import pool_instances
from seqclr_ext.train import distributed
from seqclr_ext.train.cli import main

WORLD = 2
TEMPERATURE = 0.5
# Packed frames through a Linear model; ragged lengths, T < T' included. Under "frame"
# the two ranks hold 11 and 7 instances per view.
FRAME_CASES = {"window": dict(mapping="window", num_windows=3, lengths=[5, 1, 2, 7, 3, 4]),
               "frame": dict(mapping="frame", num_windows=1, lengths=[4, 1, 6, 2, 3, 2])}
# Whole methods on a small recognizer (eval mode: BatchNorm uses its running statistics,
# so the per-rank forward equals the global one image by image).
MODEL_CASES = ("seqclr", "simclr")


def _frames_case(name):
    """(inputs of view a, of view b [total, 8], lengths [N], Linear model), float64."""
    g = torch.Generator().manual_seed(len(name))
    lengths = torch.tensor(FRAME_CASES[name]["lengths"])
    x_a, x_b = (torch.randn(int(lengths.sum()), 8, generator=g, dtype=torch.float64)
                for _ in range(2))
    torch.manual_seed(0)
    return x_a, x_b, lengths, torch.nn.Linear(8, 6, dtype=torch.float64)


def _model_case(name):
    """(method, view a, view b [4, 1, 32, 100], widths or None), float64."""
    torch.manual_seed(0)
    recognizer = Recognizer(preset="small", tps=False, decoder="ctc")
    if name == "seqclr":
        method, widths = SeqCLR(recognizer, mapping="window", num_windows=3,
                                temperature=TEMPERATURE), torch.tensor([100, 37, 64, 12])
    else:
        method, widths = SimCLR(recognizer, representation="V", temperature=TEMPERATURE), None
    views = torch.randn(2, 4, 1, 32, 100, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)
    return method.double().eval(), views[0], views[1], widths


def _frames_loss(model, x_a, x_b, lengths, name):
    frames = model(torch.cat([x_a, x_b]))
    case = FRAME_CASES[name]
    return contrastive_loss(*frames.split(x_a.shape[0]), lengths, mapping=case["mapping"],
                            num_windows=case["num_windows"], temperature=TEMPERATURE)


def _param_grads(model):
    return {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


def _backward_twice(module, loss_of, inputs):
    """Wraps ``module`` in DDP as the Trainer does and runs two backward passes (static_graph
    averages gradients differently in the first, recording, iteration); -> the loss."""
    ddp = DistributedDataParallel(module, static_graph=True)
    for _ in range(2):
        for x in (*inputs, *module.parameters()):
            x.grad = None
        loss = loss_of(ddp)
        loss.backward()
    return loss


def _worker(out):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {}
    for name in FRAME_CASES:
        x_a, x_b, lengths, model = _frames_case(name)
        mine = slice(rank * len(lengths) // WORLD, (rank + 1) * len(lengths) // WORLD)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        rows = slice(int(offsets[mine.start]), int(offsets[mine.stop]))
        x_a, x_b = (x[rows].clone().requires_grad_() for x in (x_a, x_b))
        loss = _backward_twice(model, lambda ddp: _frames_loss(ddp, x_a, x_b, lengths[mine], name),
                               (x_a, x_b))
        results[name] = {"loss": distributed.mean(loss), "grad_a": x_a.grad,
                         "grad_b": x_b.grad, "params": _param_grads(model)}
    for name in MODEL_CASES:
        method, view_a, view_b, widths = _model_case(name)
        mine = slice(rank * 2, rank * 2 + 2)
        loss = _backward_twice(method, lambda ddp: ddp(
            view_a[mine], view_b[mine], None if widths is None else widths[mine])[0], ())
        results[name] = {"loss": distributed.mean(loss), "params": _param_grads(method)}
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _torchrun(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(WORLD), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, subprocess_env):
    """What each rank of a 2-process run of _worker computed."""
    out = tmp_path_factory.mktemp("ranks")
    proc = _torchrun([__file__, str(out)], subprocess_env, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12, msg=what)


@pytest.mark.parametrize("name", FRAME_CASES)
def test_gathered_loss_and_gradients_equal_one_process(ranks, name):
    x_a, x_b, lengths, model = _frames_case(name)
    x_a.requires_grad_(), x_b.requires_grad_()
    case = FRAME_CASES[name]
    frames = model(torch.cat([x_a, x_b]))
    loss = reference.seq_nce(*frames.split(x_a.shape[0]), lengths, mapping=case["mapping"],
                             num_windows=case["num_windows"], temperature=TEMPERATURE)
    loss.backward()
    for r, got in enumerate(ranks):
        _close(got[name]["loss"], loss.detach(), f"loss, rank {r}")
        for k, grad in _param_grads(model).items():   # after DDP's average over ranks
            _close(got[name]["params"][k], grad, f"grad {k}, rank {r}")
    # Input gradients: world size x those of the global loss, in rank order.
    for grad, key in ((x_a.grad, "grad_a"), (x_b.grad, "grad_b")):
        _close(torch.cat([got[name][key] for got in ranks]) / WORLD, grad, key)


@pytest.mark.parametrize("name", MODEL_CASES)
def test_ddp_method_equals_one_process(ranks, name):
    method, view_a, view_b, widths = _model_case(name)
    loss, _ = method(view_a, view_b, widths)     # one process: the fused seq_nce
    loss.backward()
    expected = _param_grads(method)
    for r, got in enumerate(ranks):
        _close(got[name]["loss"], loss.detach(), f"loss, rank {r}")
        assert got[name]["params"].keys() == expected.keys()
        for k, grad in expected.items():
            _close(got[name]["params"][k], grad, f"grad {k}, rank {r}")


@pytest.mark.parametrize("mapping", ["all", "window", "frame"])
def test_pool_instances_is_adaptive_avg_pool(mapping):
    """The vectorized mapping against its definition: one frame per instance, or
    adaptive_avg_pool1d of every image's frames."""
    lengths = torch.tensor([1, 2, 3, 4, 5, 11, 7])
    frames = torch.randn(int(lengths.sum()), 6, dtype=torch.float64)
    windows = {"all": 1, "window": 4}.get(mapping)
    want = frames if windows is None else torch.cat([
        torch.nn.functional.adaptive_avg_pool1d(seq.t()[None], windows)[0].t()
        for seq in frames.split(lengths.tolist())])
    _close(pool_instances(frames, lengths, mapping, 4), want, mapping)


def test_sampler_shards_are_the_global_batches():
    full = list(itertools.islice(iter(ResumableBatchSampler(10, 4, seed=1, start=6)), 5))
    shards = [list(itertools.islice(iter(ResumableBatchSampler(
        10, 4, seed=1, start=6, rank=r, world_size=2)), 5)) for r in range(2)]
    assert [a + b for a, b in zip(*shards)] == full
    with pytest.raises(ValueError, match="multiple of world_size 3"):
        ResumableBatchSampler(10, 4, seed=1, world_size=3)


def test_torchrun_pretrain_then_resume_in_one_process(tmp_path, subprocess_env, word_lmdb):
    """With bf16 autocast (frames in bf16, the gathered loss in float32)."""
    lmdb = word_lmdb(tmp_path / "words", ["cat", "dog", "Hello", "42", "tree", "ok"])
    run = tmp_path / "run"
    proc = _torchrun(["-m", "seqclr_ext.train", "pretrain", "--train", lmdb,
                      "--run-dir", str(run), "--iterations", "3", "--stop-after", "2",
                      "--device", "cpu",
                      "--preset", "small", "--batch-size", "4", "--workers", "0",
                      "--no-progress", "--log-every", "1", "--no-tensorboard", "--amp", "bf16"],
                     subprocess_env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("stopped after step 2") == 1   # rank 0 alone reports
    assert (run / "encoder.pt").is_file()
    ckpt = checkpoints.load(run / "last.pt", checkpoints.KINDS)
    assert ckpt["step"] == 2 and ckpt["data"] == {"consumed_batches": 2}
    assert not any(k.startswith("module.") for k in ckpt["model"])
    losses = [r for r in (run / "metrics.csv").read_text().splitlines() if ",train/loss," in r]
    assert [r.split(",")[0] for r in losses] == ["1", "2"]    # written once, by rank 0
    # The checkpoint continues in one process.
    assert main(["pretrain", "--run-dir", str(run), "--resume"]) == 0
    assert checkpoints.load(run / "last.pt", checkpoints.KINDS)["step"] == 3


if __name__ == "__main__":
    _worker(sys.argv[1])
