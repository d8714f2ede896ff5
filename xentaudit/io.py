"""Loading and validating logits and labels: from ``.npy`` files or inline JSON.

``np.load`` never unpickles (``allow_pickle=False``). Everything a user can get wrong raises
``InputError`` with one line saying what is wrong and how to fix it.
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import ml_dtypes
import numpy as np

from xentaudit.dtypes import FORMATS
from xentaudit.errors import InputError

_SHOWN_ROWS = 5  # how many offending row indices an error message lists
T = TypeVar("T")


@dataclass(frozen=True)
class Batch:
    """Validated inputs: logits (n, C), and label weights (n, C) or the class of each row.

    Logits keep their dtype when it is one of the audited formats (float16, bfloat16, float32,
    float64), so a float32 file is never copied to float64; other numbers become float64.
    ``weights`` are float64 label weights (``None`` for class labels); ``classes`` the integer
    class of each row when the labels are classes or one-hot (``None`` for soft labels).
    """

    logits: np.ndarray
    weights: np.ndarray | None
    classes: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.logits.shape  # type: ignore[return-value]


def as_float(x: np.ndarray) -> np.ndarray:
    """``x`` as float32 or float64 for numpy arithmetic and the reference kernel: float16 and
    bfloat16 widen (exactly) to float32, anything else but float32 becomes float64."""
    if x.dtype in (np.float32, np.float64):
        return x
    return x.astype(np.float32 if x.dtype.name in ("float16", "bfloat16") else np.float64)


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


def describe_rows(rows: np.ndarray) -> str:
    """``row 3`` / ``rows 0, 1, 2, 3, 4 and 7 more`` for error messages."""
    shown = ", ".join(str(r) for r in rows[:_SHOWN_ROWS])
    more = f" and {rows.size - _SHOWN_ROWS} more" if rows.size > _SHOWN_ROWS else ""
    return f"row{'s' if rows.size > 1 else ''} {shown}{more}"


def _rows(mask: np.ndarray, offset: int = 0) -> str:
    return describe_rows(np.flatnonzero(mask) + offset)


BAD_LOGITS = {  # what makes a row of logits unauditable, and the one-line message for it
    "NaN": "logits contain NaN in {rows}; find where the model first produces them",
    "+inf": "logits contain +inf in {rows}; the loss is undefined there (clip or rescale them)",
    "-inf only": "every logit is -inf in {rows}; softmax is undefined",
}


def bad_logit_rows(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per problem of ``BAD_LOGITS``: a mask of the rows of ``x`` (n, C) that have it.

    One row maximum tells all three: it is NaN where the row has a NaN, +inf where the row has
    +inf (and no NaN: such a row is reported under NaN, which is reported first), and -inf
    where every logit is -inf.
    """
    with np.errstate(invalid="ignore"):
        top = as_float(x).max(axis=1)
    return {"NaN": np.isnan(top), "+inf": top == np.inf, "-inf only": top == -np.inf}


def prepare(logits: np.ndarray, labels: np.ndarray, row_offset: int = 0) -> Batch:
    """Validate logits ``[..., C]`` and labels (integer classes ``[...]`` or weights ``[..., C]``).

    Leading axes are flattened into rows. Raises ``InputError`` for anything that cannot be
    audited: NaN or ``+inf`` logits, rows with no finite logit, negative or non-finite label
    weights, classes out of range, mismatched shapes. Row numbers in messages start at
    ``row_offset`` (the position of this batch in a file).
    """
    at = row_offset
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.dtype.kind not in "biuf" and str(logits.dtype) != "bfloat16":
        raise InputError(f"logits must be numbers, got dtype {logits.dtype}")
    if logits.ndim == 0 or logits.size == 0:
        raise InputError(f"logits must be a non-empty array [..., classes], got {logits.shape}")
    x = logits.reshape(-1, logits.shape[-1])
    if x.dtype.name not in FORMATS:  # the audited formats are kept as they are
        x = x.astype(np.float64)
    n, c = x.shape
    for problem, mask in bad_logit_rows(x).items():
        if mask.any():
            raise InputError(BAD_LOGITS[problem].format(rows=_rows(mask, at)))

    if labels.dtype.kind not in "biuf":
        raise InputError(f"labels must be numbers, got dtype {labels.dtype}")
    if labels.shape == logits.shape:
        y = labels.astype(np.float64).reshape(n, c)
        if not np.isfinite(y).all():
            raise InputError(
                f"labels contain NaN or inf in {_rows(~np.isfinite(y).any(axis=1), at)}"
            )
        if (y < 0).any():
            raise InputError(
                f"labels contain negative weights in {_rows((y < 0).any(axis=1), at)}; "
                "label weights are probabilities or counts, never negative"
            )
        hot = ((y == 0) | (y == 1)).all(axis=1) & (y.sum(axis=1) == 1)
        classes = np.argmax(y, axis=1) if hot.all() else None
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
                f"class labels out of range in {_rows(bad, at)}: they must lie in [0, {c - 1}] "
                f"for {c} classes"
            )
        return Batch(x, None, flat.astype(np.int64))
    raise InputError(
        f"labels of shape {labels.shape} do not fit logits of shape {logits.shape}: pass class "
        f"indices of shape {logits.shape[:-1]} or label weights of shape {logits.shape}"
    )


# --- streaming reads for `check` ------------------------------------------------------------


@dataclass(frozen=True)
class ArraySource:
    """An array in a ``.npy`` file or ``.npz`` member, read in chunks of rows.

    Chunks are read sequentially from the file (or the zip member's stream), never through a
    memory map, so the working set is one chunk however large the file is.
    """

    path: Path
    member: str | None  # the .npz member, or None for a .npy file
    shape: tuple[int, ...]
    dtype: np.dtype
    label: str  # how to name it in messages, e.g. "logits.npz[logits]"

    @property
    def rows(self) -> int:
        """Rows of logits: every axis but the last (classes) flattened."""
        return int(np.prod(self.shape[:-1]))

    def chunks(self, rows: int, per_row: int) -> Iterator[np.ndarray]:
        """Yield consecutive blocks of ``rows`` rows, each of ``per_row`` items, flattened."""
        itemsize = self.dtype.itemsize
        with _stream(self.path, self.member) as stream:
            _read_header(stream, self.label)
            left = int(np.prod(self.shape)) // per_row
            while left:
                n = min(rows, left)
                want = n * per_row * itemsize
                data = stream.read(want)
                if len(data) < want:
                    missing = left - len(data) // (per_row * itemsize)
                    raise InputError(
                        f"{self.label} is truncated: it ends {missing} rows early; "
                        "write the file again"
                    )
                yield np.frombuffer(data, dtype=self.dtype).reshape(n, per_row)
                left -= n


_END = object()


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """Yield ``items`` while the next one is produced in a background thread.

    For chunked reads: the file read (and a ``.npz`` member's CRC check) of the next chunk
    overlaps the audit of this one. Exceptions reach the consumer at the item that raised them.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xentaudit-read") as reader:
        ahead = reader.submit(next, items, _END)
        while (item := ahead.result()) is not _END:
            ahead = reader.submit(next, items, _END)
            yield item


@contextlib.contextmanager
def _stream(path: Path, member: str | None) -> Iterator[IO[bytes]]:
    """The bytes of a .npy file, or of one member of a .npz (zip) file, from the start."""
    if member is None:
        with path.open("rb") as stream:
            yield stream
    else:
        with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
            yield stream


def _read_header(stream: IO[bytes], label: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)
        return np.lib.format.read_array_header_2_0(stream)
    except (ValueError, EOFError, OSError) as exc:
        raise InputError(f"{label} is not a readable .npy array ({exc})") from None


def _header(path: Path, member: str | None, label: str) -> ArraySource:
    try:
        with _stream(path, member) as stream:
            shape, fortran, dtype = _read_header(stream, label)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise InputError(f"cannot read {label} ({exc})") from None
    if dtype.hasobject:
        raise InputError(
            f"{label} holds Python objects, which xentaudit never unpickles; save a numeric "
            "array (e.g. np.save(path, logits.astype(np.float32)))"
        )
    if fortran and len(shape) > 1:
        raise InputError(f"{label} is stored in Fortran order; save np.ascontiguousarray(...)")
    if dtype.kind == "V" and dtype.itemsize == 2 and dtype.fields is None:
        # ml_dtypes (and so JAX) write bfloat16 arrays with the anonymous 2-byte dtype "V2".
        dtype = np.dtype(ml_dtypes.bfloat16)
    return ArraySource(path, member, tuple(shape), dtype, label)


def open_arrays(
    path: Path, labels: Path | None, logits_key: str, labels_key: str
) -> tuple[ArraySource, ArraySource | None]:
    """The logits (and labels, if any) of ``path`` (``.npy`` or ``.npz``), plus ``labels``."""
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    label_source = _header(labels, None, str(labels)) if labels is not None else None
    if path.suffix != ".npz":
        return _header(path, None, str(path)), label_source
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is not a readable .npz file ({exc})") from None
    keys = sorted(m.removesuffix(".npy") for m in members)
    if f"{logits_key}.npy" not in members:
        raise InputError(
            f"{path} has no array {logits_key!r} (it has {', '.join(keys) or 'none'}); "
            "pass --logits-key"
        )
    logits = _header(path, f"{logits_key}.npy", f"{path}[{logits_key}]")
    if label_source is None and f"{labels_key}.npy" in members:
        label_source = _header(path, f"{labels_key}.npy", f"{path}[{labels_key}]")
    return logits, label_source
