"""Every threshold the README documents, pinned from both sides.

Each test puts an error just inside a threshold (3 % below, no flag) and just past it (3 % above,
the flag fires), so that changing any constant by a factor of 2 in either direction fails at
least one of them. Exact values are closed forms or mpmath values computed here; the outcomes
graded are constructed (exact value plus a chosen error), so the thresholds are tested apart from
any implementation's rounding.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit import audit
from xentaudit.audit import grade, round_to, worst
from xentaudit.check import _lint
from xentaudit.dtypes import FORMATS
from xentaudit.grid import refine
from xentaudit.io import Batch, prepare

EPS32 = 2.0**-23
TINY32 = 2.0**-126
INSIDE, PAST = 0.97, 1.03  # factors on a threshold: just inside it, just past it


def _uniform(classes: int, weight: float = 1.0) -> tuple[np.ndarray, np.ndarray, float]:
    """A row of C equal logits with label weight ``weight`` on class 0: L = weight * ln C."""
    x = np.zeros((1, classes))
    y = np.zeros((1, classes))
    y[0, 0] = weight
    return x, y, weight * math.log(classes)


def _grade(x, y, loss, grad, dtype="float32", out=None, rtol=None):
    rounded = round_to(prepare(np.asarray(x), np.asarray(y)), FORMATS[dtype])
    return grade(np.atleast_1d(np.asarray(loss, float)), np.asarray(grad, float), out or dtype,
                 rounded, rtol)  # fmt: skip


def _exact_grad(classes: int, weight: float = 1.0) -> np.ndarray:
    g = np.full((1, classes), weight / classes)
    g[0, 0] -= weight
    return g


def _lanes(classes: int, lanes: int) -> int:
    """d: a sum of C terms in L lanes, each adding ceil(C / L) terms in order (C / L - 1
    roundings), then the L lanes added in order (L - 1 more); C - 1 in order when C <= L."""
    if classes <= lanes:
        return classes - 1
    return math.ceil(classes / lanes) - 1 + lanes - 1


# The loss and gradient tolerances, per row of C classes: with k = ceil(log2 C), B = max(sum y, 1)
# and d = _lanes(C, 8) for float32 (8 float32 lanes of a 256-bit vector), u = eps / 2:
#   divergent:  |L - exact| > eps (8 max(|exact|, 1) + k B) + u d B
#   grad-wrong: max_j |G - g| > eps (8 + k) B + u d B
# C = 3, 1,000, 32,000 and 256,000 (k = 2, 10, 15, 18; d = 2, 131, 4006, 32006): at C = 3 the 8
# dominates, at 1,000 the k term is 7.6 % of the loss's threshold and 12 % of the gradient's, at
# 32,000 and 256,000 the lanes' term is most of it, so halving or doubling any of the three
# moves the threshold by more than 3 % in at least one of them.
CLASSES = [(3, 2), (1000, 10), (32000, 15), (256000, 18)]


@pytest.mark.parametrize(("classes", "k"), CLASSES)
@pytest.mark.parametrize("weight", [1.0, 3.0])
def test_divergent_threshold_is_8_eps_relative_plus_k_eps_and_lanes_absolute(
    classes, k, weight
) -> None:
    x, y, exact = _uniform(classes, weight)
    assert k == math.ceil(math.log2(classes))
    bound = max(weight, 1.0)
    threshold = EPS32 * (8 * max(exact, 1.0) + k * bound) + EPS32 / 2 * _lanes(classes, 8) * bound
    g = _exact_grad(classes, weight)
    for factor, flagged in ((INSIDE, False), (PAST, True)):
        graded = _grade(x, y, exact + factor * threshold, g)
        assert ("divergent" in graded.flags()) is flagged, (factor, graded.flags())
        graded = _grade(x, y, exact - factor * threshold, g)  # errors count both ways
        assert ("divergent" in graded.flags()) is flagged, (factor, graded.flags())


@pytest.mark.parametrize(("classes", "k"), CLASSES)
@pytest.mark.parametrize("weight", [1.0, 3.0])
def test_grad_wrong_threshold_is_8_plus_k_eps_and_lanes_times_the_bound(classes, k, weight) -> None:
    x, y, exact = _uniform(classes, weight)
    threshold = (EPS32 * (8 + k) + EPS32 / 2 * _lanes(classes, 8)) * max(weight, 1.0)
    for factor, flagged in ((INSIDE, False), (PAST, True)):
        g = _exact_grad(classes, weight)
        g[0, classes - 1] += factor * threshold
        assert (_grade(x, y, exact, g).flags() == ("grad-wrong",)) is flagged, factor


def test_rtol_replaces_the_whole_loss_tolerance() -> None:
    # With --rtol the tolerance is rtol * max(|exact|, 1), without the k eps B term.
    x, y, exact = _uniform(256000)
    g = _exact_grad(256000)
    for factor, flagged in ((INSIDE, False), (PAST, True)):
        graded = _grade(x, y, exact + factor * 1e-3 * exact, g, rtol=1e-3)
        assert ("divergent" in graded.flags()) is flagged
        assert graded.rtol == 1e-3
    # The default's k eps B term does not apply: an error of 9 eps is flagged at rtol = 8 eps / L.
    graded = _grade(x, y, exact + 9 * EPS32 * exact, g, rtol=8 * EPS32)
    assert "divergent" in graded.flags()


def test_grad_blowup_at_10_times_the_bound() -> None:
    for weight in (1.0, 2.0):
        x, y, exact = _uniform(2, weight)
        for factor, flag in ((INSIDE, "grad-wrong"), (PAST, "grad-blowup")):
            g = np.array([[10 * weight * factor, -10 * weight * factor]])
            assert _grade(x, y, exact, g).flags() == (flag,), (weight, factor)


def test_grad_vanish_fraction_is_a_tenth_of_the_exact_gradient() -> None:
    x, y, exact = _uniform(2)
    g = _exact_grad(2)  # [-1/2, 1/2]: far above 32 eps
    for factor, flag in ((INSIDE, "grad-vanish"), (PAST, "grad-wrong")):
        assert _grade(x, y, exact, 0.1 * factor * g).flags() == (flag,), factor


def test_grad_vanish_needs_an_exact_gradient_above_32_eps() -> None:
    # Logits [0, -d], label 0: the exact gradient is [-p, p], p = 1 / (1 + e^d). Choose d (in
    # float32) so that p lands 3 % either side of 32 eps32; the implementation returns zeros.
    for factor, flag in ((INSIDE, "grad-wrong"), (PAST, "grad-vanish")):
        target = 32 * EPS32 * factor
        d = float(np.float32(math.log(1 / target - 1)))
        with mpmath.workdps(40):
            p = 1 / (1 + mpmath.exp(d))
            loss = float(mpmath.log1p(mpmath.exp(-d)))
        assert abs(float(p) / target - 1) < 1e-3  # float32 rounding of d moves p by < 1e-6
        graded = _grade([[0.0, -d]], [[1.0, 0.0]], loss, [[0.0, 0.0]])
        assert graded.flags() == (flag,), (factor, float(p) / EPS32)


def test_downcast_allowance_is_2_b_times_the_largest_rounding_of_a_logit() -> None:
    # float64 logits near 1000 graded as a float32 output: the allowance q = 2 B max_j |fl32(x_j)
    # - x_j| (|dL/dx|_1 <= 2 B; here 2 * 1.9e-5) dominates eps32 (8 max(L, 1) + k) = 1.2e-6.
    x = np.array([[1000.1, 999.1]])
    y = np.array([[0.0, 1.0]])
    with mpmath.workdps(40):
        exact = float(mpmath.log1p(mpmath.exp(mpmath.mpf(x[0, 0]) - mpmath.mpf(x[0, 1]))))
        p = 1 / (1 + mpmath.exp(mpmath.mpf(x[0, 1]) - mpmath.mpf(x[0, 0])))
    rounding = float(np.abs(x.astype(np.float32).astype(np.float64) - x).max())
    assert 2.0**-30 * 1000 < rounding <= 2.0**-24 * 1000.1  # inexact, within u32 |x|
    q = 2 * 1.0 * rounding
    threshold = EPS32 * (8 * exact + 1) + EPS32 / 2 * 1 + q  # k = 1 and d = 1 for C = 2
    g = np.array([[float(p), float(-p)]])
    for factor, flagged in ((INSIDE, False), (PAST, True)):
        graded = _grade(x, y, exact + factor * threshold, g, dtype="float64", out="float32")
        assert ("divergent" in graded.flags()) is flagged, factor
        assert "downcast" in graded.flags()
    # Without the narrowing (a float64 output) there is no allowance: the same error is flagged.
    graded = _grade(x, y, exact + 0.5 * q, g, dtype="float64")
    assert "divergent" in graded.flags() and "downcast" not in graded.flags()


def test_logits_the_output_holds_exactly_add_no_downcast_allowance() -> None:
    # A mask of -2^30 (float32 holds it, and -1e9) beside small integers: rounding to float32
    # moves nothing, so a float64 row graded as float32 output gets float32's tolerance only
    # (the old allowance u32 2 B max|x| was 128 here, and hid a Keras clip).
    x = np.array([[-(2.0**30), 0.0, -5.0, -50.0]])
    y = np.array([[0.0, 0.0, 0.5, 0.5]])
    with mpmath.workdps(40):
        lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in x[0]))
        exact = float(lse - (mpmath.mpf(-5) + mpmath.mpf(-50)) / 2)
        g = np.array(
            [[float(mpmath.exp(mpmath.mpf(v) - lse)) - w for v, w in zip(x[0], y[0], strict=True)]]
        )
    threshold = (
        EPS32 * (8 * exact + 2) + EPS32 / 2 * 3 + EPS32 / 2 * exact
    )  # k = 2, d = 3; 2 labels
    for factor, flagged in ((INSIDE, False), (PAST, True)):
        graded = _grade(x, y, exact + factor * threshold, g, dtype="float64", out="float32")
        assert ("divergent" in graded.flags()) is flagged, factor
        assert "downcast" in graded.flags()


@pytest.mark.parametrize(("lead", "forgiven"), [(87.5, True), (87.0, False)])
def test_subnormal_allowance_and_zero_loss_at_the_smallest_normal(lead, forgiven) -> None:
    # Logits [lead, 0], label 0: the exact loss log1p(e^-lead) is 1.0e-38 (below float32's
    # smallest normal number 1.18e-38) for 87.5 and 1.65e-38 (above it) for 87.0. A loss of
    # exactly 0 is then no error at all (TensorFlow flushes subnormals), or a `zero-loss`.
    with mpmath.workdps(40):
        exact = float(mpmath.log1p(mpmath.exp(-lead)))
    assert (exact < TINY32) is forgiven and 0.8 < exact / TINY32 < 1.5
    graded = _grade([[lead, 0.0]], [[1.0, 0.0]], 0.0, [[0.0, 0.0]])
    assert bool(graded.ulps_err[0] == 0.0) is forgiven
    assert graded.flags() == (() if forgiven else ("zero-loss",))


@pytest.mark.parametrize(
    ("loss", "exact_inf", "flag"),
    [
        (math.inf, False, "inf"),
        (-math.inf, False, "inf"),
        (math.nan, False, "nan"),
        (math.inf, True, None),  # label mass on a masked logit: +inf is the right answer
        (16.1180956509583, True, "divergent"),  # a finite loss there is infinitely wrong
        (-math.inf, True, "divergent"),
        (math.nan, True, "nan"),
    ],
)
def test_the_inf_rule_and_infinite_exact_losses(loss, exact_inf, flag) -> None:
    x = [[0.0, -math.inf, 1.0]]
    y = [[0.0, 1.0, 0.0]] if exact_inf else [[0.0, 0.0, 1.0]]
    with mpmath.workdps(40):
        p2 = 1 / (1 + mpmath.exp(-1))
    g = np.array([[float(1 - p2), -1.0 if exact_inf else 0.0, float(p2) - (0 if exact_inf else 1)]])
    graded = _grade(x, y, loss, g)
    assert graded.flags() == ((flag,) if flag else ()), graded.flags()
    if flag == "divergent":
        assert graded.rel_err[0] == math.inf
    if flag is None:
        assert graded.rel_err[0] == 0.0


def test_nan_counts_as_the_worst_error() -> None:
    assert math.isnan(worst(np.array([1e300, math.nan, math.inf])))
    assert worst(np.array([1e-3, 2.0])) == 2.0
    assert worst(np.array([])) == 0.0


def test_clipped_bounds_are_eps_and_one_minus_eps() -> None:
    # float64, eps = 1e-7: a true-class probability below eps reads -ln(eps); one above 1 - eps
    # reads -ln(1 - eps), whatever the exact loss (2e-22 here, and 50 for the other row).
    a = audit(
        np.array([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0]]),
        np.array([0, 0]),
        impls=["clipped"],
        dtypes=["float64"],
        modes=["eager"],
        eps=1e-7,
    )
    (r,) = a.results
    # 2 float64 ulps: one rounding in the clip's 1 - eps, one in log.
    assert r.loss_rows[0] == pytest.approx(-math.log1p(-1e-7), rel=4.5e-16)
    assert r.loss_rows[1] == pytest.approx(-math.log(1e-7), rel=4.5e-16)
    assert r.row_flags[0] == ("divergent",)  # 1e-7 instead of 2e-22: far past 8 eps64
    assert r.row_flags[1] == ("divergent", "grad-vanish")


# --- check's input lint: sums are compared with 1 to within max(1e-4, 8 eps of the dtype) ----


def _lint_rows(rows: list[list[float]], dtype: str, weights=None) -> dict[str, list[bool]]:
    fmt = FORMATS[dtype]
    x = fmt.cast(np.array(rows))
    y = np.array(weights, float) if weights is not None else None
    return {f: m.tolist() for f, m in _lint(Batch(x, y, None), fmt).items()}


@pytest.mark.parametrize(
    ("dtype", "tol", "inside", "past"),
    [
        ("float32", 1e-4, INSIDE, PAST),
        # float16: 8 eps = 16 steps of its spacing 2^-11 on [0.5, 1): 15 and 17 steps.
        ("float16", 8 * 2.0**-10, 15 / 16, 17 / 16),
    ],
)
def test_probability_lint_tolerance(dtype: str, tol: float, inside: float, past: float) -> None:
    # Two entries 1/4 and 3/4 + d, whose sum is 1 + d (the rounded values' float64 sum is
    # checked to be on the intended side first).
    rows = []
    for factor in (inside, past):
        rows.append([0.25, 0.75 + factor * tol])
        rows.append([0.25, 0.75 - factor * tol])
    x = FORMATS[dtype].cast(np.array(rows)).astype(np.float64)
    off = np.abs(x.sum(axis=1) - 1) / tol
    assert (off[:2] < 1).all() and (off[2:] > 1).all(), off
    assert _lint_rows(rows, dtype)["looks-like-probs"] == [True, True, False, False]


def test_logprob_lint_tolerance() -> None:
    # Rows log([a, 1 - a]) + d: logsumexp = d. Within 1e-4 of 0 they look like log-probabilities.
    rows = [[math.log(0.25) + d, math.log(0.75) + d] for d in (0.97e-4, -0.97e-4, 1.03e-4)]
    assert _lint_rows(rows, "float64")["looks-like-logprobs"] == [True, True, False]


def test_soft_label_lint_tolerance() -> None:
    w = [[0.5, 0.5 + d] for d in (0.97e-4, -0.97e-4, 1.03e-4, -1.03e-4)]
    rows = [[0.0, 1.0]] * 4
    assert _lint_rows(rows, "float64", w)["soft-labels-unnormalized"] == [False, False, True, True]


def test_coarse_logits_fire_where_the_dtype_spacing_reaches_1() -> None:
    # float16 spacing is 0.5 on [512, 1024) and 1 on [1024, 2048): 1023 is fine, 1024 is coarse.
    # bfloat16 (8 significant bits) reaches spacing 1 at 128, float32 at 2^23.
    cases = {"float16": (1023, 1024), "bfloat16": (127, 128), "float32": (2**23 - 1, 2**23)}
    for dtype, (fine, coarse) in cases.items():
        assert _lint_rows([[fine, 0.0], [coarse, 0.0]], dtype)["coarse-logits"] == [False, True]


# --- breaking points: 3 significant digits ---------------------------------------------------


def test_breaking_points_are_refined_to_a_relative_width_of_5e_4() -> None:
    # A bracket narrower than 5e-4 (relative) pins its upper end to 3 significant digits. With
    # one point per round (bisection in log space) the number of rounds is exactly
    # ceil(log2(ln(hi / lo) / ln(1 + 5e-4))): a halved or doubled width changes it.
    threshold, calls = 2.2181, []

    def fires(candidates: list[float]) -> dict[str, list[str]]:
        calls.append(candidates)
        return {"loss": ["nan" if c >= threshold else "" for c in candidates]}

    ((lo, hi), flag) = refine({"loss": (1.0, 3.16, "nan")}, fires, points=1)["loss"]
    assert flag == "nan" and lo < threshold <= hi and hi / lo - 1 <= 5e-4
    assert len(calls) == math.ceil(math.log2(math.log(3.16) / math.log1p(5e-4)))
    assert f"{hi:.3g}" == f"{threshold:.3g}"


# --- check's default gate ------------------------------------------------------------------


def test_check_default_fail_on_fails_on_divergent_but_not_on_grad_wrong(tmp_path) -> None:
    # Row [50, 0, 0] with label 1: the Keras-style clip caps the loss (divergent, grad-vanish),
    # which the default gate fails on. The same row audited by `naive` in float64 past scale
    # 88.6 has a finite loss and a wrong gradient only (grad-wrong): the default passes it.
    from xentaudit.cli import cli

    path = tmp_path / "x.npz"
    np.savez(path, logits=np.array([[50.0, 0.0, 0.0]]), labels=np.array([1]))
    runner = CliRunner()
    clipped = runner.invoke(cli, ["check", str(path), "--impl", "clipped", "--mode", "eager"])
    assert clipped.exit_code == 1, clipped.output
    wrong = tmp_path / "w.npz"
    np.savez(wrong, logits=np.array([[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]]) * 100, labels=[0, 1])
    naive = runner.invoke(cli, ["check", str(wrong), "--impl", "naive", "--mode", "eager"])
    assert "grad-wrong" in naive.output and naive.exit_code == 0, naive.output
    named = runner.invoke(
        cli, ["check", str(wrong), "--impl", "naive", "--mode", "eager", "--fail-on", "grad-wrong"]
    )
    assert named.exit_code == 1


def _soft_row(n: int, dtype: str = "float32"):
    """One logit 8 above 999 zeros (max_j p_j = e^8 / (e^8 + 999) = 0.749), label weight 0.9 on
    it and 0.1 spread over n - 1 others: n nonzero weights."""
    classes = 1000
    x = np.zeros((1, classes))
    x[0, 0] = 8.0
    y = np.zeros((1, classes))
    y[0, 0] = 0.9
    y[0, 1:n] = 0.1 / (n - 1)
    return round_to(prepare(x, y), FORMATS[dtype]), math.exp(8) / (math.exp(8) + classes - 1)


# Soft labels with n nonzero weights: the framework adds them in its own order, within (n - 1) u
# of the sum of their magnitudes (Higham (4.4)), u float32's for half precision (the
# accumulator): divergent past eps (8 max(L, 1) + k B) + u d B + u (n - 1) L, grad-wrong past
# eps (8 + k) B + u d B + u (n - 1) (2 + max_j p_j) B (C = 1000: k = 10, d = 131). At n = 1000
# the label terms dominate (in float32: 500 L eps and 1374 eps B), at n = 2 they are under 1 eps.
@pytest.mark.parametrize("n", [2, 1000])
def test_soft_labels_widen_grad_wrong_by_their_sum_in_any_order(n: int) -> None:
    rounded, top = _soft_row(n)
    bound = max(float(rounded.weights.astype(np.float64).sum()), 1.0)
    threshold = EPS32 * (8 + 10) * bound + EPS32 / 2 * (131 + (n - 1) * (2 + top)) * bound
    for factor, flagged in ((INSIDE, False), (PAST, True)):
        g = rounded.ref.grad.copy()
        g[0, 0] += factor * threshold
        graded = grade(rounded.ref.loss, g, "float32", rounded)
        assert (graded.flags() == ("grad-wrong",)) is flagged, (n, factor, graded.flags())


@pytest.mark.parametrize("n", [2, 1000])
def test_soft_labels_widen_divergent_by_their_sum_in_any_order(n: int) -> None:
    rounded, _ = _soft_row(n)
    exact = float(rounded.ref.loss[0])
    bound = max(float(rounded.weights.astype(np.float64).sum()), 1.0)
    threshold = EPS32 * (8 * max(exact, 1.0) + 10 * bound) + EPS32 / 2 * (
        131 * bound + (n - 1) * exact
    )
    for factor, flagged in ((INSIDE, False), (PAST, True)):
        graded = grade(np.array([exact + factor * threshold]), rounded.ref.grad, "float32", rounded)
        assert ("divergent" in graded.flags()) is flagged, (n, factor, graded.flags())


def test_half_precision_soft_labels_are_summed_in_float32() -> None:
    # bfloat16: the label term takes float32's u (the accumulator), as the lanes' term (d = 131),
    # the rest bfloat16's eps. The
    # term is small beside the rest, so it is pinned on its own: half of it past the rest does
    # not fire (it would without the term), twice it does (it would not with bfloat16's u)
    rounded, _ = _soft_row(1000, "bfloat16")
    exact = float(rounded.ref.loss[0])
    bound = max(float(rounded.weights.astype(np.float64).sum()), 1.0)
    eps16 = FORMATS["bfloat16"].eps
    rest = eps16 * (8 * max(exact, 1.0) + 10 * bound) + EPS32 / 2 * 131 * bound
    label = EPS32 / 2 * 999 * exact
    for error, flagged in ((rest + label / 2, False), (rest + 2 * label, True)):
        graded = grade(np.array([exact + error]), rounded.ref.grad, "bfloat16", rounded)
        assert ("divergent" in graded.flags()) is flagged, error


def test_an_ignored_rows_smoothed_labels_widen_nothing() -> None:
    # with smoothing an ignored row's labels are a/C everywhere, but it has no label sum: its
    # exact gradient, 0, is graded with the hard-label tolerance, (8 + k) eps
    x = np.zeros((2, 16384))
    batch = prepare(x, np.array([0, -100]), ignore_class=-100)
    rounded = round_to(batch, FORMATS["float32"], smoothing=0.1, ignore_class=-100)
    g = rounded.ref.grad.copy()
    g[1, 0] = 1e-3  # 8,400 eps, under the smoothed kept row's label term (~16,000 eps)
    graded = grade(rounded.ref.loss, g, "float32", rounded)
    assert graded.flags_of(1) == ("grad-wrong",) and graded.flags_of(0) == ()


def test_a_sequential_sum_of_smoothed_labels_needs_the_label_term() -> None:
    # The gradient p_j S - y_j with S the float32 sum of 16,384 smoothed labels added one by one
    # (np.cumsum is sequential): an honest implementation in another order than a tree's, off
    # by more than the tree bound (8 + k) eps B and inside the label term.
    classes, k = 16384, 14
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, classes)) * 3
    rounded = round_to(prepare(x, rng.integers(0, classes, 4)), FORMATS["float32"], smoothing=0.1)
    y = rounded.weights  # float32 smoothed labels, as the implementation is handed them
    total = np.cumsum(y, axis=1, dtype=np.float32)[:, -1:].astype(np.float64)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    g = p * total - y.astype(np.float64)
    error = np.abs(g - rounded.ref.grad).max(axis=1)
    assert error.max() > (8 + k) * EPS32
    graded = grade(rounded.ref.loss, g, "float32", rounded)
    assert "grad-wrong" not in graded.flags()


def _smoothed_sigmoid_rows(a: float, n: int = 2000):
    """Logits in [2^20, 2^21) with label 1 smoothed by ``a`` to y' = 1 - a/2: the exact loss
    softplus(x) - x y' is x a / 2 (log1p(e^-x) is below 1e-300)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(2**20, 2**21, (n, 1)).astype(np.float32)
    batch = prepare(x, np.ones((n, 1)), multi_label=True)
    rounded = round_to(batch, FORMATS["float32"], loss="sigmoid", smoothing=a)
    return x[:, 0].astype(np.float64), rounded


def test_labels_smoothed_in_a_dtype_widen_the_sigmoid_loss_tolerance() -> None:
    # divergent past eps (8 max(L, 1) + (1/2 + 3/2) x y'): the product x y' rounds (1/2 eps)
    # and so do the smoothed labels, in three roundings (3/2 eps)
    a = 0.0361
    x, rounded = _smoothed_sigmoid_rows(a, 8)
    exact = x * a / 2
    np.testing.assert_allclose(rounded.ref.loss, exact, rtol=2.0**-50)
    threshold = EPS32 * (8 * np.maximum(exact, 1.0) + 2.0 * x * (1 - a / 2))
    # an implementation smoothing the labels itself (Keras): that, around L; one handed the
    # labels xentaudit smoothed and rounded to float32: that around L' = L + shift, the exact
    # loss of the labels it got (here moved away from L, so that L is no nearer)
    assert rounded.label_shift is not None
    shift = rounded.label_shift[0]
    away = np.where(shift >= 0, 1.0, -1.0)
    for factor, flagged in ((INSIDE, False), (PAST, True)):
        own = grade(exact + factor * threshold, rounded.ref.grad, "float32", rounded, handed=False)
        assert own.masks["divergent"].all() is np.bool_(flagged), factor
        loss = exact + shift + away * factor * threshold
        given = grade(loss, rounded.ref.grad, "float32", rounded)
        assert given.masks["divergent"].all() is np.bool_(flagged), factor
        # the other way from L, away from L' too: the threshold around L alone, not widened
        loss = exact - away * factor * threshold
        given = grade(loss, rounded.ref.grad, "float32", rounded)
        assert given.masks["divergent"].all() is np.bool_(flagged), factor


def test_keras_smoothing_in_float32_is_within_the_tolerance_and_needs_its_term() -> None:
    from xentaudit.audit import run_graded

    # a = 0.0361: Python's 1 - a and a / 2 round to float32 and so does their sum, 0.75 u off
    # 1 - a/2 (measured here below); Keras' BinaryCrossentropy(label_smoothing=a) then rounds
    # x y' too: errors up to 1.7 u x, past the tolerance without the smoothed labels' term
    # (8 eps max(L, 1) + u x y', 1.36 times over) and inside it.
    a = 0.0361
    smoothed = np.float32(np.float32(1 - a) + np.float32(a / 2))
    assert abs(float(smoothed) - (1 - a / 2)) > 0.74 * 2.0**-24
    x, rounded = _smoothed_sigmoid_rows(a)
    outcome, grades = run_graded("keras_bce_logits", 1e-7, "eager", rounded, None)
    assert grades.flags() == ()
    err = np.abs(outcome.loss - rounded.ref.loss)
    without = EPS32 * (8 * np.maximum(rounded.ref.loss, 1.0) + 0.5 * x * (1 - a / 2))
    assert (err > without).any()


def test_float64_sums_take_four_lanes() -> None:
    # float64 accumulates in 4 lanes of a 256-bit vector: d = 32,000 / 4 - 1 + 3 = 8,002 units of
    # u64, most of the threshold at C = 32,000 (with 8 lanes it would be half as large).
    x, y, exact = _uniform(32000)
    eps64 = 2.0**-52
    threshold = eps64 * (8 * exact + 15) + eps64 / 2 * _lanes(32000, 4)
    assert _lanes(32000, 4) == 8002
    g = _exact_grad(32000)
    for factor, flagged in ((INSIDE, False), (PAST, True)):
        graded = _grade(x, y, exact + factor * threshold, g, dtype="float64")
        assert ("divergent" in graded.flags()) is flagged, factor


def _confident_row(classes: int = 32000) -> tuple[np.ndarray, np.ndarray]:
    """A confident row (a language model's, sure of its token): the label's logit 0, the others
    at ln(2^-25) in float32, so each of their exponentials is half float32's ulp of 1, and the
    float32 exponentials of the row."""
    x = np.full((1, classes), np.float32(math.log(2.0**-25)), dtype=np.float32)
    x[0, 0] = 0.0
    return x, np.exp(x.astype(np.float64)).astype(np.float32)


def test_a_sum_in_eight_lanes_is_inside_the_tolerance_and_a_sequential_one_past_it() -> None:
    # Added to a running sum of 1, each of the other terms is lost: a float32 sum in 8 lanes
    # (each in order, then a tree, as torch's kernels with AVX2) loses those of its first lane,
    # 1/8 of them (relative error 1.2e-4, inside u d = 2001 eps = 2.4e-4, far past the tree
    # bound (8 + k) eps = 2.7e-6); a sequential sum (np.cumsum) loses them all (9.5e-4).
    x, terms = _confident_row()
    classes = x.shape[1]
    with mpmath.workdps(40):
        exact = float(mpmath.log1p((classes - 1) * mpmath.exp(mpmath.mpf(float(x[0, 1])))))
    lanes = np.cumsum(terms[0].reshape(-1, 8), axis=0, dtype=np.float32)[-1]
    while lanes.size > 1:  # the tree of the 8 lanes
        lanes = (lanes[0::2] + lanes[1::2]).astype(np.float32)
    in_lanes = math.log(float(lanes[0]))
    sequential = math.log(float(np.cumsum(terms[0], dtype=np.float32)[-1]))
    rounded = round_to(prepare(x, np.array([0])), FORMATS["float32"])
    assert abs(in_lanes - exact) > (8 + 15) * EPS32  # what the tree bound alone would flag
    assert abs(in_lanes - exact) < EPS32 / 2 * _lanes(classes, 8) and sequential < exact / 8
    for loss, flagged in ((in_lanes, False), (sequential, True)):
        graded = grade(np.array([loss]), rounded.ref.grad, "float32", rounded)
        assert ("divergent" in graded.flags()) is flagged, (loss, exact)


def test_hard_labels_products_add_nothing_to_the_sigmoid_loss_tolerance() -> None:
    # x 1 and x 0 are exact: a logit of 2^30 with label 1 leaves the sigmoid loss's tolerance at
    # eps (8 + k) max(|L|, 1) + u d max(|L|, 1) (C = 3: k = d = 2); the product term u mean_j
    # max(x_j, 0) y_j would have been 2^30 / 3 u = 21 and hidden a Keras clip.
    x = np.array([[2.0**30, -70.0, 0.0]])
    y = np.array([[1.0, 1.0, 0.0]])
    with mpmath.workdps(60):
        terms = [
            w * mpmath.log1p(mpmath.exp(-mpmath.mpf(v)))
            + (1 - w) * mpmath.log1p(mpmath.exp(mpmath.mpf(v)))
            for v, w in zip(x[0], y[0], strict=True)
        ]
        exact = float(mpmath.fsum(terms) / 3)
        g = [
            [
                float((1 / (1 + mpmath.exp(-mpmath.mpf(v))) - w) / 3)
                for v, w in zip(x[0], y[0], strict=True)
            ]
        ]
    rounded = round_to(prepare(x, y, multi_label=True), FORMATS["float32"], loss="sigmoid")
    threshold = EPS32 * (8 + 2) * exact + EPS32 / 2 * 2 * exact
    for factor, flagged in ((INSIDE, False), (PAST, True)):
        graded = grade(np.array([exact + factor * threshold]), np.array(g), "float32", rounded)
        assert ("divergent" in graded.flags()) is flagged, factor


def test_a_masked_logit_adds_nothing_to_the_sigmoid_gradient_tolerance() -> None:
    # The derivative exp(x - softplus(x)) rounds to u |x_j| t_j of entry j's part t_j =
    # (1 - y_j) sigmoid(x_j) + y_j sigmoid(-x_j): a masked logit (-1e9, label 0) has t = 0, so
    # the tolerance is (8 eps + u max_j |x_j| t_j) B with the others' largest |x| t, 2 sigmoid(2)
    # (it would have been u 1e9 B, past grad-blowup's 10 B).
    x = np.array([[1.0, -1.0, 2.0, -1e9]])
    y = np.array([[0.0, 1.0, 0.0, 0.0]])
    with mpmath.workdps(40):
        sig = [1 / (1 + mpmath.exp(-mpmath.mpf(v))) for v in x[0]]
        g = np.array([[float((s - w) / 4) for s, w in zip(sig, y[0], strict=True)]])
        parts = [
            abs(v) * float((1 - w) * s + w * (1 - s))
            for v, w, s in zip(x[0], y[0], sig, strict=True)
        ]
    assert max(parts) == 2 * float(sig[2])
    rounded = round_to(prepare(x, y, multi_label=True), FORMATS["float32"], loss="sigmoid")
    threshold = (8 * EPS32 + EPS32 / 2 * max(parts)) / 4
    for factor, flagged in ((INSIDE, False), (PAST, True)):
        wrong = g.copy()
        wrong[0, 0] += factor * threshold
        graded = grade(rounded.ref.loss, wrong, "float32", rounded)
        assert (graded.flags() == ("grad-wrong",)) is flagged, factor


@pytest.mark.parametrize(
    ("mask", "out"), [(-1e39, "float32"), (-1e9, "float16"), (-1e9, "bfloat16")]
)
def test_a_mask_the_output_moves_or_overflows_adds_no_downcast_allowance(mask, out) -> None:
    # A mask float32 overflows (-inf), or that float16 overflows and bfloat16 rounds to
    # -998244352, without label weight: its weight is 0 in float64 where it is and where it
    # goes, so it moves nothing; the other logits are held exactly. The tolerance is the output
    # dtype's alone, eps_out (8 max(L, 1) + k) + u32 d (C = 4: k = 2, d = 3; L < 1); the old
    # allowance, u_out 2 max|x| (or the move itself), hid any error.
    x = np.array([[1.0, 2.0, 0.5, mask]])
    y = np.array([[0.0, 1.0, 0.0, 0.0]])
    with mpmath.workdps(40):
        lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in x[0]))
        exact = float(lse - 2)
        g = np.array(
            [[float(mpmath.exp(mpmath.mpf(v) - lse)) - w for v, w in zip(x[0], y[0], strict=True)]]
        )
    assert exact < 1
    threshold = FORMATS[out].eps * (8 + 2) + 2.0**-24 * 3
    for factor, flagged in ((INSIDE, False), (PAST, True)):
        graded = _grade(x, y, exact + factor * threshold, g, dtype="float64", out=out)
        assert ("divergent" in graded.flags()) is flagged, factor
        assert "downcast" in graded.flags()


@pytest.mark.parametrize(
    ("below", "weight", "masked"), [(740.3, 0.0, False), (750.3, 0.0, True), (750.3, 0.5, False)]
)
def test_a_logit_counts_for_the_downcast_allowance_unless_746_below(below, weight, masked) -> None:
    # A float64 logit of -740.3 or -750.3 (the row's largest is 1, so 746 below min(1, 0) = 0 is
    # the line), rounded to float32 by the output (it moves by ~3e-5). Above the line its move
    # counts, q = 2 |fl32(x) - x|; below it, without label weight, its weight is 0 in float64
    # where it is and where it goes, so it moves nothing; with label weight (half the label mass
    # on it) it counts wherever it lies. An error of the tolerance without q, plus q / 2, is
    # inside with the allowance and past without it.
    x = np.array([[0.0, 1.0, -below]])
    y = np.array([[0.0, 1.0 - weight, weight]])
    with mpmath.workdps(60):
        lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in x[0]))
        exact = float(
            lse
            - mpmath.fsum(mpmath.mpf(w) * mpmath.mpf(v) for v, w in zip(x[0], y[0], strict=True))
        )
        g = np.array(
            [[float(mpmath.exp(mpmath.mpf(v) - lse)) - w for v, w in zip(x[0], y[0], strict=True)]]
        )
    q = 2 * abs(float(np.float32(x[0, 2])) - x[0, 2])
    assert 1e-5 < q < 1e-4
    n = np.count_nonzero(y)  # soft labels: their sum's u (n - 1) |L| (LABEL_SUM_ULPS)
    # C = 3: k = d = 2; B = 1
    error = EPS32 * (8 * max(exact, 1.0) + 2) + 2.0**-24 * (2 + (n - 1) * exact) + q / 2
    graded = _grade(x, y, exact + error, g, dtype="float64", out="float32")
    assert ("divergent" in graded.flags()) is masked, graded.flags()
