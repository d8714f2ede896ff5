"""--label-smoothing: the labels are smoothed as Keras smooths them, and everything is graded
on them; the exact values are derived here from the smoothed labels with mpmath."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from xentaudit import audit
from xentaudit.errors import ConfigError
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


def test_the_reference_scores_the_smoothed_labels(smoothed) -> None:
    # Keras: y (1 - 0.1) + 0.1 / 3, rounded to float32 as the implementations receive them
    y = (np.eye(3)[SEED_CLASSES] * 0.9 + 0.1 / 3).astype(np.float32).astype(np.float64)
    truth = softmax_truth(SEED, y)
    for r in smoothed.results:
        # the float32 logits are exact (integers); mpmath at 60 digits vs the reference's
        # 50-digit method, rounded to float64: a float64 ulp
        assert r.reference_rows == pytest.approx(truth, rel=2.0**-52)


def test_flags_are_those_of_the_same_soft_labels_given_outright(smoothed) -> None:
    y = np.eye(3)[SEED_CLASSES] * 0.9 + 0.1 / 3
    soft = audit(SEED, y, backends=["tf"], dtypes=["float32"])
    assert [(r.impl, r.mode, r.flags) for r in smoothed.results] == [
        (r.impl, r.mode, r.flags) for r in soft.results
    ]
    assert [(s.impl, s.reason) for s in smoothed.skipped] == [
        (name, "needs one-hot or integer labels, and --label-smoothing 0.1 makes them soft")
        for name in ("tf_sparse_softmax_xent", "keras_scce_logits")
    ]


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
