"""`check`'s CI-facing parts: JUnit (parsed as XML), GitHub annotations, the step summary,
[tool.xentaudit] precedence, users' own losses (and through one, that a NaN error is the worst),
and the input lint."""

from __future__ import annotations

import math
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit.check import check_file
from xentaudit.cli import cli

FIXTURES = Path(__file__).parent.parent / "fixtures"
SEED = str(FIXTURES / "seed_scale10.npz")
FAST = ["--impl", "keras_cce_probs", "--impl", "tf_softmax_xent", "--mode", "eager"]


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["check", *args], env=env)


def test_junit_has_one_case_per_result_and_fails_the_clipped_one() -> None:
    result = run(SEED, *FAST, "--format", "junit")
    assert result.exit_code == 1
    root = ET.fromstring(result.stdout)
    suite = root.find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {
        "keras_cce_probs float32 eager",
        "tf_softmax_xent float32 eager",
        "input lint",
    }
    failure = cases["keras_cce_probs float32 eager"].find("failure")
    assert failure.get("type") == "divergent"
    assert "divergent on 1 of 2 rows" in failure.get("message")
    assert "row 1: exact 30" in failure.text
    assert cases["tf_softmax_xent float32 eager"].find("failure") is None
    assert (suite.get("tests"), suite.get("failures")) == ("3", "1")


def test_github_annotations() -> None:
    lines = run(SEED, *FAST, "--format", "github").stdout.splitlines()
    errors = [line for line in lines if line.startswith("::error ")]
    notices = [line for line in lines if line.startswith("::notice ")]
    # one error for the failing result, and the failing verdict last
    assert len(errors) == 2 and "title=xentaudit keras_cce_probs float32 eager::" in errors[0]
    assert "divergent on 1 of 2 rows" in errors[0]
    assert errors[1] == lines[-1] and "title=xentaudit verdict::FAIL: 1 of 2 results" in errors[1]
    # zero-loss is informational: a notice, never an error
    assert notices and all("zero-loss" in line for line in notices)
    passing = run(SEED, *FAST, "--format", "github", "--fail-on", "nan").stdout.splitlines()
    assert not [line for line in passing if line.startswith("::error")]
    assert (
        passing[-1].startswith("::notice file=")
        and "title=xentaudit verdict::PASS: " in passing[-1]
    )


def test_step_summary_is_appended_when_github_step_summary_is_set(tmp_path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    result = run(SEED, *FAST, env={"GITHUB_STEP_SUMMARY": str(summary)})
    text = summary.read_text()
    assert result.exit_code == 1 and text.startswith("earlier step\n")
    assert (
        "### xentaudit check" in text and "**FAIL**: 1 of 2 results fire a --fail-on flag" in text
    )
    assert "| keras_cce_probs float32 eager | `divergent` 1, `grad-vanish` 1 |" in text


def write_config(folder: Path, body: str) -> Path:
    path = folder / "pyproject.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_config_sets_defaults_and_the_command_line_wins(tmp_path, monkeypatch) -> None:
    write_config(
        tmp_path,
        """
        [tool.xentaudit]
        impls = ["keras_cce_probs"]
        fail-on = ["nan"]
        """,
    )
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)  # found from the working directory upwards
    by_config = run(SEED, "--mode", "eager", "--format", "json")
    assert by_config.exit_code == 0  # keras diverges, but the config fails on nan only
    assert '"impl": "tf_softmax_xent"' not in by_config.stdout
    assert run(SEED, "--mode", "eager", "--fail-on", "divergent").exit_code == 1
    other = write_config(tmp_path / "a", '[tool.xentaudit]\nimpls = ["tf_softmax_xent"]\n')
    explicit = run(SEED, "--mode", "eager", "--config", str(other), "--format", "json")
    assert '"impl": "keras_cce_probs"' not in explicit.stdout and explicit.exit_code == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[tool.xentaudit]\nimpl = ['naive']\n", "unknown key 'impl'"),
        ("[tool.xentaudit]\nrtol = 'small'\n", "rtol must be a number"),
        ("[tool.xentaudit]\nfail-on = 'nan'\n", "fail-on must be a list"),
        ("[tool.xentaudit\n", "cannot read"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path, body: str, message: str) -> None:
    path = write_config(tmp_path, body)
    result = run(SEED, "--config", str(path))
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


USER_LOSSES = """
import tensorflow as tf

def fused(labels, logits):
    return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)

def clipped(labels, logits):
    p = tf.clip_by_value(tf.nn.softmax(logits), 1e-7, 1 - 1e-7)
    return -tf.reduce_sum(labels * tf.math.log(p), axis=-1)

def raises(labels, logits):
    raise ValueError("boom")

def reduced(labels, logits):
    return tf.reduce_mean(fused(labels, logits))

def numpy_only(labels, logits):
    return (labels.numpy() * logits.numpy()).sum(axis=-1)

def one_argument(logits):
    return logits
"""


@pytest.fixture
def losses(tmp_path) -> Path:
    path = tmp_path / "team_loss.py"
    path.write_text(USER_LOSSES)
    return path


def test_a_users_loss_is_audited_with_autodiff_gradients(losses) -> None:
    check = check_file(SEED, impls=[f"{losses}:fused", f"{losses}:clipped"], modes=["eager"])
    by_impl = {r.impl.rsplit(":", 1)[1]: r for r in check.results}
    assert not {"divergent", "grad-vanish"} & set(by_impl["fused"].flags)
    # their own Keras-style clip: row 1 reads -log(1e-7) (float32) instead of 30, no gradient
    assert {"divergent", "grad-vanish"} <= set(by_impl["clipped"].flags)
    worst = by_impl["clipped"].worst_rows[0]
    assert worst.row == 1 and worst.loss == pytest.approx(float(-np.log(np.float32(1e-7))))


MARKED_LOSS = """
import tensorflow as tf

def marked(labels, logits):
    # the fused loss, tripled on rows whose first logit is 5 and NaN on rows whose first is 7
    loss = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    first = logits[:, 0]
    one = tf.ones_like(loss)
    factor = tf.where(first == 7, one * float("nan"), tf.where(first == 5, one * 3, one))
    return loss * factor
"""


@pytest.mark.parametrize("chunk_rows", [None, 1])
def test_a_nan_error_is_the_worst_row_and_counts_above_1(tmp_path, chunk_rows) -> None:
    (tmp_path / "marked.py").write_text(MARKED_LOSS)
    logits = np.array([[5, 8, 0], [1, 0, 0], [7, 0, 0]], dtype=np.float32)
    np.savez(tmp_path / "x.npz", logits=logits, labels=np.array([0, 0, 0]))
    check = check_file(
        tmp_path / "x.npz", impls=[f"{tmp_path / 'marked.py'}:marked"], modes=["eager"],
        chunk_rows=chunk_rows,
    )  # fmt: skip
    (r,) = check.results
    # row 0: exact L = log(e^5 + e^8 + 1) - 5 > 1, read as 3L: relative error 2L / L = 2, finite
    # and above 1; row 2 (later, so the earlier-row tie-break cannot put it first) is NaN.
    exact0 = math.log(math.exp(5) + math.exp(8) + 1) - 5
    assert [w.row for w in r.worst_rows] == [2, 0, 1]
    assert math.isnan(r.worst_rows[0].loss) and math.isnan(r.worst_rows[0].rel_err)
    assert r.worst_rows[1].exact == pytest.approx(exact0, rel=1e-12)
    assert r.worst_rows[1].rel_err == pytest.approx(2, rel=1e-6)  # float32: a few ulps of 3L
    assert r.error_histogram[">1"] == 2 and sum(r.error_histogram.values()) == 3
    assert math.isnan(r.max_rel_err)
    assert [w.row for w in check.verdict().rows_at_risk] == [2, 0]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (":raises", "the loss raised ValueError: boom"),
        (":reduced", "returned shape (); it must return one loss per row, shape (2,)"),
        (":numpy_only", "no gradient w.r.t. the logits"),
        (":one_argument", "must take (labels, logits)"),
        (":missing", "has no function missing"),
        ("", "path/to/file.py:function (name the function)"),
    ],
)
def test_a_broken_users_loss_is_a_one_line_error(losses, target: str, message: str) -> None:
    spec = f"{losses}{target}" if target else str(losses)
    result = run(SEED, "--impl", spec, "--mode", "eager")
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_users_loss_file_that_does_not_import(tmp_path) -> None:
    (tmp_path / "bad.py").write_text("import no_such_module_here\n")
    result = run(SEED, "--impl", f"{tmp_path / 'bad.py'}:f")
    assert result.exit_code == 2 and "ModuleNotFoundError" in result.stderr
    assert "no such file" in run(SEED, "--impl", f"{tmp_path / 'nope.py'}:f").stderr


def test_lint_flags_probabilities_logprobs_soft_labels_and_coarse_logits(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5))
    probs = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    labels = np.zeros(6, dtype=int)
    np.savez(tmp_path / "p.npz", logits=probs.astype(np.float32), labels=labels)
    np.savez(tmp_path / "lp.npz", logits=np.log(probs).astype(np.float32), labels=labels)
    soft = rng.random((6, 5)).astype(np.float32)  # rows sum to ~2.5, not 1
    np.savez(tmp_path / "soft.npz", logits=x.astype(np.float32), labels=soft)
    # float16 spacing is 2 above 2048: logits of 3000 cannot tell 3000 from 3001
    np.savez(tmp_path / "big.npz", logits=(x * 3000).astype(np.float16), labels=labels)
    np.savez(tmp_path / "fine.npz", logits=x.astype(np.float32), labels=labels)
    fast = {"impls": ["tf_softmax_xent"], "modes": ["eager"]}
    assert check_file(tmp_path / "p.npz", **fast).lint == {"looks-like-probs": 6}
    assert check_file(tmp_path / "lp.npz", **fast).lint == {"looks-like-logprobs": 6}
    assert check_file(tmp_path / "soft.npz", **fast).lint == {"soft-labels-unnormalized": 6}
    assert check_file(tmp_path / "big.npz", **fast).lint == {"coarse-logits": 6}
    assert check_file(tmp_path / "fine.npz", **fast).lint == {}
    # Probabilities and log-probabilities are no logits: the default gate fails on them; a gate
    # told to fail on other flags only reports them.
    for name, flag in (("p.npz", "looks-like-probs"), ("lp.npz", "looks-like-logprobs")):
        failing = run(str(tmp_path / name), "--impl", "tf_softmax_xent", "--mode", "eager")
        assert failing.exit_code == 1 and f"the input is flagged {flag}" in failing.stdout
        assert f"{flag} on 6 of 6 rows" in failing.stdout
    told = run(str(tmp_path / "p.npz"), "--impl", "tf_softmax_xent", "--fail-on", "nan,divergent")
    assert told.exit_code == 0 and "looks-like-probs on 6 of 6 rows" in told.stdout
    for name in ("soft.npz", "big.npz"):  # the other lint flags still only warn by default
        assert run(str(tmp_path / name), "--impl", "tf_softmax_xent").exit_code == 0
