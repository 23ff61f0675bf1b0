"""Small ONNX graphs built with onnx.helper, and where the onnx package keeps its light_* zoo."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT_DIR.glob("light_*.onnx"))


def _init(rng, name, shape, scale=0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def make_small_cnn(batch: int | str = 1) -> onnx.ModelProto:
    """conv-bn-relu -> maxpool -> conv-relu -> global pool -> flatten -> gemm -> softmax."""
    rng = np.random.default_rng(1)
    inits = [
        _init(rng, "w1", (8, 3, 3, 3)), _init(rng, "b1", (8,), 0.1),
        numpy_helper.from_array(rng.uniform(0.8, 1.2, 8).astype(np.float32), "bn_s"),
        _init(rng, "bn_b", (8,), 0.1), _init(rng, "bn_m", (8,), 0.1),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn_v"),
        _init(rng, "w2", (16, 8, 3, 3), 0.2), _init(rng, "b2", (16,), 0.1),
        _init(rng, "wf", (10, 16), 0.3), _init(rng, "bf", (10,), 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n1"],
                         name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def make_two_io() -> onnx.ModelProto:
    """Two inputs, two outputs, one output that is a graph input passed through."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b"], ["s"], name="add"),
        helper.make_node("Tanh", ["s"], ["y1"], name="tanh"),
        helper.make_node("Mul", ["b", "b"], ["y2"], name="square"),
    ]
    graph = helper.make_graph(
        nodes, "two_io",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 12]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [2, 5]),
         helper.make_tensor_value_info("y2", TensorProto.FLOAT, [2, 5])],
        [_init(rng, "w", (12, 5))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def make_conv_matmul_qdq(*, seed: int, size: int, conv_out: int, matmul_out: int,
                         matmul_scale: tuple[float, float], quant, relu: bool,
                         name: str) -> onnx.ModelProto:
    """QDQ: input [1, 3, size, size] -> 3x3 conv (stride 2, padded) to ``conv_out`` channels,
    float out (+ ReLU with ``relu``) -> Flatten -> QDQ -> MatMul to ``matmul_out`` (per-column
    scales drawn in ``matmul_scale``) -> QDQ. ``quant``: ``(tensor, scale, zero, dtype)`` of
    the activations ``x``, ``h`` and ``y``."""
    rng = np.random.default_rng(seed)
    flat = conv_out * ((size - 1) // 2 + 1) ** 2
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (conv_out, 3, 3, 3), dtype=np.int8),
                                "wc"),
        numpy_helper.from_array(rng.uniform(0.005, 0.02, conv_out).astype(np.float32), "wc_s"),
        numpy_helper.from_array(np.zeros(conv_out, np.int8), "wc_z"),
        numpy_helper.from_array(rng.standard_normal(conv_out).astype(np.float32), "bc"),
        numpy_helper.from_array(rng.integers(-127, 128, (flat, matmul_out), dtype=np.int8),
                                "wm"),
        numpy_helper.from_array(rng.uniform(*matmul_scale, matmul_out).astype(np.float32),
                                "wm_s"),
        numpy_helper.from_array(np.zeros(matmul_out, np.int8), "wm_z"),
    ]
    for tensor, scale, zero, dt in quant:
        inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{tensor}_s"),
                  numpy_helper.from_array(np.array(zero, dt), f"{tensor}_z")]
    n = helper.make_node
    nodes = [
        n("QuantizeLinear", ["input", "x_s", "x_z"], ["xq"]),
        n("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
        n("DequantizeLinear", ["wc", "wc_s", "wc_z"], ["wcd"], axis=0),
        n("Conv", ["xd", "wcd", "bc"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        *([n("Relu", ["c"], ["r"])] if relu else []),
        n("Flatten", ["r" if relu else "c"], ["f"]),
        n("QuantizeLinear", ["f", "h_s", "h_z"], ["hq"]),
        n("DequantizeLinear", ["hq", "h_s", "h_z"], ["hd"]),
        n("DequantizeLinear", ["wm", "wm_s", "wm_z"], ["wmd"], axis=1),
        n("MatMul", ["hd", "wmd"], ["m"]),
        n("QuantizeLinear", ["m", "y_s", "y_z"], ["yq"]),
        n("DequantizeLinear", ["yq", "y_s", "y_z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, matmul_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def have(program: str) -> bool:
    return shutil.which(program) is not None


def needs_target(target: str):
    """Skip (with the install hint) when the cross compiler or emulator of a target is missing.

    What a target needs comes from its device file, as ``edgec doctor`` reads it."""
    from toolchain.targets import device

    facts = device(target).facts
    prefix = facts.get("cc_prefix", "")
    need = [f"{prefix}gcc" if prefix else "cc"] + ([facts["qemu"]] if facts.get("qemu") else [])
    missing = [p for p in need if not have(p)]
    hint = " ".join(facts.get("debian_packages", ()))
    return pytest.mark.skipif(bool(missing), reason=f"missing {', '.join(missing)} "
                              f"(apt-get install {hint})")


def relax_constants(mod) -> list[np.ndarray]:
    """The values of every constant in a Relax module's main function."""
    from tvm import relax
    from tvm.ir.expr import GenericConst

    found = []

    def visit(expr):
        if isinstance(expr, GenericConst):
            found.append(expr.value.numpy())

    relax.analysis.post_order_visit(mod["main"], visit)
    return found
