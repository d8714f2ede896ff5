"""A user's loss cannot end the run or pass the gate by itself: exiting, raising any
BaseException (at import or when called, in graph mode while tf.function traces it) or running
past --timeout is one line naming the implementation, exit 2. A real Ctrl-C stays an interrupt."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import pickle
import signal
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit import audit
from xentaudit.cli import cli
from xentaudit.errors import ConfigError, ImplementationError
from xentaudit.impls import Expired, time_limit, user_code

SEED = str(Path(__file__).parent.parent / "fixtures" / "seed_scale10.npz")
LOSSES = """
import os
import signal
import sys
import time

import tensorflow as tf


class Custom(BaseException):
    pass


def exit0(labels, logits):
    sys.exit(0)


def exit3(labels, logits):
    sys.exit(3)


def system_exit(labels, logits):
    raise SystemExit


def interrupt(labels, logits):
    raise KeyboardInterrupt


def generator_exit(labels, logits):
    raise GeneratorExit("closing")


def custom(labels, logits):
    raise Custom("mine")


def spin(labels, logits):
    while True:
        pass


def spin_catching(labels, logits):
    try:
        while True:
            pass
    except Exception:
        return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def sleep(labels, logits):
    time.sleep(60)


def ctrl_c(labels, logits):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no words")


class NotText(Exception):
    def __str__(self):
        return 5


def unprintable(labels, logits):
    raise Unprintable()


def not_text(labels, logits):
    raise NotText()


def complex_loss(labels, logits):
    return tf.complex(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits), 0.0)


def printing(labels, logits):
    print("hello from the loss")
    return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def wrong_gradient(labels, logits):
    @tf.custom_gradient
    def lse(x):
        return tf.reduce_logsumexp(x, -1), lambda dy: tf.zeros([2, 2])

    return lse(logits)  # its gradient the custom one alone
"""


@pytest.fixture(scope="module")
def losses(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("losses") / "losses.py"
    path.write_text(LOSSES)
    return path


def one_line(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


class CallersAlarm:
    """What a caller of ``time_limit`` may have set: their own SIGALRM handler (``handler``, one
    object throughout, so that tests can tell it by identity), which records each alarm it gets
    in ``rang`` and raises ``raises`` if set, and a 30 s alarm of theirs."""

    def __init__(self, setitimer: Callable) -> None:
        self.rang: list[str] = []
        self.raises: type[BaseException] | None = None
        self.handler = self._handle
        self._setitimer = setitimer

    def _handle(self, signum: int, frame: object) -> None:
        self.rang.append("caller's")
        if self.raises is not None:
            raise self.raises

    def stop(self) -> tuple[float, float]:
        """Stop the alarm (with the real setitimer, whatever the test patched); what it had left."""
        return self._setitimer(signal.ITIMER_REAL, 0)


@pytest.fixture
def callers_alarm() -> Iterator[CallersAlarm]:
    setitimer, install = signal.setitimer, signal.signal  # the real ones, before any patch
    alarm = CallersAlarm(setitimer)
    before = install(signal.SIGALRM, alarm.handler)
    setitimer(signal.ITIMER_REAL, 30)
    yield alarm
    setitimer(signal.ITIMER_REAL, 0)
    install(signal.SIGALRM, before)


@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize(
    ("fn", "did"),
    [
        ("exit0", "called sys.exit(0)"),
        ("exit3", "called sys.exit(3)"),
        ("system_exit", "called sys.exit(None)"),
        ("interrupt", "raised KeyboardInterrupt"),
        ("generator_exit", "raised GeneratorExit: closing"),
        ("custom", "raised Custom: mine"),
    ],
)
def test_a_loss_that_exits_or_raises_a_base_exception_fails_the_gate(
    losses, fn: str, did: str, mode: str
) -> None:
    spec = f"{losses}:{fn}"
    line = one_line(["check", SEED, "--impl", spec, "--mode", mode])
    assert line == (
        f"xentaudit: error: --impl {spec}: the loss {did}; it must return, not end the run"
    )


@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize(
    ("fn", "did"),
    [
        # their str() raises or is no string: named, not an internal error
        ("unprintable", "the loss raised Unprintable: <unprintable>"),
        ("not_text", "the loss raised NotText: <unprintable>"),
        # complex losses: their imaginary part would be dropped unsaid
        ("complex_loss", "the loss returned complex64 values; it must return real losses"),
        # a custom gradient of another shape than the logits' (the seed's 2 rows of 3)
        (
            "wrong_gradient",
            "the gradient w.r.t. the logits has shape (2, 2); it must have the logits' shape "
            "(2, 3) (check the loss's custom gradient)",
        ),
    ],
)
def test_a_loss_that_breaks_in_its_own_way_is_one_line(losses, fn: str, did: str, mode) -> None:
    spec = f"{losses}:{fn}"
    line = one_line(["check", SEED, "--impl", spec, "--mode", mode])
    assert line == f"xentaudit: error: --impl {spec}: {did}"


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_what_a_loss_prints_goes_to_stderr_not_into_the_report(losses, mode: str) -> None:
    args = ["check", SEED, "--impl", f"{losses}:printing", "--mode", mode, "--format", "json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["impl"] == f"{losses}:printing"
    assert "hello from the loss" in result.stderr


def test_a_users_error_crosses_to_another_process_without_their_exception_class() -> None:
    # TensorFlow installs tblib's pickling of exceptions, which sends what an exception was
    # raised from along; a user's own exception class is not importable where the error is
    # reported (--jobs, backends apart, --scheduler): xentaudit's error carries none of it.
    pickling = pytest.importorskip("tblib.pickling_support")
    pickling.install()
    module = types.ModuleType("_xentaudit_gone_loss")
    exec("class Mine(Exception):\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        loss = user_code("--impl x: the loss", ImplementationError)
        with pytest.raises(ImplementationError) as raised, loss:
            raise module.Mine("boom")
        data = pickle.dumps(raised.value)
    finally:
        del sys.modules[module.__name__]
    back = pickle.loads(data)  # where the module is not importable
    assert type(back) is ImplementationError and str(back) == "--impl x: the loss raised Mine: boom"


def test_a_module_that_exits_on_import_fails_the_gate(tmp_path) -> None:
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n\ndef f(y, x):\n    return x\n")
    spec = f"{tmp_path / 'exits.py'}:f"
    line = one_line(["check", SEED, "--impl", spec, "--mode", "eager"])
    assert line == (
        f"xentaudit: error: --impl {spec!r}: importing {tmp_path / 'exits.py'} called "
        "sys.exit(0); it must return, not end the run"
    )


@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize("fn", ["spin", "spin_catching", "sleep"])
def test_timeout_interrupts_a_loss_stuck_in_python(losses, fn: str, mode: str) -> None:
    spec = f"{losses}:{fn}"
    line = one_line(["compare", "--impl", spec, "--mode", mode, "--timeout", "0.2"])
    assert line == (
        f"xentaudit: error: --impl {spec} (float32, {mode}) ran longer than the timeout of 0.2 "
        "s; raise --timeout or fix the implementation"
    )


def test_timeout_in_the_api_bounds_built_in_runs_too_and_restores_the_alarm(losses) -> None:
    x, y = np.array([[3.0, 1.0, 1.0]]), np.array([0])
    before = signal.getsignal(signal.SIGALRM)
    result = audit(x, y, impls=["tf_sparse_softmax_xent"], modes=["eager"], timeout=30)
    assert [r.flags for r in result.results] == [()]
    with pytest.raises(ImplementationError, match=r"spin \(float64, eager\) ran longer"):
        audit(x, y, impls=[f"{losses}:spin"], dtypes=["float64"], modes=["eager"], timeout=0.1)
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_an_alarm_set_by_the_caller_is_resumed_after_the_time_limit(callers_alarm) -> None:
    with time_limit(10):
        pass
    left, _ = signal.getitimer(signal.ITIMER_REAL)
    assert 25 < left <= 30 and callers_alarm.rang == []


def test_an_alarm_that_fires_as_the_limit_is_set_still_disarms_it(monkeypatch) -> None:
    # A limit so short that its alarm fires before the block has begun (setitimer's own
    # return): the block's cleanup must still run, or the repeating alarm and its handler stay
    # installed and raise Expired into whatever runs next. The alarm is raised by hand as the
    # limit is set, so that it comes at that point every time.
    real = signal.setitimer

    def at_once(which: int, seconds: float, interval: float = 0.0) -> tuple[float, float]:
        old = real(which, seconds, interval)
        if seconds:
            signal.raise_signal(signal.SIGALRM)
        return old

    before = signal.getsignal(signal.SIGALRM)
    monkeypatch.setattr(signal, "setitimer", at_once)
    try:
        with pytest.raises(Expired), time_limit(30):
            pass
        assert real(signal.ITIMER_REAL, 0) == (0.0, 0.0)  # disarmed: nothing was left to stop
        assert signal.getsignal(signal.SIGALRM) is before
    finally:
        real(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_an_alarm_that_fires_as_the_block_ends_still_lets_the_limit_disarm(
    monkeypatch, callers_alarm
) -> None:
    # The alarm goes off as the block has ended, while its cleanup disarms the timer (raised by
    # hand inside that call, every time): its handler runs there, before the caller's handler is
    # put back. It must be dropped, not fail the block, over in time, and the cleanup must still
    # finish (else _expire stays installed and the caller's alarm is never resumed).
    real, rang, callers = signal.setitimer, callers_alarm.rang, callers_alarm.handler

    def late(which: int, seconds: float, interval: float = 0.0) -> tuple[float, float]:
        old = real(which, seconds, interval)
        # the disarming's call: not the one suspending the caller's alarm as the limit is set
        if not seconds and signal.getsignal(signal.SIGALRM) is not callers and not rang:
            rang.append("late")
            signal.raise_signal(signal.SIGALRM)
        return old

    monkeypatch.setattr(signal, "setitimer", late)
    with time_limit(10):
        pass
    assert rang == ["late"]  # it went off, in the cleanup, and was dropped there
    assert signal.getsignal(signal.SIGALRM) is callers  # the caller's handler, back
    left, _ = callers_alarm.stop()
    assert 25 < left <= 30  # the caller's alarm resumed


def test_an_alarm_handled_as_the_block_ends_is_dropped(callers_alarm) -> None:
    # The alarm is raised by C code that Python calls without checking for signals after it:
    # libc's raise(), called by map inside a list display (LIST_EXTEND runs no handler). So the
    # first point where Python runs the handler is the first step of the limit's __exit__, the
    # block's last bytecode being that display: the block has ended, and the alarm must be
    # dropped, the limit disarmed and the caller's alarm resumed.
    libc_raise = getattr(ctypes.CDLL(None), "raise")
    with time_limit(10):
        [*map(libc_raise, [signal.SIGALRM])]
    assert callers_alarm.rang == []  # dropped, not passed to the caller's handler either
    left, _ = callers_alarm.stop()
    assert 25 < left <= 30  # the caller's alarm resumed


def test_an_alarm_raised_in_the_block_still_times_it_out() -> None:
    # The other side: handled inside the block (os.kill runs the handler before it returns),
    # the alarm is the block's timeout, and the limit is disarmed all the same.
    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(Expired), time_limit(10):
        os.kill(os.getpid(), signal.SIGALRM)
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_an_interrupt_as_the_callers_alarm_is_suspended_still_resumes_it(
    monkeypatch, callers_alarm
) -> None:
    # Ctrl-C handled right after the call that suspends the caller's alarm returns, before its
    # result is kept: the interrupt goes through, and the caller's alarm is resumed all the same.
    real, interrupts = signal.setitimer, []

    def interrupted(which: int, seconds: float, interval: float = 0.0) -> tuple[float, float]:
        old = real(which, seconds, interval)
        if not seconds and not interrupts:  # the first call that stops a timer: the suspension
            interrupts.append(old)
            raise KeyboardInterrupt
        return old

    monkeypatch.setattr(signal, "setitimer", interrupted)
    with pytest.raises(KeyboardInterrupt), time_limit(10):
        pass
    assert interrupts[0][0] > 25  # it was the caller's alarm that the interrupt followed
    assert signal.getsignal(signal.SIGALRM) is callers_alarm.handler
    left, _ = callers_alarm.stop()
    assert 25 < left <= 30


def test_a_limit_left_armed_is_disarmed_when_let_go(callers_alarm) -> None:
    # Under a tracer written in Python (pdb's), an alarm handled in the tracer's code between the
    # block's end and its __exit__ escapes as Expired without that call: the limit, let go as
    # the exception unwinds, must disarm itself then. Entered by hand and let go unexited here.
    limit = time_limit(10)
    limit.__enter__()
    assert signal.getsignal(signal.SIGALRM) is not callers_alarm.handler  # armed
    del limit
    assert signal.getsignal(signal.SIGALRM) is callers_alarm.handler
    left, interval = callers_alarm.stop()
    assert 25 < left <= 30 and interval == 0  # the caller's alarm, not the limit's


def test_the_callers_alarm_that_came_due_meanwhile_goes_off_once(
    monkeypatch, callers_alarm
) -> None:
    # The caller's alarm came due while the limit ran: resumed at once, it goes off inside the
    # limit's __exit__, and its handler raises there (raised by hand as it is resumed, every
    # time). Once that exception, which keeps the limit alive, is let go, the limit must not
    # resume the alarm a second time.
    real = signal.setitimer

    class Raised(Exception):
        pass

    def due(which: int, seconds: float, interval: float = 0.0) -> tuple[float, float]:
        if seconds and signal.getsignal(signal.SIGALRM) is callers_alarm.handler:  # resumption
            signal.raise_signal(signal.SIGALRM)  # went off at once; not armed again
            return (0.0, 0.0)
        return real(which, seconds, interval)

    callers_alarm.raises = Raised
    monkeypatch.setattr(signal, "setitimer", due)
    with pytest.raises(Raised) as caught, time_limit(10):
        pass
    del caught
    gc.collect()  # the limit, held by the exception's traceback, let go
    assert callers_alarm.rang == ["caller's"]  # once
    assert callers_alarm.stop() == (0.0, 0.0)


def test_the_callers_alarm_is_suspended_before_the_limits_handler_goes_in(
    monkeypatch, callers_alarm
) -> None:
    # Otherwise the caller's alarm, going off in between, would be taken for the timeout.
    real, running = signal.signal, []

    def install(signum: int, handler: object) -> object:
        if handler is not callers_alarm.handler:  # the limit's own
            running.append(signal.getitimer(signal.ITIMER_REAL))
        return real(signum, handler)

    monkeypatch.setattr(signal, "signal", install)
    with time_limit(10):
        pass
    assert running == [(0.0, 0.0)]  # no timer ran as the limit's handler went in
    left, _ = callers_alarm.stop()
    assert 25 < left <= 30


def test_a_real_ctrl_c_in_a_loss_stays_a_keyboard_interrupt_in_the_api(losses) -> None:
    # Python's own handler, as an interactive caller has it (a pytest started in the background
    # by a shell inherits SIGINT ignored): the API must leave it in place.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            audit([[1.0, 2.0]], [0], impls=[f"{losses}:ctrl_c"], modes=["eager"])
        assert not isinstance(caught.value, ImplementationError)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_bad_timeouts_are_refused_before_any_work() -> None:
    for bad in (0, -1, float("nan"), float("inf"), 2e6):
        # "nope" would be an unknown implementation: the timeout is refused first
        with pytest.raises(ConfigError, match=r"^--timeout must be a number of seconds in"):
            audit([[1.0, 2.0]], [0], impls=["nope"], timeout=bad)


def test_check_timeout_bounds_each_run_on_each_chunk(losses) -> None:
    spec = f"{losses}:spin"
    line = one_line(["check", SEED, "--impl", spec, "--mode", "eager", "--timeout", "0.2"])
    assert line == (
        f"xentaudit: error: --impl {spec} (float32, eager) ran longer than the timeout of 0.2 "
        "s; raise --timeout or fix the implementation"
    )
    # A built-in implementation well within the limit is unaffected.
    fine = CliRunner().invoke(
        cli,
        ["check", SEED, "--impl", "tf_sparse_softmax_xent", "--mode", "eager", "--timeout", "60"],
        catch_exceptions=False,
    )
    assert fine.exit_code == 0, fine.output
