"""PyTorch modules as compile input: .pt files on the CLI and module objects in the Python API,
exported to ONNX (QDQ when compressed), compiled, and checked like any ONNX model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from toolchain import api, models
from toolchain.cli import main
from toolchain.compress import Context, Prune, Quantize, compress
from toolchain.errors import ConfigError, ModelError


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()


def test_cli_compiles_a_saved_module_and_verifies(tmp_path, capsys):
    path = tmp_path / "cnn.pt"
    torch.save(_small_cnn(), path)
    out = tmp_path / "out"
    assert main(["compile", str(path), "-t", "host", "--input-shape", "x=1,1,8,8",
                 "-o", str(out)]) == 0
    assert "compiled cnn.pt for host" in capsys.readouterr().out
    manifest = json.loads((out / "edgec.json").read_text())
    assert manifest["inputs"][0]["name"] == "x"
    assert manifest["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert json.loads((out / "report.json").read_text())["input_model"] == "cnn.pt"
    # the artifact against onnxruntime on the exported model, and that model against PyTorch
    assert all(c.ok for c in api_verify(out))
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npy")]) == 0
    with torch.no_grad():
        ref = _small_cnn()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref, rtol=1e-4, atol=1e-4)


def api_verify(out: Path):
    from toolchain.commands.build import verify_folder

    return verify_folder(out)


def test_api_compiles_a_compressed_module_for_fpga(tmp_path):
    """A module straight out of compress(): its quantizers become exact ap_fixed types, its
    pruned weights stay zero, and per-layer options take the PyTorch module names."""
    ctx = Context.for_zoo("mlp16")
    small, _ = compress(models.trained("mlp16"), [Prune(0.5), Quantize("fixed<8,3>")], ctx,
                        "mlp16")
    out = tmp_path / "fpga"
    report = api.compile(small, "fpga-xcu250", out, input_shape={"input": (1, 16)},
                         reuse_factor=["layers.0=2"])
    dense = [layer for layer in report["layers"] if layer["kind"] == "dense"]
    assert [d["reuse_factor"] for d in dense] == [2, 1, 1, 1]
    # the quantizers' grids, exactly: 8-bit weights, fixed<8,3> activations
    assert all(d["weight"].startswith("fixed<8,") for d in dense)
    assert dense[0]["input"].startswith("fixed<8,3,")
    assert all(d["zero_weights"] >= d["weights"] // 2 for d in dense)
    assert report["compression"]["quantization"]["mode"] == "fixed"
    sim = api.simulate(out, dataset="mlp16", no_rtl=True)
    assert sim["c_emulation"]["argmax_agreement"] >= 0.99
    comparisons = api.verify(out)
    assert comparisons and all(c["ok"] for c in comparisons)
    # the folder's summary carries the estimate labels and the simulation's figures
    assert main(["report", str(out), "--html", str(tmp_path / "fpga.html")]) == 0
    html = (tmp_path / "fpga.html").read_text()
    assert "used (estimate)" in html and "DSP" in html and "C emulation" in html
    assert "226 samples" in html


def test_torch_input_errors(tmp_path, capsys):
    torch.save(_small_cnn(), tmp_path / "m.pt")
    torch.save(_small_cnn().state_dict(), tmp_path / "sd.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a pickle")
    out = tmp_path / "out"
    cases = [
        (["compile", str(tmp_path / "m.pt"), "-t", "host", "-o", str(out)],
         "no input shape: give one with --input-shape"),
        (["compile", str(tmp_path / "sd.pt"), "-t", "host", "--input-shape", "x=1,1,8,8",
          "-o", str(out)], "holds a dict (a state dict?), not a torch.nn.Module"),
        (["compile", str(tmp_path / "list.pt"), "-t", "host", "--input-shape", "x=1,1,8,8",
          "-o", str(out)], "holds a list, not a torch.nn.Module"),
        (["compile", str(tmp_path / "bad.pt"), "-t", "host", "--input-shape", "x=1,1,8,8",
          "-o", str(out)], "cannot load"),
        (["compile", str(tmp_path / "m.pt"), "-t", "host", "--input-shape", "x=1,1,8,8",
          "--input-shape", "y=1,2", "-o", str(out)], "one model input"),
        (["compile", str(tmp_path / "m.pt"), "-t", "host", "--input-shape", "x=1,3,8,8",
          "-o", str(out)], "cannot export the PyTorch model"),
    ]
    for argv, message in cases:
        assert main(argv) != 0, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()
        assert not list(tmp_path.glob(".out.*"))


def test_api_rejects_a_non_module(tmp_path):
    with pytest.raises(ConfigError, match="path or a torch.nn.Module"):
        api.compile(object(), "host", tmp_path / "o", input_shape="x=1,4")
    with pytest.raises(ModelError, match="not found"):
        api.compile(tmp_path / "missing.pt", "host", tmp_path / "o", input_shape="x=1,4")
