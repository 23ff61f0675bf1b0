"""Static activation memory planning with liveness-based reuse (pure Python, no TVM).

Before: a KernelPlan (calls in execution order). After: every buffer that lives in the arena
(graph inputs, which the driver copies in, and every kernel result) has a byte offset; two
buffers share bytes only if their lifetimes do not overlap. Constants are not in the arena.

Placement is greedy by size, largest first, at the lowest aligned offset that clashes with no
placed buffer alive at the same time (the classic "greedy by size" heuristic for offline
planning). Results that are model outputs stay alive to the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolchain.optimizer.plan import CONST, KernelPlan

ALIGN = 64


def _align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class Interval:
    buffer: int
    size: int
    start: int  # index of the call that writes it (-1: before the first call)
    end: int  # index of the last call that reads it (len(calls): read after the last call)


@dataclass(frozen=True)
class MemoryPlan:
    offsets: dict[int, int]  # buffer id -> byte offset in the arena
    arena_bytes: int  # with reuse
    no_reuse_bytes: int  # every buffer in its own slot

    def to_json(self) -> dict:
        return {"arena_bytes": self.arena_bytes, "arena_bytes_without_reuse": self.no_reuse_bytes,
                "buffers": len(self.offsets)}


def lifetimes(plan: KernelPlan) -> list[Interval]:
    """The live interval of every arena buffer, in the order the buffers were created."""
    start: dict[int, int] = {b: -1 for b in plan.inputs}
    end: dict[int, int] = {b: -1 for b in plan.inputs}
    for i, call in enumerate(plan.calls):
        for b in call.outputs:
            start.setdefault(b, i)
            end[b] = max(end.get(b, i), i)
        for b in call.inputs:
            if b in end:
                end[b] = max(end[b], i)
    last = len(plan.calls)
    for b in plan.outputs:
        if b in end:
            end[b] = last
    return [Interval(b, plan.buffers[b].nbytes, start[b], end[b])
            for b in sorted(start) if plan.buffers[b].kind != CONST]


def overlaps(a: Interval, b: Interval) -> bool:
    return a.start <= b.end and b.start <= a.end


def plan_memory(plan: KernelPlan) -> MemoryPlan:
    intervals = lifetimes(plan)
    order = sorted(intervals, key=lambda iv: (-iv.size, iv.start, iv.buffer))
    placed: list[tuple[int, Interval]] = []  # (offset, interval)
    offsets: dict[int, int] = {}
    for iv in order:
        clashes = sorted((off, off + _align(other.size)) for off, other in placed
                         if overlaps(iv, other))
        offset = 0
        for lo, hi in clashes:
            if offset + _align(iv.size) <= lo:
                break
            offset = max(offset, hi)
        offsets[iv.buffer] = offset
        placed.append((offset, iv))
    arena = max((off + _align(iv.size) for off, iv in placed), default=0)
    no_reuse = sum(_align(iv.size) for iv in intervals)
    return MemoryPlan(dict(sorted(offsets.items())), arena, no_reuse)


def check_plan(plan: KernelPlan, mem: MemoryPlan) -> None:
    """Assert no two buffers alive at once share a byte (used by tests and after planning)."""
    ivs = {iv.buffer: iv for iv in lifetimes(plan)}
    items = sorted(ivs.values(), key=lambda iv: mem.offsets[iv.buffer])
    for i, a in enumerate(items):
        a_lo = mem.offsets[a.buffer]
        for b in items[i + 1:]:
            b_lo = mem.offsets[b.buffer]
            if b_lo >= a_lo + _align(a.size):
                break
            if overlaps(a, b) and a.size and b.size:
                raise AssertionError(f"buffers {a.buffer} and {b.buffer} overlap in time and space")
