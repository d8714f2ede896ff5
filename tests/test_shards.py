"""`check` of a sharded dump: which files, in which order, with which labels; the one report over
all shards equals the report of their concatenation; shards audited in other processes (local,
or a Dask cluster) give that same report, or fail naming the shards no process could audit.

Expected row numbers are derived here from the shards' sizes; every comparison is with the
audit of the concatenated array, written to one file by the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from processes import busy_workers, frameworks_imported, gone

import xentaudit.parallel
from xentaudit.check import check_file
from xentaudit.cli import cli
from xentaudit.errors import ConfigError, ImplementationError, InputError
from xentaudit.report.csv import line
from xentaudit.shards import Shard, natural_key, resolve

SIZES = (7, 5, 9)  # rows per shard
CLASSES = 6
FAST = {"impls": ["naive", "clipped", "tf_softmax_xent"], "modes": ["eager"]}
# What the tests that start processes audit where the backend is incidental (the merging of
# shards, errors, retries, progress do not depend on it): a process imports the frameworks of
# what it audits, JAX in about a second, TensorFlow in seven. The naive softmax-then-log (its
# rows flagged on the dump's large logits) and a fused loss; compiled, once per process. Two
# tests still audit FAST (TensorFlow) in other processes: --jobs and a Dask cluster.
SPAWN = {"impls": ["jax_softmax_log", "optax_softmax_xent"], "modes": ["graph"]}


def _shards(folder: Path, labels_folder: Path | None = None, nan_at: int | None = None):
    """Shards ``shard-1.npy``... of logits at scales that break ``naive`` and ``clipped`` on
    some rows (NaN, clip), their labels in ``labels_folder`` under the same names, and the
    concatenation (logits, labels). ``nan_at``: a row of the whole set to NaN."""
    rng = np.random.default_rng(5)
    rows = sum(SIZES)
    x = (rng.standard_normal((rows, CLASSES)) * rng.choice([1, 30, 120], (rows, 1))).astype(
        np.float32
    )
    y = rng.integers(0, CLASSES, rows)
    if nan_at is not None:
        x[nan_at, 2] = np.nan
    folder.mkdir(exist_ok=True)
    start = 0
    for i, n in enumerate(SIZES, start=1):
        np.save(folder / f"shard-{i}.npy", x[start : start + n])
        if labels_folder is not None:
            labels_folder.mkdir(exist_ok=True)
            np.save(labels_folder / f"shard-{i}.npy", y[start : start + n])
        start += n
    return x, y


def _without_shards(doc: dict) -> dict:
    """A check's JSON without what names the files (path, labels, shards, worst rows' shard)."""
    doc = json.loads(json.dumps(doc))
    for key in ("path", "labels", "shards"):
        doc.pop(key)
    rows = [row for result in doc["results"] for row in result["worst_rows"]]
    for row in rows + doc["verdict"]["rows_at_risk"]:
        row.pop("shard")
        row.pop("shard_row")
    return doc


@pytest.fixture(scope="module")
def jax() -> None:
    """The tests that audit JAX's implementations in other processes (SPAWN, a user's
    ``jax:`` loss) skip where JAX is not installed."""
    pytest.importorskip("jax")
    pytest.importorskip("optax")


@pytest.fixture(scope="module")
def dump(tmp_path_factory) -> tuple[Path, dict]:
    """Three shards with labels, and the report of their concatenation in one file (chunks of
    one row: chunk boundaries then fall on shard boundaries, so every implementation sees the
    same batches either way)."""
    root = tmp_path_factory.mktemp("dump")
    x, y = _shards(root / "logits", root / "labels")
    np.save(root / "all.npy", x)
    np.save(root / "all-labels.npy", y)
    whole = check_file(root / "all.npy", labels=root / "all-labels.npy", chunk_rows=1, **FAST)
    return root, whole.to_dict()


def test_natural_order_puts_shard_2_before_shard_10() -> None:
    names = ["shard-10.npy", "shard-2.npy", "shard-1.npy"]
    assert sorted(names, key=natural_key) == ["shard-1.npy", "shard-2.npy", "shard-10.npy"]


def test_a_glob_a_folder_and_files_name_the_same_shards(tmp_path) -> None:
    _shards(tmp_path / "logits", tmp_path / "labels")
    (tmp_path / "logits" / "notes.txt").write_text("not a shard")
    expected = [
        Shard(tmp_path / "logits" / f"shard-{i}.npy", tmp_path / "labels" / f"shard-{i}.npy")
        for i in (1, 2, 3)
    ]
    by_glob = resolve([str(tmp_path / "logits" / "shard-*.npy")], str(tmp_path / "labels" / "*"))
    by_folder = resolve([tmp_path / "logits"], tmp_path / "labels")
    by_files = resolve([e.path for e in expected], str(tmp_path / "labels"))
    assert by_glob == by_folder == by_files == expected


def test_labels_pair_by_what_the_wildcards_matched(tmp_path) -> None:
    for i in (1, 2):
        np.save(tmp_path / f"logits-{i}.npy", np.zeros((1, 2), np.float32))
        np.save(tmp_path / f"labels-{i}.npy", np.zeros(1, np.int64))
    shards = resolve([str(tmp_path / "logits-*.npy")], str(tmp_path / "labels-*.npy"))
    assert [(s.path.name, s.labels.name) for s in shards] == [
        ("logits-1.npy", "labels-1.npy"),
        ("logits-2.npy", "labels-2.npy"),
    ]


def test_shards_that_do_not_pair_or_repeat_are_refused(tmp_path) -> None:
    _shards(tmp_path / "logits", tmp_path / "labels")
    logits = str(tmp_path / "logits" / "*.npy")
    (tmp_path / "labels" / "shard-3.npy").unlink()
    with pytest.raises(InputError, match=r"no labels file pairs with .*shard-3.npy"):
        resolve([logits], str(tmp_path / "labels"))
    np.save(tmp_path / "labels" / "shard-3.npy", np.zeros(9, np.int64))
    np.save(tmp_path / "labels" / "shard-4.npy", np.zeros(9, np.int64))
    with pytest.raises(InputError, match=r"shard-4.npy pairs with no logits shard"):
        resolve([logits], str(tmp_path / "labels"))
    with pytest.raises(InputError, match=r"matches no .npy or .npz file"):
        resolve([str(tmp_path / "nowhere" / "*.npy")], None)
    with pytest.raises(ConfigError, match="given twice"):
        resolve([logits, str(tmp_path / "logits" / "shard-1.npy")], None)


def test_one_labels_file_never_serves_several_shards(tmp_path) -> None:
    _shards(tmp_path / "logits", tmp_path / "labels")
    shards = [str(tmp_path / "logits" / f"shard-{i}.npy") for i in (1, 2, 3)]
    one = str(tmp_path / "labels" / "shard-1.npy")
    for paths in (shards, [str(tmp_path / "logits")]):
        with pytest.raises(InputError, match=r"no labels file pairs with .*shard-2\.npy"):
            resolve(paths, one)


def test_two_labels_files_of_one_name_are_refused_in_one_line(tmp_path) -> None:
    _shards(tmp_path / "logits", tmp_path / "labels")
    np.savez(tmp_path / "labels" / "shard-2.npz", labels=np.zeros(5, np.int64))
    result = CliRunner().invoke(
        cli, ["check", str(tmp_path / "logits"), "--labels", str(tmp_path / "labels")]
    )
    assert result.exit_code == 2
    assert "two files are named shard-2" in result.output and "Traceback" not in result.output


def test_a_glob_over_folders_orders_shards_by_their_whole_path(tmp_path) -> None:
    for folder in ("b", "a"):
        for i in (2, 1):
            (tmp_path / folder).mkdir(exist_ok=True)
            np.save(tmp_path / folder / f"shard-{i}.npy", np.zeros((1, 2), np.float32))
    shards = resolve([str(tmp_path / "*" / "shard-*.npy")], None)
    order = [f"{s.path.parent.name}/{s.path.name}" for s in shards]
    assert order == ["a/shard-1.npy", "a/shard-2.npy", "b/shard-1.npy", "b/shard-2.npy"]


def test_a_broken_entry_of_a_folder_is_refused_not_skipped(tmp_path) -> None:
    _shards(tmp_path / "logits")
    (tmp_path / "logits" / "shard-4.npy").symlink_to(tmp_path / "nowhere.npy")
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "logits"), "--impl", "naive"])
    assert result.exit_code == 2 and "shard-4.npy" in result.output


def test_empty_shards_are_audited_as_nothing_but_an_empty_dump_is_refused(tmp_path) -> None:
    _shards(tmp_path / "logits", tmp_path / "labels")
    np.save(tmp_path / "logits" / "shard-4.npy", np.zeros((0, CLASSES), np.float32))
    np.save(tmp_path / "labels" / "shard-4.npy", np.zeros(0, np.int64))
    with_empty = check_file(str(tmp_path / "logits"), labels=tmp_path / "labels", **FAST)
    (tmp_path / "logits" / "shard-4.npy").unlink()
    (tmp_path / "labels" / "shard-4.npy").unlink()
    without = check_file(str(tmp_path / "logits"), labels=tmp_path / "labels", **FAST)
    assert with_empty.shards[-1].rows == 0
    assert with_empty.to_dict()["results"] == without.to_dict()["results"]  # NaN == NaN
    for i in (1, 2, 3):
        np.save(tmp_path / "logits" / f"shard-{i}.npy", np.zeros((0, CLASSES), np.float32))
    with pytest.raises(
        InputError, match="is empty, so there is nothing to audit; check the folder or glob"
    ):
        check_file(str(tmp_path / "logits"), **FAST)


def test_shards_that_do_not_concatenate_are_refused(tmp_path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(InputError, match=r"has classes 4, .*a.npy 3"):
        check_file([tmp_path / "a.npy", tmp_path / "b.npy"], **FAST)
    np.save(tmp_path / "b.npy", np.zeros((2, 3), np.float16))
    with pytest.raises(InputError, match=r"has dtype float16, .*a.npy float32"):
        check_file([tmp_path / "a.npy", tmp_path / "b.npy"], **FAST)


def test_the_report_over_shards_is_the_report_of_their_concatenation(dump) -> None:
    root, whole = dump
    sharded = check_file(
        str(root / "logits" / "shard-*.npy"), labels=root / "labels", chunk_rows=1, **FAST
    )
    doc = sharded.to_dict()
    assert any("nan" in r["flags"] for r in doc["results"])  # flags fired: rows to name
    assert _without_shards(doc) == _without_shards({**whole, "shards": []})
    firsts = np.cumsum((0, *SIZES[:-1]))
    assert [(s["rows"], s["first_row"]) for s in doc["shards"]] == list(
        zip(SIZES, firsts.tolist(), strict=True)
    )
    for result in doc["results"]:
        for row in result["worst_rows"]:
            i = int(np.searchsorted(firsts, row["row"], side="right")) - 1
            assert row["shard"] == str(root / "logits" / f"shard-{i + 1}.npy")
            assert row["shard_row"] == row["row"] - firsts[i]


def test_default_chunks_give_the_same_exact_reference(dump) -> None:
    """With the default chunks (one per shard here, one for the whole file) the implementations
    see other batches; what does not depend on them, the exact side, is still bit for bit."""
    root, whole = dump
    doc = check_file(str(root / "logits"), labels=str(root / "labels"), **FAST).to_dict()
    for got, expected in zip(doc["results"], whole["results"], strict=True):
        assert got["exact_mean"] == expected["exact_mean"]
        assert got["rows"] == expected["rows"]


def test_bad_rows_are_named_in_the_whole_and_in_their_shard(tmp_path) -> None:
    _shards(tmp_path / "logits", nan_at=SIZES[0] + 3)
    with pytest.raises(InputError, match=r"NaN in row 10 \(.*shard-2.npy row 3\)"):
        check_file(str(tmp_path / "logits"), **FAST)


def test_cli_reports_name_the_shard_of_a_row(dump, tmp_path) -> None:
    root, _ = dump
    args = [
        "check", str(root / "logits" / "shard-*.npy"), "--labels", str(root / "labels" / "*.npy"),
        "--impl", "naive", "--mode", "eager", "--chunk-rows", "1",
        "--flagged-rows", str(tmp_path / "rows.csv"),
    ]  # fmt: skip
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 1, table.output
    doc = json.loads(CliRunner().invoke(cli, [*args, "--format", "json"]).output)
    risk = doc["verdict"]["rows_at_risk"][0]
    named = f"{risk['row']} ({risk['shard']} row {risk['shard_row']})"
    assert f"row {named}" in table.output
    github = CliRunner().invoke(cli, [*args, "--format", "github"]).output
    worst = doc["results"][0]["worst_rows"][0]
    assert f"worst row {worst['row']} ({worst['shard']} row {worst['shard_row']}):" in github
    CliRunner().invoke(cli, [*args, "--html", str(tmp_path / "report.html")])
    assert f"<td class=num>{named}</td>" in (tmp_path / "report.html").read_text()
    assert [s["path"] for s in doc["shards"]] == [
        str(root / "logits" / f"shard-{i}.npy") for i in (1, 2, 3)
    ]
    lines = (tmp_path / "rows.csv").read_text().splitlines()
    header = lines[0].split(",")
    first = dict(zip(header, lines[1].split(","), strict=True))
    assert header[-2:] == ["shard", "shard_row"]
    firsts = np.cumsum((0, *SIZES[:-1]))
    i = int(np.searchsorted(firsts, int(first["row"]), side="right")) - 1
    assert first["shard"].endswith(f"shard-{i + 1}.npy")
    assert int(first["shard_row"]) == int(first["row"]) - firsts[i]


def test_jobs_give_the_single_process_report_and_flagged_rows(dump) -> None:
    root, _ = dump
    args = {"labels": str(root / "labels"), "chunk_rows": 1, **FAST}
    one: list = []
    two: list = []
    alone = check_file(str(root / "logits"), on_flagged_row=one.append, **args)
    parallel = check_file(str(root / "logits"), on_flagged_row=two.append, jobs=2, **args)
    assert parallel.to_dict() == alone.to_dict()
    assert [line(r) for r in two] == [line(r) for r in one] and one  # NaN == NaN here


JAX_LOSS = """
import jax


def loss(labels, logits):
    return -(labels * jax.nn.log_softmax(logits, axis=-1)).sum(axis=-1)
"""


def test_jobs_leave_a_users_loss_and_its_framework_to_the_processes(dump, jax, tmp_path) -> None:
    # each shard's process imports the loss (and JAX); the command imported it too, only to
    # check it, which cost it the framework's memory
    root, _ = dump
    (tmp_path / "own.py").write_text(JAX_LOSS)
    impl = f"jax:{tmp_path / 'own.py'}:loss"
    printed = frameworks_imported(
        f"""
        from xentaudit.check import check_file

        check = check_file({str(root / "logits")!r}, labels={str(root / "labels")!r},
                           impls=[{impl!r}], modes=["eager"], jobs=2)
        assert [r.impl for r in check.results] == [{impl!r}] and check.rows == {sum(SIZES)}
        """
    )
    assert printed == "[]"
    # beside a saved model's loss too (the model read from its file: no framework either)
    inputs = keras.Input(shape=(CLASSES,))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(inputs))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(tmp_path / "m.keras")
    printed = frameworks_imported(
        f"""
        from xentaudit.check import check_file

        check = check_file({str(root / "logits")!r}, labels={str(root / "labels")!r},
                           impls=[{impl!r}], modes=["eager"], jobs=2,
                           model={str(tmp_path / "m.keras")!r})
        assert [r.impl for r in check.results] == [{impl!r}, "model"]
        """
    )
    assert printed == "[]"


def test_jobs_report_a_users_loss_that_fails_to_load_as_one_process(dump, jax, tmp_path) -> None:
    # loaded by the shards' processes, or here before the audit when the shards are one: the
    # error is the one one process gives, before a NaN row's too
    root, _ = dump
    (tmp_path / "bad.py").write_text("import no_such_module_here\n")
    nan = np.zeros((3, CLASSES), np.float32)
    nan[0, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "nan-labels.npy", np.zeros(3, np.int64))
    _shards(tmp_path / "nans", tmp_path / "nan-labels", nan_at=2)  # a NaN in shard 1
    impls = [f"jax:{tmp_path / 'bad.py'}:f"]
    for files, labels in (
        (root / "logits", root / "labels"),  # shards in two processes
        (tmp_path / "nans", tmp_path / "nan-labels"),
        (root / "logits" / "shard-2.npy", root / "labels" / "shard-2.npy"),  # one, here
        (tmp_path / "nan.npy", tmp_path / "nan-labels.npy"),
    ):
        with pytest.raises(ConfigError) as alone:
            check_file(str(files), labels=str(labels), impls=impls)
        with pytest.raises(ConfigError) as parallel:
            check_file(str(files), labels=str(labels), impls=impls, jobs=2)
        assert str(parallel.value) == str(alone.value)
        assert "raised ModuleNotFoundError" in str(alone.value)


DIES = """
import os
from pathlib import Path

import jax

MARK = Path({mark!r})


def dies(labels, logits):
    # kill the process every time (mark "always"), or once in all: the one call that creates
    # the mark (O_EXCL: of two workers racing, one wins)
    if MARK.exists() and MARK.read_text() == "always":
        os._exit(1)  # the process dies: nothing to catch
    try:
        os.close(os.open(MARK, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return -(labels * jax.nn.log_softmax(logits)).sum(-1)
    MARK.write_text("died")
    os._exit(1)
"""


def _dying_loss(tmp_path: Path) -> tuple[str, Path]:
    mark = tmp_path / "mark"
    (tmp_path / "dies.py").write_text(DIES.format(mark=str(mark)))
    return f"jax:{tmp_path / 'dies.py'}:dies", mark


def test_errors_in_processes_are_the_single_process_errors(jax, tmp_path) -> None:
    """Shard 1 holds a NaN logit, shard 3 a label out of range: one process names the NaN (it
    only scans the shards after it), and so do two."""
    _shards(tmp_path / "logits", tmp_path / "labels", nan_at=2)
    np.save(tmp_path / "labels" / "shard-3.npy", np.full(SIZES[2], CLASSES, np.int64))
    args = ["check", str(tmp_path / "logits"), "--labels", str(tmp_path / "labels")]
    fast = ["--impl", "jax_softmax_log", "--mode", "graph"]  # as SPAWN
    alone = CliRunner().invoke(cli, [*args, *fast])
    parallel = CliRunner().invoke(cli, [*args, *fast, "--jobs", "2"])
    assert alone.exit_code == parallel.exit_code == 2
    assert "NaN in row 2" in alone.output
    assert parallel.output == alone.output
    np.save(tmp_path / "logits" / "shard-1.npy", np.zeros((SIZES[0], CLASSES), np.float32))
    parallel = CliRunner().invoke(cli, [*args, *fast, "--jobs", "2"])
    assert parallel.exit_code == 2, parallel.output
    assert "shard-3.npy: " in parallel.output and "out of range" in parallel.output


def test_a_local_process_that_dies_fails_the_check_naming_the_shards(dump, jax, tmp_path) -> None:
    root, _ = dump
    loss, mark = _dying_loss(tmp_path)
    mark.write_text("always")
    args = ["check", str(root / "logits"), "--labels", str(root / "labels"), "--jobs", "2"]
    result = CliRunner().invoke(cli, [*args, "--impl", loss, "--mode", "eager"])
    assert result.exit_code == 3, result.output
    assert "could not be audited, so the check is incomplete" in result.output
    assert "shard-1.npy" in result.output


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes; the scheduler gives up on a task after its second worker died
    (allowed-failures 1: one retry), so that the test of a worker that always dies is short."""
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as local,
    ):
        yield local.scheduler_address


def test_a_dask_cluster_gives_the_single_process_report(dump, cluster) -> None:
    root, _ = dump
    args = {"labels": str(root / "labels"), "chunk_rows": 1, **FAST}
    one: list = []
    two: list = []
    alone = check_file(str(root / "logits"), on_flagged_row=one.append, **args)
    on_dask = check_file(str(root / "logits"), on_flagged_row=two.append, scheduler=cluster, **args)
    assert on_dask.to_dict() == alone.to_dict()
    assert [line(r) for r in two] == [line(r) for r in one] and one  # NaN == NaN here


def test_a_worker_that_dies_once_is_retried_and_the_report_is_complete(
    dump, cluster, jax, tmp_path
) -> None:
    root, _ = dump
    loss, mark = _dying_loss(tmp_path)
    args = {"labels": str(root / "labels"), "impls": [loss], "modes": ["eager"]}
    on_dask = check_file(str(root / "logits"), scheduler=cluster, **args)
    assert mark.read_text() == "died"  # a worker did die
    alone = check_file(str(root / "logits"), **args)  # the mark is set: nothing dies here
    assert on_dask.to_dict() == alone.to_dict()


def test_a_shard_whose_worker_always_dies_fails_with_exit_3(dump, cluster, jax, tmp_path) -> None:
    root, _ = dump
    loss, mark = _dying_loss(tmp_path)
    mark.write_text("always")
    args = ["check", str(root / "logits" / "shard-1.npy"), str(root / "logits" / "shard-2.npy")]
    result = CliRunner().invoke(
        cli, [*args, "--impl", loss, "--mode", "eager", "--scheduler", cluster]
    )
    assert result.exit_code == 3, result.output
    assert "2 of 2 shards could not be audited" in result.output
    assert "KilledWorker" in result.output


def test_labels_in_memory_go_with_one_file_audited_here(dump) -> None:
    root, _ = dump
    labels = np.zeros(SIZES[0], np.int64)
    for where in (
        {"path": str(root / "logits")},
        {"path": root / "logits" / "shard-1.npy", "scheduler": "tcp://127.0.0.1:9"},
    ):
        with pytest.raises(ConfigError, match="labels given as an array go with one file"):
            check_file(labels=labels, **where, **FAST)


def test_relative_paths_reach_the_workers_and_reports_keep_them(
    dump, cluster, jax, tmp_path, monkeypatch
) -> None:
    root, _ = dump
    # Keras' recipe by hand: p clipped to [1e-7, 1], divergent on the dump's large logits
    (tmp_path / "clip.py").write_text(
        "import jax\nimport jax.numpy as jnp\n\n\ndef clip(labels, logits):\n"
        "    p = jnp.clip(jax.nn.softmax(logits), 1e-7, 1.0)\n"
        "    return -jnp.sum(labels * jnp.log(p), axis=-1)\n"
    )
    monkeypatch.chdir(tmp_path)
    # three spellings of one file, each a result of its own in one process: on the cluster too
    # (their absolute paths were one, and the three results one)
    spellings = ["jax:clip.py:clip", "jax:./clip.py:clip", f"jax:{tmp_path / 'clip.py'}:clip"]
    # under jax.jit (the loss has no Python control flow): JAX eager compiles every primitive
    # anew per chunk shape, in each worker, and the paths are what this test is about
    args = {"labels": str(root / "labels"), "impls": spellings, "modes": ["training"]}
    rows: list = []
    on_dask = check_file(
        str(root / "logits"), scheduler=cluster, on_flagged_row=rows.append, **args
    )
    alone = check_file(str(root / "logits"), **args)
    assert [r.impl for r in on_dask.results] == spellings
    assert on_dask.to_dict() == alone.to_dict()
    assert rows and {r.impl for r in rows} == set(spellings)  # streamed as given too


def test_a_users_loss_given_relatively_fails_on_the_cluster_as_here(
    dump, cluster, jax, tmp_path, monkeypatch
) -> None:
    """The workers get its absolute path; the error's place is still ranked under the name
    given (it was a KeyError), and the error names the loss as given, as one process does (it
    named its absolute path); so does an error in importing one."""
    root, _ = dump
    (tmp_path / "boom.py").write_text("def loss(labels, logits):\n    raise ValueError('boom')\n")
    (tmp_path / "bad.py").write_text("import no_such_module_here\n")
    monkeypatch.chdir(tmp_path)
    args = {"labels": str(root / "labels"), "modes": ["eager"]}
    for impl, error in (("jax:boom.py:loss", ImplementationError), ("jax:./bad.py:f", ConfigError)):
        with pytest.raises(error) as alone:
            check_file(str(root / "logits"), impls=[impl], **args)
        with pytest.raises(error) as on_dask:
            check_file(str(root / "logits"), impls=[impl], scheduler=cluster, **args)
        assert str(on_dask.value) == str(alone.value)
        assert impl in str(alone.value) and str(tmp_path) not in str(alone.value)
    # a module the workers lack, which the command has: only a worker fails to import the file
    (tmp_path / "lacks.py").write_text(WORKER_LACKS)
    with pytest.raises(ConfigError) as on_dask:
        check_file(str(root / "logits"), impls=["jax:./lacks.py:loss"], scheduler=cluster, **args)
    assert str(tmp_path) not in str(on_dask.value)
    assert "'jax:./lacks.py:loss': importing ./lacks.py raised ModuleNotFoundError" in str(
        on_dask.value
    )


WORKER_LACKS = """
import distributed

try:
    distributed.get_worker()
except ValueError:  # not on a worker
    pass
else:
    import no_such_module_on_the_workers


def loss(labels, logits):
    return labels[:, 0]
"""


@pytest.mark.parametrize(
    ("cwd", "spellings"),
    [
        ("", ["tf:{abs}/clip.py:a", "tf:clip.py:b"]),  # the absolute one's name left as it is
        ("", ["tf:clip.py:a", "tf:./clip.py:b", "torch:./clip.py:c"]),  # one file, 3 spellings
        ("", ["tf:clip.py:a", "tf:{abs}/clip.py:a", "clip.py:a", "tf:we\\ird/clip.py:a"]),
        ("", ["tf:x.py:f", "tf:/outer{abs}/x.py:g"]),  # the first's file, sent, ends the second's
        ("", ["tf:a.py:f", "tf:{abs}/a.py.py:g"]),  # the first's file begins the second's
        ("it's", ["tf:x.py:f", "tf:./x.py:g"]),  # sent quoted in double quotes, given in single
    ],
)
def test_a_workers_error_names_each_users_loss_and_file_as_given(
    cwd, spellings, tmp_path, monkeypatch
) -> None:
    # The workers get every spelling of a file by an absolute path of its own; the loader's
    # errors name the loss (quoted, ``{spec!r}``) and its file as sent, which must read as
    # given, the rest of the message (the user's own words) as the worker wrote it.
    from xentaudit.errors import UnknownImplementationError
    from xentaudit.impls import user_backend
    from xentaudit.parallel import _absolute, _error_as_given

    (tmp_path / cwd).mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / cwd)
    names = [name.format(abs=tmp_path / cwd) for name in spellings]
    files: dict[str, str] = {}
    sent = {name: _absolute(name, files) for name in names}
    assert len(set(sent.values())) == len(names)  # one result per spelling

    def errors(name: str, words: str) -> list[str]:  # as the loader words them
        file = user_backend(name)[1].rpartition(":")[0]
        return [
            f"--impl {name!r}: importing {file} raised ValueError: {words}",
            f"--impl {name!r}: no such file: {Path(file)}; check the path",
            f"--impl {name!r}: {file} has no function f",
            f"--impl {name}: the loss raised ValueError: {words}",
            f"--impl {name!r}: {Path(file)} is a directory, not a file; pass a .py file",
            f"--impl {name!r}: cannot read {Path(file)} (Permission denied); check the path",
        ]

    given = {path: name for name, path in sent.items()}
    for name in names:
        words = user_backend(sent[name])[1]  # e.g. the worker's __file__: left as it is
        for worker, here in zip(errors(sent[name], words), errors(name, words), strict=True):
            exc = UnknownImplementationError(worker)
            _error_as_given(exc, given)
            assert str(exc) == here


def test_scheduler_refusals_are_one_line_exit_2(dump, monkeypatch) -> None:
    root, _ = dump
    args = ["check", str(root / "logits"), "--labels", str(root / "labels"), "--impl", "naive"]
    result = CliRunner().invoke(cli, [*args, "--scheduler", "tcp://127.0.0.1:9", "--timeout", "5"])
    assert result.exit_code == 2 and "drop --timeout with --scheduler" in result.output
    monkeypatch.setattr(xentaudit.parallel, "CONNECT_SECONDS", 1)  # nothing listens on port 9
    result = CliRunner().invoke(cli, [*args, "--scheduler", "tcp://127.0.0.1:9"])
    assert result.exit_code == 2 and "cannot reach a Dask scheduler" in result.output
    assert result.output.count("\n") == 1
    result = CliRunner().invoke(cli, [*args, "--scheduler", "notanaddress"])
    assert result.exit_code == 2 and "not a scheduler address" in result.output
    assert result.output.count("\n") == 1
    # tls:// without Dask's TLS settings: refused before a Client is made (one that fails to
    # connect for want of them hung the exit for a minute)
    result = CliRunner().invoke(cli, [*args, "--scheduler", "tls://127.0.0.1:9"])
    assert result.exit_code == 2 and "TLS needs Dask's TLS settings" in result.output
    assert result.output.count("\n") == 1


SLEEPS = """
import time
from pathlib import Path

import jax


def sleeps(labels, logits):
    Path({mark!r}).touch()
    time.sleep(120)
    return -(labels * jax.nn.log_softmax(logits)).sum(-1)
"""


def test_jobs_processes_end_with_the_command(dump, jax, tmp_path) -> None:
    """SIGTERM ends the command at once (exit 143); its --jobs processes, busy in a loss, end
    too, within the watch's poll, instead of waiting forever for work; the folder of the rows
    they write for --flagged-rows goes with them."""
    import os
    import signal
    import subprocess
    import sys

    root, _ = dump
    mark = tmp_path / "started"
    (tmp_path / "sleeps.py").write_text(SLEEPS.format(mark=str(mark)))
    (tmp_path / "tmp").mkdir()
    cmd = [
        sys.executable, "-m", "xentaudit", "check", str(root / "logits"), "--labels",
        str(root / "labels"), "--impl", f"jax:{tmp_path / 'sleeps.py'}:sleeps", "--mode", "eager",
        "--jobs", "2", "--flagged-rows", str(tmp_path / "rows.csv"),
    ]  # fmt: skip
    environment = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    command = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment
    )
    workers = busy_workers(command, mark)
    assert workers
    command.send_signal(signal.SIGTERM)
    assert command.wait(timeout=30) == 143
    # one line, nothing after it (multiprocessing's resource tracker warned of the pool's
    # semaphores the command left behind)
    assert command.stderr.read() == b"xentaudit: terminated\n"
    assert gone(workers, 10)  # the watch polls every second
    assert not list((tmp_path / "tmp").glob("xentaudit-rows-*"))


def test_the_progress_of_jobs_moves_a_chunk_at_a_time_up_to_the_total(dump, jax) -> None:
    # two processes at once: their chunks counted as they are done, the sum only going up
    root, _ = dump
    seen: list[tuple[int, int]] = []
    check_file(root / "logits", labels=root / "labels", jobs=2, chunk_rows=1,
               progress=lambda done, total: seen.append((done, total)), **SPAWN)  # fmt: skip
    done = [d for d, _ in seen]
    assert done == sorted(set(done)) and seen[-1] == (sum(SIZES), sum(SIZES))
    assert len(done) > len(SIZES)  # more often than once a shard


def test_labels_that_do_not_fit_their_shard_are_named(tmp_path) -> None:
    # among many shards, the one pair whose labels are short is the one the error names
    _shards(tmp_path / "logits", tmp_path / "labels")
    short = tmp_path / "labels" / "shard-2.npy"
    np.save(short, np.load(short)[:-1])
    with pytest.raises(InputError) as error:
        check_file(tmp_path / "logits", labels=tmp_path / "labels", **FAST)
    message = str(error.value)
    assert f"({short}) do not fit logits" in message
    assert f"({tmp_path / 'logits' / 'shard-2.npy'})" in message
