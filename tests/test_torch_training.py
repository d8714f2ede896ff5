"""`xentaudit.torch.audit_batch`: one batch of a PyTorch training loop, audited with the loop's
own loss. Expected flags and headroom are closed forms of float32 derived here."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xentaudit.errors import ConfigError, ImplementationError  # noqa: E402
from xentaudit.torch import DEFAULT_IMPLS, audit_batch  # noqa: E402

FLOAT32_MAX_LOG = math.log(np.finfo(np.float32).max)  # 88.72: 1/p overflows past e^-88.72
SMALLEST_NORMAL_LOG = -math.log(np.finfo(np.float32).tiny)  # 87.34


def test_the_loops_own_reducing_loss_is_audited_per_row() -> None:
    """Row [0, 50, 0], label 0: exact loss 50 + log(2 e^-50 + 1) = 50 to float32 precision;
    nn.CrossEntropyLoss (mean reduction) is made per-row and agrees."""
    r = audit_batch(
        torch.tensor([[0.0, 50.0, 0.0]]), torch.tensor([0]), torch.nn.CrossEntropyLoss()
    )
    # the loop's loss is `model`, as the Keras callback names the compiled one
    assert sorted(r.flags) == ["model", "torch_cross_entropy", "torch_softmax_log"]
    assert r.flags["model"] == () and r.model_loss == pytest.approx(50.0, rel=2**-23)
    assert r.exact_loss == pytest.approx(50.0 + math.log1p(2 * math.exp(-50.0)), rel=1e-15)
    assert r.max_logit_gap == 50.0
    # softmax then log breaks once 1/p (p = e^-gap) overflows float32, gap > 88.72, and not
    # before (p stays a normal number up to gap 87.34): on the grid s = 2^(k/2), s = sqrt(2)
    # (gap 70.7) passes and s = 2 (gap 100) fails
    assert 50 * math.sqrt(2) < SMALLEST_NORMAL_LOG < FLOAT32_MAX_LOG < 50 * 2
    assert r.headroom["torch_softmax_log"] == 2.0
    assert r.headroom["torch_cross_entropy"] == math.inf and r.headroom["model"] == math.inf


def test_a_breaking_batch_is_flagged_and_counted() -> None:
    """Gap 120: e^-120 underflows float32 entirely (below 2^-150 = e^-103.97), so -sum y log p
    multiplies the label weight 0 of a class by log 0: NaN; the fused loss stays exact."""
    assert 150 * math.log(2) < 120
    logits = torch.tensor([[0.0, 120.0, 0.0], [1.0, 0.0, -1.0]])
    r = audit_batch(logits, torch.tensor([0, 0]), torch.nn.functional.cross_entropy, step=300)
    assert r.epoch == 300
    assert "nan" in r.flags["torch_softmax_log"] and r.flagged_rows["torch_softmax_log"] == 1
    assert ("torch_softmax_log", "nan") in r.failing
    assert r.flags["torch_cross_entropy"] == () and r.headroom["torch_softmax_log"] == 1.0


def test_probability_targets_and_bad_shapes() -> None:
    soft = torch.tensor([[0.5, 0.25, 0.25]])
    r = audit_batch(torch.tensor([[1.0, 2.0, 3.0]]), soft, torch.nn.CrossEntropyLoss())
    x = np.array([1.0, 2.0, 3.0])
    want = -np.sum(np.array([0.5, 0.25, 0.25]) * (x - np.log(np.exp(x).sum())))
    assert r.exact_loss == pytest.approx(want, rel=1e-15)
    assert r.model_loss == pytest.approx(want, rel=2**-20)  # float32: a few roundings
    with pytest.raises(ConfigError, match="pass \\(rows, classes\\)"):
        audit_batch(torch.zeros(3), torch.tensor([0]), torch.nn.CrossEntropyLoss())


def test_a_loss_of_the_loop_that_fails_is_named_as_the_loop_passes_it() -> None:
    # A function returning the batch's mean (no per-row losses, no `reduction` to ask them of)
    def my_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, target)

    with pytest.raises(ImplementationError) as error:
        audit_batch(torch.zeros((4, 3)), torch.tensor([0, 1, 2, 0]), my_loss)
    assert str(error.value) == (
        "audit_batch: loss_fn my_loss: the loss returned shape (); it must return one loss per "
        "row, shape (4,) (no reduction)"
    )


def test_the_loops_loss_failing_is_models_and_other_flags_stay_apart() -> None:
    """softmax then log as the loop's own loss, on the gap-120 row: p underflows to 0 and its
    log is -inf, so the loss is inf, recorded under `model`; the fused loss beside it stays
    clean."""

    def softmax_log(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits, dim=-1)
        return -torch.log(p.gather(1, target[:, None]))[:, 0]

    logits = torch.tensor([[120.0, 0.0, 0.0]])
    r = audit_batch(
        logits, torch.tensor([1]), softmax_log, impls="torch_cross_entropy"
    )  # one comma list
    assert "inf" in r.model_failing and ("model", "inf") in r.failing
    assert r.flags["torch_cross_entropy"] == () and r.headroom["model"] == 1.0
    default = audit_batch(logits, torch.tensor([1]), softmax_log, impls=None)  # the default
    assert set(default.flags) == {*DEFAULT_IMPLS, "model"}
