"""Every op under bf16 autocast computes exactly as in float32: the ops have no autocast
rule, so float32 inputs stay float32, and the ATen calls inside the kernels (their GEMMs)
must not be downcast either. Values and gradients of both inputs are compared bitwise."""
import pytest
import torch

import seqclr_ext.ops as ops
from seqclr_ext.ops.tps_grid_sample import tps_base_points


def _seq_nce_inputs(gen):
    lengths = torch.tensor([5, 9, 3, 7])
    return ((torch.randn(24, 16, generator=gen), torch.randn(24, 16, generator=gen)),
            lambda a, b: ops.seq_nce(a, b, lengths, mapping="window", num_windows=3))


def _tps_inputs(gen):
    cp = tps_base_points(20).float().expand(2, -1, -1) \
        + 0.1 * torch.randn(2, 20, 2, generator=gen)
    return ((torch.rand(2, 1, 16, 40, generator=gen), cp),
            lambda image, points: ops.tps_grid_sample(image, points, (16, 40)))


def _siman_inputs(gen):
    return ((torch.randn(2, 8, 4, 9, generator=gen), torch.randn(2, 8, 4, 9, generator=gen)),
            lambda c, s: ops.siman_normalize(c, s, kernel_size=3))


@pytest.mark.parametrize("make", [_seq_nce_inputs, _tps_inputs, _siman_inputs],
                         ids=["seq_nce", "tps_grid_sample", "siman_normalize"])
def test_bf16_autocast_keeps_float32(device, make):
    inputs, op = make(torch.Generator().manual_seed(0))
    inputs = [x.to(device) for x in inputs]

    def run():
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        out = op(*leaves)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        return [out.detach(), *grads]

    want = run()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = run()
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=0, atol=0)
