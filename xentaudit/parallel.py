"""Work in several processes: the shards of a dump audited by local ones (``--jobs N``) or by
the workers of a Dask cluster (``--scheduler ADDRESS``, ``xentaudit[dask]``); a sweep's backends
swept each in a local process of its own (``sweep_parts``).

Each process audits whole shards (``check.audit_shard``: the audit set up anew from the
picklable ``CheckOptions``, the shard read from its path) and sends back the shard's summary:
counts, histograms, exact integer sums and the few worst rows, whatever the shard's size (and
the shard's flagged rows when they are asked for). The caller merges them in shard order
(``check._merged``), so the ``Check`` is the one a single process makes of the shards'
concatenation, bit for bit; an error is the one the single process would raise. A shard no
process could audit (a local process died; a Dask worker died each time the scheduler retried
it) is lost: the check raises ``ShardsLost`` naming it, never a partial report.
"""

from __future__ import annotations

import contextlib
import heapq
import multiprocessing
import os
import pickle
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from xentaudit import impls as zoo
from xentaudit import processes
from xentaudit.errors import ConfigError, ShardsLost, WorkerLost, XentauditError
from xentaudit.shards import Shard

if TYPE_CHECKING:
    from multiprocessing.queues import SimpleQueue

    from xentaudit.check import CheckOptions, FlaggedRowSink, Order, Progress, Where, _Summary
    from xentaudit.results import FlaggedRow, ShardInfo
    from xentaudit.sweep import Grid, Part, Share

CONNECT_SECONDS = 30  # how long to wait for a --scheduler to answer
# read when the frameworks load: TensorFlow's intra-op pool; OpenMP's (torch's CPU ops)
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")
DASK_INSTALL = "pip install 'xentaudit[dask]'"
_PARENT_POLL_S = 1.0  # how often a --jobs process checks that the process it serves is alive
_TICK_S = 0.1  # how often the progress of a sweep's or a check's processes is read
# The order a sweep's backends start in, the longest first so that 2 processes finish together:
# JAX compiles an XLA program per implementation, dtype and class count.
SWEEP_ORDER = ("jax", "tensorflow", "torch")
_ticks: SimpleQueue | None = None  # in a --jobs process: where its progress goes
# A local process writes a shard's flagged rows to a file of the command's, pickled this many at
# a time, and the command reads them back as it passes them on: a shard's rows are never all in
# memory. Only such files are unpickled: the paths this command gave its own processes (never one
# a summary names), in a folder of its own (mode 0700, ``spill_folders``), removed when the check
# ends (by the command line's signal handler too).
SPILL_ROWS = 4096
spill_folders: set[str] = set()


class _Merger:
    """Takes each unit's outcome as it comes (a shard's summary, or a backend's part of it,
    with the implementations named as the caller gave them, ``given``; the user's error it
    raised; or why it was lost), puts each shard's parts together once they are all in
    (``_combined``), passes each shard's flagged rows on once the shards before it are done (so
    they arrive in row order), and settles the run in shard order (``result``)."""

    def __init__(
        self,
        infos: Sequence[ShardInfo],
        parts: list[str],
        spills: dict[tuple[int, int], str | None],
        given: dict[str, str],
        order: Order,
        scan: Callable[[int], _Summary],
        on_flagged_row: FlaggedRowSink | None,
        progress: Progress | None,
    ) -> None:
        self.infos = infos
        self.parts = parts  # per unit of a shard, its backend's --backend name ("" for all)
        self.spills = spills  # (shard, part) -> the file its process was given for its rows
        self.given = given
        self.order = order
        self.scan = scan  # scans a shard for unusable rows in this process, auditing nothing
        self.on_flagged_row = on_flagged_row
        self.progress = progress
        self.pieces: dict[int, dict[int, _Summary]] = {}
        self.summaries: dict[int, _Summary] = {}
        self.flagged: dict[int, list[Iterator[FlaggedRow]]] = {}  # per shard, its parts' rows
        self.errors: dict[int, XentauditError] = {}
        self.lost: dict[int, tuple[int, str]] = {}  # shard -> the part lost first, and why
        self.passed = 0  # shards whose flagged rows went on
        self.done: dict[tuple[int, int], int] = {}  # (shard, part) -> its rows audited
        self.total = sum(info.rows for info in infos) * len(parts)

    def tick(self, index: int, part: int, rows: int) -> None:
        """``rows`` of ``part`` of shard ``index`` audited: the progress moves on."""
        if rows > self.done.get((index, part), 0):
            self.done[(index, part)] = rows
            if self.progress is not None:
                self.progress(sum(self.done.values()), self.total)

    def take(self, index: int, part: int, future: Future) -> None:
        """Take a finished unit's outcome (``part`` of shard ``index``). Of the user's errors
        of a shard's parts, the one kept is the one one process meets first (``Order.error``);
        the shards after it need not run once it is the run's error (``cut``)."""
        if future.cancelled():
            return
        try:
            summary = future.result()
        except XentauditError as exc:
            _error_as_given(exc, self.given)
            known = self.errors.get(index)
            if known is None or self.order.error(exc) < self.order.error(known):
                self.errors[index] = exc
            return
        except Exception as exc:
            if not _died(exc):
                raise  # a bug: an internal error, with its traceback
            first = str(exc).splitlines()[0] if str(exc) else ""
            lost = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            self.lost.setdefault(index, (part, lost))
            return
        self.tick(index, part, self.infos[index].rows)
        pieces = self.pieces.setdefault(index, {})
        pieces[part] = _as_given(summary, self.given)
        if len(pieces) < len(self.parts):
            return
        parts = [pieces[p] for p in sorted(pieces)]
        self.flagged[index] = [
            _flagged_rows(piece, self.given, self.spills[(index, p)])
            for p, piece in enumerate(parts)
        ]
        self.summaries[index] = _combined(parts, self.order)
        del self.pieces[index]
        while self.passed in self.summaries:
            streams = self.flagged.pop(self.passed)
            if self.on_flagged_row is not None:
                for row in _in_order(streams, self.order):
                    self.on_flagged_row(row)
            self.passed += 1

    def _any_part(self, index: int) -> _Summary | None:
        """Shard ``index``'s summary, or one of its parts' (they hold its unusable rows alike)."""
        pieces = self.pieces.get(index)
        return self.summaries.get(index) or (next(iter(pieces.values())) if pieces else None)

    def cut(self) -> tuple[int, int | None]:
        """The last shard that still needs auditing, and the row of it after which nothing
        does (None: the whole shard): the shard of the first error, once every shard before it
        is known to hold no unusable row (one process would then stop at that error; after a
        refused shard it only scans the rest, whose unusable rows the error names)."""
        from xentaudit.check import refused

        if not self.errors:
            return len(self.infos) - 1, None
        first = min(self.errors)
        for index in range(first):
            summary = self._any_part(index)
            if summary is None or refused(summary):
                return len(self.infos) - 1, None
        where = self.order.error(self.errors[first])
        return first, where[0] if where else None

    def result(self) -> list[_Summary]:
        """The summaries in shard order, settled as one process would: the first shard's error
        is raised, unless an earlier shard had rows that cannot be audited (one process then
        only scans the rest for more such rows, which the summaries returned hold: a part's,
        or, for a shard no part completed, a scan here); a lost shard is ``ShardsLost`` naming
        every lost one."""
        from xentaudit.check import refused

        out: list[_Summary] = []
        scanning = False
        for index in range(len(self.infos)):
            summary = self.summaries.get(index)
            if scanning:  # its results are not reported: its unusable rows are
                summary = summary or self._any_part(index) or self.scan(index)
            if summary is None:
                if index in self.errors:
                    raise self.errors[index]
                assert index in self.lost, index  # cancelled only after an earlier error
                raise self._lost()
            out.append(summary)
            scanning |= refused(summary)
        return out

    def _lost(self) -> WorkerLost:
        if self.parts != [""] and len(self.infos) == 1:  # one file, its backends apart
            part, why = self.lost[0]
            backend = self.parts[part]
            return WorkerLost(
                f"the process auditing the {backend} backend's implementations died ({why}), "
                f"so the check is incomplete; check that backend alone (--backend {backend}) "
                "to see why"
            )
        missing = "; ".join(
            f"{self.infos[i].path} ({why})" for i, (_, why) in sorted(self.lost.items())
        )
        return ShardsLost(
            f"{len(self.lost)} of {len(self.infos)} shards could not be audited, so the check "
            f"is incomplete: {missing}; audit them again (or without --jobs and --scheduler, "
            "to see why)"
        )


def _combined(parts: list[_Summary], order: Order) -> _Summary:
    """One shard's summary from the summaries of its backends audited apart, as one process
    would have made it: what every part counts alike (lint, unusable rows, ignored rows) once,
    the results of all, the skips in ``order`` (the results are put in it by ``_merged``), and
    the record of what they audited with, made of every part's backends (the parts ran here).
    Not the flagged rows, which ``_in_order`` merges as they are passed on."""
    from xentaudit.environment import environment_of

    whole = parts[0]
    if len(parts) == 1:
        return whole
    for part in parts[1:]:
        whole.tallies.update(part.tallies)
        whole.skipped.update(part.skipped)
        whole.skipped_at.update(part.skipped_at)
        whole.flushes = {**(whole.flushes or {}), **(part.flushes or {})}
    whole.environment = environment_of(whole.flushes or {})
    first = sorted(whole.skipped, key=lambda key: order.place(whole.skipped_at[key]))
    whole.skipped = {key: whole.skipped[key] for key in first}
    return whole


def _flagged_rows(part: _Summary, given: dict[str, str], spill: str | None) -> Iterator[FlaggedRow]:
    """A part's flagged rows (by row, then by result), named as the caller gave them as they
    are passed on: held in its summary (let go then), or read from the file ``spill`` its
    process was given (``SPILL_ROWS``), which is then removed."""
    if not part.spilled:
        rows, part.flagged = part.flagged or [], None
    else:
        assert spill is not None  # only a process given a file writes to one
        rows = _read_spill(spill)
    for row in rows:
        yield replace(row, impl=given.get(row.impl, row.impl))


def _read_spill(path: str) -> Iterator[FlaggedRow]:
    """The flagged rows a process wrote to ``path``, which is removed once they are read."""
    with open(path, "rb") as rows:
        while True:
            try:
                batch = pickle.load(rows)  # this command's own file (SPILL_ROWS)
            except EOFError:
                break
            yield from batch
    os.remove(path)


def _in_order(streams: list[Iterator[FlaggedRow]], order: Order) -> Iterator[FlaggedRow]:
    """A shard's flagged rows from its parts' ``streams``, each by row then by result, as one
    process passes them on: by row, then in ``order``."""
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(
        *streams, key=lambda r: (r.row, order.result(r.labels, r.dtype, r.policy, r.impl, r.eps))
    )


def _died(exc: Exception) -> bool:
    """Whether ``exc`` says that the process running a task died: a broken local pool, or a
    Dask task whose workers died on every retry."""
    scheduler = sys.modules.get("distributed.scheduler")  # imported when a cluster ran it
    killed = (scheduler.KilledWorker,) if scheduler is not None else ()
    return isinstance(exc, (BrokenProcessPool, *killed))


def run(
    options: CheckOptions,
    names: Sequence[str],
    shards: Sequence[Shard],
    infos: Sequence[ShardInfo],
    jobs: int,
    scheduler: str | None,
    on_flagged_row: FlaggedRowSink | None,
    progress: Progress | None,
    order: Order,
    scan: Callable[[int], _Summary],
    apart: bool = False,
    sharded: bool = True,
) -> list[_Summary]:
    """The summaries of ``shards`` (numbered as ``infos`` say), audited in ``jobs`` local
    processes, or on the Dask cluster at ``scheduler``; in shard order. ``names``: the
    implementations the caller resolved, which every process audits (a worker with other
    backends installed would otherwise audit others). ``apart`` (not with a cluster): each
    backend's implementations of a shard are audited by a process of their own, which imports
    that framework alone, and put back together in one process's ``order``. ``scan``: the
    unusable rows of a shard, found in this process (``_Merger.result``).
    Not ``sharded``: the one file of a check, named in no report as a shard."""
    if scheduler is not None:
        _check_address(scheduler)
    # Dask workers may run in another directory: they get the users' losses by absolute paths
    # (a local process runs in this one, and its errors name them as given), and every report
    # and error names the shards and the users' losses as given (``infos``, ``_as_given``).
    files: dict[str, str] = {}  # a user's loss file as given -> as sent
    sent = {
        name: _absolute(name, files) if scheduler is not None else name
        for name in dict.fromkeys(names)
    }
    given = {path: name for name, path in sent.items()}
    portable = replace(
        options,
        impls=tuple(given),
        model=None if options.model is None else str(Path(options.model).absolute()),
    )
    grouped = zoo.by_backend(names, str) if apart else [list(names)]
    groups = [tuple(dict.fromkeys(sent[name] for name in group)) for group in grouped]
    parts = [zoo.BACKENDS[zoo.backend_of(g[0])].option if apart else "" for g in grouped]
    collect = on_flagged_row is not None
    # a Dask worker sends its flagged rows with its summary; a local process writes them here
    spill = _spill_folder() if collect and scheduler is None else None
    try:
        tasks = [
            _Unit(
                index,
                part,
                replace(portable, impls=group),
                replace(s, path=s.path.absolute(), labels=s.labels and s.labels.absolute()),
                info,
                collect,
                sharded,
                None if spill is None else os.path.join(spill, f"{index}-{part}.pickle"),
            )
            for index, (s, info) in enumerate(zip(shards, infos, strict=True))
            for part, group in enumerate(groups)
        ]
        spills = {(task.index, task.part): task.spill for task in tasks}
        merger = _Merger(infos, parts, spills, given, order, scan, on_flagged_row, progress)
        if scheduler is None:
            _run_local(tasks, jobs, merger)
        else:
            _run_dask(tasks, scheduler, merger)
        return merger.result()
    finally:
        if spill is not None:
            remove_spill_folder(spill)


@dataclass(frozen=True)
class _Unit:
    """What one process audits: a shard (``index``), or a backend's part of it (``part``)."""

    index: int
    part: int
    options: CheckOptions
    shard: Shard
    info: ShardInfo
    collect: bool  # the flagged rows are asked for: sent with the summary, or written to
    sharded: bool
    spill: str | None = None  # this file (``SPILL_ROWS``)
    until: int | None = None  # the row after which nothing need be audited (``_Merger.cut``)

    def audit(self) -> _Summary:
        from xentaudit.check import audit_shard

        def audit(on_flagged_row: FlaggedRowSink | None) -> _Summary:
            return audit_shard(
                self.options,
                self.shard,
                self.info,
                on_flagged_row,
                self.sharded,
                self.until,
                None if _ticks is None else self.tick,
            )

        if not self.collect:
            return audit(None)
        if self.spill is None:
            rows: list[FlaggedRow] = []
            summary = audit(rows.append)
            summary.flagged = rows
            return summary
        batch: list[FlaggedRow] = []
        with _spilling(self.spill):
            out = open(self.spill, "wb")  # noqa: SIM115  # closed below, where a write may fail

        def write(row: FlaggedRow) -> None:
            batch.append(row)
            if len(batch) == SPILL_ROWS:
                with _spilling(self.spill):
                    pickle.dump(batch, out, protocol=pickle.HIGHEST_PROTOCOL)
                batch.clear()

        try:
            summary = audit(write)
            with _spilling(self.spill):
                if batch:
                    pickle.dump(batch, out, protocol=pickle.HIGHEST_PROTOCOL)
                out.close()
        finally:
            with contextlib.suppress(OSError):
                out.close()
        summary.spilled = True
        return summary

    def tick(self, rows: int, _: int) -> None:
        """In a local process: ``rows`` of the shard audited, sent to the command."""
        assert _ticks is not None
        _ticks.put((self.index, self.part, rows))


def _spill_folder() -> str:
    """A new folder (mode 0700) for the local processes' flagged rows, put in ``spill_folders``
    before it exists: no signal can end the command between its making and its registration."""
    while True:
        folder = os.path.join(tempfile.gettempdir(), f"xentaudit-rows-{secrets.token_hex(8)}")
        spill_folders.add(folder)
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # not ours: another name
            spill_folders.discard(folder)
            continue
        except OSError:
            spill_folders.discard(folder)
            with _spilling(folder):  # names the temporary folder it could not be made in
                raise
        return folder


def remove_spill_folder(folder: str) -> None:
    """Remove ``folder`` and the files in it, renamed first: a process still running cannot
    add a file to it while it is emptied (its next file's folder is gone). The folder is let
    go of only once removed: a signal's handler that interrupts a removal under way (the folder
    renamed already) finishes it."""
    removed = f"{folder}.removed"
    try:
        os.rename(folder, removed)
    except FileNotFoundError:  # renamed already, by the removal this one interrupts, or gone
        pass
    except OSError:  # cannot be renamed: removed as it is, and nothing else
        removed = folder
    shutil.rmtree(removed, ignore_errors=True)
    spill_folders.discard(folder)


@contextlib.contextmanager
def _spilling(path: str) -> Iterator[None]:
    """Where a process writes its flagged rows to ``path``: a folder that fails it (full, or
    not writable) is one line, not a bug's traceback."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(
            f"cannot write the flagged rows to a temporary file in {os.path.dirname(path)} "
            f"({exc.strerror or exc}); free space there, or set TMPDIR to a folder with room"
        ) from None


def _absolute(name: str, files: dict[str, str]) -> str:
    """A user's loss ``[tf:|torch:|jax:]path/to/file.py:fn`` with its file's path absolute, one
    per spelling of the file (``files``: as given -> as sent): another spelling of a file
    already sent (``loss.py``, ``./loss.py``, its absolute path) gets one more ``./`` before
    the file's name. So each spelling is a result of its own, as in one process, and each name
    and file sent stands for one given (``_error_as_given``). Any other name as it is."""
    target = _loss_file(name)
    if target is None:
        return name
    located = zoo.user_backend(name)[1]
    fn = located.rpartition(":")[2]
    prefix = name[: len(name) - len(located)]  # "tf:", "torch:", "jax:" or nothing
    if target not in files:
        path = Path(target).absolute()
        hops = ""
        while (absolute := os.path.join(path.parent, hops + path.name)) in files.values():
            hops += "." + os.sep
        files[target] = absolute
    return f"{prefix}{files[target]}:{fn}"


def _as_given(summary: _Summary, given: dict[str, str]) -> _Summary:
    """``summary`` with the implementations named as the caller gave them."""
    summary.tallies = {
        (key[0], given.get(key[1], key[1]), *key[2:]): tally
        for key, tally in summary.tallies.items()
    }
    summary.skipped = {
        (given.get(impl, impl), dtype): replace(skip, impl=given.get(skip.impl, skip.impl))
        for (impl, dtype), skip in summary.skipped.items()
    }
    summary.skipped_at = {
        (given.get(impl, impl), dtype): _where_given(where, given)
        for (impl, dtype), where in summary.skipped_at.items()
    }
    return summary


def _error_as_given(exc: XentauditError, given: dict[str, str]) -> None:
    """``exc`` naming the users' losses as the caller gave them: its message (a Dask worker's
    names them, and their files, by their absolute paths), its run (``at``) and the loss it
    failed to load (``loading``)."""
    # xentaudit's words about a user's loss (the loader's ``--impl {spec!r}: ...``, the file as
    # typed, or as a Path where it is checked; a run's ``--impl {name}: ...``), from the name
    # and file sent to the ones given, longest first. A path elsewhere in the message (the
    # user's own words) is left as the worker saw it.
    spelled: dict[str, str] = {}
    for sent, name in given.items():
        sent_file, name_file = _loss_file(sent), _loss_file(name)
        if name_file is None or sent_file is None:
            continue
        quoted, given_quoted = repr(sent), repr(name)
        sent_path, name_path = Path(sent_file), Path(name_file)
        for sent_as, name_as in (
            (f"{quoted}: importing {sent_file} ", f"{given_quoted}: importing {name_file} "),
            (f"{quoted}: {sent_file} has no ", f"{given_quoted}: {name_file} has no "),
            (
                f"{quoted}: no such file: {sent_path};",
                f"{given_quoted}: no such file: {name_path};",
            ),
            (f"{quoted}: cannot read {sent_path} (", f"{given_quoted}: cannot read {name_path} ("),
            (f"{quoted}: {sent_path} is ", f"{given_quoted}: {name_path} is "),
            (quoted, given_quoted),
            (f"--impl {sent}", f"--impl {name}"),  # a run's words: ``--impl {name}: ...``
        ):
            spelled[sent_as] = name_as
    if any(sent != name for sent, name in spelled.items()):  # one pass, the longest first
        pattern = "|".join(re.escape(sent) for sent in sorted(spelled, key=len, reverse=True))
        message = re.sub(pattern, lambda m: spelled[m.group()], str(exc))
        exc.args = (message, *exc.args[1:])
    at = getattr(exc, "at", None)
    if at is not None:
        exc.at = (at[0], _where_given(at[1], given))  # type: ignore[attr-defined]
    loading = getattr(exc, "loading", None)
    if loading is not None:
        exc.loading = given.get(loading, loading)  # type: ignore[attr-defined]


def _loss_file(name: str) -> str | None:
    """The file of a user's loss ``[tf:|torch:|jax:]path/to/file.py:fn``; None for any other
    name (``package.module:fn`` too, imported by name)."""
    if ":" not in name:
        return None
    target = zoo.user_backend(name)[1].rpartition(":")[0]
    return target if zoo.names_a_file(target) else None


def _where_given(where: Where, given: dict[str, str]) -> Where:
    """``where`` with its run's implementation named as the caller gave it."""
    source, dtype, run = where
    return source, dtype, None if run is None else (run[0], given.get(run[1], run[1]), run[2])


def _run_local(tasks: list[_Unit], jobs: int, merger: _Merger) -> None:
    """Each part (a backend audited apart, or the whole audit) in processes of its own, one
    part after the other, so that no process imports two parts' frameworks; what comes after
    the run's error (``_Merger.cut``) is not audited, but a later part still looks for an
    earlier error up to it. With a progress to report, the processes send their rows audited
    a chunk at a time."""
    for part in sorted({unit.part for unit in tasks}):
        last, row = merger.cut()
        todo = [
            replace(unit, until=row if unit.index == last else None)
            for unit in tasks
            if unit.part == part and unit.index <= last
        ]
        if not todo:
            continue
        # a queue of the part's own: a process that died writing to it may leave its lock held
        ticks = _spawn_queue() if merger.progress else None
        try:
            _run_part(todo, jobs, merger, ticks)
        finally:
            if ticks is not None:
                ticks.close()


def _run_part(todo: list[_Unit], jobs: int, merger: _Merger, ticks: SimpleQueue | None) -> None:
    """``_run_local``'s units of one part, in at most ``jobs`` processes."""
    workers = min(jobs, len(todo))
    # one process at a time keeps this one's thread counts, so its report is this one's bit for
    # bit (the frameworks split long sums by thread count); several share the cores
    threads = None if workers == 1 else max(1, cores() // workers)
    with _local_pool(workers, threads, ticks) as pool:
        pending: dict[Future, _Unit] = {pool.submit(_Unit.audit, u): u for u in todo}
        while pending:
            timeout = None if ticks is None else _TICK_S  # no progress: nothing to poll for
            finished, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            # a unit's ticks are sent before its outcome: read them first
            while ticks is not None and not ticks.empty():
                merger.tick(*ticks.get())
            for future in finished:
                unit = pending.pop(future)
                merger.take(unit.index, unit.part, future)
                last, _ = merger.cut()
                for later in [f for f, u in pending.items() if u.index > last]:
                    later.cancel()  # those not handed to a process yet


def cores() -> int:
    """The cores this process may run on (its affinity, where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _local_pool(
    workers: int, threads: int | None, ticks: SimpleQueue | None = None
) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``workers`` spawned processes (``_start_worker``). When the block ends, with
    its tasks done or raising (an interrupt, in the API too), the processes are ended, not
    waited for: a process that imported the frameworks takes seconds to exit."""
    # spawn, not fork: TensorFlow's and torch's threads do not survive a fork
    context = multiprocessing.get_context("spawn")
    _start_resource_tracker()
    with _environ(SAFE_PATH) as before:  # the pool starts its processes as tasks come
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(os.getpid(), threads, ticks, before),
        )
        try:
            yield pool
        finally:  # every task done (the processes idle), or the block raised
            processes = list((getattr(pool, "_processes", None) or {}).values())
            for process in processes:
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.join()


# What the processes xentaudit starts are given: spawn's `python -c` would put the working
# directory first on sys.path while multiprocessing imports itself (selectors, pickle, ...),
# so a file planted there (selectors.py) would run; PYTHONSAFEPATH (Python 3.11+, `python -P`)
# keeps it off. A process gets the caller's sys.path back before it imports anything else.
SAFE_PATH = {"PYTHONSAFEPATH": "1"}


_ENVIRON_LOCK = threading.Lock()
# name -> [blocks of _environ setting it now, its value before the first of them]
_environ_set: dict[str, list] = {}


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[dict[str, str | None]]:
    """``os.environ`` with ``values`` set for the block, read by the processes started in it;
    a name is as it was once the last block setting it ends (pools in several threads of an
    API caller). Yields each name's value before: what those processes restore."""
    before: dict[str, str | None] = {}  # the names set so far, undone however the block ends
    try:
        with _ENVIRON_LOCK:
            for name, value in values.items():
                entry = _environ_set.setdefault(name, [0, os.environ.get(name)])
                entry[0] += 1
                before[name] = entry[1]
                os.environ[name] = value
        yield before
    finally:
        with _ENVIRON_LOCK:
            for name in before:
                entry = _environ_set[name]
                entry[0] -= 1
                if entry[0] == 0:
                    del _environ_set[name]
                    _put_environ({name: entry[1]})


def _put_environ(values: dict[str, str | None]) -> None:
    """Set each of ``values`` in ``os.environ``; None: unset it."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def sweep_parts(
    grid: Grid, shares: Sequence[Share], workers: int, progress: Progress | None
) -> list[Part]:
    """The parts of a sweep, each share (one backend's implementations in some dtypes) swept in
    a local process, ``workers`` at a time (``SWEEP_ORDER``), with this process's thread
    counts (the frameworks' reductions split by thread count); in the order of ``shares``.
    Every share runs to its end or its first error (``sweep._merge`` raises the one one process
    meets first); a process that died is ``WorkerLost``."""
    from xentaudit.sweep import total_runs

    ticks = _spawn_queue() if progress else None
    order = sorted(range(len(shares)), key=lambda i: SWEEP_ORDER.index(_backend(shares[i])))
    total = sum(total_runs(grid, share) for share in shares)
    done = [0] * len(shares)
    try:
        with _local_pool(workers, None, ticks) as pool:
            futures = {i: pool.submit(_sweep_part, grid, shares[i], i) for i in order}
            pending = set(futures.values())
            while pending:
                timeout = None if ticks is None else _TICK_S  # no progress: nothing to poll
                _, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                while ticks is not None and progress is not None and not ticks.empty():
                    index, count = ticks.get()
                    done[index] = count
                    progress(sum(done), total)
    finally:
        if ticks is not None:
            ticks.close()
    broken = [i for i, f in sorted(futures.items()) if isinstance(f.exception(), BrokenProcessPool)]
    if broken:
        names = list(dict.fromkeys(zoo.BACKENDS[_backend(shares[i])].option for i in broken))
        listed = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise WorkerLost(
            f"a process of the sweep died before it had swept the {listed} "
            f"backend{'s' * (len(names) > 1)}, so the sweep is incomplete; sweep again with "
            "--jobs 1 (or one --backend at a time) to see why"
        )
    return [futures[i].result() for i in range(len(shares))]  # a bug's exception is raised


def _backend(share: Share) -> str:
    """The backend of a share's implementations (``Impl.backend``)."""
    return zoo.backend_of(share.chosen[0][1].impl)


def _sweep_part(grid: Grid, share: Share, index: int) -> Part:
    """In a --jobs process: sweep ``share``, its progress sent to the caller as it goes."""
    from xentaudit.sweep import run_part

    def tick(done: int, total: int) -> None:
        assert _ticks is not None
        _ticks.put((index, done))

    return run_part(grid, share, tick if _ticks is not None else None)


def _spawn_queue() -> SimpleQueue:
    """A queue for spawned processes; its lock starts the resource tracker, so that first."""
    _start_resource_tracker()
    return multiprocessing.get_context("spawn").SimpleQueue()


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (unless it runs), which removes the semaphores
    of a process pool its command left behind, quietly: a command ended by a signal leaves
    them (``cli._Signals``: ``os._exit``), and the tracker would warn about them on stderr
    after the command's one line."""
    from multiprocessing import resource_tracker

    # PYTHONWARNINGS: read by the tracker as it starts; SAFE_PATH: its `python -c` too
    with _environ({"PYTHONWARNINGS": "ignore::UserWarning", **SAFE_PATH}):
        resource_tracker.ensure_running()


def _start_worker(
    parent: int, threads: int | None, ticks: SimpleQueue | None, environ: dict[str, str | None]
) -> None:
    """A --jobs process, before any task: take back the caller's ``environ`` (``SAFE_PATH``
    was for its start only), leave Ctrl-C to the process it serves (which ends the run), end
    when that process is gone (killed, or ended by a signal without waiting for us), share the
    cores (``THREAD_VARIABLES``: ``threads`` per operation, unless set or None), quiet the
    frameworks and pool TensorFlow's memory as the command line does (``as_command_line``:
    TensorFlow loads when a task first needs it), and send a sweep's or a check's progress to
    ``ticks``."""
    global _ticks
    _put_environ(environ)
    _ticks = ticks
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="xentaudit-parent", daemon=True).start()
    for variable in THREAD_VARIABLES if threads is not None else ():
        os.environ.setdefault(variable, str(threads))
    processes.as_command_line()


def _check_address(scheduler: str) -> None:
    """Refuse a --scheduler address that names no host and port, before connecting."""
    try:
        from distributed.comm import get_address_host_port
    except ImportError:
        raise ConfigError(
            f"--scheduler needs Dask's distributed scheduler: {DASK_INSTALL}"
        ) from None
    try:
        get_address_host_port(scheduler)
    except ValueError as exc:
        raise ConfigError(
            f"--scheduler {scheduler}: not a scheduler address ({exc}); pass tcp://host:port, "
            "as the scheduler prints it"
        ) from None


def _run_dask(tasks: list[_Unit], scheduler: str, merger: _Merger) -> None:
    from dask.distributed import Client, as_completed
    from distributed.security import Security

    # A tls:// scheduler needs Dask's TLS settings: without them Client() fails with a TypeError
    # and its half-made self hangs the exit for a minute
    if (
        scheduler.startswith("tls://")
        and Security().get_connection_args("client")["ssl_context"] is None
    ):
        raise ConfigError(
            f"--scheduler {scheduler}: TLS needs Dask's TLS settings (distributed.comm.tls: "
            "ca-file, and the client's cert and key, in Dask's configuration); set them, or give "
            "a tcp:// address"
        )
    try:
        client = Client(scheduler, timeout=CONNECT_SECONDS, set_as_default=False)
    except (OSError, ValueError) as exc:  # TimeoutError is an OSError
        raise ConfigError(
            f"--scheduler {scheduler}: cannot reach a Dask scheduler ({exc}); check the address "
            "and that the scheduler runs"
        ) from None
    with client:
        # pure=False: each run audits the files anew, even if the same shards were audited
        # before (they may have been rewritten). The scheduler retries a task whose worker died
        # (distributed.scheduler.allowed-failures times) before it gives up on it.
        futures = client.map(_Unit.audit, tasks, pure=False)
        index = {future.key: i for i, future in enumerate(futures)}
        cut = len(merger.infos) - 1
        try:
            for future in as_completed(futures, loop=client.loop):  # cancelled ones too
                unit = tasks[index[future.key]]
                merger.take(unit.index, unit.part, future)
                last, _ = merger.cut()
                if last < cut:  # a new cut: what comes after it need not run
                    cut = last
                    client.cancel([f for f, u in zip(futures, tasks, strict=True) if u.index > cut])
        finally:  # an interrupt: nothing of this run is left on the cluster
            client.cancel([f for f in futures if not f.done()])
