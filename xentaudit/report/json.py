"""JSON report: strict JSON (no NaN literals), schema documented in the README."""

from __future__ import annotations

import json

from xentaudit.flags import CHECK_FAIL_ON
from xentaudit.results import Audit, Check, Sweep


def render(audit: Audit | Sweep | Check, **context: object) -> str:
    """The result as a JSON document; ``context`` (the command and its inputs) follows ``schema``.

    A check's verdict is judged on ``context["fail_on"]`` (default: `check`'s own default, which
    is then written as ``fail_on``)."""
    if isinstance(audit, Check):
        fail_on = context.setdefault("fail_on", list(CHECK_FAIL_ON))
        body = audit.to_dict(fail_on)  # type: ignore[arg-type]
    else:
        body = audit.to_dict()
    head = {"schema": body.pop("schema"), "command": body.pop("command")}
    document = {**head, **context, **body}  # schema and command first, whoever names it
    return json.dumps(document, indent=2, allow_nan=False) + "\n"
