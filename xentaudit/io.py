"""Loading and validating logits and labels: from ``.npy`` files or inline JSON.

``np.load`` never unpickles (``allow_pickle=False``). Everything a user can get wrong raises
``InputError`` with one line saying what is wrong and how to fix it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xentaudit.errors import InputError

_SHOWN_ROWS = 5  # how many offending row indices an error message lists


@dataclass(frozen=True)
class Batch:
    """Validated inputs: float64 logits (n, C), dense float64 labels (n, C), and the integer class
    of each row when the labels are one-hot or sparse (``None`` for soft labels)."""

    logits: np.ndarray
    labels: np.ndarray
    classes: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.logits.shape  # type: ignore[return-value]


def load_array(spec: str, option: str) -> np.ndarray:
    """Read ``spec`` as a ``.npy`` file if it names one, otherwise as an inline JSON list."""
    if spec.endswith(".npy") or Path(spec).is_file():
        return _load_npy(Path(spec), option)
    try:
        value = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{option}: {spec!r} is neither a .npy file nor valid JSON ({exc.msg} at "
            f"character {exc.pos}); pass a path or a list such as '[[2.0, -1.0, 0.5]]'"
        ) from None
    try:
        array = np.asarray(value)
    except ValueError:
        raise InputError(
            f"{option}: the JSON list is ragged; every row needs the same number of entries"
        ) from None
    if array.dtype.kind not in "biuf":
        raise InputError(f"{option}: the JSON must be a (nested) list of numbers")
    return array


def _load_npy(path: Path, option: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{option}: no such file: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise InputError(
                f"{option}: {path} holds Python objects, which xentaudit never unpickles; "
                "save a numeric array (e.g. np.save(path, logits.astype(np.float32)))"
            ) from None
        raise InputError(f"{option}: {path} is not a readable .npy file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{option}: cannot read {path} ({exc})") from None


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(r) for r in rows[:_SHOWN_ROWS])
    more = f" and {rows.size - _SHOWN_ROWS} more" if rows.size > _SHOWN_ROWS else ""
    return f"row{'s' if rows.size > 1 else ''} {shown}{more}"


def prepare(logits: np.ndarray, labels: np.ndarray) -> Batch:
    """Validate logits ``[..., C]`` and labels (integer classes ``[...]`` or weights ``[..., C]``).

    Leading axes are flattened into rows. Raises ``InputError`` for anything that cannot be
    audited: NaN or ``+inf`` logits, rows with no finite logit, negative or non-finite label
    weights, classes out of range, mismatched shapes.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.dtype.kind not in "biuf" and str(logits.dtype) != "bfloat16":
        raise InputError(f"logits must be numbers, got dtype {logits.dtype}")
    if logits.ndim == 0 or logits.size == 0:
        raise InputError(f"logits must be a non-empty array [..., classes], got {logits.shape}")
    x = logits.astype(np.float64).reshape(-1, logits.shape[-1])
    n, c = x.shape
    if np.isnan(x).any():
        raise InputError(
            f"logits contain NaN in {_rows(np.isnan(x).any(axis=1))}; "
            "find where the model first produces them"
        )
    if np.isposinf(x).any():
        raise InputError(
            f"logits contain +inf in {_rows(np.isposinf(x).any(axis=1))}; "
            "the loss is undefined there (clip or rescale the logits)"
        )
    if np.isneginf(x).all(axis=1).any():
        raise InputError(
            f"every logit is -inf in {_rows(np.isneginf(x).all(axis=1))}; softmax is undefined"
        )

    if labels.dtype.kind not in "biuf":
        raise InputError(f"labels must be numbers, got dtype {labels.dtype}")
    if labels.shape == logits.shape:
        y = labels.astype(np.float64).reshape(n, c)
        if not np.isfinite(y).all():
            raise InputError(f"labels contain NaN or inf in {_rows(~np.isfinite(y).any(axis=1))}")
        if (y < 0).any():
            raise InputError(
                f"labels contain negative weights in {_rows((y < 0).any(axis=1))}; "
                "label weights are probabilities or counts, never negative"
            )
        one_hot = ((y == 0) | (y == 1)).all(axis=1) & (y.sum(axis=1) == 1)
        classes = np.argmax(y, axis=1) if one_hot.all() else None
        return Batch(x, y, classes)
    if labels.shape == logits.shape[:-1] or (logits.ndim == 1 and labels.ndim == 0):
        flat = labels.reshape(n).astype(np.float64)
        if not (np.isfinite(flat) & (flat == np.round(flat))).all():
            raise InputError(
                "class labels must be whole numbers; pass one-hot or soft labels with the "
                f"logits' shape {logits.shape} for fractional weights"
            )
        bad = (flat < 0) | (flat >= c)
        if bad.any():
            raise InputError(
                f"class labels out of range in {_rows(bad)}: they must lie in [0, {c - 1}] "
                f"for {c} classes"
            )
        classes = flat.astype(np.int64)
        y = np.zeros((n, c))
        y[np.arange(n), classes] = 1.0
        return Batch(x, y, classes)
    raise InputError(
        f"labels of shape {labels.shape} do not fit logits of shape {logits.shape}: pass class "
        f"indices of shape {logits.shape[:-1]} or label weights of shape {logits.shape}"
    )
