"""Bad input gets one clear line, a non-zero exit, no traceback, and nothing in OUT/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_graphs import make_small_cnn, save
from toolchain.cli import main


def edgec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True,
                          text=True, timeout=600)


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgec: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_file(tmp_path):
    out = tmp_path / "out"
    proc = edgec("compile", str(tmp_path / "nope.onnx"), "-t", "host", "-o", str(out))
    assert_one_line_error(proc, "not found", "nope.onnx")
    assert not out.exists()


def test_not_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_text("this is not a model\n" * 10)
    proc = edgec("compile", str(bad), "-t", "host", "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "not a valid ONNX file")
    assert not (tmp_path / "out").exists()


def test_truncated(tmp_path, small_cnn):
    data = small_cnn.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) * 2 // 3])
    proc = edgec("compile", str(cut), "-t", "host", "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "cut.onnx")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, needle", [
    (["-t", "host", "--threads", "two"], "--threads must be an integer, not 'two'"),
    (["-t", "fpga-xcu250", "--threads", "2"], "option --threads does not apply to target "
                                              "fpga-xcu250 (family fpga)"),
])
def test_bad_or_foreign_option_is_one_line(tmp_path, small_cnn, flags, needle):
    proc = edgec("compile", str(small_cnn), "-o", str(tmp_path / "out"), *flags)
    assert_one_line_error(proc, needle)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()


def test_unknown_target(tmp_path, small_cnn):
    proc = edgec("compile", str(small_cnn), "-t", "arm-z99", "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "unknown target 'arm-z99'", "arm-a72")


def test_unsupported_op_names_node_and_op(tmp_path, capsys):
    node = helper.make_node("NonZero", ["x"], ["y"], name="find_nonzero")
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1, None])])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  ir_version=8), tmp_path / "nz.onnx")
    out = tmp_path / "out"
    rc = main(["compile", str(path), "-t", "host", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unsupported op 'NonZero'" in err and "'find_nonzero'" in err
    assert not out.exists()


def test_custom_domain_op(tmp_path, capsys):
    node = helper.make_node("MyOp", ["x"], ["y"], name="mine", domain="com.example")
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)],
                              ir_version=8)
    path = save(model, tmp_path / "custom.onnx")
    rc = main(["compile", str(path), "-t", "host", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "MyOp" in err and "mine" in err


def test_dynamic_shape_asks_for_input_shape_then_works(tmp_path, capsys):
    path = save(make_small_cnn(batch="N"), tmp_path / "dyn.onnx")
    out = tmp_path / "out"
    rc = main(["compile", str(path), "-t", "host", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--input-shape x=1,3,16,16" in err and "x[N,3,16,16]" in err
    assert not out.exists()
    rc = main(["compile", str(path), "-t", "host", "-o", str(out), "--input-shape", "x=2,3,16,16"])
    assert rc == 0, capsys.readouterr().err
    rc = main(["verify", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "ok" in captured.out


@pytest.mark.parametrize("shape_arg, needle", [
    ("x=1,3,a,16", "bad --input-shape"),
    ("x=1,3,16", "dimensions"),
    ("nosuch=1,3,16,16", "model's inputs are: x"),
])
def test_bad_input_shape(tmp_path, capsys, shape_arg, needle):
    path = save(make_small_cnn(batch="N"), tmp_path / "dyn.onnx")
    rc = main(["compile", str(path), "-t", "host", "-o", str(tmp_path / "o"),
               "--input-shape", shape_arg])
    assert rc == 2 and needle in capsys.readouterr().err


def test_failed_compile_keeps_previous_output(tmp_path, compiled_small_cnn, capsys):
    out = compiled_small_cnn.copy("host", tmp_path / "out")
    before = (out / "model").read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    assert main(["compile", str(bad), "-t", "host", "-o", str(out)]) != 0
    assert (out / "model").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_refuses_to_overwrite_foreign_folder(tmp_path, small_cnn, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    assert main(["compile", str(small_cnn), "-t", "host", "-o", str(out)]) == 2
    assert "not written by edgec" in capsys.readouterr().err
    assert (out / "thesis.tex").exists()


def test_wrong_input_size_for_run(tmp_path, compiled_small_cnn, capsys):
    out = compiled_small_cnn("host")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 8, 8), np.float32))
    assert main(["run", str(out), "--input", str(x)]) == 2
    assert "has shape (1, 3, 8, 8), the model expects (1, 3, 16, 16)" in capsys.readouterr().err


def test_binary_rejects_wrong_input_size(tmp_path, compiled_small_cnn):
    out = compiled_small_cnn("host")
    short = tmp_path / "short.bin"
    short.write_bytes(b"\0" * 100)
    proc = subprocess.run([str(out / "model"), str(short), str(tmp_path / "y.bin")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "must hold exactly 3072 bytes" in proc.stderr


def test_bad_config_value(tmp_path, small_cnn, capsys):
    cfg = tmp_path / "edgec.toml"
    cfg.write_text('[compile]\ntarget = "host"\npipeline = "turbo"\n')
    rc = main(["compile", str(small_cnn), "-o", str(tmp_path / "o"), "--config", str(cfg)])
    assert rc == 2 and "pipeline" in capsys.readouterr().err
    cfg.write_text('[compile]\ntarget = "host"\nspeed = 11\n')
    rc = main(["compile", str(small_cnn), "-o", str(tmp_path / "o"), "--config", str(cfg)])
    assert rc == 2 and "unknown key 'speed'" in capsys.readouterr().err


def test_config_file_sets_options(tmp_path, small_cnn, capsys):
    cfg = tmp_path / "edgec.toml"
    cfg.write_text(f'[compile]\nmodel = "{small_cnn}"\ntarget = "host"\n'
                   f'output = "{tmp_path / "o"}"\npipeline = "cpu-nofuse"\n')
    assert main(["compile", "--config", str(cfg)]) == 0
    import json

    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["pipeline"] == "cpu-nofuse"
    assert report["kernel_calls_after_fusion"] == report["kernel_calls_before_fusion"]


def test_verify_not_a_build_folder(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert "not an edgec output folder" in capsys.readouterr().err
