"""A vectorisable ``exp`` for the attention kernels.

libm ``exp`` is an opaque call that keeps numba's loops scalar (this numba
build has no SVML). ``fast_exp`` is branch-free arithmetic that LLVM
vectorises inside a loop:

    x = k ln2 + r,  k = round(x / ln2),  |r| <= ln2/2  (Cody-Waite, two-part ln2)
    exp(r) by a degree-12 Taylor polynomial (truncation < 2e-16 relative)
    2^k built from the integer bits of a float: no ldexp, no libm call.

The scale is applied as ``(p * 2^(k+64)) * 2^-64`` so that results in the
subnormal range (x < -708.4) get a single rounding and ``x <= -746`` (also
``-inf``) gives exactly 0. Domain: x <= 600 (the attention kernels only pass
x <= 0, after the max shift); larger arguments are clamped. NaN propagates.

Measured error vs ``np.exp``: see ``tests/test_attention_direct.py``
(<= 1e-14 relative wherever the result is a normal float).
"""

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from gridpde._numba import inline

__all__ = ["fast_exp"]

_LOG2E = 1.4426950408889634
# fdlibm's split of ln 2: _LN2_HI has 21 trailing zero bits, so k * _LN2_HI
# is exact for |k| < 2**21.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
# 1.5 * 2**52: adding an integer-valued kf puts kf in the low mantissa bits.
_SHIFT = 6755399441055744.0
_BIAS = 1023 + 64
_TWO_M64 = 2.0**-64
_LO_CLAMP = -746.0
_HI_CLAMP = 600.0

_C2 = 1.0 / 2.0
_C3 = 1.0 / 6.0
_C4 = 1.0 / 24.0
_C5 = 1.0 / 120.0
_C6 = 1.0 / 720.0
_C7 = 1.0 / 5040.0
_C8 = 1.0 / 40320.0
_C9 = 1.0 / 362880.0
_C10 = 1.0 / 3628800.0
_C11 = 1.0 / 39916800.0
_C12 = 1.0 / 479001600.0


@intrinsic
def _float_as_int(typingctx, x):
    """Reinterpret the bits of a float64 as an int64 (no conversion)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _int_as_float(typingctx, i):
    """Reinterpret the bits of an int64 as a float64 (no conversion)."""
    if i != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _reduce(typingctx, x, kf):
    """r = (x - kf * LN2_HI) - kf * LN2_LO with strict IEEE operations.

    With ``reassoc`` LLVM folds the two-part ln 2 back into one constant,
    which costs ~2e-14 relative error at x ~ -700. numba's fastmath pass adds
    the kernel flags only to instructions that have none, so these get
    ``nsz`` alone (harmless here) and keep their order.
    """
    if x != types.float64 or kf != types.float64:
        return None

    def codegen(context, builder, signature, args):
        xv, kv = args
        dbl = ir.DoubleType()
        strict = ("nsz",)
        hi = builder.fmul(kv, ir.Constant(dbl, _LN2_HI), flags=strict)
        lo = builder.fmul(kv, ir.Constant(dbl, _LN2_LO), flags=strict)
        return builder.fsub(builder.fsub(xv, hi, flags=strict), lo, flags=strict)

    return types.float64(types.float64, types.float64), codegen


@inline
def fast_exp(x):
    """exp(x) for float64 x <= 600, vectorisable; 0 for x <= -746."""
    # written so that NaN fails both comparisons and passes through
    if x < _LO_CLAMP:
        x = _LO_CLAMP
    if x > _HI_CLAMP:
        x = _HI_CLAMP
    kf = np.floor(x * _LOG2E + 0.5)
    r = _reduce(x, kf)
    p = _C12
    p = p * r + _C11
    p = p * r + _C10
    p = p * r + _C9
    p = p * r + _C8
    p = p * r + _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + 1.0
    p = p * r + 1.0
    # bits(_SHIFT + kf) = bits(_SHIFT) + k; bits(_SHIFT) << 52 == 0 (mod 2**64)
    bits = (_float_as_int(kf + _SHIFT) + _BIAS) << 52
    return (p * _int_as_float(bits)) * _TWO_M64
