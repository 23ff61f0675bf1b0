"""Cortex-M: bare-metal images under qemu-system-arm (MPS2 boards), checked against onnxruntime;
flash and SRAM against the device; a model that does not fit is one line naming the sizes."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import needs_target, save
from toolchain.cli import main
from toolchain.commands.build import verify_folder

pytestmark = needs_target("cortex-m4")


def _symbols(elf) -> dict[str, int]:
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    return {p[2]: int(p[0], 16) for p in (ln.split() for ln in out.splitlines()) if len(p) == 3}


def test_doctor_runs_a_program_on_the_board(capsys):
    assert main(["doctor", "cortex-m4"]) == 0
    assert "ok       cortex-m4" in capsys.readouterr().out


def test_small_cnn_verifies_and_fits_the_m4(compiled_small_cnn):
    out = compiled_small_cnn("cortex-m4")
    for seed in (0, 1):
        results = verify_folder(out, seed=seed)
        assert all(c.ok and c.output_range > 0 for c in results), results
    report = json.loads((out / "report.json").read_text())
    mcu = report["mcu"]
    assert report["family"] == "cortexm" and mcu["board"] == "mps2-an386"
    from toolchain.reports.schema import load_report

    assert load_report(out / "report.json").extra == {}  # every key is in the schema
    assert (mcu["flash_available"], mcu["ram_available"]) == (1 << 20, 192 << 10)
    weights, arena = report["memory"]["weight_bytes"], report["memory"]["arena_bytes"]
    assert weights < mcu["library_flash_bytes"] <= mcu["flash_bytes"] < mcu["flash_available"]
    assert arena + mcu["stack_bytes"] < mcu["ram_bytes"] < mcu["ram_available"]
    # const weights in flash (at 0), the arena a static buffer in SRAM (0x20000000 on MPS2)
    sym = _symbols(out / "model.elf")
    assert sym["edgec_weights"] < mcu["flash_available"]
    assert 0x20000000 <= sym["edgec_arena"] < 0x20000000 + mcu["ram_available"]
    # main.c's test buffers sit in board memory outside the chip (MPS2 0x21000000)
    assert sym["input"] >= 0x21000000 and mcu["sections"][".harness"] >= 3 * 16 * 16 * 4


def test_library_has_no_io(compiled_small_cnn):
    """libmodel.a calls nothing of the outside world but memcpy/memset/string/math helpers."""
    out = compiled_small_cnn("cortex-m4")
    proc = subprocess.run(["arm-none-eabi-nm", "-u", str(out / "libmodel.a")],
                          capture_output=True, text=True, check=True)
    undefined = {ln.split()[-1] for ln in proc.stdout.splitlines() if ln.strip()
                 and not ln.endswith(":")}
    undefined -= {"TVMFFIErrorSetRaisedFromCStrParts"}  # defined by model.o itself
    io = {s for s in undefined if any(w in s for w in ("open", "read", "write", "print",
                                                       "malloc", "exit", "semi", "puts"))}
    assert not io, io
    assert "memcpy" in undefined


def test_binary_refuses_a_wrong_input_size(compiled_small_cnn, tmp_path):
    from toolchain.errors import ToolFailedError
    from toolchain.targets import device
    from toolchain.targets.cortexm.device import McuDevice
    from toolchain.targets.cortexm.runner import run_image

    out = compiled_small_cnn("cortex-m4")
    short = tmp_path / "short.bin"
    short.write_bytes(b"\0" * 100)
    with pytest.raises(ToolFailedError, match=r"exit 2.*must hold exactly 3072"):
        run_image(McuDevice.from_device(device("cortex-m4")), out / "model.elf",
                  [short, tmp_path / "y.bin"], what="running model.elf")


def _wide(tmp_path, n_in: int, n_out: int):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((n_in, n_out)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return save(model, tmp_path / "wide.onnx")


@pytest.mark.parametrize("n_in, n_out, needle", [
    (600, 500, r"weights need 1200000 bytes \(1171\.9 KiB\) of flash, the device has 1048576"),
    (60000, 2, r"needs \d+ bytes \(\d+\.\d KiB\) of SRAM \(arena 240\d+ \+ workspace \d+ \+ "
               r"stack 8192\), the device has 196608"),
])
def test_a_model_that_does_not_fit_is_one_line(tmp_path, capsys, n_in, n_out, needle):
    import re

    model = _wide(tmp_path, n_in, n_out)
    code = main(["compile", str(model), "-t", "cortex-m4", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(f"wide.onnx does not fit cortex-m4: .*{needle}", err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target, board", [
    pytest.param("cortex-m7", "mps2-an500", marks=needs_target("cortex-m7")),
    pytest.param("cortex-m55", "mps3-an547", marks=needs_target("cortex-m55"))])
def test_small_cnn_verifies_on_the_m7_and_m55(compiled_small_cnn, target, board):
    out = compiled_small_cnn(target)
    results = verify_folder(out, seed=0)
    assert all(c.ok and c.output_range > 0 for c in results), results
    assert json.loads((out / "report.json").read_text())["mcu"]["board"] == board


def test_float64_compute_is_right_on_the_single_precision_fpu(tmp_path):
    """On the M4 (fpv4-sp-d16) a float64 op is a libgcc call that LLVM makes with the
    hard-float convention; the kernels call edgec's shims instead (targets/cortexm/
    soft_double.py), and the outputs are onnxruntime's (before: all 8 wrong)."""
    init = [numpy_helper.from_array(np.linspace(-2, 3, 8), "k"),
            numpy_helper.from_array(np.array(0.1), "lo")]
    nodes = [helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
             helper.make_node("Mul", ["d", "k"], ["m"]),
             helper.make_node("Div", ["m", "k"], ["q"]),
             helper.make_node("Sub", ["m", "q"], ["s"]),
             helper.make_node("Max", ["s", "lo"], ["a"]),
             helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(
        nodes, "f64", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], init)
    model, out = tmp_path / "f64.onnx", tmp_path / "out"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
         model)
    assert main(["compile", str(model), "-t", "cortex-m4", "-o", str(out)]) == 0
    for seed in (0, 1):
        (result,) = verify_folder(out, seed=seed)
        assert result.max_abs_error == 0 and result.output_range > 0, result
    subprocess.run(["arm-none-eabi-ar", "x", str(out / "libmodel.a"), "kernels.o"],
                   cwd=tmp_path, check=True)
    undefined = set(_symbols_undefined(tmp_path / "kernels.o"))
    assert {"edgec_vfp__muldf3", "edgec_vfp__gtdf2"} <= undefined, undefined
    assert not undefined & {"__muldf3", "__adddf3", "__subdf3", "__gtdf2"}, undefined


def _symbols_undefined(obj) -> list[str]:
    out = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True,
                         check=True).stdout
    return [ln.split()[-1] for ln in out.splitlines() if ln.strip()]


def test_m55_kernels_use_helium(compiled_small_cnn, tmp_path):
    """The float kernels are vectorized into MVE (q registers) on the M55, not on the M4."""
    def q_ops(target):
        subprocess.run(["arm-none-eabi-ar", "x", str(compiled_small_cnn(target) / "libmodel.a"),
                        "kernels.o"], cwd=tmp_path, check=True)
        text = subprocess.run(["arm-none-eabi-objdump", "-d", "kernels.o"], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout
        return [ln for ln in text.splitlines() if "\tv" in ln and " q" in ln.split("\t")[-1]]

    assert len(q_ops("cortex-m55")) > 20 and not q_ops("cortex-m4")


def test_doctor_names_the_apt_get_line_when_a_tool_is_missing(tmp_path):
    from toolchain.targets import backend_for, device
    from toolchain.targets.registry import Device

    real = device("cortex-m4")
    fake = Device(real.name, real.family, real.summary,
                  {**real.facts, "cc_prefix": "no-such-arm-none-eabi-"})
    (line,) = backend_for("cortexm").check_tools(fake, tmp_path)
    assert "no-such-arm-none-eabi-gcc not found" in line
    assert "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm" in line


ZOO = [("mlp", []), ("cnn", []), ("dscnn", []), ("cnn", ["--quantize", "int8"])]


@pytest.mark.slow
@pytest.mark.parametrize("name, flags", ZOO, ids=[n + "".join(f) for n, f in ZOO])
def test_zoo_models_verify_on_the_m4(tmp_path, name, flags):
    model, out = tmp_path / f"{name}.onnx", tmp_path / "out"
    assert main(["compress", name, *flags, "-o", str(model), "-q"]) == 0
    assert main(["compile", str(model), "-t", "cortex-m4", "-o", str(out)]) == 0
    for seed in (0, 1):
        results = verify_folder(out, seed=seed)
        assert all(c.ok and c.output_range > 0 for c in results), results
    mcu = json.loads((out / "report.json").read_text())["mcu"]
    assert mcu["flash_bytes"] < mcu["flash_available"] and mcu["ram_bytes"] < mcu["ram_available"]


def test_a_stack_overflow_stops_the_run(tmp_path):
    """The stack sits at the bottom of SRAM: overflowing it faults (no silent arena damage)."""
    from toolchain.errors import ToolFailedError
    from toolchain.targets import device
    from toolchain.targets.cortexm import board
    from toolchain.targets.cortexm.cc import find_compiler
    from toolchain.targets.cortexm.device import McuDevice
    from toolchain.targets.cortexm.runner import run_image

    dev = McuDevice.from_device(device("cortex-m4"))
    for name in board.BOARD_FILES:
        (tmp_path / name).write_text(board.board_source(name))
    (tmp_path / "link.ld").write_text(board.linker_script(dev))
    (tmp_path / "deep.c").write_text(
        "int deep(int n);\nint (*volatile fp)(int) = deep;\n"
        "int deep(int n) { volatile char b[256]; b[n & 255] = (char)n;"
        " return n ? fp(n - 1) + b[n & 255] : 0; }\n"
        "int main(void) { return fp(100) > 0 ? 0 : 1; }\n")
    cc = find_compiler(dev)
    for src in ("deep.c", "board.c"):
        cc.compile(tmp_path / src, tmp_path / src.replace(".c", ".o"), tmp_path)
    cc.link([tmp_path / "deep.o", tmp_path / "board.o"], tmp_path / "link.ld",
            tmp_path / "deep.elf", tmp_path)
    with pytest.raises(ToolFailedError, match="stack overflow|faulted"):
        run_image(dev, tmp_path / "deep.elf", [], what="running deep.elf", timeout=60)


@pytest.fixture(scope="module")
def int8_cnn(tmp_path_factory):
    """small_cnn quantized by onnxruntime (QDQ, uint8 activations, int8 per-channel weights)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    from onnx_graphs import make_small_cnn

    root = tmp_path_factory.mktemp("int8_cnn")
    fp, q = save(make_small_cnn(), root / "fp.onnx"), root / "small_cnn_int8.onnx"

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.data = iter([{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
                              for _ in range(8)])

        def get_next(self):
            return next(self.data, None)

    quantize_static(str(fp), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return q


def _kernel_ops(out, tmp_path, march: str) -> list[str]:
    subprocess.run(["arm-none-eabi-ar", "x", str(out / "libmodel.a"), "kernels.o"], cwd=tmp_path,
                   check=True)
    text = subprocess.run(["arm-none-eabi-objdump", "-d", f"-m{march}", "--no-show-raw-insn",
                           "kernels.o"], cwd=tmp_path, capture_output=True, text=True,
                          check=True).stdout
    return [ln.split("\t")[1].strip() for ln in text.splitlines() if ln.count("\t") >= 2]


@pytest.mark.parametrize("target, march, step", [
    pytest.param("cortex-m4", "armv7e-m", "smlad", marks=needs_target("cortex-m4")),
    pytest.param("cortex-m55", "armv8.1-m.main", "vmlava.s8", marks=needs_target("cortex-m55"))])
def test_int8_gemm_uses_the_dsp_or_helium_step(int8_cnn, tmp_path, target, march, step):
    """The int8 convs and the matmul reduce with smlad (+ sxtb16) on the M4 and with
    vmladava.s8 (objdump: vmlava.s8) on the M55, and match onnxruntime."""
    out = tmp_path / "out"
    assert main(["compile", str(int8_cnn), "-t", target, "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == "cpu-int"
    # Compacted workspace (per-tile im2col freed each tile), far below the full im2col
    # matrices (conv2's alone: 64 pixels x 72 bytes); running proves the tiles are freed.
    assert report["memory"]["workspace_bytes"] < 2048, report["memory"]
    results = verify_folder(out, seed=0)
    assert all(c.ok and c.output_range > 0 for c in results), results
    ops = _kernel_ops(out, tmp_path, march)
    assert ops.count(step) >= 8, sorted(set(ops))
    if step == "smlad":
        assert "sxtb16" in ops and "smlabb" not in ops
