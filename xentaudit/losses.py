"""The losses xentaudit audits: for each, its exact reference, its labels and its error bounds.

Every implementation computes one loss (``Impl.loss``); a command audits one loss at a time
(``--loss``), against that loss's reference (``xentaudit.reference``), with tolerances that
bound what a well-implemented version of that loss may round (README, "Flags and thresholds").
With eps the machine epsilon of the effective dtype, k = ceil(log2 C) and L_i the exact loss:

* softmax: B_i = max(sum_j y_ij, 1) bounds the gradient's entries; a C-term sum inside the
  log-sum-exp adds k eps B_i to the loss's and the gradient's tolerance; |dL/dx|_1 <= 2 B_i.
* sigmoid (the mean over a row's C labels of y softplus(-x) + (1 - y) softplus(x)): each
  gradient entry (sigmoid(x_j) - y_j) / C is at most B_i = 1/C and rounds a few times in
  sigmoid, the subtraction and the division (within 8 eps B_i: no C-term sum reaches it); the
  loss adds k eps max(|L_i|, 1) for the mean of C non-negative terms (Higham 2002, section 4.2)
  and u mean_j |x_ij| (u = eps / 2) for the rounding of the product x y in
  max(x, 0) - x y + log1p(e^-|x|) (TensorFlow's and optax's form; the subtraction after it is
  exact where it cancels, by Sterbenz' lemma), which perturbs the loss as a relative change of
  u in y would; |dL/dx|_1 <= 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from xentaudit.errors import ConfigError
from xentaudit.io import as_float
from xentaudit.reference import FLOAT64_METHOD, Reference, cross_entropy, sigmoid_cross_entropy

REDUCTION_ULPS = 1  # per doubling of the class count: the error bound of a tree-summed reduction
# the rounding of the product x y, at most u |x| = eps |x| / 2 per label (sigmoid): measured at
# 0.999 u |x| for TensorFlow's own fused loss (tests/test_sigmoid.py)
PRODUCT_ULPS = 0.5
LABELS = ("classes", "multi-label")  # Loss.labels: classes or weights per class; one per logit


@dataclass(frozen=True)
class Loss:
    """One member of the cross-entropy family."""

    name: str  # --loss
    summary: str
    formula: str  # the exact loss of one row, as the README writes it
    labels: str  # LABELS: "classes" (integer classes or weights over the classes, softmax);
    # "multi-label" (a weight in [0, 1] per logit, the logits' shape)
    reference: Callable[[np.ndarray, np.ndarray, str], Reference]
    # per row, from the rounded inputs: the gradient entries' bound B_i, the tolerance the loss
    # adds for its reductions and products (in eps), the gradient's (in eps), |dL/dx|_1's bound
    bound: Callable[[np.ndarray, np.ndarray | None], np.ndarray]
    loss_terms: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    grad_terms: Callable[[np.ndarray, np.ndarray], np.ndarray]
    l1_bound: Callable[[np.ndarray], np.ndarray]
    smoothing_classes: Callable[[int], int]  # K of label smoothing y (1 - a) + a / K, for C labels
    kernel: bool = False  # its float64 method is the compiled kernel where it is built

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


def _softmax_bound(x: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return np.ones(x.shape[0])
    return np.maximum(weights.astype(np.float64).sum(axis=1), 1.0)


def _mean_abs_logit(x: np.ndarray) -> np.ndarray:
    return np.abs(as_float(x).astype(np.float64)).mean(axis=1)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            "softmax",
            "softmax cross-entropy: one class (or a distribution over classes) per row",
            "L = sum_j y_j (log sum_k exp(x_k) - x_j)",
            "classes",
            cross_entropy,
            _softmax_bound,
            lambda x, bound, exact: REDUCTION_ULPS * reduction_depth(x.shape[1]) * bound,
            lambda x, bound: REDUCTION_ULPS * reduction_depth(x.shape[1]) * bound,
            lambda bound: 2 * bound,
            lambda c: c,
            kernel=True,
        ),
        Loss(
            "sigmoid",
            "sigmoid (binary, multi-label) cross-entropy: one logit and one label in [0, 1] "
            "per class, the row's loss the mean over its labels",
            "L = (1/C) sum_j [y_j log(1 + exp(-x_j)) + (1 - y_j) log(1 + exp(x_j))]",
            "multi-label",
            sigmoid_cross_entropy,
            lambda x, weights: np.full(x.shape[0], 1.0 / x.shape[1]),
            lambda x, bound, exact: (
                REDUCTION_ULPS * reduction_depth(x.shape[1]) * np.maximum(np.abs(exact), 1.0)
                + PRODUCT_ULPS * _mean_abs_logit(x)
            ),
            lambda x, bound: np.zeros(x.shape[0]),
            lambda bound: np.ones_like(bound),
            lambda c: 2,
        ),
    )
}


def get_loss(name: str) -> Loss:
    """The loss named ``name``; an unknown name is a ``ConfigError`` listing the known ones."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]
