"""The shards of a dump audited in several processes: local ones (``--jobs N``) or the workers
of a Dask cluster (``--scheduler ADDRESS``, ``xentaudit[dask]``).

Each process audits whole shards (``check.audit_shard``: the audit set up anew from the
picklable ``CheckOptions``, the shard read from its path) and sends back the shard's summary:
counts, histograms, exact integer sums and the few worst rows, whatever the shard's size. The
caller merges them in shard order (``check._merged``), so the ``Check`` is the one a single
process makes of the shards' concatenation, bit for bit. A shard no process could audit (a
local process died; a Dask worker died each time the scheduler retried it) is lost: the check
raises ``ShardsLost`` naming it, never a partial report.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from typing import TYPE_CHECKING

from xentaudit.errors import ConfigError, ShardsLost, XentauditError
from xentaudit.results import FlaggedRow, ShardInfo
from xentaudit.shards import Shard

if TYPE_CHECKING:
    from xentaudit.check import CheckOptions, _Summary

CONNECT_SECONDS = 30  # how long to wait for a --scheduler to answer
# read when the frameworks load: TensorFlow's intra-op pool; OpenMP's (torch's CPU ops)
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")
DASK_INSTALL = "pip install 'xentaudit[dask]'"


class _Merger:
    """Takes the shards' summaries as they come, passes each shard's flagged rows on once the
    shards before it are done (so they arrive in row order), and says what is missing."""

    def __init__(
        self,
        infos: Sequence[ShardInfo],
        on_flagged_row: Callable[[FlaggedRow], None] | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.infos = infos
        self.on_flagged_row = on_flagged_row
        self.progress = progress
        self.summaries: dict[int, _Summary] = {}
        self.lost: dict[int, str] = {}
        self.passed = 0  # shards whose flagged rows went on
        self.rows = 0
        self.total = sum(info.rows for info in infos)

    def done(self, index: int, summary: _Summary) -> None:
        self.summaries[index] = summary
        self.rows += self.infos[index].rows
        if self.progress is not None:
            self.progress(self.rows, self.total)
        while self.passed in self.summaries:
            ready = self.summaries[self.passed]
            if self.on_flagged_row is not None and ready.flagged is not None:
                for row in ready.flagged:
                    self.on_flagged_row(row)
            ready.flagged = None
            self.passed += 1

    def result(self) -> list[_Summary]:
        """Every shard's summary in order, or ``ShardsLost`` naming those missing."""
        if self.lost:
            missing = "; ".join(
                f"{self.infos[i].path} ({why})" for i, why in sorted(self.lost.items())
            )
            raise ShardsLost(
                f"{len(self.lost)} of {len(self.infos)} shards could not be audited, so the "
                f"check is incomplete: {missing}; run them again (or without --jobs/--scheduler "
                "to see why)"
            )
        return [self.summaries[i] for i in range(len(self.infos))]


def run(
    options: CheckOptions,
    shards: Sequence[Shard],
    infos: Sequence[ShardInfo],
    jobs: int,
    scheduler: str | None,
    on_flagged_row: Callable[[FlaggedRow], None] | None,
    progress: Callable[[int, int], None] | None,
) -> list[_Summary]:
    """The summaries of ``shards`` (numbered as ``infos`` say), audited in ``jobs`` local
    processes, or on the Dask cluster at ``scheduler``; in shard order."""
    # Workers may run elsewhere (Dask) or in another directory: they get absolute paths, and
    # every report names the shards as given (``infos``).
    absolute = [
        replace(s, path=s.path.resolve(), labels=s.labels and s.labels.resolve()) for s in shards
    ]
    merger = _Merger(infos, on_flagged_row, progress)
    tasks = list(zip(absolute, infos, strict=True))
    if scheduler is None:
        _run_local(options, tasks, jobs, merger, on_flagged_row is not None)
    else:
        _run_dask(options, tasks, scheduler, merger, on_flagged_row is not None)
    return merger.result()


def _run_local(
    options: CheckOptions,
    tasks: list[tuple[Shard, ShardInfo]],
    jobs: int,
    merger: _Merger,
    collect: bool,
) -> None:
    from xentaudit.check import audit_shard

    # spawn, not fork: TensorFlow's and torch's threads do not survive a fork
    context = multiprocessing.get_context("spawn")
    workers = min(jobs, len(tasks))
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_share_cores, initargs=(threads,)
    ) as pool:
        pending: dict[Future, int] = {
            pool.submit(audit_shard, options, shard, info, collect): i
            for i, (shard, info) in enumerate(tasks)
        }
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    _collect(merger, pending.pop(future), future)
        finally:
            for future in pending:
                future.cancel()


def _share_cores(threads: int) -> None:
    """In a --jobs process, before any framework loads: ``threads`` threads per operation
    (the cores over the processes), so that N processes do not run N x cores threads; a
    user's own setting of the variables wins."""
    for variable in THREAD_VARIABLES:
        os.environ.setdefault(variable, str(threads))


def _collect(merger: _Merger, index: int, future: Future) -> None:
    """A finished shard into ``merger``: its summary, or lost with why (a process that died);
    the user's errors (bad input, a loss that raised) are raised as in one process."""
    try:
        summary = future.result()
    except XentauditError:
        raise
    except Exception as exc:  # the process (or the Dask worker) died: BrokenProcessPool...
        merger.lost[index] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return
    merger.done(index, summary)


def _run_dask(
    options: CheckOptions,
    tasks: list[tuple[Shard, ShardInfo]],
    scheduler: str,
    merger: _Merger,
    collect: bool,
) -> None:
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise ConfigError(
            f"--scheduler needs Dask's distributed scheduler: {DASK_INSTALL}"
        ) from None
    from xentaudit.check import audit_shard

    try:
        client = Client(scheduler, timeout=CONNECT_SECONDS, set_as_default=False)
    except (OSError, ValueError) as exc:  # TimeoutError is an OSError
        raise ConfigError(
            f"--scheduler {scheduler}: cannot reach a Dask scheduler ({exc}); check the address "
            "(tcp://host:8786)"
        ) from None
    with client:
        # pure=False: each run audits the files anew, even if the same shards were audited
        # before (they may have been rewritten). The scheduler retries a task whose worker died
        # (distributed.scheduler.allowed-failures times) before it gives up on it.
        futures = client.map(
            audit_shard,
            [options] * len(tasks),
            [shard for shard, _ in tasks],
            [info for _, info in tasks],
            [collect] * len(tasks),
            pure=False,
        )
        index = {future.key: i for i, future in enumerate(futures)}
        try:
            for future in as_completed(futures, loop=client.loop):
                _collect(merger, index[future.key], future)
        finally:
            client.cancel([f for f in futures if not f.done()])
