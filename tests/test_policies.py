"""Keras dtype policies: every Keras implementation runs as the layers and losses of a model
under the policy do. Ground truth is real Keras, built here under
``keras.mixed_precision.set_global_policy`` (restored in ``finally``): a Softmax layer and a
``CategoricalCrossentropy`` whose gradients ``tf.GradientTape`` takes, never numbers copied from
a run of xentaudit."""

from __future__ import annotations

import json
from collections.abc import Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from xentaudit import audit, check_file, sweep
from xentaudit.audit import BLOWUP_FACTOR, VANISH_FRACTION, VANISH_ULPS
from xentaudit.cli import cli
from xentaudit.dtypes import FORMATS
from xentaudit.flags import FAILING, FLAGS
from xentaudit.impls import POLICIES
from xentaudit.report.plain import case_name

ROWS, CLASSES = 64, 10
MIXED = ("mixed_float16", "mixed_bfloat16")


@pytest.fixture(autouse=True)
def global_policy_untouched() -> Iterator[None]:
    """Every test here leaves (and finds) Keras' global policy at float32."""
    assert keras.mixed_precision.global_policy().name == "float32"
    yield
    assert keras.mixed_precision.global_policy().name == "float32"


def confident_rows() -> tuple[np.ndarray, np.ndarray]:
    """The issue's input: 64 rows of standard normal logits x 6, random labels (seeded)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((ROWS, CLASSES)) * 6, rng.integers(0, CLASSES, ROWS)


def keras_model_gradient(policy: str, logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The gradient a model under ``policy`` ending in ``keras.layers.Softmax()`` and compiled
    with ``CategoricalCrossentropy(from_logits=False)`` takes w.r.t. the Softmax's input: the
    gradient of the summed per-row losses, as xentaudit audits it."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = keras.layers.Softmax()
        loss = keras.losses.CategoricalCrossentropy(reduction=None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = tf.constant(logits)
    y = tf.one_hot(classes, CLASSES)
    with tf.GradientTape() as tape:
        tape.watch(x)
        losses = loss(y, layer(x))
    return np.asarray(tape.gradient(losses, x), dtype=np.float64)


def exact_gradient(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """softmax(x) - y in float64 (closed form; max-shifted, so nothing overflows)."""
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True) - np.eye(CLASSES)[classes]


@pytest.mark.parametrize("policy", MIXED)
def test_softmax_layer_under_a_mixed_policy_is_flagged_where_real_keras_breaks(policy: str) -> None:
    logits, classes = confident_rows()
    dtype = POLICIES[policy]
    half = FORMATS[dtype].cast(logits)  # a mixed model's logits arrive in its compute dtype
    real = keras_model_gradient(policy, half, classes)
    exact = exact_gradient(half, classes)
    # What the grading calls NaN and vanished, read off the real gradient (one-hot: B = 1).
    size = np.abs(real).max(axis=1)
    exact_size = np.abs(exact).max(axis=1)
    nan_rows = set(np.flatnonzero(np.isnan(real).any(axis=1)))
    vanished = (exact_size > VANISH_ULPS * FORMATS[dtype].eps) & (
        size <= VANISH_FRACTION * exact_size
    )
    vanish_rows = set(np.flatnonzero(vanished & ~np.isnan(size)))
    assert nan_rows if policy == "mixed_float16" else vanish_rows  # the breakage
    assert (size[~np.isnan(size)] <= BLOWUP_FACTOR).all()  # no other gradient flag applies

    result = audit(
        logits, classes, impls=["keras_cce_softmax_layer"], dtypes=[dtype], policies=[policy]
    )
    assert len(result.results) == 2  # eager and graph: the same computation
    for r in result.results:
        assert r.policy == policy and r.dtype == dtype and r.output_dtype == "float32"
        flagged = {f: {i for i, row in enumerate(r.row_flags) if f in row} for f in FAILING}
        assert flagged["grad-nan"] == nan_rows
        assert flagged["grad-vanish"] == vanish_rows
        assert "half-softmax" in r.flags
        verdict = result.verdict()
        assert verdict.advice["half-softmax"] == FLAGS["half-softmax"].explained
        assert 'Activation("softmax", dtype="float32")' in verdict.advice["half-softmax"].advice
        assert {f.policy for f in verdict.failing} == {policy}


def test_the_runs_gradient_is_real_keras_bit_for_bit() -> None:
    from xentaudit.impls.tf_zoo import run

    logits, classes = confident_rows()
    for policy in POLICIES:
        x = FORMATS[POLICIES[policy]].cast(logits)
        real = keras_model_gradient(policy, x, classes)
        for mode in ("eager", "graph"):
            ours = run("keras_cce_softmax_layer", 1e-7, mode, x, None, classes, policy=policy)
            np.testing.assert_array_equal(ours.grad, real)  # NaN matches NaN


@pytest.mark.parametrize("final", ["activation", "dense"])
def test_the_softmax_layer_stands_for_activation_and_dense_softmax(final: str) -> None:
    """``keras_cce_softmax_layer`` is also what a model ending in ``Activation("softmax")`` or
    in ``Dense(..., activation="softmax")`` computes, bit for bit: both apply
    ``keras.activations.softmax`` in the policy's compute dtype. The Dense here has an identity
    kernel and no bias, so its pre-activation is its input (x @ I is exact in every dtype); its
    input's gradient also passes the matmul's backward (an inf times the kernel's zeros is NaN
    across the row), so for it the losses are compared, and the gradient for Activation."""
    from xentaudit.impls.tf_zoo import run

    logits, classes = confident_rows()
    for policy in POLICIES:
        x = FORMATS[POLICIES[policy]].cast(logits)
        keras.mixed_precision.set_global_policy(policy)
        try:
            if final == "activation":
                layer = keras.layers.Activation("softmax")
            else:
                layer = keras.layers.Dense(
                    CLASSES, activation="softmax", use_bias=False, kernel_initializer="identity"
                )
            loss = keras.losses.CategoricalCrossentropy(reduction=None)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        tx = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(tx)
            losses = loss(tf.one_hot(classes, CLASSES), layer(tx))
        real = np.asarray(tape.gradient(losses, tx), dtype=np.float64)
        ours = run("keras_cce_softmax_layer", 1e-7, "eager", x, None, classes, policy=policy)
        np.testing.assert_array_equal(ours.loss, np.asarray(losses, np.float64))
        if final == "activation":
            np.testing.assert_array_equal(ours.grad, real)  # NaN matches NaN


def test_float32_policy_recovers_the_logits_on_the_same_half_precision_input() -> None:
    logits, classes = confident_rows()
    for dtype in ("float16", "bfloat16"):
        x = FORMATS[dtype].cast(logits)
        real = keras_model_gradient("float32", x, classes)
        assert np.isfinite(real).all()
        result = audit(x, classes, impls=["keras_cce_softmax_layer"], dtypes=[dtype])
        for r in result.results:
            assert r.policy == "float32" and r.output_dtype == "float32"
            assert not any(FLAGS[f].failing for f in r.flags), r.flags
            assert "half-softmax" not in r.flags


def test_policy_does_not_change_implementations_without_keras_layers() -> None:
    logits, classes = confident_rows()
    result = audit(
        logits,
        classes,
        impls=["tf_softmax_xent", "keras_cce_probs"],
        dtypes=["float16"],
        policies=["all"],
        modes=["eager"],
    )
    by_policy = {p: [r for r in result.results if r.policy == p] for p in POLICIES}
    assert [len(v) for v in by_policy.values()] == [2, 2, 2]
    for p in MIXED:
        for ours, base in zip(by_policy[p], by_policy["float32"], strict=True):
            assert ours.loss_rows == base.loss_rows and ours.flags == base.flags


def test_float32_logits_into_a_half_softmax_layer_are_narrowed() -> None:
    # A float32 last Dense followed by a Softmax layer left under the mixed policy.
    logits, classes = confident_rows()
    result = audit(
        logits[:4],
        classes[:4],
        impls=["keras_cce_softmax_layer"],
        policies=["mixed_float16"],
        modes=["eager"],
    )
    (r,) = result.results
    assert r.dtype == "float32" and "downcast" in r.flags


def test_check_audits_the_mixed_policy_of_a_half_precision_file(tmp_path) -> None:
    logits, classes = confident_rows()
    for dtype, policy in (("float16", "mixed_float16"), ("float32", None)):
        path = tmp_path / f"{dtype}.npz"
        np.savez(path, logits=logits[:8].astype(dtype), labels=classes[:8])
        result = check_file(path, impls=["keras_cce_softmax_layer"], modes=["eager"])
        expected = ["float32"] if policy is None else ["float32", policy]
        assert [r.policy for r in result.results] == expected
        assert {r.dtype for r in result.results} == {dtype}
        named = check_file(
            path, impls=["tf_softmax_xent"], modes=["eager"], policies=["mixed_bfloat16"]
        )
        assert [r.policy for r in named.results] == ["mixed_bfloat16"]


def test_check_counts_half_softmax_rows_and_names_the_policy(tmp_path) -> None:
    logits, classes = confident_rows()
    path = tmp_path / "mixed.npz"
    np.savez(path, logits=logits.astype(np.float16), labels=classes)
    result = check_file(path, impls=["keras_cce_softmax_layer"], modes=["graph"])
    base, mixed = result.results
    assert base.policy == "float32" and not base.flags
    failing_rows = ROWS - mixed.error_histogram["0"]  # not a count: at least one row broke
    assert failing_rows > 0 and mixed.flag_counts["half-softmax"] > 0
    assert case_name(mixed) == "keras_cce_softmax_layer float16 [mixed_float16] graph"
    assert case_name(base) == "keras_cce_softmax_layer float16 graph"


def test_sweep_grids_per_policy() -> None:
    result = sweep(
        scales=[1.0, 100.0],
        dtypes=["float16"],
        impls=["keras_cce_softmax_layer"],
        patterns=["dominant"],
        modes=["eager"],
        policies=["float32", "mixed_float16"],
    )
    cells = {(c.policy, c.scale): c.flags for c in result.cells}
    # dominant at 100: [100, 0, 0] with the label on class 1, p = e^-100, far below float16's
    # smallest subnormal: the half Softmax layer rounds it to 0 and the clip decides the loss.
    assert not any(FLAGS[f].failing for f in cells["float32", 100.0])
    assert "half-softmax" in cells["mixed_float16", 100.0]
    points = [p for p in result.breaking_points if p.policy == "mixed_float16"]
    assert points and any(p.scale is not None for p in points)


def test_cli_policy_option() -> None:
    runner = CliRunner()
    bad = runner.invoke(cli, ["compare", "--policy", "mixed_float64"])
    assert bad.exit_code == 2
    assert bad.stderr.count("\n") == 1 and "unknown policy 'mixed_float64'" in bad.stderr
    args = ["compare", "--logits", "[[100, 0, 0]]", "--labels", "[1]", "--dtype", "float16"]
    args += ["--impl", "keras_cce_softmax_layer", "--mode", "eager", "--policy", "all"]
    out = runner.invoke(cli, [*args, "--format", "json"])
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [r["policy"] for r in doc["results"]] == list(POLICIES)
    assert {f["policy"] for f in doc["verdict"]["failing"]} == set(MIXED)
    assert "half-softmax" in doc["verdict"]["advice"]
    table = runner.invoke(cli, args).stdout
    assert "float16 [mixed_float16]" in table and "float16 [mixed_bfloat16]" in table


def test_check_takes_policies_from_the_command_line_or_the_config(tmp_path, monkeypatch) -> None:
    logits, classes = confident_rows()
    np.savez(tmp_path / "x.npz", logits=logits[:4].astype(np.float32), labels=classes[:4])
    (tmp_path / ".git").mkdir()
    (tmp_path / "pyproject.toml").write_text('[tool.xentaudit]\npolicies = ["mixed_bfloat16"]\n')
    monkeypatch.chdir(tmp_path)
    args = ["check", "x.npz", "--impl", "tf_softmax_xent", "--mode", "eager", "--format", "json"]
    runner = CliRunner()
    by_config = json.loads(runner.invoke(cli, args).stdout)
    assert [r["policy"] for r in by_config["results"]] == ["mixed_bfloat16"]
    by_option = json.loads(runner.invoke(cli, [*args, "--policy", "float32"]).stdout)
    assert [r["policy"] for r in by_option["results"]] == ["float32"]


def test_a_mask_hides_no_keras_clip_where_keras_narrows_the_logits() -> None:
    # Keras computes a float64 loss in float32, and its probability loss clips p to 1e-7. A
    # -1e9 mask without label weight moves nothing where it is rounded, so it widens no
    # allowance: the clip is divergent, and the logits loss (honest float32 rounding) is not.
    # Keras' own loss, run here, is the number graded.
    x = np.array([[-1e9, 0.0, -5.0, -50.0]])
    y = np.array([[0.0, 0.0, 0.5, 0.5]])
    own = keras.losses.CategoricalCrossentropy(reduction=None)(y, tf.nn.softmax(x))
    assert own.dtype == tf.float32  # Keras narrows float64
    result = audit(x, y, impls=["keras_cce_probs", "keras_cce_logits"], dtypes=["float64"],
                   modes=["eager"])  # fmt: skip
    by_impl = {r.impl: r for r in result.results}
    probs, logits = by_impl["keras_cce_probs"], by_impl["keras_cce_logits"]
    assert probs.loss_rows[0] == pytest.approx(float(own[0]), rel=1e-6)
    assert probs.loss_rows[0] < 0.5 * 27.5  # the clip: the exact loss is 27.5
    assert "divergent" in probs.flags and "downcast" in probs.flags
    assert [f for f in logits.flags if f in FAILING] == [] and "downcast" in logits.flags
    # the same mask in float32 logits under mixed_float16, where the Softmax layer computes in
    # float16 and -1e9 overflows to -inf: the clip is still divergent
    mixed = audit(x.astype(np.float32), y, impls=["keras_cce_softmax_layer"],
                  policies=["mixed_float16"], modes=["eager"])  # fmt: skip
    (r,) = mixed.results
    assert "divergent" in r.flags and "downcast" in r.flags
