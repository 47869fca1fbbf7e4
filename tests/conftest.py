"""Shared fixtures of the seqclr_ext test suite.

Tests import the *installed* package (pyproject sets ``--import-mode=importlib``); run them
with plain ``pytest`` from the repository root.
"""
import os

# Idle OpenMP workers sleep instead of spinning. On a shared, oversubscribed CPU a spinning
# worker makes every small parallel region wait for a time slice (~30-80 ms per op call
# here instead of ~1 ms); results are unchanged. libgomp reads this when torch loads it,
# so it is set before the first `import torch`; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import seqclr_ext  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="session", params=["cpu", "cuda"])
def device(request):
    """Every test that takes ``device`` runs on the CPU and, where a GPU exists, on CUDA.

    Session-scoped so that hypothesis tests may use it (a function-scoped fixture would be
    shared between the generated examples, which hypothesis rejects)."""
    if request.param == "cuda" and not HAS_CUDA:
        pytest.skip("CUDA is not available")
    return torch.device(request.param)


@pytest.fixture
def cuda_device():
    """For tests that only make sense with a GPU (CUDA against CPU, cross-device inputs)."""
    if not HAS_CUDA:
        pytest.skip("CUDA is not available")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def package_env():
    """Environment for a subprocess that must import the same seqclr_ext as the tests
    (installed or source tree). Run it with cwd outside the repository: ``python -m`` puts
    the cwd first on sys.path, and the source folder (no compiled kernels) must not shadow
    the installed package. Shared: copy it to change it."""
    root = str(Path(seqclr_ext.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
