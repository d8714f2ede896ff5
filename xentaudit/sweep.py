"""`sweep`: scales x dtypes x epsilons x patterns across the implementation zoo, with breaking
points. Built on the audit engine (same reference, implementations, grading and flags).

Work is batched: for each pattern and dtype, the rows of every scale go through each
implementation in one call, and each breaking point is refined with one call per round (in
``tf.function`` where an implementation runs in both modes, eager confirming its bracket).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xentaudit import impls as zoo
from xentaudit.audit import (
    GRAD_FLAGS,
    LOSS_FLAGS,
    Grades,
    Progress,
    Rounded,
    Variant,
    backend_skips,
    check_callback,
    check_options,
    chosen_impls,
    eps_used,
    eps_values,
    labels_skip,
    nothing_audited,
    round_to,
    run_graded,
    runnable_modes,
    variants,
    worst,
)
from xentaudit.choices import DEFAULT_EPS, EVERY, names_given
from xentaudit.dtypes import FloatFormat, get_format, parse_dtypes
from xentaudit.environment import environment_of, subnormal_flushes
from xentaudit.errors import ConfigError, XentauditError
from xentaudit.flags import FLAGS
from xentaudit.grid import (
    DEFAULT_SCALES,
    Bracket,
    Pattern,
    check_scales,
    make_pattern,
    parse_patterns,
    pattern_shape,
    refine,
    refine_points,
)
from xentaudit.impls import Outcome
from xentaudit.io import prepare
from xentaudit.losses import Focus, focus_of, get_loss
from xentaudit.reference import FLOAT64_METHOD
from xentaudit.results import BreakingPoint, PatternInfo, Skipped, Sweep, SweepCell

SWEEP_MODES = (zoo.TRAINING,)  # by default each backend's training modes
KINDS = {
    "loss": tuple(f for f in LOSS_FLAGS if FLAGS[f].failing),
    "grad": tuple(f for f in GRAD_FLAGS if FLAGS[f].failing),
}
# Peak memory per logit of one batch (every scale of a pattern stacked), as bytes per byte of the
# dtype: the float64 scaled logits, reference and errors, plus the implementation's tensors
# (logits, one-hot labels, intermediates, gradient) in the dtype. Measured peaks: 114 B per
# logit for clipped in float64, 55 for naive in float32; this gives 120 and 80.
WORK_BYTES = 40
WORK_BYTES_PER_ITEM = 10


def memory_budget() -> int:
    """The default --max-memory: half the memory available now (MemAvailable in
    /proc/meminfo), else half the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def memory_needed(
    shapes: Iterable[tuple[int, int]], scales: int, formats: Iterable[FloatFormat]
) -> int:
    """Bytes of the largest batch a sweep builds: the largest pattern's rows x classes, times
    the scales run in one call (a refinement round runs at least 4 when there are 2 or more),
    times ``WORK_BYTES + WORK_BYTES_PER_ITEM * itemsize`` of the widest dtype."""
    entries = max(rows * classes for rows, classes in shapes)
    batch = scales if scales < 2 else max(scales, 4, refine_points(entries))
    itemsize = max(np.dtype(fmt.numpy).itemsize for fmt in formats)
    return entries * batch * (WORK_BYTES + WORK_BYTES_PER_ITEM * itemsize)


def size_text(size: float) -> str:
    """A byte count as ``--max-memory`` reads it: 512M, 6.9G."""
    for unit, factor in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if size >= factor:
            return f"{size / factor:.3g}{unit}"
    return f"{size:.0f}"


def _scaled(pattern: Pattern, scales: list[float], fmt: FloatFormat, grid: Grid) -> Rounded:
    """All the given scales of a pattern stacked into one batch, its labels smoothed by the
    grid's ``label_smoothing`` (``audit.round_to``), rounded to ``fmt``, with the reference of
    the grid's loss.

    Graded against the float64 reference (within a few float64 ulps of exact): the sweep
    reports flags and relative errors, whose tolerances are 8 eps of the dtype or more.
    """
    logits = np.multiply.outer(np.asarray(scales, dtype=np.float64), pattern.logits)
    labels = np.broadcast_to(pattern.labels, (len(scales), *pattern.labels.shape))
    multi_label = get_loss(grid.loss).labels == "multi-label"
    batch = prepare(logits, labels, multi_label=multi_label)  # a row per scale and pattern row
    return round_to(
        batch,
        fmt,
        method="float64",
        loss=grid.loss,
        focus=grid.focus,
        smoothing=grid.label_smoothing,
    )


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


@dataclass(frozen=True, eq=False)
class Grid:
    """A checked sweep, everything a part of it needs (picklable: a ``--jobs`` process runs
    the part): the scales, dtype names, Keras policies, built patterns and modes, with the
    options every run takes."""

    scales: tuple[float, ...]
    dtypes: tuple[str, ...]
    policies: tuple[str, ...]
    patterns: tuple[Pattern, ...]
    modes: tuple[str, ...]
    rtol: float | None
    timeout: float | None
    loss_scale: float
    loss: str
    label_smoothing: float
    focus: Focus


Key = tuple[int, ...]  # where a result comes in the sweep's order: pattern, dtype, ...


@dataclass(frozen=True)
class Share:
    """Some of a sweep's work: implementations, each with its index in the whole sweep's
    (``chosen``), in some of its dtypes (indices into ``Grid.dtypes``)."""

    chosen: tuple[tuple[int, Variant], ...]
    dtypes: tuple[int, ...]


@dataclass
class Part:
    """What a part of a sweep (some of its implementations) found, each result keyed by its
    place in the whole sweep's order, so parts run apart merge into the one sweep (``_merge``);
    ``flushes``: whether each backend it ran flushes subnormals (``environment_of``)."""

    cells: list[tuple[Key, SweepCell]] = field(default_factory=list)
    points: list[tuple[Key, BreakingPoint]] = field(default_factory=list)
    skipped: list[tuple[Key, Skipped]] = field(default_factory=list)
    method: str | None = None
    flushes: dict[str, bool] = field(default_factory=dict)
    at: Key = ()  # where the part's sweep is (its key), as it runs
    error: tuple[Key, XentauditError] | None = None  # the user's error that stopped it, where


def sweep(
    *,
    scales: Iterable[float] = DEFAULT_SCALES,
    dtypes: Iterable[str] | None = EVERY,
    impls: Iterable[str] | None = EVERY,
    eps: Iterable[float] = DEFAULT_EPS,
    patterns: Iterable[str] | None = EVERY,
    classes: int = 16384,
    rows: int = 4,
    vocab_rows: int = 1,
    seed: int = 0,
    modes: Iterable[str] | None = SWEEP_MODES,
    rtol: float | None = None,
    timeout: float | None = None,
    max_memory: int | None = None,
    progress: Progress | None = None,
    policies: Iterable[str] | None = zoo.FLOAT32_POLICY,
    loss_scale: float | None = None,
    backends: Iterable[str] | None = None,
    loss: str = "softmax",
    label_smoothing: float = 0.0,
    gamma: float = 2.0,
    alpha: float | None = None,
    jobs: int = 1,
) -> Sweep:
    """Sweep implementations over logit ``scales`` x ``dtypes`` x ``patterns``, under each
    Keras dtype policy of ``policies``.

    ``modes``: as for ``audit``; by default each backend's training modes (TensorFlow eager
    and ``tf.function``, torch eager, JAX ``jax.jit``: ``zoo.TRAINING_MODES``).
    ``eps`` are the epsilons ``clipped`` is swept at; ``rows`` sizes the ``random`` pattern,
    ``classes`` and ``vocab_rows`` the ``vocab`` one, ``seed`` their random numbers.
    ``timeout`` bounds each run of an implementation, in seconds; with ``loss_scale`` S,
    gradients are taken of S times the loss (as ``audit``; no ``max_loss_scale`` search).
    ``max_memory`` (bytes; default ``memory_budget()``) refuses a grid whose largest batch
    needs more (``memory_needed``; with ``jobs``, no more processes run at once than it has
    room for). ``progress`` is called with (done, total) units of work. ``backends`` ("tf",
    "torch", "jax"; None: all): as for ``audit``.
    ``loss`` (``xentaudit.losses.LOSSES``): the loss swept, its implementations and its
    patterns (``grid.LOSS_PATTERNS``); ``label_smoothing`` smooths every pattern's labels as
    Keras does; ``gamma`` and ``alpha``: as for ``audit``. ``jobs`` > 1 sweeps each backend
    in a process of its own (with processes to spare, a backend's dtypes in several:
    ``_shares``), at most ``jobs`` at a time (``parallel.sweep_parts``), with the result and
    the error of one process; the processes are spawned, so a script calling this needs the
    ``if __name__ == "__main__":`` guard multiprocessing asks for. Returns a ``Sweep``; prints
    nothing.
    """
    scales = list(check_scales(scales))
    eps = eps_values(eps)
    # None is the default; an empty list would run nothing, and pass
    modes = zoo.parse_modes(names_given(modes, "modes", SWEEP_MODES))
    impls = names_given(impls, "impls", EVERY)
    dtypes = names_given(dtypes, "dtypes", EVERY)
    policies = names_given(policies, "policies", zoo.FLOAT32_POLICY)
    patterns = names_given(patterns, "patterns", EVERY)
    backends = names_given(backends, "backends")
    check_options(eps, rtol, timeout, loss_scale, label_smoothing)
    check_callback(progress, "progress", "(done, total)")
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    formats = [get_format(d) for d in parse_dtypes(dtypes)]
    chosen_policies = zoo.parse_policies(policies)
    get_loss(loss)
    names = parse_patterns(patterns, loss)
    sizes = {"classes": classes, "rows": rows, "vocab_rows": vocab_rows}
    needed = memory_needed([pattern_shape(p, **sizes) for p in names], len(scales), formats)
    budget = memory_budget() if max_memory is None else max_memory
    if budget < 1:
        raise ConfigError(f"--max-memory must be a positive number of bytes, got {budget}")
    _fits(needed, budget)
    built = tuple(make_pattern(p, seed=seed, **sizes) for p in names)
    focus = focus_of(loss, gamma, alpha)  # refused before any user's loss is, whatever the jobs
    # With processes, a user's loss is imported there, not here (its framework with it).
    resolved = chosen_impls(impls, None, backends, loss, load=jobs == 1)  # refuses none
    chosen = list(enumerate(variants(resolved, eps)))
    groups = zoo.by_backend(chosen, lambda indexed: indexed[1].impl)
    # no more processes at once than the budget has room for, each with its largest batch
    processes = min(jobs, max(1, budget // needed))
    shares = _shares(groups, len(formats), processes)
    workers = min(processes, len(shares))
    grid = Grid(
        scales=tuple(scales),
        dtypes=tuple(f.name for f in formats),
        policies=chosen_policies,
        patterns=built,
        modes=modes,
        rtol=rtol,
        timeout=timeout,
        loss_scale=1.0 if loss_scale is None else loss_scale,
        loss=loss,
        label_smoothing=label_smoothing,
        focus=focus,
    )
    if workers > 1:
        from xentaudit.parallel import sweep_parts

        parts = sweep_parts(grid, shares, workers, progress)
    else:
        parts = [run_part(grid, Share(tuple(chosen), tuple(range(len(formats)))), progress)]
    return _merge(grid, parts, backend_skips(backends), loss_scale)


def _shares(groups: list[list[tuple[int, Variant]]], dtypes: int, jobs: int) -> list[Share]:
    """The sweep's work for ``jobs`` processes: each backend's implementations (``groups``),
    split into runs of consecutive dtypes while processes are to spare (``jobs`` // backends
    runs each). A process imports the framework of each share it sweeps, so there are no more
    shares than that: a sweep of every backend on 2 cores is one share per backend. (``jobs``
    is already at most the processes whose batches fit ``--max-memory``.)"""
    if not groups:
        return []
    split = max(1, min(dtypes, jobs // len(groups)))
    runs = [tuple(int(i) for i in run) for run in np.array_split(np.arange(dtypes), split)]
    return [Share(tuple(group), run) for group in groups for run in runs]


def _fits(needed: int, budget: int) -> None:
    """Refuse a sweep whose largest batch needs ``needed`` bytes, more than ``budget``."""
    if needed > budget:
        raise ConfigError(
            f"this sweep needs about {size_text(needed)} of memory, more than --max-memory "
            f"{size_text(budget)}; sweep fewer --scales or a smaller --classes or --vocab-rows, "
            "or raise --max-memory"
        )


def run_part(grid: Grid, share: Share, progress: Progress | None = None) -> Part:
    """Sweep a ``share`` of ``grid``: its implementations in its dtypes, every pattern x policy
    x mode; ``progress`` counts this part's runs. The user's error that stops it is returned
    with where it happened (``Part.error``)."""
    part = Part()
    try:
        _sweep_into(part, grid, share, progress)
    except XentauditError as error:
        part.error = (part.at, error)
        return part
    part.flushes = subnormal_flushes({zoo.backend_of(c.impl) for _, c in part.cells})
    return part


def _sweep_into(part: Part, grid: Grid, share: Share, progress: Progress | None) -> None:
    """``run_part``'s sweep, its results kept in ``part`` as they come, and ``part.at`` where
    it is."""
    total = total_runs(grid, share)
    done = 0
    for v, variant in share.chosen:  # the users' losses first, in order, as parse_impls loads them
        if ":" in variant.impl:
            part.at = (-1, v)
            zoo.get_impl(variant.impl)
    for p, pattern in enumerate(grid.patterns):
        for f in share.dtypes:
            fmt = get_format(grid.dtypes[f])
            part.at = (p, f, 0)
            valid = _representable(pattern, grid.scales, fmt)
            part.skipped.extend(
                (
                    part.at,
                    Skipped("all", fmt.name, f"{pattern.name} at scale {s:g} overflows {fmt.name}"),
                )
                for s in grid.scales
                if s not in valid
            )
            rounded = _scaled(pattern, valid, fmt, grid) if valid else None
            if rounded is not None:
                part.method = rounded.ref.method
            for (q, policy), (v, variant) in itertools.product(
                enumerate(grid.policies), share.chosen
            ):
                key = part.at = (p, f, 1, q, v)
                known: Refined = {}
                labels = pattern.labels if pattern.labels.ndim == 1 else None  # or weights
                reason = labels_skip(variant.impl, labels, (), grid.label_smoothing)
                modes = zoo.modes_of(variant.impl, grid.modes)
                if reason is not None:
                    part.skipped.append((key, Skipped(variant.impl, "all", reason)))
                    done += len(modes)
                    continue
                runnable, skip = runnable_modes(variant.impl, modes)
                if skip is not None:
                    part.skipped.append((key, skip))
                done += len(modes) - len(runnable)
                for m, mode in _refining_first(runnable):
                    done += 1
                    if rounded is None:
                        continue
                    outcome, grades = _graded(grid, variant, mode, rounded, policy)
                    cells = _cells(
                        pattern,
                        variant,
                        fmt,
                        policy,
                        mode,
                        valid,
                        outcome.output_dtype,
                        grades,
                        outcome.loss,
                        rounded,
                    )
                    part.cells.extend(((*key, m, k), c) for k, c in enumerate(cells))
                    found, known = _breaking_points(
                        pattern, variant, fmt, policy, mode, valid, grades, grid, known
                    )
                    part.points.extend(((*key, m, k), b) for k, b in enumerate(found))
                    if progress:
                        progress(done, total)
    if progress:
        progress(done, total)  # the runs skipped last count too


def _refining_first(modes: Sequence[str]) -> list[tuple[int, str]]:
    """The ``modes`` with their indices, ``tf.function``'s first: once traced, its calls cost
    half an eager one, so it searches for the breaking points with its refinement rounds and
    eager then confirms its brackets with one call each (``_breaking_points``)."""
    return sorted(enumerate(modes), key=lambda indexed: indexed[1] != "graph")


def _graded(
    grid: Grid, variant: Variant, mode: str, rounded: Rounded, policy: str
) -> tuple[Outcome, Grades]:
    """``run_graded`` with the grid's tolerance, timeout and loss scale."""
    return run_graded(
        variant.impl,
        variant.eps,
        mode,
        rounded,
        grid.rtol,
        grid.timeout,
        policy,
        grid.loss_scale,
    )


def total_runs(grid: Grid, share: Share) -> int:
    """The runs sweeping ``share`` takes (whether they run or are skipped): progress's units."""
    runs = sum(len(zoo.modes_of(v.impl, grid.modes)) for _, v in share.chosen)
    return len(grid.patterns) * len(share.dtypes) * len(grid.policies) * runs


def _merge(
    grid: Grid, parts: Sequence[Part], skipped: list[Skipped], loss_scale: float | None
) -> Sweep:
    """The one ``Sweep`` of its ``parts``: every result in the sweep's order (pattern, dtype,
    policy, implementation, mode), each skip once after ``skipped`` (the backends not
    installed), as one process running them all makes it; or the error one process would raise
    first: the one met earliest in the sweep's order."""
    errors = [part.error for part in parts if part.error is not None]
    if errors:
        raise min(errors, key=lambda e: e[0])[1]
    for _, skip in sorted((s for part in parts for s in part.skipped), key=lambda s: s[0]):
        if skip not in skipped:
            skipped.append(skip)
    cells = tuple(
        c for _, c in sorted((c for part in parts for c in part.cells), key=lambda c: c[0])
    )
    if not cells:  # every scale overflowing every dtype, or labels no implementation takes
        raise nothing_audited(skipped)
    flushes = {b: f for part in parts for b, f in part.flushes.items()}
    info = tuple(
        PatternInfo(p.name, p.description, p.logits.shape[0], p.logits.shape[1])
        for p in grid.patterns
    )
    return Sweep(
        grid.scales,
        info,
        cells,
        tuple(b for _, b in sorted((b for part in parts for b in part.points), key=lambda b: b[0])),
        tuple(skipped),
        next((part.method for part in parts if part.method is not None), FLOAT64_METHOD),
        loss_scale,
        environment_of(flushes),
        loss=grid.loss,
    )


def _cells(
    pattern: Pattern,
    variant: Variant,
    fmt: FloatFormat,
    policy: str,
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
        if grades.downcast:
            fired.add("downcast")
        if grades.half_softmax[rows].any():
            fired.add("half-softmax")
        ordered = tuple(f for f in FLAGS if f in fired)
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
                policy=policy,
            )
        )
    return out


Refined = dict[str, tuple[Bracket, str]]


def reported_scale(fired: float) -> float:
    """A breaking point as reported: the smallest scale the search saw fire, to 4 significant
    digits rounded up, so it is a scale at which the flag fires, within the search's resolution
    (``grid.REFINE_REL``) and 1e-3 of where it starts (rounded to nearest, 3 digits put naive's
    float32 gradient break, 10.917, at 10.9, where nothing fires)."""
    digits = float(f"{fired:.4g}")
    if digits >= fired:
        return digits
    return float(f"{digits + 10.0 ** (math.floor(math.log10(fired)) - 3):.4g}")


def _breaking_points(
    pattern: Pattern,
    variant: Variant,
    fmt: FloatFormat,
    policy: str,
    mode: str,
    scales: list[float],
    grades: Grades,
    grid: Grid,
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
        _, g = _graded(grid, variant, mode, _scaled(pattern, candidates, fmt, grid), policy)
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
            scale = reported_scale(hi)
        out.append(
            BreakingPoint(
                pattern.name, variant.impl, used, fmt.name, mode, kind, scale, flag, k == 0, policy
            )
        )
    return out, done
