"""io_stream designs: the C emulation of a streaming CNN against onnxruntime, and the FIFO
estimate against the STREAM pragmas and stream types hls4ml actually wrote."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from toolchain.cli import main
from toolchain.targets.fpga.estimate import AUTO_SRL_MAX_BITS, fifo_for

pytestmark = pytest.mark.slow


def _written_fifos(project: Path) -> Counter:
    """(depth, width in bits) of every internal stream of the generated firmware."""
    cpp = (project / "firmware" / "edgec_fpga.cpp").read_text()
    defines = (project / "firmware" / "defines.h").read_text()
    widths = {}
    for m in re.finditer(r"typedef nnet::array<ap_u?fixed<(\d+),[^>]*>,\s*(\d+)\*1>\s*(\w+);",
                         defines):
        widths[m.group(3)] = int(m.group(1)) * int(m.group(2))
    types = dict((name, t) for t, name in re.findall(r"hls::stream<(\w+)>\s+(\w+)\(", cpp))
    depths = dict(re.findall(r"#pragma HLS STREAM variable=(\w+) depth=(\d+)", cpp))
    assert types and set(types) == set(depths), (types, depths)
    return Counter((int(depths[n]), widths[types[n]]) for n in types)


@pytest.fixture(scope="module")
def cnn_stream(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream")
    onnx_path = root / "cnn_q8.onnx"
    assert main(["compress", "cnn", "--quantize", "fixed<8,3>", "-o", str(onnx_path)]) == 0
    out = root / "cnn_stream"
    assert main(["compile", str(onnx_path), "--input-shape", "input=1,1,8,8", "--target",
                 "fpga-xcu250", "--io-type", "io_stream", "-o", str(out)]) == 0
    return out


def test_streaming_cnn_c_emulation_agrees_with_onnxruntime(cnn_stream):
    assert main(["simulate", str(cnn_stream), "--dataset", "cnn", "--no-rtl"]) == 0
    sim = json.loads((cnn_stream / "simulation.json").read_text())
    assert sim["c_emulation"]["argmax_agreement"] >= 0.99
    assert sim["c_emulation"]["samples"] >= 400


def test_fifo_estimate_matches_the_written_project(cnn_stream):
    report = json.loads((cnn_stream / "report.json").read_text())
    est = report["estimate"]
    predicted = Counter((f["depth"], f["width"]) for f in est["fifos"])
    assert predicted == _written_fifos(cnn_stream / "hls")
    # padded 'same' convs get a zero-padding stream of the padded image (10x10 for 8x8)
    assert any(f["stream"].endswith("_zeropad") and f["depth"] == 100 for f in est["fifos"])
    # FIFOs are part of the totals: the layers alone use fewer LUTs
    layer_lut = sum(e["lut"] for e in est["layers"])
    fifo_lut = sum(f["lut"] for f in est["fifos"])
    assert est["resources"]["lut"] == layer_lut + fifo_lut
    assert est["resources"]["bram18"] == (sum(e["bram18"] for e in est["layers"])
                                          + sum(f["bram18"] for f in est["fifos"]))


def test_dense_streams_match_too(tmp_path):
    onnx_path = tmp_path / "mlp16_q8.onnx"
    assert main(["compress", "mlp16", "--quantize", "fixed<8,3>", "-o", str(onnx_path)]) == 0
    out = tmp_path / "mlp_stream"
    assert main(["compile", str(onnx_path), "--input-shape", "input=1,16", "--target",
                 "fpga-xcu250", "--io-type", "io_stream", "-o", str(out)]) == 0
    fifos = json.loads((out / "report.json").read_text())["estimate"]["fifos"]
    assert Counter((f["depth"], f["width"]) for f in fifos) == _written_fifos(out / "hls")
    assert all(f["depth"] == 1 and f["impl"] == "srl" for f in fifos)


def test_fifo_binding_follows_the_hls_defaults():
    # one FIFO per channel; Vitis: shift registers up to 1024 bits (or depth 2), else BRAM18
    small = fifo_for("a", 2, 4, 1024)
    assert small.impl == "srl" and small.bram18 == 0 and small.lut >= 4 * 1024
    assert fifo_for("b", 64, 3, AUTO_SRL_MAX_BITS // 64).impl == "srl"
    big = fifo_for("c", 900, 16, 16)  # 900 x 16: one 1024x18 block per channel
    assert big.impl == "bram18" and big.bram18 == 16
    assert fifo_for("d", 600, 1, 36).bram18 == 2  # two 512x36 blocks
    # Vivado HLS (the tutorial's published report): 16 deep -> SRL, 36 deep -> BRAM
    assert fifo_for("e", 16, 24, 16, "vivado").impl == "srl"
    assert fifo_for("f", 36, 16, 16, "vivado").bram18 == 16
    assert fifo_for("f", 36, 16, 16, "vitis").impl == "srl"  # 576 bits <= 1024
