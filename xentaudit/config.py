"""``[tool.xentaudit]`` in ``pyproject.toml``: defaults for `check`; the command line wins.

[tool.xentaudit]
impls = ["tf_softmax_xent", "keras_cce_logits"]
dtypes = ["float32", "bfloat16"]
policies = ["float32", "mixed_bfloat16"]
fail-on = ["nan", "inf", "divergent"]   # [] for no flag
rtol = 1e-5
eps = [1e-7, 1e-12]   # or one number

A configuration file is data, unless it is trusted:

- Search: the nearest ``pyproject.toml`` with a ``[tool.xentaudit]`` table, from the working
  directory up to the project root, the first directory holding ``.git`` or ``.hg`` (as black
  does); a file above the root is never read. Without a root, the search goes up to ``/``.
- Ownership (as git since CVE-2022-24765): a file is used only if it and the directory holding
  it are owned by you or by root (who can run code as you anyway), the file is writable by
  neither group nor others, and the directory is not either unless it is sticky (as ``/tmp``:
  then nobody else can replace your file). A found file that fails this is skipped, with a
  warning naming it; a file named with ``--config`` that fails it is an error: you asked for it,
  and running without it would silently change the gate.
- Code: an ``impls`` entry ``path/to/file.py:fn`` runs that file. It is honoured only from a
  file you named with ``--config`` (naming it is the act of trust: a found file may come with
  an untrusted checkout, whose files you own), and only for a regular file inside that file's
  directory, symlinks resolved, which passes the ownership rule itself. Its path is relative to
  the configuration file's directory, and ``load`` makes it absolute. ``module:fn`` entries are
  refused in any configuration: what they import depends on ``sys.path`` (the working
  directory, ``PYTHONPATH``, installed packages), which no check of the file can confine; pass
  them with ``--impl``.
- Malformed files, keys or values: one ``ConfigError`` line naming the file and the key.
"""

from __future__ import annotations

import math
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xentaudit.dtypes import FORMATS
from xentaudit.errors import ConfigError
from xentaudit.flags import FLAGS
from xentaudit.impls import BACKENDS, BY_OPTION, POLICIES, REGISTRY, names_a_file, user_backend
from xentaudit.io import regular_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT_MARKERS = (".git", ".hg")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _names(value: Any) -> bool:
    return _strings(value) and bool(value)


def _number(value: Any, low: float, high: float) -> bool:
    """A number (not a bool) in the open interval (low, high); huge integers are not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return low < float(value) < high
    except OverflowError:
        return False


def _eps(value: Any) -> bool:
    return _number(value, 0, 0.5)


KEYS = {  # key -> (check of the value, what it must be)
    "impls": (_names, "a non-empty list of implementation names"),
    "dtypes": (_names, "a non-empty list of dtype names"),
    "policies": (_names, "a non-empty list of Keras dtype policy names"),
    "backends": (_names, "a non-empty list of backend names (tf, torch, jax)"),
    "fail-on": (_strings, "a list of flag names ([] for none)"),
    "rtol": (lambda v: _number(v, 0, math.inf), "a number, finite and > 0"),
    "eps": (
        lambda v: _eps(v) or (isinstance(v, list) and bool(v) and all(_eps(e) for e in v)),
        "a number or a non-empty list of numbers, each in (0, 0.5)",
    ),
    # `xentaudit lint`'s own table, [tool.xentaudit.lint]: its select and ignore lists are
    # checked by xentaudit.lint.settings; the other commands do not read it
    "lint": (lambda v: isinstance(v, dict), "a table ([tool.xentaudit.lint]) of select and ignore"),
}
CHOICES = {  # key -> the names its entries may use (comma lists allowed, as on the command line)
    "impls": (*REGISTRY, "all"),
    "dtypes": (*FORMATS, "all"),
    "policies": (*POLICIES, "all"),
    "backends": (*BY_OPTION, "all"),
    "fail-on": (*FLAGS, "none", "all"),
}


@dataclass(frozen=True)
class Config:
    """The configuration a command uses.

    ``table``: the validated ``[tool.xentaudit]`` table (``{}`` for none), its ``file.py:fn``
    entries made absolute; ``path``: the file it came from (symlinks resolved), or None;
    ``warnings``: one line each, for the caller to show (files skipped, and why).
    """

    table: dict[str, Any]
    path: Path | None
    warnings: tuple[str, ...] = ()


def load(path: Path | None = None, start: Path | None = None) -> Config:
    """The configuration in ``path`` (``--config``), or the one found from ``start`` upwards
    (default: the working directory) to the project root, under the rules of this module."""
    if path is not None:
        return _explicit(path)
    return _search((start or Path.cwd()).resolve())


def _explicit(path: Path) -> Config:
    source = _regular(path, "--config")
    problem = _distrust(source)
    if problem is not None:
        raise ConfigError(f"--config {source}: refused, {problem}")
    table = _section(source)
    if table is None:
        return Config({}, source, (f"{source} has no [tool.xentaudit] table; nothing is set",))
    return Config(_validate(table, source, trusted=True), source)


def _search(start: Path) -> Config:
    warnings = []
    for folder in _up_to_root(start):
        candidate = folder / "pyproject.toml"
        if not candidate.is_file():
            continue
        source = _regular(candidate, "configuration")
        problem = _distrust(source)
        try:
            table = _section(source)
        except ConfigError:
            if problem is None:
                raise
            continue  # not ours to judge: someone else's broken file is skipped
        if table is None:
            continue
        if problem is not None:
            warnings.append(f"ignoring {source}: {problem}")
            continue
        return Config(_validate(table, source, trusted=False), source, tuple(warnings))
    return Config({}, None, tuple(warnings))


def _up_to_root(start: Path) -> Iterator[Path]:
    """``start`` and its parents, up to the first holding ``.git`` or ``.hg`` (or ``/``)."""
    for folder in (start, *start.parents):
        yield folder
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return


def _regular(path: Path, what: str) -> Path:
    """``path`` with symlinks resolved, if it names a regular file; else a ConfigError."""
    regular_file(path, what, "a regular file", ConfigError)  # names FIFOs, directories, ...
    try:
        real = path.resolve(strict=True)
        mode = real.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file: {path}") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ConfigError(f"{what}: cannot open {path}: {exc}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what}: {path} is not a regular file")
    return real


def _distrust(path: Path) -> str | None:
    """Why the file ``path`` may be changed by someone other than you or root; None if not."""
    if not hasattr(os, "geteuid"):  # pragma: no cover - Windows: no POSIX owners or modes
        return None
    me = os.geteuid()
    folder = path.parent
    file_stat, folder_stat = path.stat(), folder.stat()
    if file_stat.st_uid not in (me, 0):
        return f"it is owned by uid {file_stat.st_uid}, not by you (uid {me}) or root"
    if file_stat.st_mode & 0o022:
        mode = stat.S_IMODE(file_stat.st_mode)
        return f"it is writable by group or others (mode {mode:o}); run chmod go-w {path}"
    if folder_stat.st_uid not in (me, 0):
        return f"its directory {folder} is owned by uid {folder_stat.st_uid}, not by you or root"
    if folder_stat.st_mode & 0o022 and not folder_stat.st_mode & stat.S_ISVTX:
        mode = stat.S_IMODE(folder_stat.st_mode)
        return f"its directory {folder} is writable by group or others (mode {mode:o})"
    return None


def _section(path: Path) -> dict[str, Any] | None:
    """The ``[tool.xentaudit]`` table of ``path``, None if it has none; malformed: ConfigError."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read {path}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start})"
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot read {path}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses into nested arrays and tables
        raise ConfigError(f"cannot read {path}: invalid TOML: nested too deeply") from None
    tool = document.get("tool", {})
    if not isinstance(tool, dict):
        raise ConfigError(f"{path}: tool must be a table ([tool]), got {tool!r}")
    if "xentaudit" not in tool:
        return None
    table = tool["xentaudit"]
    if not isinstance(table, dict):
        raise ConfigError(
            f"{path}: tool.xentaudit must be a table ([tool.xentaudit]), got {table!r}"
        )
    return table


def _validate(table: dict[str, Any], source: Path, trusted: bool) -> dict[str, Any]:
    """``table`` checked key by key, with its ``file.py:fn`` entries made absolute."""
    for key, value in table.items():
        if key not in KEYS:
            raise ConfigError(
                f"{source}: unknown key {key!r} in [tool.xentaudit]; known: {', '.join(KEYS)}"
            )
        valid, what = KEYS[key]
        if not valid(value):
            raise ConfigError(f"{source}: [tool.xentaudit] {key} must be {what}, got {value!r}")
        for entry in value if key in CHOICES else ():
            if key == "impls" and ":" in entry:
                continue
            for part in (p.strip() for p in entry.split(",")):
                if part not in CHOICES[key]:
                    raise ConfigError(
                        f"{source}: [tool.xentaudit] {key} has unknown name {part!r}; choose "
                        f"from {', '.join(CHOICES[key])}"
                    )
    if "impls" not in table:
        return dict(table)
    impls = [_code(e, source, trusted) if ":" in e else e for e in table["impls"]]
    return {**table, "impls": impls}


def _code(entry: str, source: Path, trusted: bool) -> str:
    """An ``impls`` entry that loads code, checked, with its file's path made absolute."""
    where = f"{source}: [tool.xentaudit] impls entry {entry!r}"
    backend, located = user_backend(entry)
    prefix = "" if located == entry else f"{BACKENDS[backend].option}:"
    target, _, function = located.rpartition(":")
    if not function.isidentifier():
        raise ConfigError(f"{where}: expected [tf:|torch:|jax:]path/to/file.py:function")
    if not names_a_file(target):
        raise ConfigError(
            f"{where} imports a module, which a configuration may not (what it imports depends "
            "on sys.path); pass it with --impl, or name a file.py beside the configuration"
        )
    if not trusted:
        raise ConfigError(
            f"{where} runs code, which a configuration found by searching may not; trust this "
            f"file with --config {source}, or pass it with --impl"
        )
    folder = source.parent
    code = _regular(folder / target, where)
    if not code.is_relative_to(folder):
        raise ConfigError(f"{where} is outside {folder} (symlinks resolved: {code})")
    problem = _distrust(code)
    if problem is not None:
        raise ConfigError(f"{where}: refused, {problem}")
    return f"{prefix}{code}:{function}"
