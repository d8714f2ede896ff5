"""JSON report: strict JSON (no NaN literals), schema documented in the README."""

from __future__ import annotations

import json

from xentaudit.results import Audit, Check, Sweep


def render(audit: Audit | Sweep | Check, **context: object) -> str:
    """The audit as a JSON document; ``context`` (the command and its inputs) follows ``schema``."""
    body = audit.to_dict()
    document = {"schema": body.pop("schema"), **context, **body}
    return json.dumps(document, indent=2, allow_nan=False) + "\n"
