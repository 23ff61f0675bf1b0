"""``edgec compile -t arm-a72 --tune``: candidates scored by exact instruction counts under qemu."""

from __future__ import annotations

import dataclasses
import json

import pytest

from onnx_graphs import needs_target, save
from test_tune import _compile, _conv_relu
from toolchain.cli import main
from toolchain.errors import ConfigError

pytestmark = needs_target("arm-a72")


def _matmul(n: int):
    import tvm
    from tvm import te

    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, b, c])})


def _a72():
    from toolchain.targets.cpu.device import CpuDevice
    from toolchain.targets.registry import device

    return CpuDevice.from_device(device("arm-a72"))


def test_count_follows_the_workload():
    import tvm.s_tir.meta_schedule as ms

    from toolchain.targets.cpu.tune_count import InstructionCounter

    dev = _a72()
    counter = InstructionCounter(dev)
    mods = [_matmul(16), _matmul(32), _matmul(16)]
    cands = [counter.build(m, dev.tvm_target(),
                           ms.arg_info.ArgInfo.from_prim_func(m["main"])) for m in mods]
    small, big, again = counter.count(cands)
    assert all(isinstance(c, int) and c > 0 for c in (small, big, again))
    assert again == small  # exact: the same kernel, the same count
    assert big > 4 * small  # 8x the multiply-adds: the count is not a constant or a setup cost


def test_tune_arm_by_counts_then_reuse(tmp_path):
    model = save(_conv_relu(), tmp_path / "conv.onnx")
    db = tmp_path / "db"
    flags = ["--tune", "6", "--tune-db", str(db)]
    first = _compile(model, tmp_path / "a", *flags, target="arm-a72")
    assert first["trials_run"] == 6
    assert "instructions" in first["measured"] and "qemu-aarch64" in first["measured"]
    (kernel,) = first["kernels"]
    assert "hand_us" not in kernel and "tuned_us" not in kernel
    hand, tuned = kernel["hand_instructions"], kernel["tuned_instructions"]
    assert hand > 1000 and tuned > 1000 and hand == int(hand) and tuned == int(tuned)
    assert kernel["schedule"] == ("tuned" if tuned < hand else "hand")
    (folder,) = db.iterdir()
    assert folder.name.startswith("aarch64-linux-gnu-cortex-a72-1t")
    # the records' "seconds" are the counts (count * 1e-9): the best one is the tuned figure
    records = [json.loads(line) for line in
               (folder / "database_tuning_record.json").read_text().splitlines()]
    best = min(min(r[1][1]) for r in records)
    assert round(best * 1e9) == tuned

    # the harness counts what the real binary executes: edgec run --profile of the folder
    # (the kernel called from model.c) agrees to a few instructions of call setup
    assert main(["run", str(tmp_path / "a"), "--profile"]) == 0
    profile = json.loads((tmp_path / "a" / "profile.json").read_text())
    used = tuned if kernel["schedule"] == "tuned" else hand
    assert abs(profile["kernels"][kernel["kernel"]]["value"] - used) <= 16

    again = _compile(model, tmp_path / "b", *flags, target="arm-a72")
    assert again["trials_run"] == 0 and again["kernels"][0]["records"] == 6
    assert again["kernels"][0]["schedule"] == kernel["schedule"]
    assert again["kernels"][0]["tuned_instructions"] == tuned


def test_tune_arm_refusals(tmp_path, capsys):
    from toolchain.targets.cpu.backend import _tune_config
    from toolchain.targets.cpu.options import CpuOptions

    model = save(_conv_relu(), tmp_path / "conv.onnx")
    assert main(["compile", str(model), "-t", "arm-a72", "--tune", "4", "--threads", "2",
                 "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "exact for one thread" in err and len(err.splitlines()) == 1
    no_qemu = dataclasses.replace(_a72(), qemu="")
    with pytest.raises(ConfigError, match="names no emulator"):
        _tune_config(CpuOptions(tune=4), no_qemu, "arm-a72")


def test_crashing_candidate_costs_only_its_own_count():
    import tvm
    import tvm.s_tir.meta_schedule as ms
    from tvm import te

    from toolchain.targets.cpu.tune_count import InstructionCounter

    a = te.placeholder((64,), name="A")
    wild = te.compute((64,), lambda i: a[i * 30_000_000], name="C")  # reads far out of bounds
    bad = tvm.IRModule({"main": te.create_prim_func([a, wild])})
    dev = _a72()
    counter = InstructionCounter(dev)
    mods = [_matmul(16), bad, _matmul(16)]
    cands = [counter.build(m, dev.tvm_target(),
                           ms.arg_info.ArgInfo.from_prim_func(m["main"])) for m in mods]
    first, crashed, last = counter.count(cands)
    assert isinstance(first, int) and first == last
    assert isinstance(crashed, str) and "failed" in crashed
