"""Assertions for a team's own test suite: is *my* cross-entropy numerically stable?

``assert_stable(loss_fn)`` runs a loss function of your own through the same sweep as
``xentaudit sweep --impl file.py:fn`` (logit scales x dtypes x input patterns, eagerly and
compiled, graded against the exact loss and gradient) and raises ``AssertionError`` with a table
of what fired when it is not stable. Importing this module imports no framework; the first
call imports the backend's.

The callable reaches the zoo by the public path a ``--impl package.module:fn`` takes: it is
given a name in this module (``xentaudit.testing:<name>``, served by the module's
``__getattr__``), and ``impls.get_impl`` imports and checks it like any user's loss.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from xentaudit import impls as zoo
from xentaudit.dtypes import FORMATS, dtype_label
from xentaudit.errors import ConfigError, NothingAudited
from xentaudit.flags import FAILING, FLAGS, fail_on_flags
from xentaudit.grid import PATTERNS
from xentaudit.results import BreakingPoint, Skipped, Sweep, SweepCell, point_label

# Defaults: one call takes about a second for a TensorFlow loss, and catches a hand-written
# softmax+log in every dtype while a fused loss passes. Scales stop at 1e3 (logits up to about
# 4e3): at 1e4 the exact loss of the vocab pattern (4.5e4) nears float16's largest number
# (65504), and torch's and optax's own fused losses return NaN there in float16: a limit of the
# dtype, not a bug a test suite can fix in its loss.
DEFAULT_DTYPES = ("all",)
DEFAULT_SCALES = "0.1:1e3:9"  # two per decade, as the sweep's own grid
DEFAULT_PATTERNS = ("all",)
DEFAULT_MODES = zoo.TRAINING_MODES  # the modes a loss trains in (ask for "graph" in torch)

__all__ = ["DEFAULT_DTYPES", "DEFAULT_MODES", "DEFAULT_SCALES", "assert_stable", "register"]

Loss = Callable[[Any, Any], Any]
_LOSSES: dict[str, Loss] = {}  # name in this module -> the user's callable, kept alive


def __getattr__(name: str) -> Loss:
    """The callables ``assert_stable`` registered, as attributes of this module: what
    ``impls.get_impl("xentaudit.testing:<name>")`` imports (PEP 562)."""
    try:
        return _LOSSES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def _name_of(loss_fn: Loss) -> str:
    """A readable identifier for ``loss_fn``, unique to this callable for the process: its
    qualified name (``<locals>`` dropped, other characters as ``_``), numbered on a clash."""
    for name, fn in _LOSSES.items():
        if fn is loss_fn:
            return name
    qualname = getattr(loss_fn, "__qualname__", None) or type(loss_fn).__name__
    base = re.sub(r"\W+", "_", qualname.replace(".<locals>", "")).strip("_") or "loss"
    if not base.isidentifier():  # starts with a digit
        base = f"loss_{base}"
    name, n = base, 1
    while name in _LOSSES or name in globals():
        n += 1
        name = f"{base}_{n}"
    _LOSSES[name] = loss_fn
    return name


def register(loss_fn: Loss, backend: str = "tf") -> str:
    """The implementation name under which ``loss_fn(labels, logits)`` (per-row losses, in
    ``backend``'s own tensors: "tf", "torch" or "jax") runs in ``sweep``/``audit``:
    ``"<backend>:xentaudit.testing:<name>"``. The same callable always gets the same name."""
    if backend not in zoo.BY_OPTION:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(zoo.BY_OPTION)}")
    if not callable(loss_fn):
        raise ConfigError(f"loss_fn must be a function (labels, logits), got {loss_fn!r}")
    spec = f"{backend}:{__name__}:{_name_of(loss_fn)}"
    zoo.get_impl(spec)  # loads and checks it (signature, backend installed) like --impl
    return spec


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.6g}"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def failure_message(result: Sweep, fail_on: Iterable[str], label: str) -> str | None:
    """What ``assert_stable`` says when any of ``fail_on`` fired in ``result`` (None: nothing
    did): per pattern, dtype and mode, the smallest scale at which a flag fired (eager and
    graph merged into ``both`` where they agree), the first breaking point per dtype, and what
    each flag means and what to do instead. ``label`` names the loss for people."""
    fail_on = tuple(fail_on)
    fired = [c for c in result.cells if any(f in fail_on for f in c.flags)]
    if not fired:
        return None
    flags = [f for f in FLAGS if f in fail_on and any(f in c.flags for c in fired)]
    order = {d: i for i, d in enumerate(FORMATS)}
    dtypes = sorted({c.dtype for c in fired}, key=order.__getitem__)
    lines = [
        f"{label} is not numerically stable: {', '.join(flags)} in {len(fired)} of "
        f"{len(result.cells)} cells ({', '.join(dtypes)})",
        "",
    ]
    lines += _table(
        ("pattern", "dtype", "mode", "from scale", "flags", "exact loss", "returned", "fired at"),
        _first_cells(fired, fail_on, len(result.scales), order),
    )
    lines.append("(losses: mean over the pattern's rows at that scale)")
    breaks = _breaking_lines(result.breaking_points, fail_on, order)
    if breaks:
        lines += ["", "First breaking point per dtype (4 digits, rounded up):", *breaks]
    lines += ["", "What fired:"]
    lines += [f"  {f}: {FLAGS[f].explained.text}" for f in flags]
    return "\n".join(lines)


def _first_cells(
    fired: list[SweepCell], fail_on: tuple[str, ...], scales: int, order: dict[str, int]
) -> list[tuple[str, ...]]:
    """One row per pattern x dtype x mode: its first firing cell and how many scales fired."""
    groups: dict[tuple[str, str, str, str], list[SweepCell]] = {}
    for c in fired:
        groups.setdefault((c.pattern, c.dtype, c.policy, c.mode), []).append(c)
    rows: dict[tuple[str, str, str, str], tuple[str, ...]] = {}
    for (pattern, dtype, policy, mode), cells in groups.items():
        first = min(cells, key=lambda c: c.scale)
        rows[(pattern, dtype, policy, mode)] = (
            pattern,
            dtype_label(first.dtype, first.policy),
            mode,
            f"{first.scale:.3g}",
            ",".join(f for f in first.flags if f in fail_on),
            _number(first.reference),
            _number(first.loss),
            f"{len(cells)}/{scales} scales",
        )
    merged: dict[tuple[str, str, str], tuple[str, ...]] = {}
    for (pattern, dtype, policy, mode), row in rows.items():
        other = rows.get((pattern, dtype, policy, "graph" if mode == "eager" else "eager"))
        same = other is not None and other[3:] == row[3:]
        merged[(pattern, dtype, policy, "both" if same else mode)] = (
            (*row[:2], "both", *row[3:]) if same else row
        )
    patterns = {p: i for i, p in enumerate(PATTERNS)}
    return [
        merged[k]
        for k in sorted(merged, key=lambda k: (order[k[1]], k[2], patterns.get(k[0], 99), k[3]))
    ]


def _breaking_lines(
    points: Iterable[BreakingPoint], fail_on: tuple[str, ...], order: dict[str, int]
) -> list[str]:
    """Per dtype, the smallest scale at which the loss and the gradient break, and where."""
    first: dict[tuple[str, str], BreakingPoint] = {}
    for p in points:
        if p.scale is None or p.flag not in fail_on:
            continue
        key = (dtype_label(p.dtype, p.policy), p.kind)
        if key not in first or p.scale < first[key].scale:  # type: ignore[operator]
            first[key] = p
    lines = []
    for where in sorted({w for w, _ in first}, key=lambda w: order[w.split()[0]]):
        parts = [
            f"{'gradient' if kind == 'grad' else 'loss'} {p.flag} from scale "
            f"{point_label(p)} ({p.pattern}, {p.mode})"
            for kind in ("loss", "grad")
            if (p := first.get((where, kind))) is not None
        ]
        lines.append(f"  {where}: {'; '.join(parts)}")
    return lines


def _warn_skipped(name: str, skipped: Iterable[Skipped]) -> None:
    """A warning per run skipped: a scale that overflows a dtype; torch.compile without a
    compiler."""
    for skip in skipped:
        warnings.warn(f"xentaudit: {name}: not run: {skip.reason}", stacklevel=3)


def assert_stable(
    loss_fn: Loss,
    *,
    backend: str = "tf",
    dtypes: Iterable[str] | str = DEFAULT_DTYPES,
    scales: Iterable[float] | str = DEFAULT_SCALES,
    patterns: Iterable[str] | str = DEFAULT_PATTERNS,
    fail_on: Iterable[str] | str = FAILING,
    modes: Iterable[str] | str | None = None,
    classes: int = 16384,
    rtol: float | None = None,
    timeout: float | None = None,
    loss_scale: float | None = None,
) -> Sweep:
    """Assert that ``loss_fn(labels, logits) -> per-row losses`` is numerically stable: no flag
    of ``fail_on`` fires on its loss or autodiff gradient anywhere in the sweep of ``scales`` x
    ``dtypes`` x ``patterns`` x ``modes``. Returns the ``Sweep`` (for further assertions).

    ``loss_fn`` takes ``backend``'s own tensors ("tf", "torch", "jax"): one-hot ``labels`` and
    ``logits`` of shape (rows, classes) in the dtype under test. Names may be given as a list
    or one comma-separated string ("float32,bfloat16"). ``scales`` is a list or a
    ``"start:stop:count"`` range as ``--scales`` takes; ``patterns`` are ``sweep``'s (seed,
    random, dominant, vocab of ``classes`` classes, or "all"); ``modes`` default to the mode a
    loss trains in (``DEFAULT_MODES``: tf eager and inside ``tf.function``, torch eager, jax
    under ``jax.jit``). ``rtol``, ``timeout`` and ``loss_scale`` are as for ``sweep``. What
    could not run (a scale whose logits overflow a dtype, a mode this machine lacks) is a
    warning. Raises ``AssertionError`` with the cells that fired, the first breaking point per
    dtype and what to do; a bad option or a loss that cannot run is an ``XentauditError``.
    """
    __tracebackhide__ = True  # pytest: show the caller's line, not this one
    from xentaudit.sweep import sweep

    spec = register(loss_fn, backend)
    flags = fail_on_flags(fail_on)
    name = spec.rpartition(":")[2]
    try:
        result = sweep(
            scales=scales,
            dtypes=dtypes,
            impls=[spec],
            patterns=patterns,
            classes=classes,
            modes=DEFAULT_MODES[backend] if modes is None else modes,
            rtol=rtol,
            timeout=timeout,
            loss_scale=loss_scale,
            backends=[backend],
        )
    except NothingAudited as exc:  # a test of nothing fails: the skips say why
        _warn_skipped(name, exc.skipped)
        raise AssertionError(
            f"xentaudit ran nothing for {name}: " + "; ".join(s.reason for s in exc.skipped)
        ) from None
    _warn_skipped(name, result.skipped)
    message = failure_message(result, flags, f"loss {name} ({backend})")
    if message is not None:
        raise AssertionError(message)
    return result
