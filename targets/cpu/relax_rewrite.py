"""What the CPU family's Relax rewrites share (weight_only, qgather, pack_weights): reading a
constant or an op name off an expression, following a variable to the value bound to it, and
running one rewriter over every Relax function of a module. TVM is imported when called."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np


def const_value(expr) -> np.ndarray | None:
    """The value of a Relax constant, else None."""
    from tvm.ir.expr import GenericConst

    return expr.value.numpy() if isinstance(expr, GenericConst) else None


def static_shape(expr) -> list[int] | None:
    """The static shape of a Relax expression, or None when any dimension is symbolic."""
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(hasattr(d, "value") for d in shape):
        return None
    return [int(d.value) for d in shape]


def op_name(expr) -> str:
    """The op a Relax call calls ("relax.take"), else ""."""
    from tvm import relax

    return getattr(getattr(expr, "op", None), "name", "") if isinstance(expr, relax.Call) else ""


def bound_value(mutator, expr):
    """``expr``, followed through the variables bound in ``mutator``'s function to the value
    bound last; None for a function parameter (or a chain too long to be real)."""
    from tvm import relax

    for _ in range(64):
        if not isinstance(expr, relax.Var):
            return expr
        try:
            value = mutator.lookup_binding(expr)
        except Exception:  # noqa: BLE001  (a parameter)
            return None
        if value is None:
            return None
        expr = value
    return None


def rewrite_functions(mod, make_rewriter: Callable, count: Callable[[object], int], what: str,
                      log: logging.Logger):
    """Visit every Relax function of ``mod`` with a fresh ``make_rewriter(mod)`` (a
    PyExprMutator), log ``count(rewriter)`` rewrites as ``what``, and drop what became dead."""
    from tvm import relax

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            rw = make_rewriter(mod)
            new = rw.visit_expr(func)
            mod = rw.builder_.get()
            mod[gv] = new
            if count(rw):
                log.info("%s: %d %s", gv.name_hint, count(rw), what)
    return relax.transform.DeadCodeElimination(["main"])(mod)
