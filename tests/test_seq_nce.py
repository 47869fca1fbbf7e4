"""Tests of the seq_nce and nce_rows operators (DESIGN.md §1, "Operator contracts").

Every value and gradient is checked against the plain-PyTorch oracles in
``seqclr_ext.ops.reference`` run in float64 on the CPU; low precision is judged by the
DESIGN.md bar (the kernel's error against the float64 reference is at most twice the error
of the reference op run in the same precision). CUDA cases skip without a GPU. The protocol every op shares (gradcheck, opcheck,
torch.compile, determinism, fake tensors, devices, double backward) is in
test_op_conformance.py; this file holds the cases particular to this op.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqclr_ext.ops as ops
from seqclr_ext.ops import reference as ref
from seqclr_ext.ops.seq_nce import NORM_EPS, pool_instances

MAPPINGS = ["all", "window", "frame"]
FEATURES = [1, 7, 64, 256]
TEMPERATURES = [0.05, 0.1, 1.0]
LOW_PRECISION = [torch.float16, torch.bfloat16]

# Tolerances of the float32 / float64 kernels against the float64 reference, in units of
# the natural size of each quantity (see assert_close_scaled).
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}

HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# "frame" mapping makes one instance per frame: the reference materializes the full
# 2M x 2M similarity matrix, so its cases are capped at this many frames (1536 frames ->
# 3072 rows, still many row blocks and column tiles of the kernel).
FRAME_MAPPING_MAX_FRAMES = 1536


# ----------------------------------------------------------------------------- helpers

def make_views(lengths, num_features, *, dtype=torch.float32, device="cpu", noise=0.5, seed=0):
    """Two correlated views [total_frames, F]: b is a noisy copy of a, as augmentations
    give (so positives are more similar than negatives and the loss is not trivial)."""
    gen = torch.Generator().manual_seed(seed)
    total = int(lengths.sum())
    a = torch.randn(total, num_features, generator=gen, dtype=torch.float64)
    b = a + noise * torch.randn(total, num_features, generator=gen, dtype=torch.float64)
    return a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)


def run_seq_nce(fn, a, b, lengths, **kw):
    """Loss and the gradients of both views: (loss, grad_a, grad_b)."""
    a = a.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    loss = fn(a, b, lengths, **kw)
    grad_a, grad_b = torch.autograd.grad(loss, (a, b))
    return loss.detach(), grad_a, grad_b


def oracle_seq_nce(a, b, lengths, **kw):
    """The float64 reference on the CPU, on exactly the given (possibly rounded) inputs."""
    return run_seq_nce(ref.seq_nce, a.double().cpu(), b.double().cpu(), lengths.cpu(), **kw)


def run_nce_rows(fn, rows, cols, positive, exclude, upstream, **kw):
    """Per-row losses and the gradients of rows and cols for upstream gradient `upstream`."""
    rows = rows.detach().clone().requires_grad_(True)
    cols = cols.detach().clone().requires_grad_(True)
    loss = fn(rows, cols, positive, exclude, **kw)
    grad_rows, grad_cols = torch.autograd.grad(loss, (rows, cols), upstream.to(loss.dtype))
    return loss.detach(), grad_rows, grad_cols


def oracle_nce_rows(rows, cols, positive, exclude, upstream, **kw):
    return run_nce_rows(ref.nce_rows, rows.double().cpu(), cols.double().cpu(), positive.cpu(),
                        exclude.cpu(), upstream.double().cpu(), **kw)


def assert_close_scaled(actual, expected, tol, scale, what):
    """|actual - expected| <= tol * (|expected| + scale), elementwise (NaN fails).

    `scale` is the natural size of the quantity (broadcastable): the size of the terms
    that cancel in it. Rounding errors are proportional to it, not to the result, which can
    be exactly zero (with F = 1 every normalized instance is +-1 and seq_nce's gradient
    vanishes identically)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    scale = torch.as_tensor(scale, dtype=torch.float64).cpu()
    bound = tol * (expected.abs() + scale)
    err = (actual - expected).abs()
    bad = ~(err <= bound)
    if bad.any():
        ratio = torch.where(bad, err / bound, torch.zeros_like(err)).nan_to_num(float("inf"))
        flat = int(ratio.argmax())
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), actual.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {actual.numel()} elements off (tol {tol}); worst at "
            f"{where}: got {actual.flatten()[flat].item()!r}, expected "
            f"{expected.flatten()[flat].item()!r}, allowed error "
            f"{bound.expand_as(actual).flatten()[flat].item():.3e}")


def seq_nce_scales(a, b, lengths, mapping, num_windows, temperature):
    """Natural sizes of seq_nce's loss and of each frame's gradient.

    The loss is a difference of log-sum-exps of size 1/τ + log(2M). d loss / d z_r is a
    sum of softmax weights times unit vectors, over 2M rows, of size <= ~4 / (2M τ); it
    reaches frame t of instance r scaled by 1 / (|window r| * norm_r)."""
    a64 = a.detach().double().cpu().requires_grad_(True)
    b64 = b.detach().double().cpu().requires_grad_(True)
    lens = lengths.cpu()
    u = torch.cat([pool_instances(a64, lens, mapping, num_windows),
                   pool_instances(b64, lens, mapping, num_windows)])
    rows = u.shape[0]
    w = 4.0 / (rows * temperature * u.detach().norm(dim=1).clamp_min(NORM_EPS))
    scale_a, scale_b = torch.autograd.grad(u, (a64, b64), w[:, None].expand_as(u))
    loss_scale = 1.0 / temperature + torch.log(torch.tensor(float(rows))).item()
    return loss_scale, scale_a, scale_b


def nce_rows_scales(rows, cols, upstream, temperature):
    """Natural sizes of nce_rows' per-row losses and gradients: Cauchy-Schwarz bounds of
    the logits, and of the softmax-weighted sums of rows / columns. Rows and columns are
    not normalized, so logits can be large; a softmax weight exp(logit - lse) then carries
    a relative rounding error of eps * |logit|, which scales the gradients' error unit."""
    rows, cols, g = rows.double().cpu(), cols.double().cpu(), upstream.double().cpu().abs()
    logit = rows.norm(dim=1) * cols.norm(dim=1).max() / temperature
    loss = logit + torch.log(torch.tensor(float(cols.shape[0])))
    amplification = max(1.0, logit.max().item() / 10)
    grad_rows = 2 * g[:, None] / temperature * cols.abs().max() * amplification
    grad_cols = 2 * g.max() / temperature * rows.abs().max() * amplification
    return loss, grad_rows, grad_cols


def check_seq_nce(a, b, lengths, *, mapping, num_windows=5, temperature=0.1, tol=None):
    """Kernel (on a's device, in a's dtype) against the float64 CPU reference."""
    kw = dict(mapping=mapping, num_windows=num_windows, temperature=temperature)
    tol = TOL[a.dtype] if tol is None else tol
    got = run_seq_nce(ops.seq_nce, a, b, lengths, **kw)
    want = oracle_seq_nce(a, b, lengths, **kw)
    loss_scale, scale_a, scale_b = seq_nce_scales(a, b, lengths, mapping, num_windows,
                                                  temperature)
    assert got[0].dtype == a.dtype and got[0].shape == () and got[0].device == a.device
    assert got[1].dtype == a.dtype and got[1].device == a.device
    assert_close_scaled(got[0], want[0], tol, loss_scale, "loss")
    assert_close_scaled(got[1], want[1], tol, scale_a, "grad frames_a")
    assert_close_scaled(got[2], want[2], tol, scale_b, "grad frames_b")
    return got


def nce_rows_inputs(R, C, num_features, *, seed=0, none_fraction=0.3, scale=1.0,
                    dtype=torch.float32, device="cpu"):
    """Random rows/cols, positives, and excluded columns (-1 for a random fraction of
    rows, else a column other than the positive), and a random upstream gradient."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(R, num_features, generator=gen, dtype=torch.float64)
    cols = torch.randn(C, num_features, generator=gen, dtype=torch.float64)
    rows = rows * (scale / num_features ** 0.5)
    cols = cols * (scale / num_features ** 0.5)
    positive = torch.randint(0, C, (R,), generator=gen)
    if C > 1:
        exclude = (positive + torch.randint(1, C, (R,), generator=gen)) % C
        none = torch.rand(R, generator=gen) < none_fraction
        exclude = torch.where(none, torch.full_like(exclude, -1), exclude)
    else:
        exclude = torch.full_like(positive, -1)
    upstream = torch.randn(R, generator=gen, dtype=torch.float64)
    to = dict(device=device)
    return (rows.to(dtype=dtype, **to), cols.to(dtype=dtype, **to), positive.to(**to),
            exclude.to(**to), upstream.to(dtype=dtype, **to))


def check_nce_rows(rows, cols, positive, exclude, upstream, *, temperature, tol=None):
    tol = TOL[rows.dtype] if tol is None else tol
    got = run_nce_rows(ops.nce_rows, rows, cols, positive, exclude, upstream,
                       temperature=temperature)
    want = oracle_nce_rows(rows, cols, positive, exclude, upstream, temperature=temperature)
    loss_scale, rows_scale, cols_scale = nce_rows_scales(rows, cols, upstream, temperature)
    assert got[0].dtype == rows.dtype and got[0].device == rows.device
    assert_close_scaled(got[0], want[0], tol, loss_scale, "per-row loss")
    assert_close_scaled(got[1], want[1], tol, rows_scale, "grad rows")
    assert_close_scaled(got[2], want[2], tol, cols_scale, "grad cols")
    return got


# ------------------------------------------------------- values and gradients vs reference

@pytest.mark.parametrize("mapping", MAPPINGS)
@settings(max_examples=60, **HYPOTHESIS)
@given(data=st.data())
def test_seq_nce_matches_reference(device, mapping, data):
    n = data.draw(st.integers(1, 64), label="num_images")
    # A cap on the lengths of this batch first, so that short sequences (T < num_windows,
    # T = 1) are as common as long ones.
    max_len = data.draw(st.sampled_from([1, 4, 12, 80]), label="max length")
    lengths = data.draw(st.lists(st.integers(1, max_len), min_size=n, max_size=n),
                        label="lengths")
    if mapping == "frame" and sum(lengths) > FRAME_MAPPING_MAX_FRAMES:
        total = sum(lengths)
        lengths = [max(1, t * FRAME_MAPPING_MAX_FRAMES // total) for t in lengths]
    num_windows = data.draw(st.integers(1, 12), label="num_windows") if mapping == "window" else 5
    num_features = data.draw(st.sampled_from(FEATURES), label="F")
    temperature = data.draw(st.sampled_from(TEMPERATURES), label="temperature")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    noise = data.draw(st.sampled_from([0.1, 1.0, 3.0]), label="view noise")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    lengths = torch.tensor(lengths, dtype=torch.int64, device=device)
    a, b = make_views(lengths, num_features, dtype=dtype, device=device, noise=noise, seed=seed)
    check_seq_nce(a, b, lengths, mapping=mapping, num_windows=num_windows,
                  temperature=temperature)


@pytest.mark.parametrize("num_windows", [3, 5, 8])
def test_seq_nce_sequences_shorter_than_windows(device, num_windows):
    """T < T' repeats frames across windows (adaptive_avg_pool1d's bounds), T = T' and
    T = 1 are exact, and non-divisible T overlaps windows."""
    lengths = torch.tensor([1, 2, num_windows - 1, num_windows, num_windows + 1, 17],
                           device=device)
    for dtype in (torch.float32, torch.float64):
        a, b = make_views(lengths, 7, dtype=dtype, device=device, seed=num_windows)
        check_seq_nce(a, b, lengths, mapping="window", num_windows=num_windows)


def test_seq_nce_zero_instance(device):
    """An all-zero image (padding, a blank crop) has norm 0 < eps: it is divided by eps
    (DESIGN.md §1 step 2), its similarities are 0, and its gradient is dz / eps."""
    lengths = torch.tensor([3, 2, 4], device=device)
    for mapping in MAPPINGS:
        a, b = make_views(lengths, 8, dtype=torch.float64, device=device, seed=12)
        a[3:5] = 0
        b[3:5] = 0
        check_seq_nce(a, b, lengths, mapping=mapping, num_windows=2)


def test_seq_nce_mappings_are_distinct_pooling(device):
    """'all' is 'window' with one window, 'frame' is 'window' when every T equals T' (the
    windows are then the frames), and the mappings differ otherwise."""
    lengths = torch.tensor([4, 4, 4], device=device)
    a, b = make_views(lengths, 16, dtype=torch.float64, device=device, seed=3)
    loss = {m: ops.seq_nce(a, b, lengths, mapping=m, num_windows=4) for m in MAPPINGS}
    torch.testing.assert_close(
        loss["all"], ops.seq_nce(a, b, lengths, mapping="window", num_windows=1))
    torch.testing.assert_close(loss["frame"], loss["window"])
    assert not torch.allclose(loss["all"], loss["frame"])


@settings(max_examples=100, **HYPOTHESIS)
@given(data=st.data())
def test_nce_rows_matches_reference(device, data):
    # Sizes around the CPU kernel's row blocks (128) and column tiles (512) as well as tiny.
    R = data.draw(st.one_of(st.integers(1, 8), st.integers(1, 300)), label="R")
    C = data.draw(st.one_of(st.integers(1, 8), st.integers(1, 700), st.integers(500, 700)),
                  label="C")
    num_features = data.draw(st.sampled_from([1, 7, 64, 256]), label="F")
    temperature = data.draw(st.sampled_from(TEMPERATURES), label="temperature")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    none_fraction = data.draw(st.sampled_from([0.0, 0.3, 1.0]), label="fraction of exclude=-1")
    scale = data.draw(st.sampled_from([0.3, 1.0, 3.0]), label="scale")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    inputs = nce_rows_inputs(R, C, num_features, seed=seed, none_fraction=none_fraction,
                             scale=scale, dtype=dtype, device=device)
    check_nce_rows(*inputs, temperature=temperature)


def test_nce_rows_edge_cases(device):
    """One column (the positive, nothing excluded): loss and gradients exactly 0; the
    excluded column holding the largest logit; exclude = -1 everywhere."""
    rows = torch.randn(3, 5, dtype=torch.float64, device=device)
    cols = torch.randn(1, 5, dtype=torch.float64, device=device)
    zero = torch.zeros(3, dtype=torch.int64, device=device)
    loss, grad_rows, grad_cols = run_nce_rows(ops.nce_rows, rows, cols, zero, zero - 1,
                                              torch.ones(3, dtype=torch.float64, device=device))
    assert torch.equal(loss.cpu(), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(grad_rows.cpu(), torch.zeros(3, 5, dtype=torch.float64))
    assert torch.equal(grad_cols.cpu(), torch.zeros(1, 5, dtype=torch.float64))

    # The excluded column is the row itself (similarity 1/τ, far above the others): the
    # loss must not see it.
    rows = F.normalize(torch.randn(6, 8, dtype=torch.float64), dim=1).to(device)
    cols = torch.cat([rows, F.normalize(torch.randn(600, 8, dtype=torch.float64),
                                        dim=1).to(device)])
    r = torch.arange(6, device=device)
    upstream = torch.randn(6, dtype=torch.float64, device=device)
    for exclude in (r, torch.full_like(r, -1)):
        check_nce_rows(rows, cols, r + 6, exclude, upstream, temperature=0.05)


# ------------------------------------------------------------------------ low precision

def _low_precision_errors(op, a, b, lengths, **kw):
    """Error norms of `op` and of the reference run in a's precision, against the float64
    reference on the same (rounded) inputs, and the floors of the comparison."""
    want = oracle_seq_nce(a, b, lengths, **kw)
    got = run_seq_nce(op, a, b, lengths, **kw)
    same_precision = run_seq_nce(ref.seq_nce, a, b, lengths, **kw)
    loss_scale, scale_a, scale_b = seq_nce_scales(a, b, lengths, kw["mapping"],
                                                  kw["num_windows"], kw["temperature"])
    eps, eps32 = torch.finfo(a.dtype).eps, torch.finfo(torch.float32).eps
    rows = []
    for what, g, r, w, scale in zip(("loss", "grad frames_a", "grad frames_b"), got,
                                    same_precision, want, (loss_scale, scale_a, scale_b)):
        assert g.dtype == a.dtype
        err_kernel = (g.double().cpu() - w).norm().item()
        err_ref = (r.double().cpu() - w).norm().item()
        # Floor: rounding the result to the low precision (which the reference may dodge by
        # luck), plus float32 accumulation noise (the contract: accumulate in float32)
        # against the natural size of the quantity, which itself may be exactly zero (the
        # gradient with F = 1) or far below its terms (the loss of near-identical views).
        floor = eps * w.norm().item() + 16 * eps32 * torch.as_tensor(scale).norm().item()
        rows.append((what, err_kernel, err_ref, floor))
    return rows


LOW_PRECISION_CASES = [
    # (num_images, max_len, F, temperature, view noise, seed)
    (19, 80, 64, 0.05, 0.5, 0),
    (8, 80, 256, 0.1, 0.1, 1),
    (13, 80, 7, 0.05, 0.1, 2),
    (30, 40, 7, 1.0, 1.0, 3),
    (11, 80, 256, 0.05, 2.0, 4),
    (30, 80, 1, 0.1, 0.5, 5),
    (4, 3, 64, 0.1, 0.5, 6),  # T < num_windows
]


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("case", LOW_PRECISION_CASES,
                         ids=lambda c: "N{}-T{}-F{}-tau{}-noise{}".format(*c[:5]))
def test_seq_nce_low_precision(device, mapping, dtype, case):
    n, max_len, num_features, temperature, noise, seed = case
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=gen).to(device)
    a, b = make_views(lengths, num_features, dtype=dtype, device=device, noise=noise, seed=seed)
    kw = dict(mapping=mapping, num_windows=5, temperature=temperature)
    failures = [
        f"{what}: kernel error {ek:.3e} > 2 x reference-in-{dtype} error {er:.3e} + floor "
        f"{fl:.3e}"
        for what, ek, er, fl in _low_precision_errors(ops.seq_nce, a, b, lengths, **kw)
        if not ek <= 2 * er + fl
    ]
    assert not failures, "; ".join(failures)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_nce_rows_low_precision(device, dtype):
    eps, eps32 = torch.finfo(dtype).eps, torch.finfo(torch.float32).eps
    for seed, (R, C, num_features, temperature) in enumerate(
            [(200, 600, 64, 0.05), (37, 45, 7, 0.1), (130, 520, 256, 1.0)]):
        inputs = nce_rows_inputs(R, C, num_features, seed=seed, scale=2.0, dtype=dtype,
                                 device=device)
        want = oracle_nce_rows(*inputs, temperature=temperature)
        got = run_nce_rows(ops.nce_rows, *inputs, temperature=temperature)
        same_precision = run_nce_rows(ref.nce_rows, *inputs, temperature=temperature)
        scales = nce_rows_scales(inputs[0], inputs[1], inputs[4], temperature)
        for what, g, r, w, s in zip(("loss", "grad rows", "grad cols"), got, same_precision,
                                    want, scales):
            assert g.dtype == dtype
            err_kernel = (g.double().cpu() - w).norm().item()
            err_ref = (r.double().cpu() - w).norm().item()
            floor = eps * w.norm().item() + 16 * eps32 * s.expand_as(w).norm().item()
            assert err_kernel <= 2 * err_ref + floor, (
                f"case {seed} {what}: kernel error {err_kernel:.3e} > 2 x {err_ref:.3e} + "
                f"{floor:.3e}")


# ---------------------------------------------------------------------------- stability

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mapping", MAPPINGS)
def test_seq_nce_identical_views_low_temperature(device, mapping, dtype):
    """τ = 0.02 and frames_b = frames_a: every positive has similarity 1 (logit 50), the
    largest of its row; the loss and gradients stay finite (max-subtracted log-sum-exp)."""
    lengths = torch.tensor([7, 1, 30, 12, 5], device=device)
    a, _ = make_views(lengths, 64, dtype=dtype, device=device, seed=7)
    a = a * 8  # large activations, as unnormalized features are
    loss, grad_a, grad_b = run_seq_nce(ops.seq_nce, a, a, lengths, mapping=mapping,
                                       num_windows=5, temperature=0.02)
    assert torch.isfinite(loss), loss
    assert torch.isfinite(grad_a).all() and torch.isfinite(grad_b).all()
    # And accurate: against the float64 reference (float32), or by the low-precision bar.
    kw = dict(mapping=mapping, num_windows=5, temperature=0.02)
    if dtype == torch.float32:
        check_seq_nce(a, a, lengths, **kw)
        return
    failures = [
        f"{what}: kernel error {ek:.3e} > 2 x reference-in-{dtype} error {er:.3e} + floor "
        f"{fl:.3e}"
        for what, ek, er, fl in _low_precision_errors(ops.seq_nce, a, a, lengths, **kw)
        if not ek <= 2 * er + fl
    ]
    assert not failures, "; ".join(failures)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_nce_rows_large_logits_finite(device, dtype):
    rows, cols, positive, exclude, upstream = nce_rows_inputs(50, 300, 32, seed=8, scale=6.0,
                                                              dtype=dtype, device=device)
    loss, grad_rows, grad_cols = run_nce_rows(ops.nce_rows, rows, cols, positive, exclude,
                                              upstream, temperature=0.02)
    assert torch.isfinite(loss).all()
    assert torch.isfinite(grad_rows).all() and torch.isfinite(grad_cols).all()
    if dtype == torch.float32:  # logits up to ~1000: still accurate
        check_nce_rows(rows, cols, positive, exclude, upstream, temperature=0.02)


# ---------------------------------------------------------------------------- bad input

def _frames(device, total=13, num_features=7, dtype=torch.float32):
    return torch.randn(total, num_features, dtype=dtype, device=device)


LENGTHS = [3, 1, 7, 2]  # sum 13


def _seq_nce_call(device, *, a=None, b=None, lengths=None, **kw):
    a = _frames(device) if a is None else a
    b = a.clone() if b is None else b
    lengths = torch.tensor(LENGTHS, device=device) if lengths is None else lengths
    return ops.seq_nce(a, b, lengths, **kw)


@pytest.mark.parametrize("case, match", [
    ("lengths_sum_too_large", r"lengths must sum to total_frames.*13.*14"),
    ("lengths_sum_too_small", r"lengths must sum to total_frames.*13.*12"),
    ("length_zero", r"lengths must all be >= 1.*0"),
    ("length_negative", r"lengths must all be >= 1.*-2"),
    ("lengths_float", r"lengths must be an integer tensor.*Float"),
    ("lengths_2d", r"lengths must be a non-empty 1-D tensor"),
    ("views_different_frames", r"frames_a and frames_b must have the same shape"),
    ("views_different_features", r"frames_a and frames_b must have the same shape"),
    ("views_different_dtype", r"frames_a and frames_b must have the same dtype"),
    ("temperature_zero", r"temperature must be a finite number > 0.*0"),
    ("temperature_negative", r"temperature must be a finite number > 0.*-0.5"),
    ("temperature_nan", r"temperature must be a finite number > 0.*nan"),
    ("num_windows_zero", r"num_windows must be in \[1, 1024\] for mapping='window'.*0"),
    ("num_windows_negative", r"num_windows must be in \[1, 1024\] for mapping='window'.*-3"),
    ("num_windows_huge", r"num_windows must be in \[1, 1024\] for mapping='window'.*1000000"),
    ("frames_1d", r"frames_a must be a 2-D \[N, F\] tensor.*1-D"),
    ("frames_3d", r"frames_a must be a 2-D \[N, F\] tensor.*3-D"),
    ("frames_empty", r"frames_a must not be empty.*\[0, 7\]"),
    ("features_empty", r"frames_a must not be empty.*\[13, 0\]"),
    ("mapping_unknown", r"mapping must be one of 'all', 'window', 'frame'.*'windows'"),
    ("mapping_case", r"mapping must be one of 'all', 'window', 'frame'.*'Frame'"),
])
def test_seq_nce_bad_input(device, case, match):
    L = lambda x: torch.tensor(x, device=device)  # noqa: E731
    a = _frames(device)
    kwargs = {
        "lengths_sum_too_large": dict(lengths=L([3, 1, 7, 3])),
        "lengths_sum_too_small": dict(lengths=L([3, 1, 6, 2])),
        "length_zero": dict(lengths=L([3, 0, 8, 2])),
        "length_negative": dict(lengths=L([3, -2, 10, 2])),
        "lengths_float": dict(lengths=L([3.0, 1.0, 7.0, 2.0])),
        "lengths_2d": dict(lengths=L([LENGTHS])),
        "views_different_frames": dict(a=a, b=a[:12]),
        "views_different_features": dict(a=a, b=a[:, :6]),
        "views_different_dtype": dict(a=a, b=a.double()),
        "temperature_zero": dict(temperature=0.0),
        "temperature_negative": dict(temperature=-0.5),
        "temperature_nan": dict(temperature=float("nan")),
        "num_windows_zero": dict(mapping="window", num_windows=0),
        "num_windows_negative": dict(mapping="window", num_windows=-3),
        "num_windows_huge": dict(mapping="window", num_windows=10**6),  # used to hang
        "frames_1d": dict(a=a[:, 0], b=a[:, 0]),
        "frames_3d": dict(a=a[None], b=a[None]),
        "frames_empty": dict(a=a[:0], b=a[:0]),
        "features_empty": dict(a=a[:, :0], b=a[:, :0]),
        "mapping_unknown": dict(mapping="windows"),
        "mapping_case": dict(mapping="Frame"),
    }[case]
    with pytest.raises(RuntimeError, match=match):
        _seq_nce_call(device, **kwargs)


@pytest.mark.parametrize("num_windows", [0, 1025, 10**6])
def test_num_windows_range_is_the_references_and_the_fake_kernels(num_windows):
    """The reference (SEQCLR_EXT_REFERENCE=1) and the fake kernel (torch.compile, meta)
    reject what the kernels reject, with the same message (the reference used to fail on
    a 32 TB allocation, the kernel to run for hours)."""
    a = _frames("cpu")
    lengths = torch.tensor(LENGTHS)
    match = rf"num_windows must be in \[1, 1024\] for mapping='window', got {num_windows}"
    for fn, device in ((ref.seq_nce, "cpu"), (ops.seq_nce, "meta")):
        with pytest.raises(RuntimeError, match=match):
            fn(a.to(device), a.to(device), lengths.to(device), num_windows=num_windows)


@pytest.mark.parametrize("frames_device, lengths_device", [
    ("cpu", "meta"),
    ("meta", "cpu"),
    ("cuda", "cpu"),
    ("cpu", "cuda"),
])
def test_seq_nce_lengths_on_other_device(frames_device, lengths_device):
    """lengths must live with the frames. Without a GPU the other device is "meta": the
    dispatcher then routes the call to the op's fake (meta) kernel, which must check too
    (it used to return uninitialized CPU tensors)."""
    if "cuda" in (frames_device, lengths_device) and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    a = _frames(frames_device)
    lengths = torch.tensor(LENGTHS, device=lengths_device)
    with pytest.raises(RuntimeError, match=r"lengths must be on frames_a's device"):
        ops.seq_nce(a, a.clone(), lengths)


@pytest.mark.parametrize("case, match", [
    ("positive_too_large", r"positive must index columns in \[0, 6\).*\[0, 6\]"),
    ("positive_negative", r"positive must index columns in \[0, 6\).*\[-1, "),
    ("exclude_too_large", r"exclude must index columns in \[0, 6\) or be -1.*, 6\]"),
    ("exclude_below_minus_one", r"exclude must index columns in \[0, 6\) or be -1.*\[-2, "),
    ("positive_equals_exclude", r"positive and exclude must differ in every row"),
    ("positive_wrong_length", r"positive must have shape \[4\]"),
    ("exclude_float", r"exclude must be an int64 tensor"),
    ("feature_mismatch", r"rows and cols must have the same feature size.*3 and 2"),
    ("temperature_zero", r"temperature must be a finite number > 0"),
])
def test_nce_rows_bad_input(device, case, match):
    rows = torch.randn(4, 3, device=device)
    cols = torch.randn(6, 3, device=device)
    T = lambda x: torch.tensor(x, device=device)  # noqa: E731
    positive, exclude, temperature = T([0, 1, 2, 3]), T([1, 2, 3, -1]), 0.1
    if case == "positive_too_large":
        positive = T([0, 1, 2, 6])
    elif case == "positive_negative":
        positive = T([0, -1, 2, 3])
    elif case == "exclude_too_large":
        exclude = T([1, 2, 6, -1])
    elif case == "exclude_below_minus_one":
        exclude = T([1, 2, -2, -1])
    elif case == "positive_equals_exclude":
        exclude = T([1, 1, 3, -1])
    elif case == "positive_wrong_length":
        positive = T([0, 1, 2])
    elif case == "exclude_float":
        exclude = exclude.float()
    elif case == "feature_mismatch":
        cols = cols[:, :2]
    elif case == "temperature_zero":
        temperature = 0.0
    with pytest.raises(RuntimeError, match=match):
        ops.nce_rows(rows, cols, positive, exclude, temperature=temperature)


# ------------------------------------------------------------------------ non-contiguous

@pytest.mark.parametrize("mapping", MAPPINGS)
def test_seq_nce_non_contiguous(device, mapping):
    lengths = torch.tensor([5, 1, 9, 3, 2], device=device)
    a, b = make_views(lengths, 12, device=device, seed=9)
    # a: every other column of a wider tensor; b: a transposed [F, T] tensor;
    # lengths: every other element of a longer tensor.
    a_strided = torch.zeros(a.shape[0], 2 * a.shape[1], device=device)[:, ::2]
    a_strided.copy_(a)
    b_transposed = b.t().contiguous().t()
    lengths_strided = torch.stack([lengths, torch.zeros_like(lengths)], 1).flatten()[::2]
    assert not a_strided.is_contiguous() and not b_transposed.is_contiguous()
    assert not lengths_strided.is_contiguous()
    kw = dict(mapping=mapping, num_windows=3, temperature=0.1)
    want = run_seq_nce(ops.seq_nce, a, b, lengths, **kw)
    got = run_seq_nce(ops.seq_nce, a_strided, b_transposed, lengths_strided, **kw)
    for g, w, what in zip(got, want, ("loss", "grad frames_a", "grad frames_b")):
        torch.testing.assert_close(g, w, msg=lambda m: f"{what}: {m}")
    check_seq_nce(a_strided, b_transposed, lengths_strided, **kw)


def test_nce_rows_non_contiguous(device):
    rows, cols, positive, exclude, upstream = nce_rows_inputs(40, 150, 16, seed=10,
                                                              device=device)
    rows_t = rows.t().contiguous().t()
    cols_s = torch.zeros(cols.shape[0], 3 * cols.shape[1], device=device)[:, 1::3]
    cols_s.copy_(cols)
    positive_s = torch.stack([positive, positive], 1).flatten()[::2]
    exclude_s = torch.stack([exclude, exclude], 1).flatten()[1::2]
    assert not (rows_t.is_contiguous() or cols_s.is_contiguous()
                or positive_s.is_contiguous() or exclude_s.is_contiguous())
    want = run_nce_rows(ops.nce_rows, rows, cols, positive, exclude, upstream, temperature=0.1)
    got = run_nce_rows(ops.nce_rows, rows_t, cols_s, positive_s, exclude_s, upstream,
                       temperature=0.1)
    for g, w, what in zip(got, want, ("loss", "grad rows", "grad cols")):
        torch.testing.assert_close(g, w, msg=lambda m: f"{what}: {m}")
    # An expanded (stride-0) upstream gradient, as loss.sum() gives.
    rows_l = rows.clone().requires_grad_(True)
    cols_l = cols.clone().requires_grad_(True)
    ops.nce_rows(rows_l, cols_l, positive, exclude, temperature=0.1).sum().backward()
    ones = run_nce_rows(ops.nce_rows, rows, cols, positive, exclude,
                        torch.ones_like(upstream), temperature=0.1)
    torch.testing.assert_close(rows_l.grad, ones[1])
    torch.testing.assert_close(cols_l.grad, ones[2])


# ---------------------------------------------------------------------------- CUDA vs CPU

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("mapping", MAPPINGS)
def test_seq_nce_cuda_matches_cpu(cuda_device, mapping, dtype):
    gen = torch.Generator().manual_seed(13)
    lengths = torch.randint(1, 81, (40,), generator=gen)
    a, b = make_views(lengths, 64, dtype=dtype, seed=13)
    kw = dict(mapping=mapping, num_windows=5, temperature=0.1)
    cpu = run_seq_nce(ops.seq_nce, a, b, lengths, **kw)
    cuda = run_seq_nce(ops.seq_nce, a.to(cuda_device), b.to(cuda_device),
                       lengths.to(cuda_device), **kw)
    want = oracle_seq_nce(a, b, lengths, **kw)
    scales = seq_nce_scales(a, b, lengths, mapping, 5, 0.1)
    for what, c, g, w, s in zip(("loss", "grad frames_a", "grad frames_b"), cpu, cuda, want,
                                scales):
        assert g.device.type == "cuda" and g.dtype == dtype
        # Both accumulate in float32 (float64): they agree to within their own errors.
        err_cpu = (c.double() - w).norm().item()
        err_cuda = (g.double().cpu() - w).norm().item()
        floor = (torch.finfo(dtype).eps * w.norm().item()
                 + 16 * torch.finfo(torch.float32).eps * torch.as_tensor(s).norm().item())
        assert err_cuda <= 2 * err_cpu + floor, (what, err_cuda, err_cpu, floor)


def test_nce_rows_cuda_matches_cpu(cuda_device):
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        inputs = nce_rows_inputs(260, 900, 48, seed=14, dtype=dtype)
        cpu = run_nce_rows(ops.nce_rows, *inputs, temperature=0.07)
        cuda = run_nce_rows(ops.nce_rows, *(x.to(cuda_device) for x in inputs),
                            temperature=0.07)
        want = oracle_nce_rows(*inputs, temperature=0.07)
        for what, c, g, w in zip(("loss", "grad rows", "grad cols"), cpu, cuda, want):
            assert g.device.type == "cuda" and g.dtype == dtype
            err_cpu = (c.double() - w).norm().item()
            err_cuda = (g.double().cpu() - w).norm().item()
            floor = torch.finfo(dtype).eps * w.norm().item()
            assert err_cuda <= 2 * err_cpu + floor, (dtype, what, err_cuda, err_cpu, floor)
