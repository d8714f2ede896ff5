"""The exact softmax cross-entropy and its exact gradient.

For logits x (one row, C classes) and label weights y >= 0 (one-hot, or soft) the loss is

    L = sum_j y_j (LSE(x) - x_j),   LSE(x) = log sum_j exp(x_j),

and its gradient is dL/dx_j = softmax(x)_j * sum(y) - y_j.

Both are evaluated with the row maximum separated out, the way scipy's ``logsumexp`` does it
(Blanchard, Higham & Higham 2021, "Accurately computing the log-sum-exp and softmax functions").
With m = x_a the (first) largest logit and t = sum_{j != a} exp(x_j - m) in [0, C - 1]:

    L = sum_j y_j (m - x_j) + sum(y) * log1p(t).

Every term is non-negative, so nothing cancels: a confident correct row (x_a leads by 40 or 800)
gets L = log1p(t) with full relative accuracy instead of log(1 + t) = 0, and label mass on a
``-inf`` logit gives exactly ``+inf`` while zero mass there contributes exactly 0, not 0 * inf.

Three methods share that formula:

* ``float64``: the compiled kernel ``xentaudit._kernel`` (C), row by row in float64 arithmetic.
  The exponent x_j - m is made exact with Knuth's TwoSum and the rounding error folded back in as
  exp(d + e) = exp(d)(1 + e); exp is the kernel's own (within 0.65 ulp, tested against mpmath) and
  the sums are compensated, so the only roundings left are in exp, log1p and the last few
  operations: at most a few units in the last place of float64. Rows are shared among threads.
* ``float64-numpy``: the same float64 formula in numpy, for installs without the kernel (it is
  optional: ``pip install`` without a C compiler skips it). numpy's exp replaces the kernel's
  (0.51 ulp measured here, numpy's own AVX-512 and AVX2 code; libm's, under 1 ulp, elsewhere) and
  the compensated sums are a pairwise tree of TwoSums with their errors summed alongside;
  tests/test_reference.py bounds it against mpmath as it does the kernel. It agrees with the
  kernel to a few ulps (not bit for bit) and is 6.5 to 14 times slower (AVX2 to AVX-512 clones).
* ``mpmath``: the same formula at 50 significant digits, row by row, for inputs small enough
  (``MPMATH_MAX_ENTRIES``). It returns the loss as an unevaluated pair ``loss + loss_lo`` so that a
  float64 implementation can be graded in float64 ulps against something better than float64.

``method="float64"`` runs the kernel when it can be imported and the numpy formula otherwise
(``FLOAT64_METHOD`` says which); ``Reference.method``, the JSON field ``reference_method``, names
the method that actually ran: ``"mpmath"``, ``"float64"`` (the kernel) or ``"float64-numpy"``.

The methods, the kernel and the environment variables that choose them are in ``base``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from xentaudit.io import as_float
from xentaudit.reference.base import (
    MPMATH_DIGITS,
    Reference,
    auto_method,
    csum,
    float64_method,
    in_blocks,
    kernel,
    two_sum,
)

if TYPE_CHECKING:  # mpmath itself is imported where it computes
    import mpmath


def cross_entropy(logits: np.ndarray, labels: np.ndarray, method: str = "auto") -> Reference:
    """Exact cross-entropy of ``logits`` (n, C) against ``labels``.

    ``labels`` are dense label weights (n, C) or the integer class of each row (n,). Logits may
    be float16, bfloat16, float32 or float64 (the narrow ones are read exactly, never rounded).
    ``method`` is ``"auto"`` (mpmath when the batch has at most ``MPMATH_MAX_ENTRIES``
    entries, float64 otherwise), ``"mpmath"``, ``"float64"`` (the kernel if it is built, else the
    numpy formula) or ``"float64-numpy"``; the result's ``method`` names the one that ran. Inputs
    are assumed valid (see ``xentaudit.io``): no NaN, no ``+inf``, at least one finite logit per
    row, label weights finite and non-negative, classes in range.
    """
    method = auto_method(method, logits.size)
    if method == "mpmath":
        return _cross_entropy_mpmath(np.asarray(logits, np.float64), _dense(labels, logits))
    return _cross_entropy_float64(logits, labels, float64_method(method))


def _dense(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    if labels.ndim == 2:
        return np.asarray(labels, np.float64)
    y = np.zeros(logits.shape)
    y[np.arange(logits.shape[0]), labels] = 1.0
    return y


def _cross_entropy_float64(x: np.ndarray, labels: np.ndarray, method: str) -> Reference:
    n, c = x.shape
    x = np.ascontiguousarray(as_float(x))
    dtype = np.float64 if labels.ndim == 2 else np.int64
    labels = np.ascontiguousarray(labels, dtype=dtype)
    loss, grad, size = np.empty(n), np.empty((n, c)), np.empty(n)
    rows = _kernel_rows if method == "float64" else _numpy_rows

    def work(lo: int, hi: int) -> None:
        rows(x[lo:hi], labels[lo:hi], loss[lo:hi], grad[lo:hi], size[lo:hi])

    in_blocks(n, c, work)
    return Reference(loss, np.zeros(n), grad, size, method)


def _kernel_rows(
    x: np.ndarray, labels: np.ndarray, loss: np.ndarray, grad: np.ndarray, size: np.ndarray
) -> None:
    kernel.cross_entropy(x.shape[0], x.shape[1], x, labels, loss, grad, size)  # type: ignore[union-attr]


_NUMPY_BLOCK_ENTRIES = 1 << 15


def _numpy_rows(
    x: np.ndarray, labels: np.ndarray, loss: np.ndarray, grad: np.ndarray, size: np.ndarray
) -> None:
    """The kernel's formula (see the header of _kernel.c) in numpy, into loss, grad and size."""
    step = max(1, _NUMPY_BLOCK_ENTRIES // x.shape[1])
    for lo in range(0, x.shape[0], step):
        rows = slice(lo, lo + step)
        _numpy_block(x[rows], labels[rows], loss[rows], grad[rows], size[rows])


def separated(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The max-separated pieces of a block of rows x (n, C), classes along axis 0.

    Returns ``(a, xt, m, q, t)``: the (first) largest logit's class ``a`` per row, the logits
    transposed to float64 ``xt`` (C, n), their maxima ``m = xt[a, r]``, ``q = exp(x - m)`` with
    the exponent made exact by TwoSum (``q[a] = 0``, not 1) and ``t = sum_j q_j`` compensated.
    Classes along axis 0 (transposed copies), so that every step, the levels of the pairwise
    sums included, is one contiguous operation over the whole block.
    """
    r = np.arange(x.shape[0])
    a = np.argmax(x, axis=1)
    xt = np.array(x.T, dtype=np.float64, order="C")
    m = xt[a, r]
    # -inf logits give inf - inf in TwoSum, set to 0 below; a difference beyond float64
    # overflows to -inf, as in the kernel.
    with np.errstate(invalid="ignore", over="ignore"):
        d, e = two_sum(xt, -m)  # d + e == x - m exactly
        q = np.exp(d)
        q += q * e  # exp(d + e) = exp(d)(1 + e) to 2^-106
    q[np.isnan(q)] = 0.0  # exp(-inf) = 0, whatever its e
    q[a, r] = 0.0
    return a, xt, m, q, csum(q)


def _numpy_block(
    x: np.ndarray, labels: np.ndarray, loss: np.ndarray, grad: np.ndarray, size: np.ndarray
) -> None:
    r = np.arange(x.shape[0])
    a, xt, m, q, t = separated(x)
    # 0 * inf in the gaps of a -inf logit is set to 0 below.
    with np.errstate(invalid="ignore"):
        if labels.ndim == 1:  # classes: the operations of one-hot weights, with fewer terms
            total, y_a = np.ones(x.shape[0]), (labels == a).astype(np.float64)
            others, gaps = 1.0 - y_a, m - xt[labels, r]
        else:
            yt = np.array(labels.T, order="C")
            total, y_a = csum(yt), yt[a, r]
            yt[a, r] = 0.0
            others = csum(yt)
            yt[a, r] = y_a
            terms = yt * (m - xt)
            terms[np.isnan(terms)] = 0.0  # zero mass on a -inf logit contributes 0
            gaps = csum(terms)
    loss[:] = gaps + total * np.log1p(t)
    denom = 1.0 + t
    g = q  # the gradient, in place of q
    g *= total / denom
    if labels.ndim == 1:
        g[labels, r] -= 1.0
    else:
        g -= yt
    g[a, r] = (others - y_a * t) / denom
    grad[:] = g.T
    np.abs(g).max(axis=0, out=size)


def mp_separated(
    x: np.ndarray, y: np.ndarray
) -> tuple[list, list, int, mpmath.mpf, list, mpmath.mpf]:
    """``separated`` for one row at mpmath's working precision: the row and its weights as
    mpf, the (first) largest logit's class ``a``, ``m = x_a``, ``q_j = exp(x_j - m)`` (``q_a =
    1``) and ``t = sum_(j != a) q_j``."""
    import mpmath  # here, not at the top: no --help or float64 audit needs it

    row = [mpmath.mpf(float(v)) for v in x]
    w = [mpmath.mpf(float(v)) for v in y]
    a = int(np.argmax(x))
    m = row[a]
    q = [mpmath.exp(v - m) if j != a else mpmath.mpf(1) for j, v in enumerate(row)]
    t = mpmath.fsum(q[j] for j in range(len(row)) if j != a)
    return row, w, a, m, q, t


def _cross_entropy_mpmath(x: np.ndarray, y: np.ndarray) -> Reference:
    import mpmath  # here, not at the top: no --help or float64 audit needs it

    n, c = x.shape
    loss = np.empty(n)
    loss_lo = np.empty(n)
    grad = np.empty((n, c))
    with mpmath.workdps(MPMATH_DIGITS):
        for i in range(n):
            row, w, _, m, q, t = mp_separated(x[i], y[i])
            total = mpmath.fsum(w)
            gaps = mpmath.fsum(w[j] * (m - row[j]) for j in range(c) if w[j] > 0)
            exact = gaps + total * mpmath.log1p(t)
            loss[i] = float(exact)
            loss_lo[i] = float(exact - loss[i]) if mpmath.isfinite(exact) else 0.0
            grad[i] = [float(q[j] / (1 + t) * total - w[j]) for j in range(c)]
    return Reference(loss, loss_lo, grad, np.abs(grad).max(axis=1), "mpmath")
