"""The exact cross-entropy and its exact gradient, against which every verdict is measured.

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

Two methods share that formula:

* ``float64``: vectorised numpy. The exponent x_j - m is made exact with Knuth's TwoSum and the
  rounding error folded back in as exp(d + e) = exp(d)(1 + e), so the only roundings left are in
  exp, the sum of t, log1p and the final sum: at most a few units in the last place of float64.
* ``mpmath``: the same formula at 50 significant digits, row by row, for inputs small enough
  (``MPMATH_MAX_ENTRIES``). It returns the loss as an unevaluated pair ``loss + loss_lo`` so that a
  float64 implementation can be graded in float64 ulps against something better than float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import mpmath
import numpy as np

MPMATH_DIGITS = 50
# An mpmath exp at 50 digits costs ~10 us here, so 20,000 entries keep the exact reference under
# half a second; bigger inputs use the float64 method, which is within a few float64 ulps.
MPMATH_MAX_ENTRIES = 20_000


@dataclass(frozen=True)
class Reference:
    """Exact per-row losses and gradients of one batch.

    ``loss`` is the exact loss rounded to float64 and ``loss_lo`` the (float64) remainder, so that
    loss + loss_lo carries ~100 bits where the mpmath method was used (zeros otherwise).
    """

    loss: np.ndarray  # (n,) float64
    loss_lo: np.ndarray  # (n,) float64
    grad: np.ndarray  # (n, C) float64
    method: str  # "mpmath" or "float64"

    @cached_property
    def grad_size(self) -> np.ndarray:
        """max_j |gradient| of each row."""
        return np.abs(self.grad).max(axis=1, initial=0.0)


def cross_entropy(logits: np.ndarray, labels: np.ndarray, method: str = "auto") -> Reference:
    """Exact cross-entropy of ``logits`` (n, C) against dense ``labels`` (n, C), both float64.

    ``method`` is ``"float64"``, ``"mpmath"`` or ``"auto"`` (mpmath when the batch has at most
    ``MPMATH_MAX_ENTRIES`` entries). Inputs are assumed valid (see ``xentaudit.io``): no NaN, no
    ``+inf``, at least one finite logit per row, label weights finite and non-negative.
    """
    if method == "auto":
        method = "mpmath" if logits.size <= MPMATH_MAX_ENTRIES else "float64"
    if method == "mpmath":
        return _cross_entropy_mpmath(logits, labels)
    if method == "float64":
        return _cross_entropy_float64(logits, labels)
    raise ValueError(f"unknown reference method {method!r}")


def _cross_entropy_float64(x: np.ndarray, y: np.ndarray) -> Reference:
    n = x.shape[0]
    rows = np.arange(n)
    a = np.argmax(x, axis=1)
    m = x[rows, a][:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        # TwoSum (Knuth): d + e == x - m exactly. Where d is infinite (a -inf logit, or an
        # overflowing difference of huge logits) exp(d) is 0 and the correction is dropped.
        d = x - m
        bb = d - x
        e = (x - (d - bb)) + (-m - bb)
    e = np.where(np.isfinite(d), e, 0.0)
    q = np.exp(d) * (1.0 + e)  # exp(x_j - m) for j != a, to within exp's own rounding
    q[rows, a] = 0.0
    t = q.sum(axis=1)
    log1p_t = np.log1p(t)
    total = y.sum(axis=1)
    with np.errstate(invalid="ignore"):
        # y_j (m - x_j) >= 0; zero label mass contributes exactly 0 even where x_j = -inf.
        gaps = np.where(y > 0, y * -d, 0.0)
    loss = gaps.sum(axis=1) + total * log1p_t

    q[rows, a] = 1.0
    denom = 1.0 + t
    grad = q / denom[:, None] * total[:, None] - y
    # At the argmax p_a * sum(y) - y_a would cancel when p_a ~ 1; rewrite it as
    # (sum_{j != a} y_j - y_a * t) / (1 + t), whose two terms are exact-ish and rarely close.
    y_a = y[rows, a]
    others = np.where(np.arange(y.shape[1]) == a[:, None], 0.0, y).sum(axis=1)
    grad[rows, a] = (others - y_a * t) / denom
    return Reference(loss, np.zeros(n), grad, "float64")


def _cross_entropy_mpmath(x: np.ndarray, y: np.ndarray) -> Reference:
    n, c = x.shape
    loss = np.empty(n)
    loss_lo = np.empty(n)
    grad = np.empty((n, c))
    with mpmath.workdps(MPMATH_DIGITS):
        for i in range(n):
            row = [mpmath.mpf(float(v)) for v in x[i]]
            w = [mpmath.mpf(float(v)) for v in y[i]]
            a = int(np.argmax(x[i]))
            m = row[a]
            q = [mpmath.exp(v - m) if j != a else mpmath.mpf(1) for j, v in enumerate(row)]
            t = mpmath.fsum(q[j] for j in range(c) if j != a)
            total = mpmath.fsum(w)
            gaps = mpmath.fsum(w[j] * (m - row[j]) for j in range(c) if w[j] > 0)
            exact = gaps + total * mpmath.log1p(t)
            loss[i] = float(exact)
            loss_lo[i] = float(exact - loss[i]) if mpmath.isfinite(exact) else 0.0
            grad[i] = [float(q[j] / (1 + t) * total - w[j]) for j in range(c)]
    return Reference(loss, loss_lo, grad, "mpmath")
