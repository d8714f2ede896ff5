"""The `xentaudit lint` click command: a thin layer over ``xentaudit.lint``.

Importing it imports no framework and not LibCST (``--fix`` and ``--diff`` import it).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from xentaudit.cli_common import HelpToStdout, not_empty, write_stdout
from xentaudit.errors import ConfigError, InputError
from xentaudit.lint import LintResult, lint_paths, settings
from xentaudit.lint.formats import FORMATS, RENDERERS

if TYPE_CHECKING:
    from xentaudit.lint.fix import FileFix  # imports LibCST: only when fixing


def _codes(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


def _configured() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``select``, ``ignore`` from ``[tool.xentaudit.lint]`` (found as for every command),
    and the warnings of the search."""
    from xentaudit.config import load  # here: `lint --help` imports no numpy

    found = load()  # checks that a "lint" entry is a table
    return (*settings(found.table.get("lint", {}), found.path), found.warnings)


def _write(fixes: list[FileFix]) -> None:
    """Write ``fixes`` back, each through a temporary file beside its file; every temporary
    file is created and written before any is renamed into place, so a folder that cannot take
    one (read-only) or a full disk leaves every file as it was."""
    from xentaudit.cli import _written_atomically  # cli imports this module: imported late

    modes = []
    with contextlib.ExitStack() as renames:  # renamed when it ends without an exception
        for fix in fixes:
            path = Path(fix.path).resolve()  # a symlink stays a link to the fixed file
            modes.append((path, path.stat().st_mode))
            try:
                out = renames.enter_context(_written_atomically(path, "--fix"))
            except OSError as exc:  # the temporary file could not be created
                raise InputError(
                    f"--fix: cannot rewrite {fix.path}: cannot create a file in {path.parent} "
                    f"({exc.strerror}); make the folder writable, or run with --diff instead "
                    "to see the rewrites"
                ) from None
            # a byte-order mark or a coding line kept; flushed: a full disk fails here
            out(fix.after.encode(fix.encoding), flush=True)
    for path, mode in modes:
        os.chmod(path, mode)  # a script stays executable


def _fix(result: LintResult, write: bool) -> tuple[str, LintResult]:
    """Apply (``write``) or show the fixes of ``result``: the diff, and the findings left."""
    from xentaudit.lint.fix import fix_result

    fixes = fix_result(result)
    if write:
        _write(fixes)
    fixed = {f for fix in fixes for f in fix.fixed}
    left = tuple(f for f in result.findings if f not in fixed)
    return "".join(fix.diff for fix in fixes), replace(result, findings=left)


@click.command(cls=HelpToStdout)
@click.argument("paths", nargs=-1, metavar="PATH...", type=click.Path(), callback=not_empty)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=FORMATS[0],
    show_default=True,
    help="text: path:line:col: CODE message, as ruff; sarif: SARIF 2.1.0 for GitHub code "
    "scanning; github: workflow annotations.",
)
@click.option(
    "--select",
    multiple=True,
    metavar="CODES",
    help="Only these rules (codes or prefixes, comma-separated, repeatable; default: "
    "[tool.xentaudit.lint] select, else all).",
)
@click.option(
    "--ignore",
    multiple=True,
    metavar="CODES",
    help="Not these rules (added to [tool.xentaudit.lint] ignore).",
)
@click.option(
    "--fix",
    is_flag=True,
    help="Apply the rewrites marked [*] (equal wherever the code was finite).",
)
@click.option(
    "--diff", "show_diff", is_flag=True, help="Print the --fix rewrites as a diff; write nothing."
)
@click.option(
    "--explain",
    metavar="CODE",
    help="Say what rule CODE flags, run the engine for its breaking points per dtype, and exit.",
)
def lint(
    paths: tuple[str, ...],
    fmt: str,
    select: tuple[str, ...],
    ignore: tuple[str, ...],
    fix: bool,
    show_diff: bool,
    explain: str | None,
) -> int:
    """Find unstable cross-entropy code in PATH... (.py files, .ipynb notebooks, folders).

    Parses the code (never runs it): log(softmax(x)), probabilities given to a loss on logits,
    clipped or epsilon-shifted probabilities under a log, a softmax's output given to a
    from_logits=False Keras loss, log(sum(exp(x))), log(sigmoid(x)). Suppress a line with
    '# noqa: XA101'.
    Exit codes: 0 nothing found, 1 a finding, 2 usage or input error (a file that does not
    parse: XA000, reported with the rest).
    """
    if explain is not None:
        from xentaudit.lint.explain import explain as run

        if paths or fix or show_diff:
            raise ConfigError("--explain takes a rule code alone; drop the paths and options")
        write_stdout(run(explain.strip().upper()))
        return 0
    if not paths:
        raise ConfigError("lint needs a PATH (a .py file, a notebook or a folder)")
    if fix and show_diff:
        raise ConfigError("--fix writes the rewrites and --diff shows them; choose one")
    chosen, skipped, warnings = _configured()
    for warning in warnings:
        click.echo(f"xentaudit: warning: {warning}", err=True)
    result = lint_paths(paths, _codes(select) or chosen, (*skipped, *_codes(ignore)))
    if show_diff:  # the rewrites alone on stdout (a patch), the exit code of every finding
        patch, left = _fix(result, write=False)
        write_stdout(patch)
        if left.findings:
            click.echo(
                f"xentaudit: {len(left.findings)} finding(s) with no rewrite; run without --diff "
                "to list them",
                err=True,
            )
    else:
        if fix:
            before = len(result.findings)
            _, result = _fix(result, write=True)
            click.echo(f"xentaudit: fixed {before - len(result.findings)} finding(s)", err=True)
        write_stdout(RENDERERS[fmt](result))
    if result.errors:
        first = result.errors[0]
        raise InputError(
            f"{len(result.errors)} file(s) could not be parsed, first {first.path}: "
            f"{first.message}; fix the syntax or exclude the file"
        )
    return result.exit_code
