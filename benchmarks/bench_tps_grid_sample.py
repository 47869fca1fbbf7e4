"""pytest-benchmark suite of tps_grid_sample (DESIGN.md §2).

Every case races three implementations on identical inputs:

- ``fused``:    seqclr_ext.ops.tps_grid_sample (the C++/CUDA kernels: per-pixel P̂ · T and
                bilinear sample in place, no grid tensor),
- ``eager``:    seqclr_ext.ops.reference.tps_grid_sample (plain PyTorch: P̂ [n, K+3], the
                [B, H_out, W_out, 2] grid by matmul, then F.grid_sample),
- ``compiled``: torch.compile(reference), default mode, dynamic=False,

in two modes:

- ``fwd``:     the warped images only; inputs without requires_grad, grad mode off,
- ``fwd_bwd``: warp + backward of out.sum() to the image and the control points, from fresh
               leaf inputs each round (as in TPS rectification: the image's gradient flows
               to the features upstream, the control points' to the localization network),

on CPU (float32) and CUDA (float32, float16, bfloat16; skipped without a GPU, and the fused
rows skipped where the build has no CUDA kernel). CUDA rounds end with a synchronize.

Cases (B = 256, output size = input size, K = 20 control points near the base points):

- ``B256_1x32x100``: 256 grey 32 x 100 images (the recognizer's input),
- ``B256_3x64x256``: 256 colour 64 x 256 images.

The untimed first call measures the peak memory (and warms up; torch.compile gets extra
warm-up calls until its call time settles), then ``rounds`` calls are timed with
benchmark.pedantic(iterations=1). extra_info: op, case, impl, mode, device, device_name,
dtype, batch, channels, height, width, num_points, bytes (nominal traffic: the image read
and the output written, doubled forward+backward), gb_per_s (from the median),
peak_memory_bytes (+ method), torch_version, torch_threads, checksum (to see the
implementations agree) and, when the eager result of the same case ran earlier,
speedup_vs_eager and memory_ratio_vs_eager.

No timing is asserted anywhere.
"""
import time

import pytest
import torch

import seqclr_ext.ops as ops
from seqclr_ext.ops import reference

SEED = 0
NUM_POINTS = 20

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
CASES = {
    "B256_1x32x100": dict(batch=256, channels=1, height=32, width=100,
                          rounds={"cpu": 10, "cuda": 50}),
    "B256_3x64x256": dict(batch=256, channels=3, height=64, width=256,
                          rounds={"cpu": 3, "cuda": 50}),
}

_EAGER = {}  # (case, mode, device, dtype) -> (median, peak) of the eager implementation


def _fn(impl):
    if impl == "fused":
        return ops.tps_grid_sample
    if impl == "eager":
        return reference.tps_grid_sample
    torch._dynamo.reset()
    return torch.compile(reference.tps_grid_sample, dynamic=False)


def _skip_unless_fused_available(impl, device):
    if impl != "fused":
        return
    if ops.USE_REFERENCE:
        pytest.skip("SEQCLR_EXT_REFERENCE=1: the fused op would run the reference")
    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("seqclr_ext::tps_grid_sample", key):
        pytest.skip(f"this build of seqclr_ext has no {key} kernel of tps_grid_sample")


def _skip_unless_compilable(impl, device):
    if impl == "compiled" and torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton
        if not has_triton():
            pytest.skip("torch.compile on CUDA needs Triton, which is not installed")


def _inputs(case, device, dtype):
    """Random images and control points C′ = C + 0.05 · noise (a mild random warp), generated
    from a fixed seed in float32 on the CPU, then converted."""
    c = CASES[case]
    g = torch.Generator().manual_seed(SEED)
    image = torch.rand(c["batch"], c["channels"], c["height"], c["width"], generator=g)
    cp = reference.tps_base_points(NUM_POINTS, dtype=torch.float32).expand(c["batch"], -1, -1) \
        + 0.05 * torch.randn(c["batch"], NUM_POINTS, 2, generator=g)
    return image.to(device, dtype), cp.to(device, dtype)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_tps_grid_sample(benchmark, case, mode, impl, device, dtype, bench_options,
                         device_name, peak_memory):
    _skip_unless_fused_available(impl, device)
    _skip_unless_compilable(impl, device)
    c = CASES[case]
    size = (c["height"], c["width"])
    image, cp = _inputs(case, device, dtype)
    fn = _fn(impl)
    backward = mode == "fwd_bwd"

    def setup():
        return (image.detach().requires_grad_(backward), cp.detach().requires_grad_(backward)), {}

    def target(i, p):
        with torch.set_grad_enabled(backward):
            out = fn(i, p, size)
            if backward:
                out.sum().backward()
        _sync(device)
        return out.detach()

    def one_call():
        args, _ = setup()
        return target(*args)

    extra = {}
    if impl == "compiled":  # compile, then call until the call time settles
        start, previous = time.perf_counter(), None
        for _ in range(6):
            t0 = time.perf_counter()
            one_call()
            dt = time.perf_counter() - t0
            if previous is not None and dt < 1.5 * previous:
                break
            previous = dt
        extra["compile_warmup_s"] = round(time.perf_counter() - start, 3)
    outs = []
    peak, method = peak_memory(lambda: outs.append(one_call()), device)

    dev = torch.device(device).type
    rounds = bench_options["rounds"] or c["rounds"][dev]
    benchmark.group = f"tps_grid_sample[{case}] {mode} {device} {str(dtype).removeprefix('torch.')}"
    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1,
                       warmup_rounds=2 if dev == "cuda" else (1 if rounds >= 5 else 0))

    elem = torch.empty((), dtype=dtype).element_size()
    nbytes = 2 * image.numel() * elem * (2 if backward else 1)
    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    extra.update(
        op="tps_grid_sample", case=case, impl=impl, mode=mode, device=device,
        device_name=device_name(device), dtype=str(dtype).removeprefix("torch."),
        batch=c["batch"], channels=c["channels"], height=c["height"], width=c["width"],
        num_points=NUM_POINTS, bytes=nbytes, peak_memory_bytes=int(peak),
        peak_memory_method=method, checksum=float(outs[0].double().sum()),
        torch_version=torch.__version__, torch_threads=torch.get_num_threads())
    if median:
        extra["gb_per_s"] = nbytes / median / 1e9
    key = (case, mode, device, str(dtype))
    if impl == "eager":
        _EAGER[key] = (median, peak)
    elif key in _EAGER:
        eager_median, eager_peak = _EAGER[key]
        if median and eager_median:
            extra["speedup_vs_eager"] = eager_median / median
        if peak and eager_peak:
            extra["memory_ratio_vs_eager"] = eager_peak / peak
    benchmark.extra_info.update(extra)
