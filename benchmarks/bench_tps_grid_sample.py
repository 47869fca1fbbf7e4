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

The shared race is benchmarks/harness.py: the untimed first call measures the peak memory
(and warms up; torch.compile gets extra warm-up calls until its call time settles), then ``rounds`` calls are timed with
benchmark.pedantic(iterations=1). extra_info: op, case, impl, mode, device, device_name,
dtype, batch, channels, height, width, num_points, bytes (nominal traffic: the image read
and the output written, doubled forward+backward), gb_per_s (from the median),
peak_memory_bytes (+ method), torch_version, torch_threads, checksum (to see the
implementations agree) and, when the eager result of the same case ran earlier,
speedup_vs_eager and memory_ratio_vs_eager.

No timing is asserted anywhere.
"""
import pytest
import torch
from harness import DEVICE_DTYPES, IMPLS, MODES, implementation, race, skip_unless_runnable, sync

import seqclr_ext.ops as ops
from seqclr_ext.ops import reference
from seqclr_ext.ops.tps_grid_sample import tps_base_points

SEED = 0
NUM_POINTS = 20

CASES = {
    "B256_1x32x100": dict(batch=256, channels=1, height=32, width=100,
                          rounds={"cpu": 10, "cuda": 50}),
    "B256_3x64x256": dict(batch=256, channels=3, height=64, width=256,
                          rounds={"cpu": 3, "cuda": 50}),
}


def _inputs(case, device, dtype):
    """Random images and control points C′ = C + 0.05 · noise (a mild random warp), generated
    from a fixed seed in float32 on the CPU, then converted."""
    c = CASES[case]
    g = torch.Generator().manual_seed(SEED)
    image = torch.rand(c["batch"], c["channels"], c["height"], c["width"], generator=g)
    cp = tps_base_points(NUM_POINTS, dtype=torch.float32).expand(c["batch"], -1, -1) \
        + 0.05 * torch.randn(c["batch"], NUM_POINTS, 2, generator=g)
    return image.to(device, dtype), cp.to(device, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_tps_grid_sample(benchmark, case, mode, impl, device, dtype, bench_options,
                         device_name, peak_memory):
    skip_unless_runnable(impl, "tps_grid_sample", device)
    c = CASES[case]
    size = (c["height"], c["width"])
    image, cp = _inputs(case, device, dtype)
    fn = implementation(impl, ops.tps_grid_sample, reference.tps_grid_sample)
    backward = mode == "fwd_bwd"

    def setup():
        return (image.detach().requires_grad_(backward), cp.detach().requires_grad_(backward)), {}

    def target(i, p):
        with torch.set_grad_enabled(backward):
            out = fn(i, p, size)
            if backward:
                out.sum().backward()
        sync(device)
        return out.detach()

    elem = torch.empty((), dtype=dtype).element_size()
    nbytes = 2 * image.numel() * elem * (2 if backward else 1)
    race(benchmark, op="tps_grid_sample", case=case, impl=impl, mode=mode, device=device,
         dtype=dtype, rounds=c["rounds"], setup=setup, target=target,
         fixtures=dict(bench_options=bench_options, device_name=device_name,
                       peak_memory=peak_memory),
         info=dict(batch=c["batch"], channels=c["channels"], height=c["height"],
                   width=c["width"], num_points=NUM_POINTS, bytes=nbytes),
         rates=lambda median: {"gb_per_s": nbytes / median / 1e9})
