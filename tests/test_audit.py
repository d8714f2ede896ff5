"""The audit engine on real TensorFlow/Keras code: the issue's cases, and every flag fired by a
case built to fire it and not fired by a twin built not to. Expected numbers are closed forms or
mpmath values computed here, never outputs of xentaudit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mpmath
import numpy as np
import pytest

from xentaudit import audit, check_file, sweep
from xentaudit.audit import eps_values, grade, nothing_audited, round_to
from xentaudit.dtypes import FORMATS
from xentaudit.errors import ConfigError, InputError
from xentaudit.flags import FLAGS
from xentaudit.io import prepare
from xentaudit.reference import cross_entropy
from xentaudit.results import Skipped

SEED_FILE = str(Path(__file__).parent.parent / "fixtures" / "seed_scale10.npz")

SEED = np.array([[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]])
SEED_LABELS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
ALL = ("float16", "bfloat16", "float32", "float64")


def results(a, **match):
    out = [r for r in a.results if all(getattr(r, k) == v for k, v in match.items())]
    assert out, f"no result matches {match}"
    return out


def exact_seed_mean(scale: float) -> float:
    with mpmath.workdps(60):
        rows = [[mpmath.mpf(v) * scale for v in row] for row in SEED.tolist()]
        lse = [mpmath.log(sum(mpmath.exp(v) for v in row)) for row in rows]
        losses = [lse[0] - rows[0][0], lse[1] - rows[1][1]]  # labels 0 and 1
        return float(sum(losses) / 2)


def test_keras_clip_case_in_float64() -> None:
    a = audit(
        SEED * 10, SEED_LABELS, impls=["keras_cce_probs", "tf_softmax_xent"], dtypes=["float64"]
    )
    (keras_eager,) = results(a, impl="keras_cce_probs", mode="eager")
    # Keras computes in float32 and clips p to [1e-7, 1 - 1e-7]: row 0 has p ~ 1 - 4e-9, which
    # rounds to 1 and is clipped to float32(1 - 1e-7); row 1 has p = e^-30 < 1e-7, clipped to
    # float32(1e-7). Both logs are taken in float32.
    f32 = np.float32
    row0 = -np.log(f32(1 - 1e-7))
    row1 = -np.log(f32(1e-7))
    expected = (float(row0) + float(row1)) / 2
    assert keras_eager.loss == pytest.approx(expected, rel=1e-6)  # float32 log: ~1e-7 each
    assert {"divergent", "grad-vanish"} <= set(keras_eager.flags)
    truth = exact_seed_mean(10)
    for tf_result in results(a, impl="tf_softmax_xent"):
        # float64 fused op: LSE - x cancels on row 0 (4e-9): abs error ~1e-16, rel ~1e-17.
        assert tf_result.loss == pytest.approx(truth, rel=1e-12)
        assert tf_result.flags == ()
        assert tf_result.reference == pytest.approx(truth, rel=1e-14)
    assert a.reference_method == "mpmath"


def test_naive_nans_on_minus_500_500_in_every_dtype_and_the_fused_op_never_flags() -> None:
    # the two this asserts on (every TensorFlow implementation runs in every dtype in
    # test_sweep's default sweep, and every backend's in the sweep .ci/run runs)
    a = audit(
        np.array([[-500.0, 500.0, -500.0]]),
        np.array([[0, 1.0, 0]]),
        impls=["naive", "tf_softmax_xent"],
        dtypes=ALL,
    )
    for dtype in ALL:
        for r in results(a, impl="naive", dtype=dtype):
            assert "nan" in r.flags
        for r in results(a, impl="tf_softmax_xent", dtype=dtype):
            assert r.flags == ()


def test_shifted_gradient_breaks_where_the_true_class_underflows_and_log_softmax_does_not() -> None:
    a = audit(
        np.array([[-500.0, 500.0, -500.0]]),
        np.array([0]),  # the true class has p = e^-1000: underflows in every dtype
        impls=["shifted", "log_softmax"],
        dtypes=ALL,
    )
    for r in results(a, impl="shifted"):
        assert {"grad-nan", "grad-blowup"} & set(r.flags)
    for r in results(a, impl="log_softmax"):
        assert r.flags == ()
        # exact: loss 1000, gradient softmax - y = [-1, 1, 0] to within e^-1000
        assert r.loss_rows == (1000.0,)


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 100.0])
def test_fused_losses_never_fail_on_the_seed_and_keras_clip_is_caught(scale: float) -> None:
    a = audit(
        SEED * scale,
        SEED_LABELS,
        impls=["tf_softmax_xent", "log_softmax", "keras_cce_probs"],
        dtypes=ALL,
    )
    failing = {"nan", "inf", "divergent", "grad-nan", "grad-inf", "grad-blowup", "grad-vanish"}
    for r in a.results:
        if r.impl != "keras_cce_probs":
            assert not failing & set(r.flags), (r.impl, r.dtype, r.mode, r.flags)
    if scale >= 10:
        # The true-class probability of row 1 is e^(-3 scale) < 1e-7: the clip applies.
        for r in results(a, impl="keras_cce_probs", mode="eager"):
            assert {"divergent", "grad-vanish"} <= set(r.flags), r.dtype


def test_graph_mode_recovers_keras_logits_only_in_float32() -> None:
    a = audit(SEED * 10, SEED_LABELS, impls=["keras_cce_probs"], dtypes=ALL)
    for dtype in ALL:
        (graph,) = results(a, dtype=dtype, mode="graph")
        # In tf.function Keras sees the Softmax op and uses the logits; for other dtypes a Cast
        # sits between them and the clip applies again.
        assert ("divergent" in graph.flags) == (dtype != "float32"), dtype


def test_softmax_layer_output_is_recovered_by_keras() -> None:
    a = audit(SEED * 10, SEED_LABELS, impls=["keras_cce_softmax_layer"], dtypes=["float32"])
    for r in a.results:
        assert "divergent" not in r.flags


def test_inf_fires_when_log_of_an_underflowed_probability_is_taken() -> None:
    # p_1 = e^-200 underflows in float32, so -1 * log(0) = inf; the exact loss is 200.
    a = audit(np.array([[0.0, -200.0]]), np.array([1]), impls=["shifted", "tf_softmax_xent"])
    for r in results(a, impl="shifted"):
        assert "inf" in r.flags
    for r in results(a, impl="tf_softmax_xent"):
        assert r.flags == () and r.loss == 200.0


def test_grad_wrong_fires_for_naive_float64_between_88_and_118() -> None:
    # At scale 100 row 1 is [-100, 200, 500]: s = sum exp(x) ~ 1.4e217 is finite in float64,
    # but the autodiff of exp(x)/s forms s**2 ~ 1e434, which overflows, so the +1 entry of the
    # row's gradient is lost while loss and gradient stay finite.
    a = audit(SEED * 100, SEED_LABELS, impls=["naive", "log_softmax"], dtypes=["float64"])
    for r in results(a, impl="naive"):
        assert "grad-wrong" in r.flags and "nan" not in r.flags
    for r in results(a, impl="log_softmax"):
        # Row 0's exact loss 2.8e-87 comes back as 0 (informational zero-loss), nothing else.
        assert r.flags == ("zero-loss",)


def test_double_softmax_is_divergent_with_a_wrong_gradient() -> None:
    a = audit(SEED, SEED_LABELS, impls=["double_softmax"], dtypes=["float64"], modes=["eager"])
    (r,) = a.results
    # softmax of probabilities: the loss is log(sum exp(p)) - p_label, closed form here.
    p = np.exp(SEED) / np.exp(SEED).sum(axis=1, keepdims=True)
    wrong = np.log(np.exp(p).sum(axis=1)) - p[[0, 1], [0, 1]]
    assert r.loss_rows == pytest.approx(wrong.tolist(), rel=1e-14)
    assert {"divergent", "grad-wrong"} <= set(r.flags)


def test_zero_loss_is_informational_and_tied_to_the_dtype() -> None:
    # Row 0 at scale 10: exact loss log1p(2 e^-20) = 4.1e-9, above float32's smallest normal.
    a = audit(SEED * 10, SEED_LABELS, impls=["tf_softmax_xent"], dtypes=["float32", "float64"])
    for r in results(a, dtype="float32"):
        assert r.flags == ("zero-loss",) and r.row_flags[0] == ("zero-loss",)
        assert r.loss_rows[0] == 0.0
    for r in results(a, dtype="float64"):
        assert r.flags == ()
        assert r.loss_rows[0] == pytest.approx(math.log1p(2 * math.exp(-20)), rel=1e-7)


def test_downcast_fires_for_keras_float64_only() -> None:
    a = audit(SEED, SEED_LABELS, impls=["keras_cce_logits"], dtypes=["float32", "float64"])
    for r in results(a, dtype="float64"):
        assert r.output_dtype == "float32" and "downcast" in r.flags
        assert "divergent" not in r.flags  # float32 accuracy on a float32-exact input
    for r in results(a, dtype="float32"):
        assert "downcast" not in r.flags


def test_eps_1e30_underflows_to_zero_in_float16_only() -> None:
    # clip(p, eps, 1-eps) with eps rounded to the dtype: 1e-30 is 0 in float16, so the clip is
    # gone and the non-label probabilities e^-20 (below float16's smallest subnormal 6e-8)
    # become 0, giving 0 * log(0) = NaN; float32 keeps both e^-30 and the clip.
    a = audit(SEED * 10, SEED_LABELS, impls=["clipped"], dtypes=["float16", "float32"], eps=1e-30)
    for r in results(a, dtype="float16"):
        assert "nan" in r.flags and r.eps == 1e-30
    for r in results(a, dtype="float32"):
        assert not {"inf", "divergent"} & set(r.flags)


def test_rtol_overrides_the_loss_tolerance() -> None:
    # keras_cce_probs on row 1 is off by (30 - 16.118) / 30 = 0.46 relative.
    loose = audit(SEED * 10, SEED_LABELS, impls=["keras_cce_probs"], modes=["eager"], rtol=0.5)
    strict = audit(SEED * 10, SEED_LABELS, impls=["keras_cce_probs"], modes=["eager"], rtol=0.4)
    assert "divergent" not in loose.results[0].flags and loose.results[0].rtol == 0.5
    assert "divergent" in strict.results[0].flags


def test_skips_sparse_impls_for_soft_labels_and_dtypes_that_overflow() -> None:
    soft = np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    a = audit(SEED, soft, impls=["tf_sparse_softmax_xent", "tf_softmax_xent"], modes=["eager"])
    assert [(s.impl, s.reason) for s in a.skipped] == [
        ("tf_sparse_softmax_xent", "needs one-hot or integer labels")
    ]
    big = audit(SEED * 1e5, SEED_LABELS, impls=["log_softmax"], dtypes=["float16", "float32"])
    assert [s.dtype for s in big.skipped] == ["float16"]
    assert "overflow float16" in big.skipped[0].reason
    assert {r.dtype for r in big.results} == {"float32"}


def test_json_is_strict_and_exit_code_follows_fail_on() -> None:
    a = audit(np.array([[-500.0, 500.0, -500.0]]), np.array([1]), impls=["naive"])
    text = json.dumps(a.to_dict(), allow_nan=False)
    assert '"loss": "nan"' in text
    assert a.exit_code(["nan"]) == 1
    assert a.exit_code(["divergent"]) == 0
    assert a.exit_code([]) == 0


# grade() on constructed outcomes: flags that the built-in implementations cannot produce on
# gradients w.r.t. logits (the 1/p of log(p) cancels against the softmax Jacobian), but a
# user's loss can.
def _graded(loss, grad, x=((0.0, 1.0),), y=((0.0, 1.0),), dtype="float32", out=None):
    rounded = round_to(prepare(np.array(x), np.array(y)), FORMATS[dtype])
    return grade(np.array(loss), np.array(grad), out or dtype, rounded)


def test_grade_grad_inf_and_blowup_and_their_twins() -> None:
    ref = cross_entropy(np.array([[0.0, 1.0]]), np.array([[0.0, 1.0]]))
    loss = ref.loss.copy()
    assert _graded(loss, [[np.inf, 0.0]]).flags() == ("grad-inf",)
    assert _graded(loss, [[25.0, -25.0]]).flags() == ("grad-blowup",)  # 25 > 10 * max(1, 1)
    assert _graded(loss, ref.grad).flags() == ()
    # 9 times the bound is wrong but not a blow-up: it is reported as grad-wrong.
    assert _graded(loss, [[9.0, -9.0]]).flags() == ("grad-wrong",)


def test_grade_forgives_differences_below_the_smallest_normal() -> None:
    # TensorFlow flushes subnormals to zero: a loss of 1e-40 returned as 0 in float32 is fine.
    x = ((92.1, 0.0),)  # exact loss e^-92.1 ~ 1e-40, subnormal in float32
    ref = cross_entropy(np.array(x), np.array([[1.0, 0.0]]))
    g = _graded([0.0], [[0.0, 0.0]], x=x, y=((1.0, 0.0),))
    assert ref.loss[0] < FORMATS["float32"].tiny and g.flags() == ()
    assert g.ulps_err[0] == 0.0


def test_downcast_allowance_keeps_keras_float64_rounding_from_reading_as_divergent() -> None:
    # Logits near 1000 a few units apart, in float64 values that float32 cannot hold: Keras
    # rounds them to float32 (spacing 6e-5 at 1000), which moves a loss of order 1 by up to
    # ~1e-4, far more than 8 eps32 = 9.5e-7. That shift is the narrowing's doing, reported as
    # `downcast`, and allowed for by u32 * 2 * max|x| (README); the formula itself is fine.
    rng = np.random.default_rng(11)
    x = 1000 + rng.normal(0, 1, size=(16, 8)) + 1e-9
    a = audit(x, rng.integers(0, 8, 16), impls=["keras_cce_logits"], dtypes=["float64"])
    for r in a.results:
        assert "downcast" in r.flags and "divergent" not in r.flags, r.flags
        assert r.max_rel_err > 8 * np.finfo(np.float32).eps  # the allowance is what saves it


# --- tolerances that know the vocabulary size ------------------------------------------------
# Random rows (standard normal x 3, random labels), as a language model's logits look: the
# rounding of a C-term float32 sum enters every softmax entry, which the (8 + ceil(log2 C)) eps
# gradient tolerance allows for. Every correct implementation passes at every size, both modes.
CORRECT = (
    "naive",
    "shifted",
    "log_softmax",
    "tf_softmax_xent",
    "tf_sparse_softmax_xent",
    "keras_cce_logits",
    "keras_cce_softmax_layer",
    "keras_scce_logits",
)


@pytest.mark.parametrize(("classes", "rows"), [(3, 512), (1000, 96), (32000, 24), (256000, 4)])
def test_correct_implementations_pass_on_random_rows_of_any_vocabulary(classes, rows) -> None:
    rng = np.random.default_rng(classes)
    x = (rng.standard_normal((rows, classes)) * 3).astype(np.float32)
    a = audit(x, rng.integers(0, classes, rows), impls=CORRECT, dtypes=["float32", "float64"])
    for r in a.results:  # informational flags (zero-loss, Keras' float64 downcast) aside
        assert not [f for f in r.flags if FLAGS[f].failing], (r.impl, r.dtype, r.mode, r.flags)


@pytest.mark.parametrize("classes", [4096, 16384])
def test_a_float16_sum_over_a_large_vocabulary_is_still_flagged(classes) -> None:
    # The autodiff of x - max(x) sends the rounding error of the float16 sum of C softmax
    # entries (exactly 0 in exact arithmetic) to the argmax entry. At scale 0.1 every entry is
    # about 1/C (2.4e-4, 6e-5), at or below half the float16 spacing of partial sums near 1/2
    # and 1/4, so each addition loses a large part of it or all of it: an error of 0.1 to 1,
    # far past (8 + k) eps16 = 0.02. The fused op sums in float32 and passes.
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, classes)) * 0.1
    a = audit(x, rng.integers(0, classes, 4), impls=["shifted", "tf_softmax_xent"],
              dtypes=["float16"], modes=["eager"])  # fmt: skip
    shifted, fused = a.results
    # coarse-mean (informational) may join: a float16 mean is coarser than float32's tolerance
    assert [f for f in shifted.flags if f != "coarse-mean"] == ["grad-wrong"]
    assert shifted.grad_max_abs_err > 4 * (8 + math.ceil(math.log2(classes))) * 2.0**-10
    assert not [f for f in fused.flags if f not in ("zero-loss", "coarse-mean")], fused.flags


# --- masked logits (-inf) ----------------------------------------------------------------------
# Row 0 masks a class off the label, row 1 puts the label on the masked class (exact loss +inf),
# row 2 has no mask. What each implementation does follows from its formula:
# * dense formulas -sum_j y_j log p_j (or y_j * log-softmax_j), fused ops included, multiply the
#   masked class's y_j = 0 by log p_j = -inf: 0 * -inf = NaN on row 0; on row 1 the label's
#   y = 1 times -inf gives +inf, which is right;
# * sparse formulas read only the label's log-probability: right on every row;
# * clipping formulas (Keras' clip to [eps, 1 - eps]) read -ln(eps) on row 1, a finite loss
#   where the exact one is infinite (divergent), and the clip's zero derivative kills the
#   gradient there (grad-vanish); Keras in float32 inside tf.function recovers the logits and
#   uses the dense fused op instead;
# * naive and shifted differentiate through log(p) at p = 0: 0 * (1/0) = NaN in the gradient;
# * double_softmax treats the probabilities as logits: finite and wrong everywhere masked.
# In torch and JAX the same formulas do the same, with two differences of mechanism:
# * torch's F.cross_entropy takes class indices for class labels (sparse), as does optax's
#   integer-label loss; torch_autocast_bf16 is F.cross_entropy on bfloat16 logits (sparse too);
#   optax.safe_softmax_cross_entropy takes 0 log 0 as 0 (right on every row);
# * under jax.jit, a one-hot built inside the computation may let XLA fold the dense sum into
#   the label's term (it does in float32, not in bfloat16 here): the dense formula then reads
#   row 0 as the sparse one does, either way the flag matches the loss returned, and the
#   gradient of log(softmax) still multiplies 0 by 1/0 on row 0.
# Four classes, as the zoo tests' rows (factories.ZOO_X): torch.compile and JAX reuse the graphs
# compiled for one shape class, so the suite compiles each implementation's once.
MASKED = np.array([[0.0, -np.inf, 1.0, -1.0], [0.0, -np.inf, 1.0, -1.0], [0.5, -0.25, 1.0, -1.0]])
MASKED_LABELS = np.array([2, 1, 0])
DENSE = ("log_softmax", "tf_softmax_xent", "keras_cce_logits", "keras_cce_softmax_layer")
SPARSE = ("tf_sparse_softmax_xent", "keras_scce_logits")
SPARSE += ("torch_cross_entropy", "torch_log_softmax_nll", "torch_autocast_bf16")
SPARSE += ("optax_softmax_xent_int", "optax_safe_softmax_xent")
JAX_DENSE = ("optax_softmax_xent", "jax_log_softmax")


def _expected_masked(impl: str, dtype: str, mode: str, row0: float) -> list[tuple[str, ...]]:
    """The flags of each row; ``row0``: the loss returned on row 0, which tells whether XLA
    folded a jitted dense sum (a finite loss) or not (NaN)."""
    recovered = impl == "keras_cce_probs" and dtype == "float32" and mode == "graph"
    folded = mode == "graph" and not math.isnan(row0)
    if impl in SPARSE or (impl in JAX_DENSE and folded):
        return [(), (), ()]
    if impl == "jax_softmax_log" and folded:
        return [("grad-nan",), ("grad-nan",), ()]
    if impl in DENSE or impl in JAX_DENSE or recovered:
        return [("nan",), (), ()]
    if impl in ("naive", "shifted", "torch_softmax_log", "jax_softmax_log"):
        return [("nan", "grad-nan"), ("grad-nan",), ()]
    if impl in ("clipped", "keras_cce_probs"):
        return [(), ("divergent", "grad-vanish"), ()]
    raise AssertionError(impl)


@pytest.mark.parametrize("dtype", ALL)
def test_masked_logits_are_audited_in_every_dtype_with_flags_from_each_formula(dtype) -> None:
    a = audit(MASKED, MASKED_LABELS, impls=["all"], dtypes=[dtype])
    assert not a.skipped  # -inf is not an overflow: nothing is skipped
    assert len(a.results) == 2 * 20  # 11 TensorFlow, 4 torch and 5 JAX implementations
    for r in a.results:
        assert math.isinf(r.reference_rows[1]) and r.reference_rows[1] > 0
        if r.impl == "double_softmax":
            assert "divergent" in r.row_flags[0] and "divergent" in r.row_flags[1]
            continue
        want = _expected_masked(r.impl, dtype, r.mode, r.loss_rows[0])
        assert list(r.row_flags) == want, (r.impl, r.mode)
        if r.impl in SPARSE:
            assert r.loss_rows[1] == math.inf


def test_a_finite_loss_where_the_exact_loss_is_infinite_is_infinitely_wrong() -> None:
    a = audit(MASKED[1:2], MASKED_LABELS[1:2], impls=["clipped"], modes=["eager"])
    (r,) = a.results
    assert r.loss == pytest.approx(-math.log(1e-7), rel=1e-6)  # float32 clip
    assert r.flags == ("divergent", "grad-vanish") and r.max_rel_err == math.inf


def test_clipped_at_several_eps_is_told_apart_in_the_table_and_verdict() -> None:
    from xentaudit.report import table

    a = audit(SEED * 10, SEED_LABELS, impls=["clipped"], eps=[1e-7, 1e-30], modes=["eager"])
    assert [r.eps for r in a.results] == [1e-7, 1e-30]
    v = a.verdict()
    assert [(f.impl, f.eps) for f in v.failing] == [("clipped", 1e-7)]  # 1e-30 clips nothing
    text = table.render(a, title="t")
    assert "clipped eps=1e-07" in text and "clipped eps=1e-30" in text


def test_an_array_changed_in_place_between_audits_is_audited_anew() -> None:
    """TensorFlow's runs share one batch's tensors (``Rounded.tensors``), never a later
    batch's: the same array, changed in place, is copied again."""
    x = np.array([[0.0, 1.0, 2.0]], dtype=np.float32)
    y = np.array([2])
    options = {"impls": ["tf_softmax_xent", "log_softmax"], "modes": ["eager"]}
    audit(x, y, dtypes=["float32"], **options)
    x[0] = [2.0, 1.0, 0.0]
    again = audit(x, y, dtypes=["float32"], **options)
    exact = math.log(math.exp(2) + math.exp(1) + 1) - 0.0  # LSE(x) - x_2, closed form
    for result in again.results:
        # float32: a few roundings in exp, sum and log, 8 eps of the loss is ample
        assert result.loss_rows[0] == pytest.approx(exact, rel=8 * 2.0**-23)


@pytest.mark.parametrize(
    ("entry", "option"),
    [
        (lambda **kw: audit([[1.0, 2.0]], [0], **kw), "modes"),
        (lambda **kw: audit([[1.0, 2.0]], [0], **kw), "dtypes"),
        (lambda **kw: audit([[1.0, 2.0]], [0], **kw), "policies"),
        (lambda **kw: audit([[1.0, 2.0]], [0], **kw), "backends"),
        (lambda **kw: audit([[1.0, 2.0]], [0], **kw), "impls"),
        (lambda **kw: sweep(**kw), "patterns"),
        (lambda **kw: sweep(**kw), "dtypes"),
        (lambda **kw: sweep(**kw), "impls"),
        (lambda **kw: check_file(SEED_FILE, **kw), "modes"),
        (lambda **kw: check_file(SEED_FILE, **kw), "dtypes"),
        (lambda **kw: check_file(SEED_FILE, **kw), "policies"),
        (lambda **kw: check_file(SEED_FILE, **kw), "backends"),
        (lambda **kw: check_file(SEED_FILE, **kw), "impls"),
    ],
)
def test_an_empty_list_option_is_refused_not_run_as_nothing_that_passes(entry, option) -> None:
    with pytest.raises(ConfigError, match=rf"^{option}=\[\] names nothing to run; name one"):
        entry(**{option: []})


def test_none_is_an_options_default_not_nothing() -> None:
    # `names_given(x) or ()` once ran nothing for None, and passed
    given = audit([[1.0, 2.0]], [0], impls=["naive"], modes=None, dtypes=None, policies=None)
    default = audit([[1.0, 2.0]], [0], impls=["naive"])
    runs = [(r.impl, r.dtype, r.mode, r.policy) for r in default.results]
    assert [(r.impl, r.dtype, r.mode, r.policy) for r in given.results] == runs
    assert runs == [
        ("naive", "float32", "eager", "float32"),
        ("naive", "float32", "graph", "float32"),
    ]
    options = {"impls": ["naive"], "scales": [1.0], "modes": ["eager"]}
    swept = sweep(dtypes=None, patterns=None, policies=None, **options)
    default_sweep = sweep(**options)
    cells = {(c.dtype, c.pattern) for c in default_sweep.cells}
    assert {(c.dtype, c.pattern) for c in swept.cells} == cells
    assert {d for d, _ in cells} == {"float16", "bfloat16", "float32", "float64"}
    assert [r.mode for r in check_file(SEED_FILE, impls=["naive"], modes=None).results] == [
        "eager",
        "graph",
    ]


def test_a_progress_that_cannot_be_called_is_refused_before_any_work() -> None:
    # it was a TypeError from inside the run, after the frameworks were loaded
    for run in (lambda **kw: sweep(**kw), lambda **kw: check_file(SEED_FILE, **kw)):
        with pytest.raises(
            ConfigError, match=r"^progress must be a function taking \(done, total\), got a list$"
        ):
            run(impls=["naive"], progress=[])
    with pytest.raises(ConfigError, match=r"^on_flagged_row must be a function taking a Flagged"):
        check_file(SEED_FILE, impls=["naive"], on_flagged_row="rows.csv")


def test_names_that_are_not_strings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"^modes must be names \(strings\), got \[None\]$"):
        audit([[1.0, 2.0]], [0], impls=["naive"], modes=[None])


def test_modes_take_a_comma_list_and_all() -> None:
    result = audit([[1.0, 2.0]], [0], impls=["naive"], modes="graph,eager")
    assert [r.mode for r in result.results] == ["graph", "eager"]
    result = audit([[1.0, 2.0]], [0], impls=["naive"], modes=["all"])
    assert [r.mode for r in result.results] == ["eager", "graph"]


def test_a_string_option_is_one_comma_list_not_its_characters() -> None:
    result = audit([[1.0, 2.0]], [0], impls="naive", dtypes="float32,float64", modes="eager")
    assert [(r.impl, r.dtype, r.mode) for r in result.results] == [
        ("naive", "float32", "eager"),
        ("naive", "float64", "eager"),
    ]


def test_an_audit_where_nothing_could_run_is_refused_not_passed() -> None:
    # 1e6 overflows float16, the only dtype asked for: every run skipped, nothing graded
    with pytest.raises(InputError, match=r"^nothing could be audited \(naive in float16: logits"):
        audit([[1e6, 1.0]], [0], impls=["naive"], dtypes=["float16"], modes=["eager"])
    with pytest.raises(InputError, match=r"needs one-hot or integer labels\); pick"):
        audit([[1.0, 2.0]], [[0.5, 0.5]], impls=["tf_sparse_softmax_xent"], modes=["eager"])


def test_a_sweep_where_nothing_could_run_is_refused_not_passed() -> None:
    # torch has no focal implementation: nothing to run, which once swept nothing and passed
    with pytest.raises(ConfigError, match=r"^no implementation to run"):
        sweep(loss="focal", backends="torch", scales=[1.0])
    with pytest.raises(ConfigError, match=r"^modes must be names \(strings\), got \[5\]$"):
        sweep(modes=5)
    # every scale overflows the only dtype: every cell skipped
    with pytest.raises(
        InputError, match=r"^nothing could be audited \(all in float16: .* overflows"
    ):
        sweep(scales=[1e6], dtypes="float16", impls=["naive"], modes=["eager"])


def test_no_implementation_names_the_backend_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from xentaudit import impls as zoo

    monkeypatch.setattr(zoo, "missing_backends", lambda wanted: ("torch",))
    monkeypatch.setattr(zoo, "parse_impls", lambda *args: ())
    with pytest.raises(ConfigError, match=r"^no implementation to run: the torch backend is not "):
        sweep(backends="torch", scales=[1.0])
    # torch has no focal loss: installing it would not help
    with pytest.raises(ConfigError, match=r"^no implementation to run: --impl, --backend, --loss"):
        sweep(backends="torch", scales=[1.0], loss="focal")


def test_a_repeated_eps_runs_once() -> None:
    # a sweep of --eps X --eps X had two identical breaking points, which a baseline mistook
    assert eps_values([1e-7, 1e-3, 1e-7]) == (1e-7, 1e-3)


def test_two_eps_that_read_the_same_are_refused() -> None:
    # reports name a clip to 6 significant digits: 1e-7 and 1.0000001e-7 were two results named
    # "clipped eps=1e-07" (JUnit crashed on the swap, a baseline's regression marked both)
    with pytest.raises(ConfigError, match=r"^--eps 1e-07 and 1.0000001e-07 read the same"):
        eps_values([1e-7, 1.0000001e-7])
    assert eps_values([1e-7, 1.00001e-7]) == (1e-7, 1.00001e-7)  # 1.00001e-07 reads apart
    # a NaN (never equal to itself) is no collision: the range checks name what is wrong with it
    (nan,) = eps_values([float("nan")])
    assert nan != nan


def test_nothing_audited_names_a_run_not_a_backend_missing() -> None:
    missing = Skipped("torch", "all", "the torch backend is not installed; install it with: ...")
    labels = Skipped("tf_sparse_softmax_xent", "float32", "needs one-hot or integer labels")
    message = str(nothing_audited([missing, labels]))
    assert message.startswith("nothing could be audited (tf_sparse_softmax_xent in float32: ")
    assert str(nothing_audited([missing])).startswith("nothing could be audited (torch in all: ")


def test_a_check_where_nothing_could_run_is_refused_not_passed(tmp_path: Path) -> None:
    # soft labels, which the only implementation asked for cannot take: every run skipped
    np.save(tmp_path / "x.npy", np.array([[1.0, 2.0]]))
    soft = np.array([[0.5, 0.5]])
    with pytest.raises(InputError, match=r"^nothing could be audited \(tf_sparse_softmax_xent"):
        check_file(
            tmp_path / "x.npy", labels=soft, impls=["tf_sparse_softmax_xent"], modes=["eager"]
        )


def test_eps_is_any_real_number_and_a_string_is_refused() -> None:
    # a numpy scalar was "not iterable"; a string was read character by character
    result = audit([[1.0, 2.0]], [0], impls=["clipped"], modes=["eager"], eps=np.float32(1e-3))
    assert [r.eps for r in result.results] == [float(np.float32(1e-3))]
    with pytest.raises(ConfigError, match=r"^--eps must be a number or a list of numbers"):
        audit([[1.0, 2.0]], [0], impls=["clipped"], eps="1e-7")
