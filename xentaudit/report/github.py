"""GitHub Actions workflow commands for `check`: ``::error`` for every result on which a
``--fail-on`` flag fired, ``::warning`` for results with other failing-kind flags (not asked to
fail the job), ``::notice`` for informational flags only (``zero-loss``, ``downcast``); last, the
verdict (``::error`` when it fails, ``::notice`` when it passes) with its rows at risk and what
each fired flag means and what to do instead. Against a ``--baseline`` only a regression fails
(the verdict names them): the flags of results and of the input are ``::warning`` at most.
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
    judged = check.baseline is None  # against a baseline, only its regressions fail
    failing = {case_name(f) for f in verdict.failing} if judged else set()
    failing_lint = verdict.failing_lint if judged else ()
    file = _property(check.path)
    lines = [
        f"::{'error' if flag in failing_lint else 'warning'} file={file},"
        f"title={_property('xentaudit input: ' + flag)}::"
        + _data(f"{flag} on {rows} of {check.rows} rows: {verdict.advice[flag].text}")
        for flag, rows in check.lint.items()
    ]
    for r in check.results:
        if not r.flags:
            continue
        if case_name(r) in failing:
            level = "error"
        elif any(FLAGS[f].failing for f in r.flags):
            level = "warning"
        else:
            level = "notice"
        counts = ", ".join(f"{f} on {n} of {r.rows} rows" for f, n in r.flag_counts.items())
        worst = next((w for w in r.worst_rows if w.flags), None)
        detail = (
            f"; worst row {worst.row}{shard_note(worst.shard, worst.shard_row)}: "
            f"exact {worst.exact:.10g}, "
            f"got {worst.loss:.10g}"
            if worst
            else ""
        )
        title = _property(f"xentaudit {case_name(r)}")
        lines.append(f"::{level} file={file},title={title}::{_data(counts + detail)}")
    level = "error" if verdict.status == "fail" else "notice"
    title = _property("xentaudit verdict")
    text = verdict_text(verdict)
    if check.environment:
        text += f"\nAudited with: {describe(check.environment)}."
    lines.append(f"::{level} file={file},title={title}::{_data(text)}")
    return "".join(line + "\n" for line in lines)
