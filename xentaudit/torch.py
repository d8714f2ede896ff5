"""``xentaudit.torch.audit_batch``: audit one batch of a PyTorch training loop, the counterpart
of the Keras callback (``xentaudit.keras``), returning the same record.

Importing this module imports torch; ``import xentaudit`` does not import it.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from xentaudit.audit import audit
from xentaudit.choices import names_given
from xentaudit.errors import ConfigError, ImplementationError
from xentaudit.flags import fail_on_flags
from xentaudit.impls import MODEL
from xentaudit.io import as_array
from xentaudit.results import Audit
from xentaudit.testing import register
from xentaudit.training import DEFAULT_FAIL_ON, EpochRecord, record

MAX_ROWS = 4096  # rows audited per call: the exact reference is per row, and runs here
# A loss that never breaks (the fused one) and one that does (softmax, then log, by hand).
DEFAULT_IMPLS = ("torch_cross_entropy", "torch_softmax_log")

# (the loop's loss, whether its targets are class indices) -> its per-row form, registered
_PER_ROW: dict[tuple[int, bool], tuple[Any, str]] = {}


def _unreduced(loss_fn: Callable) -> Callable:
    """``loss_fn`` returning one loss per row: a ``torch.nn`` loss copied with
    ``reduction="none"``, a function taking ``reduction`` (``F.cross_entropy``) given it, any
    other as it is (it must then return per-row losses itself)."""
    if isinstance(loss_fn, torch.nn.Module) and hasattr(loss_fn, "reduction"):
        unreduced = copy.copy(loss_fn)
        unreduced.reduction = "none"
        return unreduced
    try:
        takes_reduction = "reduction" in inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        takes_reduction = False
    return functools.partial(loss_fn, reduction="none") if takes_reduction else loss_fn


def _registered(loss_fn: Callable, classes: bool) -> str:
    """The implementation name of the loop's loss as the zoo runs users' losses
    (``fn(labels, logits)``, dense labels): called as the loop calls it, ``loss_fn(logits,
    target)``, with class indices when the loop's targets are classes. One name per loss."""
    key = (id(loss_fn), classes)
    if key not in _PER_ROW or _PER_ROW[key][0] is not loss_fn:
        unreduced = _unreduced(loss_fn)

        def loop_loss(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            # one-hot rows give their class back exactly
            return unreduced(logits, labels.argmax(dim=-1) if classes else labels)

        loop_loss.__qualname__ = f"loop_{_label(loss_fn)}"
        _PER_ROW[key] = (loss_fn, register(loop_loss, "torch"))
    return _PER_ROW[key][1]


def audit_batch(
    logits: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable,
    *,
    step: int = 0,
    impls: Iterable[str] | str | None = DEFAULT_IMPLS,
    fail_on: Iterable[str] | str = DEFAULT_FAIL_ON,
) -> EpochRecord:
    """Audit ``logits`` (rows, classes; the input of the loss, in their dtype) against
    ``target`` (class indices, or probabilities per row) with the loop's own ``loss_fn``
    (called as ``loss_fn(logits, target)``; a reducing ``torch.nn`` loss or a function taking
    ``reduction`` is made per-row) beside ``impls``, eagerly, as a training loop runs it.

    Returns the record the Keras callback keeps per epoch (``xentaudit.training.EpochRecord``,
    ``epoch`` = ``step``): exact and the loop's mean loss, largest logit gap, flags and rows
    flagged per implementation (the loop's loss named ``model``, as the Keras callback names
    the compiled one), and the headroom (the logit scale factor to the first ``fail_on``
    flag). An error of the loop's loss names it as ``loss_fn``. Call it every few hundred
    steps on a detached batch of at most ``MAX_ROWS`` rows.
    """
    fail_on = fail_on_flags(fail_on, "audit_batch's fail_on")
    x = as_array(logits)
    y = as_array(target)
    if x.ndim != 2 or x.shape[0] > MAX_ROWS:
        raise ConfigError(
            f"audit_batch: logits of shape {x.shape}; pass (rows, classes) with at most "
            f"{MAX_ROWS} rows (a slice of the batch)"
        )
    classes = y.ndim == 1
    own = _registered(loss_fn, classes)
    names = (*names_given(impls, "impls", DEFAULT_IMPLS, empty_ok=True), own)  # a comma list

    def run(values: np.ndarray) -> Audit:
        return audit(values, y, impls=names, dtypes=(values.dtype.name,), modes=("eager",))

    try:
        found = record(step, x, run, names, own, fail_on)
    except ImplementationError as exc:  # named as the loop names it, not by its registration
        said = str(exc).removeprefix(f"--impl {own}")
        if said == str(exc):
            raise
        raise ImplementationError(f"audit_batch: loss_fn {_label(loss_fn)}{said}") from None
    return _own_as_model(found, own)


def _label(loss_fn: Callable) -> str:
    """How the loop names its loss: a function's name, a module's class."""
    return getattr(loss_fn, "__name__", type(loss_fn).__name__)


def _own_as_model(found: EpochRecord, own: str) -> EpochRecord:
    """``found`` with the loop's loss (registered as ``own``) named ``model``, as the Keras
    callback names the model's compiled loss."""

    def named(by_impl: dict) -> dict:
        return {MODEL if name == own else name: value for name, value in by_impl.items()}

    return replace(
        found,
        flags=named(found.flags),
        flagged_rows=named(found.flagged_rows),
        headroom=named(found.headroom),
        failing=tuple((MODEL if name == own else name, flag) for name, flag in found.failing),
    )
