"""What every command of the command line shares, cli.py's and lint's (which cli.py imports).

stdout: every report, ``--help`` and ``--version`` go through ``write_stdout``.
A reader that stops reading (``| head``) is no error: the rest of the output is dropped and the
command ends as it would have, with its own exit code (a verdict is never turned into another
by the reader). A stdout that cannot take the output (a full disk) is a usage error, one line
and exit code 2. Any other broken pipe (a worker's, a socket's) is not stdout's and stays what
it is.
"""

from __future__ import annotations

from typing import Any

import click

from xentaudit.errors import ConfigError


def write_stdout(text: str) -> None:
    """Write ``text`` to stdout (see the module's docstring for a reader that stops reading and
    a stdout that is full)."""
    try:
        click.echo(text, nl=False)
    except BrokenPipeError:  # what is left unwritten is dropped: flushing again finds none
        pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write to stdout ({exc.strerror}); free space or redirect stdout"
        ) from None


def _show_help(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        write_stdout(ctx.get_help() + "\n")
        ctx.exit()


class HelpToStdout(click.Command):
    """A command whose ``--help`` is written by ``write_stdout``, as its reports are (click's own
    writes it unguarded: a full stdout was a traceback)."""

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        option = super().get_help_option(ctx)
        if option is not None:
            option.callback = _show_help
        return option


def version_option(version: str) -> Any:
    """``--version``: ``xentaudit, version V`` written by ``write_stdout``, then exit 0."""

    def show(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            write_stdout(f"xentaudit, version {version}\n")
            ctx.exit()

    return click.option(
        "--version",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=show,
        help="Show the version and exit.",
    )


def not_empty(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Refuse a path (argument or option; several for ``nargs=-1``) given as an empty string:
    Path("") is the current folder, which a shell variable left unset would audit unasked."""
    values = value if isinstance(value, tuple) else (value,)
    if "" in values:
        raise click.BadParameter("an empty name; name a file or folder")
    return value
