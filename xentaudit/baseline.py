"""A CI baseline that only fails on regressions: a `check` compared with the JSON report of an
earlier one (`check --write-baseline`), result by result.

A regression is a ``--fail-on`` flag that a result (or the input) did not fire before, more
rows carrying one, a loss or gradient error that grew more than ``FACTOR`` times past the
default tolerance, or a new result that fires one. Improvements are the reverse, and pass.
Results are matched on (labels, impl, eps, dtype, policy, mode); the environment records say
which versions changed between the two runs, so a regression after an upgrade is attributed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xentaudit.dtypes import FORMATS
from xentaudit.errors import InputError
from xentaudit.io import regular_file
from xentaudit.results import SCHEMA_VERSION, Check, Comparison

FACTOR = 2.0  # an error counts as grown (or shrunk) when it more than doubles (halves)
FLOOR_ULPS = 8  # errors within the default tolerance, 8 eps of the dtype, are rounding
MAX_BASELINE_BYTES = 64 * 2**20  # a baseline larger than this is refused unread


def read_baseline(path: str | Path) -> dict[str, Any]:
    """The JSON report of an earlier `check`, validated: one line and exit 2 otherwise."""
    path = Path(path)
    regular_file(path, "--baseline", "a JSON report written by check --write-baseline")
    if path.stat().st_size > MAX_BASELINE_BYTES:
        raise InputError(f"--baseline {path} is larger than {MAX_BASELINE_BYTES} bytes")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--baseline {path} is not JSON ({exc}); write it again") from None
    if not isinstance(doc, dict) or doc.get("command") != "check":
        raise InputError(
            f"--baseline {path} is not a check report; write one with check --write-baseline"
        )
    if doc.get("schema") != SCHEMA_VERSION:
        raise InputError(
            f"--baseline {path} has schema {doc.get('schema')!r}, not {SCHEMA_VERSION}; write it "
            "again with this version"
        )
    if not isinstance(doc.get("results"), list) or not isinstance(doc.get("lint"), dict):
        raise InputError(f"--baseline {path} has no results; write it again")
    return doc


def _number(value: Any) -> float:
    """A JSON number, or the strings JSON writes for non-finite ones ("nan", "inf")."""
    return float(value) if isinstance(value, int | float | str) else math.nan


def _key(r: dict[str, Any]) -> tuple:
    return (r["labels"], r["impl"], r["eps"], r["dtype"], r["policy"], r["mode"])


def _name(r: dict[str, Any]) -> str:
    policy = "" if r["policy"] == "float32" else f" [{r['policy']}]"
    return f"{r['impl']} {r['dtype']}{policy} {r['mode']} ({r['labels']} labels)"


def _grew(now: float, before: float, floor: float) -> bool:
    """Whether error ``now`` is more than FACTOR times ``before``, both floored at ``floor``
    (a NaN error is the largest)."""
    if math.isnan(now):
        return not math.isnan(before)
    return not math.isnan(before) and max(now, floor) > FACTOR * max(before, floor)


def _flag_changes(
    name: str, now: dict[str, int], before: dict[str, int], wanted: set[str]
) -> tuple[list[str], list[str]]:
    """Regressions and improvements of the flag counts ``now`` against ``before``."""
    worse, better = [], []
    for flag in sorted(wanted & (set(now) | set(before))):
        a, b = now.get(flag, 0), before.get(flag, 0)
        if a and not b:
            worse.append(f"{name}: new flag {flag} on {a} rows")
        elif a > b:
            worse.append(f"{name}: {flag} on {a} rows, was {b}")
        elif b and not a:
            better.append(f"{name}: {flag} gone (was on {b} rows)")
        elif a < b:
            better.append(f"{name}: {flag} on {a} rows, was {b}")
    return worse, better


def compare(
    check: Check, baseline: dict[str, Any], fail_on: Iterable[str], path: str
) -> Comparison:
    """``check`` against ``baseline`` (``read_baseline``), judged on the flags ``fail_on``."""
    wanted = set(fail_on)
    now = check.to_dict(tuple(fail_on))
    worse, better = _flag_changes("input", now["lint"], baseline["lint"], wanted)
    before = {_key(r): r for r in baseline["results"]}
    for r in now["results"]:
        name = _name(r)
        old = before.pop(_key(r), None)
        if old is None:
            fired = [f for f in r["flags"] if f in wanted]
            if fired:
                worse.append(f"{name}: new result, fires {', '.join(fired)}")
            continue
        w, b = _flag_changes(name, r["flag_counts"], old["flag_counts"], wanted)
        worse += w
        better += b
        floor = FLOOR_ULPS * FORMATS[r["dtype"]].eps
        for column, what in (("max_rel_err", "loss error"), ("grad_max_abs_err", "grad error")):
            a, b_ = _number(r[column]), _number(old[column])
            if _grew(a, b_, floor):
                worse.append(f"{name}: {what} {a:.3g}, was {b_:.3g}")
            elif _grew(b_, a, floor):
                better.append(f"{name}: {what} {a:.3g}, was {b_:.3g}")
    environment = {
        key: f"{baseline['environment'].get(key, 'none')} -> {value}"
        for key, value in now["environment"].items()
        if isinstance(baseline.get("environment"), dict)
        and baseline["environment"].get(key) != value
    }
    return Comparison(
        path,
        tuple(worse),
        tuple(better),
        environment,
        tuple(_name(r) for r in before.values()),
    )
