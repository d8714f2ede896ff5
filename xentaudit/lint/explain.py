"""`lint --explain CODE`: what the flagged code computes and where it breaks, measured now by
the engine (``sweep``) on the rule's zoo implementations, and the fix."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

from xentaudit import impls as zoo
from xentaudit.dtypes import FORMATS
from xentaudit.errors import ConfigError
from xentaudit.lint.rules import RULES
from xentaudit.results import BreakingPoint, point_label, scale_label

# A short sweep, so --explain answers in seconds: the rule's pattern (Rule.pattern: the seed, two
# rows of three classes, for the softmax rules) scaled by 1 ... 1e4, each breaking point then
# refined by bisection between the scales.
SCALES = (1.0, 10.0, 100.0, 1e3, 1e4)
WIDTH = 100  # prose is wrapped to the width of the README's code blocks
EPS = 1e-7  # keras.config.epsilon()'s default, the clip the flagged code most often uses


def stand_ins(code: str) -> dict[str, list[str]]:
    """The implementations ``--explain`` runs for rule ``code``, each with those it stands in
    for: the rule's own where their backend is installed, else the TensorFlow one computing
    the same formula (``Impl.formula``); one whose twin is unknown is left out. An unknown
    ``code`` is a ConfigError."""
    if code not in RULES:
        raise ConfigError(f"--explain: unknown rule {code!r}; rules are {', '.join(RULES)}")
    chosen: dict[str, list[str]] = {}
    for name in dict.fromkeys(RULES[code].impls.values()):
        impl = zoo.REGISTRY[name]
        if zoo.installed(impl.backend):
            chosen.setdefault(name, [])
            continue
        twins = [
            other.name
            for other in zoo.REGISTRY.values()
            if impl.formula is not None
            and other.formula == impl.formula
            and other.backend == "tensorflow"
        ]
        if twins:
            chosen.setdefault(twins[0], []).append(name)
    return chosen


def _wrap(text: str, first: str = "", rest: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest)


def _table(
    points: Iterable[BreakingPoint],
    impls: list[str],
    policies: tuple[str, ...],
    modes: tuple[str, ...],
) -> list[str]:
    """One row per implementation, policy, mode and dtype (policy and mode shown only when
    several were swept): where the loss and the gradient break."""
    by_key = {(p.impl, p.policy, p.mode, p.dtype, p.kind): p for p in points}
    dtypes = list(FORMATS)
    rows = sorted(
        {key[:4] for key in by_key},
        key=lambda r: (
            impls.index(r[0]),
            policies.index(r[1]),
            modes.index(r[2]),
            dtypes.index(r[3]),
        ),
    )
    table = [("impl", "policy", "mode", "dtype", "loss breaks at", "gradient breaks at")]
    table += [
        (*row, _point(by_key.get((*row, "loss"))), _point(by_key.get((*row, "grad"))))
        for row in rows
    ]
    shown = [0, *([1] if len(policies) > 1 else []), *([2] if len(modes) > 1 else []), 3, 4, 5]
    table = [tuple(row[i] for i in shown) for row in table]
    widths = [max(len(row[i]) for row in table) for i in range(len(shown))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


def _point(point: BreakingPoint | None) -> str:
    if point is None or point.scale is None:
        return f"none up to {scale_label(SCALES[-1])}"
    at = f"<= {scale_label(point.scale)}" if point.at_start else point_label(point)
    return f"{at} ({point.flag})"


def explain(code: str) -> str:
    """The text of ``lint --explain code``; runs the engine on the rule's implementations."""
    from xentaudit.grid import make_pattern
    from xentaudit.sweep import sweep

    runs = stand_ins(code)
    rule = RULES[code]
    lines = [rule.title, "", *_wrap(f"What is wrong: {rule.message}."), "", "Flags, for example:"]
    lines += [f"  {example}" for example in rule.examples]
    lines += ["", "Behaves like (the zoo implementations computing the same thing):"]
    for name, instead in runs.items():
        impl = zoo.REGISTRY[name]
        also = f" (standing in for {', '.join(instead)}: backend not installed)" if instead else ""
        lines += _wrap(f"{name}: {impl.describe()['summary']}{also}", "  ", "    ")
    result = sweep(
        impls=list(runs),
        dtypes=["all"],
        patterns=[rule.pattern],
        modes=rule.modes,
        scales=SCALES,
        eps=(EPS,),
        policies=rule.policies,
        loss=rule.loss,
    )
    pattern = make_pattern(rule.pattern)
    clip = f", clip eps {EPS:g}" if any(p.eps for p in result.breaking_points) else ""
    modes = " and ".join(rule.modes)
    lines += [
        "",
        *_wrap(
            f"Breaking points, computed now: the smallest scale s at which the logits s * "
            f"{pattern.description} break the loss or its gradient ({modes} mode{clip}):"
        ),
        *_table(result.breaking_points, list(runs), rule.policies, rule.modes),
    ]
    action = (
        "--fix applies it"
        if rule.fix == "applied"
        else "suggested only: it changes what the code computes"
    )
    lines += ["", *_wrap(f"Fix ({action}): {rule.replacement}.")]
    return "\n".join(lines) + "\n"
