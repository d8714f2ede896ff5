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

Three methods share that formula:

* ``float64``: the compiled kernel ``xentaudit._kernel`` (C), row by row in float64 arithmetic.
  The exponent x_j - m is made exact with Knuth's TwoSum and the rounding error folded back in as
  exp(d + e) = exp(d)(1 + e); exp is the kernel's own (within 0.77 ulp, tested against mpmath) and
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

Two environment variables, read once when the module is imported (an unknown value is a
``ValueError`` then, naming the accepted ones):

* ``XENTAUDIT_REFERENCE=numpy`` never loads the kernel: ``"float64"`` means ``"float64-numpy"``
  (for tests and measurement). Unset or empty: the kernel when it is built.
* ``XENTAUDIT_KERNEL_ISA`` = ``x86-64-v4`` (AVX-512), ``x86-64-v3`` (AVX2 and FMA) or ``x86-64``
  runs that instruction-set clone of the kernel instead of the best one this CPU supports; a clone
  the CPU cannot run is refused too. ``_kernel.isa()`` names the clone in use and
  ``_kernel.supported_isas()`` those this CPU can run. Every clone gives the same bits.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import mpmath
import numpy as np

from xentaudit.io import as_float

MPMATH_DIGITS = 50
# An mpmath exp at 50 digits costs ~10 us here, so 20,000 entries keep the exact reference under
# half a second; bigger inputs use the float64 method, which is within a few float64 ulps.
MPMATH_MAX_ENTRIES = 20_000


def _load_kernel() -> ModuleType | None:
    forced = os.environ.get("XENTAUDIT_REFERENCE", "")
    if forced not in ("", "numpy"):
        raise ValueError(
            f"XENTAUDIT_REFERENCE={forced}: set it to 'numpy' for the numpy reference, or unset it"
        )
    if forced == "numpy":
        return None
    try:
        return importlib.import_module("xentaudit._kernel")
    except ImportError:  # not built: installed without a C compiler
        return None


_kernel = _load_kernel()
# What method="float64" runs in this process.
FLOAT64_METHOD = "float64" if _kernel is not None else "float64-numpy"


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
    method: str  # "mpmath", "float64" (the compiled kernel) or "float64-numpy"


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
    if method == "auto":
        method = "mpmath" if logits.size <= MPMATH_MAX_ENTRIES else "float64"
    if method == "mpmath":
        return _cross_entropy_mpmath(np.asarray(logits, np.float64), _dense(labels, logits))
    if method in _FLOAT64:
        return _cross_entropy_float64(logits, labels, _float64_method(method))
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


def _float64_method(method: str) -> str:
    return FLOAT64_METHOD if method == "float64" else method


def _cross_entropy_float64(x: np.ndarray, labels: np.ndarray, method: str) -> Reference:
    n, c = x.shape
    x = np.ascontiguousarray(as_float(x))
    dtype = np.float64 if labels.ndim == 2 else np.int64
    labels = np.ascontiguousarray(labels, dtype=dtype)
    loss, grad, size = np.empty(n), np.empty((n, c)), np.empty(n)
    rows = _FLOAT64[method][0]

    def work(lo: int, hi: int) -> None:
        rows(x[lo:hi], labels[lo:hi], loss[lo:hi], grad[lo:hi], size[lo:hi])

    _in_blocks(n, c, work)
    return Reference(loss, np.zeros(n), grad, size, method)


def grad_error(
    grad: np.ndarray, exact: np.ndarray, method: str = "float64"
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, max_j |grad - exact| and max_j |grad| (NaN where ``grad`` has a NaN).

    ``grad`` (n, C) is an implementation's gradient (float32 or float64), ``exact`` the
    reference's (float64); the differences are taken in float64, by the kernel if it is built
    (``method="float64"``) or by numpy (``"float64-numpy"``): the results are the same.
    """
    n, c = grad.shape
    grad = np.ascontiguousarray(as_float(grad))
    exact = np.ascontiguousarray(exact, dtype=np.float64)
    err, size = np.empty(n), np.empty(n)
    errors = _FLOAT64[_float64_method(method)][1]

    def work(lo: int, hi: int) -> None:
        errors(grad[lo:hi], exact[lo:hi], err[lo:hi], size[lo:hi])

    _in_blocks(n, c, work)
    return err, size


def _kernel_rows(
    x: np.ndarray, labels: np.ndarray, loss: np.ndarray, grad: np.ndarray, size: np.ndarray
) -> None:
    _kernel.cross_entropy(x.shape[0], x.shape[1], x, labels, loss, grad, size)  # type: ignore[union-attr]


def _kernel_grad_error(
    grad: np.ndarray, exact: np.ndarray, err: np.ndarray, size: np.ndarray
) -> None:
    _kernel.grad_error(grad.shape[0], grad.shape[1], grad, exact, err, size)  # type: ignore[union-attr]


# The numpy formula goes through at most this many entries at once, so that its temporaries
# stay in cache (measured best of 2^13..2^17).
_NUMPY_BLOCK_ENTRIES = 1 << 15


def _numpy_rows(
    x: np.ndarray, labels: np.ndarray, loss: np.ndarray, grad: np.ndarray, size: np.ndarray
) -> None:
    """The kernel's formula (see the header of _kernel.c) in numpy, into loss, grad and size."""
    step = max(1, _NUMPY_BLOCK_ENTRIES // x.shape[1])
    for lo in range(0, x.shape[0], step):
        rows = slice(lo, lo + step)
        _numpy_block(x[rows], labels[rows], loss[rows], grad[rows], size[rows])


def _numpy_block(
    x: np.ndarray, labels: np.ndarray, loss: np.ndarray, grad: np.ndarray, size: np.ndarray
) -> None:
    # Classes along axis 0 (transposed copies), so that every step below, the levels of the
    # pairwise sums included, is one contiguous operation over the whole block.
    r = np.arange(x.shape[0])
    a = np.argmax(x, axis=1)
    xt = np.array(x.T, dtype=np.float64, order="C")
    m = xt[a, r]
    # -inf logits give inf - inf in TwoSum and 0 * inf in the gaps, both then set to 0; a
    # difference beyond float64 overflows to -inf, as in the kernel.
    with np.errstate(invalid="ignore", over="ignore"):
        d, e = _two_sum(xt, -m)  # d + e == x - m exactly
        q = np.exp(d)
        q += q * e  # exp(d + e) = exp(d)(1 + e) to 2^-106
        q[np.isnan(q)] = 0.0  # exp(-inf) = 0, whatever its e
        q[a, r] = 0.0
        t = _csum(q)
        if labels.ndim == 1:  # classes: the operations of one-hot weights, with fewer terms
            total, y_a = np.ones(x.shape[0]), (labels == a).astype(np.float64)
            others, gaps = 1.0 - y_a, m - xt[labels, r]
        else:
            yt = np.array(labels.T, order="C")
            total, y_a = _csum(yt), yt[a, r]
            yt[a, r] = 0.0
            others = _csum(yt)
            yt[a, r] = y_a
            terms = yt * (m - xt)
            terms[np.isnan(terms)] = 0.0  # zero mass on a -inf logit contributes 0
            gaps = _csum(terms)
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


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s = fl(a + b) and its error e: s + e == a + b exactly (Knuth's TwoSum)."""
    s = a + b
    bp = s - a
    return s, (a - (s - bp)) + (b - bp)


def _csum(v: np.ndarray) -> np.ndarray:
    """Column sums of v (C, r), compensated: pairwise TwoSums with their errors summed alongside
    (a double-double sum), so that each is rounded about once whatever C. +inf stays +inf."""
    hi, lo = v, np.zeros_like(v)
    while hi.shape[0] > 1:
        w = hi.shape[0]
        half = w // 2
        s, e = _two_sum(hi[:half], hi[half : 2 * half])
        e += lo[:half] + lo[half : 2 * half]
        if w % 2:  # the odd row joins the first
            s[0], e0 = _two_sum(s[0], hi[-1])
            e[0] += e0 + lo[-1]
        hi, lo = s, e
    return np.where(np.isinf(hi[0]), hi[0], hi[0] + lo[0])


def _numpy_grad_error(
    grad: np.ndarray, exact: np.ndarray, err: np.ndarray, size: np.ndarray
) -> None:
    g = grad.astype(np.float64, copy=False)
    np.abs(g - exact).max(axis=1, out=err)
    np.abs(g).max(axis=1, out=size)


# method -> (rows into loss, grad and size; grad_error into err and size)
_FLOAT64 = {
    "float64": (_kernel_rows, _kernel_grad_error),
    "float64-numpy": (_numpy_rows, _numpy_grad_error),
}


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
