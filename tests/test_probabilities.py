"""`check --input probabilities|log-probabilities`: a file of softmax outputs is graded through
the implementations that take probabilities, against the exact loss of the given p; rows whose
label got probability 0 are flagged. Expected values are mpmath (50 digits) or closed forms
computed here."""

from __future__ import annotations

import json
from pathlib import Path

import mpmath
import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit.check import check_file
from xentaudit.cli import cli
from xentaudit.impls.tf_zoo import to_logits_gradient

mpmath.mp.dps = 50
EPS32 = float(np.float32(1e-7))  # Keras' epsilon as its float32 clip sees it
TINY = 2.0**-30  # a label probability far below the clip (9.3e-10 < 1e-7)


def _exact(p: np.ndarray, label: int) -> float:
    """-log(p_label / sum p): the cross-entropy of the renormalised distribution."""
    row = [mpmath.mpf(float(v)) for v in p]
    return float(-mpmath.log(row[label] / mpmath.fsum(row)))


def _rows() -> tuple[np.ndarray, np.ndarray]:
    """float32 probabilities, exactly representable: rows whose label sits above the clip, and
    rows whose label sits below it (TINY)."""
    above = np.array(
        [[0.5, 0.25, 0.25], [0.125, 0.75, 0.125], [0.5, 0.5 - 2**-9, 2**-9]], np.float32
    )
    below = np.array([[1 - 2**-23, 2**-23 - TINY, TINY], [0.5 - TINY, 0.5, TINY]], np.float32)
    p = np.concatenate([above, below])
    return p, np.array([0, 1, 1, 2, 2])


def _check(tmp_path: Path, p: np.ndarray, y: np.ndarray, *args: str):
    np.savez(tmp_path / "p.npz", logits=p, labels=y)
    return CliRunner().invoke(
        cli,
        ["check", str(tmp_path / "p.npz"), "--mode", "eager", "--format", "json", *args],
    )


def test_the_clip_is_counted_on_the_rows_below_it(tmp_path: Path) -> None:
    p, y = _rows()
    result = _check(tmp_path, p, y, "--input", "probabilities")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output)
    assert doc["input"] == "probabilities" and doc["lint"] == {}
    results = {r["impl"]: r for r in doc["results"]}
    assert set(results) == {"naive", "clipped", "keras_cce_probs"}  # what takes probabilities
    below = int(np.sum(p[np.arange(len(y)), y] < EPS32))  # 2: the rows made so
    for name in ("clipped", "keras_cce_probs"):
        # The clip caps the loss at -log(eps) (16.1) and zeroes the gradient there.
        assert results[name]["flag_counts"] == {"divergent": below, "grad-vanish": below}
        worst = {w["row"]: w for w in results[name]["worst_rows"]}
        for row in (3, 4):
            # float64 reference: within 2^-50 relative of mpmath's (a few float64 ulps).
            assert abs(worst[row]["exact"] - _exact(p[row], y[row])) <= 2**-50 * 21
            # Keras's loss is -log of the float32 clip, computed in float32: 1 ulp of 16.1.
            assert abs(worst[row]["loss"] + np.log(EPS32)) <= 2**-19
    assert results["naive"]["flags"] == []  # -sum y log p of these p is exact enough
    want = np.mean([_exact(p[i], y[i]) for i in range(len(y))])
    assert abs(results["naive"]["exact_mean"] - want) <= 2**-48 * want


def test_keras_renormalisation_is_the_reference(tmp_path: Path) -> None:
    """A row summing to 1/2: Keras divides by the sum, so its loss is -log(1/4 / 1/2) = log 2;
    -log p without renormalising is log 4, off by log 2."""
    p = np.array([[0.25, 0.125, 0.125], [0.5, 0.25, 0.25]], np.float32)
    result = _check(
        tmp_path,
        p,
        np.array([0, 0]),
        "--input",
        "probabilities",
        "--impl",
        "keras_cce_probs",
        "--impl",
        "naive",
    )
    doc = json.loads(result.output)
    results = {r["impl"]: r for r in doc["results"]}
    # mean of log 2 (row 0) and log 2 (row 1): exact to float64 rounding
    assert abs(results["keras_cce_probs"]["exact_mean"] - np.log(2)) <= 2**-50
    assert results["keras_cce_probs"]["flags"] == []
    # row 0 only: log 4 for log 2
    assert results["naive"]["flag_counts"]["divergent"] == 1, results["naive"]


def test_a_zero_label_probability_is_flagged_and_fails(tmp_path: Path) -> None:
    p = np.array([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [1.0, 0.0, 0.0]], np.float32)
    y = np.array([2, 0, 1])  # rows 0 and 2 give their label probability 0
    result = _check(tmp_path, p, y, "--input", "probabilities", "--impl", "keras_cce_probs")
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["lint"] == {"zero-label-prob": 2}
    assert "zero-label-prob" in doc["verdict"]["failing_lint"]
    # The same rows as log-probabilities: -inf for the label.
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    result = _check(tmp_path, log_p, y, "--input", "log-probabilities", "--impl", "log_softmax")
    assert json.loads(result.output)["lint"] == {"zero-label-prob": 2}
    # Without labels, the worst-case class of a row holding a 0 has probability 0.
    np.save(tmp_path / "p.npy", p)
    check = check_file(
        tmp_path / "p.npy", input_kind="probabilities", impls=["naive"], modes=["eager"]
    )
    assert check.lint == {"zero-label-prob": 2}


def test_log_probabilities_are_audited_as_logits_without_the_lint(tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((8, 5)) * 4
    log_p = (x - np.log(np.exp(x).sum(axis=1, keepdims=True))).astype(np.float32)
    y = np.arange(8) % 5
    plain = _check(tmp_path, log_p, y, "--impl", "log_softmax")
    assert plain.exit_code == 1 and "looks-like-logprobs" in json.loads(plain.output)["lint"]
    declared = _check(tmp_path, log_p, y, "--impl", "log_softmax", "--input", "log-probabilities")
    assert declared.exit_code == 0, declared.output
    doc = json.loads(declared.output)
    assert doc["lint"] == {} and doc["input"] == "log-probabilities"


def test_the_logit_gradient_of_minus_log_p_is_q_minus_y() -> None:
    """Autodiff of -sum y log p gives -y / p; through p = s softmax(z) that is B q - y exactly
    (B = sum y), whatever the sum s of p."""
    p = np.array([[0.5, 0.25, 0.25], [0.1, 0.2, 0.3]], np.float64)  # row 1 sums to 0.6
    y = np.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    got = to_logits_gradient(p, -y / p)
    q = p / p.sum(axis=1, keepdims=True)
    # a few float64 roundings on numbers of size <= 1: 2^-50 absolute
    np.testing.assert_allclose(got, q * y.sum(axis=1, keepdims=True) - y, rtol=0, atol=2**-50)


def test_a_zero_probability_beside_the_label_is_nan_for_minus_y_log_p(tmp_path: Path) -> None:
    """-sum y log p with one-hot y computes 0 * log 0 = 0 * -inf = NaN where another class has
    probability 0: the hand-written loss really returns NaN there, and the flag says so."""
    p = np.array([[0.5, 0.5, 0.0]], np.float32)
    result = _check(tmp_path, p, np.array([0]), "--input", "probabilities", "--impl", "naive")
    doc = json.loads(result.output)
    assert doc["results"][0]["flags"] == ["nan", "grad-nan"] and doc["lint"] == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--input", "probabilities", "--impl", "log_softmax"), "log_softmax takes logits"),
        (("--input", "probabilities", "--model", "m.keras"), "cannot go with --model"),
        (("--input", "probabilities"), "values outside [0, 1] in row 1"),
        (("--input", "odds"), "Invalid value for '--input'"),
        (("--input", "log-probabilities"), "values above 0 in rows 0, 1 are not log-probabilities"),
        (("--input", "probabilities", "--policy", "mixed_float16"), "leave --policy out"),
        (("--input", "probabilities", "--backend", "torch"), "no implementation to run"),
    ],
)
def test_what_cannot_be_probabilities_is_a_one_line_error(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    p = np.array([[0.5, 0.5], [1.5, -0.5]], np.float32)
    np.save(tmp_path / "p.npy", p)
    model = tmp_path / "m.keras"
    model.write_bytes(b"")
    args = tuple(str(model) if a == "m.keras" else a for a in args)
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "p.npy"), *args])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_users_loss_on_probabilities_is_refused_without_importing_it(tmp_path: Path) -> None:
    # a user's loss takes logits: refused as one, not imported to find out
    (tmp_path / "boom.py").write_text("raise RuntimeError('boom at import')\n")
    np.save(tmp_path / "p.npy", np.full((2, 4), 0.25, np.float32))
    with pytest.raises(Exception, match="takes logits, not probabilities") as refused:
        check_file(
            tmp_path / "p.npy", input_kind="probabilities", impls=[f"tf:{tmp_path}/boom.py:fn"]
        )
    assert "RuntimeError" not in str(refused.value)
