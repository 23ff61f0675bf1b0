"""Conformance: common ops right on every CPU target, onnx's test models pass or are refused
cleanly (never wrong, never a crash), and out-of-range Gather indices are rejected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import needs_target, save
from toolchain.cli import main

# examples/conformance.py by name: its spawned workers import it (they get our sys.path)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import conformance  # noqa: E402

CPU_TARGETS = ["host", "arm-a72", "armv7-a7"]
BAD = {"wrong", "crash", "timeout"}


def make_common_ops() -> onnx.ModelProto:
    """One graph, one output per op: Conv, Relu, MaxPool, AveragePool, Concat, Add, Mul,
    Softmax, Sigmoid, Transpose, Reshape, Gemm, Gather, LayerNormalization and Resize
    (nearest, bilinear with half-pixel scales, bilinear align-corners to an odd size)."""
    rng = np.random.default_rng(7)

    def init(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    inits = [
        init("w", (6, 4, 3, 3)), init("b", (6,), 0.1), init("bias", (4, 1, 1)),
        init("gw", (256, 10), 0.05), init("gb", (10,), 0.1), init("table", (10, 3), 1.0),
        init("ln_s", (8,), 1.0), init("ln_b", (8,), 0.1),
        numpy_helper.from_array(np.array([1, 256], np.int64), "flat"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up2"),
        numpy_helper.from_array(np.array([1, 4, 13, 11], np.int64), "odd"),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w", "b"], ["Conv"], pads=[1, 1, 1, 1]),
        n("Relu", ["Conv"], ["Relu"]),
        n("MaxPool", ["Relu"], ["MaxPool"], kernel_shape=[2, 2], strides=[2, 2]),
        n("AveragePool", ["x"], ["AveragePool"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Concat", ["x", "Relu"], ["Concat"], axis=1),
        n("Add", ["x", "bias"], ["Add"]),
        n("Mul", ["x", "Add"], ["Mul"]),
        n("Softmax", ["x"], ["Softmax"], axis=-1),
        n("Sigmoid", ["x"], ["Sigmoid"]),
        n("Transpose", ["x"], ["Transpose"], perm=[0, 2, 3, 1]),
        n("Reshape", ["x", "flat"], ["Reshape"]),
        n("Gemm", ["Reshape", "gw", "gb"], ["Gemm"]),
        n("Gather", ["table", "ids"], ["Gather"], axis=0),
        n("LayerNormalization", ["x", "ln_s", "ln_b"], ["LayerNormalization"], axis=-1),
        n("Resize", ["x", "", "up2"], ["ResizeNearest"], mode="nearest",
          coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        n("Resize", ["x", "", "up2"], ["ResizeLinear"], mode="linear",
          coordinate_transformation_mode="half_pixel"),
        n("Resize", ["x", "", "", "odd"], ["ResizeLinearAlign"], mode="linear",
          coordinate_transformation_mode="align_corners"),
    ]
    outputs = [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)
               for node in nodes]
    graph = helper.make_graph(
        nodes, "common_ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [5])],
        outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


@pytest.fixture(scope="module")
def common_ops_model(tmp_path_factory) -> Path:
    return save(make_common_ops(), tmp_path_factory.mktemp("ops") / "common_ops.onnx")


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t)) for t in CPU_TARGETS])
def test_common_ops_match_onnxruntime_on_every_cpu_target(target, common_ops_model, tmp_path):
    """Each op's output against onnxruntime, on each target (armv7-a7's bilinear Resize was
    wrong: libgcc's 64-bit conversion helpers take floats in core registers, see
    targets/cpu/driver_runtime.py)."""
    from toolchain.commands.build import verify_folder

    out = tmp_path / target
    assert main(["compile", str(common_ops_model), "-t", target, "-o", str(out)]) == 0
    results = verify_folder(out, seed=3)
    bad = [f"{c.name} (max abs error {c.max_abs_error:.3g})" for c in results if not c.ok]
    assert len(results) == 17 and not bad, f"{target}: wrong outputs: {', '.join(bad)}"


def make_embedding(dtype=TensorProto.INT64) -> onnx.ModelProto:
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0, name="embed")], "emb",
        [helper.make_tensor_value_info("ids", dtype, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("dtype,np_dtype", [(TensorProto.INT64, np.int64),
                                            (TensorProto.INT32, np.int32)])
def test_binary_rejects_out_of_range_gather_index(tmp_path, dtype, np_dtype, capsys):
    out = tmp_path / "out"
    assert main(["compile", str(save(make_embedding(dtype), tmp_path / "emb.onnx")), "-t",
                 "host", "-o", str(out)]) == 0
    ok = np.array([[0, 1, 9], [-1, -10, 3]], np_dtype)
    ok.tofile(tmp_path / "ok.bin")
    run = subprocess.run([str(out / "model"), str(tmp_path / "ok.bin"), str(tmp_path / "y.bin")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    want = np.arange(40, dtype=np.float32).reshape(10, 4)[ok]
    assert np.array_equal(np.fromfile(tmp_path / "y.bin", np.float32).reshape(2, 3, 4), want)
    for value in (10, -11, 2**31 - 1):
        bad = ok.copy()
        bad[1, 1] = value
        bad.tofile(tmp_path / "bad.bin")
        run = subprocess.run([str(out / "model"), str(tmp_path / "bad.bin"),
                              str(tmp_path / "y.bin")], capture_output=True, text=True)
        assert run.returncode == 2
        assert run.stderr.strip() == (f"model: bad input: input 'ids' element 4: index {value} "
                                      "is outside [-10, 10)")
    # the same through edgec run: one line, no traceback
    np.save(tmp_path / "bad.npy", bad)
    assert main(["run", str(out), "--input", str(tmp_path / "bad.npy")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgec: error:") and "is outside [-10, 10)" in err
    assert "\n" not in err and "Traceback" not in err


# The models the issue named: each must pass or be refused naming the node and the op.
NAMED = {
    "node": ["test_isinf_positive", "test_isinf_negative", "test_spacetodepth_crd_mode_example",
             "test_layer_normalization_4d_axis_negative_4", "test_cast_FLOAT_to_BFLOAT16",
             "test_cast_FLOAT8E4M3FN_to_FLOAT", "test_cast_FLOAT_to_INT4",
             "test_pow_types_int32_int32", "test_rms_normalization_2d_axis0", "test_slice_neg",
             "test_slice_start_out_of_bounds", "test_dropout_default_mask",
             "test_training_dropout_mask", "test_training_dropout_zero_ratio"],
    "pytorch-converted": ["test_PReLU_1d_multiparam", "test_PReLU_2d_multiparam",
                          "test_PReLU_3d_multiparam"],
}
MUST_PASS = {"test_isinf_positive", "test_isinf_negative", "test_PReLU_1d_multiparam",
             "test_PReLU_2d_multiparam", "test_PReLU_3d_multiparam",
             "test_spacetodepth_crd_mode_example",  # ExpandSpaceToDepthCRD
             "test_layer_normalization_4d_axis_negative_4",  # ExpandLayerNormStats
             "test_dropout_default_mask"}  # RemoveDropout: the mask is all true
# training-mode Dropout draws at random: refused (the zero-ratio case's ratio is an input)
MUST_REFUSE = {"test_training_dropout_mask", "test_training_dropout_zero_ratio"}


def _run(cases, targets=("host",), timeout=120) -> list[dict]:
    return conformance.run_all([(folder, t) for _, folder in cases for t in targets],
                               timeout=timeout)


def _describe(results) -> str:
    return "; ".join(f"{r['case']} on {r['target']}: {r['outcome']} {r['detail'][:120]}"
                     for r in results)


@pytest.fixture(scope="module")
def host_results() -> dict[str, list[dict]]:
    """The named cases and 40 node tests (fixed seed) on the host, in one pool run."""
    named = [(suite, conformance.suite_dir(suite) / name)
             for suite, names in NAMED.items() for name in names]
    sample = conformance.list_cases(["node"], sample=40, seed=10)
    results = _run(named + sample)
    return {"named": results[:len(named)], "sample": results[len(named):]}


@pytest.mark.slow  # host_results compiles and runs ~50 node models
def test_issue_cases_pass_or_are_refused_by_node(host_results):
    bad = [r for r in host_results["named"] if r["outcome"] != "pass" and
           (r["case"] in MUST_PASS or r["outcome"] != "unsupported")]
    bad += [r for r in host_results["named"] if r["case"] in MUST_REFUSE and
            r["outcome"] != "unsupported"]
    assert not bad, _describe(bad)


@pytest.mark.slow  # host_results compiles and runs ~50 node models
def test_node_sample_has_no_wrong_answer_and_no_crash(host_results):
    """Each of the 40 passes or fails with a one-line edgec error."""
    results = host_results["sample"]
    bad = [r for r in results if r["outcome"] in BAD]
    assert not bad, _describe(bad)
    assert sum(r["outcome"] == "pass" for r in results) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("target", ["host", pytest.param("arm-a72", marks=needs_target("arm-a72"))])
def test_pytorch_suites_have_no_wrong_answer_and_no_crash(target):
    cases = conformance.list_cases(["pytorch-converted", "pytorch-operator"])
    results = _run(cases, (target,), timeout=300)
    bad = [r for r in results if r["outcome"] in BAD]
    assert not bad, _describe(bad)
    assert sum(r["outcome"] == "pass" for r in results) >= 110
