"""A CI baseline that only fails on regressions: a `check` (or `sweep`) compared with the JSON
report of an earlier one (`--write-baseline`), result by result (breaking point by breaking
point).

A regression is a ``--fail-on`` flag that a result (or the input) did not fire before, more
rows carrying one, a loss or gradient error that grew more than ``FACTOR`` times past the
default tolerance, or a new result that fires one. Improvements are the reverse, and pass.
Results are matched on (labels, impl, eps, dtype, policy, mode); the environment records say
which versions changed between the two runs, so a regression after an upgrade is attributed.
A sweep regresses where a breaking point moved to a scale smaller by more than
``SCALE_SLACK``, or appeared where the baseline's sweep of the same cells found none.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xentaudit import impls as zoo
from xentaudit.audit import RTOL_ULPS
from xentaudit.dtypes import FORMATS, FloatFormat, dtype_label
from xentaudit.errors import InputError
from xentaudit.flags import fail_on_flags
from xentaudit.io import regular_file
from xentaudit.losses import accumulator_eps, label_sum_terms, lane_bound, reduction_depth
from xentaudit.results import (
    SCHEMA_VERSION,
    Check,
    Comparison,
    Sweep,
    result_name,
    variant_label,
)

FACTOR = 2.0  # an error counts as grown (or shrunk) when it more than doubles (halves)
# Errors within the grading tolerance are rounding: (RTOL_ULPS + k) eps of the narrowest dtype
# the result computed in, k = ceil(log2 C), and d u_acc for the sums in lanes (audit.grade's
# bound for B = 1, relative to max(|L|, 1)).
MAX_BASELINE_BYTES = 64 * 2**20  # a baseline larger than this is refused unread
# Breaking points are searched to 4 significant digits (0.1 % of rounding), and in float16 and
# bfloat16 a threshold can flicker by a grid step as the rounded input moves: a point must move
# by more than 2 % to count.
SCALE_SLACK = 0.02


def read_baseline(path: str | Path, command: str = "check") -> dict[str, Any]:
    """The JSON report of an earlier ``command`` (check, sweep), validated: one line and exit
    2 otherwise. Every value the comparison reads is checked here (its type, finiteness and
    range), so a hand-edited or corrupt baseline is refused naming the field, before any work."""
    path = Path(path)
    regular_file(path, "--baseline", "a JSON report written by check --write-baseline")
    if path.stat().st_size > MAX_BASELINE_BYTES:
        raise InputError(f"--baseline {path} is larger than {MAX_BASELINE_BYTES} bytes")
    long: list[_LongInteger] = []

    def integer(literal: str) -> int | _LongInteger:
        try:
            return int(literal)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            long.append(_LongInteger(literal))
            return long[-1]

    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_int=integer)
    except OSError as exc:
        raise InputError(f"cannot read --baseline {path}: {exc.strerror}; check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--baseline {path} is not JSON ({exc}); write it again") from None
    except RecursionError:  # json recurses into nested arrays and objects
        raise InputError(
            f"--baseline {path} is nested too deeply for a report; write it again"
        ) from None
    if long:
        where, found = _long_integer(doc)
        raise _malformed(path, where, f"an integer of {found.digits} digits, too long to read")
    if not isinstance(doc, dict) or doc.get("command") != command:
        raise InputError(
            f"--baseline {path} is not a {command} report; write one with {command} "
            "--write-baseline"
        )
    if doc.get("schema") != SCHEMA_VERSION:
        schema = reprlib.repr(doc.get("schema"))  # shortened: a long number, a nested list
        raise InputError(
            f"--baseline {path} has schema {schema}, not {SCHEMA_VERSION}; write it again with "
            "this version"
        )
    lists = ("results",) if command == "check" else ("breaking_points",)
    if not all(isinstance(doc.get(k), list) for k in lists) or (
        command == "check" and not isinstance(doc.get("lint"), dict)
    ):
        raise InputError(f"--baseline {path} has no results; write it again")
    rules = _CHECK if command == "check" else _SWEEP
    for key, rule in rules.items():
        # absent keys are refused (or defaulted: _BEFORE) where the comparison reads them
        if key in doc:
            _validate(path, key, doc[key], rule)
    fields = _POINT_FIELDS
    if command == "check":  # a row has at most C nonzero label weights
        fields = {**_RESULT_FIELDS, "label_weights": _label_weights(doc.get("classes"))}
    for i, entry in enumerate(doc[lists[0]]):
        where = f"entry {lists[0]}[{i}]"
        if not isinstance(entry, dict):
            raise _malformed(path, where, "not an object")
        for key, rule in fields.items():
            _validate(path, f"{where}.{key}", entry.get(key), rule)
    return doc


class _LongInteger:
    """An integer literal of more digits than Python converts (sys.get_int_max_str_digits),
    left unconverted by the parser so that it can be refused naming its field."""

    __slots__ = ("digits",)

    def __init__(self, literal: str) -> None:
        self.digits = len(literal.lstrip("-"))


def _long_integer(doc: Any) -> tuple[str, _LongInteger]:
    """The first ``_LongInteger`` in ``doc`` and where it is (a loop: ``doc`` may be nested as
    deeply as the parser allows)."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, _LongInteger):
            return where or "document", value
        if isinstance(value, dict):
            stack.extend((_child(where, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    raise AssertionError("no long integer in the document")  # the parser made one


def _child(where: str, key: str) -> str:
    """``where.key``, or ``where["key"]`` (quoted as JSON, at most 40 characters) for a key
    that is no plain name, so the message stays one line."""
    if re.fullmatch(r"[A-Za-z_][\w-]{0,39}", key, re.ASCII):
        return f"{where}.{key}" if where else key
    return f"{where}[{json.dumps(key[:40] + '...' * (len(key) > 40))}]"


def _malformed(path: Path, where: str, problem: str) -> InputError:
    return InputError(f"--baseline {path} has a malformed {where}: {problem}; write it again")


@dataclass(frozen=True)
class _Rule:
    """What a value of a baseline must be (``valid``), as a refusal says it (``expected``); a
    dict's or list's items must each be ``item`` too."""

    valid: Callable[[Any], bool]
    expected: str
    item: _Rule | None = None


def _validate(path: Path, where: str, value: Any, rule: _Rule) -> None:
    """Refuse ``value`` (at ``where``) unless it is as ``rule`` says, naming the first item of
    a dict or list that is not."""
    if not rule.valid(value):
        raise _malformed(path, where, f"not {rule.expected}")
    if rule.item is not None and isinstance(value, dict):
        for key, item in value.items():
            _validate(path, _child(where, key), item, rule.item)
    elif rule.item is not None and isinstance(value, list):
        for i, item in enumerate(value):
            _validate(path, f"{where}[{i}]", item, rule.item)


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _integer(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _finite(value: Any) -> bool:
    """A finite JSON number (an integer too large for a float is not: Python compares it with
    the largest float exactly, without converting it)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and abs(value) <= sys.float_info.max
    )


def _error(value: Any) -> bool:
    """An error: a finite number from 0 up, or an infinite or NaN one as JSON spells it."""
    if isinstance(value, str):
        return value in ("nan", "inf")
    return _finite(value) and value >= 0


def _positive(value: Any) -> bool:
    return _finite(value) and value > 0


def _pattern(value: Any) -> bool:
    """A pattern of a sweep (results.PatternInfo): compared with this sweep's, and shown."""
    return isinstance(value, dict) and all(
        isinstance(v, str) or type(v) is int for v in value.values()
    )


_INT64 = 2**63 - 1  # row counts and class counts are numpy int64s in every report


def _label_weights(classes: Any) -> _Rule:
    """At most ``classes`` nonzero label weights in a row (``classes``, once valid, is this
    run's: compare refuses another); absent from a baseline written before the key existed
    (class labels then: 1)."""
    high, most = (classes, str(classes)) if _integer(classes, 1, _INT64) else (_INT64, "2**63 - 1")
    return _Rule(
        lambda v: v is None or _integer(v, 1, high),
        f"a count of label weights (an integer from 1 to {most}) or null",
    )


_NAME = _Rule(_text, "a string")
_COUNT = _Rule(lambda v: _integer(v, 0, _INT64), "a row count (an integer from 0 to 2**63 - 1)")
_COUNTS = _Rule(lambda v: isinstance(v, dict), "an object of flag names to row counts", _COUNT)
_KEY = {
    "impl": _NAME,
    "eps": _Rule(lambda v: v is None or _positive(v), "a clip (a finite number above 0) or null"),
    "dtype": _NAME,
    "policy": _NAME,
    "mode": _NAME,
}
_ERROR = _Rule(_error, 'an error (a finite number from 0 up, "nan" or "inf")')
_RESULT_FIELDS = {
    **_KEY,
    "labels": _NAME,
    "output_dtype": _NAME,
    "flags": _Rule(lambda v: isinstance(v, list), "a list of flag names", _NAME),
    "flag_counts": _COUNTS,
    "max_rel_err": _ERROR,
    "grad_max_abs_err": _ERROR,
}
_POINT_FIELDS = {
    **_KEY,
    "pattern": _NAME,
    "kind": _NAME,
    # null: it never broke in the swept range
    "scale": _Rule(
        lambda v: v is None or _positive(v), "a scale (a finite number above 0) or null"
    ),
}
# the top-level values the comparison reads, besides the entries (the environment: absent or
# null in a baseline without its record)
_ENVIRONMENT = _Rule(
    lambda v: v is None or isinstance(v, dict), "an object of names to versions", _NAME
)
_CHECK = {
    "lint": _COUNTS,
    "gate": _Rule(
        lambda v: v is None or (isinstance(v, list) and bool(v)),
        "a non-empty list of implementation names, or null",
        _NAME,
    ),
    "classes": _Rule(
        lambda v: _integer(v, 1, _INT64), "a class count (an integer from 1 to 2**63 - 1)"
    ),
    "input": _NAME,
    "file_dtype": _NAME,
    "loss": _NAME,
    "ignore_class": _Rule(
        lambda v: v is None or _integer(v, -_INT64 - 1, _INT64), "a class (an integer) or null"
    ),
    "environment": _ENVIRONMENT,
}
_SWEEP = {
    "scales": _Rule(
        lambda v: isinstance(v, list),
        "a list of scales",
        _Rule(_positive, "a scale (a finite number above 0)"),
    ),
    "patterns": _Rule(
        lambda v: isinstance(v, list),
        "a list of patterns",
        _Rule(_pattern, "a pattern (an object of strings and integers)"),
    ),
    "loss": _NAME,
    "environment": _ENVIRONMENT,
}


# what a baseline written before a key existed had: the loss was always the softmax's, and no
# class was ignored
_BEFORE = {"loss": "softmax", "ignore_class": None}


def refuse_other_input(now: dict[str, Any], baseline: dict[str, Any], keys: Sequence[str]) -> None:
    """Refuse a baseline of another kind of input: ``keys`` must agree."""
    for key in keys:
        if baseline.get(key, _BEFORE.get(key)) != now.get(key):
            raise InputError(
                f"--baseline: it was written for {key} {baseline.get(key)!r}, this run has "
                f"{now.get(key)!r}; compare like with like, or write a new baseline"
            )


def _number(value: Any) -> float:
    """A JSON number, or the strings JSON writes for non-finite ones ("nan", "inf")."""
    return float(value) if isinstance(value, int | float | str) else math.nan


def _key(r: dict[str, Any]) -> tuple:
    return (r["labels"], r["impl"], r["eps"], r["dtype"], r["policy"], r["mode"])


def _name(r: dict[str, Any]) -> str:
    """A result of a JSON report, named as ``result_name`` names it."""
    return result_name(r["impl"], r["eps"], r["dtype"], r["policy"], r["mode"], r["labels"])


def _floors(narrowest: FloatFormat, classes: int, weights: int) -> dict[str, float]:
    """The errors that are rounding, per column: the grading tolerance's (RTOL_ULPS + k) eps of
    the narrowest dtype and its lanes' u_acc d (``losses.lane_bound``), and with soft labels of
    ``weights`` nonzero weights a row its label sums' (losses.LABEL_SUM_ULPS: u (n - 1) relative
    for the loss, u (n - 1) (2 + 1) B for the gradient, B = 1 for labels summing to 1; u
    float32's at most), which frameworks add in their kernels' order: it moves between
    machines."""
    accumulator = accumulator_eps(narrowest.eps)
    base = (RTOL_ULPS + reduction_depth(classes)) * narrowest.eps + lane_bound(
        classes, narrowest.eps
    )
    one = np.ones(1)  # a loss of 1 (the loss column is relative), max p and B at most 1
    loss, grad = label_sum_terms(np.array([weights - 1]), one, one, one)
    return {
        "max_rel_err": base + accumulator * float(loss[0]),
        "grad_max_abs_err": base + accumulator * float(grad[0]),
    }


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
    fail_on = fail_on_flags(fail_on)
    wanted = set(fail_on)
    now = check.to_dict(fail_on)
    refuse_other_input(now, baseline, ("input", "classes", "file_dtype", "loss", "ignore_class"))
    worse, better = _flag_changes("input", now["lint"], baseline["lint"], wanted)
    regressed = ["input"] if worse else []  # what regressed, each once
    before = {_key(r): r for r in baseline["results"]}
    gated = {(r.labels, r.impl, r.eps, r.dtype, r.policy, r.mode) for r in check.gated}
    for r in now["results"]:
        name = _name(r)
        if _key(r) not in gated:  # an alternative to the gate (--model): shown, never judged
            before.pop(_key(r), None)
            continue
        old = before.pop(_key(r), None)
        if old is None:
            fired = [f for f in r["flags"] if f in wanted]
            if fired:
                worse.append(f"{name}: new result, fires {', '.join(fired)}")
                regressed.append(name)
            continue
        lines = len(worse)
        w, b = _flag_changes(name, r["flag_counts"], old["flag_counts"], wanted)
        worse += w
        better += b
        computed = (r["dtype"], r["output_dtype"], zoo.computes_in(r["impl"], r["policy"]))
        narrowest = min((FORMATS[d] for d in computed if d in FORMATS), key=lambda f: f.precision)
        weights = max(r["label_weights"], old.get("label_weights") or 1)
        floors = _floors(narrowest, check.classes, weights)
        for column, what in (("max_rel_err", "loss error"), ("grad_max_abs_err", "grad error")):
            a, b_, floor = _number(r[column]), _number(old[column]), floors[column]
            if _grew(a, b_, floor):
                worse.append(f"{name}: {what} {a:.3g}, was {b_:.3g}")
            elif _grew(b_, a, floor):
                better.append(f"{name}: {what} {a:.3g}, was {b_:.3g}")
        if len(worse) > lines:
            regressed.append(name)
    # A gate that audits less than its baseline did (a backend lost, an implementation dropped)
    # would pass on what it no longer looks at: what the baseline judged, and this run would
    # judge, and this run did not audit regresses (alternatives, `--model`, are never judged).
    gates = (baseline.get("gate"), check.gate)
    lost = [r for r in before.values() if all(g is None or r["impl"] in g for g in gates)]
    lost_names = [_name(r) for r in lost]
    if lost:
        # what this run skipped of the lost results' implementations or backends: a likely
        # reason (a skip names no mode or label source, so it is not claimed as the cause)
        skips = {
            f"{s.impl} ({s.reason})"
            for r in lost
            for s in check.skipped
            if s.dtype in (r["dtype"], "all")
            and (s.impl == r["impl"] or zoo.BY_OPTION.get(s.impl) == zoo.backend_of(r["impl"]))
        }
        n = len(lost)
        worse.append(
            f"{n} result{'s' * (n != 1)} of the baseline not audited: {', '.join(lost_names)}"
            + (f"; this run skipped {', '.join(sorted(skips))}" if skips else "")
        )
    return Comparison(
        path,
        tuple(worse),
        tuple(better),
        _environment_changes(now, baseline),
        tuple(_name(r) for r in before.values()),
        (*regressed, *lost_names),
    )


def _environment_changes(now: dict[str, Any], baseline: dict[str, Any]) -> dict[str, str]:
    """The environment keys whose values differ between the baseline and this run."""
    before = baseline.get("environment")
    if not isinstance(before, dict):
        return {}
    return {
        key: f"{before.get(key, 'none')} -> {value}"
        for key, value in now["environment"].items()
        if before.get(key) != value
    }


def _point(p: dict[str, Any]) -> tuple:
    return (p["pattern"], p["impl"], p["eps"], p["dtype"], p["policy"], p["mode"], p["kind"])


def _point_name(p: dict[str, Any]) -> str:
    where = dtype_label(p["dtype"], p["policy"])
    impl = variant_label(p["impl"], p["eps"], True)
    return f"{impl} {where} {p['mode']} on {p['pattern']} ({p['kind']})"


def compare_sweep(sweep: Sweep, baseline: dict[str, Any], path: str) -> Comparison:
    """``sweep`` against an earlier sweep's report, breaking point by breaking point (a scale
    of None: it never broke in the swept range): one that moved to a smaller scale, or appeared,
    regresses; one that moved up, or went away, improves."""
    now = sweep.to_dict()
    refuse_other_input(now, baseline, ("scales", "patterns", "loss"))
    before = {_point(p): p for p in baseline["breaking_points"]}
    worse, better, regressed = [], [], []
    for p in now["breaking_points"]:
        old = before.pop(_point(p), None)
        name, a = _point_name(p), p["scale"]
        if old is None:  # not swept before: a new cell that breaks regresses, as in `check`
            if a is not None:
                worse.append(f"{name}: breaks at scale {a:g}, not swept before")
                regressed.append(name)
            continue
        b = old["scale"]
        if a is not None and (b is None or a < b * (1 - SCALE_SLACK)):
            was = "did not before" if b is None else f"was {b:g}"
            worse.append(f"{name}: breaks at scale {a:g}, {was}")
            regressed.append(name)
        elif b is not None and (a is None or a > b * (1 + SCALE_SLACK)):
            now_at = "no longer breaks" if a is None else f"breaks at scale {a:g}"
            better.append(f"{name}: {now_at}, was {b:g}")
    lost = [_point_name(p) for p in before.values()]
    if lost:  # a sweep that searches less than its baseline did would pass on the rest
        n = len(lost)
        worse.append(
            f"{n} breaking point{'s' * (n != 1)} of the baseline not searched: {', '.join(lost)}"
        )
    return Comparison(
        path,
        tuple(worse),
        tuple(better),
        _environment_changes(now, baseline),
        tuple(lost),
        (*regressed, *lost),
        "breaking point",
    )
