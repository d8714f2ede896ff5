"""Frozen result types, their JSON form, the exit-code rule, and what the results conclude.

The conclusions (a ``Verdict`` for ``compare`` and ``check``, the ``summary`` of a ``Sweep``)
are computed here, once, so that JSON, the Python API and every renderer say the same thing.

JSON is strict (no NaN literals): non-finite numbers are written as the strings ``"inf"``,
``"-inf"`` and ``"nan"``. ``SCHEMA_VERSION`` changes whenever a key changes meaning or goes away.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import cached_property

from xentaudit.dtypes import FORMATS, dtype_label
from xentaudit.errors import EXIT_FLAGGED, EXIT_OK
from xentaudit.flags import CHECK_FAIL_ON, FAILING, FLAGS, Advice, explained, fail_on_flags
from xentaudit.impls import FORMULAS, REGISTRY

SCHEMA_VERSION = 1
MODE_NOTE = "model.fit runs the tf.function path"  # why an eager/graph difference matters


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


def exit_code(
    fail_on: Iterable[str],
    flag_sets: Iterable[Iterable[str]],
    baseline: Comparison | None = None,
) -> int:
    """The exit-code rule of every command: 1 if any ``fail_on`` flag fired in any result;
    against a ``baseline``, 1 only for a regression (``fail_on`` is checked either way: a
    misspelt flag is refused)."""
    wanted = set(fail_on_flags(fail_on))
    if baseline is not None:
        return EXIT_FLAGGED if baseline.regressions else EXIT_OK
    return EXIT_FLAGGED if any(wanted.intersection(flags) for flags in flag_sets) else EXIT_OK


@dataclass(frozen=True)
class FailingResult:
    """A result that fails the verdict, and the flags that make it fail."""

    impl: str
    dtype: str
    mode: str
    labels: str | None  # the label source of a `check` result; None for `compare`
    flags: tuple[str, ...]
    eps: float | None = None  # the clip it used: tells `clipped` at several --eps apart
    policy: str = "float32"  # the Keras dtype policy it ran under


@dataclass(frozen=True)
class RowAtRisk:
    """One of the worst rows of a failing result: its exact loss and what the implementation got."""

    impl: str
    dtype: str
    mode: str
    labels: str | None
    row: int
    exact: float
    loss: float
    flags: tuple[str, ...]
    eps: float | None = None
    policy: str = "float32"  # the Keras dtype policy it ran under
    shard: str | None = None  # as WorstRow's
    shard_row: int | None = None

    @property
    def where(self) -> str:
        """``row 7``, or in a check of shards ``row 1031 (logits/shard-01.npy row 7)``."""
        return f"row {self.row}{shard_note(self.shard, self.shard_row)}"


def shard_note(shard: str | None, shard_row: int | None) -> str:
    """`` (logits/shard-01.npy row 7)`` for a row of a check of shards, else nothing."""
    return "" if shard is None else f" ({shard} row {shard_row})"


@dataclass(frozen=True)
class ModeDifference:
    """An implementation x dtype (x label source) whose eager and tf.function results differ."""

    impl: str
    dtype: str
    labels: str | None
    eps: float | None = None
    policy: str = "float32"  # the Keras dtype policy it ran under


@dataclass(frozen=True)
class FrameworkDifference:
    """One formula (``impls.FORMULAS``) in one dtype, mode and policy on which the backends
    that implement it disagree: different failing flags, or loss errors (relative, in eps of
    the dtype) more than ``DISAGREE_FACTOR`` apart with the larger past ``DISAGREE_ULPS``."""

    formula: str
    dtype: str
    mode: str
    policy: str
    backends: dict[str, str]  # backend -> its implementation and how it fares ("0.53 ulps")


@dataclass(frozen=True)
class Verdict:
    """What a ``compare`` or ``check`` concludes, for people and for programs alike."""

    status: str  # "pass" or "fail"
    message: str  # one line in plain language
    failing: tuple[FailingResult, ...]
    failing_lint: tuple[str, ...]  # input lint flags that fail it (`check`)
    trustworthy: tuple[str, ...]  # implementations never flagged with a failing kind of flag
    rows_at_risk: tuple[RowAtRisk, ...]  # the worst failing rows of each failing result
    mode_differences: tuple[ModeDifference, ...]  # MODE_NOTE says why they matter
    advice: dict[str, Advice]  # every flag that fired (lint included), in FLAGS order
    # with a gate (`check --model`): each alternative -> the gated results' failing flags that
    # switching to it would remove (those it does not fire itself)
    alternatives: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # `compare`: where the frameworks disagree on one formula (the same math in each backend)
    framework_differences: tuple[FrameworkDifference, ...] = ()


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
    policy: str = "float32"  # the Keras dtype policy its Keras layers ran under
    # the largest power-of-two loss scale whose gradient is finite on every row (0: none);
    # searched only with a loss scale given, else None
    max_loss_scale: float | None = None
    # the framework's own mean of the per-row losses, in the output dtype (the scalar the
    # optimizer sees), and that dtype's spacing at the exact mean ``reference``
    returned_mean: float | None = None
    mean_spacing: float | None = None


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
    reference_method: str  # "mpmath" (50 digits), "float64" (the kernel) or "float64-numpy"
    results: tuple[ImplResult, ...]
    skipped: tuple[Skipped, ...] = field(default=())
    loss_scale: float | None = None  # gradients were taken of this times the loss (None: 1)
    model: str | None = None  # the loss path audited as `model` (ModelPath.describe()), if any
    environment: dict[str, str] = field(default_factory=dict)  # environment.environment()
    loss: str = "softmax"  # losses.LOSSES: the loss audited (--loss)
    ignore_class: int | None = None  # --ignore-class: the class whose rows the loss ignores
    ignored_rows: int = 0  # rows of that class: exact loss 0, the means over the others

    def exit_code(self, fail_on: Iterable[str]) -> int:
        """0 when none of ``fail_on`` fired anywhere, 1 otherwise (2 is for usage errors)."""
        return exit_code(fail_on, (r.flags for r in self.results))

    def verdict(self) -> Verdict:
        """The verdict: a result fails when a failing kind of flag fired on it (whatever
        ``--fail-on`` says; that governs only the exit code). It names where the backends
        disagree on one formula (``FrameworkDifference``)."""
        verdict = _verdict(self.results, FAILING, {}, "are wrong")
        advice = {name: explained(name, self.loss) for name in verdict.advice}
        return replace(
            verdict, framework_differences=_framework_differences(self.results), advice=advice
        )

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "command": "compare",  # the command whose report this is (a --baseline)
            **to_json(self),  # type: ignore[dict-item]
            "verdict": to_json(self.verdict()),
        }


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
    policy: str = "float32"


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
    policy: str = "float32"


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
    reference_method: str = "float64"  # "float64" (the compiled kernel) or "float64-numpy"
    loss_scale: float | None = None  # gradients were taken of this times the loss (None: 1)
    environment: dict[str, str] = field(default_factory=dict)  # environment.environment()
    baseline: Comparison | None = None  # --baseline: the breaking points against an earlier sweep
    loss: str = "softmax"  # losses.LOSSES: the loss swept (--loss)

    def exit_code(self, fail_on: Iterable[str]) -> int:
        """0 when none of ``fail_on`` fired in any cell, 1 otherwise; against a ``baseline``,
        1 only for a regression."""
        return exit_code(fail_on, (c.flags for c in self.cells), self.baseline)

    @cached_property
    def summary(self) -> tuple[str, ...]:
        """Plain-language conclusions: who survives, who breaks first and why, what to use."""
        return _sweep_summary(self)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "command": "sweep",  # the command whose report this is (a --baseline)
            **to_json(self),  # type: ignore[dict-item]
            "summary": list(self.summary),
        }


@dataclass(frozen=True)
class WorstRow:
    """One of the rows at most risk: where it is, what it should be, what it was."""

    row: int
    exact: float
    loss: float
    rel_err: float
    flags: tuple[str, ...]
    # a check of shards: the file the row is in, and its row there (``row`` counts from the
    # first shard's first row, as in the shards' concatenation)
    shard: str | None = None
    shard_row: int | None = None


@dataclass(frozen=True)
class ShardInfo:
    """One file of a sharded dump as `check` audited it."""

    path: str
    labels: str | None  # where its labels came from (None: without labels)
    rows: int
    first_row: int  # its first row's number in the shards' concatenation


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
    # means over the rows, each sum exact (one rounding, in the division): NaN when a loss is NaN
    # (or the losses hold both +inf and -inf); the exact mean is +inf where a label is masked
    loss_mean: float
    exact_mean: float
    flags: tuple[str, ...]
    flag_counts: dict[str, int]  # rows on which each flag fired
    max_rel_err: float
    grad_max_abs_err: float
    worst_rows: tuple[WorstRow, ...]
    error_histogram: dict[str, int]  # rows per bucket of |L - exact| / max(|exact|, 1)
    policy: str = "float32"  # the Keras dtype policy its Keras layers ran under
    max_loss_scale: float | None = None  # as ImplResult's, over the whole file
    # the scalar the model's reduction makes of the file's per-row losses (Check.reduction),
    # and of the exact ones; None without a model or for reduction None
    loss_reduced: float | None = None
    exact_reduced: float | None = None
    # the output dtype's spacing at the exact mean (NaN where it has none): how coarse a mean
    # returned in it is there (compare grades a returned mean: a file read in chunks is no batch)
    mean_spacing: float | None = None
    # the most nonzero label weights of a row as graded (1 for class labels, C with label
    # smoothing): soft labels widen the tolerances (README "Label smoothing"), and the noise
    # floor of a --baseline comparison with them
    label_weights: int = 1

    @property
    def name(self) -> str:
        """How reports and a ``--baseline`` comparison name this result (``result_name``)."""
        return result_name(self.impl, self.eps, self.dtype, self.policy, self.mode, self.labels)


# Keras' reductions (keras/src/losses/loss.py ``reduce_values``) of per-row losses without
# sample weights: a sum, or that sum over the number of rows.
REDUCTIONS = {
    "sum": "sum",
    "sum_over_batch_size": "mean",
    "mean": "mean",
    "mean_with_sample_weight": "mean",  # no sample weights: over the number of rows
}


def reduced(reduction: str | None, mean: float, rows: int) -> float | None:
    """The scalar Keras' ``reduction`` makes of ``rows`` per-row losses of mean ``mean``: their
    sum for "sum", ``mean`` for the mean reductions, None for None ("none": no scalar)."""
    kind = REDUCTIONS.get(reduction or "none")
    if kind is None:
        return None
    return mean * rows if kind == "sum" else mean


@dataclass(frozen=True)
class FlaggedRow:
    """A row of a ``check`` result on which a loss or gradient flag fired (informational
    ``zero-loss`` included): what ``--flagged-rows`` writes, one CSV line each."""

    row: int
    impl: str
    eps: float | None
    dtype: str
    policy: str
    mode: str
    labels: str
    flags: tuple[str, ...]  # as WorstRow's: the row's loss and gradient flags
    exact: float
    loss: float
    rel_err: float  # |loss - exact| / max(|exact|, 1)
    grad_err: float  # max_j |G - g| on this row
    shard: str | None = None  # as WorstRow's
    shard_row: int | None = None


@dataclass(frozen=True)
class Comparison:
    """A check against its baseline (``baseline.compare``): what got worse fails, what got
    better passes."""

    path: str
    regressions: tuple[str, ...]  # what got worse, one line each: "name: what"
    improvements: tuple[str, ...]
    environment_changes: dict[str, str] = field(default_factory=dict)  # key -> "old -> new"
    unmatched: tuple[str, ...] = ()  # baseline results this run did not audit
    # what regressed, each once: "input", results (``result_name``) or breaking points, and the
    # baseline's results this run did not audit (several lines may name one result)
    regressed: tuple[str, ...] = ()
    unit: str = "result"  # what is compared: "result" (check) or "breaking point" (sweep)

    def __post_init__(self) -> None:
        if bool(self.regressions) != bool(self.regressed):
            raise ValueError("a Comparison names what regressed exactly when it has regressions")

    def count(self) -> str:
        """``the input and 2 results regressed``, or ``no regression``."""
        n = len(self.regressed) - ("input" in self.regressed)
        parts = ["the input"] * ("input" in self.regressed)
        if n:
            parts.append(f"{n} {self.unit}{'s' * (n != 1)}")
        return f"{' and '.join(parts)} regressed" if parts else "no regression"

    def lines_of(self, name: str) -> tuple[str, ...]:
        """The regression lines of the result (or the input) ``name``."""
        return tuple(line for line in self.regressions if line.startswith(f"{name}: "))

    def message(self) -> str:
        """One paragraph: the regressions (or none), the improvements, what changed around."""
        text = f"Against the baseline {self.path}: {self.count()}" + (
            f": {'; '.join(self.regressions)}." if self.regressions else "."
        )
        if self.improvements:
            text += f" Improved: {'; '.join(self.improvements)}."
        if self.environment_changes:
            changed = ", ".join(f"{k} {v}" for k, v in self.environment_changes.items())
            text += f" Changed since: {changed}."
        # the lost results a regression line names already are not named twice
        others = [name for name in self.unmatched if name not in self.regressed]
        if others:
            text += f" Not audited this time: {', '.join(others)}."
        return text


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
    reference_method: str = "float64"  # "float64" (the compiled kernel) or "float64-numpy"
    config: str | None = None  # the [tool.xentaudit] file whose defaults were used, if any
    loss_scale: float | None = None  # gradients were taken of this times the loss (None: 1)
    flagged_rows: int = 0  # rows x results carrying a loss or gradient flag (FlaggedRow's)
    flagged_rows_path: str | None = None  # where they were written as CSV, if anywhere
    # the implementations the exit code and the verdict judge (None: every one); the others
    # are alternatives shown beside them (`check --model`: the model's own loss path gates)
    gate: tuple[str, ...] | None = None
    model: str | None = None  # the loss path audited as `model` (ModelPath.describe()), if any
    # with no implementation named (nor --model): the fused losses on logits audited, which the
    # verdict offers to pin when only other implementations fail
    pinnable: tuple[str, ...] = ()
    input: str = "logits"  # what the file holds (--input): logits, probabilities, log-probabilities
    reduction: str | None = None  # --model: its loss's reduction, which CheckResult's *_reduced use
    # --model: rows of its loss's ignore_class, left out as Keras does; --ignore-class: the
    # rows of that class (``ignore_class``), graded as ignored and left out of the means
    ignored_rows: int = 0
    environment: dict[str, str] = field(default_factory=dict)  # environment.environment()
    baseline: Comparison | None = None  # --baseline: the run against an earlier report
    loss: str = "softmax"  # losses.LOSSES: the loss audited (--loss)
    ignore_class: int | None = None  # --ignore-class: the class whose rows the loss ignores
    shards: tuple[ShardInfo, ...] = ()  # a check of several files: each, in order

    @property
    def gated(self) -> tuple[CheckResult, ...]:
        """The results the exit code and the verdict judge: those of the ``gate``."""
        return tuple(r for r in self.results if self.gate is None or r.impl in self.gate)

    def exit_code(self, fail_on: Iterable[str]) -> int:
        """0 when none of ``fail_on`` fired on any row of a gated result (lint included), 1
        otherwise; against a ``baseline``, 1 only for a regression."""
        return exit_code(fail_on, [tuple(self.lint), *(r.flags for r in self.gated)], self.baseline)

    def verdict(self, fail_on: Iterable[str] = CHECK_FAIL_ON) -> Verdict:
        """The verdict on ``fail_on`` (the exit code's flags): a gated result fails when one of
        them fired on any of its rows, and the input fails when one of them is a lint flag it
        got. With a ``gate``, it says for each alternative which of the gated results' failing
        flags switching to it would remove. Its message ends saying where the flagged rows
        were written, if they were."""
        fail_on = fail_on_flags(fail_on)
        verdict = _verdict(self.gated, fail_on, self.lint, "fire a --fail-on flag")
        if self.gate is not None:
            verdict = _with_alternatives(verdict, self.results, self.gate, fail_on)
            # the alternatives are shown beside the gated results, their modes apart too
            verdict = replace(verdict, mode_differences=_mode_differences(self.results))
        failing = {f.impl for f in verdict.failing}
        if self.pinnable and failing and not failing & set(self.pinnable):
            verdict = replace(verdict, message=_pin_hint(self.pinnable) + verdict.message)
        if self.ignore_class is not None and self.ignored_rows:
            verdict = replace(
                verdict,
                message=f"{verdict.message} Rows of the ignored class are graded, not the means "
                "over the rest, where a loss that averages them in is wrong: `xentaudit "
                "compare --ignore-class` grades those on a batch.",
            )
        if self.flagged_rows_path is not None:
            rows = f"{self.flagged_rows} flagged row{'' if self.flagged_rows == 1 else 's'}"
            verdict = replace(
                verdict, message=f"{verdict.message} {rows} written to {self.flagged_rows_path}."
            )
        if self.baseline is None:
            return verdict
        # Against a baseline only a regression fails; what fired already is reported as such.
        return replace(
            verdict,
            status="fail" if self.baseline.regressions else "pass",
            message=f"{self.baseline.message()} This run: {verdict.message}",
        )

    def to_dict(self, fail_on: Iterable[str] = CHECK_FAIL_ON) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "command": "check",  # the command whose report this is (a --baseline)
            **to_json(self),  # type: ignore[dict-item]
            "verdict": to_json(self.verdict(fail_on)),
        }


# --- verdicts --------------------------------------------------------------------------------


def _labels(r: ImplResult | CheckResult) -> str | None:
    """The label source of a result: `check` audits several, `compare` one (None)."""
    return r.labels if isinstance(r, CheckResult) else None


def _worst_failing_row(r: ImplResult, rows: list[int]) -> int:
    """Of ``rows``, the one with the largest relative loss error, as ``check`` orders its worst
    rows: a NaN error is the largest, and the earlier row wins a tie."""

    def error(i: int) -> float:
        loss, exact = r.loss_rows[i], r.reference_rows[i]
        if loss == exact:  # also an infinite exact loss that was met exactly
            return 0.0
        rel = abs(loss - exact) / max(abs(exact), 1.0)
        return math.inf if math.isnan(rel) else rel

    return max(rows, key=error)


def _rows_at_risk(r: ImplResult | CheckResult, wanted: set[str]) -> tuple[RowAtRisk, ...]:
    """The worst row of a failing ``compare`` result; the kept worst rows of a ``check`` result
    that carry a ``wanted`` flag."""
    if isinstance(r, CheckResult):
        rows = [(w.row, w.exact, w.loss, w.flags, w.shard, w.shard_row) for w in r.worst_rows]
    else:
        flagged = [i for i, f in enumerate(r.row_flags) if wanted.intersection(f)]
        if not flagged:  # a flag of the result's own mean (coarse-mean, ignored-counted)
            return ()
        i = _worst_failing_row(r, flagged)
        rows = [(i, r.reference_rows[i], r.loss_rows[i], r.row_flags[i], None, None)]
    return tuple(
        RowAtRisk(
            r.impl, r.dtype, r.mode, _labels(r), row, exact, loss, flags, r.eps, r.policy, *shard
        )
        for row, exact, loss, flags, *shard in rows
        if wanted.intersection(flags)
    )


def _same_but_mode(a: ImplResult | CheckResult, b: ImplResult | CheckResult) -> bool:
    """Whether two results agree in every field but ``mode`` (NaN agreeing with NaN)."""
    return all(
        to_json(getattr(a, f.name)) == to_json(getattr(b, f.name))
        for f in fields(a)
        if f.name != "mode"
    )


def mode_pair(r: ImplResult | CheckResult) -> ModeDifference:
    """What the eager and the graph run of one computation share: the key their results are
    paired on (and reported under when they differ)."""
    return ModeDifference(r.impl, r.dtype, _labels(r), r.eps, r.policy)


def _mode_differences(results: Sequence[ImplResult | CheckResult]) -> tuple[ModeDifference, ...]:
    groups: dict[ModeDifference, list[ImplResult | CheckResult]] = {}
    for r in results:
        groups.setdefault(mode_pair(r), []).append(r)
    return tuple(
        key for key, group in groups.items() if len(group) == 2 and not _same_but_mode(*group)
    )


def _verdict(
    results: Sequence[ImplResult | CheckResult],
    fail_on: Iterable[str],
    lint: dict[str, int],
    fail_phrase: str,
) -> Verdict:
    """The verdict of ``results`` (and the input ``lint``) judged on the flags ``fail_on``;
    ``fail_phrase`` says in the message what the failing results do."""
    wanted = set(fail_on)
    failing: list[FailingResult] = []
    rows: list[RowAtRisk] = []
    for r in results:
        fired = tuple(f for f in r.flags if f in wanted)
        if fired:
            failing.append(
                FailingResult(r.impl, r.dtype, r.mode, _labels(r), fired, r.eps, r.policy)
            )
            rows.extend(_rows_at_risk(r, wanted))
    failing_lint = tuple(f for f in lint if f in wanted)
    impls = list(dict.fromkeys(r.impl for r in results))
    flagged = {r.impl for r in results if any(FLAGS[f].failing for f in r.flags)}
    trustworthy = tuple(i for i in impls if i not in flagged)

    if not results:
        parts = ["nothing ran (every implementation was skipped)"]
    elif failing:
        names = ", ".join(dict.fromkeys(f.impl for f in failing))
        parts = [f"{len(failing)} of {len(results)} results {fail_phrase} ({names})"]
    else:
        parts = [f"none of the {len(results)} results {fail_phrase}"]
    parts += [f"the input is flagged {f}" for f in failing_lint]
    message = "; ".join(parts) + "."
    if flagged:
        message += f" Trustworthy here: {', '.join(trustworthy) or 'none'}."
    fired = {f for flags in (*(r.flags for r in results), lint) for f in flags}
    return Verdict(
        status="fail" if failing or failing_lint else "pass",
        message=message[0].upper() + message[1:],
        failing=tuple(failing),
        failing_lint=failing_lint,
        trustworthy=trustworthy,
        rows_at_risk=tuple(rows),
        mode_differences=_mode_differences(results),
        advice={name: flag.explained for name, flag in FLAGS.items() if name in fired},
    )


DISAGREE_ULPS = 8  # the default loss tolerance, in eps: a smaller error is no disagreement
DISAGREE_FACTOR = 4  # errors closer than this (relatively) are the same quality of rounding


def _fares(r: ImplResult) -> tuple[tuple[str, ...], float]:
    """A result's failing flags and its largest loss error as graded, |L - exact| /
    max(|exact|, 1), in eps of its dtype (ulps of L would count millions on losses near 0)."""
    return tuple(f for f in r.flags if FLAGS[f].failing), r.max_rel_err / FORMATS[r.dtype].eps


def _framework_differences(results: Sequence[ImplResult]) -> tuple[FrameworkDifference, ...]:
    """The formulas on which two backends' results disagree, per dtype, mode and policy."""
    groups: dict[tuple[str, str, str, str], dict[str, ImplResult]] = {}
    for r in results:
        impl = REGISTRY.get(r.impl)
        if impl is not None and impl.formula is not None and r.eps is None:
            key = (impl.formula, r.dtype, r.mode, r.policy)
            groups.setdefault(key, {}).setdefault(impl.backend, r)
    out = []
    for (formula, dtype, mode, policy), by_backend in groups.items():
        if len(by_backend) < 2:
            continue
        fared = {b: _fares(r) for b, r in by_backend.items()}
        errors = [e for _, e in fared.values() if math.isfinite(e)]
        apart = bool(errors) and max(errors) > max(DISAGREE_ULPS, DISAGREE_FACTOR * min(errors))
        if len({flags for flags, _ in fared.values()}) > 1 or apart:
            text = {
                b: f"{by_backend[b].impl} {', '.join(flags) if flags else f'{e:.2g} eps'}"
                for b, (flags, e) in fared.items()
            }
            out.append(FrameworkDifference(FORMULAS[formula], dtype, mode, policy, text))
    return tuple(out)


def _with_alternatives(
    verdict: Verdict, results: Sequence[CheckResult], gate: Sequence[str], fail_on: Sequence[str]
) -> Verdict:
    """``verdict`` with what switching to each alternative (a result's implementation outside
    ``gate``) would remove: the gated failing flags it does not fire itself."""
    fired = tuple(dict.fromkeys(f for r in verdict.failing for f in r.flags))
    alternatives: dict[str, set[str]] = {}
    for r in results:
        if r.impl not in gate:
            alternatives.setdefault(r.impl, set()).update(f for f in r.flags if f in fail_on)
    removed = {impl: tuple(f for f in fired if f not in own) for impl, own in alternatives.items()}
    gated = ", ".join(gate)
    if not alternatives:
        note = ""
    elif fired:
        each = "; ".join(
            f"{impl} would remove {', '.join(flags) or 'none'}" + _adds(alternatives[impl], fired)
            for impl, flags in removed.items()
        )
        note = f" Switching from {gated} to an alternative (not gating): {each}."
    else:
        note = f" The {len(alternatives)} alternatives shown beside {gated} do not gate the run."
    return replace(verdict, message=verdict.message + note, alternatives=removed)


def _pin_hint(fused: Sequence[str]) -> str:
    """What to say first when only implementations outside the fused losses on logits fail."""
    first = fused[0]
    return (
        f"Only implementations outside the fused losses on logits fail; those pass "
        f"({', '.join(fused)}). If your model uses one of them, gate on it alone: "
        f'--impl {first}, or [tool.xentaudit] impls = ["{first}"], or --model model.keras. '
    )


def _adds(own: set[str], fired: Sequence[str]) -> str:
    """`` but fire nan, inf``: the flags an alternative fires that the gated results do not."""
    added = [f for f in FLAGS if f in own and f not in fired]
    return f" but fire {', '.join(added)}" if added else ""


# --- sweep summary ---------------------------------------------------------------------------


def scale_label(scale: float, digits: int = 3) -> str:
    """A scale to ``digits`` significant digits, exponents short: ``0.316``, ``3.16e3``."""
    return f"{scale:.{digits}g}".replace("e+0", "e").replace("e+", "e")


def point_label(point: BreakingPoint) -> str:
    """Where a breaking point is: ``<=`` the first scale swept, as the grid names it, when it
    fires there already; else the refined scale to the 4 digits it is reported to
    (``sweep.reported_scale``: rounded up, a scale at which it fires)."""
    assert point.scale is not None
    return f"<={scale_label(point.scale)}" if point.at_start else scale_label(point.scale, 4)


def clips_with_eps(impl: str) -> bool:
    """Whether ``impl`` clips with ``--eps`` (``clipped``, ``clipped_sigmoid``): it runs once
    per epsilon, each run a variant of its own."""
    return impl in REGISTRY and REGISTRY[impl].eps == "option"


def several_eps(variants: Iterable[tuple[str, float | None]]) -> bool:
    """Whether an implementation that clips with ``--eps`` appears at several epsilons among
    these (impl, eps) variants."""
    return len({eps for impl, eps in variants if clips_with_eps(impl)}) > 1


def eps_text(eps: float) -> str:
    """An epsilon as every report names it: 6 significant digits (``1e-07``)."""
    return f"{eps:g}"


def variant_label(impl: str, eps: float | None, with_eps: bool) -> str:
    """``clipped eps=1e-07`` where several epsilons are swept; the bare name otherwise."""
    if with_eps and clips_with_eps(impl) and eps is not None:
        return f"{impl} eps={eps_text(eps)}"
    return impl


def result_name(
    impl: str, eps: float | None, dtype: str, policy: str, mode: str, labels: str
) -> str:
    """How a ``--baseline`` comparison names a result:
    ``clipped eps=0.001 float32 eager (file labels)`` (a clip is named: a run may have several)."""
    return f"{variant_label(impl, eps, True)} {dtype_label(dtype, policy)} {mode} ({labels} labels)"


def _sweep_summary(sweep: Sweep) -> tuple[str, ...]:
    if not sweep.cells:  # every scale skipped (or every implementation): nothing to say of them
        return ("Nothing ran: every cell of this sweep was skipped (the skipped cells say why).",)
    lines: list[str] = []
    variants = list(dict.fromkeys((c.impl, c.eps) for c in sweep.cells))
    multi_eps = several_eps(variants)

    def label(impl: str, eps: float | None) -> str:
        return variant_label(impl, eps, multi_eps)

    def failing(cells: Iterable[SweepCell]) -> bool:
        return any(FLAGS[f].failing for c in cells for f in c.flags)

    survivors = [
        label(*v) for v in variants if not failing(c for c in sweep.cells if (c.impl, c.eps) == v)
    ]
    if survivors:
        lines.append(f"Never flagged on any pattern, dtype or scale: {', '.join(survivors)}.")
    else:
        lines.append("Every implementation is flagged somewhere in this sweep.")
    for pattern in (p.name for p in sweep.patterns):
        clean = [
            label(*v)
            for v in variants
            if not failing(c for c in sweep.cells if (c.impl, c.eps) == v and c.pattern == pattern)
        ]
        lines.append(f"Never flagged on the {pattern} pattern: {', '.join(clean) or 'none'}.")
    first_pattern = sweep.patterns[0].name
    at_start = sorted(
        {
            f"{label(p.impl, p.eps)} {dtype_label(p.dtype, p.policy)}"
            for p in sweep.breaking_points
            if p.at_start and p.pattern == first_pattern
        }
    )
    if at_start:
        lines.append(
            f"Already broken at the smallest scale on {first_pattern}: {', '.join(at_start)}."
        )
    nonfinite: dict[str, list[str]] = {}
    first_mode = sweep.breaking_points[0].mode if sweep.breaking_points else ""
    for p in sweep.breaking_points:
        if (p.pattern, p.kind, p.mode) == (first_pattern, "loss", first_mode) and p.flag in (
            "nan",
            "inf",
        ):
            nonfinite.setdefault(label(p.impl, p.eps), []).append(
                f"{point_label(p)} ({dtype_label(p.dtype, p.policy)})"
            )
    if nonfinite:
        lines.append(
            f"On {first_pattern} the loss first turns NaN/inf at scale: "
            + "; ".join(f"{impl} {', '.join(where)}" for impl, where in nonfinite.items())
            + "."
        )
    for impl, eps in variants:
        if not clips_with_eps(impl) or eps is None:
            continue
        where = [
            f"{dtype_label(p.dtype, p.policy)} {point_label(p)}"
            for p in sweep.breaking_points
            if (p.impl, p.eps, p.kind, p.flag) == (impl, eps, "loss", "divergent")
            and p.pattern == first_pattern
            and p.mode == "eager"
            and p.scale is not None
        ]
        if where and sweep.loss == "softmax":
            lines.append(
                f"{variant_label(impl, eps, True)} diverges on {first_pattern} from scale "
                f"{', '.join(where)}: the clip caps the loss at -ln(eps) = {-math.log(eps):.3g}, "
                "so any row whose true loss is larger reads too small and gets no gradient."
            )
        elif where:  # a sigmoid: 1 - sigmoid(x) cancels before any clip binds
            lines.append(
                f"{variant_label(impl, eps, True)} diverges on {first_pattern} from scale "
                f"{', '.join(where)}."
            )
    for name, flag in FLAGS.items():
        if flag.failing and any(name in c.flags for c in sweep.cells):
            lines.append(f"{name}: {explained(name, sweep.loss).text}")
    return tuple(lines)
