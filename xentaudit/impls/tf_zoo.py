"""The TensorFlow/Keras implementations and the autodiff runner. Import through ``impls.load_tf()``.

Every implementation is ``fn(labels, classes, logits) -> per-row losses``: ``labels`` are dense
label weights in the logits' dtype, ``classes`` the int32 class of each row (meaningful only for
implementations that need them). Gradients are what ``tf.GradientTape`` produces for that code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from xentaudit.errors import ImplementationError
from xentaudit.impls import Expired, time_limit, user_code, user_loss
from xentaudit.io import as_float

# fn(labels, classes, logits, eps) -> per-row losses; eps is used by `clipped` only.
LossFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


def _shifted_softmax(x: tf.Tensor) -> tf.Tensor:
    e = tf.exp(x - tf.reduce_max(x, axis=-1, keepdims=True))
    return e / tf.reduce_sum(e, axis=-1, keepdims=True)


def naive(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    e = tf.exp(x)
    return -tf.reduce_sum(y * tf.math.log(e / tf.reduce_sum(e, axis=-1, keepdims=True)), axis=-1)


def shifted(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    return -tf.reduce_sum(y * tf.math.log(_shifted_softmax(x)), axis=-1)


def clipped(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    # eps arrives rounded to the logits' dtype, as Keras rounds it: 1e-30 is 0 in float16.
    p = tf.clip_by_value(_shifted_softmax(x), eps, 1 - eps)
    return -tf.reduce_sum(y * tf.math.log(p), axis=-1)


def log_softmax(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    z = x - tf.reduce_max(x, axis=-1, keepdims=True)
    return -tf.reduce_sum(y * (z - tf.math.log(tf.reduce_sum(tf.exp(z), -1, keepdims=True))), -1)


def tf_softmax_xent(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    return tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=x)


def tf_sparse_softmax_xent(
    y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor
) -> tf.Tensor:
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=classes, logits=x)


_CCE_LOGITS = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=None)
_CCE_PROBS = keras.losses.CategoricalCrossentropy(from_logits=False, reduction=None)
_SCCE_LOGITS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
_SOFTMAX_LAYER = keras.layers.Softmax()


def keras_cce_logits(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    return _CCE_LOGITS(y, x)


def keras_cce_probs(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    return _CCE_PROBS(y, tf.nn.softmax(x))


def keras_cce_softmax_layer(
    y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor
) -> tf.Tensor:
    return _CCE_PROBS(y, _SOFTMAX_LAYER(x))


def keras_scce_logits(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    return _SCCE_LOGITS(classes, x)


def double_softmax(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    return tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=tf.nn.softmax(x))


def keras_epsilon() -> float:
    """The epsilon Keras clips probabilities with (``keras.config.epsilon()``)."""
    return float(keras.config.epsilon())


def loss_fn(name: str) -> LossFn:
    """The loss function registered under ``name``, or the user's loss loaded for it."""
    user = user_loss(name)
    if user is None:
        return globals()[name]
    return lambda y, classes, x, eps: user(y, x)


@dataclass(frozen=True)
class Outcome:
    """What one implementation computed: per-row losses (float64) and the gradient (float32 or
    float64, as computed)."""

    loss: np.ndarray
    grad: np.ndarray
    output_dtype: str


_GRAPH_CACHE: dict[tuple[str, str], Callable] = {}


def _with_gradient(fn: LossFn) -> Callable:
    def step(
        x: tf.Tensor, y: tf.Tensor, classes: tf.Tensor, eps: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.convert_to_tensor(fn(y, classes, x, eps))
        # A vector target: TensorFlow seeds it with ones, i.e. the gradient of the summed loss,
        # without ever forming the (possibly overflowing) sum in a narrow dtype.
        return loss, tape.gradient(loss, x)

    return step


def _run_user(name: str, step: Callable, *args: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Run a user's loss; whatever goes wrong in their code is a one-line error, not a bug.

    In graph mode their Python runs while ``tf.function`` traces it, inside this call too.
    """
    with user_code(f"--impl {name}: the loss", ImplementationError):
        loss, grad = step(*args)
    rows = args[0].shape[0]
    if loss.shape != (rows,):
        raise ImplementationError(
            f"--impl {name}: the loss returned shape {tuple(loss.shape)}; it must return one "
            f"loss per row, shape ({rows},) (no reduction)"
        )
    if grad is None:
        raise ImplementationError(
            f"--impl {name}: the loss has no gradient w.r.t. the logits; compute it with "
            "TensorFlow ops on the logits tensor"
        )
    return loss, grad


def run(
    name: str,
    eps: float,
    mode: str,
    logits: np.ndarray,
    labels: np.ndarray | None,
    classes: np.ndarray | None,
    timeout: float | None = None,
) -> Outcome:
    """Run implementation ``name`` eagerly or inside ``tf.function`` (``mode`` "graph").

    ``logits`` and ``labels`` (dense label weights, or ``None`` for the one-hot of ``classes``)
    are numpy arrays already in the audited dtype. The gradient comes back in the logits'
    dtype, float16 and bfloat16 widened (exactly) to float32. ``timeout``: seconds the run (its
    tracing included) may take, or None (see ``impls.time_limit`` for what it can interrupt).
    """
    x = tf.constant(logits)
    k = tf.constant(classes if classes is not None else np.zeros(logits.shape[0]), dtype=tf.int32)
    y = tf.constant(labels) if labels is not None else tf.one_hot(k, logits.shape[1], dtype=x.dtype)
    e = tf.constant(eps, dtype=x.dtype)
    key = (name, x.dtype.name)
    if mode == "eager":
        step = _with_gradient(loss_fn(name))
    else:
        # One trace per implementation and dtype, whatever the batch shape or epsilon.
        if key not in _GRAPH_CACHE:
            signature = [
                tf.TensorSpec([None, None], x.dtype),
                tf.TensorSpec([None, None], x.dtype),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([], x.dtype),
            ]
            _GRAPH_CACHE[key] = tf.function(
                # No Python control flow in the zoo: autograph would only slow tracing down.
                _with_gradient(loss_fn(name)),
                input_signature=signature,
                autograph=False,
            )
        step = _GRAPH_CACHE[key]
    try:
        with time_limit(timeout):
            if user_loss(name) is None:
                loss, grad = step(x, y, k, e)
            else:
                loss, grad = _run_user(name, step, x, y, k, e)
            outcome = Outcome(
                np.asarray(loss.numpy(), dtype=np.float64).reshape(-1),
                as_float(np.asarray(grad)),  # np.asarray views the tensor's buffer; .numpy() copies
                loss.dtype.name,
            )
    except Expired:
        _GRAPH_CACHE.pop(key, None)  # an interrupted trace is not to be reused
        raise ImplementationError(
            f"--impl {name} ({x.dtype.name}, {mode}) ran longer than the timeout of {timeout:g} "
            "s; raise --timeout or fix the implementation"
        ) from None
    return outcome
