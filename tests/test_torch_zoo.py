"""The PyTorch implementations against mpmath: each one in every dtype, eagerly and compiled by
torch.compile, with hard and soft labels; loss scaling; torch's subnormals; users' losses.

Tolerances, with eps the machine epsilon of the dtype a result is computed in (2^-52, 2^-23,
2^-10, 2^-7): the logits below are multiples of 1/4 in [-2, 3], exact in every dtype, C = 4
classes, so every probability is at least e^-5 / 4 and the losses are below 5. A loss is a
sum of at most C + 4 roundings of at most eps/2 (C in exp and the sum, one each in log, the
shift, the label's term and the output cast) on quantities at most 2 max(1, |L|) (|log sum| <=
|L| + log C): 8 eps max(1, |L|). A gradient entry p_j sum(y) - y_j has the error of p_j
(C + 2 roundings) and of its own subtraction, on quantities at most 1, or, through log(p),
eps (1 + p_j) from -1/p_j times p_j: 8 eps absolutely.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import ml_dtypes
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

torch = pytest.importorskip("torch")

from xentaudit.errors import ImplementationError  # noqa: E402
from xentaudit.impls import REGISTRY, get_impl, torch_zoo  # noqa: E402

DTYPES, EPS, X, CLASSES, SOFT = ZOO_DTYPES, ZOO_EPS, ZOO_X, ZOO_CLASSES, ZOO_SOFT
HARD_ONLY = {"torch_log_softmax_nll"}
exact = mpmath_exact


def needs_graph(mode: str) -> None:
    reason = torch_zoo.graph_unavailable() if mode == "graph" else None
    if reason is not None:
        pytest.skip(reason)


CASES = [
    (name, dtype, mode, soft)
    for name in torch_zoo.IMPLS
    if REGISTRY[name].loss == "softmax"  # the sigmoid ones: tests/test_sigmoid.py
    for dtype in DTYPES
    for mode in ("eager", "graph")
    # Soft labels compile a second graph: in float32 alone there, to keep the suite fast.
    for soft in (False, True)
    if not (soft and (name in HARD_ONLY or (mode == "graph" and dtype != "float32")))
]


@pytest.mark.parametrize(("name", "dtype", "mode", "soft"), CASES)
def test_each_implementation_matches_mpmath(name: str, dtype: str, mode: str, soft: bool) -> None:
    needs_graph(mode)
    x = X.astype(DTYPES[dtype])
    y = SOFT if soft else np.eye(4)[CLASSES]
    out = torch_zoo.run(name, 0.0, mode, x, SOFT.astype(x.dtype) if soft else None, CLASSES)
    loss, grad = exact(X, y)
    if name == "torch_autocast_bf16":
        # The loss computes in float32 on the (exact) bfloat16 logits; the gradient is rounded
        # once to bfloat16 on its way back: half an ulp, |g| <= 1, plus float32's 8 eps.
        assert out.output_dtype == "float32"
        assert out.grad.dtype == (np.float64 if dtype == "float64" else np.float32)
        rounded = out.grad.astype(ml_dtypes.bfloat16).astype(out.grad.dtype)
        np.testing.assert_array_equal(rounded, out.grad)
        loss_eps, grad_tol = EPS["float32"], EPS["bfloat16"] / 2 + 8 * EPS["float32"]
    else:
        assert out.output_dtype == dtype
        assert out.grad.dtype == (np.float64 if dtype == "float64" else np.float32)
        loss_eps, grad_tol = EPS[dtype], 8 * EPS[dtype]
    assert out.loss.dtype == np.float64 and out.loss.shape == (3,)
    np.testing.assert_array_less(np.abs(out.loss - loss), 8 * loss_eps * np.maximum(1, loss))
    np.testing.assert_array_less(np.abs(out.grad - grad), grad_tol)


FLOAT16_MAX = 65504.0  # (2 - 2^-10) 2^15; float16 rounds to inf from 65520 on


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_a_float16_loss_cannot_take_a_scale_of_2_16(mode: str) -> None:
    # The float16 loss is cast to float32 and scaled; the backward pass casts the seed S back
    # to float16: 2^15 is exact, 2^16 > 65504 rounds to inf, and inf times any nonzero
    # p_j - y_j is an infinite (or, where the kernel adds infinities, NaN) gradient.
    needs_graph(mode)
    x = X.astype(np.float16)
    plain = torch_zoo.run("torch_cross_entropy", 0.0, mode, x, None, CLASSES)
    half = torch_zoo.run("torch_cross_entropy", 0.0, mode, x, None, CLASSES, loss_scale=2.0**15)
    # A power of two scales every float16 number here exactly (|S g| <= 2^15 < 65504, and
    # |g| >= 1e-3 keeps S g normal), so the unscaled gradient is the same bits.
    np.testing.assert_array_equal(half.grad, plain.grad)
    np.testing.assert_array_equal(half.loss, plain.loss)
    assert FLOAT16_MAX < 2.0**16
    over = torch_zoo.run("torch_cross_entropy", 0.0, mode, x, None, CLASSES, loss_scale=2.0**16)
    assert not np.isfinite(over.grad).any()
    np.testing.assert_array_equal(over.loss, plain.loss)


def test_a_float32_loss_takes_2_16_on_float16_logits() -> None:
    # torch_autocast_bf16's loss is float32: S g is formed in float32 and cast back through
    # bfloat16 to float16, where it overflows only if |S g| >= 65520, i.e. |g| >= 0.99976.
    x = X.astype(np.float16)
    _, grad = exact(X, np.eye(4)[CLASSES])
    assert np.abs(grad).max() * 2.0**16 < 65520
    out = torch_zoo.run("torch_autocast_bf16", 0.0, "eager", x, None, CLASSES, loss_scale=2.0**16)
    plain = torch_zoo.run("torch_autocast_bf16", 0.0, "eager", x, None, CLASSES)
    np.testing.assert_array_equal(out.grad, plain.grad)


# Row [0, -s, -s, -s], label 0: softmax's small probabilities are e^-s / (1 + 3 e^-s), which
# rounds to e^-s.
# log(p) is finite while p > 0; once p is 0, 0 * log(0) = 0 * -inf makes the loss NaN. A CPU
# that flushes subnormals (TensorFlow, XLA) loses p below the smallest normal 2^-126 (2^-1022),
# torch keeps it down to the smallest subnormal 2^-149 (2^-1074): between the two scales
# below, only flushing breaks the loss.
FLUSH_AT = {"float32": 126 * math.log(2), "float64": 1022 * math.log(2)}  # 87.34, 708.40
SUBNORMAL_AT = {"float32": 149 * math.log(2), "float64": 1074 * math.log(2)}  # 103.28, 744.44
# Past half the smallest subnormal (2^-150, 2^-1075) p rounds to 0 in torch too.
ZERO_AFTER = {"float32": 150 * math.log(2), "float64": 1075 * math.log(2)}  # 103.97, 745.13


@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_keeps_subnormal_probabilities_where_flushing_gives_nan(
    mode: str, dtype: str
) -> None:
    needs_graph(mode)
    low, high = FLUSH_AT[dtype], SUBNORMAL_AT[dtype]
    scales = [low + (high - low) * t for t in (0.1, 0.5, 0.95)]
    # Four classes (the label's and three at -s), as the zoo's other rows (ZOO_X): torch.compile
    # reuses the graph compiled for them. Five rows, not four: were this test the first to
    # compile it, four rows of four classes would specialise the graph to square batches
    # (torch's duck sizing), and the zoo's 3 x 4 rows compile another.
    shifts = [*scales, ZERO_AFTER[dtype] + 1, ZERO_AFTER[dtype] + 2]
    x = np.array([[0.0, -s, -s, -s] for s in shifts], dtype=dtype)
    out = torch_zoo.run("torch_softmax_log", 0.0, mode, x, None, np.zeros(5, dtype=int))
    # The loss is -log(1 / (1 + 3 e^-s)) = log1p(3 e^-s): 0 in the dtype (as -0.0 or 0), as
    # 3 e^-s < 2^-24 (2^-53) rounds 1 + 3 e^-s to 1.
    np.testing.assert_array_equal(out.loss[:3], 0.0)
    assert np.isfinite(out.grad[:3]).all()
    assert np.isnan(out.loss[3:]).all()


def test_bfloat16_crosses_to_torch_bit_for_bit() -> None:
    # Every bfloat16 number, NaNs aside, round-trips through torch unchanged.
    bits = np.arange(2**16, dtype=np.uint16).view(ml_dtypes.bfloat16)
    bits = bits[~np.isnan(bits.astype(np.float32))]
    back = torch_zoo._array(torch_zoo._tensor(bits))
    np.testing.assert_array_equal(back.view(np.uint16), bits.view(np.uint16))


def test_graph_mode_says_why_when_torch_compile_cannot_run(monkeypatch) -> None:
    reason = "torch.compile needs a C++ compiler (g++ or clang++) on the PATH: none found"
    monkeypatch.setattr(torch_zoo, "graph_unavailable", lambda: reason)
    with pytest.raises(ImplementationError, match=r"torch_softmax_log \(graph mode\): .*g\+\+"):
        torch_zoo.run("torch_softmax_log", 0.0, "graph", X.astype(np.float32), None, CLASSES)


LOSSES = """
import sys
import time

import torch


def good(labels, logits):
    return -(labels * torch.log_softmax(logits, -1)).sum(-1)


def mean(labels, logits):
    return good(labels, logits).mean()


def raises(labels, logits):
    raise ValueError("bad loss")


def exits(labels, logits):
    sys.exit(0)


def detached(labels, logits):
    return good(labels, logits.detach())


def spin(labels, logits):
    while True:
        time.sleep(0.01)
"""


@pytest.fixture(scope="module")
def losses(tmp_path_factory) -> str:
    """The users' losses above as an importable module, ``module:fn`` (torch.compile imports
    the module of the function it compiles)."""
    root = tmp_path_factory.mktemp("torch_losses")
    (root / "torch_zoo_user_losses.py").write_text(LOSSES)
    sys.path.insert(0, str(root))
    yield "torch_zoo_user_losses"
    sys.path.remove(str(root))
    sys.modules.pop("torch_zoo_user_losses", None)


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_a_users_loss_runs_with_torch_tensors(losses: str, mode: str) -> None:
    needs_graph(mode)
    name = get_impl(f"{losses}:good").name
    out = torch_zoo.run(name, 0.0, mode, X.astype(np.float32), None, CLASSES)
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
        ("detached", "eager", "no gradient w.r.t. the logits"),
    ],
)
def test_a_users_broken_loss_is_one_error(losses: str, fn: str, mode: str, message: str) -> None:
    needs_graph(mode)
    name = get_impl(f"{losses}:{fn}").name
    with pytest.raises(ImplementationError, match=f"^--impl {name}: .*{message}"):
        torch_zoo.run(name, 0.0, mode, X.astype(np.float32), None, CLASSES)


def test_a_loss_past_the_timeout_is_one_error(losses: str) -> None:
    name = get_impl(f"{losses}:spin").name
    with pytest.raises(ImplementationError, match=r"\(float32, eager\) ran longer than .* 0.1 s"):
        torch_zoo.run(name, 0.0, "eager", X.astype(np.float32), None, CLASSES, timeout=0.1)


def test_a_users_loss_from_a_file_compiles(tmp_path) -> None:
    # torch.compile imports the module of the function it traces: impls._load_user_loss puts
    # a file's module in sys.modules.
    needs_graph("graph")
    (tmp_path / "file_losses.py").write_text(LOSSES)
    name = get_impl(f"{tmp_path / 'file_losses.py'}:good").name
    out = torch_zoo.run(name, 0.0, "graph", X.astype(np.float32), None, CLASSES)
    assert out.loss.shape == (3,)


def test_a_users_compiled_loss_leaves_inductors_disk_cache_to_the_zoo(tmp_path) -> None:
    # A file's loss is the module `_xentaudit_<stem>` of its own process only: its compiled
    # graph, cached on disk, made a later process compiling the same graph for a built-in loss
    # (softmax then log, as here) warn with a traceback that it could not unpickle it. So did
    # a built-in loss's graph compiled beside it, whose memory formats pickle had attributed
    # to the user's module (imported before torch's own).
    needs_graph("graph")
    (tmp_path / "own.py").write_text(
        "import torch\n\n\ndef fn(labels, logits):\n"
        "    return -(labels * torch.log(torch.softmax(logits, -1))).sum(-1)\n"
    )
    run = (
        "import numpy as np, xentaudit\n"
        "x = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]], np.float32)\n"
        "xentaudit.audit(x, np.array([0, 1]), impls={!r}, modes=['graph'], backends=['torch'])\n"
    )
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    for impls in ([f"torch:{tmp_path / 'own.py'}:fn", "torch_softmax_log"], ["torch_softmax_log"]):
        done = subprocess.run(
            [sys.executable, "-c", run.format(impls)], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        assert "unable to load compiled graph" not in done.stderr, impls
        assert "Traceback" not in done.stderr, impls
