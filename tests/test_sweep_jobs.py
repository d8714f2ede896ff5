"""`sweep`'s default modes (each backend's training modes) and its backends swept in processes
of their own (`--jobs`): the same sweep as one process, errors as one process raises them, and a
process that dies fails the sweep."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from processes import busy_workers, frameworks_imported, gone

from xentaudit import impls as zoo
from xentaudit.audit import Variant
from xentaudit.cli import cli
from xentaudit.dtypes import get_format
from xentaudit.errors import ConfigError
from xentaudit.report import json as json_report
from xentaudit.sweep import Share, _shares, memory_needed, sweep

# One implementation per backend, a grid small enough to run in a second per backend: the seed
# pattern, scales 1 and 1e5 (at 1e5 the seed's logit 5 x 1e5 overflows float16's 65504, a skip
# every process finds), float16 and float32.
THREE = ["tf_softmax_xent", "torch_cross_entropy", "optax_softmax_xent"]
SMALL = {"patterns": ["seed"], "scales": [1.0, 1e5], "dtypes": ["float16", "float32"]}


@pytest.mark.parametrize(
    ("name", "modes", "expected"),
    [
        ("tf_softmax_xent", ["training"], ("eager", "graph")),
        ("torch_cross_entropy", ["training"], ("eager",)),
        ("optax_softmax_xent", ["training"], ("graph",)),
        ("optax_softmax_xent", ["eager", "training"], ("eager", "graph")),
        ("torch_cross_entropy", ["graph", "training"], ("graph", "eager")),
        ("torch:losses.py:fn", ["training"], ("eager",)),  # a user's loss, by its prefix
        ("model", ["training"], ("eager", "graph")),  # a saved Keras model's loss path
        ("optax_softmax_xent", ["both"], ("eager", "graph")),
        ("optax_softmax_xent", ["graph", "eager", "graph"], ("graph", "eager")),  # as given, once
    ],
)
def test_training_stands_for_the_modes_each_backend_trains_in(name, modes, expected) -> None:
    assert zoo.modes_of(name, modes) == expected


TRAINING_RUNS = {
    ("tf_softmax_xent", "eager"),
    ("tf_softmax_xent", "graph"),
    ("torch_cross_entropy", "eager"),
    ("optax_softmax_xent", "graph"),
}


def test_the_default_sweep_runs_each_backend_in_its_training_modes() -> None:
    ticks: list[tuple[int, int]] = []
    result = sweep(
        impls=THREE,
        patterns=["seed"],
        scales=[1.0],
        dtypes=["float32"],
        jobs=1,
        progress=lambda d, t: ticks.append((d, t)),
    )
    assert {(c.impl, c.mode) for c in result.cells} == TRAINING_RUNS
    assert ticks[-1] == (4, 4)  # one pattern and dtype, 4 runs


def test_the_command_line_defaults_to_training_modes() -> None:
    assert "[default: training]" in CliRunner().invoke(cli, ["sweep", "--help"]).stdout
    args = ["sweep", *(a for name in THREE for a in ("--impl", name)), "--format", "json"]
    result = CliRunner().invoke(cli, [*args, "--pattern", "seed", "--scales", "1", "--jobs", "1"])
    assert result.exit_code == 0, result.stderr
    cells = json.loads(result.stdout)["cells"]
    assert {(c["impl"], c["mode"]) for c in cells if c["dtype"] == "float32"} == TRAINING_RUNS


def test_compare_and_check_take_training_and_default_to_both(tmp_path) -> None:
    impls = [a for name in THREE for a in ("--impl", name)]
    compare = CliRunner().invoke(cli, ["compare", *impls, "--format", "json"])
    assert compare.exit_code == 0, compare.stderr
    both = {(r["impl"], r["mode"]) for r in json.loads(compare.stdout)["results"]}
    assert both == {(name, mode) for name in THREE for mode in ("eager", "graph")}
    compare = CliRunner().invoke(cli, ["compare", *impls, "--mode", "training", "--format", "json"])
    assert {(r["impl"], r["mode"]) for r in json.loads(compare.stdout)["results"]} == TRAINING_RUNS
    logits = tmp_path / "logits.npy"
    np.save(logits, np.array([[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]], dtype=np.float32))
    args = ["check", str(logits), "--labels", "[0, 1]", *impls, "--mode", "training"]
    check = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert check.exit_code == 0, check.stderr
    assert {(r["impl"], r["mode"]) for r in json.loads(check.stdout)["results"]} == TRAINING_RUNS


def test_backends_swept_apart_give_the_one_process_sweep() -> None:
    # Implementations of three backends interleaved (the processes take them by backend), two
    # patterns and Keras policies, and naive, whose breaking point is refined in both of
    # TensorFlow's modes (the graph run reusing the eager run's bracket).
    impls = ["torch_cross_entropy", "tf_softmax_xent", "optax_softmax_xent", "naive"]
    grid = {
        "patterns": ["seed", "dominant"],
        "scales": [1.0, 30.0, 1e5],  # 1e5: the seed's 5 x 1e5 overflows float16, a skip
        "dtypes": ["float16", "float32"],
        "policies": ["float32", "mixed_float16"],
    }
    ticks: list[tuple[int, int]] = []
    apart = sweep(impls=impls, jobs=2, progress=lambda d, t: ticks.append((d, t)), **grid)
    together = sweep(impls=impls, jobs=1, **grid)
    # Everything, in the same order: cells, breaking points, skips, the environment record
    # (whether each backend flushes subnormals, measured in its own process).
    assert json_report.render(apart, command="sweep") == json_report.render(
        together, command="sweep"
    )
    assert {c.impl for c in apart.cells} == set(impls)
    assert any("overflows float16" in s.reason for s in apart.skipped)
    refined = [b for b in apart.breaking_points if b.impl == "naive" and b.scale is not None]
    assert {b.mode for b in refined} == {"eager", "graph"}
    # progress counts every run of every process, up to the whole sweep's total:
    # 2 patterns x 2 dtypes x 2 policies x (tf 2 x 2 modes + torch 1 + jax 1) = 48
    assert ticks and ticks[-1] == (48, 48)
    assert all(t == 48 for _, t in ticks) and [d for d, _ in ticks] == sorted(d for d, _ in ticks)


def test_the_processes_import_the_frameworks_not_the_caller(tmp_path) -> None:
    # a user's loss too: its file (and the framework it imports) is imported by its process
    user = _user_loss(
        tmp_path,
        "torch",
        """
        import torch

        def loss(labels, logits):
            return -(labels * torch.log_softmax(logits, -1)).sum(-1)
        """,
    )
    impls = [*THREE, user]
    printed = frameworks_imported(
        f"""
        from xentaudit.sweep import sweep

        result = sweep(impls={impls!r}, jobs=2, patterns=["seed"], scales=[1.0])
        assert {{c.impl for c in result.cells}} == set({impls!r})
        """
    )
    assert printed == "[]"


def _user_loss(folder: Path, backend: str, body: str) -> str:
    path = folder / f"{backend}_loss.py"
    path.write_text(textwrap.dedent(body))
    return f"{backend}:{path}:loss"


def test_the_error_is_the_one_one_process_meets_first(tmp_path) -> None:
    """One process sweeps dtype by dtype, each implementation in turn: a torch loss that fails
    in float16 stops it before a TensorFlow loss that fails in float32 runs, although the
    TensorFlow loss comes first; apart, both fail, and the sweep raises torch's error. The
    TensorFlow loss raises its own exception class, which only its module defines: its error
    crosses to the caller as xentaudit's own (TensorFlow's process pickles exceptions with what
    they were raised from, which the caller could not unpickle: exit 3, "a process died")."""
    tf_loss = _user_loss(
        tmp_path,
        "tf",
        """
        import tensorflow as tf

        class TfLossError(Exception):
            pass

        def loss(labels, logits):
            if logits.dtype == tf.float32:
                raise TfLossError("tf fails in float32")
            return tf.nn.softmax_cross_entropy_with_logits(labels, logits)
        """,
    )
    torch_loss = _user_loss(
        tmp_path,
        "torch",
        """
        import torch

        def loss(labels, logits):
            if logits.dtype == torch.float16:
                raise ValueError("torch fails in float16")
            return -(labels * torch.log_softmax(logits, -1)).sum(-1)
        """,
    )
    args = ["sweep", "--impl", tf_loss, "--impl", torch_loss, "--pattern", "seed"]
    args += ["--scales", "1", "--dtype", "float16", "--dtype", "float32"]
    # apart first: this process has not imported the losses' modules yet, as a command has not
    apart = CliRunner().invoke(cli, [*args, "--jobs", "2"])
    alone = CliRunner().invoke(cli, [*args, "--jobs", "1"])
    assert alone.exit_code == apart.exit_code == 2
    assert apart.stdout == ""
    assert apart.stderr == alone.stderr
    assert apart.stderr.startswith("xentaudit: error: --impl torch:")
    assert "torch fails in float16" in apart.stderr and len(apart.stderr.splitlines()) == 1


def test_a_backend_process_that_dies_fails_the_sweep_with_exit_3(tmp_path) -> None:
    # os._exit ends the process itself (sys.exit in a user's loss is an error xentaudit
    # catches); the sweep must not be reported without that backend's part.
    dies = _user_loss(
        tmp_path,
        "jax",
        """
        import os

        def loss(labels, logits):
            os._exit(9)
        """,
    )
    args = ["sweep", "--impl", "torch_cross_entropy", "--impl", dies, "--pattern", "seed"]
    result = CliRunner().invoke(cli, [*args, "--scales", "1", "--dtype", "float32", "--jobs", "2"])
    assert result.exit_code == 3 and result.stdout == ""
    # The pool breaks: torch's part is lost too when it was still running.
    end = (
        "backend{}, so the sweep is incomplete; sweep again with --jobs 1 (or one --backend "
        "at a time) to see why\n"
    )
    start = "xentaudit: error: a process of the sweep died before it had swept the "
    assert result.stderr in (
        start + "jax " + end.format(""),
        start + "torch and jax " + end.format("s"),
    )


def test_no_more_processes_run_than_the_memory_budget_has_room_for() -> None:
    # Room for one process's largest batch, not two: the backends are swept one at a time,
    # in one process, with the same result; with room for two, in two processes (whose progress
    # ticks come from a queue: the in-process sweep calls back directly).
    needed = memory_needed([(2, 3)], 1, [get_format("float32")])
    small = {"patterns": ["seed"], "scales": [1.0], "dtypes": ["float32"]}
    impls = ["torch_cross_entropy", "optax_softmax_xent"]
    one = sweep(impls=impls, jobs=2, max_memory=2 * needed - 1, **small)
    assert json_report.render(one, command="sweep") == json_report.render(
        sweep(impls=impls, jobs=1, **small), command="sweep"
    )
    assert sweep(impls=impls, jobs=2, max_memory=2 * needed, **small).cells
    with pytest.raises(ConfigError, match="more than --max-memory"):
        sweep(impls=impls, jobs=2, max_memory=needed - 1, **small)


def test_a_sweep_with_nothing_to_run_is_refused() -> None:
    # torch has no focal loss: nothing is left to sweep, whatever --jobs (it once passed empty)
    for jobs in (1, 2):
        with pytest.raises(ConfigError, match=r"^no implementation to run: --impl, --backend"):
            sweep(backends=["torch"], loss="focal", jobs=jobs, patterns=["seed"])


def test_a_broken_file_is_the_first_error_whatever_the_processes(tmp_path) -> None:
    """One process loads the users' losses before it runs anything (after the built-in names
    are known); the processes load theirs first too, so their errors come in that order."""
    runs_badly = _user_loss(
        tmp_path,
        "torch",
        """
        def loss(labels, logits):
            raise RuntimeError("fails when run")
        """,
    )
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_here\n")
    cases = [
        ([runs_badly, f"torch:{broken}:loss", "optax_softmax_xent"], "no_such_module_here"),
        (["no_such_impl", f"torch:{broken}:loss", "optax_softmax_xent"], "'no_such_impl'"),
        # one process never checks a loss after one that fails as it is imported (the built-in
        # is JAX's: a TensorFlow process would add its 4 to 7 s import and test nothing more)
        (
            [f"torch:{broken}:loss", f"jax:{tmp_path / 'absent.py'}:loss", "optax_softmax_xent"],
            "no_such_module_here",
        ),
    ]
    for impls, expected in cases:
        args = ["sweep", *(a for name in impls for a in ("--impl", name)), "--pattern", "seed"]
        alone = CliRunner().invoke(cli, [*args, "--jobs", "1"])
        apart = CliRunner().invoke(cli, [*args, "--jobs", "2"])
        assert alone.exit_code == apart.exit_code == 2
        assert apart.stderr == alone.stderr
        assert expected in apart.stderr and len(apart.stderr.splitlines()) == 1


def test_a_bad_gamma_is_refused_before_a_users_loss_is_loaded(tmp_path) -> None:
    # options first, whatever the processes: the command loads no user's loss with --jobs
    boom = tmp_path / "boom.py"
    boom.write_text("raise RuntimeError('boom at import')\n")
    for jobs in (1, 2):
        with pytest.raises(ConfigError, match="--gamma must be"):
            sweep(impls=[f"tf:{boom}:fn"], loss="focal", gamma=-1.0, jobs=jobs, patterns=["seed"])


def test_a_loaded_loss_keeps_its_relative_path_after_a_change_of_directory(
    tmp_path, monkeypatch
) -> None:
    (tmp_path / "rel_loss.py").write_text("def loss(labels, logits):\n    return logits\n")
    monkeypatch.chdir(tmp_path)
    spec = "torch:rel_loss.py:loss"
    assert zoo.get_impl(spec).name == spec
    monkeypatch.chdir(tmp_path.parent)
    assert zoo.get_impl(spec).backend == "torch"  # loaded once: not looked up again


def test_jobs_is_checked() -> None:
    result = CliRunner().invoke(cli, ["sweep", "--jobs", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--jobs': 0 is not in the range x>=1" in result.stderr
    with pytest.raises(ConfigError, match="--jobs must be at least 1, got 0"):
        sweep(jobs=0)


def test_the_processes_print_nothing_of_their_own() -> None:
    # A real command line: the processes write to its stderr, where TensorFlow's C++ start-up
    # lines would land if a process imported it loudly.
    args = ["sweep", "--impl", "tf_softmax_xent", "--impl", "torch_cross_entropy", "--jobs", "2"]
    args += ["--pattern", "seed", "--scales", "1,10", "--dtype", "float32", "--format", "json"]
    result = subprocess.run(
        [sys.executable, "-m", "xentaudit", *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert {c["impl"] for c in doc["cells"]} == {"tf_softmax_xent", "torch_cross_entropy"}


def test_ctrl_c_ends_the_sweep_and_its_processes(tmp_path) -> None:
    """SIGINT ends a sweep over processes at once: exit 130, its one line and nothing after
    it, and the processes, one busy in a loss, end with it."""
    mark = tmp_path / "started"
    sleeps = _user_loss(
        tmp_path,
        "torch",
        f"""
        import time
        from pathlib import Path

        def loss(labels, logits):
            Path({str(mark)!r}).touch()
            time.sleep(120)
        """,
    )
    args = ["sweep", "--impl", sleeps, "--impl", "optax_softmax_xent", "--jobs", "2"]
    command = subprocess.Popen(
        [sys.executable, "-m", "xentaudit", *args, "--pattern", "seed", "--scales", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    workers = busy_workers(command, mark)
    assert workers
    command.send_signal(signal.SIGINT)
    assert command.wait(timeout=30) == 130
    assert command.stderr.read() == b"xentaudit: aborted\n"
    assert gone(workers, 10)  # each polls every second for the command it serves


def test_an_unknown_mode_names_every_one() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^unknown mode 'fast'; choose from eager, graph, both, training or 'all'$",
    ):
        sweep(modes=["fast"])


def test_processes_to_spare_split_a_backend_by_dtype() -> None:
    tf = [(0, Variant("naive", 1e-7)), (1, Variant("tf_softmax_xent", 1e-7))]
    torch = [(2, Variant("torch_cross_entropy", 1e-7))]
    jax = [(3, Variant("optax_softmax_xent", 1e-7))]
    # one backend, 2 processes: its 4 dtypes in 2 runs of consecutive dtypes
    assert _shares([tf], 4, 2) == [Share(tuple(tf), (0, 1)), Share(tuple(tf), (2, 3))]
    assert _shares([tf], 3, 8) == [Share(tuple(tf), (d,)) for d in range(3)]  # at most a dtype
    # as many backends as processes or more: one share each (each would import its framework)
    assert _shares([tf, torch, jax], 4, 2) == [
        Share(tuple(g), (0, 1, 2, 3)) for g in (tf, torch, jax)
    ]
    assert _shares([tf, torch], 4, 1) == [Share(tuple(g), (0, 1, 2, 3)) for g in (tf, torch)]


def test_a_backend_split_by_dtype_gives_the_one_process_sweep() -> None:
    # softmax then log breaks on the seed in both of JAX's modes (eager and jax.jit), at other
    # scales in each; its dtypes go to 2 processes (JAX's: a TensorFlow process would cost ~6x
    # its import, and the split does not depend on the backend)
    grid = {
        "patterns": ["seed"],
        "scales": [1.0, 30.0],
        "dtypes": ["float16", "float32"],
        "modes": ["eager", "graph"],
    }
    impls = ["jax_softmax_log", "optax_softmax_xent"]
    apart, together = (sweep(impls=impls, jobs=j, **grid) for j in (2, 1))
    assert json_report.render(apart, command="sweep") == json_report.render(
        together, command="sweep"
    )
    assert {(b.dtype, b.mode) for b in apart.breaking_points if b.scale is not None} == {
        (d, m) for d in ("float16", "float32") for m in ("eager", "graph")
    }
