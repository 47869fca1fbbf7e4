"""Shared machinery of the pytest-benchmark suites in benchmarks/.

Collection: pyproject's pytest settings collect ``test_*.py`` from ``tests/`` only, so the
suites run only when named (``pytest benchmarks/`` or ``pytest benchmarks/bench_<op>.py``);
the hook below makes pytest collect this folder's ``bench_*.py`` files.

Fixtures: ``device_name`` (the CPU model or the CUDA device's name, recorded with every
result), ``peak_memory`` (the peak memory that one call adds: CUDA allocator statistics,
or the process's resident-set high-water mark on CPU) and ``bench_options`` (the
command-line options added here).
"""
import ctypes
import os
import platform
import sys
import threading
import time

import pytest
import torch

# The suites import their shared race (benchmarks/harness.py) by name; pyproject's
# importlib import mode does not put this folder on sys.path by itself.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- collection

def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest's own python plugin whatever
    # their name; collecting them here too would run them twice.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


# --------------------------------------------------------------------------- options

def pytest_addoption(parser):
    group = parser.getgroup("seqclr_ext benchmarks")
    group.addoption(
        "--bench-rounds", type=int, default=None,
        help="timed rounds of every case (default: a per-case number, few for the "
             "seconds-long CPU cases)")
    group.addoption(
        "--bench-max-cpu-gb", type=float, default=16.0,
        help="skip a CPU case whose estimated peak memory exceeds this many GiB "
             "(default 16), or exceeds the memory available now less 2 GiB")


@pytest.fixture(scope="session")
def bench_options(request):
    return {
        "rounds": request.config.getoption("--bench-rounds"),
        "max_cpu_bytes": request.config.getoption("--bench-max-cpu-gb") * 2**30,
    }


# --------------------------------------------------------------------------- device name

def _cpu_name():
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    return f"{model} ({os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()})"


def _device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name()


@pytest.fixture(scope="session")
def device_name():
    return _device_name


# --------------------------------------------------------------------------- peak memory
#
# CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), less what was
# allocated before the call.
#
# CPU: the kernel's resident-set high-water mark (VmHWM in /proc/self/status), reset just
# before the call by writing "5" to /proc/self/clear_refs (Linux >= 4.0), less the resident
# set before the call. RSS only tracks the tensors a call allocates if freed memory goes back
# to the OS and new allocations get fresh pages: glibc serves large blocks with mmap, but its
# threshold adapts upwards (to 32 MiB) and blocks below it come from heap memory that is
# already resident. So, on glibc, malloc's thresholds are fixed for the session (mmap above
# 32 MiB, trim above 64 MiB: the values the adaptive rule ends at, so timings see the usual
# behaviour) and lowered to 64 KiB only while a peak is measured. Where clear_refs cannot be
# written, a sampler thread reads /proc/self/statm every 0.5 ms (it can miss short peaks).

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TIMED_MMAP, _TIMED_TRIM, _MEASURE_MMAP = 32 << 20, 64 << 20, 64 << 10


def _load_glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_glibc()
if _LIBC is not None:
    _LIBC.mallopt(_M_MMAP_THRESHOLD, _TIMED_MMAP)
    _LIBC.mallopt(_M_TRIM_THRESHOLD, _TIMED_TRIM)

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _hwm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = _rss_bytes()
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.0005)


def _cpu_peak(fn):
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
        _LIBC.mallopt(_M_MMAP_THRESHOLD, _MEASURE_MMAP)
    try:
        before = _rss_bytes()
        if _reset_hwm():
            fn()
            peak, method = _hwm_bytes(), "VmHWM"
        else:
            sampler = _Sampler()
            sampler.start()
            try:
                fn()
            finally:
                sampler.done.set()
                sampler.join()
            peak, method = max(sampler.peak, _rss_bytes()), "RSS sampler"
    finally:
        if _LIBC is not None:
            _LIBC.mallopt(_M_MMAP_THRESHOLD, _TIMED_MMAP)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _TIMED_TRIM)
    return max(peak - before, 0), method


def _cuda_peak(fn, device):
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before, "cuda.max_memory_allocated"


def _peak_memory(fn, device):
    """Run fn() once; return (extra bytes at its peak, how it was measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    return _cpu_peak(fn)


@pytest.fixture(scope="session")
def peak_memory():
    return _peak_memory


def available_cpu_bytes():
    """MemAvailable from /proc/meminfo (None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@pytest.fixture(scope="session")
def memory_available():
    return available_cpu_bytes
