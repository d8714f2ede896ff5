"""The command line: a thin click layer over the library.

Parses options, calls the library, picks a renderer, writes, exits with the result's code.
Every user error is one line on stderr and exit code 2; a bug is one line and exit code 3 (the
traceback with -v); reports go to stdout. Only the command line quiets TensorFlow's logs: the
library leaves the process's environment, logging and file descriptors alone.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from xentaudit import __version__
from xentaudit.choices import (
    DEFAULT_DTYPES,
    DEFAULT_EPS,
    DEFAULT_LABELS_KEY,
    EMA_IMPLS,
    INPUTS,
    LOSS_NAMES,
    MAX_CLASSES,
    MAX_ROWS,
    MAX_SCALES,
    MAX_SEED,
    MAX_TIMEOUT,
    MODE_NAMES,
    TRAINING,
)
from xentaudit.cli_common import HelpToStdout, not_empty, version_option, write_stdout
from xentaudit.errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, ConfigError, XentauditError
from xentaudit.flags import CHECK_FAIL_ON, fail_on_flags
from xentaudit.lint.command import lint
from xentaudit.processes import as_command_line, stderr_fd

if TYPE_CHECKING:
    import numpy as np

# The commands' bodies import the library (numpy, the reports, rich) when they run: a --help
# imports none of it (issue "Speed on the CPUs CI runs on", item 4).

SEED_LOGITS = [[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]]
SEED_LABELS = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
SEED_SCALE = 10.0
# --loss sigmoid's seed: at scale 10, the rows [[20], [-20]] labelled [[0], [1]]
SIGMOID_SEED_LOGITS = [[2.0], [-2.0]]
SIGMOID_SEED_LABELS = [[0.0], [1.0]]
SEEDS = {  # Loss.labels -> compare's default input
    "classes": (SEED_LOGITS, SEED_LABELS),
    "multi-label": (SIGMOID_SEED_LOGITS, SIGMOID_SEED_LABELS),
}
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
SIGNAL_EXITS = {
    signal.SIGINT: (EXIT_INTERRUPTED, "aborted"),
    signal.SIGTERM: (EXIT_TERMINATED, "terminated"),
}
HTML_SUFFIXES = (".html", ".htm")
MAX_TEMPORARY_STEM = 64  # bytes of a target's name in its temporary file's (``_temporary``)
BYTE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_PASSED_ON = (  # exceptions click or the handlers of `main` deal with: not bugs
    click.ClickException,
    click.exceptions.Exit,
    click.exceptions.Abort,
    XentauditError,
)


def one_line(message: str) -> str:
    """``message`` on one line: a path or JSON holding a line break is shown escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class _Signals:
    """SIGINT and SIGTERM end a command at once: the temporary files of --output and
    --flagged-rows, and the flagged rows its processes wrote (``parallel.spill_folders``), are
    removed, one line goes to stderr and the process exits 130 or 143 with
    ``os._exit``.

    No exception unwinds the stack: one raised while Python runs a finalizer or a thread's
    clean-up is printed as "Exception ignored" and lost, and interpreter shutdown would wait for
    the chunk-reading thread of `check`. Within ``held()`` a signal waits for the block's end.
    """

    def __init__(self) -> None:
        self.temporary: set[str] = set()
        self.holding = False
        self.pending: int | None = None

    def handle(self, signum: int, frame: object) -> None:
        if self.holding:
            self.pending = signum
            return
        code, word = SIGNAL_EXITS[signum]
        for path in self.temporary:
            with contextlib.suppress(OSError):
                os.unlink(path)
        parallel = sys.modules.get("xentaudit.parallel")  # imported when processes ran
        for folder in list(parallel.spill_folders) if parallel is not None else ():
            parallel.remove_spill_folder(folder)
        # On a terminal: clear the line (the ^C echo, a progress bar) and show the cursor again,
        # which the progress bar hid and would have restored on a normal exit.
        stderr = stderr_fd()  # not /dev/null, while TensorFlow loads quietly
        erase = "\r\x1b[2K\x1b[?25h" if os.isatty(stderr) else ""
        with contextlib.suppress(OSError):
            os.write(stderr, f"{erase}xentaudit: {word}\n".encode())
        os._exit(code)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle the signals in this block (only the main thread can set handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle) for s in SIGNAL_EXITS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Defer a signal to the end of the block: a temporary file is created and registered
        for removal as one step."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.pending is not None:
                self.handle(self.pending, None)


_SIGNALS = _Signals()


# click 8.2+ raises it for a group called without a command (its message: the whole help)
_NO_ARGS: type[Exception] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _OneLineErrors(HelpToStdout, click.Group):
    """Report usage and input errors as one line and exit 2, bugs as one line and exit 3."""

    command_class = HelpToStdout

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            with _SIGNALS.installed():
                code = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("xentaudit: aborted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException as exc:
            message = exc.format_message().rstrip(".")
            ctx = getattr(exc, "ctx", None)
            if isinstance(exc, _NO_ARGS) and ctx is not None:
                # a bare `xentaudit`: click's message is the whole help
                message = f"no command given; pick one of {', '.join(self.list_commands(ctx))}"
            suggested = "Did you mean" in message  # click's own how-to-fix
            how = f"; see '{ctx.command_path} --help'" if ctx and not suggested else ""
            click.echo(f"xentaudit: error: {one_line(message)}{how}", err=True)
            sys.exit(EXIT_USAGE)
        except XentauditError as exc:
            click.echo(f"xentaudit: error: {one_line(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(code or 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _PASSED_ON:
            raise
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            what = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
            if ctx.params.get("verbose"):
                click.echo(traceback.format_exc(), err=True, nl=False)
                click.echo(f"xentaudit: internal error: {what}", err=True)
            else:
                click.echo(
                    f"xentaudit: internal error: {what} (run with -v for the traceback)", err=True
                )
            ctx.exit(EXIT_INTERNAL)


class Finite(click.FloatRange):
    """A finite float within optional bounds: click's FloatRange alone lets NaN through (and
    inf when a side is unbounded)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class ByteSize(click.ParamType):
    """A memory size: bytes, or a number with K, M, G or T (powers of 1024): 512M, 2G, 1.5T."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"(\d+\.?\d*|\.\d+)([KMGT]?)(?:i?B)?", str(value).strip(), re.I)
        if match is None:
            self.fail(f"{value!r} is not a size such as 512M or 2G", param, ctx)
        size = int(float(match[1]) * BYTE_UNITS[match[2].upper()])
        if size < 1:
            self.fail(f"{value!r} is less than one byte", param, ctx)
        return size


class ReportFile(click.ParamType):
    """The file of --plot or --html, whose suffix names its format: refused when parsed, and
    matplotlib (which draws the figures of both) is imported then, so that a broken install
    is one line before any work."""

    name = "file"

    def __init__(self, html: bool) -> None:
        self.html = html

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from xentaudit.report import plot

        suffixes = HTML_SUFFIXES if self.html else plot.SUFFIXES
        if Path(str(value)).suffix.lower() not in suffixes:
            self.fail(f"{value!r} does not end in {', '.join(suffixes)}", param, ctx)
        return str(value)


def _stacked(options: Sequence[Callable]) -> Callable[[Callable], Callable]:
    """One decorator applying ``options`` in order (the first is listed first in --help)."""

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def shared_options(
    fail_on: Sequence[str] = (), mode: str = "both"
) -> Callable[[Callable], Callable]:
    """--mode, --rtol, --timeout, --loss-scale and --fail-on: the same for every command
    (``fail_on`` and ``mode``: its defaults)."""
    options = [
        click.option(
            "--mode",
            type=click.Choice(MODE_NAMES),
            default=mode,
            show_default=True,
            help="Run each backend eagerly, as a graph (tf.function, torch.compile, jax.jit), "
            "both, or in the modes it trains in (training: TensorFlow both, torch eager, "
            "JAX jit).",
        ),
        click.option(
            "--rtol",
            type=Finite(min=0, min_open=True),
            help="Loss tolerance of `divergent`: R max(|exact|, 1) instead of the default, "
            "for softmax eps (8 max(|exact|, 1) + ceil(log2 C) B) + u_acc d B (its sum in SIMD "
            "lanes; the other losses' in the README).",
        ),
        click.option(
            "--timeout",
            type=Finite(min=0, min_open=True, max=MAX_TIMEOUT),
            metavar="SECONDS",
            help="Exit 2 when one run of an implementation (one dtype and mode) takes longer "
            "(default: no limit). A single long TensorFlow op is stopped only once it returns.",
        ),
        click.option(
            "--loss-scale",
            type=Finite(min=0, min_open=True),
            metavar="S",
            help="Take gradients of S times the loss, held in the compute dtype as training "
            "holds them (Keras' LossScaleOptimizer starts at 32768, PyTorch's GradScaler at "
            "65536); overflows are flagged, and compare and check report the largest "
            "power-of-two scale whose gradients stay finite (default: no scaling).",
        ),
        click.option(
            "--fail-on",
            default=",".join(fail_on) or "none",
            show_default=True,
            metavar="FLAGS",
            help="Comma-separated flags that make the exit code 1 if they fire ('' or none: "
            "no flag).",
        ),
    ]
    return _stacked(options)


def label_options(default: str, shards: str = "") -> Callable[[Callable], Callable]:
    """--labels (a file or inline JSON; ``shards``: what else it takes) and the .npz array
    names: the same for every command."""
    options = [
        click.option(
            "--labels",
            metavar="FILE|JSON",
            help="Integer classes [...] or label weights [..., C]: a .npy file or inline JSON"
            f"{shards} (default: {default}).",
        ),
        click.option(
            "--logits-key", default="logits", show_default=True, help="Array name in a .npz."
        ),
        click.option(
            "--labels-key",
            help=f"Array name in a .npz (default: {DEFAULT_LABELS_KEY}, read if there; named, it "
            "must be there).",
        ),
    ]
    return _stacked(options)


def eps_option(*default: float) -> Callable:
    """--eps, repeatable: `clipped` and `clipped_sigmoid` run once at each epsilon."""
    return click.option(
        "--eps",
        "eps",
        multiple=True,
        type=Finite(0, 0.5, min_open=True, max_open=True),
        default=default,
        show_default=True,
        help="Clip of `clipped` and `clipped_sigmoid`; repeatable (they run at each).",
    )


def policy_option(default: str) -> Callable:
    """--policy, repeatable: the Keras dtype policies the implementations run under."""
    return click.option(
        "--policy",
        "policies",
        multiple=True,
        metavar="NAME",
        help="Keras dtype policy: float32, mixed_float16, mixed_bfloat16 or all; Keras layers "
        f"compute in its compute dtype, as in a model under it; repeatable (default: {default}).",
    )


def backend_option() -> Callable:
    """--backend: the frameworks whose implementations `all` and the defaults cover."""
    return click.option(
        "--backend",
        "backends",
        multiple=True,
        metavar="NAME",
        help="tf, torch, jax or all (comma lists; repeatable): the frameworks whose installed "
        "implementations run (default: every installed one; one not installed is listed as "
        "skipped, with its install command).",
    )


def baseline_options(regression: str) -> Callable:
    """--baseline and --write-baseline: the CI ratchet against an earlier JSON report."""

    def decorate(command: Callable) -> Callable:
        command = click.option(
            "--write-baseline",
            metavar="FILE.json",
            help="Also write this run's JSON report here (atomically), as the next --baseline.",
        )(command)
        return click.option(
            "--baseline",
            "baseline_path",
            callback=not_empty,
            metavar="FILE.json",
            help="Compare with this earlier report (--write-baseline): exit 1 only on a "
            f"regression ({regression}), 0 otherwise.",
        )(command)

    return decorate


def model_option() -> Callable:
    """--model: audit a saved model's own loss path as the implementation `model`."""
    return click.option(
        "--model",
        metavar="FILE.keras",
        callback=not_empty,
        help="Audit this saved model's own loss path (final activation under its dtype policy, "
        "then its compiled loss, read from config.json alone) as the implementation `model`.",
    )


def loss_options() -> Callable[[Callable], Callable]:
    """--loss and --label-smoothing: the member of the cross-entropy family audited."""
    return _stacked(
        [
            click.option(
                "--loss",
                type=click.Choice(LOSS_NAMES),
                default="softmax",
                show_default=True,
                help="The loss audited, against its own exact reference, by its implementations "
                "(see `xentaudit list`): softmax cross-entropy; sigmoid (binary, multi-label: a "
                "label in [0, 1] per logit, the row's loss the mean over its labels); focal and "
                "binary-focal (--gamma, --alpha).",
            ),
            click.option(
                "--gamma",
                type=Finite(min=0),
                default=2.0,
                show_default=True,
                help="The focal losses' focusing parameter: (1 - p)^gamma.",
            ),
            click.option(
                "--alpha",
                type=click.FloatRange(0, 1),
                help="The focal losses' weight: focal's factor (default 0.25, Keras'); "
                "binary-focal's class balancing alpha y + (1 - alpha)(1 - y) (default none).",
            ),
            click.option(
                "--label-smoothing",
                type=click.FloatRange(0, 1, max_open=True),
                default=0.0,
                show_default=True,
                metavar="A",
                help="Smooth the labels as Keras does: y (1 - A) + A / C (softmax), y (1 - A) + "
                "A / 2 (sigmoid); the implementations with a smoothing argument (Keras', "
                "torch's F.cross_entropy) take A on the labels as given, the others smoothed "
                "labels; the sparse losses without one are skipped.",
            ),
        ]
    )


def ignore_class_option() -> Callable:
    """--ignore-class: the class label of rows the loss ignores (torch's ignore_index)."""
    return click.option(
        "--ignore-class",
        "ignore_class",
        type=int,
        metavar="N",
        help="Class labels equal to N (any integer; -100 is PyTorch's convention) mark rows "
        "the loss ignores: exact loss and gradient 0, the exact mean over the others. torch's "
        "ignore_index and Keras' ignore_class get N, the other implementations the rows' "
        "one-hot labels (zeros for a class outside [0, C)); one that gives the rows a loss (or, "
        "in compare, whose own mean divides by them) is flagged ignored-counted. --loss softmax, "
        "class labels.",
    )


def html_option(command: str) -> Callable:
    """--html: a self-contained HTML report of the run (verdict, tables, figures)."""
    return click.option(
        "--html",
        "html_path",
        type=ReportFile(html=True),
        metavar="FILE.html",
        help=f"Also write a self-contained HTML report here (atomically): {command}'s verdict "
        "and advice, its tables and its figures, with no external references.",
    )


def count_option(name: str, low: int, high: int, default: int, help: str) -> Callable:
    """An integer option within [low, high]; --help shows the range and the default."""
    return click.option(
        name, type=click.IntRange(low, high), default=default, show_default=True, help=help
    )


def format_option(*formats: str) -> Callable:
    """--format, with the formats a command can write."""
    return click.option(
        "--format", "fmt", type=click.Choice(formats), default=formats[0], show_default=True
    )


@click.group(
    name="xentaudit", cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]}
)
@version_option(__version__)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show TensorFlow's own log output, and the traceback of an internal error.",
)
def cli(verbose: bool) -> None:
    """Numerical-stability auditor for cross-entropy: which implementation lies, on your numbers.

    Exit codes: 0 ok, 1 a --fail-on flag fired, 2 usage or input error, 3 internal error (a
    bug: run with -v for the traceback and report it), 130 interrupted, 143 terminated.
    """
    if sys.stdout is None:  # started with its descriptor closed (`>&-`): a report would be lost,
        # and the first file opened would take descriptor 1
        raise ConfigError(
            "cannot write to stdout (it is closed); redirect it to a file or /dev/null"
        )
    # TensorFlow's C++ logs: shown with -v, as the user set TF_CPP_MIN_LOG_LEVEL, else hidden.
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    as_command_line()


def _load_keras(model: str | None) -> None:
    """Import TensorFlow before a saved ``model`` is read in Keras, which imports it as it is
    (``load_tf`` is quiet in the command line's processes; Keras alone is not)."""
    if model is not None:
        from xentaudit.impls import load_tf

        load_tf()


@cli.command()
@click.option(
    "--logits",
    metavar="FILE|JSON",
    help="Logits [..., C]: a .npy file, a .npz (with --logits-key), or an inline JSON list in "
    'which "-inf", "inf", "nan" may stand for non-finite numbers (default: the seed input '
    "[[3,1,1],[-1,2,5]]).",
)
@label_options("the .npz's --labels-key array; the seed's [[1,0,0],[0,1,0]]")
@click.option(
    "--scale",
    type=Finite(min=0, min_open=True),
    help=f"Multiply the logits (default: {SEED_SCALE:g} for the seed input, 1 for --logits).",
)
@click.option(
    "--dtype",
    "dtypes",
    multiple=True,
    metavar="NAME",
    help="float16, bfloat16, float32, float64 or all; repeatable (default: a file's own dtype; "
    "float32 for inline JSON and the seed).",
)
@click.option(
    "--impl",
    "impls",
    multiple=True,
    metavar="NAME",
    help="Implementation to audit; repeatable (default: all).",
)
@model_option()
@policy_option("float32")
@backend_option()
@eps_option(1e-7)
@loss_options()
@ignore_class_option()
@html_option("compare")
@shared_options()
@format_option("table", "json")
def compare(
    logits: str | None,
    labels: str | None,
    logits_key: str,
    labels_key: str | None,
    scale: float | None,
    dtypes: tuple[str, ...],
    impls: tuple[str, ...],
    model: str | None,
    policies: tuple[str, ...],
    backends: tuple[str, ...],
    eps: tuple[float, ...],
    loss: str,
    gamma: float,
    alpha: float | None,
    label_smoothing: float,
    ignore_class: int | None,
    html_path: str | None,
    mode: str,
    rtol: float | None,
    timeout: float | None,
    loss_scale: float | None,
    fail_on: str,
    fmt: str,
) -> int:
    """Compare every implementation side by side on one input.

    With no options: the seed input at scale 10 in float32, where Keras' clipped
    probabilities read 8.06 instead of 15.0. With --loss sigmoid: the logits [[20], [-20]]
    labelled [[0], [1]], where Keras' clipped sigmoid reads 15.94 and 16.12 instead of 20.
    """
    import numpy as np

    from xentaudit.audit import audit
    from xentaudit.dtypes import FORMATS
    from xentaudit.io import load_inputs, names_a_file
    from xentaudit.losses import LOSSES, NO_FOCUS, focus_of
    from xentaudit.report import json as json_report
    from xentaudit.report import table as table_report

    fail_flags = fail_on_flags(fail_on, "--fail-on")
    html_target = None if html_path is None else _writable(html_path, "--html")
    _not_read([("--html", html_target)], (logits, labels, model, *_loss_files(impls)))
    scale_given = scale is not None
    if logits is None:
        if labels is not None:
            raise ConfigError(
                "--labels came without --logits; pass both (or neither, for the seed)"
            )
        x, y = (np.array(v) for v in SEEDS[LOSSES[loss].labels])
        scale = SEED_SCALE if scale is None else scale
    else:
        x, y = load_inputs(logits, labels, logits_key, labels_key)
        scale = 1.0 if scale is None else scale
        if not dtypes and names_a_file(logits) and x.dtype.name in FORMATS:
            dtypes = (x.dtype.name,)  # a file is audited in its own dtype, as `check` does
    dtypes = dtypes or DEFAULT_DTYPES
    if x.dtype.kind in "biuf" or x.dtype.name == "bfloat16":  # audit refuses anything else
        x = _scaled(x, scale, dtypes, scale_given)
    _load_keras(model)
    result = audit(
        x,
        y,
        loss=loss,
        label_smoothing=label_smoothing,
        gamma=gamma,
        alpha=alpha,
        impls=impls or None,
        dtypes=dtypes,
        modes=(mode,),
        eps=eps,
        rtol=rtol,
        timeout=timeout,
        policies=policies or None,
        backends=backends or None,
        loss_scale=loss_scale,
        model=model,
        ignore_class=ignore_class,
    )
    title = f"xentaudit compare: {result.rows} rows x {result.classes} classes, scale {scale:g}"
    if loss != "softmax" or label_smoothing:
        focus = focus_of(loss, gamma, alpha)
        title += f"; loss {loss}"
        title += f", gamma {focus.gamma:g}, alpha {focus.alpha}" * (focus != NO_FOCUS)
        title += f", label smoothing {label_smoothing:g}" * bool(label_smoothing)
    if result.model is not None:
        title += f"; model: {result.model}"
    if html_target is not None:
        from xentaudit.report import html as html_report

        with _written_atomically(html_target, "--html") as write:
            write(html_report.render(result, title=title))
    if fmt == "json":
        text = json_report.render(result, command="compare", fail_on=list(fail_flags), scale=scale)
    else:
        color, width = _color_and_width(sys.stdout)
        text = table_report.render(result, title=title, color=color, width=width)
    write_stdout(text)
    return result.exit_code(fail_flags)


def _scaled(x: np.ndarray, scale: float, dtypes: Sequence[str], given: bool) -> np.ndarray:
    """``x * scale`` in float64, refused when it overflows even the widest of ``dtypes`` (a
    narrower dtype it overflows is skipped): the scale's doing if ``given`` (--scale), else the
    dtype's."""
    import numpy as np

    from xentaudit.dtypes import get_format, parse_dtypes

    wide = x.astype(np.float64)
    finite = np.abs(wide[np.isfinite(wide)])
    top = float(finite.max(initial=0.0)) * scale  # a Python float: inf, no warning
    widest = max((get_format(d) for d in parse_dtypes(dtypes)), key=lambda f: f.max)
    if top > widest.max and not given:
        raise ConfigError(
            f"logits reach {top:.4g}, which overflow {widest.name} (max {widest.max:.5g}); pass "
            "a wider --dtype, or a --scale below 1"
        )
    if top > widest.max:
        raise ConfigError(
            f"--scale {scale:g} makes logits up to {top:.4g}, which overflow {widest.name} "
            f"(max {widest.max:.5g}); use a smaller --scale"
        )
    return wide * scale


def _color_and_width(stream: object) -> tuple[bool, int]:
    """Colour and width for a report to ``stream`` (None: a file): a terminal's own, else
    ``COLUMNS`` when set to a positive width, else ``table_report.REPORT_WIDTH``."""
    from xentaudit.report import table as table_report

    tty = bool(getattr(stream, "isatty", lambda: False)())
    color = tty and "NO_COLOR" not in os.environ
    if tty:
        return color, shutil.get_terminal_size().columns
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() else 0
    return color, width if width > 0 else table_report.REPORT_WIDTH


@cli.command()
@click.option(
    "--scales",
    "scales_spec",
    metavar="LIST|START:STOP:COUNT",
    help="Logit scales, positive and finite: a list (0.1,1,10) or log-spaced START:STOP:COUNT "
    f"(default 0.1:1e4:11); at most {MAX_SCALES} scales.",
)
@click.option("--dtype", "dtypes", multiple=True, metavar="NAME", help="Repeatable (default all).")
@click.option("--impl", "impls", multiple=True, metavar="NAME", help="Repeatable (default all).")
@policy_option("float32")
@backend_option()
@eps_option(*DEFAULT_EPS)
@click.option(
    "--pattern",
    "patterns",
    multiple=True,
    metavar="NAME",
    help="seed, random, dominant, vocab (softmax); multilabel, soft-multilabel (sigmoid); or "
    "all, the --loss's patterns; repeatable (default all).",
)
@count_option("--classes", 2, MAX_CLASSES, 16384, "Classes of the vocab pattern.")
@count_option("--rows", 1, MAX_ROWS, 4, "Rows of the random pattern.")
@count_option("--vocab-rows", 1, MAX_ROWS, 1, "Rows of the vocab pattern.")
@count_option("--seed", 0, MAX_SEED, 0, "Seed of random patterns.")
@click.option(
    "--max-memory",
    type=ByteSize(),
    show_default="half the available memory",
    help="Refuse a grid whose largest batch needs more memory (estimated: logits x scales x "
    "(40 + 10 x bytes of the dtype)); e.g. 512M, 2G.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    show_default="one per core",
    help="Sweep each backend in a process of its own, this many at a time (1: all in this "
    "process; the result is the same).",
)
@baseline_options("a breaking point at a smaller scale, or one that appeared")
@click.option(
    "--plot",
    "plot_path",
    type=ReportFile(html=False),
    metavar="FILE.png|svg|pdf",
    help="Also draw the sweep here (atomically; the format from the suffix): per dtype, the "
    "loss and gradient errors against the logit scale, one line per implementation.",
)
@loss_options()
@html_option("sweep")
@shared_options(mode=TRAINING)
@format_option("table", "json")
def sweep(
    scales_spec: str | None,
    dtypes: tuple[str, ...],
    impls: tuple[str, ...],
    policies: tuple[str, ...],
    backends: tuple[str, ...],
    eps: tuple[float, ...],
    patterns: tuple[str, ...],
    classes: int,
    rows: int,
    vocab_rows: int,
    seed: int,
    max_memory: int | None,
    jobs: int | None,
    baseline_path: str | None,
    write_baseline: str | None,
    plot_path: str | None,
    loss: str,
    gamma: float,
    alpha: float | None,
    label_smoothing: float,
    html_path: str | None,
    mode: str,
    rtol: float | None,
    timeout: float | None,
    loss_scale: float | None,
    fail_on: str,
    fmt: str,
) -> int:
    """Sweep logit scales x dtypes x epsilons x input patterns across the implementations.

    Prints a grid per dtype, the epsilon grid of `clipped`, the breaking point of every
    implementation (the first scale at which a failing flag fires) and a summary.
    """
    from xentaudit.baseline import compare_sweep, read_baseline
    from xentaudit.grid import DEFAULT_SCALES, parse_scales
    from xentaudit.parallel import cores
    from xentaudit.report import json as json_report
    from xentaudit.report import table as table_report
    from xentaudit.sweep import sweep as run_sweep

    fail_flags = fail_on_flags(fail_on, "--fail-on")
    new_baseline = None if write_baseline is None else _writable(write_baseline, "--write-baseline")
    plot_target = None if plot_path is None else _writable(plot_path, "--plot")
    html_target = None if html_path is None else _writable(html_path, "--html")
    _distinct(("--write-baseline", new_baseline), ("--plot", plot_target), ("--html", html_target))
    # (--baseline and --write-baseline may name one file: the ratchet reads it first)
    _not_read([("--plot", plot_target), ("--html", html_target)], (baseline_path,))
    _not_read(
        [("--write-baseline", new_baseline), ("--plot", plot_target), ("--html", html_target)],
        _loss_files(impls),
    )
    old_baseline = None if baseline_path is None else read_baseline(baseline_path, "sweep")
    scales = parse_scales(scales_spec) if scales_spec is not None else DEFAULT_SCALES
    color, width = _color_and_width(sys.stdout)
    with _progress() as progress:  # the sweep imports the frameworks (quietly), here or in --jobs
        result = run_sweep(
            loss=loss,
            label_smoothing=label_smoothing,
            gamma=gamma,
            alpha=alpha,
            scales=scales,
            dtypes=dtypes or None,
            impls=impls or None,
            eps=eps,
            patterns=patterns or None,
            classes=classes,
            rows=rows,
            vocab_rows=vocab_rows,
            seed=seed,
            modes=(mode,),
            rtol=rtol,
            timeout=timeout,
            max_memory=max_memory,
            progress=progress,
            policies=policies or None,
            backends=backends or None,
            loss_scale=loss_scale,
            jobs=jobs or cores(),
        )
    if old_baseline is not None:
        assert baseline_path is not None
        result = replace(result, baseline=compare_sweep(result, old_baseline, baseline_path))
    if new_baseline is not None:
        with _written_atomically(new_baseline, "--write-baseline") as write:
            write(json_report.render(result, command="sweep", fail_on=list(fail_flags)))
    if plot_target is not None:
        from xentaudit.report import plot

        with _written_atomically(plot_target, "--plot") as write:
            write(plot.render_sweep(result, plot_target.suffix))
    if html_target is not None:
        from xentaudit.report import html as html_report

        with _written_atomically(html_target, "--html") as write:
            write(html_report.render_sweep(result, fail_flags))
    if fmt == "json":
        text = json_report.render(result, command="sweep", fail_on=list(fail_flags))
    else:
        text = table_report.render_sweep(result, color=color, width=width)
    write_stdout(text)
    return result.exit_code(fail_flags)


@cli.command()
@click.argument("paths", metavar="[FILE]...", nargs=-1, callback=not_empty)
@label_options(
    "the .npz's --labels-key array",
    "; for shards, a folder or quoted glob of .npy files, paired with them by file name",
)
@click.option(
    "--impl",
    "impls",
    multiple=True,
    metavar="NAME",
    help="Repeatable (default: every implementation but double_softmax).",
)
@click.option(
    "--dtype", "dtypes", multiple=True, metavar="NAME", help="Repeatable (default: the file's)."
)
@policy_option("float32, and mixed_float16 or mixed_bfloat16 for a float16 or bfloat16 file")
@backend_option()
@eps_option(1e-7)
@click.option(
    "--input",
    "input_kind",
    type=click.Choice(INPUTS),
    default="logits",
    show_default=True,
    help="What FILE holds. probabilities: graded through the implementations that take them, "
    "against the exact loss of the given p (renormalised, as Keras does); log-probabilities: "
    "audited as logits.",
)
@loss_options()
@ignore_class_option()
@model_option()
@click.option(
    "--inputs",
    metavar="X.npy",
    callback=not_empty,
    help="With --model and --labels, instead of FILE: compute the logits from these inputs in "
    "batches (the model loaded in Keras' safe mode) and audit them.",
)
@click.option(
    "--save-logits",
    metavar="FILE.npz",
    help="With --inputs: keep the computed logits and the labels in this .npz (atomically), "
    "for later `check FILE.npz --model ...` runs.",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    help="Rows read at a time (default: ~2M logits a chunk).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Audit the shards of a dump (several FILEs, a folder or a quoted glob) in this many "
    "local processes. With several backends, each is audited in processes of its own, one "
    "backend after the other, so that a process imports one framework, not all.",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Audit the shards on this Dask cluster (tcp://host:8786; pip install "
    "'xentaudit[dask]'); every worker must read the shards' paths.",
)
@click.option("--output", metavar="FILE", help="Write the report here (atomically), not stdout.")
@html_option("check")
@baseline_options(
    "a new --fail-on flag, more rows flagged, an error grown past 2x, a new result that fires"
)
@click.option(
    "--flagged-rows",
    metavar="FILE.csv",
    help="Write every row on which a loss or gradient flag fired (zero-loss included), one CSV "
    "line per row and result, while streaming (atomically).",
)
@click.option(
    "--config",
    "config_path",
    metavar="PYPROJECT",
    callback=not_empty,
    help="Read [tool.xentaudit] from this file (default: nearest pyproject.toml upwards).",
)
@shared_options(CHECK_FAIL_ON)
@format_option("table", "json", "junit", "github")
def check(
    paths: tuple[str, ...],
    labels: str | None,
    logits_key: str,
    labels_key: str | None,
    impls: tuple[str, ...],
    dtypes: tuple[str, ...],
    policies: tuple[str, ...],
    backends: tuple[str, ...],
    eps: tuple[float, ...],
    input_kind: str,
    loss: str,
    gamma: float,
    alpha: float | None,
    label_smoothing: float,
    ignore_class: int | None,
    model: str | None,
    inputs: str | None,
    save_logits: str | None,
    chunk_rows: int | None,
    jobs: int,
    scheduler: str | None,
    output: str | None,
    html_path: str | None,
    baseline_path: str | None,
    write_baseline: str | None,
    flagged_rows: str | None,
    config_path: str | None,
    mode: str,
    rtol: float | None,
    timeout: float | None,
    loss_scale: float | None,
    fail_on: str,
    fmt: str,
) -> int:
    """Audit saved logits (.npy, or .npz with logits and labels): the CI gate. Several FILEs,
    a folder or a quoted glob are the shards of one dump, audited as their concatenation.

    With --model, the saved model's own loss path is audited as `model` and gates the run (the
    rest of the zoo is shown beside it). Exit code 1 when a --fail-on flag fires on any row,
    0 otherwise, 2 for bad input or options, 3 for an internal error (a bug in xentaudit, never
    a verdict) or for shards no process could audit.
    """
    from xentaudit import config
    from xentaudit.audit import chosen_impls
    from xentaudit.baseline import compare as compare_baseline
    from xentaudit.baseline import read_baseline
    from xentaudit.check import check_file, default_impls, refuse_input_kind
    from xentaudit.io import file_or_json
    from xentaudit.report import csv as csv_report
    from xentaudit.report import github as github_report
    from xentaudit.report import json as json_report
    from xentaudit.report import junit as junit_report
    from xentaudit.report import markdown as markdown_report
    from xentaudit.report import table as table_report
    from xentaudit.results import FlaggedRow
    from xentaudit.shards import is_sharded

    _check_sources(paths, model, inputs, labels, save_logits)
    target = None if output is None else _writable(output, "--output")
    html_target = None if html_path is None else _writable(html_path, "--html")
    csv_target = None if flagged_rows is None else _writable(flagged_rows, "--flagged-rows")
    saved = None if save_logits is None else _writable(save_logits, "--save-logits")
    new_baseline = None if write_baseline is None else _writable(write_baseline, "--write-baseline")
    # read before anything runs (and before --write-baseline may replace the same file)
    old_baseline = None if baseline_path is None else read_baseline(baseline_path)
    written = (
        ("--output", target),
        ("--html", html_target),
        ("--flagged-rows", csv_target),
        ("--save-logits", saved),
        ("--write-baseline", new_baseline),
    )
    _distinct(*written)
    # (--baseline and --write-baseline may name one file: the ratchet reads it first)
    _not_read(written, (*paths, labels, inputs, model, config_path))
    _not_read([w for w in written if w[0] != "--write-baseline"], (baseline_path,))
    used = config.load(Path(config_path) if config_path else None)
    for warning in used.warnings:
        click.echo(f"xentaudit: warning: {warning}", err=True)
    table = used.table
    ctx = click.get_current_context()

    def unset(param: str) -> bool:
        return ctx.get_parameter_source(param) in (None, ParameterSource.DEFAULT)

    impls = impls or tuple(table.get("impls", ()))
    _not_read(written, _loss_files(impls))
    dtypes = dtypes or tuple(table.get("dtypes", ()))
    policies = policies or tuple(table.get("policies", ()))
    backends = backends or tuple(table.get("backends", ()))
    if unset("fail_on") and "fail-on" in table:
        fail_on = ",".join(table["fail-on"])
    rtol = rtol if rtol is not None else table.get("rtol")
    if unset("eps") and "eps" in table:
        eps = tuple(table["eps"]) if isinstance(table["eps"], list) else (table["eps"],)
    fail_flags = fail_on_flags(fail_on, "--fail-on")
    label_input = (
        labels if labels is None or is_sharded(labels) else file_or_json(labels, "--labels")
    )
    defaults = default_impls(input_kind, backends or None, loss)
    _load_keras(model)  # also with shards audited in other processes: read here too
    # The files written are whole on disk before the report is printed and renamed into place
    # one after another after it: an error on the way (a baseline refused, stdout or --output
    # unwritable) leaves none of them (--save-logits, the audit's input, stays).
    with contextlib.ExitStack() as outputs:
        writers: list[Callable[..., None]] = []

        def written(path: Path, option: str) -> Callable[..., None]:
            """A file of the run, renamed into place when ``outputs`` ends without error."""
            write = outputs.enter_context(_written_atomically(path, option))
            writers.append(write)
            return write

        with contextlib.ExitStack() as stack:
            if inputs is not None:
                assert model is not None and label_input is not None  # _check_sources
                # refused before the model runs
                wanted = impls or defaults
                refuse_input_kind(input_kind, wanted, model, policies or None)
                chosen_impls(wanted, model, backends or None)
                assert not isinstance(label_input, str)  # _check_sources: one FILE of labels
                computed = stack.enter_context(_computed_logits(model, inputs, label_input, saved))
                paths, label_input = (str(computed),), None
                logits_key, labels_key = "logits", None
            on_flagged_row = None
            if csv_target is not None:
                write_row = written(csv_target, "--flagged-rows")
                write_row(csv_report.header())

                def on_flagged_row(row: FlaggedRow) -> None:
                    write_row(csv_report.line(row))

            progress = stack.enter_context(_progress())
            result = check_file(
                paths,
                labels=label_input,
                logits_key=logits_key,
                labels_key=labels_key,
                impls=impls or None,
                dtypes=dtypes or None,
                modes=(mode,),
                eps=eps,
                rtol=rtol,
                chunk_rows=chunk_rows,
                timeout=timeout,
                progress=progress,
                policies=policies or None,
                backends=backends or None,
                loss_scale=loss_scale,
                on_flagged_row=on_flagged_row,
                model=model,
                input_kind=input_kind,
                loss=loss,
                label_smoothing=label_smoothing,
                gamma=gamma,
                alpha=alpha,
                ignore_class=ignore_class,
                jobs=jobs,
                scheduler=scheduler,
                apart=True,
            )
        result = replace(
            result,
            path=result.path if inputs is None else f"{inputs} through {model}",
            labels=result.labels if inputs is None else f"--labels {labels}",
            config=None if used.path is None else str(used.path),
            flagged_rows_path=flagged_rows,
            # an explicit --fail-on judges every implementation, as without --model
            gate=result.gate if unset("fail_on") and "fail-on" not in table else None,
        )
        if old_baseline is not None:
            assert baseline_path is not None
            comparison = compare_baseline(result, old_baseline, fail_flags, baseline_path)
            result = replace(result, baseline=comparison)
        if new_baseline is not None:
            written(new_baseline, "--write-baseline")(
                json_report.render(result, command="check", fail_on=list(fail_flags))
            )
        if fmt == "json":
            text = json_report.render(result, command="check", fail_on=list(fail_flags))
        elif fmt == "junit":
            text = junit_report.render(result, fail_flags)
        elif fmt == "github":
            text = github_report.render(result, fail_flags)
        else:
            color, width = _color_and_width(sys.stdout if output is None else None)
            text = table_report.render_check(result, fail_flags, color=color, width=width)
        if html_target is not None:
            from xentaudit.report import html as html_report

            written(html_target, "--html")(html_report.render_check(result, fail_flags))
        if target is not None:
            written(target, "--output")(text)
        for write in writers:  # each file whole on disk before the report says anything
            write("", flush=True)
        if target is None:
            write_stdout(text)  # a reader that stops reading (`| head`): the files stand
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:  # appended once the run's files are written: a failed run appends nothing
        pointer = (
            ""
            if html_target is None
            else f"\nFull report: `{html_path}` (HTML, self-contained; upload it as an artifact "
            "to open it from the run).\n"
        )
        try:
            with open(summary, "a", encoding="utf-8") as stream:
                stream.write(markdown_report.render(result, fail_flags) + pointer)
        except OSError as exc:
            click.echo(f"xentaudit: warning: cannot append to GITHUB_STEP_SUMMARY: {exc}", err=True)
    return result.exit_code(fail_flags)


def _check_sources(
    paths: tuple[str, ...],
    model: str | None,
    inputs: str | None,
    labels: str | None,
    save_logits: str | None,
) -> None:
    """Refuse a `check` without exactly one source of logits: FILEs, or --inputs (with --model
    and --labels, one file or inline JSON); --save-logits only with --inputs, and named .npz."""
    from xentaudit.shards import is_sharded

    if paths and inputs is not None:
        raise ConfigError("FILE and --inputs both give logits; pass one of them")
    if inputs is not None and labels is not None and is_sharded(labels):
        raise ConfigError("--inputs takes one --labels file (or inline JSON), not shards")
    if not paths and inputs is None:
        raise ConfigError("missing FILE: pass saved logits, or --model and --inputs")
    if inputs is not None and (model is None or labels is None):
        raise ConfigError("--inputs needs --model (to compute the logits) and --labels")
    if save_logits is not None and inputs is None:
        raise ConfigError("--save-logits needs --inputs (it keeps the logits computed from them)")
    if save_logits is not None and not save_logits.endswith(".npz"):
        raise ConfigError(f"--save-logits {save_logits}: name a .npz file (FILE.npz)")


@contextlib.contextmanager
def _computed_logits(
    model: str, inputs: str, labels: Path | np.ndarray, saved: Path | None
) -> Iterator[Path]:
    """An ``.npz`` of the logits the model computes on ``inputs``, and ``labels``: written to
    ``saved`` (--save-logits) atomically, or else to a temporary file removed at the end of
    the block; either way a temporary file beside the target is removed on failure and on
    SIGINT or SIGTERM."""
    from xentaudit.model import save_logits

    target = saved or Path(tempfile.gettempdir()) / "xentaudit-logits"
    with _temporary(target, ".tmp" if saved else ".npz") as (fd, tmp):
        try:
            with os.fdopen(fd, "wb") as stream:
                save_logits(model, inputs, labels, stream)
            if saved is not None:
                os.replace(tmp, saved)
        except OSError as exc:
            where = "--save-logits" if saved else "the logits computed from --inputs"
            raise ConfigError(
                f"{where}: cannot write {tmp} ({exc.strerror}); free space or pick a writable path"
            ) from None
        yield saved or Path(tmp)


@cli.command()
@click.argument("trajectory", metavar="TRAJECTORY", callback=not_empty)
@click.option(
    "--decay",
    "decays",
    multiple=True,
    metavar="D[,D...]",
    default=("0.9,0.99,0.999",),
    show_default=True,
    help="EMA decays d in (0, 1): e_t = d e_(t-1) + (1 - d) z_t; a comma list, repeatable.",
)
@click.option(
    "--impl",
    "impls",
    multiple=True,
    metavar="NAME",
    default=EMA_IMPLS,
    show_default=True,
    help="Implementations run on the raw and the EMA logits of every step, to list the "
    "failing flags the EMA hides or shows; repeatable (none: --impl '').",
)
@format_option("table", "json")
def ema(trajectory: str, decays: tuple[str, ...], impls: tuple[str, ...], fmt: str) -> int:
    """Measure the cross-entropy of an EMA of the logits on a training trajectory.

    TRAJECTORY: a .npz of logits (steps, rows, classes) and labels, or a folder of per-step
    .npz files. Per decay and step: the exact loss of the raw and the EMA logits, the gradient
    reaching the current logits (attenuated by 1 - d), the cosine between the two gradients;
    per decay, the lag in steps and the flags the EMA hides or shows. Exit 0 (it measures).
    """
    from xentaudit.ema import ema as run_ema
    from xentaudit.report import table as table_report

    impls = tuple(i for i in impls if i)
    parsed = []
    for part in (p.strip() for d in decays for p in d.split(",")):
        try:
            parsed.append(float(part))
        except ValueError:
            raise ConfigError(f"--decay {part!r} is not a number; pass decays in (0, 1)") from None
    result = run_ema(trajectory, parsed, impls)
    if fmt == "json":
        body = result.to_dict()
        document = {"schema": body.pop("schema"), "command": "ema", **body}
        text = json.dumps(document, indent=2, allow_nan=False)
        write_stdout(text + "\n")
    else:
        write_stdout(table_report.render_ema(result, *_color_and_width(sys.stdout)))
    return 0


@cli.command("list")
@click.option(
    "--loss",
    type=click.Choice(LOSS_NAMES),
    help="Only the implementations of this loss (default: every one).",
)
@format_option("table", "json")
def list_impls(loss: str | None, fmt: str) -> int:
    """List the built-in implementations.

    For each: what it is, its backend and family, what it takes (logits or probabilities), the
    label kinds and dtypes it accepts, and where its clip comes from. Imports no TensorFlow.
    """
    from xentaudit.impls import REGISTRY
    from xentaudit.results import SCHEMA_VERSION

    rows = [impl.describe() for impl in REGISTRY.values() if loss in (None, impl.loss)]
    if fmt == "json":
        document = {"schema": SCHEMA_VERSION, "command": "list", "implementations": rows}
        text = json.dumps(document, indent=2) + "\n"
    else:
        text = _list_table(rows, *_color_and_width(sys.stdout))
    write_stdout(text)
    return EXIT_OK


def _list_table(rows: list[dict[str, str | list[str]]], color: bool, width: int) -> str:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from xentaudit.report import table as table_report

    console = table_report._console(color, width)
    console.print(f"xentaudit list: {len(rows)} built-in implementations")
    # What each is, then the short facts: one table of all would squeeze the summaries; the
    # few that smooth labels themselves are named below them.
    for columns in (("name", "summary"), [c for c in rows[0] if c not in ("summary", "smoothing")]):
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
        for column in columns:
            table.add_column(column, no_wrap=column == "name")
        for row in rows:
            table.add_row(*(Text(list_cell(row, column)) for column in columns))
        console.print(table)
    own = [str(row["name"]) for row in rows if row["smoothing"] == "own"]
    if own:
        console.print(
            Text(
                "Take --label-smoothing as their own argument, on the labels as given: "
                f"{', '.join(own)}; the others are handed the labels smoothed."
            )
        )
    return console.file.getvalue()  # type: ignore[attr-defined]


def list_cell(row: dict[str, str | list[str]], column: str) -> str:
    """A cell of `xentaudit list`'s table (and of the README's): lists joined by commas, and
    every dtype as ``all``, the word ``--dtype`` uses for them."""
    from xentaudit.dtypes import FORMATS

    value = row[column]
    if column == "dtypes" and value == list(FORMATS):
        return "all"
    return ", ".join(value) if isinstance(value, list) else value


def _not_read(targets: Sequence[tuple[str, Path | None]], read: Iterable[str | None]) -> None:
    """Refuse an output option (given as (option, path); None: not given) naming a file the
    command reads: the report would replace its own input."""
    from xentaudit.io import names_a_file

    # names_a_file: inline JSON is no file (never asked of the file system); is_file: nor is a
    # symlink loop, which the reader names later
    files = [Path(p) for p in read if p is not None and names_a_file(p)]
    inputs = {p.resolve() for p in files if p.is_file()}
    for option, path in targets:
        if path is not None and path.resolve() in inputs:
            raise ConfigError(f"{option} {path} is a file this run reads; give another name")


def _loss_files(impls: Iterable[str]) -> list[str]:
    """The files of the users' losses named by ``impls`` (``[tf:|torch:|jax:]path.py:fn``),
    which the run reads (imports)."""
    from xentaudit.impls import user_backend

    targets = (user_backend(spec)[1].rpartition(":")[0] for spec in impls)
    return [target for target in targets if target.endswith(".py")]


def _distinct(*named: tuple[str, Path | None]) -> None:
    """Refuse two options (given as (option, path); None: not given) naming the same file."""
    given = [(option, path.resolve()) for option, path in named if path is not None]
    for (first, one), (second, other) in itertools.combinations(given, 2):
        if one == other:
            raise ConfigError(f"{first} and {second} name the same file; give two names")


def _writable(output: str, option: str) -> Path:
    """The path given to ``option`` (--output, --flagged-rows), once a file could be created
    beside it: refused before any work."""
    if not output.strip():
        raise ConfigError(f"{option} is empty; give a file name")
    path = Path(output)
    if path.is_symlink():  # written where the link points, as a shell's > writes
        try:
            path = path.resolve()
        except (OSError, RuntimeError):  # RuntimeError: Python 3.11's "Symlink loop"
            raise ConfigError(f"{option} {output} is a symlink loop; give a file name") from None
    if path.is_dir():
        raise ConfigError(f"{option} {output} is a directory; give a file name")
    if path.exists() and not path.is_file():
        instead = " (or leave --output out: the report goes to stdout)" * (option == "--output")
        raise ConfigError(f"{option} {output} is not a regular file; give a file name{instead}")
    if not path.parent.is_dir():
        raise ConfigError(f"{option}: no such directory: {path.parent}; create it first")
    try:
        with _temporary(path) as (fd, _):
            os.close(fd)
    except OSError as exc:
        raise ConfigError(
            f"{option}: cannot create a file in {path.parent} ({exc.strerror}); pick a "
            "writable directory"
        ) from None
    return path.absolute()  # a user's loss that changes the working directory moves no output


@contextlib.contextmanager
def _temporary(path: Path, suffix: str = ".tmp") -> Iterator[tuple[int, str]]:
    """A new temporary file beside ``path``, as (descriptor, name) ending in ``suffix``: removed
    at the end of the block, or on SIGINT or SIGTERM, unless renamed by then."""
    with _SIGNALS.held():
        # the target's name cut short, in bytes: a name near the file system's limit (255 bytes)
        # must not be refused for its temporary's prefix and suffix
        prefix = f".{os.fsdecode(os.fsencode(path.name)[:MAX_TEMPORARY_STEM])}."
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
        _SIGNALS.temporary.add(tmp)
    # mkstemp makes the file private (0600); a report or logits file gets the mode any new file
    # gets here (0666 less the umask), as if it had been written in place.
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    try:
        yield fd, tmp
    finally:
        Path(tmp).unlink(missing_ok=True)
        _SIGNALS.temporary.discard(tmp)


@contextlib.contextmanager
def _written_atomically(path: Path, option: str) -> Iterator[Callable[..., None]]:
    """A ``write(text)`` (text in UTF-8, or bytes as they are: a figure; ``flush=True``: all
    of it to the file now) into a temporary file beside ``path``, renamed onto it when the
    block ends without an exception, removed otherwise (and on SIGINT or SIGTERM): ``path`` is
    written whole or not at all. A write, flush or rename that fails is one line naming
    ``option``."""

    def failed(exc: OSError) -> ConfigError:
        return ConfigError(f"{option}: cannot write {path} ({exc.strerror}); pick a writable path")

    with _temporary(path) as (fd, tmp):
        stream = os.fdopen(fd, "w", encoding="utf-8", newline="")

        def write(text: str | bytes, flush: bool = False) -> None:
            try:
                if isinstance(text, bytes):
                    stream.buffer.write(text)
                else:
                    stream.write(text)
                if flush:  # a full disk fails here, not at the rename
                    stream.flush()
            except OSError as exc:
                raise failed(exc) from None

        try:
            yield write
        except BaseException:
            with contextlib.suppress(OSError):  # what the block raised is the error to report
                stream.close()
            raise
        try:
            stream.close()
            os.replace(tmp, path)
        except OSError as exc:
            raise failed(exc) from None


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("sweeping", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


cli.add_command(lint)


def main() -> None:
    """Console-script entry point."""
    cli()
