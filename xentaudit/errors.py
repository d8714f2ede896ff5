"""The errors a user can cause. Raised anywhere, caught once in ``cli.py`` and printed as one line.

Each means exit code 2 (usage or input error), but ``WorkerLost``, exit code 3 (a process doing
part of the work died); the message says what is wrong and how to fix it (``xentaudit: error:
<what is wrong>; <how to fix>``). Bugs are not wrapped: any other exception reaches the command
line as an internal error, exit code 3, one line (and, with ``-v``, the traceback for a bug
report).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FLAGGED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3  # an unexpected exception: a bug, never a verdict


class _Unchained:
    """An exception's chained-exception attribute that reads None and ignores what is set."""

    def __get__(self, obj: object, owner: type | None = None) -> None:
        return None

    def __set__(self, obj: object, value: BaseException | None) -> None:
        pass


class XentauditError(Exception):
    """Something the user can fix: the message says what is wrong and how to fix it.

    It carries no chained exception: the message says everything, and what was being handled
    when it was raised (a user's loss's own exception, whose class only their module defines)
    must not travel with it to the process that reports it (``--jobs``, backends audited apart,
    ``--scheduler``). TensorFlow installs tblib's pickling of exceptions, which would send
    ``__context__`` and ``__cause__`` along, and that process could not unpickle them. (The
    command prints its one line, never its traceback.)
    """

    exit_code = 2
    __context__ = __cause__ = _Unchained()


class InputError(XentauditError):
    """Logits or labels that cannot be audited (malformed, wrong shape, NaN, out of range)."""


class NothingAudited(InputError):
    """Every run was skipped (``skipped`` says why): an empty result would pass."""

    def __init__(self, message: str, skipped: tuple = ()) -> None:
        super().__init__(message)
        self.skipped = skipped  # the results.Skipped of the runs


class ConfigError(XentauditError):
    """An option value that makes no sense (unknown dtype, negative tolerance, ...)."""


class UnknownImplementationError(ConfigError):
    """An implementation name that is not in the registry."""


class ImplementationError(XentauditError):
    """An implementation misbehaved: a user's loss raised, exited or returned no per-row losses,
    or an implementation ran past the timeout."""


class WorkerLost(XentauditError):
    """A process doing part of the work died (killed, out of memory, a crash in a framework):
    the result is incomplete, so the command fails, exit code 3, saying which part."""

    exit_code = 3


class ShardsLost(WorkerLost):
    """Shards of a sharded `check` that no process could audit (a worker died every time it
    tried), named."""
