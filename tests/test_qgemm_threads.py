"""--threads N with integer models: the int8 GEMM kernels (targets/cpu/qgemm.py, and the
activation x activation kernel of qmatmul.py) stay tiled and tensorized and get a parallel
loop of register tiles, and the threaded builds match onnxruntime.

Parallelizing after ``decompose_reduction``/``tensorize`` used to fail ("5) The reduction
block vars are not used to index the output buffers") and left the kernels as plain loops."""

from __future__ import annotations

import logging
import shutil
import subprocess

import numpy as np
import onnx
import pytest

from onnx_graphs import make_conv_matmul_qdq, needs_target, save
from toolchain.cli import main
from toolchain.commands.build import verify_folder
from toolchain.targets.cpu import qgemm

INSTRS = [qgemm.SDOT, qgemm.NEON_SMULL, qgemm.NEON_SMLAL, qgemm.VNNI, qgemm.GENERIC]


def _kernel(instr: qgemm.DotInstr, conv: bool):
    """A 3x3 conv over 8x8 pixels (many pixel tiles), or a 1-row matmul of 128 channels (one
    pixel tile, several channel tiles: VNNI's are 64 wide), as integer.py builds them."""
    from tvm import te

    k, cols = 16, 64 if conv else 128
    geom = (qgemm.ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1, 1, 1)) if conv
            else qgemm.ConvGeometry())
    xshape, (oh, ow) = ((1, 8, 8, k), (8, 8)) if conv else ((1, 1, 1, k), (1, 1))
    wp = qgemm.pack_weight(np.ones((cols, 3, 3, k) if conv else (cols, 1, 1, k), np.int8),
                           instr)
    o_pad = qgemm.padded_channels(wp, instr)
    x = te.placeholder(xshape, instr.act_dtype, "x")
    w = te.placeholder(wp.shape, "int8", "w")
    b = te.placeholder((o_pad,), "int32", "b")
    s = te.placeholder((o_pad,), "float32", "s")
    tp = qgemm.row_tile(instr, oh, ow, cols)
    out = qgemm.gemm_te(x, w, b, s, geom=geom, in_zero=0, instr=instr, tp=tp,
                        out_channels=cols, out_dtype="int8")
    return te.create_prim_func([x, w, b, s, out]).with_attrs(
        {"edgec.qgemm": instr.name, "edgec.qgemm_rows": tp})


@pytest.mark.parametrize("conv", [True, False], ids=["conv", "matmul-row"])
@pytest.mark.parametrize("instr", INSTRS, ids=lambda i: i.name)
def test_threaded_schedule_is_tensorized_and_parallel(instr, conv, caplog):
    caplog.set_level(logging.WARNING, logger=qgemm.log.name)
    serial = qgemm.schedule_qgemm(_kernel(instr, conv), None, 1).script()
    threaded = qgemm.schedule_qgemm(_kernel(instr, conv), None, 2).script()
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert "T.parallel" not in serial
    parallel = [ln.strip() for ln in threaded.splitlines() if "T.parallel" in ln]
    assert len(parallel) == 1, parallel
    # Tensorized as in the serial schedule: the same instruction blocks, the same intrinsics.
    for marker in ("T.match_buffer", "llvm."):
        assert threaded.count(marker) == serial.count(marker) and serial.count("T.match_buffer")
    # Conv: the (image, pixel tile) loop; one-row matmul: its channel tiles (one pixel tile).
    assert ("nn_p_0_fused" in parallel[0]) == conv
    extent = int(parallel[0].split("T.parallel(")[1].split(")")[0])
    assert extent >= 2


def _conv_matmul_qdq() -> onnx.ModelProto:
    """uint8 input 12 x 12 (zero point 131) -> 3x3 conv 3 -> 16 channels (stride 2, padded)
    + ReLU, float out -> Flatten -> int8 (zero point -20) -> MatMul 576 x 80 -> uint8 output:
    several pixel tiles of the conv and channel tiles of the matmul on every target."""
    return make_conv_matmul_qdq(
        seed=5, size=12, conv_out=16, matmul_out=80, matmul_scale=(0.002, 0.01),
        quant=(("x", 0.02, 131, np.uint8), ("h", 0.05, -20, np.int8), ("y", 0.2, 128, np.uint8)),
        relu=True, name="qdq_threads")


# The instructions of each target's int8 GEMM step (host: only with AVX-512 VNNI).
INSTRUCTIONS = {"arm-a76": {"sdot"}, "arm-a72": {"smull", "sadalp"}, "host": {"vpdpbusd"}}


def _objdump(target: str) -> str | None:
    from toolchain.targets import device

    if target == "host":
        from toolchain.targets.cpu.device import CpuDevice

        if CpuDevice.from_device(device("host")).vector_unit().int8_dot != "vpdpbusd":
            return None
        return shutil.which("objdump")
    return shutil.which(device(target).facts["cc_prefix"] + "objdump")


def _functions_calling(objdump: str, obj, symbol: str) -> tuple[set[str], set[str]]:
    """(functions whose code references ``symbol``, every mnemonic of the object)."""
    asm = subprocess.run([objdump, "-dr", str(obj)], check=True, capture_output=True,
                         text=True).stdout
    calling, mnemonics, fn = set(), set(), ""
    for line in asm.splitlines():
        if line.endswith(">:"):
            fn = line.split("<", 1)[1][:-2]
        elif symbol in line:
            calling.add(fn)
        elif line.count("\t") >= 2 and line.split("\t")[2].split():
            mnemonics.add(line.split("\t")[2].split()[0])
    return calling, mnemonics


def _check_threaded(model, target: str, out, kernels: set[str], caplog) -> None:
    caplog.set_level(logging.WARNING, logger=qgemm.log.name)
    assert main(["compile", str(model), "-t", target, "--threads", "2", "--keep-build",
                 "-o", str(out)]) == 0
    assert not [r for r in caplog.records if r.name == qgemm.log.name], caplog.text
    for seed in (0, 1):
        results = verify_folder(out, seed=seed)
        assert results and all(c.ok and c.output_range > 0 for c in results), results
    objdump = _objdump(target)
    if objdump is None:
        return
    calling, mnemonics = _functions_calling(objdump, out / "build" / "kernels.o",
                                            "__TVMBackendParallelLaunch")
    assert {f"{k}_compute_" for k in kernels} <= calling, sorted(calling)
    assert INSTRUCTIONS[target] <= mnemonics, sorted(mnemonics)


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("host", "arm-a76", "arm-a72")])
def test_threaded_int8_build_matches_onnxruntime(tmp_path, target, caplog):
    path = save(_conv_matmul_qdq(), tmp_path / "q.onnx")
    _check_threaded(path, target, tmp_path / "out", {"qgemm_conv", "qgemm_matmul"}, caplog)


@needs_target("arm-a76")
def test_threaded_activation_matmuls(tmp_path, caplog):
    """Attention's Q.K^T and P.V on the int8 GEMM (qmatmul.py), two heads: parallel too."""
    from test_qmatmul import attention_qdq

    path = save(attention_qdq(), tmp_path / "qattn.onnx")
    _check_threaded(path, "arm-a76", tmp_path / "out", {"qgemm_act", "qgemm_act1"}, caplog)
