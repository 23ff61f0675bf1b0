"""FPGA backend units: fixed-point types, ONNX lowering, typing, reuse factors, estimates, fit.

Small graphs built with onnx.helper; nothing here runs hls4ml, so the module takes seconds.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolchain.errors import ConfigError, UnsupportedOpError
from toolchain.onnx_io import fix_input_shapes
from toolchain.targets import backend_for, device, devices
from toolchain.targets.fpga import config as fcfg
from toolchain.targets.fpga.budget import choose_reuse_factors
from toolchain.targets.fpga.estimate import _csd_digits, estimate, utilization
from toolchain.targets.fpga.lower import lower
from toolchain.targets.fpga.plan import apply_reuse_factors, assign_types, valid_reuse_factors
from toolchain.targets.fpga.precision import Fixed, accumulator, parse_fixed

FPGA_DEVICES = ["fpga-xcu250", "fpga-z7020", "fpga-xcvu9p"]


def _mlp(sizes=(16, 64, 32, 5), seed=0, extra_nodes=(), softmax=True, qdq=False):
    """A Gemm/Relu chain; with qdq, int8 weights (scale 2^-6) and int8 activations (2^-4)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    if qdq:
        inits += [numpy_helper.from_array(np.float32(2 ** -4), "a_s"),
                  numpy_helper.from_array(np.int8(0), "a_z")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["xq"], name="in_q"),
                  helper.make_node("DequantizeLinear", ["xq", "a_s", "a_z"], ["xdq"],
                                   name="in_dq")]
        x = "xdq"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.standard_normal((b, a)) / np.sqrt(a)
        if qdq:
            inits += [numpy_helper.from_array(np.clip(np.round(w * 64), -128, 127)
                                              .astype(np.int8), f"w{i}_int"),
                      numpy_helper.from_array(np.float32(2 ** -6), f"w{i}_s"),
                      numpy_helper.from_array(np.int8(0), f"w{i}_z")]
            nodes.append(helper.make_node("DequantizeLinear", [f"w{i}_int", f"w{i}_s", f"w{i}_z"],
                                          [f"w{i}"], name=f"w{i}_dq"))
        else:
            inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array((rng.standard_normal(b) * 0.1).astype(np.float32),
                                             f"b{i}"))
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"g{i}"], name=f"fc{i}",
                                      transB=1))
        x = f"g{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
            if qdq:
                nodes += [helper.make_node("QuantizeLinear", [x, "a_s", "a_z"], [f"{x}q"],
                                           name=f"{x}_q"),
                          helper.make_node("DequantizeLinear", [f"{x}q", "a_s", "a_z"],
                                           [f"{x}dq"], name=f"{x}_dq")]
                x = f"{x}dq"
    for node in extra_nodes:
        node.input[0] = x
        nodes.append(node)
        x = node.output[0]
    if softmax:
        nodes.append(helper.make_node("Softmax", [x], ["y"], name="softmax", axis=-1))
        x = "y"
    graph = helper.make_graph(nodes, "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [1, sizes[0]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return fix_input_shapes(model, {})


def _cfg(**kw) -> fcfg.FpgaConfig:
    dev = fcfg.FpgaDevice.from_device(device("fpga-xcu250"))
    return fcfg.from_args(argparse.Namespace(**kw), dev)


# ------------------------------------------------------------------ devices and options
@pytest.mark.parametrize("name", FPGA_DEVICES)
def test_device_files_have_resources(name):
    dev = fcfg.FpgaDevice.from_device(device(name))
    assert dev.part and dev.dsp > 0 and dev.lut > dev.dsp and dev.ff >= dev.lut
    assert dev.bram36 > 0 and 0 < dev.clock_period_ns <= 20
    line = backend_for("fpga").describe(device(name))
    assert dev.part in line and str(dev.dsp) in line


def test_z7020_is_the_board_part():
    dev = fcfg.FpgaDevice.from_device(device("fpga-z7020"))
    assert dev.part == "xc7z020clg400-1" and dev.dsp == 220 and dev.lut == 53200


def test_every_fpga_device_is_listed():
    assert set(FPGA_DEVICES) <= {n for n, d in devices().items() if d.family == "fpga"}


@pytest.mark.parametrize("kw, needle", [
    ({"hls_backend": "quartus"}, "--hls-backend"),
    ({"io_type": "io_serial"}, "--io-type"),
    ({"strategy": "fast"}, "--strategy"),
    ({"reuse_factor": ["0"]}, "--reuse-factor"),
    ({"reuse_factor": ["fc0=x"]}, "--reuse-factor"),
    ({"budget": "bram=3"}, "--budget"),
    ({"budget": "dsp=100", "reuse_factor": ["2"]}, "--budget or --reuse-factor"),
    ({"clock_period": 0.01}, "--clock-period"),
    ({"default_precision": "float32"}, "--default-precision"),
    ({"strategy": "distributed_arithmetic", "reuse_factor": ["2"]}, "reuse factor 1"),
    ({"strategy": "distributed_arithmetic", "budget": "lut=1000"}, "--budget"),
])
def test_bad_options_name_the_option(kw, needle):
    with pytest.raises(ConfigError, match=needle.replace("-", r"\-")):
        _cfg(**kw)


def test_options_of_the_arm_family_are_ignored():
    cfg = _cfg(pipeline="o3", compiler="zig", schedule="tuned")
    assert cfg.strategy == "latency" and cfg.hls_backend == "Vitis" and cfg.clock_period_ns == 5.0


# ------------------------------------------------------------------ fixed point
@pytest.mark.parametrize("text, width, integer, signed", [
    ("fixed<16,6>", 16, 6, True), ("ufixed<8,0,RND,SAT>", 8, 0, False),
    ("fixed< 18 , 8 ,TRN,WRAP>", 18, 8, True)])
def test_parse_fixed(text, width, integer, signed):
    t = parse_fixed(text)
    assert (t.width, t.integer, t.signed) == (width, integer, signed)
    assert parse_fixed(t.hls()) == t


def test_cast_rounds_and_saturates_like_ap_fixed():
    t = Fixed(8, 3)  # lsb 1/32, range [-4, 4 - 1/32]
    x = np.array([0.015625, -0.015625, 0.046875, 100.0, -100.0, 1.01])
    assert t.cast(x).tolist() == [0.03125, 0.0, 0.0625, 4 - 1 / 32, -4.0, 1.0]
    conv = Fixed(8, 3, rounding="RND_CONV")  # ties to even, as ONNX QuantizeLinear
    assert conv.cast(np.array([0.015625, 0.046875])).tolist() == [0.0, 0.0625]


def test_accumulator_never_overflows_or_rounds():
    rng = np.random.default_rng(0)
    x_t, w_t, b_t = Fixed(6, 2), Fixed(5, 1), Fixed(10, 2)
    w = w_t.cast(rng.uniform(-1, 1, (3, 4)))
    b = b_t.cast(rng.uniform(-2, 2, 3))
    acc = accumulator(x_t, w_t, b_t, w, b)
    grid = np.arange(x_t.min_value, x_t.max_value + x_t.lsb / 2, x_t.lsb)
    worst = 0.0
    for xs in itertools.product(grid[::3], repeat=4):
        exact = w @ np.array(xs) + b
        assert np.array_equal(acc.cast(exact), exact)
        worst = max(worst, float(np.abs(exact).max()))
    assert worst > acc.max_value / 4  # the bound is not absurdly loose


# ------------------------------------------------------------------ lowering
def test_lower_float_mlp():
    g = lower(_mlp(), "fpga-xcu250")
    assert [l.kind for l in g.layers] == ["dense", "relu", "dense", "relu", "dense", "softmax"]
    assert g.layers[0].weight.shape == (64, 16) and g.input_type is None
    assert g.layers[0].node == "fc0"


def test_lower_qdq_gives_exact_types():
    design = assign_types(lower(_mlp(qdq=True), "fpga-xcu250"), _cfg())
    assert design.input_type.hls() == "fixed<8,4,RND_CONV,SAT>"
    fc0 = design.layers[0]
    assert fc0.weight_type == Fixed(8, 2)  # int8 x 2^-6
    # the Gemm result is not rounded: the ReLU's QDQ is the only rounding, as in onnxruntime
    assert fc0.result_type == fc0.accum_type and fc0.accum_type.frac == 4 + 6
    assert design.layers[1].result_type == Fixed(8, 4)
    assert np.array_equal(fc0.quantized_weight(), fc0.layer.weight)


def test_unsupported_op_names_node_and_op():
    sig = helper.make_node("Sigmoid", ["?"], ["s"], name="my_sigmoid")
    with pytest.raises(UnsupportedOpError, match="'Sigmoid' in node 'my_sigmoid'"):
        lower(_mlp(extra_nodes=[sig], softmax=False), "fpga-xcu250")


def test_non_power_of_two_scale_is_refused():
    model = _mlp(qdq=True)
    for init in model.graph.initializer:
        if init.name == "w0_s":
            init.CopyFrom(numpy_helper.from_array(np.float32(0.013), "w0_s"))
    with pytest.raises(UnsupportedOpError, match="w0_dq.*power of two"):
        lower(model, "fpga-xcu250")


def test_branches_merge_in_an_add():
    model = _mlp(sizes=(16, 32, 32, 32), softmax=False)
    last = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Add", [last, "g1"], ["sum"], name="skip_add"))
    model.graph.output[0].name = "sum"
    del model.graph.value_info[:]
    model = fix_input_shapes(model, {})
    graph = lower(model, "fpga-xcu250")
    add = graph.layers[-1]
    producer = {"g1": next(l.name for l in graph.layers if l.node.startswith("fc1")),
                last: graph.layers[-2].name}
    assert add.kind == "add" and add.node == "skip_add"
    assert set(add.inputs) == {producer["g1"], producer[last]}
    design = assign_types(graph, _cfg())
    a, b = (design.layer(n).result_type for n in add.inputs)
    s = design.layers[-1].input_type  # the exact sum of the two
    assert s.integer == max(a.integer, b.integer) + 1 and s.frac == max(a.frac, b.frac)


# ------------------------------------------------------------------ reuse factors and estimates
def test_valid_reuse_factors_follow_hls4ml():
    v = valid_reuse_factors(16, 64)
    assert v[:5] == [1, 2, 4, 8, 16] and 32 in v and 3 not in v
    assert all((16 * 64) % rf == 0 and (rf < 16 or rf % 16 == 0) for rf in v)
    assert 24 not in valid_reuse_factors(16, 6)  # divides 96 but is >= n_in and not a multiple


def test_invalid_reuse_factor_lists_valid_ones():
    design = assign_types(lower(_mlp(), "fpga-xcu250"), _cfg(reuse_factor=["fc0=3"]))
    with pytest.raises(ConfigError, match=r"--reuse-factor 3 for layer 'fc0' \(16x64\).*2, 4"):
        apply_reuse_factors(design, _cfg(reuse_factor=["fc0=3"]))
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        apply_reuse_factors(design, _cfg(reuse_factor=["nope=2"]))


def test_reuse_factor_by_onnx_node_or_torch_module_name():
    import json

    model = _mlp()
    meta = {"layers": {"net.fc_in": {"onnx_node": "fc1", "onnx_weight": "w1"}}}
    helper.set_model_props(model, {"edgec.compression": json.dumps(meta)})
    cfg = _cfg(reuse_factor=["fc0=4", "net.fc_in=8", "2"])
    design = assign_types(lower(model, "fpga-xcu250"), cfg)
    apply_reuse_factors(design, cfg)
    assert [p.reuse_factor for p in design.weighted()] == [4, 8, 2]


def test_estimate_counts_real_multipliers():
    design = assign_types(lower(_mlp(), "fpga-xcu250"), _cfg())
    fc0 = design.layers[0]
    fc0.layer.weight[:, :8] = 0  # half the weights pruned
    fc0.layer.weight[0, 8] = 0.5  # one power of two: a shift, not a multiplier
    est = estimate(design, "latency", 5.0)
    e0 = est.layers[0]
    assert e0.source == "estimate" and e0.ii == 1
    # 16-bit: constants with 3+ CSD digits take a DSP, 2-digit ones are one adder
    w = fc0.quantized_weight()
    digits = _csd_digits(w, fc0.weight_type.frac)
    assert e0.multipliers == 64 * 8 - 1 and e0.dsp == int(((w != 0) & (digits >= 3)).sum())
    design.layers[0].reuse_factor = 4
    res = estimate(design, "resource", 5.0).layers[0]
    assert res.dsp == 16 * 64 // 4  # RF > 1: weights in a ROM, zeros kept
    e4 = estimate(design, "latency", 5.0).layers[0]
    assert e4.ii == 4 and e4.multipliers == -(-(64 * 8 - 1) // 4) and e4.cycles > e0.cycles


def test_eight_bit_products_use_no_dsps():
    design = assign_types(lower(_mlp(qdq=True), "fpga-xcu250"), _cfg())
    est = estimate(design, "latency", 5.0)
    dense = [e for e in est.layers if e.kind == "dense"]
    assert all(e.dsp == 0 and e.lut > 0 for e in dense)


@pytest.mark.parametrize("kind, limit", [("dsp", 600), ("latency", 40)])
def test_budget_picks_valid_reuse_factors(kind, limit):
    cfg = _cfg(budget=f"{kind}={limit}")
    design = assign_types(lower(_mlp(), "fpga-xcu250"), cfg)
    choose_reuse_factors(design, kind, limit, "latency", 5.0)
    est = estimate(design, "latency", 5.0)
    total = est.cycles if kind == "latency" else est.totals()["dsp"]
    assert total <= limit
    for p in design.weighted():
        assert p.reuse_factor in valid_reuse_factors(p.layer.fan_in, p.layer.n_out)
    if kind == "dsp":
        assert any(p.reuse_factor > 1 for p in design.weighted())


def test_impossible_budget_is_a_config_error():
    design = assign_types(lower(_mlp(), "fpga-xcu250"), _cfg())
    with pytest.raises(ConfigError, match="cannot be met"):
        choose_reuse_factors(design, "latency", 2, "latency", 5.0)


def test_utilization_against_device_totals():
    dev = fcfg.FpgaDevice.from_device(device("fpga-z7020"))
    fit = utilization({"dsp": 440, "lut": 100, "ff": 0, "bram18": 0}, dev.totals())
    assert not fit["fits"] and fit["resources"]["dsp"]["percent"] == 200.0
    assert utilization({"dsp": 1}, dev.totals())["fits"]


@pytest.mark.parametrize("on_grid", [True, False])
def test_metadata_grid_is_used_only_when_weights_lie_on_it(on_grid):
    import json

    model = _mlp()
    for init in model.graph.initializer:
        if init.name == "w0":
            w = numpy_helper.to_array(init)
            w = np.round(w * 32) / 32 if on_grid else w
            init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), "w0"))
    meta = {"layers": {"fc0": {"onnx_node": "fc0", "onnx_weight": "w0", "weight_bits": 8,
                               "weight_frac_bits": 5, "sparsity": 0.0}}}
    helper.set_model_props(model, {"edgec.compression": json.dumps(meta)})
    graph = lower(model, "fpga-xcu250")
    assert graph.compression == meta
    expected = Fixed(8, 3) if on_grid else None
    assert graph.layers[0].weight_type == expected
    assert graph.layers[2].weight_type is None


def test_qdq_after_flatten_rounds_once_before_it():
    """conv -> relu -> global average pool -> flatten -> Q/DQ -> gemm: hls4ml's Flatten casts
    nothing, so the grid moves to the pooling layer, and everything before stays exact."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5)
                                     .astype(np.float32), "cw"),
             numpy_helper.from_array(np.zeros(4, np.float32), "cb"),
             numpy_helper.from_array(np.float32(2 ** -5), "s"),
             numpy_helper.from_array(np.int8(0), "z"),
             numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "fw")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="qin"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dqin"),
             helper.make_node("Conv", ["xd", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("QuantizeLinear", ["f", "s", "z"], ["fq"], name="qf"),
             helper.make_node("DequantizeLinear", ["fq", "s", "z"], ["fd"], name="dqf"),
             helper.make_node("Gemm", ["fd", "fw"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 1, 4, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    design = assign_types(lower(fix_input_shapes(model, {}), "fpga-xcu250"), _cfg())
    conv, relu, gap, flat, fc = design.layers
    assert conv.result_type == conv.accum_type  # exact
    assert relu.result_type.frac == conv.accum_type.frac and not relu.result_type.signed
    assert gap.result_type == Fixed(8, 3) and flat.result_type == Fixed(8, 3)
    assert fc.input_type == Fixed(8, 3)
    # the mean of 16 values needs 4 more fractional bits in the accumulator
    assert gap.accum_type.frac == relu.result_type.frac + 4


def test_rtl_path_only_for_what_da4ml_implements():
    from toolchain.targets.fpga.rtl import rtl_layers

    design = assign_types(lower(_mlp(), "fpga-xcu250"), _cfg())
    layers, reason = rtl_layers(design)
    assert [p.layer.kind for p in layers] == ["dense", "relu", "dense", "relu", "dense"]
    conv = assign_types(lower(_mlp(), "fpga-xcu250"),
                        _cfg(default_precision="fixed<16,6,RND_CONV,SAT>"))
    layers, reason = rtl_layers(conv)
    assert layers is None and "RND_CONV" in reason
