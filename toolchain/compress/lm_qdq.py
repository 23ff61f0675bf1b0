"""Write a weight-only quantized language model as a QDQ decode graph, and check it.

Input: a model whose Linears are (some of them) ``lm_quant.QuantizedLinear``. The decode graph
is built by ``lm_export.build_decode_graph`` from the model as it is (each quantized Linear's
``weight`` holds its dequantized values, so that graph is the fake-quant model in float), then
each quantized Linear's MatMul weight ``<path>.weight`` (float32 ``[K, N]``, K = in_features,
N = out_features) is replaced by ``DequantizeLinear(Wq, scale)`` with no zero point (symmetric):

- int8, per output channel: ``<path>.weight_quantized`` INT8 ``[K, N]``, ``<path>.weight_scale``
  float32 ``[N]``, ``axis=1``;
- int4, groups of G inputs: ``<path>.weight_quantized`` of ONNX type INT4 ``[K, N]`` (the
  opset-21 type, two values per byte, low nibble first, as ONNX stores it; chosen over int8
  containers so that the file itself is half the int8 size and any ONNX tool reads it),
  ``<path>.weight_scale`` float32 ``[K / G, N]``, ``axis=0``, ``block_size=G``; the model's
  opset becomes 21 (blocked DequantizeLinear and INT4 need it). int8 with a group size is
  written the same way with an INT8 initializer.

The DequantizeLinear's output keeps the name ``<path>.weight``, so the MatMul is unchanged.
Each replaced initializer is first checked to equal ``(Wq * scale)^T`` bit for bit.

Metadata: ``edgec.lm`` stays; ``edgec.compression`` (format 1, as ``toolchain.compress``
describes) gets ``steps``, ``quantization`` ({"mode": "int8" | "int4", "weight_bits",
"group_size", "method", "symmetric": true, "act_bits": null}) and one ``layers`` entry per
Linear by module path (``onnx_node``, ``onnx_op`` "MatMul", ``onnx_weight``, ``weight_axis``,
``weight_bits``, ``block_size``, ``sparsity``, ``method``; ``act_*`` null: weights only).

Check: onnxruntime (graph optimization BASIC; ALL fuses blocked int4 into MatMulNBits, which
is not exact) runs the graph in its KV-cache loop on held-out bytes and must give PyTorch's
logits of the fake-quant model within ``TOLERANCE``; the error at ALL is reported too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from toolchain.compress.lm_export import OrtDecoder, build_decode_graph, torch_step_logits
from toolchain.compress.lm_quant import QuantizedLinear
from toolchain.errors import ModelError, VerificationError
from toolchain.onnx_io import save_model
from toolchain.outdir import staged_file

log = logging.getLogger(__name__)

METADATA_KEY = "edgec.compression"
BLOCKED_OPSET = 21
TOLERANCE = 1e-4  # relative to max(1, |logits| range): the same float math, reordered


@dataclass(frozen=True)
class QDQExport:
    path: Path
    opset: int
    file_bytes: int
    max_abs_error: float            # onnxruntime (BASIC) vs PyTorch fake-quant, over the check
    fused_max_abs_error: float      # onnxruntime with ALL optimizations (MatMulNBits for int4)
    tokens_checked: int
    metadata: dict

    def to_json(self) -> dict:
        return {"path": str(self.path), "opset": self.opset, "file_bytes": self.file_bytes,
                "max_abs_error": self.max_abs_error,
                "fused_max_abs_error": self.fused_max_abs_error,
                "tokens_checked": self.tokens_checked}


def pack_int4(q: np.ndarray) -> bytes:
    """Signed 4-bit values (flattened, row-major) two per byte, element 2i in the low nibble."""
    flat = (np.asarray(q, np.int8).reshape(-1) & 0x0F).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def _linear_info(path: str, m: nn.Module) -> dict:
    w = m.weight.detach()
    return {"op": "Linear", "onnx_op": "MatMul", "onnx_node": None, "onnx_weight": f"{path}.weight",
            "weight_axis": None, "weight_bits": None, "block_size": None, "method": None,
            "weight_scale_pow2": False, "weight_frac_bits": None,
            "sparsity": round(float((w == 0).float().mean()), 6),
            "act_bits": None, "act_signed": None, "act_scale": None, "act_zero_point": None,
            "act_frac_bits": None}


def _dq_nodes(path: str, m: QuantizedLinear) -> tuple[list, list, dict]:
    """Initializers, the DequantizeLinear node and layer facts for one quantized Linear."""
    wname = f"{path}.weight"
    qt = m.weight_q.numpy().T.copy()                 # [K, N], MatMul's B layout
    scale = m.weight_scale.numpy().astype(np.float32)  # [N, groups]
    k, n = qt.shape
    qname, sname = f"{wname}_quantized", f"{wname}_scale"
    if m.group is None:
        q_init = numpy_helper.from_array(qt.astype(np.int8), qname)
        s_init = numpy_helper.from_array(scale[:, 0].copy(), sname)
        attrs, axis, block = {"axis": 1}, 1, None
    else:
        if m.bits == 4:
            q_init = helper.make_tensor(qname, TensorProto.INT4, [k, n], pack_int4(qt), raw=True)
        else:
            q_init = numpy_helper.from_array(qt.astype(np.int8), qname)
        s_init = numpy_helper.from_array(scale.T.copy(), sname)  # [K / G, N]
        attrs, axis, block = {"axis": 0, "block_size": m.group}, 0, m.group
    node = helper.make_node("DequantizeLinear", [qname, sname], [wname],
                            name=f"{wname}_dequantize", **attrs)
    facts = {"onnx_weight": qname, "weight_axis": axis, "weight_bits": m.bits,
             "block_size": block, "method": m.method}
    return [q_init, s_init], [node], facts


def to_qdq(proto: onnx.ModelProto, model: nn.Module, weights: dict[str, str],
           steps: Sequence[dict] = (), quantization: dict | None = None) -> onnx.ModelProto:
    """Rewrite ``proto`` (from ``build_decode_graph(model)``) in place into the QDQ form."""
    g = proto.graph
    modules = dict(model.named_modules())
    inits = {i.name: i for i in g.initializer}
    matmul = {n.input[1]: n for n in g.node if n.op_type == "MatMul"}
    layers, new_inits, dq, drop, blocked = {}, [], [], set(), False
    for wname, path in weights.items():
        m = modules.get(path)
        if m is None or wname not in inits:
            raise ModelError(f"qdq: weight {wname} of the graph has no module '{path}'")
        info = _linear_info(path, m)
        info["onnx_node"] = matmul[wname].name if wname in matmul else None
        if isinstance(m, QuantizedLinear):
            want = (m.weight_q.float() * m.weight_scale.repeat_interleave(
                m.in_features // m.weight_scale.shape[1], dim=1)).numpy().T
            have = numpy_helper.to_array(inits[wname])
            if have.shape != want.shape or not np.array_equal(have, want.astype(np.float32)):
                raise ModelError(f"qdq: the graph's {wname} is not the dequantized weight of "
                                 f"{path}")
            more, nodes, facts = _dq_nodes(path, m)
            new_inits += more
            dq += nodes
            drop.add(wname)
            info.update(facts)
            blocked |= m.group is not None
        layers[path] = info
    kept = [i for i in g.initializer if i.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    nodes = dq + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    if blocked:
        for op in proto.opset_import:
            if op.domain in ("", "ai.onnx"):
                op.version = max(op.version, BLOCKED_OPSET)
    if proto.ir_version > 10 or blocked:
        proto.ir_version = 10  # INT4 needs IR 10; onnxruntime 1.31 reads up to 10 here
    meta = {"format": 1, "steps": list(steps),
            "quantization": quantization or {"mode": "float"}, "layers": layers, "output": None}
    props = {p.key: p.value for p in proto.metadata_props}
    props[METADATA_KEY] = json.dumps(meta, sort_keys=True)
    helper.set_model_props(proto, props)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ModelError(f"qdq: the ONNX checker rejects the model: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    return proto


def check_qdq(proto: onnx.ModelProto, model: nn.Module, ids: np.ndarray,
              optimization: str = "basic") -> float:
    """Max |onnxruntime - PyTorch| of the logits, feeding ``ids`` through the KV-cache loop in
    chunks of the graph's S (a tail shorter than S is left out)."""
    dec = OrtDecoder(proto, optimization=optimization)
    s = dec.meta["seq_len"]
    n = (min(len(ids), dec.meta["context"]) // s) * s
    got = np.concatenate([dec.feed(ids[i:i + s]) for i in range(0, n, s)])
    want = torch_step_logits(model, ids[:n], s)
    return float(np.abs(got.astype(np.float64) - want).max())


def export_qdq(model: nn.Module, path: Path | str, *, seq_len: int = 1,
               steps: Sequence[dict] = (), quantization: dict | None = None,
               check_ids: np.ndarray | None = None) -> QDQExport:
    """Write ``model``'s decode graph with its quantized Linears as QDQ, checked against PyTorch
    (logits of ``check_ids``, default 32 bytes of 'the quick brown fox'-like text)."""
    model = model.eval()
    proto, weights = build_decode_graph(model, seq_len)
    to_qdq(proto, model, weights, steps, quantization)
    ctx = model.config.context
    if check_ids is None:
        check_ids = np.frombuffer(b"def f(x):\n    return x + 1  # the quick brown fox", np.uint8)
    ids = np.asarray(check_ids, np.int64)[:ctx]
    if len(ids) < seq_len:
        raise ModelError(f"qdq check needs at least {seq_len} tokens")
    err = check_qdq(proto, model, ids, "basic")
    with torch.no_grad():
        span = float(model(torch.tensor(ids[:seq_len])[None]).abs().max())
    tol = TOLERANCE * max(1.0, span)
    if not err <= tol:
        raise VerificationError(f"qdq: onnxruntime logits differ from PyTorch by {err:.3g} "
                                f"(allowed {tol:.3g})")
    fused = check_qdq(proto, model, ids, "all")
    path = Path(path)
    with staged_file(path) as tmp:
        save_model(proto, tmp)
    opset = max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    log.info("wrote %s: |ort - torch| %.2e (fused %.2e)", path, err, fused)
    return QDQExport(path, opset, path.stat().st_size, err, fused, len(ids), meta)
