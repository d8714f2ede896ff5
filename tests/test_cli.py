"""The command line: output shape, exit codes and one-line errors (click's CliRunner), and the
promise that `xentaudit --help` never imports TensorFlow (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit import SCHEMA_VERSION, __version__
from xentaudit.cli import cli

RESULT_KEYS = {
    "impl", "dtype", "mode", "output_dtype", "loss", "reference", "loss_rows",
    "reference_rows", "max_rel_err", "grad_max_abs_err", "flags",
}  # fmt: skip


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_compare_default_shows_the_keras_clip_case() -> None:
    result = run("compare", "--impl", "keras_cce_probs", "--impl", "tf_softmax_xent")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "scale 10" in out and "8.05904775" in out and "15.0000000020612" in out
    assert "divergent" in out and "grad-vanish" in out
    assert "row 1 exact 30, got 16.1180954 (divergent grad-vanish)" in out
    assert "Verdict:" in out and "Trustworthy here: tf_softmax_xent" in out
    assert "Eager and tf.function differ for: keras_cce_probs float32" in out


def test_compare_json_shape() -> None:
    result = run("compare", "--scale", "10", "--dtype", "float64", "--format", "json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["schema"] == SCHEMA_VERSION and doc["command"] == "compare"
    assert doc["reference_method"] == "mpmath" and (doc["rows"], doc["classes"]) == (2, 3)
    assert {r["impl"] for r in doc["results"]} >= {"naive", "keras_cce_probs", "double_softmax"}
    for item in doc["results"]:
        assert set(item) >= RESULT_KEYS
        assert item["mode"] in ("eager", "graph")
        assert len(item["loss_rows"]) == len(item["reference_rows"]) == 2
    keras = [r for r in doc["results"] if r["impl"] == "keras_cce_probs" and r["mode"] == "eager"]
    assert {"divergent", "grad-vanish"} <= set(keras[0]["flags"])
    assert keras[0]["output_dtype"] == "float32"


def test_compare_inline_logits_all_dtypes_json_spells_out_nan() -> None:
    result = run(
        "compare", "--logits", "[[-500, 500, -500]]", "--labels", "[[0, 1, 0]]",
        "--dtype", "all", "--impl", "naive", "--impl", "tf_softmax_xent", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    naive = [r for r in doc["results"] if r["impl"] == "naive"]
    assert len(naive) == 8 and all("nan" in r["flags"] and r["loss"] == "nan" for r in naive)
    assert all(r["flags"] == [] for r in doc["results"] if r["impl"] == "tf_softmax_xent")


def test_compare_reads_npy_files(tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.array([[2.0, 0.0, -1.0]], dtype=np.float32))
    np.save(tmp_path / "y.npy", np.array([0]))
    result = run(
        "compare", "--logits", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
        "--impl", "log_softmax", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0
    assert json.loads(result.stdout)["results"][0]["flags"] == []


def test_fail_on_sets_exit_code_one() -> None:
    base = ("compare", "--impl", "keras_cce_probs", "--mode", "eager")
    assert run(*base, "--fail-on", "divergent").exit_code == 1
    assert run(*base, "--fail-on", "nan,inf").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--logits", "[[1, 2]", "--labels", "[0]"], "neither a .npy file nor valid JSON"),
        (["--logits", "[[1, 2]]", "--labels", "[[1, 0, 0]]"], "do not fit logits"),
        (["--impl", "nope"], "unknown implementation 'nope'"),
        (["--dtype", "float8"], "unknown dtype 'float8'"),
        (["--logits", "[[NaN, 1]]", "--labels", "[0]"], "NaN in row 0"),
        (["--logits", "[[1, 2]]", "--labels", "[5]"], "out of range"),
        (["--logits", "[[1, 2]]"], "--logits and --labels together"),
        (["--eps", "-1"], "--eps must lie in"),
        (["--rtol", "0"], "--rtol must be a positive number"),
        (["--fail-on", "oops"], "unknown flag 'oops'"),
        (["--mode", "lazy"], "Invalid value for '--mode'"),
        (["--scale", "inf"], "--scale must be a finite number"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run("compare", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xentaudit: error:")
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_help_does_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "from xentaudit.cli import cli\n"
        "try:\n"
        "    cli(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "for command in ('compare', 'sweep', 'check'):\n"
        "    try:\n"
        "        cli([command, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('TF' if 'tensorflow' in sys.modules or 'keras' in sys.modules else 'clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("clean")
    assert "compare" in out.stdout and "--scales" in out.stdout


def test_python_dash_m_runs_the_cli_without_tensorflow_noise() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "xentaudit", "compare", "--impl", "log_softmax", "--mode", "eager"],
        capture_output=True,
        text=True,
        env={k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert out.returncode == 0
    assert "log_softmax" in out.stdout
    assert out.stderr == ""  # TensorFlow's start-up log lines are kept from the user
