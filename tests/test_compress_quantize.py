"""Quantize and the QDQ ONNX export: modes, integer ranges, metadata, onnxruntime vs PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from toolchain import models
from toolchain.compress import (Context, Prune, Quantize, compress, export_onnx, metadata_of,
                                onnx_accuracy, parse_mode, quantization_meta)
from toolchain.errors import ConfigError, UnsupportedOpError


def quantized(name, *steps):
    ctx = Context.for_zoo(name)
    model, report = compress(models.trained(name), list(steps), ctx, name)
    return model, report, ctx


def export(model, ctx, tmp_path, report, mode):
    path = tmp_path / "m.onnx"
    res = export_onnx(model, path, ctx.X_test, steps=report.step_configs(),
                      mode=quantization_meta(mode))
    return onnx.load(str(path)), res


def inits(proto):
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


@pytest.mark.parametrize("text,expected", [
    ("int8", (8, 8, False, None)), ("int4", (4, 8, False, None)),
    ("fixed<8,3>", (8, 8, True, (8, 3))), ("FIXED< 6, 2 >", (6, 6, True, (6, 2)))])
def test_parse_mode(text, expected):
    s = parse_mode(text)
    assert (s.weight_bits, s.act_bits, s.pow2, s.fixed) == expected


@pytest.mark.parametrize("text", ["int3", "fixed<16,6>", "fixed<8,9>", "float8", ""])
def test_bad_mode_is_a_config_error(text):
    with pytest.raises(ConfigError):
        parse_mode(text)


@pytest.mark.parametrize("calibration", ["minmax", "percentile", "histogram"])
def test_int8_ptq_cnn_meets_the_bar(calibration, tmp_path):
    model, report, ctx = quantized("cnn", Quantize("int8", calibration=calibration))
    proto, res = export(model, ctx, tmp_path, report, "int8")
    float_acc = report.initial.accuracy
    acc = onnx_accuracy(res.path, ctx.X_test, ctx.y_test)
    assert float_acc - acc <= 0.5
    assert res.quantized and res.max_abs_error <= res.tolerance
    assert report.final.bytes < report.initial.bytes / 3.5
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DequantizeLinear") == 2 * 4 + 1 and ops.count("QuantizeLinear") == 4 + 1
    # every conv / gemm weight is an int8 initializer feeding a per-channel DequantizeLinear
    ini = inits(proto)
    for name, layer in metadata_of(proto)["layers"].items():
        q = ini[layer["onnx_weight"]]
        assert q.dtype == np.int8 and np.abs(q).max() <= 127 and np.abs(q).max() >= 100, name
        assert layer["weight_bits"] == 8 and layer["act_bits"] == 8


def test_onnxruntime_matches_pytorch_exactly_without_graph_optimizations(tmp_path):
    model, report, ctx = quantized("transformer", Quantize("int8"))
    _, res = export(model, ctx, tmp_path, report, "int8")
    assert res.max_abs_error <= res.tolerance
    assert res.optimized_argmax_agreement >= 99.0


def test_int4_weights_stay_in_range(tmp_path):
    model, report, ctx = quantized("mlp", Quantize("int4"))
    proto, _ = export(model, ctx, tmp_path, report, "int4")
    ini = inits(proto)
    meta = metadata_of(proto)
    assert meta["quantization"]["weight_bits"] == 4
    for layer in meta["layers"].values():
        q = ini[layer["onnx_weight"]]
        assert np.abs(q).max() == 7 and layer["weight_bits"] == 4
    assert report.final.bytes < report.initial.bytes / 5


@pytest.mark.parametrize("w,i", [(8, 3), (6, 3)])
def test_fixed_point_scales_are_powers_of_two(w, i, tmp_path):
    model, report, ctx = quantized("mlp16", Quantize(f"fixed<{w},{i}>"))
    proto, res = export(model, ctx, tmp_path, report, f"fixed<{w},{i}>")
    meta = metadata_of(proto)
    assert meta["quantization"] == {"mode": "fixed", "W": w, "I": i, "weight_bits": w,
                                    "act_bits": w}
    ini = inits(proto)
    for name, layer in meta["layers"].items():
        assert layer["weight_scale_pow2"] and layer["act_frac_bits"] == w - i
        scale = ini[layer["onnx_weight"].replace("_quantized", "_scale")]
        assert scale.shape == () and layer["weight_axis"] is None
        assert scale == 2.0 ** -layer["weight_frac_bits"], name
        q = ini[layer["onnx_weight"]]
        assert q.min() >= -(2 ** (w - 1)) and q.max() <= 2 ** (w - 1) - 1
        assert layer["act_scale"] == 2.0 ** -(w - i) and layer["act_zero_point"] == 0
    assert res.max_abs_error <= res.tolerance
    has_clip = any(n.op_type == "Clip" for n in proto.graph.node)
    assert has_clip == (w < 8)


def test_sparsity_and_steps_reach_the_metadata(tmp_path):
    model, report, ctx = quantized("mlp16", Prune(0.5, rounds=1, epochs=1), Quantize("int8"))
    proto, _ = export(model, ctx, tmp_path, report, "int8")
    meta = metadata_of(proto)
    assert [s["step"] for s in meta["steps"]] == ["prune", "quantize"]
    for layer in meta["layers"].values():
        assert abs(layer["sparsity"] - 0.5) < 0.01
        assert layer["onnx_op"] == "Gemm" and layer["weight_axis"] == 0
    assert abs(np.mean(inits(proto)[meta["layers"]["layers.0"]["onnx_weight"]] == 0) - 0.5) < 0.01


def test_qat_recovers_what_4_bit_ptq_loses():
    ptq, r1, ctx = quantized("mlp16", Quantize("fixed<4,2>"))
    qat, r2, _ = quantized("mlp16", Quantize("fixed<4,2>", qat_epochs=3))
    assert not torch.equal(ptq.layers[0].weight, qat.layers[0].weight)
    assert r1.initial.accuracy - r1.final.accuracy > 4.0  # 4-bit PTQ hurts this model
    assert r2.final.accuracy > r1.final.accuracy + 2.0  # QAT wins most of it back


def test_metadata_matches_the_qdq_nodes(tmp_path):
    """What the FPGA backend reads from the metadata is what the graph computes."""
    model, report, ctx = quantized("cnn", Quantize("int8"))
    proto, _ = export(model, ctx, tmp_path, report, "int8")
    ini = inits(proto)
    nodes = {n.name: n for n in proto.graph.node}
    producer = {o: n for n in proto.graph.node for o in n.output}
    meta = metadata_of(proto)
    for name, layer in meta["layers"].items():
        node = nodes[layer["onnx_node"]]
        assert node.op_type == layer["onnx_op"]
        assert layer["onnx_op"] == ("Conv" if name.startswith("features") else "Gemm")
        w_dq = producer[node.input[1]]
        assert w_dq.op_type == "DequantizeLinear" and w_dq.input[0] == layer["onnx_weight"]
        x_dq = producer[node.input[0]]
        x_q = producer[x_dq.input[0]]
        assert (x_dq.op_type, x_q.op_type) == ("DequantizeLinear", "QuantizeLinear")
        assert float(ini[x_q.input[1]]) == pytest.approx(layer["act_scale"], rel=1e-7)
        assert int(ini[x_q.input[2]]) == layer["act_zero_point"]
        w = model.get_submodule(name).quantized_weight().detach().numpy()
        q = ini[layer["onnx_weight"]].astype(np.float32)
        deq = q * ini[w_dq.input[1]].reshape((-1,) + (1,) * (q.ndim - 1))
        np.testing.assert_array_equal(deq.astype(np.float32), w)
    out_q = producer[proto.graph.output[0].name]
    assert out_q.op_type == "DequantizeLinear"
    assert float(ini[out_q.input[1]]) == pytest.approx(meta["output"]["act_scale"], rel=1e-7)


def test_quantizing_twice_is_an_error():
    model, _, ctx = quantized("mlp16", Quantize("int8"))
    with pytest.raises(ConfigError, match="already quantized"):
        Quantize("int8").apply(model, ctx)


@pytest.mark.parametrize("layer", [nn.Conv1d(1, 4, 3), nn.LSTM(8, 8), nn.ConvTranspose2d(1, 4, 3)])
def test_unsupported_layer_is_named(layer):
    model = nn.Sequential(layer, nn.Linear(4, 2))
    ctx = Context.for_zoo("mlp16")
    with pytest.raises(UnsupportedOpError, match=type(layer).__name__):
        Quantize("int8", quantizer="edgec").apply(model, ctx)  # auto hands Conv1d to torchao


def test_calibration_percentile_clips_outliers():
    from toolchain.compress.quantize import ActQuant

    x = torch.cat([torch.linspace(0, 1, 100_000), torch.tensor([50.0])])
    ranges = {}
    for method in ("minmax", "percentile"):
        q = ActQuant(8, False, method, percentile=99.9)
        q.start_observing()
        q(x)
        q.freeze()
        ranges[method] = float(q.scale) * 255
    assert ranges["minmax"] == pytest.approx(50.0, rel=1e-3)
    assert ranges["percentile"] == pytest.approx(1.0, rel=0.01)
