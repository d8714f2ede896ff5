"""The lint rules: one registry, from which the detector, ``--explain``, every output format and
the README's table of rules are all derived.

Each rule names the zoo implementations (``xentaudit.impls.REGISTRY``) that compute what the
flagged code computes, one per framework, so ``lint --explain`` can run the engine on them and
show where the flagged code breaks instead of asserting it.

``table()`` writes the README's table of rules (``python -c "from xentaudit.lint.rules import
table; print(table(), end='')"``); a test checks that the README holds exactly that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """One lint rule.

    ``impls`` maps a framework (``tf``, ``torch``, ``jax``; or an idiom, such as
    ``tf.nn.softmax`` for XA104) to the zoo implementation that behaves like the flagged code
    there; ``fix`` is ``"applied"`` when ``--fix`` rewrites the code (only rewrites equal to
    the original wherever the original is finite) and ``"suggested"`` when the replacement
    changes what the code computes.
    """

    code: str
    name: str
    message: str  # what is wrong, in one line
    replacement: str  # what to write instead
    impls: dict[str, str]
    fix: str
    examples: tuple[str, ...]  # flagged code, one per idiom, for the docs
    policies: tuple[str, ...] = ("float32",)  # Keras dtype policies --explain sweeps under
    modes: tuple[str, ...] = ("eager",)  # and the modes (eager, graph: inside tf.function)
    loss: str = "softmax"  # the loss (--loss) of its implementations, which --explain sweeps
    pattern: str = "seed"  # the sweep pattern --explain scales

    @property
    def title(self) -> str:
        """``XA101 log-of-softmax``: how reports and docs name the rule."""
        return f"{self.code} {self.name}"


RULES: dict[str, Rule] = {
    rule.code: rule
    for rule in (
        Rule(
            "XA101",
            "log-of-softmax",
            "log of a softmax: the softmax underflows to 0 for logits far below the row max and "
            "the log turns it into -inf (loss inf or NaN, gradient NaN)",
            "log_softmax(x) of the same framework, or the fused loss on the logits",
            {"tf": "shifted", "torch": "torch_softmax_log", "jax": "jax_softmax_log"},
            "applied",
            (
                "tf.math.log(tf.nn.softmax(x))",
                "torch.log(F.softmax(x, dim=1))",
                "x.softmax(-1).log()",
                "jnp.log(jax.nn.softmax(x))",
            ),
        ),
        Rule(
            "XA102",
            "double-softmax",
            "probabilities passed where logits are expected: the loss applies a second softmax, "
            "so it is wrong at every scale (bounded, and its gradient vanishes)",
            "pass the logits: drop the softmax (F.cross_entropy(logits, target), "
            "tf.nn.softmax_cross_entropy_with_logits(labels, logits), "
            "optax.softmax_cross_entropy(logits, labels))",
            {"tf": "double_softmax", "torch": "double_softmax", "jax": "double_softmax"},
            "suggested",
            (
                "F.cross_entropy(F.softmax(x, dim=1), y)",
                "tf.nn.softmax_cross_entropy_with_logits(y, tf.nn.softmax(x))",
                "optax.softmax_cross_entropy(jax.nn.softmax(x), y)",
                "Dense(10, activation='softmax') + CategoricalCrossentropy(from_logits=True)",
            ),
        ),
        Rule(
            "XA103",
            "clipped-probabilities",
            "log of clipped probabilities: the clip caps the loss at -log(eps) and zeroes its "
            "gradient exactly where the model is most wrong",
            "the fused loss on the logits (tf.nn.softmax_cross_entropy_with_logits(labels, "
            "logits), F.cross_entropy(logits, target), optax.softmax_cross_entropy(logits, "
            "labels))",
            {"tf": "clipped", "torch": "clipped", "jax": "clipped"},
            "suggested",
            (
                "tf.math.log(tf.clip_by_value(p, 1e-7, 1.0))",
                "torch.log(p.clamp(min=1e-7))",
                "jnp.log(jnp.clip(p, 1e-7, 1.0))",
            ),
        ),
        Rule(
            "XA104",
            "softmax-output-with-probability-loss",
            "probabilities from a softmax given to a from_logits=False Keras loss, which clips "
            "them at keras epsilon (loss capped near 16.1, gradient zero) unless Keras "
            "recovers the logits: it does from a Keras softmax layer's output under the float32 "
            "policy and from tf.nn.softmax inside tf.function, not from tf.nn.softmax in eager "
            "mode, nor under a mixed-precision policy",
            "from_logits=True on the logits: end the model with its logits and apply softmax "
            "only where probabilities are reported",
            {"tf": "keras_cce_softmax_layer", "tf.nn.softmax": "keras_cce_probs"},
            "suggested",
            (
                "model ending in Dense(10, activation='softmax'); loss_fn(y, model(x)) under "
                "tf.GradientTape",
                "keras.losses.CategoricalCrossentropy()(y, tf.nn.softmax(x))",
            ),
            policies=("float32", "mixed_bfloat16"),
            modes=("eager", "graph"),
        ),
        Rule(
            "XA105",
            "epsilon-inside-log",
            "log(p + eps) in a cross-entropy: the epsilon caps the loss at -log(eps) and "
            "biases it everywhere, like a clip",
            "the fused loss on the logits, or log_softmax(logits) where log-probabilities "
            "are needed",
            {"tf": "clipped", "torch": "clipped", "jax": "clipped"},
            "suggested",
            (
                "-tf.reduce_sum(y * tf.math.log(p + 1e-9))",
                "-(y * torch.log(p + eps)).sum(1)",
                "F.nll_loss(torch.log(p + 1e-8), y)",
            ),
        ),
        Rule(
            "XA106",
            "unshifted-log-sum-exp",
            "log(sum(exp(x))) without subtracting the max: exp overflows to inf for logits "
            "above ~88 in float32 (~11 in float16)",
            "logsumexp(x) of the same framework (tf.reduce_logsumexp, torch.logsumexp, "
            "jax.nn.logsumexp)",
            {"tf": "naive", "torch": "naive", "jax": "naive"},
            "applied",
            (
                "tf.math.log(tf.reduce_sum(tf.exp(x), axis=-1))",
                "torch.log(torch.exp(x).sum(dim=1))",
                "jnp.log(jnp.sum(jnp.exp(x), axis=-1))",
            ),
        ),
        Rule(
            "XA107",
            "log-of-sigmoid",
            "log of a sigmoid: sigmoid(x) rounds to 1 for large x and to 0 for very negative "
            "x, and the log of it (or of 1 - it) turns that into -inf (loss inf, gradient NaN)",
            "log_sigmoid(x) of the same framework (tf.math.log_sigmoid, F.logsigmoid, "
            "jax.nn.log_sigmoid), log_sigmoid(-x) for log(1 - sigmoid(x)), or the fused loss on "
            "the logits (tf.nn.sigmoid_cross_entropy_with_logits, "
            "F.binary_cross_entropy_with_logits, optax.sigmoid_binary_cross_entropy)",
            {"tf": "naive_sigmoid", "torch": "naive_sigmoid", "jax": "naive_sigmoid"},
            "suggested",
            (
                "tf.math.log(tf.sigmoid(x))",
                "torch.log(1 - torch.sigmoid(x))",
                "x.sigmoid().log()",
                "jnp.log(jax.nn.sigmoid(x))",
            ),
            loss="sigmoid",
            pattern="multilabel",
        ),
    )
}


def enabled(codes: Iterable[str] = (), ignore: Iterable[str] = ()) -> tuple[str, ...]:
    """The rule codes enabled by ``select`` (default: all) minus ``ignore``; each entry is a
    code or a prefix of codes (``XA1``), as in ruff. An entry matching no rule is a ValueError
    naming it (callers turn it into a ConfigError naming where it came from)."""
    codes, ignore = list(codes), list(ignore)
    for entry in (*codes, *ignore):
        if not any(code.startswith(entry) for code in RULES):
            raise ValueError(f"unknown rule {entry!r}; rules are {', '.join(RULES)}")
    chosen = [c for c in RULES if not codes or any(c.startswith(e) for e in codes)]
    return tuple(c for c in chosen if not any(c.startswith(e) for e in ignore))


def table() -> str:
    """The README's table of rules, in Markdown, generated from ``RULES``."""
    lines = [
        "| code | name | flags | replacement | behaves like | `--fix` |",
        "|---|---|---|---|---|---|",
    ]
    for rule in RULES.values():
        flagged = "<br>".join(f"`{e}`" for e in rule.examples)
        impls = ", ".join(f"`{n}`" for n in dict.fromkeys(rule.impls.values()))
        replacement = rule.replacement.replace("|", "\\|")
        lines.append(
            f"| {rule.code} | {rule.name} | {flagged} | {replacement} | {impls} | {rule.fix} |"
        )
    return "\n".join(lines) + "\n"
