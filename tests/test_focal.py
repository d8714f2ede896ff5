"""The focal losses: their implementations against the exact reference (mpmath-tested in
test_reference_losses.py), values derived here from float32 rounding, and the tolerances."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xentaudit import audit
from xentaudit.audit import round_to, run_graded
from xentaudit.dtypes import get_format
from xentaudit.errors import ConfigError
from xentaudit.io import prepare
from xentaudit.losses import focus_of
from xentaudit.reference import focal_cross_entropy

SEED = np.array([[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]]) * 10
U32 = 2.0**-24


def by(result, impl: str, mode: str):
    return next(r for r in result.results if (r.impl, r.mode) == (impl, mode))


@pytest.fixture(scope="module")
def seed_focal():
    return audit(SEED, np.array([0, 1]), loss="focal", backends=["tf"], dtypes=["float32"])


def test_keras_categorical_focal_clips_in_both_modes(seed_focal) -> None:
    # Row 1's label lies 30 below the max: p = e^-30 (1 + ...), so the exact loss is alpha
    # (1 - p)^2 (-log p) = 0.25 * 30.000000000000... = 7.5. Keras' from_logits=True softmaxes,
    # renormalises and clips p to float32(1e-7): it reads 0.25 (1 - 1e-7)^2 (-ln 1e-7), in
    # float32 (a few roundings: 2^-20 relative), with no gradient through the clip.
    eps32 = float(np.float32(1e-7))
    expected = 0.25 * (1 - eps32) ** 2 * -math.log(eps32)
    for mode in ("eager", "graph"):
        r = by(seed_focal, "keras_focal_logits", mode)
        assert r.reference_rows[1] == pytest.approx(7.5, rel=1e-12)
        assert r.loss_rows[1] == pytest.approx(expected, rel=2.0**-20)
        assert ("divergent" in r.flags) and ("grad-vanish" in r.flags)
    assert "keras_focal_logits" not in {d.impl for d in seed_focal.verdict().mode_differences}


def test_the_stable_hand_written_focal_loss_is_exact(seed_focal) -> None:
    for mode in ("eager", "graph"):
        r = by(seed_focal, "focal_log_softmax", mode)
        assert [f for f in r.flags if f != "zero-loss"] == []
        assert r.loss_rows[1] == pytest.approx(r.reference_rows[1], rel=8 * U32)
    # the default alpha is Keras' 0.25: the reference is 0.25 times the unweighted focal loss
    unweighted = focal_cross_entropy(SEED, np.array([0, 1]), 2.0, 1.0, "mpmath").loss
    assert by(seed_focal, "focal_log_softmax", "eager").reference_rows == pytest.approx(
        list(0.25 * unweighted), rel=1e-15
    )


@pytest.fixture(scope="module")
def issue_binary():
    return audit(
        np.array([[20.0], [-20.0]]),
        np.array([[0.0], [1.0]]),
        loss="binary-focal",
        dtypes=["float32"],
    )


def test_binary_focal_keras_probs_clips_eagerly_and_recovers_in_a_graph(issue_binary) -> None:
    # Both rows: p_t = sigmoid(-20) = 2.1e-9, so (1 - p_t)^2 = 1 - 4e-9 and the exact loss is
    # softplus(20) (1 - p_t)^2. Keras' from_logits=False on tf.sigmoid(x) clips eagerly as the
    # sigmoid loss does: the label-0 row reads -log(1 - float32(1 - 1e-7)) times (1 - p_t)^2
    # with p_t = 1 - float32(1 - 1e-7) rounded in float32, within a few float32 roundings.
    softplus = 20 + math.log1p(math.exp(-20))
    p_t = math.exp(-20) / (1 + math.exp(-20))
    exact = softplus * (1 - p_t) ** 2
    top = np.float32(1 - 1e-7)
    clipped_p_t = float(np.float32(1) - top)
    eager = by(issue_binary, "keras_binary_focal_probs", "eager")
    assert eager.reference_rows == pytest.approx([exact, exact], rel=1e-14)
    assert eager.loss_rows[0] == pytest.approx(
        -math.log(clipped_p_t) * (1 - clipped_p_t) ** 2, rel=2.0**-20
    )
    assert eager.flags == ("divergent", "grad-vanish")
    assert by(issue_binary, "keras_binary_focal_probs", "graph").flags == ()
    # keras.ops.sigmoid keeps its input (_keras_logits): from_logits=True is fused both ways
    for mode in ("eager", "graph"):
        for fused in ("keras_binary_focal_logits", "optax_sigmoid_focal"):
            assert by(issue_binary, fused, mode).flags == ()
            assert by(issue_binary, fused, mode).loss_rows == pytest.approx([exact] * 2, rel=U32)


def test_the_hand_written_binary_focal_loss_is_infinite_where_the_sigmoid_saturates(
    issue_binary,
) -> None:
    r = by(issue_binary, "naive_binary_focal", "eager")
    assert r.loss_rows[0] == math.inf and "inf" in r.flags


@pytest.mark.parametrize(
    "loss, impl",
    [("focal", "focal_log_softmax"), ("binary-focal", "optax_sigmoid_focal")],
)
@pytest.mark.parametrize("gamma", [2.0, 5.0])
def test_stable_focal_implementations_are_not_flagged_on_random_rows(
    loss: str, impl: str, gamma: float
) -> None:
    # No false alarm: the stable forms on 2000 random rows at scales 0.3 to 10, float32
    rng = np.random.default_rng(0)
    focus = focus_of(loss, gamma)
    for scale in (0.3, 3.0, 10.0):
        x = rng.standard_normal((2000, 8)) * scale
        if loss == "focal":
            labels = rng.integers(0, 8, 2000)
        else:
            labels = (rng.random((2000, 8)) > 0.5).astype(float)
        batch = prepare(x, labels, multi_label=loss != "focal")
        rounded = round_to(batch, get_format("float32"), "float64", loss=loss, focus=focus)
        _, grades = run_graded(impl, 1e-7, "eager", rounded, None)
        assert set(grades.flags()) <= {"zero-loss"}, (scale, grades.flags())


def test_focal_bound_covers_the_exact_gradient() -> None:
    # B_i = alpha (1 + gamma) max(sum y, 1) bounds every exact gradient entry (derived in
    # losses.py); the reference's largest entry stays below it on adversarial rows
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 5)) * rng.choice([0.1, 1, 10, 100], (3000, 1))
    y = rng.random((3000, 5))
    for gamma in (0.0, 0.5, 2.0, 5.0):
        focus = focus_of("focal", gamma, 0.5)
        rounded = round_to(
            prepare(x, y), get_format("float64"), "float64", "logits", "focal", focus
        )
        assert (rounded.ref.grad_size <= rounded.bound).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gamma": -1.0}, "--gamma must be a finite number >= 0"),
        ({"gamma": math.inf}, "--gamma must be a finite number >= 0"),
        ({"alpha": 1.5}, r"--alpha must lie in \[0, 1\]"),
    ],
)
def test_bad_focus_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        audit(SEED, np.array([0, 1]), loss="focal", impls=["naive_focal"], **kwargs)


def test_focal_advice_does_not_send_users_to_from_logits(seed_focal) -> None:
    advice = seed_focal.verdict().advice["divergent"].advice
    assert "log_softmax" in advice and "even with from_logits=True" in advice


@pytest.mark.parametrize(
    "loss, labels, bound",
    [
        # alpha (1 + gamma) max(sum y, 1) with alpha 0.5, gamma 2, one class per row
        ("focal", np.array([1]), 0.5 * 3 * 1.0),
        # (1 + gamma) max(alpha, 1 - alpha) / C with alpha 0.5 (w_max 0.5), gamma 2, C = 3
        ("binary-focal", np.array([[1.0, 0.0, 1.0]]), 3 * 0.5 / 3),
    ],
)
def test_focal_gradient_tolerance_is_pinned_by_its_bound(loss, labels, bound) -> None:
    from xentaudit.audit import grade
    from xentaudit.losses import reduction_depth

    x = np.array([[0.5, -1.0, 2.0]], np.float32)
    focus = focus_of(loss, 2.0, 0.5)
    batch = prepare(x, labels, multi_label=loss == "binary-focal")
    rounded = round_to(batch, get_format("float32"), "float64", "logits", loss, focus)
    assert rounded.bound.tolist() == pytest.approx([bound], rel=1e-15)
    eps = 2.0**-23
    # focal: (8 + k) eps B + u d B (d = C - 1 = 2: C = 3 <= 8 lanes); binary-focal: (8 eps +
    # u max_j |x_j| t_j) B, t_j = (1 - y_j) sigmoid(x_j) + y_j sigmoid(-x_j): largest at x = -1,
    # label 0, sigmoid(-1)
    extra = (
        reduction_depth(3) * eps + eps / 2 * 2
        if loss == "focal"
        else eps / 2 * max(0.5 / (1 + math.exp(0.5)), 1 / (1 + math.exp(1)), 2 / (1 + math.exp(2)))
    )
    allowed = (8 * eps + extra) * bound
    g = rounded.ref.grad.copy()
    g[0, 0] += 1.05 * allowed
    assert grade(rounded.ref.loss, g, "float32", rounded).masks["grad-wrong"].all()
    g[0, 0] = rounded.ref.grad[0, 0] + 0.95 * allowed
    assert not grade(rounded.ref.loss, g, "float32", rounded).masks["grad-wrong"].any()


def test_the_table_prints_the_advice_brackets(seed_focal) -> None:
    # "[eps, 1-eps]" in the focal advice is text, not rich markup (which would drop it)
    from xentaudit.report import table as table_report

    text = table_report.render(seed_focal, title="focal", width=1000)
    assert "clips p to [eps, 1-eps] even with from_logits=True" in text
