"""Cortex-M int8 kernels: the SMLAD depthwise conv (targets/cortexm/int8_depthwise.py) and the
requantization's rounding (vcvtr), checked against onnxruntime on the M4 and in the objects."""

from __future__ import annotations

import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import needs_target, save
from toolchain.cli import main
from toolchain.commands.build import verify_folder


def test_weight_pairs_hold_two_taps_of_one_channel():
    from toolchain.targets.cortexm.int8_depthwise import pack_weights

    w = np.random.default_rng(0).integers(-128, 128, (3, 3, 8), dtype=np.int8)
    words = pack_weights(w)
    assert words.shape == (5, 8) and words.dtype == np.int32
    halves = words.view(np.int16).reshape(5, 8, 2)  # little-endian: (low, high)
    taps = np.concatenate([w.reshape(9, 8), np.zeros((1, 8), np.int8)])
    assert np.array_equal(halves[..., 0], taps[0::2]) and np.array_equal(halves[..., 1],
                                                                           taps[1::2])


def _two_depthwise_qdq() -> onnx.ModelProto:
    """Two QDQ depthwise convs in a row: 3x3 stride 2 pad 1 on uint8 (zero point 131) with
    ReLU, then 3x2 stride 1 with asymmetric padding on int8 (zero point -3, what the first
    writes): odd and even tap counts, padding that reads the zero point, both input types."""
    rng = np.random.default_rng(3)
    c = 8
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_s"),
        numpy_helper.from_array(np.array(131, np.uint8), "x_z"),
        numpy_helper.from_array(np.array(0.03, np.float32), "h_s"),
        numpy_helper.from_array(np.array(-3, np.int8), "h_z"),
        numpy_helper.from_array(np.array(0.05, np.float32), "y_s"),
        numpy_helper.from_array(np.array(4, np.int8), "y_z"),
    ]
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["input", "x_s", "x_z"], ["xq"]),
             n("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"])]
    for i, (kernel, pads, strides, src, dst, relu) in enumerate([
            ((3, 3), [1, 1, 1, 1], [2, 2], "xd", "h", True),
            ((3, 2), [1, 0, 1, 1], [1, 1], "hd", "y", False)]):
        inits += [
            numpy_helper.from_array(rng.integers(-127, 128, (c, 1, *kernel), dtype=np.int8),
                                    f"w{i}"),
            numpy_helper.from_array(rng.uniform(0.01, 0.05, c).astype(np.float32), f"w{i}_s"),
            numpy_helper.from_array(np.zeros(c, np.int8), f"w{i}_z"),
            numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"b{i}")]
        nodes += [n("DequantizeLinear", [f"w{i}", f"w{i}_s", f"w{i}_z"], [f"w{i}d"], axis=0),
                  n("Conv", [src, f"w{i}d", f"b{i}"], [f"c{i}"], pads=pads, strides=strides,
                    group=c)]
        last = f"c{i}"
        if relu:
            nodes.append(n("Relu", [last], [f"r{i}"]))
            last = f"r{i}"
        nodes += [n("QuantizeLinear", [last, f"{dst}_s", f"{dst}_z"], [f"{dst}q"]),
                  n("DequantizeLinear", [f"{dst}q", f"{dst}_s", f"{dst}_z"],
                    ["out" if dst == "y" else f"{dst}d"])]
    graph = helper.make_graph(
        nodes, "dw_qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                        [1, c, 11, 9])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


@needs_target("cortex-m4")
def test_depthwise_uses_smlad_on_tap_pairs_and_matches_onnxruntime(tmp_path):
    path, out = save(_two_depthwise_qdq(), tmp_path / "dw.onnx"), tmp_path / "out"
    assert main(["compile", str(path), "-t", "cortex-m4", "-o", str(out)]) == 0
    for seed in (0, 1):
        results = verify_folder(out, seed=seed)
        assert all(c.ok and c.output_range > 0 for c in results), results
    funcs = _kernel_ops(out, tmp_path)
    dw = [ops for f, ops in funcs.items() if f.startswith("__tvm_ffi_qgemm_dwconv")]
    assert len(dw) == 2, sorted(funcs)
    for ops in dw:
        assert ops.count("smlad") >= 4 and "pkhbt" in ops and "pkhtb" in ops, sorted(set(ops))
        # Requantization rounds with vcvtr (FPv4 has no VRINT), not a call to rintf.
        assert "vcvtr.s32.f32" in ops, " ".join(sorted(set(ops)))
    undefined = subprocess.run(["arm-none-eabi-nm", "-u", "kernels.o"], cwd=tmp_path,
                               capture_output=True, text=True, check=True).stdout
    assert "rint" not in undefined and "round" not in undefined, undefined


@pytest.mark.parametrize("out_w, tp", [(5, 1), (25, 1), (32, 2), (8, 2)])
def test_smlad_tile_has_no_padded_pixel(out_w, tp):
    """2 pixels x 2 channels where the row is even, else 1 pixel x 4 channels."""
    from toolchain.targets.cortexm.int8_dot import SMLAD
    from toolchain.targets.cpu import qgemm

    assert qgemm.row_tile(SMLAD, 7, out_w) == tp


def test_pointwise_weight_words_match_sxtb16_halves():
    from toolchain.targets.cortexm.int8_pointwise import pack_weights

    w = np.random.default_rng(1).integers(-128, 128, (8, 12), dtype=np.int8)
    words = pack_weights(w)
    assert words.shape == (2, 3, 4, 2) and words.dtype == np.int32
    halves = words.view(np.int16).reshape(2, 3, 4, 2, 2)  # [q, g, i, even/odd, low/high]
    for o in range(8):
        for g in range(3):
            h = halves[o // 4, g, o % 4]
            assert list(h[0]) == [w[o, 4 * g], w[o, 4 * g + 2]]
            assert list(h[1]) == [w[o, 4 * g + 1], w[o, 4 * g + 3]]


def _pointwise_qdq() -> onnx.ModelProto:
    """A 1x1 conv on uint8 (zero point 131) with ReLU, a strided 1x1 conv on int8 (zero point
    -3), then Flatten + Gemm (a Linear): the three GEMM forms the pointwise kernel takes."""
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_s"),
        numpy_helper.from_array(np.array(131, np.uint8), "x_z"),
        numpy_helper.from_array(np.array(0.03, np.float32), "h0_s"),
        numpy_helper.from_array(np.array(-3, np.int8), "h0_z"),
        numpy_helper.from_array(np.array(0.05, np.float32), "h1_s"),
        numpy_helper.from_array(np.array(2, np.int8), "h1_z"),
        numpy_helper.from_array(np.array(0.08, np.float32), "y_s"),
        numpy_helper.from_array(np.array(4, np.int8), "y_z"),
    ]
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["input", "x_s", "x_z"], ["xq"]),
             n("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"])]
    for i, (shape, strides, src, dst, relu) in enumerate([
            ((12, 8, 1, 1), [1, 1], "xd", "h0", True),
            ((16, 12, 1, 1), [2, 2], "h0d", "h1", False)]):
        inits += [
            numpy_helper.from_array(rng.integers(-127, 128, shape, dtype=np.int8), f"w{i}"),
            numpy_helper.from_array(rng.uniform(0.01, 0.05, shape[0]).astype(np.float32),
                                    f"w{i}_s"),
            numpy_helper.from_array(np.zeros(shape[0], np.int8), f"w{i}_z"),
            numpy_helper.from_array(rng.standard_normal(shape[0]).astype(np.float32), f"b{i}")]
        nodes += [n("DequantizeLinear", [f"w{i}", f"w{i}_s", f"w{i}_z"], [f"w{i}d"], axis=0),
                  n("Conv", [src, f"w{i}d", f"b{i}"], [f"c{i}"], strides=strides)]
        last = f"c{i}"
        if relu:
            nodes.append(n("Relu", [last], [f"r{i}"]))
            last = f"r{i}"
        nodes += [n("QuantizeLinear", [last, f"{dst}_s", f"{dst}_z"], [f"{dst}q"]),
                  n("DequantizeLinear", [f"{dst}q", f"{dst}_s", f"{dst}_z"], [f"{dst}d"])]
    inits += [numpy_helper.from_array(rng.integers(-127, 128, (8, 96), dtype=np.int8), "wf"),
              numpy_helper.from_array(np.array(0.02, np.float32), "wf_s"),
              numpy_helper.from_array(np.array(0, np.int8), "wf_z"),
              numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bf")]
    nodes += [n("Flatten", ["h1d"], ["flat"]),  # requantized as it is: the Gemm reads QDQ
              n("QuantizeLinear", ["flat", "h1_s", "h1_z"], ["fq"]),
              n("DequantizeLinear", ["fq", "h1_s", "h1_z"], ["fd"]),
              n("DequantizeLinear", ["wf", "wf_s", "wf_z"], ["wfd"]),
              n("Gemm", ["fd", "wfd", "bf"], ["fc"], transB=1),
              n("QuantizeLinear", ["fc", "y_s", "y_z"], ["yq"]),
              n("DequantizeLinear", ["yq", "y_s", "y_z"], ["out"])]
    graph = helper.make_graph(
        nodes, "pw_qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                        [1, 8, 4, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _kernel_ops(out, tmp_path) -> dict[str, list[str]]:
    subprocess.run(["arm-none-eabi-ar", "x", str(out / "libmodel.a"), "kernels.o"],
                   cwd=tmp_path, check=True)
    text = subprocess.run(["arm-none-eabi-objdump", "-d", "-marmv7e-m", "--no-show-raw-insn",
                           "kernels.o"], cwd=tmp_path, capture_output=True, text=True,
                          check=True).stdout
    funcs, name = {}, None
    for line in text.splitlines():
        if line.endswith(">:"):
            name = line.split("<")[1][:-2]
            funcs[name] = []
        elif name and line.count("\t") >= 2:
            funcs[name].append(line.split("\t")[1].strip())
    return funcs


@needs_target("cortex-m4")
def test_pointwise_uses_smlad_on_packed_weights_and_matches_onnxruntime(tmp_path):
    path, out = save(_pointwise_qdq(), tmp_path / "pw.onnx"), tmp_path / "out"
    assert main(["compile", str(path), "-t", "cortex-m4", "-o", str(out)]) == 0
    for seed in (0, 1):
        results = verify_folder(out, seed=seed)
        assert all(c.ok and c.output_range > 0 for c in results), results
    funcs = _kernel_ops(out, tmp_path)
    pw = {f: ops for f, ops in funcs.items() if f.startswith("__tvm_ffi_qgemm_")}
    assert len(pw) == 3, sorted(funcs)
    for f, ops in pw.items():
        # Weights arrive as int16 pairs: sxtb16 only widens activations (2 per 4 channels).
        assert ops.count("smlad") >= 8 and ops.count("smlad") >= 2 * ops.count("sxtb16"), (
            f, sorted(set(ops)))
        assert "vcvtr.s32.f32" in ops, (f, " ".join(sorted(set(ops))))
