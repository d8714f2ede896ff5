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

from xentaudit import _kernel, reference
from xentaudit.reference import cross_entropy, grad_error

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
    # The bound: 2 float64 ulps. The float64 method rounds in exp (<1 ulp, tested
    # below), the sum t (compensated: <=0.5 ulp), log1p (<1 ulp) and the final sum (0.5 ulp),
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
    # 5000 positive terms in a compensated sum (error ~1/2 ulp whatever their number), plus
    # exp and log1p (<1 ulp each): the methods must agree to 2 ulps (measured: 0 and 1).
    assert np.all(np.abs(fast.loss - slow.loss) <= 2 * np.spacing(slow.loss))
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


# --- the compiled kernel behind the float64 method: its exp, its float32 path, its threads and
# the gradient comparison the grading uses, each against an independent computation.


def test_exp_is_within_one_ulp_of_mpmath() -> None:
    rng = np.random.default_rng(3)
    d = np.concatenate(
        [
            -rng.uniform(0, 746, 3000),
            -rng.uniform(0, 1, 500),
            -rng.uniform(700, 746, 500),  # subnormal results: two-step scaling
            [0.0, -0.0, -1e-300, -5e-324, -0.34657359027997264, -0.3465735902799727],
            [-708.39, -708.4, -745.13, -745.1332191019411, -745.14, -746.0, -1e4, -math.inf],
        ]
    )
    out = np.empty_like(d)
    _kernel.exp_array(d.size, d, out)
    with mpmath.workdps(60):
        worst = max(
            ulps_off(float(got), mpmath.exp(mpmath.mpf(float(v))) if v > -math.inf else 0)
            for v, got in zip(d, out, strict=True)
        )
    # Measured 0.75 ulp at most: the final addition (1/2 ulp), the polynomial's and the
    # reduction's ~2^-57, and for subnormal results one more rounding. 1 ulp bounds them all.
    assert worst <= 1.0


FLOAT32_ROWS = {
    # rows whose differences x_j - max(x) are not exact in float64: TwoSum must catch them
    "tiny entry beside 30": ([30.0, 1e-9, -2.5e-12, 0.5], 1),
    "tiny entry is the runner-up": ([30.0, 1.5e-9], 0),  # x_1 - 30 is off by 7.5 ulps
    "tiny max, far entries": ([1e-12, -500.0, -300.0625], 0),
    "tiny max, label far": ([3e-11, -700.0, -20.0], 1),
    "float32 extremes": ([3.4e38, -3.4e38, 1e-45], 2),
}


@pytest.mark.parametrize("name", list(FLOAT32_ROWS))
def test_float32_rows_match_mpmath(name: str) -> None:
    row, label = FLOAT32_ROWS[name]
    x = np.array([row], dtype=np.float32)
    ref = cross_entropy(x, np.array([label]), "float64")
    loss, grad = exact([float(v) for v in x[0]], one_hot(label, len(row)))
    assert ulps_off(float(ref.loss[0]), loss) <= 2.0  # the float64 bound of test_reference
    for got, want in zip(ref.grad[0], grad, strict=True):
        assert abs(got - float(want)) <= 4 * np.finfo(np.float64).eps


def test_float32_logits_and_class_labels_give_the_float64_results_bit_for_bit() -> None:
    # The float32 path reads the same numbers; the class-label path does the same operations
    # as one-hot weights (a one-term gap, weights 0 and 1): nothing may differ.
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((40, 700)) * 12).astype(np.float32)
    k = rng.integers(0, 700, 40)
    y = np.eye(700)[k]
    fast = cross_entropy(x, k, "float64")
    wide = cross_entropy(x.astype(np.float64), y, "float64")
    for field in ("loss", "grad", "grad_size"):
        assert np.array_equal(getattr(fast, field), getattr(wide, field)), field
    assert np.array_equal(fast.grad_size, np.abs(fast.grad).max(axis=1))


def test_rows_shared_among_threads_equal_rows_done_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reference, "_WORKERS", 4)  # 4 blocks even on a one-core machine
    rng = np.random.default_rng(9)
    x = rng.standard_normal((64, 4096)) * 30
    k = rng.integers(0, 4096, 64)
    whole = cross_entropy(x, k, "float64")
    rows = [cross_entropy(x[i : i + 1], k[i : i + 1], "float64") for i in range(64)]
    assert np.array_equal(whole.loss, np.concatenate([r.loss for r in rows]))
    assert np.array_equal(whole.grad, np.concatenate([r.grad for r in rows]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_error_is_numpys_max_of_absolute_differences(dtype: type) -> None:
    rng = np.random.default_rng(2)
    exact_grad = rng.standard_normal((6, 37))
    got = (exact_grad + rng.normal(0, 1e-3, exact_grad.shape)).astype(dtype)
    got[1, 5] = np.nan
    got[2, 36] = np.inf
    got[3, 0] = -np.inf
    err, size = grad_error(got, exact_grad)
    with np.errstate(invalid="ignore"):
        want_err = np.abs(got.astype(np.float64) - exact_grad).max(axis=1)
        want_size = np.abs(got.astype(np.float64)).max(axis=1)
    assert np.array_equal(err, want_err, equal_nan=True)
    assert np.array_equal(size, want_size, equal_nan=True)
    assert np.isnan(err[1]) and np.isnan(size[1]) and err[2] == np.inf and size[3] == np.inf


def test_kernel_refuses_mismatched_buffers() -> None:
    x = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="grad"):
        _kernel.cross_entropy(2, 3, x, np.zeros(2, np.int64), np.empty(2), np.empty(5), np.empty(2))
    with pytest.raises(ValueError, match="out of range"):
        _kernel.cross_entropy(2, 3, x, np.array([0, 3]), np.empty(2), np.empty((2, 3)), np.empty(2))
