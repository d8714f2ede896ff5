"""Sweep grids and breaking-point search: pure functions, no I/O and no TensorFlow."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from xentaudit.choices import expand, unknown
from xentaudit.errors import ConfigError

DEFAULT_SCALES = tuple(float(s) for s in np.logspace(-1, 4, 11))  # 0.1 ... 1e4, 2 per decade
DEFAULT_EPS = (1e-7, 1e-12, 1e-30)
PATTERNS = ("seed", "random", "dominant", "vocab")
RANDOM_CLASSES = 10
# Refinement: each round evaluates `points` scales inside the bracket in one batched call,
# shrinking its log-width (points + 1)x; stop once the bracket is narrower than REFINE_REL, so the
# first breaking scale is right to 3 significant digits. A call costs ~5 ms of TensorFlow
# overhead whatever its size, so a round holds as many scales as fit in REFINE_ENTRIES logits,
# at least 3: the seed pattern finishes in one round, a vocabulary row gets 3 points a round.
REFINE_REL = 5e-4
REFINE_ENTRIES = 20_000
REFINE_MAX_POINTS = 2500  # one round covers a bracket of ratio e^(2500 * 5e-4) = 3.5


@dataclass(frozen=True)
class Pattern:
    """An input pattern: base logits (multiplied by each scale) and the class of each row."""

    name: str
    description: str
    logits: np.ndarray  # (rows, classes) float64
    classes: np.ndarray  # (rows,) int64


def parse_scales(spec: str) -> tuple[float, ...]:
    """``"0.1,1,10"`` (a list) or ``"start:stop:count"`` (log-spaced, inclusive)."""
    try:
        if ":" in spec:
            start_s, stop_s, count_s = spec.split(":")
            start, stop, count = float(start_s), float(stop_s), int(count_s)
            if count < 1 or start <= 0 or stop < start or not math.isfinite(stop):
                raise ConfigError(
                    f"--scales {spec!r}: need 0 < start <= stop and count >= 1, e.g. 0.1:1e4:11"
                )
            scales = [float(s) for s in np.geomspace(start, stop, count)]
        else:
            scales = [float(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(
            f"--scales {spec!r} is not a list (0.1,1,10) or a range (start:stop:count)"
        ) from None
    if not scales:
        raise ConfigError("--scales is empty; give at least one positive scale")
    bad = [s for s in scales if not (0 < s < math.inf)]
    if bad:
        raise ConfigError(f"--scales must be positive and finite, got {bad[0]:g}")
    return tuple(sorted(set(scales)))


def make_pattern(
    name: str, *, classes: int = 16384, rows: int = 4, vocab_rows: int = 1, seed: int = 0
) -> Pattern:
    """Build one of ``PATTERNS``: ``rows`` sizes ``random``; ``classes`` and ``vocab_rows`` size
    ``vocab`` (random labels; odd rows, when there are several, confident and correct)."""
    if classes < 2:
        raise ConfigError(f"--classes must be at least 2, got {classes}")
    if rows < 1 or vocab_rows < 1:
        raise ConfigError(
            f"--rows and --vocab-rows must be at least 1, got {min(rows, vocab_rows)}"
        )
    rng = np.random.default_rng(seed)
    if name == "seed":
        return Pattern(
            "seed",
            "[[3,1,1],[-1,2,5]] with labels [0,1]",
            np.array([[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]]),
            np.array([0, 1]),
        )
    if name == "random":
        return Pattern(
            "random",
            f"{rows}x{RANDOM_CLASSES} standard normal logits, random labels (seed {seed})",
            rng.standard_normal((rows, RANDOM_CLASSES)),
            rng.integers(0, RANDOM_CLASSES, rows),
        )
    if name == "dominant":
        return Pattern(
            "dominant",
            "one dominant logit [1,0,0], label on another class (worst case)",
            np.array([[1.0, 0.0, 0.0]]),
            np.array([1]),
        )
    if name == "vocab":
        logits = rng.standard_normal((vocab_rows, classes))
        labels = rng.integers(0, classes, vocab_rows)
        labels[1::2] = np.argmax(logits[1::2], axis=1)  # odd rows confident and correct
        return Pattern(
            "vocab",
            f"{vocab_rows}x{classes} standard normal logits, random labels"
            + (", odd rows labelled with their argmax" if vocab_rows > 1 else ""),
            logits,
            labels,
        )
    raise ConfigError(unknown("pattern", name, PATTERNS))


def parse_patterns(names: Iterable[str]) -> tuple[str, ...]:
    """Expand pattern names (comma lists allowed; ``all`` is every pattern), in order."""
    return expand(names, PATTERNS, "pattern")


Bracket = tuple[float, float]


def refine_points(entries: int) -> int:
    """Scales per refinement round for a pattern of ``entries`` logits (see REFINE_ENTRIES)."""
    return max(3, min(REFINE_MAX_POINTS, REFINE_ENTRIES // entries))


def refine(
    brackets: dict[str, tuple[float, float, str]],
    fires: Callable[[list[float]], dict[str, list[str]]],
    points: int = 15,
) -> dict[str, tuple[Bracket, str]]:
    """Narrow each bracket (lo does not fire, hi fires with the given flag) to the first firing
    scale.

    Brackets are keyed by kind ("loss", "grad"); ``fires`` evaluates a list of scales in one
    implementation call and returns, per kind, the flag that fired at each scale ('' for none).
    All kinds share every evaluated scale, so overlapping brackets cost one search. Stops when
    each bracket is narrower than ``REFINE_REL`` (3 significant digits); returns the final
    bracket and the flag that fired at its upper end. Assumes one transition per bracket.
    """
    state = dict(brackets)
    while True:
        open_ = [k for k, (lo, hi, _) in state.items() if hi / lo - 1 > REFINE_REL]
        if not open_:
            break
        grid = {
            float(c)
            for k in open_
            for c in np.geomspace(state[k][0], state[k][1], points + 2)[1:-1]
        }
        candidates = sorted(grid)
        verdicts = fires(candidates)
        for kind, (lo, hi, flag) in state.items():
            inside = [
                (c, v) for c, v in zip(candidates, verdicts[kind], strict=True) if lo < c < hi
            ]
            firing = [(c, v) for c, v in inside if v]
            if firing:
                hi, flag = firing[0]
            lo = max([c for c, v in inside if not v and c < hi], default=lo)
            state[kind] = (lo, hi, flag)
    return {k: ((lo, hi), flag) for k, (lo, hi, flag) in state.items()}
