"""The register-blocked multiply-add tile under the Numba CPU backend's direct convolutions.

A convolution over few channels, done as BLAS GEMMs, is a stack of thin
products (K and N of 16) that no BLAS runs near its peak. oneDNN's answer,
and this file's: keep a block of outputs in the CPU's vector registers
while the whole reduction streams past them, so each loaded weight vector
serves R outputs and each output is written once.

``tile(R, NV, a, a_off, a_sk, a_sr, seg, b, b_off, b_sk, b_ss, k, c, c_off, c_sr, accumulate)``
computes, on flat 1-D arrays, for the R rows r and the L = NV * VL lanes l
of one block::

    acc[r, l] = sum over s < len(seg), kk < k of
                a[a_off + seg[s] + kk*a_sk + r*a_sr] * b[b_off + s*b_ss + kk*b_sk + l]
    c[c_off + r*c_sr + l] = acc[r, l]      (or += when ``accumulate``)

Each a value is broadcast to a vector and multiplied into NV vectors of b
(VL lanes each: one 64-byte AVX-512 register, or 32 bytes without AVX-512);
the R x NV accumulators are LLVM vector values, so they live in registers
(Numba's own loops keep such accumulators in memory: 3-7 GFLOP/s measured
on the same tile, against 130-210 here, one core). ``seg`` lists offsets into
a, one per kernel tap, so a 3x3 convolution's nine taps are one reduction.

R and NV must be literal integers (the tile is unrolled over them). Nothing
is bounds-checked: ``tiles`` and its callers size every buffer for the
largest index a tile touches (``check_reach``). Numba's cache checks only the
file of the function it cached: after editing this file, delete
``kernels/__pycache__`` so the routes that inline its tiles recompile.
"""
import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic


def _vector_bytes():
    """64 where the code Numba compiles may use AVX-512, else 32 (AVX2; older CPUs split them further).

    Numba compiles for the host's features unless NUMBA_CPU_FEATURES names others
    (``minires bench --isa avx2`` sets them without AVX-512); the tile follows them.
    """
    if config.CPU_FEATURES is not None:
        return 64 if "+avx512f" in config.CPU_FEATURES.split(",") else 32
    return 64 if llvm.get_host_cpu_features().get("avx512f", False) else 32


VECTOR_BYTES = _vector_bytes()
# rows of a tile per number of vectors NV: R*NV accumulators, NV loaded vectors and a broadcast within the 32
# (AVX-512) or 16 (AVX2) vector registers. With 16, four vectors leave room for two rows only (8 FMAs per 6
# loads), so AVX2 tiles are at most two vectors wide: 6 x 2, the shape of the classic Haswell sgemm kernel
# (12 FMAs per 8 loads).
ROWS_1, ROWS_2, ROWS_4 = (8, 6, 6) if VECTOR_BYTES == 64 else (12, 6, 2)
WIDEST = 4 if VECTOR_BYTES == 64 else 2  # the widest tile used, in vectors
MAX_ROWS = max(ROWS_1, ROWS_2, ROWS_4)


def lanes_of(dtype):
    """Numbers of ``dtype`` in one vector (16 float32 with AVX-512)."""
    return VECTOR_BYTES // dtype.itemsize


@intrinsic
def tile(typingctx, rows, vecs, a, a_off, a_sk, a_sr, seg, b, b_off, b_sk, b_ss, k, c, c_off, c_sr, accumulate):
    """One R x (NV*VL) block of c (+)= the sum over taps s and steps kk of a's broadcast values times b's vectors."""
    if not (isinstance(rows, types.IntegerLiteral) and isinstance(vecs, types.IntegerLiteral)):
        return None
    n_rows, n_vecs = rows.literal_value, vecs.literal_value

    def codegen(context, builder, signature, args):
        _, _, a, a_off, a_sk, a_sr, seg, b, b_off, b_sk, b_ss, k, c, c_off, c_sr, accumulate = args
        aty, segty, bty, cty = signature.args[2], signature.args[6], signature.args[7], signature.args[12]
        real = context.get_value_type(cty.dtype)
        width = context.get_abi_sizeof(real)
        lanes = VECTOR_BYTES // width
        vector = ir.VectorType(real, lanes)
        intp = context.get_value_type(types.intp)
        fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                                 f"llvm.fmuladd.v{lanes}f{8 * width}")
        a_data = context.make_array(aty)(context, builder, a).data
        b_data = context.make_array(bty)(context, builder, b).data
        c_data = context.make_array(cty)(context, builder, c).data
        segs = context.make_array(segty)(context, builder, seg)
        zero, undef = ir.Constant(vector, None), ir.Constant(vector, ir.Undefined)
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        # allocas that never escape: LLVM's SROA turns them into registers
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(n_vecs)] for _ in range(n_rows)]

        def at(data, index):
            return builder.gep(data, [index])

        def vector_at(data, index):
            return builder.bitcast(at(data, index), vector.as_pointer())

        def const(v):
            return ir.Constant(intp, v)

        with cgutils.for_range(builder, builder.extract_value(segs.shape, 0)) as tap:
            a_tap = builder.add(a_off, builder.load(at(segs.data, tap.index)))
            b_tap = builder.add(b_off, builder.mul(tap.index, b_ss))
            with cgutils.for_range(builder, k) as step:
                a_k = builder.add(a_tap, builder.mul(step.index, a_sk))
                b_k = builder.add(b_tap, builder.mul(step.index, b_sk))
                bv = [builder.load(vector_at(b_data, builder.add(b_k, const(v * lanes))), align=width)
                      for v in range(n_vecs)]
                for r in range(n_rows):
                    value = builder.load(at(a_data, builder.add(a_k, builder.mul(const(r), a_sr))))
                    splat = builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0)),
                                                   undef, splat_mask)
                    for v in range(n_vecs):
                        builder.store(builder.call(fmuladd, [splat, bv[v], builder.load(acc[r][v])]), acc[r][v])
        for r in range(n_rows):
            for v in range(n_vecs):
                out = vector_at(c_data, builder.add(c_off, builder.add(builder.mul(const(r), c_sr), const(v * lanes))))
                total = builder.load(acc[r][v])
                with builder.if_else(accumulate) as (add, store):
                    with add:
                        builder.store(builder.fadd(builder.load(out, align=width), total), out, align=width)
                    with store:
                        builder.store(total, out, align=width)
        return context.get_dummy_value()

    flat = all(isinstance(v, types.Array) and v.ndim == 1 and v.layout == "C" for v in (a, seg, b, c))
    if not (flat and a.dtype == b.dtype == c.dtype and seg.dtype == types.int64):
        return None
    sig = types.void(rows, vecs, a, types.intp, types.intp, types.intp, seg, b, types.intp, types.intp, types.intp,
                     types.intp, c, types.intp, types.intp, types.boolean)
    return sig, codegen


def rows_per_tile(lanes, vector_lanes):
    """(R, NV) of the tiles covering ``lanes`` output lanes (a multiple of the vector's): the widest NV that divides."""
    nvec = lanes // vector_lanes
    if WIDEST == 4 and nvec % 4 == 0:
        return ROWS_4, 4
    if nvec % 2 == 0:
        return ROWS_2, 2
    return ROWS_1, 1


@njit(cache=True)
def tiles(a, a_off, a_sk, a_sr, seg, b, b_off, b_sk, b_ss, k, rows, c, c_off, c_sr, lanes, accumulate):
    """``tile`` over rows [0, rows) and lanes [0, lanes) of c: blocks of R rows (the last may run past ``rows``
    up to a multiple of R) times NV vectors; ``lanes`` is a multiple of the vector length."""
    vl = VECTOR_BYTES // c.itemsize
    nvec = lanes // vl
    if WIDEST == 4 and nvec % 4 == 0:
        for v0 in range(0, nvec, 4):
            for r0 in range(0, rows, ROWS_4):
                tile(ROWS_4, 4, a, a_off + r0 * a_sr, a_sk, a_sr, seg, b, b_off + v0 * vl, b_sk, b_ss, k,
                     c, c_off + r0 * c_sr + v0 * vl, c_sr, accumulate)
    elif nvec % 2 == 0:
        for v0 in range(0, nvec, 2):
            for r0 in range(0, rows, ROWS_2):
                tile(ROWS_2, 2, a, a_off + r0 * a_sr, a_sk, a_sr, seg, b, b_off + v0 * vl, b_sk, b_ss, k,
                     c, c_off + r0 * c_sr + v0 * vl, c_sr, accumulate)
    else:
        for v0 in range(nvec):
            for r0 in range(0, rows, ROWS_1):
                tile(ROWS_1, 1, a, a_off + r0 * a_sr, a_sk, a_sr, seg, b, b_off + v0 * vl, b_sk, b_ss, k,
                     c, c_off + r0 * c_sr + v0 * vl, c_sr, accumulate)


def check_reach(a, a_off, a_sk, a_sr, seg, b, b_off, b_sk, b_ss, k, rows, c, c_off, c_sr, lanes):
    """Raise unless every index ``tiles`` would touch with these arguments lies inside a, b and c (flat sizes).

    The tile reads and writes without bounds checks; the routes call this
    once per call with their largest offsets (plain Python: microseconds).
    """
    r, _ = rows_per_tile(lanes, VECTOR_BYTES // c.itemsize)
    rows = -(-rows // r) * r  # the last block's overrun
    reach = {"a": (a.size, a_off + max(seg) + (k - 1) * a_sk + (rows - 1) * a_sr),
             "b": (b.size, b_off + (len(seg) - 1) * b_ss + (k - 1) * b_sk + lanes - 1),
             "c": (c.size, c_off + (rows - 1) * c_sr + lanes - 1)}
    for name, (size, last) in reach.items():
        if min(seg) + a_off < 0 or last >= size:
            raise IndexError(f"a tile would reach {name}[{last}] of {size} (a bug in the route's sizes)")
