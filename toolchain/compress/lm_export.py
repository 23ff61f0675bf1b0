"""Export a byte-level language model as a static-shape ONNX decode graph with a KV cache.

The decode-graph contract (any ONNX model that follows it is a language model to edgec):

Inputs
    ``input_ids``      int64 [1, S]   the S tokens (bytes, 0..255) to feed
    ``position``       int64 [1]      index of the first of them; 0 <= position <= T - S
    ``past_key_<i>``   float32 [1, heads, T, head_dim], one per layer i = 0..layers-1
    ``past_value_<i>`` float32 [1, heads, T, head_dim]
Outputs
    ``logits``            float32 [1, S, 256]   next-token logits after each of the S tokens
    ``present_key_<i>``   like ``past_key_<i>``, with rows position .. position+S-1 of axis 2
    ``present_value_<i>`` replaced by the S new keys / values, every other row unchanged

Query s (absolute position ``position + s``) attends to key rows 0 .. position+s; rows after it
are masked out (``Where(mask, scores, -inf)`` before the Softmax), so their content does not
matter as long as it is finite (start from zeros). All shapes are static: S is fixed at export
(``seq_len``, 1 = the decode step; a larger S is a prefill graph); an S = 1 graph fed the prompt
one token at a time gives the same logits as a prefill graph. T is the model's context.

The cache update, exactly (the compiler pattern-matches it to update the cache in place, so
that present aliases past): for each layer, ONE index tensor::

    rows    = Add(Reshape(position, [1]), arange(S))           # int64 [S], constant arange
    index   = Expand(Reshape(rows, [1, 1, S, 1]), [1, heads, S, head_dim])   # int64
    present_key_<i>   = ScatterElements(past_key_<i>,   index, k_new, axis=2)   # no reduction
    present_value_<i> = ScatterElements(past_value_<i>, index, v_new, axis=2)

``k_new`` / ``v_new`` are [1, heads, S, head_dim]; ``index[0, h, s, d] == position + s`` for
every h, d. The ScatterElements' data input is the graph input ``past_*`` and its output the
graph output ``present_*`` directly (no node in between), and the attention reads that
ScatterElements' output. Opset 17 (LayerNormalization; GELU as Erf).

Weights: every ``nn.Linear`` is ``MatMul(x, W)`` with ``W`` a float32 initializer [in, out]
(the transposed torch weight) named ``<module path>.weight`` (``blocks.0.attn.q.weight``), then
``Add(matmul_output, <module path>.bias)`` when it has a bias. ``linear_weights(proto)`` returns
``{initializer name: module path}``, so a compressor can swap ``W`` for
``DequantizeLinear(Wq, scale)`` by name. Embeddings are ``Gather(tok.weight, input_ids)`` and
``Gather(pos.weight, rows)``; norm parameters are ``<module path>.weight`` / ``.bias``.

Metadata: ``metadata_props['edgec.lm']`` is JSON ``{"format": 1, "layers", "heads",
"head_dim", "context", "vocab", "seq_len"}``.

How: ``torch.onnx.export`` (TorchScript exporter, as ``export.py``), then this module folds the
constant subgraphs the tracer leaves (shape chains of ConstantOfShape/Equal/Where, Identity
copies of deduplicated parameters), gives every Linear / norm / embedding its own initializer
named after its module (found by the exporter's node scope, checked by value), and checks the
result with ``onnx.checker`` and onnxruntime against PyTorch (prefill then single-token steps).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from toolchain.errors import ModelError, VerificationError
from toolchain.models.lm import RMSNorm
from toolchain.onnx_io import save_model
from toolchain.outdir import staged_file

log = logging.getLogger(__name__)

METADATA_KEY = "edgec.lm"
OPSET = 17
TOLERANCE = 1e-4
_SCOPE = "m"  # the wrapper's attribute holding the model: node names start with /m/


@dataclass(frozen=True)
class LMExport:
    path: Path
    seq_len: int
    meta: dict
    weights: dict[str, str]      # Linear weight initializer -> module path
    max_abs_error: float         # onnxruntime vs PyTorch over the check run

    def to_json(self) -> dict:
        return {"path": str(self.path), "seq_len": self.seq_len, "meta": self.meta,
                "weights": self.weights, "max_abs_error": self.max_abs_error}


class _DecodeGraph(nn.Module):
    """Flat inputs / outputs for the exporter: (ids, position, k0, v0, ...) -> (logits, ...)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, input_ids, position, *flat):
        pasts = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(flat) // 2)]
        logits, presents = self.m(input_ids, position, pasts)
        return (logits, *[t for kv in presents for t in kv])


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of the contract, in graph order."""
    ins = ["input_ids", "position"]
    outs = ["logits"]
    for i in range(layers):
        ins += [f"past_key_{i}", f"past_value_{i}"]
        outs += [f"present_key_{i}", f"present_value_{i}"]
    return ins, outs


def lm_meta(proto: onnx.ModelProto) -> dict | None:
    """The ``edgec.lm`` metadata of a model, or None if it has none."""
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            return json.loads(p.value)
    return None


def linear_weights(proto: onnx.ModelProto) -> dict[str, str]:
    """``{initializer name: module path}`` of every MatMul weight named ``<module>.weight``."""
    inits = {i.name for i in proto.graph.initializer}
    out = {}
    for n in proto.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and n.input[1].endswith(".weight"):
            out[n.input[1]] = n.input[1][: -len(".weight")]
    return out


# ---------------------------------------------------------------- graph clean-up
def _evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    ins = [helper.make_tensor_value_info(f"i{k}", helper.np_dtype_to_tensor_dtype(
        values[name].dtype), values[name].shape) for k, name in enumerate(node.input)]
    outs = [helper.make_tensor_value_info(f"o{k}", 0, None) for k in range(len(node.output))]
    one = helper.make_node(node.op_type, [f"i{k}" for k in range(len(node.input))],
                           [o.name for o in outs], domain=node.domain)
    one.attribute.extend(node.attribute)
    g = helper.make_graph([one], "fold", ins, outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    res = ReferenceEvaluator(m).run(None, {f"i{k}": values[name]
                                           for k, name in enumerate(node.input)})
    return [np.asarray(r) for r in res]


def _fold_constants(g: onnx.GraphProto) -> None:
    """Evaluate every node whose inputs are all constants (Constant nodes included) into an
    initializer; an Identity of an initializer becomes an initializer of its own name."""
    values = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    keep = []
    new_inits = {}
    for n in g.node:
        if n.op_type == "Constant":
            out = [numpy_helper.to_array(n.attribute[0].t)] if n.attribute[0].name == "value" \
                else _evaluate(n, values)
        elif n.input and all(i in values for i in n.input if i):
            out = _evaluate(n, values)
        else:
            keep.append(n)
            continue
        for name, v in zip(n.output, out):
            values[name] = v
            new_inits[name] = v
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(numpy_helper.from_array(v, name) for name, v in new_inits.items())


def _scope(node: onnx.NodeProto) -> str | None:
    """Module path of an exporter node name ``/m/blocks.0/attn/q/MatMul`` -> ``blocks.0.attn.q``."""
    parts = node.name.split("/")
    if len(parts) < 3 or parts[1] != _SCOPE:
        return None
    return ".".join(parts[2:-1])


def _name_parameters(g: onnx.GraphProto, model: nn.Module) -> dict[str, str]:
    """Give each Linear's MatMul / Add, each norm and each embedding Gather its own initializers
    named after the module; returns {weight initializer: module path} of the Linears."""
    modules = dict(model.named_modules())
    values = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    fresh: dict[str, np.ndarray] = {}

    def own(name: str, array: torch.Tensor, expect: np.ndarray | None) -> str:
        a = array.detach().cpu().numpy().astype(np.float32)
        if expect is not None and (expect.shape != a.shape or not np.array_equal(expect, a)):
            raise ModelError(f"export: initializer for {name} does not hold the module's value")
        if name in fresh:
            raise ModelError(f"export: {name} is used by two nodes; the contract needs one "
                             "MatMul per Linear")
        fresh[name] = a
        return name

    weights = {}
    for n in g.node:
        path = _scope(n)
        mod = modules.get(path) if path is not None else None
        if n.op_type == "MatMul" and isinstance(mod, nn.Linear) and n.input[1] in values:
            n.input[1] = own(f"{path}.weight", mod.weight.T, values[n.input[1]])
            weights[f"{path}.weight"] = path
            adds = [c for c in consumers.get(n.output[0], []) if c.op_type == "Add"]
            if mod.bias is not None:
                add = adds[0] if len(adds) == 1 else None
                other = [i for i in add.input if i != n.output[0]] if add is not None else []
                if len(other) != 1 or other[0] not in values:
                    raise ModelError(f"export: no bias Add after the MatMul of {path}")
                add.input[:] = [n.output[0], own(f"{path}.bias", mod.bias, values[other[0]])]
        elif n.op_type == "LayerNormalization" and isinstance(mod, nn.LayerNorm):
            n.input[1] = own(f"{path}.weight", mod.weight, values.get(n.input[1]))
            if len(n.input) > 2 and mod.bias is not None:
                n.input[2] = own(f"{path}.bias", mod.bias, values.get(n.input[2]))
        elif n.op_type == "Gather" and isinstance(mod, nn.Embedding) and n.input[0] in values:
            n.input[0] = own(f"{path}.weight", mod.weight, values[n.input[0]])
        elif n.op_type == "Mul" and isinstance(mod, (nn.RMSNorm, RMSNorm)) \
                and mod.weight is not None:
            for k, i in enumerate(n.input):
                if i in values and values[i].shape == tuple(mod.weight.shape):
                    n.input[k] = own(f"{path}.weight", mod.weight, values[i])
    linears = [p for p, m in modules.items() if isinstance(m, nn.Linear)]
    missing = [p for p in linears if f"{p}.weight" not in weights]
    if missing:
        raise ModelError(f"export: Linear layers not found as MatMul(x, W): {', '.join(missing)}")
    clash = set(fresh) & {i.name for i in g.initializer}
    for name in clash:  # an old deduplicated initializer that had the module's name
        _rename_initializer(g, name, f"{name}.unused")
    g.initializer.extend(numpy_helper.from_array(a, name) for name, a in fresh.items())
    return weights


def _rename_initializer(g: onnx.GraphProto, old: str, new: str) -> None:
    for i in g.initializer:
        if i.name == old:
            i.name = new
    for n in g.node:
        n.input[:] = [new if x == old else x for x in n.input]


def _prune(g: onnx.GraphProto) -> None:
    """Drop nodes and initializers no graph output depends on."""
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(g.node):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)


def _check_contract(proto: onnx.ModelProto, meta: dict) -> None:
    g = proto.graph
    outputs = {o.name for o in g.output}
    inputs = {i.name for i in g.input}
    scatters = [n for n in g.node if n.op_type == "ScatterElements"]
    for n in scatters:
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if axis != 2 or n.input[0] not in inputs or n.output[0] not in outputs:
            raise ModelError(f"export: cache update {n.name} is not ScatterElements(past, "
                             "index, new, axis=2) -> present")
    if len(scatters) != 2 * meta["layers"]:
        raise ModelError(f"export: {len(scatters)} cache updates for {meta['layers']} layers")
    left = sorted({n.op_type for n in g.node} & {"Shape", "ConstantOfShape", "Identity"})
    if left:
        raise ModelError(f"export: shape computations left in the graph: {', '.join(left)}")


# ---------------------------------------------------------------- export
def _trace(model: nn.Module, seq_len: int) -> onnx.ModelProto:
    cfg = model.config
    ins, outs = io_names(cfg.layers)
    args = (torch.zeros(1, seq_len, dtype=torch.long), torch.zeros(1, dtype=torch.long),
            *[t for kv in model.empty_cache() for t in kv])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(_DecodeGraph(model), args, buf, dynamo=False, opset_version=OPSET,
                              input_names=ins, output_names=outs, do_constant_folding=True)
        except Exception as exc:
            raise ModelError(f"torch.onnx.export failed: {str(exc).splitlines()[0]}") from None
    return onnx.load_model_from_string(buf.getvalue())


def build_decode_graph(model: nn.Module, seq_len: int = 1) -> tuple[onnx.ModelProto, dict]:
    """The contract's ONNX graph for ``model`` (a ``ByteLM``-like module with ``config`` and
    ``empty_cache``) and its ``{weight initializer: module path}`` map; nothing is written."""
    cfg = model.config
    if not 1 <= seq_len <= cfg.context:
        raise ModelError(f"seq_len {seq_len} must be in 1..{cfg.context} (the context)")
    model = model.eval()
    proto = _trace(model, seq_len)
    g = proto.graph
    _fold_constants(g)
    weights = _name_parameters(g, model)
    _prune(g)
    meta = {"format": 1, "layers": cfg.layers, "heads": cfg.heads, "head_dim": cfg.head_dim,
            "context": cfg.context, "vocab": cfg.vocab, "seq_len": seq_len}
    _check_contract(proto, meta)
    helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta, sort_keys=True)})
    proto.producer_name = "edgec"
    onnx.checker.check_model(proto, full_check=True)
    return proto, weights


def export_lm(model: nn.Module, path: Path | str, seq_len: int = 1,
              check_tokens: int = 24, seed: int = 0) -> LMExport:
    """Write the decode graph of ``model`` to ``path`` and check it against PyTorch with
    onnxruntime on ``check_tokens`` random bytes (prefill chunks of ``seq_len``, then single
    steps when seq_len > 1): logits within ``TOLERANCE``, else ``VerificationError``."""
    path = Path(path)
    proto, weights = build_decode_graph(model, seq_len)
    meta = lm_meta(proto)
    err = 0.0
    if check_tokens:
        err = check_against_torch(proto, model, check_tokens, seed)
    with staged_file(path) as tmp:
        save_model(proto, tmp)
    log.info("exported %s (S=%d, %d layers), max |onnxruntime - torch| %.2e", path, seq_len,
             meta["layers"], err)
    return LMExport(path, seq_len, meta, weights, err)


# ---------------------------------------------------------------- running the contract
class OrtDecoder:
    """Runs a contract graph with onnxruntime: keeps the cache, feeds tokens in chunks of S.

    ``optimization`` is onnxruntime's graph optimization level: "basic" by default (at "all"
    it fuses blocked-int4 DequantizeLinear + MatMul into MatMulNBits, which is not exact)."""

    def __init__(self, proto_or_path, threads: int = 1, optimization: str = "basic"):
        import onnxruntime as ort

        proto = proto_or_path if isinstance(proto_or_path, onnx.ModelProto) \
            else onnx.load(str(proto_or_path))
        meta = lm_meta(proto)
        if meta is None:
            raise ModelError(f"the model has no '{METADATA_KEY}' metadata: not an edgec "
                             "language model graph")
        self.meta = meta
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        opts.graph_optimization_level = levels[optimization]
        self.session = ort.InferenceSession(proto.SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        m = self.meta
        shape = (1, m["heads"], m["context"], m["head_dim"])
        self.cache = {f"past_{w}_{i}": np.zeros(shape, np.float32)
                      for i in range(m["layers"]) for w in ("key", "value")}
        self.position = 0

    def feed(self, ids) -> np.ndarray:
        """Feed exactly S tokens; returns logits [S, vocab] and advances the cache."""
        s, ctx = self.meta["seq_len"], self.meta["context"]
        ids = np.asarray(ids, np.int64).reshape(1, -1)
        if ids.shape[1] != s or self.position + s > ctx:
            raise ModelError(f"feed takes {s} tokens at positions up to {ctx}; got "
                             f"{ids.shape[1]} at {self.position}")
        outs = self.session.run(None, {"input_ids": ids,
                                       "position": np.array([self.position], np.int64),
                                       **self.cache})
        names = [o.name for o in self.session.get_outputs()]
        res = dict(zip(names, outs))
        for k in self.cache:
            self.cache[k] = res["present_" + k[len("past_"):]]
        self.position += s
        return res["logits"][0]


def torch_step_logits(model: nn.Module, ids: np.ndarray, chunk: int) -> np.ndarray:
    """PyTorch logits [N, vocab] for ``ids`` fed through the KV-cache forward in chunks."""
    pasts = model.empty_cache()
    out = []
    with torch.no_grad():
        for i in range(0, len(ids), chunk):
            x = torch.tensor(ids[i:i + chunk], dtype=torch.long)[None]
            logits, pasts = model(x, torch.tensor([i]), pasts)
            out.append(logits[0].numpy())
    return np.concatenate(out)


def check_against_torch(proto: onnx.ModelProto, model: nn.Module, tokens: int = 24,
                        seed: int = 0) -> float:
    """Prefill ``tokens`` rounded down to chunks of S, then decode the rest one token at a time
    (with the S-token graph when S = 1); compare every logit with PyTorch's full forward."""
    meta = lm_meta(proto)
    s, ctx = meta["seq_len"], meta["context"]
    tokens = min(tokens, ctx)
    ids = np.random.default_rng(seed).integers(0, meta["vocab"], tokens)
    dec = OrtDecoder(proto)
    got = []
    n = (tokens // s) * s
    for i in range(0, n, s):
        got.append(dec.feed(ids[i:i + s]))
    if n < tokens:  # the remainder needs an S = 1 graph: checked against the step forward
        rest = build_decode_graph(model, 1)[0] if s != 1 else proto
        one = OrtDecoder(rest)
        one.cache, one.position = dec.cache, dec.position
        for i in range(n, tokens):
            got.append(one.feed(ids[i:i + 1]))
    got = np.concatenate(got)
    with torch.no_grad():
        want = model(torch.tensor(ids, dtype=torch.long)[None])[0].numpy()
    err = float(np.abs(got - want).max())
    if not err <= TOLERANCE:
        raise VerificationError(f"onnxruntime logits differ from PyTorch by {err:.3g} "
                                f"(tolerance {TOLERANCE})")
    return err
