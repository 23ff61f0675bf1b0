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


# ---------------------------------------------------------------- ops TVM's importer gets wrong
def _evaluate(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """onnx's reference evaluator: it implements every mode these passes rewrite."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


def _single(op, inputs, outputs, opset=17, inits=(), **attrs) -> onnx.ModelProto:
    """One node; ``inputs``/``outputs`` are (name, elem type, shape) triples."""
    g = helper.make_graph([helper.make_node(op, [n for n, *_ in inputs if n not in
                                                 {t.name for t in inits}] + [t.name for t in inits],
                                            [n for n, *_ in outputs], name="n0", **attrs)],
                          "g", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(*o) for o in outputs], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=13 if opset >= 28 else 8)


@pytest.mark.parametrize("mode,rewritten", [("CRD", True), ("DCR", False)])
def test_expand_spacetodepth_crd(mode, rewritten):
    from toolchain.passes.expand_spacetodepth_crd import ExpandSpaceToDepthCRD

    model = _single("SpaceToDepth", [("x", TensorProto.FLOAT, [2, 3, 4, 6])],
                    [("y", TensorProto.FLOAT, [2, 12, 2, 3])], opset=28, blocksize=2, mode=mode)
    out = transform(model, [ExpandSpaceToDepthCRD()])
    assert ops(out) == (["Reshape", "Transpose", "Reshape"] if rewritten else ["SpaceToDepth"])
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 6)).astype(np.float32)
    want = _evaluate(model, {"x": x})[0]
    np.testing.assert_array_equal(_evaluate(out, {"x": x})[0], want)
    if mode == "CRD":  # the channel order: c*4 + i*2 + j holds x[:, c, 2h+i, 2w+j]
        np.testing.assert_array_equal(want[:, 1 * 4 + 1 * 2 + 0], x[:, 1, 1::2, 0::2])


@pytest.mark.parametrize("opset,elem,axis,bias", [
    (17, TensorProto.FLOAT, -4, True), (17, TensorProto.FLOAT, 1, False),
    (18, TensorProto.FLOAT, -1, True), (17, TensorProto.FLOAT16, 2, True),
    (17, TensorProto.DOUBLE, 0, True)])
def test_expand_layernorm_stats(opset, elem, axis, bias):
    from toolchain.passes.expand_layernorm_stats import ExpandLayerNormStats

    dtype = helper.tensor_dtype_to_np_dtype(elem)
    shape = [2, 3, 4, 5]
    norm = shape[axis % 4:]
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.standard_normal(norm) + 1).astype(dtype), "scale")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(norm).astype(dtype), "bias"))
    stats = shape[:axis % 4] + [1] * (4 - axis % 4)
    model = _single("LayerNormalization", [("x", elem, shape)],
                    [("y", elem, shape), ("mean", elem, stats), ("inv_std", elem, stats)],
                    opset=opset, inits=inits, axis=axis, epsilon=1e-3)
    out = transform(model, [ExpandLayerNormStats()])
    assert "LayerNormalization" not in ops(out)
    onnx.checker.check_model(out, full_check=True)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    tol = 2e-3 if elem == TensorProto.FLOAT16 else 1e-5
    for got, want in zip(_evaluate(out, {"x": x}), _evaluate(model, {"x": x})):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert np.abs(_evaluate(out, {"x": x})[2]).min() > 0.1  # InvStdDev is not TVM's zeros


def test_layernorm_whose_stats_nobody_reads_is_left_alone():
    from toolchain.passes.expand_layernorm_stats import ExpandLayerNormStats

    model = _single("LayerNormalization", [("x", TensorProto.FLOAT, [2, 8])],
                    [("y", TensorProto.FLOAT, [2, 8])],
                    inits=[numpy_helper.from_array(np.ones(8, np.float32), "scale")])
    assert not ExpandLayerNormStats().apply(model)[1]


def _dropout(training, ratio, mask=True) -> onnx.ModelProto:
    """Dropout(x, ratio, training_mode): each a constant, or (None) a graph input."""
    inits, inputs = [], [("x", TensorProto.FLOAT, [3, 4])]
    for name, value, elem in (("ratio", ratio, np.float32), ("training", training, np.bool_)):
        if value is None:
            inputs.append((name, TensorProto.FLOAT if name == "ratio" else TensorProto.BOOL, []))
        else:
            inits.append(numpy_helper.from_array(np.array(value, elem), name))
    outs = [("y", TensorProto.FLOAT, [3, 4])] + ([("mask", TensorProto.BOOL, [3, 4])] if mask
                                                else [])
    g = helper.make_graph([helper.make_node("Dropout", ["x", "ratio", "training"],
                                            [o for o, *_ in outs], name="drop")], "g",
                          [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(*o) for o in outs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("training,ratio,removed", [
    (False, 0.5, True), (True, 0.0, True), (True, 0.5, False), (None, 0.0, True),
    (None, 0.5, False), (False, None, True), (True, None, False)])
def test_remove_dropout_with_its_mask(training, ratio, removed):
    """A Dropout that drops nothing goes, its mask read becomes all true; one that may drop
    at random (training mode, non-zero or unknown ratio) stays for the frontend to refuse."""
    from toolchain.passes.remove_dropout import RemoveDropout

    model = _dropout(training, ratio)
    out = transform(model, [RemoveDropout()])
    assert ("Dropout" not in ops(out)) == removed
    if not removed:
        return
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    feeds = {"x": x, **({"ratio": np.float32(0.3)} if ratio is None else {}),
             **({"training": np.bool_(True)} if training is None else {})}
    feeds = {i.name: feeds[i.name] for i in out.graph.input}
    y, mask = _evaluate(out, feeds)
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.bool_ and mask.shape == (3, 4) and mask.all()


@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16])
def test_expand_float_mod_takes_the_divisors_sign_with_infinities(elem):
    from toolchain.passes.expand_float_mod import ExpandFloatMod

    dtype = helper.tensor_dtype_to_np_dtype(elem)
    inf, nan = np.inf, np.nan
    x = np.array([0, -0., 0, -3, 3, -1, 1, inf, 1, nan, 5.5, -5.5, 7, -7], dtype)
    y = np.array([-2, 2, -inf, inf, inf, -inf, -inf, 2, 0, 2, -2, 2, 3, 3], dtype)
    n = len(x)
    model = _single("Mod", [("x", elem, [n]), ("y", elem, [n])], [("z", elem, [n])], opset=13,
                    fmod=0)
    out = transform(model, [ExpandFloatMod()])
    assert "Mod" in ops(out) and next(a.i for a in out.graph.node[0].attribute) == 1
    onnx.checker.check_model(out, full_check=True)
    with np.errstate(all="ignore"):
        want = np.mod(x, y)
        got = _evaluate(out, {"x": x, "y": y})[0]
    np.testing.assert_array_equal(got, want)  # inf, -inf, nan where numpy has them
    assert np.array_equal(np.signbit(got), np.signbit(want))  # -0 where numpy has -0
    assert got[3] == inf and got[6] == -inf


def test_float_mod_with_fmod_and_integer_mod_are_left_alone():
    from toolchain.passes.expand_float_mod import ExpandFloatMod

    for elem, fmod in ((TensorProto.FLOAT, 1), (TensorProto.INT32, 0)):
        model = _single("Mod", [("x", elem, [3]), ("y", elem, [3])], [("z", elem, [3])],
                        opset=13, fmod=fmod)
        assert not ExpandFloatMod().apply(model)[1]


@pytest.mark.parametrize("opset,outputs", [(15, 3), (15, 1), (18, 3)])
def test_expand_batchnorm_training(opset, outputs):
    """Y from the batch's statistics, the running statistics updated with the momentum, as
    onnx's reference computes them; FoldBatchNorm leaves a training-mode node alone."""
    from toolchain.passes.expand_batchnorm_training import ExpandBatchNormTraining

    rng = np.random.default_rng(3)
    c = 3
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (
        ("s", rng.uniform(0.5, 2, c)), ("b", rng.standard_normal(c)),
        ("m", rng.standard_normal(c)), ("v", rng.uniform(0.5, 2, c)))]
    outs = [("y", TensorProto.FLOAT, [2, c, 4, 5]), ("run_mean", TensorProto.FLOAT, [c]),
            ("run_var", TensorProto.FLOAT, [c])][:outputs]
    model = _single("BatchNormalization", [("x", TensorProto.FLOAT, [2, c, 4, 5])], outs,
                    opset=opset, inits=inits, training_mode=1, momentum=0.8, epsilon=1e-3)
    assert not FoldBatchNorm().apply(model)[1]
    out = transform(model, [ExpandBatchNormTraining()])
    assert "BatchNormalization" not in ops(out)
    onnx.checker.check_model(out, full_check=True)
    x = (rng.standard_normal((2, c, 4, 5)) * 2 + 1).astype(np.float32)
    for got, want in zip(_evaluate(out, {"x": x}), _evaluate(model, {"x": x}), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    y = _evaluate(out, {"x": x})[0]
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), numpy_helper.to_array(inits[1]),
                               atol=1e-5)  # normalized with the batch's mean: B remains


@pytest.mark.parametrize("attrs", [{}, {"start": 1}, {"start": -2, "end": -1}, {"end": 10},
                                   {"start": 3, "end": 1}])
def test_fold_shape_outputs(attrs):
    from toolchain.passes.fold_shape_outputs import FoldShapeOutputs

    model = _single("Shape", [("x", TensorProto.FLOAT, [2, 3, 4])],
                    [("y", TensorProto.INT64, None)], opset=21, **attrs)
    out = transform(model, [FoldShapeOutputs()])
    assert ops(out) == ["Constant"]
    x = np.zeros((2, 3, 4), np.float32)
    np.testing.assert_array_equal(_evaluate(out, {"x": x})[0], _evaluate(model, {"x": x})[0])


def test_shape_read_by_a_node_is_left_to_the_importer():
    from toolchain.passes.fold_shape_outputs import FoldShapeOutputs

    g = helper.make_graph([helper.make_node("Shape", ["x"], ["s"]),
                           helper.make_node("Reshape", ["x", "s"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert not FoldShapeOutputs().apply(model)[1]


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("elem", [TensorProto.INT8, TensorProto.INT32, TensorProto.UINT16])
def test_bound_bitshift_gives_onnx_answer_outside_the_width(direction, elem):
    """A shift by a negative amount or by the width or more is 0 (-1 for a right shift of a
    negative x), as ONNX defines it; shifts inside the range are unchanged."""
    from toolchain.passes.bound_bitshift import BoundBitShift

    dtype = helper.tensor_dtype_to_np_dtype(elem)
    bits = dtype.itemsize * 8
    signed = dtype.kind == "i"
    x = np.array([-8, 4, -1, 5, -3, 1] if signed else [8, 4, 1, 5, 3, 1], dtype)
    y = np.array([-1, bits, bits + 5, 1, 2, bits - 1] if signed else
                 [bits, bits + 3, 1, 0, 2, bits - 1], dtype)
    model = _single("BitShift", [("x", elem, [6]), ("y", elem, [6])], [("z", elem, [6])],
                    opset=11 if not signed else 28, direction=direction)
    out = transform(model, [BoundBitShift()])
    assert ops(out).count("BitShift") == 1 and ops(out)[-1] == "Where"
    assert not BoundBitShift().apply(out)[1]  # its own bounded shift is left alone
    got = _evaluate(out, {"x": x, "y": y})[0]
    inside = (y.astype(np.int64) >= 0) & (y.astype(np.int64) < bits)
    shift = np.where(inside, y, 0).astype(dtype)
    moved = np.left_shift(x, shift) if direction == "LEFT" else np.right_shift(x, shift)
    fill = np.where((x < 0) & (direction == "RIGHT"), -1, 0).astype(dtype)
    np.testing.assert_array_equal(got, np.where(inside, moved, fill).astype(dtype))


def test_bitshift_by_constants_in_range_is_left_alone():
    from toolchain.passes.bound_bitshift import BoundBitShift

    model = _single("BitShift", [("x", TensorProto.UINT8, [3])], [("z", TensorProto.UINT8, [3])],
                    opset=11, inits=[numpy_helper.from_array(np.array([0, 3, 7], np.uint8), "y")],
                    direction="LEFT")
    assert not BoundBitShift().apply(model)[1]
