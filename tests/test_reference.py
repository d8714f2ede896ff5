"""The exact reference against mpmath, on adversarial rows and random ones.

The expected values are computed here from the textbook definition, L = sum_j y_j (LSE(x) - x_j)
with LSE(x) = log(sum_j exp(x_j)), at 1200 significant digits: enough that the cancellation in
LSE(x) - x_label is resolved exactly even for losses ~ e^-800 (about 350 digits below LSE), so no
log1p trick (the reference's own method) is involved in the expectation.

Both float64 methods are tested the same way: the compiled kernel ("float64") and its numpy twin
("float64-numpy", what an install without a C compiler runs). Where the kernel is not built,
"float64" runs the numpy twin too, so these tests pass there; tests/test_kernel.py fails if a
compiler was available but the kernel is not in use.
"""

from __future__ import annotations

import math
import random

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xentaudit import reference
from xentaudit.errors import ConfigError
from xentaudit.reference import base, cross_entropy, grad_error, grad_errors

EPS64 = np.finfo(np.float64).eps
DIGITS = 1200
FLOAT64_METHODS = ["float64", "float64-numpy"]


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


@pytest.mark.parametrize("method", [*FLOAT64_METHODS, "mpmath"])
@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_rows_match_mpmath(name: str, method: str) -> None:
    row, weights = ADVERSARIAL[name]
    ref = cross_entropy(np.array([row]), np.array([weights]), method)
    loss, grad = exact(row, weights)
    # The bound: 2 float64 ulps. The float64 methods round in exp (kernel 0.65 ulp,
    # tests/test_kernel.py; numpy's 0.51), the sum t (compensated: <=0.5 ulp), log1p (<1 ulp)
    # and the final sum (0.5 ulp), each damped by a condition number <= 1. Measured on these
    # rows: 1.18 ulps for both. The mpmath method rounds once (0.5 ulp).
    assert ulps_off(float(ref.loss[0]), loss) <= (0.5 if method == "mpmath" else 2.0)
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


@pytest.mark.parametrize("method", FLOAT64_METHODS)
def test_label_mass_on_minus_inf_is_exactly_inf(method: str) -> None:
    ref = cross_entropy(np.array([[-np.inf, 0.0]]), np.array([[1.0, 0.0]]), method)
    assert ref.loss[0] == math.inf
    assert np.array_equal(ref.grad[0], [-1.0, 1.0])
    classes = cross_entropy(np.array([[-np.inf, 0.0]]), np.array([0]), method)
    assert classes.loss[0] == math.inf and np.array_equal(classes.grad[0], [-1.0, 1.0])


@pytest.mark.parametrize("method", [*FLOAT64_METHODS, "mpmath"])
def test_zero_label_mass_on_minus_inf_contributes_exactly_zero(method: str) -> None:
    x, y = np.array([[-np.inf, 0.0, 1.0]]), np.array([[0.0, 1.0, 0.0]])
    with_inf = cross_entropy(x, y, method)
    closed_form = math.log1p(math.exp(-1.0)) + 1.0  # LSE([0, 1]) - 0
    assert not np.isnan(with_inf.loss).any()
    assert abs(with_inf.loss[0] - closed_form) <= 2 * np.spacing(closed_form)


@pytest.mark.parametrize("method", FLOAT64_METHODS)
def test_methods_agree_on_a_large_vocabulary_row(method: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(0, 4, size=(3, 5000))
    x[0, 17] = 80.0  # confident and correct: loss ~ 5000 * e^-70, no cancellation allowed
    y = np.zeros_like(x)
    y[[0, 1, 2], [17, 3, 4000]] = 1.0
    fast = cross_entropy(x, y, method)
    slow = cross_entropy(x, y, "mpmath")
    # 5000 positive terms in a compensated sum (error ~1/2 ulp whatever their number), plus
    # exp and log1p (<1 ulp each): the methods must agree to 2 ulps (measured: 0 and 1, both
    # float64 methods).
    assert np.all(np.abs(fast.loss - slow.loss) <= 2 * np.spacing(slow.loss))
    assert np.max(np.abs(fast.grad - slow.grad)) <= 4 * EPS64


def test_auto_picks_mpmath_for_small_and_float64_for_large() -> None:
    small = cross_entropy(np.zeros((2, 3)), np.eye(3)[:2])
    large = cross_entropy(np.zeros((10, 5000)), np.eye(5000)[:10])
    assert (small.method, large.method) == ("mpmath", reference.FLOAT64_METHOD)


def test_the_method_that_ran_is_named() -> None:
    x, k = np.zeros((1, 3)), np.array([1])
    assert cross_entropy(x, k, "float64").method == reference.FLOAT64_METHOD
    assert cross_entropy(x, k, "float64-numpy").method == "float64-numpy"
    with pytest.raises(ValueError, match="unknown reference method"):
        cross_entropy(x, k, "float32")


def test_the_numpy_reference_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENTAUDIT_REFERENCE", "numpy")
    assert base.load_kernel() is None
    monkeypatch.setenv("XENTAUDIT_REFERENCE", "kernel")
    # the user's setting to fix: one line, exit 2 (a ValueError was an internal error, exit 3)
    with pytest.raises(ConfigError, match="XENTAUDIT_REFERENCE=kernel: set it to 'numpy'"):
        base.load_kernel()


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
    loss, grad = exact(row, weights)
    bound = max(sum(weights), 1.0)
    for method in FLOAT64_METHODS:
        ref = cross_entropy(np.array([row]), np.array([weights]), method)
        # Soft labels add one sum of c non-negative terms y_j (m - x_j): +0.5 ulp per level.
        # Measured over 3000 such rows: 1.30 ulps one-hot, 1.76 soft (both methods).
        assert ulps_off(float(ref.loss[0]), loss) <= (2.0 if not soft else 3.0)
        # |g| <= bound, ~3 roundings of that size (measured: 1.6 EPS64 * bound).
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
    for method in [*FLOAT64_METHODS, "mpmath"]:
        a = cross_entropy(x, y, method)
        b = cross_entropy(x + shift, y, method)
        assert np.array_equal(a.loss, b.loss) and np.array_equal(a.grad, b.grad)


# --- the float64 methods: float32 rows, the TwoSum and the compensated sums, threads, and the
# gradient comparison the grading uses, each against an independent computation.


FLOAT32_ROWS = {
    # rows whose differences x_j - max(x) are not exact in float64: TwoSum must catch them
    "tiny entry beside 30": ([30.0, 1e-9, -2.5e-12, 0.5], 1),
    "tiny entry is the runner-up": ([30.0, 1.5e-9], 0),  # x_1 - 30 is off by 7.5 ulps
    "tiny max, far entries": ([1e-12, -500.0, -300.0625], 0),
    "tiny max, label far": ([3e-11, -700.0, -20.0], 1),
    "float32 extremes": ([3.4e38, -3.4e38, 1e-45], 2),
}


@pytest.mark.parametrize("method", FLOAT64_METHODS)
@pytest.mark.parametrize("name", list(FLOAT32_ROWS))
def test_float32_rows_match_mpmath(name: str, method: str) -> None:
    row, label = FLOAT32_ROWS[name]
    x = np.array([row], dtype=np.float32)
    ref = cross_entropy(x, np.array([label]), method)
    loss, grad = exact([float(v) for v in x[0]], one_hot(label, len(row)))
    assert ulps_off(float(ref.loss[0]), loss) <= 2.0  # the float64 bound of test_reference
    for got, want in zip(ref.grad[0], grad, strict=True):
        assert abs(got - float(want)) <= 4 * np.finfo(np.float64).eps


def plain_sum(terms: np.ndarray) -> float:
    """Left to right, one rounding per addition (Python's sum() is compensated since 3.12)."""
    total = 0.0
    for term in terms:
        total += float(term)
    return total


def kernel_order_sum(terms: np.ndarray) -> float:
    """The kernel's csum without its compensation: 32 lanes (j mod 32), the tail, the lanes."""
    whole = terms.size // 32 * 32
    lanes = np.zeros(32)
    for block in terms[:whole].reshape(-1, 32):
        lanes += block
    return plain_sum(np.concatenate([terms[whole:], lanes]))


def pairwise_sum(terms: np.ndarray) -> float:
    """The numpy reference's sum without its compensation: j + (j + half), the odd one out
    added to the first, down to one."""
    while terms.size > 1:
        half = terms.size // 2
        pairs = terms[:half] + terms[half : 2 * half]
        if terms.size % 2:
            pairs[0] += terms[-1]
        terms = pairs
    return float(terms[0])


PLAIN_SUMS = {
    "left to right": plain_sum,
    "the kernel's lanes": kernel_order_sum,
    "numpy's sum": lambda terms: float(np.sum(terms)),
    "the numpy reference's pairs": pairwise_sum,
}
_gauss = random.Random(1144).gauss
MANY_CLASS_ROWS = {
    # name: (logits, label 0 on the maximum 0; the plain sums that are more than 2 ulps off)
    # e^-10 and small terms each 0.35 ulp of it: a plain sum that has added e^-10 drops every
    # small term after it (measured 1420, 56 and 5.9 ulps off; pairs add the small ones first).
    "e^-10 and 4095 e^-47.5": ([0.0, -10.0] + [-47.5] * 4095, list(PLAIN_SUMS)[:3]),
    # of seeds 0..11999 the one where every order is more than 3 ulps off (17, 6.1, 3.9, 4.1)
    "4096 x ~ N(-30, 6^2)": ([0.0] + [_gauss(-30.0, 6.0) for _ in range(4096)], list(PLAIN_SUMS)),
}


@pytest.mark.parametrize("method", FLOAT64_METHODS)
@pytest.mark.parametrize("name", list(MANY_CLASS_ROWS))
def test_the_compensated_sums_matter_on_many_class_rows(name: str, method: str) -> None:
    row, orders = MANY_CLASS_ROWS[name]
    with mpmath.workdps(60):  # ample: the terms are positive, nothing cancels
        terms = [mpmath.exp(v) for v in row[1:]]
        loss = mpmath.log1p(mpmath.fsum(terms))  # LSE(row) - 0, in closed form
        q = np.array([0.0] + [float(v) for v in terms])  # the terms rounded once; q_a = 0
        for order in orders:
            t = PLAIN_SUMS[order](q)
            assert ulps_off(float(mpmath.log1p(t)), loss) > 2, order  # the row discriminates
    ref = cross_entropy(np.array([row]), np.array([0]), method)
    assert ulps_off(float(ref.loss[0]), loss) <= 2  # the bound of the adversarial rows (0.1)


TWOSUM_ROWS = {
    # rows whose loss (label 0, the maximum) depends on the error e_j of fl(x_j - m)
    "float64 gap 40.1 - 0.3": ([40.1, 0.3, -0.7], np.float64),
    "float32 tiny runner-up": ([30.0, 1.5e-9], np.float32),
}


@pytest.mark.parametrize("method", FLOAT64_METHODS)
@pytest.mark.parametrize("name", list(TWOSUM_ROWS))
def test_the_twosum_of_the_differences_matters(name: str, method: str) -> None:
    row, dtype = TWOSUM_ROWS[name]
    x = np.array([row], dtype=dtype)
    values = [float(v) for v in x[0]]
    loss, _ = exact(values, one_hot(0, len(values)))
    with mpmath.workdps(DIGITS):
        # everything exact but the differences, rounded as fl(x_j - m) (m = x_0) and their
        # error dropped
        t = mpmath.fsum(mpmath.exp(v - values[0]) for v in values[1:])
        assert ulps_off(float(mpmath.log1p(t)), loss) > 2  # measured 12.8 and 12.2 ulps off
    ref = cross_entropy(x, np.array([0]), method)
    assert ulps_off(float(ref.loss[0]), loss) <= 2  # the bound of the adversarial rows


@pytest.mark.parametrize("method", FLOAT64_METHODS)
def test_float32_logits_and_class_labels_give_the_float64_results_bit_for_bit(method: str) -> None:
    # The float32 path reads the same numbers; the class-label path does the same operations
    # as one-hot weights (a one-term gap, weights 0 and 1): nothing may differ.
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((40, 700)) * 12).astype(np.float32)
    k = rng.integers(0, 700, 40)
    y = np.eye(700)[k]
    fast = cross_entropy(x, k, method)
    wide = cross_entropy(x.astype(np.float64), y, method)
    for field in ("loss", "grad", "grad_size"):
        assert np.array_equal(getattr(fast, field), getattr(wide, field)), field
    assert np.array_equal(fast.grad_size, np.abs(fast.grad).max(axis=1))


@pytest.mark.parametrize("method", FLOAT64_METHODS)
def test_rows_shared_among_threads_equal_rows_done_one_by_one(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "_WORKERS", 4)  # 4 blocks even on a one-core machine
    rng = np.random.default_rng(9)
    x = rng.standard_normal((64, 4096)) * 30
    k = rng.integers(0, 4096, 64)
    whole = cross_entropy(x, k, method)
    rows = [cross_entropy(x[i : i + 1], k[i : i + 1], method) for i in range(64)]
    assert np.array_equal(whole.loss, np.concatenate([r.loss for r in rows]))
    assert np.array_equal(whole.grad, np.concatenate([r.grad for r in rows]))


@pytest.mark.parametrize("method", FLOAT64_METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_error_is_numpys_max_of_absolute_differences(dtype: type, method: str) -> None:
    rng = np.random.default_rng(2)
    exact_grad = rng.standard_normal((6, 37))
    got = (exact_grad + rng.normal(0, 1e-3, exact_grad.shape)).astype(dtype)
    got[1, 5] = np.nan
    got[2, 36] = np.inf
    got[3, 0] = -np.inf
    err, size = grad_error(got, exact_grad, method)
    with np.errstate(invalid="ignore"):
        want_err = np.abs(got.astype(np.float64) - exact_grad).max(axis=1)
        want_size = np.abs(got.astype(np.float64)).max(axis=1)
    assert np.array_equal(err, want_err, equal_nan=True)
    assert np.array_equal(size, want_size, equal_nan=True)
    assert np.isnan(err[1]) and np.isnan(size[1]) and err[2] == np.inf and size[3] == np.inf


@pytest.mark.parametrize("method", FLOAT64_METHODS)
def test_grad_errors_of_several_gradients_are_each_ones_alone(method: str) -> None:
    # The kernel compares each row of the exact gradient with every gradient's row in turn
    # (one read of it for them all); each (row, gradient) is the same reduction as for one
    # gradient alone, so what it finds must be what numpy finds on each gradient alone, bit
    # for bit. Gradients of either dtype (distinct, so that a swapped index shows), NaN and inf
    # in different rows of each.
    rng = np.random.default_rng(3)
    exact_grad = rng.standard_normal((9, 1001))
    single = (exact_grad + rng.normal(0, 1e-3, exact_grad.shape)).astype(np.float32)
    double = exact_grad + rng.normal(0, 1e-12, exact_grad.shape)
    single[1, 5], single[4, 1000] = np.nan, -np.inf
    double[2, 0], double[4, 3] = np.inf, np.nan
    grads = [single, double, single.copy()]
    got = grad_errors(grads, exact_grad, method)
    assert len(got) == 3
    with np.errstate(invalid="ignore"):
        for g, (err, size) in zip(grads, got, strict=True):
            wide = g.astype(np.float64)
            assert np.array_equal(err, np.abs(wide - exact_grad).max(axis=1), equal_nan=True)
            assert np.array_equal(size, np.abs(wide).max(axis=1), equal_nan=True)
    assert grad_errors([], exact_grad, method) == []
    with pytest.raises(ValueError, match="shapes"):  # not broadcast
        grad_errors([single[:1]], exact_grad, method)
    assert len(grad_errors([double] * base.MAX_GRADS, exact_grad, method)) == base.MAX_GRADS
    with pytest.raises(ValueError, match="at most"):  # the kernel's bound, on both methods
        grad_errors([double] * (base.MAX_GRADS + 1), exact_grad, method)
