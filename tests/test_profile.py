"""edgec run OUT --profile: time per kernel natively, exact instructions per kernel under qemu
(targets/cpu/profile.py), and the report page that shows them."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolchain.cli import main
from toolchain.reports.schema import SchemaError, load_profile
from toolchain.targets.cpu.profile import armcount_folder

ARMCOUNT = armcount_folder()


def _kernels(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())["kernels"]


@pytest.fixture(scope="module")
def host_profiled(compiled_small_cnn, tmp_path_factory) -> Path:
    out = compiled_small_cnn.copy("host", tmp_path_factory.mktemp("profile") / "host")
    before = hashlib.sha256((out / "model").read_bytes()).hexdigest()
    assert main(["-q", "run", str(out), "--profile", "--runs", "7"]) == 0
    assert hashlib.sha256((out / "model").read_bytes()).hexdigest() == before
    return out


def test_host_profile_times_every_kernel(host_profiled):
    prof = load_profile(host_profiled / "profile.json")
    kernels = _kernels(host_profiled)
    assert prof.kind == "time" and prof.unit == "seconds" and prof.runs == 7
    assert list(prof.kernels) == list(kernels)  # every kernel, in call order
    for name, k in kernels.items():
        assert prof.kernels[name].calls == k["calls"]
        assert prof.kernels[name].value > 0, name
    assert len(prof.calls) == sum(k["calls"] for k in kernels.values())
    assert abs(sum(k.share for k in prof.kernels.values()) - 1) < 1e-9
    # the kernels are nearly all of an inference; timer cost and noise allow a sane factor
    assert prof.total > 0
    assert 0.25 < prof.kernel_sum / prof.total < 4


def test_the_normal_binary_has_no_profiling(host_profiled):
    model = host_profiled / "model"
    assert b"--profile" not in model.read_bytes()
    proc = subprocess.run([model, "--profile", "3"], capture_output=True)
    # one input and one output file: "--profile" is taken for the input's file name
    assert proc.returncode == 2 and b"cannot open --profile" in proc.stderr
    assert proc.stdout == b""


def test_the_page_shows_the_profile(host_profiled, tmp_path):
    page = tmp_path / "r.html"
    assert main(["-q", "report", str(host_profiled), "--html", str(page)]) == 0
    text = page.read_text()
    prof = load_profile(host_profiled / "profile.json")
    assert "Kernel share of time (median of 7 runs" in text
    assert "by op" not in text  # not the op-count fallback
    for name, k in prof.kernels.items():
        assert f"{100 * k.share:.1f}%" in text and name in text
    assert "profile.json" in text


def test_profile_flags_and_files_are_checked(host_profiled, tmp_path, capsys):
    assert main(["run", str(host_profiled), "--runs", "3"]) == 2
    assert main(["run", str(host_profiled), "--profile", "--runs", "0"]) == 2
    assert "--runs must be at least 1" in capsys.readouterr().err
    bad = tmp_path / "profile.json"
    data = json.loads((host_profiled / "profile.json").read_text())
    bad.write_text(json.dumps({**data, "profile_version": 99}))
    with pytest.raises(SchemaError, match="profile_version 99"):
        load_profile(bad)
    bad.write_text(json.dumps({**data, "kernels": {"k": {"calls": "one"}}}))
    with pytest.raises(SchemaError, match="kernels.k"):
        load_profile(bad)


# ---------------------------------------------------------------- arm-a72, instructions
def _mlp() -> onnx.ModelProto:
    """64 -> 256 -> 256 -> 10: the kernels dominate, the driver's copies are small."""
    rng = np.random.default_rng(4)
    init = lambda name, shape: numpy_helper.from_array(
        (rng.standard_normal(shape) * 0.1).astype(np.float32), name)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], transB=1),
             helper.make_node("Tanh", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [init("w1", (256, 64)), init("b1", (256,)), init("w2", (256, 256)), init("b2", (256,)),
         init("w3", (10, 256)), init("b3", (10,))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def armcount(tmp_path_factory):
    """examples/armcount copied and built (build.sh: the plugin with gcc, its self-check
    programs with aarch64-linux-gnu-gcc), imported from the copy: count.py's reference."""
    missing = [t for t in ("gcc", "aarch64-linux-gnu-gcc", "qemu-aarch64") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (bash .ci/setup installs them)")
    work = tmp_path_factory.mktemp("armcount")
    for name in ("count.c", "count.py", "build.sh", "selftest.c", "selftest_mix.c"):
        shutil.copy(ARMCOUNT / name, work / name)
    subprocess.run(["bash", str(work / "build.sh")], check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("armcount_count", work / "count.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_arm_instruction_profile_sums_to_count_py(armcount, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEC_COUNT_PLUGIN", str(armcount.PLUGIN))
    onnx.save_model(_mlp(), str(tmp_path / "mlp.onnx"))
    out = tmp_path / "a72"
    assert main(["-q", "compile", str(tmp_path / "mlp.onnx"), "-t", "arm-a72", "-o",
                 str(out)]) == 0
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    x.tofile(tmp_path / "x.bin")
    assert main(["-q", "run", str(out), "--profile", "--input", str(tmp_path / "x.npy")]) == 0
    prof = load_profile(out / "profile.json")
    assert prof.kind == "instructions" and "qemu-aarch64 -cpu cortex-a72" in prof.where
    assert list(prof.kernels) == list(_kernels(out))
    assert all(k.value > 0 and k.value == int(k.value) for k in prof.kernels.values())
    whole = armcount.edgec_inference(out, tmp_path / "x.bin")["per_inference"]
    assert abs(prof.kernel_sum - whole) <= 0.01 * whole, (prof.kernel_sum, whole)
    assert abs(prof.total - whole) <= 0.01 * whole, (prof.total, whole)
    # each kernel against count.py's own window on the normal binary (from the kernel's entry
    # back to the caller, one qemu run per kernel): ours adds only the call's dispatch
    # (workspace reset, the indirect call), a few instructions per call
    theirs = armcount.edgec_kernel_profile(out, tmp_path / "x.bin")
    assert set(theirs) == set(prof.kernels)
    for name, k in prof.kernels.items():
        assert 0 <= k.value - theirs[name]["instructions"] <= 16 * k.calls, (name, k, theirs)
    # exact: a second count is the same, call for call
    assert main(["-q", "run", str(out), "--profile", "--input", str(tmp_path / "x.npy")]) == 0
    assert load_profile(out / "profile.json").calls == prof.calls


@pytest.mark.skipif(not shutil.which("gcc"), reason="gcc not installed (apt-get install gcc)")
def test_the_plugin_is_built_once_from_source_into_the_cache(tmp_path, monkeypatch):
    from toolchain.targets.cpu import profile

    src = tmp_path / "src" / "examples" / "armcount"
    src.mkdir(parents=True)
    shutil.copy(ARMCOUNT / "count.c", src / "count.c")  # no libcount.so beside it
    monkeypatch.setattr(profile, "armcount_folder", lambda: src)
    monkeypatch.delenv("EDGEC_COUNT_PLUGIN", raising=False)
    monkeypatch.setenv("EDGEC_CACHE", str(tmp_path / "cache"))
    plugin = profile.count_plugin()
    assert plugin.parent == tmp_path / "cache" / "armcount" and plugin.read_bytes()[:4] == b"\x7fELF"
    stamp = plugin.stat().st_mtime_ns
    assert profile.count_plugin() == plugin and plugin.stat().st_mtime_ns == stamp
    monkeypatch.setenv("EDGEC_COUNT_PLUGIN", str(tmp_path / "none.so"))
    with pytest.raises(Exception, match="EDGEC_COUNT_PLUGIN=.*no such file"):
        profile.count_plugin()
