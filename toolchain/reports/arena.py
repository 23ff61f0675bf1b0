"""The activation arena over the kernel sequence, for report.json (``memory.arena_trace``).

A read-only analysis of a static kernel plan and its memory plan (``toolchain.optimizer.
memplan``): for every kernel call in order, the bytes of the arena buffers alive during it, and
for every arena buffer its offset, size and lifetime (the call that writes it and the last call
that reads it). That is what the report's arena plot draws: which buffers share which bytes,
and when the arena is at its peak.
"""

from __future__ import annotations

from typing import Sequence


def arena_trace(plan, mem, input_names: Sequence[str] = (),
                output_names: Sequence[str] = ()) -> dict:
    """``memory.arena_trace`` of report.json for ``plan`` (a KernelPlan) placed by ``mem`` (a
    MemoryPlan). Buffer ``first`` is -1 for a graph input (copied in before the first call),
    ``last`` is the number of calls for a model output (read after the last call)."""
    from toolchain.optimizer.memplan import lifetimes

    calls = [c.kernel for c in plan.calls]
    names = {**dict(zip(plan.inputs, input_names)), **dict(zip(plan.outputs, output_names))}
    outputs = set(plan.outputs)
    buffers, live = [], [0] * len(calls)
    for iv in lifetimes(plan):
        role = "output" if iv.buffer in outputs else "input" if iv.start < 0 else "temp"
        buffers.append({
            "id": iv.buffer, "offset": mem.offsets[iv.buffer], "bytes": iv.size,
            "first": iv.start, "last": iv.end, "role": role,
            "name": names.get(iv.buffer) or (calls[iv.start] if iv.start >= 0 else "input"),
        })
        for i in range(max(iv.start, 0), min(iv.end, len(calls) - 1) + 1):
            live[i] += iv.size
    peak = max(range(len(live)), key=live.__getitem__, default=0)
    return {"calls": calls, "live_bytes": live, "buffers": buffers,
            "peak_bytes": live[peak] if live else 0, "peak_call": peak}
