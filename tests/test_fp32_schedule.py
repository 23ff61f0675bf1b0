"""The fp32 conv schedule rules (targets/cpu/schedule.py): register tiles, the padding
copy of an unpadded conv, half vectors on AVX-512, and the results against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import needs_target, save
from toolchain.cli import main
from toolchain.commands.build import verify_folder
from toolchain.targets.cpu.schedule import _conv_register_tile, _pointwise_row_tile


def make_conv_mix() -> onnx.ModelProto:
    """1x1 conv to 24 channels (not a multiple of 16) on a prime width, 3x3 stride 1, 3x3
    stride 2, with bias and ReLU: the conv shapes the rules tell apart."""
    rng = np.random.default_rng(3)

    def init(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    inits = [init("w1", (24, 8, 1, 1)), init("b1", (24,), 0.1),
             init("w2", (32, 24, 3, 3), 0.1), init("b2", (32,), 0.1),
             init("w3", (16, 32, 3, 3), 0.1), init("b3", (16,), 0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="pw"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="k3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="k3s2", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes, "conv_mix", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 13, 13])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 7, 7])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _live(vf, px, lanes, taps, sliding):
    unit = lanes // 2 if lanes == 16 and vf % lanes else lanes
    regs = vf // unit
    return regs * px + regs + (px + taps - 1 if sliding and taps > 1 else 2)


@pytest.mark.parametrize("lanes,registers", [(4, 32), (8, 16), (16, 32)])
@pytest.mark.parametrize("channels,width,taps,sliding", [
    (64, 55, 3, True), (128, 27, 3, True), (256, 13, 3, True), (1000, 13, 1, False),
    (16, 55, 1, False), (64, 111, 3, False), (192, 13, 1, False)])
def test_register_tile_fits(lanes, registers, channels, width, taps, sliding):
    vf, px = _conv_register_tile(channels, width, lanes, taps, sliding)
    assert vf and channels % vf == 0 and width % px == 0
    assert _live(vf, px, lanes, taps, sliding) < registers


def test_avx512_half_vectors_when_16_does_not_divide():
    assert _conv_register_tile(1000, 13, 16) == (8, 13)  # squeezenet's conv10
    vf, _ = _conv_register_tile(64, 55, 16, 3, True)
    assert vf % 16 == 0  # whole zmm vectors whenever they divide


@pytest.mark.parametrize("channels,width", [(256, 56), (64, 56), (256, 14), (2048, 7), (1000, 13)])
def test_pointwise_tile_fits_the_registers_with_its_input_vectors(channels, width):
    vf, px = _pointwise_row_tile(channels, width, 4)
    assert vf and channels % vf == 0 and width % px == 0
    assert vf // 4 * px + vf // 4 + -(-px // 4) <= 32  # accumulators, weights, input row
    assert vf // 4 * px >= 8  # enough independent fmla per step to hide their latency


def test_3x3_tile_leaves_room_for_the_sliding_inputs():
    # 22 accumulators + 13 inputs spilled on AVX-512 and NEON; the tile is smaller now.
    vf, px = _conv_register_tile(64, 55, 4, 3, True)
    assert vf // 4 * px + vf // 4 + px + 2 < 32


def _kernels(model_path, target):
    import tvm

    from toolchain.optimizer.frontend import import_onnx
    from toolchain.targets.cpu.pipeline import PipelineContext, run_pipeline
    from toolchain.passes import cleanup_passes, transform
    from toolchain.targets import device
    from toolchain.targets.cpu.device import CpuDevice

    dev = device(target)
    model = transform(onnx.load(str(model_path)), cleanup_passes())
    cpu = CpuDevice.from_device(dev)
    ctx = PipelineContext(target=cpu.tvm_target(), vector=cpu.vector_unit())
    res = run_pipeline(import_onnx(model, dev.name), "cpu", ctx)
    return {gv.name_hint: f for gv, f in res.mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc)}


def _block_names(func):
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    names, stack = [], [sch.get_sblock("root")]
    while stack:
        for child in sch.get_child_blocks(stack.pop()):
            names.append(sch.get(child).name_hint)
            stack.append(child)
    return names


def test_structure_host(tmp_path):
    kernels = _kernels(save(make_conv_mix(), tmp_path / "m.onnx"), "host")
    convs = {n: f for n, f in kernels.items() if "conv2d" in n}
    assert len(convs) == 3
    for name, func in convs.items():
        blocks = _block_names(func)
        # every conv got the channel-vector rule (a split-off init), reading weights packed
        # at compile time [O/vf, I, KH, KW, vf]: no packing copy left in the kernel
        assert "conv2d_nchw_init" in blocks, (name, blocks)
        assert not any(b.endswith("_global") for b in blocks), (name, blocks)
        assert len(func.params[1].shape) == 5, (name, func.params[1])
    # the 1x1 conv has no padding: its copy of the input is inlined
    pw = [f for f in convs.values() if "T.if_then_else" not in f.script()]
    assert pw and all("pad_temp" not in _block_names(f) for f in pw)
    # 24 channels: half (8-lane) vectors on this AVX-512 host, 16 lanes elsewhere
    from toolchain.targets import device
    from toolchain.targets.cpu.device import CpuDevice

    if CpuDevice.from_device(device("host")).vector_unit().lanes == 16:
        assert all("T.vectorized(T.int64(8))" in f.script() for f in pw)


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("host", "arm-a72")])
def test_conv_mix_matches_onnxruntime(tmp_path, target):
    path = save(make_conv_mix(), tmp_path / "conv_mix.onnx")
    out = tmp_path / target
    assert main(["compile", str(path), "-t", target, "-o", str(out)]) == 0
    for seed in (0, 1):
        results = verify_folder(out, seed=seed)
        assert results and all(c.ok for c in results), results


def _row_buffers(func) -> list:
    """The local copies of a conv's input row (not its accumulators)."""
    from tvm.s_tir import Schedule

    sch, found = Schedule(func), []
    stack = [sch.get_sblock("root")]
    while stack:
        block = stack.pop()
        found.extend(b for b in sch.get(block).alloc_buffers
                     if b.scope() == "local" and not b.name.startswith("conv2d"))
        stack.extend(sch.get_child_blocks(block))
    return found


def _strided_conv(width: int) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((16, 4, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])], "s2",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, width, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, width // 2, width // 2])],
        [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_aarch64_convs_load_input_rows(tmp_path):
    """arm-a72: every conv, strided too, copies its tile's input row into a local vector
    (fmla by element); a stride-2 row is stored by phase (even inputs, then odd) when 2
    divides its padded width (14 + 2), in order otherwise (conv_mix: 13 + 2); the host
    never copies rows."""
    path = save(make_conv_mix(), tmp_path / "m.onnx")
    arm = {n: _row_buffers(f) for n, f in _kernels(path, "arm-a72").items() if "conv2d" in n}
    assert len(arm) == 3 and all(len(rows) == 1 for rows in arm.values()), arm
    assert all(len(rows[0].shape) == 4 for rows in arm.values()), arm
    host = [_row_buffers(f) for n, f in _kernels(path, "host").items() if "conv2d" in n]
    assert len(host) == 3 and not any(host)
    even = _kernels(save(_strided_conv(14), tmp_path / "s2.onnx"), "arm-a72")
    (rows,) = [_row_buffers(f) for n, f in even.items() if "conv2d" in n]
    assert len(rows) == 1 and [int(d) for d in rows[0].shape[3:]] == [2, 8], rows


@needs_target("arm-a72")
def test_aarch64_stride2_row_by_phase_matches_onnxruntime(tmp_path):
    out = tmp_path / "a72"
    path = save(_strided_conv(14), tmp_path / "s2.onnx")
    assert main(["compile", str(path), "-t", "arm-a72", "-o", str(out)]) == 0
    results = verify_folder(out, seed=0)
    assert results and all(c.ok for c in results), results


@needs_target("arm-a72")
def test_aarch64_kernels_multiply_by_element(tmp_path):
    import subprocess

    path = save(make_conv_mix(), tmp_path / "m.onnx")
    out = tmp_path / "a72"
    assert main(["compile", str(path), "-t", "arm-a72", "-o", str(out), "--keep-build"]) == 0
    asm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(out / "build" / "kernels.o")],
                         capture_output=True, text=True, check=True).stdout
    assert "fmla\tv" in asm and ".s[" in asm  # fmla vD.4s, vN.4s, vM.s[k]


def test_pack_oihw_puts_a_channel_tile_innermost():
    from toolchain.targets.cpu.pack_weights import pack_oihw

    w = np.arange(8 * 3 * 2 * 2, dtype=np.float32).reshape(8, 3, 2, 2)
    p = pack_oihw(w, 4)
    assert p.shape == (2, 3, 2, 2, 4) and p.flags["C_CONTIGUOUS"]
    for o, c, r, s in np.ndindex(w.shape):
        assert p[o // 4, c, r, s, o % 4] == w[o, c, r, s]


def test_weights_that_are_not_constants_keep_the_packing_loop(tmp_path):
    """A conv whose weight is a graph input cannot be packed at compile time: the schedule
    packs it per channel tile at run time, as before."""
    model = make_conv_mix()
    w1 = next(i for i in model.graph.initializer if i.name == "w1")
    model.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, list(w1.dims)))
    model.graph.initializer.remove(w1)
    kernels = _kernels(save(model, tmp_path / "m.onnx"), "arm-a72")
    convs = {n: _block_names(f) for n, f in kernels.items() if "conv2d" in n}
    copies = [n for n, b in convs.items() if any(x.endswith("_global") for x in b)]
    assert len(convs) == 3 and len(copies) == 1, convs


def _pools() -> onnx.ModelProto:
    """Max pool 3x3/2 with ceil_mode (padded copy), max pool 3x3/1 padded, average pool 2x2/2:
    the pooling shapes of squeezenet, inception and resnet."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p1"], kernel_shape=[3, 3], strides=[2, 2],
                         ceil_mode=1),
        helper.make_node("MaxPool", ["p1"], ["p2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["p2"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes, "pools", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 22, 22])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 5, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_pooling_leaves_the_output_row_innermost(tmp_path):
    """Each pooling kernel loops over its window outside the output row, and TVM does not
    vectorize that row (a strided window load would become one scalar load per lane): LLVM
    vectorizes it."""
    from tvm.s_tir import Schedule

    kernels = _kernels(save(_pools(), tmp_path / "p.onnx"), "host")
    pools = {n: f for n, f in kernels.items() if "pool" in n}
    assert len(pools) == 3, list(kernels)
    for name, func in pools.items():
        (update,) = [b for b in _block_names(func) if b.startswith("pool_") and
                     b.endswith("_update")]
        sch = Schedule(func)
        loops = [sch.get(l) for l in sch.get_loops(sch.get_sblock(update))]
        assert [str(l.loop_var).startswith("rv") for l in loops[-3:]] == [True, True, False]
        assert int(loops[-1].kind) == 0, (name, loops[-1].kind)  # serial, not vectorized


@pytest.mark.parametrize("threads", [1, 2])
def test_pooling_matches_onnxruntime(tmp_path, threads):
    path = save(_pools(), tmp_path / "pools.onnx")
    out = tmp_path / "host"
    assert main(["compile", str(path), "-t", "host", "-o", str(out),
                 "--threads", str(threads)]) == 0
    results = verify_folder(out, seed=0)
    assert results and all(c.ok for c in results), results


def _classifier(k: int = 96, n: int = 40) -> onnx.ModelProto:
    """Flatten, Gemm (transB) + ReLU, Gemm to 10 classes: batch-1 fully connected layers."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in (
        ("w1", rng.standard_normal((n, k)) * 0.2), ("b1", rng.standard_normal(n) * 0.1),
        ("w2", rng.standard_normal((10, n)) * 0.2), ("b2", rng.standard_normal(10) * 0.1))]
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k // 16, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_gemv_tile_and_packing():
    from toolchain.targets.cpu.pack_weights import pack_kn
    from toolchain.targets.cpu.schedule import gemv_tile

    assert gemv_tile(4096, 16) == (128, 16)
    assert gemv_tile(1000, 16) == (40, 8)  # half vectors when 16 does not divide
    assert gemv_tile(1000, 4) == (20, 4) and gemv_tile(10, 16) == (0, 0)
    w = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
    p = pack_kn(w, 4)
    assert p.shape == (2, 6, 4) and p.flags["C_CONTIGUOUS"]
    for k, n in np.ndindex(w.shape):
        assert p[n // 4, k, n % 4] == w[k, n]


def test_gemv_weights_packed_and_fused(tmp_path):
    """The 96->40 layer reads [N/T, K, T] weights with its bias and ReLU in the same kernel;
    the 10-class layer (no 4-lane tile divides 10) keeps its plain matmul."""
    kernels = _kernels(save(_classifier(), tmp_path / "fc.onnx"), "host")
    packed = [f for f in kernels.values() if "gemv_packed_init" in _block_names(f)]
    assert len(packed) == 1, list(kernels)
    assert len(packed[0].params[1].shape) == 3 and "T.max" in packed[0].script()
    assert sum("matmul" in b for f in kernels.values() for b in _block_names(f)
               if f is not packed[0]) >= 1


@pytest.mark.parametrize("target,threads", [
    ("host", 1), ("host", 2), pytest.param("arm-a72", 1, marks=needs_target("arm-a72"))])
def test_gemv_matches_onnxruntime(tmp_path, target, threads):
    path = save(_classifier(256, 64), tmp_path / "fc.onnx")
    out = tmp_path / target
    assert main(["compile", str(path), "-t", target, "-o", str(out),
                 "--threads", str(threads)]) == 0
    results = verify_folder(out, seed=0)
    assert results and all(c.ok for c in results), results


def test_vector_tile_stays_in_one_register_when_no_whole_ones_divide():
    from toolchain.targets.cpu.schedule import _vector_tile

    # AVX-512: 28 lanes was built lane by lane; one partial register instead
    assert [_vector_tile(e, 16) for e in (28, 27, 1000, 32, 13)] == [14, 9, 10, 32, 13]
    # NEON and AVX2 keep the rule their instruction counts were measured with
    assert [_vector_tile(e, 4) for e in (6, 55, 28, 7)] == [6, 5, 4, 7]
    assert _vector_tile(28, 8) == 14
