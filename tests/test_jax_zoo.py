"""The JAX and optax implementations against mpmath: each one in every dtype, op by op and
jitted, with hard and soft labels; loss scaling; x64 scoped to float64 runs; XLA's flushed
subnormals; users' losses.

Tolerances, with eps the machine epsilon of the dtype (2^-52, 2^-23, 2^-10, 2^-7): the logits
below are multiples of 1/4 in [-2, 3], exact in every dtype, C = 4 classes, so every
probability is at least e^-5 / 4 and the losses are below 5. A loss is a sum of at most C + 4
roundings of at most eps/2 (C in exp and the sum, one each in log, the shift, the label's term
and the output) on quantities at most 2 max(1, |L|) (|log sum| <= |L| + log C): 8 eps
max(1, |L|). A gradient entry p_j sum(y) - y_j has the error of p_j (C + 2 roundings) and of
its own subtraction, on quantities at most 1, or, through log(p), eps (1 + p_j) from -1/p_j
times p_j: 8 eps absolutely.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from factories import (
    ZOO_CLASSES,
    ZOO_DTYPES,
    ZOO_EPS,
    ZOO_SOFT,
    ZOO_X,
    mpmath_exact,
)

jax = pytest.importorskip("jax")
pytest.importorskip("optax")

from xentaudit.errors import ImplementationError  # noqa: E402
from xentaudit.impls import REGISTRY, get_impl, jax_zoo  # noqa: E402

DTYPES, EPS, X, CLASSES, SOFT = ZOO_DTYPES, ZOO_EPS, ZOO_X, ZOO_CLASSES, ZOO_SOFT
HARD_ONLY = {"optax_softmax_xent_int"}
exact = mpmath_exact


CASES = [
    (name, dtype, mode, soft)
    for name in jax_zoo.IMPLS
    if REGISTRY[name].loss == "softmax"  # the sigmoid ones: tests/test_sigmoid.py
    for dtype in DTYPES
    for mode in ("eager", "graph")
    for soft in (False, True)
    if not (soft and name in HARD_ONLY)
]


@pytest.mark.parametrize(("name", "dtype", "mode", "soft"), CASES)
def test_each_implementation_matches_mpmath(name: str, dtype: str, mode: str, soft: bool) -> None:
    x = X.astype(DTYPES[dtype])
    y = SOFT if soft else np.eye(4)[CLASSES]
    out = jax_zoo.run(name, 0.0, mode, x, SOFT.astype(x.dtype) if soft else None, CLASSES)
    loss, grad = exact(X, y)
    assert out.output_dtype == dtype
    assert out.grad.dtype == (np.float64 if dtype == "float64" else np.float32)
    assert out.loss.dtype == np.float64 and out.loss.shape == (3,)
    np.testing.assert_array_less(np.abs(out.loss - loss), 8 * EPS[dtype] * np.maximum(1, loss))
    np.testing.assert_array_less(np.abs(out.grad - grad), 8 * EPS[dtype])


@pytest.mark.parametrize("enabled", [False, True])
def test_float64_runs_leave_the_global_x64_flag_alone(enabled: bool) -> None:
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", enabled)
    try:
        for mode in ("eager", "graph"):
            out = jax_zoo.run("jax_log_softmax", 0.0, mode, X, None, CLASSES)
            assert out.output_dtype == "float64" and out.grad.dtype == np.float64
            assert jax.config.jax_enable_x64 is enabled
            # A float32 run after it is float32, whatever the flag.
            out = jax_zoo.run("jax_log_softmax", 0.0, mode, X.astype(np.float32), None, CLASSES)
            assert out.output_dtype == "float32"
    finally:
        jax.config.update("jax_enable_x64", before)
    # Without x64 a float64 array would silently become float32: the flag is still off here.
    assert jax.numpy.asarray(X).dtype == (np.float64 if before else np.float32)


FLOAT16_MAX = 65504.0  # (2 - 2^-10) 2^15; float16 rounds to inf from 65520 on


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_a_float16_loss_cannot_take_a_scale_of_2_16(mode: str) -> None:
    # The float16 loss is cast to float32 and scaled; the backward pass casts the cotangent S
    # back to float16: 2^15 is exact, 2^16 > 65504 rounds to inf, and inf times any nonzero
    # p_j - y_j is an infinite (or, where infinities are added, NaN) gradient.
    x = X.astype(np.float16)
    name = "optax_softmax_xent_int"
    plain = jax_zoo.run(name, 0.0, mode, x, None, CLASSES)
    half = jax_zoo.run(name, 0.0, mode, x, None, CLASSES, loss_scale=2.0**15)
    # A power of two scales every float16 number here exactly (|S g| <= 2^15 < 65504, and
    # |g| >= 1e-3 keeps S g normal), so the unscaled gradient is the same bits.
    np.testing.assert_array_equal(half.grad, plain.grad)
    assert FLOAT16_MAX < 2.0**16
    over = jax_zoo.run(name, 0.0, mode, x, None, CLASSES, loss_scale=2.0**16)
    assert not np.isfinite(over.grad).any()
    np.testing.assert_array_equal(over.loss, plain.loss)


# Row [0, -s], label 0: softmax's small probability is e^-s / (1 + e^-s), which rounds to e^-s.
# log(p) is finite while p > 0; once p is 0, 0 * log(0) = 0 * -inf makes the loss NaN. XLA on
# the CPU flushes subnormals: p is lost below the smallest normal 2^-126 (2^-1022), where torch
# keeps it down to the smallest subnormal 2^-149 (2^-1074): between the two, only flushing
# breaks the loss.
FLUSH_AT = {"float32": 126 * math.log(2), "float64": 1022 * math.log(2)}  # 87.34, 708.40
SUBNORMAL_AT = {"float32": 149 * math.log(2), "float64": 1074 * math.log(2)}  # 103.28, 744.44


@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_xla_flushes_subnormal_probabilities_to_nan(mode: str, dtype: str) -> None:
    low, high = FLUSH_AT[dtype], SUBNORMAL_AT[dtype]
    scales = [low - 1, *(low + (high - low) * t for t in (0.1, 0.5, 0.95))]
    x = np.array([[0.0, -s] for s in scales], dtype=dtype)
    # Dense one-hot labels: under jit, a one-hot built from integer classes inside the same
    # computation lets XLA turn the multiply-and-sum into a select, which hides the NaN.
    y = np.eye(2, dtype=dtype)[np.zeros(4, dtype=int)]
    out = jax_zoo.run("jax_softmax_log", 0.0, mode, x, y, None)
    # Below the smallest normal's scale p is normal: the loss log1p(e^-s) < 1e-37 is 0.
    assert out.loss[0] == 0 and np.isfinite(out.grad[0]).all()
    assert np.isnan(out.loss[1:]).all()


def test_optax_safe_softmax_xent_costs_nothing_for_a_masked_class() -> None:
    # Row [0, -inf] with all weight on class 0: p = [1, 0], the exact loss is 0; 0 * log(0)
    # is NaN in -sum(y * log_softmax(x)) and 0 by the convention of the safe form.
    x = np.array([[0.0, -np.inf]], dtype=np.float32)
    y = np.array([[1.0, 0.0]], dtype=np.float32)
    for mode in ("eager", "graph"):
        assert jax_zoo.run("optax_safe_softmax_xent", 0.0, mode, x, y, None).loss[0] == 0
        assert np.isnan(jax_zoo.run("optax_softmax_xent", 0.0, mode, x, y, None).loss[0])


LOSSES = """
import sys
import time

import jax
import numpy as np


def good(labels, logits):
    return -(labels * jax.nn.log_softmax(logits)).sum(-1)


def mean(labels, logits):
    return good(labels, logits).mean()


def raises(labels, logits):
    raise ValueError("bad loss")


def exits(labels, logits):
    sys.exit(0)


def to_numpy(labels, logits):
    return np.asarray(logits).sum(-1)


def spin(labels, logits):
    while True:
        time.sleep(0.01)
"""


@pytest.fixture(scope="module")
def losses(tmp_path_factory) -> str:
    """The users' losses above, as a file: ``path/to/file.py``."""
    path = tmp_path_factory.mktemp("jax_losses") / "jax_zoo_user_losses.py"
    path.write_text(LOSSES)
    return str(path)


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_a_users_loss_runs_with_jax_arrays(losses: str, mode: str) -> None:
    name = get_impl(f"{losses}:good").name
    out = jax_zoo.run(name, 0.0, mode, X.astype(np.float32), None, CLASSES)
    loss, grad = exact(X, np.eye(4)[CLASSES])
    assert out.output_dtype == "float32"
    np.testing.assert_array_less(np.abs(out.loss - loss), 8 * EPS["float32"] * np.maximum(1, loss))
    np.testing.assert_array_less(np.abs(out.grad - grad), 8 * EPS["float32"])


@pytest.mark.parametrize(
    ("fn", "mode", "message"),
    [
        ("mean", "eager", r"returned shape \(\); it must return one loss per row, shape \(3,\)"),
        ("raises", "eager", "the loss raised ValueError: bad loss$"),
        ("raises", "graph", "the loss raised ValueError: bad loss$"),
        ("exits", "eager", r"called sys.exit\(0\); it must return, not end the run"),
        ("exits", "graph", r"called sys.exit\(0\); it must return, not end the run"),
        # Differentiating traces the loss even eagerly: numpy cannot take a traced array.
        ("to_numpy", "eager", "the loss raised TracerArrayConversionError"),
    ],
)
def test_a_users_broken_loss_is_one_error(losses: str, fn: str, mode: str, message: str) -> None:
    name = get_impl(f"{losses}:{fn}").name
    with pytest.raises(ImplementationError, match=f"^--impl {name}: .*{message}"):
        jax_zoo.run(name, 0.0, mode, X.astype(np.float32), None, CLASSES)


def test_a_loss_past_the_timeout_is_one_error(losses: str) -> None:
    name = get_impl(f"{losses}:spin").name
    with pytest.raises(ImplementationError, match=r"\(float32, graph\) ran longer than .* 0.1 s"):
        jax_zoo.run(name, 0.0, "graph", X.astype(np.float32), None, CLASSES, timeout=0.1)


# Chunking (jax_zoo.chunk_rows): every zoo loss runs on chunks of a fixed row count per class
# count, the last one padded with zero-logit rows. XLA on the CPU emits a row reduction
# differently as the batch grows, so a row's bits in a padded chunk need not be its bits in an
# unpadded batch of another size (measured, jax 0.10, 2 cores: 11 rows of 10 classes match in
# batches of up to 64 rows, not of 1024); what chunking guarantees is that they no longer
# depend on the batch: any sub-batch, in any order, gives the same bits as the whole.
CHUNKED = [
    (name, dtype, mode, soft)
    for name in jax_zoo.IMPLS
    if REGISTRY[name].loss == "softmax"  # the sigmoid ones: tests/test_sigmoid.py
    for dtype in ("float32", "bfloat16")
    for mode in ("eager", "graph")
    for soft in (False, True)
    if not (soft and name in HARD_ONLY)
]


def _batch(rows: int, classes: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((rows, classes)) * rng.choice([0.1, 1, 10, 100], (rows, 1))
    soft = rng.dirichlet(np.ones(classes), rows)
    return x.astype(DTYPES[dtype]), soft.astype(DTYPES[dtype]), rng.integers(0, classes, rows)


@pytest.mark.parametrize(("name", "dtype", "mode", "soft"), CHUNKED)
def test_a_rows_result_does_not_depend_on_its_batch(
    name: str, dtype: str, mode: str, soft: bool
) -> None:
    classes = 10
    size = jax_zoo.chunk_rows(classes)
    # Two chunks and a part: the last chunk padded; then sub-batches padded differently.
    x, y, k = _batch(2 * size + 5, classes, dtype)
    whole = jax_zoo.run(name, 0.0, mode, x, y if soft else None, k)
    for rows in (np.arange(3), np.arange(size - 2, size + 3), np.arange(len(x))[::-7]):
        part = jax_zoo.run(name, 0.0, mode, x[rows], y[rows] if soft else None, k[rows])
        np.testing.assert_array_equal(part.loss, whole.loss[rows])
        np.testing.assert_array_equal(part.grad, whole.grad[rows])


@pytest.mark.parametrize(("name", "dtype", "mode", "soft"), CHUNKED)
def test_padding_rows_change_a_row_by_at_most_a_reordered_sum(
    name: str, dtype: str, mode: str, soft: bool
) -> None:
    # Against the same step on the unpadded batch: the padding rows' own results are sliced
    # off and reach no other row; what may differ is the order XLA sums a row's C terms in.
    # Two orders of a sum S of C nonnegative terms differ by at most (C - 1) eps S, which moves
    # log S (the loss, or sum_j y_j log p_j for soft labels) by (C - 1) eps absolutely and each
    # p_j = e_j / S by (C - 1) eps p_j; one more eps for the output rounding: C eps, relative
    # to max(1, |L|) for the loss and absolute for the gradient.
    classes = 10
    x, y, k = _batch(37, classes, dtype)  # padded to chunk_rows(10) rows
    out = jax_zoo.run(name, 0.0, mode, x, y if soft else None, k)
    step = jax_zoo._with_gradient(jax_zoo.loss_fn(name))
    if mode == "graph":
        step = jax.jit(step)
    loss, grad = step(
        jax.numpy.asarray(y) if soft else None,
        jax.numpy.asarray(k, dtype=np.int32),
        jax.numpy.asarray(x),
        1.0,
    )
    tol = classes * EPS[dtype]
    # jax_softmax_log's underflowed probabilities give NaN or infinite entries (0 * log 0,
    # -log 0): in the same places, and equal.
    for got, want, scale in (
        (out.loss, np.asarray(loss, dtype=np.float64), np.maximum(1, np.abs(out.loss))),
        (out.grad, np.asarray(grad, dtype=np.float32), 1.0),
    ):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        ok = np.isfinite(want)
        np.testing.assert_array_equal(got[~ok], want[~ok])
        with np.errstate(invalid="ignore"):  # inf - inf where not ok
            err = np.abs(got - want)
        assert (err[ok] <= (tol * np.broadcast_to(scale, got.shape))[ok]).all()
