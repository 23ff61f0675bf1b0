"""Requantization of a QDQ conv exactly as onnxruntime's QLinearConv rounds it.

onnxruntime computes each output channel's scale as ``(s_x * s_w) / s_y`` in float32 (two
roundings); the float64 quotient rounded once to float32 differs in the last bit for about one
channel in four, and an accumulator whose scaled value lies within that bit of a .5 then rounds
the other way (resnet50's QDQ build: the first departure, 1 element of 802816 in res2_2's
branch2c conv). The graph here is built around such an accumulator: a 1x1 conv, uint8
activations, per-channel int8 weights, and an output scale chosen so that the two scales round
one element differently.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from toolchain.cli import main

K, O, P = 16, 8, 256  # input channels, output channels, pixels (a 1 x P image)
Z_X, Z_Y = 120, 128


def _tie_case():
    """Codes, weights and scales with one accumulator that the two scale formulas round apart."""
    rng = np.random.default_rng(0)
    xq = rng.integers(0, 256, (K, P))
    w = rng.integers(-127, 128, (O, K))
    acc = (w.astype(np.int64) @ (xq - Z_X)).astype(np.float32)
    s_x = np.float32(0.0173)
    s_w = rng.uniform(0.002, 0.01, O).astype(np.float32)
    top = float(np.abs(acc).max() * s_x * s_w.max()) / 120
    for _ in range(5000):
        s_y = np.float32(rng.uniform(0.9, 1.1) * top)
        ort_scale = (s_x * s_w) / s_y
        f64_scale = (np.float64(s_x) * s_w.astype(np.float64) / np.float64(s_y)).astype(np.float32)
        ref = np.rint(acc * ort_scale[:, None])
        if (np.abs(ref) <= 127).all() and (ref != np.rint(acc * f64_scale[:, None])).any():
            return xq, w, s_x, s_w, s_y
    raise AssertionError("no near-tie accumulator found")


def _model(w, s_x, s_w, s_y) -> onnx.ModelProto:
    init = [numpy_helper.from_array(np.array(s_x, np.float32), "s_x"),
            numpy_helper.from_array(np.array(Z_X, np.uint8), "z_x"),
            numpy_helper.from_array(w.reshape(O, K, 1, 1).astype(np.int8), "wq"),
            numpy_helper.from_array(s_w, "s_w"),
            numpy_helper.from_array(np.zeros(O, np.int8), "z_w"),
            numpy_helper.from_array(np.array(s_y, np.float32), "s_y"),
            numpy_helper.from_array(np.array(Z_Y, np.uint8), "z_y")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "z_x"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_x", "z_x"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "s_w", "z_w"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s_y", "z_y"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s_y", "z_y"], ["y"])]
    graph = helper.make_graph(
        nodes, "qconv_tie", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K, 1, P])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, O, 1, P])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_conv_requantization_matches_qlinearconv_at_a_near_tie(tmp_path):
    xq, w, s_x, s_w, s_y = _tie_case()
    model = tmp_path / "qconv_tie.onnx"
    onnx.save(_model(w, s_x, s_w, s_y), model)
    x = ((xq - Z_X).astype(np.float32) * s_x).reshape(1, K, 1, P)

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]

    out = tmp_path / "out"
    assert main(["compile", str(model), "-t", "host", "-o", str(out)]) == 0
    meta = json.loads((out / "edgec.json").read_text())
    assert meta["options"]["pipeline"] in ("auto", "cpu-int")
    kernels = json.loads((out / "report.json").read_text())["kernels"].values()
    assert any(op.startswith("qgemm") for k in kernels for op in k["ops"])  # the int8 GEMM
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    subprocess.run([out / "model", tmp_path / "x.bin", tmp_path / "y.bin"], check=True)
    got = np.fromfile(tmp_path / "y.bin", np.float32).reshape(want.shape)
    steps = np.rint((got - want) / s_y)
    assert not steps.any(), f"{int(np.count_nonzero(steps))} outputs off by one step"
