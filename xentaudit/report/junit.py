"""JUnit XML report for `check`: one test case per implementation x dtype x mode (x labels).

A case fails when one of the ``--fail-on`` flags fired on any of its rows; the failure names
the flags and carries the worst rows, so CI test viewers show what broke where.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from xentaudit.flags import FLAGS
from xentaudit.results import Check, CheckResult


def case_name(r: CheckResult) -> str:
    """How a result is named in every CI-facing report."""
    labels = "" if r.labels == "file" else f" labels={r.labels}"
    return f"{r.impl} {r.dtype} {r.mode}{labels}"


def worst_rows_text(r: CheckResult) -> str:
    return "\n".join(
        f"row {w.row}: exact {w.exact:.10g}, got {w.loss:.10g} ({', '.join(w.flags) or 'ok'})"
        for w in r.worst_rows
    )


def render(check: Check, fail_on: Sequence[str]) -> str:
    failing = [r for r in check.results if set(fail_on) & set(r.flags)]
    lint_failed = [f for f in check.lint if f in fail_on]
    tests = str(len(check.results) + 1)  # + the input lint case
    failures = str(len(failing) + bool(lint_failed))
    suites = ET.Element("testsuites", name="xentaudit", tests=tests, failures=failures)
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"xentaudit check {check.path}",
        tests=tests,
        failures=failures,
        errors="0",
        skipped=str(len(check.skipped)),
    )
    lint_case = ET.SubElement(suite, "testcase", classname="xentaudit.input", name="input lint")
    if lint_failed:
        failure = ET.SubElement(
            lint_case,
            "failure",
            message=", ".join(f"{f} on {check.lint[f]} of {check.rows} rows" for f in lint_failed),
            type=lint_failed[0],
        )
        failure.text = "\n".join(f"{f}: {FLAGS[f].meaning}" for f in lint_failed)
    for r in check.results:
        case = ET.SubElement(
            suite, "testcase", classname=f"xentaudit.{r.impl}", name=case_name(r), time="0"
        )
        fired = [f for f in r.flags if f in fail_on]
        if fired:
            counts = ", ".join(f"{f} on {r.flag_counts[f]} of {r.rows} rows" for f in fired)
            failure = ET.SubElement(case, "failure", message=counts, type=fired[0])
            failure.text = worst_rows_text(r)
    for s in check.skipped:
        case = ET.SubElement(
            suite, "testcase", classname=f"xentaudit.{s.impl}", name=f"{s.impl} {s.dtype}"
        )
        ET.SubElement(case, "skipped", message=s.reason)
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )
