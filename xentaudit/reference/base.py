"""What every loss's reference shares: the result type, the methods, the float64 kernel.

A reference computes one loss exactly (see the sibling modules, one per loss) by one of three
methods: ``"mpmath"`` (50 significant digits, for inputs of at most ``MPMATH_MAX_ENTRIES``
entries), ``"float64"`` (the compiled kernel ``xentaudit._kernel`` where it serves the loss and
is built, else the loss's numpy formula) and ``"float64-numpy"``. ``Reference.method`` names the
method that actually ran.

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import numpy as np

from xentaudit.errors import ConfigError
from xentaudit.io import as_float

MPMATH_DIGITS = 50
# An mpmath exp at 50 digits costs ~10 us here, so 20,000 entries keep the exact reference under
# half a second; bigger inputs use the float64 method, which is within a few float64 ulps.
MPMATH_MAX_ENTRIES = 20_000


def load_kernel() -> ModuleType | None:
    """The compiled kernel, or None (``XENTAUDIT_REFERENCE=numpy``, or not built); a value of
    either variable that names nothing is the user's setting to fix (``ConfigError``)."""
    forced = os.environ.get("XENTAUDIT_REFERENCE", "")
    if forced not in ("", "numpy"):
        raise ConfigError(
            f"XENTAUDIT_REFERENCE={forced}: set it to 'numpy' for the numpy reference, or unset it"
        )
    if forced == "numpy":
        return None
    try:
        return importlib.import_module("xentaudit._kernel")
    except ImportError:  # not built: installed without a C compiler
        return None
    except ValueError as exc:  # XENTAUDIT_KERNEL_ISA naming no clone this CPU runs (_kernel.c)
        raise ConfigError(str(exc)) from None


kernel = load_kernel()
# What method="float64" runs in this process.
FLOAT64_METHOD = "float64" if kernel is not None else "float64-numpy"
METHODS = ("auto", "mpmath", "float64", "float64-numpy")


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


# A block smaller than this is not worth a thread of its own.
_MIN_BLOCK_ENTRIES = 1 << 16
_WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_WORKERS or 1, thread_name_prefix="xentaudit-kernel")


def in_blocks(n: int, c: int, work: Callable[[int, int], None]) -> None:
    """Run ``work(lo, hi)`` over blocks of the n rows (of c entries), one block per thread."""
    blocks = min(_WORKERS or 1, n, max(1, n * c // _MIN_BLOCK_ENTRIES))
    bounds = [n * i // blocks for i in range(blocks + 1)]
    if blocks == 1:
        work(0, n)
    else:
        list(_pool().map(work, bounds[:-1], bounds[1:]))


def float64_method(method: str) -> str:
    return FLOAT64_METHOD if method == "float64" else method


def grad_error(
    grad: np.ndarray, exact: np.ndarray, method: str = "float64"
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, max_j |grad - exact| and max_j |grad| (NaN where ``grad`` has a NaN).

    ``grad`` (n, C) is an implementation's gradient (float32 or float64), ``exact`` the
    reference's (float64); the differences are taken in float64, by the kernel if it is built
    (``method="float64"``) or by numpy (``"float64-numpy"``): the results are the same.
    """
    return grad_errors([grad], exact, method)[0]


MAX_GRADS = 8  # the kernel's MAX_GRADS: gradients compared in one pass


def grad_errors(
    grads: Sequence[np.ndarray], exact: np.ndarray, method: str = "float64"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``grad_error`` of each gradient of ``grads`` against the same ``exact``, in one pass
    over ``exact`` with the kernel: each of its rows is read from memory once for all of them,
    then compared with each gradient's row while it is in cache. The results are those of
    ``grad_error`` on each gradient alone, bit for bit. At most ``MAX_GRADS`` gradients (the
    kernel's bound, on both methods)."""
    if not grads:
        return []
    if len(grads) > MAX_GRADS:
        raise ValueError(f"{len(grads)} gradients, at most {MAX_GRADS} at once")
    if any(g.shape != exact.shape for g in grads):
        raise ValueError(f"gradients of shapes {[g.shape for g in grads]}, exact {exact.shape}")
    n = exact.shape[0]
    grads = [np.ascontiguousarray(as_float(g)) for g in grads]
    exact = np.ascontiguousarray(exact, dtype=np.float64)
    out = [(np.empty(n), np.empty(n)) for _ in grads]
    # One thread, unlike the reference's rows (``in_blocks``): reading the arrays once is bound
    # by memory, and it runs right after a framework's run whose own threads still spin; a
    # default `check` of 4096 x 32000 on 2 cores spent 0.85 s in it so (one gradient a call),
    # against 1.03 s in blocks (measured on that machine only).
    _GRAD_ERROR[float64_method(method)](grads, exact, out)
    return out


def _kernel_grad_error(
    grads: list[np.ndarray], exact: np.ndarray, out: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    errs, sizes = zip(*out, strict=True)
    kernel.grad_error(exact.shape[0], exact.shape[1], tuple(grads), exact, errs, sizes)  # type: ignore[union-attr]


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s = fl(a + b) and its error e: s + e == a + b exactly (Knuth's TwoSum)."""
    s = a + b
    bp = s - a
    return s, (a - (s - bp)) + (b - bp)


def csum(v: np.ndarray) -> np.ndarray:
    """Column sums of v (C, r), compensated: pairwise TwoSums with their errors summed alongside
    (a double-double sum), so that each is rounded about once whatever C. +inf stays +inf."""
    hi, lo = csum_pair(v)
    return np.where(np.isinf(hi), hi, hi + lo)


def csum_pair(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``csum``'s unevaluated double-double ``hi + lo``, for a caller that subtracts from it."""
    hi, lo = v, np.zeros_like(v)
    while hi.shape[0] > 1:
        w = hi.shape[0]
        half = w // 2
        s, e = two_sum(hi[:half], hi[half : 2 * half])
        e += lo[:half] + lo[half : 2 * half]
        if w % 2:  # the odd row joins the first
            s[0], e0 = two_sum(s[0], hi[-1])
            e[0] += e0 + lo[-1]
        hi, lo = s, e
    return hi[0], lo[0]


def _numpy_grad_error(
    grads: list[np.ndarray], exact: np.ndarray, out: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    for grad, (err, size) in zip(grads, out, strict=True):
        g = grad.astype(np.float64, copy=False)
        np.abs(g - exact).max(axis=1, out=err)
        np.abs(g).max(axis=1, out=size)


# method -> grad_errors' per-row work, into each gradient's err and size
_GRAD_ERROR = {"float64": _kernel_grad_error, "float64-numpy": _numpy_grad_error}


def auto_method(method: str, entries: int) -> str:
    """The method ``"auto"`` stands for on ``entries`` logits; any other is checked and kept."""
    if method not in METHODS:
        raise ValueError(f"unknown reference method {method!r}")
    if method == "auto":
        return "mpmath" if entries <= MPMATH_MAX_ENTRIES else "float64"
    return method
