"""The exact sigmoid (binary, multi-label) cross-entropy and its exact gradient.

One logit per label: for logits x (one row, C labels) and label weights y_j in [0, 1], the
row's loss is the mean over its labels, as Keras' ``binary_crossentropy`` reduces the last axis:

    L = (1/C) sum_j [ y_j softplus(-x_j) + (1 - y_j) softplus(x_j) ],

    softplus(x) = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)),

and dL/dx_j = (sigmoid(x_j) - y_j) / C.

Each term is written as a sum of non-negative parts, so nothing cancels whatever the label
(optax's ``sigmoid_binary_cross_entropy`` and TensorFlow's ``sigmoid_cross_entropy_with_logits``
use the same max(x, 0) - x y + log1p(exp(-|x|)) identity, which does cancel for x > 0):

    x >= 0:  (1 - y) x + log1p(exp(-x)),      x < 0:  y (-x) + log1p(exp(x)),

and a zero weight contributes exactly 0 even on an infinite logit (no 0 * inf). float64
error: log1p and exp within 1 ulp, one product and one sum of non-negative numbers, so each
term is within 3 ulps; the row mean is a pairwise sum of non-negative terms, within
ceil(log2 C) + 1 ulps more. The gradient is (1 - y) sigmoid(x) - y sigmoid(-x), each sigmoid
from exp(-|x|) (no overflow), so its absolute error is a few ulps of max(y, 1 - y).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from xentaudit.io import as_float
from xentaudit.reference.base import MPMATH_DIGITS, Reference, auto_method

if TYPE_CHECKING:  # mpmath itself is imported where it computes
    from collections.abc import Callable

    import mpmath

    Element = Callable[[mpmath.mpf, mpmath.mpf], tuple[mpmath.mpf, mpmath.mpf]]


def sigmoid_cross_entropy(
    logits: np.ndarray, labels: np.ndarray, method: str = "auto"
) -> Reference:
    """Exact sigmoid cross-entropy of ``logits`` (n, C) against label weights ``labels`` (n, C)
    in [0, 1], per row the mean over its C labels.

    ``method`` as for ``cross_entropy``: ``"auto"`` (mpmath for at most ``MPMATH_MAX_ENTRIES``
    entries), ``"mpmath"``, ``"float64"`` or ``"float64-numpy"`` (the same numpy formula: no
    kernel serves this loss). Logits may be any float dtype, read exactly; inputs are assumed
    valid: no NaN, labels in [0, 1].
    """
    method = auto_method(method, logits.size)
    # float64 arithmetic whatever the logits came in (read exactly: every format widens exactly)
    x, y = as_float(logits).astype(np.float64), np.asarray(labels, dtype=np.float64)
    if method == "mpmath":
        return mpmath_rows(x, y, _mp_element)
    return float64_rows(terms(x, y), sigmoid_minus(x, y))


def float64_rows(elements: np.ndarray, grads: np.ndarray) -> Reference:
    """The Reference of an elementwise loss over rows of C labels: the mean of each row's
    ``elements`` (a pairwise sum; the elements are non-negative), gradients ``grads / C``."""
    c = elements.shape[1]
    loss = elements.mean(axis=1)
    grad = grads / c
    size = np.abs(grad).max(axis=1) if grad.size else np.zeros(len(loss))
    return Reference(loss, np.zeros_like(loss), grad, size, "float64-numpy")


def mpmath_rows(x: np.ndarray, y: np.ndarray, element: Element) -> Reference:
    """The Reference of an elementwise loss at ``MPMATH_DIGITS`` digits: ``element(x, y)`` gives
    one label's loss and its derivative; a row's loss is their mean, its gradient the
    derivatives over C."""
    import mpmath  # here, not at the top: no --help or float64 audit needs it

    n, c = x.shape
    loss, loss_lo, grad = np.empty(n), np.empty(n), np.empty((n, c))
    with mpmath.workdps(MPMATH_DIGITS):
        for i in range(n):
            parts = [
                element(mpmath.mpf(float(v)), mpmath.mpf(float(w)))
                for v, w in zip(x[i], y[i], strict=True)
            ]
            exact = mpmath.fsum(p[0] for p in parts) / c
            loss[i] = float(exact)
            loss_lo[i] = float(exact - loss[i]) if mpmath.isfinite(exact) else 0.0
            grad[i] = [float(p[1] / c) for p in parts]
    size = np.abs(grad).max(axis=1) if grad.size else np.zeros(n)
    return Reference(loss, loss_lo, grad, size, "mpmath")


def mp_parts(v: mpmath.mpf, w: mpmath.mpf) -> tuple[mpmath.mpf, mpmath.mpf, mpmath.mpf]:
    """One label's binary cross-entropy, sigmoid(v) and sigmoid(-v), at mpmath's precision:
    the same non-negative parts as ``terms``, each relatively exact to the working digits."""
    import mpmath  # here, not at the top: no --help or float64 audit needs it

    weight = (1 - w) if v >= 0 else w
    linear = weight * abs(v) if weight != 0 else mpmath.mpf(0)
    up, down = 1 / (1 + mpmath.exp(-v)), 1 / (1 + mpmath.exp(v))
    return linear + mpmath.log1p(mpmath.exp(-abs(v))), up, down


def _mp_element(v: mpmath.mpf, w: mpmath.mpf) -> tuple[mpmath.mpf, mpmath.mpf]:
    bce, up, down = mp_parts(v, w)
    return bce, (1 - w) * up - w * down


def sigmoids(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sigmoid(x) and sigmoid(-x), both from exp(-|x|) in (0, 1]: no overflow, and the small
    one is computed directly rather than as 1 minus the other."""
    e = np.exp(-np.abs(x))
    big, small = 1.0 / (1.0 + e), e / (1.0 + e)
    return np.where(x >= 0, big, small), np.where(x >= 0, small, big)


def terms(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The per-label binary cross-entropies y softplus(-x) + (1 - y) softplus(x), each a sum
    of non-negative parts (see the module's docstring)."""
    log_tail = np.log1p(np.exp(-np.abs(x)))
    weight = np.where(x >= 0, 1.0 - y, y)  # the weight of the linear part
    with np.errstate(invalid="ignore"):
        linear = weight * np.abs(x)
    linear[weight == 0] = 0.0  # a zero weight on an infinite logit costs nothing
    return linear + log_tail


def sigmoid_minus(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sigmoid(x) - y, as (1 - y) sigmoid(x) - y sigmoid(-x): each product accurate, so a hard
    label's gradient keeps full relative accuracy where sigmoid(x) is close to y."""
    up, down = sigmoids(x)
    return (1.0 - y) * up - y * down
