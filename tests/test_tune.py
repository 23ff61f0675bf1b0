"""``edgec compile --tune``: MetaSchedule records for the host, reused without tuning again."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import save
from toolchain.cli import main
from toolchain.commands.build import verify_folder


def _conv_relu() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _compile(model, out, *flags, target: str = "host") -> dict:
    assert main(["compile", str(model), "-t", target, *flags, "-o", str(out)]) == 0
    assert all(c.ok and c.output_range > 0 for c in verify_folder(out, seed=1))
    return json.loads((out / "report.json").read_text())["tuning"]


def test_tune_then_reuse_records(tmp_path):
    model = save(_conv_relu(), tmp_path / "conv.onnx")
    db = tmp_path / "db"
    first = _compile(model, tmp_path / "a", "--tune", "6", "--tune-db", str(db))
    assert first["trials_run"] == 6
    (kernel,) = first["kernels"]
    assert kernel["records"] == 6 and kernel["hand_us"] > 0 and kernel["tuned_us"] > 0
    # the faster of the two, as measured
    assert kernel["schedule"] == ("tuned" if kernel["tuned_us"] < kernel["hand_us"] else "hand")
    (folder,) = db.iterdir()
    assert {p.name for p in folder.iterdir()} == {
        "database_workload.json", "database_tuning_record.json", "decisions.json"}

    # the same db, with --tune again: records present, nothing tuned or measured again
    again = _compile(model, tmp_path / "b", "--tune", "6", "--tune-db", str(db))
    assert again["trials_run"] == 0
    assert again["kernels"][0]["records"] == 6
    assert again["kernels"][0]["schedule"] == kernel["schedule"]

    # records applied without --tune; the tuned schedule itself compiles and verifies
    decisions = folder / "decisions.json"
    table = json.loads(decisions.read_text())
    for entry in table.values():
        entry["use"] = "tuned"
    decisions.write_text(json.dumps(table))
    applied = _compile(model, tmp_path / "c", "--tune-db", str(db))
    assert applied["trials_run"] == 0
    assert applied["tuned_kernels"] == [kernel["kernel"]]


@pytest.mark.parametrize("flags, says", [
    (["--tune", "0"], "--tune must be a positive number of trials"),
    (["--tune", "-3"], "--tune must be a positive number of trials"),
    (["--tune", "x"], "--tune must be an integer"),
])
def test_bad_trials(tmp_path, capsys, flags, says):
    model = save(_conv_relu(), tmp_path / "conv.onnx")
    assert main(["compile", str(model), "-t", "host", *flags, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_missing_xgboost(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "xgboost", None)
    model = save(_conv_relu(), tmp_path / "conv.onnx")
    assert main(["compile", str(model), "-t", "host", "--tune", "4", "--tune-db",
                 str(tmp_path / "db"), "-o", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err.strip()
    assert "pip install xgboost-cpu" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "db").exists()
