"""Rich table report for `compare`: one row per implementation x dtype (x mode where modes differ),
the rows at risk, a one-line verdict, and what each flag that fired means and what to use instead.

Renders to a string and never prints: ``cli.py`` decides where the text goes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from xentaudit.flags import FLAGS
from xentaudit.results import Audit, ImplResult

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
    buffer = io.StringIO()
    console = Console(
        file=buffer, force_terminal=color, no_color=not color, width=width, highlight=False
    )
    console.print(
        Text(title, style="bold"),
        Text(f"reference: {REFERENCE_NAMES[audit.reference_method]}", style="dim"),
        sep="\n",
    )
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column, justify in (
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
    ):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
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
    fired = [f for f in FLAGS if any(f in r.flags for r in audit.results)]
    for name in fired:
        flag = FLAGS[name]
        console.print(
            Text(f"  {name}", style=FLAG_STYLES[name]),
            f"{flag.meaning}. Instead: {flag.advice}.",
        )
    return buffer.getvalue()
