"""`lint --explain`: the breaking points it prints are the engine's, computed when asked (pinned
here by closed forms), and a rule whose framework is not installed is explained through the
TensorFlow implementation of the same formula."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit import impls as zoo
from xentaudit.cli import cli
from xentaudit.lint.explain import explain, stand_ins
from xentaudit.lint.rules import RULES


@pytest.fixture
def tensorflow_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zoo, "installed", lambda backend: backend == "tensorflow")


def test_stand_ins_follow_the_formula_when_a_backend_is_missing(tensorflow_only) -> None:
    assert stand_ins("XA101") == {"shifted": ["torch_softmax_log", "jax_softmax_log"]}
    assert stand_ins("XA102") == {"double_softmax": []}
    assert all(stand_ins(code) for code in RULES)  # every rule can be explained with TF alone


def row(text: str, impl: str, dtype: str) -> list[str]:
    line = next(line for line in text.splitlines() if re.match(rf"\s+{impl}\s+{dtype}\s", line))
    return re.split(r"\s{2,}", line.strip())


def test_log_of_softmax_breaks_where_exp_underflows(tensorflow_only) -> None:
    """Row [-1, 2, 5] * s, label 1: log(softmax) is 0 * log(0) = NaN once exp(-6 s) rounds
    to 0 in float32, below the smallest normal number if TensorFlow flushes subnormals, else
    below half the smallest subnormal: s = -log(tiny) / 6, printed to 4 digits rounded up (at
    or above it, within the search's 5e-4 and a unit of the fourth digit)."""
    text = explain("XA101")
    assert "shifted: naive, after subtracting the row max (standing in for " in text
    flushes = zoo.load_backend("tensorflow").flushes_subnormals()
    f32 = np.finfo(np.float32)
    tiny = float(f32.tiny) if flushes else float(f32.smallest_subnormal) / 2
    expected = -math.log(tiny) / 6
    _, _, loss, grad = row(text, "shifted", "float32")
    assert loss.endswith(" (nan)") and grad.endswith(" (grad-nan)")
    for printed in (loss, grad):
        assert expected <= float(printed.split()[0]) <= expected * (1 + 1.5e-3), printed
    assert "Fix (--fix applies it)" in text


def test_double_softmax_is_wrong_from_the_start() -> None:
    result = CliRunner().invoke(cli, ["lint", "--explain", "xa102"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("XA102 double-softmax\n")
    for dtype in zoo.FORMATS:
        _, _, loss, grad = row(result.stdout, "double_softmax", dtype)
        assert (loss, grad) == ("<= 1 (divergent)", "<= 1 (grad-vanish)")
    assert "Fix (suggested only: it changes what the code computes)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--explain", "XA999"], "unknown rule 'XA999'"),
        (["--explain", "XA101", "train.py"], "--explain takes a rule code alone"),
    ],
)
def test_explain_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["lint", *args], catch_exceptions=False)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("xentaudit: error: ") and message in result.stderr


def test_log_of_sigmoid_turns_nan_where_the_sigmoid_rounds_to_1() -> None:
    """The multilabel pattern's row 1 gives label 0 to the logit 3 s: log(1 - sigmoid(3 s)) is
    log 0 once float32's 1 + e^(-3 s) rounds to 1, i.e. e^(-3 s) <= 2^-24 (the half spacing
    above 1, a tie rounding to even): s = 24 ln 2 / 3, where the gradient turns NaN."""
    text = explain("XA107")
    assert text.startswith("XA107 log-of-sigmoid\n")
    _, _, _, grad = row(text, "naive_sigmoid", "float32")
    expected = 24 * math.log(2) / 3  # printed to 4 digits rounded up: at or above it
    assert grad.endswith(" (grad-nan)")
    assert expected <= float(grad.split()[0]) <= expected * (1 + 1.5e-3), grad
    assert "Fix (suggested only: it changes what the code computes)" in text
