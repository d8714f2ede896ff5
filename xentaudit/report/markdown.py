"""Markdown summary of `check`, for ``$GITHUB_STEP_SUMMARY`` (appended by the CLI when set)."""

from __future__ import annotations

from collections.abc import Sequence

from xentaudit.flags import FLAGS
from xentaudit.report.junit import case_name
from xentaudit.results import Check


def render(check: Check, fail_on: Sequence[str]) -> str:
    failing = [r for r in check.results if set(fail_on) & set(r.flags)]
    lint_failed = [f for f in check.lint if f in fail_on]
    if failing or lint_failed:
        parts = [f"{len(failing)} of {len(check.results)} results fire a `--fail-on` flag"]
        parts += [f"the input is flagged `{f}`" for f in lint_failed]
        verdict = "**FAIL**: " + "; ".join(parts)
    else:
        verdict = "**PASS**: no `--fail-on` flag fired"
    lines = [
        f"### xentaudit check `{check.path}`",
        "",
        f"{check.rows} rows x {check.classes} classes, {check.file_dtype}; labels: {check.labels}.",
        "",
        verdict,
        "",
        *(f"- input: `{f}` on {n} of {check.rows} rows" for f, n in check.lint.items()),
        "",
        "| result | rows flagged | max rel err | grad err |",
        "|---|---|---|---|",
    ]
    for r in check.results:
        counts = ", ".join(f"`{f}` {n}" for f, n in r.flag_counts.items()) or "ok"
        lines.append(
            f"| {case_name(r)} | {counts} | {r.max_rel_err:.2g} | {r.grad_max_abs_err:.2g} |"
        )
    worst = [
        f"- {case_name(r)}, row {w.row}: exact {w.exact:.10g}, got {w.loss:.10g} "
        f"({', '.join(w.flags)})"
        for r in failing
        for w in r.worst_rows
        if set(w.flags) & set(fail_on)
    ]
    if worst:
        lines += ["", "Rows at risk:", "", *worst]
    fired = [f for f in FLAGS if any(f in r.flags for r in check.results)]
    if fired:
        lines += ["", *(f"- `{f}`: {FLAGS[f].meaning}. Instead: {FLAGS[f].advice}." for f in fired)]
    return "\n".join(lines) + "\n"
