"""`check` with each backend audited in a process of its own (``apart``, what the command line
does when several backends are audited): the same ``Check`` and flagged rows as one process,
results in one process's order, the error one process meets first, and a caller that imports
no framework (so that a process imports only its own)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from processes import frameworks_imported

import xentaudit.parallel
from xentaudit.check import check_file
from xentaudit.cli import cli
from xentaudit.errors import ImplementationError, InputError, XentauditError
from xentaudit.report.csv import line


@pytest.fixture(scope="module")
def _module_pools():
    """Pools of spawned processes (``parallel._local_pool``, started as every pool's are), one
    per (workers, threads), kept until the module's tests are done, then ended."""
    local_pool = xentaudit.parallel._local_pool
    where = os.getcwd()  # where the processes start: a relative path is read from there
    with contextlib.ExitStack() as stack:
        pools: dict = {}

        def pool(workers: int, threads: int | None):
            assert os.getcwd() == where, "a test that changes directory needs its own processes"
            if (workers, threads) not in pools or pools[workers, threads]._broken:
                pools[workers, threads] = stack.enter_context(local_pool(workers, threads))
            return pools[workers, threads]

        yield pool


@pytest.fixture
def shared_processes(_module_pools, monkeypatch):
    """The parts of a run apart go to processes spawned once for the module, not per run: for
    the tests of which error, order or rows the parts give, which the merging decides. A run
    still sends its units to other processes, pickled, and takes their outcomes back; what a
    process's start and end do (a framework imported by its own process only, the working
    directory, a process that dies, the progress queue) is tested with processes of the run's
    own. A process kept so may hold several backends' frameworks; one that died is replaced
    for the next test."""

    @contextlib.contextmanager
    def shared(workers: int, threads: int | None, ticks: object = None):
        assert ticks is None, "a run with a progress queue needs processes of its own"
        yield _module_pools(workers, threads)

    monkeypatch.setattr(xentaudit.parallel, "_local_pool", shared)


# Backends interleaved (torch, jax, torch, jax, torch): the results of one process come in this
# order, which the parts audited apart must be put back in. The apart machinery is the same
# whatever the backends, and a process that imports torch or jax starts far sooner than one that
# imports TensorFlow; both softmax-then-log ones flag rows.
MIXED = [
    "torch_softmax_log",
    "optax_softmax_xent",
    "torch_cross_entropy",
    "jax_softmax_log",
    "torch_log_softmax_nll",
]
FAST = {"impls": MIXED, "modes": ["training"], "eps": [1e-7, 1e-3], "chunk_rows": 4}
# With TensorFlow among them (tf, torch, tf, jax, torch), clipped at two epsilons (a result per
# epsilon): a TensorFlow process apart, compared with the one-process check.
MIXED_TF = [
    "naive",
    "torch_cross_entropy",
    "clipped",
    "optax_softmax_xent",
    "torch_log_softmax_nll",
]
FAST_TF = {**FAST, "impls": MIXED_TF}


@pytest.fixture(scope="module")
def logits(tmp_path_factory) -> tuple[Path, Path]:
    """11 rows (chunks of 4, 4 and 3) at scales that flag some rows in some implementations."""
    root = tmp_path_factory.mktemp("apart")
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((11, 6)) * rng.choice([1, 40, 150], (11, 1))).astype(np.float32)
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", rng.integers(0, 6, 11))
    return root / "x.npy", root / "y.npy"


# Class-label kernels beside soft labels (label smoothing) in two dtypes: skipped in each dtype,
# the skips of every backend (jax's, torch's) listed in one process's order, dtype by dtype, not
# one process's after the other's; the results too (torch's first, though jax's process, whose
# kernel comes first, is done first). In the training modes, one a backend as eager: torch's
# eager, JAX's jit (JAX eager compiles every primitive anew for each shape and dtype, seconds in
# its process apart), which the skips and the order do not depend on.
SPARSE = {
    "impls": [
        "optax_softmax_xent_int",
        "torch_log_softmax_nll",
        "torch_cross_entropy",
        "jax_softmax_log",
    ],
    "modes": ["training"],
    "dtypes": ["float32", "float16"],
    "label_smoothing": 0.1,
    "chunk_rows": 4,
}


@pytest.mark.parametrize(
    ("labelled", "args"),
    [(True, FAST_TF), (False, FAST), (True, SPARSE)],
    ids=["labels", "none", "skips"],
)
def test_backends_apart_give_the_one_process_check_and_flagged_rows(
    logits, labelled, args, request
) -> None:
    if args is not FAST_TF:  # TensorFlow's case in processes of its own, the others in shared ones
        request.getfixturevalue("shared_processes")
    x, y = logits
    labels = {"labels": str(y)} if labelled else {}
    one: list = []
    apart: list = []
    alone = check_file(x, on_flagged_row=one.append, **labels, **args)
    split = check_file(x, on_flagged_row=apart.append, apart=True, **labels, **args)
    assert split.to_dict() == alone.to_dict()
    assert [line(r) for r in apart] == [line(r) for r in one] and one  # NaN == NaN here
    # the results interleave the backends as named, whichever process audited them
    names = list(dict.fromkeys(r.impl for r in alone.results))
    assert names == [n for n in args["impls"] if n in names]
    assert len(alone.skipped) == (4 if args is SPARSE else 0)


# Two users' losses that fail on the chunk holding a marker logit (77 for jax's, 55 for torch's):
# which error one process meets first depends on the chunk, then on the order of the results in
# it, not on which backend's process is done first.
FAILING = """
def jax_loss(labels, logits):
    import jax
    import jax.numpy as jnp

    if bool(jnp.any(logits == 77.0)):
        raise ValueError("jax saw 77")
    return -(labels * jax.nn.log_softmax(logits)).sum(-1)


def torch_loss(labels, logits):
    import torch

    if bool((logits.detach() == 55.0).any()):
        raise ValueError("torch saw 55")
    return -(labels * torch.log_softmax(logits, -1)).sum(-1)
"""


@pytest.mark.parametrize(
    ("order", "jax_row", "torch_row", "first"),
    [
        (["jax", "torch"], 9, 2, "torch saw 55"),  # torch's in chunk 0, jax's in chunk 2
        (["jax", "torch"], 1, 6, "jax saw 77"),  # jax's in chunk 0, torch's in chunk 1
        (["jax", "torch"], 5, 4, "jax saw 77"),  # both in chunk 1: jax's loss runs first
        # both in chunk 1, torch's loss first in the results, though jax's process
        # (optax_softmax_xent comes first) is done first
        (["optax_softmax_xent", "torch", "jax"], 5, 4, "torch saw 55"),
        # both in chunk 0, torch's loss second in the results, jax's first in its process
        (["torch_cross_entropy", "torch", "jax"], 1, 2, "torch saw 55"),
    ],
)
@pytest.mark.usefixtures("shared_processes")
def test_the_error_is_the_one_one_process_meets_first(
    tmp_path, order, jax_row, torch_row, first
) -> None:
    (tmp_path / "failing.py").write_text(FAILING)
    x = np.zeros((11, 6), np.float32)
    x[jax_row, 0], x[torch_row, 1] = 77.0, 55.0
    np.save(tmp_path / "x.npy", x)
    users = {b: f"{b}:{tmp_path / 'failing.py'}:{b}_loss" for b in ("jax", "torch")}
    impls = [users.get(name, name) for name in order]
    args = {"labels": np.zeros(11, np.int64), "impls": impls, "modes": ["eager"], "chunk_rows": 4}
    with pytest.raises(ImplementationError, match=first) as alone:
        check_file(tmp_path / "x.npy", **args)
    np.save(tmp_path / "y.npy", args.pop("labels"))
    with pytest.raises(ImplementationError, match=first) as split:
        check_file(tmp_path / "x.npy", labels=tmp_path / "y.npy", apart=True, **args)
    assert str(split.value) == str(alone.value)


def test_the_caller_imports_no_framework_nor_a_users_loss(logits, tmp_path) -> None:
    # a user's loss is imported (with its framework) by its backend's process alone; TensorFlow
    # among the backends, which the caller imports no more than the others
    x, y = logits
    (tmp_path / "own.py").write_text("import torch\n\n" + FAILING)
    impls = [*MIXED_TF, f"torch:{tmp_path / 'own.py'}:torch_loss"]
    printed = frameworks_imported(
        f"""
        from xentaudit.check import check_file

        check = check_file({str(x)!r}, labels={str(y)!r}, impls={impls!r}, apart=True)
        assert {{r.impl for r in check.results}} == set({impls!r})
        """
    )
    assert printed == "[]"


# Users' losses that fail to load: one process loads them in their order before any chunk,
# which the processes apart, one backend's after another's (jax's first: optax_softmax_xent
# comes first), must not change.
BROKEN = """
def tf_loss(logits):
    return logits


def jax_loss(logits):
    return logits
"""
FIRST = "optax_softmax_xent"  # jax's


@pytest.mark.parametrize(
    ("order", "first"),
    [
        ([FIRST, "torch:broken:missing", "jax:broken:jax_loss", "torch_cross_entropy"], "missing"),
        ([FIRST, "jax:broken:jax_loss", "torch:broken:missing", "torch_cross_entropy"], "jax_loss"),
        # the first fails as it is imported, the next has no file: one process never gets there
        ([FIRST, "jax:boom:fn", "torch:absent:fn", "torch_cross_entropy"], "boom at import"),
        ([FIRST, "torch:boom:fn", "jax:broken:1x", "torch_cross_entropy"], "boom at import"),
        # a loss named twice is loaded at its first place
        ([FIRST, "jax:boom:fn", "torch:broken:missing", "jax:boom:fn"], "boom at import"),
    ],
)
@pytest.mark.usefixtures("shared_processes")
def test_a_users_loss_that_fails_to_load_is_the_one_one_process_meets(
    logits, tmp_path, order, first
) -> None:
    x, y = logits
    (tmp_path / "broken.py").write_text(BROKEN)
    (tmp_path / "boom.py").write_text("raise RuntimeError('boom at import')\n")

    def spec(name: str) -> str:
        prefix, stem, fn = name.split(":")
        return f"{prefix}:{tmp_path / stem}.py:{fn}"

    impls = [spec(name) if ":" in name else name for name in order]
    with pytest.raises(XentauditError, match=first) as alone:
        check_file(x, labels=y, impls=impls, modes=["eager"])
    with pytest.raises(XentauditError, match=first) as split:
        check_file(x, labels=y, impls=impls, modes=["eager"], apart=True)
    assert (type(split.value), str(split.value)) == (type(alone.value), str(alone.value))


def test_one_backends_users_loss_loads_before_any_file_is_read(tmp_path) -> None:
    # with one backend nothing is split: the loss is loaded here, before the files, as ever
    (tmp_path / "broken.py").write_text(BROKEN)
    impls = ["naive", f"tf:{tmp_path / 'broken.py'}:tf_loss"]
    for apart in (False, True):
        with pytest.raises(XentauditError, match="tf_loss"):
            check_file(tmp_path / "absent.npy", impls=impls, apart=apart)
        with pytest.raises(XentauditError, match="tf_loss"):  # before the options' checks too
            check_file(tmp_path / "absent.npy", impls=impls, apart=apart, ignore_class=True)


@pytest.mark.usefixtures("shared_processes")
def test_the_command_audits_several_backends_apart_and_one_here(logits, monkeypatch) -> None:
    x, y = logits
    calls: list[bool] = []
    run = xentaudit.parallel.run

    def spy(*args, **kwargs):
        calls.append(kwargs["apart"])
        return run(*args, **kwargs)

    monkeypatch.setattr(xentaudit.parallel, "run", spy)
    base = ["check", str(x), "--labels", str(y), "--mode", "eager", "--format", "json"]
    two = CliRunner().invoke(
        cli, [*base, "--impl", "optax_softmax_xent", "--impl", "torch_cross_entropy"]
    )
    assert two.exit_code in (0, 1), two.output
    assert calls == [True]
    one = CliRunner().invoke(
        cli, [*base, "--impl", "torch_cross_entropy", "--impl", "torch_log_softmax_nll"]
    )
    assert one.exit_code in (0, 1), one.output
    assert calls == [True]  # one backend: audited in this process


def test_a_users_loss_is_named_as_given_and_nothing_after_the_error_is_audited(
    tmp_path, monkeypatch
) -> None:
    """A loss given by a relative path is named so in the error, as one process names it; the
    other backend audits only up to the chunk of the error (to find an earlier one)."""
    (tmp_path / "losses.py").write_text(
        textwrap.dedent(
            """
            def jax_loss(labels, logits):
                raise ValueError("jax fails at once")

            def torch_loss(labels, logits):
                import torch

                with open(__file__ + ".calls", "a") as calls:
                    calls.write("x")
                return -(labels * torch.log_softmax(logits, -1)).sum(-1)
            """
        )
    )
    np.save(tmp_path / "x.npy", np.zeros((40, 4), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(40, np.int64))
    monkeypatch.chdir(tmp_path)
    impls = ["jax:losses.py:jax_loss", "torch:losses.py:torch_loss"]
    args = {"labels": "y.npy", "impls": impls, "modes": ["eager"], "chunk_rows": 2}
    with pytest.raises(ImplementationError) as alone:
        check_file("x.npy", **args)
    with pytest.raises(ImplementationError) as split:
        check_file("x.npy", apart=True, **args)
    assert str(split.value) == str(alone.value)
    assert str(alone.value).startswith("--impl jax:losses.py:jax_loss: ")
    assert (tmp_path / "losses.py.calls").read_text() == "x"  # chunk 0 of 20


def _shards(root: Path, sizes: tuple[int, ...], nan_in=(), bad_label_in=()) -> None:
    rng = np.random.default_rng(3)
    (root / "logits").mkdir()
    (root / "labels").mkdir()
    for i, n in enumerate(sizes):
        x = (rng.standard_normal((n, 5)) * 60).astype(np.float32)
        y = rng.integers(0, 5, n)
        if i in nan_in:
            x[1, 0] = np.nan
        if i in bad_label_in:
            y[0] = 99
        np.save(root / "logits" / f"shard-{i}.npy", x)
        np.save(root / "labels" / f"shard-{i}.npy", y)


@pytest.mark.usefixtures("shared_processes")
@pytest.mark.parametrize("jobs", [1, 2])
def test_shards_apart_give_the_one_process_check(tmp_path, jobs) -> None:
    """An empty shard among them (it runs no backend, and says nothing of the environment)."""
    _shards(tmp_path, (5, 0, 7, 4))
    args = {"labels": str(tmp_path / "labels"), "impls": MIXED[:2], "modes": ["eager"]}
    one: list = []
    apart: list = []
    alone = check_file(str(tmp_path / "logits"), on_flagged_row=one.append, **args)
    split = check_file(
        str(tmp_path / "logits"), on_flagged_row=apart.append, apart=True, jobs=jobs, **args
    )
    assert split.to_dict() == alone.to_dict()
    assert [line(r) for r in apart] == [line(r) for r in one] and one


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize(
    ("nan_in", "rows"),
    [
        # the NaN of shard 7, well after the error, so that no process has it queued already
        ((1, 7), "4, 22"),
        # the NaN of shard 2 itself, after its bad label: every part fails on that label
        # first, so only a scan finds it
        ((1, 2), "4, 7"),
    ],
)
@pytest.mark.usefixtures("shared_processes")
def test_unusable_rows_of_every_shard_are_named_despite_a_later_error(
    tmp_path, jobs, nan_in, rows
) -> None:
    """One process only scans the shards after one with a NaN row (shard 1): the label out of
    range in shard 2 is never read, and every later NaN is named too."""
    _shards(tmp_path, (3,) * 8, nan_in=nan_in, bad_label_in=(2,))
    args = {"labels": str(tmp_path / "labels"), "impls": MIXED[:2], "modes": ["eager"]}
    with pytest.raises(InputError, match=rf"NaN in rows {rows} \(") as alone:
        check_file(str(tmp_path / "logits"), chunk_rows=1, **args)
    with pytest.raises(InputError) as split:
        check_file(str(tmp_path / "logits"), chunk_rows=1, apart=True, jobs=jobs, **args)
    assert str(split.value) == str(alone.value)


def test_a_process_that_dies_names_its_backend(tmp_path) -> None:
    (tmp_path / "dies.py").write_text("import os\n\ndef loss(labels, logits):\n    os._exit(1)\n")
    x = np.zeros((4, 3), np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.zeros(4, np.int64))
    args = ["check", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    dies = f"torch:{tmp_path / 'dies.py'}:loss"  # after jax's process
    impls = ["--impl", "optax_softmax_xent", "--impl", dies, "--mode", "eager"]
    result = CliRunner().invoke(cli, [*args, *impls])
    assert result.exit_code == 3, result.output
    assert "the process auditing the torch backend's implementations died" in result.output
    assert "(--backend torch) to see why" in result.output


def test_a_processs_flagged_rows_come_through_a_file_read_back_in_order(
    logits, tmp_path, monkeypatch
) -> None:
    # A local process writes its flagged rows to a file, a few at a time (SPILL_ROWS), instead of
    # sending them all in its summary; the command reads them back in the same order, as they
    # are passed on, and removes the file.
    from xentaudit.check import CheckOptions
    from xentaudit.parallel import _flagged_rows, _Unit
    from xentaudit.results import ShardInfo
    from xentaudit.shards import Shard

    x, y = logits
    monkeypatch.setattr(xentaudit.parallel, "SPILL_ROWS", 3)
    options = CheckOptions(impls=("naive", "clipped"), modes=("eager",), eps=(1e-7, 1e-3))
    unit = _Unit(0, 0, options, Shard(x, y), ShardInfo(str(x), str(y), 11, 0), True, False)
    held = unit.audit()
    assert not held.spilled and len(held.flagged) > 3  # more than one batch
    spill = tmp_path / "rows.pickle"
    written = replace(unit, spill=str(spill)).audit()
    assert written.flagged is None and written.spilled and spill.exists()
    passed = _flagged_rows(written, {}, str(spill))
    assert [line(r) for r in passed] == [line(r) for r in held.flagged]
    assert not spill.exists()


@pytest.mark.usefixtures("shared_processes")
def test_no_file_of_flagged_rows_is_left_behind(logits, tmp_path, monkeypatch) -> None:
    x, y = logits
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rows: list = []
    check_file(x, labels=y, on_flagged_row=rows.append, apart=True, **FAST)
    assert rows and not list(tmp_path.iterdir())
    (tmp_path / "failing.py").write_text(FAILING)
    z = np.load(x)
    z[9, 1] = 55.0  # torch's loss raises on the last chunk, after rows were written
    np.save(tmp_path / "z.npy", z)
    impls = [*MIXED, f"torch:{tmp_path / 'failing.py'}:torch_loss"]
    args = {**FAST, "impls": impls, "labels": y, "on_flagged_row": rows.append}
    with pytest.raises(ImplementationError, match="torch saw 55"):
        check_file(tmp_path / "z.npy", apart=True, **args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failing.py", "z.npy"]


def test_flagged_rows_held_in_a_summary_are_let_go_as_they_are_passed_on() -> None:
    # a Dask worker's rows travel in its summary: once passed on, the merger holds none
    from xentaudit.check import _Summary
    from xentaudit.parallel import _flagged_rows
    from xentaudit.results import FlaggedRow

    fields = {"eps": None, "dtype": "float32", "policy": "float32", "mode": "eager"}
    fields |= {"labels": "file", "flags": ("nan",), "exact": 1.0, "loss": 2.0, "rel_err": 1.0}
    rows = [FlaggedRow(row=i, impl="sent", grad_err=0.0, **fields) for i in (0, 1)]
    part = _Summary(flagged=rows)
    passed = list(_flagged_rows(part, {"sent": "given"}, None))  # named as given, too
    assert passed == [replace(r, impl="given") for r in rows] and part.flagged is None


def test_the_folder_of_flagged_rows_is_registered_before_it_exists(tmp_path, monkeypatch) -> None:
    # a signal between its making and its registration would leave it behind
    from xentaudit.parallel import _spill_folder, remove_spill_folder, spill_folders

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made: list[tuple[str, bool]] = []
    mkdir = os.mkdir

    def watched(path: str, mode: int = 0o777) -> None:
        made.append((path, path in spill_folders))
        mkdir(path, mode)

    monkeypatch.setattr(xentaudit.parallel.os, "mkdir", watched)
    folder = _spill_folder()
    assert made == [(folder, True)] and os.path.isdir(folder)
    assert os.stat(folder).st_mode & 0o777 == 0o700
    remove_spill_folder(folder)
    assert folder not in spill_folders and not list(tmp_path.iterdir())


def test_no_file_can_be_added_to_the_folder_of_flagged_rows_while_it_is_removed(
    tmp_path, monkeypatch
) -> None:
    # a --jobs process may start its next file while a signal's handler empties the folder
    from xentaudit.parallel import _spill_folder, remove_spill_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = _spill_folder()
    Path(folder, "0-0.pickle").write_bytes(b"rows")
    rmtree = shutil.rmtree
    late: list[BaseException] = []

    def racing(path: str, **kwargs: object) -> None:
        try:  # a process's next file, once the removal has begun
            Path(folder, "1-0.pickle").write_bytes(b"rows")
        except OSError as exc:
            late.append(exc)
        rmtree(path, **kwargs)

    monkeypatch.setattr(xentaudit.parallel.shutil, "rmtree", racing)
    remove_spill_folder(folder)
    assert late and {type(exc) for exc in late} == {FileNotFoundError}
    assert not list(tmp_path.iterdir())


def test_a_removal_interrupted_by_a_signal_is_finished_by_its_handler(
    tmp_path, monkeypatch
) -> None:
    # the command's own removal renames the folder, then a signal's handler removes it by its
    # first name (and the process exits: the interrupted removal never resumes)
    from xentaudit.parallel import _spill_folder, remove_spill_folder, spill_folders

    class Exited(Exception):
        pass

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = _spill_folder()
    Path(folder, "0-0.pickle").write_bytes(b"rows")
    rmtree = shutil.rmtree

    def interrupted(path: str, **kwargs: object) -> None:
        monkeypatch.setattr(xentaudit.parallel.shutil, "rmtree", rmtree)
        remove_spill_folder(folder)  # the handler
        raise Exited

    monkeypatch.setattr(xentaudit.parallel.shutil, "rmtree", interrupted)
    with pytest.raises(Exited):
        remove_spill_folder(folder)
    assert not list(tmp_path.iterdir()) and folder not in spill_folders
    # a rename that fails otherwise (the name taken: not ours): the folder goes as it is, the
    # other stays
    monkeypatch.setattr(xentaudit.parallel.shutil, "rmtree", rmtree)
    folder = _spill_folder()
    Path(folder, "0-0.pickle").write_bytes(b"rows")
    Path(folder + ".removed").mkdir()
    Path(folder + ".removed", "theirs").write_bytes(b"kept")
    remove_spill_folder(folder)
    assert [p.name for p in tmp_path.iterdir()] == [Path(folder).name + ".removed"]
    assert Path(folder + ".removed", "theirs").read_bytes() == b"kept"
    assert folder not in spill_folders


def test_a_temporary_folder_that_cannot_be_written_is_one_line(logits, tmp_path, monkeypatch):
    from xentaudit.errors import ConfigError
    from xentaudit.parallel import spill_folders

    x, y = logits
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"cannot write the flagged rows .* in .*missing"):
        check_file(x, labels=y, on_flagged_row=list().append, apart=True, **FAST)
    assert not spill_folders


def test_a_folder_that_cannot_take_the_flagged_rows_is_one_line(
    logits, tmp_path, monkeypatch
) -> None:
    from xentaudit.check import CheckOptions
    from xentaudit.errors import ConfigError
    from xentaudit.parallel import _Unit
    from xentaudit.results import ShardInfo
    from xentaudit.shards import Shard

    x, y = logits
    options = CheckOptions(impls=("naive",), modes=("eager",))
    info = ShardInfo(str(x), str(y), 11, 0)
    gone = str(tmp_path / "gone" / "rows.pickle")
    unit = _Unit(0, 0, options, Shard(x, y), info, True, False, gone)
    with pytest.raises(ConfigError, match=r"cannot write the flagged rows .* in .*gone"):
        unit.audit()

    def full(*args, **kwargs) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xentaudit.parallel.pickle, "dump", full)
    unit = replace(unit, spill=str(tmp_path / "rows.pickle"))
    with pytest.raises(ConfigError, match=r"\(No space left on device\); free space there"):
        unit.audit()


def test_the_progress_moves_a_chunk_at_a_time_in_every_process(logits) -> None:
    # 11 rows in chunks of 4 (4, 8, 11), two backends apart: 22 rows to audit in all, each
    # process's chunks counted as they are done, not its part once it is whole
    x, y = logits
    seen: list[tuple[int, int]] = []
    impls = ["optax_softmax_xent", "torch_cross_entropy"]
    check_file(x, labels=y, impls=impls, modes=["eager"], chunk_rows=4, apart=True,
               progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert [done for done, _ in seen] == [4, 8, 11, 15, 19, 22]
    assert {total for _, total in seen} == {22}
