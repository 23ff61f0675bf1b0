"""Row-chunk im2col for int8 convs on few input channels (an RGB stem: C = 3, a mono one: 1).

The GEMM's reduction ``k = (r, s, c)`` is contiguous in channels only: with C = 3 the im2col of
``qgemm.gemm_te`` gathers each byte on its own, with its bounds checks (squeezenet's stem:
~200 instructions per output pixel for 27 products, more than the sdots). Here the input is
padded once (the conv's padding, with its zero point, and a few slack columns) and viewed as
rows of ``W_pad * C`` bytes: the taps of one kernel row are then ``S * C`` contiguous
bytes, ``x[n, y * sh + r * dh, x * sw * C : + S * C]``, copied as one vector. The reduction
becomes ``k = (r, j)`` with ``j`` in a chunk of ``S * C`` rounded up (to 4, or to a multiple of
8); the bytes past ``S * C`` meet zero weights. Costs: the padded copy (fused with the
quantize or transpose that makes the input) and the zero weights of the chunk's tail
(squeezenet's stem: 48 reduction bytes instead of 32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RowChunks:
    """How a conv's input is read as rows: ``channels`` C, ``chunk`` reduction bytes per
    kernel row, ``out_w`` the output width (the slack columns widen the input)."""

    channels: int
    chunk: int
    out_w: int

    @property
    def vector(self) -> int:
        """Bytes of one im2col copy: every copy lies in one chunk."""
        return 4 if self.chunk == 4 else 16 if self.chunk % 16 == 0 else 8


def row_chunk(kernel: tuple[int, int], dilation: tuple[int, int], channels: int,
              out_channels: int) -> int:
    """Reduction bytes per kernel row for a row-chunk im2col, or 0 where the plain one is as
    good (channels a multiple of 8: its copies are vectors already; 1-wide kernels; dilated
    taps, which are not contiguous) or where it loses: a reduction of a few 16-byte steps
    over several 16-channel tiles (squeezenet's 3x3x3 stem, 64 channels: LLVM unrolls the
    steps, keeps the activations in registers and hoists sdot's lane broadcasts out of the
    channel-tile loop; they spill, 6.7M instructions instead of 5.7M)."""
    r, s = kernel
    if channels % 8 == 0 or s == 1 or dilation[1] != 1:
        return 0
    taps = s * channels
    if taps > 64:
        return 0
    chunk = 4 if taps <= 4 else -(-taps // 8) * 8
    return chunk if out_channels <= 16 or r * chunk > 64 else 0


def chunk_weight(w_ohwi: np.ndarray, chunk: int) -> np.ndarray:
    """[O, R, S, C] -> [O, R, 1, chunk]: each kernel row's S * C weights, zero-padded to the
    chunk (the layout ``qgemm.pack_weight`` then packs as it is)."""
    o, r, s, c = w_ohwi.shape
    out = np.zeros((o, r, 1, chunk), w_ohwi.dtype)
    out[:, :, 0, : s * c] = w_ohwi.reshape(o, r, s * c)
    return out


def padding_for(shape, geom, chunk: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding of the rows view: the conv's own, and on the right
    enough columns that the last output pixel's chunk stays inside its row."""
    _, h, w, c = (int(d) for d in shape)
    (r, s), (sh, sw), (dh, dw) = geom.kernel, geom.strides, geom.dilation
    pt, pl, pb, pr = geom.padding
    ow = (w + pl + pr - dw * (s - 1) - 1) // sw + 1
    need = (ow - 1) * sw + -(-chunk // c)  # columns the last pixel's chunk touches
    return pt, pl, pb, pr + max(0, need - (w + pl + pr))


def pad_rows_te(x, pads: tuple[int, int, int, int], zero: int):
    """TE: NHWC ``x`` -> ``[N, H + top + bottom, W + left + right, C]``, the padding holding
    ``zero`` (the input's zero point in its dtype). Injective: FuseOps merges it into the
    kernel that produces ``x`` (the quantize and transpose of a model's input)."""
    from tvm import te, tirx

    n, h, w, c = (int(d) for d in x.shape)
    pt, pl, pb, pr = pads

    def value(nn, i, j, cc):
        iy, ix = i - pt, j - pl
        inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
        return tirx.if_then_else(
            inside, x[nn, tirx.max(tirx.min(iy, h - 1), 0), tirx.max(tirx.min(ix, w - 1), 0), cc],
            tirx.const(zero, str(x.dtype)))

    return te.compute((n, h + pt + pb, w + pl + pr, c), value, name="pad_rows")
