"""The exact losses and their exact gradients, against which every verdict is measured.

One module per loss, each behind the same interface: ``fn(logits, labels, method, ...) ->
Reference`` (``base`` holds the result type, the methods and the float64 kernel):

* ``softmax``: softmax cross-entropy, ``cross_entropy``;
* ``sigmoid``: sigmoid (binary, multi-label) cross-entropy, ``sigmoid_cross_entropy``;
* ``focal``: categorical and binary focal losses, ``focal_cross_entropy`` and
  ``binary_focal_cross_entropy``.
"""

from xentaudit.reference.base import (
    FLOAT64_METHOD,
    MPMATH_DIGITS,
    MPMATH_MAX_ENTRIES,
    Reference,
    grad_error,
    grad_errors,
)
from xentaudit.reference.focal import binary_focal_cross_entropy, focal_cross_entropy
from xentaudit.reference.sigmoid import sigmoid_cross_entropy
from xentaudit.reference.softmax import cross_entropy

__all__ = [
    "FLOAT64_METHOD",
    "MPMATH_DIGITS",
    "MPMATH_MAX_ENTRIES",
    "Reference",
    "binary_focal_cross_entropy",
    "cross_entropy",
    "focal_cross_entropy",
    "grad_error",
    "grad_errors",
    "sigmoid_cross_entropy",
]
