"""The reference: onnxruntime on the same ONNX file, and how outputs are compared with it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from toolchain.errors import ModelError


def ort_session(model: Path | bytes, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = str(model) if isinstance(model, Path) else model
    if _has_weight_only_matmul(model):
        # Full optimization fuses DequantizeLinear(int8/int4 weight) + MatMul into MatMulNBits,
        # which is not exact (0.4% seen); basic optimization computes the graph as written.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None


def _has_weight_only_matmul(model: Path | bytes) -> bool:
    """A MatMul whose weight is DequantizeLinear of an initializer and whose other input is
    no DequantizeLinear (float activations, quantized weights)."""
    import onnx

    try:
        proto = (onnx.load(str(model), load_external_data=False) if isinstance(model, Path)
                 else onnx.load_from_string(model))
    except Exception:  # noqa: BLE001  (onnxruntime reports a broken file itself)
        return False
    g = proto.graph
    inits = {t.name for t in g.initializer}
    dq = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    acts = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"} - dq
    return any(n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in dq
               and n.input[0] not in acts for n in g.node)


def run_reference(model: Path | bytes, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    sess = ort_session(model)
    feeds = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
    return [np.asarray(o) for o in sess.run(None, feeds)]


@dataclass(frozen=True)
class Comparison:
    """How far one output is from the reference."""

    name: str
    max_abs_error: float
    max_rel_error: float  # max abs error divided by the reference output's range
    output_range: float
    mismatched: int  # elements outside the tolerance
    tolerance: float  # allowed max_rel_error
    ok: bool
    abs_tolerance: float | None = None  # also allowed: this absolute error (one output step)

    def to_json(self) -> dict:
        return asdict(self)


def compare(name: str, got: np.ndarray, ref: np.ndarray, rel_tol: float,
            abs_tol: float | None = None) -> Comparison:
    """Compare ``got`` with ``ref``; the error is taken relative to the reference's range.

    ``abs_tol`` (e.g. one quantization step of a quantized output) also accepts any
    difference up to that absolute amount."""
    if got.shape != ref.shape:
        raise ModelError(f"output '{name}' has shape {got.shape}, reference {ref.shape}")
    g = got.astype(np.float64)
    r = ref.astype(np.float64)
    rng = float(r.max() - r.min()) if r.size else 0.0
    scale = rng if rng > 0 else max(float(np.abs(r).max()) if r.size else 0.0, 1.0)
    diff = np.abs(g - r)
    finite = np.isfinite(g).all() and np.isfinite(r).all()
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / scale
    allowed = max(rel_tol * scale, abs_tol or 0.0)
    bad = int((diff > allowed).sum()) if finite else int(diff.size)
    ok = finite and max_abs <= allowed
    return Comparison(name, max_abs, max_rel, rng, bad, rel_tol, bool(ok), abs_tol)
