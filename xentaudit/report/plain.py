"""Plain-text pieces shared by the reports: how results are named and how a verdict reads."""

from __future__ import annotations

import math
from collections.abc import Sequence

from xentaudit.dtypes import dtype_label
from xentaudit.results import (
    MODE_NOTE,
    CheckResult,
    FailingResult,
    FrameworkDifference,
    ModeDifference,
    RowAtRisk,
    Verdict,
    variant_label,
)


def _labels(labels: str | None) -> str:
    """`` labels=predicted`` for a label source other than the file's own labels."""
    return "" if labels in (None, "file") else f" labels={labels}"


def power_of_two(scale: float | None) -> str:
    """A ``max_loss_scale`` as ``2^15``; ``none`` for 0 (not finite even unscaled)."""
    return f"2^{math.frexp(scale)[1] - 1}" if scale else "none"


def case_name(r: CheckResult | FailingResult | RowAtRisk) -> str:
    """How a result is named in every CI-facing report:
    ``impl[ eps=E] dtype[ [policy]] mode[ labels=...]`` (``clipped`` names its clip: it may run
    at several; a Keras dtype policy other than float32 is named after the dtype)."""
    dtype = dtype_label(r.dtype, r.policy)
    return f"{variant_label(r.impl, r.eps, True)} {dtype} {r.mode}{_labels(r.labels)}"


def risk_text(risk: RowAtRisk) -> str:
    """``row 1: exact 30, got 16.1180954 (divergent, grad-vanish)`` (``RowAtRisk.where``)"""
    return f"{risk.where}: exact {risk.exact:.10g}, got {risk.loss:.10g} ({', '.join(risk.flags)})"


def differences_text(differences: Sequence[ModeDifference]) -> str:
    names = ", ".join(
        f"{variant_label(d.impl, d.eps, True)} {dtype_label(d.dtype, d.policy)}{_labels(d.labels)}"
        for d in differences
    )
    return f"Eager and tf.function differ for: {names} ({MODE_NOTE})."


def frameworks_text(differences: Sequence[FrameworkDifference]) -> str:
    """Where the backends disagree on one formula, one clause each."""
    clauses = "; ".join(
        f"{d.formula} in {dtype_label(d.dtype, d.policy)} ({d.mode}): "
        + ", ".join(f"{backend} {fared}" for backend, fared in d.backends.items())
        for d in differences
    )
    return f"Frameworks disagree on the same formula: {clauses}."


def verdict_text(verdict: Verdict) -> str:
    """The whole verdict as lines: status and message, rows at risk, eager/graph differences,
    and what each flag that fired means and what to do instead."""
    lines = [f"{verdict.status.upper()}: {verdict.message}"]
    lines += [f"at risk: {case_name(risk)}, {risk_text(risk)}" for risk in verdict.rows_at_risk]
    if verdict.mode_differences:
        lines.append(differences_text(verdict.mode_differences))
    if verdict.framework_differences:
        lines.append(frameworks_text(verdict.framework_differences))
    lines += [f"{name}: {advice.text}" for name, advice in verdict.advice.items()]
    return "\n".join(lines)
