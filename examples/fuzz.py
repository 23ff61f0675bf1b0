"""Fuzz edgec's input handling: every broken file must give one clean error line.

Generates truncated, bit-flipped and structurally mutated ONNX files (from small onnx.helper
graphs and, unless --no-zoo, the zoo models exported by ``edgec compress``) and TOML config
files (wrong types, unknown keys, garbage bytes, deep nesting, truncation), runs
``edgec compile -t host`` / ``edgec compile --config`` / ``edgec compress --config`` on each
in a subprocess with a timeout, and classifies the outcome:

- ``ok``         exit 0
- ``error``      a clean error: exit 1-4 and exactly one stderr line starting 'edgec: error:',
                 no traceback
- ``unclean``    exit 1-4 but not exactly one 'edgec: error:' line
- ``traceback``  a Python traceback (any exit code)
- ``crash``      killed by a signal or an unexpected exit code
- ``hang``       still running after --timeout seconds

    python examples/fuzz.py                         # 300 cases, seed 0, 2 jobs
    python examples/fuzz.py --count 60 --no-zoo --keep /tmp/fuzz-fail
    python examples/fuzz.py --in-process            # one process, toolchain.cli.main (faster)

Prints the counts per outcome and per mutation, then each failing case (its argv and the last
stderr lines); exits 1 if any case failed. tests/test_fuzz.py runs a fixed seeded sample of
the same cases in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GOOD = ("ok", "error")
INTS = onnx.AttributeProto.INTS
ERROR_PREFIX = "edgec: error:"


# ---------------------------------------------------------------- seed models

# Each seed graph as data: (op, inputs, outputs, attributes) per node, the graph's inputs and
# outputs as (name, elem type, shape), and the random float weights as name -> shape.
SEED_GRAPHS = {
    "tiny_mlp": dict(
        nodes=[("MatMul", ["x", "w1"], ["m1"], {}), ("Add", ["m1", "b1"], ["a1"], {}),
               ("Relu", ["a1"], ["r1"], {}), ("Gemm", ["r1", "w2", "b2"], ["y"], {"transB": 1})],
        inputs=[("x", TensorProto.FLOAT, [1, 8])], outputs=[("y", TensorProto.FLOAT, [1, 4])],
        weights={"w1": (8, 6), "b1": (6,), "w2": (4, 6), "b2": (4,)}),
    "tiny_cnn": dict(
        nodes=[("Conv", ["x", "wc", "bc"], ["c"],
                {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3], "strides": [1, 1]}),
               ("Relu", ["c"], ["r"], {}),
               ("MaxPool", ["r"], ["p"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
               ("Flatten", ["p"], ["f"], {"axis": 1}),
               ("Gemm", ["f", "wf", "bf"], ["logits"], {"transB": 1}),
               ("Softmax", ["logits"], ["y"], {"axis": 1})],
        inputs=[("x", TensorProto.FLOAT, [1, 2, 6, 6])], outputs=[("y", TensorProto.FLOAT, [1, 3])],
        weights={"wc": (4, 2, 3, 3), "bc": (4,), "wf": (3, 36), "bf": (3,)}),
    # an embedding lookup: int64 indices into a constant table (opset 13: ReduceMean's axes)
    "tiny_gather": dict(
        nodes=[("Gather", ["table", "idx"], ["e"], {"axis": 0}),
               ("ReduceMean", ["e"], ["y"], {"axes": [1], "keepdims": 0})],
        inputs=[("idx", TensorProto.INT64, [1, 5])], outputs=[("y", TensorProto.FLOAT, [1, 4])],
        weights={"table": (10, 4)}, opset=13),
}


def seed_graph(name: str) -> onnx.ModelProto:
    spec = SEED_GRAPHS[name]
    rng = np.random.default_rng(len(name))
    nodes = [helper.make_node(op, ins, outs, name=f"{op.lower()}{i}", **attrs)
             for i, (op, ins, outs, attrs) in enumerate(spec["nodes"])]
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), w)
             for w, shape in spec["weights"].items()]
    values = [[helper.make_tensor_value_info(*v) for v in spec[k]] for k in ("inputs", "outputs")]
    graph = helper.make_graph(nodes, name, *values, inits)
    return helper.make_model(graph, ir_version=8,
                             opset_imports=[helper.make_opsetid("", spec.get("opset", 17))])




def zoo_models(root: Path, names=("mlp", "cnn")) -> dict[str, onnx.ModelProto]:
    """The zoo models exported by ``edgec compress`` (trained weights come from the cache)."""
    from toolchain.cli import main

    out = {}
    for name in names:
        path = root / f"zoo_{name}.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            if main(["compress", name, "-o", str(path)]) != 0:
                raise SystemExit(f"fuzz: could not export zoo model {name}")
        out[f"zoo_{name}"] = onnx.load(str(path))
    return out


# ---------------------------------------------------------------- ONNX mutations

def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _dims(vi: onnx.ValueInfoProto):
    return vi.type.tensor_type.shape.dim


def m_truncate(rng, data: bytes) -> bytes:
    return data[:rng.randrange(0, max(1, len(data)))]


def m_bitflip(rng, data: bytes) -> bytes:
    buf = bytearray(data)
    # flip bits where the structure is, the first and last kilobytes, as often as in weights
    for _ in range(rng.choice((1, 2, 4, 16))):
        region = rng.choice(("head", "tail", "any"))
        if region == "head":
            i = rng.randrange(0, min(len(buf), 1024))
        elif region == "tail":
            i = rng.randrange(max(0, len(buf) - 1024), len(buf))
        else:
            i = rng.randrange(0, len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def m_garbage_run(rng, data: bytes) -> bytes:
    buf = bytearray(data)
    i = rng.randrange(0, len(buf))
    n = rng.randrange(1, 64)
    buf[i:i + n] = bytes(rng.randrange(256) for _ in range(n))
    return bytes(buf)


def s_drop_initializer(rng, m):
    if m.graph.initializer:
        del m.graph.initializer[rng.randrange(len(m.graph.initializer))]


def s_wrong_dtype(rng, m):
    t = rng.choice(list(m.graph.initializer))
    t.data_type = rng.choice([0, TensorProto.STRING, TensorProto.BFLOAT16, TensorProto.INT4,
                              TensorProto.FLOAT8E4M3FN, TensorProto.DOUBLE, TensorProto.INT8,
                              TensorProto.BOOL, TensorProto.COMPLEX64, 77])


def s_wrong_input_dtype(rng, m):
    vi = rng.choice(list(m.graph.input) + list(m.graph.output))
    vi.type.tensor_type.elem_type = rng.choice(
        [TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT4, TensorProto.FLOAT8E5M2,
         TensorProto.STRING, TensorProto.UINT64, TensorProto.BOOL, TensorProto.INT32])


def s_wrong_dims(rng, m):
    t = rng.choice(list(m.graph.initializer))
    if t.dims and rng.random() < 0.5:
        t.dims[rng.randrange(len(t.dims))] += rng.choice((-1, 1, 3))
    else:
        t.dims.append(rng.choice((1, 2)))


def s_dangling_input(rng, m):
    node = rng.choice(list(m.graph.node))
    node.input[rng.randrange(len(node.input))] = "no_such_tensor"


def s_cycle(rng, m):
    if len(m.graph.node) < 2:
        return
    i = rng.randrange(len(m.graph.node) - 1)
    j = rng.randrange(i + 1, len(m.graph.node))
    m.graph.node[i].input[0] = m.graph.node[j].output[0]


def s_self_loop(rng, m):
    node = rng.choice(list(m.graph.node))
    node.input[0] = node.output[0]


def s_duplicate_output(rng, m):
    if len(m.graph.node) >= 2:
        a, b = rng.sample(range(len(m.graph.node)), 2)
        m.graph.node[a].output[0] = m.graph.node[b].output[0]


def _input_dim(rng, m, value):
    vi = rng.choice(list(m.graph.input))
    dims = _dims(vi)
    d = dims[rng.randrange(len(dims))]
    d.ClearField("dim_param")
    d.dim_value = value


def s_negative_dim(rng, m):
    _input_dim(rng, m, rng.choice((-1, -7)))


def s_zero_dim(rng, m):
    _input_dim(rng, m, 0)


def s_huge_dim(rng, m):
    _input_dim(rng, m, rng.choice((2 ** 31, 2 ** 40, 10 ** 6, 2 ** 62)))


def s_symbolic_dims(rng, m):
    for vi in m.graph.input:
        for d in _dims(vi):
            d.dim_param = "N"


def s_drop_shape(rng, m):
    rng.choice(list(m.graph.input)).type.tensor_type.ClearField("shape")


def s_rank_change(rng, m):
    vi = rng.choice(list(m.graph.input))
    if rng.random() < 0.5 and len(_dims(vi)) > 1:
        del _dims(vi)[-1]
    else:
        _dims(vi).add().dim_value = 1


def s_unknown_domain(rng, m):
    node = rng.choice(list(m.graph.node))
    node.domain = rng.choice(("com.fuzz", "ai.onnx.ml", "com.microsoft"))
    if node.domain not in {o.domain for o in m.opset_import}:
        m.opset_import.append(helper.make_opsetid(node.domain, 1))


def s_unknown_op(rng, m):
    rng.choice(list(m.graph.node)).op_type = rng.choice(("FuzzOp", "conv", "", "Relu2"))


def s_bad_attribute(rng, m):
    node = rng.choice(list(m.graph.node))
    choices = [
        helper.make_attribute("axis", rng.choice((99, -99))),
        helper.make_attribute("kernel_shape", rng.choice(([0, 0], [-1, 3], [100, 100], [3]))),
        helper.make_attribute("strides", rng.choice(([0, 0], [-1, -1], [1]))),
        helper.make_attribute("pads", rng.choice(([1, 1], [-2, -2, -2, -2], [50] * 4))),
        helper.make_attribute("dilations", [0, 0]),
        helper.make_attribute("group", rng.choice((0, 3, -1))),
        helper.make_attribute("transB", 7),
        helper.make_attribute("alpha", "not a float"),
        helper.make_attribute("auto_pad", "FUZZ"),
        helper.make_attribute("axes", [5, 5]),
        helper.make_attribute("keepdims", 2),
        helper.make_attribute("fuzz_unknown", 1),
    ]
    attr = rng.choice(choices)
    for i, a in enumerate(node.attribute):
        if a.name == attr.name:
            del node.attribute[i]
            break
    node.attribute.append(attr)


def s_attribute_wrong_type(rng, m):
    nodes = [n for n in m.graph.node if n.attribute]
    if nodes:
        node = rng.choice(nodes)
        a = rng.choice(list(node.attribute))
        name = a.name
        node.attribute.remove(a)
        node.attribute.append(rng.choice((helper.make_attribute(name, 1.5),
                                          helper.make_attribute(name, "x"),
                                          helper.make_attribute(name, [1.0, 2.0]),
                                          helper.make_attribute(name, [], attr_type=INTS))))


def s_drop_node(rng, m):
    del m.graph.node[rng.randrange(len(m.graph.node))]


def s_drop_output(rng, m):
    del m.graph.output[:]


def s_missing_output_producer(rng, m):
    m.graph.output[0].name = "never_computed"


def s_opset(rng, m):
    m.opset_import[0].version = rng.choice((0, 1, 6, 99, 10 ** 6))


def s_ir_version(rng, m):
    m.ir_version = rng.choice((0, 1, 3, 99))


def s_raw_data_short(rng, m):
    t = rng.choice(list(m.graph.initializer))
    data = numpy_helper.to_array(t).tobytes()
    t.ClearField("float_data")
    t.raw_data = data[:rng.randrange(0, max(1, len(data)))]


def s_nan_weights(rng, m):
    t = rng.choice(list(m.graph.initializer))
    arr = numpy_helper.to_array(t).copy()
    if arr.dtype.kind == "f":
        arr.flat[rng.randrange(arr.size)] = rng.choice((np.nan, np.inf, -np.inf, 3e38))
        t.CopyFrom(numpy_helper.from_array(arr, t.name))


def s_external_data(rng, m):
    t = rng.choice(list(m.graph.initializer))
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=rng.choice(("missing.bin", "../../etc/passwd",
                                                          "/dev/zero")))


def s_initializer_as_input(rng, m):
    t = rng.choice(list(m.graph.initializer))
    m.graph.input.append(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, [7]))


def s_empty_names(rng, m):
    node = rng.choice(list(m.graph.node))
    node.output[0] = ""


def s_int_input_to_float_op(rng, m):
    vi = m.graph.input[0]
    vi.type.tensor_type.elem_type = TensorProto.INT64


STRUCTURAL = {name[2:]: fn for name, fn in dict(globals()).items() if name.startswith("s_")}
BYTEWISE = {"truncate": m_truncate, "bitflip": m_bitflip, "garbage_run": m_garbage_run}


# ---------------------------------------------------------------- TOML mutations

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(v, "nan" if v != v else repr(v))
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _toml(table: str, items: dict) -> str:
    return f"[{table}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in items.items())


# Values of another type, and odd values of the right type. No huge epoch counts and no
# cache_dir: a valid config then trains for real, which is a slow success, not a hang.
ODD_VALUES = [1, -1, 0, 2 ** 70, 1.5, -0.5, float("nan"), float("inf"), True, "", "x",
              "1,2,3", "../../", "\u00e9\u4e2d", [1, 2], [], ["a", 3], {"a": 1}, "1979-05-27"]
TOML_DATES = ["1979-05-27T07:32:00Z", "1979-05-27", "07:32:00"]

COMPRESS_KEYS = ["model", "output", "prune", "prune_scope", "prune_channels", "quantize",
                 "calibration", "steps", "batch", "data", "temperature", "alpha", "lowrank",
                 "distill"]
COMPILE_KEYS = ["model", "target", "output", "input_shape", "pipeline", "schedule", "threads",
                "compiler", "keep_build", "reuse_factor"]


def _base_tables(case_dir: Path, model_path: Path) -> list[tuple[str, dict]]:
    return [
        ("compress", {"model": "cnn", "quantize": "int8",
                      "output": str(case_dir / "cnn_int8.onnx")}),
        ("compress", {"model": "cnn", "prune": 0.5, "epochs": 0, "steps": "prune",
                      "output": str(case_dir / "cnn_p50.onnx")}),
        ("compile", {"model": str(model_path), "target": "host",
                     "output": str(case_dir / "out")}),
        ("compile", {"model": str(model_path), "target": "host", "pipeline": "cpu",
                     "threads": 1, "output": str(case_dir / "out")}),
    ]


def make_toml_case(rng: random.Random, case_dir: Path, model_path: Path) -> tuple[str, str, bytes]:
    command, table = rng.choice(_base_tables(case_dir, model_path))
    table = dict(table)
    keys = COMPRESS_KEYS if command == "compress" else COMPILE_KEYS
    kind = rng.choice(["wrong_type", "wrong_type", "unknown_key", "garbage_bytes",
                       "invalid_utf8", "deep_array", "deep_table", "truncate", "bitflip",
                       "table_not_table", "array_of_tables", "duplicate_key", "date_value",
                       "empty", "wrong_table", "inline_deep"])
    text = None
    if kind == "wrong_type":
        for _ in range(rng.choice((1, 1, 2))):
            table[rng.choice(keys)] = rng.choice(ODD_VALUES)
    elif kind == "unknown_key":
        table[rng.choice(("speed", "fuzz", "Target", "input-shape", "model.x", "threads_"))] = 1
    elif kind == "garbage_bytes":
        return command, kind, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
    elif kind == "invalid_utf8":
        return command, kind, _toml(command, table).encode() + b'\nx = "\xff\xfe\xc3"\n'
    elif kind == "deep_array":
        depth = rng.choice((100, 1000, 5000, 50000))
        text = _toml(command, table) + "deep = " + "[" * depth + "]" * depth + "\n"
    elif kind == "inline_deep":
        depth = rng.choice((100, 2000, 20000))
        text = (_toml(command, table) + "deep = " + "{a = " * depth + "1" + "}" * depth + "\n")
    elif kind == "deep_table":
        depth = rng.choice((50, 500, 3000))
        text = _toml(command, table) + "[" + ".".join(["t"] * depth) + "]\nx = 1\n"
    elif kind in ("truncate", "bitflip"):
        data = _toml(command, table).encode()
        return command, kind, (m_truncate(rng, data) if kind == "truncate"
                               else m_bitflip(rng, data))
    elif kind == "table_not_table":
        text = f"{command} = {_toml_value(rng.choice((1, 'x', [1, 2])))}\n"
    elif kind == "array_of_tables":
        text = f"[[{command}]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
    elif kind == "duplicate_key":
        k = rng.choice(list(table))
        text = _toml(command, table) + f"{k} = {_toml_value(table[k])}\n"
    elif kind == "date_value":
        k = rng.choice(keys)
        text = _toml(command, {x: v for x, v in table.items() if x != k}) + \
            f"{k} = {rng.choice(TOML_DATES)}\n"
    elif kind == "empty":
        text = rng.choice(("", "\n", f"[{command}]\n", "# nothing\n"))
    elif kind == "wrong_table":
        text = _toml(rng.choice(("compile", "compress", "zoo", "other")), table)
    if text is None:
        text = _toml(command, table)
    return command, kind, text.encode()


# ---------------------------------------------------------------- cases

@dataclass
class Case:
    name: str
    family: str            # onnx-bytes, onnx-struct, toml
    mutation: str
    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    dir: Path | None = None


@dataclass
class Outcome:
    case: Case
    kind: str
    rc: int | None
    stderr: str
    seconds: float


def generate(seed: int, count: int, root: Path, zoo: bool = False,
             families: tuple[str, ...] = ("onnx-bytes", "onnx-struct", "toml")) -> list[Case]:
    """``count`` cases under ``root`` (each in its own folder, files written), seeded."""
    rng = random.Random(seed)
    seeds = {name: seed_graph(name) for name in SEED_GRAPHS}
    if zoo:
        seeds.update(zoo_models(root))
    valid = root / "valid_tiny_mlp.onnx"
    onnx.save_model(seeds["tiny_mlp"], str(valid))
    cases = []
    for i in range(count):
        family = families[i % len(families)]
        case_dir = root / f"case{i:04d}"
        case_dir.mkdir(parents=True, exist_ok=True)
        out = str(case_dir / "out")
        if family == "toml":
            command, mutation, data = make_toml_case(rng, case_dir, valid)
            cfg = case_dir / "edgec.toml"
            argv = ([command, "--config", str(cfg)] if command == "compress"
                    else ["compile", str(valid), "--config", str(cfg)]
                    if rng.random() < 0.5 else ["compile", "--config", str(cfg)])
            case = Case(f"case{i:04d}", family, f"{command}:{mutation}", argv,
                        {"edgec.toml": data}, case_dir)
        else:
            seed_name = rng.choice(sorted(seeds))
            model = seeds[seed_name]
            if family == "onnx-bytes":
                mutation = rng.choice(sorted(BYTEWISE))
                data = BYTEWISE[mutation](rng, model.SerializeToString())
            else:
                mutation = rng.choice(sorted(STRUCTURAL))
                m = _copy(model)
                STRUCTURAL[mutation](rng, m)
                if rng.random() < 0.15:  # now and then two at once
                    second = rng.choice(sorted(STRUCTURAL))
                    try:
                        STRUCTURAL[second](rng, m)
                        mutation += "+" + second
                    except (IndexError, ValueError):  # nothing left to mutate that way
                        pass
                data = m.SerializeToString()
            path = case_dir / "model.onnx"
            argv = ["compile", str(path), "-t", "host", "-o", out]
            case = Case(f"case{i:04d}", family, f"{seed_name}:{mutation}", argv,
                        {"model.onnx": data}, case_dir)
        for name, data in case.files.items():
            (case_dir / name).write_bytes(data)
        cases.append(case)
    return cases


def classify(rc: int | None, stderr: str) -> str:
    if rc is None:
        return "hang"
    if "Traceback (most recent call last)" in stderr:
        return "traceback"
    if rc == 0:
        return "ok"
    if 1 <= rc <= 4:
        errors = [ln for ln in stderr.splitlines() if ln.startswith(ERROR_PREFIX)]
        return "error" if len(errors) == 1 else "unclean"
    return "crash"


def run_subprocess(case: Case, timeout: float) -> Outcome:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "toolchain", *case.argv], cwd=case.dir,
                              capture_output=True, text=True, errors="replace", timeout=timeout,
                              env=env)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = None
        err = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) \
            else (exc.stderr or "")
    return Outcome(case, classify(rc, err), rc, err, time.perf_counter() - t0)


def run_in_process(case: Case) -> Outcome:
    """``toolchain.cli.main`` in this process (no timeout): an exception is a traceback."""
    import traceback

    from toolchain.cli import main

    err = io.StringIO()
    t0 = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(case.dir)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(case.argv)
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else 2
            except BaseException:  # noqa: BLE001 - anything else is what we look for
                traceback.print_exc()
                rc = 1
    finally:
        os.chdir(cwd)
    return Outcome(case, classify(rc, err.getvalue()), rc, err.getvalue(),
                   time.perf_counter() - t0)


def summarize(outcomes: list[Outcome], keep: Path | None = None) -> int:
    counts = Counter(o.kind for o in outcomes)
    print("outcomes: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in
                                   ("ok", "error", "unclean", "traceback", "crash", "hang")))
    by_family = Counter((o.case.family, o.kind) for o in outcomes)
    for fam in sorted({o.case.family for o in outcomes}):
        print(f"  {fam:12s} " + ", ".join(f"{k} {n}" for (f, k), n in sorted(by_family.items())
                                         if f == fam))
    bad = [o for o in outcomes if o.kind not in GOOD]
    for o in bad:
        tail = [ln for ln in o.stderr.strip().splitlines() if ln.strip()][-4:]
        print(f"\n{o.kind.upper()} {o.case.name} {o.case.family} {o.case.mutation} "
              f"rc={o.rc} ({o.seconds:.1f} s)\n  edgec {' '.join(o.case.argv)}")
        for ln in tail:
            print("    " + ln[:300])
        if keep is not None:
            shutil.copytree(o.case.dir, keep / o.case.name, dirs_exist_ok=True)
    slowest = max(outcomes, key=lambda o: o.seconds, default=None)
    if slowest is not None:
        print(f"\n{len(outcomes)} cases, slowest {slowest.case.name} {slowest.seconds:.1f} s")
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--jobs", type=int, default=2, help="subprocesses at once")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds before a case hangs")
    p.add_argument("--no-zoo", action="store_true", help="only the onnx.helper seed graphs")
    p.add_argument("--family", action="append", choices=("onnx-bytes", "onnx-struct", "toml"),
                   help="only these case families (repeatable)")
    p.add_argument("--in-process", action="store_true",
                   help="call toolchain.cli.main here (faster; no timeout, a crash ends it)")
    p.add_argument("--keep", type=Path, help="copy failing cases into this folder")
    p.add_argument("--workdir", type=Path, help="where the cases go (default: a temp folder)")
    args = p.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="edgec-fuzz-"))
    families = tuple(args.family or ("onnx-bytes", "onnx-struct", "toml"))
    cases = generate(args.seed, args.count, root, zoo=not args.no_zoo, families=families)
    print(f"{len(cases)} cases in {root}", flush=True)
    t0 = time.perf_counter()
    if args.in_process:
        outcomes = [run_in_process(c) for c in cases]
    else:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            outcomes = []
            for o in pool.map(lambda c: run_subprocess(c, args.timeout), cases):
                outcomes.append(o)
                if o.kind not in GOOD:
                    print(f"  {o.kind}: {o.case.name} {o.case.mutation}", flush=True)
    print(f"ran in {time.perf_counter() - t0:.0f} s")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    rc = summarize(outcomes, args.keep)
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
