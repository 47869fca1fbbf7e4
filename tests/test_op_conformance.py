"""The protocol every operator follows (DESIGN.md "Operator contracts"), run for each entry
of OPS (in the spirit of torchvision's RoIOpTester): agreement with its reference,
gradcheck, torch.library.opcheck, torch.compile, determinism, fake (meta) tensors, and the
bad inputs every op rejects alike. An entry says how to make the op's inputs; the per-op
files (test_seq_nce.py, test_tps_grid_sample.py, test_siman_normalize.py) keep the edge
cases of one op, its shape sweeps and its precision bars. CUDA cases skip without a GPU.
"""
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import seqclr_ext.ops as ops
from seqclr_ext.ops import reference as ref
from seqclr_ext.ops.tps_grid_sample import tps_base_points

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ input makers
# Each returns (args, kwargs) of the public wrapper: tensors made in float64 on the CPU,
# then moved; the floating tensors are the differentiable inputs. "small" is cheap enough
# for gradcheck and opcheck; "large" spans several blocks / tiles of every kernel.

def _seq_nce_inputs(mapping):
    def make(device, dtype, case="small", seed=0):
        g = _gen(seed)
        if case == "small":  # 1, 2 < num_windows = 3
            lengths = torch.tensor([[3, 1, 5, 2], [4, 1, 9, 3], [5, 2, 8]][seed % 3])
            num_features = 4
        else:  # 700 frames -> 1400 rows with mapping='frame'
            lengths = torch.randint(1, 60, (24,), generator=_gen(11))
            lengths[-1] += 700 - int(lengths.sum())
            assert int(lengths.min()) >= 1
            num_features = 64
        a = torch.randn(int(lengths.sum()), num_features, generator=g, dtype=torch.float64)
        b = a + 0.5 * torch.randn(a.shape, generator=g, dtype=torch.float64)
        to = dict(device=device, dtype=dtype)
        return ((a.to(**to), b.to(**to), lengths.to(device)),
                dict(mapping=mapping, num_windows=3 if case == "small" else 7, temperature=0.5))
    return make


def _nce_rows_inputs(device, dtype, case="small", seed=0):
    g = _gen(seed + 2)
    R, C, F = (6, 7, 3) if case == "small" else (300, 1100, 32)
    rows = torch.randn(R, F, generator=g, dtype=torch.float64) / F ** 0.5
    cols = torch.randn(C, F, generator=g, dtype=torch.float64) / F ** 0.5
    positive = torch.randint(0, C, (R,), generator=g)
    exclude = (positive + torch.randint(1, C, (R,), generator=g)) % C
    exclude[::2] = -1  # both kinds of rows: some exclude a column, some none
    to = dict(device=device, dtype=dtype)
    return ((rows.to(**to), cols.to(**to), positive.to(device), exclude.to(device)),
            dict(temperature=0.5))


def _tps_inputs(device, dtype, case="small", seed=0):
    g = _gen(seed + 3)
    batch, channels, h, w, k, size = ((2 + seed % 2, 2, 5, 7, 6, (4, 6)) if case == "small"
                                      else (5, 3, 32, 100, 20, (32, 100)))
    image = torch.rand(batch, channels, h, w, generator=g, dtype=torch.float64)
    cp = tps_base_points(k).expand(batch, -1, -1) \
        + 0.3 * torch.randn(batch, k, 2, generator=g, dtype=torch.float64)
    return (image.to(device, dtype), cp.to(device, dtype)), dict(output_size=size)


def _siman_inputs(device, dtype, case="small", seed=0):
    g = _gen(seed + 4)
    batch, channels, size, style_size = ((2 + seed % 2, 3, (3, 4), (4, 5)) if case == "small"
                                         else (5, 16, (8, 8), (8, 25)))

    def feature_map(h, w):  # per-channel offsets and scales, as real features have
        offset = 2 * torch.randn(batch, channels, 1, 1, generator=g, dtype=torch.float64)
        scale = torch.rand(batch, channels, 1, 1, generator=g, dtype=torch.float64) + 0.5
        return offset + scale * torch.randn(batch, channels, h, w, generator=g,
                                            dtype=torch.float64)

    return ((feature_map(*size).to(device, dtype), feature_map(*style_size).to(device, dtype)),
            dict(kernel_size=3, eps=1e-3))


# ------------------------------------------------------------- the raw ops under opcheck

def _seq_nce_opcheck(args, kw):
    a, b, lengths = args
    raw = (kw["mapping"], kw["num_windows"], kw["temperature"])
    _, instances, norms, lse = torch.ops.seqclr_ext.seq_nce(a, b, lengths, *raw)
    grad = torch.tensor(1.0, dtype=a.dtype, device=a.device)
    return [(torch.ops.seqclr_ext.seq_nce.default, (a, b, lengths, *raw)),
            (torch.ops.seqclr_ext.seq_nce_backward.default,
             (grad, instances, norms, lse, lengths, *raw, a.shape[0]))]


def _nce_rows_opcheck(args, kw):
    rows, cols, positive, exclude = args
    _, lse = torch.ops.seqclr_ext.nce_rows(*args, kw["temperature"])
    grad = torch.randn(rows.shape[0], generator=_gen(5), dtype=torch.float64).to(rows)
    return [(torch.ops.seqclr_ext.nce_rows.default, (*args, kw["temperature"])),
            (torch.ops.seqclr_ext.nce_rows_backward.default,
             (grad, *args, lse, kw["temperature"]))]


def _tps_opcheck(args, kw):
    image, cp = args
    size = list(kw["output_size"])
    grad = torch.randn(*image.shape[:2], *size, generator=_gen(6),
                       dtype=torch.float64).to(image)
    return [(torch.ops.seqclr_ext.tps_grid_sample.default, (image, cp, size))] + [
        (torch.ops.seqclr_ext.tps_grid_sample_backward.default, (grad, image, cp, image_rg))
        for image_rg in (True, False)]


def _siman_opcheck(args, kw):
    content, style = args
    raw = (kw["kernel_size"], kw["eps"])
    out, lse, cs, ss = torch.ops.seqclr_ext.siman_normalize(content, style, *raw)
    grad = torch.randn(out.shape, generator=_gen(7), dtype=torch.float64).to(out)
    return [(torch.ops.seqclr_ext.siman_normalize.default, (content, style, *raw)),
            (torch.ops.seqclr_ext.siman_normalize_backward.default,
             (grad, content, style, lse, cs, ss, *raw))]


@dataclass(frozen=True)
class Op:
    name: str                   # the schema's name (torch.ops.seqclr_ext.<name>)
    fn: Callable                # the public wrapper
    reference: Callable         # its oracle in seqclr_ext.ops.reference
    make: Callable              # (device, dtype, case="small", seed=0) -> (args, kwargs)
    arg_names: tuple            # the schema's names of the tensor arguments
    opcheck: Callable           # (args, kwargs) -> [(raw overload, raw args)], backward too
    atomic_grads: tuple = ()    # gradients a CUDA kernel scatters with atomics (not bitwise)
    # Whether every differentiable input's gradient may be asked for alone (a kernel that
    # skips an unneeded one).
    partial_grads: bool = False


OPS = [
    *(Op(f"seq_nce[{m}]", ops.seq_nce, ref.seq_nce, _seq_nce_inputs(m),
         ("frames_a", "frames_b", "lengths"), _seq_nce_opcheck) for m in ("all", "window", "frame")),
    Op("nce_rows", ops.nce_rows, ref.nce_rows, _nce_rows_inputs,
       ("rows", "cols", "positive", "exclude"), _nce_rows_opcheck),
    Op("tps_grid_sample", ops.tps_grid_sample, ref.tps_grid_sample, _tps_inputs,
       ("image", "control_points"), _tps_opcheck, atomic_grads=(0,), partial_grads=True),
    Op("siman_normalize", ops.siman_normalize, ref.siman_normalize, _siman_inputs,
       ("content", "style"), _siman_opcheck, partial_grads=True),
]


@pytest.fixture(params=OPS, ids=lambda op: op.name)
def op(request):
    return request.param


def _schema_name(op):
    return op.name.split("[")[0]


def _run(fn, args, kw, seed=0):
    """Output (its first element for the ops that return a loss per row) and the gradients
    of every floating input for a fixed random upstream gradient."""
    args = [a.detach().clone().requires_grad_(True) if a.is_floating_point() else a
            for a in args]
    inputs = [a for a in args if a.requires_grad]
    out = fn(*args, **kw)
    upstream = torch.randn(out.shape, generator=_gen(seed + 1000), dtype=torch.float64)
    grads = torch.autograd.grad(out, inputs, upstream.to(out))
    return (out.detach(), *grads)


# --------------------------------------------------------------------------- reference

def test_matches_reference(op, device):
    """float64 on the device against the float64 reference on the CPU: values, gradients,
    dtypes, devices and shapes."""
    args, kw = op.make(device, torch.float64)
    got = _run(op.fn, args, kw)
    want = _run(op.reference, [a.cpu() for a in args], kw)
    for g, w in zip(got, want):
        assert g.dtype == torch.float64 and g.device == args[0].device
        torch.testing.assert_close(g.cpu(), w, rtol=1e-9, atol=1e-9 * (w.abs().max() + 1))


def test_gradcheck(op, device):
    args, kw = op.make(device, torch.float64)
    args = [a.requires_grad_(True) if a.is_floating_point() else a for a in args]
    inputs = [a for a in args if a.requires_grad]

    def fn(*xs):
        it = iter(xs)
        return op.fn(*(next(it) if a.is_floating_point() else a for a in args), **kw)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_opcheck(op, device, dtype):
    """The forward with every combination of inputs requiring grad (both or neither where
    the op always computes both gradients), and the backward op on its own."""
    args, kw = op.make(device, dtype)
    floating = [i for i, a in enumerate(args) if a.is_floating_point()]
    combos = ([(True, True), (False, True), (True, False), (False, False)] if op.partial_grads
              else [(True, True), (False, False)])
    for combo in combos:
        flags = dict(zip(floating, combo))
        marked = [a.clone().requires_grad_(flags[i]) if i in flags else a
                  for i, a in enumerate(args)]
        forward, *_ = op.opcheck(marked, kw)
        torch.library.opcheck(*forward)
    for overload, raw in op.opcheck(args, kw)[1:]:
        torch.library.opcheck(overload, tuple(x.detach() if isinstance(x, torch.Tensor) else x
                                              for x in raw))


def test_extra_outputs_are_not_differentiable(op, device):
    """The raw ops' saved-for-backward outputs carry no gradient formula: they must be
    marked non-differentiable, so that backpropagating through them fails loudly instead
    of silently giving zero gradients."""
    args, kw = op.make(device, torch.float32)
    args = [a.requires_grad_(True) if a.is_floating_point() else a for a in args]
    overload, raw = op.opcheck(args, kw)[0]
    outputs = overload(*raw)
    if isinstance(outputs, torch.Tensor):
        return  # tps_grid_sample returns its output only
    assert outputs[0].requires_grad
    for i, extra in enumerate(outputs[1:], 1):
        assert not extra.requires_grad, f"output {i} would get a silently zero grad"


# ------------------------------------------------------------------------ torch.compile

@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile(op, device, dynamic):
    """Ops around the custom op (so the compiled graph is not the op alone), compiled with
    fullgraph=True; inputs of two or three shapes (one dynamic-shape compilation serves them all:
    seq_nce's total_frames is a SymInt of its backward). Values and gradients match eager,
    and eager matches the reference (test_matches_reference)."""
    def fn(*args, **kw):
        args = [a * 2.0 if a.is_floating_point() else a for a in args]
        return (op.fn(*args, **kw).sin() ** 2).mean()

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic)
    for seed in range(3 if dynamic else 2):
        args, kw = op.make(device, torch.float32, seed=seed)
        for g, w in zip(_run(compiled, args, kw), _run(fn, args, kw)):
            torch.testing.assert_close(g, w)


# -------------------------------------------------------------------------- determinism

def test_deterministic(op, device):
    """Several blocks and tiles, run twice: bitwise identical values and gradients (those
    scattered with atomics excepted on CUDA) and, on CPU, across thread counts."""
    args, kw = op.make(device, torch.float32, "large")
    first, second = _run(op.fn, args, kw), _run(op.fn, args, kw)
    assert torch.equal(first[0], second[0])
    for i, (x, y) in enumerate(zip(first[1:], second[1:])):
        if device.type == "cpu" or i not in op.atomic_grads:
            assert torch.equal(x, y), f"gradient {i} differs between two runs"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            single = _run(op.fn, args, kw)
        finally:
            torch.set_num_threads(threads)
        for x, y in zip(first, single):
            assert torch.equal(x, y), "one thread and several differ"


# --------------------------------------------------------------------- fake (meta) tensors

def test_all_meta_inputs(op):
    """Every input on meta (as FakeTensors under torch.compile): the fake kernels give the
    shapes and dtypes of the real op, forward and backward, reading no data."""
    args, kw = op.make("cpu", torch.float32)
    real = _run(op.fn, args, kw)
    fake = _run(op.fn, [a.to("meta") for a in args], kw)
    for r, f in zip(real, fake):
        assert f.device.type == "meta" and f.shape == r.shape and f.dtype == r.dtype


def test_input_on_another_device(op):
    """One input on meta, the others on the CPU: the dispatcher routes the call to the
    fake kernel, which must reject it as the kernels do, naming the argument (seq_nce and
    nce_rows used to return uninitialized tensors)."""
    args, kw = op.make("cpu", torch.float32)
    first = op.arg_names[0]
    for i, name in enumerate(op.arg_names[1:], 1):
        moved = [a.to("meta") if j == i else a for j, a in enumerate(args)]
        with pytest.raises(RuntimeError, match=rf"{name} must be on {first}'s device cpu, "
                                               rf"got meta"):
            op.fn(*moved, **kw)


def test_input_on_another_device_cuda(op, cuda_device):
    args, kw = op.make("cpu", torch.float32)
    for i, name in enumerate(op.arg_names[1:], 1):
        moved = [a.to(cuda_device) if j == i else a for j, a in enumerate(args)]
        with pytest.raises(RuntimeError, match=rf"{name} must be on {op.arg_names[0]}'s device"):
            op.fn(*moved, **kw)


# ---------------------------------------------------------------------------- bad input

def test_double_backward_is_refused(op, device):
    """No op has a second derivative: asking for one says so, instead of autograd's
    unrelated message about a tensor without grad_fn (or a silently missing term)."""
    args, kw = op.make(device, torch.float64)
    args = [a.requires_grad_(True) if a.is_floating_point() else a for a in args]
    inputs = [a for a in args if a.requires_grad]
    with pytest.raises(RuntimeError,
                       match=rf"double backward is not supported for {_schema_name(op)}"):
        grads = torch.autograd.grad(op.fn(*args, **kw).sum(), inputs, create_graph=True)
        sum(g.sum() for g in grads).backward()


def test_integer_input_is_refused(op, device):
    args, kw = op.make(device, torch.float32)
    args = [a.long() if i == 0 else a for i, a in enumerate(args)]
    with pytest.raises(RuntimeError, match=rf"{op.arg_names[0]} must be float32, float64, "
                                           rf"float16 or bfloat16.*Long"):
        op.fn(*args, **kw)
