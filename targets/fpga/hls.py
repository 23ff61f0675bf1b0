"""The one module that talks to hls4ml: write the project, build and run its C emulation.

The planned layer graph is rebuilt as a small PyTorch module (hls4ml's PyTorch front end is
its best-tested path for MLPs and CNNs, including the channels-first to channels-last
conversion; branches meet in ``torch.add`` / ``torch.cat``, which it converts to Merge and
Concatenate layers), with every tensor type set explicitly in the hls4ml config, so hls4ml
infers nothing. The C emulation library hls4ml builds is loaded directly with ctypes, both to predict
and to read each layer's output (hls4ml's trace), without rebuilding the project.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
from pathlib import Path

import numpy as np

from toolchain import progress
from toolchain.errors import ToolFailedError, ToolMissingError

from .config import FpgaConfig, FpgaDevice
from .plan import Design

log = logging.getLogger(__name__)

HLS4ML_VERSION = "1.3.0"
STRATEGY_NAMES = {"latency": "Latency", "resource": "Resource",
                  "distributed_arithmetic": "distributed_arithmetic"}
INPUT_LAYER = "x"  # the argument name of the generated module's forward()
TB_SAMPLES = 16


def _layer_module(p):
    """The PyTorch module hls4ml converts for one planned layer (None: a merge function)."""
    from torch import nn

    layer = p.layer
    if layer.kind == "dense":
        return _with_weights(nn.Linear(layer.fan_in, layer.n_out, bias=True), p)
    if layer.kind in ("conv1d", "conv2d"):
        co, ci, *k = layer.weight.shape
        conv = nn.Conv2d if layer.kind == "conv2d" else nn.Conv1d
        return _with_weights(conv(ci, co, tuple(k), stride=layer.attrs["stride"],
                                  padding=layer.attrs["padding"], bias=True), p)
    if layer.kind == "dwconv2d":
        c, _, kh, kw = layer.weight.shape
        return _with_weights(DepthwiseConv2d(c, (kh, kw), layer.attrs["stride"],
                                             layer.attrs["padding"]), p)
    simple = {"relu": nn.ReLU, "relu6": nn.ReLU6, "flatten": nn.Flatten}
    if layer.kind in simple:
        return simple[layer.kind]()
    if layer.kind == "relu1":
        return nn.Hardtanh(0.0, 1.0)
    if layer.kind == "softmax":
        return nn.Softmax(dim=-1)
    if layer.kind == "maxpool2d":
        return nn.MaxPool2d(layer.attrs["kernel"])
    if layer.kind == "avgpool2d":
        return nn.AvgPool2d(layer.attrs["kernel"])
    if layer.kind in ("add", "concat"):
        return None
    raise AssertionError(layer.kind)  # lower.py only produces the kinds above


def _depthwise_module():
    import torch
    from hls4ml.utils.torch import HLS4MLModule

    class Depthwise2d(HLS4MLModule):
        """One 2D filter per channel; a leaf for hls4ml's tracer, converted by
        ``_depthwise_handler`` (hls4ml 1.3's PyTorch front end refuses a Conv2d with groups;
        the class name has no "Conv" so that its Conv checks leave it alone)."""

        def __init__(self, channels, kernel, stride, padding):
            super().__init__()
            self.conv = torch.nn.Conv2d(channels, channels, kernel, stride, padding,
                                        groups=channels)
            self.weight, self.bias = self.conv.weight, self.conv.bias

        def forward(self, x):
            return self.conv(x)

    return Depthwise2d


def DepthwiseConv2d(*args):  # noqa: N802  (built lazily: hls4ml imports torch)
    global _DEPTHWISE
    if _DEPTHWISE is None:
        _DEPTHWISE = _depthwise_module()
    return _DEPTHWISE(*args)


_DEPTHWISE = None


def _depthwise_handler(operation, layer_name, input_names, input_shapes, node, class_object,
                       data_reader, config):
    """hls4ml's DepthwiseConv2D layer (reached from Keras only in 1.3) from the module's
    channels-first weight (C, 1, kh, kw); the channels-last conversion transposes it to
    (kh, kw, 1, C), the order of Keras' (kh, kw, C, 1)."""
    conv = class_object.conv
    _, c, h, w = input_shapes[0]
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    layer = {"class_name": "DepthwiseConv2D", "name": layer_name, "inputs": input_names,
             "data_format": "channels_first", "depthwise_data": conv.weight.data.numpy(),
             "bias_data": conv.bias.data.numpy(), "in_height": h, "in_width": w,
             "n_chan": c, "depth_multiplier": 1, "n_filt": c, "filt_height": kh,
             "filt_width": kw, "stride_height": sh, "stride_width": sw, "pad_top": ph,
             "pad_bottom": ph, "pad_left": pw, "pad_right": pw,
             "out_height": (h + 2 * ph - kh) // sh + 1, "out_width": (w + 2 * pw - kw) // sw + 1}
    return layer, [input_shapes[0][0], c, layer["out_height"], layer["out_width"]]


def _with_weights(m, p):
    import torch

    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(p.quantized_weight().astype(np.float32)))
        m.bias.copy_(torch.from_numpy(p.quantized_bias().astype(np.float32)))
    return m


def _torch_module(design: Design):
    """The design as a module whose forward follows its graph: modules for the layers,
    ``torch.add`` / ``torch.cat`` for the merges (hls4ml converts those functions)."""
    import torch
    from torch import nn

    steps = [(p.name, p.layer.kind, p.layer.inputs, _layer_module(p)) for p in design.layers]

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            for name, _, _, mod in steps:
                if mod is not None:
                    self.add_module(name, mod)

        def forward(self, x):
            values = {"": x}
            for name, kind, inputs, _ in steps:
                args = [values[i] for i in inputs]
                if kind == "add":
                    values[name] = torch.add(args[0], args[1])
                elif kind == "concat":
                    values[name] = torch.cat((args[0], args[1]), dim=1)
                else:
                    values[name] = getattr(self, name)(args[0])
            return values[steps[-1][0]]

    return Graph().eval()


def hls_names(module, design: Design) -> dict[str, str]:
    """edgec layer name -> hls4ml's (the fx node's: modules keep theirs, merges become
    ``add``, ``add_1``, ``cat``... in the order they are called)."""
    from hls4ml.utils.torch import CustomFXTracer

    graph = CustomFXTracer().trace(module)
    calls = [n.name for n in graph.nodes if n.op in ("call_module", "call_function")]
    if len(calls) != len(design.layers):
        raise ToolFailedError(f"tracing the design found {len(calls)} operations for "
                              f"{len(design.layers)} layers")
    return {p.name: c for p, c in zip(design.layers, calls)}


def _relu_handler(activation: str):
    """hls4ml 1.3's PyTorch front end has no ReLU6 / Hardtanh; its HLS library has relu6 and
    relu1 (``nnet_activation.h``): map the modules to those activations."""

    def handler(operation, layer_name, input_names, input_shapes, node, class_object,
                data_reader, config):
        if operation == "Hardtanh" and (class_object.min_val, class_object.max_val) != (0, 1):
            raise Exception("only Hardtanh(0, 1) maps to an hls4ml activation (relu1)")
        layer = {"class_name": "Activation", "activation": activation, "name": layer_name,
                 "inputs": input_names}
        return layer, input_shapes[0]

    return handler


def _register_handlers(hls4ml) -> None:
    from hls4ml.converters.pytorch_to_hls import get_supported_pytorch_layers

    known = set(get_supported_pytorch_layers())
    for cls, act in (("ReLU6", "relu6"), ("Hardtanh", "relu1")):
        if cls not in known:
            hls4ml.converters.register_pytorch_layer_handler(cls, _relu_handler(act))
    if "Depthwise2d" not in known:
        hls4ml.converters.register_pytorch_layer_handler("Depthwise2d", _depthwise_handler)


def _hls_config(hls4ml, module, design: Design, cfg: FpgaConfig) -> dict:
    channels_last = "internal" if cfg.io_type == "io_stream" else "full"
    conf = hls4ml.utils.config_from_pytorch_model(
        module, input_shape=tuple(design.graph.input_shape), granularity="name",
        backend=cfg.hls_backend, default_precision=cfg.default_precision.hls(),
        default_reuse_factor=1, channels_last_conversion=channels_last)
    conf["Model"]["Strategy"] = STRATEGY_NAMES[cfg.strategy]
    conf["Model"]["Precision"] = cfg.default_precision.hls()
    names = conf["LayerName"]
    names.setdefault(INPUT_LAYER, {}).setdefault("Precision", {})
    names[INPUT_LAYER]["Precision"]["result"] = design.input_type.hls()
    names[INPUT_LAYER]["Trace"] = True
    hls = hls_names(module, design)
    for p in design.layers:
        entry = names.setdefault(hls[p.name], {})
        prec = entry.setdefault("Precision", {})
        prec["result"] = p.result_type.hls()
        entry["Trace"] = True
        if p.has_weights:
            prec.update(weight=p.weight_type.hls(), bias=p.bias_type.hls(),
                        accum=p.accum_type.hls())
            entry["ReuseFactor"] = p.reuse_factor
            entry["Strategy"] = STRATEGY_NAMES[cfg.strategy]
        elif p.accum_type is not None:
            prec["accum"] = p.accum_type.hls()
    return conf


def write_project(design: Design, cfg: FpgaConfig, device: FpgaDevice, out: Path) -> dict:
    """Write the hls4ml project into ``out`` and build its C emulation; return what run needs."""
    try:
        import hls4ml
    except ImportError:
        raise ToolMissingError(f"hls4ml is not installed: pip install hls4ml=={HLS4ML_VERSION}") \
            from None
    _register_handlers(hls4ml)
    module = _torch_module(design)
    conf = _hls_config(hls4ml, module, design, cfg)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), progress.spinner("hls4ml: writing the project"):
            model = hls4ml.converters.convert_from_pytorch_model(
                module, output_dir=str(out), project_name=cfg.project_name,
                backend=cfg.hls_backend, part=device.part, clock_period=cfg.clock_period_ns,
                io_type=cfg.io_type, hls_config=conf)
            model.config.trace_output = True
            model.write()
    except Exception as exc:  # hls4ml raises plain Exceptions for conversion and build errors
        log.debug(chatter.getvalue())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolFailedError(f"hls4ml could not build the project: {first}") from None
    log.debug(chatter.getvalue())
    build_emulation(out, cfg.project_name)
    trace = {}
    for layer in model.get_layers():
        if layer.get_attr("function_cpp", None) and layer.get_attr("trace", False):
            trace[layer.name] = int(np.prod(layer.get_output_variable().shape))
    out_var = model.get_output_variables()[0]
    info = {"project_dir": out.name, "project_name": cfg.project_name,
            "hls4ml_version": hls4ml.__version__, "backend": cfg.hls_backend,
            "io_type": cfg.io_type, "part": device.part,
            "input_layout": "channels_first" if cfg.io_type == "io_parallel" else "channels_last",
            "output_size": int(np.prod(out_var.shape)), "trace_sizes": trace}
    write_testbench_data(out, info, design.graph.input_shape)
    return info


def write_testbench_data(out: Path, info: dict, input_shape: tuple[int, ...]) -> None:
    """Seeded inputs and the C emulation's outputs for hls4ml's C++ testbench (tb_data/),
    so csim/cosim in Vitis compare the synthesized design with these values."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((TB_SAMPLES,) + tuple(input_shape))
    emu = CEmulation(out, info)
    y = emu.predict(x)
    tb = out / "tb_data"
    tb.mkdir(exist_ok=True)
    np.savetxt(tb / "tb_input_features.dat", emu._prepare(x), fmt="%.10g")
    np.savetxt(tb / "tb_output_predictions.dat", y, fmt="%.10g")


def build_emulation(project_dir: Path, project_name: str) -> Path:
    """Build the C emulation library as hls4ml's build_lib.sh does, with one difference.

    The weights directory is compiled in relative (``weights``, read from ``firmware/``), so
    the folder can be moved: edgec builds in a staging folder and renames it into place.
    """
    from concurrent.futures import ThreadPoolExecutor

    from toolchain.tools import require, run_tool

    cxx = require("g++", "apt-get install g++")
    flags = ["-O3", "-fPIC", "-std=c++17", "-Ifirmware/ap_types/", '-DWEIGHTS_DIR="weights"']
    units = [(f"firmware/{project_name}.cpp", f"{project_name}.o"),
             (f"{project_name}_bridge.cpp", f"{project_name}_bridge.o")]
    lib = project_dir / "firmware" / f"{project_name}-edgec.so"
    with progress.spinner("hls4ml: compiling the C emulation"), \
            ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(run_tool, [cxx, *flags, "-c", src, "-o", obj], cwd=project_dir,
                            what=f"compiling the C emulation ({src})", timeout=900)
                for src, obj in units]
        for job in jobs:
            job.result()
        run_tool([cxx, "-shared", *(o for _, o in units), "-o", lib.relative_to(project_dir)],
                 cwd=project_dir, what="linking the C emulation")
    for _, obj in units:
        (project_dir / obj).unlink(missing_ok=True)
    return lib


class _TraceData(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("data", ctypes.c_void_p)]


class CEmulation:
    """hls4ml's compiled C++ model (``firmware/<project>-*.so``), run sample by sample."""

    def __init__(self, project_dir: Path, info: dict):
        self.dir = Path(project_dir)
        self.info = info
        libs = sorted((self.dir / "firmware").glob(f"{info['project_name']}-*.so"))
        if not libs:
            raise ToolFailedError(f"no C emulation library in {self.dir / 'firmware'}; "
                                  "compile the folder again with 'edgec compile'")
        self.lib = ctypes.CDLL(str(libs[-1]))
        self.fn = getattr(self.lib, f"{info['project_name']}_double")
        self.fn.restype = None
        self.fn.argtypes = [ctypes.POINTER(ctypes.c_double)] * 2

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.info["input_layout"] == "channels_last" and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        elif self.info["input_layout"] == "channels_last" and x.ndim == 3:  # (N, C, W)
            x = x.transpose(0, 2, 1)
        return np.ascontiguousarray(x.reshape(x.shape[0], -1))

    def predict(self, x: np.ndarray, desc: str = "") -> np.ndarray:
        """One output row per sample; with ``desc``, a progress bar over the samples."""
        flat = self._prepare(x)
        out = np.zeros((flat.shape[0], self.info["output_size"]), dtype=np.float64)
        rows = range(flat.shape[0])
        with self._in_firmware():
            for i in progress.bar(rows, desc=desc, unit="sample") if desc else rows:
                row = np.ascontiguousarray(flat[i])
                res = out[i]
                self.fn(row.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                        res.ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
        return out

    @contextlib.contextmanager
    def _in_firmware(self):
        """The library reads its weights from ``weights/`` on the first call (see build)."""
        cwd = os.getcwd()
        os.chdir(self.dir / "firmware")
        try:
            yield
        finally:
            os.chdir(cwd)

    def trace(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Each traced layer's output for every sample (values exactly as the C++ holds them)."""
        sizes = self.info["trace_sizes"]
        flat = self._prepare(x)
        result = {name: np.zeros((flat.shape[0], n)) for name, n in sizes.items()}
        self.lib.allocate_trace_storage.argtypes = [ctypes.c_size_t]
        self.lib.collect_trace_output.argtypes = [ctypes.POINTER(_TraceData)]
        entries = (_TraceData * len(sizes))()
        out = np.zeros(self.info["output_size"], dtype=np.float64)
        self.lib.allocate_trace_storage(ctypes.sizeof(ctypes.c_double))
        try:
            with self._in_firmware():
                for i in range(flat.shape[0]):
                    row = np.ascontiguousarray(flat[i])
                    self.fn(row.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
                    self.lib.collect_trace_output(entries)
                    for e in entries:
                        name = e.name.decode()
                        n = sizes[name]
                        buf = (ctypes.c_double * n).from_address(e.data)
                        result[name][i] = np.frombuffer(buf, dtype=np.float64, count=n)
        finally:
            self.lib.free_trace_storage()
        return result
