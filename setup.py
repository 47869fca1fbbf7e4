"""Build of record: the seqclr_ext._C operator library (CPU always, CUDA when possible).

SEQCLR_EXT_CUDA=1 forces the CUDA kernels (fails without a toolkit), =0 skips them;
unset, they are built when torch is a CUDA build and a CUDA toolkit is found. No GPU is
needed to compile them. TORCH_CUDA_ARCH_LIST picks the architectures as usual.
"""
import glob
import os
import re
import shutil

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


def _with_cuda():
    forced = os.environ.get("SEQCLR_EXT_CUDA")
    if forced is not None:
        return forced == "1"
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _extension():
    cpp = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cxx = ["-O3", "-fopenmp"]
    if not _with_cuda():
        return cpp_extension.CppExtension(
            "seqclr_ext._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"]
        )
    cu = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "seqclr_ext._C",
        cpp + cu,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
