"""Self-contained HTML reports of `sweep`, `compare` and `check` (``--html``): the verdict and
the advice first, then the tables, then the figures.

One file, no external reference of any kind: the CSS is inline, the figures are PNG ``data:``
URIs, fonts are the reader's own; it renders the same offline. The tables are the table
report's own text (``report.table``), its colours carried over as inline styles, so the HTML
and the terminal say the same thing. Returns a string and never writes.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.text import Text

from xentaudit.report import plot
from xentaudit.report import table as table_report
from xentaudit.report.plain import case_name, differences_text, frameworks_text
from xentaudit.results import Audit, Check, Sweep, Verdict, shard_note

WIDTH = 160  # columns of the table report in the HTML
# status -> banner colour (GitHub's success and danger colours; "info": a sweep judged on no
# --fail-on flag states facts, not a verdict)
STATUS_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "info": "#0969da"}
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em;
       color: #1f2328; background: #ffffff; max-width: 110em; }
.verdict { color: #ffffff; padding: 0.8em 1.2em; border-radius: 6px; font-size: 1.1em; }
.verdict strong { font-size: 1.3em; margin-right: 0.5em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { font-family: ui-monospace, Menlo, "DejaVu Sans Mono", Consolas, monospace;
      font-size: 0.8em; background: #f6f8fa; padding: 0.8em; overflow-x: auto; }
img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
dt { font-weight: bold; font-family: ui-monospace, monospace; } dd { margin: 0 0 0.5em 1.5em; }
"""


def _page(title: str, status: str, message: str, body: Iterable[str]) -> str:
    colour = STATUS_COLOURS[status]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<div class="verdict" id="verdict" style="background: {colour}">'
        f"<strong>{status.upper()}</strong>{html.escape(message)}</div>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _advice(verdict: Verdict) -> str:
    """What each fired flag means and what to use instead."""
    if not verdict.advice:
        return ""
    items = "".join(
        f"<dt>{html.escape(name)}</dt><dd>{html.escape(advice.text)}</dd>"
        for name, advice in verdict.advice.items()
    )
    return f"<h2>What the flags mean, and what to use instead</h2>\n<dl>{items}</dl>"


def _notes(verdict: Verdict) -> str:
    notes = []
    if verdict.mode_differences:
        notes.append(differences_text(verdict.mode_differences))
    if verdict.framework_differences:
        notes.append(frameworks_text(verdict.framework_differences))
    return "".join(f"<p>{html.escape(n)}</p>" for n in notes)


def _rows_at_risk(verdict: Verdict) -> str:
    """The worst failing rows: where, the exact loss, what the implementation returned."""
    if not verdict.rows_at_risk:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(case_name(r))}</td>"
        f"<td class=num>{r.row}{html.escape(shard_note(r.shard, r.shard_row))}</td>"
        f"<td class=num>{r.exact:.10g}</td><td class=num>{r.loss:.10g}</td>"
        f"<td>{html.escape(', '.join(r.flags))}</td></tr>"
        for r in verdict.rows_at_risk
    )
    return (
        "<h2>Rows at risk</h2>\n<table><tr><th>result</th><th>row</th><th>exact loss</th>"
        f"<th>returned</th><th>flags</th></tr>{rows}</table>"
    )


def _text_report(ansi: str) -> str:
    """The table report (rendered with colours) as a ``<pre>`` with inline styles."""
    console = Console(record=True, width=WIDTH, file=io.StringIO(), color_system="truecolor")
    console.print(Text.from_ansi(ansi), soft_wrap=True)
    code = console.export_html(inline_styles=True, code_format="{code}")
    return f"<pre>{code}</pre>"


def _figure(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render(audit: Audit, *, title: str) -> str:
    """The HTML report of `compare`: verdict, advice, rows at risk, the table report."""
    verdict = audit.verdict()
    return _page(
        title,
        verdict.status,
        verdict.message,
        [
            _advice(verdict),
            _rows_at_risk(verdict),
            _notes(verdict),
            "<h2>Results</h2>",
            _text_report(table_report.render(audit, title=title, color=True, width=WIDTH)),
        ],
    )


def render_check(check: Check, fail_on: Sequence[str]) -> str:
    """The HTML report of `check`: verdict, advice, rows at risk with their exact and returned
    losses, the table report, and a histogram of per-row relative errors per result."""
    verdict = check.verdict(fail_on)
    lint = "".join(
        f"<li>input: <code>{html.escape(f)}</code> on {n} of {check.rows} rows</li>"
        for f, n in check.lint.items()
    )
    return _page(
        f"xentaudit check {check.path}",
        verdict.status,
        verdict.message,
        [
            f"<ul>{lint}</ul>" if lint else "",
            _advice(verdict),
            _rows_at_risk(verdict),
            _notes(verdict),
            "<h2>Results</h2>",
            _text_report(table_report.render_check(check, fail_on, color=True, width=WIDTH)),
            "<h2>Per-row relative loss error</h2>",
            _figure(plot.png(plot.check_histogram(check)), "rows per relative loss error"),
        ],
    )


def render_sweep(sweep: Sweep, fail_on: Sequence[str]) -> str:
    """The HTML report of `sweep`: its status (against ``fail_on`` or the baseline) and
    summary, the grids and breaking points, and the figure of ``sweep --plot``."""
    code = sweep.exit_code(fail_on)
    if code:
        status = "fail"
    elif fail_on or sweep.baseline is not None:
        status = "pass"
    else:
        status = "info"
    if sweep.baseline is not None:
        message = sweep.baseline.message()
    elif fail_on:
        fired = "fires" if code else "fires nowhere"
        message = f"A --fail-on flag ({', '.join(fail_on)}) {fired}. {sweep.summary[0]}"
    else:
        message = sweep.summary[0]
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in sweep.summary[1:])
    return _page(
        "xentaudit sweep",
        status,
        message,
        [
            f"<h2>Summary</h2>\n<ul>{summary}</ul>",
            "<h2>Grids and breaking points</h2>",
            _text_report(table_report.render_sweep(sweep, color=True, width=WIDTH)),
            "<h2>Error against logit scale</h2>",
            _figure(plot.png(plot.sweep_figure(sweep)), "sweep: error against logit scale"),
        ],
    )
