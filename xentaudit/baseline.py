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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xentaudit import impls as zoo
from xentaudit.audit import RTOL_ULPS
from xentaudit.dtypes import FORMATS, FloatFormat, dtype_label
from xentaudit.errors import InputError
from xentaudit.flags import fail_on_flags
from xentaudit.io import regular_file
from xentaudit.losses import (
    LANE_ULPS,
    accumulator_eps,
    label_sum_terms,
    lane_depth,
    reduction_depth,
)
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
# Breaking points are searched to 3 significant digits (0.5 % of rounding), and in float16 and
# bfloat16 a threshold can flicker by a grid step as the rounded input moves: a point must move
# by more than 2 % to count.
SCALE_SLACK = 0.02


def read_baseline(path: str | Path, command: str = "check") -> dict[str, Any]:
    """The JSON report of an earlier ``command`` (check, sweep), validated: one line and exit
    2 otherwise."""
    path = Path(path)
    regular_file(path, "--baseline", "a JSON report written by check --write-baseline")
    if path.stat().st_size > MAX_BASELINE_BYTES:
        raise InputError(f"--baseline {path} is larger than {MAX_BASELINE_BYTES} bytes")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read --baseline {path}: {exc.strerror}; check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--baseline {path} is not JSON ({exc}); write it again") from None
    except RecursionError:  # json recurses into nested arrays and objects
        raise InputError(
            f"--baseline {path} is nested too deeply for a report; write it again"
        ) from None
    if not isinstance(doc, dict) or doc.get("command") != command:
        raise InputError(
            f"--baseline {path} is not a {command} report; write one with {command} "
            "--write-baseline"
        )
    if doc.get("schema") != SCHEMA_VERSION:
        raise InputError(
            f"--baseline {path} has schema {doc.get('schema')!r}, not {SCHEMA_VERSION}; write it "
            "again with this version"
        )
    lists = ("results",) if command == "check" else ("breaking_points",)
    if not all(isinstance(doc.get(k), list) for k in lists) or (
        command == "check" and not isinstance(doc.get("lint"), dict)
    ):
        raise InputError(f"--baseline {path} has no results; write it again")
    gate = doc.get("gate")
    if gate is not None and not (isinstance(gate, list) and gate and all(map(_text, gate))):
        raise InputError(f"--baseline {path} has a malformed gate; write it again")
    entries = doc["results"] if command == "check" else doc["breaking_points"]
    fields = _RESULT_FIELDS if command == "check" else _POINT_FIELDS
    for entry in entries:
        if not isinstance(entry, dict) or not all(
            valid(entry.get(key)) for key, valid in fields.items()
        ):
            raise InputError(f"--baseline {path} has a malformed entry; write it again")
    return doc


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _counts(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool)
        for k, n in value.items()
    )


def _real(value: Any) -> bool:
    """A JSON number, or a non-finite one as JSON spells it ("nan", "inf", "-inf")."""
    if isinstance(value, str):
        return value in ("nan", "inf", "-inf")
    return isinstance(value, int | float) and not isinstance(value, bool)


def _eps(value: Any) -> bool:
    return value is None or _real(value)


_KEY = {"impl": _text, "eps": _eps, "dtype": _text, "policy": _text, "mode": _text}
_RESULT_FIELDS = {
    **_KEY,
    "labels": _text,
    "output_dtype": _text,
    "flags": lambda v: isinstance(v, list),
    "flag_counts": _counts,
    "max_rel_err": _real,
    "grad_max_abs_err": _real,
    # absent from a baseline written before it existed (class labels then: 1)
    "label_weights": lambda v: v is None or (type(v) is int and v >= 1),
}
_POINT_FIELDS = {**_KEY, "pattern": _text, "kind": _text, "scale": _eps}


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
    the narrowest dtype, and with soft labels of ``weights`` nonzero weights a row its label
    sums' (losses.LABEL_SUM_ULPS: u (n - 1) relative for the loss, u (n - 1) (2 + 1) B for the
    gradient, B = 1 for labels summing to 1; u float32's at most), which frameworks add in
    their kernels' order: it moves between machines."""
    accumulator = accumulator_eps(narrowest.eps)
    base = (RTOL_ULPS + reduction_depth(classes)) * narrowest.eps + accumulator * LANE_ULPS * (
        lane_depth(classes, accumulator)
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
