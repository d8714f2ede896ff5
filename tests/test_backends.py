"""The three backends in one registry: --backend, backends that are not installed, users'
losses in torch and JAX, framework tensors in the API, graph cells that cannot run, and the
verdict naming where frameworks disagree on one formula. Expected values are closed forms
derived here (float32's smallest normal and subnormal numbers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
jnp = pytest.importorskip("jax.numpy")

import ml_dtypes  # noqa: E402

from xentaudit import audit, impls  # noqa: E402
from xentaudit.cli import cli  # noqa: E402
from xentaudit.io import as_array  # noqa: E402


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_backend_selects_the_frameworks_whose_implementations_run() -> None:
    result = run("compare", "--backend", "torch,jax", "--mode", "eager", "--format", "json")
    assert result.exit_code == 0, result.output
    ran = {r["impl"] for r in json.loads(result.output)["results"]}
    want = {
        n
        for n, i in impls.REGISTRY.items()
        if i.backend in ("torch", "jax") and i.loss == "softmax"
    }
    assert ran == want
    # an implementation named outright runs whatever --backend says
    named = run("compare", "--backend", "jax", "--impl", "naive", "--mode", "eager")
    assert named.exit_code == 0 and "naive" in named.output


def test_a_backend_that_is_not_installed_is_skipped_once_and_named_with_its_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = impls.installed
    monkeypatch.setattr(impls, "installed", lambda backend: backend != "jax" and real(backend))
    result = run("compare", "--mode", "eager", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert not any(impls.REGISTRY[r["impl"]].backend == "jax" for r in doc["results"])
    jax_skips = [s for s in doc["skipped"] if s["impl"] == "jax"]
    assert len(jax_skips) == 1 and "pip install 'xentaudit[jax]'" in jax_skips[0]["reason"]
    named = run("compare", "--impl", "optax_softmax_xent")
    assert named.exit_code == 2
    assert "pip install 'xentaudit[jax]'" in named.stderr and len(named.stderr.splitlines()) == 1


LOSSES = """
import jax
import jax.numpy as jnp
import torch


def torch_loss(labels, logits):
    return -(labels * torch.log_softmax(logits, dim=-1)).sum(-1)


def jax_loss(labels, logits):
    return -(labels * jax.nn.log_softmax(logits)).sum(-1)
"""


@pytest.mark.parametrize(("prefix", "fn"), [("torch", "torch_loss"), ("jax", "jax_loss")])
def test_a_users_loss_in_torch_or_jax_gets_its_own_tensors(
    tmp_path: Path, prefix: str, fn: str
) -> None:
    (tmp_path / "losses.py").write_text(LOSSES)
    spec = f"{prefix}:{tmp_path / 'losses.py'}:{fn}"
    result = run(
        "check", Path(__file__).parent.parent / "fixtures" / "clean.npz",
        "--impl", spec, "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert {r["impl"] for r in doc["results"]} == {spec}
    assert {r["mode"] for r in doc["results"]} == {"eager", "graph"}
    # A TensorFlow loss would fail on torch tensors: the prefix is what routes it.
    wrong = run("compare", "--impl", f"{tmp_path / 'losses.py'}:{fn}", "--mode", "eager")
    assert wrong.exit_code == 2 and len(wrong.stderr.splitlines()) == 1


def test_the_api_takes_torch_tensors_and_jax_arrays() -> None:
    x = np.array([[1.0, -2.0, 0.5], [3.0, 3.0, -1.0]], np.float32)
    y = np.array([0, 2])
    want = audit(x, y, impls=["log_softmax"], modes=["eager"], dtypes=["all"]).to_dict()
    for logits, labels in (
        (torch.tensor(x, requires_grad=True), torch.tensor(y)),
        (jnp.asarray(x), jnp.asarray(y)),
    ):
        got = audit(logits, labels, impls=["log_softmax"], modes=["eager"], dtypes=["all"])
        assert got.to_dict() == want
    # A bfloat16 tensor arrives as the same bfloat16 numbers (numpy has none: ml_dtypes'
    # stands in), bit for bit.
    half = torch.tensor(x).to(torch.bfloat16)
    as_numpy = half.float().numpy().astype(ml_dtypes.bfloat16)  # exact: bfloat16 in float32
    assert as_array(half).dtype == as_numpy.dtype
    assert as_array(half).view(np.uint16).tolist() == as_numpy.view(np.uint16).tolist()
    got = audit(half, torch.tensor(y), impls=["log_softmax"], modes=["eager"], dtypes=["bfloat16"])
    want = audit(as_numpy, y, impls=["log_softmax"], modes=["eager"], dtypes=["bfloat16"])
    assert got.to_dict() == want.to_dict()


def test_graph_cells_that_cannot_run_here_are_skipped_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from xentaudit.impls import torch_zoo

    reason = "torch.compile needs a C++ compiler (g++ or clang++) on the PATH: none found"
    monkeypatch.setattr(torch_zoo, "graph_unavailable", lambda: reason)
    a = audit([[0.0, 1.0]], [1], impls=["torch_cross_entropy", "log_softmax"])
    assert {(r.impl, r.mode) for r in a.results} == {
        ("torch_cross_entropy", "eager"), ("log_softmax", "eager"), ("log_softmax", "graph"),
    }  # fmt: skip
    (skip,) = a.skipped
    assert skip.impl == "torch_cross_entropy" and skip.reason == f"graph mode: {reason}"


def test_the_verdict_names_frameworks_that_disagree_on_one_formula() -> None:
    """-sum y log(softmax(x)) on the row [0, -s], label 1, float32: softmax's small probability
    is e^-s / (1 + e^-s). Between float32's smallest normal (2^-126: s = 126 ln 2 = 87.3) and
    half its smallest subnormal (2^-150: s = 150 ln 2 = 104.0) it is a subnormal number:
    torch on the CPU keeps it (a finite loss near s), TensorFlow and XLA flush it to 0
    (log 0 = -inf, an infinite loss). A backend swapped for another fails this test."""
    s = 95.0
    assert 126 * math.log(2) < s < 150 * math.log(2)
    a = audit(
        [[0.0, -s]], [1], impls=["shifted", "torch_softmax_log", "jax_softmax_log"],
        modes=["eager"],
    )  # fmt: skip
    loss = {r.impl: r.loss for r in a.results}
    # the subnormal keeps 149 - 137 = 12 bits at e^-95 (~2^-137): log is off by at most 2^-12
    assert math.isfinite(loss["torch_softmax_log"]) and abs(loss["torch_softmax_log"] - s) < 1e-3
    assert math.isinf(loss["shifted"]) and math.isinf(loss["jax_softmax_log"])
    # (the gradient 1/p of log p overflows float32 at p ~ 2^-137 in torch too: grad-nan)
    (difference,) = a.verdict().framework_differences
    assert difference.formula == "-sum y log(softmax(x))" and difference.dtype == "float32"
    assert set(difference.backends) == {"tensorflow", "torch", "jax"}
    assert difference.backends["tensorflow"].startswith("shifted inf")
    assert difference.backends["jax"].startswith("jax_softmax_log inf")
    assert difference.backends["torch"].split()[1] not in ("nan", "inf")
    table = run(
        "compare", "--logits", json.dumps([[0.0, -s]]), "--labels", "[1]", "--mode", "eager",
        "--impl", "shifted", "--impl", "torch_softmax_log", "--impl", "jax_softmax_log",
    )  # fmt: skip
    assert "Frameworks disagree on the same formula: -sum y log(softmax(x)) in float32" in (
        table.output
    )


def test_agreeing_frameworks_are_no_difference() -> None:
    x = np.random.default_rng(5).standard_normal((6, 7)) * 3
    a = audit(
        x, np.arange(6), impls=["tf_softmax_xent", "torch_cross_entropy", "optax_softmax_xent"],
        modes=["eager"],
    )  # fmt: skip
    assert all(r.max_ulps_err <= 8 for r in a.results)  # each within the default tolerance
    assert a.verdict().framework_differences == ()


def test_sweep_breaking_points_name_the_backend() -> None:
    result = run(
        "sweep", "--impl", "torch_softmax_log", "--impl", "shifted", "--dtype", "float32",
        "--pattern", "seed", "--mode", "eager", "--scales", "1:100:5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    points = result.output[result.output.index("Breaking points") :]
    rows = [line.split() for line in points.splitlines()]
    assert ["torch", "torch_softmax_log", "float32"] in [r[:3] for r in rows]
    assert ["tensorflow", "shifted", "float32"] in [r[:3] for r in rows]


def test_a_run_of_other_backends_alone_never_imports_tensorflow() -> None:
    """TensorFlow's import is most of a small run's time; a torch or JAX audit skips it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from xentaudit.cli import cli\n"
        "for args in (['compare', '--impl', 'torch_cross_entropy', '--mode', 'eager'],\n"
        "             ['compare', '--backend', 'jax', '--mode', 'eager']):\n"
        "    try:\n"
        "        cli(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (args, exc.code)\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["False", "False"]


def test_framework_errors_disagree_past_the_factor_and_the_tolerance() -> None:
    """Two backends' fused losses, both clean: below DISAGREE_ULPS (8 eps) no ratio counts
    (1 and 7.9 agree, 1 and 8.1 do not); above it DISAGREE_FACTOR (4) decides (9 and 9 x 3.9
    agree, 9 and 9 x 4.1 do not). Doubling or halving either constant fails one of these."""
    from dataclasses import replace

    from factories import impl_result

    from xentaudit.results import Audit

    eps = 2.0**-23

    def differ(tf_err: float, torch_err: float) -> bool:
        tf = impl_result("tf_softmax_xent", "eager", [1.0], [1.0], [()])
        torch_ = impl_result("torch_cross_entropy", "eager", [1.0], [1.0], [()])
        a = replace(tf, max_rel_err=tf_err * eps)
        b = replace(torch_, max_rel_err=torch_err * eps)
        return bool(Audit(1, 3, "mpmath", (a, b)).verdict().framework_differences)

    assert not differ(1.0, 7.9)  # under the tolerance: no ratio counts
    assert differ(1.0, 8.1)
    assert not differ(9.0, 9.0 * 3.9) and differ(9.0, 9.0 * 4.1)


def test_fused_losses_are_not_flagged_on_a_confident_row_or_a_vocabulary_of_32000() -> None:
    # Each framework adds a row's exponentials in its own order: torch in one vector of 8 or 16
    # lanes (AVX2, AVX-512), TensorFlow in blocks. On a confident row (the label's logit 0, the
    # others ln(2^-25): each term lost against a running sum of 1) that loses a lane's terms,
    # 1/16 to 1/8 of the loss (torch) or 1/128 (TensorFlow), inside the lanes' bound u d (README
    # "Why these tolerances") and far past the tree bound (8 + k) eps alone, which flagged them.
    # On standard normal logits x 3 the error is rounding too. Neither is flagged.
    classes = 32000
    confident = np.full((1, classes), np.float32(math.log(2.0**-25)), dtype=np.float32)
    confident[0, 0] = 0.0
    rng = np.random.default_rng(0)
    x = np.concatenate([confident, (rng.standard_normal((7, classes)) * 3).astype(np.float32)])
    labels = np.concatenate([[0], rng.integers(0, classes, 7)])
    fused = [
        "tf_softmax_xent",
        "tf_sparse_softmax_xent",
        "torch_cross_entropy",
        "torch_log_softmax_nll",
    ]
    a = audit(x, labels, impls=fused, modes=["eager"])
    assert {r.impl for r in a.results} == set(fused)
    for r in a.results:
        assert r.flags == (), (r.impl, r.flags)
    torch_ = next(r for r in a.results if r.impl == "torch_cross_entropy")
    assert (
        torch_.max_rel_err > (8 + 15) * 2.0**-23
    )  # past the tree bound: the lanes' term is needed
