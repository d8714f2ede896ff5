"""The record of one audit during training, whatever the framework: the Keras callback
(``xentaudit.keras``) and PyTorch's ``xentaudit.torch.audit_batch`` build it the same way.

Framework-free: numpy and ``xentaudit.audit``; the caller supplies the logits and a function
that audits them (in its own framework, mode and policy).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from xentaudit.flags import FAILING
from xentaudit.impls import MODEL
from xentaudit.results import Audit

Auditor = Callable[[np.ndarray], Audit]  # logits (in their dtype) -> the audit of them

# The row flags `check` fails on by default (xentaudit/flags.py CHECK_FAIL_ON): every failing
# one but grad-wrong, which fails only when named.
DEFAULT_FAIL_ON = tuple(name for name in FAILING if name != "grad-wrong")
# Headroom grid: s = 2^(k/2), k = 0..HEADROOM_STEPS (1 to 256 for 16 steps).
HEADROOM_STEPS = 16
PREFIX = "xentaudit/"


@dataclass(frozen=True)
class EpochRecord:
    """What one audited epoch found (``epoch`` counts from 1, as Keras' progress bar does).

    ``flags`` are every flag each implementation fired (``ImplResult.flags``);
    ``flagged_rows`` the number of sample rows on which one of ``fail_on`` fired; ``headroom``
    the smallest logit scale factor s of the grid 2^(k/2), k = 0..16, at which auditing s times
    the logits fires one of ``fail_on`` (1.0: it fires already; inf: not within the grid).
    Implementations the audit skipped (e.g. a sparse one on soft labels) are absent.
    """

    epoch: int
    exact_loss: float  # exact mean loss of the sample's logits (float64 reference)
    model_loss: float  # mean of the per-row losses the model's own loss path computes
    max_logit_gap: float  # max over rows of (max logit - min finite logit)
    flags: dict[str, tuple[str, ...]]
    flagged_rows: dict[str, int]
    headroom: dict[str, float]
    seconds: float  # wall time of this audit (logits, audit, headroom, files)
    failing: tuple[tuple[str, str], ...] = field(default=())  # (impl, flag): fail_on flags fired

    @property
    def model_failing(self) -> tuple[str, ...]:
        """The ``fail_on`` flags the loss training uses (``model``) fired: what stops it (the
        other implementations are alternatives audited beside it)."""
        return tuple(flag for name, flag in self.failing if name == MODEL)

    def logs(self) -> dict[str, float]:
        """The record as the numeric ``logs`` entries Keras keeps (``xentaudit/...``)."""
        out = {
            f"{PREFIX}exact_loss": self.exact_loss,
            f"{PREFIX}model_loss": self.model_loss,
            f"{PREFIX}max_logit_gap": self.max_logit_gap,
        }
        for name, count in self.flagged_rows.items():
            out[f"{PREFIX}{name}/flagged_rows"] = float(count)
        for name, factor in self.headroom.items():
            out[f"{PREFIX}{name}/headroom"] = factor
        return out


def failing(result: Audit, fail_on: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Implementation -> the ``fail_on`` flags it fired."""
    wanted = set(fail_on)
    return {r.impl: tuple(f for f in r.flags if f in wanted) for r in result.results}


def record(
    number: int,
    logits: np.ndarray,
    run: Auditor,
    names: Sequence[str],
    own: str,
    fail_on: Sequence[str],
) -> EpochRecord:
    """The record of audit ``number`` (an epoch, a step) of ``logits`` (rows, classes): ``run``
    audits them with the implementations ``names``, ``own`` being the one training uses (its
    mean loss is ``model_loss``)."""
    started = time.perf_counter()
    wide = logits.astype(np.float64)
    broken = int(np.sum((np.isnan(wide) | (wide == np.inf)).any(axis=1)))
    if broken:  # what audit refuses as input: every loss of such a row is NaN
        return _broken(number, broken, names, fail_on, time.perf_counter() - started)
    with np.errstate(invalid="ignore"):
        finite = np.where(np.isfinite(wide), wide, np.nan)
        gap = float(np.nanmax(np.nanmax(finite, axis=1) - np.nanmin(finite, axis=1)))
    result = run(logits)
    fired = failing(result, fail_on)
    wanted = set(fail_on)
    by_impl = {r.impl: r for r in result.results}
    flagged = {
        name: sum(1 for row in r.row_flags if wanted.intersection(row))
        for name, r in by_impl.items()
    }
    mine = by_impl.get(own)
    reference = result.results[0].reference if result.results else math.nan
    return EpochRecord(
        epoch=number,
        exact_loss=reference,
        model_loss=mine.loss if mine is not None else math.nan,
        max_logit_gap=gap,
        flags={name: r.flags for name, r in by_impl.items()},
        flagged_rows=flagged,
        headroom=headroom(logits, fired, run, fail_on),
        seconds=time.perf_counter() - started,
        failing=tuple((name, f) for name, flags in fired.items() for f in flags),
    )


def _broken(
    number: int, rows: int, names: Sequence[str], fail_on: Sequence[str], seconds: float
) -> EpochRecord:
    """The record of logits holding NaN or +inf on ``rows`` rows (the model has diverged): no
    audit, every implementation counted as firing ``nan`` on them."""
    failing_flags = ("nan",) if "nan" in fail_on else ()
    return EpochRecord(
        epoch=number,
        exact_loss=math.nan,
        model_loss=math.nan,
        max_logit_gap=math.nan,
        flags=dict.fromkeys(names, ("nan",)),
        flagged_rows=dict.fromkeys(names, rows if failing_flags else 0),
        headroom=dict.fromkeys(names, 1.0 if failing_flags else math.inf),
        seconds=seconds,
        failing=tuple((name, flag) for name in names for flag in failing_flags),
    )


def headroom(
    logits: np.ndarray,
    fired: dict[str, tuple[str, ...]],
    run: Auditor,
    fail_on: Sequence[str],
) -> dict[str, float]:
    """Per implementation, the smallest s = 2^(k/2), k = 0..HEADROOM_STEPS, at which
    auditing s times the logits (scaled in float64, rounded to their dtype) fires a
    ``fail_on`` flag; 1.0 if the logits themselves fire one, inf if none in the grid.

    A bisection over k for each implementation, the audits of each k shared between them:
    it assumes an implementation that fails at a scale fails at every larger one (clipping,
    underflow and overflow all get worse as logits grow), so it costs at most 2 + 4 audits
    per epoch while the bisections agree (and 4 more per implementation where they part),
    instead of 17. Scaled logits that overflow the dtype (finite ones becoming inf) count
    as failing every implementation.
    """
    cache: dict[int, dict[str, bool]] = {0: {n: bool(f) for n, f in fired.items()}}
    wide = logits.astype(np.float64)

    def fails(k: int) -> dict[str, bool]:
        if k not in cache:
            with np.errstate(over="ignore"):  # an overflow is the finding, just below
                scaled = (wide * 2.0 ** (k / 2)).astype(logits.dtype)
            if (np.isinf(scaled) & np.isfinite(wide)).any():
                cache[k] = dict.fromkeys(fired, True)
            else:
                cache[k] = {n: bool(f) for n, f in failing(run(scaled), fail_on).items()}
        return cache[k]

    out: dict[str, float] = {}
    for name in fired:
        if fails(0)[name]:
            out[name] = 1.0
            continue
        if not fails(HEADROOM_STEPS).get(name, False):
            out[name] = math.inf
            continue
        low, high = 0, HEADROOM_STEPS  # passes at low, fails at high
        while high - low > 1:
            middle = (low + high) // 2
            if fails(middle).get(name, False):
                high = middle
            else:
                low = middle
        out[name] = 2.0 ** (high / 2)
    return out
