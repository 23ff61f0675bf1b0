"""edgec check / Backend.support: every node judged before any slow step, partitioner-style."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import save
from toolchain.cli import main
from toolchain.onnx_io import fix_input_shapes
from toolchain.targets import backend_for, device

TARGETS = ["host", "fpga-xcu250"]


def _mlp(act: str = "Relu", norm: str | None = None):
    """x[1,8] -> fc1 -> act -> fc2 [-> norm] -> fc3 -> softmax; Celu and LpNormalization
    have no converter in TVM's importer and no FPGA layer."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n)
             for n, s in (("w1", (16, 8)), ("w2", (16, 16)), ("w3", (4, 16)))]
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h1"], name="fc1", transB=1),
             helper.make_node(act, ["h1"], ["a1"], name="act"),
             helper.make_node("Gemm", ["a1", "w2"], ["h2"], name="fc2", transB=1)]
    last = "h2"
    if norm:
        nodes.append(helper.make_node(norm, ["h2"], ["n2"], name="norm", axis=-1))
        last = "n2"
    nodes += [helper.make_node("Gemm", [last, "w3"], ["h3"], name="fc3", transB=1),
              helper.make_node("Softmax", ["h3"], ["y"], name="prob", axis=-1)]
    graph = helper.make_graph(nodes, "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              inits)
    return fix_input_shapes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), {})


@pytest.fixture(scope="module")
def two_bad(tmp_path_factory):
    return save(_mlp("Celu", "LpNormalization"), tmp_path_factory.mktemp("check") / "bad.onnx")


def _check_json(capsys, *args) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["check", *args, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_two_unsupported_nodes_are_both_listed(two_bad, capsys):
    rc, out = _check_json(capsys, str(two_bad), *sum((["-t", t] for t in TARGETS), []))
    assert rc == 1 and out["ok"] is False
    assert [r["target"] for r in out["targets"]] == TARGETS
    for r in out["targets"]:
        assert r["ok"] is False and r["nodes"] == 6 and r["supported"] == 4, r
        refused = {s["node"]: s for s in r["unsupported"]}
        assert set(refused) == {"act", "norm"}, r["unsupported"]
        assert refused["act"]["op"] == "Celu" and refused["norm"]["op"] == "LpNormalization"
        assert all(s["reason"] and not s["supported"] for s in refused.values())
        assert r["supported_ops"] == {"Gemm": 3, "Softmax": 1}
        assert [s["index"] for s in r["all"]] == list(range(6))
    cpu, fpga = out["targets"]
    assert "no converter" in cpu["unsupported"][0]["reason"]
    assert "FPGA backend maps" in fpga["unsupported"][0]["reason"]


def test_table_names_each_unsupported_node(two_bad, capsys):
    capsys.readouterr()
    assert main(["check", str(two_bad), "-t", "host"]) == 1
    text = capsys.readouterr().out
    assert "host (cpu): 2 of 6 nodes unsupported" in text
    assert "supported: Gemm 3, Softmax 1" in text
    lines = text.splitlines()
    assert any("act" in l and "Celu" in l for l in lines)
    assert any("norm" in l and "LpNormalization" in l for l in lines)


def test_fully_supported_model_passes(tmp_path, capsys):
    path = save(_mlp("Relu"), tmp_path / "ok.onnx")
    capsys.readouterr()
    assert main(["check", str(path), "-t", "host", "-t", "fpga-xcu250", "-t", "cortex-m4"]) == 0
    text = capsys.readouterr().out
    for target in ("host (cpu)", "fpga-xcu250 (fpga)", "cortex-m4 (cortexm)"):
        assert f"{target}: all 5 nodes supported" in text


def test_global_json_wraps_the_result(two_bad, capsys):
    capsys.readouterr()
    rc = main(["--json", "check", str(two_bad), "-t", "fpga-xcu250"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["command"] == "check" and out["exit_code"] == 1
    assert out["result"]["targets"][0]["unsupported"][0]["node"] == "act"


def test_compile_fails_first_naming_the_node_and_the_count(two_bad, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["compile", str(two_bad), "-t", "fpga-xcu250", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("edgec: error: ")
    assert "unsupported op 'Celu' in node 'act' for target 'fpga-xcu250'" in err
    assert "2 of 6 nodes unsupported" in err and "edgec check" in err
    assert not out.exists()


def test_unknown_target_is_one_line(two_bad, capsys):
    assert main(["check", str(two_bad), "-t", "arm-z99"]) == 2
    assert "unknown target 'arm-z99'" in capsys.readouterr().err


def test_cpu_support_sets_aside_what_a_pass_refuses():
    """An LSTM the unroller refuses (its W is not a constant) is listed; the one beside it,
    which unrolls, and the node after both are judged too."""
    rng = np.random.default_rng(1)
    hidden, inputs, steps = 4, 3, 5
    init = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
            (("W", (1, 4 * hidden, inputs)), ("R", (1, 4 * hidden, hidden)),
             ("B", (1, 8 * hidden)))]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y1"], name="lstm_ok",
                              hidden_size=hidden),
             helper.make_node("LSTM", ["x", "W2", "R", "B"], ["y2"], name="lstm_bad",
                              hidden_size=hidden),
             helper.make_node("Add", ["y1", "y2"], ["y"], name="sum")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, inputs]),
                     helper.make_tensor_value_info("W2", TensorProto.FLOAT,
                                                   [1, 4 * hidden, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [steps, 1, 1, hidden])], init)
    model = fix_input_shapes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), {})
    found = backend_for("cpu").support(model, device("host"))
    assert [(s.node, s.supported) for s in found] == [
        ("lstm_ok", True), ("lstm_bad", False), ("sum", True)]
    assert "'W2' is not a constant" in found[1].reason


@pytest.mark.parametrize("target, refused", [("cortex-m4", True), ("cortex-m7", False)])
def test_cortexm_refuses_int64_casts_without_a_double_fpu(target, refused):
    nodes = [helper.make_node("Cast", ["x"], ["i"], name="to_i64", to=TensorProto.INT64),
             helper.make_node("Cast", ["i"], ["y"], name="to_f32", to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = fix_input_shapes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), {})
    found = backend_for("cortexm").support(model, device(target))
    assert [s.supported for s in found] == [not refused] * 2
    assert ("double-precision FPU" in found[0].reason) == refused


def test_api_check_takes_a_model_object():
    from toolchain import api

    result = api.check(_mlp("Celu"), ["host", "fpga-xcu250"])
    assert result["ok"] is False
    assert [[s["node"] for s in r["unsupported"]] for r in result["targets"]] == [["act"]] * 2
    assert api.check(_mlp("Relu"), "host")["ok"] is True


def test_cortexm_takes_a_cast_of_a_shape():
    """Shape -> Cast(float) is known at compile time (it compiles and verifies on cortex-m4)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Cast", ["s"], ["sf"], name="to_f32", to=TensorProto.FLOAT),
             helper.make_node("ReduceMax", ["sf"], ["n"], name="width", keepdims=0),
             helper.make_node("Div", ["x", "n"], ["y"], name="scale")]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = fix_input_shapes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), {})
    found = backend_for("cortexm").support(model, device("cortex-m4"))
    assert [s.supported for s in found] == [True] * 4, found


def test_output_dtype_mismatch_is_a_graph_problem_not_a_runtime_surprise():
    """An output whose type TVM's import computes differently from the ONNX declaration is
    refused before any kernel is built (it would otherwise be read with the wrong size)."""
    from onnx import TensorProto, helper

    from toolchain.errors import ModelError
    from toolchain.optimizer.frontend import import_onnx, refusals

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("z", TensorProto.INT32, [1, 4])]
    nodes = [helper.make_node("Relu", ["x"], ["y"]),
             helper.make_node("Cast", ["x"], ["z"], to=TensorProto.INT32)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs),
                              opset_imports=[helper.make_opsetid("", 17)])
    assert refusals(model) == ({}, [])
    import_onnx(model, "host")  # declared as computed: fine
    model.graph.output[1].type.tensor_type.elem_type = TensorProto.INT64
    found, graph = refusals(model)
    assert graph == ["output 'z' is declared int64 but TVM's import computes it as int32"]
    with pytest.raises(ModelError, match="declared int64"):
        import_onnx(model, "host")
