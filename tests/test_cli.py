"""The command line: output shape, exact exit codes and one-line errors (click's CliRunner, with
exceptions never swallowed), and what it does to the process: `xentaudit --help` never imports
TensorFlow, the library never touches the environment or file descriptor 2 (real subprocesses)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

import xentaudit
from xentaudit import SCHEMA_VERSION, __version__, parallel
from xentaudit.cli import cli
from xentaudit.errors import XentauditError
from xentaudit.flags import CHECK_FAIL_ON
from xentaudit.lint import lint_paths

FIXTURES = Path(__file__).parent.parent / "fixtures"
SEED = str(FIXTURES / "seed_scale10.npz")
RESULT_KEYS = {
    "impl", "dtype", "mode", "output_dtype", "loss", "reference", "loss_rows",
    "reference_rows", "max_rel_err", "grad_max_abs_err", "flags",
}  # fmt: skip
FAST = ("--impl", "tf_softmax_xent", "--mode", "eager")


def run(*args: str):
    # The CLI sets TF_CPP_MIN_LOG_LEVEL when it is unset; the runner puts it back afterwards.
    return CliRunner().invoke(
        cli, list(args), catch_exceptions=False, env={"TF_CPP_MIN_LOG_LEVEL": None}
    )


def one_line_error(result, code: int = 2) -> str:
    """The single stderr line of a failed command, after checking the exit code and stdout."""
    assert result.exit_code == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in result.stderr
    return lines[0]


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
    # --mode training: both of TensorFlow's modes, without compiling torch's graphs for seconds
    result = run(
        "compare", "--scale", "10", "--dtype", "float64", "--mode", "training", "--format", "json"
    )
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["schema"] == SCHEMA_VERSION and doc["command"] == "compare"
    assert doc["fail_on"] == []  # compare fails on nothing unless asked
    assert doc["reference_method"] == "mpmath" and (doc["rows"], doc["classes"]) == (2, 3)
    assert {r["impl"] for r in doc["results"]} >= {"naive", "keras_cce_probs", "double_softmax"}
    assert {r["mode"] for r in doc["results"]} == {"eager", "graph"}
    for item in doc["results"]:
        assert set(item) >= RESULT_KEYS
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


@pytest.mark.parametrize("minus_inf", ['"-inf"', '"-Infinity"', '"-INF"', "-Infinity"])
def test_compare_inline_json_takes_masked_logits(minus_inf: str) -> None:
    result = run(
        "compare", "--logits", f"[[0, {minus_inf}, 1]]", "--labels", "[2]",
        "--impl", "tf_sparse_softmax_xent", "--mode", "eager", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (r,) = json.loads(result.stdout)["results"]
    # exact: log(e^0 + e^-inf + e^1) - 1 = log1p(e^-1); the masked class adds nothing
    assert r["reference"] == pytest.approx(math.log1p(math.exp(-1)), rel=1e-15)
    assert r["flags"] == []  # the sparse op never multiplies 0 by the -inf logit


@pytest.mark.parametrize(
    ("value", "message"),
    [('"nan"', "logits contain NaN in row 0"), ('"Infinity"', "logits contain +inf in row 0")],
)
def test_inline_nan_and_plus_inf_are_refused_as_in_files(tmp_path, value: str, message: str):
    inline = one_line_error(run("compare", "--logits", f"[[0, {value}]]", "--labels", "[1]"))
    np.save(tmp_path / "x.npy", np.array([[0.0, json.loads(value)]]).astype(float))
    np.save(tmp_path / "y.npy", np.array([1]))
    from_file = one_line_error(
        run("compare", "--logits", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"))
    )
    assert message in inline and inline == from_file


def test_compare_reads_npy_files(tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.array([[2.0, 0.0, -1.0]], dtype=np.float32))
    np.save(tmp_path / "y.npy", np.array([0]))
    result = run(
        "compare", "--logits", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
        "--impl", "log_softmax", "--mode", "eager", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0
    assert json.loads(result.stdout)["results"][0]["flags"] == []


def test_compare_reads_what_check_reads_npz_labels_and_keys_and_bfloat16() -> None:
    # Labels from the .npz itself: the seed at scale 10, where Keras' eager clip diverges.
    base = ("--impl", "keras_cce_probs", "--mode", "eager", "--format", "json")
    seed = run("compare", "--logits", SEED, *base, "--fail-on", "divergent")
    assert seed.exit_code == 1
    doc = json.loads(seed.stdout)
    assert (doc["rows"], doc["scale"]) == (2, 1.0)
    # row 0: log1p(2 e^-20); row 1: 30 + log1p(e^-30 + e^-60)
    exact = (math.log1p(2 * math.exp(-20)) + 30 + math.log1p(math.exp(-30))) / 2
    assert doc["results"][0]["reference"] == pytest.approx(exact, rel=1e-15)
    keys = run(
        "compare", "--logits", str(FIXTURES / "bad" / "wrong_keys.npz"), "--logits-key", "x",
        "--labels-key", "y", *FAST,
    )  # fmt: skip
    assert keys.exit_code == 0 and "16 rows x 10 classes" in keys.stdout
    # bfloat16 saved by ml_dtypes as the anonymous 2-byte dtype, labels inline
    bf16 = run(
        "compare", "--logits", str(FIXTURES / "clean_bf16.npy"), "--labels", json.dumps([0] * 16),
        *FAST, "--dtype", "bfloat16",
    )  # fmt: skip
    assert bf16.exit_code == 0 and "16 rows x 10 classes" in bf16.stdout


def test_eps_is_repeatable_in_compare() -> None:
    result = run(
        "compare", "--impl", "clipped", "--mode", "eager", "--eps", "1e-7", "--eps", "1e-12",
        "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0
    assert [r["eps"] for r in json.loads(result.stdout)["results"]] == [1e-7, 1e-12]


def test_fail_on_sets_exit_code_one() -> None:
    base = ("compare", "--impl", "keras_cce_probs", "--mode", "eager")
    assert run(*base, "--fail-on", "divergent").exit_code == 1
    assert run(*base, "--fail-on", "nan,inf").exit_code == 0


def test_empty_fail_on_means_no_flag_in_every_command() -> None:
    keras = ("--impl", "keras_cce_probs", "--mode", "eager")
    assert run("check", SEED, *keras).exit_code == 1  # check's default fails on divergent
    assert run("check", SEED, *keras, "--fail-on", "").exit_code == 0
    assert run("check", SEED, *keras, "--fail-on", "none").exit_code == 0
    assert run("compare", *keras, "--fail-on", "").exit_code == 0


def test_help_shows_the_real_fail_on_defaults_and_the_exit_codes() -> None:
    check_help = "".join(run("check", "--help").stdout.split())  # click breaks at hyphens
    assert f"[default:{','.join(CHECK_FAIL_ON)}]" in check_help
    assert "[default:none]" in "".join(run("compare", "--help").stdout.split())
    top = " ".join(run("--help").stdout.split())
    assert "2 usage or input error, 3 internal error" in top


def test_check_takes_inline_json_labels_like_a_labels_file(tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.array([[3, 1, 1], [-1, 2, 5]], dtype=np.float32) * 10)
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    args = ("check", str(tmp_path / "x.npy"), "--impl", "keras_cce_probs", "--mode", "eager")
    inline = run(*args, "--labels", "[0, 1]", "--format", "json")
    from_file = run(*args, "--labels", str(tmp_path / "y.npy"), "--format", "json")
    assert inline.exit_code == from_file.exit_code == 1
    got, want = json.loads(inline.stdout), json.loads(from_file.stdout)
    assert got["labels"] == "--labels" and want["labels"] == str(tmp_path / "y.npy")
    assert got["results"] == want["results"]


def test_check_eps_is_repeatable_from_the_command_line_and_the_config(tmp_path) -> None:
    clipped = ("--impl", "clipped", "--mode", "eager", "--format", "json")
    result = run("check", SEED, *clipped, "--eps", "1e-7", "--eps", "1e-12")
    assert [r["eps"] for r in json.loads(result.stdout)["results"]] == [1e-7, 1e-12]
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.xentaudit]\neps = [1e-3, 1e-7]\n")
    result = run("check", SEED, *clipped, "--config", str(config))
    assert [r["eps"] for r in json.loads(result.stdout)["results"]] == [1e-3, 1e-7]
    config.write_text("[tool.xentaudit]\neps = []\n")
    line = one_line_error(run("check", SEED, *clipped, "--config", str(config)))
    assert "eps must be a number or a non-empty list of numbers" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--logits", "[[1, 2]", "--labels", "[0]"], "neither a .npy file nor valid JSON"),
        (["--logits", '[[1, "big"]]', "--labels", "[0]"], "the JSON has the string 'big'"),
        (["--logits", "[[1, 2]]", "--labels", "[[1, 0, 0]]"], "do not fit logits"),
        (["--impl", "nope"], "unknown implementation 'nope'"),
        (["--dtype", "float8"], "unknown dtype 'float8'"),
        (["--logits", "[[NaN, 1]]", "--labels", "[0]"], "NaN in row 0"),
        (["--logits", "[[1, 2]]", "--labels", "[5]"], "out of range"),
        (["--logits", "[[1, 2]]"], "--logits came without labels; pass --labels"),
        (["--labels", "[0]"], "--labels came without --logits"),
        (["--logits", "nope.npy", "--labels", "[0]"], "no such file: nope.npy"),
        (["--logits", SEED, "--labels-key", "y"], "has no array 'y' for the labels"),
        (
            ["--logits", str(FIXTURES / "bad" / "wrong_keys.npz")],
            "has no array 'logits' (it has x, y); pass --logits-key",
        ),
        (["--logits", str(FIXTURES / "bad" / "pickled.npy"), "--labels", "[0]"], "unpickles"),
        (["--eps", "-1"], "Invalid value for '--eps': -1.0 is not in the range 0<x<0.5"),
        (["--eps", "0.5"], "Invalid value for '--eps': 0.5 is not in the range 0<x<0.5"),
        (["--eps", "nan"], "Invalid value for '--eps': 'nan' is not a finite number"),
        (["--rtol", "0"], "Invalid value for '--rtol': 0.0 is not in the range x>0"),
        (["--rtol", "inf"], "Invalid value for '--rtol': 'inf' is not a finite number"),
        (["--rtol", "nan"], "Invalid value for '--rtol': 'nan' is not a finite number"),
        (["--timeout", "0"], "Invalid value for '--timeout': 0.0 is not in the range 0<x<=1000000"),
        (["--timeout", "nan"], "Invalid value for '--timeout': 'nan' is not a finite number"),
        (["--fail-on", "oops"], "unknown flag in --fail-on 'oops'; choose from nan, inf,"),
        (["--mode", "lazy"], "Invalid value for '--mode'"),
        (["--zzz"], "No such option '--zzz'; see 'xentaudit compare --help'"),
        (["--logit", "[[1]]"], "No such option '--logit'. (Did you mean one of: '--logits'"),
        (["--scale", "inf"], "Invalid value for '--scale': 'inf' is not a finite number"),
        (["--scale", "0"], "Invalid value for '--scale': 0.0 is not in the range x>0"),
        (["--scale", "nan"], "Invalid value for '--scale': 'nan' is not a finite number"),
        (
            ["--scale", "1e300"],
            "--scale 1e+300 makes logits up to 5e+300, which overflow float32 (max 3.4028e+38); "
            "use a smaller --scale",
        ),
        (
            ["--scale", "1e307", "--dtype", "float64", "--logits", "[[100, 1]]", "--labels", "[0]"],
            "--scale 1e+307 makes logits up to inf, which overflow float64",
        ),
        (  # no --scale given: the dtype is at fault, not a scale of 1
            ["--dtype", "float16", "--logits", "[[1e6, 1]]", "--labels", "[0]"],
            "logits reach 1e+06, which overflow float16 (max 65504); pass a wider --dtype, or a "
            "--scale below 1",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    line = one_line_error(run("compare", *args))
    assert line.startswith("xentaudit: error:") and message in line


def test_a_bug_is_one_line_and_exit_3_and_verbose_shows_the_traceback(monkeypatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("the reader fell over\nsecond line of detail")

    monkeypatch.setattr("xentaudit.io.load_inputs", broken)
    args = ("compare", "--logits", "[[1, 2]]", "--labels", "[0]")
    line = one_line_error(run(*args), 3)
    assert line == (
        "xentaudit: internal error: ValueError: the reader fell over "
        "(run with -v for the traceback)"
    )
    verbose = run("-v", *args)
    assert verbose.exit_code == 3 and verbose.stdout == ""
    assert verbose.stderr.startswith("Traceback (most recent call last):")
    assert 'raise ValueError("the reader fell over' in verbose.stderr
    last = verbose.stderr.strip().splitlines()[-1]
    assert last == "xentaudit: internal error: ValueError: the reader fell over"


def test_user_errors_stay_exit_2_and_ctrl_c_exit_130(monkeypatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("xentaudit.io.load_inputs", interrupted)
    result = run("compare", "--logits", "[[1, 2]]", "--labels", "[0]")
    assert result.exit_code == 130 and "xentaudit: aborted" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--chunk-rows", "0"], "Invalid value for '--chunk-rows': 0 is not in the range x>=1"),
        (
            ["--timeout", "inf"],
            "Invalid value for '--timeout': inf is not in the range 0<x<=1000000",
        ),
        (["--rtol", "-1"], "Invalid value for '--rtol': -1.0 is not in the range x>0"),
    ],
)
def test_bad_check_numbers_are_refused_naming_the_option(args: list[str], message: str) -> None:
    line = one_line_error(run("check", SEED, *FAST, *args))
    assert line.startswith(f"xentaudit: error: {message}")


def test_a_scale_only_narrow_dtypes_overflow_skips_them_without_numpy_warnings() -> None:
    # 5 x 1e5 overflows float16 (max 65504) and no other dtype
    result = run("compare", "--scale", "1e5", "--dtype", "all", *FAST, "--format", "json")
    assert result.exit_code == 0 and result.stderr == ""
    skipped = json.loads(result.stdout)["skipped"]
    assert [s["dtype"] for s in skipped] == ["float16"]


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_help_and_list_do_not_import_a_framework() -> None:
    code = (
        "import sys\n"
        "import xentaudit\n"
        "from xentaudit.cli import cli\n"
        "for args in (['--help'], ['list'], ['list', '--format', 'json'],\n"
        "             *([c, '--help'] for c in ('compare', 'sweep', 'check', 'lint'))):\n"
        "    try:\n"
        "        cli(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (args, exc.code)\n"
        # mpmath: only the exact reference computes with it (16 ms of a --help's imports)
        "heavy = ('tensorflow', 'keras', 'torch', 'jax', 'optax', 'matplotlib', 'libcst',\n"
        "         'mpmath')\n"
        "print(' '.join(m for m in heavy if m in sys.modules) or 'clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("clean")
    assert "compare" in out.stdout and "--scales" in out.stdout and "keras_cce_probs" in out.stdout


def test_every_help_imports_no_numpy_and_the_api_loads_its_names_on_use() -> None:
    # A --help runs the group's callback and parses options, and nothing more: whatever it
    # imports is start-up time (issue "Speed on the CPUs CI runs on", item 4: under 300 ms).
    commands = [c for c in cli.commands if c != "list"]  # list's output imports its registry
    code = (
        "import sys\n"
        "from xentaudit.cli import cli\n"
        f"for args in (['--help'], *([c, '--help'] for c in {commands!r})):\n"
        "    try:\n"
        "        cli(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (args, exc.code)\n"
        "    heavy = ('numpy', 'ml_dtypes', 'rich', 'xentaudit._kernel', 'xentaudit.impls')\n"
        "    print(args[0], *(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.splitlines() == ["--help", *commands], out.stderr
    assert {"sweep", "compare", "check", "lint", "ema"} <= set(commands)
    # The API: `import xentaudit` imports no numpy either; each name comes from its module when
    # used, and the functions named like their modules stay functions once the command line
    # (or a user) has imported those modules.
    code = (
        "import sys, types\n"
        "import xentaudit\n"
        "print('numpy' in sys.modules)\n"
        # the README's dotted paths: a submodule is an attribute once asked for
        "print(xentaudit.reference.cross_entropy.__name__,\n"
        "      xentaudit.errors.NothingAudited.__name__)\n"
        "import xentaudit.audit, xentaudit.ema, xentaudit.sweep, xentaudit.check\n"
        "import importlib\n"
        "homes = {n: importlib.import_module(m) for n, m in xentaudit._HOMES.items()}\n"
        "results = importlib.import_module('xentaudit.results')\n"
        "wrong = [n for n in xentaudit.__all__ if n != '__version__' and\n"
        "         getattr(xentaudit, n) is not getattr(homes.get(n, results), n)]\n"
        "print(wrong, [n for n in ('audit', 'ema', 'sweep')\n"
        "              if isinstance(getattr(xentaudit, n), types.ModuleType)])\n"
        "from xentaudit import *\n"
        "print(callable(audit) and callable(sweep) and callable(ema) and callable(check_file))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["False", "cross_entropy NothingAudited", "[] []", "True"]


def test_the_loss_options_choices_are_the_losses() -> None:
    # choices.py spells what --help shows without importing the library: the same names
    from xentaudit.choices import LOSS_NAMES
    from xentaudit.losses import LOSSES

    assert tuple(LOSSES) == LOSS_NAMES


def test_python_dash_m_runs_the_cli_without_tensorflow_noise() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "xentaudit", "compare", "--impl", "log_softmax", "--mode", "eager"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert out.returncode == 0
    assert "log_softmax" in out.stdout
    assert out.stderr == ""  # TensorFlow's start-up log lines are kept from the user


def test_the_python_api_leaves_the_environment_and_stderr_alone() -> None:
    code = (
        "import logging, os, sys\n"
        "before = os.fstat(2)\n"
        "import xentaudit\n"
        "xentaudit.audit([[0.0, 1.0]], [1], impls=['log_softmax'], modes=['eager'])\n"
        "after = os.fstat(2)\n"
        "os.write(2, b'fd 2 still reaches stderr\\n')\n"
        "print('tensorflow' in sys.modules, 'TF_CPP_MIN_LOG_LEVEL' in os.environ,\n"
        "      (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino),\n"
        "      logging.getLogger('tensorflow').level,\n"
        "      'TF_CPU_ALLOCATOR_USE_BFC' in os.environ)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)  # the API's caller chooses TensorFlow's allocator
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    # Importing TensorFlow imports JAX where it is installed, and JAX sets TF_CPP_MIN_LOG_LEVEL
    # itself (jax/__init__.py): the frameworks' own imports are the baseline, not a clean slate.
    frameworks = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, tensorflow, keras; print('TF_CPP_MIN_LOG_LEVEL' in os.environ)",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    baseline = frameworks.stdout.split()[-1]
    assert out.stdout.split() == ["True", baseline, "True", str(0), "False"]  # logging.NOTSET
    assert "fd 2 still reaches stderr" in out.stderr


@pytest.mark.parametrize("users", [None, "false"])
def test_the_command_line_and_its_processes_pool_tensorflows_memory_unless_told(
    monkeypatch, users
) -> None:
    # TensorFlow reads the variable when it first makes its CPU allocator, later than these
    # processes set it (the CLI before any command imports TensorFlow; a --jobs process before
    # any task); the user's own value stands.
    name = "TF_CPU_ALLOCATOR_USE_BFC"
    if users is None:
        monkeypatch.delenv(name, raising=False)  # the next test starts as the run did
    else:
        monkeypatch.setenv(name, users)
    expected = "true" if users is None else users
    assert run("list").exit_code == 0
    assert os.environ.get(name) == expected
    if users is None:  # a process of the API's pool, whose caller did not set it
        monkeypatch.delenv(name)
    with parallel._local_pool(1, None) as pool:
        assert pool.submit(os.getenv, name).result() == expected


# The command line run in a process of its own, which then says which allocator TensorFlow
# made there: its pool keeps statistics, malloc does not ("Allocator stats not available").
RUN_AND_NAME_THE_ALLOCATOR = """
import sys
import tensorflow as tf
from xentaudit.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="xentaudit")
except SystemExit as end:
    code = end.code
try:
    tf.config.experimental.get_memory_info("CPU:0")
    print("allocator: pool", file=sys.stderr)
except ValueError:
    print("allocator: malloc", file=sys.stderr)
sys.exit(code)
"""


def test_tensorflows_pool_is_the_command_lines_and_changes_no_result(tmp_path) -> None:
    # TensorFlow imported before the command, as a script may: the allocator is made at its
    # first op, after the command line set the variable; a user's "false" stands
    rng = np.random.default_rng(5)
    path = tmp_path / "logits.npz"
    logits = rng.standard_normal((96, 3000)).astype(np.float32) * np.float32(40)
    np.savez(path, logits=logits, labels=rng.integers(0, 3000, 96))
    args = ["check", str(path), "--backend", "tf", "--mode", "both", "--dtype", "float16,float32"]
    args += ["--chunk-rows", "40", "--format", "json"]
    reports = {}
    for users, allocator in ((None, "pool"), ("false", "malloc")):
        env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
        # Where TensorFlow runs oneDNN (its default on CPUs with AVX512_VNNI, AVX512_BF16 or
        # AMX), its tensors come from oneDNN's allocator whatever the variable says: held off
        # here, so that the variable decides on every CPU.
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
        env.update({} if users is None else {"TF_CPU_ALLOCATOR_USE_BFC": users})
        done = subprocess.run(
            [sys.executable, "-c", RUN_AND_NAME_THE_ALLOCATOR, *args],
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 1, done.stderr  # flags fire: the numbers are compared below
        assert done.stderr.splitlines()[-1] == f"allocator: {allocator}"
        reports[allocator] = json.loads(done.stdout)
    assert reports["pool"] == reports["malloc"]


def test_a_path_with_line_breaks_is_still_one_line(tmp_path) -> None:
    for name, shown in (("a\nb.npz", "a\\nb.npz"), ("c\rd.npy", "c\\rd.npy")):
        result = CliRunner().invoke(cli, ["check", str(tmp_path / name)], catch_exceptions=False)
        assert result.exit_code == 2 and result.stdout == ""
        assert len(result.stderr.splitlines()) == 1 and shown in result.stderr
        assert result.stderr.startswith("xentaudit: error: no such file: ")


def test_compare_audits_a_file_in_its_own_dtype_unless_told(tmp_path) -> None:
    x = np.array([[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]]) * 10
    np.save(tmp_path / "h.npy", x.astype(np.float16))
    np.save(tmp_path / "b.npy", x.astype(ml_dtypes.bfloat16))
    fast = [
        "--labels",
        "[0, 1]",
        "--impl",
        "tf_softmax_xent",
        "--mode",
        "eager",
        "--format",
        "json",
    ]

    def dtypes(*args: str) -> list[str]:
        result = CliRunner().invoke(cli, ["compare", *args, *fast], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return [r["dtype"] for r in json.loads(result.stdout)["results"]]

    assert dtypes("--logits", str(tmp_path / "h.npy")) == ["float16"]
    assert dtypes("--logits", str(tmp_path / "b.npy")) == ["bfloat16"]
    assert dtypes("--logits", str(tmp_path / "h.npy"), "--dtype", "float64") == ["float64"]
    assert dtypes("--logits", "[[30, 10, 10], [-10, 20, 50]]") == ["float32"]  # inline: float32


def test_check_refuses_a_labels_key_the_npz_lacks() -> None:
    # a key named on purpose and missing (a typo) is an error, as in compare: never an audit
    # of the file without its labels that passes the gate
    result = CliRunner().invoke(cli, ["check", SEED, "--labels-key", "lables", *FAST])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        f"xentaudit: error: {SEED} has no array 'lables' for the labels (it has labels, "
        "logits); pass --labels-key with one of them, or --labels\n"
    )


def test_an_npz_without_labels_is_refused_only_when_labels_is_named(tmp_path) -> None:
    # --labels-key labels, named on purpose, is required like any other key; left out, a file
    # without labels is audited against each row's predicted and worst-case class
    path = tmp_path / "x.npz"
    np.savez(path, logits=np.array([[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]], dtype=np.float32))
    named = CliRunner().invoke(cli, ["check", str(path), "--labels-key", "labels", *FAST])
    assert named.exit_code == 2 and named.stdout == ""
    assert named.stderr == (
        f"xentaudit: error: {path} has no array 'labels' for the labels (it has logits); pass "
        "--labels-key with one of them, or --labels\n"
    )
    left_out = CliRunner().invoke(cli, ["check", str(path), *FAST])
    assert left_out.exit_code == 0, left_out.output
    assert "labels: none" in left_out.stdout


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.arange(6, dtype=np.int32).reshape(2, 3), "has dtype int32; logits must be float16"),
        (np.ones((2, 3), dtype=bool), "has dtype bool; logits must be float16"),
        (np.ones(3, dtype=np.float32), "has shape (3,); logits must be [..., classes]"),
    ],
    ids=["int32", "bool", "1-D"],
)
def test_compare_reads_a_file_of_logits_as_check_does(tmp_path, array, message) -> None:
    # inline JSON may hold integers (the seed does); a file of them is refused by both commands
    path = tmp_path / "x.npy"
    np.save(path, array)
    for command in (["compare", "--logits", str(path), "--labels", "0"], ["check", str(path)]):
        result = CliRunner().invoke(cli, [*command, *FAST])
        assert result.exit_code == 2 and result.stdout == "", command
        assert result.stderr.startswith(f"xentaudit: error: {path} {message}"), command
        assert len(result.stderr.splitlines()) == 1, command


def test_no_command_is_one_line_naming_the_commands() -> None:
    result = CliRunner().invoke(cli, [])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"xentaudit: error: no command given; pick one of {', '.join(cli.list_commands(None))}; "
        "see 'xentaudit --help'\n"
    )


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["check", ""], "[FILE]..."),
        (["check", SEED, ""], "[FILE]..."),
        (["check", SEED, "--config", ""], "--config"),
        (["check", SEED, "--baseline", ""], "--baseline"),
        (["check", "--model", "", "--inputs", SEED], "--model"),
        (["check", "--inputs", "", "--model", SEED], "--inputs"),
        (["sweep", "--baseline", ""], "--baseline"),
        (["ema", ""], "TRAJECTORY"),
        (["lint", ""], "PATH..."),
    ],
)
def test_an_empty_path_is_refused_not_read_as_the_current_folder(args, name) -> None:
    # Path("") is "."; `lint "$SRC"` with SRC unset linted the working directory and passed
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and result.stdout == "", result.output
    command = args[0]
    assert result.stderr == (
        f"xentaudit: error: Invalid value for '{name}': an empty name; name a file or folder; "
        f"see 'xentaudit {command} --help'\n"
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: xentaudit.ema(""), "an empty trajectory name; name a .npz file"),
        (lambda: lint_paths([""]), "an empty path; name a .py file"),
        (lambda: xentaudit.check_file(""), "an empty FILE name; name a file, folder or glob"),
        (lambda: xentaudit.check_file([SEED, ""]), "an empty FILE name"),
    ],
)
def test_the_api_refuses_an_empty_path_too(call, message: str) -> None:
    with pytest.raises(XentauditError, match=f"^{message}"):
        call()
