"""CSV of `check`'s flagged rows (``--flagged-rows``): a header, then one line per row and result.

Columns are ``FlaggedRow``'s fields, named as in JSON; flags are joined by spaces (no flag name
holds one); floats are written as ``repr`` writes them (round-trip precision, non-finite values
``inf``, ``-inf``, ``nan`` as in JSON); an ``eps`` of None is an empty field.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import fields

from xentaudit.results import FlaggedRow

COLUMNS = tuple(f.name for f in fields(FlaggedRow))


def _line(values: Iterable[object]) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(values)
    return text.getvalue()


def _cell(value: object) -> object:
    if isinstance(value, tuple):
        return " ".join(value)
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else value


def header() -> str:
    """The header line."""
    return _line(COLUMNS)


def line(row: FlaggedRow) -> str:
    """One flagged row as a CSV line (quoted where a name holds a comma or a quote)."""
    return _line(_cell(getattr(row, column)) for column in COLUMNS)
