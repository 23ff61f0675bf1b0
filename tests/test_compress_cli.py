"""edgec zoo / edgec compress: outputs, JSON report, config files and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from toolchain.cli import main
from toolchain.compress import metadata_of

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "compress_config.toml"


def test_zoo_lists_models(capsys):
    assert main(["zoo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["input_shape"] for r in rows}["cnn"] == [1, 8, 8]


def test_compress_writes_onnx_and_report(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    rc = main(["compress", "mlp16", "--prune", "0.5", "--quantize", "fixed<8,3>",
               "--epochs", "1", "-o", str(out)])
    assert rc == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [s["step"] for s in report["steps"]] == ["prune", "quantize"]
    for s in report["steps"]:
        for side in ("before", "after"):
            assert set(s[side]) >= {"accuracy", "params", "nonzeros", "macs", "bytes"}
    prune, quant = report["steps"]
    assert prune["after"]["nonzeros"] < 0.55 * prune["before"]["nonzeros"]
    assert quant["after"]["bytes"] < quant["before"]["bytes"] / 3
    assert report["export"]["onnx_accuracy"] > 85.0
    assert report["export"]["quantization"] == {"mode": "fixed", "W": 8, "I": 3,
                                                "weight_bits": 8, "act_bits": 8}
    meta = metadata_of(onnx.load(str(out)))
    assert meta["quantization"]["W"] == 8
    assert "prune -> quantize" in capsys.readouterr().out


def test_no_step_exports_the_float_model(tmp_path):
    out = tmp_path / "f.onnx"
    assert main(["compress", "mlp16", "-o", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["steps"] == [] and report["export"]["quantized"] is False
    assert report["export"]["onnx_accuracy"] == pytest.approx(report["initial"]["accuracy"])


def test_config_file_sets_the_options(tmp_path):
    cfg = tmp_path / "c.toml"
    out = tmp_path / "c.onnx"
    cfg.write_text(EXAMPLE.read_text().replace('"cnn"', '"mlp16"')
                   .replace('"out/cnn_p75_int8.onnx"', json.dumps(str(out)))
                   + "epochs = 1\n")
    assert main(["compress", "--config", str(cfg), "--qat-epochs", "0"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["steps"][0]["config"]["sparsity"] == 0.75
    assert report["steps"][1]["config"] == {"step": "quantize", "mode": "int8",
                                            "calibration": "percentile", "percentile": 99.99,
                                            "qat_epochs": 0}


def test_model_file_with_data(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "net.pt"
    torch.save(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5)), path)
    out = tmp_path / "net.onnx"
    assert main(["compress", str(path), "--data", "mlp16", "--quantize", "int8",
                 "-o", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["model"] == "net"


@pytest.mark.parametrize("argv,message", [
    (["compress", "nope", "-o", "X"], "unknown model 'nope'"),
    (["compress", "missing.pt", "-o", "X"], "model file not found: missing.pt"),
    (["compress", "mlp16", "--prune", "1.0", "-o", "X"], "--prune sparsity must be in [0, 1)"),
    (["compress", "mlp16", "--prune", "-0.5", "-o", "X"], "--prune sparsity must be in [0, 1)"),
    (["compress", "mlp16", "--steps", "prune,shrink", "--prune", "0.5", "-o", "X"],
     "unknown step 'shrink'"),
    (["compress", "mlp16", "--steps", "quantize", "--prune", "0.5", "-o", "X"],
     "leaves out prune"),
    (["compress", "mlp16", "--quantize", "int3", "-o", "X"], "unknown quantization mode 'int3'"),
    (["compress", "mlp16"], "compress needs -o OUT.onnx"),
    (["compress", "mlp16", "-o", "X.txt"], "-o must name an .onnx file"),
    (["compress", "mlp16", "--distill", "ghost", "-o", "X"], "unknown teacher 'ghost'"),
    (["compress", "NOTPT", "--quantize", "int8", "-o", "X"], "not a torch.nn.Module"),
    (["compress", "CONV1D", "--data", "mlp16", "--quantize", "int8", "--quantizer", "edgec",
      "-o", "X"], "unsupported op 'Conv1d' in node '1' for target 'quantize'"),
    (["compress", "LSTM", "--data", "mlp16", "-o", "X"], "must return logits of shape"),
    (["compress", "CONV1D", "--data", "cnn", "-o", "X"], "cannot run on the data's input"),
    (["compress", "mlp16", "--config", "nope.toml", "-o", "X"], "config file not found"),
    (["compress", "M.onnx", "-o", "X"], "is an ONNX model; compress takes a PyTorch model"),
])
def test_bad_input_is_one_line_and_nonzero(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"not": "a module"}, tmp_path / "NOTPT")
    (tmp_path / "M.onnx").write_bytes(b"")
    torch.save(nn.Sequential(nn.LSTM(16, 8)), tmp_path / "LSTM")
    torch.save(nn.Sequential(nn.Unflatten(1, (1, 16)), nn.Conv1d(1, 2, 3), nn.Flatten(),
                             nn.Linear(28, 5)), tmp_path / "CONV1D")
    argv = [str(tmp_path / ("x.onnx" if a == "X" else "x.txt")) if a in ("X", "X.txt") else a
            for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and err.startswith("edgec: error: ")
    assert message in err
    assert not list(tmp_path.glob("x.*"))
