"""The exact references of the sigmoid and focal losses against mpmath, on adversarial rows.

The expected values are the textbook definitions evaluated by mpmath at a precision chosen per
row to resolve every cancellation they contain: 1 - sigmoid(x) and 1 - p_j are formed as
written (no sigmoid(-x) or t/(1 + t) rewriting, the references' own methods), which needs about
|x| / ln(10) digits beyond the result's own, so the working precision is 60 digits plus the
largest |logit| (or logit gap) over ln(10). The gradients are the chain rule written out in the
test: for the sigmoid family d/dx of each label's term via mpmath.diff at that precision; for the
categorical focal loss sum_j y_j f'(p_j) p_j (delta_jk - p_k) with f(p) = (1 - p)^gamma (-log p).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from xentaudit.reference import (
    binary_focal_cross_entropy,
    cross_entropy,
    focal_cross_entropy,
    sigmoid_cross_entropy,
)

EPS64 = float(np.finfo(np.float64).eps)
METHODS = ["mpmath", "float64"]


def digits_for(values: list[float]) -> int:
    """Working digits that resolve 1 - exp(-v) for the largest finite |v| here."""
    finite = [abs(v) for v in values if math.isfinite(v)]
    return 60 + int(max(finite, default=0.0) / math.log(10))


def close(value: float, truth: mpmath.mpf, ulps: float) -> bool:
    """|value - truth| <= ulps float64 ulps of truth (inf only equals inf)."""
    if mpmath.isinf(truth):
        return value == math.inf
    t = float(truth)
    ulp = np.spacing(abs(t)) if t != 0 else 5e-324
    return abs(mpmath.mpf(value) - truth) <= ulps * mpmath.mpf(ulp)  # in mpmath: no underflow


# ---- sigmoid cross-entropy and binary focal --------------------------------------------------


def sigmoid_textbook(v: mpmath.mpf, w: mpmath.mpf, gamma: float, alpha: float | None):
    """One label's binary focal loss by the definition (gamma 0, alpha None: the plain binary
    cross-entropy): p = sigmoid(v), p_t = w p + (1 - w)(1 - p), all as written."""
    p = 1 / (1 + mpmath.exp(-v))
    log_p = mpmath.log(p) if p else -mpmath.inf
    log_q = mpmath.log(1 - p) if p != 1 else -mpmath.inf
    bce = (-w * log_p if w else 0) + (-(1 - w) * log_q if w != 1 else 0)
    p_t = w * p + (1 - w) * (1 - p)
    weight = 1 if alpha is None else alpha * w + (1 - alpha) * (1 - w)
    return weight * (1 - p_t) ** gamma * bce


def elementwise_truth(x, y, gamma, alpha):
    """Row losses (mean over labels) and gradients of the binary focal loss by the textbook."""
    losses, grads = [], []
    for row, w in zip(x, y, strict=True):
        with mpmath.workdps(digits_for(list(row))):
            c = len(row)
            ws = [mpmath.mpf(float(v)) for v in w]
            xs = [mpmath.mpf(float(v)) for v in row]
            losses.append(
                mpmath.fsum(
                    sigmoid_textbook(v, wj, gamma, alpha) for v, wj in zip(xs, ws, strict=True)
                )
                / c
            )
            grads.append(
                [
                    mpmath.diff(lambda t, wj=wj: sigmoid_textbook(t, wj, gamma, alpha), v) / c
                    for v, wj in zip(xs, ws, strict=True)
                ]
            )
    return losses, grads


SIGMOID_ROWS = {
    # name: (logits, labels), one row each; labels in [0, 1]
    "issue: +20 labelled 0": ([20.0], [0.0]),
    "issue: -20 labelled 1": ([-20.0], [1.0]),
    "confident right, loss 2e-9": ([20.0], [1.0]),
    "confident right, loss e^-700": ([700.0], [1.0]),
    "+-1e4, hard labels": ([1e4, -1e4], [1.0, 0.0]),
    "+-1e4, wrong": ([1e4, -1e4], [0.0, 1.0]),
    "zero logits, labels 0 and 1 and 0.5": ([0.0, 0.0, 0.0], [0.0, 1.0, 0.5]),
    "soft label near the prediction": ([2.0, -3.0], [0.880797, 0.0474259]),
    "multi-label, mixed": ([3.5, -0.25, 12.0, -40.0], [1.0, 0.3, 0.0, 0.0]),
    "tiny logits": ([1e-30, -1e-300], [1.0, 0.0]),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", SIGMOID_ROWS)
def test_sigmoid_cross_entropy_against_the_definition(name: str, method: str) -> None:
    x, y = (np.array([v]) for v in SIGMOID_ROWS[name])
    ref = sigmoid_cross_entropy(x, y, method)
    (loss,), (grad,) = elementwise_truth(x, y, 0.0, None)
    # float64: each term within 3 ulps (exp, log1p, one product and one sum of non-negative
    # parts), the mean of at most 4 non-negative terms within 2 more, the division by C one.
    # mpmath: 50 digits, then one rounding of the sum to float64.
    ulps = 6 if method == "float64" else 0.5
    total = ref.loss[0] + ref.loss_lo[0]
    assert close(total, loss, ulps), (name, total, loss)
    for g, truth, v, w in zip(ref.grad[0], grad, x[0], y[0], strict=True):
        # (1 - y) sigmoid(x) - y sigmoid(-x): each product within 3 ulps of its own size, so
        # the absolute error is 3 ulps of the larger product (over C), not of the difference.
        up, down = 1 / (1 + mpmath.exp(-v)), 1 / (1 + mpmath.exp(v))
        scale = max((1 - w) * up, w * down) / x.shape[1]
        assert abs(mpmath.mpf(g) - truth) <= 4 * EPS64 * scale + 5e-324, (name, g, truth)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (0.5, 0.25), (3.0, 0.75)])
@pytest.mark.parametrize("name", SIGMOID_ROWS)
def test_binary_focal_against_the_definition(
    name: str, gamma: float, alpha: float | None, method: str
) -> None:
    x, y = (np.array([v]) for v in SIGMOID_ROWS[name])
    ref = binary_focal_cross_entropy(x, y, gamma, alpha, method)
    (loss,), (grad,) = elementwise_truth(x, y, gamma, alpha)
    # float64: B within 3 ulps, u = 1 - p_t within 3 (two products and a sum of non-negative
    # parts), u^gamma within 3 gamma + 1, the weight and two products 3 more, the mean 3:
    # 3 + 3 gamma + 1 + 3 + 3 <= 20 ulps for gamma <= 3.
    ulps = 20 if method == "float64" else 0.5
    total = ref.loss[0] + ref.loss_lo[0]
    assert close(total, loss, ulps), (name, total, loss)
    for g, truth in zip(ref.grad[0], grad, strict=True):
        # two terms, each a product of factors within a few ulps: 32 ulps of the larger
        # term bounds the absolute error; the larger term is at most 2 |gradient| + the
        # focus term, bounded here by the loss's own size over C times (gamma + 1).
        bound = 32 * EPS64 * (abs(float(truth)) + (gamma + 1) * float(loss)) + 5e-324
        assert abs(mpmath.mpf(g) - truth) <= bound, (name, g, truth)


def test_binary_focal_with_gamma_0_and_no_alpha_is_the_sigmoid_cross_entropy() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 5)) * 30
    y = rng.random((64, 5))
    y[::3] = np.round(y[::3])
    focal = binary_focal_cross_entropy(x, y, 0.0, None, "float64")
    plain = sigmoid_cross_entropy(x, y, "float64")
    # the same terms times u^0 = 1 and a weight of 1: exactly the same operations
    np.testing.assert_array_equal(focal.loss, plain.loss)
    np.testing.assert_allclose(focal.grad, plain.grad, rtol=0, atol=4 * EPS64)


def test_the_issue_row_reads_20() -> None:
    # softplus(20) = 20 + log1p(e^-20): the exact loss of both of the issue's rows
    ref = sigmoid_cross_entropy(np.array([[20.0], [-20.0]]), np.array([[0.0], [1.0]]))
    expected = 20 + math.log1p(math.exp(-20))
    np.testing.assert_allclose(ref.loss, [expected, expected], rtol=EPS64)


# ---- categorical focal -----------------------------------------------------------------------


def focal_truth(row: list[float], w: list[float], gamma: float, alpha: float):
    """Loss and gradient of the categorical focal loss by the definition."""
    finite = [v for v in row if math.isfinite(v)]
    with mpmath.workdps(digits_for([max(finite) - min(finite)])):
        g, a = mpmath.mpf(gamma), mpmath.mpf(alpha)
        xs = [mpmath.mpf(v) for v in row]
        ys = [mpmath.mpf(v) for v in w]
        z = mpmath.fsum(mpmath.exp(v) for v in xs)
        p = [mpmath.exp(v) / z for v in xs]
        loss = a * mpmath.fsum(
            yj * (1 - pj) ** g * -mpmath.log(pj) for yj, pj in zip(ys, p, strict=True) if yj != 0
        )

        def f_prime(pj: mpmath.mpf) -> mpmath.mpf:
            # d/dp of (1 - p)^gamma (-log p); the first term is 0 for gamma 0
            focus = -g * (1 - pj) ** (g - 1) * -mpmath.log(pj) if g else 0
            return focus - (1 - pj) ** g / pj

        grad = [
            a
            * mpmath.fsum(
                yj * f_prime(pj) * pj * ((1 if j == k else 0) - p[k])
                for j, (yj, pj) in enumerate(zip(ys, p, strict=True))
                if yj != 0
            )
            for k in range(len(row))
        ]
        return loss, grad


def hot(k: int, c: int) -> list[float]:
    return [1.0 if j == k else 0.0 for j in range(c)]


FOCAL_ROWS = {
    "seed row 0": ([3.0, 1.0, 1.0], hot(0, 3)),
    "seed x10 row 1": ([-10.0, 20.0, 50.0], hot(1, 3)),
    "confident right, 1 - p = 4e-9": ([20.0, -20.0, 0.0], hot(0, 3)),
    "confident right, 1 - p = e^-300": ([300.0, 0.0], hot(0, 2)),
    "confident wrong by 300": ([300.0, 0.0], hot(1, 2)),
    "ties": ([5.0, 5.0, 5.0, 5.0], hot(2, 4)),
    "tie at the top, label on it": ([9.0, 9.0, -2.0], hot(1, 3)),
    "huge logits +-1e4": ([1e4, -1e4, 0.0], hot(2, 3)),
    "soft labels": ([1.0, 2.0, 3.0], [0.2, 0.3, 0.5]),
    "soft labels, confident": ([60.0, 0.0, -1.0], [0.999, 0.001, 0.0]),
    "label on the second, p near 1": ([-5.0, 25.0, 0.0, 1.0], hot(1, 4)),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.0, 1.0), (0.5, 1.0), (5.0, 0.5)])
@pytest.mark.parametrize("name", FOCAL_ROWS)
def test_focal_against_the_definition(name: str, gamma: float, alpha: float, method: str) -> None:
    row, w = FOCAL_ROWS[name]
    ref = focal_cross_entropy(np.array([row]), np.array([w]), gamma, alpha, method)
    loss, grad = focal_truth(row, w, gamma, alpha)
    # float64: -log p within 3 ulps (as the softmax reference), 1 - p within 3 (a compensated
    # t, one sum >= 1 and one division), its power within 3 gamma + 1, two products and a
    # compensated sum 3: 10 + 3 gamma ulps; mpmath: one final rounding.
    ulps = 10 + 3 * gamma if method == "float64" else 0.5
    total = ref.loss[0] + ref.loss_lo[0]
    assert close(total, loss, ulps), (name, total, loss)
    scale = max(abs(float(v)) for v in grad)
    for g, truth in zip(ref.grad[0], grad, strict=True):
        # each term g_k (1 - p_k) and p_k sum_{j!=k} g_j within 10 + 3 gamma ulps of itself,
        # so of the row's largest gradient entry; mpmath: 50 digits and one rounding
        rel = (10 + 3 * gamma) * EPS64 if method == "float64" else 1e-45
        tiny = mpmath.mpf(5e-324)  # a gradient below float64 rounds to 0 or the least subnormal
        assert abs(mpmath.mpf(g) - truth) <= rel * scale + abs(truth) * EPS64 + tiny, (name, g)


@pytest.mark.parametrize("method", METHODS)
def test_focal_keeps_the_gradient_of_a_confident_row(method: str) -> None:
    # 1 - p_label = e^-300 (1 + e^-300): the label's gradient -alpha (1-p)^2 (1 + 2 p r)(1 - p)
    # is 3 alpha e^-900 to 3 digits, below float64's range; at a lead of 200 it is 3 alpha
    # e^-600 = 8e-262, which g - p sum(g) would compute as 0 (the two agree to 1e-87).
    ref = focal_cross_entropy(np.array([[200.0, 0.0]]), np.array([0]), 2.0, 0.25, method)
    expected = -3 * 0.25 * math.exp(-600)
    assert ref.grad[0, 0] == pytest.approx(expected, rel=1e-12)
    assert ref.grad[0, 1] == pytest.approx(-expected, rel=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_focal_with_gamma_0_is_alpha_times_the_cross_entropy(method: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 6)) * 25
    y = rng.random((40, 6))
    focal = focal_cross_entropy(x, y, 0.0, 0.5, method)
    plain = cross_entropy(x, y, method)
    # two different float64 formulas of the same value, each within ~10 ulps
    np.testing.assert_allclose(focal.loss, 0.5 * plain.loss, rtol=20 * EPS64)
    np.testing.assert_allclose(
        focal.grad, 0.5 * plain.grad, rtol=0, atol=20 * EPS64 * np.abs(plain.grad).max()
    )


def test_focal_of_label_mass_on_a_minus_inf_logit_is_inf_and_zero_mass_costs_nothing() -> None:
    x = np.array([[-np.inf, 1.0, 2.0], [-np.inf, 1.0, 2.0]])
    y = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    for method in METHODS:
        ref = focal_cross_entropy(x, y, 2.0, 1.0, method)
        assert ref.loss[0] == math.inf
        loss, grad = focal_truth([1.0, 2.0], [0.0, 1.0], 2.0, 1.0)
        assert close(ref.loss[1], loss, 16)
        assert np.isfinite(ref.grad).all()
        assert ref.grad[1, 0] == 0.0
        np.testing.assert_allclose(ref.grad[1, 1:], [float(g) for g in grad], rtol=1e-14)


def test_focal_is_invariant_to_shifting_the_logits() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(-50, 50, (30, 7)).astype(np.float64)
    y = rng.random((30, 7))
    base = focal_cross_entropy(x, y, 2.0, 1.0, "float64")
    for shift in (-1000.0, 2.0**40):
        moved = focal_cross_entropy(x + shift, y, 2.0, 1.0, "float64")  # integers: exact
        np.testing.assert_array_equal(moved.loss, base.loss)
        np.testing.assert_array_equal(moved.grad, base.grad)


def test_focal_takes_classes_as_one_hot_rows() -> None:
    x = np.array([[1.0, 4.0, -2.0], [0.5, 0.0, 3.0]])
    by_class = focal_cross_entropy(x, np.array([1, 2]), 2.0, 0.25, "float64")
    dense = focal_cross_entropy(x, np.array([hot(1, 3), hot(2, 3)]), 2.0, 0.25, "float64")
    np.testing.assert_array_equal(by_class.loss, dense.loss)
    np.testing.assert_array_equal(by_class.grad, dense.grad)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_narrow_logits_are_read_exactly_and_computed_in_float64(dtype: str) -> None:
    # The same numbers given in a narrow dtype and in float64 have the same exact losses: a
    # float64 reference must not compute in the input's precision.
    from xentaudit.dtypes import get_format

    rng = np.random.default_rng(6)
    wide = get_format(dtype).cast(rng.standard_normal((50, 4)) * 12)
    x64 = wide.astype(np.float64)
    y = (rng.random((50, 4)) > 0.5).astype(np.float64)
    k = rng.integers(0, 4, 50)
    for fn, labels in (
        (sigmoid_cross_entropy, y),
        (lambda a, b, m: binary_focal_cross_entropy(a, b, 2.0, 0.25, m), y),
        (lambda a, b, m: focal_cross_entropy(a, b, 2.0, 0.25, m), k),
    ):
        narrow, exact = fn(wide, labels, "float64"), fn(x64, labels, "mpmath")
        # within the float64 methods' few ulps (tested above), not float32's 2^-24
        np.testing.assert_allclose(narrow.loss, exact.loss, rtol=64 * EPS64, atol=0)
        np.testing.assert_allclose(narrow.grad, exact.grad, rtol=0, atol=64 * EPS64)
