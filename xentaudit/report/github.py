"""GitHub Actions workflow commands for `check`: ``::error`` for every result on which a
``--fail-on`` flag fired, ``::warning`` for results with other failing-kind flags (not asked to
fail the job), ``::notice`` for informational flags only (``zero-loss``, ``downcast``); last, the
verdict (``::error`` when it fails, ``::notice`` when it passes) with its rows at risk and what
each fired flag means and what to do instead. Against a ``--baseline`` only a regression fails
(the verdict names them): a result (or the input) that regressed is an ``::error`` naming its
regressions; the flags that fired before are ``::warning`` at most.
See "Workflow commands for GitHub Actions" for the escaping rules applied here."""

from __future__ import annotations

from collections.abc import Sequence

from xentaudit.environment import describe
from xentaudit.flags import FLAGS
from xentaudit.report.plain import case_name, verdict_text
from xentaudit.results import Check, shard_note


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def render(check: Check, fail_on: Sequence[str]) -> str:
    verdict = check.verdict(fail_on)
    against = check.baseline  # against a baseline, only its regressions fail
    failing = {case_name(f) for f in verdict.failing} if against is None else set()
    failing_lint = verdict.failing_lint if against is None else ()

    def regressions(name: str, flag: str | None = None) -> list[str]:
        """What the result (or input) ``name`` regressed on (only ``flag``'s rows: "new flag
        {flag} on", "{flag} on"), to lead its annotation."""
        lines = () if against is None else against.lines_of(name)
        return [
            line.removeprefix(f"{name}: ")
            for line in lines
            if flag is None or f" {flag} on " in line
        ]

    file = _property(check.path)
    lines = []
    for flag, rows in check.lint.items():
        regressed = regressions("input", flag)
        level = "error" if flag in failing_lint or regressed else "warning"
        title = _property("xentaudit input: " + flag)
        text = f"{flag} on {rows} of {check.rows} rows: {verdict.advice[flag].text}"
        lines.append(f"::{level} file={file},title={title}::{_data('; '.join([*regressed, text]))}")
    for r in check.results:
        regressed = regressions(r.name)
        if not r.flags and not regressed:
            continue
        if case_name(r) in failing or regressed:
            level = "error"
        elif any(FLAGS[f].failing for f in r.flags):
            level = "warning"
        else:
            level = "notice"
        counts = ", ".join(f"{f} on {n} of {r.rows} rows" for f, n in r.flag_counts.items())
        worst = next((w for w in r.worst_rows if w.flags), None)
        detail = (
            [
                f"worst row {worst.row}{shard_note(worst.shard, worst.shard_row)}: "
                f"exact {worst.exact:.10g}, got {worst.loss:.10g}"
            ]
            if worst
            else []
        )
        text = "; ".join([*regressed, *([counts] if counts else []), *detail])
        title = _property(f"xentaudit {case_name(r)}")
        lines.append(f"::{level} file={file},title={title}::{_data(text)}")
    level = "error" if verdict.status == "fail" else "notice"
    title = _property("xentaudit verdict")
    text = verdict_text(verdict)
    if check.environment:
        text += f"\nAudited with: {describe(check.environment)}."
    lines.append(f"::{level} file={file},title={title}::{_data(text)}")
    return "".join(line + "\n" for line in lines)
