"""`check`: audit a saved logits file (``.npy``/``.npz``) chunk by chunk, as a CI gate.

Every chunk of rows goes through the audit engine (same reference, implementations, grading
and flags); per-row grades are reduced on the fly into counts per flag, the worst rows (a small
heap), an error histogram and exact sums for the means, so memory stays bounded by the chunk
whatever the file's size. Flagged rows go to the caller's ``on_flagged_row`` chunk by chunk.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xentaudit import impls as zoo
from xentaudit.audit import (
    Grades,
    Runs,
    Unrepresentable,
    Variant,
    backend_skips,
    check_ignore,
    check_options,
    chosen_impls,
    eps_used,
    eps_values,
    ignored_rows,
    labels_skip,
    mean_spacing,
    model_description,
    policy_variants,
    rejected_class,
    round_to,
    run_shared,
    runnable_modes,
    smoothing_for,
    variants,
    worst,
)
from xentaudit.dtypes import FORMATS, FloatFormat, get_format, parse_dtypes
from xentaudit.environment import environment
from xentaudit.errors import ConfigError, InputError
from xentaudit.flags import FLAGS, LINT
from xentaudit.io import (
    BAD_LOG_PROBABILITIES,
    BAD_LOGITS,
    BAD_PROBABILITIES,
    CHUNK_ENTRIES,
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
)
from xentaudit.losses import NO_FOCUS, Focus, focus_of, get_loss
from xentaudit.results import Check, CheckResult, FlaggedRow, Skipped, WorstRow, reduced

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
Progress = Callable[[int, int], None]
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
    if input_kind not in zoo.INPUTS:
        raise ConfigError(f"--input {input_kind!r}: expected one of {', '.join(zoo.INPUTS)}")
    if input_kind != "probabilities":
        return
    if tuple(policies or ()) not in ((), ("float32",)):
        raise ConfigError(
            "--policy: probabilities reach the losses as saved, no Keras layer computes them; "
            "leave --policy out with --input probabilities"
        )
    if model is not None:
        raise ConfigError(
            "--input probabilities cannot go with --model: the model's loss path starts from "
            "logits; check the logits (--inputs computes them) instead"
        )
    takes_logits = [n for n in zoo.parse_impls(impls) if zoo.get_impl(n).on_probabilities is None]
    if takes_logits:
        raise ConfigError(
            f"--impl {takes_logits[0]} takes logits, not probabilities; with --input "
            f"probabilities pick from {', '.join(default_impls('probabilities'))}, "
            "double_softmax"
        )


def default_policies(file_dtype: str) -> tuple[str, ...]:
    """The Keras dtype policies ``check`` audits a file of ``file_dtype`` under: float32, and
    for a float16 or bfloat16 file (what a mixed-precision model dumps) its mixed policy too."""
    return ("float32", zoo.MIXED[file_dtype]) if file_dtype in zoo.MIXED else ("float32",)


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
        self.infinities.update(np.unique(values[np.isinf(values)]).tolist())
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

    def mean(self) -> float:
        if self.nan or len(self.infinities) == 2:
            return math.nan
        if self.infinities:
            return next(iter(self.infinities))
        return self.total / (self.count << _UNIT_EXPONENT)


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

    def add_scale(self, largest: float | None) -> None:
        """A chunk's largest finite loss scale: the file's is the smallest of its chunks'."""
        if largest is not None:
            known = self.max_loss_scale
            self.max_loss_scale = largest if known is None else min(known, largest)

    def add(
        self,
        rows: np.ndarray,
        loss: np.ndarray,
        exact: np.ndarray,
        grades: Grades,
        ignored: np.ndarray | None = None,
    ) -> None:
        """Add a chunk's per-row results; ``rows``: their rows in the file; ``ignored``: a mask
        of the rows of the ignored class, left out of the means."""
        n = loss.shape[0]
        self.rows += n
        kept = slice(None) if ignored is None else ~ignored
        self.loss_mean.add(loss[kept])
        self.exact_mean.add(exact[kept])
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
        bucket = np.searchsorted(edges, rel, side="left")
        for index, count in zip(*np.unique(bucket, return_counts=True), strict=True):
            self.histogram[HISTOGRAM[int(index)][0]] += int(count)
        failing = grades.failing
        # The worst rows under one total order (failing first, then larger error, then earlier
        # row), so the K kept over all chunks do not depend on where the chunks split.
        order = np.lexsort((-rows, rel, failing))[::-1][:WORST_ROWS]
        for i in order:
            key = (int(failing[i]), float(rel[i]), -int(rows[i]))
            row = WorstRow(
                int(rows[i]), float(exact[i]), float(loss[i]), float(grades.rel_err[i]),
                grades.flags_of(int(i)),
            )  # fmt: skip
            if len(self.worst) < WORST_ROWS:
                heapq.heappush(self.worst, (key, row))
            else:
                heapq.heappushpop(self.worst, (key, row))


def _label_sources(labels: ArraySource | None) -> tuple[str, ...]:
    return ("file",) if labels is not None else ("predicted", "worst-case")


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


def _validate(logits: ArraySource, labels: ArraySource | None, multi_label: bool) -> None:
    if logits.dtype.name not in FORMATS:
        raise InputError(
            f"{logits.label} has dtype {logits.dtype}; logits must be float16, bfloat16, "
            "float32 or float64 (cast them before saving)"
        )
    if len(logits.shape) < 2 or logits.shape[-1] < 1 or logits.rows == 0:
        raise InputError(
            f"{logits.label} has shape {logits.shape}; logits must be [..., classes] with at "
            "least one row (a 1-D array is one row: save it as x[None])"
        )
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
            f"labels of shape {labels.shape} do not fit logits of shape {logits.shape}: pass "
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
    key: tuple[str, str, float, str, str, str],
    exact: np.ndarray,
    loss: np.ndarray,
    grades: Grades,
) -> Iterator[FlaggedRow]:
    """The rows of a chunk on which a loss or gradient flag fired, for the result ``key``."""
    source, name, clip, dtype, policy, mode = key
    for i in np.flatnonzero(grades.flagged).tolist():
        yield FlaggedRow(
            row=int(rows[i]),
            impl=name,
            eps=eps_used(name, clip),
            dtype=dtype,
            policy=policy,
            mode=mode,
            labels=source,
            flags=grades.flags_of(i),
            exact=float(exact[i]),
            loss=float(loss[i]),
            rel_err=float(grades.rel_err[i]),
            grad_err=float(grades.grad_err[i]),
        )


def _audit_chunk(
    batch: Batch,
    rows: np.ndarray,
    sources: tuple[str, ...],
    formats: list[FloatFormat],
    policies: tuple[str, ...],
    chosen: list[Variant],
    modes: tuple[str, ...],
    rtol: float | None,
    timeout: float | None,
    loss_scale: float | None,
    tallies: dict[tuple[str, str, float, str, str, str], _Tally],
    skipped: dict[tuple[str, str], Skipped],
    flagged: list[FlaggedRow] | None,
    input_kind: str = "logits",
    loss: str = "softmax",
    label_smoothing: float = 0.0,
    focus: Focus = NO_FOCUS,
    ignore_class: int | None = None,
) -> None:
    """Audit one chunk into ``tallies``; its flagged rows are appended to ``flagged`` (unless
    None) in the order of the results. ``ignore_class``: --ignore-class, on the file's labels."""
    # a sparse kernel that cannot take an ignored class outside [0, C) is skipped for the whole
    # file, whichever chunk holds such rows
    rejected = rejected_class(ignore_class, batch.shape[1])
    for source in sources:
        ignore = ignore_class if source == "file" else None
        refused = None if ignore is None else rejected
        if source == "file":
            labelled = batch
        else:
            # Argmax and argmin of log-probabilities and probabilities are those of logits too.
            pick = np.argmax if source == "predicted" else np.argmin
            labelled = Batch(batch.logits, None, pick(as_float(batch.logits), axis=1))
        names = [v.impl for v in chosen]
        smoothing = smoothing_for(labelled, names, label_smoothing)
        for fmt in formats:
            try:
                rounded = round_to(
                    labelled,
                    fmt,
                    method="float64",
                    given=input_kind,
                    loss=loss,
                    focus=focus,
                    smoothing=smoothing,
                    ignore_class=ignore,
                )
            except Unrepresentable as exc:
                raise InputError(f"{exc}; drop --dtype {fmt.name} or rescale") from None
            runs: Runs = {}
            weights = 1 + int(rounded.label_extra.max(initial=0))  # a row's nonzero labels
            for policy, variant in policy_variants(policies, chosen):
                name = variant.impl
                reason = labels_skip(name, labelled.classes, names, smoothing, refused)
                if reason is not None:
                    skipped[(name, fmt.name)] = Skipped(name, fmt.name, reason)
                    continue
                runnable, skip = runnable_modes(name, modes)
                if skip is not None:
                    skipped[(name, skip.dtype)] = skip
                for mode in runnable:
                    outcome, grades, largest = run_shared(
                        runs, variant, mode, rounded, rtol, timeout, policy, loss_scale
                    )
                    key = (source, name, variant.eps, fmt.name, policy, mode)
                    tally = tallies.setdefault(key, _Tally())
                    tally.output_dtype = outcome.output_dtype
                    tally.add(rows, outcome.loss, rounded.ref.loss, grades, rounded.ignored)
                    tally.label_weights = max(tally.label_weights, weights)
                    tally.add_scale(largest)
                    if flagged is not None:
                        flagged.extend(
                            _flagged_rows(rows, key, rounded.ref.loss, outcome.loss, grades)
                        )


def check_file(
    path: str | Path,
    *,
    labels: str | Path | np.ndarray | None = None,
    logits_key: str = "logits",
    labels_key: str = "labels",
    impls: Iterable[str] | None = None,
    dtypes: Iterable[str] | None = None,
    modes: Iterable[str] = zoo.MODES,
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
) -> Check:
    """Audit the logits saved in ``path`` (``.npy``, or ``.npz`` with ``logits_key``).

    Labels come from ``labels`` (a ``.npy`` file, or an array such as inline JSON gives), else
    from the ``.npz``'s ``labels_key``;
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

    ``input_kind`` says what the file holds (``zoo.INPUTS``): "logits"; "log-probabilities",
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
    """
    modes = tuple(modes)
    eps = eps_values(eps)
    check_options(eps, rtol, modes, timeout, loss_scale, label_smoothing)
    multi_label = get_loss(loss).labels == "multi-label"
    focus = focus_of(loss, gamma, alpha)
    if loss != "softmax" and input_kind != "logits":
        raise ConfigError(
            f"--input {input_kind} goes with the softmax loss; a --loss {loss} file holds logits"
        )
    pin = impls is None  # no implementation named: the verdict may offer to pin one
    impls = impls if impls is not None else default_impls(input_kind, backends, loss)
    refuse_input_kind(input_kind, impls, model, policies)
    names = chosen_impls(impls, model, backends, loss)
    check_ignore(ignore_class, loss, names)
    chosen = variants(names, eps)
    logits, label_source = open_arrays(
        Path(path),
        labels if labels is None or isinstance(labels, np.ndarray) else Path(labels),
        logits_key,
        labels_key,
    )
    _validate(logits, label_source, multi_label)
    model_loss_path = zoo.model_path(zoo.MODEL) if model is not None else None
    ignores = None if model_loss_path is None else model_loss_path.ignore_class
    if label_source is None and ignores is not None:
        raise ConfigError(
            f"--model's loss ignores class {ignores} (ignore_class): pass --labels, so that "
            "the rows it ignores can be left out"
        )
    if label_source is None and ignore_class is not None:
        raise ConfigError(
            f"--ignore-class {ignore_class} marks rows by their class label: pass --labels"
        )
    formats = [get_format(d) for d in parse_dtypes(dtypes or [logits.dtype.name])]
    # Probabilities reach the losses as saved: no Keras layer of ours computes them.
    chosen_policies = zoo.parse_policies(
        policies
        or (default_policies(logits.dtype.name) if input_kind != "probabilities" else ("float32",))
    )
    classes = logits.shape[-1]
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ENTRIES // classes)
    if chunk_rows < 1:
        raise ConfigError(f"--chunk-rows must be at least 1, got {chunk_rows}")
    if min(chunk_rows, logits.rows) * classes > CHUNK_ENTRIES:
        raise ConfigError(
            f"--chunk-rows {chunk_rows} makes chunks of more than {CHUNK_ENTRIES} logits, the "
            f"most read at a time; pass --chunk-rows {CHUNK_ENTRIES // classes} or less"
        )

    # One pass: every chunk is checked for unusable rows, linted and audited. Once a bad row
    # turns up, the rest of the file is only scanned, so that the error names every bad row.
    lint: Counter = Counter()
    file_fmt = FORMATS[logits.dtype.name]
    tallies: dict[tuple[str, str, float, str, str, str], _Tally] = {}
    skipped = {(s.impl, s.dtype): s for s in backend_skips(backends)}
    sources = _label_sources(label_source)
    flagged: list[FlaggedRow] | None = [] if on_flagged_row is not None else None
    refused = False
    ignored = 0  # rows of the class the model's loss ignores, left out
    bad_rows, messages = {
        "probabilities": (bad_probability_rows, BAD_PROBABILITIES),
        "log-probabilities": (bad_log_probability_rows, BAD_LOG_PROBABILITIES),
    }.get(input_kind, (bad_logit_rows, BAD_LOGITS))
    bad: dict[str, list[np.ndarray]] = {problem: [] for problem in messages}
    for offset, x, y in prefetched(_chunks(logits, label_source, chunk_rows)):
        for problem, mask in bad_rows(x).items():
            if mask.any():
                bad[problem].append(np.flatnonzero(mask) + offset)
                refused = True
        rows = np.arange(offset, offset + x.shape[0])
        drop = None if y is None else ignored_rows(y, names)
        if drop is not None and drop.any():  # as Keras' loss does: no loss, no gradient
            ignored += int(drop.sum())
            x, y, rows = x[~drop], y[~drop], rows[~drop]
        if not refused and rows.size:
            batch = (
                prepare(x, y, rows, multi_label=multi_label, ignore_class=ignore_class)
                if y is not None
                else Batch(x, None, None)
            )
            if ignore_class is not None and batch.classes is not None:
                ignored += int((batch.classes == ignore_class).sum())
            for flag, mask in _lint(batch, file_fmt, input_kind, loss, ignore_class).items():
                lint[flag] += int(mask.sum())
            _audit_chunk(
                batch,
                rows,
                sources,
                formats,
                chosen_policies,
                chosen,
                modes,
                rtol,
                timeout,
                loss_scale,
                tallies,
                skipped,
                flagged,
                input_kind,
                loss,
                label_smoothing,
                focus,
                ignore_class,
            )
            if flagged and on_flagged_row is not None:
                flagged.sort(key=lambda f: f.row)  # stable: results keep their order in a row
                for row in flagged:
                    on_flagged_row(row)
                flagged.clear()
        if progress:
            progress(min(offset + chunk_rows, logits.rows), logits.rows)
    for problem, rows in bad.items():
        if rows:
            raise InputError(messages[problem].format(rows=describe_rows(np.concatenate(rows))))
    if ignored == logits.rows:
        what = (
            f"the class the model's loss ignores (ignore_class={ignores})"
            if ignore_class is None
            else f"the ignored class {ignore_class} (--ignore-class)"
        )
        raise InputError(f"every row has {what}; nothing to audit")

    reduction = None if model is None else zoo.model_path(zoo.MODEL).reduction
    results = tuple(
        CheckResult(
            labels=source,
            impl=name,
            dtype=dtype,
            mode=mode,
            output_dtype=t.output_dtype,
            eps=eps_used(name, clip),
            rows=t.rows,
            loss_mean=t.loss_mean.mean(),
            exact_mean=t.exact_mean.mean(),
            flags=tuple(f for f in FLAGS if t.counts.get(f)),
            flag_counts={f: t.counts[f] for f in FLAGS if t.counts.get(f)},
            max_rel_err=t.max_rel_err,
            grad_max_abs_err=t.grad_err,
            worst_rows=tuple(row for _, row in sorted(t.worst, reverse=True)),
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
    return Check(
        path=str(path),
        rows=logits.rows,
        classes=classes,
        file_dtype=logits.dtype.name,
        labels=label_source.label
        if label_source is not None
        else "none: each row against its predicted and its worst-case class",
        lint={flag: lint[flag] for flag in LINT if lint[flag]},
        results=results,
        skipped=tuple(skipped.values()),
        reference_method=get_loss(loss).float64_method,
        loss_scale=loss_scale,
        flagged_rows=sum(t.flagged for t in tallies.values()),
        gate=(zoo.MODEL,) if model is not None and pin else None,
        model=model_description(names),
        # No implementation named and no model: the user's own loss is unknown. The fused
        # losses on logits are the ones a model most likely uses (see Check.verdict).
        pinnable=tuple(n for n in names if zoo.REGISTRY[n].fused) if pin and model is None else (),
        input=input_kind,
        reduction=reduction,
        ignored_rows=ignored,
        environment=environment({zoo.backend_of(r.impl) for r in results}),
        loss=loss,
        ignore_class=ignore_class,
    )
