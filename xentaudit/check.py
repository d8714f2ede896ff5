"""`check`: audit a saved logits file (``.npy``/``.npz``) chunk by chunk, as a CI gate.

Every chunk of rows goes through the audit engine (same reference, implementations, grading
and flags); per-row grades are reduced on the fly into counts per flag, the worst rows (a small
heap), an error histogram and exact sums for the means, so memory stays bounded by the chunk
whatever the file's size. Flagged rows go to the caller's ``on_flagged_row`` chunk by chunk.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from xentaudit import impls as zoo
from xentaudit.audit import (
    Graded,
    Grades,
    Progress,
    Rounded,
    Runs,
    Unrepresentable,
    Variant,
    backend_skips,
    check_callback,
    check_ignore,
    check_options,
    chosen_impls,
    eps_used,
    eps_values,
    ignored_rows,
    labels_skip,
    mean_spacing,
    model_description,
    nothing_audited,
    policy_variants,
    rejected_class,
    round_to,
    run_shared,
    runnable_modes,
    smoothing_for,
    variants,
    worst,
)
from xentaudit.choices import INPUTS, names_given
from xentaudit.dtypes import FORMATS, FloatFormat, get_format, parse_dtypes
from xentaudit.environment import environment, environment_of, subnormal_flushes
from xentaudit.errors import ConfigError, InputError, XentauditError
from xentaudit.flags import FLAGS, LINT
from xentaudit.io import (
    BAD_LOG_PROBABILITIES,
    BAD_LOGITS,
    BAD_PROBABILITIES,
    CHUNK_ENTRIES,
    SHOWN_ROWS,
    ArraySource,
    Batch,
    as_float,
    bad_log_probability_rows,
    bad_logit_rows,
    bad_probability_rows,
    describe_rows,
    open_arrays,
    prefetched,
    prepare,
    refuse_unauditable,
)
from xentaudit.losses import Focus, focus_of, get_loss
from xentaudit.results import (
    Check,
    CheckResult,
    FlaggedRow,
    ShardInfo,
    Skipped,
    WorstRow,
    reduced,
)
from xentaudit.shards import Shard, is_sharded, resolve

WORST_ROWS = 5
HISTOGRAM = (  # buckets of the relative loss error, by upper bound (NaN counts as > 1)
    ("0", 0.0),
    ("<=1e-12", 1e-12),
    ("<=1e-9", 1e-9),
    ("<=1e-6", 1e-6),
    ("<=1e-3", 1e-3),
    ("<=1", 1.0),
    (">1", math.inf),
)
FlaggedRowSink = Callable[[FlaggedRow], None]
# Every finite float64 is an integer multiple of 2^-1074, and of 2^-1126 once written as
# m 2^(e - 53) with m an integer of 53 bits and e >= -1073 (np.frexp's exponent).
_UNIT_EXPONENT = 1126
_BINCOUNT_ROWS = 1 << 25  # halves of m have at most 27 bits: 2^25 sums stay below 2^53


def default_impls(
    input_kind: str = "logits", backends: Iterable[str] | None = None, loss: str = "softmax"
) -> tuple[str, ...]:
    """Every implementation of ``loss`` of the installed ``backends`` (``--backend`` names;
    None: all) except the deliberate misuses (``double_softmax``); for a file of
    probabilities, those of them that take probabilities."""
    return tuple(
        name
        for name in zoo.parse_impls(["all"], backends, loss)
        if zoo.REGISTRY[name].family != "misuse"
        and (input_kind != "probabilities" or zoo.REGISTRY[name].on_probabilities is not None)
    )


def refuse_input_kind(
    input_kind: str,
    impls: Iterable[str],
    model: str | Path | None,
    policies: Iterable[str] | None = None,
) -> None:
    """Refuse what cannot run on a file holding ``input_kind``: before ``model`` is read."""
    if input_kind not in INPUTS:
        raise ConfigError(f"--input {input_kind!r}: expected one of {', '.join(INPUTS)}")
    if input_kind != "probabilities":
        return
    if tuple(policies or ()) not in ((), zoo.FLOAT32_POLICY):
        raise ConfigError(
            "--policy: probabilities reach the losses as saved, no Keras layer computes them; "
            "leave --policy out with --input probabilities"
        )
    if model is not None:
        raise ConfigError(
            "--input probabilities cannot go with --model: the model's loss path starts from "
            "logits; check the logits (--inputs computes them) instead"
        )
    takes_logits = [  # a user's loss takes logits, and need not be imported to know it
        n
        for n in zoo.parse_impls(impls, load=False)
        if ":" in n or zoo.get_impl(n).on_probabilities is None
    ]
    if takes_logits:
        raise ConfigError(
            f"--impl {takes_logits[0]} takes logits, not probabilities; with --input "
            f"probabilities pick from {', '.join(default_impls('probabilities'))}, "
            "double_softmax"
        )


def default_policies(file_dtype: str) -> tuple[str, ...]:
    """The Keras dtype policies ``check`` audits a file of ``file_dtype`` under: float32, and
    for a float16 or bfloat16 file (what a mixed-precision model dumps) its mixed policy too."""
    return (
        (*zoo.FLOAT32_POLICY, zoo.MIXED[file_dtype])
        if file_dtype in zoo.MIXED
        else zoo.FLOAT32_POLICY
    )


@dataclass
class _ExactMean:
    """The mean of float64 values seen a chunk at a time, correctly rounded and so independent of
    the chunking: finite values are summed exactly, as an integer count of 2^-1126, and the one
    rounding is the final division (Python's int / int rounds correctly). A NaN, or both +inf
    and -inf, make it NaN; otherwise an infinity makes it that infinity."""

    total: int = 0
    count: int = 0
    nan: bool = False
    infinities: set[float] = field(default_factory=set)

    def add(self, values: np.ndarray) -> None:
        self.count += values.size
        self.nan |= bool(np.isnan(values).any())
        infinite = np.isinf(values)
        if infinite.any():
            self.infinities.update(np.unique(values[infinite]).tolist())
        mantissa, exponent = np.frexp(values[np.isfinite(values)])
        m = (mantissa * 2.0**53).astype(np.int64)  # exact: mantissa has 53 significant bits
        shift = exponent + _UNIT_EXPONENT - 53  # value = m 2^shift units, shift >= 0
        # Per exponent, the halves of m are summed in float64 by bincount, exactly while the
        # sums stay below 2^53; then shifted into place as Python integers.
        for start in range(0, m.size, _BINCOUNT_ROWS):
            part, at = m[start : start + _BINCOUNT_ROWS], shift[start : start + _BINCOUNT_ROWS]
            high = np.bincount(at, weights=part >> 26)
            low = np.bincount(at, weights=part & (2**26 - 1))
            for s in np.flatnonzero(high.astype(bool) | low.astype(bool)):
                self.total += ((int(high[s]) << 26) + int(low[s])) << int(s)

    def merge(self, other: _ExactMean) -> None:
        """Add the values ``other`` has seen (exactly: the sums are integers)."""
        self.total += other.total
        self.count += other.count
        self.nan |= other.nan
        self.infinities |= other.infinities

    def mean(self) -> float:
        if self.nan or len(self.infinities) == 2:
            return math.nan
        if self.infinities:
            return next(iter(self.infinities))
        return self.total / (self.count << _UNIT_EXPONENT)


def _exact_losses(rounded: Rounded) -> _ExactMean:
    """The exact losses of a chunk rounded to a dtype summed exactly (but the ignored class's
    rows), for every result's ``_Tally.add``: an accumulator, unlike ``Rounded.exact_mean``."""
    summed = _ExactMean()
    exact = rounded.ref.loss
    summed.add(exact if rounded.ignored is None else exact[~rounded.ignored])
    return summed


@dataclass
class _Tally:
    """Running reduction of one implementation x dtype x mode over the chunks."""

    output_dtype: str = ""
    rows: int = 0
    counts: Counter = field(default_factory=Counter)
    max_rel_err: float = 0.0
    grad_err: float = 0.0
    worst: list[tuple[tuple[int, float, int], WorstRow]] = field(default_factory=list)
    histogram: Counter = field(default_factory=Counter)
    max_loss_scale: float | None = None  # the smallest over the chunks (None: not searched)
    loss_mean: _ExactMean = field(default_factory=_ExactMean)
    exact_mean: _ExactMean = field(default_factory=_ExactMean)
    flagged: int = 0  # rows carrying a loss or gradient flag
    label_weights: int = 1  # the most nonzero label weights of a row as graded (CheckResult)
    # the clipping epsilon the implementation applied (``eps_used``), found where it ran: the
    # process merging the results need not import its framework for Keras' own
    eps: float | None = None

    def add_scale(self, largest: float | None) -> None:
        """A chunk's largest finite loss scale: the file's is the smallest of its chunks'."""
        if largest is not None:
            known = self.max_loss_scale
            self.max_loss_scale = largest if known is None else min(known, largest)

    def merge(self, other: _Tally) -> None:
        """Add another part of the file's rows (a shard's): as if its chunks had been added."""
        self.output_dtype = other.output_dtype
        self.eps = other.eps
        self.rows += other.rows
        self.counts.update(other.counts)
        self.max_rel_err = worst(np.array([self.max_rel_err, other.max_rel_err]))
        self.grad_err = worst(np.array([self.grad_err, other.grad_err]))
        for item in other.worst:
            self._keep(item)
        self.histogram.update(other.histogram)
        self.add_scale(other.max_loss_scale)
        self.loss_mean.merge(other.loss_mean)
        self.exact_mean.merge(other.exact_mean)
        self.flagged += other.flagged
        self.label_weights = max(self.label_weights, other.label_weights)

    def _keep(self, item: tuple[tuple[int, float, int], WorstRow]) -> None:
        """Keep ``item`` if it is among the ``WORST_ROWS`` worst so far."""
        if len(self.worst) < WORST_ROWS:
            heapq.heappush(self.worst, item)
        else:
            heapq.heappushpop(self.worst, item)

    def add(
        self,
        rows: np.ndarray,
        loss: np.ndarray,
        exact: np.ndarray,
        grades: Grades,
        exact_losses: _ExactMean,
        ignored: np.ndarray | None = None,
    ) -> None:
        """Add a chunk's per-row results; ``rows``: their rows in the file; ``exact_losses``:
        the chunk's exact losses summed (``_exact_losses``, once for every result); ``ignored``: a
        mask of the rows of the ignored class, left out of the means."""
        n = loss.shape[0]
        self.rows += n
        self.loss_mean.add(loss if ignored is None else loss[~ignored])
        self.exact_mean.merge(exact_losses)
        self.flagged += int(grades.flagged.sum())
        for flag, mask in grades.masks.items():
            self.counts[flag] += int(mask.sum())
        rel = np.where(np.isnan(grades.rel_err), np.inf, grades.rel_err)
        self.max_rel_err = worst(np.array([self.max_rel_err, worst(grades.rel_err)]))
        self.grad_err = worst(np.array([self.grad_err, worst(grades.grad_err)]))
        if grades.downcast:
            self.counts["downcast"] += n
        self.counts["half-softmax"] += int(grades.half_softmax.sum())
        edges = [bound for _, bound in HISTOGRAM]
        buckets = np.bincount(np.searchsorted(edges, rel, side="left"), minlength=len(edges))
        for index in np.flatnonzero(buckets).tolist():
            self.histogram[HISTOGRAM[index][0]] += int(buckets[index])
        failing = grades.failing
        # The worst rows under one total order (failing first, then larger error, then earlier
        # row), so the K kept over all chunks do not depend on where the chunks split.
        order = np.lexsort((-rows, rel, failing))[::-1][:WORST_ROWS]
        if len(self.worst) == WORST_ROWS:  # full: only a row above the least kept gets in
            (least_failing, least_rel, least_row), _ = self.worst[0]
            above = (failing[order] > least_failing) | (
                (failing[order] == least_failing)
                & (
                    (rel[order] > least_rel)
                    | ((rel[order] == least_rel) & (-rows[order] > least_row))
                )
            )
            order = order[above]
        for i in order:
            key = (int(failing[i]), float(rel[i]), -int(rows[i]))
            row = WorstRow(
                int(rows[i]), float(exact[i]), float(loss[i]), float(grades.rel_err[i]),
                grades.flags_of(int(i)),
            )  # fmt: skip
            self._keep((key, row))


def _chunks(
    logits: ArraySource, labels: ArraySource | None, chunk_rows: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    classes = logits.shape[-1]
    rows = logits.chunks(chunk_rows, classes)
    if labels is None:
        for offset, x in zip(range(0, logits.rows, chunk_rows), rows, strict=True):
            yield offset, x, None
        return
    per_row = classes if labels.shape == logits.shape else 1
    for offset, x, y in zip(
        range(0, logits.rows, chunk_rows), rows, labels.chunks(chunk_rows, per_row), strict=True
    ):
        yield offset, x, y if per_row > 1 else y.reshape(-1)


def _validate(
    logits: ArraySource, labels: ArraySource | None, multi_label: bool, shard: bool = False
) -> None:
    """Refuse logits and labels that cannot be audited, from their headers; a ``shard`` of a
    dump may be empty (the dump may not: ``check_file``)."""
    refuse_unauditable(logits, shard)
    if logits.shape[-1] > CHUNK_ENTRIES:
        # The exact reference needs a whole row at once, and no chunk exceeds the budget.
        raise InputError(
            f"{logits.label} has rows of {logits.shape[-1]} classes; xentaudit audits rows of "
            f"at most {CHUNK_ENTRIES} classes (the exact loss needs a whole row in memory): "
            "audit a model with a smaller output layer"
        )
    if multi_label and (labels is None or labels.shape != logits.shape):
        got = "no labels" if labels is None else f"labels of shape {labels.shape}"
        raise InputError(
            f"{got} for logits of shape {logits.shape}: a multi-label loss takes one label in "
            f"[0, 1] per logit; pass --labels of the logits' shape {logits.shape}"
        )
    if labels is not None and labels.shape not in (logits.shape, logits.shape[:-1]):
        raise InputError(
            f"labels of shape {labels.shape} ({labels.label}) do not fit logits of shape "
            f"{logits.shape} ({logits.label}): pass "
            f"class indices of shape {logits.shape[:-1]} or label weights of shape {logits.shape}"
        )


def _zero_label_prob(batch: Batch, input_kind: str, ignore_class: int | None = None) -> np.ndarray:
    """Rows of probabilities (or log-probabilities) that give their label 0 (or -inf): every
    class of positive weight, or, without labels, the worst-case class (the smallest). Rows of
    the ignored class (``ignore_class``) have no label to give."""
    x = as_float(batch.logits)
    zero = x == (0 if input_kind == "probabilities" else -np.inf)
    if batch.weights is not None:
        return (zero & (batch.weights > 0)).any(axis=1)
    if batch.classes is not None:
        labelled = batch.classes != ignore_class if ignore_class is not None else True
        rows = np.flatnonzero(labelled & (batch.classes >= 0) & (batch.classes < x.shape[1]))
        out = np.zeros(x.shape[0], dtype=bool)
        out[rows] = zero[rows, batch.classes[rows]]
        return out
    return zero.any(axis=1)


def _lint(
    batch: Batch,
    fmt: FloatFormat,
    input_kind: str = "logits",
    loss: str = "softmax",
    ignore_class: int | None = None,
) -> dict[str, np.ndarray]:
    """Per lint flag: the rows of this chunk (the file's own values) it applies to.

    Sums are compared with 1 to within max(1e-4, 8 eps of the file's dtype): a float16 softmax
    output sums to 1 only to a few of its own ulps. Row minima and maxima pick the few rows that
    can be probabilities or log-probabilities; only those are summed. A file declared to hold
    probabilities (``input_kind``) is not told it looks like them, nor one of log-probabilities;
    both are told of the rows whose label they give no probability.
    """
    tol = max(1e-4, 8 * fmt.eps)
    x = as_float(batch.logits)
    top, low = x.max(axis=1), x.min(axis=1)
    if loss != "softmax":  # one logit per label: rows are not distributions, only coarse
        return {"coarse-logits": fmt.ulp(np.maximum(np.abs(top), np.abs(low))) >= 1}
    if input_kind != "logits":
        lint = {"zero-label-prob": _zero_label_prob(batch, input_kind, ignore_class)}
        if batch.weights is not None:
            lint["soft-labels-unnormalized"] = np.abs(batch.weights.sum(axis=1) - 1) > tol
        if input_kind == "log-probabilities":
            lint["coarse-logits"] = fmt.ulp(np.abs(np.where(np.isfinite(x), x, 0)).max(axis=1)) >= 1
        return lint
    probs = (low >= 0) & (top <= 1)
    if probs.any():
        probs[probs] = np.abs(x[probs].sum(axis=1, dtype=np.float64) - 1) <= tol
    logprobs = top <= 0
    if logprobs.any():
        peak = top[logprobs].astype(np.float64)
        lse = peak + np.log(np.exp(x[logprobs] - peak[:, None]).sum(axis=1))
        logprobs[logprobs] = np.abs(lse) <= tol
    finite_max = np.maximum(np.abs(top), np.abs(low)).astype(np.float64)
    if not np.isfinite(low).all():  # -inf logits: the largest finite magnitude instead
        finite_max = np.abs(np.where(np.isfinite(x), x, 0)).max(axis=1).astype(np.float64)
    lint = {
        "looks-like-probs": probs,
        "looks-like-logprobs": logprobs,
        "coarse-logits": fmt.ulp(finite_max) >= 1,
    }
    if batch.weights is not None:  # a one-hot row sums to exactly 1
        lint["soft-labels-unnormalized"] = np.abs(batch.weights.sum(axis=1) - 1) > tol
    return lint


def _flagged_rows(
    rows: np.ndarray,
    key: Key,
    eps: float | None,
    exact: np.ndarray,
    loss: np.ndarray,
    grades: Grades,
    shard: ShardInfo | None,
) -> Iterator[FlaggedRow]:
    """The rows of a chunk on which a loss or gradient flag fired, for the result ``key``
    (whose implementation clipped with ``eps``: ``eps_used``), each named in its ``shard``
    too, if any."""
    source, name, _, dtype, policy, mode = key
    for i in np.flatnonzero(grades.flagged).tolist():
        yield FlaggedRow(
            row=int(rows[i]),
            impl=name,
            eps=eps,
            dtype=dtype,
            policy=policy,
            mode=mode,
            labels=source,
            flags=grades.flags_of(i),
            exact=float(exact[i]),
            loss=float(loss[i]),
            rel_err=float(grades.rel_err[i]),
            grad_err=float(grades.grad_err[i]),
            shard=None if shard is None else shard.path,
            shard_row=None if shard is None else int(rows[i]) - shard.first_row,
        )


def _audit_chunk(
    o: CheckOptions,
    plan: _Plan,
    batch: Batch,
    rows: np.ndarray,
    summary: _Summary,
    flagged: list[Iterator[FlaggedRow]] | None,
    shard: ShardInfo | None,
) -> None:
    """Audit one chunk into ``summary``; each result's flagged rows are appended to
    ``flagged`` (unless None) in the order of the results, by row, named by ``shard`` if any."""
    # a sparse kernel that cannot take an ignored class outside [0, C) is skipped for the whole
    # file, whichever chunk holds such rows
    rejected = rejected_class(o.ignore_class, batch.shape[1])
    chosen, names = plan.settings.chosen, plan.settings.names
    where: Where = (None, None, None)  # where an error arises (``Order.error``)
    try:
        for source in plan.sources:
            where = (source, None, None)
            ignore = o.ignore_class if source == "file" else None
            refused = None if ignore is None else rejected
            if source == "file":
                labelled = batch
            else:
                # Argmax and argmin of log-probabilities and probabilities are those of logits too.
                pick = np.argmax if source == "predicted" else np.argmin
                labelled = Batch(batch.logits, None, pick(as_float(batch.logits), axis=1))
            smoothing = smoothing_for(labelled, names, o.label_smoothing)
            for fmt in plan.formats:
                where = (source, fmt.name, None)
                try:
                    rounded = round_to(
                        labelled,
                        fmt,
                        method="float64",
                        given=o.input_kind,
                        loss=o.loss,
                        focus=plan.settings.focus,
                        smoothing=smoothing,
                        ignore_class=ignore,
                    )
                except Unrepresentable as exc:
                    raise InputError(f"{exc}; drop --dtype {fmt.name} or rescale") from None
                runs: Runs = {}
                weights = 1 + int(rounded.label_extra.max(initial=0))  # a row's nonzero labels
                exact_losses = _exact_losses(rounded)
                ran: list[tuple[Where, Key, Graded]] = []  # graded once all have run (``Graded``)
                for policy, variant in policy_variants(plan.policies, chosen):
                    name = variant.impl
                    where = (source, fmt.name, (policy, name, variant.eps))
                    reason = labels_skip(name, labelled.classes, names, smoothing, refused)
                    if reason is not None:
                        summary.skip((name, fmt.name), Skipped(name, fmt.name, reason), where)
                        continue
                    runnable, skip = runnable_modes(name, o.modes)
                    if skip is not None:
                        summary.skip((name, skip.dtype), skip, where)
                    graded = run_shared(
                        runs, variant, runnable, rounded, o.rtol, o.timeout, policy, o.loss_scale
                    )
                    for mode, shared in zip(runnable, graded, strict=True):
                        key = (source, name, variant.eps, fmt.name, policy, mode)
                        if key not in summary.tallies:
                            summary.tallies[key] = _Tally(eps=eps_used(name, variant.eps))
                        ran.append((where, key, shared))
                for at, key, shared in ran:
                    where = at  # an error in grading is the run's
                    tally, outcome, grades = summary.tallies[key], shared.outcome, shared.grades
                    tally.output_dtype = outcome.output_dtype
                    tally.add(
                        rows, outcome.loss, rounded.ref.loss, grades, exact_losses, rounded.ignored
                    )
                    tally.label_weights = max(tally.label_weights, weights)
                    tally.add_scale(shared.largest)
                    if flagged is not None:
                        flagged.append(
                            _flagged_rows(
                                rows, key, tally.eps, rounded.ref.loss, outcome.loss, grades, shard
                            )
                        )

    except XentauditError as exc:
        exc.at = where  # type: ignore[attr-defined]  # completed by _audit_shard
        raise


@dataclass(frozen=True)
class CheckOptions:
    """What ``check_file`` audits, whatever the file (its keyword arguments but the callbacks,
    normalised): picklable, so that a process or a Dask worker auditing a shard sets up the
    same audit (``_settings``)."""

    impls: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    modes: tuple[str, ...] = zoo.MODES
    eps: tuple[float, ...] = (1e-7,)
    rtol: float | None = None
    chunk_rows: int | None = None
    timeout: float | None = None
    policies: tuple[str, ...] | None = None
    loss_scale: float | None = None
    model: str | None = None
    input_kind: str = "logits"
    backends: tuple[str, ...] | None = None
    loss: str = "softmax"
    label_smoothing: float = 0.0
    gamma: float = 2.0
    alpha: float | None = None
    ignore_class: int | None = None
    logits_key: str = "logits"
    labels_key: str | None = None


@dataclass(frozen=True)
class _Settings:
    """The audit ``CheckOptions`` set up, before any file is read."""

    names: tuple[str, ...]  # the implementations, ``model`` included
    chosen: tuple[Variant, ...]
    pin: bool  # no implementation named: the verdict may offer to pin one
    multi_label: bool
    focus: Focus
    split: bool = False  # each backend's implementations audited in a process of their own
    loaded: bool = True  # the users' losses are loaded (else their processes load them)


def _settings(o: CheckOptions, apart: bool = False, elsewhere: bool = False) -> _Settings:
    """Check the options and set the audit up (the model's loss path read, users' losses
    loaded), in the process that runs it. ``apart``: each backend's implementations are to be
    audited in a process of their own, which imports the users' losses of its backend: with
    several backends (``split``) they are not imported here, only the first one checked as far
    as it can be without importing it (``zoo.parse_impls``). ``elsewhere`` (--jobs,
    --scheduler): the shards may be audited in other processes, which import them; not here
    either (not ``loaded``: loaded before the audit if it runs here after all)."""
    check_options(o.eps, o.rtol, o.timeout, o.loss_scale, o.label_smoothing)
    multi_label = get_loss(o.loss).labels == "multi-label"
    focus = focus_of(o.loss, o.gamma, o.alpha)
    if o.loss != "softmax" and o.input_kind != "logits":
        raise ConfigError(
            f"--input {o.input_kind} goes with the softmax loss; a --loss {o.loss} file holds "
            "logits"
        )
    impls = o.impls if o.impls is not None else default_impls(o.input_kind, o.backends, o.loss)
    refuse_input_kind(o.input_kind, impls, o.model, o.policies)
    loaded = not (apart or elsewhere)
    names = chosen_impls(impls, o.model, o.backends, o.loss, load=loaded)
    split = apart and len(zoo.by_backend(names, str)) > 1
    if apart and not split and not elsewhere:  # audited here: loaded in order, as one process
        zoo.load_users(names)
        loaded = True
    check_ignore(o.ignore_class, o.loss, names)
    chosen = tuple(variants(names, o.eps))
    return _Settings(names, chosen, o.impls is None, multi_label, focus, split, loaded)


@dataclass(frozen=True)
class _Plan:
    """How every shard of one check is audited: what ``_settings`` and the first shard's
    header decide."""

    settings: _Settings
    formats: tuple[FloatFormat, ...]
    policies: tuple[str, ...]
    sources: tuple[str, ...]
    chunk_rows: int
    file_fmt: FloatFormat

    @cached_property
    def order(self) -> Order:
        """The order one process audits this check in, made once."""
        return Order(self)


def _plan(o: CheckOptions, settings: _Settings, logits: ArraySource, labelled: bool) -> _Plan:
    formats = tuple(get_format(d) for d in parse_dtypes(o.dtypes or [logits.dtype.name]))
    # Probabilities reach the losses as saved: no Keras layer of ours computes them.
    policies = zoo.parse_policies(
        o.policies
        or (
            default_policies(logits.dtype.name)
            if o.input_kind != "probabilities"
            else zoo.FLOAT32_POLICY
        )
    )
    chunk_rows = o.chunk_rows or max(1, CHUNK_ENTRIES // logits.shape[-1])
    sources = ("file",) if labelled else ("predicted", "worst-case")
    return _Plan(settings, formats, policies, sources, chunk_rows, FORMATS[logits.dtype.name])


Key = tuple[str, str, float, str, str, str]  # labels, impl, eps, dtype, policy, mode


# Where in one chunk a result, a skip or an error arises: labels, dtype and the run (policy,
# implementation, clip: ``--eps``), None where not yet reached (an error in reading the labels)
Where = tuple["str | None", "str | None", "tuple[str, str, float] | None"]


class Order:
    """The order one process audits a check in (``_audit_chunk``: labels, dtype, then
    ``policy_variants``; a result's modes together, in the order run), which the parts of a
    check audited apart (``parallel``) put back together: their results and skips in that
    order, their flagged rows in it within a row, and of their errors the first."""

    def __init__(self, plan: _Plan) -> None:
        pairs = policy_variants(plan.policies, plan.settings.chosen)
        self.sources = {source: i for i, source in enumerate(plan.sources)}
        self.dtypes = {fmt.name: j for j, fmt in enumerate(plan.formats)}
        self.runs = {(p, v.impl, _clip(v.impl, v.eps)): k for k, (p, v) in enumerate(pairs)}
        self.names: dict[str, int] = {}  # a name given twice is loaded at its first place
        for i, name in enumerate(plan.settings.names):
            self.names.setdefault(name, i)

    def place(self, where: Where) -> tuple[int, int, int]:
        source, dtype, run = where
        return (
            -1 if source is None else self.sources[source],
            -1 if dtype is None else self.dtypes[dtype],
            -1 if run is None else self.runs[(run[0], run[1], _clip(run[1], run[2]))],
        )

    def result(self, source: str, dtype: str, policy: str, impl: str, clip: float | None) -> tuple:
        """Where a result comes (``clip``: the key's ``--eps`` or ``eps_used``, which only
        tells the variants of an implementation clipping with ``--eps`` apart)."""
        return self.place((source, dtype, (policy, impl, clip)))

    def error(self, exc: XentauditError) -> tuple:
        """Where one process meets ``exc`` (``at``: the chunk's first row and ``Where`` in it,
        set by ``_audit_shard``): () for an error of the setting up, before any chunk, but
        loading a user's loss (``loading``, set by ``zoo.parse_impls``), which one process does
        in their order, after the rest of the setting up and before any chunk."""
        at = getattr(exc, "at", None)
        if at is not None:
            return (at[0], *self.place(at[1]))
        loading = getattr(exc, "loading", None)
        return () if loading is None else (-1, self.names.get(loading, len(self.names)))


def _clip(impl: str, eps: float | None) -> float | None:
    """``eps`` where ``impl`` clips with ``--eps`` (a variant per value), else None."""
    entry = zoo.REGISTRY.get(impl)
    return eps if entry is not None and entry.eps == "option" else None


# per --input other than logits: the rows that cannot be audited, and the message for each
_UNUSABLE = {
    "probabilities": (bad_probability_rows, BAD_PROBABILITIES),
    "log-probabilities": (bad_log_probability_rows, BAD_LOG_PROBABILITIES),
}


@dataclass
class _Summary:
    """A shard's audit, reduced: what ``_merged`` makes one ``Check`` of. Small but for
    ``flagged``, which holds the shard's flagged rows only when a Dask worker audited it (a
    local process writes them to the file the command gave it: ``spilled``)."""

    tallies: dict[Key, _Tally] = field(default_factory=dict)
    skipped: dict[tuple[str, str], Skipped] = field(default_factory=dict)
    lint: Counter = field(default_factory=Counter)
    bad: dict[str, list[np.ndarray]] = field(default_factory=dict)  # problem -> file rows
    ignored: int = 0  # rows left out (the model's ignore_class) or graded as ignored
    flagged: list[FlaggedRow] | None = None
    # or a local process wrote them to the file the command gave it, by row, then by result
    # (``parallel``: the command reads that file, not one a summary could name)
    spilled: bool = False
    # audited in another process: what that process audited with (``environment``), and
    # whether each of its backends flushed subnormals there (``subnormal_flushes``)
    environment: dict[str, str] | None = None
    flushes: dict[str, bool] | None = None
    skipped_at: dict[tuple[str, str], Where] = field(default_factory=dict)  # first met there

    def skip(self, key: tuple[str, str], skipped: Skipped, where: Where) -> None:
        self.skipped[key] = skipped
        self.skipped_at.setdefault(key, where)


def _audit_shard(
    o: CheckOptions,
    plan: _Plan,
    logits: ArraySource,
    label_source: ArraySource | None,
    shard: ShardInfo | None,
    scan_only: bool = False,
    progress: Progress | None = None,
    on_flagged_row: FlaggedRowSink | None = None,
    until: int | None = None,
) -> _Summary:
    """Audit one file (a shard whose first row is ``shard.first_row`` of the whole, or the
    whole) chunk by chunk. Every chunk is checked for unusable rows, linted and audited; once
    a bad row turns up (or with ``scan_only``), chunks are only scanned, so that the error
    names every bad row. ``progress`` gets the shard's rows done; ``until``: as for
    ``audit_shard``."""
    settings, first = plan.settings, 0 if shard is None else shard.first_row
    summary = _Summary()
    bad_rows, messages = _UNUSABLE.get(o.input_kind, (bad_logit_rows, BAD_LOGITS))
    summary.bad = {problem: [] for problem in messages}
    # per result of a chunk, its flagged rows, made one at a time as they are passed on
    flagged: list[Iterator[FlaggedRow]] | None = [] if on_flagged_row is not None else None
    chunks = _chunks(logits, label_source, plan.chunk_rows)
    # Where an error arises: the chunk's first row, and ``Where`` in it (``Order.error``)
    row = first
    try:
        for offset, x, y in prefetched(chunks):
            row = first + offset
            if until is not None and row > until:
                break
            for problem, mask in bad_rows(x).items():
                if mask.any():
                    summary.bad[problem].append(np.flatnonzero(mask) + first + offset)
                    scan_only = True
            rows = np.arange(first + offset, first + offset + x.shape[0])
            drop = None if y is None else ignored_rows(y, settings.names)
            if drop is not None and drop.any():  # as Keras' loss does: no loss, no gradient
                summary.ignored += int(drop.sum())
                x, y, rows = x[~drop], y[~drop], rows[~drop]
            if not scan_only and rows.size:
                try:
                    batch = (
                        prepare(
                            x,
                            y,
                            rows,
                            multi_label=settings.multi_label,
                            ignore_class=o.ignore_class,
                        )
                        if y is not None
                        else Batch(x, None, None)
                    )
                except InputError as exc:  # labels that cannot be audited: in which shard
                    raise InputError(
                        str(exc) if shard is None else f"{shard.path}: {exc}"
                    ) from None
                if o.ignore_class is not None and batch.classes is not None:
                    summary.ignored += int((batch.classes == o.ignore_class).sum())
                lint = _lint(batch, plan.file_fmt, o.input_kind, o.loss, o.ignore_class)
                for flag, mask in lint.items():
                    summary.lint[flag] += int(mask.sum())
                _audit_chunk(o, plan, batch, rows, summary, flagged, shard)
                if flagged and on_flagged_row is not None:
                    # by row; in a row, in the results' order (merge keeps its inputs' order)
                    for flagged_row in heapq.merge(*flagged, key=lambda f: f.row):
                        on_flagged_row(flagged_row)
                    flagged.clear()
            if progress:
                progress(min(offset + plan.chunk_rows, logits.rows), logits.rows)
            row = first + offset + plan.chunk_rows  # the next chunk's read
    except XentauditError as exc:
        exc.at = (row, getattr(exc, "at", (None, None, None)))  # type: ignore[attr-defined]
        raise
    return summary


def _opened(
    o: CheckOptions, shard: Shard, labels: np.ndarray | None
) -> tuple[ArraySource, ArraySource | None]:
    """The headers of ``shard``'s logits and labels (``labels``: an array given in memory)."""
    return open_arrays(
        shard.path, labels if shard.labels is None else shard.labels, o.logits_key, o.labels_key
    )


def audit_shard(
    o: CheckOptions,
    shard: Shard,
    info: ShardInfo,
    on_flagged_row: FlaggedRowSink | None,
    sharded: bool = True,
    until: int | None = None,
    progress: Progress | None = None,
) -> _Summary:
    """Audit one shard of a sharded check in this process (a ``--jobs`` process or a Dask
    worker), or the one file of a check whose backends are audited apart (not ``sharded``):
    the audit set up anew from ``o``, the shard's rows numbered from ``info.first_row``, its
    flagged rows passed to ``on_flagged_row`` (by row, then by result); ``until``: the chunks
    after the one that starts at this row are left out (the run's error is there: only an
    earlier one matters); ``progress`` gets the shard's rows audited, a chunk at a time."""
    settings = _settings(o)
    logits, label_source = _opened(o, shard, None)
    _validate(logits, label_source, settings.multi_label, shard=sharded)
    plan = _plan(o, settings, logits, label_source is not None)
    summary = _audit_shard(
        o,
        plan,
        logits,
        label_source,
        info if sharded else None,
        progress=progress,
        on_flagged_row=on_flagged_row,
        until=until,
    )
    summary.flushes = subnormal_flushes({zoo.backend_of(key[1]) for key in summary.tallies})
    summary.environment = environment_of(summary.flushes)
    return summary


def check_file(
    path: str | Path | Sequence[str | Path],
    *,
    labels: str | Path | np.ndarray | None = None,
    logits_key: str = "logits",
    labels_key: str | None = None,
    impls: Iterable[str] | None = None,
    dtypes: Iterable[str] | None = None,
    modes: Iterable[str] | None = zoo.MODES,
    eps: float | Iterable[float] = 1e-7,
    rtol: float | None = None,
    chunk_rows: int | None = None,
    timeout: float | None = None,
    progress: Progress | None = None,
    policies: Iterable[str] | None = None,
    loss_scale: float | None = None,
    on_flagged_row: FlaggedRowSink | None = None,
    model: str | Path | None = None,
    input_kind: str = "logits",
    backends: Iterable[str] | None = None,
    loss: str = "softmax",
    label_smoothing: float = 0.0,
    gamma: float = 2.0,
    alpha: float | None = None,
    ignore_class: int | None = None,
    jobs: int = 1,
    scheduler: str | None = None,
    apart: bool = False,
) -> Check:
    """Audit the logits saved in ``path`` (``.npy``, or ``.npz`` with ``logits_key``), or in the
    shards of a dump: several files, a folder or a glob (``shards.resolve``), audited as their
    concatenation in that order, bit for bit.

    Labels come from ``labels`` (a ``.npy`` file; for shards a file, folder or glob of them,
    paired with the shards by name; for one file, an array such as inline JSON gives), else
    from each ``.npz``'s ``labels_key`` (which it must have; None: its ``labels``, if any);
    without labels every row is audited against its predicted class and against its worst-case
    class (the smallest logit, which maximises the loss). ``impls`` default to every registered
    implementation but the deliberate misuse ``double_softmax``; ``dtypes`` to the file's own;
    ``policies`` (Keras dtype policies) to ``default_policies`` of the file's dtype.
    ``loss_scale``: as for ``audit`` (a result's ``max_loss_scale`` is its chunks' smallest).
    ``eps`` is the clip of ``clipped`` (several values: it runs at each); ``timeout`` bounds each
    run of an implementation (one chunk, dtype and mode), in seconds. Rows are read
    ``chunk_rows`` at a time (default: about 2M logits per chunk, ``CHUNK_ENTRIES``, which no
    chunk may exceed; a row of more classes is refused, since the exact reference needs whole
    rows).

    ``on_flagged_row`` is called with every row of every result on which a loss or gradient flag
    fired (``FlaggedRow``), a chunk at a time, in the same order whatever ``chunk_rows``: by row,
    then in the order of ``results``. The count is the ``Check``'s ``flagged_rows`` either way.

    ``model`` (a ``.keras`` file) audits its own loss path as the implementation ``model``
    (``audit.chosen_impls``), under its own dtype policy; with ``impls`` None the ``Check``
    gates on ``model`` alone (``gate``), the zoo beside it as alternatives.

    ``input_kind`` says what the file holds (``INPUTS``): "logits"; "log-probabilities",
    audited as logits (their softmax is the probabilities); or "probabilities", which the
    implementations that take probabilities are handed (by default every one but
    ``double_softmax``), graded against the exact loss of the given p, renormalised as Keras
    does (``audit.round_to``), with the gradient carried to the logits behind them.

    ``backends`` ("tf", "torch", "jax"; None: all): as for ``audit``. ``loss`` and
    ``label_smoothing``, ``gamma``, ``alpha``: as for ``audit``; a multi-label loss (sigmoid,
    binary-focal) needs labels of the logits' shape; a loss other than softmax takes logits.
    ``ignore_class``: as for ``audit``, on the file's class labels: its rows are graded as
    ignored (exact loss and gradient 0) and left out of the means; the implementations' own
    means are not taken here (``compare`` grades them).

    Shards are audited one after another, or in ``jobs`` local processes, or on the Dask
    cluster at ``scheduler`` (``xentaudit[dask]``; each worker reads its shards from the path
    given, so the path must be shared), which import the users' losses, this one then not (an
    error in loading one comes after the options' and the files' own, as ``apart`` says below;
    a single shard audited here loads them before it); either way each shard's summary is
    merged into the one ``Check``, and a shard that no process could audit fails the check
    (``ShardsLost``, exit code 3) naming it. With ``jobs``, ``scheduler`` or ``apart``,
    ``on_flagged_row`` gets a shard's rows once the shards before it are done, and ``progress``
    counts the rows of every part audited (a shard's, or each backend's part of one, apart): a
    chunk at a time in local processes, a shard at a time on a cluster.

    ``apart`` (as the command line does): the implementations of each backend are audited in
    a spawned process of their own, ``jobs`` at a time, so that a process imports its own
    framework (TensorFlow's also loads parts of JAX, when installed) and users' losses of its
    backend, and this one neither (it checks the first user's loss's name, prefix and file
    without importing it, before the options and the files; any other error in loading one
    comes after the options' and the files' own, and of several, it is the one one process
    meets first); the ``Check`` is the same, and so is the error (a
    process that dies: ``WorkerLost``, exit code 3, naming its backend, or ``ShardsLost``
    naming the shards of a dump). Not with ``model``, whose loss decides what every
    implementation is graded on, nor with ``labels`` given as an array, nor on a cluster,
    whose workers keep their frameworks imported.
    """
    o = CheckOptions(  # None is the default; an empty list would run nothing, and pass
        impls=names_given(impls, "impls", empty_ok=model is not None),  # the model's runs
        dtypes=names_given(dtypes, "dtypes"),
        modes=zoo.parse_modes(names_given(modes, "modes", zoo.MODES)),
        eps=eps_values(eps),
        rtol=rtol,
        chunk_rows=chunk_rows,
        timeout=timeout,
        policies=names_given(policies, "policies"),
        loss_scale=loss_scale,
        model=None if model is None else str(model),
        input_kind=input_kind,
        backends=names_given(backends, "backends"),
        loss=loss,
        label_smoothing=label_smoothing,
        gamma=gamma,
        alpha=alpha,
        ignore_class=ignore_class,
        logits_key=logits_key,
        labels_key=labels_key,
    )
    check_callback(progress, "progress", "(done, total)")
    check_callback(on_flagged_row, "on_flagged_row", "a FlaggedRow")
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    if scheduler is not None and timeout is not None:
        raise ConfigError(
            "--timeout works only in a process's main thread (SIGALRM), and Dask runs tasks in "
            "worker threads: drop --timeout with --scheduler"
        )
    in_memory = labels if isinstance(labels, np.ndarray) else None
    # Split or not, known before any file is read: a part's process imports its users' losses
    # (with their frameworks), which this one then need not; so does a shard's (--jobs,
    # --scheduler), unless the shards turn out to be one, audited here.
    settings = _settings(
        o,
        apart and scheduler is None and o.model is None and in_memory is None,
        jobs > 1 or scheduler is not None,
    )
    given = [path] if isinstance(path, (str, Path)) else list(path)
    sharded = len(given) != 1 or is_sharded(given[0])
    if in_memory is not None and (sharded or scheduler is not None):
        raise ConfigError(
            "labels given as an array go with one file audited here; save them in .npy files "
            "beside the shards"
        )
    shards = resolve(given, None if in_memory is not None else labels)
    opened = [_opened(o, shard, in_memory) for shard in shards]
    for logits, label_source in opened:
        _validate(logits, label_source, settings.multi_label, shard=sharded)
    _same_layout(opened)
    first_logits, first_labels = opened[0]
    infos, first_row = [], 0
    for shard, (logits, label_source) in zip(shards, opened, strict=True):
        described = None if label_source is None else label_source.label
        infos.append(ShardInfo(str(shard.path), described, logits.rows, first_row))
        first_row += logits.rows
    total = first_row
    if total == 0:
        raise InputError(
            f"every shard of {', '.join(str(g) for g in given)} is empty, so there is nothing to "
            "audit; check the folder or glob"
        )
    ignores = None if o.model is None else zoo.model_path(zoo.MODEL).ignore_class
    if first_labels is None and ignores is not None:
        raise ConfigError(
            f"--model's loss ignores class {ignores} (ignore_class): pass --labels, so that "
            "the rows it ignores can be left out"
        )
    if first_labels is None and ignore_class is not None:
        raise ConfigError(
            f"--ignore-class {ignore_class} marks rows by their class label: pass --labels"
        )
    plan = _plan(o, settings, first_logits, first_labels is not None)
    classes = first_logits.shape[-1]
    if chunk_rows is not None and chunk_rows < 1:
        raise ConfigError(f"--chunk-rows must be at least 1, got {chunk_rows}")
    largest = max(info.rows for info in infos)  # no chunk spans two shards
    if chunk_rows is not None and min(chunk_rows, largest) * classes > CHUNK_ENTRIES:
        raise ConfigError(
            f"--chunk-rows {chunk_rows} makes chunks of more than {CHUNK_ENTRIES} logits, the "
            f"most read at a time; pass --chunk-rows {CHUNK_ENTRIES // classes} or less"
        )

    if not settings.split and scheduler is None and (jobs == 1 or len(shards) == 1):
        if not settings.loaded:
            zoo.load_users(settings.names)
        summaries: list[_Summary] = []
        for shard_info, (logits, label_source) in zip(infos, opened, strict=True):
            shard_progress = None
            if progress is not None:

                def shard_progress(done: int, _: int, first: int = shard_info.first_row) -> None:
                    progress(first + done, total)

            summaries.append(
                _audit_shard(
                    o,
                    plan,
                    logits,
                    label_source,
                    shard_info if sharded else None,
                    scan_only=any(refused(s) for s in summaries),
                    progress=shard_progress,
                    on_flagged_row=on_flagged_row,
                )
            )
    else:
        from xentaudit import parallel

        summaries = parallel.run(
            o,
            settings.names,
            shards,
            infos,
            jobs,
            scheduler,
            on_flagged_row,
            progress,
            plan.order,
            lambda i: _audit_shard(
                o, plan, *opened[i], infos[i] if sharded else None, scan_only=True
            ),
            apart=settings.split,
            sharded=sharded,
        )
    return _merged(o, plan, given, opened, infos if sharded else (), summaries)


def refused(summary: _Summary) -> bool:
    """Whether a shard had a row that cannot be audited (later shards are only scanned)."""
    return any(rows for rows in summary.bad.values())


def _same_layout(opened: list[tuple[ArraySource, ArraySource | None]]) -> None:
    """Refuse shards that do not concatenate: other classes, dtype or kind of labels."""
    logits, labels = opened[0]

    def kind(label_source: ArraySource | None, logits: ArraySource) -> str:
        if label_source is None:
            return "no labels"
        return "label weights" if label_source.shape == logits.shape else "class labels"

    for other, other_labels in opened[1:]:
        for what, mine, theirs in (
            ("classes", logits.shape[-1], other.shape[-1]),
            ("dtype", logits.dtype.name, other.dtype.name),
            ("labels", kind(labels, logits), kind(other_labels, other)),
        ):
            if mine != theirs:
                raise InputError(
                    f"{other.label} has {what} {theirs}, {logits.label} {mine}: the shards of a "
                    "dump must concatenate; check them apart"
                )


def _shard_of(row: int, infos: Sequence[ShardInfo]) -> ShardInfo:
    """The shard holding ``row`` of the concatenation (empty shards hold none)."""
    return infos[bisect.bisect_right([i.first_row for i in infos], row) - 1]


def _where(rows: np.ndarray, infos: Sequence[ShardInfo]) -> str:
    """``rows`` of the whole, those an error message lists also named in their shards."""
    if not infos:
        return describe_rows(rows)
    named = []
    for row in rows[:SHOWN_ROWS].tolist():
        info = _shard_of(row, infos)
        named.append(f"{info.path} row {row - info.first_row}")
    return f"{describe_rows(rows)} ({', '.join(named)})"


def _in_shard(row: WorstRow, infos: Sequence[ShardInfo]) -> WorstRow:
    """``row`` named in its shard too (when the check was of shards)."""
    if not infos:
        return row
    info = _shard_of(row.row, infos)
    return replace(row, shard=info.path, shard_row=row.row - info.first_row)


def _environment(summaries: Sequence[_Summary], backends: set[str]) -> dict[str, str]:
    """What the audit ran with: this process's record, or the records of the processes that
    audited the shards, each key's distinct values joined by `` | `` (Dask workers may differ)."""
    # a shard with no results (an empty one) ran no backend: its record says nothing
    records = [s.environment for s in summaries if s.environment is not None and s.tallies]
    if not records:
        return environment(backends)
    merged: dict[str, list[str]] = {}
    for record in records:
        for key, value in record.items():
            if value not in merged.setdefault(key, []):
                merged[key].append(value)
    return {key: " | ".join(values) for key, values in merged.items()}


def _placed(key: Key) -> tuple[str, str, str, str, float]:
    """A result's key as ``Order.result`` takes it."""
    source, name, clip, dtype, policy, _ = key
    return source, dtype, policy, name, clip


def _merged(
    o: CheckOptions,
    plan: _Plan,
    given: Sequence[str | Path],
    opened: list[tuple[ArraySource, ArraySource | None]],
    infos: Sequence[ShardInfo],
    summaries: Sequence[_Summary],
) -> Check:
    """The one ``Check`` of the shards' summaries, in shard order: the same as the summary of
    their concatenation (every reduction is exact and associative), or the error naming the
    rows that cannot be audited. The results come in the order one process audits them
    (``Order``), whoever audited them."""
    settings = plan.settings
    tallies: dict[Key, _Tally] = {}
    skipped = {(s.impl, s.dtype): s for s in backend_skips(o.backends)}
    lint: Counter = Counter()
    ignored = 0
    bad: dict[str, list[np.ndarray]] = {}
    for summary in summaries:
        for key, tally in summary.tallies.items():
            tallies.setdefault(key, _Tally()).merge(tally)
        skipped.update(summary.skipped)
        lint.update(summary.lint)
        ignored += summary.ignored
        for problem, rows in summary.bad.items():
            bad.setdefault(problem, []).extend(rows)
    _, messages = _UNUSABLE.get(o.input_kind, (bad_logit_rows, BAD_LOGITS))
    for problem, rows in bad.items():
        if rows:
            where = _where(np.concatenate(rows), infos)
            raise InputError(messages[problem].format(rows=where))
    logits, label_source = opened[0]
    total = sum(source.rows for source, _ in opened)
    if ignored == total:
        what = (
            "the class the model's loss ignores "
            f"(ignore_class={zoo.model_path(zoo.MODEL).ignore_class})"
            if o.ignore_class is None
            else f"the ignored class {o.ignore_class} (--ignore-class)"
        )
        raise InputError(f"every row has {what}, so there is nothing to audit; check the labels")

    order = plan.order
    tallies = dict(sorted(tallies.items(), key=lambda kv: order.result(*_placed(kv[0]))))
    reduction = None if o.model is None else zoo.model_path(zoo.MODEL).reduction
    results = tuple(
        CheckResult(
            labels=source,
            impl=name,
            dtype=dtype,
            mode=mode,
            output_dtype=t.output_dtype,
            eps=t.eps,
            rows=t.rows,
            loss_mean=t.loss_mean.mean(),
            exact_mean=t.exact_mean.mean(),
            flags=tuple(f for f in FLAGS if t.counts.get(f)),
            flag_counts={f: t.counts[f] for f in FLAGS if t.counts.get(f)},
            max_rel_err=t.max_rel_err,
            grad_max_abs_err=t.grad_err,
            worst_rows=tuple(_in_shard(row, infos) for _, row in sorted(t.worst, reverse=True)),
            error_histogram={label: t.histogram[label] for label, _ in HISTOGRAM},
            policy=policy,
            max_loss_scale=t.max_loss_scale,
            loss_reduced=reduced(reduction, t.loss_mean.mean(), t.rows),
            exact_reduced=reduced(reduction, t.exact_mean.mean(), t.rows),
            mean_spacing=mean_spacing(t.output_dtype, t.exact_mean.mean()),
            label_weights=t.label_weights,
        )
        for (source, name, clip, dtype, policy, mode), t in tallies.items()
    )
    # the verdict judges the gate alone (the model's loss): with none of its runs, nothing
    gate = (zoo.MODEL,) if o.model is not None and settings.pin else None
    judged = [r for r in results if gate is None or r.impl in gate]
    if not judged:
        raise nothing_audited([s for s in skipped.values() if gate is None or s.impl in gate])
    names = settings.names
    if label_source is None:
        labels = "none: each row against its predicted and its worst-case class"
    elif infos:
        labels = f"{label_source.label} and the other shards' labels, paired by name"
    else:
        labels = label_source.label
    return Check(
        path=", ".join(str(g) for g in given),
        rows=total,
        classes=logits.shape[-1],
        file_dtype=logits.dtype.name,
        labels=labels,
        lint={flag: lint[flag] for flag in LINT if lint[flag]},
        results=results,
        skipped=tuple(skipped.values()),
        reference_method=get_loss(o.loss).float64_method,
        loss_scale=o.loss_scale,
        flagged_rows=sum(t.flagged for t in tallies.values()),
        gate=gate,
        model=model_description(names),
        # No implementation named and no model: the user's own loss is unknown. The fused
        # losses on logits are the ones a model most likely uses (see Check.verdict).
        pinnable=tuple(n for n in names if zoo.REGISTRY[n].fused)
        if settings.pin and o.model is None
        else (),
        input=o.input_kind,
        reduction=reduction,
        ignored_rows=ignored,
        environment=_environment(summaries, {zoo.backend_of(r.impl) for r in results}),
        loss=o.loss,
        ignore_class=o.ignore_class,
        shards=tuple(infos),
    )
