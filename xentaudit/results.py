"""Frozen result types, their JSON form and the exit-code rule.

JSON is strict (no NaN literals): non-finite numbers are written as the strings ``"inf"``,
``"-inf"`` and ``"nan"``. ``SCHEMA_VERSION`` changes whenever a key changes meaning or goes away.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass

SCHEMA_VERSION = 1

EXIT_OK = 0
EXIT_FLAGGED = 1
EXIT_USAGE = 2


def json_number(value: float) -> float | str:
    """A float for JSON: finite values as numbers, the others spelled out."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def to_json(value: object) -> object:
    """A result as JSON-ready data: dataclass fields in declaration order, tuples as lists,
    non-finite floats spelled out."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, float):
        return json_number(value)
    return value


def exit_code(fail_on: Iterable[str], flag_sets: Iterable[Iterable[str]]) -> int:
    """The exit-code rule of every command: 1 if any ``fail_on`` flag fired in any result."""
    wanted = set(fail_on)
    return EXIT_FLAGGED if any(wanted.intersection(flags) for flags in flag_sets) else EXIT_OK


@dataclass(frozen=True)
class ImplResult:
    """One implementation run in one dtype and execution mode, graded against the reference."""

    impl: str
    dtype: str
    mode: str  # "eager" or "graph" (inside tf.function)
    output_dtype: str
    eps: float | None  # the clipping epsilon the implementation used, if any
    loss: float  # mean of loss_rows
    reference: float  # mean of the exact per-row losses
    loss_rows: tuple[float, ...]
    reference_rows: tuple[float, ...]
    max_rel_err: float  # max over rows of |loss - exact| / max(|exact|, 1)
    max_ulps_err: float  # max over rows of |loss - exact| in ulps of `dtype`
    grad_max_abs_err: float  # max |autodiff gradient - exact gradient|
    rtol: float  # the loss tolerance `divergent` was judged with
    flags: tuple[str, ...]
    row_flags: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Skipped:
    """An implementation x dtype that could not run on this input, and why."""

    impl: str
    dtype: str
    reason: str


@dataclass(frozen=True)
class Audit:
    """Everything one ``audit`` call measured."""

    rows: int
    classes: int
    reference_method: str  # "mpmath" (50 digits) or "float64"
    results: tuple[ImplResult, ...]
    skipped: tuple[Skipped, ...] = field(default=())

    def exit_code(self, fail_on: Iterable[str]) -> int:
        """0 when none of ``fail_on`` fired anywhere, 1 otherwise (2 is for usage errors)."""
        return exit_code(fail_on, (r.flags for r in self.results))

    def to_dict(self) -> dict:
        return {"schema": SCHEMA_VERSION, **to_json(self)}  # type: ignore[dict-item]


@dataclass(frozen=True)
class SweepCell:
    """One implementation x dtype x mode on one pattern at one scale."""

    pattern: str
    impl: str
    eps: float | None
    dtype: str
    mode: str
    scale: float
    output_dtype: str
    loss: float  # mean over the pattern's rows
    reference: float
    max_rel_err: float
    grad_max_abs_err: float
    flags: tuple[str, ...]


@dataclass(frozen=True)
class BreakingPoint:
    """Where an implementation first breaks on a pattern: the loss, or the gradient.

    ``scale`` is the smallest scale at which a failing flag of that ``kind`` fires (3
    significant digits), ``None`` if none fires within the swept range; ``at_start`` means it
    fires already at the smallest scale swept, so the true breaking point may lie lower.
    """

    pattern: str
    impl: str
    eps: float | None
    dtype: str
    mode: str
    kind: str  # "loss" or "grad"
    scale: float | None
    flag: str | None
    at_start: bool


@dataclass(frozen=True)
class PatternInfo:
    name: str
    description: str
    rows: int
    classes: int


@dataclass(frozen=True)
class Sweep:
    """Everything one ``sweep`` call measured."""

    scales: tuple[float, ...]
    patterns: tuple[PatternInfo, ...]
    cells: tuple[SweepCell, ...]
    breaking_points: tuple[BreakingPoint, ...]
    skipped: tuple[Skipped, ...] = field(default=())

    def exit_code(self, fail_on: Iterable[str]) -> int:
        """0 when none of ``fail_on`` fired in any cell, 1 otherwise."""
        return exit_code(fail_on, (c.flags for c in self.cells))

    def to_dict(self) -> dict:
        return {"schema": SCHEMA_VERSION, **to_json(self)}  # type: ignore[dict-item]


@dataclass(frozen=True)
class WorstRow:
    """One of the rows at most risk: where it is, what it should be, what it was."""

    row: int
    exact: float
    loss: float
    rel_err: float
    flags: tuple[str, ...]


@dataclass(frozen=True)
class CheckResult:
    """One implementation x dtype x mode over a whole file, reduced row by row."""

    labels: str  # "file", or without labels "predicted" / "worst-case"
    impl: str
    dtype: str
    mode: str
    output_dtype: str
    eps: float | None
    rows: int
    flags: tuple[str, ...]
    flag_counts: dict[str, int]  # rows on which each flag fired
    max_rel_err: float
    grad_max_abs_err: float
    worst_rows: tuple[WorstRow, ...]
    error_histogram: dict[str, int]  # rows per bucket of |L - exact| / max(|exact|, 1)


@dataclass(frozen=True)
class Check:
    """Everything one ``check_file`` call measured."""

    path: str
    rows: int
    classes: int
    file_dtype: str
    labels: str  # where the labels came from
    lint: dict[str, int]  # input lint flag -> rows it applies to
    results: tuple[CheckResult, ...]
    skipped: tuple[Skipped, ...] = field(default=())

    def exit_code(self, fail_on: Iterable[str]) -> int:
        """0 when none of ``fail_on`` fired on any row (lint included), 1 otherwise."""
        return exit_code(fail_on, [tuple(self.lint), *(r.flags for r in self.results)])

    def to_dict(self) -> dict:
        return {"schema": SCHEMA_VERSION, **to_json(self)}  # type: ignore[dict-item]
