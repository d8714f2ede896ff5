"""The JAX and optax implementations and the autodiff runner. Import via
``impls.load_backend("jax")``.

Every implementation is ``fn(y, k, x) -> per-row losses``: ``y`` the dense label weights in the
logits' dtype, or None for hard labels, then ``k`` the int32 class of each row (None when there
are no classes). Gradients are what ``jax.vjp`` produces for that code; graph mode is
``jax.jit`` (one XLA computation), eager mode dispatches op by op. Hard labels become one-hot
rows inside the computation, as a jitted training step builds them: XLA may then fold
``sum(one_hot * v)`` into a select of the label's term, so that a ``0 * -inf`` elsewhere in the
row no longer makes the jitted loss NaN (its gradient still is).

XLA on the CPU flushes subnormal numbers to zero, as TensorFlow does and torch does not: a
softmax probability below 2^-126 (float32) is 0 here. float64 needs JAX's x64 mode, which is
enabled for the float64 run alone (``jax.enable_x64``, thread-local), never globally.

The zoo's losses run in chunks of a fixed row count per class count (``chunk_rows``), the
last chunk padded, so that a handful of shapes is ever compiled: op by op, JAX compiles every
primitive again for each new shape, and ``jax.jit`` traces again, which made a sweep (batches
of every row count) spend nearly all its time compiling. It also makes a row's result
independent of the batch it comes in: XLA on the CPU emits a row reduction differently as the
batch grows (measured with jax 0.10: 11 rows of 10 classes sum alike in batches of up to 64
rows and differ in the last bit in a batch of 1024), so unchunked, the same row could round
differently in a sweep's first batch and in a refinement round.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xentaudit.errors import ImplementationError
from xentaudit.impls import (
    Expired,
    Outcome,
    logits_shaped,
    outcome,
    per_row,
    time_limit,
    timed_out,
    user_code,
    user_loss,
)
from xentaudit.losses import NO_FOCUS, Focus

LossFn = Callable[[jax.Array | None, jax.Array | None, jax.Array], jax.Array]
Step = Callable[..., tuple[jax.Array, jax.Array]]


def _dense(y: jax.Array | None, k: jax.Array | None, x: jax.Array) -> jax.Array:
    """The label weights: ``y`` as given, or the one-hot rows of the classes ``k``."""
    return y if y is not None else jax.nn.one_hot(k, x.shape[-1], dtype=x.dtype)


# The optax losses are in optax/losses/_classification.py: softmax_cross_entropy is
# -sum(y * jax.nn.log_softmax(x)); the integer-label form is logsumexp(x) - x[k], the label's
# log-probability never formed for the other classes; safe_softmax_cross_entropy takes
# 0 * log_softmax as 0 where the weight is 0 (a -inf logit with no weight costs nothing).


def optax_softmax_xent(y: jax.Array | None, k: jax.Array | None, x: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy(x, _dense(y, k, x))


def optax_softmax_xent_int(y: jax.Array | None, k: jax.Array | None, x: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(x, k)


def optax_safe_softmax_xent(y: jax.Array | None, k: jax.Array | None, x: jax.Array) -> jax.Array:
    return optax.safe_softmax_cross_entropy(x, _dense(y, k, x))


def jax_log_softmax(y: jax.Array | None, k: jax.Array | None, x: jax.Array) -> jax.Array:
    return -(_dense(y, k, x) * jax.nn.log_softmax(x)).sum(-1)


def jax_softmax_log(y: jax.Array | None, k: jax.Array | None, x: jax.Array) -> jax.Array:
    return -(_dense(y, k, x) * jnp.log(jax.nn.softmax(x))).sum(-1)


def optax_sigmoid_xent(y: jax.Array | None, k: jax.Array | None, x: jax.Array) -> jax.Array:
    # optax/losses/_classification.py: -y log_sigmoid(x) - (1 - y) log_sigmoid(-x), per label;
    # the row's loss is the mean over its labels
    return optax.sigmoid_binary_cross_entropy(x, y).mean(-1)


def optax_sigmoid_focal(focus: Focus) -> LossFn:
    # optax/losses/_classification.py sigmoid_focal_loss: the factor (1 - p_t)^gamma as
    # exp(gamma log(1 - p_t)), log(1 - p_t) a logsumexp of log-sigmoids; the mean over labels
    def loss(y: jax.Array | None, k: jax.Array | None, x: jax.Array) -> jax.Array:
        return optax.sigmoid_focal_loss(x, y, alpha=focus.alpha, gamma=focus.gamma).mean(-1)

    return loss


FOCAL: dict[str, Callable[[Focus], LossFn]] = {"optax_sigmoid_focal": optax_sigmoid_focal}
IMPLS: dict[str, LossFn] = {
    fn.__name__: fn
    for fn in (
        optax_softmax_xent,
        optax_softmax_xent_int,
        optax_safe_softmax_xent,
        jax_log_softmax,
        jax_softmax_log,
        optax_sigmoid_xent,
    )
}


def loss_fn(name: str, focus: Focus = NO_FOCUS) -> LossFn:
    """The loss function registered under ``name`` (a focal one built for ``focus``), or the
    user's loss."""
    user = user_loss(name)
    if user is None:
        return FOCAL[name](focus) if name in FOCAL else IMPLS[name]
    return lambda y, k, x: user(_dense(y, k, x), x)


def _with_gradient(fn: LossFn) -> Step:
    def step(
        y: jax.Array | None, k: jax.Array | None, x: jax.Array, scale: float
    ) -> tuple[jax.Array, jax.Array]:
        def scaled(x: jax.Array) -> tuple[jax.Array, jax.Array]:
            loss = jnp.asarray(fn(y, k, x))
            # The scaling contract of every backend (see tf_zoo): training scales the loss cast
            # to float32, so the scale reaches a narrower loss's backward pass through the
            # cast, rounded to its dtype (2^16 is inf in float16).
            wide = loss if loss.dtype == jnp.float64 else loss.astype(jnp.float32)
            return wide * jnp.asarray(scale).astype(wide.dtype), loss

        out, vjp, loss = jax.vjp(scaled, x, has_aux=True)
        # A cotangent of ones is the gradient of the summed loss without forming the sum.
        (grad,) = vjp(jnp.ones_like(out))
        return loss, grad

    return step


# (name, dtype, focus) -> the jitted step; jax.jit traces it again for each new shape
# (chunk_rows keeps them few).
_GRAPH_CACHE: dict[tuple[str, str, Focus], Step] = {}

# Logits per chunk: 1 MiB of float32, a few milliseconds per op by op on a padded chunk.
CHUNK_ENTRIES = 2**18


def chunk_rows(classes: int) -> int:
    """Rows per chunk for ``classes`` classes: the power of two at most ``CHUNK_ENTRIES //
    classes`` (at least 1), one shape per class count whatever the batch."""
    return 1 << max(0, (CHUNK_ENTRIES // max(classes, 1)).bit_length() - 1)


def _padded(a: np.ndarray | None, rows: int, hot: bool = False) -> np.ndarray | None:
    """``a`` with rows appended up to ``rows``: zero logits, class 0, or (``hot``) label
    weights all on class 0. Every zoo loss is computed row by row, and the gradient is that of
    the summed loss, so a padding row's loss and gradient reach no other row, whatever they
    are (a uniform softmax, finite unless 1/C flushes to 0: float16 past 2^14 classes); they
    are sliced off."""
    if a is None or a.shape[0] == rows:
        return a
    pad = np.zeros((rows - a.shape[0], *a.shape[1:]), dtype=a.dtype)
    if hot:
        pad[:, 0] = 1
    return np.concatenate([a, pad])


def _chunked(
    step: Step,
    y: np.ndarray | None,
    k: np.ndarray | None,
    x: np.ndarray,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``step`` over chunks of ``chunk_rows`` rows (the last padded), results concatenated.
    The chunks go to JAX with ``jax.device_put``, a copy: ``jnp.asarray`` compiles a program
    for each new shape and dtype."""
    rows, classes = x.shape
    size = chunk_rows(classes)
    losses, grads = [], []
    for start in range(0, max(rows, 1), size):
        part = slice(start, start + size)
        n = min(size, rows - start)
        loss, grad = step(
            None if y is None else jax.device_put(_padded(y[part], size, hot=True)),
            None if k is None else jax.device_put(_padded(k[part], size)),
            jax.device_put(_padded(x[part], size)),
            scale,
        )
        losses.append(np.asarray(loss)[:n])
        grads.append(np.asarray(grad)[:n])
    return np.concatenate(losses), np.concatenate(grads)


def _run_user(
    name: str,
    step: Step,
    y: jax.Array | None,
    k: jax.Array | None,
    x: jax.Array,
    scale: float,
) -> tuple[jax.Array, jax.Array]:
    """Run a user's loss; whatever goes wrong in their code is a one-line error, not a bug.

    In graph mode their Python runs while ``jax.jit`` traces it, inside this call too. JAX has
    no missing gradient: a loss that does not depend on the logits has a zero gradient.
    """
    with user_code(f"--impl {name}: the loss", ImplementationError):
        loss, grad = step(y, k, x, scale)
    per_row(name, tuple(loss.shape), x.shape[0], loss.dtype)
    logits_shaped(name, tuple(grad.shape), tuple(x.shape))
    return loss, grad


@functools.cache
def flushes_subnormals() -> bool:
    """Whether XLA flushes subnormal float32 results to zero on this CPU: exp(-100) is
    3.8e-44, a subnormal, or 0."""
    return float(jnp.exp(jnp.float32(-100.0))) == 0.0


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
) -> Outcome:
    """Run implementation ``name`` op by op or jitted (``mode`` "graph"); a focal loss with
    ``focus``.

    ``logits`` and ``labels`` (dense label weights, or ``None`` for the hard labels
    ``classes``) are numpy arrays already in the audited dtype; float64 runs with x64 enabled
    for this call alone. The gradient is taken of ``loss_scale`` times the loss, held in
    float32 (float64 for a float64 loss) as training holds it, and comes back divided by
    ``loss_scale``, float16 and bfloat16 widened to float32. ``eps`` and ``policy`` (Keras'
    alone) do not apply. ``timeout``: seconds the run (its tracing and compilation included)
    may take, or None. The zoo's losses run in chunks of ``chunk_rows`` rows, the last one
    padded; a user's loss runs on the whole batch.
    """
    # No implementation of this backend takes probabilities (Impl.on_probabilities): `check`
    # refuses them with --input probabilities before anything runs. None takes a label
    # smoothing argument (optax has none: users smooth with optax.smooth_labels) or an ignored
    # class, so ``smoothing`` is always 0 and ``ignore`` None here: they are handed the labels
    # smoothed, and the ignored rows' one-hot rows (or their class, the integer-label loss).
    assert given == "logits", given
    assert smoothing == 0 and ignore is None, (smoothing, ignore)
    dtype = logits.dtype.name
    key = (name, dtype, focus)
    x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    k = np.asarray(classes, dtype=np.int32) if classes is not None else None
    try:
        with x64, time_limit(timeout):
            if mode == "eager":
                step = _with_gradient(loss_fn(name, focus))
            else:
                if key not in _GRAPH_CACHE:
                    _GRAPH_CACHE[key] = jax.jit(_with_gradient(loss_fn(name, focus)))
                step = _GRAPH_CACHE[key]
            if user_loss(name) is None:
                loss, grad = _chunked(step, labels, k, logits, loss_scale)
            else:
                # Not chunked: a user's loss may mix rows (a batch statistic), which padding
                # rows would change.
                loss, grad = _run_user(
                    name,
                    step,
                    None if labels is None else jax.device_put(labels),
                    None if k is None else jax.device_put(k),
                    jax.device_put(logits),
                    loss_scale,
                )
            loss = np.asarray(loss)
            own = jnp.mean(jnp.asarray(loss)) if mean else None
            result = outcome(loss, np.asarray(grad), loss.dtype.name, loss_scale, own)
    except Expired:
        _GRAPH_CACHE.pop(key, None)  # an interrupted trace is not to be reused
        raise timed_out(name, dtype, mode, timeout) from None
    return result
