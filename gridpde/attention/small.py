"""3 x 3 products written out for the kernels (padded layout: every matrix is 3 x 3).

``A[j] x`` and ``A[j]^T u`` appear in every attention kernel, forward and
VJP; compiled inline, these cost the same as the unrolled expressions they
replace.
"""

from gridpde._numba import inline


@inline
def matvec3(A, j, x0, x1, x2):
    """(A[j] x): the score vector z = B_j x, or V_j m."""
    return (A[j, 0, 0] * x0 + A[j, 0, 1] * x1 + A[j, 0, 2] * x2,
            A[j, 1, 0] * x0 + A[j, 1, 1] * x1 + A[j, 1, 2] * x2,
            A[j, 2, 0] * x0 + A[j, 2, 1] * x1 + A[j, 2, 2] * x2)


@inline
def rmatvec3(A, j, u0, u1, u2):
    """(A[j]^T u): e.g. V_j^T ubar, or B_j^T zbar."""
    return (A[j, 0, 0] * u0 + A[j, 1, 0] * u1 + A[j, 2, 0] * u2,
            A[j, 0, 1] * u0 + A[j, 1, 1] * u1 + A[j, 2, 1] * u2,
            A[j, 0, 2] * u0 + A[j, 1, 2] * u1 + A[j, 2, 2] * u2)
