"""The sigmoid (binary, multi-label) loss: its implementations, their grading and the issue's
case, against values derived here from float32 rounding and from mpmath."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from xentaudit import audit
from xentaudit.audit import grade, round_to, run_graded
from xentaudit.dtypes import get_format
from xentaudit.errors import InputError, UnknownImplementationError
from xentaudit.impls import REGISTRY, parse_impls
from xentaudit.io import prepare

F32 = get_format("float32")
U32 = 2.0**-24  # float32 unit roundoff
SIGMOID_TF = ("naive_sigmoid", "clipped_sigmoid", "tf_sigmoid_xent", "keras_bce_logits",
              "keras_bce_probs")  # fmt: skip


@pytest.fixture(scope="module")
def issue_case():
    """The issue's input: logits [[20], [-20]], labels [[0], [1]], in float32, both modes."""
    return audit(
        np.array([[20.0], [-20.0]]),
        np.array([[0.0], [1.0]]),
        loss="sigmoid",
        dtypes=["float32"],
        backends=["tf"],
    )


def by(result_set, impl: str, mode: str):
    return next(r for r in result_set.results if (r.impl, r.mode) == (impl, mode))


def test_the_issue_case_keras_clips_eagerly(issue_case) -> None:
    # Both exact losses are softplus(20) = 20 + log1p(e^-20).
    exact = 20 + math.log1p(math.exp(-20))
    # Eagerly Keras clips sigmoid(x) to [eps, 1 - eps] in float32: sigmoid(20) rounds to 1 and
    # is clipped to float32(1 - 1e-7) (Python computes 1 - eps, the tensor rounds it), so
    # the label-0 row reads -log(1 - float32(1 - 1e-7)); sigmoid(-20) = 2e-9 is clipped up to
    # float32(1e-7), so the label-1 row reads -log(float32(1e-7)). Each log rounds once more in
    # float32: 2 ulps at 16 is 2^-18 relative at most.
    top = np.float32(1 - 1e-7)
    expected = [-math.log(float(np.float32(1) - top)), -math.log(float(np.float32(1e-7)))]
    r = by(issue_case, "keras_bce_probs", "eager")
    assert r.reference_rows == pytest.approx([exact, exact], rel=1e-15)
    assert r.loss_rows == pytest.approx(expected, rel=2.0**-18)
    assert f"{r.loss_rows[0]:.2f}, {r.loss_rows[1]:.2f}" == "15.94, 16.12"
    assert r.flags == ("divergent", "grad-vanish")


def test_the_issue_case_keras_recovers_the_logits_in_a_graph(issue_case) -> None:
    exact = 20 + math.log1p(math.exp(-20))
    graph = by(issue_case, "keras_bce_probs", "graph")
    # float32(20.000000002) = 20: the fused loss is exact to its output's rounding
    assert graph.loss_rows == pytest.approx([exact, exact], rel=U32)
    assert graph.flags == ()
    verdict = issue_case.verdict()
    assert [d.impl for d in verdict.mode_differences] == ["keras_bce_probs"]
    for mode in ("eager", "graph"):
        assert by(issue_case, "tf_sigmoid_xent", mode).flags == ()
        assert by(issue_case, "keras_bce_logits", mode).flags == ()
    assert set(verdict.trustworthy) == {"tf_sigmoid_xent", "keras_bce_logits"}


def test_the_hand_written_loss_is_infinite_where_sigmoid_rounds_to_1(issue_case) -> None:
    # float32 sigmoid(20) = 1: log(1 - 1) = -inf on the label-0 row
    naive = by(issue_case, "naive_sigmoid", "eager")
    assert naive.loss_rows[0] == math.inf and "inf" in naive.flags
    assert "grad-nan" in naive.flags


def test_torch_clamps_the_log_and_the_fused_backends_are_exact() -> None:
    result = audit(
        np.array([[20.0], [-20.0]]),
        np.array([[0.0], [1.0]]),
        loss="sigmoid",
        dtypes=["float32"],
        impls=["torch_bce_logits", "torch_bce_sigmoid", "optax_sigmoid_xent"],
    )
    exact = 20 + math.log1p(math.exp(-20))
    for mode in ("eager", "graph"):
        # float32 sigmoid(20) = 1: log(1 - 1) = -inf, which binary_cross_entropy clamps to
        # -100; sigmoid(-20) = 2.06e-9 is a normal float32, its log -20 to float32 rounding
        clamped = by(result, "torch_bce_sigmoid", mode)
        assert clamped.loss_rows[0] == 100.0
        assert clamped.loss_rows[1] == pytest.approx(exact, rel=U32)
        assert clamped.flags == ("divergent", "grad-vanish")
        for fused in ("torch_bce_logits", "optax_sigmoid_xent"):
            assert by(result, fused, mode).loss_rows == pytest.approx([exact, exact], rel=U32)
            assert by(result, fused, mode).flags == ()


def test_sigmoid_advice_names_the_sigmoid_functions(issue_case) -> None:
    advice = issue_case.verdict().advice
    assert "tf.nn.sigmoid_cross_entropy_with_logits" in advice["divergent"].advice
    assert "softmax" not in advice["divergent"].advice
    assert "log(sigmoid(x))" in advice["inf"].advice


def rounded_product_case(n: int = 4000):
    """Rows where TensorFlow's max(x, 0) - x y + log1p(e^-|x|) rounds x y by up to u |x y|:
    x in [2^20, 2^21), y within 2^-18 of 1 (the subtraction is then exact, Sterbenz)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(2**20, 2**21, (n, 1)).astype(np.float32)
    y = (1 - rng.uniform(0, 2**-18, (n, 1))).astype(np.float32)
    return round_to(prepare(x, y, multi_label=True), F32, method="float64", loss="sigmoid")


def test_tensorflow_rounding_the_product_is_not_flagged_and_needs_the_whole_bound() -> None:
    rounded = rounded_product_case()
    x = np.abs(rounded.logits[:, 0].astype(np.float64))
    outcome, grades = run_graded("tf_sigmoid_xent", 1e-7, "eager", rounded, None)
    assert grades.flags() == ()
    err = np.abs(outcome.loss - rounded.ref.loss)
    # The product's rounding reaches u|x| (0.999 u|x| measured): with PRODUCT_ULPS halved to
    # u|x|/2 the fused loss would be flagged here; the other terms (8 eps max(L, 1) with L < 8)
    # are 2^-16 at most, 4000 times below u|x| >= 2^-4.
    assert (err / (U32 * x)).max() > 0.75


def test_an_error_of_one_and_a_half_product_roundings_is_flagged() -> None:
    rounded = rounded_product_case(64)
    x = np.abs(rounded.logits[:, 0].astype(np.float64))
    exact = rounded.ref.loss
    # an error of 1.5 u|x| is beyond the bound u|x| + 8 eps max(L, 1) (with the bound doubled
    # it would pass); one of 0.9 u|x| is within it
    over = grade(exact + 1.5 * U32 * x, rounded.ref.grad, "float32", rounded)
    under = grade(exact + 0.9 * U32 * x, rounded.ref.grad, "float32", rounded)
    assert over.masks["divergent"].all()
    assert not under.masks["divergent"].any()


@pytest.mark.parametrize("top", [3.0, 16.0, 64.0])
def test_sigmoid_gradient_tolerance(top: float) -> None:
    # B_i = 1/C bounds (sigmoid(x) - y)/C; the gradient is wrong beyond (8 eps + max_j
    # min(u |x_j|, l_j) t_j) B_i: a few roundings, plus exp(x - softplus(x))'s exponent, which
    # rounds by at most u |x_j| and at most l_j = log1p(e^-|x_j|) (x +- l stays within l of x),
    # in the part of entry j it computes, t_j = (1 - y_j) sigmoid(x_j) + y_j sigmoid(-x_j).
    # At 3 the logit `top` (label 0) has the largest term, u 3 sigmoid(3); at 16 too, but l
    # (1.1e-7, 0.95 eps) is below u 16 (8 eps) and bounds it; at 64, l is 1.6e-28 and the
    # largest is the logit 2's, u 2 (0.75 sigmoid(2) + 0.25 sigmoid(-2)).
    x = np.array([[0.5, -1.0, 2.0, top]], np.float32)
    y = np.array([[1.0, 0.0, 0.25, 0.0]], np.float32)
    rounded = round_to(prepare(x, y, multi_label=True), F32, loss="sigmoid")
    eps = 2.0**-23

    def sigmoid(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    def shift(v: float) -> float:  # min(u |x|, l) in eps
        return min(abs(v) / 2, math.log1p(math.exp(-abs(v))) / eps)

    parts = [
        shift(0.5) * sigmoid(-0.5),
        shift(-1.0) * sigmoid(-1.0),
        shift(2.0) * (0.75 * sigmoid(2) + 0.25 * sigmoid(-2)),
        shift(top) * sigmoid(top),
    ]
    assert (max(parts) == parts[3]) is (top != 64.0)
    assert rounded.bound.tolist() == [0.25]
    allowed = (8 * eps + eps * max(parts)) * 0.25
    g = rounded.ref.grad.copy()
    g[0, 2] += 1.05 * allowed
    assert grade(rounded.ref.loss, g, "float32", rounded).masks["grad-wrong"].all()
    g[0, 2] = rounded.ref.grad[0, 2] + 0.95 * allowed
    assert not grade(rounded.ref.loss, g, "float32", rounded).masks["grad-wrong"].any()


def test_optax_float64_sigmoid_gradient_needs_the_exponent_term() -> None:
    # optax takes the sigmoid's derivative as exp(x - softplus(x)): near |x| = 32 in float64
    # the softplus rounds by up to u |x| = 16 eps and the gradient's error reaches 12 eps B,
    # past the 8 eps B of the other roundings: honest rounding, not flagged with the exponent
    # term, flagged without it (the term's constant is pinned by test_sigmoid_gradient_tolerance)
    rng = np.random.default_rng(1)
    x = rng.uniform(29, 36, (4000, 1)) * rng.choice([-1, 1], (4000, 1))
    y = (rng.random((4000, 1)) > 0.5).astype(float)
    rounded = round_to(
        prepare(x, y, multi_label=True), get_format("float64"), method="float64", loss="sigmoid"
    )
    _, grades = run_graded("optax_sigmoid_xent", 1e-7, "eager", rounded, None)
    assert not grades.masks["grad-wrong"].any()
    assert (grades.grad_err > 8 * 2.0**-52 * rounded.bound).any()


def test_multi_label_rows_against_mpmath() -> None:
    x = np.array([[3.5, -0.25, 12.0, -40.0], [0.0, 1.0, -1.0, 30.0]])
    y = np.array([[1.0, 0.3, 0.0, 0.0], [0.5, 1.0, 0.0, 1.0]])
    result = audit(x, y, loss="sigmoid", impls=["tf_sigmoid_xent"], dtypes=["float64"],
                   modes=["eager"])  # fmt: skip
    with mpmath.workdps(60):
        truth = [
            mpmath.fsum(
                -w * mpmath.log(1 / (1 + mpmath.exp(-v)))
                - (1 - w) * mpmath.log(1 / (1 + mpmath.exp(v)))
                for v, w in zip(row, labels, strict=True)
            )
            / len(row)
            for row, labels in zip(x.tolist(), y.tolist(), strict=True)
        ]
    (r,) = result.results
    # float64 reference: a few ulps (tests/test_reference_losses.py)
    assert r.reference_rows == pytest.approx([float(t) for t in truth], rel=1e-15)
    assert r.flags == ()


def test_all_means_the_implementations_of_the_loss() -> None:
    assert parse_impls(["all"], ["tf"], loss="sigmoid") == SIGMOID_TF
    assert not set(parse_impls(["all"], ["tf"])) & set(SIGMOID_TF)
    assert {REGISTRY[n].loss for n in SIGMOID_TF} == {"sigmoid"}
    with pytest.raises(UnknownImplementationError, match="pass --loss sigmoid"):
        parse_impls(["naive_sigmoid"])
    with pytest.raises(UnknownImplementationError, match="pass --loss softmax"):
        parse_impls(["naive"], loss="sigmoid")


@pytest.mark.parametrize(
    "labels, message",
    [
        ([[1.5], [0.0]], r"labels outside \[0, 1\] in row 0"),
        ([[np.nan], [0.0]], r"labels outside \[0, 1\] in row 0"),
        ([1, 0], "do not fit logits of shape"),
    ],
)
def test_multi_label_inputs_are_checked(labels, message: str) -> None:
    with pytest.raises(InputError, match=message):
        prepare(np.array([[1.0], [2.0]]), np.array(labels), multi_label=True)


def test_an_infinite_logit_is_refused_for_a_sigmoid() -> None:
    with pytest.raises(InputError, match="infinite logits in row 1"):
        prepare(np.array([[1.0, 2.0], [3.0, -np.inf]]), np.ones((2, 2)), multi_label=True)


def test_sweep_finds_where_a_float16_mean_over_the_labels_overflows() -> None:
    from xentaudit.sweep import sweep

    result = sweep(
        loss="sigmoid",
        impls=["tf_sigmoid_xent"],
        dtypes=["float16"],
        patterns=["multilabel"],
        modes=("eager",),
    )
    assert result.loss == "sigmoid" and result.reference_method == "float64-numpy"
    (point,) = [p for p in result.breaking_points if p.kind == "loss"]
    # The wrong row [0,1,0,1] on s [3,-2,1,-1] costs s (3 + 2 + 1 + 1) = 7 s summed over its
    # labels (the log1p terms are below float16's resolution there); the float16 sum becomes
    # inf once it rounds past the largest float16, i.e. reaches 65504 + 16 = 65520. Reported at
    # or above that, within 5e-3: the logits round to float16 (spacing 16 at 3 s = 28,080,
    # 5.7e-4 relative), the search's 5e-4, and 4 digits rounded up (1e-4 at 9,360).
    assert point.flag == "inf" and 65520 / 7 <= point.scale <= 65520 / 7 * (1 + 5e-3)


def test_a_pattern_of_another_loss_is_refused() -> None:
    from xentaudit.errors import ConfigError
    from xentaudit.sweep import sweep

    with pytest.raises(ConfigError, match="pass --loss sigmoid"):
        sweep(patterns=["multilabel"])
    with pytest.raises(ConfigError, match="pass --loss softmax"):
        sweep(patterns=["seed"], loss="sigmoid")


# --- the command line --------------------------------------------------------------------------


def run_cli(*args: str):
    import json

    from click.testing import CliRunner

    from xentaudit.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result, (json.loads(result.stdout) if "--format" in args and result.stdout else None)


def test_compare_loss_sigmoid_defaults_to_the_issue_case() -> None:
    result, doc = run_cli("compare", "--loss", "sigmoid", "--backend", "tf", "--format", "json")
    assert result.exit_code == 0, result.output
    assert doc["loss"] == "sigmoid" and (doc["rows"], doc["classes"]) == (2, 1)
    eager = next(
        r for r in doc["results"] if (r["impl"], r["mode"]) == ("keras_bce_probs", "eager")
    )
    top = np.float32(1 - 1e-7)
    expected = [-math.log(float(np.float32(1) - top)), -math.log(float(np.float32(1e-7)))]
    assert eager["loss_rows"] == pytest.approx(expected, rel=2.0**-18)
    assert eager["flags"] == ["divergent", "grad-vanish"]
    assert doc["verdict"]["mode_differences"][0]["impl"] == "keras_bce_probs"


def test_compare_table_names_the_loss_and_label_smoothing() -> None:
    result, _ = run_cli(
        "compare", "--loss", "sigmoid", "--label-smoothing", "0.1", "--impl", "tf_sigmoid_xent"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].endswith("; loss sigmoid, label smoothing 0.1")


def test_sweep_and_list_take_the_loss() -> None:
    result, doc = run_cli(
        "sweep", "--loss", "sigmoid", "--impl", "tf_sigmoid_xent", "--dtype", "float32",
        "--mode", "eager", "--scales", "1,10", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert doc["loss"] == "sigmoid"
    assert [p["name"] for p in doc["patterns"]] == ["multilabel", "soft-multilabel"]
    result, doc = run_cli("list", "--loss", "sigmoid", "--format", "json")
    assert [i["name"] for i in doc["implementations"]] == [
        n for n, i in REGISTRY.items() if i.loss == "sigmoid"
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (("compare", "--loss", "poisson"), "Invalid value for '--loss'"),
        (("compare", "--label-smoothing", "1"), "Invalid value for '--label-smoothing'"),
        (("compare", "--impl", "naive_sigmoid"), "pass --loss sigmoid"),
        (("sweep", "--pattern", "multilabel", "--impl", "naive"), "pass --loss sigmoid"),
    ],
)
def test_loss_usage_errors_are_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    result, _ = run_cli(*args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_clipped_sigmoid_at_several_epsilons_is_one_variant_each() -> None:
    from xentaudit.report import table as table_report
    from xentaudit.sweep import sweep

    result = sweep(
        loss="sigmoid",
        impls=["clipped_sigmoid"],
        eps=[1e-7, 1e-12],
        dtypes=["float32"],
        patterns=["multilabel"],
        modes=("eager",),
        scales=[1.0, 10.0, 100.0],
    )
    text = table_report.render_sweep(result, width=200)
    assert "clipped_sigmoid eps=1e-07" in text and "clipped_sigmoid eps=1e-12" in text
    assert "clipped_sigmoid: epsilon x dtype" in text
    # 1 - sigmoid(x) cancels in float32 before either clip binds: no claim about the cap
    assert not any("caps the loss" in line for line in result.summary)
    assert any(line.startswith("clipped_sigmoid eps=1e-07 diverges") for line in result.summary)


# --- check on a multi-label file ---------------------------------------------------------------


@pytest.fixture(scope="module")
def multi_label_file(tmp_path_factory):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((300, 6)) * 12).astype(np.float32)
    y = (rng.random((300, 6)) > 0.5).astype(np.float32)
    y[::7] = 0.25  # some soft rows
    path = tmp_path_factory.mktemp("ml") / "ml.npz"
    np.savez(path, logits=x, labels=y)
    return path, x, y


def test_check_audits_a_multi_label_file(multi_label_file) -> None:
    from xentaudit.check import check_file

    path, x, y = multi_label_file
    result = check_file(path, loss="sigmoid", backends=["tf"], modes=("eager",))
    assert (result.loss, result.reference_method) == ("sigmoid", "float64-numpy")
    by_impl = {r.impl: r for r in result.results}
    # an independent float64 formula: numpy's logaddexp(0, -x) = softplus(-x), within ~2 ulps
    xs, ys = x.astype(np.float64), y.astype(np.float64)
    exact = (ys * np.logaddexp(0, -xs) + (1 - ys) * np.logaddexp(0, xs)).mean(axis=1).mean()
    assert by_impl["tf_sigmoid_xent"].exact_mean == pytest.approx(exact, rel=1e-13)
    assert by_impl["tf_sigmoid_xent"].flags == ()
    assert "divergent" in by_impl["keras_bce_probs"].flags  # clipped eagerly at |x| up to ~50
    assert "nan" in by_impl["naive_sigmoid"].flags or "inf" in by_impl["naive_sigmoid"].flags
    again = check_file(path, loss="sigmoid", backends=["tf"], modes=("eager",), chunk_rows=7)
    assert [(r.impl, r.flag_counts, r.loss_mean) for r in again.results] == [
        (r.impl, r.flag_counts, r.loss_mean) for r in result.results
    ]


def test_check_sigmoid_needs_labels_of_the_logits_shape(multi_label_file, tmp_path) -> None:
    path, x, _ = multi_label_file
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "k.npy", np.zeros(len(x), np.int64))
    for extra in ((), ("--labels", str(tmp_path / "k.npy"))):
        result, _ = run_cli("check", str(tmp_path / "x.npy"), "--loss", "sigmoid", *extra)
        assert result.exit_code == 2
        assert "a multi-label loss takes one label in [0, 1] per logit" in result.stderr
    result, doc = run_cli(
        "check", str(path), "--loss", "sigmoid", "--impl", "tf_sigmoid_xent", "--format", "json"
    )
    assert result.exit_code == 0 and doc["loss"] == "sigmoid"


def test_a_small_label_on_a_large_negative_logit_is_graded_on_its_product() -> None:
    # x = -1e8, y = 5e-8 and 3e-8 in float32: the exact losses are y |x| = 5 and 3 (plus
    # e^-1e8). TensorFlow's max(x, 0) - x y keeps the product (5.0, 3.0: not flagged); torch's
    # (1 - y) x + |x| rounds 1 - y to float32 (spacing 6e-8 below 1) and loses the label in the
    # cancellation: 8 and 8, flagged; the tolerance u mean max(x, 0) y is 0 here
    x = np.array([[-1e8], [-1e8]], np.float32)
    y = np.array([[5e-8], [3e-8]], np.float32)
    result = audit(x, y, loss="sigmoid", dtypes=["float32"], modes=["eager"],
                   impls=["tf_sigmoid_xent", "torch_bce_logits"])  # fmt: skip
    exact = [float(np.float32(5e-8)) * 1e8, float(np.float32(3e-8)) * 1e8]
    tf_result, torch_result = (
        by(result, i, "eager") for i in ("tf_sigmoid_xent", "torch_bce_logits")
    )
    assert tf_result.reference_rows == pytest.approx(exact, rel=1e-12)
    assert tf_result.loss_rows == pytest.approx(exact, rel=U32 * 4) and tf_result.flags == ()
    assert "divergent" in torch_result.flags


def test_a_float16_mean_that_overflows_is_inf() -> None:
    # 5000 rows of loss 20: their float16 sum (100000) overflows float16's 65504 in
    # tf.reduce_mean, every row being finite: the scalar the optimizer sees is inf
    x = np.full((5000, 1), 20.0)
    y = np.zeros((5000, 1))
    result = audit(x, y, loss="sigmoid", dtypes=["float16"], modes=["eager"],
                   impls=["tf_sigmoid_xent", "keras_bce_logits"])  # fmt: skip
    fused, keras_result = result.results
    assert fused.returned_mean == math.inf and "inf" in fused.flags
    assert keras_result.output_dtype == "float32" and "inf" not in keras_result.flags
    assert result.exit_code(["inf"]) == 1


def test_a_baseline_of_another_loss_is_refused(multi_label_file, tmp_path) -> None:
    path, _, _ = multi_label_file
    base = tmp_path / "base.json"
    common = ("--impl", "tf_sigmoid_xent", "--mode", "eager")
    written, _ = run_cli(
        "check", str(path), "--loss", "sigmoid", *common, "--write-baseline", str(base)
    )
    assert written.exit_code == 0, written.output
    result, _ = run_cli("check", str(path), "--impl", "tf_softmax_xent", "--baseline", str(base))
    assert result.exit_code == 2
    assert "it was written for loss 'sigmoid', this run has 'softmax'" in result.stderr


def _flipped_sigmoid(labels, logits):
    """The fused sigmoid loss, mean over the labels, whose gradient has the wrong sign (a
    custom_gradient bug): training would climb the loss."""
    import tensorflow as tf

    @tf.custom_gradient
    def per_row(x):
        value = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=x), -1)

        def grad(upstream):
            classes = tf.cast(tf.shape(x)[-1], x.dtype)
            return -upstream[:, None] * (tf.sigmoid(x) - labels) / classes

        return value, grad

    return per_row(logits)


def test_a_float16_gradient_below_float16s_smallest_normal_still_counts() -> None:
    # 4,096 labels: the gradient (sigmoid(x) - y) / C is at most 0.1 / 4096 = 2.4e-5, below
    # float16's smallest normal 6.1e-5 (which float16 keeps: it computes in float32). The
    # flipped gradient is 2 |g| off, up to 4.9e-5, far past the grad-wrong threshold
    # (8 eps16 + u16 max|x|) / C ~ 2.1e-6 plus 8 half subnormal spacings (2^-22 = 2.4e-7);
    # TensorFlow's own fused loss rounds within it.
    from xentaudit.testing import register

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4096)) * 0.5
    y = np.clip(1 / (1 + np.exp(-x)) + rng.uniform(-0.1, 0.1, x.shape), 0.0, 1.0)
    xr, yr = x.astype(np.float16).astype(np.float64), y.astype(np.float16).astype(np.float64)
    exact = (1 / (1 + np.exp(-xr)) - yr) / x.shape[1]  # the closed form, float64
    assert 2 * np.abs(exact).max() > 2e-5 and np.abs(exact).max() < 2.0**-14
    flipped = register(_flipped_sigmoid, "tf")
    result = audit(
        x, y, loss="sigmoid", impls=[flipped, "tf_sigmoid_xent"], dtypes=["float16"],
        modes=["eager"],
    )  # fmt: skip
    by_impl = {r.impl: r for r in result.results}
    assert "grad-wrong" in by_impl[flipped].flags
    assert by_impl[flipped].grad_max_abs_err == pytest.approx(2 * np.abs(exact).max(), rel=0.01)
    assert not [f for f in by_impl["tf_sigmoid_xent"].flags if f.startswith("grad")]


def test_a_float16_sigmoid_gradient_tolerance_counts_float16_subnormals() -> None:
    # 65,536 labels: B = 1/C = 1.5e-5, so (8 eps16 + u16 max|x|) B = 1.5e-7 is below float16's
    # smallest normal 6.1e-5; float16 keeps subnormals (spaced eps16 tiny16 = 2^-24 apart), so
    # the tolerance adds 8 roundings to them, 8 * 2^-25 = 2^-22, and nothing below float16's
    # smallest normal is ignored (only below float32's, which TensorFlow flushes)
    classes = 2**16
    x = np.tile(np.array([0.5, -1.0, 2.0, 3.0], np.float16), classes // 4)[None, :]
    y = np.tile(np.array([1.0, 0.0, 0.25, 1.0], np.float16), classes // 4)[None, :]
    rounded = round_to(prepare(x, y, multi_label=True), get_format("float16"), loss="sigmoid")
    eps, tiny = 2.0**-10, 2.0**-14
    assert rounded.bound.tolist() == [1 / classes]
    allowed = (8 * eps + eps / 2 * 3.0) / classes + 8 * eps * tiny / 2
    assert allowed < tiny
    g = rounded.ref.grad.copy()
    g[0, 2] += 1.05 * allowed
    assert grade(rounded.ref.loss, g, "float16", rounded).masks["grad-wrong"].all()
    g[0, 2] = rounded.ref.grad[0, 2] + 0.95 * allowed
    assert not grade(rounded.ref.loss, g, "float16", rounded).masks["grad-wrong"].any()


def test_a_huge_logit_with_label_1_hides_no_keras_clip() -> None:
    # x 1 is exact: a logit of 2^30 labelled 1 adds nothing to the tolerance (it added 2^30 u / 3
    # = 21), so Keras' clipped binary loss, 4x under the exact 23.56, is divergent and TensorFlow's
    # fused loss on logits is not. Keras' own loss, run here, is the number graded.
    import keras
    import tensorflow as tf

    x = np.array([[2.0**30, -70.0, 0.0]], np.float32)
    y = np.array([[1.0, 1.0, 0.0]], np.float32)
    own = keras.losses.BinaryCrossentropy(reduction=None)(y, tf.sigmoid(x))
    result = audit(x, y, loss="sigmoid", impls=["keras_bce_probs", "tf_sigmoid_xent"],
                   modes=["eager"])  # fmt: skip
    by_impl = {r.impl: r for r in result.results}
    probs, fused = by_impl["keras_bce_probs"], by_impl["tf_sigmoid_xent"]
    assert probs.loss_rows[0] == pytest.approx(float(own[0]), rel=1e-6)
    with mpmath.workdps(40):
        exact = float((mpmath.log1p(mpmath.exp(70)) + mpmath.log(2)) / 3)  # softplus(70) + ln 2
    assert probs.loss_rows[0] < exact / 4 and "divergent" in probs.flags
    assert fused.flags == ()
