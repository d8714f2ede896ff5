"""--ignore-class N: rows of class N have no loss and no gradient and the exact mean is over the
others; the losses that take N (torch's ignore_index, Keras' ignore_class) get it, the others the
rows' one-hot labels; an implementation that gives the rows a loss, returns NaN for them or
divides its own mean by them is flagged. Exact values are derived here (mpmath, closed forms)."""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit import audit, check_file
from xentaudit.audit import RTOL_ULPS, counted_mean, round_to, run_graded
from xentaudit.cli import cli
from xentaudit.dtypes import FORMATS
from xentaudit.errors import ConfigError, InputError
from xentaudit.impls import Outcome
from xentaudit.io import prepare

X = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0], [2.0, -1.0, 0.5], [0.25, 0.5, 0.125]])
CLASSES = np.array([2, -100, 0, -100])
KEPT = CLASSES != -100
EPS32 = 2.0**-23


def truth(x: np.ndarray, classes: np.ndarray) -> list[float]:
    """LSE(x) - x_label per row at 50 digits (the logits are exact in float32)."""
    with mpmath.workdps(50):
        return [
            float(mpmath.log(mpmath.fsum(mpmath.exp(v) for v in row)) - row[c])
            for row, c in zip(x.tolist(), classes.tolist(), strict=True)
        ]


@pytest.fixture(scope="module")
def ignored():
    return audit(X, CLASSES, ignore_class=-100, dtypes=["float32"], modes=["eager"])


def by(result, impl: str):
    return next(r for r in result.results if r.impl == impl)


def test_ignored_rows_have_exact_loss_0_and_the_mean_is_over_the_rest(ignored) -> None:
    kept = truth(X[KEPT], CLASSES[KEPT])
    for r in ignored.results:
        want = [kept[0], 0.0, kept[1], 0.0]
        # 50-digit values rounded to float64: a float64 ulp
        assert r.reference_rows == pytest.approx(want, rel=2.0**-52, abs=0.0)
        assert r.reference == pytest.approx(sum(kept) / 2, rel=2.0**-51)
    assert (ignored.ignore_class, ignored.ignored_rows) == (-100, 2)


def test_the_losses_that_take_the_ignore_value_are_right(ignored) -> None:
    exact = sum(truth(X[KEPT], CLASSES[KEPT])) / 2
    for name in ("torch_cross_entropy", "torch_log_softmax_nll", "keras_scce_logits"):
        r = by(ignored, name)
        assert r.flags == (), name
        assert [r.loss_rows[1], r.loss_rows[3]] == [0.0, 0.0]
        # their own reduction="mean" / sum_over_batch_size divides by the 2 rows kept: float32
        # rounding of two terms and a division, within the loss tolerance 8 eps
        assert r.returned_mean == pytest.approx(exact, rel=RTOL_ULPS * EPS32)


@pytest.mark.parametrize("name", ["naive", "tf_softmax_xent", "jax_log_softmax"])
def test_a_mean_over_every_row_counts_the_ignored_ones(ignored, name: str) -> None:
    # tf.one_hot and jax.nn.one_hot of -100 are rows of zeros: loss 0 on them, but the mean of
    # the four per-row losses is the exact sum over 4, half the exact mean
    kept = truth(X[KEPT], CLASSES[KEPT])
    r = by(ignored, name)
    assert [r.loss_rows[1], r.loss_rows[3]] == [0.0, 0.0]
    assert r.returned_mean == pytest.approx(sum(kept) / 4, rel=RTOL_ULPS * EPS32)
    assert "ignored-counted" in r.flags
    assert all("ignored-counted" not in f for f in r.row_flags)  # the mean's, not a row's


def test_the_fused_tensorflow_gradient_on_a_zero_label_row_is_softmax() -> None:
    # softmax_cross_entropy_with_logits' gradient is softmax(x) - y (it assumes sum y = 1):
    # p itself on a row of zero labels, whose loss is 0, where the exact gradient is 0
    rounded = round_to(prepare(X, CLASSES, ignore_class=-100), FORMATS["float32"],
                       ignore_class=-100)  # fmt: skip
    outcome, grades = run_graded("tf_softmax_xent", 1e-7, "eager", rounded, None)
    p = np.exp(X[1]) / np.exp(X[1]).sum()
    np.testing.assert_allclose(outcome.grad[1], p, rtol=8 * EPS32)
    assert grades.flags_of(1) == ("grad-wrong",)
    assert grades.flags_of(0) == () and grades.flags_of(2) == ()


def test_optax_integer_labels_return_nan_for_a_class_outside_the_range(ignored) -> None:
    # -100 with 3 classes lies outside [-C, C): the gather fills it with NaN
    r = by(ignored, "optax_softmax_xent_int")
    assert math.isnan(r.loss_rows[1]) and math.isnan(r.loss_rows[3])
    assert r.row_flags[1][0] == "nan"
    assert r.row_flags[0] == () and r.row_flags[2] == ()


def test_optax_integer_labels_index_minus_100_from_the_end_past_100_classes() -> None:
    # with 200 classes, -100 is a valid negative index: class 100's loss, counted
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 200))
    result = audit(x, np.array([7, -100]), ignore_class=-100, dtypes=["float64"],
                   modes=["eager"], impls=["optax_softmax_xent_int"])  # fmt: skip
    (r,) = result.results
    assert r.loss_rows[1] == pytest.approx(truth(x[1:], np.array([100]))[0], rel=1e-12)
    assert r.row_flags[1][0] == "ignored-counted"


def test_smoothing_and_an_ignored_class_together() -> None:
    # torch takes both: class indices, label_smoothing and ignore_index; the kept rows' exact
    # loss is that of their smoothed labels, the ignored rows' 0
    result = audit(X, CLASSES, ignore_class=-100, label_smoothing=0.1, dtypes=["float32"],
                   modes=["eager"], impls=["torch_cross_entropy", "keras_cce_logits"])  # fmt: skip
    with mpmath.workdps(50):
        want = []
        for row, c in zip(X.tolist(), CLASSES.tolist(), strict=True):
            if c == -100:
                want.append(0.0)
                continue
            lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in row))
            weights = [mpmath.mpf(9) / 10 * (j == c) + mpmath.mpf(1) / 30 for j in range(3)]
            want.append(
                float(mpmath.fsum(w * (lse - v) for w, v in zip(weights, row, strict=True)))
            )
    torch_ce, keras_cce = by(result, "torch_cross_entropy"), by(result, "keras_cce_logits")
    assert torch_ce.reference_rows == pytest.approx(want, rel=2.0**-50, abs=0.0)
    assert torch_ce.flags == ()
    # Keras smooths the zero row of -100 too: a/C on every class, a loss where none is due
    assert keras_cce.row_flags[1][0] == "ignored-counted"


def test_tensorflow_sparse_kernel_raises_on_minus_100_and_is_skipped(ignored) -> None:
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match="-100"):
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=CLASSES, logits=X)
    (skip,) = [s for s in ignored.skipped if s.impl == "tf_sparse_softmax_xent"]
    assert "raises on rows of the ignored class -100" in skip.reason
    assert "tf_sparse_softmax_xent" not in {r.impl for r in ignored.results}


def test_an_ignored_class_inside_the_range_is_counted_by_the_losses_without_it() -> None:
    classes = np.array([2, 0, 0, 1])
    result = audit(X, classes, ignore_class=0, dtypes=["float32"], modes=["eager"],
                   impls=["tf_sparse_softmax_xent", "keras_scce_logits"])  # fmt: skip
    counted = by(result, "tf_sparse_softmax_xent")
    # rows 1 and 2 (class 0) get LSE(x) - x_0 where the exact loss is 0
    assert counted.loss_rows[1] == pytest.approx(truth(X[1:3], classes[1:3])[0], rel=8 * EPS32)
    assert counted.row_flags[1][0] == "ignored-counted"
    assert counted.row_flags[2][0] == "ignored-counted"
    assert by(result, "keras_scce_logits").flags == ()


def _outcome(mean: float) -> Outcome:
    return Outcome(np.zeros(1), np.zeros((1, 1)), "float32", mean)


def test_counted_mean_fires_near_the_mean_over_every_row_only() -> None:
    exact, diluted = 2.0, 1.0  # two of four rows ignored
    tol = RTOL_ULPS * EPS32 * exact  # float32's loss tolerance at the exact mean
    assert counted_mean(_outcome(exact), exact, diluted, 0.0) == ()
    assert counted_mean(_outcome(diluted), exact, diluted, 0.0) == ("ignored-counted",)
    # off by a little more than the tolerance, but nearer the exact mean: not this flag's
    assert counted_mean(_outcome(exact - 1.03 * tol), exact, diluted, 0.0) == ()
    # off by less than the output dtype's spacing (coarse-mean's business): not this flag's
    assert counted_mean(_outcome(1.4), exact, diluted, 1.0) == ()
    assert counted_mean(_outcome(math.nan), exact, diluted, 0.0) == ()


def test_the_ignore_value_is_refused_without_the_option_and_on_dense_labels() -> None:
    with pytest.raises(InputError, match=r"out of range in rows 1, 3.*--ignore-class"):
        prepare(X, CLASSES)
    with pytest.raises(InputError, match="--ignore-class -100 applies to integer class labels"):
        prepare(X, np.eye(3)[[2, 0, 0, 1]], ignore_class=-100)
    with pytest.raises(ConfigError, match="--ignore-class applies to --loss softmax"):
        audit(X, np.ones((4, 3)) / 2, loss="sigmoid", ignore_class=-100, impls=["all"])
    with pytest.raises(InputError, match="every row has the ignored class"):
        audit(X, np.full(4, -100), ignore_class=-100, impls=["naive"], modes=["eager"])


def test_compare_json_and_exit_code(tmp_path) -> None:
    args = ["compare", "--logits", json.dumps(X.tolist()), "--labels",
            json.dumps(CLASSES.tolist()), "--ignore-class", "-100", "--impl",
            "torch_cross_entropy,naive", "--mode", "eager", "--format", "json",
            "--fail-on", "ignored-counted"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output  # naive counts the ignored rows
    doc = json.loads(result.stdout)
    assert (doc["ignore_class"], doc["ignored_rows"]) == (-100, 2)
    flags = {r["impl"]: r["flags"] for r in doc["results"]}
    assert flags == {"torch_cross_entropy": [], "naive": ["ignored-counted"]}


def test_check_chunks_and_probabilities_with_ignored_rows(tmp_path) -> None:
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    np.save(tmp_path / "y.npy", CLASSES)
    # a chunk of one row at a time gives the means of one chunk of all of them
    runs = [
        check_file(tmp_path / "x.npy", labels=tmp_path / "y.npy", ignore_class=-100,
                   impls=["torch_cross_entropy"], modes=["eager"], chunk_rows=rows)
        for rows in (1, 4)
    ]  # fmt: skip
    one, whole = (r.results[0] for r in runs)
    assert (one.loss_mean, one.exact_mean) == (whole.loss_mean, whole.exact_mean)
    # probabilities: the zero-label-prob lint skips the ignored rows (no class to look up)
    p = np.exp(X) / np.exp(X).sum(axis=1, keepdims=True)
    np.save(tmp_path / "p.npy", p.astype(np.float32))
    probs = check_file(tmp_path / "p.npy", labels=tmp_path / "y.npy", ignore_class=-100,
                       input_kind="probabilities", impls=["naive"], modes=["eager"])  # fmt: skip
    assert probs.ignored_rows == 2 and probs.lint == {}


def test_check_grades_the_rows_and_leaves_them_out_of_the_means(tmp_path) -> None:
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    np.save(tmp_path / "y.npy", CLASSES)
    result = check_file(tmp_path / "x.npy", labels=tmp_path / "y.npy", ignore_class=-100,
                        impls=["torch_cross_entropy", "optax_softmax_xent_int"],
                        modes=["eager"])  # fmt: skip
    assert (result.ignore_class, result.ignored_rows) == (-100, 2)
    exact = sum(truth(X[KEPT], CLASSES[KEPT])) / 2
    by_impl = {r.impl: r for r in result.results}
    assert by_impl["torch_cross_entropy"].flags == ()
    assert by_impl["torch_cross_entropy"].exact_mean == pytest.approx(exact, rel=2.0**-50)
    assert by_impl["optax_softmax_xent_int"].flag_counts["nan"] == 2
    assert "compare --ignore-class" in result.verdict().message  # check grades no own mean
    # without the option, -100 is a class out of range: exit 2, naming the option
    run = CliRunner().invoke(cli, ["check", str(tmp_path / "x.npy"), "--labels",
                                   str(tmp_path / "y.npy"), "--impl", "naive"])  # fmt: skip
    assert run.exit_code == 2 and "--ignore-class" in run.stderr


def test_a_baseline_of_another_ignored_class_is_refused(tmp_path) -> None:
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    np.save(tmp_path / "y.npy", np.array([2, 0, 0, 1]))
    base = ["check", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"), "--impl",
            "torch_cross_entropy", "--mode", "eager"]  # fmt: skip
    written = CliRunner().invoke(
        cli, [*base, "--ignore-class", "0", "--write-baseline", str(tmp_path / "b.json")]
    )
    assert written.exit_code == 0, written.output
    assert json.loads((tmp_path / "b.json").read_text())["ignore_class"] == 0
    run = CliRunner().invoke(cli, [*base, "--baseline", str(tmp_path / "b.json")])
    assert run.exit_code == 2 and "ignore_class 0" in run.stderr


def test_a_diluted_half_precision_mean_is_counted_not_coarse() -> None:
    # float16's spacing at the exact mean (~0.32) is 2^-12 > float32's tolerance: a mean off by
    # half (the ignored rows averaged in) would also read as coarse; only ignored-counted fires
    result = audit(X, CLASSES, ignore_class=-100, dtypes=["float16"], modes=["eager"],
                   impls=["naive", "torch_cross_entropy"])  # fmt: skip
    naive = by(result, "naive")
    assert "ignored-counted" in naive.flags and "coarse-mean" not in naive.flags
    # torch's own float16 mean over the rows kept is only as coarse as float16 (informational)
    assert by(result, "torch_cross_entropy").flags == ("coarse-mean",)


def test_the_ulps_of_a_loss_on_an_ignored_row_are_infinite() -> None:
    classes = np.array([2, 0, 0, 1])
    result = audit(X, classes, ignore_class=0, dtypes=["float32"], modes=["eager"],
                   impls=["tf_softmax_xent"])  # fmt: skip
    assert result.results[0].max_ulps_err == math.inf


def test_one_hot_rows_are_the_frameworks_own() -> None:
    # the dense labels the non-ignoring losses are handed: as tf.one_hot and jax.nn.one_hot
    # write them, a class outside [0, C) (-100, 3) a row of zeros
    import jax
    import tensorflow as tf

    from xentaudit.audit import one_hot

    classes = np.array([2, -100, 0, 3, -1])
    ours = one_hot(classes, 3)
    np.testing.assert_array_equal(ours, tf.one_hot(classes, 3, dtype=tf.float64).numpy())
    np.testing.assert_array_equal(ours, np.asarray(jax.nn.one_hot(classes, 3)))
