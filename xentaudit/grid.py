"""Sweep grids and breaking-point search: pure functions, no I/O and no TensorFlow."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from xentaudit.choices import MAX_CLASSES, MAX_ROWS, MAX_SCALES, MAX_SEED, expand, unknown
from xentaudit.errors import ConfigError

DEFAULT_SCALES = tuple(float(s) for s in np.logspace(-1, 4, 11))  # 0.1 ... 1e4, 2 per decade
PATTERNS = ("seed", "random", "dominant", "vocab")  # of the softmax loss
MULTILABEL_PATTERNS = ("multilabel", "soft-multilabel")
LOSS_PATTERNS = {
    "softmax": PATTERNS,
    "sigmoid": MULTILABEL_PATTERNS,
    "focal": PATTERNS,
    "binary-focal": MULTILABEL_PATTERNS,
}
MULTILABEL_LOGITS = [3.0, -2.0, 1.0, -1.0]
RANDOM_CLASSES = 10
# Refinement: each round evaluates `points` scales inside the bracket in one batched call,
# shrinking its log-width (points + 1)x; stop once the bracket is narrower than REFINE_REL, so the
# first breaking scale is right to 4 significant digits (sweep.reported_scale rounds it up). A
# call costs ~5 ms of TensorFlow overhead whatever its size, so a round holds as many scales as
# fit in REFINE_ENTRIES logits, at least 3: the seed pattern finishes in one round, a vocabulary
# row gets 3 points a round.
REFINE_REL = 5e-4
REFINE_ENTRIES = 20_000
REFINE_MAX_POINTS = 2500  # one round covers a bracket of ratio e^(2500 * 5e-4) = 3.5


@dataclass(frozen=True)
class Pattern:
    """An input pattern: base logits (multiplied by each scale) and their labels."""

    name: str
    description: str
    logits: np.ndarray  # (rows, classes) float64
    labels: np.ndarray  # (rows,) int64 classes; (rows, classes) weights in [0, 1] for a sigmoid


def parse_scales(spec: str) -> tuple[float, ...]:
    """``"0.1,1,10"`` (a list) or ``"start:stop:count"`` (log-spaced, inclusive)."""
    try:
        if ":" in spec:
            start_s, stop_s, count_s = spec.split(":")
            start, stop, count = float(start_s), float(stop_s), int(count_s)
            if not (1 <= count <= MAX_SCALES) or start <= 0 or stop < start or not stop < math.inf:
                raise ConfigError(
                    f"--scales {spec!r}: need 0 < start <= stop < inf and 1 <= count <= "
                    f"{MAX_SCALES}, e.g. 0.1:1e4:11"
                )
            scales = [float(s) for s in np.geomspace(start, stop, count)]
        else:
            scales = [float(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(
            f"--scales {spec!r} is not a list (0.1,1,10) or a range (start:stop:count)"
        ) from None
    return check_scales(scales)


def check_scales(scales: Iterable[float] | str) -> tuple[float, ...]:
    """The scales (numbers, or a string as ``--scales`` takes it: ``parse_scales``) sorted
    without repeats, once each is known positive and finite and there are 1 to ``MAX_SCALES``
    of them."""
    try:
        values = sorted(
            set(parse_scales(scales) if isinstance(scales, str) else map(float, scales))
        )
    except (TypeError, ValueError):
        raise ConfigError(f"--scales must be numbers, got {scales!r}") from None
    if not values:
        raise ConfigError("--scales is empty; give at least one positive scale")
    bad = [s for s in values if not (0 < s < math.inf)]
    if bad:
        raise ConfigError(f"--scales must be positive and finite, got {bad[0]:g}")
    if len(values) > MAX_SCALES:
        raise ConfigError(f"--scales gives {len(values)} scales; give at most {MAX_SCALES}")
    return tuple(values)


def pattern_shape(name: str, *, classes: int, rows: int, vocab_rows: int) -> tuple[int, int]:
    """(rows, classes) of pattern ``name`` at these sizes, without building it."""
    _check_sizes(classes, rows, vocab_rows)
    shapes = {
        "seed": (2, 3),
        "random": (rows, RANDOM_CLASSES),
        "dominant": (1, 3),
        "vocab": (vocab_rows, classes),
        "multilabel": (2, len(MULTILABEL_LOGITS)),
        "soft-multilabel": (1, len(MULTILABEL_LOGITS)),
    }
    return shapes[name]


def _check_sizes(classes: int, rows: int, vocab_rows: int) -> None:
    if not (2 <= classes <= MAX_CLASSES):
        raise ConfigError(f"--classes must lie in [2, {MAX_CLASSES}], got {classes}")
    for option, value in (("--rows", rows), ("--vocab-rows", vocab_rows)):
        if not (1 <= value <= MAX_ROWS):
            raise ConfigError(f"{option} must lie in [1, {MAX_ROWS}], got {value}")


def make_pattern(
    name: str, *, classes: int = 16384, rows: int = 4, vocab_rows: int = 1, seed: int = 0
) -> Pattern:
    """Build one of ``PATTERNS``: ``rows`` sizes ``random``; ``classes`` and ``vocab_rows`` size
    ``vocab`` (random labels; odd rows, when there are several, confident and correct)."""
    _check_sizes(classes, rows, vocab_rows)
    if not (0 <= seed <= MAX_SEED):
        raise ConfigError(f"--seed must lie in [0, {MAX_SEED}], got {seed}")
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
    if name == "multilabel":
        return Pattern(
            "multilabel",
            f"{MULTILABEL_LOGITS} twice: row 0 labelled [1,0,1,0] (right), row 1 [0,1,0,1] (wrong)",
            np.array([MULTILABEL_LOGITS] * 2),
            np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]),
        )
    if name == "soft-multilabel":
        return Pattern(
            "soft-multilabel",
            f"{MULTILABEL_LOGITS} with soft labels [0.9,0.2,0.7,0.4]",
            np.array([MULTILABEL_LOGITS]),
            np.array([[0.9, 0.2, 0.7, 0.4]]),
        )
    raise ConfigError(unknown("pattern", name, [p for ps in LOSS_PATTERNS.values() for p in ps]))


def parse_patterns(names: Iterable[str], loss: str = "softmax") -> tuple[str, ...]:
    """Expand pattern names (comma lists allowed; ``all`` is every pattern of ``loss``), in
    order; a pattern of another loss is an error naming its ``--loss``."""
    names = list(names)
    for part in (p.strip() for n in names for p in n.split(",")):
        if part in LOSS_PATTERNS[loss]:
            continue
        other = next((k for k, ps in LOSS_PATTERNS.items() if part in ps), None)
        if other is not None:
            raise ConfigError(
                f"--pattern {part} is an input of the {other} loss, not the {loss} loss; pass "
                f"--loss {other}"
            )
    return expand(names, LOSS_PATTERNS[loss], "pattern")


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
    each bracket is narrower than ``REFINE_REL`` (4 significant digits); returns the final
    bracket and the flag that fired at its upper end. Assumes one transition per bracket.
    """
    state = dict(brackets)
    while True:
        open_ = [k for k, (lo, hi, _) in state.items() if hi / lo - 1 > REFINE_REL]
        if not open_:
            break
        candidates = np.unique(  # sorted, each scale once
            np.concatenate(
                [np.geomspace(state[k][0], state[k][1], points + 2)[1:-1] for k in open_]
            )
        )
        verdicts = fires(candidates.tolist())
        for kind, (lo, hi, flag) in state.items():
            fired = np.asarray(verdicts[kind], dtype=object)
            inside = (lo < candidates) & (candidates < hi)
            firing = np.flatnonzero(inside & (fired != ""))
            if firing.size:
                hi, flag = float(candidates[firing[0]]), str(fired[firing[0]])
            quiet = candidates[inside & (fired == "") & (candidates < hi)]
            lo = float(quiet.max()) if quiet.size else lo
            state[kind] = (lo, hi, flag)
    return {k: ((lo, hi), flag) for k, (lo, hi, flag) in state.items()}
