"""Loading and validating logits and labels: from ``.npy``/``.npz`` files or inline JSON.

Files are read from their ``.npy`` header and raw bytes, one reader for every command: nothing
is ever unpickled (object arrays are refused), and bfloat16 saved as the anonymous 2-byte dtype
is recognised. Everything a user can get wrong raises ``InputError`` with one line saying what is
wrong and how to fix it.
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


NON_FINITE = {  # the strings inline JSON may use for what JSON numbers cannot spell (lowercase)
    "inf": np.inf,
    "infinity": np.inf,
    "-inf": -np.inf,
    "-infinity": -np.inf,
    "nan": np.nan,
}


def parse_json(spec: str, option: str) -> np.ndarray:
    """The array an inline JSON list spells, e.g. ``[[0, "-inf", 1]]``.

    Besides numbers, entries may be the strings ``"inf"``, ``"-inf"``, ``"nan"`` (any case,
    ``"Infinity"`` too) or JSON's own extensions ``Infinity``, ``-Infinity``, ``NaN``, so that
    masked logits can be written inline; NaN and +inf are then refused by ``prepare`` as for files.
    """
    try:
        value = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{option}: {spec!r} is neither a .npy file nor valid JSON ({exc.msg} at "
            f"character {exc.pos}); pass a path or a list such as '[[2.0, -1.0, 0.5]]'"
        ) from None
    try:
        array = np.asarray(_numbers(value, option))
    except ValueError:
        raise InputError(
            f"{option}: the JSON list is ragged; every row needs the same number of entries"
        ) from None
    if array.dtype.kind not in "biuf":
        raise InputError(f"{option}: the JSON must be a (nested) list of numbers")
    return array


def _numbers(value: object, option: str) -> object:
    """``value`` with the strings of ``NON_FINITE`` turned into floats; other strings refused."""
    if isinstance(value, list):
        return [_numbers(v, option) for v in value]
    if isinstance(value, str):
        if value.lower() not in NON_FINITE:
            raise InputError(
                f"{option}: the JSON has the string {value!r}; entries must be numbers or one "
                'of "inf", "-inf", "nan"'
            )
        return NON_FINITE[value.lower()]
    return value


def file_or_json(spec: str, option: str) -> Path | np.ndarray:
    """The file ``spec`` names (``.npy``, ``.npz``, or any file that exists), or else the array
    its inline JSON spells."""
    if spec.endswith((".npy", ".npz")) or Path(spec).is_file():
        return Path(spec)
    return parse_json(spec, option)


def load_inputs(
    logits: str, labels: str | None, logits_key: str = "logits", labels_key: str = "labels"
) -> tuple[np.ndarray, np.ndarray]:
    """The logits and labels given as ``--logits`` and ``--labels``: each a file or inline JSON.

    ``logits`` may name a ``.npz``: its ``logits_key`` array is read, and its ``labels_key``
    array gives the labels when ``labels`` is ``None``. Files are read as ``check`` reads them.
    """
    x = file_or_json(logits, "--logits")
    y = None if labels is None else file_or_json(labels, "--labels")
    if isinstance(x, Path):
        logits_source, labels_source = open_arrays(x, y, logits_key, labels_key)
    else:
        logits_source, labels_source = _source(x, "--logits"), _labels_source(y)
    if labels_source is None and isinstance(x, Path) and x.suffix == ".npz":
        raise InputError(
            f"{x} has no array {labels_key!r} for the labels; pass --labels, or --labels-key"
        )
    if labels_source is None:
        raise InputError("--logits came without labels; pass --labels too (or a .npz of both)")
    return logits_source.read(), labels_source.read()


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


# --- reading arrays: `check` streams them in chunks, `compare` reads them whole ---------------


@dataclass(frozen=True)
class ArraySource:
    """An array in a ``.npy`` file or ``.npz`` member (or in memory), read in chunks of rows.

    Chunks are read sequentially from the file (or the zip member's stream), never through a
    memory map, so the working set is one chunk however large the file is.
    """

    path: Path | None  # None for an array in memory (``data``)
    member: str | None  # the .npz member, or None for a .npy file
    shape: tuple[int, ...]
    dtype: np.dtype
    label: str  # how to name it in messages, e.g. "logits.npz[logits]"
    data: np.ndarray | None = None  # the array itself, when it is in memory

    @classmethod
    def of(cls, array: np.ndarray, label: str) -> ArraySource:
        """An array already in memory (inline JSON, or an array passed to the Python API)."""
        return cls(None, None, array.shape, array.dtype, label, array)

    @property
    def rows(self) -> int:
        """Rows of logits: every axis but the last (classes) flattened."""
        return int(np.prod(self.shape[:-1]))

    def chunks(self, rows: int, per_row: int) -> Iterator[np.ndarray]:
        """Yield consecutive blocks of ``rows`` rows, each of ``per_row`` items, flattened."""
        if self.data is not None:
            flat = self.data.reshape(-1, per_row)
            yield from (flat[start : start + rows] for start in range(0, flat.shape[0], rows))
            return
        itemsize = self.dtype.itemsize
        assert self.path is not None
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

    def read(self) -> np.ndarray:
        """The whole array, in one piece."""
        if self.data is not None:
            return self.data
        if 0 in self.shape:
            return np.empty(self.shape, self.dtype)
        first = self.shape[0] if self.shape else 1  # "rows early" counts the first axis
        (block,) = self.chunks(first, int(np.prod(self.shape)) // first)
        return block.reshape(self.shape)


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


def _source(array: Path | np.ndarray, option: str) -> ArraySource:
    """A ``.npy`` file, or an array in memory, given as ``option``."""
    if isinstance(array, np.ndarray):
        return ArraySource.of(array, option)
    if not array.is_file():
        raise InputError(f"{option}: no such file: {array}")
    return _header(array, None, str(array))


def _labels_source(labels: Path | np.ndarray | None) -> ArraySource | None:
    return None if labels is None else _source(labels, "--labels")


def open_arrays(
    path: Path, labels: Path | np.ndarray | None, logits_key: str, labels_key: str
) -> tuple[ArraySource, ArraySource | None]:
    """The logits (and labels, if any) of ``path`` (``.npy`` or ``.npz``), plus ``labels`` (a
    ``.npy`` file, or an array in memory), which take the place of the ``.npz``'s own."""
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    label_source = _labels_source(labels)
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
