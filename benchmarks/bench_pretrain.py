"""pytest-benchmark suite: SeqCLR pre-training throughput, fused ops vs the references.

One optimizer step of SeqCLR pre-training as ``python -m seqclr_ext.train pretrain`` takes
it (window-to-instance mapping, T' = 5, R = H, BiLSTM projection head, TPS stage): two
augmented views of the batch (SeqCLR's augmentations, on the device), the encoder and the
head on both, seq_nce, backward, gradient clipping at 5 and the AdaDelta step (lr 10).
Two implementations:

- ``fused``: the package as built: tps_grid_sample and seq_nce run the C++/CUDA kernels,
- ``eager``: the same run with SEQCLR_EXT_REFERENCE=1: every op runs its plain-PyTorch
  reference (seqclr_ext.ops.reference), as in the other suites' ``eager`` rows.

The ``eager`` rows run in this process with ``seqclr_ext.ops.USE_REFERENCE`` set: the op
wrappers read it at every call, and that is all SEQCLR_EXT_REFERENCE=1 changes besides not
loading the compiled library. So that the rows are what they claim, each case first runs
one step recording the seqclr_ext operators it dispatches (extra_info ``seqclr_ext_ops``)
and fails if the eager step dispatches any or the fused step misses one.

Cases:

- ``paper_B256``: the paper's recognizer sizes, batch 256, CUDA (skipped without a GPU),
- ``small_B64``: the small preset, batch 64, CPU.

The model (weights from a fixed seed), optimizer and images (uniform noise, 1 x 32 x 100:
a step's cost does not depend on the pixels) are the same for both implementations, and
every round takes the views from the same seed, so the two start from the same weights and
see the same views; checksum (the loss of the first measured step) agrees between them.
Each timed round trains the same model one step further.

extra_info: images_per_s (batch / median step time), instances (2M of seq_nce),
peak_memory_bytes (what one step adds to the model and its optimizer state: activations,
gradients, temporaries), device_name, seqclr_ext_ops and the
harness's fields; speedup_vs_eager and memory_ratio_vs_eager compare the two rows.
benchmarks/report.py turns the --benchmark-json file into the table of RESULTS.md.

    pytest benchmarks/bench_pretrain.py [-k cpu] --benchmark-json=pretrain.json

No timing is asserted anywhere.
"""
import pytest
import torch
from harness import needs_cuda, race, skip_unless_runnable, sync
from torch.utils._python_dispatch import TorchDispatchMode

import seqclr_ext.ops as ops
from seqclr_ext.data import Charset
from seqclr_ext.data.augment import make_augment
from seqclr_ext.methods import SeqCLR
from seqclr_ext.models import Recognizer, RecognizerConfig
from seqclr_ext.train import make_optimizer

SEED = 0
NUM_WINDOWS = 5
FUSED_OPS = ["seqclr_ext::seq_nce", "seqclr_ext::seq_nce_backward",
             "seqclr_ext::tps_grid_sample", "seqclr_ext::tps_grid_sample_backward"]
# pretrain's defaults (SeqCLR Appendix D): AdaDelta, lr 10, gradient norm clipped at 5.
OPTIMIZER = dict(lr=10.0, rho=0.95, eps=1e-8, weight_decay=1e-4)
GRAD_CLIP = 5.0

CASES = {
    "paper_B256": dict(preset="paper", batch=256, device="cuda", rounds=20),
    "small_B64": dict(preset="small", batch=64, device="cpu", rounds=5),
}
PARAMS = [pytest.param(name, id=f"{c['device']}-{name}",
                       marks=[needs_cuda] if c["device"] == "cuda" else [])
          for name, c in CASES.items()]


class _OpsSeen(TorchDispatchMode):
    """Records the seqclr_ext operators dispatched while active (backward ones included)."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "seqclr_ext":
            self.ops.add(func.name())
        return func(*args, **(kwargs or {}))


def _pretraining(case):
    """-> step(images, generator): one SeqCLR pre-training step on a fresh model."""
    c = CASES[case]
    torch.manual_seed(SEED)
    recognizer = Recognizer(RecognizerConfig(num_chars=len(Charset.printable()),
                                             preset=c["preset"]))
    method = SeqCLR(recognizer, representation="H", head="bilstm", mapping="window",
                    num_windows=NUM_WINDOWS).to(c["device"]).train()
    optimizer = make_optimizer(method.parameters(), OPTIMIZER)
    augment = make_augment("seqclr")

    def step(images, generator):
        views = [augment(images, None, generator) for _ in range(2)]
        loss = method.loss(*views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), GRAD_CLIP)
        optimizer.step()
        sync(c["device"])
        return loss.detach()

    return step


@pytest.mark.parametrize("impl", ["eager", "fused"])
@pytest.mark.parametrize("case", PARAMS)
def test_pretrain_step(benchmark, case, impl, monkeypatch, bench_options, device_name,
                       peak_memory):
    c = CASES[case]
    device = c["device"]
    for op in ("seq_nce", "tps_grid_sample"):
        skip_unless_runnable(impl, op, device)
    if impl == "eager":
        monkeypatch.setattr(ops, "USE_REFERENCE", True)
    step = _pretraining(case)
    g = torch.Generator().manual_seed(SEED)
    images = (torch.rand(c["batch"], 1, 32, 100, generator=g) * 2 - 1).to(device)

    def setup():
        return (images, torch.Generator(device).manual_seed(SEED)), {}

    with _OpsSeen() as seen:
        step(*setup()[0])
    expected = [] if impl == "eager" else FUSED_OPS
    if sorted(seen.ops) != expected:
        pytest.fail(f"the {impl} step dispatched {sorted(seen.ops)}, expected {expected}")

    race(benchmark, op="pretrain", case=case, impl=impl, mode="train_step", device=device,
         dtype=torch.float32, rounds={device: c["rounds"]}, setup=setup, target=step,
         fixtures=dict(bench_options=bench_options, device_name=device_name,
                       peak_memory=peak_memory),
         info=dict(preset=c["preset"], batch=c["batch"], mapping="window",
                   num_windows=NUM_WINDOWS, instances=2 * c["batch"] * NUM_WINDOWS,
                   seqclr_ext_ops=sorted(seen.ops)),
         rates=lambda median: {"images_per_s": c["batch"] / median})
