"""Weight-only quantized matmuls: ``MatMul(x, DequantizeLinear(Wq, scale))`` with float ``x``.

The ONNX form (what language-model exports write): ``Wq`` a constant ``[K, N]``, no zero
point (or zero), and either

- int8, ``scale`` ``[N]`` (axis 1) or a scalar: one scale per output channel; or
- int4 (opset 21 ``INT4``), ``scale`` ``[K/G, N]``, ``axis=0``, ``block_size=G``: one scale
  per group of ``G`` weights along K and channel.

Two steps, before and after the Relax import:

``ExpandInt4Weights`` (ONNX, at import; ``toolchain/passes/expand_int4.py``): TVM's importer takes neither ``INT4`` tensors nor
blocked DequantizeLinear. An int4 weight becomes an int8 container with the same values, and a
blocked dequantize (int4, or int8 with a group size) an equivalent per-axis one on a ``[K/G * N, G]`` view followed by
Reshape/Transpose/Reshape back to ``[K, N]``, which TVM imports unchanged and computes right.

``LowerWeightOnlyMatMul`` (Relax, first in ``simplify``, before FoldConstant would fold the
dequantize into float weights): each such matmul (with a constant bias Add after it, if any)
becomes one ``wgemv.py`` kernel whose weights stay int8 / int4 packed two per byte, dequantized
in registers. Activations stay float32.
"""

from __future__ import annotations

import logging

import numpy as np

from toolchain.targets.cpu.relax_rewrite import (bound_value, const_value, op_name,
                                                 rewrite_functions, static_shape)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------ Relax
def _relax_pass():
    import tvm
    from tvm import relax

    from toolchain.targets.cpu import wgemv, wgemv_dot

    const, op = const_value, op_name

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def __init__(self, mod, target, threads, int8_act):
            super().__init__(mod)
            self.target = target
            self.threads = threads
            self.int8_act = int8_act
            self.rewritten = 0
            self.kernels = {}  # emitted var -> (x2d, q, scale, spec, out_shape)

        def _value(self, expr):
            return bound_value(self, expr)

        def _alias_root(self, expr):
            """``expr`` with var-to-var bindings followed."""
            for _ in range(64):
                if not isinstance(expr, relax.Var):
                    break
                try:
                    value = self.lookup_binding(expr)
                except Exception:  # noqa: BLE001
                    break
                if not isinstance(value, relax.Var):
                    break
                expr = value
            return expr

        def _dequantized(self, expr):
            """(q int [K, N], scale float [K/G, N], G) of a constant weight, or None."""
            call = self._value(expr)
            if op(call) == "relax.dequantize":
                q, s, z = (const(a) for a in call.args)
                if q is None or s is None or q.dtype != np.int8 or q.ndim != 2:
                    return None
                if z is not None and np.any(z != 0):
                    return None
                if s.size == 1:
                    s = np.full(q.shape[1], float(s.reshape(())), np.float32)
                elif int(call.attrs.axis) % 2 != 1 or s.size != q.shape[1]:
                    return None
                return q, s.reshape(1, -1).astype(np.float32), q.shape[0]
            # The blocked form ExpandInt4Weights writes: reshape(permute(reshape(dequantize))).
            if op(call) != "relax.reshape":
                return None
            tr = self._value(call.args[0])
            if op(tr) != "relax.permute_dims" or [int(a) for a in tr.attrs.axes] != [0, 2, 1]:
                return None
            r1 = self._value(tr.args[0])
            if op(r1) != "relax.reshape":
                return None
            dq = self._value(r1.args[0])
            if op(dq) != "relax.dequantize" or int(dq.attrs.axis) != 0:
                return None
            view, s, z = (const(a) for a in dq.args)
            shape3, shape2 = static_shape(r1), static_shape(call)
            if view is None or s is None or view.dtype != np.int8 or view.ndim != 2:
                return None
            if z is not None and np.any(z != 0):
                return None
            if shape3 is None or shape2 is None or len(shape3) != 3:
                return None
            kb, n, block = shape3
            if view.shape != (kb * n, block) or s.size != kb * n or shape2 != [kb * block, n]:
                return None
            q = view.reshape(kb, n, block).transpose(0, 2, 1).reshape(kb * block, n)
            return q, s.reshape(kb, n).astype(np.float32), block

        def _matmul(self, call):
            if op(call) != "relax.matmul" or str(getattr(call.ty, "dtype", "")) != "float32":
                return None
            weight = self._dequantized(call.args[1])
            x = call.args[0]
            xs, out_shape = static_shape(x), static_shape(call)
            if weight is None or xs is None or out_shape is None or len(xs) not in (2, 3):
                return None
            if len(xs) == 3 and xs[0] != 1:
                return None
            q, s, block = weight
            k, n = q.shape
            if xs[-1] != k:
                return None
            # Weights that all lie in [-8, 7] are stored two per byte (exactly the same values).
            bits = 4 if int(q.min(initial=0)) >= -8 and int(q.max(initial=0)) <= 7 else 8
            rows = int(np.prod(xs[:-1]))
            if self.int8_act and wgemv_dot.supported(k, block, self.target):
                sdot = wgemv_dot.has_sdot(self.target)
                tile, row_tile = (wgemv_dot.dot_tiles(rows, n) if sdot
                                  else wgemv.choose_tiles(self.target, rows, n, bits))
                return x, q, s, wgemv.WeightOnlySpec(rows, k, n, bits, block, tile, row_tile,
                                                     False, True, sdot), out_shape
            tile, row_tile = wgemv.choose_tiles(self.target, rows, n, bits)
            if bits == 4 and tile % 2:
                bits = 8
            spec = wgemv.WeightOnlySpec(rows, k, n, bits, block, tile, row_tile, False)
            return x, q, s, spec, out_shape

        def _emit(self, x, q, s, spec, out_shape, bias=None):
            x2 = self.builder_.emit(relax.op.reshape(x, [spec.rows, spec.k]))
            kind = wgemv_dot if spec.int8_act else wgemv
            args = [x2, relax.const(kind.pack_weights(q, spec)),
                    relax.const(wgemv.pack_scales(s, spec))]
            if bias is not None:
                args.append(relax.const(bias.astype(np.float32)))

            def kernel(xt, wt, st, bt=None):
                if spec.int8_act:
                    return wgemv_dot.wgemv_dot_te(xt, wt, st, bt, spec)
                return wgemv.wgemv_te(xt, wt, st, bt, spec)

            y = self.builder_.emit(self.builder_.call_te(
                kernel, *args, primfunc_name_hint=f"wgemv_{'a8' if spec.int8_act else ''}"
                                                  f"int{spec.bits}",
                primfunc_attrs={"op_pattern": 8, "edgec.wgemv": _spec_attr(spec)}))
            self.rewritten += 1
            out = self.builder_.emit(relax.op.reshape(y, out_shape))
            self.kernels[out] = (x, q, s, spec, out_shape)
            return out

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if op(call) == "relax.matmul":
                found = self._matmul(call)
                return call if found is None else self._emit(*found)
            if op(call) == "relax.add":
                for a, b in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
                    a = self._alias_root(a)
                    if a in self.kernels and const(b) is not None:
                        x, q, s, spec, out_shape = self.kernels[a]
                        bias = const(b)
                        if bias.size == spec.n and bias.shape[-1] == spec.n and bias.ndim <= len(
                                out_shape):
                            spec = wgemv.WeightOnlySpec(**{**spec.__dict__, "has_bias": True})
                            return self._emit(x, q, s, spec, out_shape, bias.reshape(-1))
            return call

    @tvm.transform.module_pass(opt_level=0, name="LowerWeightOnlyMatMul")
    class LowerWeightOnlyMatMul:
        """Rewrite weight-only quantized matmuls into ``wgemv`` kernels (module doc)."""

        def __init__(self, target=None, threads: int = 1, int8_activations: bool = False):
            self.target = target
            self.threads = threads
            self.int8_activations = int8_activations

        def transform_module(self, mod, ctx):
            return rewrite_functions(
                mod, lambda m: _Rewriter(m, self.target, self.threads, self.int8_activations),
                lambda rw: rw.rewritten, "weight-only matmuls kept quantized", log)

    return LowerWeightOnlyMatMul


_SPEC_FIELDS = ("rows", "k", "n", "bits", "group", "tile", "row_tile", "has_bias", "int8_act",
                "sdot")


def _spec_attr(spec) -> str:
    return ",".join(str(int(getattr(spec, f))) for f in _SPEC_FIELDS)


def spec_from_attr(text: str):
    from toolchain.targets.cpu.wgemv import WeightOnlySpec

    vals = [int(v) for v in str(text).split(",")]
    return WeightOnlySpec(*vals[:7], *(bool(v) for v in vals[7:]))


def LowerWeightOnlyMatMul(target=None, threads: int = 1,  # noqa: N802  (a pass, by its name)
                          int8_activations: bool = False):
    """``int8_activations``: the int8-activation variant (``wgemv_dot.py``: x quantized per
    row at run time, int8 products summed in int32: sdot on dot-product cores, smull/smlal
    on other AArch64 ones); the (exact) float-activation kernel where it does not apply."""
    return _relax_pass()(target, threads, int8_activations)


def ScheduleWeightOnly(target=None, threads: int = 1, then=None):  # noqa: N802
    """The schedule stage: ``wgemv`` kernels get ``wgemv.schedule_wgemv``, every other kernel
    goes to ``then`` (edgec's ScheduleForCPU)."""
    import tvm
    from tvm import tirx

    from toolchain.targets.cpu import wgemv, wgemv_dot

    @tvm.transform.module_pass(opt_level=0, name="ScheduleWeightOnly")
    def _pass(mod, ctx):
        mine = {gv: f for gv, f in mod.functions.items()
                if isinstance(f, tirx.PrimFunc) and f.attrs is not None and "edgec.wgemv" in f.attrs}
        if then is not None:
            rest = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv not in mine},
                                attrs=mod.attrs, global_infos=mod.global_infos)
            rest = then(rest)
            out = tvm.IRModule(dict(rest.functions.items()), attrs=rest.attrs,
                               global_infos=rest.global_infos)
        else:
            out = mod
        for gv, f in mine.items():
            spec = spec_from_attr(f.attrs["edgec.wgemv"])
            new = (wgemv_dot.schedule_wgemv_dot(f, spec, target, threads) if spec.int8_act
                   else wgemv.schedule_wgemv(f, spec, threads))
            out.update_func(gv, new.with_attrs(f.attrs))
        return out

    return _pass
