"""Rich table reports of `compare`, `sweep` and `check`: the tables, then the results'
conclusions (verdict, rows at risk, eager/graph differences, what each flag means and what to use
instead; computed in ``results``, only formatted here).

Renders to a string and never prints: ``cli.py`` decides where the text goes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from xentaudit.dtypes import dtype_label
from xentaudit.environment import describe
from xentaudit.flags import FLAGS
from xentaudit.impls import backend_of
from xentaudit.report.plain import differences_text, frameworks_text, power_of_two
from xentaudit.results import (
    Audit,
    BreakingPoint,
    Check,
    CheckResult,
    ImplResult,
    ModeDifference,
    RowAtRisk,
    Sweep,
    SweepCell,
    Verdict,
    clips_with_eps,
    eps_text,
    mode_pair,
    point_label,
    scale_label,
    several_eps,
    variant_label,
)

if TYPE_CHECKING:
    from xentaudit.ema import Ema

FLAG_STYLES = {
    "nan": "bold red",
    "inf": "bold red",
    "divergent": "red",
    "grad-nan": "bold magenta",
    "grad-inf": "bold magenta",
    "grad-blowup": "magenta",
    "grad-vanish": "magenta",
    "grad-wrong": "magenta",
    "zero-loss": "cyan",
    "downcast": "cyan",
    "half-softmax": "cyan",
}
EXACT_METHODS = {  # reference_method -> how the exact values were computed
    "mpmath": "mpmath, 50 digits",
    "float64": "float64 max-separated log-sum-exp (compiled kernel)",
    "float64-numpy": "float64 max-separated log-sum-exp (numpy)",
}
FLOAT64_FORMS = {"sigmoid": "float64 softplus in non-negative parts (numpy)"}  # other losses'


def exact_method(method: str, loss: str) -> str:
    """How the exact values of ``loss`` were computed by reference ``method``."""
    return (
        FLOAT64_FORMS.get(loss, EXACT_METHODS[method])
        if method != "mpmath"
        else EXACT_METHODS[method]
    )


def _loss_note(loss: str) -> str:
    """The header's note on the loss audited: nothing for the default softmax."""
    return "" if loss == "softmax" else f"; loss {loss}"


def _console(color: bool, width: int) -> Console:
    """A console that records into a string (``console.file.getvalue()``)."""
    return Console(
        file=io.StringIO(), force_terminal=color, no_color=not color, width=width, highlight=False
    )


REPORT_WIDTH = 160  # the width of a report to a file or a pipe (the CLI: unless COLUMNS is set)
WRAPPING = ("flags", "rows flagged")  # the columns of words, which wrap on a narrow width
UNBOUNDED = 1 << 16  # a width no cell reaches: a cell measured at it is measured whole


def _columns(*columns: tuple[str, str]) -> Table:
    """A borderless table with these (header, justify) columns, none of them wrapping but the
    flags (``WRAPPING``, a list of words: on a narrow terminal a row's flags go on to a second
    line rather than every number being cut)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header, justify in columns:
        table.add_column(header, justify=justify, no_wrap=header not in WRAPPING)  # type: ignore[arg-type]
    return table


def _print_table(console: Console, table: Table) -> None:
    """Print ``table`` with no cell of a column that does not wrap cut short: where those
    columns do not fit the width even with the others wrapped, its lines run past the width (a
    terminal wraps them, a log or a file keeps them whole) rather than a number ending in an
    ellipsis."""
    whole = console.options.update_width(UNBOUNDED)
    for column in table.columns:
        if column.no_wrap:
            cells = (column.header, *column.cells)
            column.min_width = max(Measurement.get(console, whole, c).maximum for c in cells)
    # narrowest with those whole and the others wrapped: past the width, the table takes it
    # (rich would otherwise shrink every column, to nothing at last)
    narrowest = Measurement.get(console, whole, table).minimum
    if narrowest > console.width:
        table.width = narrowest
    console.print(table, crop=False)


def _audited_with(console: Console, record: dict[str, str]) -> None:
    """The run's environment (``environment.environment``) as the report's last line."""
    if record:
        console.print(Text(f"audited with: {describe(record)}", style="dim"))


def _num(value: float, digits: int = 10) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.{digits}g}"


def _flags_text(flags: Sequence[str]) -> Text:
    if not flags:
        return Text("ok", style="green")
    return Text(" ").join(Text(f, style=FLAG_STYLES.get(f, "")) for f in flags)


def _risk_line(where: str, risk: RowAtRisk) -> Text:
    """``  <where>: row 1 exact 30, got 16.1180954 (divergent grad-vanish)``"""
    text = Text(f"  {where}: {risk.where} exact {_num(risk.exact)}, got {_num(risk.loss)} (")
    return text + _flags_text(risk.flags) + ")"


def _legend(console: Console, verdict: Verdict) -> None:
    """One line per flag that fired: what it means and what to use instead."""
    for name, advice in verdict.advice.items():
        # Text: advice such as "clips p to [eps, 1-eps]" is no markup
        console.print(Text(f"  {name}", style=FLAG_STYLES.get(name, "yellow")), Text(advice.text))


def _fold_modes(
    results: Sequence[ImplResult | CheckResult], differences: Sequence[ModeDifference]
) -> list[tuple[str, ImplResult | CheckResult]]:
    """Pair each result with the mode label to show: "eager=graph" for an implementation x dtype
    x policy (x label source) run in both modes that do not differ."""
    differ = set(differences)
    both = [mode_pair(r) for r in results]
    rows: list[tuple[str, ImplResult | CheckResult]] = []
    for r in results:
        if both.count(mode_pair(r)) == 1 or mode_pair(r) in differ:
            rows.append((r.mode, r))
        elif r.mode == "eager":
            rows.append(("eager=graph", r))
    return rows


def _scaling(loss_scale: float | None, column: bool = True) -> str:
    """The header's note on loss scaling: what the gradients are of (and the ``column``)."""
    if loss_scale is None:
        return ""
    note = f"; gradients of {loss_scale:g} x the loss"
    if column:
        note += " (max scale: the largest power of two whose gradients stay finite)"
    return note


def _ignored_line(run: Audit | Check) -> str:
    """What --ignore-class did to a ``compare`` or ``check`` run."""
    line = (
        f"ignored: {run.ignored_rows} rows of class {run.ignore_class} (--ignore-class), "
        "exact loss and gradient 0; the exact mean is over the other rows"
    )
    if isinstance(run, Audit):
        return line + "; the loss column is each implementation's own mean" * (run.ignored_rows > 0)
    return line + "; the implementations' own means are graded by `xentaudit compare`"


def render(audit: Audit, *, title: str, color: bool = False, width: int = REPORT_WIDTH) -> str:
    """The full table report as text (ANSI-coloured when ``color``)."""
    verdict = audit.verdict()
    console = _console(color, width)
    console.print(
        Text(title, style="bold"),
        Text(
            f"exact values: {exact_method(audit.reference_method, audit.loss)}"
            + _scaling(audit.loss_scale),
            style="dim",
        ),
        sep="\n",
    )
    if audit.ignore_class is not None:
        console.print(Text(_ignored_line(audit), style="dim"))
    scaled = audit.loss_scale is not None
    # several backends: a column says whose each row is (the zoo lists them backend by backend)
    backends = len({backend_of(r.impl) for r in audit.results}) > 1
    # a result in half precision: the loss column shows the mean it returns (the scalar the
    # optimizer sees, coarse-mean) and a column its dtype's spacing at the exact mean
    half = any(r.output_dtype in ("float16", "bfloat16") for r in audit.results)
    # rows ignored: the returned mean shows which implementations divide by them too
    returned = half or audit.ignored_rows > 0
    table = _columns(
        *([("backend", "left")] if backends else []),
        ("impl", "left"),
        ("mode", "left"),
        ("dtype", "left"),
        ("out", "left"),
        ("loss (returned)" if returned else "loss (mean)", "right"),
        ("exact (mean)", "right"),
        *([("spacing", "right")] if half else []),
        ("max rel err", "right"),
        ("ulps", "right"),
        ("grad err", "right"),
        *([("max scale", "right")] if scaled else []),
        ("flags", "left"),
    )
    folded = _fold_modes(audit.results, verdict.mode_differences)
    differ = set(verdict.mode_differences)
    with_eps = several_eps((r.impl, r.eps) for r in audit.results)
    for mode, r in folded:
        table.add_row(
            *([backend_of(r.impl)] if backends else []),
            variant_label(r.impl, r.eps, with_eps),
            Text(mode, style="yellow" if mode_pair(r) in differ else ""),
            Text(dtype_label(r.dtype, r.policy)),  # Text: "[policy]" is no markup
            r.output_dtype if r.output_dtype != r.dtype else "",
            _num(r.returned_mean if returned and r.returned_mean is not None else r.loss),
            _num(r.reference, 15),
            *([_num(r.mean_spacing or math.nan, 2)] if half else []),
            _num(r.max_rel_err, 2),
            _num(r.max_ulps_err, 2),
            _num(r.grad_max_abs_err, 2),
            *([power_of_two(r.max_loss_scale)] if scaled else []),
            _flags_text(r.flags),
        )
    _print_table(console, table)

    risks = {(w.impl, w.eps, w.dtype, w.policy, w.mode): w for w in verdict.rows_at_risk}
    shown = [
        (mode, risks[r.impl, r.eps, r.dtype, r.policy, r.mode])
        for mode, r in folded
        if (r.impl, r.eps, r.dtype, r.policy, r.mode) in risks
    ]
    if shown:
        console.print(Text("Rows at risk (worst row of each flagged result):", style="bold"))
        for mode, risk in shown:
            name = variant_label(risk.impl, risk.eps, with_eps)
            console.print(_risk_line(f"{name} {dtype_label(risk.dtype, risk.policy)} {mode}", risk))
    if verdict.mode_differences:
        console.print(Text(differences_text(verdict.mode_differences), style="yellow"))
    if verdict.framework_differences:
        console.print(Text(frameworks_text(verdict.framework_differences), style="yellow"))
    for s in audit.skipped:
        console.print(Text(f"skipped {s.impl} {s.dtype}: {s.reason}", style="dim"))
    console.print(Text(f"Verdict: {verdict.message}", style="bold"))
    _legend(console, verdict)
    _audited_with(console, audit.environment)
    return console.file.getvalue()  # type: ignore[attr-defined]


# --- sweep -----------------------------------------------------------------------------------

CELL_CODES = {
    "nan": "NaN",
    "inf": "inf",
    "divergent": "div",
    "grad-nan": "g-nan",
    "grad-inf": "g-inf",
    "grad-blowup": "g-blow",
    "grad-vanish": "g-van",
    "grad-wrong": "g-wrong",
}


def _status(cells: Sequence[SweepCell]) -> Text:
    """One grid cell: the first failing flag (in FLAGS order) fired by any pattern, or ok."""
    if not cells:
        return Text("-", style="dim")
    fired = {f for c in cells for f in c.flags if FLAGS[f].failing}
    for flag in CELL_CODES:
        if flag in fired:
            return Text(CELL_CODES[flag], style=FLAG_STYLES[flag])
    return Text("ok", style="green")


def _grid_table(
    title: str | Text,
    scales: Sequence[float],
    rows: list[tuple[str, dict[float, list[SweepCell]]]],
) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("", no_wrap=True)
    for s in scales:
        table.add_column(scale_label(s), justify="center", no_wrap=True)
    for label, by_scale in rows:
        table.add_row(Text(label), *(_status(by_scale.get(s, [])) for s in scales))
    return table


def _mode_rows(
    cells: Sequence[SweepCell], label: str
) -> list[tuple[str, dict[float, list[SweepCell]]]]:
    """Rows of a grid: one if every mode shows the same statuses, else one per mode."""
    by_mode: dict[str, dict[float, list[SweepCell]]] = {}
    for c in cells:
        by_mode.setdefault(c.mode, {}).setdefault(c.scale, []).append(c)
    shown = {m: {s: _status(v).plain for s, v in g.items()} for m, g in by_mode.items()}
    if len({tuple(sorted(v.items())) for v in shown.values()}) <= 1:
        return [(label, next(iter(by_mode.values())))] if by_mode else []
    return [(f"{label} ({mode})", grid) for mode, grid in by_mode.items()]


def _break_text(points: Sequence[BreakingPoint]) -> Text:
    """The first break of one row on one pattern (loss or gradient, whichever comes first)."""
    hits = [p for p in points if p.scale is not None]
    if not hits:
        return Text("-", style="dim")
    first = min(hits, key=lambda p: (p.scale, p.kind))
    return Text(f"{point_label(first)} ") + Text(
        first.flag or "", style=FLAG_STYLES.get(first.flag or "", "")
    )


def render_sweep(sweep: Sweep, *, color: bool = False, width: int = REPORT_WIDTH) -> str:
    """The sweep as text: a grid per dtype, the epsilon grid, breaking points and a summary."""
    console = _console(color, width)
    patterns = ", ".join(f"{p.name} ({p.rows}x{p.classes})" for p in sweep.patterns)
    console.print(
        Text(
            f"xentaudit sweep: {len(sweep.scales)} scales from {scale_label(sweep.scales[0])} "
            f"to {scale_label(sweep.scales[-1])}; patterns {patterns}" + _loss_note(sweep.loss),
            style="bold",
        ),
        Text(
            "cells: the first failing flag on any pattern (ok: none); exact values: "
            + exact_method(sweep.reference_method, sweep.loss)
            + _scaling(sweep.loss_scale, column=False),
            style="dim",
        ),
        sep="\n",
    )
    dtypes = list(dict.fromkeys((c.dtype, c.policy) for c in sweep.cells))
    variants = list(dict.fromkeys((c.impl, c.eps) for c in sweep.cells))
    with_eps = several_eps(variants)
    # an implementation that clips with --eps: its first epsilon in the dtype grids, all of
    # them in a grid of its own
    clipping = {i: [e for j, e in variants if j == i] for i, _ in variants if clips_with_eps(i)}
    main = [v for v in variants if v[0] not in clipping or v[1] == clipping[v[0]][0]]
    for dtype in dtypes:
        rows = []
        for v in main:
            cells = [c for c in sweep.cells if (c.impl, c.eps, (c.dtype, c.policy)) == (*v, dtype)]
            rows += _mode_rows(cells, variant_label(*v, with_eps))
        _print_table(console, _grid_table(Text(dtype_label(*dtype)), sweep.scales, rows))
    for impl, epsilons in clipping.items():
        if len(epsilons) < 2:
            continue
        rows = []
        for eps in epsilons:
            for dtype in dtypes:
                cells = [
                    c
                    for c in sweep.cells
                    if (c.impl, c.eps, (c.dtype, c.policy)) == (impl, eps, dtype)
                ]
                rows += _mode_rows(cells, f"eps={eps_text(eps)} {dtype_label(*dtype)}")
        _print_table(console, _grid_table(f"{impl}: epsilon x dtype", sweep.scales, rows))

    table = Table(
        title="Breaking points: first scale at which a failing flag fires (4 digits, rounded up)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    table.add_column("backend", no_wrap=True)
    table.add_column("implementation", no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    for p in sweep.patterns:
        table.add_column(p.name, no_wrap=True)
    never = []
    for v in variants:
        label = variant_label(*v, with_eps)
        broke = False
        for dtype in dtypes:
            points = [
                p
                for p in sweep.breaking_points
                if (p.impl, p.eps, (p.dtype, p.policy)) == (*v, dtype)
            ]
            modes = list(dict.fromkeys(p.mode for p in points))
            per_mode = {
                m: [
                    _break_text([p for p in points if p.mode == m and p.pattern == pat.name])
                    for pat in sweep.patterns
                ]
                for m in modes
            }
            distinct = {tuple(t.plain for t in texts) for texts in per_mode.values()}
            shown = per_mode if len(distinct) > 1 else dict(list(per_mode.items())[:1])
            for mode, texts in shown.items():
                if all(t.plain == "-" for t in texts):
                    continue
                broke = True
                name = f"{label} ({mode})" if len(shown) > 1 else label
                table.add_row(backend_of(v[0]), name, Text(dtype_label(*dtype)), *texts)
        if not broke:
            never.append(label)
    _print_table(console, table)
    if never:
        console.print(Text(f"Never break in this sweep: {', '.join(never)}.", style="green"))
    for s in sweep.skipped:
        what = s.dtype if s.impl == "all" else f"{s.impl} {s.dtype}"
        console.print(Text(f"skipped {what}: {s.reason}", style="dim"))
    console.print(Text("Summary", style="bold"))
    for line in sweep.summary:
        console.print(f"- {line}")
    if sweep.baseline is not None:
        failed = bool(sweep.baseline.regressions)
        status = "FAIL" if failed else "PASS"
        style = "bold red" if failed else "bold green"
        console.print(Text(f"{status}: {sweep.baseline.message()}", style=style))
    _audited_with(console, sweep.environment)
    return console.file.getvalue()  # type: ignore[attr-defined]


# --- check -----------------------------------------------------------------------------------


def _reduction_line(check: Check) -> str:
    """What the model's reduction makes of the losses: the mean columns, or their sums."""
    if check.reduction is None or check.reduction == "none":
        return "reduction: none (the model's loss is per row)"
    sums = [r for r in check.gated if r.loss_reduced is not None and r.loss_reduced != r.loss_mean]
    if not sums:
        return f"reduction: {check.reduction} (the model reports the mean loss)"
    totals = "; ".join(
        f"{r.impl} {r.mode} {dtype_label(r.dtype, r.policy)} {_num(r.loss_reduced, 8)} "
        f"(exact {_num(r.exact_reduced, 8)})"
        for r in sums
    )
    return f"reduction: {check.reduction} over the {check.rows} rows: {totals}"


def render_check(
    check: Check, fail_on: Sequence[str], *, color: bool = False, width: int = REPORT_WIDTH
) -> str:
    """The check as text: flag counts per implementation, rows at risk, verdict, what to do."""
    verdict = check.verdict(fail_on)
    console = _console(color, width)
    console.print(
        Text(
            f"xentaudit check {check.path}: {check.rows} rows x {check.classes} classes, "
            f"{check.file_dtype}"
            + ("" if check.input == "logits" else f" {check.input}")
            + _loss_note(check.loss),
            style="bold",
        ),
        Text(
            f"labels: {check.labels}; exact values: "
            f"{exact_method(check.reference_method, check.loss)}; "
            f"config: {check.config or 'none'}; "
            f"fails on: {', '.join(fail_on) or 'nothing'}" + _scaling(check.loss_scale),
            style="dim",
        ),
        sep="\n",
    )
    if check.model is not None:
        gates = " (gates the run; the rest are alternatives)" if check.gate else ""
        console.print(Text(f"model: {check.model}{gates}"))
        console.print(Text(_reduction_line(check), style="dim"))
        if check.ignored_rows:
            console.print(
                Text(
                    f"ignored: {check.ignored_rows} rows of the class the model's loss ignores "
                    "(ignore_class), left out as Keras leaves them out",
                    style="dim",
                )
            )
    if check.ignore_class is not None:
        console.print(Text(_ignored_line(check), style="dim"))
    for flag, rows in check.lint.items():
        console.print(Text(f"input: {flag} on {rows} of {check.rows} rows", style="yellow"))
    table = _columns(
        ("impl", "left"),
        ("labels", "left"),
        ("mode", "left"),
        ("dtype", "left"),
        ("rows flagged", "left"),
        ("loss mean", "right"),
        ("exact mean", "right"),
        ("max rel err", "right"),
        ("grad err", "right"),
        *([("max scale", "right")] if check.loss_scale is not None else []),
    )
    with_eps = several_eps((r.impl, r.eps) for r in check.results)
    for mode, r in _fold_modes(check.results, verdict.mode_differences):
        counts = (
            Text(", ").join(
                Text(f"{f} {n}", style=FLAG_STYLES.get(f, "")) for f, n in r.flag_counts.items()
            )
            if r.flag_counts
            else Text("ok", style="green")
        )
        table.add_row(
            variant_label(r.impl, r.eps, with_eps),
            r.labels,
            mode,
            Text(
                dtype_label(
                    r.dtype if r.output_dtype == r.dtype else f"{r.dtype}->{r.output_dtype}",
                    r.policy,
                )
            ),
            counts,
            _num(r.loss_mean, 8),
            _num(r.exact_mean, 8),
            _num(r.max_rel_err, 2),
            _num(r.grad_max_abs_err, 2),
            *([power_of_two(r.max_loss_scale)] if check.loss_scale is not None else []),
        )
    _print_table(console, table)
    if verdict.rows_at_risk:
        # against a baseline a result that fires a --fail-on flag passes unless it regressed
        whose = "failing result" if check.baseline is None else "result firing a --fail-on flag"
        console.print(Text(f"Rows at risk (worst rows of each {whose}):", style="bold"))
        for risk in verdict.rows_at_risk:
            where = f"{risk.impl} {risk.labels} {risk.mode} {dtype_label(risk.dtype, risk.policy)}"
            console.print(_risk_line(where, risk))
    if verdict.mode_differences:
        console.print(Text(differences_text(verdict.mode_differences), style="yellow"))
    for s in check.skipped:
        console.print(Text(f"skipped {s.impl} {s.dtype}: {s.reason}", style="dim"))
    style = "bold red" if verdict.status == "fail" else "bold green"
    console.print(Text(f"{verdict.status.upper()}: {verdict.message}", style=style))
    _legend(console, verdict)
    _audited_with(console, check.environment)
    return console.file.getvalue()  # type: ignore[attr-defined]


# --- ema -------------------------------------------------------------------------------------


def render_ema(result: Ema, color: bool = False, width: int = REPORT_WIDTH) -> str:
    """The EMA audit: a summary line per decay, then its steps (at most 20, evenly spaced)."""
    console = _console(color, width)
    console.print(
        Text(
            f"xentaudit ema {result.path}: {result.steps} steps x {result.rows} rows x "
            f"{result.classes} classes; flags of: {', '.join(result.impls) or 'none'}",
            style="bold",
        )
    )
    for d in result.decays:
        hidden = [s.step for s in d.steps if s.hidden]
        shown = [s.step for s in d.steps if s.shown]
        if d.lag is None:
            lag = "lag unknown (a loss is not finite)"
        else:
            bound = " or more (the search limit)" if d.lag == d.lag_limit and d.lag else ""
            lag = f"lags {d.lag}{bound} steps"
        console.print(
            Text(
                f"decay {d.decay:g}: {lag}; gradient x {d.mean_attenuation:.3g} on "
                f"average (1 - d = {1 - d.decay:.3g}); direction cosine {d.mean_cosine:.3g}; "
                f"hides flags at {len(hidden)} steps, shows flags at {len(shown)} steps",
                style="bold",
            )
        )
        table = _columns(
            ("step", "right"),
            ("raw loss", "right"),
            ("EMA loss", "right"),
            ("gradient x", "right"),
            ("cosine", "right"),
            ("EMA hides", "left"),
            ("EMA shows", "left"),
        )
        every = max(1, math.ceil(len(d.steps) / 20))
        for s in d.steps[::every]:
            table.add_row(
                str(s.step),
                _num(s.raw_loss, 8),
                _num(s.ema_loss, 8),
                _num(s.attenuation, 3),
                _num(s.cosine, 3),
                " ".join(s.hidden),
                " ".join(s.shown),
            )
        _print_table(console, table)
    return console.file.getvalue()  # type: ignore[attr-defined]
