"""JUnit XML report for `check`: one test case per implementation x dtype x mode (x labels).

A case fails when one of the ``--fail-on`` flags fired on any of its rows; the failure names
the flags and carries the rows at risk, so CI test viewers show what broke where. The suite
carries the verdict: as properties (``verdict``: pass or fail, ``verdict.message``) and, whole,
as its ``system-out``. Against a ``--baseline`` only a regression fails, as the exit code says:
one case, ``baseline``, fails naming the regressions, and so does each result (or the input)
that regressed, with its own regression lines; the flags that fired before are the
``system-out`` of their case, not failures.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from xentaudit.report.plain import case_name, power_of_two, risk_text, verdict_text
from xentaudit.results import Check, Comparison


def _failed(
    case: ET.Element, against: Comparison | None, name: str, fired: tuple[str, str, str] | None
) -> None:
    """A case's verdict: the failure of its ``fired`` flags (message, kind, text), or against a
    baseline the failure of its regressions (the result or input ``name``'s lines, with what
    fired), and what fired before as its ``system-out``."""
    if against is None:
        if fired is not None:
            message, kind, text = fired
            ET.SubElement(case, "failure", message=message, type=kind).text = text
        return
    lines = against.lines_of(name)
    if lines:
        text = "\n".join(lines) + ("" if fired is None else f"\n{fired[0]}\n{fired[2]}")
        message = f"regressed against the baseline {against.path}"
        ET.SubElement(case, "failure", message=message, type="regression").text = text
    elif fired is not None:
        message, _, text = fired
        note = "fired before: against a baseline only a regression fails"
        ET.SubElement(case, "system-out").text = f"{message} ({note})\n{text}"


def render(check: Check, fail_on: Sequence[str]) -> str:
    verdict = check.verdict(fail_on)
    failing = {case_name(f): f for f in verdict.failing}
    against = check.baseline
    # every case: the results, the input lint, the baseline, the skipped
    tests = str(len(check.results) + 1 + (against is not None) + len(check.skipped))
    suites = ET.Element("testsuites", name="xentaudit", tests=tests, failures="0")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"xentaudit check {check.path}",
        tests=tests,
        failures="0",  # counted below, once the cases are written
        errors="0",
        skipped=str(len(check.skipped)),
    )
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="verdict", value=verdict.status)
    ET.SubElement(properties, "property", name="verdict.message", value=verdict.message)
    ET.SubElement(properties, "property", name="config", value=check.config or "none")
    ET.SubElement(properties, "property", name="input", value=check.input)
    for key, value in check.environment.items():
        ET.SubElement(properties, "property", name=f"environment.{key}", value=value)
    if against is not None:
        case = ET.SubElement(
            suite, "testcase", classname="xentaudit.baseline", name=f"against {against.path}"
        )
        if against.regressions:
            failure = ET.SubElement(case, "failure", message=against.count(), type="regression")
            failure.text = "\n".join(against.regressions)
        ET.SubElement(case, "system-out").text = against.message()
    lint_case = ET.SubElement(suite, "testcase", classname="xentaudit.input", name="input lint")
    lint = None
    if verdict.failing_lint:
        message = ", ".join(
            f"{f} on {check.lint[f]} of {check.rows} rows" for f in verdict.failing_lint
        )
        text = "\n".join(f"{f}: {verdict.advice[f].text}" for f in verdict.failing_lint)
        lint = (message, verdict.failing_lint[0], text)
    _failed(lint_case, against, "input", lint)
    for r in check.results:
        name = case_name(r)
        case = ET.SubElement(
            suite, "testcase", classname=f"xentaudit.{r.impl}", name=name, time="0"
        )
        if check.loss_scale is not None:
            scale = ET.SubElement(ET.SubElement(case, "properties"), "property")
            scale.set("name", "max_loss_scale")
            scale.set("value", power_of_two(r.max_loss_scale))
        flags = None
        if name in failing:
            fired = failing[name].flags
            counts = ", ".join(f"{f} on {r.flag_counts[f]} of {r.rows} rows" for f in fired)
            risks = "\n".join(risk_text(w) for w in verdict.rows_at_risk if case_name(w) == name)
            flags = (counts, fired[0], risks)
        _failed(case, against, r.name, flags)
    for s in check.skipped:
        case = ET.SubElement(
            suite, "testcase", classname=f"xentaudit.{s.impl}", name=f"{s.impl} {s.dtype}"
        )
        ET.SubElement(case, "skipped", message=s.reason)
    ET.SubElement(suite, "system-out").text = verdict_text(verdict)
    failures = str(sum(1 for _ in suite.iter("failure")))
    suite.set("failures", failures)
    suites.set("failures", failures)
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )
