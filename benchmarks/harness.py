"""The race every bench_<op>.py suite runs: fused op vs eager reference vs
torch.compile(reference), forward or forward+backward, on CPU and CUDA.

A suite defines its cases and inputs, then per parametrized test calls

    skip_unless_runnable(impl, op, device)          # fused kernel built? Triton for compile?
    fn = implementation(impl, ops.<op>, reference.<op>)
    race(benchmark, op=..., case=..., impl=..., mode=..., device=..., dtype=...,
         rounds={"cpu": n, "cuda": m}, setup=..., target=..., fixtures=..., info={...},
         rates=lambda median: {...})

``setup()`` returns fresh ``(args, kwargs)`` each round (new leaf inputs for fwd_bwd, so no
gradient or graph carries over); ``target(*args)`` runs one call (and its backward) and
synchronizes. ``race`` warms up (torch.compile until its call time settles), measures the
peak memory of one untimed call, times ``rounds`` calls with benchmark.pedantic and records
extra_info: op, case, impl, mode, device, device_name, dtype, peak_memory_bytes (+ method),
checksum (sum of the first output, to see the implementations agree), torch_version,
torch_threads, the suite's ``info`` and ``rates(median)``, and, when the eager result of
the same case ran earlier in the session, speedup_vs_eager and memory_ratio_vs_eager
(benchmarks/report.py recomputes both from the JSON whatever the order).
"""
import time

import pytest
import torch

import seqclr_ext.ops as ops

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

# Eager results by (op, case, mode, device, dtype): (median, peak).
_EAGER = {}


def implementation(impl, fused, reference_fn):
    if impl == "fused":
        return fused
    if impl == "eager":
        return reference_fn
    torch._dynamo.reset()
    return torch.compile(reference_fn, dynamic=False)


def skip_unless_runnable(impl, op, device):
    """Skips a fused row where this build has no kernel for the device (or runs the
    references), and a compiled CUDA row without Triton."""
    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    if impl == "fused":
        if ops.USE_REFERENCE:
            pytest.skip("SEQCLR_EXT_REFERENCE=1: the fused op would run the reference")
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"seqclr_ext::{op}", key):
            pytest.skip(f"this build of seqclr_ext has no {key} kernel of {op}")
    if impl == "compiled" and key == "CUDA":
        from torch.utils._triton import has_triton
        if not has_triton():
            pytest.skip("torch.compile on CUDA needs Triton, which is not installed")


def skip_unless_fits(estimate, device, bench_options, memory_available):
    """Skips a case whose estimated peak bytes do not fit: on CUDA 90% of the free memory,
    on CPU --bench-max-cpu-gb and the memory available now less 2 GiB."""
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


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _warm_compiled(call):
    """Calls a torch.compile'd callable until its call time settles (the first call
    compiles; the next ones can still be slow). Returns the seconds spent."""
    start, previous = time.perf_counter(), None
    for _ in range(6):
        t0 = time.perf_counter()
        call()
        dt = time.perf_counter() - t0
        if previous is not None and dt < 1.5 * previous:
            break
        previous = dt
    return time.perf_counter() - start


def race(benchmark, *, op, case, impl, mode, device, dtype, rounds, setup, target, fixtures,
         info, rates):
    """Times one implementation of one case (see the module docstring). ``fixtures``: the
    conftest fixtures bench_options, device_name and peak_memory, as a dict."""
    def one_call():
        args, _ = setup()
        return target(*args)

    extra = {}
    if impl == "compiled":
        extra["compile_warmup_s"] = round(_warm_compiled(one_call), 3)
    outs = []
    peak, method = fixtures["peak_memory"](lambda: outs.append(one_call()), device)

    dev = torch.device(device).type
    rounds = fixtures["bench_options"]["rounds"] or rounds[dev]
    dtype_name = str(dtype).removeprefix("torch.")
    benchmark.group = f"{op}[{case}] {mode} {device} {dtype_name}"
    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1,
                       warmup_rounds=2 if dev == "cuda" else (1 if rounds >= 5 else 0))

    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    extra.update(info)
    extra.update(
        op=op, case=case, impl=impl, mode=mode, device=device,
        device_name=fixtures["device_name"](device), dtype=dtype_name,
        peak_memory_bytes=int(peak), peak_memory_method=method,
        checksum=float(outs[0].double().sum()), torch_version=torch.__version__,
        torch_threads=torch.get_num_threads())
    if median:
        extra.update(rates(median))
    key = (op, case, mode, device, dtype_name)
    if impl == "eager":
        _EAGER[key] = (median, peak)
    elif key in _EAGER:
        eager_median, eager_peak = _EAGER[key]
        if median and eager_median:
            extra["speedup_vs_eager"] = eager_median / median
        if peak and eager_peak:
            extra["memory_ratio_vs_eager"] = eager_peak / peak
    benchmark.extra_info.update(extra)
