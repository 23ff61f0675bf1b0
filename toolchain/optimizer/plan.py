"""Turn an optimized Relax module into a flat, static kernel plan (no TVM objects inside).

Before: ``main`` is a sequence of ``call_tir`` bindings on static shapes (the output of a
CPU pipeline, ``toolchain.targets.cpu.pipeline``). After: a ``KernelPlan`` listing buffers (graph
inputs, constants, temporaries), kernel calls in order, and which buffers are the outputs. The
ARM driver generator and the memory planner work on this plain data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toolchain.errors import ModelError

INPUT, CONST, TEMP = "input", "const", "temp"


@dataclass(frozen=True)
class Buffer:
    id: int
    kind: str  # INPUT, CONST or TEMP
    shape: tuple[int, ...]
    dtype: str
    index: int = -1  # input position, or constant position in KernelPlan.constants

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class KernelCall:
    kernel: str  # the PrimFunc's global symbol
    args: tuple[int, ...]  # buffer ids: inputs first, then outputs
    num_outputs: int

    @property
    def inputs(self) -> tuple[int, ...]:
        return self.args[: len(self.args) - self.num_outputs]

    @property
    def outputs(self) -> tuple[int, ...]:
        return self.args[len(self.args) - self.num_outputs:]


@dataclass
class KernelPlan:
    buffers: list[Buffer] = field(default_factory=list)
    calls: list[KernelCall] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    constants: list[np.ndarray] = field(default_factory=list)

    def add(self, kind: str, shape, dtype: str, index: int = -1) -> int:
        buf = Buffer(len(self.buffers), kind, tuple(int(d) for d in shape), str(dtype), index)
        self.buffers.append(buf)
        return buf.id

    def kernels(self) -> list[str]:
        """Distinct kernels, in order of first call."""
        return list(dict.fromkeys(c.kernel for c in self.calls))

    @property
    def weight_bytes(self) -> int:
        return sum(int(c.nbytes) for c in self.constants)


def _static_shape(ty, what: str) -> tuple[tuple[int, ...], str]:
    shape = getattr(ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None:
        raise ModelError(f"{what} has no static shape ({ty}); give --input-shape")
    dims = []
    for v in values:
        if not hasattr(v, "value"):
            raise ModelError(f"{what} has a dynamic dimension '{v}'; give --input-shape")
        dims.append(int(v.value))
    return tuple(dims), str(ty.dtype)


def build_plan(mod) -> KernelPlan:
    """Walk ``mod["main"]`` and return its KernelPlan."""
    from tvm import relax
    from tvm.ir.expr import GenericConst

    main = mod["main"]
    plan = KernelPlan()
    env: dict = {}  # relax Var -> buffer id, or tuple of them
    const_ids: dict[int, int] = {}  # id() of constant object handle -> buffer id

    for i, param in enumerate(main.params):
        shape, dtype = _static_shape(param.ty, f"input '{param.name}'")
        env[param] = plan.add(INPUT, shape, dtype, i)
        plan.inputs.append(env[param])

    def constant(expr) -> int:
        key = expr.__chandle__() if hasattr(expr, "__chandle__") else id(expr)
        if key not in const_ids:
            arr = expr.value.numpy()
            plan.constants.append(np.ascontiguousarray(arr))
            const_ids[key] = plan.add(CONST, arr.shape, arr.dtype.name, len(plan.constants) - 1)
        return const_ids[key]

    def value_of(expr):
        if isinstance(expr, relax.Var):
            if expr not in env:
                raise ModelError(f"internal: variable {expr.name} used before definition")
            return env[expr]
        if isinstance(expr, GenericConst):
            return constant(expr)
        if isinstance(expr, relax.Tuple):
            return tuple(value_of(f) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return value_of(expr.tuple_value)[expr.index]
        raise ModelError(f"cannot plan a static call for expression of type "
                         f"{type(expr).__name__}: {str(expr)[:120]}")

    def flat(v) -> list[int]:
        return [x for item in v for x in flat(item)] if isinstance(v, tuple) else [v]

    for block in main.body.blocks:
        for binding in block.bindings:
            val = binding.value
            op = getattr(val, "op", None)
            if isinstance(val, relax.Call) and getattr(op, "name", "") == "relax.call_tir":
                if len(val.args) > 2:
                    raise ModelError(f"kernel {val.args[0].name_hint} takes symbolic shape "
                                     "arguments; a static plan needs static shapes")
                ins = flat(value_of(val.args[1]))
                out_ty = binding.var.ty
                fields = list(out_ty.fields) if hasattr(out_ty, "fields") else [out_ty]
                outs = []
                for f in fields:
                    shape, dtype = _static_shape(f, f"output of {val.args[0].name_hint}")
                    outs.append(plan.add(TEMP, shape, dtype))
                plan.calls.append(KernelCall(val.args[0].name_hint, tuple(ins + outs), len(outs)))
                env[binding.var] = tuple(outs) if hasattr(out_ty, "fields") else outs[0]
            elif isinstance(val, relax.Call) and getattr(op, "name", "") == \
                    "relax.call_tir_inplace":
                # The kernel writes into some of its inputs (a KV cache): the result is that
                # very buffer, and the call has no output arguments of its own.
                ins = flat(value_of(val.args[1]))
                written = [ins[int(i)] for i in val.attrs.inplace_indices]
                plan.calls.append(KernelCall(val.args[0].name_hint, tuple(ins), 0))
                env[binding.var] = tuple(written) if len(written) > 1 else written[0]
            elif isinstance(val, relax.Call):
                raise ModelError(f"operator '{getattr(op, 'name', op)}' was not lowered to a "
                                 "kernel; the ARM target cannot run it")
            else:
                env[binding.var] = value_of(val)
    plan.outputs = flat(value_of(main.body.body))
    return plan
