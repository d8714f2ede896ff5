"""The losses xentaudit audits: for each, its exact reference, its labels and its error bounds.

Every implementation computes one loss (``Impl.loss``); a command audits one loss at a time
(``--loss``), against that loss's reference (``xentaudit.reference``), with tolerances that
bound what a well-implemented version of that loss may round (README, "Flags and thresholds").
With eps the machine epsilon of the effective dtype, k = ceil(log2 C) and L_i the exact loss:

* softmax: B_i = max(sum_j y_ij, 1) bounds the gradient's entries; a C-term sum inside the
  log-sum-exp adds k eps B_i to the loss's and the gradient's tolerance, and d u_acc B_i for its
  accumulation in SIMD lanes (``LANE_ULPS``, ``lane_depth``); |dL/dx|_1 <= 2 B_i.
* sigmoid (the mean over a row's C labels of y softplus(-x) + (1 - y) softplus(x)): each
  gradient entry (sigmoid(x_j) - y_j) / C is at most B_i = 1/C and rounds a few times in
  sigmoid, the subtraction and the division (within 8 eps B_i: no C-term sum reaches it); the
  loss adds k eps max(|L_i|, 1) for the mean of C non-negative terms (Higham 2002, section
  4.2), d u_acc max(|L_i|, 1) for its accumulation in lanes, and u mean_j max(x_ij, 0) y_ij
  (u = eps / 2) over the labels y other than 0 and 1 for the rounding of the product x y in
  max(x, 0) - x y + log1p(e^-|x|) where x > 0 (TensorFlow's and optax's form; x 0 and x 1 are
  exact; the subtraction after it is exact where it cancels, by Sterbenz' lemma; where x < 0
  the product is the term itself, within its relative tolerance); the gradient adds
  u max_j |x_ij| t_ij B_i for a derivative taken as exp(x - softplus(x)) (JAX's), whose
  exponent rounds to u |x_j| relatively in the entry's part t_j = (1 - y_j) sigmoid(x_j) +
  y_j sigmoid(-x_j) (a masked logit's t is 0); |dL/dx|_1 <= 1.
* focal: B_i = alpha (1 + gamma) max(sum_j y_ij, 1) (each g_j = -alpha y_j (1 - p_j)^gamma
  (1 + gamma p_j r_j) with p r <= 1) and the softmax's k B_i. The factor (1 - p)^gamma from a
  rounded p moves a term by gamma u relatively where 1 - p is not small (within 8 eps for
  gamma <= 16) and where it is small the term is too: no term of its own (measured: the stable
  forms stay within the softmax's tolerance at gamma 2 and 5, tests/test_focal.py).
* binary-focal: B_i = (1 + gamma) w_max / C (w_max = max(alpha, 1 - alpha), or 1), with the
  sigmoid's terms at the largest weight; |dL/dx|_1 <= C B_i.

Soft labels (softmax, focal) with n_i nonzero weights add u_acc (n_i - 1) |L_i| to the loss's
tolerance and u_acc (n_i - 1) (2 + max_j p_ij) B_i to the gradient's (``LABEL_SUM_ULPS``; u_acc
is float32's unit roundoff for half precision); labels smoothed in a dtype add 1.5 eps mean_j
max(x_ij, 0) y_ij to the sigmoid losses' (``SMOOTHED_ULPS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from xentaudit.dtypes import FORMATS
from xentaudit.errors import ConfigError
from xentaudit.io import as_float
from xentaudit.reference import (
    FLOAT64_METHOD,
    Reference,
    binary_focal_cross_entropy,
    cross_entropy,
    focal_cross_entropy,
    sigmoid_cross_entropy,
)

REDUCTION_ULPS = 1  # per doubling of the class count: the error bound of a tree-summed reduction
# A C-term sum accumulated in SIMD lanes: PyTorch's CPU kernels (ATen's vec::map_reduce_all, in
# its log_softmax and cross_entropy) keep one vector of L lanes, each lane adding its ceil(C / L)
# terms in order, then add the lanes (vec_reduce_all: a tree for float32, in order for float64;
# in order too for C < L); Eigen (TensorFlow) sums blocks of a row so too. For non-negative terms
# each lane is within (ceil(C / L) - 1) u_acc of its exact sum (Higham 2002, (4.4)) and adding
# the L lanes in order within (L - 1) u_acc more: d u_acc relatively, d = lane_depth, u_acc =
# eps_acc / 2 the accumulator's unit roundoff (float32's for half precision, see LABEL_SUM_ULPS).
# The bound is nearly reached: with the label's logit 0 and the others just below ln(u_acc)
# (each term lost against a lane's running sum of 1) the first lane loses its terms (terms of
# 0.99 u in float64 over 32,000 classes: 7,920 u lost of d = 8,002); a confident row of 32,000
# classes with the others at ln(2^-25) (each term u/2) loses half of d (torch: 1/8 of the terms
# with AVX2, 1/16 with AVX-512; TensorFlow 1/128). L = VECTOR_BYTES / the accumulator's size, the
# lanes of a 256-bit vector (AVX2, and torch's vector width on every CPU without AVX-512): 8 in
# float32, 4 in float64.
LANE_ULPS = 0.5  # u_acc = eps_acc / 2 per unit of lane_depth
VECTOR_BYTES = 32
# the rounding of the product x y, at most u |x| = eps |x| / 2 per label (sigmoid): measured at
# 0.999 u |x| for TensorFlow's own fused loss (tests/test_sigmoid.py)
PRODUCT_ULPS = 0.5
# labels smoothed in a dtype, fl(y (1 - a) + a / K) with a / K and 1 - a rounded too: within
# three roundings (3u = 1.5 eps) of the exact y' relatively (the constant, the product for a soft
# y, the sum); the sigmoid's terms softplus(x) - x y' move by |x| per unit of y', which where
# x > 0 the loss's relative tolerance does not cover: 1.5 eps mean_j max(x_j, 0) y'_j more
SMOOTHED_ULPS = 1.5
# soft labels (softmax, focal) with n_i nonzero weights: a framework adds the row's n_i label
# terms in its own order, not a tree's (TensorFlow's float32 reduce_sum of 16,384 smoothed labels
# is 86 u off, where a tree sum is within 14 u), and a sum of n_i terms in any order is within
# (n_i - 1) u_acc of the sum of their magnitudes (Higham 2002, (4.4)), u_acc the unit roundoff
# of the accumulator: the dtype's, but float32's for a half-precision dtype, as TensorFlow's
# Eigen, torch's CPU kernels and XLA accumulate half-precision sums in float32 (one that
# accumulates in half precision is what this is to catch). The loss is such a sum, of
# non-negative terms: u_acc (n_i - 1) |L_i|. The gradient p_j sum_k y_k - y_j takes the label sum
# through p_j, and at the argmax autodiff through x - max(x) also adds the C entries p_j S - y_j
# (exactly 0): their p_j S part is a hard label's, within (8 + k) eps B_i as measured, and the n_i
# label weights among them are the labels summed again in another order, moved by up to
# (n_i - 1) u_acc times the magnitudes 2 S of both parts: u_acc (n_i - 1) (2 + max_j p_ij) B_i.
# Hard labels (n_i = 1) add nothing.
LABEL_SUM_ULPS = 0.5
LABELS = ("classes", "multi-label")  # Loss.labels: classes or weights per class; one per logit


@dataclass(frozen=True)
class Focus:
    """The focal losses' parameters: focusing ``gamma`` >= 0 and the weight ``alpha`` (the
    categorical focal loss's factor, Keras' 0.25 by default; the binary focal loss's class
    balancing alpha y + (1 - alpha)(1 - y), none by default). Other losses ignore them."""

    gamma: float = 2.0
    alpha: float | None = None


NO_FOCUS = Focus()  # the default: what the losses other than the focal ones are run with
FOCAL_LOSSES = ("focal", "binary-focal")  # the losses whose implementations take a Focus


@dataclass(frozen=True)
class Loss:
    """One member of the cross-entropy family."""

    name: str  # --loss; its formula is its reference module's (xentaudit/reference/)
    labels: str  # "classes" (integer classes or weights over the classes: softmax, focal);
    # "multi-label" (a weight in [0, 1] per logit, the logits' shape: sigmoid, binary-focal)
    reference: Callable[[np.ndarray, np.ndarray, str, Focus], Reference]
    # per row, from the rounded inputs: the gradient entries' bound B_i, the tolerance the loss
    # adds for its reductions and products (in eps), the gradient's (in eps), |dL/dx|_1's bound
    bound: Callable[[np.ndarray, np.ndarray | None, Focus], np.ndarray]
    # (x, y, B, exact loss, focus, whether the labels were smoothed in a dtype)
    loss_terms: Callable[
        [np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, Focus, bool], np.ndarray
    ]
    grad_terms: Callable[[np.ndarray, np.ndarray | None, np.ndarray, Focus], np.ndarray]
    l1_bound: Callable[[np.ndarray, np.ndarray], np.ndarray]
    smoothing_classes: Callable[[int], int]  # K of label smoothing y (1 - a) + a / K, for C labels
    # (B, max(|exact loss|, 1)) -> what the accumulation of its C-term sum in lanes (LANE_ULPS)
    # scales with in the loss's tolerance and the gradient's
    lane_sums: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    kernel: bool = False  # its float64 method is the compiled kernel where it is built
    default_alpha: float | None = None  # Focus.alpha when --alpha is not given

    @property
    def float64_method(self) -> str:
        """The method its reference's ``"float64"`` runs in this process."""
        return FLOAT64_METHOD if self.kernel else "float64-numpy"

    def smooth(self, y: np.ndarray, label_smoothing: float) -> np.ndarray:
        """Label weights ``y`` (n, C) smoothed as Keras smooths them, in float64: ``y (1 - a)
        + a / K``, K = C for softmax (keras/src/losses/losses.py ``categorical_crossentropy``),
        2 for sigmoid (``binary_crossentropy``: each label is a two-class distribution)."""
        y = np.asarray(y, dtype=np.float64)
        k = self.smoothing_classes(y.shape[-1])
        return y * (1.0 - label_smoothing) + label_smoothing / k


def reduction_depth(classes: int) -> int:
    """k = ceil(log2 C): the depth of a tree-summed reduction over C terms (0 for one class)."""
    return (classes - 1).bit_length()


def lane_depth(classes: int, accumulator_eps: float) -> int:
    """d = ceil(C / L) - 1 + L - 1: the relative error, in units of the accumulator's unit
    roundoff, of a sum of C non-negative terms accumulated in L lanes and the lanes then added in
    order (``LANE_ULPS``), L = 8 for a float32 accumulator (machine epsilon ``accumulator_eps``)
    and 4 for a float64 one; C - 1, a sum in order's, for C <= L."""
    lanes = VECTOR_BYTES // (4 if accumulator_eps >= FORMATS["float32"].eps else 8)
    if classes <= lanes:
        return max(classes - 1, 0)
    return -(-classes // lanes) - 1 + lanes - 1


def lane_bound(classes: int, eps: float) -> float:
    """u_acc d: the relative error bound of a row's C-term sum accumulated in lanes
    (``LANE_ULPS``, ``lane_depth``) for a dtype of machine epsilon ``eps``, in its accumulator
    (``accumulator_eps``)."""
    accumulator = accumulator_eps(eps)
    return LANE_ULPS * accumulator * lane_depth(classes, accumulator)


def _softmax_bound(x: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return np.ones(x.shape[0])
    return np.maximum(weights.astype(np.float64).sum(axis=1), 1.0)


def _sum_terms(x: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """A C-term sum inside a log-sum-exp: k B_i (softmax, focal)."""
    return REDUCTION_ULPS * reduction_depth(x.shape[1]) * bound


def _mean_terms(
    x: np.ndarray, y: np.ndarray | None, exact: np.ndarray, weight: float, smoothed: bool
) -> np.ndarray:
    """The mean of C non-negative per-label terms, k max(|L_i|, 1), and the rounding of the
    product x y in x - x y where x > 0, u x y per label other than 0 and 1 (whose products are
    exact) times the largest label weight (sigmoid, binary focal; where x < 0 the product -x y is
    the term itself, within its relative tolerance); for labels ``smoothed`` in a dtype, their
    rounding, ``SMOOTHED_ULPS`` x y more."""
    scale = np.maximum(np.abs(exact), 1.0)
    soft = 0.0 if y is None else np.where((y == 0.0) | (y == 1.0), 0.0, y)  # x 0 and x 1 are exact
    products = np.maximum(as_float(x).astype(np.float64), 0.0) * soft
    ulps = PRODUCT_ULPS + (SMOOTHED_ULPS if smoothed else 0.0)
    return REDUCTION_ULPS * reduction_depth(x.shape[1]) * scale + ulps * weight * (
        products.mean(axis=1)
    )


def extra_labels(weights: np.ndarray) -> np.ndarray:
    """n_i - 1, n_i the number of nonzero label ``weights`` of row i (at least 0)."""
    return np.maximum(np.count_nonzero(weights, axis=1) - 1, 0)


def accumulator_eps(eps: float) -> float:
    """The machine epsilon of the accumulator a framework sums in (label terms, a row's C terms),
    for a dtype of machine epsilon ``eps``: that dtype's, but float32's for half precision
    (``LABEL_SUM_ULPS``, ``LANE_ULPS``)."""
    return min(eps, FORMATS["float32"].eps)


def label_sum_terms(
    extra: np.ndarray, top_probability: np.ndarray, bound: np.ndarray, exact: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The soft labels' sums (``LABEL_SUM_ULPS``), in eps of the accumulator: the loss's u
    (n_i - 1) |L_i| and the gradient's u (n_i - 1) (2 + max_j p_ij) B_i, with ``extra`` n_i - 1
    (``extra_labels``), ``top_probability`` max_j p_ij and ``exact`` L_i."""
    with np.errstate(invalid="ignore"):  # an infinite exact loss (graded apart) on a hard row
        loss = np.where(extra > 0, LABEL_SUM_ULPS * extra * np.abs(exact), 0.0)
    return loss, LABEL_SUM_ULPS * extra * (2.0 + top_probability) * bound


def _exp_terms(x: np.ndarray, y: np.ndarray | None, bound: np.ndarray) -> np.ndarray:
    """A sigmoid's derivative taken as exp(x - softplus(x)) (JAX's log_sigmoid, optax): the
    exponent x - softplus(x), softplus(x) = max(x, 0) + l with l = log1p(e^-|x|), is a difference
    of two numbers of size |x| that rounds by at most min(u |x|, l) (rounded to nearest, x +- l
    stays within l of x, which the dtype holds), which exp turns into a relative error (measured
    at 1.06 u |x| B for optax in float64, tests/test_sigmoid.py) of what it computes, the entry's
    part t_j = (1 - y_j) sigmoid(x_j) + y_j sigmoid(-x_j), at most B_i t_j (the binary focal
    loss's too: its p^gamma factors only shrink it): max_j min(u |x_ij|, l_ij) t_ij B_i, in eps
    of the logits' dtype (no wider than the effective one's: larger; y None: t = 1)."""
    given = as_float(x)
    v = given.astype(np.float64)
    eps = float(np.finfo(given.dtype).eps)
    size = np.abs(v)
    shift = np.minimum(PRODUCT_ULPS * size, np.log1p(np.exp(-size)) / eps)  # 0 at -inf
    part = 1.0
    if y is not None:
        with np.errstate(over="ignore"):  # sigmoid(v) = exp(-softplus(-v)): 0 at -inf and -1e9
            part = (1 - y) * np.exp(-np.logaddexp(0.0, -v)) + y * np.exp(-np.logaddexp(0.0, v))
    return (shift * part).max(axis=1) * bound


def _in_log_sum_exp(bound: np.ndarray, magnitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sum inside a log-sum-exp (softmax, focal) reaches the loss through log, absolutely
    and scaled by sum(y), and every gradient entry w_j / S: B_i in both."""
    return bound, bound


def _in_mean(bound: np.ndarray, magnitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean of C non-negative terms (sigmoid, binary focal): relative to the loss,
    max(|L_i|, 1); no gradient entry takes a C-term sum."""
    return magnitude, np.zeros_like(bound)


def focal_alpha(focus: Focus) -> float:
    """The categorical focal loss's weight (1 where none is given)."""
    return 1.0 if focus.alpha is None else focus.alpha


def _largest_weight(focus: Focus) -> float:
    """The largest class-balancing weight of the binary focal loss: max(alpha, 1 - alpha)."""
    return 1.0 if focus.alpha is None else max(focus.alpha, 1.0 - focus.alpha)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            "softmax",
            "classes",
            lambda x, labels, method, focus: cross_entropy(x, labels, method),
            lambda x, weights, focus: _softmax_bound(x, weights),
            lambda x, y, bound, exact, focus, smoothed: _sum_terms(x, bound),
            lambda x, y, bound, focus: _sum_terms(x, bound),
            lambda x, bound: 2 * bound,
            lambda c: c,
            _in_log_sum_exp,
            kernel=True,
        ),
        Loss(
            "sigmoid",
            "multi-label",
            lambda x, labels, method, focus: sigmoid_cross_entropy(x, labels, method),
            lambda x, weights, focus: np.full(x.shape[0], 1.0 / x.shape[1]),
            lambda x, y, bound, exact, focus, smoothed: _mean_terms(x, y, exact, 1.0, smoothed),
            lambda x, y, bound, focus: _exp_terms(x, y, bound),
            lambda x, bound: np.ones_like(bound),
            lambda c: 2,
            _in_mean,
        ),
        Loss(
            "focal",
            "classes",
            lambda x, labels, method, focus: focal_cross_entropy(
                x, labels, focus.gamma, focal_alpha(focus), method
            ),
            lambda x, weights, focus: (
                focal_alpha(focus) * (1 + focus.gamma) * _softmax_bound(x, weights)
            ),
            lambda x, y, bound, exact, focus, smoothed: _sum_terms(x, bound),
            lambda x, y, bound, focus: _sum_terms(x, bound),
            lambda x, bound: 2 * bound,
            lambda c: c,
            _in_log_sum_exp,
            default_alpha=0.25,
        ),
        Loss(
            "binary-focal",
            "multi-label",
            lambda x, labels, method, focus: binary_focal_cross_entropy(
                x, labels, focus.gamma, focus.alpha, method
            ),
            lambda x, weights, focus: np.full(
                x.shape[0], (1 + focus.gamma) * _largest_weight(focus) / x.shape[1]
            ),
            lambda x, y, bound, exact, focus, smoothed: _mean_terms(
                x, y, exact, _largest_weight(focus), smoothed
            ),
            lambda x, y, bound, focus: _exp_terms(x, y, bound),
            lambda x, bound: x.shape[1] * bound,
            lambda c: 2,
            _in_mean,
        ),
    )
}


def focus_of(loss: str, gamma: float = 2.0, alpha: float | None = None) -> Focus:
    """The ``Focus`` a run of ``loss`` uses: ``gamma`` and ``alpha`` (None: the loss's default,
    Keras' 0.25 for the categorical focal loss, no class balancing for the binary one) for a
    focal loss, checked; ``NO_FOCUS`` for the others."""
    if not (0 <= gamma < math.inf):
        raise ConfigError(f"--gamma must be a finite number >= 0, got {gamma}")
    if alpha is not None and not (0 <= alpha <= 1):
        raise ConfigError(f"--alpha must lie in [0, 1], got {alpha}")
    if loss not in FOCAL_LOSSES:
        return NO_FOCUS
    return Focus(gamma, LOSSES[loss].default_alpha if alpha is None else alpha)


def get_loss(name: str) -> Loss:
    """The loss named ``name``; an unknown name is a ``ConfigError`` listing the known ones."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]
