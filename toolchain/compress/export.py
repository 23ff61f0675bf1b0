"""Export a (compressed) PyTorch model to ONNX, with QuantizeLinear/DequantizeLinear if quantized.

How: the model is copied, batchnorm after a conv is folded, torch pruning hooks are made
permanent and every fake-quantized layer becomes a plain layer holding its dequantized weight.
That float copy is exported with torch's TorchScript exporter (opset 17, dynamic batch; the
torch.export-based exporter needs onnxscript, which edgec does not depend on). Then, for each
quantized layer, the graph is rewritten into the usual QDQ form:

- its float weight initializer becomes an int8 initializer ``<w>_quantized`` followed by
  ``DequantizeLinear`` (per output channel, ``axis`` 0 for Conv/Gemm weights, 1 for the
  transposed MatMul weights the exporter writes for Linear layers on 3-D inputs or without
  bias; in fixed-point mode one scalar power-of-two scale per layer, no axis);
- the layer's data input gets ``QuantizeLinear -> DequantizeLinear`` (uint8 asymmetric, or
  int8 with zero point 0 for fixed-point; a ``Clip`` first when the type is narrower than 8 bits);
- the model output gets ``QuantizeLinear -> DequantizeLinear`` too.

The batch dimension is static (1 unless asked otherwise) because the ARM and FPGA compilers
need static shapes; ``batch=None`` makes it dynamic.

Layers are matched to initializers by value (the weight, or its transpose), so the mapping does
not depend on the exporter's naming. The file is checked with ``onnx.checker`` (full check),
onnxruntime is compared with the PyTorch model on ``example_input`` (float: max error <= 1e-5 of
the output range; quantized: <= one step of the output quantizer, with graph optimizations off,
where QDQ means exactly what PyTorch's fake quantization computes; in practice the error is 0;
torchao's graphs, whose output is float: 1e-5 of the range plus what one activation step at the
inputs of the final quantized layers can move the output, ``qdq_bound.py``, in at most 10% of
the outputs).
With optimizations on, onnxruntime fuses QDQ into integer kernels whose rounding differs a
little; that error (in output steps) and the argmax agreement are reported, not enforced.
The metadata described in
``toolchain.compress`` is stored under ``metadata_props['edgec.compression']``. The file is
written to a temporary name and renamed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
import torch.nn.utils.prune as tprune
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from toolchain.compress.quantize import (FLOAT_CLASS, QuantLayer, dequantize_in_place,
                                         fold_batchnorm, no_fastpath, output_quant,
                                         weight_qparams)
from toolchain.compress.pt2e import (PT2EQuantized, export_proto, layers_from_graph,
                                     output_from_graph)
from toolchain.compress.qdq_bound import output_step_bound
from toolchain.errors import ConfigError, ModelError, VerificationError
from toolchain.onnx_io import save_model
from toolchain.outdir import staged_file

log = logging.getLogger(__name__)

METADATA_KEY = "edgec.compression"
OPSET = 17
FLOAT_TOLERANCE = 1e-5
# float-output QDQ graphs: the largest share of outputs that may differ by more than
# FLOAT_TOLERANCE (an activation rounded to the neighbouring step); measured 0.06% (U-Net)
MAX_MOVED = 0.1


@dataclass(frozen=True)
class ExportResult:
    path: Path
    quantized: bool
    max_abs_error: float
    tolerance: float  # absolute: 1e-5 x output range (float), one output step (quantized), or
                      # for a float-output QDQ graph the range part plus qdq_bound's step bound
    file_bytes: int
    metadata: dict
    optimized_max_abs_error: float  # onnxruntime with graph optimizations (integer kernels)
    optimized_max_steps: float | None  # the same in output quantization steps
    optimized_argmax_agreement: float  # percent of example rows whose argmax agrees

    def to_json(self) -> dict:
        return {"path": str(self.path), "quantized": self.quantized,
                "max_abs_error": self.max_abs_error, "tolerance": self.tolerance,
                "file_bytes": self.file_bytes,
                "optimized_max_abs_error": self.optimized_max_abs_error,
                "optimized_max_steps": self.optimized_max_steps,
                "optimized_argmax_agreement": self.optimized_argmax_agreement}


def _ort_run(data: bytes, input_name: str, x: np.ndarray, optimize: bool) -> np.ndarray:
    """One onnxruntime run; without optimizations QDQ is computed exactly as written (float
    math on dequantized values), with them onnxruntime fuses QDQ into integer kernels."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the exported model: "
                         f"{str(exc).splitlines()[0]}") from None
    return run_batched(sess, x)


def run_batched(sess, x: np.ndarray) -> np.ndarray:
    """Run a one-input session on all rows of ``x``, in chunks if its batch size is fixed."""
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    x = np.asarray(x)
    x = x.astype(np.float32) if x.dtype.kind == "f" else x.astype(np.int64)
    if fixed is None:
        return sess.run(None, {inp.name: x})[0]
    outs = []
    for i in range(0, len(x), fixed):
        chunk = x[i:i + fixed]
        n = len(chunk)
        if n < fixed:  # pad the last chunk by repeating its first row
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], fixed - n, axis=0)])
        outs.append(sess.run(None, {inp.name: chunk})[0][:n])
    return np.concatenate(outs)


def _deployable(model: nn.Module) -> tuple[nn.Module, dict, dict | None]:
    """A float copy to trace, the per-layer quantization facts, and the output quantizer's."""
    dep = copy.deepcopy(model).eval()
    for m in dep.modules():
        if hasattr(m, "weight_orig"):
            tprune.remove(m, "weight")
    fold_batchnorm(dep)
    layers = {}
    for name, m in dep.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        info = {"op": FLOAT_CLASS.get(type(m), type(m)).__name__,
                "weight_bits": None, "weight_scale_pow2": False, "weight_frac_bits": None,
                "sparsity": 0.0,
                "weight_axis": None, "act_bits": None, "act_signed": None, "act_scale": None,
                "act_zero_point": None, "act_frac_bits": None}
        if isinstance(m, QuantLayer):
            scale, qmin, qmax = weight_qparams(m.weight, m.weight_bits, m.weight_pow2)
            info.update(weight_bits=m.weight_bits, weight_scale_pow2=m.weight_pow2,
                        weight_frac_bits=m.weight_frac_bits(), _scale=scale.numpy(),
                        _range=(qmin, qmax), **m.act_quant.describe())
        layers[name] = info
    out_q = output_quant(dep)
    out_info = out_q.describe() if out_q is not None else None
    dequantize_in_place(dep)
    for name, m in dep.named_modules():
        if name in layers:
            w = m.weight.detach().numpy().copy()
            layers[name]["_weight"] = w
            # of the deployed weights: quantization can round small weights to zero
            layers[name]["sparsity"] = round(float(np.mean(w == 0)), 6)
    return dep, layers, out_info


def _torch_export(model: nn.Module, x: torch.Tensor, input_name: str,
                  output_name: str, batch: int | None) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x[:batch or 1],), buf, dynamo=False, opset_version=OPSET,
                              input_names=[input_name], output_names=[output_name],
                              dynamic_axes=None if batch else
                              {input_name: {0: "batch"}, output_name: {0: "batch"}},
                              do_constant_folding=True)
        except Exception as exc:
            raise ModelError(f"torch.onnx.export failed: {str(exc).splitlines()[0]}") from None
    return onnx.load_model_from_string(buf.getvalue())


def _act_qdq(prefix: str, src: str, act: dict) -> tuple[list, list, str]:
    """Nodes and initializers that fake-quantize tensor ``src``; returns the new tensor name."""
    signed, bits = act["act_signed"], act["act_bits"]
    zp_type = TensorProto.INT8 if signed else TensorProto.UINT8
    qmin = -(2 ** (bits - 1)) if signed else 0
    qmax = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    scale = np.float32(act["act_scale"])
    inits = [numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}_scale"),
             helper.make_tensor(f"{prefix}_zero_point", zp_type, [], [act["act_zero_point"]])]
    nodes = []
    if (qmin, qmax) != ((-128, 127) if signed else (0, 255)):
        lo = np.float32((qmin - act["act_zero_point"]) * scale)
        hi = np.float32((qmax - act["act_zero_point"]) * scale)
        inits += [numpy_helper.from_array(np.array(lo), f"{prefix}_min"),
                  numpy_helper.from_array(np.array(hi), f"{prefix}_max")]
        nodes.append(helper.make_node("Clip", [src, f"{prefix}_min", f"{prefix}_max"],
                                      [f"{prefix}_clipped"], name=f"{prefix}_clip"))
        src = f"{prefix}_clipped"
    nodes += [helper.make_node("QuantizeLinear", [src, f"{prefix}_scale", f"{prefix}_zero_point"],
                               [f"{prefix}_q"], name=f"{prefix}_quantize"),
              helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_scale",
                                                    f"{prefix}_zero_point"],
                               [f"{prefix}_dq"], name=f"{prefix}_dequantize")]
    return nodes, inits, f"{prefix}_dq"


def _undo_shared_initializers(g: onnx.GraphProto) -> None:
    """The exporter keeps one copy of equal initializers and reads the others through
    Identity nodes (e.g. the layers of a freshly built nn.TransformerEncoder, which are deep
    copies of one layer): give each its own initializer again, so every layer has a weight of
    its own to quantize and to name in the metadata."""
    inits = {i.name: i for i in g.initializer}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in inits:
            copy_ = onnx.TensorProto()
            copy_.CopyFrom(inits[node.input[0]])
            copy_.name = node.output[0]
            g.initializer.append(copy_)
            inits[copy_.name] = copy_
        else:
            keep.append(node)
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)


def _rewrite(proto: onnx.ModelProto, layers: dict, out_info: dict | None,
             output_name: str) -> None:
    """Match layers to weight initializers, insert QDQ, fill layers[*]['onnx_weight']."""
    g = proto.graph
    _undo_shared_initializers(g)
    by_value: dict[tuple, list[str]] = {}
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(init)
            by_value.setdefault((arr.shape, arr.tobytes()), []).append(init.name)
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, onnx.NodeProto] = {}
    for node in g.node:
        for inp in node.input:
            consumers.setdefault(inp, node)
    weight_nodes, before_node, drop = [], {}, set()
    for lname, info in layers.items():
        w = info["_weight"].reshape(info["_weight"].shape)
        found = None
        for cand, axis in ((w, 0), (w.T if w.ndim == 2 else None, 1)):
            if cand is None:
                continue
            names = by_value.get((cand.shape, np.ascontiguousarray(cand).tobytes()))
            if names:  # equal weights (copied layers): the one named after this layer first
                own = f"{lname}.weight"
                found = (names.pop(names.index(own) if own in names else 0), axis)
                break
        if found is None:
            raise ModelError(f"export: no ONNX initializer holds the weight of layer '{lname}'")
        wname, axis = found
        node = consumers[wname]
        readable = f"{lname}.weight" + ("_transposed" if axis == 1 else "")
        if wname != readable and readable not in inits:
            # the exporter names folded constants "onnx::MatMul_27"; name them after the layer
            inits[wname].name = readable
            for n in g.node:
                n.input[:] = [readable if i == wname else i for i in n.input]
            inits[readable] = inits.pop(wname)
            wname = readable
        info["onnx_node"] = node.name
        info["onnx_op"] = node.op_type
        if info["weight_bits"] is None:
            info["onnx_weight"] = wname
            continue
        arr = numpy_helper.to_array(inits[wname])
        scale = info["_scale"].astype(np.float32)
        shape = [1] * arr.ndim
        shape[axis] = -1
        q = np.clip(np.round(arr / scale.reshape(shape)), *info["_range"]).astype(np.int8)
        qname = f"{wname}_quantized"
        drop.add(wname)
        per_tensor = bool(info["weight_scale_pow2"])  # one power-of-two scale per layer
        if per_tensor:
            scale, zero = np.array(scale[0], np.float32), np.array(0, np.int8)
        else:
            zero = np.zeros(len(scale), np.int8)
        g.initializer.extend([numpy_helper.from_array(q, qname),
                              numpy_helper.from_array(scale, f"{wname}_scale"),
                              numpy_helper.from_array(zero, f"{wname}_zero_point")])
        weight_nodes.append(helper.make_node(
            "DequantizeLinear", [qname, f"{wname}_scale", f"{wname}_zero_point"], [wname],
            name=f"{wname}_dequantize", **({} if per_tensor else {"axis": axis})))
        info["onnx_weight"] = qname
        info["weight_axis"] = None if per_tensor else axis
        data_idx = 0 if node.input[0] != wname else 1
        prefix = f"{lname or 'model'}.input".replace("/", ".")
        nodes, new_inits, out = _act_qdq(prefix, node.input[data_idx], info)
        g.initializer.extend(new_inits)
        node.input[data_idx] = out
        before_node.setdefault(id(node), []).extend(nodes)
    kept = [i for i in g.initializer if i.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept)
    new_nodes = list(weight_nodes)
    for node in g.node:
        new_nodes.extend(before_node.get(id(node), []))
        new_nodes.append(node)
    if out_info is not None:
        float_name = f"{output_name}_float"
        for node in new_nodes:
            node.output[:] = [float_name if o == output_name else o for o in node.output]
        nodes, new_inits, out = _act_qdq(f"{output_name}.output", float_name, out_info)
        nodes[-1].output[0] = output_name
        g.initializer.extend(new_inits)
        new_nodes.extend(nodes)
    del g.node[:]
    g.node.extend(new_nodes)


def check_outputs(proto: onnx.ModelProto, input_name: str, x: np.ndarray, ref: np.ndarray,
                  quantized: bool, out_info: dict | None):
    """Compare onnxruntime on ``proto`` with PyTorch's outputs ``ref``; VerificationError if
    they differ by more than the tolerance. Returns (error, tolerance, optimized outputs, their
    error, output step or None).

    Float: 1e-5 of the output range, with and without onnxruntime's optimizations. Quantized with
    an output quantizer (edgec's): one output step. Quantized with a float output (torchao's):
    the float tolerance plus what one activation step at the inputs of the final quantized
    layers can move the output (``qdq_bound.output_step_bound``): a value within float rounding
    of a step boundary may round differently in onnxruntime and PyTorch. Such flips are rare,
    so at most ``MAX_MOVED`` of the outputs may differ by more than the float tolerance."""
    data = proto.SerializeToString()
    exact = _ort_run(data, input_name, x, optimize=False)
    fused = _ort_run(data, input_name, x, optimize=True)
    err = float(np.abs(exact.astype(np.float64) - ref).max())
    fused_err = float(np.abs(fused.astype(np.float64) - ref).max())
    float_tol = FLOAT_TOLERANCE * max(float(ref.max() - ref.min()), 1.0)
    step = None
    if quantized and out_info is not None:
        step = float(out_info["act_scale"])
        tol = step * 1.0001
    elif quantized:  # torchao: float output after the last dequantized layer; QDQ as written
        tol = float_tol + (output_step_bound(proto) or 0.0) * 1.0001
        # a rounding flip is rare and moves few outputs; a wrong scale, zero point or weight
        # moves most of them, often by less than the step bound
        moved = float(np.mean(np.abs(exact.astype(np.float64) - ref) > float_tol))
        if moved > MAX_MOVED:
            raise VerificationError(f"export: onnxruntime differs from PyTorch by more than "
                                    f"float rounding in {moved:.1%} of the outputs (allowed "
                                    f"{MAX_MOVED:.0%}: rounding flips at a quantizer are rare)")
    else:
        tol = float_tol
        err = max(err, fused_err)  # float graphs must match with and without optimizations
    if not err <= tol:
        raise VerificationError(f"export: onnxruntime differs from PyTorch by {err:.3g} "
                                f"(allowed {tol:.3g})")
    return err, tol, fused, fused_err, step


def metadata_of(proto: onnx.ModelProto) -> dict | None:
    """The ``edgec.compression`` metadata of an exported model, or None."""
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            return json.loads(p.value)
    return None


def export_onnx(model: nn.Module, path: Path | str, example_input: np.ndarray, *,
                steps: Sequence[dict] = (), mode: dict | None = None,
                input_name: str = "input", output_name: str = "logits",
                batch: int | None = 1) -> ExportResult:
    """Write ``model`` to ``path`` as ONNX (QDQ if quantized), check it and verify it.

    ``example_input`` (batch first) is used to trace and to compare onnxruntime with PyTorch;
    ``steps`` (the steps' JSON) and ``mode`` (e.g. {"mode": "fixed", "W": 8, "I": 3}) go
    into the metadata. ``batch`` fixes the batch dimension (the compilers need static shapes;
    1 by default), None leaves it dynamic. Raises ModelError if the model cannot be exported and
    VerificationError if onnxruntime disagrees with PyTorch.
    """
    with no_fastpath():
        return _export(model, path, example_input, steps, mode, input_name, output_name, batch)


def _export(model, path, example_input, steps, mode, input_name, output_name, batch):
    torch.set_num_threads(1)
    example_input = np.asarray(example_input)
    # token ids and other integer inputs keep their type (int64, as ONNX's Gather wants)
    x = torch.as_tensor(example_input.astype(np.float32) if example_input.dtype.kind == "f"
                        else example_input.astype(np.int64))
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    if batch is not None and batch < 1:
        raise ConfigError(f"export batch must be >= 1 (or None for dynamic), got {batch}")
    if isinstance(model, PT2EQuantized):  # torchao's graph: QDQ written by its own symbolics
        proto = export_proto(model, x, input_name, output_name, batch, OPSET)
        # the output's quantizer goes into the metadata; the check bounds flips (qdq_bound)
        layers, out_info, out_meta = layers_from_graph(proto), None, output_from_graph(proto)
    else:
        dep, layers, out_info = _deployable(model)
        out_meta = out_info
        proto = _torch_export(dep, x, input_name, output_name, batch)
        _rewrite(proto, layers, out_info, output_name)
    quantized = any(i["weight_bits"] is not None for i in layers.values())
    meta = {"format": 1, "steps": list(steps), "quantization": mode or {"mode": "float"},
            "layers": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")}
                       for k, v in layers.items()},
            "output": out_meta}
    proto.producer_name = "edgec"
    helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta, sort_keys=True)})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ModelError(f"export: the ONNX checker rejects the model: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    if proto.ir_version > 10:
        proto.ir_version = 10
    err, tol, fused, fused_err, step = check_outputs(proto, input_name, x.numpy(), ref,
                                                     quantized, out_info)
    agree = float((fused.argmax(axis=-1) == ref.argmax(axis=-1)).mean() * 100.0)
    path = Path(path)
    with staged_file(path) as tmp:
        save_model(proto, tmp)
    log.info("exported %s (%d bytes), max error vs PyTorch %.3g", path, path.stat().st_size, err)
    return ExportResult(path, quantized, err, tol, path.stat().st_size, meta, fused_err,
                        fused_err / step if step else None, agree)


def onnx_outputs(path: Path | str, X: np.ndarray) -> np.ndarray:
    """The first output of an ONNX model on every row of ``X``, run by onnxruntime."""
    from toolchain.reference import ort_session

    return run_batched(ort_session(Path(path)), X)


def onnx_accuracy(path: Path | str, X: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in percent of an ONNX classifier, run by onnxruntime."""
    logits = onnx_outputs(path, X)
    return float((logits.argmax(axis=1) == np.asarray(y)).mean() * 100.0)
