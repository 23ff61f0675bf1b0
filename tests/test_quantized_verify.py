"""Quantized outputs are verified to one quantization step: exact integer results can still
land one step apart when a float difference before the last QuantizeLinear crosses a rounding
boundary (arm-a76's fused multiply-adds do, on the zoo fixed-point CNN)."""

from __future__ import annotations

import json

import numpy as np

from onnx_graphs import needs_target
from toolchain.cli import main
from toolchain.reference import compare


def test_compare_accepts_one_step_and_no_more():
    ref = np.array([0.0, 1.0, 2.0, 8.0], dtype=np.float32)
    step = 0.25
    one = ref + np.array([0, step, 0, 0], dtype=np.float32)
    two = ref + np.array([0, 2 * step, 0, 0], dtype=np.float32)
    assert not compare("y", one, ref, 1e-4).ok
    assert compare("y", one, ref, 1e-4, step * 1.0001).ok
    c = compare("y", two, ref, 1e-4, step * 1.0001)
    assert not c.ok and c.mismatched == 1 and c.abs_tolerance == step * 1.0001


@needs_target("arm-a76")
def test_fixed_point_cnn_verifies_on_a76(tmp_path, capsys):
    onnx_path = tmp_path / "cnn_q8.onnx"
    assert main(["compress", "cnn", "--quantize", "fixed<8,3>", "-o", str(onnx_path)]) == 0
    out = tmp_path / "a76"
    assert main(["compile", str(onnx_path), "-t", "arm-a76", "--input-shape",
                 "input=1,1,8,8", "-o", str(out)]) == 0
    manifest = json.loads((out / "edgec.json").read_text())
    assert manifest["output_steps"] == {"logits": 2.0 ** -5}  # fixed<8,3>: 5 fraction bits
    capsys.readouterr()
    assert main(["verify", str(out), "--json", str(tmp_path / "v.json")]) == 0
    (c,) = json.loads((tmp_path / "v.json").read_text())
    assert c["ok"] and c["max_abs_error"] <= 2.0 ** -5
