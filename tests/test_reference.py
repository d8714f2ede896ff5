"""The exact reference against mpmath, on adversarial rows and random ones.

The expected values are computed here from the textbook definition, L = sum_j y_j (LSE(x) - x_j)
with LSE(x) = log(sum_j exp(x_j)), at 1200 significant digits: enough that the cancellation in
LSE(x) - x_label is resolved exactly even for losses ~ e^-800 (about 350 digits below LSE), so no
log1p trick (the reference's own method) is involved in the expectation.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xentaudit.reference import cross_entropy

EPS64 = np.finfo(np.float64).eps
DIGITS = 1200


def exact(row: list[float], weights: list[float]) -> tuple[mpmath.mpf, list[mpmath.mpf]]:
    """Loss and gradient of one row by the definition, at DIGITS digits."""
    with mpmath.workdps(DIGITS):
        x = [mpmath.mpf(v) for v in row]
        y = [mpmath.mpf(v) for v in weights]
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in x))
        # 0 * (LSE - (-inf)) is 0 by definition: zero label mass contributes nothing.
        loss = mpmath.fsum(w * (lse - v) for w, v in zip(y, x, strict=True) if w != 0)
        total = mpmath.fsum(y)
        grad = [mpmath.exp(v - lse) * total - w for w, v in zip(y, x, strict=True)]
        return loss, grad


def ulps_off(value: float, truth: mpmath.mpf) -> float:
    """|value - truth| in float64 ulps of truth (ulp of 0 is the smallest subnormal)."""
    if mpmath.isinf(truth):
        return 0.0 if value == math.inf else math.inf
    with mpmath.workdps(DIGITS):
        t = float(truth)
        ulp = np.spacing(abs(t)) if t != 0 else 5e-324
        return float(abs(mpmath.mpf(value) - truth) / mpmath.mpf(ulp))


def one_hot(k: int, c: int) -> list[float]:
    return [1.0 if j == k else 0.0 for j in range(c)]


ADVERSARIAL = {
    # name: (logits, label weights)
    "lead 40 (loss 4e-18)": ([40.0, 0.0, 0.0], one_hot(0, 3)),
    "lead 700 (loss 2e-304)": ([700.0, 0.0, 0.0], one_hot(0, 3)),
    "lead 740 (loss subnormal)": ([740.0, 0.0], one_hot(0, 2)),
    "lead 800 (loss below float64)": ([800.0, 0.0, 0.0], one_hot(0, 3)),
    "inexact gap 40.1 - 0.3": ([40.1, 0.3, -0.7], one_hot(0, 3)),
    "inexact gap, loss 1e-16": ([37.3, 0.1, -3.3], one_hot(0, 3)),
    "huge +-1e30, label low": ([1e30, -1e30, 0.0], one_hot(1, 3)),
    "huge +-1e30, label top": ([1e30, -1e30, 0.0], one_hot(0, 3)),
    "seed x10 row 0": ([30.0, 10.0, 10.0], one_hot(0, 3)),
    "seed x10 row 1": ([-10.0, 20.0, 50.0], one_hot(1, 3)),
    "-500 500 -500 label 0": ([-500.0, 500.0, -500.0], one_hot(0, 3)),
    "-500 500 -500 label 1": ([-500.0, 500.0, -500.0], one_hot(1, 3)),
    "ties": ([5.0, 5.0, 5.0], one_hot(1, 3)),
    "tie at the top, label on it": ([9.0, 9.0, -2.0], one_hot(0, 3)),
    "one class": ([7.5], [1.0]),
    "one class, weight 2.5": ([7.5], [2.5]),
    "soft labels summing to 1.4": ([1.0, 2.0, 3.0], [0.2, 0.3, 0.9]),
    "soft labels, confident": ([60.0, 0.0, -1.0], [0.999, 0.001, 0.0]),
    "-inf logit without label mass": ([-math.inf, 1.0, 2.0], [0.0, 0.5, 0.25]),
    "-inf logit with label mass": ([-math.inf, 1.0, 2.0], [0.5, 0.5, 0.25]),
    "zero label mass": ([1.0, 2.0], [0.0, 0.0]),
    "tiny logits": ([1e-300, -1e-300, 0.0], one_hot(2, 3)),
    "float32 max spread": ([3.4e38, -3.4e38], one_hot(0, 2)),
}


@pytest.mark.parametrize("method", ["float64", "mpmath"])
@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_rows_match_mpmath(name: str, method: str) -> None:
    row, weights = ADVERSARIAL[name]
    ref = cross_entropy(np.array([row]), np.array([weights]), method)
    loss, grad = exact(row, weights)
    # The bound: 2 float64 ulps. The float64 method rounds in exp (<1 ulp, glibc),
    # the sum t (<=0.5 ulp for these few terms), log1p (<1 ulp) and the final sum (0.5 ulp),
    # each damped by a condition number <= 1; the mpmath method rounds once (0.5 ulp).
    assert ulps_off(float(ref.loss[0]), loss) <= (2.0 if method == "float64" else 0.5)
    if method == "mpmath" and mpmath.isfinite(loss):
        # hi + lo is a double-double: lo is rounded to 53 bits, so the pair is exact to
        # 2**-105 relative (floored at half the smallest subnormal, where lo underflows).
        with mpmath.workdps(DIGITS):
            residual = abs(mpmath.mpf(ref.loss[0]) + mpmath.mpf(ref.loss_lo[0]) - loss)
            assert residual <= max(abs(loss) * mpmath.mpf(2) ** -104, mpmath.mpf(2) ** -1075)
    bound = max(sum(weights), 1.0)
    for got, want in zip(ref.grad[0], grad, strict=True):
        # |g| <= bound; q_j/(1+t)*sum(y) - y_j takes ~3 roundings of magnitude <= bound.
        assert abs(got - float(want)) <= 4 * EPS64 * bound


def test_label_mass_on_minus_inf_is_exactly_inf() -> None:
    ref = cross_entropy(np.array([[-np.inf, 0.0]]), np.array([[1.0, 0.0]]), "float64")
    assert ref.loss[0] == math.inf
    assert np.array_equal(ref.grad[0], [-1.0, 1.0])


def test_zero_label_mass_on_minus_inf_contributes_exactly_zero() -> None:
    with_inf = cross_entropy(np.array([[-np.inf, 0.0, 1.0]]), np.array([[0.0, 1.0, 0.0]]))
    closed_form = math.log1p(math.exp(-1.0)) + 1.0  # LSE([0, 1]) - 0
    assert not np.isnan(with_inf.loss).any()
    assert abs(with_inf.loss[0] - closed_form) <= 2 * np.spacing(closed_form)


def test_methods_agree_on_a_large_vocabulary_row() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(0, 4, size=(3, 5000))
    x[0, 17] = 80.0  # confident and correct: loss ~ 5000 * e^-70, no cancellation allowed
    y = np.zeros_like(x)
    y[[0, 1, 2], [17, 3, 4000]] = 1.0
    fast = cross_entropy(x, y, "float64")
    slow = cross_entropy(x, y, "mpmath")
    # 5000 positive terms summed pairwise: error <= log2(5000) ~ 13 ulps in the worst case,
    # plus exp and log1p; the methods must agree to that.
    assert np.all(np.abs(fast.loss - slow.loss) <= 16 * np.spacing(slow.loss))
    assert np.max(np.abs(fast.grad - slow.grad)) <= 4 * EPS64


def test_auto_picks_mpmath_for_small_and_float64_for_large() -> None:
    small = cross_entropy(np.zeros((2, 3)), np.eye(3)[:2])
    large = cross_entropy(np.zeros((10, 5000)), np.eye(5000)[:10])
    assert (small.method, large.method) == ("mpmath", "float64")


magnitudes = st.sampled_from([1e-3, 0.1, 1.0, 10.0, 50.0, 300.0, 1e4, 1e15, 1e30])


@settings(max_examples=150, deadline=None)
@given(
    data=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=12),
    scale=magnitudes,
    label=st.integers(0, 11),
    soft=st.booleans(),
)
def test_random_rows_within_two_ulps_of_mpmath(
    data: list[float], scale: float, label: int, soft: bool
) -> None:
    row = [v * scale for v in data]
    c = len(row)
    weights = [abs(v) for v in data] if soft else one_hot(label % c, c)
    ref = cross_entropy(np.array([row]), np.array([weights]), "float64")
    loss, grad = exact(row, weights)
    # Soft labels add one sum of c non-negative terms y_j (m - x_j): +0.5 ulp per level.
    assert ulps_off(float(ref.loss[0]), loss) <= (2.0 if not soft else 3.0)
    bound = max(sum(weights), 1.0)
    worst = max(abs(g - float(w)) for g, w in zip(ref.grad[0], grad, strict=True))
    assert worst <= 4 * EPS64 * bound


@settings(max_examples=100, deadline=None)
@given(
    row=st.lists(st.integers(-60, 60), min_size=1, max_size=10),
    shift=st.integers(-(2**40), 2**40),
    label=st.integers(0, 9),
)
def test_shift_invariance_is_exact(row: list[int], shift: int, label: int) -> None:
    # Integers below 2**41 shift exactly in float64, so x and x + c are the same row up to a
    # shift and every difference x_j - max(x) is identical: the results must be bit-identical.
    x = np.array([row], dtype=np.float64)
    y = np.array([one_hot(label % len(row), len(row))])
    for method in ("float64", "mpmath"):
        a = cross_entropy(x, y, method)
        b = cross_entropy(x + shift, y, method)
        assert np.array_equal(a.loss, b.loss) and np.array_equal(a.grad, b.grad)
