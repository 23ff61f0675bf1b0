"""A RISC-V 64 Linux device added as one TOML file (targets/devices/riscv64.toml): device facts
are data, the zoo compiles and verifies on it under qemu-riscv64."""

from __future__ import annotations

import json
import subprocess

import pytest

from onnx_graphs import needs_target
from toolchain.cli import main
from toolchain.errors import ConfigError
from toolchain.targets import device
from toolchain.targets.cpu.device import CpuDevice
from toolchain.targets.registry import Device

riscv = needs_target("riscv64")


def test_facts_come_from_the_device_file():
    dev = CpuDevice.from_device(device("riscv64"))
    vec = dev.vector_unit()
    assert (vec.bits, vec.fma_by_element, vec.int8_dot) == (128, False, "generic")
    target = dev.tvm_target()
    assert str(target.attrs["mtriple"]) == "riscv64-linux-gnu"
    assert str(target.attrs["mabi"]) == "lp64d"
    assert dev.machine == "riscv64"
    a76 = CpuDevice.from_device(device("arm-a76")).vector_unit()
    assert (a76.fma_by_element, a76.int8_dot) == (True, "sdot")


def test_a_bad_fact_is_a_config_error():
    base = dict(device("riscv64").facts)
    with pytest.raises(ConfigError, match="int8_dot must be one of generic, smull"):
        CpuDevice.from_device(Device("bad", "cpu", "x", {**base, "int8_dot": "vdot"}))
    with pytest.raises(ConfigError, match="vector_bits must be a power of two"):
        CpuDevice.from_device(Device("bad", "cpu", "x", {**base, "vector_bits": 96}))
    with pytest.raises(ConfigError, match="cflags must be a list of strings"):
        CpuDevice.from_device(Device("bad", "cpu", "x", {**base, "cflags": "-O3"}))


def test_int8_instruction_follows_the_fact():
    from toolchain.targets.cpu import qgemm
    from toolchain.targets.cpu.integer import _dot_instr
    from toolchain.targets.cpu.vector import VectorUnit

    assert _dot_instr(VectorUnit(int8_dot="sdot"), False) is qgemm.SDOT
    assert _dot_instr(VectorUnit(int8_dot="smull"), True) is qgemm.NEON_SMLAL
    assert _dot_instr(VectorUnit(int8_dot="smull"), False) is qgemm.NEON_SMULL
    assert _dot_instr(VectorUnit(int8_dot="vpdpbusd"), False) is qgemm.VNNI
    assert _dot_instr(VectorUnit(), False) is qgemm.GENERIC
    assert _dot_instr(None, True) is qgemm.GENERIC


@riscv
def test_doctor_riscv64(capsys):
    assert main(["doctor", "riscv64"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["ok", "riscv64"]


@riscv
def test_small_cnn_is_a_riscv_binary_and_verifies(compiled_small_cnn):
    out = compiled_small_cnn("riscv64")
    head = (out / "model").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 243  # EM_RISCV
    assert main(["verify", str(out), "--seed", "1"]) == 0


@pytest.fixture(scope="module")
def zoo_onnx(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_rv")

    def get(name: str, *flags: str):
        path = root / f"{name}{'_q8' if flags else ''}.onnx"
        if not path.is_file():
            assert main(["compress", name, *flags, "-o", str(path)]) == 0
        return path

    return get


@pytest.mark.slow
@riscv
@pytest.mark.parametrize("name,flags", [("mlp", ()), ("cnn", ()),
                                        ("cnn", ("--quantize", "int8"))])
def test_zoo_compiles_and_verifies(zoo_onnx, tmp_path, name, flags):
    out = tmp_path / "out"
    assert main(["compile", str(zoo_onnx(name, *flags)), "-t", "riscv64", "-o", str(out),
                 "--keep-build"]) == 0
    assert main(["verify", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["triple"] == "riscv64-linux-gnu"
    assert report["pipeline"] == ("cpu-int" if flags else "cpu")
    # rv64gc without V: the kernels hold scalar RISC-V float (or integer multiply) code.
    dis = subprocess.run(["riscv64-linux-gnu-objdump", "-d", str(out / "build" / "kernels.o")],
                         capture_output=True, text=True, check=True).stdout
    assert ("fmadd.s" in dis or "fmul.s" in dis) if not flags else "mul" in dis
    assert "vsetvli" not in dis
