"""ONNX graph passes: structure changes as documented, outputs unchanged (onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import make_small_cnn
from toolchain.onnx_io import fix_input_shapes, random_inputs, input_specs
from toolchain.passes import transform
from toolchain.passes.fold_batchnorm import FoldBatchNorm
from toolchain.passes.fold_constants import FoldConstants
from toolchain.passes.pretranspose_gemm import PretransposeGemm
from toolchain.reference import run_reference


def same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, atol=1e-5):
    x = random_inputs(input_specs(a), seed=3)
    for ya, yb in zip(run_reference(a.SerializeToString(), x), run_reference(b.SerializeToString(), x)):
        np.testing.assert_allclose(ya, yb, atol=atol, rtol=1e-5)


def ops(model):
    return [n.op_type for n in model.graph.node]


def test_fold_batchnorm_into_conv():
    model = fix_input_shapes(make_small_cnn(), {})
    folded = transform(model, [FoldBatchNorm()])
    assert "BatchNormalization" not in ops(folded)
    assert ops(folded).count("Conv") == 2 and "Mul" not in ops(folded)
    onnx.checker.check_model(folded)
    same_outputs(model, folded)


def _bn_alone() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    c = 4
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (
        ("s", rng.uniform(0.5, 2, c)), ("b", rng.standard_normal(c)),
        ("m", rng.standard_normal(c)), ("v", rng.uniform(0.5, 2, c)))]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["y"], name="bn",
                              epsilon=1e-3)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 5, 5])], inits)
    return fix_input_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                                              ir_version=8), {})


def test_fold_batchnorm_alone_becomes_mul_add():
    model = _bn_alone()
    folded = transform(model, [FoldBatchNorm()])
    assert ops(folded) == ["Relu", "Mul", "Add"]
    same_outputs(model, folded)


def test_fold_constants_and_pretranspose():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.float32(2.0))),
             helper.make_node("Mul", ["w", "two"], ["w2"], name="scale_w"),
             helper.make_node("Gemm", ["x", "w2"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out = transform(model, [FoldConstants(), PretransposeGemm()])
    assert ops(out) == ["Gemm"]
    gemm = out.graph.node[0]
    assert next(a.i for a in gemm.attribute if a.name == "transB") == 0
    b = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == gemm.input[1]))
    np.testing.assert_array_equal(b, (w * 2).T)
    assert len(out.graph.initializer) == 1  # the unused originals are gone
    same_outputs(model, out)


def test_passes_report_no_change_on_clean_graph():
    model = _bn_alone()
    for p in (FoldConstants(), PretransposeGemm()):
        _, changed = p.apply(model)
        assert not changed
