"""Markdown summary of `check`, for ``$GITHUB_STEP_SUMMARY`` (appended by the CLI when set)."""

from __future__ import annotations

from collections.abc import Sequence

from xentaudit.environment import describe
from xentaudit.report.plain import case_name, differences_text, power_of_two, risk_text
from xentaudit.results import Check


def render(check: Check, fail_on: Sequence[str]) -> str:
    verdict = check.verdict(fail_on)
    scaled = check.loss_scale is not None
    lines = [
        f"### xentaudit check `{check.path}`",
        "",
        f"{check.rows} rows x {check.classes} classes, {check.file_dtype} {check.input}; "
        f"labels: {check.labels}; "
        f"configuration: {check.config or 'none'}.",
        "",
        f"**{verdict.status.upper()}**: {verdict.message}",
        "",
        *(f"- input: `{f}` on {n} of {check.rows} rows" for f, n in check.lint.items()),
        "",
        "| result | rows flagged | max rel err | grad err |" + (" max scale |" if scaled else ""),
        "|---|---|---|---|" + ("---|" if scaled else ""),
    ]
    for r in check.results:
        counts = ", ".join(f"`{f}` {n}" for f, n in r.flag_counts.items()) or "ok"
        lines.append(
            f"| {case_name(r)} | {counts} | {r.max_rel_err:.2g} | {r.grad_max_abs_err:.2g} |"
            + (f" {power_of_two(r.max_loss_scale)} |" if scaled else "")
        )
    if verdict.rows_at_risk:
        lines += ["", "Rows at risk:", ""]
        lines += [f"- {case_name(w)}, {risk_text(w)}" for w in verdict.rows_at_risk]
    if verdict.mode_differences:
        lines += ["", differences_text(verdict.mode_differences)]
    if verdict.advice:
        lines += ["", *(f"- `{f}`: {advice.text}" for f, advice in verdict.advice.items())]
    if check.environment:
        lines += ["", f"Audited with: {describe(check.environment)}."]
    return "\n".join(lines) + "\n"
