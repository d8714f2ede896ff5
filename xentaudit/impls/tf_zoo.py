"""The TensorFlow/Keras implementations and the autodiff runner. Import through ``impls.load_tf()``.

Every implementation is ``fn(labels, classes, logits) -> per-row losses``: ``labels`` are dense
label weights in the logits' dtype, ``classes`` the int32 class of each row (meaningful only for
implementations that need them). Gradients are what ``tf.GradientTape`` produces for that code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from xentaudit import model
from xentaudit.errors import ImplementationError
from xentaudit.impls import (
    Expired,
    Outcome,
    logits_shaped,
    model_path,
    outcome,
    per_row,
    time_limit,
    timed_out,
    user_code,
    user_loss,
)
from xentaudit.io import as_float
from xentaudit.losses import NO_FOCUS, Focus, focal_alpha

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


@dataclass(frozen=True)
class Build:
    """What an implementation built per run is built for: the Keras dtype ``policy`` its layers
    compute under, the focal losses' ``focus``, and the label ``smoothing`` its Keras loss (or
    the model's) applies itself, as its ``label_smoothing`` argument (``Impl.smooths``; 0 for
    the others, which are handed smoothed labels), and the class ``ignore`` it ignores."""

    policy: str = "float32"
    focus: Focus = NO_FOCUS
    smoothing: float = 0.0
    ignore: int | None = None  # the class its Keras loss ignores (ignore_class, Impl.ignores)


@functools.cache
def _keras_loss(cls: type, reduction: str | None = None, **config: object) -> keras.losses.Loss:
    """One Keras loss object per class and configuration, per-row (``reduction=None``) unless
    told otherwise."""
    return cls(reduction=reduction, **config)


_SOFTMAX_LAYERS: dict[str, keras.layers.Softmax] = {}


def _softmax_layer(policy: str) -> keras.layers.Softmax:
    """A Softmax layer as a model under ``policy`` builds it: it casts its input to the policy's
    compute dtype and computes there (float16 under mixed_float16). Built with the policy as its
    own dtype, so the process's global policy is never touched."""
    if policy not in _SOFTMAX_LAYERS:
        _SOFTMAX_LAYERS[policy] = keras.layers.Softmax(dtype=keras.DTypePolicy(policy))
    return _SOFTMAX_LAYERS[policy]


def _cce(build: Build, from_logits: bool) -> keras.losses.Loss:
    return _keras_loss(
        keras.losses.CategoricalCrossentropy,
        from_logits=from_logits,
        label_smoothing=build.smoothing,
    )


def _as_given(fn: keras.losses.Loss) -> LossFn:
    """A Keras loss on its input as given (the logits, for from_logits=True)."""
    return lambda y, classes, x, eps: fn(y, x)


def _on_softmax(fn: keras.losses.Loss) -> LossFn:
    """A Keras loss (from_logits=False) on tf.nn.softmax of the logits."""
    return lambda y, classes, x, eps: fn(y, tf.nn.softmax(x))


def _on_sigmoid(fn: keras.losses.Loss) -> LossFn:
    """A Keras loss (from_logits=False) on tf.sigmoid of the logits."""
    return lambda y, classes, x, eps: fn(y, tf.sigmoid(x))


def keras_cce_logits(build: Build) -> LossFn:
    return _as_given(_cce(build, True))


def keras_cce_probs(build: Build) -> LossFn:
    return _on_softmax(_cce(build, False))


def keras_cce_softmax_layer(build: Build) -> LossFn:
    """The loss of a model under ``build.policy`` ending in a Softmax layer. The loss computes in
    float32 (keras.config.floatx()) whatever the policy, and casts the layer's output to it: under
    a mixed policy the cast drops the logits Keras keeps on a float32 softmax's output (and, in a
    graph, hides the Softmax op), so the half-precision probabilities are clipped, not recovered.
    """
    fn, layer = _cce(build, False), _softmax_layer(build.policy)
    return lambda y, classes, x, eps: fn(y, layer(x))


@dataclass(frozen=True)
class Reducing:
    """A loss whose framework's own mean is not the plain mean of its per-row losses: called, its
    ``per_row`` losses; ``mean`` the scalar its own reduction returns (both ``LossFn``)."""

    per_row: LossFn
    mean: LossFn

    def __call__(self, y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        return self.per_row(y, classes, x, eps)


def keras_scce_logits(build: Build) -> LossFn:
    cls = keras.losses.SparseCategoricalCrossentropy
    fn = _keras_loss(cls, from_logits=True, ignore_class=build.ignore)
    per_row: LossFn = lambda y, classes, x, eps: fn(classes, x)  # noqa: E731
    if build.ignore is None:
        return per_row
    # With ignore_class, Keras' default reduction (sum_over_batch_size) divides by the rows kept:
    # the loss masks the others (keras/src/losses/loss.py apply_mask).
    reduced = _keras_loss(
        cls, reduction="sum_over_batch_size", from_logits=True, ignore_class=build.ignore
    )
    return Reducing(per_row, lambda y, classes, x, eps: reduced(classes, x))


def double_softmax(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    return tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=tf.nn.softmax(x))


# The sigmoid (binary, multi-label) losses: one logit per label, the row's loss the mean over
# its labels (as Keras' binary_crossentropy reduces the last axis).


def _binary(y: tf.Tensor, p: tf.Tensor) -> tf.Tensor:
    return -tf.reduce_mean(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p), axis=-1)


def naive_sigmoid(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    return _binary(y, tf.sigmoid(x))


def clipped_sigmoid(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    return _binary(y, tf.clip_by_value(tf.sigmoid(x), eps, 1 - eps))


def tf_sigmoid_xent(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x), axis=-1)


def _bce(build: Build, from_logits: bool) -> keras.losses.Loss:
    return _keras_loss(
        keras.losses.BinaryCrossentropy, from_logits=from_logits, label_smoothing=build.smoothing
    )


def keras_bce_logits(build: Build) -> LossFn:
    return _as_given(_bce(build, True))


def keras_bce_probs(build: Build) -> LossFn:
    # keras/src/backend/tensorflow/nn.py binary_crossentropy: inside a tf.function the output's
    # op is a Sigmoid, whose input it takes as the logits (_get_logits); eagerly it clips.
    return _on_sigmoid(_bce(build, False))


# The focal losses (Lin et al. 2017), built per Focus (gamma, alpha): the categorical one sums
# over the classes, the binary one averages over the labels as Keras reduces the last axis.


def naive_focal(build: Build) -> LossFn:
    """-alpha sum y (1 - p)^gamma log p on p = softmax(x), as the paper's formula is typed."""
    focus = build.focus
    alpha = focal_alpha(focus)

    def loss(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        p = _shifted_softmax(x)
        return -alpha * tf.reduce_sum(y * (1 - p) ** focus.gamma * tf.math.log(p), axis=-1)

    return loss


def focal_log_softmax(build: Build) -> LossFn:
    """The stable form: log p = log_softmax(x), 1 - p = -expm1(log p) (no cancellation)."""
    focus = build.focus
    alpha = focal_alpha(focus)

    def loss(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        log_p = tf.nn.log_softmax(x)
        return -alpha * tf.reduce_sum(y * (-tf.math.expm1(log_p)) ** focus.gamma * log_p, -1)

    return loss


def _categorical_focal(build: Build, from_logits: bool) -> keras.losses.Loss:
    return _keras_loss(
        keras.losses.CategoricalFocalCrossentropy,
        alpha=focal_alpha(build.focus),
        gamma=build.focus.gamma,
        from_logits=from_logits,
        label_smoothing=build.smoothing,
    )


def keras_focal_logits(build: Build) -> LossFn:
    return _as_given(_categorical_focal(build, True))


def keras_focal_probs(build: Build) -> LossFn:
    return _on_softmax(_categorical_focal(build, False))


def naive_binary_focal(build: Build) -> LossFn:
    """w (1 - p_t)^gamma BCE on p = sigmoid(x), p_t = y p + (1 - y)(1 - p), as typed."""
    focus = build.focus

    def loss(y: tf.Tensor, classes: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        p = tf.sigmoid(x)
        p_t = y * p + (1 - y) * (1 - p)
        bce = -(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))
        focal = (1 - p_t) ** focus.gamma * bce
        if focus.alpha is not None:
            focal *= focus.alpha * y + (1 - focus.alpha) * (1 - y)
        return tf.reduce_mean(focal, axis=-1)

    return loss


def _binary_focal(build: Build, from_logits: bool) -> keras.losses.Loss:
    focus = build.focus
    return _keras_loss(
        keras.losses.BinaryFocalCrossentropy,
        apply_class_balancing=focus.alpha is not None,
        alpha=0.25 if focus.alpha is None else focus.alpha,
        gamma=focus.gamma,
        from_logits=from_logits,
        label_smoothing=build.smoothing,
    )


def keras_binary_focal_logits(build: Build) -> LossFn:
    return _as_given(_binary_focal(build, True))


def keras_binary_focal_probs(build: Build) -> LossFn:
    return _on_sigmoid(_binary_focal(build, False))


# The implementations built per run (``Build``): Keras losses (their smoothing, their layers'
# policy) and the focal losses (their gamma and alpha).
BUILDERS: dict[str, Callable[[Build], LossFn]] = {
    fn.__name__: fn
    for fn in (
        keras_cce_logits,
        keras_cce_probs,
        keras_cce_softmax_layer,
        keras_scce_logits,
        keras_bce_logits,
        keras_bce_probs,
        naive_focal,
        focal_log_softmax,
        keras_focal_logits,
        keras_focal_probs,
        naive_binary_focal,
        keras_binary_focal_logits,
        keras_binary_focal_probs,
    )
}


def _cce_on_probabilities(build: Build) -> LossFn:
    return _as_given(_cce(build, False))


# What the implementations that take probabilities compute on them (`check --input
# probabilities`): fn(labels, classes, p, eps), the part of each after its softmax.
ON_PROBABILITIES: dict[str, Callable[[Build], LossFn]] = {
    "naive": lambda build: lambda y, classes, p, eps: -tf.reduce_sum(y * tf.math.log(p), -1),
    "clipped": lambda build: (
        lambda y, classes, p, eps: (
            -tf.reduce_sum(y * tf.math.log(tf.clip_by_value(p, eps, 1 - eps)), axis=-1)
        )
    ),
    "keras_cce_probs": _cce_on_probabilities,
    "double_softmax": lambda build: (
        lambda y, classes, p, eps: tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=p)
    ),
}


def to_logits_gradient(p: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """The gradient w.r.t. the logits z behind probabilities ``p`` of a loss whose autodiff
    gradient w.r.t. ``p`` is ``grad``, in float64: the chain rule through p = s softmax(z)
    (s = sum p, 1 for a softmax output; z = log p), whose Jacobian is s (diag(q) - q q^T) with
    q = p / s, so ``J^T g = p * g - p (q . g)``. The reference is the cross-entropy of z
    (``audit.round_to``), so a loss on p is graded on the gradient training would see. A NaN or
    infinite ``g`` stays so (training's gradient would be as bad)."""
    p = p.astype(np.float64)
    g = grad.astype(np.float64)
    q = p / p.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        return p * g - p * (q * g).sum(axis=1, keepdims=True)


@functools.cache
def flushes_subnormals() -> bool:
    """Whether TensorFlow flushes subnormal float32 results to zero on this CPU: exp(-100) is
    3.8e-44, a subnormal, or 0."""
    return float(tf.exp(tf.constant(-100.0, tf.float32))) == 0.0


def keras_epsilon() -> float:
    """The epsilon Keras clips probabilities with (``keras.config.epsilon()``)."""
    return float(keras.config.epsilon())


# ModelPath is frozen: equal paths share their Keras objects. The model's loss smooths the
# labels itself, by its own label_smoothing (``Impl.smooths``), as it was saved.
_model_loss = functools.cache(model.model_loss)


def loss_fn(name: str, build: Build, given: str = "logits") -> LossFn:
    """The loss function registered under ``name`` as ``build`` makes it (``BUILDERS``), the
    user's loss, or the saved model's loss path (``model``, under its own policy and smoothing
    whatever ``build`` says). ``given`` "probabilities": what it computes on probabilities
    (``ON_PROBABILITIES``)."""
    if given == "probabilities":
        return ON_PROBABILITIES[name](build)
    path = model_path(name)
    if path is not None:
        return _model_loss(path)
    user = user_loss(name)
    if user is not None:
        return lambda y, classes, x, eps: user(y, x)
    if name in BUILDERS:
        return BUILDERS[name](build)
    return globals()[name]


# (name, dtype, model's loss path or None, what the input holds, build) -> the traced step
_GRAPH_CACHE: dict[tuple[str, str, model.ModelPath | None, str, Build], Callable] = {}


def _tensors(
    logits: np.ndarray, labels: np.ndarray | None, classes: np.ndarray | None, shared: dict
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The logits, the dense labels (the one-hot of ``classes`` where ``labels`` is None) and
    the classes as tensors, kept in ``shared`` (one batch's cache) for the next run on the
    same arrays: every implementation run on a chunk of `check` shares one copy into
    TensorFlow and one one-hot."""
    key = (id(logits), id(labels), id(classes))  # the batch holds the arrays: ids stay theirs
    if key not in shared:
        x = tf.constant(logits)
        k = tf.constant(
            classes if classes is not None else np.zeros(logits.shape[0]), dtype=tf.int32
        )
        y = (
            tf.constant(labels)
            if labels is not None
            else tf.one_hot(k, logits.shape[1], dtype=x.dtype)
        )
        shared[key] = (x, y, k)
    return shared[key]


def _with_gradient(fn: LossFn) -> Callable:
    def step(
        x: tf.Tensor, y: tf.Tensor, classes: tf.Tensor, eps: tf.Tensor, scale: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.convert_to_tensor(fn(y, classes, x, eps))
            # Training scales a float32 loss: Keras' compile casts every loss to float32 and
            # LossScaleOptimizer multiplies that by the scale, so the scale reaches a narrower
            # loss's backward pass through the cast, rounded to its dtype (2^16 is inf in
            # float16). A scale of 1 changes no bit of the gradient.
            wide = loss if loss.dtype == tf.float64 else tf.cast(loss, tf.float32)
            scaled = wide * tf.cast(scale, wide.dtype)
        # A vector target: TensorFlow seeds it with ones, i.e. the gradient of the summed loss,
        # without ever forming the (possibly overflowing) sum in a narrow dtype.
        return loss, tape.gradient(scaled, x)

    return step


def _run_user(name: str, step: Callable, *args: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Run a user's loss; whatever goes wrong in their code is a one-line error, not a bug.

    In graph mode their Python runs while ``tf.function`` traces it, inside this call too.
    """
    with user_code(f"--impl {name}: the loss", ImplementationError):
        loss, grad = step(*args)
    per_row(name, tuple(loss.shape), args[0].shape[0], loss.dtype)
    if grad is None:
        raise ImplementationError(
            f"--impl {name}: the loss has no gradient w.r.t. the logits; compute it with "
            "TensorFlow ops on the logits tensor"
        )
    logits_shaped(name, tuple(grad.shape), tuple(args[0].shape))
    return loss, grad


def run(
    name: str,
    eps: float,
    mode: str,
    logits: np.ndarray,
    labels: np.ndarray | None,
    classes: np.ndarray | None,
    timeout: float | None = None,
    policy: str = "float32",
    loss_scale: float = 1.0,
    given: str = "logits",
    focus: Focus = NO_FOCUS,
    mean: bool = False,
    smoothing: float = 0.0,
    ignore: int | None = None,
    tensors: dict | None = None,
) -> Outcome:
    """Run implementation ``name`` eagerly or inside ``tf.function`` (``mode`` "graph"), its
    Keras layers built under the Keras dtype policy ``policy``; a focal loss with ``focus``; a
    Keras loss with its own ``label_smoothing`` argument ``smoothing`` (``Impl.smooths``: the
    labels arrive as given) and its own ``ignore_class`` ``ignore`` (``Impl.ignores``).

    ``given`` "probabilities": ``logits`` hold probabilities, which the implementation's part
    after its softmax (``ON_PROBABILITIES``) takes; its autodiff gradient w.r.t. them is carried
    to the logits behind them by ``to_logits_gradient``.

    ``logits`` and ``labels`` (dense label weights, or ``None`` for the one-hot of ``classes``)
    are numpy arrays already in the audited dtype. The gradient is taken of ``loss_scale``
    times the loss, held in the logits' dtype as training holds it (so it overflows as there),
    and comes back divided by ``loss_scale``, float16 and bfloat16 widened to float32.
    ``timeout``: seconds the run (its tracing included) may take, or None (see
    ``impls.time_limit`` for what it can interrupt). ``tensors``: a cache kept for one batch
    (``audit.Rounded.tensors``), where the runs on the same arrays share their tensors.
    """
    x, y, k = _tensors(logits, labels, classes, {} if tensors is None else tensors)
    e = tf.constant(eps, dtype=x.dtype)
    s = tf.constant(loss_scale, dtype=tf.float64)
    build = Build(policy, focus, smoothing, ignore)
    key = (name, x.dtype.name, model_path(name), given, build)
    fn = loss_fn(name, build, given)
    if mode == "eager":
        step = _with_gradient(fn)
    else:
        # One trace per implementation, dtype and build, whatever the batch shape or epsilon.
        if key not in _GRAPH_CACHE:
            signature = [
                tf.TensorSpec([None, None], x.dtype),
                tf.TensorSpec([None, None], x.dtype),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([], x.dtype),
                tf.TensorSpec([], tf.float64),
            ]
            _GRAPH_CACHE[key] = tf.function(
                # No Python control flow in the zoo: autograph would only slow tracing down.
                _with_gradient(fn),
                input_signature=signature,
                autograph=False,
            )
        step = _GRAPH_CACHE[key]
    try:
        with time_limit(timeout):
            if user_loss(name) is None:
                loss, grad = step(x, y, k, e, s)
            else:
                loss, grad = _run_user(name, step, x, y, k, e, s)
            # np.asarray views the tensor's buffer; .numpy() copies
            gradient = np.asarray(grad)
            if given == "probabilities":
                gradient = to_logits_gradient(as_float(logits), as_float(gradient))
            own = None
            if mean:  # the framework's own mean, taken eagerly in both modes: a Keras loss's own
                # reduction where it has one of its own (``Reducing``), else tf.reduce_mean
                own = fn.mean(y, k, x, e) if isinstance(fn, Reducing) else tf.reduce_mean(loss)
            result = outcome(loss.numpy(), gradient, loss.dtype.name, loss_scale, own)
    except Expired:
        _GRAPH_CACHE.pop(key, None)  # an interrupted trace is not to be reused
        raise timed_out(name, x.dtype.name, mode, timeout, policy) from None
    return result
