"""`check --output`: a target that cannot be written is one line and exit 2, refused before
the audit when it can be; a write that fails midway leaves the old file (or none) and no
temporary file."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import click
import pytest
from click.testing import CliRunner

from xentaudit import cli_common
from xentaudit.cli import cli

SEED = str(Path(__file__).parent.parent / "fixtures" / "seed_scale10.npz")
FAST = ("--impl", "tf_sparse_softmax_xent", "--mode", "eager")


def check(output: str):
    return CliRunner().invoke(cli, ["check", SEED, *FAST, "--output", output])


def one_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("{tmp}", "--output {tmp} is a directory; give a file name"),
        ("{tmp}/missing/report.txt", "--output: no such directory: {tmp}/missing; create it first"),
        ("", "--output is empty; give a file name"),
        (
            "/dev/full",
            "--output /dev/full is not a regular file; give a file name (or leave --output out: "
            "the report goes to stdout)",
        ),
    ],
)
def test_a_target_that_cannot_be_a_report_is_refused_before_the_audit(
    tmp_path, no_audit, target: str, message: str
) -> None:
    line = one_line(check(target.format(tmp=tmp_path)))
    assert line == "xentaudit: error: " + message.format(tmp=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_directory_is_refused_before_the_audit(tmp_path, monkeypatch, no_audit):
    # root writes into read-only directories: a read-only file system stands in for one
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    line = one_line(check(str(tmp_path / "report.txt")))
    assert line == (
        f"xentaudit: error: --output: cannot create a file in {tmp_path} (Read-only file "
        "system); pick a writable directory"
    )


def test_a_full_disk_keeps_the_old_report_and_leaves_no_temporary_file(tmp_path, full_disk):
    target = tmp_path / "report.txt"
    target.write_text("the previous report\n")
    line = one_line(check(str(target)))
    assert line == (
        f"xentaudit: error: --output: cannot write {target} (No space left on device); pick a "
        "writable path"
    )
    assert os.listdir(tmp_path) == ["report.txt"]
    assert target.read_text() == "the previous report\n"


def test_a_file_size_limit_fails_the_write_in_one_line(tmp_path) -> None:
    def limit_file_size() -> None:  # in the child: writes past 64 bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    target = tmp_path / "report.txt"
    # one of JAX's losses: the process imports no TensorFlow to get to its write
    optax_eager = ["--impl", "optax_softmax_xent", "--mode", "eager"]
    done = subprocess.run(
        [sys.executable, "-m", "xentaudit", "check", SEED, *optax_eager, "--output", str(target)],
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"xentaudit: error: --output: cannot write {target} (File too large); pick a writable "
        "path\n"
    )
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("char", ["r", "\N{GRINNING FACE}"])  # 1 and 4 bytes in UTF-8
def test_a_name_near_the_file_systems_limit_is_written(tmp_path, char: str) -> None:
    # NAME_MAX (255 bytes here) counts bytes; the temporary file beside the target (a dot, the
    # name, a dot, a random part, .tmp) was over it, and a valid name was refused as "File name
    # too long"
    room = os.pathconf(tmp_path, "PC_NAME_MAX") - len(".json")
    target = tmp_path / (char * (room // len(char.encode())) + ".json")
    result = check(str(target))
    assert result.exit_code == 0, result.output
    assert os.listdir(tmp_path) == [target.name]


def test_a_written_report_leaves_no_temporary_file(tmp_path) -> None:
    target = tmp_path / "report.txt"
    result = check(str(target))
    assert result.exit_code == 0, result.output
    assert os.listdir(tmp_path) == ["report.txt"]
    assert "tf_sparse_softmax_xent" in target.read_text()


@pytest.mark.parametrize(
    "args",
    [["list"], ["--help"], ["-h"], ["check", "--help"], ["lint", "--help"], ["--version"]],
)
def test_a_full_stdout_is_one_line_and_exit_2(args: list[str]) -> None:
    # --help and --version too: click's own writers raised a traceback, exit 1
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "xentaudit", *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr == (
        "xentaudit: error: cannot write to stdout (No space left on device); free space or "
        "redirect stdout\n"
    )


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("import tensorflow as tf\nloss = tf.math.log(tf.nn.softmax(x))\n", 1),
        ("x = 1\n", 0),
        ("def (:\n", 2),  # XA000: its one line goes to stderr
    ],
)
def test_a_reader_that_stops_reading_leaves_the_exit_code_and_stderr_alone(
    tmp_path, source: str, code: int
) -> None:
    # The pipe's read end is closed before the command writes: every write is EPIPE. The
    # verdict stands (click made it 1, a flag's code, and Python's flush at exit complained).
    path = tmp_path / "train.py"
    path.write_text(source)
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "xentaudit", "lint", str(path)],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == code
    # nothing on stderr but XA000's one line: no traceback, no complaint at exit
    assert done.stderr.startswith("xentaudit: error: 1 file(s) could not be parsed") == (code == 2)
    assert len(done.stderr.splitlines()) == (code == 2)


def test_help_to_a_reader_that_stops_reading_exits_0() -> None:
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "xentaudit", "--help"],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize(("impl", "code"), [("clipped", 1), ("tf_sparse_softmax_xent", 0)])
def test_a_check_whose_reader_stops_reading_keeps_its_verdict_and_files(
    tmp_path, monkeypatch, impl: str, code: int
) -> None:
    # in this process: stdout's write fails as a closed pipe's does (`| head`)
    echo = click.echo

    def closed(message=None, file=None, nl=True, err=False, color=None) -> None:
        if not err:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        echo(message, file, nl, err, color)

    monkeypatch.setattr(cli_common.click, "echo", closed)
    rows = tmp_path / "rows.csv"
    result = CliRunner().invoke(
        cli, ["check", SEED, "--impl", impl, "--mode", "eager", "--flagged-rows", str(rows)]
    )
    assert (result.exit_code, result.stderr) == (code, ""), result.output
    assert rows.read_text().startswith("row,impl,")  # renamed into place: the files stand


def test_a_broken_pipe_that_is_not_stdouts_is_an_internal_error(monkeypatch) -> None:
    # a worker's or a socket's broken pipe inside a command: a bug to report, never a verdict
    monkeypatch.setattr("xentaudit.cli._list_table", mock.Mock(side_effect=BrokenPipeError))
    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 3
    assert result.stderr.startswith("xentaudit: internal error: BrokenPipeError")


def test_a_written_report_gets_the_mode_of_any_new_file(tmp_path) -> None:
    # Written through a temporary file (mkstemp makes it 0600), the report still ends up with the
    # mode a file written in place would get: 0666 less the umask.
    target = tmp_path / "report.json"
    previous = os.umask(0o022)
    try:
        result = CliRunner().invoke(
            cli,
            ["check", SEED, "--impl", "tf_sparse_softmax_xent", "--mode", "eager", "--format",
             "json", "--output", str(target)],
            catch_exceptions=False,
        )  # fmt: skip
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("columns", "widest"), [(None, 160), ("abc", 160), ("0", 160), ("400", 400)]
)
def test_a_report_to_a_file_is_160_columns_wide_unless_columns_says_another(
    tmp_path, monkeypatch, columns: str | None, widest: int
) -> None:
    # The header's line of the flags check fails on (about 190 characters) wraps at the width.
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    report = tmp_path / "report.txt"
    assert check(str(report)).exit_code == 0  # the fused sparse loss passes the seed
    longest = max(len(line) for line in report.read_text().splitlines())
    assert longest <= widest and (longest > 160) == (widest > 160)


def test_a_check_that_fails_after_its_audit_writes_none_of_its_files(tmp_path) -> None:
    # stdout full once the audit is done: the rows' CSV, the HTML, the new baseline and the
    # step summary were all ready, and none may be left (exit 2 is an error, never a verdict)
    files = {n: tmp_path / n for n in ("rows.csv", "report.html", "base.json", "summary.md")}
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [
                sys.executable, "-m", "xentaudit", "check", SEED, "--impl", "clipped", "--mode",
                "eager", "--flagged-rows", str(files["rows.csv"]), "--html",
                str(files["report.html"]), "--write-baseline", str(files["base.json"]),
            ],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, cwd=tmp_path,
            env={**os.environ, "GITHUB_STEP_SUMMARY": str(files["summary.md"])},
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.endswith("free space or redirect stdout\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--output", "--flagged-rows", "--write-baseline"])
def test_an_output_naming_a_file_the_run_reads_is_refused(tmp_path, option: str) -> None:
    logits = tmp_path / "logits.npz"
    logits.write_bytes(Path(SEED).read_bytes())
    before = logits.read_bytes()
    result = CliRunner().invoke(cli, ["check", str(logits), *FAST, option, str(logits)])
    assert one_line(result) == (
        f"xentaudit: error: {option} {logits} is a file this run reads; give another name"
    )
    assert logits.read_bytes() == before


def test_an_output_that_is_a_symlink_loop_is_one_line(tmp_path, no_audit) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    line = one_line(check(str(tmp_path / "a")))
    assert (
        line == f"xentaudit: error: --output {tmp_path / 'a'} is a symlink loop; give a file name"
    )


def test_an_output_that_is_a_symlink_is_written_where_it_points(tmp_path) -> None:
    (tmp_path / "reports").mkdir()
    link = tmp_path / "latest.txt"
    link.symlink_to(tmp_path / "reports" / "report.txt")  # dangling until the report is written
    assert check(str(link)).exit_code == 0
    assert link.is_symlink()
    assert (tmp_path / "reports" / "report.txt").read_text().startswith("xentaudit check")


@pytest.mark.parametrize("read", ["--baseline", "--impl"])
def test_an_output_naming_the_baseline_or_a_loss_it_imports_is_refused(tmp_path, read) -> None:
    # the baseline and a user's loss file are read by the run too: a report must not replace
    # them (--write-baseline alone may name the baseline: the ratchet reads it first)
    if read == "--baseline":
        target = tmp_path / "base.json"
        assert (
            CliRunner()
            .invoke(cli, ["check", SEED, *FAST, "--write-baseline", str(target)])
            .exit_code
            == 0
        )
        args = ["--baseline", str(target)]
    else:
        target = tmp_path / "loss.py"
        target.write_text(
            "import tensorflow as tf\n\ndef f(y, x):\n"
            "    return tf.nn.softmax_cross_entropy_with_logits(y, x)\n"
        )
        args = ["--impl", f"{target}:f"]
    before = target.read_bytes()
    result = CliRunner().invoke(
        cli, ["check", SEED, "--mode", "eager", *args, "--output", str(target)]
    )
    assert (
        one_line(result)
        == f"xentaudit: error: --output {target} is a file this run reads; give another name"
    )
    assert target.read_bytes() == before


def test_a_loss_that_changes_the_working_directory_moves_no_output(tmp_path, monkeypatch) -> None:
    loss = tmp_path / "wanders.py"
    loss.write_text(
        "import os\nimport tensorflow as tf\n\n"
        "def f(y, x):\n    os.chdir('/')\n"
        "    return tf.nn.softmax_cross_entropy_with_logits(y, x)\n"
    )
    monkeypatch.chdir(tmp_path)
    args = ["check", SEED, "--mode", "eager", "--impl", f"{loss}:f", "--output", "report.txt"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.txt").read_text().startswith("xentaudit check")


def test_a_closed_stdout_is_one_line_before_any_work() -> None:
    # `xentaudit ... >&-`: Python starts with no sys.stdout; the report would be lost (exit 0)
    done = subprocess.run(
        [sys.executable, "-m", "xentaudit", "list"],
        preexec_fn=lambda: os.close(1),
        stderr=subprocess.PIPE, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "xentaudit: error: cannot write to stdout (it is closed); redirect it to a file or "
        "/dev/null\n"
    )
