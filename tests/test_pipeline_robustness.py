"""Build-pipeline robustness: typed config values, options that do not apply to the target,
unwritable outputs, normal permissions, and --input-shape against a model's static shape.

Every refusal is one line ``edgec: error: ...`` with a non-zero exit code, and comes before
any slow step. One host build is shared by the module.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import make_small_cnn, save
from toolchain import api
from toolchain.cli import main
from toolchain.errors import ConfigError
from toolchain.outdir import staged_file, staged_output


def one_line_error(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert rc != 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgec: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def make_dense(batch: int | str = "N") -> "onnx.ModelProto":  # noqa: F821
    """input[batch,16] -> Gemm(5): the input named as a PyTorch export names it."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((16, 5)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["y"], name="fc")], "dense",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def build(compiled_small_cnn) -> Path:
    """small_cnn compiled for host once (a session fixture), under umask 022."""
    return compiled_small_cnn("host")


# ------------------------------------------------------------------ 1. typed config values
@pytest.mark.parametrize("value", ['"input=1,16"', '["input=1,16"]'])
def test_config_input_shape_string_or_list(tmp_path, capsys, value):
    model = save(make_dense(), tmp_path / "dense.onnx")
    cfg = tmp_path / "edgec.toml"
    cfg.write_text(f'[compile]\ntarget = "host"\ninput_shape = {value}\n')
    out = tmp_path / "out"
    rc = main(["compile", str(model), "-o", str(out), "--config", str(cfg)])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "edgec.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 16]
    assert manifest["options"]["input_shape"] == ["input=1,16"]


@pytest.mark.parametrize("line, needle", [
    ('threads = "x"', "threads"), ("threads = 2.5", "an integer"),
    ("threads = true", "an integer"), ('keep_build = "yes"', "true or false"),
    ('pipeline = ["cpu"]', "a single value"), ('compiler = "msvc"', "not one of"),
])
def test_config_wrong_type_is_one_line(tmp_path, capsys, line, needle):
    cfg = tmp_path / "edgec.toml"
    cfg.write_text(f'[compile]\ntarget = "host"\n{line}\n')
    model = save(make_dense(1), tmp_path / "dense.onnx")
    rc = main(["compile", str(model), "-o", str(tmp_path / "o"), "--config", str(cfg)])
    one_line_error(capsys, rc, str(cfg), needle)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ 2. options of another family
@pytest.mark.parametrize("target, flags, flag", [
    ("fpga-xcu250", ["--threads", "2"], "--threads"),
    ("fpga-z7020", ["--pipeline", "cpu-nofuse"], "--pipeline"),
    ("fpga-xcu250", ["--keep-build"], "--keep-build"),
    ("host", ["--reuse-factor", "2"], "--reuse-factor"),
    ("arm-a72", ["--budget", "dsp=10"], "--budget"),
    ("host", ["--io-type", "io_stream"], "--io-type"),
    ("armv7-a7", ["--strategy", "resource"], "--strategy"),
    ("host", ["--clock-period", "4"], "--clock-period"),
    ("host", ["--default-precision", "fixed<8,3>"], "--default-precision"),
    ("host", ["--hls-backend", "vivado"], "--hls-backend"),
])
def test_option_of_another_family_is_refused(tmp_path, capsys, target, flags, flag):
    model = save(make_dense(1), tmp_path / "dense.onnx")
    rc = main(["compile", str(model), "-t", target, "-o", str(tmp_path / "o"), *flags])
    family = "fpga" if target.startswith("fpga") else "cpu"
    one_line_error(capsys, rc, f"option {flag} does not apply to target {target} "
                               f"(family {family})")
    assert not (tmp_path / "o").exists()


def test_foreign_option_from_config_and_api(tmp_path, capsys):
    model = save(make_dense(1), tmp_path / "dense.onnx")
    cfg = tmp_path / "edgec.toml"
    cfg.write_text('[compile]\ntarget = "fpga-xcu250"\nthreads = 2\n')
    rc = main(["compile", str(model), "-o", str(tmp_path / "o"), "--config", str(cfg)])
    one_line_error(capsys, rc, "option --threads does not apply to target fpga-xcu250")
    with pytest.raises(ConfigError, match="option --reuse-factor does not apply to target host"):
        api.compile(model, "host", tmp_path / "o", reuse_factor=["fc=2"])
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ 3. one-line errors
def _unwritable_outputs(tmp_path: Path) -> list[Path]:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    paths = [blocker / "out", Path("/proc/edgec_no_such/out"), Path("/proc/edgec_out")]
    if Path("/sys").is_dir():
        paths.append(Path("/sys/edgec_out"))  # EPERM even for root
    if os.geteuid() != 0:  # root writes into a 0555 folder anyway
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        paths.append(locked / "out")
    return paths


def test_unwritable_output_folder(tmp_path, capsys):
    model = save(make_dense(1), tmp_path / "dense.onnx")
    for out in _unwritable_outputs(tmp_path):
        rc = main(["compile", str(model), "-t", "host", "-o", str(out)])
        one_line_error(capsys, rc, "cannot write the output folder", str(out))


def test_run_output_into_missing_folder(build, tmp_path, capsys):
    dest = tmp_path / "missing_dir" / "y.npy"
    rc = main(["run", str(build), "--output", str(dest)])
    one_line_error(capsys, rc, "--output", "does not exist")
    rc = main(["run", str(build), "--output", str(tmp_path)])
    one_line_error(capsys, rc, "--output", "is a folder")
    assert main(["run", str(build), "--output", str(tmp_path / "y.npy")]) == 0
    assert np.load(tmp_path / "y.npy").shape == (1, 10)


def test_report_html_into_a_folder(build, tmp_path, capsys):
    (tmp_path / "existing_dir").mkdir()
    rc = main(["report", str(build), "--html", str(tmp_path / "existing_dir")])
    one_line_error(capsys, rc, "existing_dir", "is a folder")
    rc = main(["report", str(build), "--html", str(tmp_path / "new_dir" / "r.html")])
    assert rc == 0  # its folder is made
    (tmp_path / "blocker").write_text("")
    rc = main(["report", str(build), "--html", str(tmp_path / "blocker" / "r.html")])
    one_line_error(capsys, rc, "cannot write the file")


# ------------------------------------------------------------------ 4. permissions
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_build_folder_has_normal_permissions(build):
    assert _mode(build) == 0o755
    for path in build.rglob("*"):
        if path.is_dir():
            assert _mode(path) == 0o755, path
        elif path.name == "model":
            assert _mode(path) == 0o755, path
        else:
            assert _mode(path) == 0o644, path


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_staged_outputs_respect_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with staged_output(tmp_path / "out") as stage:
            (stage / "f.txt").write_text("x")
        with staged_file(tmp_path / "page.html") as tmp:
            tmp.write_text("<p>")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "out") == 0o777 & ~umask
    assert _mode(tmp_path / "out" / "f.txt") == 0o666 & ~umask
    assert _mode(tmp_path / "page.html") == 0o666 & ~umask


def test_owner_only_executables_become_executable_for_all(tmp_path):
    """hls4ml writes its build_lib.sh 0744; an output folder's programs are 0755."""
    old = os.umask(0o022)
    try:
        with staged_output(tmp_path / "out") as stage:
            script = stage / "hls" / "build_lib.sh"
            script.parent.mkdir()
            script.write_text("#!/bin/sh\n")
            script.chmod(0o744)
            (stage / "notes.txt").write_text("x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "out" / "hls" / "build_lib.sh") == 0o755
    assert _mode(tmp_path / "out" / "notes.txt") == 0o644


# ------------------------------------------------------------------ 5. --input-shape vs static
@pytest.mark.parametrize("batch, shape, shown", [
    (1, "x=1,3,8,8", "x[1,3,16,16]"),
    (1, "x=2,3,16,16", "x[1,3,16,16]"),
    ("N", "x=2,4,16,16", "x[N,3,16,16]"),
])
def test_input_shape_contradicting_the_model(tmp_path, capsys, batch, shape, shown):
    model = save(make_small_cnn(batch=batch), tmp_path / "cnn.onnx")
    rc = main(["compile", str(model), "-t", "host", "-o", str(tmp_path / "o"),
               "--input-shape", shape])
    one_line_error(capsys, rc, f"--input-shape {shape}", "contradicts", shown)
    assert not (tmp_path / "o").exists()


def test_input_shape_agreeing_with_the_model_is_accepted():
    from toolchain.commands.build import _refuse_contradicting_shapes

    _refuse_contradicting_shapes(make_small_cnn(), {"x": (1, 3, 16, 16)})
    _refuse_contradicting_shapes(make_small_cnn(batch="N"), {"x": (4, 3, 16, 16)})


def test_absurd_static_input_size_is_refused(tmp_path, capsys):
    """A file whose input claims 2**62 pixels (a fuzz find: the schedulers looped on it)."""
    import onnx
    from onnx import TensorProto, helper

    from toolchain.cli import main

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "big",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2 ** 62])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2 ** 62])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "big.onnx"))
    assert main(["compile", str(tmp_path / "big.onnx"), "-t", "host", "-o", str(tmp_path / "o")]) == 2
    assert "a static plan can hold" in capsys.readouterr().err
