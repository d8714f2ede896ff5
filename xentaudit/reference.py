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

* ``float64``: the compiled kernel ``xentaudit._kernel`` (C), row by row in float64 arithmetic.
  The exponent x_j - m is made exact with Knuth's TwoSum and the rounding error folded back in as
  exp(d + e) = exp(d)(1 + e); exp is the kernel's own (within 1 ulp, tested against mpmath) and
  the sums are compensated, so the only roundings left are in exp, log1p and the last few
  operations: at most a few units in the last place of float64. Rows are shared among threads.
* ``mpmath``: the same formula at 50 significant digits, row by row, for inputs small enough
  (``MPMATH_MAX_ENTRIES``). It returns the loss as an unevaluated pair ``loss + loss_lo`` so that a
  float64 implementation can be graded in float64 ulps against something better than float64.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import mpmath
import numpy as np

from xentaudit import _kernel
from xentaudit.io import as_float

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
    grad_size: np.ndarray  # (n,) max_j |grad|
    method: str  # "mpmath" or "float64"


def cross_entropy(logits: np.ndarray, labels: np.ndarray, method: str = "auto") -> Reference:
    """Exact cross-entropy of ``logits`` (n, C) against ``labels``.

    ``labels`` are dense label weights (n, C) or the integer class of each row (n,). Logits may
    be float16, bfloat16, float32 or float64 (the narrow ones are read exactly, never rounded).
    ``method`` is ``"float64"``, ``"mpmath"`` or ``"auto"`` (mpmath when the batch has at most
    ``MPMATH_MAX_ENTRIES`` entries). Inputs are assumed valid (see ``xentaudit.io``): no NaN, no
    ``+inf``, at least one finite logit per row, label weights finite and non-negative, classes
    in range.
    """
    if method == "auto":
        method = "mpmath" if logits.size <= MPMATH_MAX_ENTRIES else "float64"
    if method == "mpmath":
        return _cross_entropy_mpmath(np.asarray(logits, np.float64), _dense(labels, logits))
    if method == "float64":
        return _cross_entropy_float64(logits, labels)
    raise ValueError(f"unknown reference method {method!r}")


def _dense(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    if labels.ndim == 2:
        return np.asarray(labels, np.float64)
    y = np.zeros(logits.shape)
    y[np.arange(logits.shape[0]), labels] = 1.0
    return y


# A block smaller than this is not worth a thread of its own.
_MIN_BLOCK_ENTRIES = 1 << 16
_WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_WORKERS or 1, thread_name_prefix="xentaudit-kernel")


def _in_blocks(n: int, c: int, work: Callable[[int, int], None]) -> None:
    """Run ``work(lo, hi)`` over blocks of the n rows (of c entries), one block per thread."""
    blocks = min(_WORKERS or 1, n, max(1, n * c // _MIN_BLOCK_ENTRIES))
    bounds = [n * i // blocks for i in range(blocks + 1)]
    if blocks == 1:
        work(0, n)
    else:
        list(_pool().map(work, bounds[:-1], bounds[1:]))


def _cross_entropy_float64(x: np.ndarray, labels: np.ndarray) -> Reference:
    n, c = x.shape
    x = np.ascontiguousarray(as_float(x))
    dtype = np.float64 if labels.ndim == 2 else np.int64
    labels = np.ascontiguousarray(labels, dtype=dtype)
    loss, grad, size = np.empty(n), np.empty((n, c)), np.empty(n)

    def work(lo: int, hi: int) -> None:
        _kernel.cross_entropy(
            hi - lo, c, x[lo:hi], labels[lo:hi], loss[lo:hi], grad[lo:hi], size[lo:hi]
        )

    _in_blocks(n, c, work)
    return Reference(loss, np.zeros(n), grad, size, "float64")


def grad_error(grad: np.ndarray, exact: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, max_j |grad - exact| and max_j |grad| (NaN where ``grad`` has a NaN).

    ``grad`` (n, C) is an implementation's gradient (float32 or float64), ``exact`` the
    reference's (float64); the differences are taken in float64.
    """
    n, c = grad.shape
    grad = np.ascontiguousarray(as_float(grad))
    exact = np.ascontiguousarray(exact, dtype=np.float64)
    err, size = np.empty(n), np.empty(n)

    def work(lo: int, hi: int) -> None:
        _kernel.grad_error(hi - lo, c, grad[lo:hi], exact[lo:hi], err[lo:hi], size[lo:hi])

    _in_blocks(n, c, work)
    return err, size


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
    return Reference(loss, loss_lo, grad, np.abs(grad).max(axis=1), "mpmath")
