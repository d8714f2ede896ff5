"""--label-smoothing: the labels are smoothed as Keras smooths them, by the implementations that
take a smoothing argument of their own (Keras' losses, torch's F.cross_entropy) on the labels as
given, for the others before they run; everything is graded against the exact loss of the labels
smoothed exactly. Exact values are derived here from the smoothed labels with mpmath."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from xentaudit import audit
from xentaudit.errors import ConfigError
from xentaudit.flags import CHECK_FAIL_ON
from xentaudit.sweep import sweep

SEED = np.array([[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]]) * 10
SEED_CLASSES = np.array([0, 1])


def softmax_truth(x: np.ndarray, y: np.ndarray) -> list[float]:
    """sum_j y_j (LSE(x) - x_j) by the definition, at 60 digits."""
    with mpmath.workdps(60):
        out = []
        for row, w in zip(x.tolist(), y.tolist(), strict=True):
            lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in row))
            out.append(float(mpmath.fsum(wj * (lse - v) for v, wj in zip(row, w, strict=True))))
        return out


@pytest.fixture(scope="module")
def smoothed():
    return audit(SEED, SEED_CLASSES, label_smoothing=0.1, backends=["tf"], dtypes=["float32"])


def test_the_reference_scores_the_labels_smoothed_exactly(smoothed) -> None:
    # Keras' y (1 - a) + a / C with a = 1/10 and C = 3, in exact rationals: 9/10 + 1/30 on the
    # label, 1/30 elsewhere (not rounded to float32, whatever the implementations are handed)
    with mpmath.workdps(60):
        y = np.array([[mpmath.mpf(9) / 10 * (j == c) + mpmath.mpf(1) / 30 for j in range(3)]
                      for c in SEED_CLASSES], dtype=object)  # fmt: skip
        truth = softmax_truth(SEED, y)
    for r in smoothed.results:
        # the float32 logits are exact (integers); the reference smooths in float64 (labels
        # within 2 float64 ulps), then computes at 50 digits: within a few float64 ulps
        assert r.reference_rows == pytest.approx(truth, rel=2.0**-50)


def test_flags_are_those_of_the_same_soft_labels_given_outright(smoothed) -> None:
    y = np.eye(3)[SEED_CLASSES] * 0.9 + 0.1 / 3
    soft = audit(SEED, y, backends=["tf"], dtypes=["float32"])
    assert [(r.impl, r.mode, r.flags) for r in smoothed.results] == [
        (r.impl, r.mode, r.flags) for r in soft.results
    ]
    reason = (
        "takes class labels and no label smoothing of its own, and --label-smoothing 0.1 makes "
        "them soft"
    )
    assert [(s.impl, s.reason) for s in smoothed.skipped] == [
        (name, reason) for name in ("tf_sparse_softmax_xent", "keras_scce_logits")
    ]


def test_keras_and_torch_smooth_the_labels_themselves() -> None:
    # The losses with a label_smoothing argument run with it, on the one-hot labels: their
    # per-row losses are, bit for bit, what the user's own call computes.
    import keras
    import torch
    import torch.nn.functional as F

    x = np.array([[2.5, -1.25, 0.75, 3.0], [-4.0, 1.5, 0.5, 2.0]], np.float32)
    classes = np.array([3, 0])
    result = audit(x, classes, label_smoothing=0.15, dtypes=["float32"], modes=["eager"],
                   impls=["keras_cce_logits", "torch_cross_entropy"])  # fmt: skip
    cce = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=0.15, reduction=None
    )
    own = {
        "keras_cce_logits": np.asarray(cce(np.eye(4, dtype=np.float32)[classes], x)),
        "torch_cross_entropy": F.cross_entropy(
            torch.from_numpy(x), torch.from_numpy(classes), label_smoothing=0.15,
            reduction="none",
        ).numpy(),
    }  # fmt: skip
    for r in result.results:
        assert list(r.loss_rows) == own[r.impl].astype(np.float64).tolist(), r.impl
        assert r.flags == ()
    assert result.skipped == ()


def test_torch_smoothing_overflows_float16_past_c_ln_c() -> None:
    # F.cross_entropy(label_smoothing=a) with class indices adds a / C times -sum_j log p_j,
    # summed in the logits' dtype: on C equal logits -log p_j = ln C, so the sum is C ln C,
    # which overflows float16 (max 65504; a float32 sum of 65520 or more rounds to inf) for
    # C = 7500 (66,920) and not for C = 7000 (61,976). The exact loss is ln C whatever a.
    f16_max = float(np.finfo(np.float16).max)
    assert 7000 * math.log(7000) < f16_max < 65520 < 7500 * math.log(7500)
    for c, overflows in ((7000, False), (7500, True)):
        result = audit(
            np.zeros((1, c)),
            np.array([0]),
            label_smoothing=0.1,
            dtypes=["float16"],
            modes=["eager"],
            impls=["torch_cross_entropy", "optax_softmax_xent"],
        )
        assert result.results[0].reference_rows == pytest.approx([math.log(c)], rel=2.0**-50)
        torch_ce, optax = result.results
        assert ("inf" in torch_ce.flags) is overflows
        # else within float16's own loss tolerance, 8 eps(float16) = 2^-7 relative
        finite = pytest.approx(math.log(c), rel=2.0**-7)
        assert torch_ce.loss_rows[0] == (math.inf if overflows else finite)
        # optax is handed the smoothed labels and sums y_j log p_j, each below 1: no overflow
        assert not {"inf", "nan", "divergent"} & set(optax.flags)


def test_a_sigmoid_label_is_smoothed_towards_one_half() -> None:
    # binary_crossentropy: y (1 - a) + a / 2, so labels 0 and 1 become 0.05 and 0.95
    result = audit(
        np.array([[20.0], [-20.0]]),
        np.array([[0.0], [1.0]]),
        loss="sigmoid",
        label_smoothing=0.1,
        impls=["tf_sigmoid_xent"],
        dtypes=["float64"],
        modes=["eager"],
    )
    with mpmath.workdps(60):
        # y softplus(-x) + (1 - y) softplus(x): label 0.05 on x = 20 and 0.95 on x = -20
        softplus = lambda v: mpmath.log1p(mpmath.exp(v))  # noqa: E731
        want = float(0.05 * softplus(-20) + 0.95 * softplus(20))
    (r,) = result.results
    assert r.reference_rows == pytest.approx([want, want], rel=2.0**-50)
    assert r.flags == ()


def test_sweep_skips_the_sparse_losses_when_smoothing() -> None:
    result = sweep(
        label_smoothing=0.2,
        impls=["tf_softmax_xent", "tf_sparse_softmax_xent"],
        dtypes=["float32"],
        patterns=["seed"],
        modes=("eager",),
    )
    assert {c.impl for c in result.cells} == {"tf_softmax_xent"}
    assert [s.impl for s in result.skipped] == ["tf_sparse_softmax_xent"]


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan")])
def test_label_smoothing_outside_0_1_is_refused(value: float) -> None:
    with pytest.raises(ConfigError, match=r"--label-smoothing must lie in \[0, 1\)"):
        audit(SEED, SEED_CLASSES, label_smoothing=value, impls=["naive"])


def test_sigmoid_smoothing_is_keras_own() -> None:
    import keras

    from xentaudit.losses import LOSSES
    from xentaudit.reference import sigmoid_cross_entropy

    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 3)) * 6
    y = (rng.random((8, 3)) > 0.5).astype(np.float64)
    bce = keras.losses.BinaryCrossentropy(
        from_logits=True, label_smoothing=0.2, reduction=None, dtype="float64"
    )
    smooth = LOSSES["sigmoid"].smooth(y, 0.2)
    np.testing.assert_allclose(smooth[y == 1], 0.9, rtol=2.0**-52)
    # Keras' smoothed loss in float64 is the exact loss of these labels to a few float64 ulps
    # (its max(x, 0) - x y + log1p(exp(-|x|)) rounds the product x y, |x| < 40: 2^-45 covers it)
    exact = sigmoid_cross_entropy(x, smooth, "float64").loss
    np.testing.assert_allclose(np.asarray(bce(y, x)), exact, rtol=2.0**-45)


def test_correct_losses_on_large_smoothed_rows_are_not_flagged() -> None:
    # Smoothed labels have a nonzero weight on every class: the frameworks add those terms in
    # their kernels' order, not a tree's (54 eps off on 7,500 equal logits, 45 to 74 eps in the
    # gradient on 16,384-class rows, as measured when the terms were added), within the terms of the
    # tolerance (tests/test_thresholds.py pins them)
    rng = np.random.default_rng(5)
    rows = (np.zeros((2, 7500)), rng.standard_normal((4, 16384)))
    for x in rows:
        impls = ["shifted", "log_softmax", "tf_softmax_xent", "keras_cce_logits",
                 "torch_cross_entropy"]  # fmt: skip
        result = audit(x, np.arange(x.shape[0]), label_smoothing=0.1, dtypes=["float32"],
                       modes=["eager"], impls=impls)  # fmt: skip
        assert [(r.impl, r.flags) for r in result.results] == [(r.impl, ()) for r in result.results]


def _reweighted(factor: float):
    """The fused loss on the labels handed, their off-label mass times ``factor`` (in float32,
    where float16's subnormal labels would round the factor away), returned in their dtype."""

    def loss(labels, logits):
        import tensorflow as tf

        wide = tf.cast(labels, tf.float32)
        kept = tf.where(wide > 0.5, wide, factor * wide)
        wide_logits = tf.cast(logits, tf.float32)
        out = tf.nn.softmax_cross_entropy_with_logits(labels=kept, logits=wide_logits)
        return tf.cast(out, logits.dtype)

    loss.__qualname__ = f"reweighted_{round(factor * 100)}"
    return loss


def test_float16_smoothed_labels_rounded_subnormal_are_not_the_losss_fault() -> None:
    # 32,000 classes, a = 0.01: a / C = 3.125e-7 is a float16 subnormal, 2.98e-7 (-4.6 %). The
    # labelled class dominates (the others 100 to 500 below), so the loss is nearly all the
    # smoothing's: the fused loss, exact on the labels it is handed, reads 4.6 % low, past
    # float16's tolerance of the exact smoothed loss but within it of the exact loss of its
    # labels (mpmath, below). A loss off its labels' exact loss, and the exactly smoothed one,
    # by more than the tolerance is still divergent: 10 % of the smoothing mass dropped (past
    # both), or added (nearer the exactly smoothed loss, 0.088 off it: still past 0.032).
    from xentaudit.testing import register

    classes, a = 32000, 0.01
    rng = np.random.default_rng(2)
    x = -100.0 - np.abs(rng.standard_normal((1, classes))) * 100.0
    x[0, 0] = 0.0
    under, over = register(_reweighted(0.9), "tf"), register(_reweighted(1.1), "tf")
    result = audit(
        x, np.array([0]), impls=["tf_softmax_xent", under, over], dtypes=["float16"],
        modes=["eager"], label_smoothing=a,
    )  # fmt: skip
    by_impl = {r.impl: r for r in result.results}
    mpmath.mp.dps = 30
    xs = [mpmath.mpf(float(v)) for v in x[0].astype(np.float16).astype(np.float64)]
    top = max(xs)
    lse = top + mpmath.log(mpmath.fsum(mpmath.exp(v - top) for v in xs))
    one_hot = np.zeros(classes)
    one_hot[0] = 1.0
    handed = (one_hot * (1 - a) + a / classes).astype(np.float16).astype(np.float64)
    terms = (mpmath.mpf(float(w)) * (lse - v) for w, v in zip(handed, xs, strict=True))
    on_handed = float(mpmath.fsum(terms))
    exact = by_impl["tf_softmax_xent"].reference
    assert exact - on_handed > 0.08  # the labels' rounding moves the exact loss by 4.6 %
    fused = by_impl["tf_softmax_xent"]
    # float16's rounding of the loss: eps16 relative; none of check's failing flags fires
    assert fused.loss == pytest.approx(on_handed, rel=2.0**-10)
    assert not set(fused.flags) & set(CHECK_FAIL_ON), fused.flags
    assert "divergent" in by_impl[under].flags and "divergent" in by_impl[over].flags
