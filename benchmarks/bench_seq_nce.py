"""pytest-benchmark suite of seq_nce (DESIGN.md §1) and its nce_rows primitive.

Every case races three implementations on identical inputs:

- ``fused``:    seqclr_ext.ops.seq_nce / nce_rows (the C++/CUDA kernels),
- ``eager``:    seqclr_ext.ops.reference.seq_nce / nce_rows (plain PyTorch, builds the
                2M x 2M similarity matrix),
- ``compiled``: torch.compile(reference), default mode, dynamic=False,

in two modes:

- ``fwd``:     the loss only; inputs without requires_grad, grad mode off,
- ``fwd_bwd``: loss + loss.backward() from fresh leaf inputs each round (new leaves that
               share the input storage, so no gradient or autograd graph survives a round),

on CPU (float32) and CUDA (float32, float16, bfloat16; skipped without a GPU, and the fused
rows skipped where the build has no CUDA kernel). CUDA rounds end with a synchronize.

Cases (instances = rows of the stacked [Z_a; Z_b], i.e. 2M):

- ``window_B256``: 256 images x 26 frames, F=256, mapping="window", T'=5 -> 2,560 instances
- ``frame_B256``:  256 images x 26 frames, F=256, mapping="frame"        -> 13,312 instances
- ``frame_B800``:  800 images x 26 frames, F=256, mapping="frame"        -> 41,600 instances
                   (marked ``slow``; the eager 2M x 2M float32 matrix alone is 6.9 GB)
- ``nce_rows_R2560_C10240``: the primitive in a 4-rank data-parallel shape: 2,560 local
  rows against 4 x 2,560 gathered columns, F=256.

The shared race is benchmarks/harness.py. Each test first runs the callable once, untimed,
to measure its peak memory (this is also the warm-up; torch.compile gets extra warm-up calls first, until its call time settles),
then times ``rounds`` calls with benchmark.pedantic(iterations=1). A case whose estimated
peak memory does not fit (CPU: ``--bench-max-cpu-gb``, default 16 GiB, and the memory
available now; CUDA: the free device memory) is skipped with the estimate in the reason.

extra_info of every result: op, case, impl, mode, device, device_name, dtype, instances,
features, flops (nominal: 2·R·C·F forward, 6·R·C·F forward+backward, with R = C = 2M for
seq_nce — the same count for every implementation), gflop_per_s / tflop_per_s (from the
median), peak_memory_bytes (+ method), eager_peak_memory_estimate_bytes, checksum (the
loss, to see the implementations agree), and, when the eager result of the same case ran earlier in the
session, speedup_vs_eager and memory_ratio_vs_eager. benchmarks/report.py turns the
--benchmark-json file into the table of benchmarks/RESULTS.md.

No timing is asserted anywhere.
"""
import pytest
import torch
from harness import (DEVICE_DTYPES, IMPLS, MODES, implementation, race, skip_unless_fits,
                     skip_unless_runnable, sync)

import seqclr_ext.ops as ops
from seqclr_ext.ops import reference

TEMPERATURE = 0.1
SEED = 0

# Timed rounds per case and device (--bench-rounds overrides). The CPU numbers keep the
# whole CPU suite to minutes on a 2-core machine: the frame cases take seconds a call.
SEQ_NCE_CASES = {
    "window_B256": dict(batch=256, frames=26, features=256, mapping="window", num_windows=5,
                        rounds={"cpu": 10, "cuda": 50}),
    "frame_B256": dict(batch=256, frames=26, features=256, mapping="frame", num_windows=5,
                       rounds={"cpu": 3, "cuda": 20}),
    "frame_B800": dict(batch=800, frames=26, features=256, mapping="frame", num_windows=5,
                       rounds={"cpu": 1, "cuda": 10}),
}
SEQ_NCE_PARAMS = [
    pytest.param(name, id=name, marks=[pytest.mark.slow] if name == "frame_B800" else [])
    for name in SEQ_NCE_CASES
]
NCE_ROWS_CASE = dict(local_rows=2560, ranks=4, features=256, rounds={"cpu": 5, "cuda": 50})



def _race(benchmark, *, op, case, impl, mode, device, dtype, rows, cols, features, rounds,
          setup, target, eager_estimate, fixtures, info):
    """The harness's race, with the nominal flop count and eager's estimated peak."""
    skip_unless_fits(eager_estimate if impl != "fused" else 0, device,
                     fixtures["bench_options"], fixtures["memory_available"])
    flops = (6 if mode == "fwd_bwd" else 2) * rows * cols * features

    def rates(median):
        out = {"gflop_per_s": flops / median / 1e9}
        if torch.device(device).type == "cuda":
            out["tflop_per_s"] = flops / median / 1e12
        return out

    race(benchmark, op=op, case=case, impl=impl, mode=mode, device=device, dtype=dtype,
         rounds=rounds, setup=setup, target=target, fixtures=fixtures, rates=rates,
         info=dict(info, features=features, flops=flops,
                   eager_peak_memory_estimate_bytes=int(eager_estimate)))


# --------------------------------------------------------------------------- seq_nce

def _seq_nce_inputs(case, device, dtype):
    """Two packed views of the same frames (view b = view a + noise), identical for every
    implementation: generated from a fixed seed in float32 on the CPU, then converted."""
    c = SEQ_NCE_CASES[case]
    total = c["batch"] * c["frames"]
    g = torch.Generator().manual_seed(SEED)
    frames_a = torch.randn(total, c["features"], generator=g)
    frames_b = frames_a + 0.5 * torch.randn(total, c["features"], generator=g)
    lengths = torch.full((c["batch"],), c["frames"], dtype=torch.long)
    return (frames_a.to(device, dtype), frames_b.to(device, dtype), lengths.to(device))


def _seq_nce_instances(case):
    c = SEQ_NCE_CASES[case]
    per_image = c["frames"] if c["mapping"] == "frame" else (
        1 if c["mapping"] == "all" else c["num_windows"])
    return 2 * c["batch"] * per_image


def _eager_estimate(rows, cols, dtype, mode):
    """Peak bytes of the eager reference (torch.compile's is taken as the same bound): the
    logits plus one more R x C buffer forward (matmul result / scaled logits / log-softmax),
    one more again forward+backward (log-softmax output saved for backward, its gradient
    and the logits' gradient); measured on CPU at 2,560 and 13,312 instances: 2.0x and 3.0x."""
    elem = torch.empty((), dtype=dtype).element_size()
    return (3 if mode == "fwd_bwd" else 2) * rows * cols * elem


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", SEQ_NCE_PARAMS)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_seq_nce(benchmark, case, mode, impl, device, dtype, bench_options, device_name,
                 peak_memory, memory_available):
    skip_unless_runnable(impl, "seq_nce", device)
    c = SEQ_NCE_CASES[case]
    instances = _seq_nce_instances(case)
    frames_a, frames_b, lengths = _seq_nce_inputs(case, device, dtype)
    fn = implementation(impl, ops.seq_nce, reference.seq_nce)
    backward = mode == "fwd_bwd"

    def setup():
        # Fresh leaves each round (sharing the inputs' storage): no .grad and no autograd
        # graph carries over from one round to the next.
        return (frames_a.detach().requires_grad_(backward),
                frames_b.detach().requires_grad_(backward)), {}

    def target(a, b):
        with torch.set_grad_enabled(backward):
            loss = fn(a, b, lengths, mapping=c["mapping"], num_windows=c["num_windows"],
                      temperature=TEMPERATURE)
            if backward:
                loss.backward()
        sync(device)
        return loss.detach()

    _race(
        benchmark, op="seq_nce", case=case, impl=impl, mode=mode, device=device, dtype=dtype,
        rows=instances, cols=instances, features=c["features"], rounds=c["rounds"],
        setup=setup, target=target,
        eager_estimate=_eager_estimate(instances, instances, dtype, mode),
        fixtures=dict(bench_options=bench_options, device_name=device_name,
                      peak_memory=peak_memory, memory_available=memory_available),
        info=dict(instances=instances, batch=c["batch"], frames=c["frames"],
                  mapping=c["mapping"], num_windows=c["num_windows"],
                  temperature=TEMPERATURE))


# --------------------------------------------------------------------------- nce_rows

def _nce_rows_inputs(device, dtype):
    """Rank 0 of a 4-rank all-gather: local rows = [Z_a; Z_b] of its 1,280 instances per
    view (L2-normalized), columns = the 4 ranks' rows gathered (rank 0's first). Row r's
    positive is its twin (r ± 1,280) and its excluded column is its own copy (r)."""
    c = NCE_ROWS_CASE
    R, C, F = c["local_rows"], c["local_rows"] * c["ranks"], c["features"]
    g = torch.Generator().manual_seed(SEED)
    cols = torch.nn.functional.normalize(torch.randn(C, F, generator=g), dim=1)
    rows = cols[:R].clone()
    r = torch.arange(R)
    positive = (r + R // 2) % R
    exclude = r.clone()
    return (rows.to(device, dtype), cols.to(device, dtype), positive.to(device),
            exclude.to(device))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_nce_rows(benchmark, mode, impl, device, dtype, bench_options, device_name,
                  peak_memory, memory_available):
    skip_unless_runnable(impl, "nce_rows", device)
    c = NCE_ROWS_CASE
    R, C = c["local_rows"], c["local_rows"] * c["ranks"]
    rows, cols, positive, exclude = _nce_rows_inputs(device, dtype)
    fn = implementation(impl, ops.nce_rows, reference.nce_rows)
    backward = mode == "fwd_bwd"

    def setup():
        # Gradients flow to the local rows and to the gathered columns (as with a
        # differentiable all_gather).
        return (rows.detach().requires_grad_(backward),
                cols.detach().requires_grad_(backward)), {}

    def target(q, k):
        with torch.set_grad_enabled(backward):
            loss = fn(q, k, positive, exclude, temperature=TEMPERATURE).mean()
            if backward:
                loss.backward()
        sync(device)
        return loss.detach()

    case = f"nce_rows_R{R}_C{C}"
    _race(
        benchmark, op="nce_rows", case=case, impl=impl, mode=mode, device=device,
        dtype=dtype, rows=R, cols=C, features=c["features"], rounds=c["rounds"],
        setup=setup, target=target, eager_estimate=_eager_estimate(R, C, dtype, mode),
        fixtures=dict(bench_options=bench_options, device_name=device_name,
                      peak_memory=peak_memory, memory_available=memory_available),
        info=dict(instances=R, columns=C, ranks=c["ranks"], temperature=TEMPERATURE))
