"""The int8 matmul of two activations (targets/cpu/qmatmul.py): attention's Q.K^T and P.V in a
QDQ model become int8 GEMM kernels (b packed at run time, zero points by row and column sums),
match onnxruntime, and use the target's dot instruction."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import needs_target, save
from toolchain.cli import main
from toolchain.commands.build import verify_folder


def attention_qdq(batch: int = 1, heads: int = 2, tokens: int = 26, dim: int = 53,
                  b_dtype: str = "int8", broadcast_b: bool = False,
                  matrix: bool = False) -> onnx.ModelProto:
    """x [B, H, T, D] -> s = dq(q(x)) @ dq(q(x^T)) -> y = dq(q(s)) @ dq(q(x)), every operand
    asymmetric: uint8 with zero points 113 and 131, the transposed one ``b_dtype`` with zero
    point -9 (int8) or 77 (uint8); y quantized on a uint8 grid. Odd sizes: K and N are
    padded to the dot steps, rows to the register tile; 26 x 26 x 53 multiply-accumulates
    per head are enough for the int8 kernel on every target (``qmatmul.MIN_MACS``).
    ``broadcast_b``: x^T averaged over the heads (one b for all of them); ``matrix``: x is
    one [T, D] matrix."""
    np_b = np.int8 if b_dtype == "int8" else np.uint8
    z_b = -9 if b_dtype == "int8" else 77
    s_max = 4.0 * np.sqrt(dim) * 0.6
    grids = {"a": (0.02, np.uint8(113)), "t": (0.025, np_b(z_b)), "v": (0.03, np.uint8(131)),
             "s": (2 * s_max / 255, np.uint8(120)),
             "y": (tokens * np.sqrt(dim) / 50, np.uint8(128))}
    inits = []
    for name, (scale, zero) in grids.items():
        inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
                  numpy_helper.from_array(np.array(zero), f"{name}_z")]
    n = helper.make_node

    def qdq(src: str, grid: str, dst: str) -> list:
        return [n("QuantizeLinear", [src, f"{grid}_s", f"{grid}_z"], [dst + "_q"]),
                n("DequantizeLinear", [dst + "_q", f"{grid}_s", f"{grid}_z"], [dst])]

    head = [n("ReduceMean", ["x"], ["xm"], axes=[1], keepdims=1)] if broadcast_b else []
    nodes = [*qdq("x", "a", "a"), *head,
             n("Transpose", ["xm" if broadcast_b else "x"], ["xt"],
               perm=[1, 0] if matrix else [0, 1, 3, 2]),
             *qdq("xt", "t", "t"), n("MatMul", ["a", "t"], ["s"]), *qdq("s", "s", "p"),
             *qdq("x", "v", "v"), n("MatMul", ["p", "v"], ["m"]), *qdq("m", "y", "y")]
    shape = [tokens, dim] if matrix else [batch, heads, tokens, dim]
    graph = helper.make_graph(
        nodes, "qattn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _lowered_ops(path: Path, int8_dot: str | None):
    import tvm

    from toolchain.optimizer.frontend import import_onnx
    from toolchain.passes import cleanup_passes, transform
    from toolchain.targets.cpu.integer import LowerQDQToInteger, integer_ops
    from toolchain.targets.cpu.vector import VectorUnit

    mod = import_onnx(transform(onnx.load(str(path)), cleanup_passes()), "host")
    vector = VectorUnit(int8_dot=int8_dot) if int8_dot else None
    with tvm.transform.PassContext(opt_level=3):
        return integer_ops(LowerQDQToInteger(vector=vector)(mod))


@pytest.mark.parametrize("int8_dot", [None, "sdot", "smull", "vpdpbusd"])
def test_both_activation_matmuls_become_int8_gemms(tmp_path, int8_dot):
    path = save(attention_qdq(), tmp_path / "qattn.onnx")
    assert _lowered_ops(path, int8_dot) == {"qgemm_act:float32": 2}


def test_broadcast_batches_keep_the_int16_matmul(tmp_path):
    """b shared by the heads of a (batch dims that differ, b not 2-D): the int16 fallback
    takes that matmul."""
    path = save(attention_qdq(broadcast_b=True), tmp_path / "bcast.onnx")
    assert _lowered_ops(path, "sdot") == {"matmul:int32": 1, "qgemm_act:float32": 1}


@pytest.mark.parametrize("int8_dot, tokens, dim, taken", [
    ("sdot", 8, 16, False), ("sdot", 16, 16, True),
    ("smull", 16, 32, False), ("smull", 32, 32, True)])
def test_small_heads_keep_the_int16_matmul(tmp_path, int8_dot, tokens, dim, taken):
    """Below ``MIN_MACS`` per head the packing, sums and calls cost more than they save."""
    path = save(attention_qdq(tokens=tokens, dim=dim), tmp_path / "small.onnx")
    want = {"qgemm_act:float32": 2} if taken else {"matmul:int32": 2}
    assert _lowered_ops(path, int8_dot) == want


def _mnemonics(objdump: str, obj: Path) -> set[str]:
    asm = subprocess.run([objdump, "-d", str(obj)], check=True, capture_output=True,
                         text=True).stdout
    return {line.split("\t")[2].split()[0] for line in asm.splitlines() if line.count("\t") >= 2}


# The model has no weights: these instructions can only come from the activation GEMMs.
INSTRUCTIONS = {"arm-a76": {"sdot"}, "arm-a72": {"smull", "sadalp"}}


@pytest.mark.parametrize("target, b_dtype, matrix", [
    pytest.param(t, d, mat, marks=needs_target(t))
    for t, d, mat in (("host", "int8", False), ("arm-a76", "int8", False),
                      ("arm-a76", "uint8", False), ("arm-a76", "int8", True),
                      ("arm-a72", "int8", False))])
def test_attention_matmuls_match_onnxruntime(tmp_path, target, b_dtype, matrix):
    """Exact against onnxruntime on these seeded inputs (in general within one output step:
    onnxruntime sums float32 products, and a score on a rounding edge can land on the next
    step of the quantized scores); the dot instruction is in the kernels."""
    path = save(attention_qdq(b_dtype=b_dtype, matrix=matrix), tmp_path / "qattn.onnx")
    assert _lowered_ops(path, "sdot") == {"qgemm_act:float32": 2}
    out = tmp_path / "out"
    assert main(["compile", str(path), "-t", target, "--keep-build", "-o", str(out)]) == 0
    for seed in (0, 1):
        (c,) = verify_folder(out, seed=seed)
        assert c.ok and c.output_range > 0 and c.max_abs_error == 0, c
    if target == "host":
        from toolchain.targets import device
        from toolchain.targets.cpu.device import CpuDevice

        if CpuDevice.from_device(device("host")).vector_unit().int8_dot != "vpdpbusd":
            return
        objdump, want = shutil.which("objdump"), {"vpdpbusd"}
    else:
        from toolchain.targets import device

        objdump, want = shutil.which(device(target).facts["cc_prefix"] + "objdump"), \
            INSTRUCTIONS[target]
    if objdump is None:
        pytest.skip(f"objdump for {target} missing (binutils)")
    found = _mnemonics(objdump, out / "build" / "kernels.o")
    assert want <= found, (want, sorted(found))
