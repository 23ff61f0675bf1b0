"""The static memory planner: no two live buffers share bytes, and reuse really saves memory."""

import numpy as np
import pytest

from toolchain.optimizer.memplan import check_plan, lifetimes, plan_memory
from toolchain.optimizer.plan import CONST, INPUT, TEMP, KernelCall, KernelPlan


def chain(sizes: list[int]) -> KernelPlan:
    """x -> k0 -> t0 -> k1 -> t1 ... (float32 vectors of the given lengths)."""
    p = KernelPlan()
    prev = p.add(INPUT, (sizes[0],), "float32", 0)
    p.inputs.append(prev)
    w = p.add(CONST, (4,), "float32", 0)
    p.constants.append(np.zeros(4, np.float32))
    for i, n in enumerate(sizes[1:]):
        out = p.add(TEMP, (n,), "float32")
        p.calls.append(KernelCall(f"k{i}", (prev, w, out), 1))
        prev = out
    p.outputs.append(prev)
    return p


def test_chain_reuses_memory():
    p = chain([1024, 1024, 1024, 1024, 1024])
    mem = plan_memory(p)
    check_plan(p, mem)
    # at any time only a kernel's input and output are alive: two 4 KiB buffers
    assert mem.arena_bytes == 2 * 4096
    assert mem.no_reuse_bytes == 5 * 4096
    assert CONST not in {p.buffers[b].kind for b in mem.offsets}


def test_output_stays_alive_to_the_end():
    p = chain([16, 16, 16])
    # make the first temp an extra model output: it must not be overwritten later
    p.outputs.insert(0, p.calls[0].outputs[0])
    ivs = {iv.buffer: iv for iv in lifetimes(p)}
    assert ivs[p.calls[0].outputs[0]].end == len(p.calls)
    mem = plan_memory(p)
    check_plan(p, mem)
    offs = {mem.offsets[b] for b in p.outputs}
    assert len(offs) == 2


def test_branches_and_join():
    # x -> a, x -> b, (a, b) -> c : a and b are alive together
    p = KernelPlan()
    x = p.add(INPUT, (256,), "float32", 0)
    p.inputs.append(x)
    a = p.add(TEMP, (256,), "float32")
    b = p.add(TEMP, (512,), "float32")
    c = p.add(TEMP, (128,), "float32")
    p.calls += [KernelCall("ka", (x, a), 1), KernelCall("kb", (x, b), 1),
                KernelCall("kc", (a, b, c), 1)]
    p.outputs.append(c)
    mem = plan_memory(p)
    check_plan(p, mem)
    assert mem.offsets[a] != mem.offsets[b]
    # x, a and b are alive during kb (4 KiB); c fits into x's place, which is dead by then
    assert mem.arena_bytes == 1024 + 1024 + 2048
    assert mem.offsets[c] == mem.offsets[x]


@pytest.mark.parametrize("seed", range(20))
def test_random_graphs_never_overlap(seed):
    rng = np.random.default_rng(seed)
    p = KernelPlan()
    x = p.add(INPUT, (int(rng.integers(1, 300)),), "float32", 0)
    p.inputs.append(x)
    live = [x]
    for i in range(int(rng.integers(3, 25))):
        ins = list(rng.choice(live, size=min(len(live), int(rng.integers(1, 3))), replace=False))
        out = p.add(TEMP, (int(rng.integers(1, 5000)),), "float32")
        p.calls.append(KernelCall(f"k{i}", tuple(int(v) for v in ins) + (out,), 1))
        live.append(out)
    p.outputs.append(live[-1])
    mem = plan_memory(p)
    check_plan(p, mem)
    assert mem.arena_bytes <= mem.no_reuse_bytes


def test_check_plan_catches_overlap():
    p = chain([64, 64, 64])
    mem = plan_memory(p)
    bad = dict(mem.offsets)
    first, second = p.calls[0].inputs[0], p.calls[0].outputs[0]
    bad[second] = bad[first]
    from toolchain.optimizer.memplan import MemoryPlan

    with pytest.raises(AssertionError):
        check_plan(p, MemoryPlan(bad, mem.arena_bytes, mem.no_reuse_bytes))
