"""ScheduleForCPU: a rule-based CPU schedule for every kernel (no tuning needed).

Before: kernels as LegalizeOps/FuseTIR leave them: one full-size loop nest per op, with every
intermediate (padding, the conv result before its bias and ReLU) a full-size buffer, and
everything scalar. After, per kernel:

1. Injective producers (casts, broadcasts) are inlined into their consumers; padding in front
   of a reduction stays a copy, so the reduction's loads need no bounds checks.
2. Each reduction (conv, matmul, pooling) is register-tiled: the innermost output axis is
   split into a vector of ``lanes`` elements and a second output axis into a small block, the
   reduction loops go between the tile loops and the tile, the accumulator lives in local
   memory, the tile is vectorized and unrolled, and the elementwise epilogue (bias, ReLU, ...)
   is computed per tile so the full-size intermediate shrinks to one tile.
3. Elementwise kernels get their innermost loop vectorized.
4. With ``threads`` > 1, an outer loop of each heavy kernel (conv, matmul, large elementwise)
   becomes a parallel loop over output tiles; TVM's LLVM codegen turns it into a call of
   ``TVMBackendParallelLaunch``, which the generated driver provides. Each output is still
   computed by one thread in the serial reduction order, so results do not change.

Every rule works on a copy of the schedule and is dropped if a primitive refuses, so a kernel
the rules do not fit keeps its plain (correct) loops. Results are identical up to float
reassociation of the reduction order, which the rules do not change.
"""

from __future__ import annotations

import logging

import tvm

from toolchain.targets.cpu.vector import VectorUnit

log = logging.getLogger(__name__)

DATA_PAR, COMM_REDUCE = 0, 2
# Below these sizes a kernel runs serially: waking the pool would cost more than it saves.
PARALLEL_MIN_WORK = 1 << 15  # multiply-adds (loop iterations) of a reduction block
PARALLEL_MIN_ELEMENTS = 1 << 16  # elements of an elementwise block


def _largest_divisor(n: int, choices) -> int:
    for c in choices:
        if c <= n and n % c == 0:
            return c
    return 1


def _vector_tile(extent: int, lanes: int) -> int:
    """The vector tile along an axis: a divisor of ``extent`` (so no tail loop) of at most two
    vector registers, preferring whole registers, then (AVX-512) one partial register; 1 when
    only tiny divisors exist. (A partial tile longer than one register, 28 floats on AVX-512,
    was built lane by lane with inserts: shufflenet's 136-channel grouped 1x1 conv at 28x28 took
    616 us with 28 lanes, 131 with 14.)"""
    divisors = [d for d in range(2, min(extent, 2 * lanes) + 1) if extent % d == 0]
    if not divisors:
        return 1
    aligned = [d for d in divisors if d % lanes == 0]
    one_register = [d for d in divisors if min(3, extent) <= d <= lanes and lanes >= 16]
    best = max(aligned) if aligned else max(one_register or divisors)
    return best if best >= min(3, extent) else 1


def _row_block(extent: int, vx: int, lanes: int) -> int:
    """How many output rows/channels share one vector tile: accumulators fit in ~8 registers."""
    regs = -(-vx // lanes)
    for f in (4, 2):
        if extent % f == 0 and regs * f <= 8:
            return f
    return 1


def _enough_tasks(extent: int, threads: int) -> bool:
    """A parallel loop of ``extent`` iterations balances well enough over ``threads``."""
    return extent >= 4 * threads or (extent >= threads and extent % threads == 0)


def _work(sch, block) -> int:
    n = 1
    for loop in sch.get_loops(block):
        n *= int(sch.get(loop).extent)
    return n


def _parallelize(sch, loops, threads: int) -> bool:
    """Fuse the adjacent ``loops`` (outermost first) and make the result parallel."""
    extent = 1
    for loop in loops:
        extent *= int(sch.get(loop).extent)
    if threads <= 1 or not loops or not _enough_tasks(extent, threads):
        return False
    try:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        sch.parallel(fused)
        return True
    except Exception as exc:  # noqa: BLE001  (the kernel stays serial)
        log.debug("parallel refused: %s", str(exc).splitlines()[0])
        return False


def _iter_types(sch, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_plain_copy(sch, block) -> bool:
    """The block stores a load of another buffer unchanged (no bounds test, no arithmetic)."""
    body = sch.get(block).body
    return isinstance(body, tvm.tirx.BufferStore) and type(body.value).__name__ in (
        "BufferLoad", "TensorLoad")


def _inline_injective(sch) -> None:
    """Inline every spatial block that is not an output and feeds others (to a fixpoint)."""
    changed = True
    while changed:
        changed = False
        outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
        for block in _blocks(sch):
            name = sch.get(block).name_hint
            if name in outputs or any(t != DATA_PAR for t in _iter_types(sch, block)):
                continue
            # Padding stays a separate copy: inlined, every load of a conv's inner loop would
            # carry a bounds check, which defeats vectorization. A "pad" with no padding (a
            # 1x1 or unpadded conv) is a plain copy of the input: inlined, it costs nothing.
            if ("pad" in name.lower() and not _is_plain_copy(sch, block)
                    and any(COMM_REDUCE in _iter_types(sch, c)
                            for c in sch.get_consumers(block))):
                continue
            try:
                sch.compute_inline(block)
                changed = True
                break
            except Exception:  # noqa: BLE001  (a refused inline leaves the block as is)
                continue
    # Chains of elementwise consumers become one block (bias + ReLU).
    changed = True
    while changed:
        changed = False
        for block in _blocks(sch):
            if any(t != DATA_PAR for t in _iter_types(sch, block)):
                continue
            producers = sch.get_producers(block)
            if len(producers) != 1 or any(t != DATA_PAR for t in _iter_types(sch, producers[0])):
                continue
            try:
                sch.reverse_compute_inline(block)
                changed = True
                break
            except Exception:  # noqa: BLE001
                continue


def _tile_reduction(sch, block, lanes: int, threads: int = 1) -> bool:
    loops = sch.get_loops(block)
    types = _iter_types(sch, block)
    if len(loops) != len(types) or COMM_REDUCE not in types:
        return False
    extents = [int(sch.get(l).extent) for l in loops]
    spatial = [i for i, t in enumerate(types) if t == DATA_PAR]
    reduce = [i for i, t in enumerate(types) if t == COMM_REDUCE]
    xi = max((i for i in spatial if extents[i] >= 2), default=None)
    if xi is None:
        return False
    vx = _vector_tile(extents[xi], lanes)
    if vx == 1:
        return False
    fi = next((i for i in spatial if i != xi and extents[i] >= 2), None)
    vf = _row_block(extents[fi], vx, lanes) if fi is not None else 1

    x_o, x_i = sch.split(loops[xi], [None, vx])
    outer, inner = [], [x_i]
    heavy = _work(sch, block) >= PARALLEL_MIN_WORK
    if fi is not None and vf > 1:
        f_o, f_i = sch.split(loops[fi], [None, vf])
        inner = [f_i, x_i]
    for i in spatial:
        if i == xi:
            outer.append(x_o)
        elif fi is not None and vf > 1 and i == fi:
            outer.append(f_o)
        else:
            outer.append(loops[i])
    red_loops = [loops[i] for i in reduce]
    sch.reorder(*outer, *red_loops, *inner)
    anchor = outer[-1]

    # Epilogue (bias, ReLU, ...) per tile: its buffer then shrinks to one tile.
    consumers = sch.get_consumers(block)
    cache = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(cache, anchor, preserve_unit_loops=True)
    _epilogue_at(sch, consumers, anchor)
    _vectorize_innermost(sch, cache)
    if len(inner) == 2:
        sch.unroll(inner[0])
    sch.vectorize(inner[-1])
    if heavy:
        # The tile loops are perfectly nested (the epilogue sits under the innermost).
        _parallelize(sch, outer, threads)
    # Last: a block with its init split off is no longer a reduction, and can be neither
    # vectorized nor parallelized.
    init = sch.decompose_reduction(block, red_loops[0])
    _vectorize_innermost(sch, init)
    return True


def _tile_pool(sch, block, threads: int = 1) -> bool:
    """NCHW max/sum pooling (TOPI's ``pool_max``/``pool_sum``): the window loops go outside
    the output row, which stays a plain innermost loop that LLVM's loop vectorizer turns into
    vector code, stride 2 included (two contiguous loads and a ``vpermt2ps`` on AVX-512).
    Vectorized by TVM over the row instead, a strided window load became one scalar load and
    insert per lane: squeezenet's 128-channel 3x3/2 pool at 55x55 took 575 us against
    onnxruntime's 40. Parallel over channels (and rows) when heavy."""
    if not sch.get(block).name_hint.startswith(("pool_max", "pool_sum")):
        return False
    loops = sch.get_loops(block)
    types = _iter_types(sch, block)
    if len(loops) != 6 or types != [DATA_PAR] * 4 + [COMM_REDUCE] * 2:
        return False
    n, c, y, x, r, s = loops
    sch.reorder(n, c, y, r, s, x)
    if _work(sch, block) >= PARALLEL_MIN_WORK:
        _parallelize(sch, [n, c, y], threads)
    sch.decompose_reduction(block, r)
    return True


def _tile_row_sum(sch, block, lanes: int) -> bool:
    """A sum over the innermost, contiguous axes of its input (global average pooling, a
    ``mean`` over H and W): the innermost reduction axis is factored out (``rfactor``) into a
    local vector of partial sums that adds whole contiguous input rows, then summed once per
    output, with the epilogue (the division) per output. Vectorized over output channels
    instead, every lane loaded one element ``H * W`` floats away from the next: squeezenet's
    1000-channel 13x13 mean took 24 us in isolation, 15-18 this way (AVX-512 host); arm-a72
    squeezenet 130.81M -> 130.56M instructions. Sums in another order, so results differ by
    float rounding."""
    loops = sch.get_loops(block)
    types = _iter_types(sch, block)
    spatial = len(types) - sum(t == COMM_REDUCE for t in types)
    if (len(loops) != len(types) or types[-1] != COMM_REDUCE
            or any(t != DATA_PAR for t in types[:spatial])):
        return False
    stmt = sch.get(block)
    body = stmt.body
    if (not isinstance(body, tvm.tirx.BufferStore) or len(stmt.reads) != 1
            or type(body.value).__name__ != "Add"):
        return False
    data = [v for v in (body.value.a, body.value.b)
            if type(v).__name__ in ("BufferLoad", "TensorLoad")
            and not _buffer_of(v).same_as(body.buffer)]
    if len(data) != 1 or not data[0].indices[-1].same_as(stmt.iter_vars[-1].var):
        return False
    extent = int(sch.get(loops[-1]).extent)
    if not 4 <= extent <= 4 * lanes:
        return False
    consumers = sch.get_consumers(block)
    rf = sch.rfactor(loops[-1], spatial)
    anchor = sch.get_loops(rf)[spatial - 1]
    sch.reverse_compute_at(block, anchor, preserve_unit_loops=True)
    sch.set_scope(rf, 0, "local")
    _epilogue_at(sch, consumers, anchor)
    sch.unroll(sch.get_loops(block)[spatial])
    rf_loops = sch.get_loops(rf)
    sch.vectorize(rf_loops[-1])
    sch.decompose_reduction(rf, rf_loops[spatial])
    return True


def gemv_tile(outputs: int, lanes: int) -> tuple[int, int]:
    """(tile T, vector v) of a batch-1 GEMV with ``outputs`` outputs: ``T / v`` accumulator
    vectors of ``v`` lanes (whole registers, else half ones on AVX-512: 1000 outputs take 8),
    at most 8 of them, T dividing ``outputs`` (no tail). The weights are packed
    ``[N/T, K, T]`` (pack_weights.py). (0, 0): no tile (fewer than 4 lanes divide it)."""
    units = [u for u in (lanes, lanes // 2, 4) if u >= 4 and outputs % u == 0]
    if not units:
        return 0, 0
    v = units[0]
    f = max(d for d in range(1, 9) if (outputs // v) % d == 0)
    return v * f, v


def _tile_packed_gemv(sch, block, lanes: int, threads: int = 1) -> bool:
    """The ``gemv_packed`` kernel (pack_weights.py): per tile of T outputs, the reduction
    streams through its ``K x T`` weights, ``T / v`` vector accumulators in registers, the
    epilogue (bias, ReLU) per tile. Parallel over tiles."""
    if not sch.get(block).name_hint.startswith("gemv_packed"):
        return False
    loops = sch.get_loops(block)
    if len(loops) != 3 or _iter_types(sch, block) != [DATA_PAR, DATA_PAR, COMM_REDUCE]:
        return False
    outputs = int(sch.get(loops[1]).extent)
    tile, v = gemv_tile(outputs, lanes)
    packed = _buffer_of(sch.get(block).reads[1]).shape
    if not tile or len(packed) != 3 or int(packed[2]) != tile:
        return False
    i, n, k = loops
    n_o, n_f, n_v = sch.split(n, [None, tile // v, v])
    sch.reorder(i, n_o, k, n_f, n_v)
    consumers = sch.get_consumers(block)
    cache = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(cache, n_o, preserve_unit_loops=True)
    _epilogue_at(sch, consumers, n_o)
    _vectorize_innermost(sch, cache)
    sch.unroll(n_f)
    sch.vectorize(n_v)
    if _work(sch, block) >= PARALLEL_MIN_WORK:
        _parallelize(sch, [i, n_o], threads)
    sch.decompose_reduction(block, k)
    return True


def _conv_register_tile(channels: int, width: int, lanes: int, taps: int = 1,
                        sliding: bool = False) -> tuple[int, int]:
    """(channel vector vf, pixel count px) of a conv's register tile: the most multiply-adds
    per reduction step whose live vectors fit in the registers (NEON and AVX-512: 32, AVX2:
    16; one spare), px dividing the output width. Live per step: ``px * vf / unit``
    accumulators, ``vf / unit`` weight vectors, and the inputs: with stride 1 and ``taps``
    > 1 (``sliding``) LLVM unrolls the taps of a kernel row and keeps the ``px + taps - 1``
    inputs they share in registers, else about two. (The same tile stays best with the
    input row in vector registers, ``_input_row_in_registers``: counting those inputs at a
    quarter picked wider tiles that ran 3-20% more instructions on arm-a72.) Past the registers the accumulators
    spill (a 3x3 conv at 22 accumulators ran 1.5-2x slower on the AVX-512 host). Ties go to
    the tile with fewer loads per step. When no whole vector divides the channels, an
    AVX-512 target uses half (256-bit) vectors (1000 channels: 8). (0, 1): no vector tile."""
    registers = 16 if lanes == 8 else 32
    unit = lanes // 2 if lanes == 16 and channels % lanes else lanes
    best = (0, 0, 1, 0)
    for vf in (4 * unit, 2 * unit, unit):
        if channels % vf:
            continue
        regs = vf // unit

        def live(p, regs=regs):
            return regs * p + regs + (p + taps - 1 if sliding and taps > 1 else 2)

        px = max((p for p in range(1, width + 1) if width % p == 0 and live(p) < registers),
                 default=1)
        best = max(best, (vf * px, -(px + regs), px, vf))
    return best[3], best[2]


def _pointwise_row_tile(channels: int, width: int, lanes: int) -> tuple[int, int]:
    """(vf, px) of a 1x1 stride-1 conv whose ``px`` inputs per channel are loaded as whole
    vectors and multiplied by element (``_input_row_in_registers``): the tile with the fewest
    instructions per fmla, counting per reduction step ``vf / lanes * px`` fmla, one load per
    weight vector, ``ceil(px / lanes)`` input loads and ~3 of loop, with every live vector in
    the 32 registers. (The 3x3 model above maximizes work per step instead; for 1x1 convs it
    picked 4 channels x 28 pixels, whose 35 live vectors spilled: 1.97 MACs per instruction
    on resnet50's 64->256 conv at 56x56 on arm-a72.) (0, 1): no vector tile."""
    best = None
    for vf in (4 * lanes, 2 * lanes, lanes):
        if channels % vf:
            continue
        regs = vf // lanes
        for px in (p for p in range(1, width + 1) if width % p == 0):
            inputs = -(-px // lanes)
            if regs * px + regs + inputs > 32:
                continue
            cost = (regs * px + regs + inputs + 3) / (regs * px)
            cand = (cost, -regs * px, vf, px)
            best = cand if best is None or cand < best else best
    return (best[2], best[3]) if best else (0, 1)


def _strided_row_tile(channels: int, width: int, lanes: int, taps: int,
                      stride: int) -> tuple[int, int]:
    """(vf, px) of a strided conv whose input row stays in vector registers
    (``_input_row_in_registers``): ``px`` outputs of a ``taps``-wide kernel at ``stride``
    read ``(px - 1) * stride + taps`` contiguous inputs, loaded once per kernel row as whole
    vectors and multiplied by element. The tile with the fewest instructions per fmla, per
    kernel row: ``taps * vf / lanes * px`` fmla, ``taps * vf / lanes`` weight loads, the row's
    vector loads and ~3 of loop, with accumulators, one tap's weights and the row in the 32
    registers. (Per-pixel broadcast loads, the tile of ``_conv_register_tile``, ran 1.6-1.8
    MACs per instruction on resnet50's stride-2 convs on arm-a72; this tile 2.9-3.3.)
    (0, 1): no vector tile."""
    best = None
    for vf in (4 * lanes, 2 * lanes, lanes):
        if channels % vf:
            continue
        regs = vf // lanes
        for px in (p for p in range(1, width + 1) if width % p == 0):
            inputs = -(-((px - 1) * stride + taps) // lanes)
            if regs * px + regs + inputs > 32:
                continue
            fmla = taps * regs * px
            cost = (fmla + taps * regs + inputs + 3) / fmla
            cand = (cost, -regs * px, vf, px)
            best = cand if best is None or cand < best else best
    return (best[2], best[3]) if best else (0, 1)


def conv_tile(channels: int, width: int, kernel: tuple[int, int], stride: int, lanes: int,
              by_element: bool) -> tuple[int, int]:
    """(vf, px) of an NCHW conv's register tile: ``vf`` output channels (the vector, and the
    weight layout's innermost block, pack_weights.py) by ``px`` output pixels; (0, 1) when no
    tile pays. ``kernel`` is (kh, kw). One rule for the weight packing and the schedule, so
    the packed layout is the one the schedule reads."""
    if by_element and stride == 1 and lanes == 4 and kernel == (1, 1):
        vf, px = _pointwise_row_tile(channels, width, lanes)
    elif by_element and stride > 1 and lanes == 4:
        vf, px = _strided_row_tile(channels, width, lanes, kernel[1], stride)
    else:
        vf, px = _conv_register_tile(channels, width, lanes, kernel[1], stride == 1)
    if not vf or px * vf < 2 * min(lanes, vf):
        return 0, 1
    return vf, px


def _buffer_of(region):  # TVM 0.27 calls the region's buffer "source"
    return getattr(region, "buffer", None) or region.source


def _conv_stride(sch, block, width: int, taps: int) -> int:
    """The horizontal stride of an NCHW conv block, from its input's (padded) width."""
    return horizontal_stride(int(_buffer_of(sch.get(block).reads[0]).shape[3]), taps, width)


def horizontal_stride(in_width: int, taps: int, width: int) -> int:
    """The stride that maps a (padded) input row of ``in_width`` onto ``width`` outputs of a
    ``taps``-wide kernel, as the schedule infers it from buffer shapes (1 for one output)."""
    return max(1, (in_width - taps) // (width - 1)) if width > 1 else 1


def _tile_conv_channels(sch, block, lanes: int, threads: int = 1,
                        by_element: bool = False) -> bool:
    """NCHW conv2d: vectorize over output channels, weights in channel tiles.

    Loop nest: n, f_o, y, x_o, c, r, s, x_i (unrolled), f_i (vector). Each step of the
    reduction does one contiguous vector load of weights per ``lanes`` channels and one scalar
    (broadcast) load of the input per pixel: the GEMM micro-kernel shape, independent of the
    image width and of the stride. The weights are read tile-major, ``W'[f_o, c, r, s, f_i]``:
    constant weights come packed so at compile time (pack_weights.py, the layout of
    ``conv_tile``); others are packed per channel tile here, at run time, into the workspace.

    Parallel (``threads`` > 1): over channel tiles (n, f_o) when there are enough of them;
    otherwise over output rows (y, x_o) inside each channel tile.
    """
    if not sch.get(block).name_hint.startswith("conv2d_nchw"):
        return False
    loops = sch.get_loops(block)
    types = _iter_types(sch, block)
    if len(loops) != 7 or types != [DATA_PAR] * 4 + [COMM_REDUCE] * 3:
        return False
    ext = [int(sch.get(l).extent) for l in loops]
    heavy = _work(sch, block) >= PARALLEL_MIN_WORK
    stride = _conv_stride(sch, block, ext[3], ext[6])
    row_vectors = by_element and lanes == 4
    vf, px = conv_tile(ext[1], ext[3], (ext[5], ext[6]), stride, lanes, by_element)
    if not vf:
        return False
    reads = [_buffer_of(region).shape for region in sch.get(block).reads]
    weights = [i for i, shape in enumerate(reads)
               if i > 0 and len(shape) == 4 and int(shape[0]) == ext[1]]
    packed = [i for i, shape in enumerate(reads)
              if i > 0 and len(shape) == 5 and int(shape[0]) * int(shape[4]) == ext[1]]
    if packed and int(reads[packed[0]][4]) != vf:
        log.debug("conv weights packed for %d channels, the rule picks %d", reads[packed[0]][4],
                  vf)
        return False
    if not weights and not packed:
        return False
    n, f, y, x, c, r, s = loops
    f_o, f_i = sch.split(f, [None, vf])
    x_o, x_i = sch.split(x, [None, px])
    sch.reorder(n, f_o, y, x_o, c, r, s, x_i, f_i)
    if not packed:
        copy = sch.cache_read(block, weights[0], "global")
        sch.compute_at(copy, f_o)
        # Tile-major packing: one channel tile's weights are contiguous, so the reduction
        # streams through them instead of striding by the channel count (cache-set conflicts).
        sch.transform_layout(copy, ("write", 0),
                             lambda a, b, cc, d: (a // vf, b, cc, d, a % vf))
        _vectorize_innermost(sch, copy)
    consumers = sch.get_consumers(block)
    cache = sch.cache_write(block, 0, "local")
    # Accumulators channel-innermost, so the vector over f_i is contiguous in registers.
    sch.transform_layout(block, ("write", 0), lambda a, b, cc, d: (a, cc, d, b))
    sch.reverse_compute_at(cache, x_o, preserve_unit_loops=True)
    _epilogue_at(sch, _epilogue_into_store(sch, cache, consumers), x_o)
    if row_vectors:
        _input_row_in_registers(sch, block, r, stride)
        if ext[6] <= 7:  # constant offsets into the row: it stays in registers
            sch.unroll(s)
    sch.unroll(x_i)
    sch.vectorize(f_i)
    if heavy and threads > 1:
        tiles = ext[0] * (ext[1] // vf)
        if _enough_tasks(tiles, threads):
            _parallelize(sch, [n, f_o], threads)
        else:
            _parallelize(sch, [y, x_o], threads)
    sch.decompose_reduction(block, c)
    return True


def _input_row_in_registers(sch, block, r, stride: int = 1) -> None:
    """Conv on NEON: per kernel row (under ``r``), copy the ``(px - 1) * stride + taps``
    contiguous inputs of the tile into a local vector. LLVM then loads them with whole
    ``ldr q`` and multiplies by element (``fmla v.4s, w.4s, in.s[k]``): a quarter of the
    input loads of one ``ld1r``/``ldp s`` per pixel. With ``stride`` > 1 the local row is
    stored by phase (``[i % stride, i // stride]``, when the stride divides the padded
    width): in input order, LLVM loaded the odd elements of a stride-2 row one by one from
    the local copy and spilled them (resnet50's 7x7 stem on arm-a72: 2.39 MACs per
    instruction, 3.10 by phase). Where a primitive refuses (it checks before it changes
    anything), the conv keeps its plain input loads."""
    try:
        row = sch.cache_read(block, 0, "local")
        sch.compute_at(row, r, preserve_unit_loops=True)
    except Exception as exc:  # noqa: BLE001
        log.debug("input row copy refused: %s", str(exc).splitlines()[0])
        return
    if stride > 1:
        try:  # refused when the row's width is no multiple of the stride: kept in order
            sch.transform_layout(row, ("write", 0),
                                 lambda a, b, c, d: (a, b, c, d % stride, d // stride))
        except Exception as exc:  # noqa: BLE001
            log.debug("row by phase refused: %s", str(exc).splitlines()[0])
    _vectorize_innermost(sch, row)


def _epilogue_into_store(sch, cache, consumers) -> list:
    """The conv tile's epilogue (bias, ReLU, ...) inlined into the block that stores the
    channel-innermost accumulators to the NCHW output, which is vectorized over the tile's
    channels (the accumulators' vectors) with its pixels unrolled. As a separate block, the
    store wrote the whole conv result to a full-size intermediate one scalar at a time and
    the epilogue read it back: with a short reduction that round trip dominated (AVX-512
    host, the kernel alone, best of noisy runs: squeezenet's 16->64 1x1 conv at 55x55 200 ->
    85-100 us, onnxruntime's node 90; its 3-channel 3x3/2 stem 1620 -> 730 us, onnxruntime
    805; arm-a72 squeezenet 132.2M -> 130.8M instructions). Returns the epilogue blocks that did not
    inline (each primitive checks before it changes anything), for ``_epilogue_at``."""
    rest = []
    for consumer in consumers:
        try:
            sch.reverse_compute_inline(consumer)
        except Exception as exc:  # noqa: BLE001  (this one stays a block of its own)
            log.debug("epilogue not inlined into the store: %s", str(exc).splitlines()[0])
            rest.append(consumer)
    if not rest:
        loops = sch.get_loops(cache)
        channels, pixels = loops[-3], loops[-1]
        sch.reorder(pixels, channels)
        sch.unroll(pixels)
        sch.vectorize(channels)
    return rest


def _epilogue_at(sch, consumers, loop) -> None:
    """Each epilogue block (bias, ReLU, ...) computed per tile at ``loop``, vectorized over the
    tile's pixels: left to LLVM, the AVX-512 host's epilogue gathered from the tile (resnet50's
    64->256 1x1 conv at 56x56: 2.25 -> 1.43 ms, onnxruntime 1.1 ms; arm-a72 instruction counts
    do not change). One that cannot move stays a separate loop nest."""
    for consumer in consumers:
        try:
            sch.reverse_compute_at(consumer, loop, preserve_unit_loops=True)
            _vectorize_innermost(sch, consumer)
        except Exception:  # noqa: BLE001  (epilogue stays a separate loop nest)
            pass


def _vectorize_innermost(sch, block) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    ext = int(sch.get(loops[-1]).extent)
    if ext > 1 and ext <= 64:
        sch.vectorize(loops[-1])


def _vectorize_elementwise(sch, block, lanes: int, threads: int = 1) -> None:
    loops = sch.get_loops(block)
    if not loops or any(t != DATA_PAR for t in _iter_types(sch, block)):
        return
    # Only a loop nest of its own may go parallel (not an epilogue inside a tiled kernel).
    parallel = (threads > 1 and _work(sch, block) >= PARALLEL_MIN_ELEMENTS
                and len(sch.get_child_blocks(loops[0])) == 1)
    ext = int(sch.get(loops[-1]).extent)
    v = _largest_divisor(ext, (2 * lanes, lanes))
    if v > 1:
        outer, inner = sch.split(loops[-1], [None, v])
        sch.vectorize(inner)
        loops = [*loops[:-1], outer]
    if parallel:
        _parallelize(sch, loops, threads)


def schedule_func(func, target, threads: int = 1, vector: VectorUnit | None = None):
    """Return ``func`` with the CPU rules applied (or unchanged where they do not fit);
    ``threads`` > 1 also makes an outer loop of each heavy kernel parallel. ``vector``: the
    device's SIMD facts (its device file); None asks LLVM for the target's vector width."""
    from tvm.s_tir import Schedule

    vector = vector or VectorUnit.of_target(target)
    lanes = vector.lanes
    # A device that multiplies by a vector element (AArch64 fmla by element) keeps conv input
    # rows in registers; x86 FMAs broadcast from memory for free, and armv7's 16 q registers
    # leave no room for input rows.
    by_element = vector.fma_by_element
    sch = Schedule(func)
    try:
        sch.get_sblock("root")
    except Exception:  # noqa: BLE001  (hand-built TIR, e.g. TVM's scatter: no blocks to tile)
        return func
    try:
        _inline_injective(sch)
    except Exception as exc:  # noqa: BLE001
        log.debug("inline failed: %s", exc)
        sch = Schedule(func)
    for name in [sch.get(b).name_hint for b in _blocks(sch)]:
        trial = sch.copy()
        try:
            block = trial.get_sblock(name)
            types = _iter_types(trial, block)
            if COMM_REDUCE in types:
                conv_trial = trial.copy()
                try:
                    if _tile_conv_channels(conv_trial, conv_trial.get_sblock(name), lanes,
                                           threads, by_element):
                        sch = conv_trial
                        continue
                except Exception as exc:  # noqa: BLE001
                    log.debug("conv rule skipped block %s: %s", name, str(exc).splitlines()[0])
                if (_tile_pool(trial, block, threads) or _tile_row_sum(trial, block, lanes)
                        or _tile_packed_gemv(trial, block, lanes, threads)):
                    sch = trial
                    continue
                if not _tile_reduction(trial, block, lanes, threads):
                    continue
            else:
                _vectorize_elementwise(trial, block, lanes, threads)
        except Exception as exc:  # noqa: BLE001  (keep the kernel's plain loops)
            log.debug("schedule rule skipped block %s: %s", name, str(exc).splitlines()[0])
            continue
        sch = trial
    return sch.mod["main"]


@tvm.transform.module_pass(opt_level=0, name="ScheduleForCPU")
class ScheduleForCPU:
    """Apply ``schedule_func`` to every PrimFunc of the module (``threads``: see module doc;
    ``vector``: the device's SIMD facts, targets/cpu/vector.py)."""

    def __init__(self, target, threads: int = 1, vector: VectorUnit | None = None):
        self.target = target
        self.threads = threads
        self.vector = vector

    def transform_module(self, mod, ctx):
        from tvm import tirx

        from toolchain.targets.cpu.qgemm import schedule_qgemm

        out = mod
        for gv, func in list(mod.functions.items()):
            if isinstance(func, tirx.PrimFunc):
                if func.attrs is not None and "edgec.scheduled" in func.attrs:
                    continue  # scheduled where it was made (targets/cpu/winograd.py)
                if func.attrs is not None and "edgec.qgemm" in func.attrs:
                    new = schedule_qgemm(func, self.target, self.threads)
                else:
                    new = schedule_func(func, self.target, self.threads, self.vector)
                out.update_func(gv, new.with_attrs(func.attrs) if func.attrs is not None else new)
        return out
