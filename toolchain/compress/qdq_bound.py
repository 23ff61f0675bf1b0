"""How far a correct QDQ export may differ from PyTorch: one activation step, carried to the output.

A QDQ graph rounds every quantized layer's input to its activation step. onnxruntime and
PyTorch add up a convolution in different orders, so a value that lies within float rounding of
a step boundary can round to the neighbouring step in one and not the other; the difference is
one step of that quantizer, and it is legitimate. How much it moves the output depends on what
follows it. This analysis bounds it for the *final* quantized layers (those from whose output
no other quantized layer is reached): if every input element of such a layer moves by one step
``s``, each of its outputs moves by at most ``s * max_o sum |W[o, ...]|`` (the largest L1 norm
of the dequantized weights that feed one output). The bounds of all final layers are added
(branches that merge in an Add). A flip further upstream reaches the output through a final
layer's quantizer, where it is again whole steps, so the bound holds while such flips stay
rare and isolated (what float rounding produces); a wrong export (a wrong scale, zero point or
weight) moves many values by more than that and still fails the check. When the graph's output
has a quantizer of its own, the bound is rounded up to whole output steps.

Read-only: ``output_step_bound(proto) -> float | None`` (None: no quantized layer found).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _constants(g: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _dequantized(dq: onnx.NodeProto, consts: dict) -> np.ndarray | None:
    """The float weight a DequantizeLinear of constants computes."""
    q = consts.get(dq.input[0])
    scale = consts.get(dq.input[1])
    if q is None or scale is None:
        return None
    zp = consts.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    zp = np.zeros_like(scale, np.int64) if zp is None else zp.astype(np.int64)
    if scale.size > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q.astype(np.int64) - zp) * scale.astype(np.float64)


def _gain(node: onnx.NodeProto, w: np.ndarray) -> float:
    """Largest L1 norm of the weights that feed one output element."""
    a = np.abs(w.astype(np.float64))
    if node.op_type == "Conv":  # (out, in/groups, k...)
        return float(a.reshape(a.shape[0], -1).sum(1).max())
    if node.op_type == "ConvTranspose":  # (in, out/groups, k...): every kernel tap, safe bound
        return float(a.sum(axis=tuple(i for i in range(a.ndim) if i != 1)).max())
    if node.op_type == "Gemm":
        trans_b = next((a_.i for a_ in node.attribute if a_.name == "transB"), 0)
        return float(a.sum(1 if trans_b else 0).max())
    # MatMul x @ W: W (..., in, out)
    return float(a.sum(-2).max()) if a.ndim >= 2 else float(a.sum())


def _quantized_layers(g: onnx.GraphProto, consts: dict) -> dict[str, tuple[float, float]]:
    """Layer output name -> (activation step of its data input, weight gain)."""
    producer = {o: n for n in g.node for o in n.output}
    layers = {}
    for node in g.node:
        if node.op_type not in LAYERS or len(node.input) < 2:
            continue
        dq_x, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
        if dq_x is None or dq_x.op_type != "DequantizeLinear":
            continue
        q_x = producer.get(dq_x.input[0])
        step = consts.get(dq_x.input[1])
        if q_x is None or q_x.op_type != "QuantizeLinear" or step is None or step.size != 1:
            continue
        if dq_w is not None and dq_w.op_type == "DequantizeLinear":
            w = _dequantized(dq_w, consts)
        else:
            w = consts.get(node.input[1])
        if w is None:
            continue
        layers[node.output[0]] = (float(step), _gain(node, w))
    return layers


def _final(g: onnx.GraphProto, layers: set[str]) -> list[str]:
    """The layer outputs from which no other layer output is reached."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    final = []
    for start in layers:
        seen, todo, reaches = {start}, [start], False
        while todo and not reaches:
            for n in users.get(todo.pop(), []):
                reaches = reaches or any(o in layers for o in n.output)
                todo.extend(o for o in n.output if o not in seen)
                seen.update(n.output)
        if not reaches:
            final.append(start)
    return sorted(final)


def _output_step(g: onnx.GraphProto, consts: dict) -> float | None:
    """The step of the quantizer on the graph's (first) output, if it has one."""
    producer = {o: n for n in g.node for o in n.output}
    dq = producer.get(g.output[0].name) if g.output else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q, step = producer.get(dq.input[0]), consts.get(dq.input[1])
    if q is None or q.op_type != "QuantizeLinear" or step is None or step.size != 1:
        return None
    return float(step)


def output_step_bound(proto: onnx.ModelProto) -> float | None:
    """The largest output change one activation step at the final quantized layers' inputs
    can cause: the sum over those layers of (input step x weight gain); when the output itself
    is quantized (step ``t``), rounded up to whole output steps (a change ``B`` before the
    output quantizer is at most ``floor(B / t) + 1`` steps after it). None: no quantized layer."""
    g = proto.graph
    consts = _constants(g)
    layers = _quantized_layers(g, consts)
    if not layers:
        return None
    final = _final(g, set(layers))
    bound = float(sum(layers[n][0] * layers[n][1] for n in final))
    out_step = _output_step(g, consts)
    if out_step:
        bound = out_step * (np.floor(bound / out_step) + 1.0)
    return float(bound)
