"""Rich table report for `compare`: one row per implementation x dtype (x mode where modes differ),
the rows at risk, a one-line verdict, and what each flag that fired means and what to use instead.

Renders to a string and never prints: ``cli.py`` decides where the text goes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from xentaudit.flags import FLAGS
from xentaudit.results import Audit, BreakingPoint, Check, ImplResult, Sweep, SweepCell

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
}
REFERENCE_NAMES = {
    "mpmath": "exact (mpmath, 50 digits)",
    "float64": "float64 max-separated log-sum-exp (within a few float64 ulps)",
}


def _console(color: bool, width: int) -> Console:
    """A console that records into a string (``console.file.getvalue()``)."""
    return Console(
        file=io.StringIO(), force_terminal=color, no_color=not color, width=width, highlight=False
    )


def _columns(*columns: tuple[str, str]) -> Table:
    """A borderless table with these (header, justify) columns, none of them wrapping."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header, justify in columns:
        table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    return table


def _legend(console: Console, flag_sets: Iterable[Iterable[str]]) -> None:
    """One line per flag that fired: what it means and what to use instead."""
    fired = set().union(*flag_sets)
    for name in (f for f in FLAGS if f in fired):
        console.print(
            Text(f"  {name}", style=FLAG_STYLES.get(name, "yellow")),
            f"{FLAGS[name].meaning}. Instead: {FLAGS[name].advice}.",
        )


def _num(value: float, digits: int = 10) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.{digits}g}"


def _flags_text(flags: Sequence[str]) -> Text:
    if not flags:
        return Text("ok", style="green")
    return Text(" ").join(Text(f, style=FLAG_STYLES.get(f, "")) for f in flags)


def _same(a: ImplResult, b: ImplResult) -> bool:
    return (
        a.flags == b.flags
        and a.output_dtype == b.output_dtype
        and np.array_equal(a.loss_rows, b.loss_rows, equal_nan=True)
        and (a.grad_max_abs_err == b.grad_max_abs_err or math.isnan(a.grad_max_abs_err))
    )


def fold_modes(results: Sequence[ImplResult]) -> list[tuple[str, ImplResult]]:
    """Pair each result with the mode label to show: "eager=graph" where both modes agree."""
    by_key: dict[tuple[str, str], list[ImplResult]] = {}
    for r in results:
        by_key.setdefault((r.impl, r.dtype), []).append(r)
    rows: list[tuple[str, ImplResult]] = []
    for group in by_key.values():
        if len(group) == 2 and _same(*group):
            rows.append(("eager=graph", group[0]))
        else:
            rows.extend((r.mode, r) for r in group)
    return rows


def _worst_row(r: ImplResult) -> int:
    """The row with a failing flag and the largest loss error (NaN counts as largest)."""
    failing = [i for i, f in enumerate(r.row_flags) if any(FLAGS[x].failing for x in f)]
    candidates = failing or range(len(r.row_flags))

    def badness(i: int) -> float:
        loss, exact = r.loss_rows[i], r.reference_rows[i]
        err = abs(loss - exact) if not (math.isinf(loss) and loss == exact) else 0.0
        return math.inf if math.isnan(err) else err

    return max(candidates, key=badness)


def verdict(audit: Audit) -> str:
    """One line: how many results are flagged, which implementations were never flagged."""
    failing = [r for r in audit.results if any(FLAGS[f].failing for f in r.flags)]
    clean = sorted(
        {r.impl for r in audit.results} - {r.impl for r in failing},
        key=[r.impl for r in audit.results].index,
    )
    if not audit.results:
        return "Verdict: nothing ran (see the skipped implementations above)."
    if not failing:
        return f"Verdict: all {len(audit.results)} results agree with the exact reference."
    broken = sorted({r.impl for r in failing}, key=[r.impl for r in audit.results].index)
    text = (
        f"Verdict: {len(failing)} of {len(audit.results)} results are wrong ({', '.join(broken)})."
    )
    return text + (f" Trustworthy here: {', '.join(clean)}." if clean else "")


def render(audit: Audit, *, title: str, color: bool = False, width: int = 160) -> str:
    """The full table report as text (ANSI-coloured when ``color``)."""
    console = _console(color, width)
    console.print(
        Text(title, style="bold"),
        Text(f"reference: {REFERENCE_NAMES[audit.reference_method]}", style="dim"),
        sep="\n",
    )
    table = _columns(
        ("impl", "left"),
        ("mode", "left"),
        ("dtype", "left"),
        ("out", "left"),
        ("loss (mean)", "right"),
        ("exact (mean)", "right"),
        ("max rel err", "right"),
        ("ulps", "right"),
        ("grad err", "right"),
        ("flags", "left"),
    )
    folded = fold_modes(audit.results)
    keys = [(r.impl, r.dtype) for _, r in folded]
    differ = sorted({k for k in keys if keys.count(k) > 1}, key=keys.index)
    for mode, r in folded:
        table.add_row(
            r.impl,
            Text(mode, style="yellow" if (r.impl, r.dtype) in differ else ""),
            r.dtype,
            r.output_dtype if r.output_dtype != r.dtype else "",
            _num(r.loss),
            _num(r.reference, 15),
            _num(r.max_rel_err, 2),
            _num(r.max_ulps_err, 2),
            _num(r.grad_max_abs_err, 2),
            _flags_text(r.flags),
        )
    console.print(table)

    at_risk = [(m, r) for m, r in folded if any(FLAGS[f].failing for f in r.flags)]
    if at_risk:
        console.print(Text("Rows at risk (worst row of each flagged result):", style="bold"))
        for mode, r in at_risk:
            i = _worst_row(r)
            line = Text(
                f"  {r.impl} {r.dtype} {mode}: row {i} exact {_num(r.reference_rows[i])}, "
                f"got {_num(r.loss_rows[i])} ("
            )
            console.print(line + _flags_text(r.row_flags[i]) + ")")
    if differ:
        console.print(
            Text(
                "Eager and tf.function differ for: "
                + ", ".join(f"{i} {d}" for i, d in differ)
                + " (model.fit runs the tf.function path).",
                style="yellow",
            )
        )
    for s in audit.skipped:
        console.print(Text(f"skipped {s.impl} {s.dtype}: {s.reason}", style="dim"))
    console.print(Text(verdict(audit), style="bold"))
    _legend(console, (r.flags for r in audit.results))
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


def _scale_label(scale: float) -> str:
    return f"{scale:.3g}".replace("e+0", "e").replace("e+", "e")


def _status(cells: Sequence[SweepCell]) -> Text:
    """One grid cell: the first failing flag (in FLAGS order) fired by any pattern, or ok."""
    if not cells:
        return Text("-", style="dim")
    fired = {f for c in cells for f in c.flags if FLAGS[f].failing}
    for flag in CELL_CODES:
        if flag in fired:
            return Text(CELL_CODES[flag], style=FLAG_STYLES[flag])
    return Text("ok", style="green")


def _label(variant: tuple[str, float | None], with_eps: bool) -> str:
    """``clipped eps=1e-07`` where several epsilons are swept; the bare name otherwise."""
    impl, eps = variant
    return f"{impl} eps={eps:g}" if with_eps and impl == "clipped" and eps is not None else impl


def _grid_table(
    title: str,
    scales: Sequence[float],
    rows: list[tuple[str, dict[float, list[SweepCell]]]],
) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("", no_wrap=True)
    for s in scales:
        table.add_column(_scale_label(s), justify="center", no_wrap=True)
    for label, by_scale in rows:
        table.add_row(label, *(_status(by_scale.get(s, [])) for s in scales))
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
    where = f"<={_scale_label(first.scale)}" if first.at_start else _scale_label(first.scale)
    return Text(f"{where} ") + Text(first.flag or "", style=FLAG_STYLES.get(first.flag or "", ""))


def _first_break(points: Sequence[BreakingPoint]) -> BreakingPoint | None:
    hits = [p for p in points if p.scale is not None]
    return min(hits, key=lambda p: (p.scale, p.kind)) if hits else None


def sweep_summary(sweep: Sweep) -> list[str]:
    """Plain-language conclusions: who survives, who breaks first and why, what to use."""
    lines: list[str] = []
    variants = list(dict.fromkeys((c.impl, c.eps) for c in sweep.cells))
    multi_eps = len({e for i, e in variants if i == "clipped"}) > 1

    def failing(cells: Iterable[SweepCell]) -> bool:
        return any(FLAGS[f].failing for c in cells for f in c.flags)

    survivors = [
        _label(v, multi_eps)
        for v in variants
        if not failing(c for c in sweep.cells if (c.impl, c.eps) == v)
    ]
    if survivors:
        lines.append(f"Never flagged on any pattern, dtype or scale: {', '.join(survivors)}.")
    else:
        lines.append("Every implementation is flagged somewhere in this sweep.")
    for pattern in (p.name for p in sweep.patterns):
        clean = [
            _label(v, multi_eps)
            for v in variants
            if not failing(c for c in sweep.cells if (c.impl, c.eps) == v and c.pattern == pattern)
        ]
        lines.append(f"Never flagged on the {pattern} pattern: {', '.join(clean) or 'none'}.")
    first_pattern = sweep.patterns[0].name
    at_start = sorted(
        {
            f"{_label((p.impl, p.eps), multi_eps)} {p.dtype}"
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
            nonfinite.setdefault(_label((p.impl, p.eps), multi_eps), []).append(
                f"{_scale_label(p.scale)} ({p.dtype})"
            )
    if nonfinite:
        lines.append(
            f"On {first_pattern} the loss first turns NaN/inf at scale: "
            + "; ".join(f"{impl} {', '.join(where)}" for impl, where in nonfinite.items())
            + "."
        )
    for impl, eps in variants:
        if impl != "clipped" or eps is None:
            continue
        where = [
            f"{p.dtype} {_scale_label(p.scale)}"
            for p in sweep.breaking_points
            if (p.impl, p.eps, p.kind, p.flag) == (impl, eps, "loss", "divergent")
            and p.pattern == sweep.patterns[0].name
            and p.mode == "eager"
            and p.scale is not None
        ]
        if where:
            lines.append(
                f"clipped eps={eps:g} diverges on {sweep.patterns[0].name} from scale "
                f"{', '.join(where)}: the clip caps the loss at -ln(eps) = {-math.log(eps):.3g}, "
                "so any row whose true loss is larger reads too small and gets no gradient."
            )
    fired = [f for f in FLAGS if FLAGS[f].failing and any(f in c.flags for c in sweep.cells)]
    for name in fired:
        lines.append(f"{name}: {FLAGS[name].meaning}. Instead: {FLAGS[name].advice}.")
    return lines


def render_sweep(sweep: Sweep, *, color: bool = False, width: int = 160) -> str:
    """The sweep as text: a grid per dtype, the epsilon grid, breaking points and a summary."""
    console = _console(color, width)
    patterns = ", ".join(f"{p.name} ({p.rows}x{p.classes})" for p in sweep.patterns)
    console.print(
        Text(
            f"xentaudit sweep: {len(sweep.scales)} scales from {_scale_label(sweep.scales[0])} "
            f"to {_scale_label(sweep.scales[-1])}; patterns {patterns}",
            style="bold",
        ),
        Text(
            "cells: the first failing flag on any pattern (ok: none); reference: float64 "
            "max-separated log-sum-exp",
            style="dim",
        ),
        sep="\n",
    )
    dtypes = list(dict.fromkeys(c.dtype for c in sweep.cells))
    variants = list(dict.fromkeys((c.impl, c.eps) for c in sweep.cells))
    clipped_eps = [e for i, e in variants if i == "clipped"]
    main = [v for v in variants if v[0] != "clipped" or v[1] == clipped_eps[0]]
    for dtype in dtypes:
        rows = []
        for v in main:
            cells = [c for c in sweep.cells if (c.impl, c.eps, c.dtype) == (*v, dtype)]
            rows += _mode_rows(cells, _label(v, len(clipped_eps) > 1))
        console.print(_grid_table(dtype, sweep.scales, rows))
    if len(clipped_eps) > 1:
        rows = []
        for eps in clipped_eps:
            for dtype in dtypes:
                cells = [
                    c for c in sweep.cells if (c.impl, c.eps, c.dtype) == ("clipped", eps, dtype)
                ]
                rows += _mode_rows(cells, f"eps={eps:g} {dtype}")
        console.print(_grid_table("clipped: epsilon x dtype", sweep.scales, rows))

    table = Table(
        title="Breaking points: first scale at which a failing flag fires (3 digits)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    table.add_column("implementation", no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    for p in sweep.patterns:
        table.add_column(p.name, no_wrap=True)
    never = []
    for v in variants:
        label = _label(v, len(clipped_eps) > 1)
        broke = False
        for dtype in dtypes:
            points = [p for p in sweep.breaking_points if (p.impl, p.eps, p.dtype) == (*v, dtype)]
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
                table.add_row(name, dtype, *texts)
        if not broke:
            never.append(label)
    console.print(table)
    if never:
        console.print(Text(f"Never break in this sweep: {', '.join(never)}.", style="green"))
    for s in sweep.skipped:
        console.print(Text(f"skipped {s.dtype}: {s.reason}", style="dim"))
    console.print(Text("Summary", style="bold"))
    for line in sweep_summary(sweep):
        console.print(f"- {line}")
    return console.file.getvalue()  # type: ignore[attr-defined]


# --- check -----------------------------------------------------------------------------------


def render_check(
    check: Check, fail_on: Sequence[str], *, color: bool = False, width: int = 160
) -> str:
    """The check as text: verdict, flag counts per implementation, worst rows, what to do."""
    console = _console(color, width)
    failed = [r for r in check.results if set(fail_on) & set(r.flags)]
    lint_failed = [f for f in check.lint if f in fail_on]
    console.print(
        Text(
            f"xentaudit check {check.path}: {check.rows} rows x {check.classes} classes, "
            f"{check.file_dtype}",
            style="bold",
        ),
        Text(
            f"labels: {check.labels}; reference: float64 max-separated log-sum-exp; "
            f"fails on: {', '.join(fail_on) or 'nothing'}",
            style="dim",
        ),
        sep="\n",
    )
    for flag, rows in check.lint.items():
        console.print(
            Text(f"input: {flag} on {rows} of {check.rows} rows: ", style="yellow"),
            f"{FLAGS[flag].meaning}. Instead: {FLAGS[flag].advice}.",
        )
    table = _columns(
        ("impl", "left"),
        ("labels", "left"),
        ("mode", "left"),
        ("dtype", "left"),
        ("rows flagged", "left"),
        ("max rel err", "right"),
        ("grad err", "right"),
    )
    for r in check.results:
        counts = (
            Text(", ").join(
                Text(f"{f} {n}", style=FLAG_STYLES.get(f, "")) for f, n in r.flag_counts.items()
            )
            if r.flag_counts
            else Text("ok", style="green")
        )
        table.add_row(
            r.impl,
            r.labels,
            r.mode,
            r.dtype if r.output_dtype == r.dtype else f"{r.dtype}->{r.output_dtype}",
            counts,
            _num(r.max_rel_err, 2),
            _num(r.grad_max_abs_err, 2),
        )
    console.print(table)
    if failed:
        console.print(Text("Rows at risk (worst rows of each failing result):", style="bold"))
        for r in failed:
            for w in r.worst_rows:
                if any(FLAGS[f].failing for f in w.flags):
                    console.print(
                        Text(
                            f"  {r.impl} {r.labels} {r.mode} {r.dtype}: row {w.row} exact "
                            f"{_num(w.exact)}, got {_num(w.loss)} ("
                        )
                        + _flags_text(w.flags)
                        + ")"
                    )
    for s in check.skipped:
        console.print(Text(f"skipped {s.impl} {s.dtype}: {s.reason}", style="dim"))
    if failed or lint_failed:
        parts = [f"{len(failed)} of {len(check.results)} results fire a --fail-on flag"]
        parts += [f"the input is flagged {f}" for f in lint_failed]
        verdict = Text("FAIL: " + "; ".join(parts), style="bold red")
    else:
        verdict = Text("PASS: no --fail-on flag fired", style="bold green")
    console.print(verdict)
    _legend(console, (r.flags for r in check.results))
    return console.file.getvalue()  # type: ignore[attr-defined]
