"""`lint --fix` round trips: every rewrite parses, and, executed in TensorFlow, PyTorch and JAX,
computes what the original computed wherever the original was finite, and finite values where
it was not, both checked against the exact reference (the engine's for log-probabilities,
mpmath for log-sum-exp)."""

from __future__ import annotations

import ast

import mpmath
import numpy as np
import pytest

from xentaudit.lint import lint_source
from xentaudit.lint.fix import fix_source
from xentaudit.lint.rules import RULES
from xentaudit.reference import cross_entropy

SEED = np.array([[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]])
# At scale 1 every softmax entry is a normal float32 and the original is finite. At scale 200
# the logits are [[600,200,200],[-200,400,1000]]: exp(-400) underflows to exactly 0 (so
# log(softmax) is -inf) and exp(600) overflows (so log(sum(exp)) is inf), with no subnormal
# in between, where the original would be finite but inaccurate.
SCALES = (1.0, 200.0)


def log_softmax_exact(x: np.ndarray) -> np.ndarray:
    """log softmax(x)[i, j] = -(cross-entropy of row i against class j), by the reference."""
    n, c = x.shape
    ref = cross_entropy(np.repeat(x, c, axis=0), np.tile(np.arange(c), n), method="mpmath")
    return -ref.loss.reshape(n, c)


def logsumexp_exact(x: np.ndarray) -> np.ndarray:
    with mpmath.workdps(50):
        return np.array([float(mpmath.log(sum(mpmath.exp(mpmath.mpf(v)) for v in r))) for r in x])


def tolerance(x: np.ndarray) -> float:
    """float32: x - m (or m + ...) and the log of the sum, then their difference, round at
    the magnitude of 2 max|x|; 4 ulp there covers the three roundings and the sum's."""
    return 4 * float(np.spacing(np.float32(2 * np.abs(x).max())))


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def jax():
    pytest.importorskip("jax")
    import jax.numpy as jnp

    return jnp


CASES = {  # framework -> (imports, [(expression of x, what it computes)])
    "tf": (
        "import keras\nimport tensorflow as tf\n",
        [
            ("tf.math.log(tf.nn.softmax(x, axis=-1))", "log_softmax"),
            ("tf.math.log(tf.math.softmax(x))", "log_softmax"),
            ("keras.ops.log(keras.ops.softmax(x))", "log_softmax"),
            ("tf.math.log(tf.reduce_sum(tf.exp(x), axis=-1))", "logsumexp"),
            ("tf.math.log(tf.math.reduce_sum(tf.math.exp(x), -1))", "logsumexp"),
        ],
    ),
    "torch": (
        "import torch\nimport torch.nn.functional as F\n",
        [
            ("torch.log(F.softmax(x, dim=1))", "log_softmax"),
            ("torch.log(torch.softmax(x, -1))", "log_softmax"),
            ("x.softmax(-1).log()", "log_softmax"),
            ("torch.log(torch.exp(x).sum(dim=1))", "logsumexp"),
            ("torch.log(torch.sum(torch.exp(x), 1))", "logsumexp"),
            ("torch.log((x * 1).exp().sum(-1))", "logsumexp"),
        ],
    ),
    "jax": (
        "import jax\nimport jax.numpy as jnp\nfrom jax import nn\n",
        [
            ("jnp.log(jax.nn.softmax(x))", "log_softmax"),
            ("jnp.log(nn.softmax(x, axis=-1))", "log_softmax"),
            ("jnp.log(jnp.sum(jnp.exp(x), axis=-1))", "logsumexp"),
        ],
    ),
}


def fixed(imports: str, expression: str) -> tuple[str, str]:
    """The module defining ``f(x)`` as ``expression``, and the same after --fix."""
    source = f"{imports}\n\ndef f(x):\n    return {expression}\n"
    findings, _ = lint_source(source)
    assert len(findings) == 1 and findings[0].fix is not None, findings
    after, done = fix_source(source, findings)
    assert done == findings
    ast.parse(after)
    assert lint_source(after)[0] == []
    return source, after


def run(source: str, x: np.ndarray, convert) -> np.ndarray:
    namespace: dict = {}
    exec(compile(source, "<lint test>", "exec"), namespace)
    out = namespace["f"](convert(x.astype(np.float32)))
    return np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float64)


@pytest.mark.parametrize(
    ("framework", "expression", "computes"),
    [(fw, e, c) for fw, (_, cases) in CASES.items() for e, c in cases],
)
def test_fix_round_trip(framework: str, expression: str, computes: str, request) -> None:
    module = request.getfixturevalue(framework)
    convert = {
        "tf": lambda a: module.constant(a),
        "torch": lambda a: module.tensor(a),
        "jax": lambda a: module.asarray(a),
    }[framework]
    original, rewritten = fixed(CASES[framework][0], expression)
    for scale in SCALES:
        x = SEED * scale
        exact = log_softmax_exact(x) if computes == "log_softmax" else logsumexp_exact(x)
        before = run(original, x, convert)
        after = run(rewritten, x, convert)
        atol = tolerance(x)
        assert np.isfinite(after).all()
        np.testing.assert_allclose(after, exact, rtol=0, atol=atol)
        finite = np.isfinite(before)
        np.testing.assert_allclose(after[finite], before[finite], rtol=0, atol=2 * atol)
        assert finite.all() == (scale == 1.0)  # the large scale does break the original


def test_every_applied_rule_has_round_trips() -> None:
    applied = {code for code, rule in RULES.items() if rule.fix == "applied"}
    assert applied == {"XA101", "XA106"}
    source = "".join(imports for imports, _ in CASES.values()) + "\n".join(
        f"v{i} = {e}" for i, (_, cases) in enumerate(CASES.values()) for e, _ in cases
    )
    assert {f.code for f in lint_source(source)[0]} == applied


def test_fix_keeps_formatting_and_comments_and_nests() -> None:
    source = (
        "import torch\n"
        "y = torch.log(  # the comment lives in the dropped call: the fix is not applied\n"
        "    torch.softmax(x, 1)\n"
        ")\n"
        "z = torch.log(torch.softmax(x,  # kept: it is inside the softmax's own arguments\n"
        "                            1))\n"
        "w = torch.log(torch.softmax(torch.log(torch.softmax(x, 1)), 1))\n"
        "v  =  torch.log( torch.softmax(x,-1) )   # odd spacing elsewhere stays\n"
    )
    after, done = fix_source(source, lint_source(source)[0])
    assert after == (
        "import torch\n"
        "y = torch.log(  # the comment lives in the dropped call: the fix is not applied\n"
        "    torch.softmax(x, 1)\n"
        ")\n"
        "z = torch.log_softmax(x,  # kept: it is inside the softmax's own arguments\n"
        "                            1)\n"
        "w = torch.log_softmax(torch.log_softmax(x, 1), 1)\n"
        "v  =  torch.log_softmax(x,-1)   # odd spacing elsewhere stays\n"
    )
    assert len(done) == 4


def test_fix_drops_only_the_parentheses_a_receiver_needed() -> None:
    source = (
        "import torch\ny = torch.log((x + 1).exp().sum(1))\nz = torch.log((a, b).exp().sum(1))\n"
    )
    after, _ = fix_source(source, lint_source(source)[0])
    assert after == "import torch\ny = torch.logsumexp(x + 1, 1)\nz = torch.logsumexp((a, b), 1)\n"
