"""Option values that name things (dtypes, implementations, patterns), or give numbers: one way
to read them; and the names, defaults and bounds the options of the command line show in their
--help, here because this module imports nothing heavy (a --help imports no numpy)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Real
from typing import overload

from xentaudit.errors import ConfigError

EVERY = ("all",)  # an option's value naming every choice
MODES = ("eager", "graph")
# `--mode training`: the modes a loss trains in (impls.TRAINING_MODES).
TRAINING = "training"
MODE_NAMES = (*MODES, "both", TRAINING)  # what a `modes` list may hold
# What a `check` file holds (--input): log-probabilities are logits (their softmax is the
# probabilities); probabilities are graded through the implementations that take them.
INPUTS = ("logits", "probabilities", "log-probabilities")
LOSS_NAMES = ("softmax", "sigmoid", "focal", "binary-focal")  # losses.LOSSES' keys, in order
DEFAULT_DTYPES = ("float32",)  # what ``audit`` and ``compare`` round the logits to
MAX_TIMEOUT = 1_000_000  # seconds (11.6 days): any longer is no bound
DEFAULT_LABELS_KEY = "labels"  # the .npz array read as the labels unless another is named
DEFAULT_EPS = (1e-7, 1e-12, 1e-30)  # the sweep's epsilons of `clipped`
# Bounds of the sweep's options (the memory budget bounds their product).
MAX_SCALES = 1000
MAX_CLASSES = 1 << 24
MAX_ROWS = 1 << 20  # of the random pattern and of the vocab pattern
MAX_SEED = 2**32 - 1
# The implementations whose failing flags the EMA may hide or show, unless others are named: the
# fused loss on logits and Keras' loss on probabilities (which clips them eagerly).
EMA_IMPLS = ("tf_softmax_xent", "keras_cce_probs")


def unknown(what: str, value: str, choices: Iterable[str]) -> str:
    """The one-line message for a name that is not one of ``choices``."""
    return f"unknown {what} {value!r}; choose from {', '.join(choices)} or 'all'"


def expand(
    values: Iterable[str],
    choices: Sequence[str],
    what: str,
    error: type[ConfigError] = ConfigError,
) -> tuple[str, ...]:
    """Expand option values: comma lists allowed, ``all`` is every choice; in order, no repeats."""
    out: list[str] = []
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if part != "all" and part not in choices:
                raise error(unknown(what, part, choices))
            out.extend(c for c in (choices if part == "all" else (part,)) if c not in out)
    return tuple(out)


def numbers_given(values: float | Iterable[float], message: str) -> tuple[float, ...]:
    """An API option's numbers as a tuple of floats: one number (numpy's scalars are
    ``numbers.Real`` too) or an iterable of them; anything else (a string is no list of numbers)
    is a ``ConfigError``: ``message``, then ``got`` the value."""
    try:
        return (float(values),) if isinstance(values, Real) else tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{message}, got {values!r}") from None


@overload
def names_given(
    values: Iterable[str] | str | None,
    what: str,
    default: tuple[str, ...],
    empty_ok: bool = False,
) -> tuple[str, ...]: ...
@overload
def names_given(
    values: Iterable[str] | str | None,
    what: str,
    default: None = None,
    empty_ok: bool = False,
) -> tuple[str, ...] | None: ...
def names_given(
    values: Iterable[str] | str | None,
    what: str,
    default: tuple[str, ...] | None = None,
    empty_ok: bool = False,
) -> tuple[str, ...] | None:
    """An API option's names as a tuple: a string is one value (a comma list, never its
    characters), None is the option's ``default``, and an empty list is refused unless
    ``empty_ok`` (something else runs, a model's loss): it would run nothing, and a run of
    nothing passes."""
    if values is None:
        return default
    try:
        names = (values,) if isinstance(values, str) else tuple(values)
    except TypeError:  # not iterable: one number, say
        names = (values,)  # type: ignore[assignment]
    if not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{what} must be names (strings), got {list(names)!r}")
    if not names and not empty_ok:
        raise ConfigError(f"{what}=[] names nothing to run; name one or more, or leave it out")
    return names
