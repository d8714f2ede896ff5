"""Run implementations on a batch, measure them against the exact reference, assign flags.

Tolerances (documented in the README, section "Flags and thresholds"), per row i of C classes,
with ``eff`` the less precise of the input dtype and the implementation's output dtype, eps its
machine epsilon, B_i = max(sum_j y_ij, 1) the bound of the exact gradient, k = ceil(log2 C) and
d u_acc the error bound of a C-term sum in SIMD lanes (``losses.LANE_ULPS``):

* loss: ``divergent`` when |L_i - exact_i| > 8 eps max(|exact_i|, 1) + k eps B_i + d u_acc B_i
  + q_i (with ``rtol`` given: rtol max(|exact_i|, 1) + q_i). A well-implemented log-sum-exp in
  that dtype rounds a few times (the subtraction x_j - m, exp, log, the final subtraction: 8 eps
  relative covers them with room to spare) and sums C terms; a tree-summed reduction of C terms
  in [0, 1] has relative error at most k u = k eps / 2 (Higham, "Accuracy and Stability of
  Numerical Algorithms", 2nd ed., section 4.2), and the rounding of x_j - m moves the sum by at
  most sum_j p_j |x_j - m| u <= ln(C) u < k u more (the weighted gaps are at most the softmax's
  entropy); the frameworks' kernels that add it in SIMD lanes instead are within d u_acc. Both
  enter the loss through log, absolutely and scaled by sum(y): k eps B_i + d u_acc B_i.
* gradient: ``grad-wrong`` when max_j |G_ij - g_ij| > (8 + k) eps B_i + d u_acc B_i + q_i, the
  same roundings entering softmax(x) sum(y) - y (each entry is w_j / S: the sum's error reaches
  every entry, and the argmax entry of autodiff through x - max(x) collects the rounding of a
  C-term sum);
  ``grad-blowup`` when max_j |G_ij| > 10 B_i; ``grad-vanish`` when max_j |g_ij| > 32 eps B_i
  (clearly above rounding) yet max_j |G_ij| <= 0.1 max_j |g_ij|.
* q_i = 2 B_i max_j |fl_out(x_ij) - x_ij| over the logits that can move the loss (not a mask
  whose weight is 0 in float64 where it is and where it rounds: ``Rounded.largest_rounding``) is
  added only when the implementation narrows the dtype (Keras turns float64 into float32):
  rounding the input to the output's dtype moves the loss and the gradient by up to that much
  (|dL/dx|_1 <= 2 B_i), which is the narrowing's doing, reported by ``downcast``, not an error
  of the loss formula.
* TensorFlow flushes subnormals to zero on CPU: absolute differences below the smallest normal
  number of ``eff`` count as no error at all.
* Soft labels with n_i > 1 nonzero weights (softmax, focal) add u_acc (n_i - 1) |exact_i| to the
  loss's tolerance and u_acc (n_i - 1) (2 + max_j p_ij) B_i to the gradient's: frameworks add
  label terms in their kernels' order, not a tree's (``losses.LABEL_SUM_ULPS``; u_acc is
  float32's unit roundoff for half precision, whose sums are accumulated in float32).
* With --ignore-class, rows of the ignored class have exact loss and gradient 0; a loss on them
  is ``ignored-counted``.
* Masked logits (-inf) are ordinary input. Where the exact loss is +inf (label mass on a -inf
  logit), +inf is the right answer, NaN is ``nan`` and anything else (a finite loss, -inf) is
  ``divergent``, infinitely wrong (relative error inf).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xentaudit import impls as zoo
from xentaudit.choices import DEFAULT_DTYPES, EVERY, MAX_TIMEOUT, names_given, numbers_given
from xentaudit.dtypes import FORMATS, FloatFormat, get_format, parse_dtypes
from xentaudit.environment import environment
from xentaudit.errors import ConfigError, InputError, NothingAudited
from xentaudit.flags import FLAGS
from xentaudit.impls import Outcome
from xentaudit.io import Batch, as_float, describe_rows, prepare
from xentaudit.losses import (
    LOSSES,
    NO_FOCUS,
    Focus,
    accumulator_eps,
    extra_labels,
    focus_of,
    get_loss,
    label_sum_terms,
    lane_bound,
)
from xentaudit.reference import Reference, grad_error, grad_errors
from xentaudit.results import Audit, ImplResult, Skipped, eps_text

if TYPE_CHECKING:
    from xentaudit.model import ModelPath

# first that applies, per row
LOSS_FLAGS = ("nan", "inf", "ignored-counted", "divergent", "zero-loss")
GRAD_FLAGS = ("grad-nan", "grad-inf", "grad-blowup", "grad-vanish", "grad-wrong")
ROW_FLAGS = LOSS_FLAGS + GRAD_FLAGS
RTOL_ULPS = 8  # default loss and gradient tolerance, in eps of the effective dtype
VANISH_ULPS = 32  # an exact gradient above this many eps (times B) is clearly non-zero
# exp(-746) is below half float64's smallest subnormal: a logit this far below the row's largest
# (and 0) has a softmax weight and a sigmoid float64 holds as 0 (Rounded.largest_rounding)
MASKED = 746.0
Progress = Callable[[int, int], None]  # called with units of work done, and their total
BLOWUP_FACTOR = 10.0
VANISH_FRACTION = 0.1
MAX_SCALE_LOG2 = 64  # the largest loss scale max_loss_scale tries: 2^64 (Keras starts at 2^15)
HALF_PRECISION = 24  # significand bits of float32: a layer computing with fewer is half precision


@dataclass(frozen=True)
class Grades:
    """Per-row grades of one implementation's outcome against the reference."""

    rel_err: np.ndarray  # (n,) |L - exact| / max(|exact|, 1)
    ulps_err: np.ndarray  # (n,) |L - exact| in ulps of the input dtype
    grad_err: np.ndarray  # (n,) max_j |G - g|
    masks: dict[str, np.ndarray]  # flag -> (n,) bool, at most one loss and one gradient flag
    downcast: bool
    rtol: float
    half_layer: bool = False  # a Keras (Softmax) layer computed in float16 or bfloat16

    @property
    def failing(self) -> np.ndarray:
        """(n,) bool: the rows on which a failing kind of flag fired."""
        return np.logical_or.reduce([self.masks[f] for f in ROW_FLAGS if FLAGS[f].failing])

    @property
    def half_softmax(self) -> np.ndarray:
        """(n,) bool: the rows ``half-softmax`` applies to: a failing flag fired on them and a
        Keras Softmax layer computed in half precision (the mixed-precision guide's pitfall)."""
        return self.failing & self.half_layer

    @property
    def flagged(self) -> np.ndarray:
        """(n,) bool: the rows on which a loss or gradient flag fired (``flags_of`` not empty)."""
        return np.logical_or.reduce([self.masks[f] for f in ROW_FLAGS])

    def flags_of(self, row: int) -> tuple[str, ...]:
        """The flags of one row."""
        return tuple(f for f in ROW_FLAGS if self.masks[f][row])

    def row_flags(self) -> list[tuple[str, ...]]:
        return [self.flags_of(i) for i in range(self.rel_err.shape[0])]

    def flags(self) -> tuple[str, ...]:
        fired = [f for f in ROW_FLAGS if self.masks[f].any()]
        if self.downcast:
            fired.append("downcast")
        if self.half_softmax.any():
            fired.append("half-softmax")
        return tuple(fired)


def _first_match(conditions: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Make row masks exclusive: a row keeps only the first condition it meets."""
    taken = np.zeros_like(conditions[0])
    out = []
    for cond in conditions:
        out.append(cond & ~taken)
        taken = taken | cond
    return out


# per row, max_j |G - g| and max_j |G| of an implementation's gradient G (``grad_error``)
GradMaxima = tuple[np.ndarray, np.ndarray]


def grade(
    loss: np.ndarray,
    grad: np.ndarray | GradMaxima,
    output_dtype: str,
    rounded: Rounded,
    rtol: float | None = None,
    compute_dtype: str | None = None,
    keras_layer: bool = True,
    handed: bool = True,
) -> Grades:
    """Grade per-row ``loss`` (float64) and ``grad`` of an implementation run on ``rounded``:
    its gradient (n, C), or the gradient's row maxima already taken (``grad_error``: they are
    all its flags need).

    ``compute_dtype``: the dtype its Keras layers computed in under the dtype policy, or the one
    it rounds the logits to (None: neither). A compute dtype narrower than the input narrows the
    computation as a narrower output does (``downcast``, tolerances of the narrower dtype); a
    Keras layer (``keras_layer``) in half precision is ``half-softmax`` where a failing flag
    fires. ``handed``: it was handed the smoothed labels rounded to the dtype (not smoothing
    them itself), whose shift of the exact loss and gradient (``Rounded.label_shift``) it may
    show.
    """
    fmt, ref = rounded.fmt, rounded.ref
    out = min(
        FORMATS.get(output_dtype, fmt),
        FORMATS.get(compute_dtype or output_dtype, fmt),
        key=lambda f: f.precision,
    )
    eff = min(fmt, out, key=lambda f: f.precision)
    downcast = out.precision < fmt.precision
    half_layer = (
        keras_layer
        and compute_dtype is not None
        and FORMATS[compute_dtype].precision < HALF_PRECISION
    )
    tol = RTOL_ULPS * eff.eps if rtol is None else rtol
    bound = rounded.bound
    loss_fn = LOSSES[rounded.loss]
    # q_i: rounding the input to the output's dtype moves the loss by |dL/dx|_1 max_j |dx_j|
    slack = (
        loss_fn.l1_bound(rounded.logits, bound) * rounded.largest_rounding(out)
        if downcast
        else np.zeros_like(bound)
    )
    # the C-term sums accumulated in SIMD lanes (losses.LANE_ULPS), in float32 at least
    lane = lane_bound(rounded.logits.shape[1], eff.eps)
    lane_loss, lane_grad = (lane * t for t in loss_fn.lane_sums(bound, rounded.loss_magnitude))

    exact_inf = rounded.exact_inf
    with np.errstate(invalid="ignore"):
        signed = (loss - ref.loss) - ref.loss_lo
    abs_err = np.abs(signed)
    if rounded.any_exact_inf:
        # An infinite exact loss is matched only by itself; anything else but NaN is infinitely
        # off.
        abs_err = np.where(
            exact_inf & ~np.isnan(loss), np.where(loss == ref.loss, 0.0, np.inf), abs_err
        )
    # Subnormals: the frameworks flush those of the dtype they compute in, float32 at least on
    # a CPU (float16 computes in float32 and keeps its own subnormals), so a difference below
    # that dtype's smallest normal is no error; float16's, spaced eps * tiny apart, round by up
    # to half that each: RTOL_ULPS such roundings on the gradient's tolerance.
    flushed = min(eff.tiny, FORMATS["float32"].tiny)
    subnormal = RTOL_ULPS * eff.eps * eff.tiny / 2 if eff.tiny > flushed else 0.0
    abs_err = np.where(abs_err < flushed, 0.0, abs_err)
    scale = rounded.loss_magnitude
    with np.errstate(invalid="ignore", over="ignore"):
        rel_err = np.where((abs_err == 0) | exact_inf, abs_err, abs_err / scale)
        ulps_err = np.where((abs_err == 0) | exact_inf, abs_err, abs_err / rounded.loss_ulp)
    if rounded.ignored is not None:  # an exact 0 has no ulp: any loss on such a row is inf ulps
        ulps_err = np.where(rounded.ignored & (abs_err > 0), np.inf, ulps_err)
    reduction = eff.eps * rounded.loss_terms
    # soft labels: their sums, in the order of the framework's kernels, accumulated in float32
    # at least (losses.LABEL_SUM_ULPS)
    label_loss, label_grad = np.zeros_like(bound), np.zeros_like(bound)
    if rounded.label_terms is not None:
        label_loss, label_grad = (accumulator_eps(eff.eps) * t for t in rounded.label_terms)
    # Smoothed labels rounded to the dtype (``Rounded.label_shift``): an implementation handed
    # them is judged against the exact loss of the labels it got, L' = L + shift, or of those
    # smoothed exactly, L, whichever it is nearer; its gradient may be off by theirs apart.
    judged, shift_grad = abs_err, 0.0
    if handed and rounded.label_shift is not None:
        shift, shift_grad = rounded.label_shift
        shift_grad = np.nan_to_num(shift_grad, nan=0.0)  # never a NaN that silences grad-wrong
        with np.errstate(invalid="ignore"):
            near = np.abs(signed - shift)
        near = np.where(near < flushed, 0.0, near)
        # fmin: a NaN distance to L' (none expected) leaves the distance to L to judge
        judged = np.where(exact_inf, abs_err, np.fmin(abs_err, near))
    allowed = tol * scale + (reduction + lane_loss + label_loss if rtol is None else 0.0) + slack
    allowed = np.where(exact_inf, 0.0, allowed)

    ignored = np.zeros_like(exact_inf) if rounded.ignored is None else rounded.ignored
    nan, inf, counted, divergent, zero = _first_match(
        [
            np.isnan(loss),
            np.isinf(loss) & ~exact_inf,
            ignored & (loss != 0),  # a row whose exact loss is 0 because it is ignored
            judged > allowed,
            (loss == 0) & (ref.loss >= eff.tiny),
        ]
    )

    # Row maxima propagate NaN (and inf), so two of them tell everything the flags need.
    row_gerr, impl_size = grad if isinstance(grad, tuple) else grad_error(grad, ref.grad)
    row_gerr = np.where(row_gerr < flushed, 0.0, row_gerr)
    exact_size = ref.grad_size
    g_nan, g_inf, blowup, vanish, wrong = _first_match(
        [
            np.isnan(impl_size),
            np.isinf(impl_size),
            impl_size > BLOWUP_FACTOR * bound,
            (exact_size > VANISH_ULPS * eff.eps * bound)
            & (impl_size <= VANISH_FRACTION * exact_size),
            row_gerr
            > RTOL_ULPS * eff.eps * bound
            + eff.eps * rounded.grad_terms
            + lane_grad
            + label_grad
            + slack
            + subnormal
            + shift_grad,
        ]
    )
    masks = {
        "nan": nan,
        "inf": inf,
        "ignored-counted": counted,
        "divergent": divergent,
        "zero-loss": zero,
        "grad-nan": g_nan,
        "grad-inf": g_inf,
        "grad-blowup": blowup,
        "grad-vanish": vanish,
        "grad-wrong": wrong,
    }
    return Grades(rel_err, ulps_err, row_gerr, masks, downcast, tol, half_layer)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


def worst(values: np.ndarray) -> float:
    """The largest of ``values`` (0 if empty), NaN if any is NaN: a NaN error is the worst."""
    return math.nan if np.isnan(values).any() else float(values.max(initial=0.0))


class Unrepresentable(Exception):
    """The inputs rounded to a dtype are no longer the user's numbers (they overflow it)."""


@dataclass(frozen=True)
class Rounded:
    """A batch rounded to one format, with the exact reference of the rounded numbers."""

    fmt: FloatFormat
    logits: np.ndarray  # in fmt
    weights: np.ndarray | None  # label weights in fmt, as the implementations receive them
    classes: np.ndarray | None
    ref: Reference
    given: str = "logits"  # what ``logits`` hold (``choices.INPUTS``): probabilities, at `check`
    loss: str = "softmax"  # LOSSES: what ``ref`` is the exact value of
    focus: Focus = NO_FOCUS  # the focal losses' gamma and alpha
    # label smoothing a: ``weights`` are the labels smoothed (in float64, then rounded to fmt)
    # and ``ref`` the exact loss of the labels smoothed exactly; the implementations that
    # smooth by an argument of their own (``Impl.smooths``) take ``given_weights`` (the labels
    # as given, in fmt: None for classes, the one-hot rows with rows ignored) and a instead
    smoothing: float = 0.0
    given_weights: np.ndarray | None = None
    # --ignore-class N: the rows of class N (a mask; None when no row has it), whose exact loss
    # and gradient are 0; the implementations that take N themselves (``Impl.ignores``) get the
    # classes and N, the others ``weights``: the one-hot rows of the classes, as tf.one_hot and
    # jax.nn.one_hot write them (a class outside [0, C), -100, is a row of zeros)
    ignored: np.ndarray | None = None
    ignore_class: int | None = None
    # with smoothing: per row, how far rounding the smoothed labels to fmt (``weights``) moves
    # the exact loss (L' - L, signed) and the gradient (max_j |g'_j - g_j|), the labels' fault
    # and not that of an implementation handed them: a float16 a / C below 6.1e-5 is
    # subnormal, off by up to 100 %
    label_shift: tuple[np.ndarray, np.ndarray] | None = None

    @cached_property
    def tensors(self) -> dict:
        """Where TensorFlow's runs keep this batch's tensors, made once for every
        implementation (``tf_zoo.run``): a cache that lives as long as the batch."""
        return {}

    @cached_property
    def bound(self) -> np.ndarray:
        """B_i, the bound of the exact gradient's entries of each row (softmax: max(sum_j y_ij,
        1); ``losses`` for the others)."""
        return LOSSES[self.loss].bound(self.logits, self.weights, self.focus)

    @cached_property
    def exact_inf(self) -> np.ndarray:
        """(n,) bool: the rows whose exact loss is infinite."""
        return np.isinf(self.ref.loss)

    @cached_property
    def any_exact_inf(self) -> bool:
        return bool(self.exact_inf.any())

    @cached_property
    def loss_magnitude(self) -> np.ndarray:
        """max(|L_i|, 1): what a loss's relative error is relative to."""
        return np.maximum(np.abs(self.ref.loss), 1.0)

    @cached_property
    def loss_ulp(self) -> np.ndarray:
        """The ulp of ``fmt`` at each exact loss: the unit of a loss's error in ulps."""
        return self.fmt.ulp(self.ref.loss)

    @cached_property
    def loss_terms(self) -> np.ndarray:
        """The tolerance the loss adds for its reductions and products, in eps (``Loss``)."""
        weights = None if self.weights is None else as_float(self.weights)
        return LOSSES[self.loss].loss_terms(
            self.logits, weights, self.bound, self.ref.loss, self.focus, self.smoothing > 0
        )

    @cached_property
    def grad_terms(self) -> np.ndarray:
        """The tolerance the gradient adds for its reductions and products, in eps."""
        weights = None if self.weights is None else as_float(self.weights)
        return LOSSES[self.loss].grad_terms(self.logits, weights, self.bound, self.focus)

    @cached_property
    def label_terms(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The soft labels' sums' terms of the loss and the gradient, in eps of the
        accumulator (``losses.label_sum_terms``); None without soft labels."""
        if not self.label_extra.any():
            return None
        return label_sum_terms(self.label_extra, self.top_probability, self.bound, self.ref.loss)

    @cached_property
    def label_extra(self) -> np.ndarray:
        """n_i - 1 for a row of n_i nonzero label weights of a softmax or focal loss (soft labels,
        smoothed ones: ``losses.LABEL_SUM_ULPS``); 0 for class labels, multi-label losses and
        ignored rows (no label sum: their exact 0 stands)."""
        if self.weights is None or LOSSES[self.loss].labels != "classes":
            return np.zeros(self.logits.shape[0], dtype=np.int64)
        extra = extra_labels(as_float(self.weights))
        return extra if self.ignored is None else np.where(self.ignored, 0, extra)

    @cached_property
    def kept(self) -> int:
        """The number of rows not ignored (``ignored``)."""
        return self.logits.shape[0] - (0 if self.ignored is None else int(self.ignored.sum()))

    @cached_property
    def exact_mean(self) -> float:
        """The exact mean loss over the rows kept (ignored rows' exact loss is 0); NaN when every
        row is ignored."""
        total = math.fsum(self.ref.loss) + math.fsum(self.ref.loss_lo)
        return total / self.kept if self.kept else math.nan

    @cached_property
    def top_probability(self) -> np.ndarray:
        """max_j q_ij, the largest softmax probability of each row (float64): 1 / sum_j
        exp(x_ij - max_j x_ij) of logits; max p / sum p of probabilities (``given``)."""
        x = as_float(self.logits).astype(np.float64)
        if self.given == "probabilities":
            with np.errstate(invalid="ignore", divide="ignore"):
                return x.max(axis=1) / x.sum(axis=1)
        top = x.max(axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):
            return 1.0 / np.exp(x - np.where(np.isfinite(top), top, 0.0)).sum(axis=1)

    @cached_property
    def _roundings(self) -> dict[str, np.ndarray]:
        """``largest_rounding`` per format, computed once (it reads every logit)."""
        return {}

    def largest_rounding(self, out: FloatFormat) -> np.ndarray:
        """max_j |fl(x_ij) - x_ij| per row over the logits that can move the loss, fl rounding
        to the narrower format ``out``: 0 for logits ``out`` holds exactly; u_out |x_ij| for one
        it overflows. A logit without label weight that lies, and rounds, more than ``MASKED``
        below min(max_j x_ij, 0) has a softmax weight and a sigmoid below e^-746, which float64
        holds as 0, where it is and where it goes: it moves nothing (a mask of -1e9, which
        float16 turns into -inf and bfloat16 into -998244352)."""
        if out.name not in self._roundings:
            x = as_float(self.logits).astype(np.float64)
            held = out.cast(x).astype(np.float64)
            with np.errstate(invalid="ignore"):
                moved = np.abs(held - x)
            # -inf is held exactly (its difference is NaN); an overflow moves by u_out |x| at most
            overflow = out.eps / 2 * np.abs(x)
            moved = np.where(held == x, 0.0, np.where(np.isfinite(moved), moved, overflow))
            floor = np.minimum(x.max(axis=1, keepdims=True), 0.0) - MASKED
            masked = (np.maximum(x, held) < floor) & self._unlabelled
            self._roundings[out.name] = np.where(masked, 0.0, moved).max(axis=1, initial=0.0)
        return self._roundings[out.name]

    @property
    def _unlabelled(self) -> np.ndarray:
        """Where the labels give no weight (n, C): False where unknown."""
        if self.weights is not None:
            return as_float(self.weights) == 0
        shape = self.logits.shape
        if self.classes is None:
            return np.zeros(shape, dtype=bool)
        return np.arange(shape[1]) != np.asarray(self.classes)[:, None]


def round_to(
    batch: Batch,
    fmt: FloatFormat,
    method: str = "auto",
    given: str = "logits",
    loss: str = "softmax",
    focus: Focus = NO_FOCUS,
    smoothing: float = 0.0,
    ignore_class: int | None = None,
) -> Rounded:
    """Round ``batch`` to ``fmt`` and compute the exact reference of the rounded inputs, of the
    loss ``loss`` (``LOSSES``), their labels smoothed by ``smoothing`` (``Loss.smooth``: as
    Keras smooths them, exactly, in float64, for the reference; then rounded to ``fmt`` for the
    implementations handed smoothed labels). Rows of the class ``ignore_class`` (``Rounded``) have
    an exact loss and gradient of 0.

    ``method`` is the reference method (see ``reference.cross_entropy``). ``given``
    "probabilities": ``batch.logits`` hold probabilities p, whose exact loss and logit gradient
    are those of the logits log p (the cross-entropy of q = p / sum p, Keras' renormalisation;
    p = 0 is the logit -inf). Raises ``Unrepresentable`` when a finite input overflows the
    format.
    """
    x = batch.logits
    if x.dtype != fmt.numpy:
        x = fmt.cast(x)
        source = as_float(batch.logits)
        if (
            FORMATS[batch.logits.dtype.name].max > fmt.max
            and (np.isinf(x) & np.isfinite(source)).any()
        ):
            # Only finite logits that become infinite overflow: -inf (a masked logit) stays -inf.
            big = float(np.abs(source[np.isfinite(source)]).max())
            raise Unrepresentable(f"logits up to {big:.4g} overflow {fmt.name} (max {fmt.max:.5g})")
    y = None
    if batch.weights is not None:
        y = fmt.cast(batch.weights)
        if not np.isfinite(y).all():
            raise Unrepresentable(f"label weights overflow {fmt.name} (max {fmt.max:.5g})")
    # One-hot weights are exact in every format: their classes are the cheaper reference input.
    ref_labels = batch.classes if batch.classes is not None else y
    ignored = None
    if ignore_class is not None and batch.classes is not None:
        ignored = batch.classes == ignore_class
        if ignored.any():
            ref_labels = np.where(ignored, 0, batch.classes)  # any class: the rows are zeroed
            y = fmt.cast(one_hot(batch.classes, batch.shape[1]))
        else:
            ignored = None
    given_y = y
    if smoothing:  # the labels as the implementations are given them, smoothed exactly
        dense = one_hot(batch.classes, batch.shape[1]) if y is None else as_float(y)
        ref_labels = LOSSES[loss].smooth(dense, smoothing)
        y = fmt.cast(ref_labels)
    ref_logits = x
    if given == "probabilities":
        with np.errstate(divide="ignore"):
            ref_logits = np.log(as_float(x).astype(np.float64))
    ref = LOSSES[loss].reference(ref_logits, ref_labels, method, focus)  # type: ignore[arg-type]
    shift = None
    if smoothing:
        handed = as_float(y).astype(np.float64)  # type: ignore[arg-type]
        if not np.array_equal(handed, ref_labels):
            # a tolerance's term: float64's few ulps are enough (no second mpmath pass)
            cheap = method if method.startswith("float64") else "float64"
            shift = _shift(ref, LOSSES[loss].reference(ref_logits, handed, cheap, focus))
    if ignored is not None:
        ref = without_rows(ref, ignored)
        shift = (
            None
            if shift is None
            else (np.where(ignored, 0.0, shift[0]), np.where(ignored, 0.0, shift[1]))
        )
    return Rounded(
        fmt, x, y, batch.classes, ref, given, loss, focus, smoothing, given_y, ignored,
        ignore_class, shift,
    )  # fmt: skip


def _shift(ref: Reference, other: Reference) -> tuple[np.ndarray, np.ndarray]:
    """Per row, L' - L and max_j |g'_j - g_j| of two exact references of the same logits (an
    infinite loss equal in both: no shift)."""
    with np.errstate(invalid="ignore"):
        loss = np.where(other.loss == ref.loss, 0.0, other.loss - ref.loss)
        grad = np.abs(other.grad - ref.grad).max(axis=1)
    return loss, grad


def one_hot(classes: np.ndarray, count: int) -> np.ndarray:
    """The one-hot rows (float64) of ``classes`` over ``count`` classes as ``tf.one_hot`` and
    ``jax.nn.one_hot`` write them: a class outside [0, count) is a row of zeros."""
    out = np.zeros((classes.shape[0], count))
    inside = (classes >= 0) & (classes < count)
    out[np.flatnonzero(inside), classes[inside]] = 1.0
    return out


def without_rows(ref: Reference, rows: np.ndarray) -> Reference:
    """``ref`` with the exact loss and gradient of ``rows`` (a mask) 0: rows a loss ignores."""
    grad = ref.grad.copy()
    grad[rows] = 0
    return replace(
        ref,
        loss=np.where(rows, 0.0, ref.loss),
        loss_lo=np.where(rows, 0.0, ref.loss_lo),
        grad=grad,
        grad_size=np.where(rows, 0.0, ref.grad_size),
    )


def _run(
    name: str,
    eps: float,
    mode: str,
    rounded: Rounded,
    timeout: float | None,
    policy: str,
    loss_scale: float,
    mean: bool = False,
) -> Outcome:
    impl = zoo.get_impl(name)
    smoothing = rounded.smoothing if impl.smooths else 0.0
    ignore = rounded.ignore_class if impl.ignores and rounded.ignored is not None else None
    labels = rounded.given_weights if smoothing else rounded.weights
    if ignore is not None:
        labels = None  # the classes, N among them, and N
    args = (rounded.logits, labels, rounded.classes, timeout, policy, loss_scale)
    # TensorFlow copies arrays into its tensors (torch views them, JAX takes them as given):
    # its runs share one copy per batch
    shared = {"tensors": rounded.tensors} if impl.backend == "tensorflow" else {}
    return zoo.load_backend(impl.backend).run(
        name,
        eps,
        mode,
        *args,
        given=rounded.given,
        focus=rounded.focus,
        mean=mean,
        smoothing=smoothing,
        ignore=ignore,
        **shared,
    )


def run_graded(
    name: str,
    eps: float,
    mode: str,
    rounded: Rounded,
    rtol: float | None,
    timeout: float | None = None,
    policy: str = "float32",
    loss_scale: float = 1.0,
    mean: bool = False,
) -> tuple[Outcome, Grades]:
    """Run implementation ``name`` on ``rounded`` inputs in ``mode`` under the Keras dtype
    policy ``policy``, its gradient taken of ``loss_scale`` times the loss, and grade it; the
    run may take at most ``timeout`` seconds (None: no limit). ``mean``: also take the
    framework's own mean of its losses (``Outcome.mean``)."""
    outcome = _run(name, eps, mode, rounded, timeout, policy, loss_scale, mean)
    maxima = grad_error(outcome.grad, rounded.ref.grad)
    return outcome, _grading(name, outcome, maxima, rounded, rtol, policy)()


def _grading(
    name: str,
    outcome: Outcome,
    maxima: GradMaxima,
    rounded: Rounded,
    rtol: float | None,
    policy: str,
) -> Callable[[], Grades]:
    """The grading of implementation ``name``'s run under ``policy``, its gradient's row
    maxima (``grad_error``) already taken, when called."""
    compute = zoo.computes_in(name, policy)
    impl = zoo.get_impl(name)
    return partial(
        grade, outcome.loss, maxima, outcome.output_dtype, rounded, rtol, compute,
        impl.keras_layer, not impl.smooths,
    )  # fmt: skip


def eps_used(name: str, eps: float) -> float | None:
    """The clipping epsilon implementation ``name`` applies: ``eps``, Keras' own, or none."""
    kind = zoo.get_impl(name).eps
    if kind == "option":
        return eps
    return zoo.load_tf().keras_epsilon() if kind == "keras" else None


@dataclass(frozen=True)
class Variant:
    """An implementation with the epsilon it is swept at (only ``clipped`` has several)."""

    impl: str
    eps: float


def variants(names: Iterable[str], eps: tuple[float, ...]) -> list[Variant]:
    """Each implementation once, ``clipped`` (which clips with ``--eps``) once per epsilon. A
    user's loss or a model takes no ``--eps``, so it is not loaded here."""
    out: list[Variant] = []
    for name in names:
        option = name in zoo.REGISTRY and zoo.REGISTRY[name].eps == "option"
        chosen = eps if option else eps[:1]
        out.extend(Variant(name, e) for e in chosen)
    return out


def nothing_audited(skipped: Sequence[Skipped]) -> NothingAudited:
    """The error of an audit whose every run was skipped (overflowing dtypes, labels no
    implementation asked for takes): an empty result would pass."""
    real = [s for s in skipped if s.impl not in zoo.BY_OPTION] or skipped  # not a backend's
    why = "".join(f" ({s.impl} in {s.dtype}: {s.reason})" for s in real[:1])
    return NothingAudited(
        f"nothing could be audited{why}; pick implementations and dtypes that can run on these "
        "inputs",
        tuple(skipped),
    )


def chosen_impls(
    impls: Iterable[str],
    model: str | Path | ModelPath | None,
    backends: Iterable[str] | None = None,
    loss: str = "softmax",
    load: bool = True,
) -> tuple[str, ...]:
    """``impls`` expanded (``zoo.parse_impls``, ``all`` over the installed ``backends``' ones
    of ``loss``; users' losses loaded, unless not ``load``), then, with ``model`` (a ``.keras``
    file, or a ``ModelPath`` already read, e.g. of a model in memory), the implementation
    ``model``: the loss path ``read_model_config`` maps, exactly as saved."""
    if model is not None and loss != "softmax":
        raise ConfigError(
            f"--model audits a model's softmax cross-entropy; --loss {loss} takes --impl only"
        )
    if model is None:
        names = zoo.parse_impls(impls, backends, loss, load)
        if not names:
            # say how to install what was asked for, if it has an implementation of the loss
            having = {i.backend for i in zoo.REGISTRY.values() if i.loss == loss}
            missing = [s for s in backend_skips(backends) if zoo.BY_OPTION[s.impl] in having]
            why = (
                missing[0].reason
                if missing
                else "--impl, --backend, --loss (and --input) leave none"
            )
            raise ConfigError(f"no implementation to run: {why}; name one (xentaudit list)")
        return names
    from xentaudit.model import ModelPath, read_model_config

    zoo.use_model(model if isinstance(model, ModelPath) else read_model_config(model))
    names = [name for name in impls if name != zoo.MODEL]  # `--impl model` is implied
    return (*(zoo.parse_impls(names, backends, load=load) if names else ()), zoo.MODEL)


def runnable_modes(name: str, modes: Iterable[str]) -> tuple[tuple[str, ...], Skipped | None]:
    """The ``modes`` implementation ``name`` can run in here (``training``: those its backend
    trains in, ``zoo.modes_of``), and the ``Skipped`` that says why the others cannot
    (``zoo.mode_unavailable``: torch.compile without a compiler), if any."""
    runnable, skip = [], None
    for mode in zoo.modes_of(name, modes):
        reason = zoo.mode_unavailable(name, mode)
        if reason is None:
            runnable.append(mode)
        else:
            skip = Skipped(name, "all", f"{mode} mode: {reason}")
    return tuple(runnable), skip


def backend_skips(backends: Iterable[str] | None) -> list[Skipped]:
    """One ``Skipped`` per backend of ``backends`` (``--backend`` names; None: every one) that
    is not installed, giving the command that installs it."""
    return [
        Skipped(
            zoo.BACKENDS[b].option,
            "all",
            f"the {b} backend is not installed; install it with: {zoo.BACKENDS[b].install}",
        )
        for b in zoo.missing_backends(zoo.parse_backends(backends))
    ]


def _chosen_model(names: Iterable[str]) -> ModelPath | None:
    """The loss path ``model`` audits, when it is among ``names``."""
    return zoo.model_path(zoo.MODEL) if zoo.MODEL in tuple(names) else None


def model_description(names: Iterable[str]) -> str | None:
    """The loss path ``model`` audits, spelled (``ModelPath.describe()``), when it is among
    ``names``; None otherwise."""
    path = _chosen_model(names)
    return None if path is None else path.describe()


def ignored_rows(labels: np.ndarray, names: Iterable[str]) -> np.ndarray | None:
    """The rows (a mask) whose labels ``model``'s loss ignores (``ignore_class``), when
    ``model`` is among ``names``: class labels (any integer, -1 included) or one-hot rows of
    that class. None when nothing is ignored."""
    path = _chosen_model(names)
    if path is None or path.ignore_class is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels == path.ignore_class
    if not 0 <= path.ignore_class < labels.shape[-1]:
        return None
    return (labels[:, path.ignore_class] == 1) & (labels.sum(axis=1) == 1)


def smoothing_for(batch: Batch, names: Iterable[str], label_smoothing: float = 0.0) -> float:
    """The label smoothing ``batch`` is graded with (``round_to``): ``label_smoothing``, or,
    when ``model`` is among ``names``, its loss's own label_smoothing (the reference and every
    implementation score the smoothed labels; the model's loss, as Keras' losses with a
    ``label_smoothing`` argument and torch's ``F.cross_entropy``, smooths them itself).

    Rows of the class ``model``'s loss ignores (``ignore_class``) are refused: Keras returns 0
    and no gradient for them, by design, so they have nothing to grade; ``check`` leaves them
    out before (``ignored_rows``).
    """
    path = _chosen_model(names)
    if path is None:
        return label_smoothing
    if label_smoothing:
        raise ConfigError(
            "--label-smoothing applies to --impl; the model's loss smooths as it was saved "
            f"(label_smoothing={path.label_smoothing:g})"
        )
    if path.ignore_class is not None and batch.classes is not None:
        rows = np.flatnonzero(batch.classes == path.ignore_class)
        if rows.size:
            raise InputError(
                f"{describe_rows(rows)} have class {path.ignore_class}, which the model's "
                f"loss ignores (ignore_class={path.ignore_class}); audit labels without it, "
                "or run `xentaudit check`, which leaves them out"
            )
    return path.label_smoothing


def labels_skip(
    name: str,
    classes: np.ndarray | None,
    names: Iterable[str],
    smoothing: float = 0.0,
    rejected: int | None = None,
) -> str | None:
    """Why implementation ``name`` cannot run on labels of the classes ``classes`` (None: soft
    labels) smoothed by ``smoothing`` (``smoothing_for``), or None when it can: one that takes
    class labels needs them, and no smoothing, which makes them soft (no sparse loss takes a
    smoothing argument). ``rejected``: an --ignore-class value outside [0, C) (``rejected_class``),
    on which TensorFlow's sparse kernel raises unless the loss takes it (``Impl.ignores``)."""
    impl = zoo.get_impl(name)
    if (
        rejected is not None
        and impl.needs_classes
        and not impl.ignores
        and impl.backend == "tensorflow"
    ):
        return (
            f"raises on rows of the ignored class {rejected}, outside the classes "
            "(TensorFlow's CPU kernel: InvalidArgumentError; a GPU returns NaN): leave the "
            "ignored rows out before calling it"
        )
    if not impl.needs_classes or (classes is not None and not smoothing):
        return None
    path = _chosen_model(names)
    if path is not None and path.label_smoothing:
        return (
            "takes class labels and no label smoothing, and the model's loss smooths them "
            f"(label_smoothing={path.label_smoothing:g})"
        )
    if smoothing:
        return (
            f"takes class labels and no label smoothing of its own, and --label-smoothing "
            f"{smoothing:g} makes them soft"
        )
    return "needs one-hot or integer labels"


def rejected_class(
    ignore_class: int | None, classes: int, labels: np.ndarray | None = None
) -> int | None:
    """``ignore_class`` when it lies outside [0, ``classes``) (-100: what a sparse kernel that
    does not take it rejects) and, given the class ``labels``, some row has it; else None."""
    if ignore_class is None or 0 <= ignore_class < classes:
        return None
    return ignore_class if labels is None or (labels == ignore_class).any() else None


def counted_mean(
    outcome: Outcome, exact_mean: float, diluted_mean: float, spacing: float
) -> tuple[str, ...]:
    """``ignored-counted`` when the implementation's own mean (``Outcome.mean``) is off the
    exact mean over the rows kept by more than float32's loss tolerance (``RTOL_ULPS`` eps_32
    max(|mean|, 1)) and the output dtype's ``spacing`` there, and nearer the mean over every row,
    ignored ones with loss 0 (``diluted_mean``): it divides by the ignored rows too."""
    own = outcome.mean
    if own is None or not math.isfinite(own) or not math.isfinite(exact_mean):
        return ()
    tolerance = RTOL_ULPS * FORMATS["float32"].eps * max(abs(exact_mean), 1.0)
    off = abs(own - exact_mean)
    if off > max(tolerance, spacing) and abs(own - diluted_mean) < off:
        return ("ignored-counted",)
    return ()


def policy_variants(
    policies: Iterable[str], chosen: Iterable[Variant]
) -> list[tuple[str, Variant]]:
    """Every variant under every policy, in order; ``model`` once, under its own policy
    (``zoo.runs_under``): ``--policy`` does not rebuild a saved model."""
    pairs = itertools.product(policies, chosen)
    return list(dict.fromkeys((zoo.runs_under(v.impl, p), v) for p, v in pairs))


@dataclass(eq=False)
class Graded:
    """A run's outcome, without its gradient, and its grades, graded when first asked for.

    The gradient's row maxima were taken as soon as the implementation had run in the modes
    asked for together (``run_shared``), so that it is not kept; the rest waits for
    ``grades``. ``check`` grades the runs on a chunk in one dtype (and labels) back to back
    once they have all run: numpy's many small calls then find their code and data in the
    caches, which a framework's run in between evicts (a default ``check --backend tf`` of
    4096 x 32000 on 2 cores spent 0.65 s in the rest of grading and in its tallies between
    runs, 0.18 s after them).
    """

    outcome: Outcome
    largest: float | None  # ``max_loss_scale``, if a loss scale was given
    _grade: Callable[[], Grades] = field(repr=False)  # holds the batch: not for a repr

    @cached_property
    def grades(self) -> Grades:
        return self._grade()


Runs = dict[tuple[str, float, str, str | None, bool], Graded]


def run_shared(
    runs: Runs,
    variant: Variant,
    modes: Sequence[str],
    rounded: Rounded,
    rtol: float | None,
    timeout: float | None,
    policy: str,
    loss_scale: float | None,
    mean: bool = False,
) -> list[Graded]:
    """``run_graded`` in each of ``modes`` under ``policy`` (gradient of ``loss_scale`` times
    the loss; None: 1), and with a ``loss_scale``, ``max_loss_scale`` too, as a ``Graded`` per
    mode: the gradients' row maxima taken once the modes have run, the rest of the grading
    when ``grades`` is first read; once per distinct computation on ``rounded``: an
    implementation without Keras layers computes the same under every policy, so ``runs`` (a
    cache for one rounded batch) hands back its first run. ``mean``: as for ``run_graded``.

    The modes' gradients are compared with the exact one in one pass (``grad_errors``), which
    reads the exact gradient once for them all; so the gradients of the earlier modes are held
    while the later ones run (``check``'s chunks: one more chunk's gradient; on a whole batch,
    ask for one mode at a time). The outcomes come without their gradients, which their row
    maxima sum up, let go before any further run: ``runs`` would otherwise hold the batch's
    gradients of every implementation at once."""
    name = variant.impl
    keys = {mode: (name, variant.eps, mode, zoo.computes_in(name, policy), mean) for mode in modes}
    scale = 1.0 if loss_scale is None else loss_scale
    fresh = {
        mode: _run(name, variant.eps, mode, rounded, timeout, policy, scale, mean)
        for mode in modes
        if keys[mode] not in runs
    }
    maxima = grad_errors([outcome.grad for outcome in fresh.values()], rounded.ref.grad)
    # the gradients let go before any further run (``max_loss_scale``)
    fresh = {mode: replace(outcome, grad=None) for mode, outcome in fresh.items()}
    for (mode, outcome), row_maxima in zip(fresh.items(), maxima, strict=True):
        largest = None
        if loss_scale is not None:
            largest = max_loss_scale(variant, mode, rounded, timeout, policy)
        grading = _grading(name, outcome, row_maxima, rounded, rtol, policy)
        runs[keys[mode]] = Graded(outcome, largest, grading)
    return [runs[keys[mode]] for mode in modes]


def max_loss_scale(
    variant: Variant, mode: str, rounded: Rounded, timeout: float | None, policy: str
) -> float:
    """The largest power-of-two loss scale 2^e (0 <= e <= ``MAX_SCALE_LOG2``) at which the
    gradient of the scaled loss is finite on every row of ``rounded``; 0 when it is not finite
    even unscaled.

    A binary search over e: it assumes a gradient finite at one scale is finite at every
    smaller power of two, which holds because scaling by a power of two rounds nothing until a
    value overflows (or leaves the subnormal range, where TensorFlow flushes it anyway).
    """

    def finite(log2: int) -> bool:
        outcome = _run(variant.impl, variant.eps, mode, rounded, timeout, policy, 2.0**log2)
        return bool(np.isfinite(outcome.grad).all())

    if not finite(0):
        return 0.0
    low, high = 0, MAX_SCALE_LOG2 + 1  # finite at 2^low; not finite at 2^high (or past the range)
    while high - low > 1:
        middle = (low + high) // 2
        if finite(middle):
            low = middle
        else:
            high = middle
    return 2.0**low


def mean_spacing(output_dtype: str, exact_mean: float) -> float:
    """The spacing of ``output_dtype`` at ``exact_mean`` (NaN for a dtype xentaudit does not
    know, or an exact mean that is not finite)."""
    out = FORMATS.get(output_dtype)
    if out is None or not math.isfinite(exact_mean):
        return math.nan
    return float(out.ulp(np.array([exact_mean]))[0])


def coarse_mean(outcome: Outcome, exact_mean: float) -> tuple[float, tuple[str, ...]]:
    """The spacing of the implementation's output dtype at the exact mean, and the flags its
    returned mean fires: ``nan`` or ``inf`` where it is not finite and the exact mean is (the
    scalar the optimizer sees: a float16 mean overflows where every row is finite), and
    ``coarse-mean`` where it is off by more than float32's loss tolerance, ``RTOL_ULPS``
    eps_32 max(|mean|, 1), and its output dtype spaces its values wider than that tolerance (so
    the dtype, not the per-row arithmetic, is to blame: a float32 or float64 mean never
    fires)."""
    assert outcome.mean is not None, "run with mean=True"
    spacing = mean_spacing(outcome.output_dtype, exact_mean)
    if math.isnan(spacing):
        return math.nan, ()
    if not math.isfinite(outcome.mean):
        return spacing, ("nan",) if math.isnan(outcome.mean) else ("inf",)
    tolerance = RTOL_ULPS * FORMATS["float32"].eps * max(abs(exact_mean), 1.0)
    off = abs(outcome.mean - exact_mean)
    return spacing, ("coarse-mean",) if spacing > tolerance and off > tolerance else ()


def mean_grades(outcome: Outcome, rounded: Rounded) -> tuple[float, tuple[str, ...]]:
    """The flags of the implementation's own mean of its losses on ``rounded`` (run with
    ``mean=True``) against the exact mean (``coarse_mean``; with ignored rows,
    ``counted_mean``, which ``coarse-mean`` gives way to: the mean is off for the rows it
    divides by, not for its dtype), and its output dtype's spacing at the exact mean."""
    exact = rounded.exact_mean
    spacing, flags = coarse_mean(outcome, exact)
    if rounded.ignored is not None:
        diluted = exact * rounded.kept / rounded.ignored.size  # over every row
        counted = counted_mean(outcome, exact, diluted, spacing)
        if counted:
            flags = (*(f for f in flags if f != "coarse-mean"), *counted)
    return spacing, flags


def eps_values(eps: float | Iterable[float]) -> tuple[float, ...]:
    """``--eps`` as a tuple: one value or several (``clipped`` runs at each), at least one."""
    values = numbers_given(eps, "--eps must be a number or a list of numbers")
    if not values:
        raise ConfigError("--eps needs at least one value")
    # Reports name a clip by its 6 significant digits (``results.eps_text``): two values
    # that read the same there would be two results under one name, which the reports and a
    # baseline's lines could not tell apart.
    named: dict[str, float] = {}
    for value in values:
        kept = named.setdefault(eps_text(value), value)
        if kept is not value and kept != value:  # a NaN is itself: left to the range checks
            raise ConfigError(
                f"--eps {kept!r} and {value!r} read the same in reports "
                f"({eps_text(value)}); pass values that differ in their first 6 significant digits"
            )
    return tuple(named.values())  # each once: a repeat would run twice


def check_ignore(ignore_class: int | None, loss: str, names: Iterable[str]) -> None:
    """Refuse an ``ignore_class`` (--ignore-class) where it has no meaning: another loss than
    softmax (no framework's other losses take one), or with ``model``, whose loss ignores the
    class it was saved with."""
    if ignore_class is None:
        return
    if isinstance(ignore_class, bool) or not isinstance(ignore_class, int | np.integer):
        raise ConfigError(f"--ignore-class must be an integer, got {ignore_class!r}")
    if loss != "softmax":
        raise ConfigError(
            f"--ignore-class applies to --loss softmax (torch's ignore_index, Keras' "
            f"ignore_class), not to --loss {loss}"
        )
    path = _chosen_model(names)
    if path is not None:
        raise ConfigError(
            "--ignore-class applies to --impl; the model's loss ignores as it was saved "
            f"(ignore_class={path.ignore_class})"
        )


def check_callback(callback: object, what: str, takes: str) -> None:
    """Refuse a ``callback`` option (``what``) that cannot be called with ``takes``, before any
    work: it would fail mid-run, or be ignored when empty."""
    if callback is not None and not callable(callback):
        raise ConfigError(
            f"{what} must be a function taking {takes}, got a {type(callback).__name__}"
        )


def check_options(
    eps: Iterable[float],
    rtol: float | None,
    timeout: float | None = None,
    loss_scale: float | None = None,
    label_smoothing: float = 0.0,
) -> None:
    """Refuse option values that make no sense, before any work is done."""
    if not (0 <= label_smoothing < 1):
        raise ConfigError(f"--label-smoothing must lie in [0, 1), got {label_smoothing}")
    if loss_scale is not None and not (0 < loss_scale <= FORMATS["float32"].max):
        raise ConfigError(
            f"--loss-scale must be a positive number up to 3.4e38, float32's largest (training "
            f"keeps its loss scale in float32), got {loss_scale}"
        )
    for e in eps:
        if not (0 < e < 0.5):
            raise ConfigError(f"--eps must lie in (0, 0.5), got {e}")
    if rtol is not None and not (0 < rtol < math.inf):
        raise ConfigError(f"--rtol must be a positive number, got {rtol}")
    if timeout is not None and not (0 < timeout <= MAX_TIMEOUT):
        raise ConfigError(
            f"--timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}], got {timeout}"
        )


def audit(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    impls: Iterable[str] | None = EVERY,
    dtypes: Iterable[str] | None = DEFAULT_DTYPES,
    modes: Iterable[str] | None = zoo.MODES,
    eps: float | Iterable[float] = 1e-7,
    rtol: float | None = None,
    timeout: float | None = None,
    policies: Iterable[str] | None = zoo.FLOAT32_POLICY,
    loss_scale: float | None = None,
    model: str | Path | ModelPath | None = None,
    backends: Iterable[str] | None = None,
    loss: str = "softmax",
    label_smoothing: float = 0.0,
    gamma: float = 2.0,
    alpha: float | None = None,
    ignore_class: int | None = None,
) -> Audit:
    """Audit cross-entropy implementations on ``logits`` ``[..., C]`` and ``labels``.

    ``loss`` (``xentaudit.losses.LOSSES``) is the member of the family audited, against its
    exact reference, by its implementations: "softmax" (the default), "sigmoid" (``labels``
    one weight in [0, 1] per logit), "focal" or "binary-focal" (labels as for softmax or
    sigmoid), whose focusing ``gamma`` and weight ``alpha`` (None: Keras' 0.25 for focal, no
    class balancing for binary-focal) ``losses.focus_of`` takes.
    For "softmax", ``labels`` are integer classes ``[...]`` or label weights ``[..., C]``
    (one-hot or soft).
    Each implementation runs on the inputs rounded to each of ``dtypes`` (names, or ``all``: the
    dtype the logits reach the loss in), under each Keras dtype policy of ``policies``
    ("float32", "mixed_float16", "mixed_bfloat16" or ``all``: how its Keras layers compute), in
    each of ``modes`` ("eager"; "graph": ``tf.function``, ``torch.compile``, ``jax.jit``; "both";
    "training": the modes its backend trains in, ``zoo.TRAINING_MODES``), and is graded against
    the exact loss and gradient of those rounded inputs. ``eps`` is the clip of ``clipped`` (one
    value, or several: ``clipped`` runs at each); ``rtol`` overrides the loss tolerance of
    ``divergent``; ``timeout`` bounds each run of an implementation, in seconds (an
    ``ImplementationError`` past it). With ``loss_scale`` S, gradients are taken of S times the
    loss, held in the compute dtype as training holds them (overflows are
    ``grad-inf``/``grad-nan``), and each result's ``max_loss_scale`` is searched. ``model`` (a
    ``.keras`` file, or a ``ModelPath``) adds its own loss path as the implementation ``model``
    (``chosen_impls``), run under its own dtype policy.
    ``backends`` ("tf", "torch", "jax"; None: all) limit what ``all`` means to their installed
    implementations; those not installed are listed under ``skipped``. ``label_smoothing`` a
    in [0, 1): the labels are smoothed as Keras smooths them, by the implementations that take a
    smoothing argument (Keras' losses, torch's ``F.cross_entropy``), for the others before
    they run (``round_to``); the reference scores the labels smoothed exactly.
    ``ignore_class`` N (softmax, class labels): rows of class N (any integer, -100 is torch's
    convention) have no exact loss and no gradient and the exact mean is over the rest; the
    implementations that take N (torch's ``ignore_index``, Keras' ``ignore_class``) get it, the
    others the one-hot rows (zeros for a class outside [0, C)), and one that gives the rows a
    loss or whose own mean divides by them is flagged ``ignored-counted``. ``logits`` and
    ``labels`` may be numpy arrays, torch tensors or jax arrays.
    Returns an ``Audit``; prints nothing.
    """
    # None is the default; an empty list would run nothing, and pass
    modes = zoo.parse_modes(names_given(modes, "modes", zoo.MODES))
    impls = names_given(impls, "impls", EVERY, empty_ok=model is not None)  # the model's runs
    dtypes = names_given(dtypes, "dtypes", DEFAULT_DTYPES)
    policies = names_given(policies, "policies", zoo.FLOAT32_POLICY)
    backends = names_given(backends, "backends")
    eps = eps_values(eps)
    check_options(eps, rtol, timeout, loss_scale, label_smoothing)
    multi_label = get_loss(loss).labels == "multi-label"
    focus = focus_of(loss, gamma, alpha)
    names = chosen_impls(impls, model, backends, loss)
    chosen = variants(names, eps)
    formats = [get_format(d) for d in parse_dtypes(dtypes)]
    chosen_policies = zoo.parse_policies(policies)
    check_ignore(ignore_class, loss, names)
    batch = prepare(logits, labels, multi_label=multi_label, ignore_class=ignore_class)
    smoothing = smoothing_for(batch, names, label_smoothing)
    rejected = rejected_class(ignore_class, batch.shape[1], batch.classes)
    ignored = 0  # rows of the ignored class
    if ignore_class is not None and batch.classes is not None:
        ignored = int((batch.classes == ignore_class).sum())
        if ignored == batch.shape[0]:
            raise InputError(
                f"every row has the ignored class {ignore_class}, so there is nothing to audit; "
                "check the labels"
            )

    results: list[ImplResult] = []
    skipped = backend_skips(backends)
    method = "mpmath"
    for fmt in formats:
        try:
            rounded = round_to(
                batch, fmt, loss=loss, focus=focus, smoothing=smoothing, ignore_class=ignore_class
            )
        except Unrepresentable as exc:
            skipped.extend(Skipped(name, fmt.name, str(exc)) for name in names)
            continue
        ref = rounded.ref
        if ref.method != "mpmath":
            method = ref.method
        kept = slice(None) if rounded.ignored is None else ~rounded.ignored
        runs: Runs = {}
        for policy, variant in policy_variants(chosen_policies, chosen):
            name = variant.impl
            reason = labels_skip(name, batch.classes, names, smoothing, rejected)
            if reason is not None:
                skip = Skipped(name, fmt.name, reason)
                if skip not in skipped:  # once, whatever the policies
                    skipped.append(skip)
                continue
            runnable, skip = runnable_modes(name, modes)
            if skip is not None and skip not in skipped:
                skipped.append(skip)
            for mode in runnable:
                # one mode at a time: a whole batch's gradients are not held two at once
                (shared,) = run_shared(
                    runs, variant, [mode], rounded, rtol, timeout, policy, loss_scale, mean=True
                )
                outcome, g, largest = shared.outcome, shared.grades, shared.largest
                spacing, mean_flags = mean_grades(outcome, rounded)
                results.append(
                    ImplResult(
                        impl=name,
                        dtype=fmt.name,
                        mode=mode,
                        output_dtype=outcome.output_dtype,
                        eps=eps_used(name, variant.eps),
                        loss=_mean(outcome.loss[kept]),
                        reference=rounded.exact_mean,
                        loss_rows=tuple(float(v) for v in outcome.loss),
                        reference_rows=tuple(float(v) for v in ref.loss),
                        max_rel_err=worst(g.rel_err),
                        max_ulps_err=worst(g.ulps_err),
                        grad_max_abs_err=worst(g.grad_err),
                        rtol=g.rtol,
                        flags=tuple(f for f in FLAGS if f in {*g.flags(), *mean_flags}),
                        row_flags=tuple(g.row_flags()),
                        policy=policy,
                        max_loss_scale=largest,
                        returned_mean=outcome.mean,
                        mean_spacing=spacing,
                    )
                )
    if not results:
        raise nothing_audited(skipped)
    return Audit(
        batch.shape[0],
        batch.shape[1],
        method,
        tuple(results),
        tuple(skipped),
        loss_scale,
        model_description(names),
        environment({zoo.backend_of(r.impl) for r in results}),
        loss,
        ignore_class,
        ignored,
    )
