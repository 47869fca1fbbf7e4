"""SEQCLR_EXT_REFERENCE=1: the package runs on its plain-PyTorch references (machines
without the built extension), and they agree with the kernels."""
import os
import subprocess
import sys
import textwrap

import torch

import seqclr_ext.ops as ops

SCRIPT = textwrap.dedent(r"""
    import sys
    import torch
    import seqclr_ext.ops as ops

    assert ops.USE_REFERENCE, "SEQCLR_EXT_REFERENCE=1 did not switch to the references"
    # The compiled library is neither loaded nor needed.
    assert not hasattr(torch.ops.seqclr_ext, "seq_nce"), "the kernels were loaded anyway"

    inputs = torch.load(sys.argv[1])
    out = {}
    for mapping in ("all", "window", "frame"):
        a = inputs["a"].clone().requires_grad_(True)
        b = inputs["b"].clone().requires_grad_(True)
        loss = ops.seq_nce(a, b, inputs["lengths"], mapping=mapping, num_windows=3,
                           temperature=0.2)
        loss.backward()
        out[mapping] = (loss.detach(), a.grad, b.grad)
    rows = inputs["rows"].clone().requires_grad_(True)
    cols = inputs["cols"].clone().requires_grad_(True)
    loss = ops.nce_rows(rows, cols, inputs["positive"], inputs["exclude"], temperature=0.2)
    loss.backward(inputs["upstream"])
    out["nce_rows"] = (loss.detach(), rows.grad, cols.grad)
    content = inputs["content"].clone().requires_grad_(True)
    style = inputs["style"].clone().requires_grad_(True)
    normalized = ops.siman_normalize(content, style, kernel_size=3, eps=1e-5)
    normalized.backward(inputs["upstream_siman"])
    out["siman_normalize"] = (normalized.detach(), content.grad, style.grad)
    torch.save(out, sys.argv[2])
""")


def _inputs():
    """float64, so that both sides are exact to ~1e-12 and any difference is a real one."""
    gen = torch.Generator().manual_seed(0)
    f64 = dict(generator=gen, dtype=torch.float64)
    lengths = torch.tensor([4, 1, 9, 2, 6])  # 1, 2 < num_windows = 3
    a = torch.randn(22, 16, **f64)
    b = a + 0.5 * torch.randn(22, 16, **f64)
    rows = torch.randn(10, 16, **f64) / 4
    cols = torch.randn(30, 16, **f64) / 4
    positive = torch.randint(0, 30, (10,), generator=gen)
    exclude = (positive + 1) % 30
    exclude[::3] = -1
    upstream = torch.randn(10, **f64)
    content = torch.randn(2, 3, 3, 4, **f64)
    style = torch.randn(2, 3, 4, 5, **f64)
    upstream_siman = torch.randn(2, 3, 3, 4, **f64)
    return dict(a=a, b=b, lengths=lengths, rows=rows, cols=cols, positive=positive,
                exclude=exclude, upstream=upstream, content=content, style=style,
                upstream_siman=upstream_siman)


def test_reference_mode_runs_and_matches_kernels(tmp_path):
    assert not ops.USE_REFERENCE, "this test compares against the kernels"
    inputs = _inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "run.py").write_text(SCRIPT)
    env = dict(os.environ, SEQCLR_EXT_REFERENCE="1")
    env.pop("SEQCLR_EXT_LIBRARY", None)
    # cwd = tmp_path: the installed package is imported, never the source folder.
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "inputs.pt"),
         str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = torch.load(tmp_path / "out.pt")

    for mapping in ("all", "window", "frame"):
        a = inputs["a"].clone().requires_grad_(True)
        b = inputs["b"].clone().requires_grad_(True)
        loss = ops.seq_nce(a, b, inputs["lengths"], mapping=mapping, num_windows=3,
                           temperature=0.2)
        loss.backward()
        for x, y, what in zip(got[mapping], (loss.detach(), a.grad, b.grad),
                              ("loss", "grad frames_a", "grad frames_b")):
            assert x.dtype == torch.float64
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10,
                                       msg=lambda m: f"{mapping}: {what}: {m}")
    rows = inputs["rows"].clone().requires_grad_(True)
    cols = inputs["cols"].clone().requires_grad_(True)
    loss = ops.nce_rows(rows, cols, inputs["positive"], inputs["exclude"], temperature=0.2)
    loss.backward(inputs["upstream"])
    for x, y, what in zip(got["nce_rows"], (loss.detach(), rows.grad, cols.grad),
                          ("loss", "grad rows", "grad cols")):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10,
                                   msg=lambda m: f"nce_rows: {what}: {m}")
    content = inputs["content"].clone().requires_grad_(True)
    style = inputs["style"].clone().requires_grad_(True)
    normalized = ops.siman_normalize(content, style, kernel_size=3, eps=1e-5)
    normalized.backward(inputs["upstream_siman"])
    for x, y, what in zip(got["siman_normalize"], (normalized.detach(), content.grad, style.grad),
                          ("output", "grad content", "grad style")):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10,
                                   msg=lambda m: f"siman_normalize: {what}: {m}")
