"""Weight-only quantized embedding tables (targets/cpu/qgather.py): the table stays int8 in
the binary, only the gathered rows are dequantized, the outputs equal onnxruntime's exactly,
and out-of-range ids are still refused by the driver."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import relax_constants, save
from toolchain.cli import main


def quantized_embedding(vocab: int = 1000, dim: int = 64, n: int = 16, scale: str = "row",
                        zero_point: bool = False, dtype=np.int8) -> onnx.ModelProto:
    """``Gather(DequantizeLinear(table, scale, zp), ids)``, as ``--quantizer torchao`` writes
    it (``scale="row"``: one scale per row, axis 0), or per column, or per tensor."""
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    q = rng.integers(info.min, info.max + 1, (vocab, dim)).astype(dtype)
    size, axis = {"row": (vocab, 0), "col": (dim, 1), "tensor": ((), None)}[scale]
    inits = [numpy_helper.from_array(q, "tq"),
             numpy_helper.from_array(rng.uniform(1e-3, 2e-2, size).astype(np.float32), "ts")]
    inputs = ["tq", "ts"]
    if zero_point:
        inits.append(numpy_helper.from_array(rng.integers(-5, 6, size).astype(dtype)
                                             if dtype == np.int8 else
                                             rng.integers(120, 136, size).astype(dtype), "tz"))
        inputs.append("tz")
    nodes = [helper.make_node("DequantizeLinear", inputs, ["t"],
                              **({} if axis is None else {"axis": axis})),
             helper.make_node("Gather", ["t", "ids"], ["y"], axis=0)]
    graph = helper.make_graph(
        nodes, "qgather", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _compiled(model: onnx.ModelProto, pipeline: str = "cpu"):
    """``model`` through the whole pipeline on the host: (final module, target)."""
    from toolchain.optimizer.frontend import import_onnx
    from toolchain.passes import cleanup_passes, transform
    from toolchain.targets import device
    from toolchain.targets.cpu.device import CpuDevice
    from toolchain.targets.cpu.pipeline import PipelineContext, run_pipeline

    target = CpuDevice.from_device(device("host")).tvm_target()
    mod = import_onnx(transform(model, cleanup_passes()), "host")
    return run_pipeline(mod, pipeline, PipelineContext(target=target)).mod, target


def _ort(model: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString()).run(None, {"ids": ids})[0]


@pytest.mark.parametrize("scale,zero_point,dtype,pipeline", [
    ("row", False, np.int8, "cpu-int"), ("tensor", False, np.int8, "cpu"),
    ("col", True, np.int8, "cpu"), ("row", True, np.uint8, "cpu-int")])
def test_table_stays_int8_and_output_is_exact(scale, zero_point, dtype, pipeline):
    """After the pipeline the only table-sized constant is the int8 one (no float copy of
    V*D elements), and the gathered rows equal onnxruntime's bit for bit."""
    import tvm
    from tvm import relax

    vocab, dim = 1000, 64
    model = quantized_embedding(vocab, dim, scale=scale, zero_point=zero_point, dtype=dtype)
    mod, target = _compiled(model, pipeline)
    consts = relax_constants(mod)
    assert [c.shape for c in consts if c.size >= vocab * dim] == [(vocab, dim)]
    assert [c.dtype for c in consts if c.size >= vocab * dim] == [np.dtype(dtype)]
    assert sum(c.size for c in consts if c.dtype.kind == "f") <= vocab  # the scales
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    ids = np.array([[0, 999, -1, -1000, *range(3, 15)]], np.int64)
    got = vm["main"](tvm.runtime.tensor(ids)).numpy()
    assert np.array_equal(got, _ort(model, ids))


def test_float_table_is_left_alone():
    """A float table's Gather is not rewritten."""
    from toolchain.optimizer.frontend import import_onnx
    from toolchain.passes import cleanup_passes, transform
    from toolchain.targets.cpu.qgather import GatherQuantizedRows

    float_table = helper.make_model(helper.make_graph(
        [helper.make_node("Gather", ["t", "ids"], ["y"], axis=0)], "f",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])],
        [numpy_helper.from_array(np.ones((10, 8), np.float32), "t")]),
        opset_imports=[helper.make_opsetid("", 13)])
    float_table.ir_version = 8
    mod = import_onnx(transform(float_table, cleanup_passes()), "host")
    before = _ops(mod)
    assert _ops(GatherQuantizedRows()(mod)) == before and "relax.take" in before


def _ops(mod) -> list[str]:
    from tvm import relax

    names = []
    relax.analysis.post_order_visit(mod["main"], lambda e: isinstance(e, relax.Call) and names.append(
        getattr(e.op, "name", "")))
    return names


def test_host_binary_keeps_int8_bytes_and_refuses_bad_ids(tmp_path):
    """The compiled host binary: report.json's weight bytes are the int8 table and its row
    scales (not 4*V*D), its output equals onnxruntime's, and an id outside [-V, V) is a
    one-line refusal (exit 2) before any kernel reads the table."""
    vocab, dim, n = 1000, 64, 16
    model = quantized_embedding(vocab, dim, n)
    out = tmp_path / "out"
    assert main(["compile", str(save(model, tmp_path / "qg.onnx")), "-t", "host", "-o",
                 str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    weight_bytes = report["memory"]["weight_bytes"]  # + alignment padding
    assert vocab * dim + 4 * vocab <= weight_bytes < vocab * dim + 4 * vocab + 128
    ids = np.array([[5, 999, -1, -1000, *range(10, 22)]], np.int64)
    ids.tofile(tmp_path / "ok.bin")
    run = subprocess.run([str(out / "model"), str(tmp_path / "ok.bin"), str(tmp_path / "y.bin")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    got = np.fromfile(tmp_path / "y.bin", np.float32).reshape(1, n, dim)
    assert np.array_equal(got, _ort(model, ids))
    for value in (vocab, -vocab - 1):
        bad = ids.copy()
        bad[0, 3] = value
        bad.tofile(tmp_path / "bad.bin")
        run = subprocess.run([str(out / "model"), str(tmp_path / "bad.bin"),
                              str(tmp_path / "y.bin")], capture_output=True, text=True)
        assert run.returncode == 2
        assert run.stderr.strip() == (f"model: bad input: input 'ids' element 3: index {value} "
                                      f"is outside [-{vocab}, {vocab})")
