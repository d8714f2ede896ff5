"""``xentaudit.testing.assert_stable`` and the pytest plugin: a team's own loss through the sweep.

Expected failures are derived from the seed pattern (``grid.make_pattern("seed")``: rows
``[3, 1, 1]`` label 0 and ``[-1, 2, 5]`` label 1) and the dtype's limits, never pasted.
"""

from __future__ import annotations

import inspect
import math
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

from xentaudit.dtypes import FORMATS
from xentaudit.errors import ConfigError, XentauditError
from xentaudit.flags import FAILING, FLAGS
from xentaudit.grid import PATTERNS, make_pattern, parse_scales
from xentaudit.results import Sweep
from xentaudit.testing import DEFAULT_MODES, DEFAULT_SCALES, assert_stable, register

pytest_plugins = ["pytester"]

SEED = make_pattern("seed").logits
F32 = np.finfo(np.float32)
# The unshifted exp(x) of the naive softmax overflows float32 once a logit passes ln(max) =
# 88.72: on the seed pattern (largest logit 5) above this scale; exp(5s) / sum = inf / inf = NaN.
OVERFLOW = math.log(float(F32.max)) / float(SEED.max())
PAST = 1.01 * OVERFLOW  # 1 % past: float32 rounding of 5s cannot bring it back below
# Before that, the loss can only turn NaN through 0 * log 0 (the zero weight of a class whose
# probability underflowed): row [-1, 2, 5]'s class 0 has p = e^(-6s), below float32's smallest
# normal (TensorFlow flushes subnormals) once 6s > -ln(tiny). Nothing else underflows sooner
# (the label's p = e^(-3s) needs twice the scale), so the loss breaks inside [UNDERFLOW, OVERFLOW].
UNDERFLOW = -math.log(float(F32.tiny)) / float(np.ptp(SEED[1]))
# At scale 1 every exp lies in [e^-1, e^5]: no overflow or underflow, and the naive formula
# rounds a few times per entry, inside the 8 eps + k eps tolerances (README "Flags").
SAFE = 1.0
# pytest loads the plugin by its pytest11 entry point once pyproject declares it and the package
# is reinstalled; until then by name. Never both: pytest refuses a plugin registered twice.
INSTALLED = any(ep.value == "xentaudit.pytest_plugin" for ep in entry_points(group="pytest11"))
PLUGIN = () if INSTALLED else ("-p", "xentaudit.pytest_plugin")
ONE_CELL = {"dtypes": ["float32"], "patterns": ["seed"], "modes": ["eager"]}


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def tf_losses(tf):
    def naive(labels, logits):
        exp = tf.exp(logits)
        return -tf.reduce_sum(labels * tf.math.log(exp / tf.reduce_sum(exp, -1, keepdims=True)), -1)

    def fused(labels, logits):
        return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)

    return naive, fused


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _scale_in(message: str, kind: str) -> float:
    """The scale of the first breaking point line for float32 and ``kind`` ("loss" or
    "gradient")."""
    line = next(x for x in message.splitlines() if x.strip().startswith("float32:"))
    match = re.search(rf"{kind} (\S+) from scale (\S+)", line)
    assert match, line
    return float(match[2])


def test_naive_fails_where_exp_overflows(tf_losses):
    naive, _ = tf_losses
    with pytest.raises(AssertionError) as caught:
        assert_stable(naive, scales=[SAFE, PAST], **ONE_CELL)
    message = str(caught.value)
    name = register(naive).rpartition(":")[2]  # its qualified name, tf_losses_naive
    assert message.startswith(f"loss {name} (tf) is not numerically stable: nan")
    # the table's row: the first firing scale is PAST, where the loss is NaN
    assert re.search(rf"^seed\s+float32\s+eager\s+{PAST:.3g}\s+nan\b", message, re.M), message
    # the breaking point, refined between the two scales, lies where the derivation puts it
    # (3 significant digits: the bounds widened by 5e-3 relative)
    loss_break = _scale_in(message, "loss")
    assert UNDERFLOW * (1 - 5e-3) <= loss_break <= OVERFLOW * (1 + 5e-3)
    assert f"nan: {FLAGS['nan'].explained.text}" in message


def test_naive_fails_in_every_dtype_at_the_defaults(tf_losses):
    naive, _ = tf_losses
    # exp(5s) overflows each dtype at ln(max) / 5 (float64: 142), inside the default scales
    top = max(parse_scales(DEFAULT_SCALES))
    assert all(math.log(fmt.max) / SEED.max() < top for fmt in FORMATS.values())
    with pytest.raises(AssertionError) as caught:
        assert_stable(naive)
    headline = str(caught.value).splitlines()[0]
    assert headline.endswith(f"({', '.join(FORMATS)})")


def test_fused_passes_at_the_defaults_and_returns_the_sweep(tf_losses):
    _, fused = tf_losses
    result = assert_stable(fused)
    assert isinstance(result, Sweep)
    scales = parse_scales(DEFAULT_SCALES)
    assert result.scales == scales
    # every pattern x dtype x mode x scale ran
    assert len(result.cells) == len(PATTERNS) * len(FORMATS) * len(DEFAULT_MODES["tf"]) * len(
        scales
    )
    assert result.exit_code(FAILING) == 0


def test_fail_on_chooses_the_flags(tf_losses):
    naive, _ = tf_losses
    # A row gets at most one loss flag, the first in the table's order: NaN rows are `nan`,
    # never `divergent`, and the other row's loss is right to far within the tolerance.
    result = assert_stable(naive, scales=[PAST], fail_on=["divergent"], **ONE_CELL)
    assert any("nan" in c.flags for c in result.cells)
    with pytest.raises(AssertionError, match=r"not numerically stable: nan\b"):
        assert_stable(naive, scales=[PAST], fail_on="nan,inf", **ONE_CELL)


def test_names_as_strings_and_what_could_not_run(tf_losses):
    _, fused = tf_losses
    # past float16's largest number the seed pattern's logits cannot be represented: not run
    beyond = 2 * FORMATS["float16"].max / float(SEED.max())
    with pytest.warns(UserWarning, match=f"seed at scale {beyond:g} overflows float16"):
        result = assert_stable(
            fused, dtypes="float16,float32", patterns="seed", modes="eager", scales=[SAFE, beyond]
        )
    ran = {(c.dtype, c.scale) for c in result.cells}
    assert ran == {("float16", SAFE), ("float32", SAFE), ("float32", beyond)}
    with (
        pytest.warns(UserWarning, match="overflows float16"),
        pytest.raises(AssertionError, match=r"ran nothing for .*fused.*overflows float16"),
    ):
        assert_stable(fused, dtypes="float16", patterns="seed", modes="eager", scales=[beyond])


def test_options_a_user_gets_wrong_are_errors_not_failures(tf_losses):
    naive, _ = tf_losses
    with pytest.raises(ConfigError, match="unknown flag in fail_on 'nans'"):
        assert_stable(naive, fail_on=["nans"], **ONE_CELL)
    with pytest.raises(ConfigError, match="unknown backend 'tensorflow'"):
        assert_stable(naive, backend="tensorflow")
    with pytest.raises(ConfigError, match="unknown dtype"):
        assert_stable(naive, dtypes=["float8"])
    with pytest.raises(XentauditError, match="must take \\(labels, logits\\)"):
        assert_stable(lambda logits: logits, **ONE_CELL)


def test_register_names_each_callable_once():
    def make():
        def loss(labels, logits):
            return logits

        return loss

    first, second = make(), make()
    name = register(first)
    assert name == "tf:xentaudit.testing:test_register_names_each_callable_once_make_loss"
    assert register(first) == name
    assert register(second) == f"{name}_2"


def test_torch_loss(torch):
    def naive(labels, logits):
        exp = torch.exp(logits)
        return -(labels * torch.log(exp / exp.sum(-1, keepdim=True))).sum(-1)

    def fused(labels, logits):
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none")

    # torch keeps subnormals, so 0 * log 0 comes later than in TensorFlow; the overflow does not
    with pytest.raises(AssertionError, match=rf"(?m)^seed\s+float32\s+eager\s+{PAST:.3g}\s+nan"):
        assert_stable(naive, backend="torch", scales=[SAFE, PAST], **ONE_CELL)
    result = assert_stable(fused, backend="torch")
    assert {c.mode for c in result.cells} == set(DEFAULT_MODES["torch"])


def test_plugin_options_are_assert_stables_keywords():
    from xentaudit.pytest_plugin import OPTIONS

    keywords = [
        p.name
        for p in inspect.signature(assert_stable).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    ]
    assert list(OPTIONS) == keywords


TEST_FILE = f"""
import pytest
import tensorflow as tf

pytestmark = pytest.mark.xentaudit(dtypes=["float32"], patterns=["seed"], modes=["eager"])
PAST = {PAST!r}


def naive(labels, logits):
    exp = tf.exp(logits)
    return -tf.reduce_sum(labels * tf.math.log(exp / tf.reduce_sum(exp, -1, keepdims=True)), -1)


def fused(labels, logits):
    return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)


@pytest.mark.xentaudit(scales=[PAST])
def test_naive_fails(xentaudit):
    xentaudit(naive)


@pytest.mark.xentaudit(scales=[PAST])
def test_fused_passes(xentaudit):
    assert xentaudit(fused).scales == (PAST,)


@pytest.mark.xentaudit(scales=[PAST])
def test_the_call_wins_over_the_marker(xentaudit):
    xentaudit(naive, scales=[{SAFE!r}])


@pytest.mark.xentaudit(scales=[PAST])
class TestClosestMarkerWins:
    @pytest.mark.xentaudit(scales=[{SAFE!r}])
    def test_naive_passes_at_a_safe_scale(self, xentaudit):
        assert xentaudit(naive).scales == ({SAFE!r},)


@pytest.mark.xentaudit(scale=[1.0])
def test_unknown_option(xentaudit):
    pass
"""


def test_fixture_and_marker(pytester, tf):
    pytester.makepyfile(test_loss=TEST_FILE)
    result = pytester.runpytest(*PLUGIN, "--strict-markers")
    result.assert_outcomes(passed=3, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_unknown_option*",
            "unknown option 'scale' in @pytest.mark.xentaudit; choose from backend, dtypes*",
            "*test_naive_fails*",
            ">       xentaudit(naive)",
            "E * loss naive (tf) is not numerically stable: nan*",
            f"E *seed*float32*eager*{PAST:.3g}*nan*",
            "test_loss.py:*: AssertionError",
        ]
    )
    # pytest hides the fixture's and assert_stable's frames: the traceback is the user's line
    assert "testing.py" not in result.stdout.str()


def test_the_readme_example_runs(pytester, tf):
    example = Path(__file__).parent.parent / "examples" / "test_my_loss.py"
    pytester.makepyfile(test_my_loss=example.read_text())
    pytester.runpytest(*PLUGIN).assert_outcomes(passed=3)


def test_plugin_imports_no_framework(pytester):
    """pytest loads the plugin in every project that installs xentaudit: loading it, and
    collecting and running tests that do not use the fixture, imports no framework."""
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_nothing_heavy():
            heavy = ("tensorflow", "torch", "jax", "keras", "xentaudit.testing")
            assert [m for m in heavy if m in sys.modules] == []
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(passed=1)
    markers = subprocess.run(
        [sys.executable, "-m", "pytest", *PLUGIN, "--markers"],
        capture_output=True,
        text=True,
        check=True,
        cwd=pytester.path,
    )
    assert "@pytest.mark.xentaudit(**options)" in markers.stdout


@pytest.mark.skipif(not INSTALLED, reason="no pytest11 entry point installed")
def test_the_entry_point_loads_the_plugin(pytester):
    assert PLUGIN == ()  # every test here then runs through the entry point
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.xentaudit(**options):*"])
