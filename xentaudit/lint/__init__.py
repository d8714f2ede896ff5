"""`xentaudit lint`: unstable cross-entropy code found in Python source and notebooks, by
parsing it (never running it, never importing a framework).

The library API: ``lint_paths`` and ``lint_source`` return frozen results; ``xentaudit.lint.fix``
(LibCST, imported only to fix) rewrites what can be rewritten; ``formats`` renders;
``explain`` runs the engine on a rule's implementations.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from xentaudit.errors import ConfigError, InputError
from xentaudit.lint.detect import Finding, detect
from xentaudit.lint.rules import RULES, enabled

__all__ = ["Finding", "LintResult", "ParseError", "lint_paths", "lint_source", "settings"]

SUFFIXES = (".py", ".ipynb")
# Folders a directory walk never enters: environments, caches and other tools' trees.
SKIPPED = {"__pycache__", "node_modules", "site-packages", "venv", "build", "dist"}
NOQA = re.compile(r"#\s*noqa(?::\s*(?P<codes>[A-Z]+[0-9]+(?:[\s,]+[A-Z]+[0-9]+)*))?", re.I)
LINE_BREAK = re.compile(r"\r\n|\r|\n")
# IPython's own syntax, not Python, blanked: magics (%time, x = %env), shell escapes (!ls,
# x = !ls) and help (?np.log, np.log?)
MAGIC = re.compile(r"\s*([%!?]|[\w.]+\s*=\s*[%!])|.*\?\s*$")


@dataclass(frozen=True)
class ParseError:
    """A file that is not valid Python, not UTF-8, not a notebook, or nested too deeply to
    lint: reported as XA000."""

    path: str
    line: int
    col: int
    message: str
    cell: int | None = None


@dataclass(frozen=True)
class LintResult:
    """What one lint run found: findings not suppressed by ``# noqa``, in path and line order,
    the files that could not be parsed, and counts."""

    findings: tuple[Finding, ...]
    errors: tuple[ParseError, ...]
    files: int
    suppressed: int

    @property
    def exit_code(self) -> int:
        """2 if a file could not be parsed (an input error), else 1 if anything was found."""
        if self.errors:
            return 2
        return 1 if self.findings else 0


def settings(
    table: dict[str, object], source: Path | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``select`` and ``ignore`` lists of a ``[tool.xentaudit.lint]`` table, checked."""
    where = f"{source}: [tool.xentaudit.lint]"
    unknown = set(table) - {"select", "ignore"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; known: select, ignore")
    lists = []
    for key in ("select", "ignore"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} {key} must be a list of rule codes, got {value!r}")
        try:
            enabled(value)
        except ValueError as exc:
            raise ConfigError(f"{where} {key}: {exc}") from None
        lists.append(tuple(value))
    return lists[0], lists[1]


def _characters(line: str, offset: int) -> int:
    """A byte offset into the UTF-8 ``line`` (what ``ast`` gives) as a character count."""
    return offset if line.isascii() else len(line.encode()[:offset].decode(errors="ignore"))


def _noqa(comment: str) -> set[str] | None:
    """The codes a comment suppresses (the empty set: all), None if it is no noqa comment."""
    match = NOQA.search(comment)
    if match is None:
        return None
    codes = match.group("codes")
    return set(re.split(r"[\s,]+", codes.upper())) if codes else set()


def _comments(source: str) -> dict[int, set[str]]:
    """Line -> the codes its ``# noqa`` comment suppresses. Comments are found with the
    tokenizer, so a ``# noqa`` inside a string is not one."""
    found = {}
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    for token in tokens:
        if token.type == tokenize.COMMENT:
            codes = _noqa(token.string)
            if codes is not None:
                found[token.start[0]] = codes
    return found


def lint_source(
    source: str, path: str = "<string>", rules: Iterable[str] | None = None
) -> tuple[list[Finding], int]:
    """The findings of ``rules`` (default all) in Python ``source``, and how many ``# noqa``
    suppressed. A syntax error is raised as ``SyntaxError``."""
    tree = ast.parse(source, filename=path)
    wanted = set(RULES if rules is None else rules)
    found = [f for f in detect(tree, path) if f.code in wanted]
    if not found:
        return [], 0
    lines = LINE_BREAK.split(source)  # the line breaks ast counts (splitlines has more)
    noqa = _comments(source) if "noqa" in source.lower() else {}
    kept, suppressed = [], 0
    for f in found:
        if any(
            n in noqa and (not noqa[n] or f.code in noqa[n]) for n in range(f.line, f.end_line + 1)
        ):
            suppressed += 1
            continue
        kept.append(
            replace(
                f,
                col=_characters(lines[f.line - 1], f.col) + 1,
                end_col=_characters(lines[f.end_line - 1], f.end_col) + 1,
            )
        )
    return kept, suppressed


def notebook_source(text: str) -> tuple[str, list[tuple[int, int]]]:
    """A notebook's code cells as one Python source (magics blanked, so line numbers hold)
    and, per cell, (cell number counting every cell from 1, its first line in the source).
    Text that is not a notebook is a ValueError."""
    try:
        cells = json.loads(text)["cells"]
        sources = [(n, c["source"]) for n, c in enumerate(cells, 1) if c.get("cell_type") == "code"]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ValueError("not a Jupyter notebook (no JSON list of cells)") from None
    lines: list[str] = []
    starts = []
    for number, cell in sources:
        # nbformat's "multiline_string": one string, or a list of strings (lines) to join
        if isinstance(cell, list) and all(isinstance(line, str) for line in cell):
            body = "".join(cell)
        elif isinstance(cell, str):
            body = cell
        else:
            raise ValueError(
                f"not a Jupyter notebook (cell {number}'s source is not a string or a list of "
                "strings)"
            )
        cell_lines = body.splitlines()
        if cell_lines and cell_lines[0].startswith("%%"):  # a cell magic: not Python
            cell_lines = [""] * len(cell_lines)
        starts.append((number, len(lines) + 1))
        lines.extend("" if MAGIC.match(line) else line for line in cell_lines)
    return "\n".join(lines) + "\n", starts


def _in_cell(line: int, starts: list[tuple[int, int]]) -> tuple[int, int]:
    number, first = next((n, s) for n, s in reversed(starts) if s <= line)
    return number, line - first + 1


def source_encoding(raw: bytes) -> str:
    """The encoding Python reads a source file's ``raw`` bytes in (PEP 263): its coding line's,
    else UTF-8, "utf-8-sig" behind a byte-order mark. An unknown coding, or one a byte-order
    mark contradicts, is a SyntaxError, as for Python."""
    try:
        return tokenize.detect_encoding(io.BytesIO(raw).readline)[0]
    except SyntaxError as exc:
        if exc.msg.startswith("invalid or missing encoding declaration"):
            return "utf-8"  # no coding line and bytes that are not UTF-8: decoding says where
        raise


def _lint_file(path: Path, rules: tuple[str, ...]) -> tuple[list[Finding], int, ParseError | None]:
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror}") from None
    encoding = "utf-8"  # a notebook is JSON
    try:
        if path.suffix != ".ipynb":
            encoding = source_encoding(raw)
        text = raw.decode(encoding)
    except SyntaxError as exc:
        return [], 0, ParseError(name, 1, 1, f"syntax error: {exc.msg}")
    except UnicodeDecodeError as exc:
        shown = "UTF-8" if encoding.startswith("utf-8") else encoding
        return [], 0, ParseError(name, 1, 1, f"not {shown} (byte at offset {exc.start})")
    starts = None
    if path.suffix == ".ipynb":
        try:
            text, starts = notebook_source(text)
        except ValueError as exc:
            return [], 0, ParseError(name, 1, 1, str(exc))
    try:
        found, suppressed = lint_source(text, name, rules)
    except (RecursionError, MemoryError):  # ast.parse raises MemoryError on deep nesting too
        return [], 0, ParseError(name, 1, 1, "nested too deeply to lint")
    except SyntaxError as exc:
        line, col = exc.lineno or 1, exc.offset or 1
        cell = None
        if starts:
            cell, line = _in_cell(line, starts)
        return [], 0, ParseError(name, line, col, f"syntax error: {exc.msg}", cell)
    if starts:
        found = [_cell_finding(f, starts) for f in found]
    return found, suppressed, None


def _cell_finding(f: Finding, starts: list[tuple[int, int]]) -> Finding:
    """``f`` located in its cell; notebooks are never rewritten, so it has no fix."""
    cell, line = _in_cell(f.line, starts)
    return replace(f, cell=cell, line=line, end_line=line + f.end_line - f.line, fix=None)


def python_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """The files named and the ``.py`` and ``.ipynb`` files under the folders named, sorted
    within each folder; hidden folders and ``SKIPPED`` are not entered."""
    for given in paths:
        if isinstance(given, str) and not given:  # Path("") is the current folder
            raise InputError("an empty path; name a .py file, a notebook or a folder")
        path = Path(given)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path).parts
                if any(p.startswith(".") or p in SKIPPED for p in relative[:-1]):
                    continue
                if child.suffix in SUFFIXES and child.is_file():
                    yield child
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise InputError(f"{path}: not a .py file or .ipynb notebook")
            yield path
        elif path.exists():
            raise InputError(f"{path}: not a file or folder; name a .py file, notebook or folder")
        else:
            raise InputError(f"no such file or folder: {path}; check the path")


def lint_paths(
    paths: Iterable[str | Path] | str | Path,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
) -> LintResult:
    """Lint the files and folders ``paths`` (one path, or several; none is a ``ConfigError``:
    a lint of nothing would pass) with the rules ``select`` (codes or prefixes; default all)
    minus ``ignore``. A missing path or an unreadable file is an ``InputError``; a file that
    does not parse is a ``ParseError`` in the result."""
    paths = (paths,) if isinstance(paths, str | Path) else tuple(paths)
    if not paths:
        raise ConfigError("lint_paths needs a path (a .py file, a notebook or a folder)")
    try:
        rules = enabled(select, ignore)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    findings: list[Finding] = []
    errors = []
    files = suppressed = 0
    for path in python_files(paths):
        found, hidden, error = _lint_file(path, rules)
        files += 1
        findings.extend(found)
        suppressed += hidden
        if error is not None:
            errors.append(error)
    return LintResult(tuple(findings), tuple(errors), files, suppressed)
