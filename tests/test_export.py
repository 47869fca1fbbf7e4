"""seqclr_ext.export: the ONNX model in onnxruntime and the TorchScript one in PyTorch give
the eager model's logits and texts on rendered images, for a batch size and width other
than the traced ones, with a non-identity TPS warp."""
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from seqclr_ext import checkpoints, export
from seqclr_ext.data import Charset, RecognitionCollate
from seqclr_ext.data.render import FONT_ROOT, render_sample
from seqclr_ext.models import Recognizer

WORDS = ("cat", "Dog", "42", "tree!")


@pytest.fixture(scope="module")
def images():
    """WORDS rendered by the built-in renderer at 32 x 140 (the export traces 32 x 100)."""
    rng = np.random.default_rng(0)
    font = str(FONT_ROOT / "truetype/dejavu/DejaVuSans.ttf")
    samples = [(render_sample(rng, w, font, "scene"), w) for w in WORDS]
    return RecognitionCollate(None, width=140)(samples).images[:3]


def _checkpoint(path, decoder):
    charset = Charset.printable()
    torch.manual_seed(0)
    model = Recognizer(num_chars=len(charset), preset="small", tps=True, decoder=decoder,
                       max_length=3)   # attention: 4 unrolled steps (export time)
    with torch.no_grad():   # a warp away from the identity, so the TPS grid matters
        model.transformation.localization.fc2.weight.normal_(0, 0.02)
    model.eval()
    checkpoints.save({"model": model.state_dict(), "model_config": asdict(model.config),
                "charset": {"symbols": charset.symbols, "case_insensitive": False},
                "config": {"keep_ratio": False}, "step": 0}, path, "recognizer")
    return model, charset


def _texts(model, charset, logits):
    lengths = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long)
    return [charset.decode(ids) for ids in model.decode({"logits": logits, "lengths": lengths})]


@pytest.mark.parametrize("decoder", ["ctc", "attention"])
def test_onnx_and_torchscript_match_eager(decoder, images, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model, charset = _checkpoint(tmp_path / "best.pt", decoder)
    with torch.no_grad():
        eager = model(images, stop_early=False)["logits"]
        assert torch.equal(eager[:, :model(images)["logits"].shape[1]], model(images)["logits"])
    expected = _texts(model, charset, eager)

    for fmt, suffix in (("torchscript", "pt"), ("onnx", "onnx")):
        out = tmp_path / f"model.{suffix}"
        assert export.main(["--checkpoint", str(tmp_path / "best.pt"), "--format", fmt,
                            "--out", str(out)]) == 0
        if fmt == "torchscript":
            extra = {"seqclr_ext.json": ""}
            with torch.no_grad():
                logits = torch.jit.load(str(out), _extra_files=extra)(images)
            meta = json.loads(extra["seqclr_ext.json"])
        else:
            graph = onnx.load(str(out))
            assert graph.opset_import[0].version >= 16
            assert "GridSample" in {node.op_type for node in graph.graph.node}
            meta = json.loads({p.key: p.value for p in graph.metadata_props}["seqclr_ext"])
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            logits = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
        assert meta["charset"] == charset.symbols and meta["decoder"] == decoder
        assert logits.shape == eager.shape
        torch.testing.assert_close(logits, eager, rtol=0, atol=1e-4, msg=fmt)
        assert _texts(model, charset, logits) == expected, fmt


def test_bad_arguments(tmp_path, capsys):
    _checkpoint(tmp_path / "best.pt", "ctc")
    with pytest.raises(SystemExit, match="^error: --opset must be at least 16, got 15"):
        export.main(["--checkpoint", str(tmp_path / "best.pt"), "--format", "onnx",
                     "--out", str(tmp_path / "m.onnx"), "--opset", "15"])
    assert export.main(["--checkpoint", str(tmp_path / "nothing.pt"), "--format",
                        "torchscript", "--out", str(tmp_path / "m.pt")]) == 2
    assert "nothing.pt" in capsys.readouterr().err
