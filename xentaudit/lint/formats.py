"""Renderers of a ``LintResult``: text (as ruff prints), JSON, SARIF 2.1.0 (GitHub code
scanning) and GitHub workflow annotations. Each returns a string; none prints or exits.

In a notebook, a finding's line counts within its code cell: text and JSON name the cell;
SARIF, whose regions count lines of the file (here JSON), gives the notebook without a region
and names the cell and line in the message.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePath
from typing import Any

from xentaudit import __version__
from xentaudit.lint import LintResult, ParseError
from xentaudit.lint.detect import Finding
from xentaudit.lint.rules import RULES

FORMATS = ("text", "json", "sarif", "github")
PARSE_ERROR = "XA000"  # the code a file that does not parse is reported under
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _where(item: Finding | ParseError) -> str:
    cell = f"cell {item.cell}:" if item.cell is not None else ""
    return f"{item.path}:{cell}{item.line}:{item.col}"


def _summary(result: LintResult) -> str:
    fixable = sum(f.fix is not None for f in result.findings)
    counts = [f"{len(result.findings)} finding{'s' * (len(result.findings) != 1)}"]
    if fixable:
        counts.append(f"{fixable} fixable with --fix")
    if result.suppressed:
        counts.append(f"{result.suppressed} suppressed by noqa")
    if result.errors:
        counts.append(f"{len(result.errors)} file(s) not parsed")
    return f"{', '.join(counts)} in {result.files} file{'s' * (result.files != 1)}"


def text(result: LintResult) -> str:
    """``path:line:col: XA101 message``, one line per finding ([*]: ``--fix`` rewrites it),
    then a summary line and, when something was found, where to see why."""
    lines = [f"{_where(e)}: {PARSE_ERROR} {e.message}" for e in result.errors]
    for f in result.findings:
        mark = " [*]" if f.fix is not None else ""
        lines.append(f"{_where(f)}: {f.code}{mark} {f.name}: {f.message}; fix: {f.replacement}")
    lines.append(_summary(result))
    if result.findings:
        lines.append("Why, on numbers: xentaudit lint --explain CODE")
    return "\n".join(lines) + "\n"


def _finding_dict(f: Finding) -> dict[str, Any]:
    return {
        "path": f.path,
        "cell": f.cell,
        "line": f.line,
        "col": f.col,
        "end_line": f.end_line,
        "end_col": f.end_col,
        "code": f.code,
        "name": f.name,
        "message": f.message,
        "replacement": f.replacement,
        "impl": f.impl,
        "fixable": f.fix is not None,
    }


def as_json(result: LintResult) -> str:
    """The result as strict JSON (schema documented in the README)."""
    from xentaudit.results import SCHEMA_VERSION  # here: `lint --help` imports no numpy

    document = {
        "schema": SCHEMA_VERSION,
        "command": "lint",
        "files": result.files,
        "suppressed": result.suppressed,
        "findings": [_finding_dict(f) for f in result.findings],
        "errors": [
            {"path": e.path, "cell": e.cell, "line": e.line, "col": e.col, "message": e.message}
            for e in result.errors
        ],
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def _uri(path: str) -> str:
    """A path as SARIF wants it: relative to the working directory (the repository root in
    CI, where code scanning resolves it) with forward slashes, else a file URI."""
    pure = Path(path)
    if not pure.is_absolute():
        return PurePath(path).as_posix()
    try:
        return pure.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return pure.as_uri()


def _location(item: Finding | ParseError) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(item.path)}}
    if item.cell is None:
        region = {"startLine": item.line, "startColumn": item.col}
        if isinstance(item, Finding):
            region |= {"endLine": item.end_line, "endColumn": item.end_col}
        physical["region"] = region
    return {"physicalLocation": physical}


def _message(item: Finding | ParseError, text: str) -> str:
    return text if item.cell is None else f"cell {item.cell}, line {item.line}: {text}"


def sarif(result: LintResult) -> str:
    """The result as a SARIF 2.1.0 log: one run, the rule registry as the driver's rules."""
    codes = list(RULES)
    rules = [
        {
            "id": rule.code,
            "name": rule.name,
            "shortDescription": {"text": rule.name},
            "fullDescription": {"text": rule.message},
            "help": {"text": f"Fix: {rule.replacement}. Why: xentaudit lint --explain {rule.code}"},
            "defaultConfiguration": {"level": "error"},
            "properties": {"impls": sorted(set(rule.impls.values())), "fix": rule.fix},
        }
        for rule in RULES.values()
    ]
    results = [
        {
            "ruleId": f.code,
            "ruleIndex": codes.index(f.code),
            "level": "error",
            "message": {"text": _message(f, f"{f.message}; fix: {f.replacement}")},
            "locations": [_location(f)],
            "properties": {"impl": f.impl, "fixable": f.fix is not None},
        }
        for f in result.findings
    ]
    notifications = [
        {
            "level": "error",
            "message": {"text": _message(e, f"{PARSE_ERROR} {e.message}")},
            "locations": [_location(e)],
        }
        for e in result.errors
    ]
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "xentaudit",
                        "version": __version__,
                        "rules": rules,
                    }
                },
                "columnKind": "unicodeCodePoints",  # columns count characters, as editors do
                "invocations": [
                    {
                        "executionSuccessful": not result.errors,
                        "toolExecutionNotifications": notifications,
                    }
                ],
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2, allow_nan=False) + "\n"


def github(result: LintResult) -> str:
    """GitHub Actions workflow commands: one ``::error`` annotation per finding and per file
    that does not parse."""
    from xentaudit.report.github import _data, _property  # here: as SCHEMA_VERSION above

    lines = []
    for item in (*result.errors, *result.findings):
        place = f"file={_property(item.path)}"
        if item.cell is None:  # a notebook's lines count in cells, not in its JSON file
            place += f",line={item.line},col={item.col}"
            if isinstance(item, Finding):
                place += f",endLine={item.end_line},endColumn={item.end_col}"
        if isinstance(item, Finding):
            title = f"{item.code} {item.name}"
            body = f"{item.message}; fix: {item.replacement}"
        else:
            title, body = f"{PARSE_ERROR} not parsed", item.message
        lines.append(f"::error {place},title={_property(title)}::{_data(_message(item, body))}")
    return "".join(line + "\n" for line in lines)


RENDERERS = {"text": text, "json": as_json, "sarif": sarif, "github": github}
