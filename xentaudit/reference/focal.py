"""The exact focal losses (Lin et al. 2017, "Focal loss for dense object detection") and their
exact gradients.

Categorical focal, as Keras' ``categorical_focal_crossentropy`` defines it, for logits x (one
row, C classes), label weights y and p = softmax(x):

    L = alpha sum_j y_j (1 - p_j)^gamma (-log p_j).

It is written on the max-separated pieces of the softmax reference (m = x_a the largest logit,
q_j = exp(x_j - m), t = sum_{j != a} q_j), where every factor keeps its relative accuracy:

    -log p_j = (m - x_j) + log1p(t)                    (non-negative parts),
    1 - p_j  = (1 + t - q_j) / (1 + t)   for j != a    (1 + t - q_j >= 1: no cancellation),
    1 - p_a  = t / (1 + t)                             (not 1 - p_a: a confident row keeps it).

With f(p) = (1 - p)^gamma (-log p), the gradient is dL/dx_k = g_k (1 - p_k) - p_k sum_{j != k}
g_j (the g_j are all <= 0, so only soft labels can make the two terms cancel) with

    g_j = alpha y_j p_j f'(p_j) = -alpha y_j (1 - p_j)^gamma (1 + gamma p_j r_j),
    r_j = -log p_j / (1 - p_j)   (-> 1 as p_j -> 1; r_a = log1p(t) (1 + t) / t),

so that neither (1 - p)^(gamma - 1) nor 0 * inf is ever formed. float64 error: each factor
within a few ulps (the pieces as in the softmax reference), the power multiplies the relative
error of 1 - p by gamma; the sums are compensated. gamma = 0 gives alpha times the
cross-entropy.

Binary focal, as Keras' ``binary_focal_crossentropy`` (and optax's ``sigmoid_focal_loss``)
define it, per label and averaged over the row's C labels like the sigmoid loss:

    L_j = w_j u_j^gamma B_j,   u_j = 1 - p_t = y_j sigmoid(-x_j) + (1 - y_j) sigmoid(x_j),

with B_j the binary cross-entropy (``sigmoid.terms``) and w_j = alpha y_j + (1 - alpha)(1 - y_j)
with class balancing (``alpha`` given), else 1. u is a sum of non-negative products, never
1 - p_t. Its derivative is w_j u^gamma [gamma s_j (1 - 2 y_j) B_j + sigmoid(x_j) - y_j] with
s_j = sigmoid(x_j) sigmoid(-x_j) / u_j in [0, 1] (the limit sigmoid(+-x_j) where u_j is 0).
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
    csum_pair,
    two_sum,
)
from xentaudit.reference.sigmoid import (
    float64_rows,
    mp_parts,
    mpmath_rows,
    sigmoid_minus,
    sigmoids,
    terms,
)
from xentaudit.reference.softmax import mp_separated, separated

if TYPE_CHECKING:  # mpmath itself is imported where it computes
    import mpmath


def focal_cross_entropy(
    logits: np.ndarray,
    labels: np.ndarray,
    gamma: float = 2.0,
    alpha: float = 1.0,
    method: str = "auto",
) -> Reference:
    """Exact categorical focal loss of ``logits`` (n, C) against ``labels`` (dense weights
    (n, C) or classes (n,)), focusing ``gamma`` >= 0, weight ``alpha`` (Keras' default is 0.25).

    ``method`` as for ``cross_entropy`` (no kernel serves this loss: "float64" runs the numpy
    formula). Inputs as for ``cross_entropy``: no NaN or +inf, label weights non-negative.
    """
    method = auto_method(method, logits.size)
    x = as_float(logits).astype(np.float64)  # float64 arithmetic, the logits read exactly
    y = _dense(labels, x)
    if method == "mpmath":
        return _focal_mpmath(x, y, gamma, alpha)
    return _focal_float64(x, y, gamma, alpha)


def binary_focal_cross_entropy(
    logits: np.ndarray,
    labels: np.ndarray,
    gamma: float = 2.0,
    alpha: float | None = None,
    method: str = "auto",
) -> Reference:
    """Exact binary focal loss of ``logits`` (n, C) against label weights ``labels`` (n, C) in
    [0, 1], per row the mean over its labels; ``alpha`` given: Keras' class balancing
    (``apply_class_balancing=True``) and optax's ``alpha``, None: no weight."""
    method = auto_method(method, logits.size)
    x, y = as_float(logits).astype(np.float64), np.asarray(labels, dtype=np.float64)
    if method == "mpmath":
        return mpmath_rows(x, y, lambda v, w: _binary_focal_element(v, w, gamma, alpha))
    up, down = sigmoids(x)
    u = y * down + (1.0 - y) * up  # 1 - p_t, a sum of non-negative products
    bce = terms(x, y)
    weight = 1.0 if alpha is None else alpha * y + (1.0 - alpha) * (1.0 - y)
    modulating = u**gamma
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(u > 0, up * down / u, np.where(y >= 0.5, up, down))
        focus = gamma * modulating * s * (1.0 - 2.0 * y) * bce
    focus[modulating * bce == 0] = 0.0  # no 0 * inf where u is 0 or B is inf with gamma 0
    grads = weight * (focus + modulating * sigmoid_minus(x, y))
    return float64_rows(weight * modulating * bce, grads)


def _dense(labels: np.ndarray, x: np.ndarray) -> np.ndarray:
    if labels.ndim == 2:
        return np.asarray(labels, dtype=np.float64)
    y = np.zeros(x.shape)
    y[np.arange(x.shape[0]), labels] = 1.0
    return y


def _focal_float64(x: np.ndarray, y: np.ndarray, gamma: float, alpha: float) -> Reference:
    n = x.shape[0]
    r = np.arange(n)
    a, xt, m, q, t = separated(x)
    yt = np.array(y.T, order="C")
    lt, denom = np.log1p(t), 1.0 + t
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        neg_log = (m - xt) + lt  # -log p_j; +inf on a -inf logit
        one_minus = (1.0 + (t - q)) / denom
        one_minus[a, r] = t / denom
        q[a, r] = 1.0
        p = q / denom
        ratio = neg_log / one_minus
        ratio[a, r] = np.where(t > 0, lt * denom / np.where(t > 0, t, 1.0), 1.0)
        p_ratio = np.where(p == 0, 0.0, p * ratio)  # p log p -> 0 on a -inf logit
        modulating = one_minus**gamma
        terms_ = yt * modulating * neg_log
        g = -alpha * yt * modulating * (1.0 + gamma * p_ratio)
    terms_[yt == 0] = 0.0  # zero weight on a -inf logit costs nothing
    g[yt == 0] = 0.0
    with np.errstate(invalid="ignore"):  # inf - inf in csum's TwoSums; +inf stays +inf
        loss = alpha * csum(terms_)
    # g_k - p_k sum_j g_j as g_k (1 - p_k) - p_k sum_{j != k} g_j: on a confident row g_k and
    # p_k sum_j g_j agree to the digits of 1 - p_k, and the difference would keep none of them.
    total, total_lo = csum_pair(g)
    rest, rest_lo = two_sum(total, -g)
    grad = g * one_minus - p * (rest + (rest_lo + total_lo))
    size = np.abs(grad).max(axis=0) if grad.size else np.zeros(n)
    return Reference(loss, np.zeros(n), np.ascontiguousarray(grad.T), size, "float64-numpy")


def _focal_mpmath(x: np.ndarray, y: np.ndarray, gamma: float, alpha: float) -> Reference:
    import mpmath  # here, not at the top: no --help or float64 audit needs it

    n, c = x.shape
    loss, loss_lo, grad = np.empty(n), np.empty(n), np.empty((n, c))
    with mpmath.workdps(MPMATH_DIGITS):
        g_, a_ = mpmath.mpf(gamma), mpmath.mpf(alpha)
        for i in range(n):
            row, w, a, m, q, t = mp_separated(x[i], y[i])
            p = [qj / (1 + t) for qj in q]
            om = [(1 + t - q[j]) / (1 + t) if j != a else t / (1 + t) for j in range(c)]
            nl = [(m - row[j]) + mpmath.log1p(t) for j in range(c)]
            exact = a_ * mpmath.fsum(w[j] * om[j] ** g_ * nl[j] for j in range(c) if w[j] > 0)
            # p r = p (-log p) / (1 - p): 1 in the limit p -> 1, 0 on a -inf logit (p = 0)
            pr = [p[j] * nl[j] / om[j] if p[j] and om[j] else int(bool(p[j])) for j in range(c)]
            gs = [
                -a_ * w[j] * om[j] ** g_ * (1 + g_ * pr[j]) if w[j] > 0 else mpmath.mpf(0)
                for j in range(c)
            ]
            total = mpmath.fsum(gs)
            loss[i] = float(exact)
            loss_lo[i] = float(exact - loss[i]) if mpmath.isfinite(exact) else 0.0
            # as in the float64 method: g_k (1 - p_k) - p_k sum_{j != k} g_j, no cancellation
            grad[i] = [float(gs[j] * om[j] - p[j] * (total - gs[j])) for j in range(c)]
    size = np.abs(grad).max(axis=1) if grad.size else np.zeros(n)
    return Reference(loss, loss_lo, grad, size, "mpmath")


def _binary_focal_element(
    v: mpmath.mpf, w: mpmath.mpf, gamma: float, alpha: float | None
) -> tuple[mpmath.mpf, mpmath.mpf]:
    import mpmath  # here, not at the top: no --help or float64 audit needs it

    bce, up, down = mp_parts(v, w)
    u = w * down + (1 - w) * up
    weight = 1 if alpha is None else alpha * w + (1 - alpha) * (1 - w)
    modulating = u ** mpmath.mpf(gamma)
    s = up * down / u if u else (up if w >= 0.5 else down)
    focus = gamma * modulating * s * (1 - 2 * w) * bce if modulating * bce else 0
    return weight * modulating * bce, weight * (focus + modulating * ((1 - w) * up - w * down))
