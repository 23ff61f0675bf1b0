"""LowerQDQToInteger and the ``cpu-int`` pipeline (the default for QDQ models): int8 GEMM
kernels that requantize to int8 between layers, the dot instructions each target uses, and
weights stored as int8."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import make_conv_matmul_qdq, needs_target, save
from toolchain.cli import main
from toolchain.commands.build import verify_folder

MODELS = ["mlp", "cnn"]
# int8 GEMM kernels by output dtype after the pass (the zoo's int8 QDQ models): uint8 where a
# QuantizeLinear follows (requantized in the kernel), float32 where a float op comes first
# (the cnn's last conv feeds GlobalAveragePool).
EXPECTED = {"mlp": {"qgemm_matmul:uint8": 3},
            "cnn": {"qgemm_conv:uint8": 2, "qgemm_conv:float32": 1, "qgemm_matmul:uint8": 1}}
# What each target's int8 kernels must be made of (objdump mnemonics).
INSTRUCTIONS = {"arm-a76": ["sdot"], "arm-a72": ["smull", "smlal", "sadalp"],
                "armv7-a7": ["vmlal.s16"]}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_int")
    cache: dict[tuple[str, bool], Path] = {}

    def get(name: str, quantized: bool = True) -> Path:
        key = (name, quantized)
        if key not in cache:
            path = root / f"{name}{'_q8' if quantized else ''}.onnx"
            flags = ["--quantize", "int8"] if quantized else []
            assert main(["compress", name, *flags, "-o", str(path)]) == 0
            cache[key] = path
        return cache[key]

    return get


def _relax(path: Path):
    from toolchain.optimizer.frontend import import_onnx
    from toolchain.passes import cleanup_passes, transform

    return import_onnx(transform(onnx.load(str(path)), cleanup_passes()), "host")


def _lower(mod):
    import tvm

    from toolchain.targets.cpu.integer import LowerQDQToInteger

    with tvm.transform.PassContext(opt_level=3):
        return LowerQDQToInteger()(mod)


@pytest.mark.parametrize("name", MODELS)
def test_pass_rewrites_zoo_int8_models(zoo, name):
    from toolchain.targets.cpu.integer import integer_ops

    mod = _relax(zoo(name))
    assert all(k.endswith("float32") for k in integer_ops(mod))
    assert integer_ops(_lower(mod)) == EXPECTED[name]


def test_float_model_is_untouched(zoo):
    import tvm

    mod = _relax(zoo("cnn", quantized=False))
    tvm.ir.assert_structural_equal(_lower(mod), _relax(zoo("cnn", quantized=False)))


def _main_ops(mod) -> list[str]:
    from tvm import relax

    ops: list[str] = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: ops.append(
        e.op.name) if isinstance(e, relax.Call) and hasattr(e.op, "name") else None)
    return ops


def test_float_output_conv_takes_its_bias_and_relu(zoo):
    """The zoo cnn's last conv feeds GlobalAveragePool unquantized: its float bias and ReLU
    run in the GEMM's epilogue and the mean over its channels-last output (no transpose,
    add, relu kernel of its own)."""
    ops = _main_ops(_lower(_relax(zoo("cnn"))))
    assert "relax.nn.relu" not in ops and "relax.add" not in ops, ops
    assert "relax.permute_dims" in ops  # the input's, once
    assert ops.count("relax.permute_dims") == 1, ops


def test_few_channel_conv_reads_whole_kernel_rows(tmp_path):
    """A 3-channel stem reads each kernel row's 3 x 3 bytes as one copy (qrows.py): a padded
    input, weights in 16-byte row chunks; a 16-channel conv on 16 channels does not."""
    from toolchain.targets.cpu import qrows

    assert qrows.row_chunk((3, 3), (1, 1), 3, 16) == 16
    assert qrows.row_chunk((3, 3), (1, 1), 1, 16) == 4
    assert qrows.row_chunk((3, 3), (1, 1), 16, 32) == 0  # channel copies are vectors already
    assert qrows.row_chunk((3, 3), (1, 1), 3, 64) == 0  # 3 steps x 4 channel tiles: loses
    assert qrows.row_chunk((7, 7), (1, 1), 3, 64) == 24
    w = np.arange(2 * 3 * 3 * 3, dtype=np.int8).reshape(2, 3, 3, 3)
    rows = qrows.chunk_weight(w, 16)
    assert rows.shape == (2, 3, 1, 16) and not rows[..., 9:].any()
    assert (rows[:, :, 0, :9] == w.reshape(2, 3, 9)).all()
    path = save(_conv_qdq(15, [1, 1, 1, 1], [2, 2], 3, 16, True), tmp_path / "conv.onnx")
    names = [gv.name_hint for gv in _lower(_relax(path)).functions]
    assert any(n.startswith("pad_rows") for n in names), names


def _qdq_graph() -> onnx.ModelProto:
    """int8 activations with non-zero zero points, strided padded conv, MatMul weight (K, N)."""
    return make_conv_matmul_qdq(
        seed=0, size=8, conv_out=6, matmul_out=5, matmul_scale=(0.005, 0.02),
        quant=(("x", 0.02, 7, np.int8), ("h", 0.05, -20, np.int8), ("y", 0.1, 3, np.int8)),
        relu=False, name="qdq_int8")


def _compile_and_verify(model: Path, target: str, out: Path, *flags: str) -> None:
    assert main(["compile", str(model), "-t", target, "--pipeline", "cpu-int", *flags,
                 "-o", str(out)]) == 0
    for seed in (0, 1):
        results = verify_folder(out, seed=seed)
        assert all(c.ok and c.output_range > 0 for c in results), results


def test_int8_activations_with_zero_points(tmp_path):
    from toolchain.targets.cpu.integer import integer_ops

    path = save(_qdq_graph(), tmp_path / "qdq.onnx")
    # The conv feeds a Flatten before its QuantizeLinear: int8 compute, float32 out.
    assert integer_ops(_lower(_relax(path))) == {"qgemm_conv:float32": 1,
                                                 "qgemm_matmul:int8": 1}
    _compile_and_verify(path, "host", tmp_path / "out")


def _mnemonics(objdump: str, obj: Path) -> set[str]:
    asm = subprocess.run([objdump, "-d", str(obj)], check=True, capture_output=True,
                         text=True).stdout
    return {line.split("\t")[2].split()[0] for line in asm.splitlines() if line.count("\t") >= 2}


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("host", "arm-a76", "arm-a72", "armv7-a7")])
@pytest.mark.parametrize("name", MODELS)
def test_cpu_int_pipeline_verifies(zoo, tmp_path, name, target):
    import json

    out = tmp_path / "out"
    _compile_and_verify(zoo(name), target, out, "--keep-build")
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == "cpu-int"
    # Weights are int8 in the binary: within a few percent of the compressed model's bytes
    # (padding to whole dot-product steps adds some).
    compressed = json.loads(zoo(name).with_suffix(".json").read_text())
    assert report["memory"]["weight_bytes"] <= 1.3 * compressed["final"]["bytes"]
    if target == "host":
        from toolchain.targets.cpu.qgemm import VNNI, dot_instr
        from toolchain.targets import device
        from toolchain.targets.cpu.device import CpuDevice

        if dot_instr(CpuDevice.from_device(device("host")).tvm_target()) is not VNNI:
            return
        objdump, want = shutil.which("objdump"), ["vpdpbusd"]
    else:
        prefix = device_prefix(target)
        objdump, want = shutil.which(prefix + "objdump"), INSTRUCTIONS[target]
    if objdump is None:
        pytest.skip(f"objdump for {target} missing (binutils)")
    found = _mnemonics(objdump, out / "build" / "kernels.o")
    assert set(want) <= found, (want, sorted(found))


def device_prefix(target: str) -> str:
    from toolchain.targets import device

    return device(target).facts["cc_prefix"]


def test_auto_pipeline_is_integer_for_qdq_and_float_otherwise(zoo, tmp_path):
    import json

    for quantized, want in ((True, "cpu-int"), (False, "cpu")):
        out = tmp_path / f"o{quantized}"
        assert main(["compile", str(zoo("mlp", quantized)), "-t", "host", "-o", str(out)]) == 0
        assert json.loads((out / "report.json").read_text())["pipeline"] == want


def test_cpu_int_on_a_float_model_is_refused(zoo, tmp_path, capsys):
    rc = main(["compile", str(zoo("mlp", False)), "-t", "host", "--pipeline", "cpu-int",
               "-o", str(tmp_path / "o")])
    assert rc == 2 and "needs a quantized (QDQ) model" in capsys.readouterr().err


def test_float_compute_of_a_qdq_model_stays_available(zoo, tmp_path):
    import json

    out = tmp_path / "o"
    assert main(["compile", str(zoo("mlp")), "-t", "host", "--pipeline", "cpu",
                 "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == "cpu" and not any(k.startswith("qgemm") for k in report["kernels"])
    assert all(c.ok for c in verify_folder(out))


def _conv_qdq(size: int, pads: list[int], strides: list[int], cin: int, cout: int,
              relu: bool) -> onnx.ModelProto:
    """One QDQ conv (+ ReLU) whose output is quantized again: the fused requantization path."""
    rng = np.random.default_rng(size + cin)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (cout, cin, 3, 3), dtype=np.int8), "w"),
        numpy_helper.from_array(rng.uniform(0.005, 0.02, cout).astype(np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(cout, np.int8), "w_z"),
        numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0.02, np.float32), "x_s"),
        numpy_helper.from_array(np.array(131, np.uint8), "x_z"),
        numpy_helper.from_array(np.array(0.15, np.float32), "y_s"),
        numpy_helper.from_array(np.array(-3, np.int8), "y_z"),
    ]
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["input", "x_s", "x_z"], ["xq"]),
             n("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
             n("DequantizeLinear", ["w", "w_s", "w_z"], ["wd"], axis=0),
             n("Conv", ["xd", "wd", "b"], ["c"], pads=pads, strides=strides)]
    last = "c"
    if relu:
        nodes.append(n("Relu", ["c"], ["r"]))
        last = "r"
    nodes += [n("QuantizeLinear", [last, "y_s", "y_z"], ["yq"]),
              n("DequantizeLinear", ["yq", "y_s", "y_z"], ["out"])]
    graph = helper.make_graph(
        nodes, "conv_qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                          [1, cin, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


# Output widths that 4 divides, that only 2 or 3 divide, and a prime one (tiles of one pixel);
# no padding, padding, stride 2; channel counts with and without padded dot-product steps.
CONV_CASES = [(16, [0, 0, 0, 0], [1, 1], 4, 8, False), (13, [0, 0, 0, 0], [1, 1], 16, 12, True),
              (15, [1, 1, 1, 1], [2, 2], 3, 16, True), (8, [1, 1, 1, 1], [1, 1], 16, 32, True)]


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("host", "arm-a76", "arm-a72")])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}px-p{c[1][0]}-s{c[2][0]}")
def test_requantized_conv_matches_onnxruntime(tmp_path, target, case):
    from toolchain.targets.cpu.integer import integer_ops

    path = save(_conv_qdq(*case), tmp_path / "conv.onnx")
    assert integer_ops(_lower(_relax(path))) == {"qgemm_conv:int8": 1}
    _compile_and_verify(path, target, tmp_path / "out")


@pytest.mark.parametrize("out_h, out_w, tp", [(1, 6, 2), (5, 10, 2), (7, 14, 4), (13, 13, 4),
                                              (7, 1, 4)])
def test_smlal_tile_follows_the_pixel_count(out_h, out_w, tp):
    """arm-a72's smull/smlal2 tile: 4 x 4 unless padding the map's pixels to whole tiles wastes
    more than 2 x 8 costs (the GEMM tiles the flat pixel index: 169 pixels take 172)."""
    from toolchain.targets.cpu import qgemm

    assert qgemm.row_tile(qgemm.NEON_SMLAL, out_h, out_w) == tp
    assert tp * qgemm.smlal_cols(tp) == 16  # 16 int32x4 accumulators either way


@pytest.mark.parametrize("channels, tp", [(64, 4), (1000, 8), (12, 16), (20, 16)])
def test_sdot_tile_keeps_16_accumulators(channels, tp):
    """arm-a76's sdot tile: 4 pixels x 16 channels, or 8 x 8 / 16 x 4 where the channel count
    is only a multiple of 8 / 4 (no padded channel tile)."""
    from toolchain.targets.cpu import qgemm

    assert qgemm.row_tile(qgemm.SDOT, 13, 13, channels) == tp
    assert tp * qgemm.packed_cols(qgemm.SDOT, channels) == 64


class _Residual(__import__("torch").nn.Module):
    """conv-relu, a residual add, a depthwise conv, a concat of two branches, max pooling,
    a linear head."""

    def __init__(self):
        import torch.nn as nn

        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.b1 = nn.Conv2d(16, 8, 1)
        self.b3 = nn.Conv2d(16, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x):
        import torch

        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.a(h))  # residual
        h = torch.relu(self.dw(h))  # depthwise
        h = torch.cat([torch.relu(self.b1(h)), torch.relu(self.b3(h))], 1)
        return self.head(torch.flatten(self.pool(h), 1))


def _ort_quantize(module, shape: tuple[int, ...], tmp_path: Path, per_channel: bool) -> Path:
    """``module`` exported and quantized by onnxruntime.quantization (QDQ, uint8 activations,
    int8 weights), calibrated on 8 seeded inputs."""
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    fp, q = tmp_path / "fp.onnx", tmp_path / "q.onnx"
    torch.onnx.export(module.eval(), torch.randn(*shape), str(fp), dynamo=False,
                      input_names=["x"], output_names=["y"], opset_version=17)

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.data = iter([{"x": rng.standard_normal(shape).astype(np.float32)}
                              for _ in range(8)])

        def get_next(self):
            return next(self.data, None)

    quantize_static(str(fp), str(q), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return q


def _ort_quantized(tmp_path: Path, per_channel: bool) -> Path:
    """The residual model above, quantized by onnxruntime."""
    import torch

    torch.manual_seed(0)
    return _ort_quantize(_Residual(), (1, 3, 10, 10), tmp_path, per_channel)


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("host", "arm-a76", "arm-a72", "armv7-a7")])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_onnxruntime_quantized_residual_concat_model(tmp_path, target, per_channel):
    import json

    from toolchain.targets.cpu.integer import integer_ops

    path = _ort_quantized(tmp_path, per_channel)
    ops = integer_ops(_lower(_relax(path)))
    assert not any(k.startswith(("conv2d", "matmul")) for k in ops), ops  # all integer
    _compile_and_verify(path, target, tmp_path / "out")
    kernels = json.loads((tmp_path / "out" / "report.json").read_text())["kernels"]
    # The residual add and the concat run on int8 (no dequantize before them).
    fused = [v["ops"] for v in kernels.values()]
    assert ["qgemm_dwconv"] in fused, fused
    assert not any("dequantize" in ops and ("concatenate" in ops or "add" in ops)
                   for ops in fused), fused


class _Attention(__import__("torch").nn.Module):
    """One self-attention head: Q.K^T and P.V multiply two activations."""

    def __init__(self):
        import torch.nn as nn

        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.o = nn.Linear(16, 4)

    def forward(self, x):
        import torch

        att = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 4.0, -1)
        return self.o(att @ self.v(x))


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("host", "arm-a76")])
def test_onnxruntime_quantized_attention_matmuls_are_integer(tmp_path, target):
    import torch

    from toolchain.targets.cpu.integer import integer_ops

    torch.manual_seed(0)
    q = _ort_quantize(_Attention(), (1, 8, 16), tmp_path, per_channel=True)
    ops = integer_ops(_lower(_relax(q)))
    assert ops.get("matmul:int32") == 2 and "matmul:float32" not in ops, ops
    _compile_and_verify(q, target, tmp_path / "out")


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("host", "arm-a72", "arm-a76", "armv7-a7")])
def test_int4_weights_are_two_per_byte(zoo, tmp_path, target):
    """report.json's weight bytes match `edgec compress`'s size (weights at their bit width,
    int32 biases) within a few percent, for int4 and int8: what is left is one float32 scale
    per output channel (3.9% of the int4 cnn), the last conv's float bias (it feeds the
    pooling unquantized) and the 10-class head padded to one register tile (16 channels on
    the host, 12 with sdot, 10 elsewhere)."""
    import json

    q4 = tmp_path / "cnn_q4.onnx"
    assert main(["compress", "cnn", "--quantize", "int4", "-o", str(q4)]) == 0
    _compile_and_verify(q4, target, tmp_path / "o4")
    _compile_and_verify(zoo("cnn"), target, tmp_path / "o8")
    w4, w8 = (json.loads((tmp_path / o / "report.json").read_text())["memory"]["weight_bytes"]
              for o in ("o4", "o8"))
    c4, c8 = (json.loads(p.with_suffix(".json").read_text())["final"]["bytes"]
              for p in (q4, zoo("cnn")))
    assert w4 <= 0.6 * w8, (w4, w8)
    assert c4 <= w4 <= 1.1 * c4, (w4, c4)
    assert c8 <= w8 <= 1.06 * c8, (w8, c8)
