"""`[tool.xentaudit]` is data unless trusted: where the search stops, whose files are used, which
entries may load code, and one-line errors naming the file and the key for every malformation.

`config.load` is tested directly (no TensorFlow); three runs through the command line prove a
planted or found configuration never gets its code run, and a named one does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit import config
from xentaudit.cli import cli
from xentaudit.errors import ConfigError

CLEAN = str(Path(__file__).parent.parent / "fixtures" / "clean.npz")
TABLE = '[tool.xentaudit]\nimpls = ["tf_softmax_xent"]\n'
OTHER_UID = 65534  # nobody
as_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root"
)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A project root (it holds .git) inside tmp_path, which stands for the world above it."""
    folder = tmp_path / "project"
    (folder / ".git").mkdir(parents=True)
    return folder


def loaded(body: str | bytes, folder: Path) -> config.Config:
    return config.load(write(folder / "pyproject.toml", body))


def error(body: str | bytes, folder: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        loaded(body, folder)
    return str(caught.value)


# --- where the search looks ---


def test_the_nearest_table_from_the_start_upwards_is_used(root: Path) -> None:
    found = write(root / "pyproject.toml", TABLE)
    write(root / "a" / "pyproject.toml", "[project]\nname = 'no table here'\n")
    start = root / "a" / "b"
    start.mkdir()
    assert config.load(start=start) == config.Config({"impls": ["tf_softmax_xent"]}, found)


@pytest.mark.parametrize(("marker", "is_dir"), [(".git", True), (".hg", True), (".git", False)])
def test_a_file_above_the_project_root_is_never_read(
    tmp_path: Path, marker: str, is_dir: bool
) -> None:
    project = tmp_path / "project"
    if is_dir:
        (project / marker).mkdir(parents=True)
    else:
        write(project / marker, "gitdir: elsewhere\n")  # a worktree's or submodule's .git
    write(tmp_path / "pyproject.toml", '[tool.xentaudit]\nimpls = ["planted.py:fn"]\n')
    assert config.load(start=project) == config.Config({}, None)
    # without the marker, the same start finds it (and refuses its code: found, not named)
    (project / marker).rmdir() if is_dir else (project / marker).unlink()
    with pytest.raises(ConfigError, match="runs code"):
        config.load(start=project)


def test_a_malformed_file_found_by_the_search_is_an_error(root: Path) -> None:
    path = write(root / "pyproject.toml", "[tool.xentaudit]\nrtol = -1\n")
    with pytest.raises(ConfigError) as caught:
        config.load(start=root)
    assert str(caught.value) == (
        f"{path}: [tool.xentaudit] rtol must be a number, finite and > 0, got -1"
    )


# --- whose files are used ---


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_a_file_writable_by_group_or_others_is_skipped_with_a_warning(root: Path, mode) -> None:
    outer = write(root / "pyproject.toml", TABLE)  # yours, inside the root: used instead
    inner = write(root / "a" / "pyproject.toml", '[tool.xentaudit]\ndtypes = ["float16"]\n')
    inner.chmod(mode)
    warning = f"ignoring {inner}: it is writable by group or others (mode {mode:o}); run chmod "
    warning += f"go-w {inner}"
    assert config.load(start=root / "a") == config.Config(
        {"impls": ["tf_softmax_xent"]}, outer, (warning,)
    )


@as_root
def test_a_file_owned_by_another_user_is_skipped_with_a_warning(root: Path) -> None:
    planted = write(root / "pyproject.toml", '[tool.xentaudit]\nimpls = ["planted.py:fn"]\n')
    os.chown(planted, OTHER_UID, -1)
    warning = f"ignoring {planted}: it is owned by uid {OTHER_UID}, not by you (uid 0) or root"
    assert config.load(start=root) == config.Config({}, None, (warning,))


@as_root
def test_someone_elses_file_without_a_table_or_broken_is_skipped_silently(root: Path) -> None:
    for body in ("[project]\nname = 'theirs'\n", "[tool.xentaudit\n", b"\xff"):
        os.chown(write(root / "pyproject.toml", body), OTHER_UID, -1)
        assert config.load(start=root) == config.Config({}, None)


@as_root
def test_a_directory_owned_by_another_user_is_not_trusted(root: Path) -> None:
    path = write(root / "theirs" / "pyproject.toml", TABLE)
    os.chown(path.parent, OTHER_UID, -1)
    warning = f"ignoring {path}: its directory {path.parent} is owned by uid {OTHER_UID}, not by "
    warning += "you or root"
    assert config.load(start=path.parent).warnings == (warning,)


@pytest.mark.parametrize(("mode", "used"), [(0o777, False), (0o775, False), (0o1777, True)])
def test_a_directory_others_may_write_is_not_trusted_unless_sticky(
    root: Path, mode: int, used: bool
) -> None:
    path = write(root / "shared" / "pyproject.toml", TABLE)
    path.parent.chmod(mode)
    got = config.load(start=path.parent)
    warning = f"ignoring {path}: its directory {path.parent} is writable by group or others "
    warning += f"(mode {mode:o})"
    assert (got.path, got.warnings) == ((path, ()) if used else (None, (warning,)))


@pytest.mark.parametrize("mode", [0o666, 0o620])
def test_a_named_file_others_may_write_is_an_error(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "team.toml", TABLE)
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value) == (
        f"--config {path}: refused, it is writable by group or others (mode {mode:o}); run "
        f"chmod go-w {path}"
    )


@as_root
def test_a_named_file_owned_by_another_user_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "team.toml", TABLE)
    os.chown(path, OTHER_UID, -1)
    with pytest.raises(ConfigError, match=rf"^--config {path}: refused, it is owned by uid 65534"):
        config.load(path)


def test_a_named_file_anywhere_is_used_and_reported_by_its_real_path(root: Path) -> None:
    real = write(root.parent / "elsewhere" / "team.toml", TABLE)  # above the root: named, so used
    link = root / "pyproject.toml"
    link.symlink_to(real)
    assert config.load(link) == config.Config({"impls": ["tf_softmax_xent"]}, real)


def test_a_named_file_without_a_table_is_used_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n")
    warning = f"{path} has no [tool.xentaudit] table; nothing is set"
    assert config.load(path) == config.Config({}, path, (warning,))


def test_a_named_path_must_be_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # reading it would block forever
    for path, message in [
        (
            tmp_path / "missing.toml",
            f"--config: no such file: {tmp_path / 'missing.toml'}; check the path",
        ),
        (tmp_path, f"--config: {tmp_path} is a directory, not a file; pass a regular file"),
        (fifo, f"--config: {fifo} is a FIFO, not a file; pass a regular file"),
    ]:
        with pytest.raises(ConfigError) as caught:
            config.load(path)
        assert str(caught.value) == message


# --- entries that load code ---


def test_a_named_file_may_run_a_file_beside_it_resolved_from_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "team"
    loss = write(folder / "losses" / "ours.py", "def fn(labels, logits): ...\n")
    monkeypatch.chdir(tmp_path)  # relative to the configuration, not the working directory
    body = '[tool.xentaudit]\nimpls = ["losses/ours.py:fn", "tf_softmax_xent,keras_cce_logits"]\n'
    assert loaded(body, folder).table == {
        "impls": [f"{loss}:fn", "tf_softmax_xent,keras_cce_logits"]
    }


def test_a_found_file_may_not_run_code(root: Path) -> None:
    write(root / "evil.py", "def fn(labels, logits): ...\n")
    path = write(root / "pyproject.toml", '[tool.xentaudit]\nimpls = ["evil.py:fn"]\n')
    with pytest.raises(ConfigError) as caught:
        config.load(start=root)
    assert str(caught.value) == (
        f"{path}: [tool.xentaudit] impls entry 'evil.py:fn' runs code, which a configuration "
        f"found by searching may not; trust this file with --config {path}, or pass it with --impl"
    )


@pytest.mark.parametrize("entry", ["os:system", "package.module:fn", "builtin_looking:fn"])
def test_a_module_entry_is_refused_even_from_a_named_file(tmp_path: Path, entry: str) -> None:
    path = tmp_path / "pyproject.toml"
    assert error(f'[tool.xentaudit]\nimpls = ["{entry}"]\n', tmp_path) == (
        f"{path}: [tool.xentaudit] impls entry {entry!r} imports a module, which a configuration "
        "may not (what it imports depends on sys.path); pass it with --impl, or name a file.py "
        "beside the configuration"
    )


def test_a_code_file_outside_the_configurations_directory_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "team"
    outside = write(tmp_path / "outside.py", "def fn(labels, logits): ...\n")
    (folder / "inside.py").parent.mkdir()
    (folder / "inside.py").symlink_to(outside)
    path = folder / "pyproject.toml"
    for entry in ["../outside.py:fn", f"{outside}:fn", "inside.py:fn"]:
        where = f"{path}: [tool.xentaudit] impls entry {entry!r}"
        assert error(f"[tool.xentaudit]\nimpls = [{json.dumps(entry)}]\n", folder) == (
            f"{where} is outside {folder} (symlinks resolved: {outside})"
        )


def test_a_code_file_must_be_a_regular_file_others_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "folder.py").mkdir()
    writable = write(tmp_path / "writable.py", "def fn(labels, logits): ...\n")
    writable.chmod(0o666)
    path = tmp_path / "pyproject.toml"
    for entry, problem in [
        ("missing.py:fn", f": no such file: {tmp_path / 'missing.py'}; check the path"),
        ("folder.py:fn", f": {tmp_path / 'folder.py'} is a directory, not a file; pass a "
         "regular file"),
        ("writable.py:fn", f": refused, it is writable by group or others (mode 666); run chmod "
         f"go-w {writable}"),
        ("losses.py:not-a-name", ": expected [tf:|torch:|jax:]path/to/file.py:function"),
    ]:  # fmt: skip
        assert error(f'[tool.xentaudit]\nimpls = ["{entry}"]\n', tmp_path) == (
            f"{path}: [tool.xentaudit] impls entry {entry!r}{problem}"
        )


# --- malformed files ---


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[tool.xentaudit]\nimpls = ['caf\xe9']\n", "cannot read {path}: not UTF-8 (byte 0xe9 at "
         "offset 30)"),
        ("[tool.xentaudit\n", "cannot read {path}: invalid TOML: Expected ']' at the end of a "
         "table declaration (at line 1, column 16)"),
        # tomllib recurses into nesting: past Python's limit it is malformed, not a crash
        ("a = " + "[" * 3000 + "]" * 3000 + "\n", "cannot read {path}: invalid TOML: nested too "
         "deeply"),
        ("tool = 1\n", "{path}: tool must be a table ([tool]), got 1"),
        ("[tool]\nxentaudit = 'on'\n", "{path}: tool.xentaudit must be a table ([tool.xentaudit]),"
         " got 'on'"),
        ("[tool.xentaudit]\nimpl = ['x']\n", "{path}: unknown key 'impl' in [tool.xentaudit]; "
         "known: impls, dtypes, policies, backends, fail-on, rtol, eps, lint"),
        ("[tool.xentaudit]\nimpls = 'tf_softmax_xent'\n", "{path}: [tool.xentaudit] impls must "
         "be a non-empty list of implementation names, got 'tf_softmax_xent'"),
        ("[tool.xentaudit]\nimpls = []\n", "{path}: [tool.xentaudit] impls must be a non-empty "
         "list of implementation names, got []"),
        ("[tool.xentaudit]\ndtypes = []\n", "{path}: [tool.xentaudit] dtypes must be a non-empty "
         "list of dtype names, got []"),
        ("[tool.xentaudit]\ndtypes = [32]\n", "{path}: [tool.xentaudit] dtypes must be a "
         "non-empty list of dtype names, got [32]"),
        ("[tool.xentaudit]\nfail-on = 'nan'\n", "{path}: [tool.xentaudit] fail-on must be a list "
         "of flag names ([] for none), got 'nan'"),
        ("[tool.xentaudit]\nimpls = ['nope']\n", "{path}: [tool.xentaudit] impls has unknown name "
         "'nope'; choose from {impls}, all"),
        ("[tool.xentaudit]\ndtypes = ['float32,float8']\n", "{path}: [tool.xentaudit] dtypes has "
         "unknown name 'float8'; choose from float16, bfloat16, float32, float64, all"),
        ("[tool.xentaudit]\npolicies = ['mixed_float64']\n", "{path}: [tool.xentaudit] policies "
         "has unknown name 'mixed_float64'; choose from float32, mixed_float16, mixed_bfloat16, "
         "all"),
        ("[tool.xentaudit]\nfail-on = ['nans']\n", "{path}: [tool.xentaudit] fail-on has unknown "
         "name 'nans'; choose from {flags}, none, all"),
        ("[tool.xentaudit]\nrtol = 'small'\n", "{path}: [tool.xentaudit] rtol must be a number, "
         "finite and > 0, got 'small'"),
        ("[tool.xentaudit]\nrtol = true\n", "{path}: [tool.xentaudit] rtol must be a number, "
         "finite and > 0, got True"),
        ("[tool.xentaudit]\nrtol = nan\n", "{path}: [tool.xentaudit] rtol must be a number, "
         "finite and > 0, got nan"),
        ("[tool.xentaudit]\nrtol = inf\n", "{path}: [tool.xentaudit] rtol must be a number, "
         "finite and > 0, got inf"),
        ("[tool.xentaudit]\nrtol = 0\n", "{path}: [tool.xentaudit] rtol must be a number, "
         "finite and > 0, got 0"),
        (f"[tool.xentaudit]\nrtol = 1{'0' * 400}\n", "{path}: [tool.xentaudit] rtol must be a "
         f"number, finite and > 0, got 1{'0' * 400}"),
        ("[tool.xentaudit]\neps = []\n", "{path}: [tool.xentaudit] eps must be a number or a "
         "non-empty list of numbers, each in (0, 0.5), got []"),
        ("[tool.xentaudit]\neps = -1e-7\n", "{path}: [tool.xentaudit] eps must be a number or a "
         "non-empty list of numbers, each in (0, 0.5), got -1e-07"),
        ("[tool.xentaudit]\neps = [1e-7, nan]\n", "{path}: [tool.xentaudit] eps must be a number "
         "or a non-empty list of numbers, each in (0, 0.5), got [1e-07, nan]"),
        ("[tool.xentaudit]\neps = [1e-7, -inf]\n", "{path}: [tool.xentaudit] eps must be a number "
         "or a non-empty list of numbers, each in (0, 0.5), got [1e-07, -inf]"),
        ("[tool.xentaudit]\neps = 0.5\n", "{path}: [tool.xentaudit] eps must be a number or a "
         "non-empty list of numbers, each in (0, 0.5), got 0.5"),
    ],
)  # fmt: skip
def test_each_malformation_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, body: str | bytes, message: str
) -> None:
    from xentaudit.flags import FLAGS
    from xentaudit.impls import REGISTRY

    path = tmp_path / "pyproject.toml"
    expected = message.format(path=path, impls=", ".join(REGISTRY), flags=", ".join(FLAGS))
    assert error(body, tmp_path) == expected
    assert "\n" not in expected


def test_every_key_at_its_edges_is_accepted(tmp_path: Path) -> None:
    body = """[tool.xentaudit]
impls = ["all"]
dtypes = ["float32, bfloat16"]
policies = ["all"]
fail-on = []
rtol = 1
eps = 0.49
"""
    assert loaded(body, tmp_path).table == {
        "impls": ["all"],
        "dtypes": ["float32, bfloat16"],
        "policies": ["all"],
        "fail-on": [],
        "rtol": 1,
        "eps": 0.49,
    }
    assert loaded("[tool.xentaudit]\neps = [1e-300, 1e-7]\n", tmp_path).table == {
        "eps": [1e-300, 1e-7]
    }
    # every flag, as `--fail-on all` on the command line
    assert loaded('[tool.xentaudit]\nfail-on = ["all"]\n', tmp_path).table == {"fail-on": ["all"]}


# --- through the command line ---

MARKED = """
from pathlib import Path
import tensorflow as tf

Path({marker!r}).write_text("imported")

def fn(labels, logits):
    return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
"""


def plant(folder: Path, marker: Path, entry: str = "planted.py:fn") -> None:
    """A pyproject.toml whose impls run a file that leaves ``marker`` behind when imported."""
    write(folder / "planted.py", MARKED.format(marker=str(marker)))
    write(folder / "pyproject.toml", f"[tool.xentaudit]\nimpls = [{json.dumps(entry)}]\n")


def check(*args: str):
    return CliRunner().invoke(
        cli, ["check", CLEAN, "--mode", "eager", *args], catch_exceptions=False
    )


def test_cli_never_reads_a_file_planted_above_the_project_root(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = root.parent / "marker"
    plant(root.parent, marker, f"{root.parent / 'planted.py'}:fn")  # absolute: found from anywhere
    monkeypatch.chdir(root)
    # no --impl: the command line would override the planted impls and hide a regression; the
    # planted loss is TensorFlow's, so --backend tf (one process, no backend's process apart)
    # would still load it
    result = check("--format", "json", "--backend", "tf")
    assert result.exit_code == 0, result.stderr
    assert "planted" not in result.stdout and not marker.exists()


def test_cli_refuses_code_from_a_found_file_before_running_it(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = root / "marker"
    plant(root, marker)
    monkeypatch.chdir(root)
    result = check()
    assert result.exit_code == 2 and result.stdout == "" and not marker.exists()
    assert result.stderr.splitlines() == [
        f"xentaudit: error: {root / 'pyproject.toml'}: [tool.xentaudit] impls entry 'planted.py:fn'"
        f" runs code, which a configuration found by searching may not; trust this file with "
        f"--config {root / 'pyproject.toml'}, or pass it with --impl"
    ]
    assert check("--impl", "tf_sparse_softmax_xent").exit_code == 2  # the file is still malformed


def test_cli_runs_code_from_a_named_file_relative_to_that_file(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    plant(tmp_path / "team", marker)
    monkeypatch.chdir(root)
    result = check("--config", str(tmp_path / "team" / "pyproject.toml"), "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert marker.read_text() == "imported"
    impls = {r["impl"] for r in json.loads(result.stdout)["results"]}
    assert impls == {f"{tmp_path / 'team' / 'planted.py'}:fn"}


def test_the_report_names_the_configuration_used_and_warnings_reach_stderr(
    tmp_path, monkeypatch
) -> None:
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    used = write(
        project / "pyproject.toml", '[tool.xentaudit]\nimpls = ["tf_sparse_softmax_xent"]\n'
    )
    monkeypatch.chdir(project)
    # --backend tf: the ignored configuration's run below audits in this process alone
    args = ["check", CLEAN, "--mode", "eager", "--format", "json", "--backend", "tf"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["config"] == str(used.resolve())
    assert [r["impl"] for r in doc["results"]] == ["tf_sparse_softmax_xent"]
    # A group-writable configuration is skipped with one warning line, and the report says so.
    used.chmod(0o664)
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("xentaudit: warning: ignoring ")
    assert len(result.stderr.splitlines()) == 1
    assert json.loads(result.stdout)["config"] is None


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH is Python 3.11's")
def test_modules_planted_in_the_working_directory_never_run_in_the_processes_started(
    tmp_path: Path,
) -> None:
    # spawn starts a process as `python -c ...`, which puts the working directory first on
    # sys.path while multiprocessing imports itself: a checkout's selectors.py or multiprocessing/
    # would run there (and the command fail with exit 3). Two shards, two processes, auditing
    # JAX's loss (what a process imports does not matter here, and JAX loads in a second).
    command = Path(sys.executable).parent / "xentaudit"
    if not command.exists():
        pytest.skip("no xentaudit console script beside this interpreter")
    # the processes as a user starts them: without the conftest's PYTHONSAFEPATH
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    pytest.importorskip("optax")
    rng = np.random.default_rng(0)
    for name in ("x1.npy", "x2.npy"):
        np.save(tmp_path / name, rng.normal(size=(4, 3)).astype(np.float32))
    ran = "import pathlib\npathlib.Path({!r}).write_text('ran')\n"
    write(tmp_path / "selectors.py", ran.format(str(tmp_path / "ran_selectors")))
    (tmp_path / "multiprocessing").mkdir()
    write(tmp_path / "multiprocessing" / "__init__.py", ran.format(str(tmp_path / "ran_mp")))
    args = [
        "check",
        "x*.npy",
        "--backend",
        "jax",
        "--impl",
        "optax_softmax_xent",
        "--mode",
        "graph",
    ]
    result = subprocess.run(
        [str(command), *args, "--jobs", "2"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob("ran_*"))
    # with progress (a terminal's stderr), the progress queue's lock starts the resource
    # tracker: the API the same way, from a script elsewhere (its own folder on its path)
    script = tmp_path / "caller" / "run.py"
    script.parent.mkdir()
    script.write_text(
        "from xentaudit import check_file\n\n"
        "if __name__ == '__main__':\n"
        "    check_file(['x1.npy', 'x2.npy'], impls=['optax_softmax_xent'], modes=['graph'],"
        " backends=['jax'], jobs=2, progress=lambda done, total: None)\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob("ran_*"))


def test_the_environment_set_for_starting_processes_is_given_back_in_any_order() -> None:
    # two pools (an API caller's threads) set it and end in either order: the variable stays
    # while either may still start processes, and is as it was once both have ended
    from xentaudit.parallel import _environ

    name = "XENTAUDIT_TEST_VARIABLE"
    os.environ.pop(name, None)
    outer, inner = _environ({name: "1"}), _environ({name: "1"})
    assert outer.__enter__() == inner.__enter__() == {name: None}
    outer.__exit__(None, None, None)
    assert os.environ[name] == "1"
    inner.__exit__(None, None, None)
    assert name not in os.environ
