"""`sweep`: scales x dtypes x epsilons x patterns across the implementation zoo, with breaking
points. Built on the audit engine (same reference, implementations, grading and flags).

Work is batched: for each pattern and dtype, the rows of every scale go through each
implementation in one call, and each breaking point is refined with one call per round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from xentaudit import impls as zoo
from xentaudit.audit import (
    GRAD_FLAGS,
    LOSS_FLAGS,
    Grades,
    Rounded,
    Variant,
    check_options,
    eps_used,
    eps_values,
    round_to,
    run_graded,
    variants,
    worst,
)
from xentaudit.dtypes import FloatFormat, get_format, parse_dtypes
from xentaudit.flags import FLAGS
from xentaudit.grid import (
    DEFAULT_EPS,
    DEFAULT_SCALES,
    Bracket,
    Pattern,
    make_pattern,
    parse_patterns,
    refine,
    refine_points,
)
from xentaudit.io import prepare
from xentaudit.reference import FLOAT64_METHOD
from xentaudit.results import BreakingPoint, PatternInfo, Skipped, Sweep, SweepCell

KINDS = {
    "loss": tuple(f for f in LOSS_FLAGS if FLAGS[f].failing),
    "grad": tuple(f for f in GRAD_FLAGS if FLAGS[f].failing),
}
Progress = Callable[[int, int], None]


def _scaled(pattern: Pattern, scales: list[float], fmt: FloatFormat) -> Rounded:
    """All the given scales of a pattern stacked into one batch, rounded to ``fmt``.

    Graded against the float64 reference (within 2 float64 ulps of exact): the sweep reports
    flags and relative errors, whose tolerances are 8 eps of the dtype or more, not ulps.
    """
    logits = np.concatenate([pattern.logits * s for s in scales])
    classes = np.tile(pattern.classes, len(scales))
    return round_to(prepare(logits, classes), fmt, method="float64")


def _representable(pattern: Pattern, scales: Iterable[float], fmt: FloatFormat) -> list[float]:
    top = float(np.abs(pattern.logits).max())
    return [s for s in scales if np.isfinite(fmt.cast(np.array([top * s])))[0]]


def _fired(grades: Grades, flags: tuple[str, ...], rows: int) -> np.ndarray:
    """Per scale (groups of ``rows`` rows): the first of ``flags`` that fired, or ''."""
    out = np.full(grades.rel_err.shape[0] // rows, "", dtype=object)
    for flag in reversed(flags):
        hit = grades.masks[flag].reshape(-1, rows).any(axis=1)
        out[hit] = flag
    return out


def sweep(
    *,
    scales: Iterable[float] = DEFAULT_SCALES,
    dtypes: Iterable[str] = ("all",),
    impls: Iterable[str] = ("all",),
    eps: Iterable[float] = DEFAULT_EPS,
    patterns: Iterable[str] = ("all",),
    classes: int = 16384,
    rows: int = 4,
    vocab_rows: int = 1,
    seed: int = 0,
    modes: Iterable[str] = zoo.MODES,
    rtol: float | None = None,
    progress: Progress | None = None,
) -> Sweep:
    """Sweep implementations over logit ``scales`` x ``dtypes`` x ``patterns``.

    ``eps`` are the epsilons ``clipped`` is swept at; ``rows`` sizes the ``random`` pattern,
    ``classes`` and ``vocab_rows`` the ``vocab`` one, ``seed`` their random numbers.
    ``progress`` is called with (done, total) units of work. Returns a ``Sweep``; prints nothing.
    """
    scales = sorted(scales)
    eps = eps_values(eps)
    modes = tuple(modes)
    check_options(eps, rtol, modes)
    if not scales:
        raise ValueError("sweep needs at least one scale")
    formats = [get_format(d) for d in parse_dtypes(dtypes)]
    chosen = variants(zoo.parse_impls(impls), eps)
    built = [
        make_pattern(p, classes=classes, rows=rows, vocab_rows=vocab_rows, seed=seed)
        for p in parse_patterns(patterns)
    ]

    cells: list[SweepCell] = []
    points: list[BreakingPoint] = []
    skipped: list[Skipped] = []
    total = len(built) * len(formats) * len(chosen) * len(modes)
    done = 0
    for pattern in built:
        for fmt in formats:
            valid = _representable(pattern, scales, fmt)
            if len(valid) < len(scales):
                skipped.extend(
                    Skipped("all", fmt.name, f"{pattern.name} at scale {s:g} overflows {fmt.name}")
                    for s in scales
                    if s not in valid
                )
            rounded = _scaled(pattern, valid, fmt) if valid else None
            for variant in chosen:
                known: Refined = {}
                for mode in modes:
                    done += 1
                    if rounded is None:
                        continue
                    outcome, grades = run_graded(variant.impl, variant.eps, mode, rounded, rtol)
                    cells.extend(
                        _cells(
                            pattern,
                            variant,
                            fmt,
                            mode,
                            valid,
                            outcome.output_dtype,
                            grades,
                            outcome.loss,
                            rounded,
                        )
                    )
                    found, known = _breaking_points(
                        pattern, variant, fmt, mode, valid, grades, rtol, known
                    )
                    points.extend(found)
                    if progress:
                        progress(done, total)
    info = tuple(
        PatternInfo(p.name, p.description, p.logits.shape[0], p.logits.shape[1]) for p in built
    )
    return Sweep(tuple(scales), info, tuple(cells), tuple(points), tuple(skipped), FLOAT64_METHOD)


def _cells(
    pattern: Pattern,
    variant: Variant,
    fmt: FloatFormat,
    mode: str,
    scales: list[float],
    output_dtype: str,
    grades: Grades,
    loss: np.ndarray,
    rounded: Rounded,
) -> list[SweepCell]:
    r = pattern.logits.shape[0]
    flags_by_row = grades.row_flags()
    used = eps_used(variant.impl, variant.eps)
    out = []
    for k, scale in enumerate(scales):
        rows = slice(k * r, (k + 1) * r)
        fired = {f for row in flags_by_row[rows] for f in row}
        ordered = tuple(f for f in FLAGS if f in fired or (f == "downcast" and grades.downcast))
        ref = rounded.ref.loss[rows] + rounded.ref.loss_lo[rows]
        out.append(
            SweepCell(
                pattern=pattern.name,
                impl=variant.impl,
                eps=used,
                dtype=fmt.name,
                mode=mode,
                scale=scale,
                output_dtype=output_dtype,
                loss=float(np.mean(loss[rows])),
                reference=float(np.mean(ref)),
                max_rel_err=worst(grades.rel_err[rows]),
                grad_max_abs_err=worst(grades.grad_err[rows]),
                flags=ordered,
            )
        )
    return out


Refined = dict[str, tuple[Bracket, str]]


def _breaking_points(
    pattern: Pattern,
    variant: Variant,
    fmt: FloatFormat,
    mode: str,
    scales: list[float],
    grades: Grades,
    rtol: float | None,
    known: Refined,
) -> tuple[list[BreakingPoint], Refined]:
    """Breaking points of one mode, per kind; ``known`` are the previous mode's final brackets.

    A previous mode's bracket is reused after one call confirms that this mode, too, does not
    fire at its lower end and fires at its upper end: under the single-transition assumption
    the search already makes, that pins this mode's breaking point to the same 3 digits.
    """
    r = pattern.logits.shape[0]
    used = eps_used(variant.impl, variant.eps)

    def fires(candidates: list[float]) -> dict[str, list[str]]:
        rounded = _scaled(pattern, candidates, fmt)
        _, g = run_graded(variant.impl, variant.eps, mode, rounded, rtol)
        return {kind: list(_fired(g, flags, r)) for kind, flags in KINDS.items()}

    fired = {kind: _fired(grades, flags, r) for kind, flags in KINDS.items()}
    first = {kind: next((k for k, f in enumerate(f) if f), None) for kind, f in fired.items()}
    brackets = {kind: (scales[k - 1], scales[k], fired[kind][k]) for kind, k in first.items() if k}
    reuse = {
        kind: known[kind]
        for kind in brackets
        if kind in known
        and brackets[kind][0] <= known[kind][0][0] < known[kind][0][1] <= brackets[kind][1]
    }
    done: Refined = {}
    if reuse:
        ends = sorted({s for (lo, hi), _ in reuse.values() for s in (lo, hi)})
        verdicts = fires(ends)
        for kind, ((lo, hi), _) in reuse.items():
            at = dict(zip(ends, verdicts[kind], strict=True))
            if not at[lo] and at[hi]:
                done[kind] = ((lo, hi), at[hi])
    todo = {kind: b for kind, b in brackets.items() if kind not in done}
    done.update(refine(todo, fires, refine_points(pattern.logits.size)) if todo else {})

    out = []
    for kind, k in first.items():
        if k is None:
            scale, flag = None, None
        elif k == 0:
            scale, flag = scales[0], fired[kind][0]
        else:
            (_, hi), flag = done[kind]
            scale = float(f"{hi:.3g}")
        out.append(
            BreakingPoint(
                pattern.name, variant.impl, used, fmt.name, mode, kind, scale, flag, k == 0
            )
        )
    return out, done
