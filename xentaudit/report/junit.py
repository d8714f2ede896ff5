"""JUnit XML report for `check`: one test case per implementation x dtype x mode (x labels).

A case fails when one of the ``--fail-on`` flags fired on any of its rows; the failure names
the flags and carries the rows at risk, so CI test viewers show what broke where. The suite
carries the verdict: as properties (``verdict``: pass or fail, ``verdict.message``) and, whole,
as its ``system-out``. Against a ``--baseline`` only a regression fails, as the exit code says:
one case, ``baseline``, fails naming the regressions, and the flags of a result or of the input
are its ``system-out``, not failures.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from xentaudit.report.plain import case_name, power_of_two, risk_text, verdict_text
from xentaudit.results import Check


def _failed(case: ET.Element, message: str, kind: str, text: str, fails: bool) -> None:
    """A case's flags: its failure, or (against a baseline, where only a regression fails)
    its ``system-out``."""
    if fails:
        ET.SubElement(case, "failure", message=message, type=kind).text = text
    else:
        ET.SubElement(
            case, "system-out"
        ).text = f"{message} (against a baseline only a regression fails: see its case)\n{text}"


def render(check: Check, fail_on: Sequence[str]) -> str:
    verdict = check.verdict(fail_on)
    failing = {case_name(f): f for f in verdict.failing}
    against = check.baseline
    # every case: the results, the input lint, the baseline, the skipped
    tests = str(len(check.results) + 1 + (against is not None) + len(check.skipped))
    if against is None:
        failures = str(len(failing) + bool(verdict.failing_lint))
    else:  # what fired already passes: only a regression fails
        failures = str(int(bool(against.regressions)))
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
            n = len(against.regressions)
            failure = ET.SubElement(
                case, "failure", message=f"{n} regression{'s' * (n != 1)}", type="regression"
            )
            failure.text = "\n".join(against.regressions)
        ET.SubElement(case, "system-out").text = against.message()
    lint_case = ET.SubElement(suite, "testcase", classname="xentaudit.input", name="input lint")
    if verdict.failing_lint:
        message = ", ".join(
            f"{f} on {check.lint[f]} of {check.rows} rows" for f in verdict.failing_lint
        )
        text = "\n".join(f"{f}: {verdict.advice[f].text}" for f in verdict.failing_lint)
        _failed(lint_case, message, verdict.failing_lint[0], text, against is None)
    for r in check.results:
        name = case_name(r)
        case = ET.SubElement(
            suite, "testcase", classname=f"xentaudit.{r.impl}", name=name, time="0"
        )
        if check.loss_scale is not None:
            scale = ET.SubElement(ET.SubElement(case, "properties"), "property")
            scale.set("name", "max_loss_scale")
            scale.set("value", power_of_two(r.max_loss_scale))
        if name in failing:
            fired = failing[name].flags
            counts = ", ".join(f"{f} on {r.flag_counts[f]} of {r.rows} rows" for f in fired)
            risks = "\n".join(risk_text(w) for w in verdict.rows_at_risk if case_name(w) == name)
            _failed(case, counts, fired[0], risks, against is None)
    for s in check.skipped:
        case = ET.SubElement(
            suite, "testcase", classname=f"xentaudit.{s.impl}", name=f"{s.impl} {s.dtype}"
        )
        ET.SubElement(case, "skipped", message=s.reason)
    ET.SubElement(suite, "system-out").text = verdict_text(verdict)
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )
