"""Scatter ops outside language-model caches: constant indices are bounds-checked at compile
time and the kernel runs (TVM's scatter is a parallel loop: the one-thread driver runs it as
one task); indices computed at run time are refused, since TVM's kernel writes unchecked."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import needs_target, save
from toolchain.cli import main
from toolchain.commands.build import verify_folder


def _scatter(indices, runtime_indices: bool = False, op: str = "ScatterElements"):
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3]),
           helper.make_tensor_value_info("u", TensorProto.FLOAT, [1, 3])]
    inits = []
    if runtime_indices:
        ins.append(helper.make_tensor_value_info("i", TensorProto.INT64, [1, 3]))
    else:
        inits.append(numpy_helper.from_array(np.array(indices, np.int64), "i"))
    attrs = {"axis": 0} if op == "ScatterElements" else {}
    node = helper.make_node(op, ["x", "i", "u"], ["y"], name="write_rows", **attrs)
    graph = helper.make_graph([node], "scatter", ins,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("host", "arm-a72")])
def test_constant_index_scatter_runs_and_verifies(tmp_path, target):
    path = save(_scatter([[1, 0, 3]]), tmp_path / "s.onnx")
    assert main(["compile", str(path), "-t", target, "-o", str(tmp_path / "out")]) == 0
    results = verify_folder(tmp_path / "out")
    assert all(c.ok and c.output_range > 0 for c in results), results


def test_out_of_range_constant_index_is_a_one_line_error(tmp_path, capsys):
    path = save(_scatter([[1, 0, 4]]), tmp_path / "s.onnx")
    assert main(["compile", str(path), "-t", "host", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "write_rows" in err and "outside" in err, err
    assert not (tmp_path / "out").exists()


def test_run_time_indices_are_refused_naming_the_node(tmp_path, capsys):
    path = save(_scatter(None, runtime_indices=True), tmp_path / "s.onnx")
    assert main(["compile", str(path), "-t", "host", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "write_rows" in err and "ScatterElements" in err and "run time" in err, err
