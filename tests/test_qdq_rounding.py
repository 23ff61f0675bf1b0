"""Requantization of a QDQ conv exactly as onnxruntime's QLinearConv rounds it.

onnxruntime computes each output channel's scale as ``(s_x * s_w) / s_y`` in float32 (two
roundings); the float64 quotient rounded once to float32 differs in the last bit for about one
channel in four, and an accumulator whose scaled value lies within that bit of a .5 then rounds
the other way (resnet50's QDQ build: the first departure, 1 element of 802816 in res2_2's
branch2c conv). The graph here is built around such an accumulator: a 1x1 conv, uint8
activations, per-channel int8 weights, and an output scale chosen so that the two scales round
one element differently.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import needs_target
from toolchain.cli import main
from toolchain.targets import backend_for

K, O, P = 16, 8, 256  # input channels, output channels, pixels (a 1 x P image)
Z_X, Z_Y = 120, 128


def _tie_case():
    """Codes, weights and scales with one accumulator that the two scale formulas round apart."""
    rng = np.random.default_rng(0)
    xq = rng.integers(0, 256, (K, P))
    w = rng.integers(-127, 128, (O, K))
    acc = (w.astype(np.int64) @ (xq - Z_X)).astype(np.float32)
    s_x = np.float32(0.0173)
    s_w = rng.uniform(0.002, 0.01, O).astype(np.float32)
    top = float(np.abs(acc).max() * s_x * s_w.max()) / 120
    for _ in range(5000):
        s_y = np.float32(rng.uniform(0.9, 1.1) * top)
        ort_scale = (s_x * s_w) / s_y
        f64_scale = (np.float64(s_x) * s_w.astype(np.float64) / np.float64(s_y)).astype(np.float32)
        ref = np.rint(acc * ort_scale[:, None])
        if (np.abs(ref) <= 127).all() and (ref != np.rint(acc * f64_scale[:, None])).any():
            return xq, w, s_x, s_w, s_y
    raise AssertionError("no near-tie accumulator found")


def _model(w, s_x, s_w, s_y) -> onnx.ModelProto:
    init = [numpy_helper.from_array(np.array(s_x, np.float32), "s_x"),
            numpy_helper.from_array(np.array(Z_X, np.uint8), "z_x"),
            numpy_helper.from_array(w.reshape(O, K, 1, 1).astype(np.int8), "wq"),
            numpy_helper.from_array(s_w, "s_w"),
            numpy_helper.from_array(np.zeros(O, np.int8), "z_w"),
            numpy_helper.from_array(np.array(s_y, np.float32), "s_y"),
            numpy_helper.from_array(np.array(Z_Y, np.uint8), "z_y")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "z_x"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_x", "z_x"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "s_w", "z_w"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s_y", "z_y"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s_y", "z_y"], ["y"])]
    graph = helper.make_graph(
        nodes, "qconv_tie", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K, 1, P])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, O, 1, P])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_conv_requantization_matches_qlinearconv_at_a_near_tie(tmp_path):
    xq, w, s_x, s_w, s_y = _tie_case()
    model = tmp_path / "qconv_tie.onnx"
    onnx.save(_model(w, s_x, s_w, s_y), model)
    x = ((xq - Z_X).astype(np.float32) * s_x).reshape(1, K, 1, P)

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]

    out = tmp_path / "out"
    assert main(["compile", str(model), "-t", "host", "-o", str(out)]) == 0
    meta = json.loads((out / "edgec.json").read_text())
    assert meta["options"]["pipeline"] in ("auto", "cpu-int")
    kernels = json.loads((out / "report.json").read_text())["kernels"].values()
    assert any(op.startswith("qgemm") for k in kernels for op in k["ops"])  # the int8 GEMM
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    subprocess.run([out / "model", tmp_path / "x.bin", tmp_path / "y.bin"], check=True)
    got = np.fromfile(tmp_path / "y.bin", np.float32).reshape(want.shape)
    steps = np.rint((got - want) / s_y)
    assert not steps.any(), f"{int(np.count_nonzero(steps))} outputs off by one step"


def _fused(k, s, other):
    """float32 ``k * s + other`` rounded once (an FMA); exact in float64 for these sizes."""
    return (k.astype(np.float64) * np.float64(s) + other.astype(np.float64)).astype(np.float32)


def _add_cases(count: int):
    """Scales and zero points for which onnxruntime's float DequantizeLinear-Sum-QuantizeLinear
    and the same with one product fused into the add (an FMA) give a different code for some
    pair of inputs."""
    rng = np.random.default_rng(3)
    a, b = (v.reshape(-1).astype(np.int64) for v in np.meshgrid(np.arange(256), np.arange(256)))
    cases = []
    while len(cases) < count:
        sa, sb = (np.float32(v) for v in rng.uniform(0.005, 0.1, 2))
        sy = np.float32(rng.uniform(1.0, 2.0) * (sa + sb) / 2)
        za, zb, zy = (int(v) for v in rng.integers(60, 200, 3))
        fa, fb = (a - za).astype(np.float32) * sa, (b - zb).astype(np.float32) * sb
        ref = np.rint((fa + fb) / sy)
        inside = (ref + zy >= 0) & (ref + zy <= 255)
        fused_a = np.rint(_fused(a - za, sa, fb) / sy)
        fused_b = np.rint(_fused(b - zb, sb, fa) / sy)
        if ((ref != fused_a) & inside).any() and ((ref != fused_b) & inside).any():
            cases.append((sa, sb, sy, za, zb, zy))
    return cases


def _sum_model(cases, op: str, relu: bool) -> onnx.ModelProto:
    """One branch per case: x_i, w_i -> QuantizeLinear -> DequantizeLinear -> op -> (Relu) ->
    QuantizeLinear -> DequantizeLinear -> y_i (uint8 grids, [1, 1, 256, 256])."""
    nodes, init, ins, outs = [], [], [], []
    shape = [1, 1, 256, 256]
    for i, (sa, sb, sy, za, zb, zy) in enumerate(cases):
        for name, v in ((f"sa{i}", sa), (f"sb{i}", sb), (f"sy{i}", sy)):
            init.append(numpy_helper.from_array(np.array(v, np.float32), name))
        for name, v in ((f"za{i}", za), (f"zb{i}", zb), (f"zy{i}", zy)):
            init.append(numpy_helper.from_array(np.array(v, np.uint8), name))
        for x in "ab":
            ins.append(helper.make_tensor_value_info(f"{x}{i}", TensorProto.FLOAT, shape))
            nodes += [helper.make_node("QuantizeLinear", [f"{x}{i}", f"s{x}{i}", f"z{x}{i}"],
                                       [f"{x}q{i}"]),
                      helper.make_node("DequantizeLinear", [f"{x}q{i}", f"s{x}{i}", f"z{x}{i}"],
                                       [f"{x}d{i}"])]
        nodes.append(helper.make_node(op, [f"ad{i}", f"bd{i}"], [f"s{i}"]))
        last = f"s{i}"
        if relu:
            nodes.append(helper.make_node("Relu", [last], [f"r{i}"]))
            last = f"r{i}"
        nodes += [helper.make_node("QuantizeLinear", [last, f"sy{i}", f"zy{i}"], [f"yq{i}"]),
                  helper.make_node("DequantizeLinear", [f"yq{i}", f"sy{i}", f"zy{i}"], [f"y{i}"])]
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "qsum", ins, outs, init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_residual_sum_matches_onnxruntime_bit_for_bit(tmp_path):
    """Every pair of uint8 codes through DequantizeLinear, Sum (+ Relu), QuantizeLinear, for
    scale sets where an FMA changes a code: edgec's int8 Sum kernel gives onnxruntime's codes
    (onnxruntime keeps Sum in float at every optimization level)."""
    cases = _add_cases(4)
    grid = np.meshgrid(np.arange(256), np.arange(256))
    for relu in (False, True):
        model = tmp_path / f"qsum_{relu}.onnx"
        onnx.save(_sum_model(cases, "Sum", relu), model)
        feeds = {}
        for i, (sa, sb, _, za, zb, _) in enumerate(cases):
            for x, code, s, z in (("a", grid[0], sa, za), ("b", grid[1], sb, zb)):
                feeds[f"{x}{i}"] = ((code - z).astype(np.float32) * s).reshape(1, 1, 256, 256)
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        want = session.run(None, feeds)
        out = tmp_path / f"out_{relu}"
        assert main(["compile", str(model), "-t", "host", "-o", str(out)]) == 0
        kernels = json.loads((out / "report.json").read_text())["kernels"].values()
        assert any("qsum" in op for k in kernels for op in k["ops"])  # the int8 add kernel
        names = [i.name for i in session.get_inputs()]
        files = []
        for name in names:
            (tmp_path / f"{name}.bin").write_bytes(feeds[name].tobytes())
            files.append(tmp_path / f"{name}.bin")
        outs = [tmp_path / f"y{i}.bin" for i in range(len(cases))]
        subprocess.run([out / "model", *files, *outs], check=True)
        for i, (path, ref) in enumerate(zip(outs, want)):
            got = np.fromfile(path, np.float32).reshape(ref.shape)
            off = np.count_nonzero(np.rint((got - ref) / cases[i][2]))
            assert off == 0, f"relu={relu} case {i}: {off} of {ref.size} codes differ"


def _bn_case(channels: int):
    """BatchNormalization parameters (gamma int8, beta int32 on their own grids, as
    onnxruntime.quantization writes them) for which x * new_scale + new_bias rounded once (an
    FMA) changes some output code of onnxruntime's float32 formula (256 input codes)."""
    rng = np.random.default_rng(4)
    s_x, z_x, z_y = np.float32(0.031), 131, 117
    s_g, s_b = np.float32(0.01), np.float32(1e-4)
    x = (np.arange(256) - z_x).astype(np.float32) * s_x
    while True:
        g_q = rng.integers(-127, 128, channels).astype(np.int8)
        b_q = rng.integers(-20000, 20000, channels).astype(np.int32)
        gamma, beta = g_q.astype(np.float32) * s_g, b_q.astype(np.float32) * s_b
        mean = rng.standard_normal(channels).astype(np.float32)
        var = rng.uniform(0.5, 2.0, channels).astype(np.float32)
        s_y = np.float32(rng.uniform(0.02, 0.04))
        new_scale = (np.float32(1) / np.sqrt(var + np.float32(1e-5))) * gamma
        new_bias = beta - mean * new_scale
        ref = np.rint((x[None] * new_scale[:, None] + new_bias[:, None]) / s_y)
        fused = (x[None].astype(np.float64) * new_scale[:, None] + new_bias[:, None])
        fma = np.rint(fused.astype(np.float32) / s_y)
        inside = (ref + z_y >= 0) & (ref + z_y <= 255)
        if ((ref != fma) & inside).any():
            return s_x, z_x, s_y, z_y, (g_q, s_g), (b_q, s_b), mean, var


@pytest.mark.parametrize("target, c", [
    ("host", 64), pytest.param("cortex-m4", 16, marks=needs_target("cortex-m4")),
    pytest.param("cortex-m55", 16, marks=needs_target("cortex-m55"))])
def test_batch_norm_between_qdq_matches_onnxruntime_bit_for_bit(tmp_path, target, c):
    """DequantizeLinear -> BatchNormalization -> QuantizeLinear (a light_* model's layer):
    edgec's int8 kernel gives onnxruntime's code for every input code and channel, on the
    host, the M4 (single-precision FPU, scalar) and the M55 (Helium vectors)."""
    s_x, z_x, s_y, z_y, gamma, beta, mean, var = _bn_case(c)
    init = [numpy_helper.from_array(np.array(s_x, np.float32), "s_x"),
            numpy_helper.from_array(np.array(z_x, np.uint8), "z_x"),
            numpy_helper.from_array(np.array(s_y, np.float32), "s_y"),
            numpy_helper.from_array(np.array(z_y, np.uint8), "z_y")]
    init += [numpy_helper.from_array(v, n) for n, v in
             (("g_q", gamma[0]), ("s_g", np.array(gamma[1])), ("z_g", np.array(0, np.int8)),
              ("b_q", beta[0]), ("s_b", np.array(beta[1])), ("z_b", np.array(0, np.int32)),
              ("mean", mean), ("var", var))]
    nodes = [helper.make_node("DequantizeLinear", ["g_q", "s_g", "z_g"], ["gamma"]),
             helper.make_node("DequantizeLinear", ["b_q", "s_b", "z_b"], ["beta"]),
             helper.make_node("QuantizeLinear", ["x", "s_x", "z_x"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_x", "z_x"], ["xd"]),
             helper.make_node("BatchNormalization", ["xd", "gamma", "beta", "mean", "var"],
                              ["bn"], epsilon=1e-5),
             helper.make_node("QuantizeLinear", ["bn", "s_y", "z_y"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s_y", "z_y"], ["y"])]
    shape = [1, c, 16, 16]
    graph = helper.make_graph(nodes, "qbn", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, shape)], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, shape)], init)
    model = tmp_path / "qbn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                ir_version=8), model)
    codes = np.broadcast_to(np.arange(256).reshape(1, 1, 16, 16), shape)
    x = ((codes - z_x).astype(np.float32) * s_x).copy()
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    out = tmp_path / "out"
    assert main(["compile", str(model), "-t", target, "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert any("qaffine" in op for k in report["kernels"].values() for op in k["ops"])
    family = json.loads((out / "edgec.json").read_text())["family"]
    got = backend_for(family).run(out, [x])[0].reshape(want.shape)
    off = np.count_nonzero(np.rint((got - want) / s_y))
    assert off == 0, f"{off} of {want.size} codes differ"


def test_concat_rescale_matches_onnxruntime_for_every_code(tmp_path):
    """DequantizeLinear x2 -> Concat -> QuantizeLinear with three grids: each operand is moved
    to the output grid by its own qrescale kernel (the concat itself is a copy), code for code
    as onnxruntime's QLinearConcat table gives it."""
    rng = np.random.default_rng(7)
    grids = [(np.float32(s), int(z)) for s, z in zip(rng.uniform(0.01, 0.1, 3),
                                                      rng.integers(40, 220, 3))]
    (sa, za), (sb, zb), (sy, zy) = grids
    init = [numpy_helper.from_array(np.array(v, np.float32 if n[0] == "s" else np.uint8), n)
            for n, v in (("sa", sa), ("za", za), ("sb", sb), ("zb", zb), ("sy", sy), ("zy", zy))]
    nodes = []
    for x in "ab":
        nodes += [helper.make_node("QuantizeLinear", [x, f"s{x}", f"z{x}"], [f"{x}q"]),
                  helper.make_node("DequantizeLinear", [f"{x}q", f"s{x}", f"z{x}"], [f"{x}d"])]
    nodes += [helper.make_node("Concat", ["ad", "bd"], ["c"], axis=1),
              helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["yq"]),
              helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    shape = [1, 4, 8, 8]
    graph = helper.make_graph(
        nodes, "qconcat", [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)
                           for x in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], init)
    model = tmp_path / "qconcat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                ir_version=8), model)
    codes = np.arange(256).reshape(shape)
    feeds = {"a": ((codes - za).astype(np.float32) * sa),
             "b": ((codes[:, ::-1] - zb).astype(np.float32) * sb).copy()}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    want = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]
    out = tmp_path / "out"
    assert main(["compile", str(model), "-t", "host", "-o", str(out)]) == 0
    kernels = json.loads((out / "report.json").read_text())["kernels"].values()
    assert any("qrescale" in op for k in kernels for op in k["ops"])
    for x in "ab":
        (tmp_path / f"{x}.bin").write_bytes(feeds[x].tobytes())
    subprocess.run([out / "model", tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "y.bin"],
                   check=True)
    got = np.fromfile(tmp_path / "y.bin", np.float32).reshape(want.shape)
    off = np.count_nonzero(np.rint((got - want) / sy))
    assert off == 0, f"{off} of {want.size} codes differ"
