"""Markdown summary of `check`, for ``$GITHUB_STEP_SUMMARY`` (appended by the CLI when set).

What a run names (paths, label sources, shards, the verdict that quotes them) is escaped: a
path with a ``|`` once split its table row, one with a backtick broke out of its code span,
and one with ``<img ...>`` rendered as HTML."""

from __future__ import annotations

import re
from collections.abc import Sequence

from xentaudit.environment import describe
from xentaudit.report.plain import case_name, differences_text, power_of_two, risk_text
from xentaudit.results import Check

# what Markdown (GitHub's: tables, strikethrough, math) reads as markup inside a line; CommonMark
# takes any ASCII punctuation escaped with a backslash as itself
_MARKUP = str.maketrans({c: f"\\{c}" for c in "\\`*[]<>|~&$#"})
# an underscore between two letters or digits never opens nor closes emphasis (CommonMark's
# flanking rules): keras_cce_probs stays as it reads
_EMPHASIS = re.compile(r"_(?![^\W_])|(?<![^\W_])_")


def _text(text: str) -> str:
    """``text`` as Markdown that renders as itself, on one line (a line break shows as \\n)."""
    text = _EMPHASIS.sub(r"\\_", text.translate(_MARKUP))
    return text.replace("\r", "\\r").replace("\n", "\\n")


def render(check: Check, fail_on: Sequence[str]) -> str:
    verdict = check.verdict(fail_on)
    scaled = check.loss_scale is not None
    lines = [
        f"### xentaudit check {_text(check.path)}",
        "",
        f"{check.rows} rows x {check.classes} classes, {check.file_dtype} {check.input}; "
        f"labels: {_text(check.labels)}; "
        f"configuration: {_text(check.config or 'none')}.",
        "",
        f"**{verdict.status.upper()}**: {_text(verdict.message)}",
        "",
        *(f"- input: `{f}` on {n} of {check.rows} rows" for f, n in check.lint.items()),
        "",
        "| result | rows flagged | max rel err | grad err |" + (" max scale |" if scaled else ""),
        "|---|---|---|---|" + ("---|" if scaled else ""),
    ]
    for r in check.results:
        counts = ", ".join(f"`{f}` {n}" for f, n in r.flag_counts.items()) or "ok"
        lines.append(
            f"| {_text(case_name(r))} | {counts} | {r.max_rel_err:.2g} | {r.grad_max_abs_err:.2g} |"
            + (f" {power_of_two(r.max_loss_scale)} |" if scaled else "")
        )
    if verdict.rows_at_risk:
        lines += ["", "Rows at risk:", ""]
        lines += [f"- {_text(f'{case_name(w)}, {risk_text(w)}')}" for w in verdict.rows_at_risk]
    if verdict.mode_differences:
        lines += ["", _text(differences_text(verdict.mode_differences))]
    if verdict.advice:
        lines += ["", *(f"- `{f}`: {advice.text}" for f, advice in verdict.advice.items())]
    if check.environment:
        lines += ["", f"Audited with: {_text(describe(check.environment))}."]
    return "\n".join(lines) + "\n"
