"""The flags xentaudit raises: one name per finding, what it means, and what to do about it.

Flag names are a public contract: they appear in tables, JSON, ``--fail-on`` and CI logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from xentaudit.choices import expand
from xentaudit.errors import ConfigError


@dataclass(frozen=True)
class Advice:
    """What a fired flag means and what to do instead, as every report words it."""

    meaning: str
    advice: str

    @property
    def text(self) -> str:
        """One sentence for people: ``"<meaning>. Instead: <advice>."``."""
        return f"{self.meaning}. Instead: {self.advice}."


@dataclass(frozen=True)
class Flag:
    name: str
    failing: bool  # a failing kind of flag (see FAILING); informational otherwise
    meaning: str
    advice: str

    @property
    def explained(self) -> Advice:
        return Advice(self.meaning, self.advice)


FLAGS: dict[str, Flag] = {
    f.name: f
    for f in (
        Flag(
            "nan",
            True,
            "the loss is NaN (e.g. exp overflow, or 0 * log 0 from -sum y*log(p), which every "
            "dense loss, fused ones included, computes on -inf (masked) logits)",
            "use a fused log-softmax loss such as tf.nn.softmax_cross_entropy_with_logits; with "
            "-inf masks, a sparse loss (tf.nn.sparse_softmax_cross_entropy_with_logits) or a "
            "large finite mask such as -1e9",
        ),
        Flag(
            "inf",
            True,
            "the loss is infinite where the exact loss is finite (log of an underflowed p, or a "
            "half-precision sum that overflows, such as torch's label-smoothing term over a "
            "large vocabulary in float16)",
            "compute log-probabilities as x - logsumexp(x), never log(softmax(x)); compute a "
            "float16 loss in float32 (cast the logits first)",
        ),
        Flag(
            "ignored-counted",
            True,
            "rows of the ignored class (--ignore-class) count: the implementation gives them a "
            "loss, or its own mean divides by them too (a one-hot of -100 is a row of zeros, "
            "so tf.reduce_mean averages the rows in with loss 0)",
            "pass the ignore value to the loss (F.cross_entropy(ignore_index=N), "
            "SparseCategoricalCrossentropy(ignore_class=N)), or mask the rows out and divide "
            "the sum by the number of rows kept",
        ),
        Flag(
            "divergent",
            True,
            "the loss is finite but wrong beyond the tolerance (clipping, double softmax, "
            "low-precision sums)",
            "use a fused loss on logits (tf.nn.softmax_cross_entropy_with_logits, or "
            "from_logits=True); never clip probabilities or apply softmax twice",
        ),
        Flag(
            "grad-nan",
            True,
            "the gradient contains NaN",
            "use a fused loss whose gradient is softmax(x) - y",
        ),
        Flag(
            "grad-inf",
            True,
            "the gradient contains inf",
            "use a fused loss whose gradient is softmax(x) - y",
        ),
        Flag(
            "grad-blowup",
            True,
            "a gradient entry exceeds 10x the exact bound max(sum y, 1) (d/dp log p = 1/p)",
            "differentiate through log-softmax, not through log(p)",
        ),
        Flag(
            "grad-vanish",
            True,
            "the gradient is (nearly) zero on a row whose exact gradient is clearly not: "
            "training never learns from that row",
            "do not clip probabilities: use from_logits=True",
        ),
        Flag(
            "grad-wrong",
            True,
            "the gradient is finite but wrong beyond the tolerance",
            "check for softmax applied twice or a naive formula; use a fused loss on logits",
        ),
        Flag(
            "zero-loss",
            False,
            "the loss is exactly 0 on a row whose exact loss is positive and representable "
            "(LSE(x) - x_label cancels on confident rows)",
            "informational; compute in float64 if losses this small matter to you",
        ),
        Flag(
            "downcast",
            False,
            "the implementation returns, or computes in, a narrower dtype than it was given "
            "(Keras losses compute float64 in float32; a Softmax layer under mixed_float16 "
            "computes float32 logits in float16; torch autocast hands the loss bfloat16 logits)",
            "pass dtype='float64' to the Keras loss, or keras.config.set_floatx('float64'); under "
            "a mixed policy, give the layers after the logits dtype='float32'; under torch "
            "autocast, compute the last layer in float32 if its logits' precision matters",
        ),
        Flag(
            "half-softmax",
            False,
            "a Keras Softmax layer computed in float16 or bfloat16 under a mixed-precision "
            "policy: its probabilities underflow before the float32 loss casts and clips them, "
            "and Keras cannot recover the logits",
            'keep the final activation in float32 (keras.layers.Activation("softmax", '
            'dtype="float32")), or drop it and compile with from_logits=True (Keras\' '
            "mixed-precision guide)",
        ),
        Flag(
            "coarse-mean",
            False,
            "the mean loss the implementation returns (its own reduction, in its output dtype) "
            "is off by more than float32's tolerance because that dtype is coarser there "
            "(bfloat16 spaces its values 0.25 apart at a loss of 36): the scalar the "
            "optimizer and the logs see is rounded",
            "reduce the loss in float32: cast the per-row losses to float32 before the mean, "
            "or keep the loss in float32 (Keras does; torch autocast's fp32 list does)",
        ),
        # Input lint (`check`): warnings about the file itself, usable with --fail-on.
        Flag(
            "looks-like-probs",
            False,
            "rows look like softmax outputs (in [0, 1], summing to 1), not logits: every "
            "implementation here would apply softmax to them a second time, so the audit is of "
            "the wrong numbers",
            "save the logits, the input of the final softmax (the pre-activation output of a "
            "Dense layer with activation='softmax'), and check those",
        ),
        Flag(
            "looks-like-logprobs",
            False,
            "rows look like log-probabilities (all <= 0, logsumexp = 0), not logits: a softmax "
            "loss on them is right but redundant, and the audit is of a second log-softmax",
            "save the raw logits, before the log-softmax, and check those (or, if these are "
            "what your model outputs, pass --fail-on without looks-like-logprobs)",
        ),
        Flag(
            "zero-label-prob",
            False,
            "rows give their label a probability of exactly 0 (a log-probability of -inf): the "
            "probabilities underflowed before they were saved, and their true loss and gradient "
            "cannot be recovered from the file",
            "save the logits, the input of the final softmax, and check those",
        ),
        Flag(
            "soft-labels-unnormalized",
            False,
            "soft label rows do not sum to 1, so the loss is scaled by their sum",
            "normalise the label rows (y / y.sum(-1, keepdims=True)) unless the weights are meant",
        ),
        Flag(
            "coarse-logits",
            False,
            "logits so large that the file's dtype cannot resolve differences below 1: classes "
            "within that of each other tie",
            "save the logits in a wider dtype, or subtract the row max before saving",
        ),
    )
}
LINT = (
    "looks-like-probs",
    "looks-like-logprobs",
    "zero-label-prob",
    "soft-labels-unnormalized",
    "coarse-logits",
)

FAILING = tuple(name for name, flag in FLAGS.items() if flag.failing)
# `check` fails on these unless told otherwise: every failing flag but grad-wrong (which fails it
# only when named), the lint flags that say the file holds no logits at all, and rows whose
# true loss the file cannot give.
CHECK_FAIL_ON = (
    *(name for name in FAILING if name != "grad-wrong"),
    "looks-like-probs",
    "looks-like-logprobs",
    "zero-label-prob",
)


# What a flag means and what to do about it on the other losses, where the softmax wording
# (FLAGS) would send a user to the wrong function.
_FUSED_SIGMOID = (
    "use a fused loss on logits (tf.nn.sigmoid_cross_entropy_with_logits, "
    "BinaryCrossentropy(from_logits=True), F.binary_cross_entropy_with_logits, "
    "optax.sigmoid_binary_cross_entropy)"
)
LOSS_ADVICE: dict[str, dict[str, Advice]] = {
    "sigmoid": {
        "nan": Advice(
            "the loss is NaN (0 * log 0 where sigmoid(x) rounded to 0 or 1)", _FUSED_SIGMOID
        ),
        "inf": Advice(
            "the loss is infinite where the exact loss is finite (log of a sigmoid that "
            "rounded to 0 or 1)",
            f"{_FUSED_SIGMOID}, never log(sigmoid(x))",
        ),
        "divergent": Advice(
            "the loss is finite but wrong beyond the tolerance (sigmoid clipped to eps and "
            "1 - eps, low-precision arithmetic)",
            f"{_FUSED_SIGMOID}; never clip probabilities",
        ),
        "grad-nan": Advice(
            "the gradient contains NaN",
            "use a fused loss on logits, whose gradient is sigmoid(x) - y",
        ),
    },
}


_STABLE_FOCAL = (
    "compute the focal loss from log-probabilities: log p = log_softmax(x), 1 - p = "
    "-expm1(log p), loss = -alpha sum y (1 - p)^gamma log p (Keras' "
    "CategoricalFocalCrossentropy clips p to [eps, 1-eps] even with from_logits=True)"
)
_STABLE_BINARY_FOCAL = (
    "use a focal loss on logits: optax.sigmoid_focal_loss, or "
    "BinaryFocalCrossentropy(from_logits=True); never clip the sigmoid"
)
LOSS_ADVICE["focal"] = {
    "nan": Advice("the loss is NaN (0 * log 0 where p rounded to 0)", _STABLE_FOCAL),
    "inf": Advice(
        "the loss is infinite where the exact loss is finite (log of an underflowed p)",
        _STABLE_FOCAL,
    ),
    "divergent": Advice(
        "the loss is finite but wrong beyond the tolerance (probabilities clipped to "
        "eps and 1 - eps, low-precision arithmetic)",
        _STABLE_FOCAL,
    ),
    "grad-vanish": Advice(
        "the gradient is (nearly) zero on a row whose exact gradient is clearly not: training "
        "never learns from that row",
        _STABLE_FOCAL,
    ),
}
LOSS_ADVICE["binary-focal"] = {
    **LOSS_ADVICE["sigmoid"],
    "divergent": Advice(LOSS_ADVICE["sigmoid"]["divergent"].meaning, _STABLE_BINARY_FOCAL),
    "inf": Advice(LOSS_ADVICE["sigmoid"]["inf"].meaning, _STABLE_BINARY_FOCAL),
    "nan": Advice(LOSS_ADVICE["sigmoid"]["nan"].meaning, _STABLE_BINARY_FOCAL),
}


def explained(name: str, loss: str = "softmax") -> Advice:
    """What flag ``name`` means and what to do about it, worded for ``loss``."""
    return LOSS_ADVICE.get(loss, {}).get(name, FLAGS[name].explained)


def fail_on_flags(fail_on: Iterable[str] | str, what: str = "fail_on") -> tuple[str, ...]:
    """The flag names ``fail_on`` gives, in order, without repeats: a string is one comma list
    (never its characters), ``all`` every flag, ``none`` or "" no flag. Anything else is a
    ``ConfigError`` naming ``what``: an unknown name, a typo, would fail on nothing."""
    values = [fail_on] if isinstance(fail_on, str) else fail_on
    try:
        values = list(values)
    except TypeError:
        raise ConfigError(f"{what} must be flag names, got {fail_on!r}") from None
    if not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{what} must be flag names, got {fail_on!r}")
    parts = [p.strip() for v in values for p in v.split(",")]
    return expand([p for p in parts if p not in ("", "none")], list(FLAGS), f"flag in {what}")
