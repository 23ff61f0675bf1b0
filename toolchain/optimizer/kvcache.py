"""The decode-graph contract of a language model, and the pass that updates its KV cache in place.

The contract (README, "Language models"): inputs ``input_ids`` int64 [1, S], ``position``
int64 [1] (the position of the first of the S tokens) and per layer i ``past_key_i`` /
``past_value_i`` float32 [1, H, T, D]; outputs ``logits`` float32 [1, S, V] and
``present_key_i`` / ``present_value_i`` shaped like the past, with the S new rows written at
position .. position+S-1. ``lm_contract`` recognises it on an ONNX model.

``WriteCacheInPlace`` (a Relax pass, before legalization). Before: each present is
``scatter_elements(past, idx, rows, axis=2)`` or ``scatter_nd(past, idx, rows)`` on a graph
parameter ``past_*`` that nothing else reads; legalized, that kernel copies the whole cache
and then writes the rows. After: a ``call_tir_inplace`` of a kernel that writes only the
updates into the past buffer (indices normalized as ONNX says, and any index outside the
cache skipped, never written out of bounds), so the plan binds past and present to one
buffer and no token copies the cache. A graph whose ``past_*`` inputs no scatter writes is
left as it is.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import onnx

from toolchain.errors import ModelError

log = logging.getLogger(__name__)

_PAST = re.compile(r"^past_(key|value)_(\d+)$")


@dataclass(frozen=True)
class LMContract:
    """What the driver needs to know about a decode graph."""

    seq: int  # S: tokens per call
    context: int  # T: cache rows
    vocab: int  # V: logits per token
    layers: int
    heads: int
    head_dim: int

    def to_json(self) -> dict:
        return {"seq": self.seq, "context": self.context, "vocab": self.vocab,
                "layers": self.layers, "heads": self.heads, "head_dim": self.head_dim}

    @classmethod
    def from_json(cls, d: dict) -> "LMContract":
        return cls(**{k: int(d[k]) for k in ("seq", "context", "vocab", "layers", "heads",
                                              "head_dim")})


def _shape(vi: onnx.ValueInfoProto) -> tuple:
    t = vi.type.tensor_type
    return t.elem_type, tuple(d.dim_value if d.HasField("dim_value") else None
                              for d in t.shape.dim)


def lm_contract(model: onnx.ModelProto) -> LMContract | None:
    """The contract's sizes if ``model`` follows it; None if it is not a language model.

    A model that names the contract's inputs but breaks it elsewhere is a ModelError that
    says what is wrong (a half-followed contract is a mistake, not another kind of model)."""
    init = {t.name for t in model.graph.initializer}
    ins = {vi.name: _shape(vi) for vi in model.graph.input if vi.name not in init}
    outs = {vi.name: _shape(vi) for vi in model.graph.output}
    if "input_ids" not in ins or not any(_PAST.match(n) for n in ins):
        return None
    I64, F32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ModelError(f"the model names the language-model inputs (input_ids, "
                             f"past_key_i...) but {what} (see README, 'Language models')")

    et, ids = ins["input_ids"]
    need(et == I64 and len(ids) == 2 and ids[0] == 1 and ids[1], "input_ids is not int64 [1, S]")
    need("position" in ins and ins["position"] == (I64, (1,)), "position is not int64 [1]")
    seq = ids[1]
    layers = 1 + max(int(_PAST.match(n).group(2)) for n in ins if _PAST.match(n))
    cache = None
    for i in range(layers):
        for kv in ("key", "value"):
            past, present = f"past_{kv}_{i}", f"present_{kv}_{i}"
            need(past in ins, f"{past} is missing")
            et, shp = ins[past]
            need(et == F32 and len(shp) == 4 and shp[0] == 1 and all(shp),
                 f"{past} is not float32 [1, H, T, D]")
            need(cache in (None, shp), f"{past} is shaped {list(shp)}, unlike the other caches")
            cache = shp
            need(present in outs, f"output {present} is missing")
            pshape = outs[present][1]
            need(outs[present][0] == F32 and (not pshape or all(d is None for d in pshape)
                                               or pshape == shp),
                 f"{present} is not shaped like {past} {list(shp)} (a static cache of T rows, "
                 "not one that grows)")
    expected = {"input_ids", "position"} | {f"past_{kv}_{i}" for i in range(layers)
                                            for kv in ("key", "value")}
    need(set(ins) == expected, f"it has other inputs too: {sorted(set(ins) - expected)}")
    need("logits" in outs, "output logits is missing")
    et, lg = outs["logits"]
    need(et == F32 and len(lg) == 3 and lg[:2] in ((1, seq), (None, None), (1, None))
         and lg[2], "logits is not float32 [1, S, V]")
    _, heads, context, head_dim = cache
    need(seq <= context, f"S={seq} is larger than the context T={context}")
    return LMContract(seq, context, int(lg[2]), layers, heads, head_dim)


# ---------------------------------------------------------------- the in-place kernels
def _write_rows_elements(dshape, ishape, dtype: str, itype: str):
    """data[b, h, idx[b, h, s, d], d] = rows[b, h, s, d] (ScatterElements, axis 2)."""
    from tvm.script import tirx as T

    nb, nh, ns, nd = ishape
    rows_t = dshape[2]

    @T.prim_func(s_tir=True)
    def kv_write_rows(data: T.Buffer(dshape, dtype), idx: T.Buffer(ishape, itype),
                      rows: T.Buffer(ishape, dtype)):
        T.func_attr({"tirx.noalias": True})
        for b, h, s, d in T.grid(nb, nh, ns, nd):
            with T.sblock("write"):
                vb, vh, vs, vd = T.axis.remap("SSSS", [b, h, s, d])
                T.reads(idx[vb, vh, vs, vd], rows[vb, vh, vs, vd])
                T.writes(data[vb, vh, 0:rows_t, vd])
                if (idx[vb, vh, vs, vd] >= -rows_t and idx[vb, vh, vs, vd] < rows_t):
                    data[vb, vh, idx[vb, vh, vs, vd] + T.Select(idx[vb, vh, vs, vd] < 0,
                                                                 rows_t, 0), vd] = \
                        rows[vb, vh, vs, vd]

    return kv_write_rows


def _write_rows_nd(dshape, ishape, ushape, dtype: str, itype: str):
    """data[idx[b, h, s, 0..2], :] = rows[b, h, s, :] (ScatterND, indices [.., 3])."""
    from tvm.script import tirx as T

    n0, n1, n2, _ = ishape
    nd = dshape[3]
    d0, d1, d2 = dshape[0], dshape[1], dshape[2]

    @T.prim_func(s_tir=True)
    def kv_write_rows(data: T.Buffer(dshape, dtype), idx: T.Buffer(ishape, itype),
                      rows: T.Buffer(ushape, dtype)):
        T.func_attr({"tirx.noalias": True})
        for a, b, c, d in T.grid(n0, n1, n2, nd):
            with T.sblock("write"):
                va, vb, vc, vd = T.axis.remap("SSSS", [a, b, c, d])
                T.reads(idx[va, vb, vc, 0:3], rows[va, vb, vc, vd])
                T.writes(data[0:d0, 0:d1, 0:d2, vd])
                if (idx[va, vb, vc, 0] >= -d0 and idx[va, vb, vc, 0] < d0
                        and idx[va, vb, vc, 1] >= -d1 and idx[va, vb, vc, 1] < d1
                        and idx[va, vb, vc, 2] >= -d2 and idx[va, vb, vc, 2] < d2):
                    data[idx[va, vb, vc, 0] + T.Select(idx[va, vb, vc, 0] < 0, d0, 0),
                         idx[va, vb, vc, 1] + T.Select(idx[va, vb, vc, 1] < 0, d1, 0),
                         idx[va, vb, vc, 2] + T.Select(idx[va, vb, vc, 2] < 0, d2, 0),
                         vd] = rows[va, vb, vc, vd]

    return kv_write_rows


def _dims(expr) -> tuple[int, ...]:
    return tuple(int(v.value) for v in expr.ty.shape.values)


def _kernel_for(call):
    """The in-place kernel for one scatter call, or None with the reason it does not fit."""
    data, idx, rows = call.args
    dshape, ishape, ushape = _dims(data), _dims(idx), _dims(rows)
    dtype, itype = str(data.ty.dtype), str(idx.ty.dtype)
    reduction = str(getattr(call.attrs, "reduction", "update"))
    if reduction not in ("update", "none"):
        return None, f"reduction {reduction}"
    if len(dshape) != 4:
        return None, f"rank {len(dshape)}"
    if call.op.name == "relax.scatter_elements":
        if int(call.attrs.axis) not in (2, -2):
            return None, f"axis {int(call.attrs.axis)}"
        if ishape != ushape or len(ishape) != 4:
            return None, "indices not shaped like the rows"
        return _write_rows_elements(dshape, ishape, dtype, itype), ""
    if len(ishape) != 4 or ishape[3] != 3 or ushape != ishape[:3] + dshape[3:]:
        return None, f"ScatterND indices {list(ishape)} (edgec takes [.., 3]: batch, head, row)"
    return _write_rows_nd(dshape, ishape, ushape, dtype, itype), ""


def _uses(func) -> dict:
    """Var -> how many times an expression other than shape_of reads it."""
    from tvm import relax

    counts: dict = {}

    def visit(expr):
        if isinstance(expr, relax.Call):
            if getattr(expr.op, "name", "") == "relax.shape_of":
                return
            for a in expr.args:
                if isinstance(a, relax.Var):
                    counts[a] = counts.get(a, 0) + 1
        elif isinstance(expr, relax.Tuple):
            for a in expr.fields:
                if isinstance(a, relax.Var):
                    counts[a] = counts.get(a, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def _scattered(func, caches) -> set:
    """The caches that a scatter_elements / scatter_nd call takes as its data."""
    from tvm import relax

    found = set()

    def visit(expr):
        if (isinstance(expr, relax.Call) and getattr(expr.op, "name", "") in
                ("relax.scatter_elements", "relax.scatter_nd") and expr.args[0] in caches):
            found.add(expr.args[0])

    relax.analysis.post_order_visit(func.body, visit)
    return found


def _make_pass():
    import tvm
    import tvm_ffi
    from tvm import relax

    # A ModelError raised inside the pass crosses TVM's FFI: registered, it comes back as
    # itself (a one-line error) instead of a RuntimeError with a traceback.
    tvm_ffi.register_error(ModelError)

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def __init__(self, mod, caches):
            super().__init__(mod)
            self.caches = caches
            self.done: list[str] = []
            self.refused: list[str] = []
            self.rewritten_scores = 0

        def _is_cache(self, var) -> bool:
            """``var`` is a cache after its in-place update."""
            if not isinstance(var, relax.Var):
                return False
            bound = self.lookup_binding(var)
            return (isinstance(bound, relax.Call)
                    and getattr(bound.op, "name", "") == "relax.call_tir_inplace"
                    and bound.args[0].name_hint == "kv_write_rows")

        def _scores_without_transposed_cache(self, call):
            """matmul(q, permute_dims(K, [0, 1, 3, 2])) -> permute_dims(matmul(K, q^T)):
            the same products, and no [H, D, T] copy of the key cache per token (q^T and
            the [T, S] result are S rows, a reshape when S = 1)."""
            a, b = call.args
            kt = self.lookup_binding(b) if isinstance(b, relax.Var) else None
            if not (isinstance(kt, relax.Call) and getattr(kt.op, "name", "") ==
                    "relax.permute_dims" and kt.attrs.axes is not None
                    and [int(x) for x in kt.attrs.axes] == [0, 1, 3, 2]
                    and self._is_cache(kt.args[0]) and len(a.ty.shape.values) == 4):
                return None
            swap = [0, 1, 3, 2]
            qt = self.builder_.emit(relax.op.permute_dims(a, swap))
            st = self.builder_.emit(relax.op.matmul(kt.args[0], qt, call.attrs.out_dtype))
            self.rewritten_scores += 1
            return relax.op.permute_dims(st, swap)

        def visit_call_(self, op):
            call = self.visit_expr_post_order(op)
            name = getattr(call.op, "name", "")
            if name == "relax.matmul":
                new = self._scores_without_transposed_cache(call)
                return call if new is None else new
            if name not in ("relax.scatter_elements", "relax.scatter_nd"):
                return call
            data = call.args[0]
            if not (isinstance(data, relax.Var) and data in self.caches):
                return call
            kernel, why = _kernel_for(call)
            if kernel is None:
                self.refused.append(f"{data.name}: {why}")
                return call
            gv = self.builder_.add_func(kernel, "kv_write_rows")
            self.done.append(data.name)
            return relax.op.call_tir_inplace(gv, relax.Tuple(list(call.args)), [0], data.ty)

    @tvm.transform.module_pass(opt_level=0, name="WriteCacheInPlace")
    class WriteCacheInPlace:
        """See the module docstring. A model with no ``past_*`` parameter is unchanged."""

        def transform_module(self, mod, ctx):
            main = mod["main"]
            caches = [p for p in main.params if _PAST.match(p.name)]
            if not caches:
                return mod
            scattered = _scattered(main, caches)
            if not scattered:  # past_* inputs of some other design: not this pass's business
                return mod
            uses = _uses(main)
            shared = [p.name for p in caches if uses.get(p, 0) > 1]
            if shared:
                raise ModelError(f"the KV cache input(s) {', '.join(shared)} are read by more "
                                 "than the node that writes the new rows; edgec updates the "
                                 "cache in place and cannot compile this graph")
            rw = _Rewrite(mod, set(caches))
            new_main = rw.visit_expr(main)
            missing = sorted({p.name for p in caches} - set(rw.done))
            if missing:
                why = "; ".join(rw.refused) or "no ScatterElements/ScatterND writes them"
                raise ModelError(f"the new K/V rows of {', '.join(missing)} are not written by "
                                 f"a ScatterElements on axis 2 or a ScatterND with [.., 3] "
                                 f"indices on the past input ({why})")
            out = rw.builder_.get()
            out.update_func(out.get_global_var("main"), new_main)
            log.info("KV cache written in place for %d cache tensors; %d attention score "
                     "matmuls read the key cache untransposed", len(rw.done), rw.rewritten_scores)
            return out

    return WriteCacheInPlace


def write_cache_in_place():
    """The pass instance (TVM is imported only when a pipeline is built)."""
    return _make_pass()()
