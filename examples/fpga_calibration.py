"""Calibrate edgec's FPGA estimates (targets/fpga/estimate.py) against published hls4ml results.

    python examples/fpga_calibration.py [--json out.json] [--markdown]

Each reference is a model for which a vendor HLS report was published: hls4ml's own CI
synthesis baselines (fastmachinelearning/hls4ml, test/pytest/baselines) and the csynth report
of the hls4ml tutorial's CNN (fastmachinelearning/hls4ml-tutorial). The script rebuilds each
model's shape in ONNX with onnx.helper, plans it with edgec's FPGA backend (``plan_design``)
under the published configuration (ap_fixed<16,6>, strategy, reuse factor, io type, 5 ns) and
runs the estimator, then prints published vs estimate per quantity.

The published runs used Keras' default random initializers; their weights were not published.
The rebuilt models draw seeded random weights from the same distributions and round them to
ap_fixed<16,6> (10 fractional bits), as hls4ml does. DSP counts depend on those values only
statistically (which constants are wide enough to take a DSP), not on the exact draw.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
from onnx import TensorProto, helper, numpy_helper

HLS4ML = "fastmachinelearning/hls4ml"
HLS4ML_COMMIT = "ef92ebdf2fc6b9573170465ada2200bb782d1164"
TUTORIAL = "fastmachinelearning/hls4ml-tutorial"
TUTORIAL_COMMIT = "5a2b7c8d08aeaec9aa3b88d9842494c62f9afd84"
BASELINES = "test/pytest/baselines"
CNN_REPORT = "pruned_cnn/myproject_prj/solution1/syn/report/myproject_csynth.rpt"
WEIGHT_FRAC_BITS = 10  # ap_fixed<16,6>


@dataclass(frozen=True)
class Published:
    """One vendor report, reduced to the quantities the estimator predicts."""

    tool: str  # e.g. "Vitis HLS 2024.1"
    path: str  # file in ``repo`` at ``commit``
    values: dict[str, int]  # latency, ii, dsp, lut, ff, bram18 (whatever the report gives)
    repo: str = HLS4ML
    commit: str = HLS4ML_COMMIT
    layer: str | None = None  # a per-layer row of the report, else the whole design


@dataclass(frozen=True)
class Reference:
    name: str
    model: str  # key of BUILDERS
    strategy: str
    reuse_factor: int
    io_type: str
    description: str
    published: list[Published] = field(default_factory=list)


def _baseline(tool: str, name: str, layer: str | None = None, **values: int) -> Published:
    folder = {"Vitis HLS 2024.1": "Vitis/2024.1", "Vivado HLS 2020.1": "Vivado/2020.1"}[tool]
    return Published(tool, f"{BASELINES}/{folder}/{name}.json", values, layer=layer)


# Published numbers, copied from the reports named (CSynthesisReport: WorstLatency, IntervalMax,
# DSP, LUT, FF, BRAM_18K; target clock 5 ns, part xcvu13p-flga2577-2-e, hls4ml's defaults).
REFERENCES = [
    Reference(
        "dense_relu", "dense_relu", "latency", 1, "io_parallel",
        "Dense 1->64 (lecun_uniform) + ReLU; test_keras_api.py::test_activations[relu]",
        [_baseline("Vitis HLS 2024.1", "test_keras_api_test_activations_io_parallel-Vitis-relu",
                   latency=0, ii=1, dsp=58, lut=2983, ff=18, bram18=0),
         _baseline("Vivado HLS 2020.1",
                   "test_keras_api_test_activations_io_parallel-Vivado-relu",
                   latency=0, ii=1, dsp=61, lut=2224, ff=18, bram18=0)]),
    Reference(
        "conv2d", "conv2d", "resource", 1, "io_parallel",
        "Conv2D 28x28x3 -> 32 filters 4x4 stride 4, no bias (normal, std 0.05); "
        "test_keras_api.py::test_conv2d[Resource, same]",
        [_baseline("Vitis HLS 2024.1",
                   "test_keras_api_test_conv2d_io_parallel-Vitis-Resource-same-channels_last",
                   latency=52, ii=53, dsp=792, lut=75413, ff=33150, bram18=0),
         _baseline("Vivado HLS 2020.1",
                   "test_keras_api_test_conv2d_io_parallel-Vivado-Resource-same-channels_last",
                   latency=52, ii=49, dsp=740, lut=86819, ff=52870, bram18=0)]),
    *[Reference(
        kind, kind, "latency", 1, "io_parallel",
        f"{keras}2D 2x2 (valid) on 18x15x3; test_keras_api.py::test_pooling",
        [_baseline(tool, f"test_keras_api_test_pooling_{folder}-channels_last-valid-{keras}2D",
                   "pool0", latency=0, ii=1, dsp=0, lut=lut)
         for tool, folder, lut in (("Vitis HLS 2024.1", "Vitis", vitis_lut),
                                   ("Vivado HLS 2020.1", "Vivado", vivado_lut))])
      for kind, keras, vitis_lut, vivado_lut in (("maxpool2d", "MaxPooling", 22151, 17804),
                                                  ("avgpool2d", "AveragePooling", 10433,
                                                   10433))],
    # The tutorial's pruned SVHN CNN (part6_cnns.ipynb), io_stream, Vivado HLS 2020.1, xcu250.
    # Its trained, pruned weights are not published: only the shape-driven per-layer latencies
    # are compared (the layer names are the report's instances).
    Reference(
        "svhn_cnn", "svhn_cnn", "latency", 1, "io_stream",
        "hls4ml tutorial part 6 CNN (32x32x3; conv 16,16,24 3x3 + ReLU + maxpool 2x2; "
        "dense 42, 64, 10; softmax), pruned; per-layer latency only",
        [Published("Vivado HLS 2020.1", CNN_REPORT, {"latency": v}, TUTORIAL, TUTORIAL_COMMIT,
                   layer)
         for layer, v in [("conv0", 1027), ("pool0", 903), ("conv1", 229), ("pool1", 172),
                          ("conv2", 40), ("pool2", 19), ("fc0", 7), ("fc1", 3), ("fc2", 2),
                          ("softmax", 7)]]
        + [Published("Vivado HLS 2020.1", CNN_REPORT, {"latency": 1044, "ii": 1028}, TUTORIAL,
                     TUTORIAL_COMMIT),
           # the report's FIFO table (one FIFO per channel of every stream): shape-driven only
           Published("Vivado HLS 2020.1", CNN_REPORT,
                     {"fifo_bram18": 96, "fifo_ff": 5518, "fifo_lut": 13608}, TUTORIAL,
                     TUTORIAL_COMMIT)]),
]


# --------------------------------------------------------------------------- the models
def _fixed16(w: np.ndarray) -> np.ndarray:
    """Integers of ap_fixed<16,6> (truncated, as hls4ml writes weights by default)."""
    return np.clip(np.floor(w * 2 ** WEIGHT_FRAC_BITS), -2 ** 15, 2 ** 15 - 1).astype(np.int16)


class _Graph:
    """A chain of ONNX nodes whose weights are DequantizeLinear(int16, 2^-10): ap_fixed<16,6>."""

    def __init__(self, name: str, in_shape: tuple[int, ...], seed: int = 0):
        self.name, self.in_shape = name, in_shape
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits = [numpy_helper.from_array(np.float32(2.0 ** -WEIGHT_FRAC_BITS), "s16")]
        self.x = "x"

    def _node(self, op: str, inputs: list[str], **attrs) -> None:
        out = f"{op.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, [self.x] + inputs, [out], name=out, **attrs))
        self.x = out

    def _weight(self, w: np.ndarray) -> str:
        name = f"w{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(_fixed16(w), name + "_int"))
        self.nodes.append(helper.make_node("DequantizeLinear", [name + "_int", "s16"], [name],
                                           name=name + "_dq"))
        return name

    def dense(self, n_in: int, n_out: int, init: str) -> None:
        self._node("Gemm", [self._weight(_draw(self.rng, init, (n_out, n_in), n_in))], transB=1)

    def conv(self, c_in: int, c_out: int, k: int, stride: int, init: str) -> None:
        w = _draw(self.rng, init, (c_out, c_in, k, k), c_in * k * k)
        self._node("Conv", [self._weight(w)], kernel_shape=[k, k], strides=[stride, stride])

    def op(self, op: str, **attrs) -> None:
        self._node(op, [], **attrs)

    def model(self):
        from toolchain.onnx_io import fix_input_shapes

        graph = helper.make_graph(
            self.nodes, self.name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *self.in_shape])],
            [helper.make_tensor_value_info(self.x, TensorProto.FLOAT, None)], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        m.ir_version = 10
        return fix_input_shapes(m, {})


def _draw(rng, init: str, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    if init == "lecun_uniform":  # Keras: U(-sqrt(3/fan_in), sqrt(3/fan_in))
        limit = math.sqrt(3.0 / fan_in)
        return rng.uniform(-limit, limit, shape)
    if init == "normal":  # Keras 'normal': RandomNormal(stddev=0.05)
        return rng.normal(0.0, 0.05, shape)
    raise ValueError(init)


def _dense_relu(g: _Graph) -> None:
    g.dense(1, 64, "lecun_uniform")
    g.op("Relu")


def _conv2d(g: _Graph) -> None:
    g.conv(3, 32, 4, 4, "normal")  # 'same' adds no padding here: 28 = 7 * 4


def _pool(op: str):
    def build(g: _Graph) -> None:
        # edgec refuses a design without weights: a 1x1 convolution feeds the pooling layer,
        # and only the pooling layer's estimate is compared
        g.conv(3, 3, 1, 1, "normal")
        g.op(op, kernel_shape=[2, 2], strides=[2, 2])
    return build


def _svhn_cnn(g: _Graph) -> None:
    for c_in, c_out in [(3, 16), (16, 16), (16, 24)]:
        g.conv(c_in, c_out, 3, 1, "lecun_uniform")
        g.op("Relu")
        g.op("MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    g.op("Flatten")
    for n_in, n_out in [(96, 42), (42, 64), (64, 10)]:
        g.dense(n_in, n_out, "lecun_uniform")
        if n_out != 10:
            g.op("Relu")
    g.op("Softmax", axis=-1)


BUILDERS = {"dense_relu": ((1,), _dense_relu), "conv2d": ((3, 28, 28), _conv2d),
            "maxpool2d": ((3, 18, 15), _pool("MaxPool")),
            "avgpool2d": ((3, 18, 15), _pool("AveragePool")),
            "svhn_cnn": ((3, 32, 32), _svhn_cnn)}


# --------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Row:
    reference: str
    configuration: str
    quantity: str
    published: int
    estimate: int
    tool: str
    source: str

    @property
    def ratio(self) -> float | None:
        """estimate / published; None when the published value is 0."""
        return self.estimate / self.published if self.published else None

    def to_json(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def _hls_backend(tool: str) -> str:
    return "vivado" if tool.lower().startswith("vivado") else "vitis"


def estimate_reference(ref: Reference, seed: int = 0, hls_backend: str = "vitis"):
    """Plan the reference's model with edgec and estimate it under its published configuration."""
    from toolchain.targets import device
    from toolchain.targets.fpga import config as fcfg
    from toolchain.targets.fpga.backend import plan_design
    from toolchain.targets.fpga.estimate import estimate

    in_shape, build = BUILDERS[ref.model]
    g = _Graph(ref.model, in_shape, seed)
    build(g)
    cfg = fcfg.FpgaConfig(io_type=ref.io_type, strategy=ref.strategy,
                          reuse_default=ref.reuse_factor, clock_period_ns=5.0)
    # the estimator reads only the clock from the device; the parts are all UltraScale+
    design = plan_design(g.model(), device("fpga-xcu250"), cfg)
    return estimate(design, ref.strategy, cfg.clock_period_ns, io_type=ref.io_type,
                    hls_backend=hls_backend)


def _layer_value(est, layer: str, quantity: str) -> int:
    # the report's instances are named by kind and index: conv0, pool0, fc0, softmax
    kinds = {"conv": ("conv2d",), "pool": ("maxpool2d", "avgpool2d"), "fc": ("dense",),
             "softmax": ("softmax",)}
    stem = layer.rstrip("0123456789")
    index = int(layer[len(stem):] or 0)
    e = [e for e in est.layers if e.kind in kinds[stem]][index]
    return {"latency": e.cycles, "ii": e.ii}.get(quantity, getattr(e, quantity, 0))


def _design_value(est, quantity: str) -> int:
    if quantity == "latency":
        return est.cycles
    if quantity == "ii":
        return est.ii
    if quantity.startswith("fifo_"):  # the io_stream FIFOs alone
        return sum(getattr(f, quantity[len("fifo_"):]) for f in est.fifos)
    return est.totals()[quantity]


def calibrate(refs=REFERENCES, seed: int = 0) -> list[Row]:
    rows = []
    for ref in refs:
        config = f"ap_fixed<16,6>, {ref.strategy.capitalize()}, RF {ref.reuse_factor}, " \
                 f"{ref.io_type}, 5 ns"
        for pub in ref.published:
            est = estimate_reference(ref, seed, _hls_backend(pub.tool))
            label = ref.name if pub.layer is None else f"{ref.name}.{pub.layer}"
            src = f"{pub.repo} `{pub.path}` @{pub.commit[:10]}"
            for quantity, value in pub.values.items():
                mine = (_design_value(est, quantity) if pub.layer is None
                        else _layer_value(est, pub.layer, quantity))
                rows.append(Row(label, config, quantity, int(value), int(mine), pub.tool, src))
    return rows


def _ratio(r: Row) -> str:
    return "-" if r.ratio is None else f"{r.ratio:.2f}"


def markdown(rows: list[Row]) -> str:
    lines = ["| model | configuration | quantity | published | edgec estimate | ratio | "
             "tool | source |", "| --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        lines.append(f"| {r.reference} | {r.configuration} | {r.quantity} | {r.published} | "
                     f"{r.estimate} | {_ratio(r)} | {r.tool} | {r.source} |")
    return "\n".join(lines)


def text(rows: list[Row]) -> str:
    head = f"{'model':<18} {'tool':<18} {'quantity':<8} {'published':>9} {'estimate':>9} " \
           f"{'ratio':>6}"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r.reference:<18} {r.tool:<18} {r.quantity:<8} {r.published:>9} "
                   f"{r.estimate:>9} {_ratio(r):>6}")
    out.append("ratio = edgec estimate / published ('-' where the published value is 0); "
               "sources: --markdown or --json")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, metavar="OUT.json", help="write the rows as JSON")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = ap.parse_args(argv)
    rows = calibrate(seed=args.seed)
    print(markdown(rows) if args.markdown else text(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"source": "estimate vs published", "seed": args.seed,
                       "rows": [r.to_json() for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
