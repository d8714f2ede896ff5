"""The implementation zoo: named cross-entropy implementations with their metadata.

The metadata lives here and imports nothing heavy; each backend's code is in its own module
(``tf_zoo``, ``torch_zoo``, ``jax_zoo``), imported with its framework only when one of its
implementations actually runs (``xentaudit --help`` and ``xentaudit list`` stay fast).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from xentaudit.choices import MODE_NAMES, MODES, TRAINING, expand, unknown
from xentaudit.dtypes import FORMATS, dtype_label
from xentaudit.errors import (
    ConfigError,
    ImplementationError,
    UnknownImplementationError,
    XentauditError,
)
from xentaudit.io import regular_file
from xentaudit.losses import LOSSES
from xentaudit.processes import import_backend

if TYPE_CHECKING:
    from xentaudit.model import ModelPath

# `--mode training` (TRAINING): the modes a loss trains in. Keras runs the loss inside tf.function
# (model.fit) or eagerly (run_eagerly, a GradientTape loop); torch trains eagerly unless
# compiled (torch.compile costs seconds per graph); JAX trains under jax.jit (op by op, JAX
# compiles every primitive anew for each shape and dtype: a debugging mode).
TRAINING_MODES = MappingProxyType({"tf": MODES, "torch": ("eager",), "jax": ("graph",)})
# Formulas that several backends implement: `compare` names where they disagree on one.
FORMULAS = {
    "fused": "fused cross-entropy",
    "sparse": "sparse cross-entropy",
    "log-softmax": "-sum y log_softmax(x)",
    "softmax-log": "-sum y log(softmax(x))",
}
# Keras dtype policies -> their compute dtype: a layer built under the policy casts its inputs to
# it and computes in it; a loss computes in its own dtype, keras.config.floatx() (float32), and
# casts what it is given to that (keras/src/layers/layer.py, keras/src/losses/loss.py).
POLICIES = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
FLOAT32_POLICY = ("float32",)  # Keras' default policy, as a ``policies`` option
MIXED = {compute: name for name, compute in POLICIES.items() if name != compute}  # dtype -> policy
LABEL_KINDS = ("class", "one-hot", "soft")  # integer classes, one-hot rows, any label weights
KERAS_DEFAULT_EPSILON = 1e-7  # keras.config.epsilon() unless set in ~/.keras/keras.json
CLIPS = {  # Impl.eps -> where the clip of the probabilities comes from, as users read it
    None: "none",
    "option": "--eps",
    "keras": f"keras.config.epsilon() ({KERAS_DEFAULT_EPSILON:g} by default)",
}


@dataclass(frozen=True)
class Backend:
    """A framework whose cross-entropies the zoo runs: its ``--backend`` name, the module of
    the zoo that runs them, the packages it needs and the command that installs them."""

    option: str  # its name for --backend and in a user's "torch:file.py:fn"
    module: str  # xentaudit.impls.<module>
    packages: tuple[str, ...]
    install: str


BACKENDS = {  # Impl.backend -> Backend; TensorFlow is the core dependency, the others extras
    "tensorflow": Backend("tf", "tf_zoo", ("tensorflow", "keras"), "pip install xentaudit"),
    "torch": Backend("torch", "torch_zoo", ("torch",), "pip install 'xentaudit[torch]'"),
    "jax": Backend("jax", "jax_zoo", ("jax", "optax"), "pip install 'xentaudit[jax]'"),
}
BY_OPTION = {backend.option: name for name, backend in BACKENDS.items()}


@dataclass(frozen=True)
class Outcome:
    """What one implementation computed: per-row losses (float64) and the gradient (float32 or
    float64, as computed; None once its row maxima are taken: ``audit.run_shared`` lets it go),
    and the dtype its loss came out in."""

    loss: np.ndarray
    grad: np.ndarray | None
    output_dtype: str
    # the framework's own mean of its per-row losses, in their dtype (what reduction="mean",
    # Keras' sum_over_batch_size, returns): the scalar the optimizer sees; None where the run
    # was not asked for it (a sweep, a check: JAX compiles a mean for every new row count)
    mean: float | None


def outcome(
    loss: np.ndarray, grad: np.ndarray, output_dtype: str, loss_scale: float, mean: Any
) -> Outcome:
    """A run's ``Outcome``: per-row ``loss`` as float64, and the gradient of ``loss_scale``
    times the loss widened (float16, bfloat16 to float32) and divided back by the scale;
    ``mean`` the framework's own mean of the losses, in their dtype (a scalar), or None."""
    from xentaudit.io import as_float

    gradient = as_float(grad)
    return Outcome(
        np.asarray(loss, dtype=np.float64).reshape(-1),
        gradient if loss_scale == 1 else gradient / gradient.dtype.type(loss_scale),
        output_dtype,
        None if mean is None else float(mean),
    )


def per_row(name: str, shape: tuple[int, ...], rows: int, dtype: Any) -> None:
    """Refuse a user's loss ``name`` that returned ``shape`` for a batch of ``rows`` rows, or
    values of a complex ``dtype`` (a framework's dtype)."""
    named = getattr(dtype, "name", None) or str(dtype).removeprefix("torch.")
    if "complex" in named:
        raise ImplementationError(
            f"--impl {name}: the loss returned {named} values; it must return real losses"
        )
    if tuple(shape) != (rows,):
        raise ImplementationError(
            f"--impl {name}: the loss returned shape {tuple(shape)}; it must return one "
            f"loss per row, shape ({rows},) (no reduction)"
        )


def logits_shaped(name: str, shape: tuple[int, ...], logits: tuple[int, ...]) -> None:
    """Refuse a user's loss ``name`` whose gradient w.r.t. the logits (of shape ``logits``) came
    back in another ``shape``: a custom gradient of the wrong shape."""
    if tuple(shape) != tuple(logits):
        raise ImplementationError(
            f"--impl {name}: the gradient w.r.t. the logits has shape {tuple(shape)}; it must "
            f"have the logits' shape {tuple(logits)} (check the loss's custom gradient)"
        )


def timed_out(
    name: str, dtype: str, mode: str, timeout: float | None, policy: str = "float32"
) -> ImplementationError:
    """The error for a run of ``name`` that outlived ``timeout`` seconds."""
    return ImplementationError(
        f"--impl {name} ({dtype_label(dtype, policy)}, {mode}) ran longer than the timeout of "
        f"{timeout:g} s; raise --timeout or fix the implementation"
    )


@dataclass(frozen=True)
class Impl:
    """One implementation: its canonical name and what a user needs to know about it."""

    name: str
    summary: str  # what it is: the formula or the API call, in one line
    takes: str  # what the loss function itself consumes: "logits" or "probabilities"
    family: str  # "hand-written", "tensorflow", "keras", "torch", "jax", "misuse", "user", "model"
    eps: str | None = None  # "option": clips with --eps; "keras": with keras.config.epsilon()
    needs_classes: bool = False  # needs one-hot or integer labels
    backend: str = "tensorflow"
    dtypes: tuple[str, ...] = tuple(FORMATS)  # the input dtypes it accepts
    keras_layer: bool = False  # runs a Keras layer, which computes in the policy's compute dtype
    # what it computes when handed probabilities (`check --input probabilities`), or None: the
    # part of it after the softmax
    on_probabilities: str | None = None
    computes: str | None = None  # the dtype it rounds the logits to whatever they come in
    formula: str | None = None  # FORMULAS: the math it shares with other backends' ones
    loss: str = "softmax"  # losses.LOSSES: the loss it computes (--loss)
    # takes --label-smoothing as its own argument (Keras' label_smoothing, torch's), on the
    # labels as given; the others are handed the labels smoothed (optax.smooth_labels' way)
    smooths: bool = False
    # takes --ignore-class as its own argument (torch's ignore_index, Keras' ignore_class): no
    # loss and no gradient on those rows, and its own mean over the rest
    ignores: bool = False

    @property
    def labels(self) -> tuple[str, ...]:
        """The label kinds it accepts (``LABEL_KINDS``): sparse losses take no soft labels, a
        multi-label loss a weight in [0, 1] per logit."""
        if LOSSES[self.loss].labels == "multi-label":
            return ("multi-label",)
        return LABEL_KINDS[:2] if self.needs_classes else LABEL_KINDS

    @property
    def fused(self) -> bool:
        """A framework's fused loss on logits (log-softmax and the loss in one op or one Keras
        loss with from_logits=True): what a model that computes its loss well uses."""
        return self.takes == "logits" and self.family in ("tensorflow", "keras", "torch", "jax")

    @property
    def clip(self) -> str:
        """Where its probability clip comes from, read when it runs: ``CLIPS``."""
        return CLIPS[self.eps]

    def describe(self) -> dict[str, str | list[str]]:
        """What ``xentaudit list`` says about it: its JSON form, keys in the table's order."""
        return {
            "name": self.name,
            "summary": self.summary,
            "loss": self.loss,
            "backend": self.backend,
            "family": self.family,
            "takes": self.takes,
            "labels": list(self.labels),
            "dtypes": list(self.dtypes),
            "clip": self.clip,
            "smoothing": "own" if self.smooths else "labels",
        }


REGISTRY: dict[str, Impl] = {
    impl.name: impl
    for impl in (
        Impl(
            "naive",
            "-sum y log(exp(x) / sum exp(x)), no shift",
            "logits",
            "hand-written",
            on_probabilities="-sum y log p",
        ),
        Impl(
            "shifted",
            "naive, after subtracting the row max",
            "logits",
            "hand-written",
            formula="softmax-log",
        ),
        Impl(
            "clipped",
            "shifted softmax clipped to [eps, 1-eps], then -sum y log p (the Keras recipe)",
            "probabilities",
            "hand-written",
            eps="option",
            on_probabilities="p clipped to [eps, 1-eps], then -sum y log p",
        ),
        Impl(
            "log_softmax",
            "-sum y (x - m - log sum exp(x - m)), hand-written fused form",
            "logits",
            "hand-written",
            formula="log-softmax",
        ),
        Impl(
            "tf_softmax_xent",
            "tf.nn.softmax_cross_entropy_with_logits",
            "logits",
            "tensorflow",
            formula="fused",
        ),
        Impl(
            "tf_sparse_softmax_xent",
            "tf.nn.sparse_softmax_cross_entropy_with_logits",
            "logits",
            "tensorflow",
            needs_classes=True,
            formula="sparse",
        ),
        Impl(
            "keras_cce_logits",
            "keras.losses.CategoricalCrossentropy(from_logits=True)",
            "logits",
            "keras",
            smooths=True,
        ),
        Impl(
            "keras_cce_probs",
            "keras.losses.CategoricalCrossentropy(from_logits=False) on tf.nn.softmax(x)",
            "probabilities",
            "keras",
            eps="keras",
            on_probabilities="keras.losses.CategoricalCrossentropy(from_logits=False) on p: "
            "renormalised, clipped to [eps, 1-eps]",
            smooths=True,
        ),
        Impl(
            "keras_cce_softmax_layer",
            "keras.losses.CategoricalCrossentropy(from_logits=False) on keras.layers.Softmax()(x):"
            " under the float32 policy Keras recovers the logits from the layer's output in both"
            " modes; under a mixed policy the layer computes in half precision and nothing is"
            " recovered",
            "probabilities",
            "keras",
            eps="keras",
            keras_layer=True,
            smooths=True,
        ),
        Impl(
            "keras_scce_logits",
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True)",
            "logits",
            "keras",
            needs_classes=True,
            ignores=True,
        ),
        Impl(
            "double_softmax",
            "tf.nn.softmax_cross_entropy_with_logits on softmax(x): probabilities passed as logits",
            "probabilities",
            "misuse",
            on_probabilities="tf.nn.softmax_cross_entropy_with_logits on p: a softmax applied to "
            "probabilities",
        ),
        Impl(
            "torch_cross_entropy",
            "torch.nn.functional.cross_entropy (class indices for hard labels, probability"
            " targets for soft ones)",
            "logits",
            "torch",
            backend="torch",
            formula="fused",
            smooths=True,
            ignores=True,
        ),
        Impl(
            "torch_log_softmax_nll",
            "F.nll_loss(F.log_softmax(x)) (torch)",
            "logits",
            "torch",
            needs_classes=True,
            backend="torch",
            formula="sparse",
            ignores=True,
        ),
        Impl(
            "torch_softmax_log",
            "-(y * torch.log(torch.softmax(x))).sum(-1), hand-written in torch",
            "logits",
            "hand-written",
            backend="torch",
            formula="softmax-log",
        ),
        Impl(
            "torch_autocast_bf16",
            'F.cross_entropy under torch.autocast("cpu", dtype=torch.bfloat16) on the logits'
            " in bfloat16, as an autocast Linear emits them: what mixed-precision training"
            " computes (the loss in float32, autocast's fp32 list)",
            "logits",
            "torch",
            backend="torch",
            computes="bfloat16",
            smooths=True,
            ignores=True,
        ),
        Impl(
            "optax_softmax_xent",
            "optax.softmax_cross_entropy",
            "logits",
            "jax",
            backend="jax",
            formula="fused",
        ),
        Impl(
            "optax_softmax_xent_int",
            "optax.softmax_cross_entropy_with_integer_labels",
            "logits",
            "jax",
            needs_classes=True,
            backend="jax",
            formula="sparse",
        ),
        Impl(
            "optax_safe_softmax_xent",
            "optax.safe_softmax_cross_entropy: -sum y log_softmax(x) with 0 log 0 = 0 where a"
            " weight is 0 (-inf logits allowed)",
            "logits",
            "jax",
            backend="jax",
        ),
        Impl(
            "jax_log_softmax",
            "-(y * jax.nn.log_softmax(x)).sum(-1)",
            "logits",
            "hand-written",
            backend="jax",
            formula="log-softmax",
        ),
        Impl(
            "jax_softmax_log",
            "-(y * jnp.log(jax.nn.softmax(x))).sum(-1), hand-written in jax",
            "logits",
            "hand-written",
            backend="jax",
            formula="softmax-log",
        ),
        Impl(
            "naive_sigmoid",
            "-(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))), averaged over the labels",
            "probabilities",
            "hand-written",
            loss="sigmoid",
        ),
        Impl(
            "clipped_sigmoid",
            "naive_sigmoid with sigmoid(x) clipped to [eps, 1-eps]",
            "probabilities",
            "hand-written",
            eps="option",
            loss="sigmoid",
        ),
        Impl(
            "tf_sigmoid_xent",
            "tf.nn.sigmoid_cross_entropy_with_logits, averaged over the labels",
            "logits",
            "tensorflow",
            loss="sigmoid",
        ),
        Impl(
            "keras_bce_logits",
            "keras.losses.BinaryCrossentropy(from_logits=True)",
            "logits",
            "keras",
            loss="sigmoid",
            smooths=True,
        ),
        Impl(
            "keras_bce_probs",
            "keras.losses.BinaryCrossentropy(from_logits=False) on tf.sigmoid(x): clipped to "
            "[eps, 1-eps] eagerly; inside tf.function Keras finds the Sigmoid op and recovers "
            "the logits",
            "probabilities",
            "keras",
            eps="keras",
            loss="sigmoid",
            smooths=True,
        ),
        Impl(
            "torch_bce_logits",
            "F.binary_cross_entropy_with_logits, averaged over the labels",
            "logits",
            "torch",
            backend="torch",
            loss="sigmoid",
        ),
        Impl(
            "torch_bce_sigmoid",
            "F.binary_cross_entropy on torch.sigmoid(x), averaged over the labels: each log "
            "clamped to >= -100",
            "probabilities",
            "torch",
            backend="torch",
            loss="sigmoid",
        ),
        Impl(
            "optax_sigmoid_xent",
            "optax.sigmoid_binary_cross_entropy, averaged over the labels",
            "logits",
            "jax",
            backend="jax",
            loss="sigmoid",
        ),
        Impl(
            "naive_focal",
            "-alpha sum y (1 - p)^gamma log p on p = softmax(x), the paper's formula typed in",
            "probabilities",
            "hand-written",
            loss="focal",
        ),
        Impl(
            "focal_log_softmax",
            "-alpha sum y (-expm1(log p))^gamma log p on log p = tf.nn.log_softmax(x): the "
            "stable hand-written form",
            "logits",
            "hand-written",
            loss="focal",
        ),
        Impl(
            "keras_focal_logits",
            "keras.losses.CategoricalFocalCrossentropy(from_logits=True): softmax, then "
            "renormalised and clipped to [eps, 1-eps] in both modes (the logits are not "
            "recovered: its log is its own)",
            "logits",
            "keras",
            eps="keras",
            loss="focal",
            smooths=True,
        ),
        Impl(
            "keras_focal_probs",
            "keras.losses.CategoricalFocalCrossentropy(from_logits=False) on tf.nn.softmax(x)",
            "probabilities",
            "keras",
            eps="keras",
            loss="focal",
            smooths=True,
        ),
        Impl(
            "naive_binary_focal",
            "w (1 - p_t)^gamma BCE on p = sigmoid(x), p_t = y p + (1 - y)(1 - p), averaged over "
            "the labels",
            "probabilities",
            "hand-written",
            loss="binary-focal",
        ),
        Impl(
            "keras_binary_focal_logits",
            "keras.losses.BinaryFocalCrossentropy(from_logits=True): keras.ops.sigmoid keeps "
            "its input on its output (_keras_logits), from which binary_crossentropy takes "
            "the logits back in both modes",
            "logits",
            "keras",
            loss="binary-focal",
            smooths=True,
        ),
        Impl(
            "keras_binary_focal_probs",
            "keras.losses.BinaryFocalCrossentropy(from_logits=False) on tf.sigmoid(x)",
            "probabilities",
            "keras",
            eps="keras",
            loss="binary-focal",
            smooths=True,
        ),
        Impl(
            "optax_sigmoid_focal",
            "optax.sigmoid_focal_loss, averaged over the labels: (1 - p_t)^gamma as "
            "exp(gamma log(1 - p_t)) from log-sigmoids",
            "logits",
            "jax",
            backend="jax",
            loss="binary-focal",
        ),
    )
}


_USER_LOSSES: dict[str, Callable[[Any, Any], Any]] = {}


def user_loss(spec: str) -> Callable[[Any, Any], Any] | None:
    """The user's ``fn(labels, logits)`` loaded for ``spec``, or None for a built-in name."""
    return _USER_LOSSES.get(spec)


def user_backend(spec: str) -> tuple[str, str]:
    """A user's loss ``[tf:|torch:|jax:]target:fn`` split into its backend (``Impl.backend``;
    TensorFlow without a prefix) and ``target:fn``."""
    prefix, _, rest = spec.partition(":")
    if prefix in BY_OPTION and ":" in rest:
        return BY_OPTION[prefix], rest
    return "tensorflow", spec


def names_a_file(target: str) -> bool:
    """Whether a user's loss's ``target`` (``target:fn``) names a file (``file.py``, or a path),
    not a module imported by name."""
    return target.endswith(".py") or os.sep in target


def _user_parts(spec: str) -> tuple[str, str, str]:
    """A user's loss ``[tf:|torch:|jax:]target:fn`` split and checked: its backend (installed),
    target and function name."""
    backend, located = user_backend(spec)
    target, _, fn_name = located.rpartition(":")
    if not target or not fn_name.isidentifier():
        raise UnknownImplementationError(
            f"--impl {spec!r}: expected [tf:|torch:|jax:]path/to/file.py:function or "
            "package.module:function"
        )
    if not installed(backend):
        raise UnknownImplementationError(
            f"--impl {spec!r} needs the {backend} backend, which is not installed; install it "
            f"with: {BACKENDS[backend].install}"
        )
    return backend, target, fn_name


def _user_file(spec: str, target: str) -> Path | None:
    """The file a user's loss ``spec`` names as its ``target`` (a regular file), or None for a
    module name."""
    path = Path(target) if names_a_file(target) else None
    if path is not None:
        regular_file(path, f"--impl {spec!r}", "a .py file", UnknownImplementationError)
    return path


def _load_user_loss(spec: str) -> Impl:
    """Load ``path/to/file.py:fn`` or ``package.module:fn``, optionally prefixed by its
    backend (``torch:``, ``jax:``, ``tf:``): a function of the backend's own tensors. Checked
    and imported once (a relative path then keeps working after a change of directory)."""
    backend, target, fn_name = _user_parts(spec)
    if spec not in _USER_LOSSES:
        path = _user_file(spec, target)
        # The backend (its framework) before the user's code: TensorFlow quietly, in the CLI;
        # and the framework's modules before the user's in sys.modules, where pickle looks for
        # the module of an object that names none (whichmodule: torch.contiguous_format, as
        # `torch.contiguous_format` of the first module with a `torch`). Imported first, the
        # user's module was that one, and Inductor's on-disk caches kept graphs of built-in
        # losses naming `_xentaudit_<stem>`, which no other process has: each later process
        # compiling them warned with a traceback.
        load_backend(backend)
        with user_code(f"--impl {spec!r}: importing {target}", UnknownImplementationError):
            if path is not None:
                module_spec = importlib.util.spec_from_file_location(
                    f"_xentaudit_{path.stem}", path
                )
                assert module_spec is not None and module_spec.loader is not None
                module = importlib.util.module_from_spec(module_spec)
                # torch.compile imports the module of a function it traces
                sys.modules[module_spec.name] = module
                module_spec.loader.exec_module(module)
            else:
                module = importlib.import_module(target)
        fn = getattr(module, fn_name, None)
        if not callable(fn):
            raise UnknownImplementationError(f"--impl {spec!r}: {target} has no function {fn_name}")
        try:
            inspect.signature(fn).bind(None, None)
        except TypeError:
            raise UnknownImplementationError(
                f"--impl {spec!r}: {fn_name} must take (labels, logits) and return per-row losses"
            ) from None
        _USER_LOSSES[spec] = fn
    return Impl(spec, f"your loss {fn_name} from {target}", "logits", "user", backend=backend)


MODEL = "model"  # the name a saved model's own loss path is audited under (--model)
_MODELS: dict[str, ModelPath] = {}


def use_model(path: ModelPath) -> None:
    """Audit ``path`` (a saved model's loss path) as the implementation ``model`` from now on:
    a dynamic implementation, as a user's ``file.py:fn``, that runs under its own policy."""
    _MODELS[MODEL] = path


def model_path(name: str) -> ModelPath | None:
    """The loss path implementation ``name`` runs (``model``, once ``use_model`` set it), or
    None for every other implementation."""
    return _MODELS.get(name)


def model_policy(path: ModelPath) -> str:
    """The Keras dtype policy ``model`` runs under: its final layer's (the global one, None,
    is float32 unless the process changed it)."""
    return path.policy or "float32"


def _model_impl(path: ModelPath) -> Impl:
    return Impl(
        MODEL,
        path.describe(),
        "logits",
        "model",
        eps=None if path.from_logits else "keras",
        needs_classes=path.sparse,
        keras_layer=path.activation != "none",
        smooths=not path.sparse,  # Keras' SparseCategoricalCrossentropy takes no smoothing
    )


RETRY_ALARM = 0.25  # seconds between alarms after the first, should a loss swallow one


class _Stop(BaseException):
    """Raised into running code by a signal (Ctrl-C, the timeout's alarm), never the code's own
    doing. A BaseException, so that a loss's ``except Exception`` cannot swallow it."""


class _Interrupted(_Stop, KeyboardInterrupt):
    """Ctrl-C while a user's code runs: still a KeyboardInterrupt to whoever called us."""


class Expired(_Stop):
    """The timeout's alarm went off."""


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted


def _expire(signum: int, frame: FrameType | None) -> None:
    # An alarm handled once a limit's block is over, while the limit disarms (its ``__exit__``
    # on the stack, from that call's first step), is dropped: the block ran in time.
    while frame is not None:
        if frame.f_code is _DISARMING:
            return
        frame = frame.f_back
    raise Expired


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def user_code(what: str, error: type[XentauditError]) -> Iterator[None]:
    """Run a user's code (the import of their module, their loss): whatever it raises, even to
    end the process (``sys.exit(0)``, ``KeyboardInterrupt``, any BaseException), becomes one
    ``error`` starting with ``what``, and what it prints (Python's ``print``) goes to stderr. A
    real Ctrl-C stays an interrupt: while their code runs, Python's default SIGINT handler is
    swapped for one whose exception tells the two apart.
    """
    swap = _in_main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if swap:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        # what their code prints goes to stderr: stdout holds the report (JSON, SARIF) alone
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except _Stop:
        raise
    except Exception as exc:
        raise error(f"{what} {_did(exc)}") from None
    except BaseException as exc:
        raise error(f"{what} {_did(exc)}; it must return, not end the run") from None
    finally:
        if swap:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _did(exc: BaseException) -> str:
    """What a user's code did, in words; their exception's own str() or repr() may raise or
    return something else than a string, which then goes unsaid."""
    name = type(exc).__name__
    try:
        said = repr(exc.code) if isinstance(exc, SystemExit) else str(exc)
    except Exception:
        said = None
    if not isinstance(said, str):
        said = "<unprintable>"
    if isinstance(exc, SystemExit):
        return f"called sys.exit({said})"
    lines = said.strip().splitlines()
    return f"raised {name}: {lines[0]}" if lines else f"raised {name}"


def time_limit(seconds: float | None) -> contextlib.AbstractContextManager[None]:
    """Raise ``Expired`` into the code running in this block once ``seconds`` have passed (None:
    no limit), and again every ``RETRY_ALARM`` seconds until the block ends.

    SIGALRM from ``setitimer``: Python runs the handler in the main thread where it checks for
    signals (after most calls, on backward jumps), so a loop stuck in Python is interrupted; a
    single long C++ operation (a TensorFlow kernel, a whole ``tf.function`` graph) only when it
    returns, and ``os._exit`` not at all. An alarm already set (by the caller) is suspended
    meanwhile and resumed afterwards.
    """
    if seconds is None:
        return contextlib.nullcontext()
    if not _in_main_thread():
        raise ConfigError(
            "--timeout works only in the main thread (it uses SIGALRM); call from the main "
            "thread or pass no timeout"
        )
    return _TimeLimit(seconds)


class _TimeLimit:
    """``time_limit``'s context manager. A class, not a generator: Python runs a signal's handler
    only where it checks for signals (after most calls, on a backward jump, on entering a
    function), so an alarm the block's own steps did not handle is handled at the first step of
    ``__exit__`` at the latest, and ``_expire`` drops any alarm handled with ``__exit__`` on the
    stack. (A generator's cleanup came after contextlib's ``__exit__`` and the generator's
    resumption, where an alarm escaped.)"""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.armed = False

    def __enter__(self) -> None:
        self.started = time.monotonic()
        self.previous = signal.getsignal(signal.SIGALRM)
        # read first, should the suspension below be interrupted before its result is kept
        self.outer = signal.getitimer(signal.ITIMER_REAL)
        self.armed = True
        try:  # an alarm that fires at once raises here: the limit is disarmed before it escapes
            # the caller's alarm suspended before _expire is installed, so it never raises Expired
            self.outer = signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, _expire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds, RETRY_ALARM)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc_info: object) -> None:
        # the timer stopped before the handler is put back: an alarm already on its way is
        # handled here, by _expire, which drops it, never by the caller's handler
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)
        outer, interval = self.outer
        try:  # the caller's alarm, resumed once: its handler may raise as it goes off in here
            if outer:
                left = outer - (time.monotonic() - self.started)
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), interval)
        finally:
            self.armed = False

    def __del__(self) -> None:
        # An Expired that escaped without ``__exit__`` (handled in the code of a tracer written
        # in Python, pdb's say, between the block's end and that call) drops the last reference
        # as it unwinds: the limit is disarmed then, not left to raise into whatever runs next.
        if self.armed and _in_main_thread():
            self.__exit__()


_DISARMING = _TimeLimit.__exit__.__code__


def get_impl(name: str) -> Impl:
    """Look an implementation up by its canonical name, or load a user's ``file.py:fn``."""
    if ":" in name:
        return _load_user_loss(name)
    path = model_path(name)
    if path is not None:
        return _model_impl(path)
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownImplementationError(unknown("implementation", name, REGISTRY)) from None


def parse_backends(names: Iterable[str] | None) -> tuple[str, ...]:
    """Expand ``--backend`` values (``tf``, ``torch``, ``jax``; comma lists; ``all``) into
    ``Impl.backend`` names, in order; None is every backend."""
    if names is None:
        return tuple(BACKENDS)
    return tuple(BY_OPTION[o] for o in expand(names, list(BY_OPTION), "backend"))


def missing_backends(backends: Iterable[str]) -> tuple[str, ...]:
    """Those of ``backends`` that are not installed."""
    return tuple(b for b in backends if not installed(b))


def _not_installed(name: str) -> str:
    backend = REGISTRY[name].backend
    return (
        f"--impl {name} needs the {backend} backend, which is not installed; install it with: "
        f"{BACKENDS[backend].install}"
    )


def parse_impls(
    names: Iterable[str],
    backends: Iterable[str] | None = None,
    loss: str = "softmax",
    load: bool = True,
) -> tuple[str, ...]:
    """Expand implementation names (comma lists allowed; ``all`` is every one of ``loss`` of
    the ``backends`` (``--backend`` names, ``parse_backends``; None: every one) that are
    installed), in order. Naming one of another loss is an error that names its ``--loss``.

    Naming an implementation of a backend that is not installed is an error that gives the
    install command. A value with a colon is a user's loss (``file.py:fn``, ``module:fn``,
    ``torch:file.py:fn``), loaded and checked here; it is taken whole (a path may contain
    commas). Without ``load``, the processes that run them load them (each its own, and raises
    the error one process meets first: ``exc.loading`` names the loss): here only the first is
    checked as far as it can be without importing it, since a later one's error would come after
    the import of an earlier one.
    """
    names = list(names)
    for name in names:
        if ":" not in name and names_a_file(name):
            raise UnknownImplementationError(
                f"--impl {name!r}: expected path/to/file.py:function (name the function)"
            )
        for part in () if ":" in name else (p.strip() for p in name.split(",")):
            if part in REGISTRY and not installed(REGISTRY[part].backend):
                raise UnknownImplementationError(_not_installed(part))
            if part in REGISTRY and REGISTRY[part].loss != loss:
                raise UnknownImplementationError(
                    f"--impl {part} computes the {REGISTRY[part].loss} loss, not the {loss} "
                    f"loss; pass --loss {REGISTRY[part].loss}"
                )
    chosen = parse_backends(backends)
    runnable = [
        n
        for n, i in REGISTRY.items()
        if i.backend in chosen and installed(i.backend) and i.loss == loss
    ]
    named = {p.strip() for n in names if ":" not in n for p in n.split(",")} - {"all"}
    builtin = expand(
        (n for n in names if ":" not in n),
        # an implementation named outright runs whatever --backend says
        [n for n in REGISTRY if n in runnable or n in named],
        "implementation",
        UnknownImplementationError,
    )
    users = tuple(n for n in names if ":" in n)
    if load:  # after the built-in names, as a sweep's processes load them
        load_users(users)
    elif users:  # checked, not imported
        _user_file(users[0], _user_parts(users[0])[1])
    return builtin + tuple(u for u in users if u not in builtin)


def load_users(names: Iterable[str]) -> None:
    """Load and check the users' losses among ``names``, in order; the error of one names it
    (``exc.loading``, for ``check.Order.error``)."""
    for user in (name for name in names if ":" in name):
        try:
            get_impl(user)
        except XentauditError as exc:
            exc.loading = user  # type: ignore[attr-defined]
            raise


def parse_policies(names: Iterable[str]) -> tuple[str, ...]:
    """Expand Keras dtype policy names (comma lists allowed; ``all`` is every one), in order."""
    return expand(names, list(POLICIES), "policy")


def parse_modes(names: Iterable[str]) -> tuple[str, ...]:
    """Expand mode names (``MODE_NAMES``; comma lists allowed, ``all`` is ``both``: eager and
    graph), in order."""
    parts = (part.strip() for name in names for part in name.split(","))
    return expand(["both" if part == "all" else part for part in parts], MODE_NAMES, "mode")


def computes_in(name: str, policy: str) -> str | None:
    """The dtype implementation ``name`` computes its Keras layers in under ``policy`` (the
    policy's compute dtype), or the one it rounds the logits to (``Impl.computes``), or None
    when neither applies."""
    path = model_path(name)
    if path is not None:  # its own policy, whatever ``policy`` says
        own = model_policy(path)
        return POLICIES.get(own, own) if _model_impl(path).keras_layer else None
    impl = REGISTRY.get(name)  # a user's loss takes the logits as given, as the zoo's tf.nn ones
    if impl is not None and impl.computes is not None:
        return impl.computes
    return POLICIES[policy] if impl is not None and impl.keras_layer else None


def runs_under(name: str, policy: str) -> str:
    """The policy implementation ``name`` runs under when ``policy`` is asked for: ``model``'s
    own (``--policy`` does not rebuild it), ``policy`` for every other one."""
    path = model_path(name)
    return policy if path is None else model_policy(path)


def backend_of(name: str) -> str:
    """The backend implementation ``name`` runs in: a registered one's, a user's loss's by its
    prefix, TensorFlow for ``model``. Loads nothing."""
    if name in REGISTRY:
        return REGISTRY[name].backend
    return user_backend(name)[0]


T = TypeVar("T")


def by_backend(items: Iterable[T], name: Callable[[T], str]) -> list[list[T]]:
    """``items`` grouped by the backend of their implementation (``name`` of an item), the
    groups and the items in each in the order they come."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(backend_of(name(item)), []).append(item)
    return list(groups.values())


def installed(backend: str) -> bool:
    """Whether ``backend``'s packages are installed (looked up, not imported)."""
    return all(importlib.util.find_spec(p) is not None for p in BACKENDS[backend].packages)


def load_backend(backend: str) -> ModuleType:
    """The zoo module of ``backend`` ("tensorflow", "torch", "jax"), imported on first use with
    its framework: ``run(name, eps, mode, logits, labels, classes, timeout, policy,
    loss_scale, given) -> Outcome`` in each. In a command line's process TensorFlow loads
    quietly (``processes.import_backend``)."""
    if not installed(backend):
        raise UnknownImplementationError(
            f"the {backend} backend is not installed; install it with: {BACKENDS[backend].install}"
        )
    return import_backend(f"xentaudit.impls.{BACKENDS[backend].module}", backend == "tensorflow")


def modes_of(name: str, modes: Iterable[str]) -> tuple[str, ...]:
    """``modes`` (``MODE_NAMES``) for implementation ``name``: ``both`` stands for eager and
    graph, ``training`` for the modes its backend trains in (``TRAINING_MODES``); each once, in
    the order given. Loads nothing."""
    own = TRAINING_MODES[BACKENDS[backend_of(name)].option]
    spelled = {"both": MODES, TRAINING: own}
    return tuple(dict.fromkeys(m for mode in modes for m in spelled.get(mode, (mode,))))


def mode_unavailable(name: str, mode: str) -> str | None:
    """Why implementation ``name`` cannot run in ``mode`` on this machine (its backend's
    ``graph_unavailable``: torch.compile without a C++ compiler), or None when it can."""
    if mode != "graph":
        return None
    check = getattr(load_backend(get_impl(name).backend), "graph_unavailable", None)
    return None if check is None else check()


def load_tf() -> ModuleType:
    """The TensorFlow implementations (and TensorFlow with them), imported on first use."""
    return load_backend("tensorflow")
