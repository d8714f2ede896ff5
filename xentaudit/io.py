"""Loading and validating logits and labels: from ``.npy``/``.npz`` files or inline JSON.

Files are read from their ``.npy`` header and raw bytes, one reader for every command: nothing
is ever unpickled (object arrays are refused), and bfloat16 saved as the anonymous 2-byte dtype
is recognised. Only regular files are opened; a header's shape, dtype and size are checked
against the file before any data is read, and no read holds more than ``CHUNK_ENTRIES``
numbers. Everything a user (or a hostile file) can get wrong raises ``InputError`` with one line
saying what is wrong and how to fix it.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import json
import lzma
import math
import os
import stat
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import ml_dtypes
import numpy as np

from xentaudit.choices import DEFAULT_LABELS_KEY
from xentaudit.dtypes import FORMATS
from xentaudit.errors import InputError, XentauditError

SHOWN_ROWS = 5  # how many offending row indices an error message lists
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
    shown = repr(spec) if len(spec) <= 60 else repr(spec[:57] + "...")
    too_deep = (
        f"{option}: the JSON is nested too deeply; logits are [..., classes] with a few axes "
        "(save deeper arrays as .npy)"
    )
    try:
        value = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{option}: {shown} is neither a .npy file nor valid JSON ({exc.msg} at "
            f"character {exc.pos}); pass a path or a list such as '[[2.0, -1.0, 0.5]]'"
        ) from None
    except RecursionError:
        raise InputError(too_deep) from None
    try:
        array = np.asarray(_numbers(value, option))
    except RecursionError:
        raise InputError(too_deep) from None
    except ValueError as exc:
        if "maximum" in str(exc):  # "would exceed the maximum number of dimension of 64"
            raise InputError(too_deep) from None
        raise InputError(
            f"{option}: the JSON list is ragged; every row needs the same number of entries"
        ) from None
    if array.dtype.kind not in "iuf":
        raise InputError(f"{option}: the JSON must be a (nested) list of numbers")
    return array


def _numbers(value: object, option: str) -> object:
    """``value`` with the strings of ``NON_FINITE`` turned into floats; other strings refused."""
    if isinstance(value, list):
        return [_numbers(v, option) for v in value]
    if isinstance(value, bool):  # JSON's true and false are no numbers (numpy reads them as 1, 0)
        raise InputError(
            f"{option}: the JSON has {str(value).lower()}; entries must be numbers or one of "
            '"inf", "-inf", "nan"'
        )
    if isinstance(value, str):
        if value.lower() not in NON_FINITE:
            raise InputError(
                f"{option}: the JSON has the string {value!r}; entries must be numbers or one "
                'of "inf", "-inf", "nan"'
            )
        return NON_FINITE[value.lower()]
    return value


def file_or_json(spec: str, option: str) -> Path | np.ndarray:
    """The file ``spec`` names (``.npy``, ``.npz``, or any path that exists, even a directory or
    a broken symlink, which the reader then names for what it is), or else the array its inline
    JSON spells."""
    return Path(spec) if names_a_file(spec) else parse_json(spec, option)


def names_a_file(spec: str) -> bool:
    """Whether an option's value names a file (``.npy``, ``.npz``, or any path that exists)
    rather than inline JSON. A list (``[...]``) is JSON without asking the file system: inline
    JSON can be far longer than a file name may be."""
    if spec.endswith((".npy", ".npz")):
        return True
    return not inline_list(spec) and os.path.lexists(spec)


def inline_list(spec: str) -> bool:
    """Whether an option's value is a JSON list (``[...]``), told from its first character."""
    return spec.lstrip().startswith("[")


def load_inputs(
    logits: str,
    labels: str | None,
    logits_key: str = "logits",
    labels_key: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The logits and labels given as ``--logits`` and ``--labels``: each a file or inline JSON.

    ``logits`` may name a ``.npz``: its ``logits_key`` array is read, and its ``labels_key``
    array (None: ``labels``) gives the labels when ``labels`` is ``None``. Files are read as
    ``check`` reads them.
    """
    x = file_or_json(logits, "--logits")
    y = None if labels is None else file_or_json(labels, "--labels")
    if isinstance(x, Path):
        logits_source, labels_source = open_arrays(x, y, logits_key, labels_key)
        refuse_unauditable(logits_source)  # inline JSON may hold integers: a file may not
    else:
        logits_source, labels_source = _source(x, "--logits"), _labels_source(y)
    if labels_source is None and isinstance(x, Path) and x.suffix == ".npz":
        raise InputError(
            f"{x} has no array {labels_key or DEFAULT_LABELS_KEY!r} for the labels; pass --labels, "
            "or --labels-key"
        )
    if labels_source is None:
        raise InputError("--logits came without labels; pass --labels too (or a .npz of both)")
    return logits_source.read(), labels_source.read()


def refuse_unauditable(logits: ArraySource, shard: bool = False) -> None:
    """Refuse a file's logits that cannot be audited, from the header: a dtype other than the
    four floats, fewer than two dimensions, no classes, or no rows (a ``shard`` of a dump may be
    empty)."""
    if logits.dtype.name not in FORMATS:
        raise InputError(
            f"{logits.label} has dtype {logits.dtype}; logits must be float16, bfloat16, "
            "float32 or float64 (cast them before saving)"
        )
    if len(logits.shape) < 2 or logits.shape[-1] < 1 or (logits.rows == 0 and not shard):
        raise InputError(
            f"{logits.label} has shape {logits.shape}; logits must be [..., classes] with at "
            "least one row (a 1-D array is one row: save it as x[None])"
        )


def describe_rows(rows: np.ndarray) -> str:
    """``row 3`` / ``rows 0, 1, 2, 3, 4 and 7 more`` for error messages."""
    shown = ", ".join(str(r) for r in rows[:SHOWN_ROWS])
    more = f" and {rows.size - SHOWN_ROWS} more" if rows.size > SHOWN_ROWS else ""
    return f"row{'s' if rows.size > 1 else ''} {shown}{more}"


def _rows(mask: np.ndarray, offset: int | np.ndarray = 0) -> str:
    """The rows of ``mask`` in the file: from ``offset`` on, or the file rows given."""
    if isinstance(offset, np.ndarray):
        return describe_rows(offset[mask])
    return describe_rows(np.flatnonzero(mask) + offset)


BAD_LOGITS = {  # what makes a row of logits unauditable, and the one-line message for it
    "NaN": "logits contain NaN in {rows}; find where the model first produces them",
    "+inf": "logits contain +inf in {rows}; the loss is undefined there (clip or rescale them)",
    "-inf only": (
        "every logit is -inf in {rows}, where softmax is undefined; keep a finite logit in "
        "each row (a row masked whole has no loss: drop it)"
    ),
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


BAD_PROBABILITIES = {  # the same for a file of probabilities (`check --input probabilities`)
    "NaN": "probabilities contain NaN in {rows}; find where the model first produces them",
    "outside [0, 1]": "values outside [0, 1] in {rows} are not probabilities; drop --input "
    "probabilities if the file holds logits",
    "all 0": "every probability is 0 in {rows}; no distribution to score",
}


def bad_probability_rows(p: np.ndarray) -> dict[str, np.ndarray]:
    """Per problem of ``BAD_PROBABILITIES``: a mask of the rows of ``p`` (n, C) that have it (a
    row with a NaN is reported under NaN only)."""
    p = as_float(p)
    with np.errstate(invalid="ignore"):
        top, low = p.max(axis=1), p.min(axis=1)
    nan = np.isnan(top)
    return {"NaN": nan, "outside [0, 1]": ~nan & ((low < 0) | (top > 1)), "all 0": top == 0}


def _multi_label(
    x: np.ndarray, labels: np.ndarray, shape: tuple[int, ...], at: int | np.ndarray
) -> Batch:
    """The batch of a multi-label loss: a label in [0, 1] for every logit, finite logits."""
    if labels.shape != shape:
        raise InputError(
            f"labels of shape {labels.shape} do not fit logits of shape {shape}: a multi-label "
            f"loss takes one label in [0, 1] per logit, of the logits' shape {shape}"
        )
    y = labels.astype(np.float64).reshape(x.shape)
    bad = ~((y >= 0) & (y <= 1))  # NaN too
    if bad.any():
        raise InputError(
            f"labels outside [0, 1] in {_rows(bad.any(axis=1), at)}; a multi-label loss takes "
            "the probability that each label is on"
        )
    infinite = np.isinf(as_float(x)).any(axis=1)
    if infinite.any():
        raise InputError(
            f"infinite logits in {_rows(infinite, at)}; a sigmoid's logit must be finite "
            "(mask a label by leaving it out, not with -inf)"
        )
    return Batch(x, y, None)


def as_array(x: Any) -> np.ndarray:
    """``x`` as a numpy array: a torch tensor (detached, on the CPU; bfloat16 kept as
    ml_dtypes' bfloat16, which numpy lacks), a jax array or anything ``np.asarray`` takes.
    Torch is recognised by its type's module, never imported here."""
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":  # exact: the same 16 bits
            return t.view(sys.modules["torch"].int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(x)


BAD_LOG_PROBABILITIES = {  # `check --input log-probabilities`: log p <= 0, with the logits' checks
    **BAD_LOGITS,
    "above 0": "values above 0 in {rows} are not log-probabilities; drop --input "
    "log-probabilities if the file holds logits",
}


def bad_log_probability_rows(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per problem of ``BAD_LOG_PROBABILITIES``: a mask of the rows of ``x`` that have it."""
    rows = bad_logit_rows(x)
    with np.errstate(invalid="ignore"):
        top = as_float(x).max(axis=1)
    return {**rows, "above 0": (top > 0) & np.isfinite(top)}


def prepare(
    logits: np.ndarray,
    labels: np.ndarray,
    row_offset: int | np.ndarray = 0,
    multi_label: bool = False,
    ignore_class: int | None = None,
) -> Batch:
    """Validate logits ``[..., C]`` and labels (integer classes ``[...]`` or weights ``[..., C]``).

    Leading axes are flattened into rows. Raises ``InputError`` for anything that cannot be
    audited: NaN or ``+inf`` logits, rows with no finite logit, negative or non-finite label
    weights, classes out of range, mismatched shapes. Row numbers in messages start at
    ``row_offset`` (the position of this batch in a file), or are the file rows it gives.
    ``multi_label`` (the sigmoid losses): one label in [0, 1] per logit, the logits' shape,
    and no infinite logit; the batch has no classes. ``ignore_class`` N: class labels may be N
    (any integer, -100 included: rows the loss ignores); only class labels may carry it.
    """
    at = row_offset
    logits = as_array(logits)
    labels = as_array(labels)
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
    if multi_label:
        return _multi_label(x, labels, logits.shape, at)
    if labels.shape == logits.shape:
        if ignore_class is not None:
            raise InputError(
                f"--ignore-class {ignore_class} applies to integer class labels, and these are "
                f"label weights of the logits' shape {logits.shape}; pass the class of each row"
            )
        y = labels.astype(np.float64).reshape(n, c)
        if not np.isfinite(y).all():
            raise InputError(
                f"labels contain NaN or inf in {_rows((~np.isfinite(y)).any(axis=1), at)}; "
                "label weights must be finite"
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
        fractional = ~(np.isfinite(flat) & (flat == np.round(flat)))
        if fractional.any():
            raise InputError(
                f"class labels must be whole numbers, not in {_rows(fractional, at)}; pass "
                f"one-hot or soft labels with the logits' shape {logits.shape} for fractional "
                "weights"
            )
        bad = (flat < 0) | (flat >= c)
        if ignore_class is not None:
            bad &= flat != ignore_class
        if bad.any():
            raise InputError(
                f"class labels out of range in {_rows(bad, at)}: they must lie in [0, {c - 1}] "
                f"for {c} classes (compare and check take --ignore-class N for rows a loss "
                "ignores)"
            )
        return Batch(x, None, flat.astype(np.int64))
    raise InputError(
        f"labels of shape {labels.shape} do not fit logits of shape {logits.shape}: pass class "
        f"indices of shape {logits.shape[:-1]} or label weights of shape {logits.shape}"
    )


# --- reading arrays: `check` streams them in chunks, `compare` reads them whole ---------------

# Numbers read at a time: a chunk of `check` (~50 MB of work arrays: float64 gradients), a whole
# array of `compare`, a Fortran-ordered file of more than two axes.
CHUNK_ENTRIES = 1 << 21
# Side of the square tiles a 2-D Fortran-ordered file is transposed in: 1448^2 ~ CHUNK_ENTRIES.
TRANSPOSE_TILE = math.isqrt(CHUNK_ENTRIES)
_MAGIC = b"\x93NUMPY"
_VERSIONS = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}
_MAX_HEADER = 10_000  # bytes of header text: np.load's own limit (max_header_size)
_MAX_DIMS = 64  # numpy's NPY_MAXDIMS
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# What a damaged file or zip member raises while it is opened or read: bz2 raises OSError, zipfile
# NotImplementedError for a zip version it does not know and UnicodeDecodeError for a member name
# flagged as UTF-8 that is not.
_READ_ERRORS = (
    OSError,
    EOFError,
    NotImplementedError,
    UnicodeDecodeError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
)
_NOT_FILES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass(frozen=True)
class ArraySource:
    """An array in a ``.npy`` file or ``.npz`` member (or in memory), read in chunks of rows.

    Chunks are read sequentially from the file (or the zip member's stream), never through a
    memory map, so the working set is one chunk however large the file is. The header has been
    checked against the file's size, so a read that comes up short means the file changed or
    its zip member lied about its size; either is reported as truncation.
    """

    path: Path | None  # None for an array in memory (``data``)
    member: str | None  # the .npz member, or None for a .npy file
    shape: tuple[int, ...]
    dtype: np.dtype
    label: str  # how to name it in messages, e.g. "logits.npz[logits]"
    data: np.ndarray | None = None  # the array itself, when it is in memory
    offset: int = 0  # bytes of .npy header before the data
    fortran: bool = False  # data stored column-major (the C-order bytes of the transpose)

    @classmethod
    def of(cls, array: np.ndarray, label: str) -> ArraySource:
        """An array already in memory (inline JSON, or an array passed to the Python API)."""
        return cls(None, None, array.shape, array.dtype, label, array)

    @property
    def size(self) -> int:
        """Numbers in the array (a Python int: no overflow, whatever the header claims)."""
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        """Rows of logits: every axis but the last (classes) flattened."""
        return math.prod(self.shape[:-1])

    def chunks(self, rows: int, per_row: int) -> Iterator[np.ndarray]:
        """Yield consecutive blocks of ``rows`` rows, each of ``per_row`` items, flattened."""
        if self.data is None and not self.fortran:
            yield from self._stream_rows(rows, per_row)
            return
        if self.data is None and len(self.shape) == 2:
            yield from self._transposed_rows(rows)
            return
        flat = (self.data if self.data is not None else self._whole()).reshape(-1, per_row)
        yield from (flat[start : start + rows] for start in range(0, flat.shape[0], rows))

    def read(self) -> np.ndarray:
        """The whole array, in one piece: at most ``CHUNK_ENTRIES`` numbers from a file."""
        if self.data is not None:
            return self.data
        if self.size == 0:
            raise InputError(
                f"{self.label} has shape {self.shape} and holds no numbers; save a non-empty array"
            )
        if self.size > CHUNK_ENTRIES:
            raise InputError(
                f"{self.label} holds {self.size} numbers, more than the {CHUNK_ENTRIES} that "
                "compare reads at once; audit large files with `xentaudit check FILE`, which "
                "streams them"
            )
        return self._whole()

    def _whole(self) -> np.ndarray:
        with self._data() as read:
            array = np.frombuffer(read(self.size * self.dtype.itemsize), dtype=self.dtype)
        # A Fortran-ordered file holds the transpose's bytes in C order.
        return array.reshape(self.shape[::-1]).T if self.fortran else array.reshape(self.shape)

    def _transposed_rows(self, rows: int) -> Iterator[np.ndarray]:
        """The rows of a 2-D Fortran-ordered array, through an external transpose.

        The data (the C-order bytes of the (C, n) transpose) is copied to an unnamed temporary
        file, transposed tile by tile (at most ``TRANSPOSE_TILE`` squared numbers in memory:
        one read per tile row, one write per tile column) into a second one, which is then
        read row by row like a C-ordered file. Memory stays bounded by a tile and a chunk
        whatever the file's size; the disk holds two copies while it runs, and unnamed files
        vanish however the process ends.
        """
        n, c = self.shape
        item = self.dtype.itemsize
        with tempfile.TemporaryFile() as columns, tempfile.TemporaryFile() as transposed:
            with self._data() as read:
                for start in range(0, n * c, CHUNK_ENTRIES):
                    columns.write(read(min(CHUNK_ENTRIES, n * c - start) * item))
            columns.flush()
            transposed.truncate(n * c * item)
            tile = TRANSPOSE_TILE
            for j0 in range(0, c, tile):
                j1 = min(c, j0 + tile)
                for i0 in range(0, n, tile):
                    i1 = min(n, i0 + tile)
                    block = np.empty((j1 - j0, i1 - i0), self.dtype)
                    for j in range(j0, j1):  # column j of rows i0..i1: contiguous in the file
                        data = os.pread(columns.fileno(), (i1 - i0) * item, (j * n + i0) * item)
                        block[j - j0] = np.frombuffer(data, self.dtype)
                    for i, row in enumerate(block.T, start=i0):  # row i of columns j0..j1
                        os.pwrite(transposed.fileno(), row.tobytes(), (i * c + j0) * item)
            transposed.seek(0)
            for start in range(0, n, rows):
                count = min(rows, n - start)
                data = transposed.read(count * c * item)
                yield np.frombuffer(data, self.dtype).reshape(count, c)

    def _stream_rows(self, rows: int, per_row: int) -> Iterator[np.ndarray]:
        with self._data() as read:
            left = self.size // per_row
            while left:
                n = min(rows, left)
                data = read(n * per_row * self.dtype.itemsize)
                yield np.frombuffer(data, dtype=self.dtype).reshape(n, per_row)
                left -= n

    @contextlib.contextmanager
    def _data(self) -> Iterator[Callable[[int], bytes]]:
        """A function reading the next ``n`` bytes of the data (the header skipped), or raising
        ``InputError`` if the file ends first."""
        assert self.path is not None
        expected = self.offset + self.size * self.dtype.itemsize
        with _stream(self.path, self.member, self.label) as (stream, _):
            at = 0

            def read(n: int) -> bytes:
                nonlocal at
                data = _read_exact(stream, n, self.label, expected, at)
                at += n
                return data

            read(self.offset)
            yield read


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


def regular_file(
    path: Path,
    option: str | None,
    wanted: str = "a .npy or .npz file",
    error: type[XentauditError] = InputError,
) -> None:
    """Refuse anything but a regular file (or a symlink to one), from its ``stat``: it is never
    opened, so a FIFO cannot block and a device cannot stream forever. ``wanted`` says what to
    pass instead; ``error`` is the exception raised (exit code 2 either way)."""
    prefix = f"{option}: " if option else ""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise error(
                f"{prefix}{path} is a dangling link (to {os.readlink(path)}), not a file; "
                f"pass {wanted}"
            ) from None
        raise error(f"{prefix}no such file: {path}; check the path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{prefix}{path} is a symlink loop, not a file; pass {wanted}") from None
        raise error(f"{prefix}cannot read {path} ({exc.strerror}); check the path") from None
    for test, kind in _NOT_FILES:
        if test(mode):
            raise error(f"{prefix}{path} is {kind}, not a file; pass {wanted}")
    if not stat.S_ISREG(mode):
        raise error(f"{prefix}{path} is not a regular file; pass {wanted}")


@contextlib.contextmanager
def _stream(path: Path, member: str | None, label: str) -> Iterator[tuple[IO[bytes], int]]:
    """The bytes of a .npy file, or of one member of a .npz (zip) file, from the start, and
    their size. A damaged file or member (bad CRC, broken compressed stream), found when it is
    opened or at any read, raises ``InputError``."""
    try:
        # Non-blocking: a file swapped for a FIFO since its stat reads as empty, never blocks.
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as file:
            if member is None:
                yield file, os.fstat(file.fileno()).st_size
                return
            with zipfile.ZipFile(file) as archive:
                info = archive.getinfo(member)
                if info.flag_bits & 0x1:
                    raise InputError(
                        f"{label} is encrypted; save the arrays unencrypted (np.savez)"
                    )
                if info.compress_type not in _ZIP_METHODS:
                    raise InputError(
                        f"{label} uses zip compression method {info.compress_type}, which "
                        "cannot be read; save it with np.savez or np.savez_compressed"
                    )
                with archive.open(info) as stream:
                    yield stream, info.file_size
    except _READ_ERRORS as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(
            f"{label} is unreadable ({reason or type(exc).__name__}); write the file again"
        ) from None


def _read_exact(stream: IO[bytes], n: int, label: str, expected: int, at: int) -> bytes:
    """``n`` bytes from ``stream`` (at byte ``at`` of the ``expected`` the header promises)."""
    data = stream.read(n)
    if len(data) < n:
        raise InputError(
            f"{label} is truncated: expected {expected} bytes, found {at + len(data)}; "
            "write the file again"
        )
    return data


def _bad_header(label: str, what: str) -> InputError:
    return InputError(f"{label} has {what}; write the file again with np.save")


def _read_header(stream: IO[bytes], size: int, label: str) -> tuple[dict, int]:
    """The header dictionary of a .npy file of ``size`` bytes, and the header's length.

    Parsed here rather than by numpy, which reads a header length of up to 4 GiB before
    checking it: the length is checked against the file's size first.
    """
    magic = stream.read(8)
    if len(magic) < 8 or not magic.startswith(_MAGIC):
        raise InputError(
            f"{label} is not a readable .npy array (it lacks the .npy magic bytes); save it "
            "with np.save"
        )
    version = (magic[6], magic[7])
    if version not in _VERSIONS:
        raise _bad_header(label, f".npy format version {version[0]}.{version[1]}, not 1, 2 or 3")
    length_format, encoding = _VERSIONS[version]
    start = 8 + struct.calcsize(length_format)
    (length,) = struct.unpack(length_format, _read_exact(stream, start - 8, label, start, 8))
    if length > _MAX_HEADER:
        raise _bad_header(label, f"a header of {length} bytes, more than np.load's {_MAX_HEADER}")
    if start + length > size:
        raise InputError(
            f"{label} is truncated: expected at least {start + length} bytes, "
            f"found {size}; write the file again"
        )
    text = _read_exact(stream, length, label, start + length, start)
    try:
        header = ast.literal_eval(text.decode(encoding))
    except (UnicodeDecodeError, SyntaxError, ValueError, TypeError, RecursionError):
        raise _bad_header(label, "a header that is not a Python literal") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise _bad_header(label, "a header without exactly descr, fortran_order and shape")
    return header, start + length


def _header_fields(header: dict, label: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of a header, each checked before anything is allocated."""
    shape, fortran, descr = header["shape"], header["fortran_order"], header["descr"]
    if (
        not isinstance(shape, tuple)
        or len(shape) > _MAX_DIMS
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise _bad_header(
            label, f"an invalid shape {shape!r} (up to {_MAX_DIMS} whole numbers >= 0)"
        )
    if not isinstance(fortran, bool):
        raise _bad_header(label, f"fortran_order {fortran!r}, not True or False")
    try:
        dtype = np.dtype(descr) if isinstance(descr, str) else None
    except (TypeError, ValueError):
        raise _bad_header(label, f"the unknown dtype {descr!r}") from None
    if dtype is not None and dtype.hasobject:
        raise InputError(
            f"{label} holds Python objects, which xentaudit never unpickles; save a numeric "
            "array (e.g. np.save(path, logits.astype(np.float32)))"
        )
    if (
        dtype is not None
        and dtype.kind == "V"
        and dtype.itemsize == 2
        and not dtype.names
        and dtype.subdtype is None
    ):
        # ml_dtypes (and so JAX) write bfloat16 arrays with the anonymous 2-byte dtype "V2".
        return shape, fortran, np.dtype(ml_dtypes.bfloat16)
    if dtype is None or dtype.kind not in "biuf" or dtype.subdtype is not None:
        raise InputError(
            f"{label} has dtype {descr!r}, which xentaudit does not read; save logits as "
            "float16, bfloat16, float32 or float64, and labels as integers or floats"
        )
    return shape, fortran, dtype


def _header(path: Path, member: str | None, label: str) -> ArraySource:
    """The array in ``path`` (or its zip ``member``), its header checked against its size."""
    with _stream(path, member, label) as (stream, size):
        header, offset = _read_header(stream, size, label)
    shape, fortran, dtype = _header_fields(header, label)
    source = ArraySource(
        path, member, shape, dtype, label, offset=offset, fortran=fortran and len(shape) > 1
    )
    expected = offset + source.size * dtype.itemsize
    if size < expected:
        raise InputError(
            f"{label} is truncated: expected {expected} bytes, found {size}; write the file again"
        )
    if size > expected:
        raise InputError(
            f"{label} is longer than its header says: expected {expected} bytes, found {size}; "
            "write the file again"
        )
    if source.fortran and len(shape) > 2 and source.size > CHUNK_ENTRIES:
        raise InputError(
            f"{label} is stored in Fortran order with {len(shape)} axes and holds "
            f"{source.size} numbers; such files of at most {CHUNK_ENTRIES} numbers are read "
            "(2-D ones of any size): save np.ascontiguousarray(x)"
        )
    return source


def _source(array: Path | np.ndarray, option: str) -> ArraySource:
    """A ``.npy`` file, or an array in memory, given as ``option``."""
    if isinstance(array, np.ndarray):
        return ArraySource.of(array, option)
    regular_file(array, option)
    return _header(array, None, str(array))


def _labels(source: ArraySource) -> ArraySource:
    """``source``, once its dtype is known to hold labels (read nothing before that)."""
    if source.dtype.kind not in "biuf":
        raise InputError(
            f"{source.label} has dtype {source.dtype}; labels must be integer classes or "
            "weights (bool, integers or floats): save them as np.int64 or np.float32"
        )
    return source


def _labels_source(labels: Path | np.ndarray | None) -> ArraySource | None:
    return None if labels is None else _labels(_source(labels, "--labels"))


def open_arrays(
    path: Path, labels: Path | np.ndarray | None, logits_key: str, labels_key: str | None
) -> tuple[ArraySource, ArraySource | None]:
    """The logits (and labels, if any) of ``path`` (``.npy`` or ``.npz``), plus ``labels`` (a
    ``.npy`` file, or an array in memory), which take the place of the ``.npz``'s own: its
    ``labels_key`` array, which must be there, or with None its ``labels`` array if it has one.

    Only headers are read: every shape, dtype and size is checked before any data is."""
    regular_file(path, None)
    if labels_key is not None and (labels is not None or path.suffix != ".npz"):
        # named on purpose, and no array it could name: a typo must not audit without labels
        where = "--labels gives the labels" if labels is not None else f"{path} is no .npz"
        raise InputError(f"--labels-key {labels_key!r} names no array: {where}; drop it")
    label_source = _labels_source(labels)
    if path.suffix != ".npz":
        return _header(path, None, str(path)), label_source
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except _READ_ERRORS as exc:
        raise InputError(
            f"{path} is not a readable .npz file ({exc}); write it again with np.savez"
        ) from None
    # Names come from the file: one that is not printable (a newline...) is shown escaped.
    keys = sorted(
        k if k.isprintable() else ascii(k) for k in (m.removesuffix(".npy") for m in members)
    )
    if f"{logits_key}.npy" not in members:
        raise InputError(
            f"{path} has no array {logits_key!r} (it has {', '.join(keys) or 'none'}); "
            "pass --logits-key"
        )
    logits = _header(path, f"{logits_key}.npy", f"{path}[{logits_key}]")
    key = DEFAULT_LABELS_KEY if labels_key is None else labels_key
    if label_source is None and f"{key}.npy" in members:
        label_source = _labels(_header(path, f"{key}.npy", f"{path}[{key}]"))
    elif label_source is None and labels_key is not None:
        # a key named on purpose, "labels" too: a typo must not audit the file without labels
        raise InputError(
            f"{path} has no array {labels_key!r} for the labels (it has {', '.join(keys)}); "
            "pass --labels-key with one of them, or --labels"
        )
    return logits, label_source
