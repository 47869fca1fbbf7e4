"""pytest-benchmark suite of siman_normalize (DESIGN.md §3).

Every case races three implementations on identical inputs:

- ``fused``:    seqclr_ext.ops.siman_normalize (the C++/CUDA kernels: attention with the
                2C-wide value [μ, σ] in tiles, box-filter local statistics, the backward
                recomputing the tiles from the saved log-sum-exp),
- ``eager``:    seqclr_ext.ops.reference.siman_normalize (plain PyTorch: the local
                statistics through an unfold copy of the style map [B, C, k², L], the
                attention [B, N, L] stored for autograd),
- ``compiled``: torch.compile(reference), default mode, dynamic=False,

in two modes:

- ``fwd``:     the normalized content only; inputs without requires_grad, grad mode off,
- ``fwd_bwd``: forward + backward of out.sum() to content and style, from fresh leaf
               inputs each round (SimAN trains the encoder through both),

on CPU (float32) and CUDA (float32, float16, bfloat16; skipped without a GPU, and the fused
rows skipped where the build has no CUDA kernel). CUDA rounds end with a synchronize.

Cases (B = 256 images, C = 256 channels, k = 3, content and style maps of the same size):

- ``B256_C256_8x8``:  8 × 8 maps (N = L = 64 positions),
- ``B256_C256_8x25``: 8 × 25 maps (N = L = 200 positions; SimAN's patches of a text line).

The shared race is benchmarks/harness.py (warm-up, peak memory of one untimed call, then
``rounds`` timed calls). extra_info: op, case, impl, mode, device, device_name, dtype,
batch, channels, height, width, kernel_size, flops (nominal: 6·B·N·L·C forward — the scores
and the 2C-wide aligned statistics — and 3× that forward+backward, the same count for
every implementation), gflop_per_s / tflop_per_s (from the median), peak_memory_bytes
(+ method), torch_version, torch_threads, checksum (to see the implementations agree)
and, when the eager result of the same case ran earlier, speedup_vs_eager and
memory_ratio_vs_eager.

No timing is asserted anywhere.
"""
import pytest
import torch
from harness import DEVICE_DTYPES, IMPLS, MODES, implementation, race, skip_unless_runnable, sync

import seqclr_ext.ops as ops
from seqclr_ext.ops import reference

SEED = 0
KERNEL_SIZE = 3
EPS = 1e-5

CASES = {
    "B256_C256_8x8": dict(batch=256, channels=256, height=8, width=8,
                          rounds={"cpu": 5, "cuda": 50}),
    "B256_C256_8x25": dict(batch=256, channels=256, height=8, width=25,
                           rounds={"cpu": 3, "cuda": 50}),
}


def _inputs(case, device, dtype):
    """Content and style features with per-channel offsets and scales (as an encoder's
    are), generated from a fixed seed in float32 on the CPU, then converted."""
    c = CASES[case]
    g = torch.Generator().manual_seed(SEED)
    shape = (c["batch"], c["channels"], c["height"], c["width"])

    def features():
        offset = torch.randn(*shape[:2], 1, 1, generator=g)
        return offset + (torch.rand(*shape[:2], 1, 1, generator=g) + 0.5) * torch.randn(
            shape, generator=g)

    return features().to(device, dtype), features().to(device, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_siman_normalize(benchmark, case, mode, impl, device, dtype, bench_options,
                         device_name, peak_memory):
    skip_unless_runnable(impl, "siman_normalize", device)
    c = CASES[case]
    content, style = _inputs(case, device, dtype)
    fn = implementation(impl, ops.siman_normalize, reference.siman_normalize)
    backward = mode == "fwd_bwd"

    def setup():
        return (content.detach().requires_grad_(backward),
                style.detach().requires_grad_(backward)), {}

    def target(x, s):
        with torch.set_grad_enabled(backward):
            out = fn(x, s, kernel_size=KERNEL_SIZE, eps=EPS)
            if backward:
                out.sum().backward()
        sync(device)
        return out.detach()

    n = c["height"] * c["width"]
    flops = 6 * c["batch"] * n * n * c["channels"] * (3 if backward else 1)

    def rates(median):
        out = {"gflop_per_s": flops / median / 1e9}
        if torch.device(device).type == "cuda":
            out["tflop_per_s"] = flops / median / 1e12
        return out

    race(benchmark, op="siman_normalize", case=case, impl=impl, mode=mode, device=device,
         dtype=dtype, rounds=c["rounds"], setup=setup, target=target,
         fixtures=dict(bench_options=bench_options, device_name=device_name,
                       peak_memory=peak_memory),
         info=dict(batch=c["batch"], channels=c["channels"], height=c["height"],
                   width=c["width"], kernel_size=KERNEL_SIZE, flops=flops),
         rates=rates)
