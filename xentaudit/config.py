"""``[tool.xentaudit]`` in ``pyproject.toml``: defaults for `check`; the command line wins.

[tool.xentaudit]
impls = ["tf_softmax_xent", "keras_cce_logits"]
dtypes = ["float32", "bfloat16"]
fail-on = ["nan", "inf", "divergent"]
rtol = 1e-5
eps = [1e-7, 1e-12]   # or one number
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from xentaudit.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KEYS = {  # key -> (type check, what it must be)
    "impls": (lambda v: _strings(v), "a list of implementation names"),
    "dtypes": (lambda v: _strings(v), "a list of dtype names"),
    "fail-on": (lambda v: _strings(v), "a list of flag names"),
    "rtol": (lambda v: _number(v), "a number"),
    "eps": (lambda v: _number(v) or _numbers(v), "a number or a non-empty list of numbers"),
}


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_number(v) for v in value)


def find(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` from ``start`` upwards that has ``[tool.xentaudit]``."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and "xentaudit" in _read(candidate).get("tool", {}):
            return candidate
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def load(path: Path | None, start: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """The ``[tool.xentaudit]`` table of ``path`` (or of the nearest one found from ``start``)."""
    if path is not None and not path.is_file():
        raise ConfigError(f"--config: no such file: {path}")
    source = path if path is not None else find(start or Path.cwd())
    if source is None:
        return {}, None
    table = _read(source).get("tool", {}).get("xentaudit", {})
    for key, value in table.items():
        if key not in KEYS:
            raise ConfigError(
                f"{source}: unknown key {key!r} in [tool.xentaudit]; known: {', '.join(KEYS)}"
            )
        valid, what = KEYS[key]
        if not valid(value):
            raise ConfigError(f"{source}: [tool.xentaudit] {key} must be {what}, got {value!r}")
    return table, source
