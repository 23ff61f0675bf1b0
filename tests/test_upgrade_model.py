"""Files onnxruntime's tools write for old models (IR 3, opset 9-11) and Dropout of any opset.

UpgradeModel (run by every load) makes them pass the ONNX checker without changing what
onnxruntime computes; RemoveDropout (a cleanup pass) takes inference-mode Dropout out, so a
ratio given as an input (opset >= 12) no longer stops TVM's importer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter

from onnx_graphs import LIGHT_DIR
from test_passes import ops, same_outputs
from toolchain.cli import main
from toolchain.errors import ModelError
from toolchain.onnx_io import load_model, randomize_weights, save_model
from toolchain.passes import cleanup_passes, transform
from toolchain.passes.remove_dropout import RemoveDropout
from toolchain.passes.upgrade_model import UpgradeModel
from toolchain.reference import run_reference

SIDE = 64  # squeezenet's input side: 224 in the file; 64 keeps compiles short
# These tests are about loading the files; the QDQ models compile with the default pipeline
# (integer compute; the lowering has its own tests in test_integer_lowering.py).
FLOAT_QDQ: tuple[str, ...] = ()  # the default pipeline: integer compute


def check_fails(model: onnx.ModelProto, needle: str) -> None:
    with pytest.raises(onnx.checker.ValidationError, match=needle):
        onnx.checker.check_model(model)


# ---------------------------------------------------------------- UpgradeModel, small graphs
def _ir3_model() -> onnx.ModelProto:
    """IR 3 whose initializers are not graph inputs, as onnxruntime.quantization writes."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="fc", transB=1),
         helper.make_node("Relu", ["g"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)


def test_ir3_initializers_not_inputs():
    model = _ir3_model()
    check_fails(model, "in initializer but not in graph input")
    out, changed = UpgradeModel().apply(model)
    assert changed and out.ir_version >= 4 and model.ir_version == 3  # input untouched
    assert [o.version for o in out.opset_import] == [9]
    onnx.checker.check_model(out)
    same_outputs(model, out, atol=0)


def _per_channel_dq(opset: int, weight_input: str = "wq") -> onnx.ModelProto:
    """A per-channel DequantizeLinear (axis, opset >= 13) in an opset 10/11 model."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (4, 3)).astype(np.int8), "wq"),
             numpy_helper.from_array(rng.uniform(0.01, 0.1, 4).astype(np.float32), "s"),
             numpy_helper.from_array(np.zeros(4, np.int8), "zp")]
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", [weight_input, "s", "zp"], ["w"], name="dq_w",
                          axis=0),
         helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=6)


@pytest.mark.parametrize("opset", [10, 11])
def test_dequantize_axis_upgrades_to_opset_13(opset):
    model = _per_channel_dq(opset)
    check_fails(model, "Unrecognized attribute: axis for operator DequantizeLinear")
    out, changed = UpgradeModel().apply(model)
    assert changed and [o.version for o in out.opset_import] == [13]  # the lowest that works
    assert out.ir_version >= 7  # the IR version of opset 13
    onnx.checker.check_model(out)
    # onnxruntime rejects the original too; compare with the arithmetic it stands for
    x = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    arr = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w = arr["wq"].astype(np.float32) * arr["s"][:, None]
    (y,) = run_reference(out.SerializeToString(), [x])
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-6, atol=1e-6)


def test_clean_model_is_returned_as_is():
    model = _per_channel_dq(13)
    out, changed = UpgradeModel().apply(model)
    assert not changed and out is model


def test_unconvertible_model_gives_one_line_error(tmp_path):
    model = _per_channel_dq(11, weight_input="missing")  # the converter cannot resolve it
    with pytest.raises(ModelError, match="needs opset 13.*convert_version"):
        UpgradeModel().apply(model)
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as info:
        load_model(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "node 'dq_w' (DequantizeLinear)" in msg


# ---------------------------------------------------------------- RemoveDropout, small graphs
def _dropout_model(opset: int, dropout_as_output: bool = False, training=None,
                   mask_as_output: bool = False, ratio_as_input: bool | None = None):
    """x -> Relu -> Dropout [-> Relu]; the ratio an attribute before opset 12, else an input."""
    if ratio_as_input is None:
        ratio_as_input = opset >= 12
    inits, nodes, ins = [], [helper.make_node("Relu", ["x"], ["r"], name="relu0")], ["r"]
    attrs = {}
    if ratio_as_input:
        inits.append(numpy_helper.from_array(np.array(0.3, np.float32), "ratio"))
        ins.append("ratio")
    else:
        attrs["ratio"] = 0.3
    if training is not None:
        nodes.append(helper.make_node("Constant", [], ["train"],
                                      value=numpy_helper.from_array(np.array(training))))
        ins.append("train")
    drop_out = "y" if dropout_as_output else "d"
    nodes.append(helper.make_node("Dropout", ins, [drop_out, "mask"], name="drop", **attrs))
    if not dropout_as_output:
        nodes.append(helper.make_node("Relu", ["d"], ["y"], name="relu1"))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])]
    if mask_as_output:
        outs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, [2, 5]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                          outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=helper.find_min_ir_version_for(
                                 [helper.make_opsetid("", opset)]))


@pytest.mark.parametrize("opset", [7, 10, 12, 13, 22])
def test_dropout_becomes_identity(opset):
    model = _dropout_model(opset)
    onnx.checker.check_model(model)
    out = transform(model, [RemoveDropout()])
    assert ops(out) == ["Relu", "Relu"]
    assert out.graph.node[1].input[0] == "r" and not out.graph.initializer  # ratio gone
    onnx.checker.check_model(out)
    same_outputs(model, out, atol=0)


def test_dropout_as_graph_output_keeps_an_identity():
    model = _dropout_model(13, dropout_as_output=True, training=False)
    out = transform(model, [RemoveDropout()])
    assert ops(out) == ["Relu", "Constant", "Identity"]  # the dead Constant: FoldConstants'
    assert list(out.graph.node[2].output) == ["y"] and [o.name for o in out.graph.output] == ["y"]
    same_outputs(model, out, atol=0)


def test_dropout_kept_when_training():
    _, changed = RemoveDropout().apply(_dropout_model(13, training=True))
    assert not changed


def test_dropout_mask_read_becomes_all_true():
    model = _dropout_model(13, mask_as_output=True)
    out = transform(model, [RemoveDropout()])
    assert ops(out) == ["Relu", "Shape", "ConstantOfShape", "Relu"]
    onnx.checker.check_model(out)
    same_outputs(model, out, atol=0)  # the mask too: inference mode drops nothing


def test_chained_dropouts_and_cleanup_passes():
    model = _dropout_model(13)
    first = next(n for n in model.graph.node if n.op_type == "Dropout")
    second = onnx.NodeProto()
    second.CopyFrom(first)
    second.name, second.input[0], second.output[0], second.output[1] = "drop2", "d", "d2", "m2"
    model.graph.node.insert(2, second)
    next(n for n in model.graph.node if n.name == "relu1").input[0] = "d2"
    assert "RemoveDropout" in [type(p).__name__ for p in cleanup_passes()]
    out = transform(model, cleanup_passes())
    assert ops(out) == ["Relu", "Relu"] and out.graph.node[1].input[0] == "r"
    same_outputs(model, out, atol=0)


# ---------------------------------------------------------------- squeezenet end to end
@pytest.fixture(scope="module")
def squeezenet(tmp_path_factory) -> Path:
    """light_squeezenet (IR 3, opset 9) with seeded random weights, a SIDE x SIDE input, and
    the logits as output (the Softmax's fixed [0, 1] output grid would quantize them to 0)."""
    model = randomize_weights(onnx.load(str(LIGHT_DIR / "light_squeezenet.onnx")))
    data = next(i for i in model.graph.input if i.name == "data_0")
    for d in data.type.tensor_type.shape.dim[2:]:
        d.dim_value = SIDE
    softmax = model.graph.node[-1]
    assert softmax.op_type == "Softmax"
    model.graph.output[0].name = softmax.input[0]
    model.graph.output[0].type.tensor_type.ClearField("shape")
    del model.graph.node[-1]
    del model.graph.value_info[:]
    path = tmp_path_factory.mktemp("squeezenet") / "squeezenet.onnx"
    onnx.save(model, str(path))
    return path


def _quantize(src: Path, dest: Path, per_channel: bool) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class RandomInputs(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.feeds = iter([{"data_0": rng.standard_normal((1, 3, SIDE, SIDE))
                                .astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(src), str(dest), RandomInputs(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel)
    return dest


def _compile_and_verify(path: Path, out: Path, *options: str,
                        upgraded_reference: bool = False) -> None:
    assert main(["compile", str(path), "-t", "host", "-o", str(out), *options]) == 0
    if upgraded_reference:
        save_model(load_model(path), out / "model.onnx")
    assert main(["verify", str(out)]) == 0


def _ort(path_or_model, x):
    src = path_or_model if isinstance(path_or_model, Path) else path_or_model.SerializeToString()
    return run_reference(src, [x])[0]


@pytest.mark.slow
def test_ort_qdq_squeezenet_per_tensor(squeezenet, tmp_path):
    path = _quantize(squeezenet, tmp_path / "qdq.onnx", per_channel=False)
    raw = onnx.load(str(path))
    assert raw.ir_version == 3 and raw.opset_import[0].version == 11
    check_fails(raw, "data_0_zero_point in initializer but not in graph input")
    upgraded = load_model(path)
    x = np.random.default_rng(5).standard_normal((1, 3, SIDE, SIDE)).astype(np.float32)
    np.testing.assert_array_equal(_ort(upgraded, x), _ort(path, x))
    assert np.unique(_ort(path, x)).size > 50  # not a degenerate output
    _compile_and_verify(path, tmp_path / "out", *FLOAT_QDQ)


@pytest.mark.slow
def test_ort_qdq_squeezenet_per_channel(squeezenet, tmp_path):
    # Per channel, quantize_static upgrades opset 9 only to 11 and still writes
    # DequantizeLinear(axis): onnxruntime itself rejects the file it wrote.
    path = _quantize(squeezenet, tmp_path / "qdq.onnx", per_channel=True)
    check_fails(onnx.load(str(path)), "in initializer but not in graph input")
    upgraded = load_model(path)
    assert upgraded.opset_import[0].version == 13
    # the same weights quantized from an opset 13 copy: a file onnxruntime runs
    float13 = tmp_path / "float13.onnx"
    onnx.save(version_converter.convert_version(onnx.load(str(squeezenet)), 13), str(float13))
    ref = _quantize(float13, tmp_path / "qdq13.onnx", per_channel=True)
    x = np.random.default_rng(5).standard_normal((1, 3, SIDE, SIDE)).astype(np.float32)
    np.testing.assert_array_equal(_ort(upgraded, x), _ort(ref, x))
    # verify's reference is OUT/model.onnx, the file as given: compare with the upgraded model
    _compile_and_verify(path, tmp_path / "out", *FLOAT_QDQ, upgraded_reference=True)


@pytest.mark.slow
def test_opset13_squeezenet_dropout_ratio_input(squeezenet, tmp_path):
    """Issue 10: TVM's importer read Dropout's ratio input as a Python scalar and failed."""
    model = version_converter.convert_version(onnx.load(str(squeezenet)), 13)
    drop = next(n for n in model.graph.node if n.op_type == "Dropout")
    assert len(drop.input) == 2  # the ratio is an input now
    onnx.checker.check_model(model)
    path = tmp_path / "squeezenet13.onnx"
    onnx.save(model, str(path))
    _compile_and_verify(path, tmp_path / "out")
