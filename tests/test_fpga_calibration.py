"""The FPGA estimator against published hls4ml synthesis results (examples/fpga_calibration.py).

A regression test: if a rule in targets/fpga/estimate.py drifts, the estimates leave the
factors below, which the calibration table in targets/fpga/README.md justifies. Weights are
seeded random draws (the published runs used Keras' random initializers), so the DSP bounds
are checked on three seeds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "fpga_calibration.py"


def _load():
    spec = importlib.util.spec_from_file_location("fpga_calibration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


cal = _load()

# (quantity, reference or reference.layer) -> the largest allowed factor between estimate and published
FACTORS = {
    ("dsp", "dense_relu"): 1.25, ("dsp", "conv2d"): 1.25,
    ("latency", "conv2d"): 1.25, ("ii", "conv2d"): 1.25, ("ii", "dense_relu"): 1.0,
    ("lut", "dense_relu"): 1.5, ("lut", "conv2d"): 2.0, ("ff", "conv2d"): 1.5,
    ("lut", "maxpool2d.pool"): 1.3, ("lut", "avgpool2d.pool"): 1.3,
    ("ii", "maxpool2d.pool"): 1.0, ("ii", "avgpool2d.pool"): 1.0,
    # io_stream: the per-pixel loop of each image layer and the dataflow total
    ("latency", "svhn_cnn.conv"): 1.1, ("latency", "svhn_cnn.pool"): 1.1,
    ("latency", "svhn_cnn"): 1.1, ("ii", "svhn_cnn"): 1.1,
    # its FIFOs (one per channel, SRL or BRAM18 by depth): block RAMs nearly exact
    ("fifo_bram18", "svhn_cnn"): 1.1, ("fifo_ff", "svhn_cnn"): 1.2,
    ("fifo_lut", "svhn_cnn"): 1.3,
}
# published 0 cycles (combinational): the estimate must be 0 too
ZERO_LATENCY = ("dense_relu", "maxpool2d", "avgpool2d")


def _factor(row) -> float | None:
    # per-layer rows are named reference.layerN; the factor holds for every N
    return FACTORS.get((row.quantity, row.reference.rstrip("0123456789")))


@pytest.fixture(scope="module")
def rows():
    return cal.calibrate()


def test_every_reference_is_estimated_and_cited(rows):
    assert {r.reference.split(".")[0] for r in rows} == {r.name for r in cal.REFERENCES}
    for r in rows:
        assert r.source.startswith("fastmachinelearning/") and "@" in r.source


def test_estimates_stay_within_their_factors(rows):
    checked, off = 0, []
    for r in rows:
        factor = _factor(r)
        if factor is None or r.published == 0:
            continue
        checked += 1
        if not 1 / factor <= r.ratio <= factor:
            off.append(f"{r.reference} {r.tool} {r.quantity}: estimate {r.estimate} vs "
                       f"published {r.published} (allowed factor {factor})")
    assert checked >= 30 and not off, "\n".join(off)


def test_combinational_layers_have_no_latency(rows):
    for r in rows:
        if r.quantity == "latency" and r.reference.split(".")[0] in ZERO_LATENCY:
            assert r.published == 0 and r.estimate == 0, r


@pytest.mark.parametrize("seed", [1, 2])
def test_dsp_rule_holds_for_other_weight_draws(seed):
    for r in cal.calibrate([ref for ref in cal.REFERENCES if ref.name in ("dense_relu",
                                                                           "conv2d")], seed):
        if r.quantity == "dsp":
            assert 1 / 1.25 <= r.ratio <= 1.25, r


def test_rows_render(rows):
    table = cal.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "| conv2d |" in table
