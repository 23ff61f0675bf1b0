"""Weight-only int8/int4 matmuls (targets/cpu/weight_only.py, wgemv.py): the weights
stay quantized in the binary, dequantized in registers, and the outputs match onnxruntime."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import needs_target, relax_constants, save
from toolchain.cli import main


def weight_only_matmul(k: int, n: int, rows: int = 1, bits: int = 4, group: int = 32,
                       bias: bool = True, rank3: bool = True, seed: int = 0,
                       int8_blocked: bool = False) -> onnx.ModelProto:
    """``MatMul(x, DequantizeLinear(Wq, scale)) (+ bias)``, the form LM exports write: int8
    per channel (or, ``int8_blocked``, in groups like int4), int4 in groups."""
    rng = np.random.default_rng(seed)
    shape = [1, rows, k] if rank3 else [rows, k]
    nodes, inits = [], []
    if bits == 8 and int8_blocked:
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "wq"),
                  numpy_helper.from_array(
                      rng.uniform(0.001, 0.02, (k // group, n)).astype(np.float32), "ws")]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0,
                                      block_size=group))
    elif bits == 8:
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "wq"),
                  numpy_helper.from_array(rng.uniform(0.001, 0.02, n).astype(np.float32), "ws")]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1))
    else:
        q = rng.integers(-8, 8, (k, n))
        inits += [helper.make_tensor("wq", TensorProto.INT4, [k, n], q.reshape(-1).tolist()),
                  numpy_helper.from_array(
                      rng.uniform(0.001, 0.02, (k // group, n)).astype(np.float32), "ws")]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0,
                                      block_size=group))
    nodes.append(helper.make_node("MatMul", ["x", "w"], ["mm" if bias else "y"]))
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", ["mm", "b"], ["y"]))
    graph = helper.make_graph(
        nodes, "weight_only", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape[:-1] + [n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def _lowered(model: onnx.ModelProto, target=None):
    """The model through import and the simplify stage (where the rewrite happens)."""
    from toolchain.optimizer.frontend import import_onnx
    from toolchain.targets.cpu.pipeline import PipelineContext, simplify
    from toolchain.passes import cleanup_passes, transform
    from toolchain.targets import device
    from toolchain.targets.cpu.device import CpuDevice
    import tvm

    target = target or CpuDevice.from_device(device("host")).tvm_target()
    mod = import_onnx(transform(model, cleanup_passes()), "host")
    with tvm.transform.PassContext(opt_level=3):
        for p in simplify(PipelineContext(target=target)):
            mod = p(mod)
    return mod


@pytest.mark.parametrize("bits,group,blocked", [(8, 128, False), (8, 32, True), (4, 32, True),
                                                (4, 64, True)])
def test_weights_stay_quantized(bits, group, blocked):
    """One wgemv kernel, bias folded in; no float constant of K*N elements (or more than the
    scales and bias) is left, and the int weights take K*N (int8) or K*N/2 (int4) bytes."""
    k, n = 128, 64
    mod = _lowered(weight_only_matmul(k, n, bits=bits, group=group, int8_blocked=blocked))
    kernels = [gv.name_hint for gv in mod.functions if gv.name_hint.startswith("wgemv")]
    assert len(kernels) == 1 and kernels[0].startswith(f"wgemv_int{bits}"), kernels
    assert "edgec.wgemv" in mod[kernels[0]].attrs
    consts = relax_constants(mod)
    floats = [c for c in consts if c.dtype.kind == "f"]
    ints = [c for c in consts if c.dtype == np.int8]
    assert sum(c.size for c in floats) == (k // group) * n + n  # scales, bias
    assert sum(c.nbytes for c in ints) == k * n * bits // 8


def test_fold_constants_keeps_dequantize():
    """At opset >= 19 onnx's reference evaluator has DequantizeLinear: FoldConstants would
    turn the int weights into a float initializer."""
    from toolchain.passes import cleanup_passes, transform

    model = transform(weight_only_matmul(64, 32, bits=8), cleanup_passes())
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "MatMul", "Add"]
    assert {t.data_type for t in model.graph.initializer} >= {TensorProto.INT8}


@pytest.mark.parametrize("rows,rank3,bits", [(1, True, 8), (3, False, 4), (4, True, 4)])
def test_numerics_match_onnxruntime(rows, rank3, bits):
    """The lowered module (decode S=1 and prefill S>1) against onnxruntime with basic
    optimization (full optimization's MatMulNBits is not exact), on the host."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from toolchain.targets.cpu.pipeline import PipelineContext, run_pipeline
    from toolchain.targets import device
    from toolchain.targets.cpu.device import CpuDevice
    from toolchain.optimizer.frontend import import_onnx
    from toolchain.passes import cleanup_passes, transform

    model = weight_only_matmul(256, 96, rows=rows, bits=bits, rank3=rank3, seed=rows)
    target = CpuDevice.from_device(device("host")).tvm_target()
    mod = import_onnx(transform(model, cleanup_passes()), "host")
    result = run_pipeline(mod, "cpu", PipelineContext(target=target))
    vm = relax.VirtualMachine(tvm.compile(result.mod, target=target), tvm.cpu())
    x = np.random.default_rng(7).standard_normal([1, rows, 256] if rank3 else [rows, 256])
    x = x.astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    want = ort.InferenceSession(model.SerializeToString(), opts).run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= 1e-5 * np.ptp(want)


def _mnemonics(objdump: str, obj, symbol: str) -> list[str]:
    asm = subprocess.run([objdump, "-d", str(obj)], check=True, capture_output=True,
                         text=True).stdout
    body = asm.split(f"<{symbol}>:")[1].split("\n\n")[0]
    return [ln.split("\t")[2].split()[0] for ln in body.splitlines() if ln.count("\t") >= 2]


@needs_target("arm-a76")
def test_int4_on_arm_verifies_with_int4_bytes(tmp_path):
    """arm-a76 under qemu: verify passes against onnxruntime, report.json's weight bytes are
    the int4 weights (K*N/2) + scales + bias, and the kernel converts weights in registers
    (scvtf + fmla on vectors) rather than loading float weights."""
    k, n, group = 256, 128, 32
    path = save(weight_only_matmul(k, n, bits=4, group=group), tmp_path / "wo.onnx")
    out = tmp_path / "out"
    assert main(["compile", str(path), "-t", "arm-a76", "--keep-build", "-o", str(out)]) == 0
    assert main(["verify", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["memory"]["weight_bytes"] == k * n // 2 + 4 * (k // group * n + n)
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        pytest.skip("aarch64-linux-gnu-objdump missing (binutils-aarch64-linux-gnu)")
    ops = _mnemonics(objdump, out / "build" / "kernels.o", "wgemv_int41_compute_")
    assert ops.count("scvtf") >= 8 and ops.count("fmla") >= 8, sorted(set(ops))
    assert "sshr" in ops  # int4 nibbles sign-extended in registers


def _quantized_x_reference(model: onnx.ModelProto, x: np.ndarray, bits: int, group: int):
    """What the int8-activation kernel computes, in numpy: x quantized per row to int8."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = inits["wq"].astype(np.float64)
    k, n = q.shape
    s = inits["ws"].reshape(-1 if bits == 8 else k // group, n)
    w = q * (np.repeat(s, group, axis=0) if bits == 4 else s)
    rows = x.reshape(-1, k).astype(np.float64)
    sx = np.abs(rows).max(axis=1, keepdims=True) / 127
    return (np.clip(np.round(rows / sx), -127, 127) * sx @ w + inits["b"]).reshape(
        *x.shape[:-1], n)


@pytest.mark.parametrize("bits,rows,sdot", [(4, 1, False), (8, 4, False), (4, 2, True)])
def test_int8_activation_kernel_numerics(bits, rows, sdot):
    """The int8-activation kernel, in its int16-pair form and in sdot's layout (plain loops
    on the host), equals the same arithmetic in numpy to float rounding."""
    import tvm

    from toolchain.targets.cpu import wgemv, wgemv_dot
    from toolchain.targets import device
    from toolchain.targets.cpu.device import CpuDevice

    k, n, group = 128, 64, 32
    model = weight_only_matmul(k, n, rows=rows, bits=bits, group=group if bits == 4 else k,
                               seed=3)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = inits["wq"].astype(np.int16)
    g = group if bits == 4 else k
    target = CpuDevice.from_device(device("host")).tvm_target()
    tile, row_tile = (wgemv_dot.dot_tiles(rows, n) if sdot
                      else wgemv.choose_tiles(target, rows, n, bits))
    spec = wgemv.WeightOnlySpec(rows, k, n, bits, g, tile, row_tile, True, True, sdot)
    func = wgemv_dot.schedule_wgemv_dot(wgemv_dot.make_primfunc(spec), spec, target)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    x = np.random.default_rng(5).standard_normal((rows, k)).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros((rows, n), np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (
        x, wgemv_dot.pack_weights(q, spec),
        wgemv.pack_scales(inits["ws"].reshape(-1, n), spec), inits["b"])), y)
    want = _quantized_x_reference(model, x, bits, g)
    assert np.abs(y.numpy() - want).max() <= 1e-5 * np.ptp(want)


@needs_target("arm-a76")
def test_int8_activation_variant_uses_sdot_on_arm_a76(tmp_path):
    """int4 weights, int8 activations on arm-a76: sdot in the kernel, int4 bytes in the
    binary, and verify passes within the activation quantization's tolerance."""
    k, n = 256, 64
    path = save(weight_only_matmul(k, n, bits=4, group=32), tmp_path / "wo.onnx")
    out = tmp_path / "out"
    assert main(["compile", str(path), "-t", "arm-a76", "--pipeline", "cpu-int8-act",
                 "--keep-build", "-o", str(out)]) == 0
    assert main(["verify", str(out), "--tolerance", "1e-2"]) == 0
    from toolchain.targets.registry import backend_for

    x = np.random.default_rng(2).standard_normal((1, 1, k)).astype(np.float32)
    got = backend_for("cpu").run(out, [x])[0]
    want = _quantized_x_reference(onnx.load(str(path)), x, 4, 32)
    assert np.abs(got - want).max() <= 1e-5 * np.ptp(want)  # sdot: exact int32 sums
    report = json.loads((out / "report.json").read_text())
    assert report["memory"]["weight_bytes"] == k * n // 2 + 4 * (k // 32 * n + n)
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        pytest.skip("aarch64-linux-gnu-objdump missing (binutils-aarch64-linux-gnu)")
    kernel = next(name for name in report["kernels"] if name.startswith("wgemv_a8"))
    ops = _mnemonics(objdump, out / "build" / "kernels.o", f"{kernel}_compute_")
    # The reduction is sdot (4 channels x 4 products each), unrolled over the tile.
    assert ops.count("sdot") >= 16, sorted(set(ops))


@pytest.mark.parametrize("int8_act", [False, True])
def test_threads_split_column_tiles(int8_act):
    """--threads 2: the column-tile loop is parallel and the result unchanged."""
    import tvm

    from toolchain.targets.cpu import wgemv, wgemv_dot
    from toolchain.targets import device
    from toolchain.targets.cpu.device import CpuDevice

    target = CpuDevice.from_device(device("host")).tvm_target()
    rows, k, n, group = 3, 128, 256, 32
    kind = wgemv_dot if int8_act else wgemv
    tile, row_tile = (wgemv_dot.dot_tiles(rows, n) if int8_act
                      else wgemv.choose_tiles(target, rows, n, 4))
    spec = wgemv.WeightOnlySpec(rows, k, n, 4, group, tile, row_tile, False, int8_act, int8_act)
    rng = np.random.default_rng(1)
    q = rng.integers(-8, 8, (k, n))
    s = rng.uniform(0.001, 0.02, (k // group, n)).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    outs = []
    for threads in (1, 2):
        func = (wgemv_dot.schedule_wgemv_dot(kind.make_primfunc(spec), spec, target, threads)
                if int8_act else wgemv.schedule_wgemv(kind.make_primfunc(spec), spec, threads))
        assert ("T.parallel" in func.script()) == (threads > 1)
        lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
        y = tvm.runtime.tensor(np.zeros((rows, n), np.float32))
        lib["main"](*(tvm.runtime.tensor(a) for a in (
            x, kind.pack_weights(q, spec), wgemv.pack_scales(s, spec))), y)
        outs.append(y.numpy())
    assert np.array_equal(outs[0], outs[1])


@needs_target("arm-a72")
def test_int8_activation_variant_on_plain_neon(tmp_path):
    """arm-a72 (no dot product): int16 pair products, smull/smlal + saddw in the kernel."""
    k, n = 128, 64
    path = save(weight_only_matmul(k, n, bits=8, int8_blocked=True, group=32), tmp_path / "w.onnx")
    out = tmp_path / "out"
    assert main(["compile", str(path), "-t", "arm-a72", "--pipeline", "cpu-int8-act",
                 "--keep-build", "-o", str(out)]) == 0
    assert main(["verify", str(out), "--tolerance", "1e-2"]) == 0
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        pytest.skip("aarch64-linux-gnu-objdump missing (binutils-aarch64-linux-gnu)")
    report = json.loads((out / "report.json").read_text())
    kernel = next(name for name in report["kernels"] if name.startswith("wgemv_a8"))
    ops = set(_mnemonics(objdump, out / "build" / "kernels.o", f"{kernel}_compute_"))
    assert {"smull", "smlal", "saddw"} <= ops, sorted(ops)
