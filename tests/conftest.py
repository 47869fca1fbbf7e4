"""Shared fixtures of the seqclr_ext test suite.

Tests import the *installed* package (pyproject sets ``--import-mode=importlib``); run them
with plain ``pytest`` from the repository root.
"""
import os
from pathlib import Path

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
def subprocess_env():
    """Environment for a child Python (run with a cwd outside the repository: ``python -m``
    puts the cwd first on sys.path, and the source folder must not shadow the installed
    package) that imports the same seqclr_ext as this test."""
    root = str(Path(seqclr_ext.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


@pytest.fixture(scope="session")
def word_lmdb():
    """``make(path, words) -> str(path)``: a tiny LMDB of the words drawn with PIL's
    built-in bitmap font, labelled with themselves (for the CLI tests)."""
    from PIL import Image, ImageDraw

    from seqclr_ext.data import write_lmdb

    def image(word):
        img = Image.new("L", (8 * len(word) + 8, 20), 255)
        ImageDraw.Draw(img).text((4, 4), word, fill=0)
        return img

    def make(path, words):
        write_lmdb(path, [(image(w), w) for w in words])
        return str(path)
    return make
