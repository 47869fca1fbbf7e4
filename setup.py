"""Build of record: the seqclr_ext._C operator library (CPU always, CUDA when possible).

SEQCLR_EXT_CUDA=1 forces the CUDA kernels (fails without a toolkit), =0 skips them;
unset, they are built when torch is a CUDA build and a CUDA toolkit is found. No GPU is
needed to compile them. TORCH_CUDA_ARCH_LIST picks the architectures; unset, those of
the visible GPUs, or with none visible the data-centre ones this torch supports (A100,
H100/H200, B200: 8.0, 9.0, 10.0, with PTX for the newest).
"""
import glob
import os
import re
import shutil
import sys

from setuptools import setup


def _toolkit_behind_nvcc():
    """CUDA_HOME of the toolkit that `nvcc` on PATH runs, also when it is a wrapper script."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    with open(nvcc, "rb") as f:
        head = f.read(4096)
    if not head.startswith(b"#!"):  # the real compiler: <home>/bin/nvcc
        return os.path.dirname(os.path.dirname(nvcc))
    target = re.search(rb"(/\S+)/bin/nvcc\b", head)
    return target.group(1).decode() if target else None


# torch reads CUDA_HOME when cpp_extension is imported, so it is settled first.
if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
    home = _toolkit_behind_nvcc()
    if home:
        os.environ["CUDA_HOME"] = home

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


DATA_CENTRE_ARCHS = ("8.0", "9.0", "10.0")


def _say(message):
    print(f"seqclr_ext setup: {message}", file=sys.stderr, flush=True)


def _with_cuda():
    forced = os.environ.get("SEQCLR_EXT_CUDA")
    if forced == "1":
        if torch.version.cuda is None or cpp_extension.CUDA_HOME is None:
            why = ("torch is a CPU build" if torch.version.cuda is None else
                   "no CUDA toolkit found (no nvcc on PATH, CUDA_HOME unset)")
            raise SystemExit(f"seqclr_ext setup: SEQCLR_EXT_CUDA=1 but {why}; "
                             "unset it or set SEQCLR_EXT_CUDA=0 to build the CPU kernels only")
        return True
    if forced is not None:
        _say("SEQCLR_EXT_CUDA=0: building the CPU kernels only")
        return False
    if torch.version.cuda is None:
        _say("torch is a CPU build: building the CPU kernels only")
        return False
    if cpp_extension.CUDA_HOME is None:
        _say("torch has CUDA but no CUDA toolkit was found (no nvcc on PATH, CUDA_HOME "
             "unset): building the CPU kernels only; install the toolkit for the CUDA ones")
        return False
    return True


def _default_cuda_archs():
    """TORCH_CUDA_ARCH_LIST when it is unset: torch's own choice (the visible GPUs) when a
    GPU is visible; otherwise the data-centre architectures this torch build supports
    (torch's choice is then an empty list, which its build code cannot handle)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return
    if torch.cuda.is_available():
        _say("CUDA architectures: those of the visible GPU(s); set TORCH_CUDA_ARCH_LIST "
             "(e.g. \"8.0;9.0\") to choose")
        return
    supported = {a.removeprefix("sm_") for a in torch.cuda.get_arch_list()}
    archs = [a for a in DATA_CENTRE_ARCHS if a.replace(".", "") in supported]
    if not archs:  # an unusual torch build: its newest architecture
        newest = max(supported, key=int)
        archs = [f"{newest[:-1]}.{newest[-1]}"]
    archs[-1] += "+PTX"
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    _say(f"no GPU visible: compiling the CUDA kernels for {';'.join(archs)}; set "
         "TORCH_CUDA_ARCH_LIST (e.g. \"9.0\") to choose, or SEQCLR_EXT_CUDA=0 to build "
         "the CPU kernels only")


def _extension():
    cpp = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cxx = ["-O3", "-fopenmp"]
    if not _with_cuda():
        return cpp_extension.CppExtension(
            "seqclr_ext._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"]
        )
    _default_cuda_archs()
    cu = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "seqclr_ext._C",
        cpp + cu,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=["-fopenmp"],
    )


class BuildExtension(cpp_extension.BuildExtension):
    """torch's build with a way out named when the CUDA compilation fails."""

    def build_extensions(self):
        try:
            super().build_extensions()
        except Exception:
            if any(s.endswith(".cu") for e in self.extensions for s in e.sources):
                _say("compiling the CUDA kernels failed (above). To build the CPU kernels "
                     "only: SEQCLR_EXT_CUDA=0 pip install --no-build-isolation -e .")
            raise


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
