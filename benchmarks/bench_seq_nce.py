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

Each test first runs the callable once, untimed, to measure its peak memory (this is also
the warm-up; torch.compile gets extra warm-up calls first, until its call time settles),
then times ``rounds`` calls with benchmark.pedantic(iterations=1). A case whose estimated
peak memory does not fit (CPU: ``--bench-max-cpu-gb``, default 16 GiB, and the memory
available now; CUDA: the free device memory) is skipped with the estimate in the reason.

extra_info of every result: op, case, impl, mode, device, device_name, dtype, instances,
features, flops (nominal: 2·R·C·F forward, 6·R·C·F forward+backward, with R = C = 2M for
seq_nce — the same count for every implementation), gflop_per_s / tflop_per_s (from the
median), peak_memory_bytes (+ method), eager_peak_memory_estimate_bytes, loss (to see the
implementations agree), and, when the eager result of the same case ran earlier in the
session, speedup_vs_eager and memory_ratio_vs_eager. benchmarks/report.py turns the
--benchmark-json file into the table of benchmarks/RESULTS.md.

No timing is asserted anywhere.
"""
import time

import pytest
import torch

import seqclr_ext.ops as ops
from seqclr_ext.ops import reference

TEMPERATURE = 0.1
SEED = 0

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="CUDA is not available")

DEVICE_DTYPES = [
    pytest.param("cpu", torch.float32, id="cpu-float32"),
    pytest.param("cuda", torch.float32, id="cuda-float32", marks=needs_cuda),
    pytest.param("cuda", torch.float16, id="cuda-float16", marks=needs_cuda),
    pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=needs_cuda),
]
MODES = ["fwd", "fwd_bwd"]
IMPLS = ["eager", "compiled", "fused"]

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

# Results of the eager implementation, by (op, case, mode, device, dtype), so later results
# of the same case can record their speed-up and memory ratio (report.py recomputes both
# from the JSON whatever the order).
_EAGER = {}


# --------------------------------------------------------------------------- helpers

def _seq_nce_fn(impl):
    if impl == "fused":
        return ops.seq_nce
    if impl == "eager":
        return reference.seq_nce
    torch._dynamo.reset()
    return torch.compile(reference.seq_nce, dynamic=False)


def _nce_rows_fn(impl):
    if impl == "fused":
        return ops.nce_rows
    if impl == "eager":
        return reference.nce_rows
    torch._dynamo.reset()
    return torch.compile(reference.nce_rows, dynamic=False)


def _has_kernel(op, device):
    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"seqclr_ext::{op}", key)


def _skip_unless_fused_available(impl, op, device):
    if impl != "fused":
        return
    if ops.USE_REFERENCE:
        pytest.skip("SEQCLR_EXT_REFERENCE=1: the fused op would run the reference")
    if not _has_kernel(op, device):
        pytest.skip(f"this build of seqclr_ext has no {device.upper()} kernel of {op}")


def _skip_unless_compilable(impl, device):
    if impl != "compiled" or torch.device(device).type != "cuda":
        return
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # pragma: no cover - older torch
        return
    if not has_triton():
        pytest.skip("torch.compile on CUDA needs Triton, which is not installed")


def _skip_unless_fits(estimate, device, bench_options, memory_available):
    gib = 2**30
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        if estimate > 0.9 * free:
            pytest.skip(f"estimated peak {estimate / gib:.1f} GiB exceeds 90% of the "
                        f"{free / gib:.1f} GiB free on the GPU")
        return
    limit = bench_options["max_cpu_bytes"]
    if estimate > limit:
        pytest.skip(f"estimated peak {estimate / gib:.1f} GiB exceeds --bench-max-cpu-gb="
                    f"{limit / gib:g}")
    available = memory_available()
    if available is not None and estimate > available - 2 * gib:
        pytest.skip(f"estimated peak {estimate / gib:.1f} GiB exceeds the "
                    f"{available / gib:.1f} GiB available now less 2 GiB")


def _warm_compiled(call):
    """Call a torch.compile'd callable until its call time settles (the first call compiles;
    the next ones can still be slow while inductor finishes). Returns the seconds spent."""
    start = time.perf_counter()
    previous = None
    for _ in range(6):
        t0 = time.perf_counter()
        call()
        dt = time.perf_counter() - t0
        if previous is not None and dt < 1.5 * previous:
            break
        previous = dt
    return time.perf_counter() - start


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _run_benchmark(benchmark, *, op, case, impl, mode, device, dtype, rows, cols, features,
                   rounds, setup, target, eager_estimate, bench_options, device_name,
                   peak_memory, memory_available, info):
    _skip_unless_compilable(impl, device)
    estimate = eager_estimate if impl != "fused" else 0
    _skip_unless_fits(estimate, device, bench_options, memory_available)

    def one_call():
        args, _ = setup()
        return target(*args)

    extra = {}
    if impl == "compiled":
        extra["compile_warmup_s"] = round(_warm_compiled(one_call), 3)
    losses = []
    peak, method = peak_memory(lambda: losses.append(one_call()), device)

    dev = torch.device(device).type
    rounds = bench_options["rounds"] or rounds[dev]
    benchmark.group = f"{op}[{case}] {mode} {device} {str(dtype).removeprefix('torch.')}"
    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1,
                       warmup_rounds=2 if dev == "cuda" else (1 if rounds >= 5 else 0))

    flops = (6 if mode == "fwd_bwd" else 2) * rows * cols * features
    key = (op, case, mode, device, str(dtype))
    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    extra.update(info)
    extra.update(
        op=op, case=case, impl=impl, mode=mode, device=device, device_name=device_name(device),
        dtype=str(dtype).removeprefix("torch."), features=features, flops=flops,
        peak_memory_bytes=int(peak), peak_memory_method=method,
        eager_peak_memory_estimate_bytes=int(eager_estimate),
        loss=float(losses[0]), torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
    )
    if median:
        extra["gflop_per_s"] = flops / median / 1e9
        if dev == "cuda":
            extra["tflop_per_s"] = flops / median / 1e12
    if impl == "eager":
        _EAGER[key] = (median, peak)
    elif key in _EAGER:
        eager_median, eager_peak = _EAGER[key]
        if median and eager_median:
            extra["speedup_vs_eager"] = eager_median / median
        if peak and eager_peak:
            extra["memory_ratio_vs_eager"] = eager_peak / peak
    benchmark.extra_info.update(extra)


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
    _skip_unless_fused_available(impl, "seq_nce", device)
    c = SEQ_NCE_CASES[case]
    instances = _seq_nce_instances(case)
    frames_a, frames_b, lengths = _seq_nce_inputs(case, device, dtype)
    fn = _seq_nce_fn(impl)
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
        _sync(device)
        return loss.detach()

    _run_benchmark(
        benchmark, op="seq_nce", case=case, impl=impl, mode=mode, device=device, dtype=dtype,
        rows=instances, cols=instances, features=c["features"], rounds=c["rounds"],
        setup=setup, target=target,
        eager_estimate=_eager_estimate(instances, instances, dtype, mode),
        bench_options=bench_options, device_name=device_name, peak_memory=peak_memory,
        memory_available=memory_available,
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
    _skip_unless_fused_available(impl, "nce_rows", device)
    c = NCE_ROWS_CASE
    R, C = c["local_rows"], c["local_rows"] * c["ranks"]
    rows, cols, positive, exclude = _nce_rows_inputs(device, dtype)
    fn = _nce_rows_fn(impl)
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
        _sync(device)
        return loss.detach()

    case = f"nce_rows_R{R}_C{C}"
    _run_benchmark(
        benchmark, op="nce_rows", case=case, impl=impl, mode=mode, device=device,
        dtype=dtype, rows=R, cols=C, features=c["features"], rounds=c["rounds"],
        setup=setup, target=target, eager_estimate=_eager_estimate(R, C, dtype, mode),
        bench_options=bench_options, device_name=device_name, peak_memory=peak_memory,
        memory_available=memory_available,
        info=dict(instances=R, columns=C, ranks=c["ranks"], temperature=TEMPERATURE))
