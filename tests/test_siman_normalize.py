"""Tests of the siman_normalize operator (DESIGN.md §3, "Operator contracts").

Values and gradients (content and style) are checked against the plain-PyTorch oracle
``seqclr_ext.ops.reference.siman_normalize`` (instance norms, unfold-based local statistics,
the full softmax) run in float64 on the CPU; low precision is judged by the DESIGN.md bar.
CUDA cases skip without a GPU. The protocol every op shares (gradcheck, opcheck,
torch.compile, determinism, fake tensors, devices, double backward) is in
test_op_conformance.py; this file holds the cases particular to this op.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqclr_ext.ops as ops
from seqclr_ext.ops import reference as ref

LOW_PRECISION = [torch.float16, torch.bfloat16]
ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- helpers

def make_inputs(batch, channels, size, style_size, *, seed=0, dtype=torch.float32,
                device="cpu"):
    """Content and style maps: per-channel offsets and scales (as real features have, so the
    instance norms matter) plus noise."""
    gen = torch.Generator().manual_seed(seed)

    def feature_map(h, w):
        offset = 2 * torch.randn(batch, channels, 1, 1, generator=gen, dtype=torch.float64)
        scale = torch.rand(batch, channels, 1, 1, generator=gen, dtype=torch.float64) + 0.5
        return offset + scale * torch.randn(batch, channels, h, w, generator=gen,
                                            dtype=torch.float64)

    content, style = feature_map(*size), feature_map(*style_size)
    return content.to(device, dtype), style.to(device, dtype)


def run(fn, content, style, upstream, **kw):
    """Output and the gradients of content and style for upstream gradient `upstream`."""
    content = content.detach().clone().requires_grad_(True)
    style = style.detach().clone().requires_grad_(True)
    out = fn(content, style, **kw)
    grads = torch.autograd.grad(out, (content, style), upstream.to(out.dtype))
    return (out.detach(), *grads)


def oracle(content, style, upstream, **kw):
    """The float64 reference on the CPU, on exactly the given (possibly rounded) inputs."""
    return run(ref.siman_normalize, content.double().cpu(), style.double().cpu(),
               upstream.double().cpu(), **kw)


def upstream_for(content, seed=0):
    gen = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(content.shape, generator=gen, dtype=torch.float64).to(content.device)


def assert_close_scaled(got, want, tol, what):
    """Elementwise |got - want| <= tol · (max |want| + 1)."""
    for g, w, name in zip(got, want, ("output", "grad content", "grad style")):
        scale = w.abs().max().item() + 1.0
        torch.testing.assert_close(g.double().cpu(), w, rtol=tol, atol=tol * scale,
                                   msg=lambda m: f"{what} {name}: {m}")


def precision_failures(got, same_precision, want, dtype, floor=1e-4):
    """Where the kernel's error against the float64 oracle exceeds twice the reference's
    error in the same precision plus a floor: rounding the result to `dtype`, `floor`
    relative for float32 accumulation, and the resolution of unit-sized values (the inputs
    and upstream gradients are unit-sized; some gradients cancel to almost nothing)."""
    eps = torch.finfo(dtype).eps
    failures = []
    for what, g, r, w in zip(("output", "grad content", "grad style"), got, same_precision,
                             want):
        assert g.dtype == dtype
        err_kernel = (g.double().cpu() - w).norm().item()
        err_ref = (r.double().cpu() - w).norm().item()
        bound = 2 * err_ref + (eps + floor) * w.norm().item() + eps * w.numel() ** 0.5
        if not err_kernel <= bound:
            failures.append(f"{what}: kernel error {err_kernel:.3e} > 2 x reference-in-{dtype} "
                            f"error {err_ref:.3e} + floor = {bound:.3e}")
    return failures


# ------------------------------------------------------------------ values and gradients

@settings(max_examples=40, **HYPOTHESIS)
@given(data=st.data())
def test_matches_reference(device, data):
    batch = data.draw(st.integers(1, 3), "batch")
    channels = data.draw(st.sampled_from([1, 2, 5, 16]), "channels")
    size = (data.draw(st.integers(1, 9), "H"), data.draw(st.integers(1, 9), "W"))
    style_size = (data.draw(st.integers(1, 9), "H_s"), data.draw(st.integers(1, 12), "W_s"))
    kernel_size = data.draw(st.sampled_from([k for k in (1, 3, 5) if k <= min(style_size)]),
                            "kernel_size")
    seed = data.draw(st.integers(0, 2**16), "seed")
    kw = dict(kernel_size=kernel_size, eps=1e-5)
    content, style = make_inputs(batch, channels, size, style_size, seed=seed,
                                 dtype=torch.float64, device=device)
    upstream = upstream_for(content, seed)
    want = oracle(content, style, upstream, **kw)
    got = run(ops.siman_normalize, content, style, upstream, **kw)
    for g, x in zip(got, (content, content, style)):
        assert g.dtype == torch.float64 and g.device == x.device and g.shape == x.shape
    assert_close_scaled(got, want, 1e-10, "float64")
    # float32: the instance norms' backward is ill-conditioned on small maps (N = 2: ĉ = ±1),
    # so float32 is held to the DESIGN.md bar against the reference run in float32.
    c32, s32 = content.float(), style.float()
    failures = precision_failures(run(ops.siman_normalize, c32, s32, upstream, **kw),
                                  run(ref.siman_normalize, c32, s32, upstream, **kw),
                                  oracle(c32, s32, upstream, **kw), torch.float32, floor=1e-6)
    assert not failures, "; ".join(failures)


def test_many_tiles(device):
    """Maps large enough for several content tiles of the CPU kernel (tiles of 64 rows when
    L = 1024) and several row / key tiles of the CUDA kernels, with ragged last tiles."""
    content, style = make_inputs(2, 6, (12, 13), (32, 32), seed=1, dtype=torch.float64,
                                 device=device)
    upstream = upstream_for(content)
    for k in (1, 5):
        assert_close_scaled(run(ops.siman_normalize, content, style, upstream, kernel_size=k),
                            oracle(content, style, upstream, kernel_size=k), 1e-10, f"k={k}")


def test_one_by_one_maps(device):
    """1×1 content: IN gives ĉ = 0, so out = μ̂, the plain average of μ over the style;
    1×1 style: every content position takes its single μ = s and σ = sqrt(eps)."""
    content, style = make_inputs(2, 4, (1, 1), (3, 5), dtype=torch.float64, device=device)
    out = ops.siman_normalize(content, style, kernel_size=3, eps=1e-5)
    mu, _ = ref.siman_local_stats(style.cpu(), 3, 1e-5)
    torch.testing.assert_close(out.cpu().flatten(2), mu.mean(2, keepdim=True))
    content, style = make_inputs(2, 4, (3, 2), (1, 1), dtype=torch.float64, device=device)
    out = ops.siman_normalize(content, style, kernel_size=1, eps=1e-5)
    c = content.cpu()
    c_hat = (c - c.mean((2, 3), keepdim=True)) / (c.var((2, 3), unbiased=False, keepdim=True)
                                                  + 1e-5).sqrt()
    torch.testing.assert_close(out.cpu(), 1e-5 ** 0.5 * c_hat + style.cpu())


def test_defaults_and_eps(device):
    content, style = make_inputs(2, 3, (4, 5), (5, 6), seed=2, dtype=torch.float64,
                                 device=device)
    torch.testing.assert_close(ops.siman_normalize(content, style).cpu(),
                               ref.siman_normalize(content.cpu(), style.cpu(), kernel_size=3,
                                                   eps=1e-5))
    torch.testing.assert_close(
        ops.siman_normalize(content, style, kernel_size=5, eps=0.3).cpu(),
        ref.siman_normalize(content.cpu(), style.cpu(), kernel_size=5, eps=0.3))


def test_flat_style_has_finite_gradients(device):
    """eps keeps σ's gradient finite where the style is constant over a neighbourhood."""
    content, _ = make_inputs(1, 3, (4, 4), (4, 4), dtype=torch.float64, device=device)
    style = torch.ones(1, 3, 4, 4, dtype=torch.float64, device=device)
    style[:, :, 0, 0] = 2.0
    upstream = upstream_for(content)
    got = run(ops.siman_normalize, content, style, upstream)
    assert all(torch.isfinite(g).all() for g in got)
    assert_close_scaled(got, oracle(content, style, upstream), 1e-9, "flat style")


def test_only_one_input_requires_grad(device):
    content, style = make_inputs(2, 3, (3, 4), (4, 4), dtype=torch.float64, device=device)
    upstream = upstream_for(content)
    want = run(ops.siman_normalize, content, style, upstream)
    c = content.clone().requires_grad_(True)
    ops.siman_normalize(c, style).backward(upstream)
    torch.testing.assert_close(c.grad, want[1])
    s = style.clone().requires_grad_(True)
    ops.siman_normalize(content, s).backward(upstream)
    torch.testing.assert_close(s.grad, want[2])


def test_gradcheck_one_by_one_neighbourhood(device):
    """kernel_size = 1 (σ = sqrt(eps) everywhere); k = 3 runs in test_op_conformance.py."""
    content, style = make_inputs(2, 3, (3, 4), (4, 5), seed=3, dtype=torch.float64,
                                 device=device)
    content.requires_grad_(True)
    style.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda c, s: ops.siman_normalize(c, s, kernel_size=1, eps=1e-3), (content, style))


def test_non_contiguous(device):
    content, style = make_inputs(3, 4, (5, 6), (6, 7), seed=5, device=device)
    upstream = upstream_for(content)
    want = run(ops.siman_normalize, content, style, upstream)
    content_cl = content.contiguous(memory_format=torch.channels_last)
    style_sliced = torch.zeros(3, 8, 6, 14, device=device)[:, ::2, :, 1::2]
    style_sliced.copy_(style)
    content_t = content.transpose(2, 3).contiguous().transpose(2, 3)
    assert not (content_cl.is_contiguous() or style_sliced.is_contiguous()
                or content_t.is_contiguous())
    for c, s in ((content_cl, style_sliced), (content_t, style)):
        for g, w in zip(run(ops.siman_normalize, c, s, upstream), want):
            torch.testing.assert_close(g, w)
    # A stride-0 upstream gradient (out.sum()) and a transposed one.
    s = style.clone().requires_grad_(True)
    ops.siman_normalize(content, s).sum().backward()
    torch.testing.assert_close(s.grad, run(ops.siman_normalize, content, style,
                                           torch.ones_like(upstream))[2])
    got = run(ops.siman_normalize, content, style,
              upstream.transpose(2, 3).contiguous().transpose(2, 3))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_empty_batch(device):
    content, style = make_inputs(1, 3, (4, 5), (3, 3), device=device)
    out = ops.siman_normalize(content[:0], style[:0])
    assert out.shape == (0, 3, 4, 5)


# ------------------------------------------------------------------- saved statistics

def test_extra_outputs(device):
    """lse is each content position's log-sum-exp of the scores; the stats are the instance
    norms' (mean, rstd) (that none is differentiable: test_op_conformance.py)."""
    content, style = make_inputs(2, 3, (3, 4), (4, 5), dtype=torch.float64, device=device)
    out, lse, cs, ss = torch.ops.seqclr_ext.siman_normalize(content, style, 3, 1e-5)

    def norm(x):
        x = x.cpu()
        var, mean = torch.var_mean(x.flatten(2), 2, unbiased=False)
        return (x - mean[..., None, None]) / (var[..., None, None] + 1e-5).sqrt(), mean, var

    c_hat, c_mean, c_var = norm(content)
    s_hat, s_mean, s_var = norm(style)
    scores = c_hat.flatten(2).transpose(1, 2) @ s_hat.flatten(2) / 3 ** 0.5
    torch.testing.assert_close(lse.cpu(), scores.logsumexp(-1))
    torch.testing.assert_close(cs.cpu(), torch.stack([c_mean, (c_var + 1e-5).rsqrt()], 1))
    torch.testing.assert_close(ss.cpu(), torch.stack([s_mean, (s_var + 1e-5).rsqrt()], 1))


# ------------------------------------------------------------------------ low precision

@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_low_precision(device, dtype, kernel_size):
    """DESIGN.md bar: the kernel's error against the float64 reference (on the same rounded
    inputs) is at most 2x the error of the reference run in the same precision, plus a
    floor (rounding the result to the low precision, and float32 accumulation)."""
    content, style = make_inputs(4, 32, (8, 8), (8, 25), seed=13, dtype=dtype, device=device)
    upstream = upstream_for(content).to(dtype)
    kw = dict(kernel_size=kernel_size)
    failures = precision_failures(run(ops.siman_normalize, content, style, upstream, **kw),
                                  run(ref.siman_normalize, content, style, upstream, **kw),
                                  oracle(content, style, upstream, **kw), dtype)
    assert not failures, "; ".join(failures)


# ------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("case, match", [
    ("channels", r"style must have content's channel count 3, got 4"),
    ("batch", r"style must have content's batch size 2, got 1"),
    ("k_even", r"kernel_size must be an odd integer >= 1, got 4"),
    ("k_zero", r"kernel_size must be an odd integer >= 1, got 0"),
    ("k_negative", r"kernel_size must be an odd integer >= 1, got -1"),
    ("k_above_height", r"kernel_size must be at most the style map's height and width "
                       r"\(H_s = 2, W_s = 6\), got 3"),
    ("k_above_width", r"kernel_size must be at most the style map's height and width "
                      r"\(H_s = 6, W_s = 4\), got 5"),
    ("content_3d", r"content must be a 4-D \[B, C, H, W\] tensor, got 3-D"),
    ("content_5d", r"content must be a 4-D \[B, C, H, W\] tensor, got 5-D"),
    ("style_3d", r"style must be a 4-D \[B, C, H, W\] tensor, got 3-D"),
    ("style_empty", r"style must have C, H, W >= 1, got shape \[2, 3, 0, 6\]"),
    ("style_dtype", r"style must have content's dtype Float, got Double"),
    ("eps_zero", r"eps must be a finite number > 0, got 0"),
    ("eps_negative", r"eps must be a finite number > 0, got -1e-05"),
])
def test_bad_input(device, case, match):
    content, style = make_inputs(2, 3, (4, 5), (6, 6), device=device)
    k, eps = 3, 1e-5
    if case == "channels":
        style = torch.cat([style, style[:, :1]], 1)
    elif case == "batch":
        style = style[:1]
    elif case == "k_even":
        k = 4
    elif case == "k_zero":
        k = 0
    elif case == "k_negative":
        k = -1
    elif case == "k_above_height":
        style = style[:, :, :2]
    elif case == "k_above_width":
        style, k = style[:, :, :, :4], 5
    elif case == "content_3d":
        content = content[0]
    elif case == "content_5d":
        content = content[None]
    elif case == "style_3d":
        style = style[0]
    elif case == "style_empty":
        style = style[:, :, :0]
    elif case == "style_dtype":
        style = style.double()
    elif case == "eps_zero":
        eps = 0.0
    elif case == "eps_negative":
        eps = -1e-5
    with pytest.raises(RuntimeError, match=match):
        torch.ops.seqclr_ext.siman_normalize(content, style, k, eps)


def test_bad_input_through_public_api():
    content, style = make_inputs(2, 3, (4, 5), (2, 6))
    with pytest.raises(RuntimeError, match=r"kernel_size must be at most the style map's"):
        ops.siman_normalize(content, style)
    with pytest.raises(RuntimeError, match=r"kernel_size must be an odd integer >= 1, got 2"):
        ops.siman_normalize(content, style, kernel_size=2)


def test_bad_backward_input(device):
    content, style = make_inputs(2, 3, (4, 5), (6, 6), device=device)
    out, lse, cs, ss = torch.ops.seqclr_ext.siman_normalize(content, style, 3, 1e-5)
    bwd = torch.ops.seqclr_ext.siman_normalize_backward
    with pytest.raises(RuntimeError, match=r"grad_out must have content's shape"):
        bwd(out[:, :2], content, style, lse, cs, ss, 3, 1e-5)
    with pytest.raises(RuntimeError, match=r"lse must have shape \[2, 20\]"):
        bwd(out, content, style, lse[:, :5], cs, ss, 3, 1e-5)
    with pytest.raises(RuntimeError, match=r"style_stats must have shape \[2, 2, 3\]"):
        bwd(out, content, style, lse, cs, ss[:, :1], 3, 1e-5)


# ---------------------------------------------------------------------------- CUDA vs CPU

@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_cuda_matches_cpu(cuda_device, dtype):
    # C = 1500 (float32) / 700 (float64) does not fit one block's shared memory: channel
    # groups. 8×25 style: several key tiles, the last one ragged.
    for channels, size, style_size in ((64, (8, 8), (8, 25)), (3, (1, 1), (1, 1)),
                                       (1500 if dtype != torch.float64 else 700, (3, 5), (4, 6))):
        content, style = make_inputs(3, channels, size, style_size, seed=19, dtype=dtype)
        upstream = upstream_for(content).to(dtype)
        k = 3 if min(style_size) >= 3 else 1
        cpu = run(ops.siman_normalize, content, style, upstream, kernel_size=k)
        gpu = run(ops.siman_normalize, content.to(cuda_device), style.to(cuda_device),
                  upstream.to(cuda_device), kernel_size=k)
        tol = dict(rtol=2e-2, atol=2e-2) if dtype in LOW_PRECISION else \
            dict(rtol=1e-4, atol=1e-4)
        for g, c in zip(gpu, cpu):
            torch.testing.assert_close(g.cpu(), c, **tol)
