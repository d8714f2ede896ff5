"""Result objects built by hand, so that verdicts and renderers are tested without TensorFlow:
builders, and the scenarios that tests/test_verdict.py and tests/test_reports.py share; and the
inputs and mpmath truth the backends' zoo tests share.

Flags are given per row; a result's flags are their union in ``FLAGS`` order, as the engine
reports them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import ml_dtypes
import mpmath
import numpy as np

from xentaudit.flags import FLAGS
from xentaudit.results import (
    Audit,
    BreakingPoint,
    Check,
    CheckResult,
    ImplResult,
    PatternInfo,
    Sweep,
    SweepCell,
    WorstRow,
)

F32_RTOL = 8 * 2.0**-23


def fired(row_flags: Sequence[Sequence[str]]) -> tuple[str, ...]:
    return tuple(f for f in FLAGS if any(f in flags for flags in row_flags))


def impl_result(
    impl: str,
    mode: str,
    loss_rows: Sequence[float],
    exact_rows: Sequence[float],
    row_flags: Sequence[Sequence[str]],
    *,
    dtype: str = "float32",
) -> ImplResult:
    pairs = zip(loss_rows, exact_rows, strict=True)
    rel = [abs(got - exact) / max(abs(exact), 1.0) for got, exact in pairs]
    return ImplResult(
        impl=impl,
        dtype=dtype,
        mode=mode,
        output_dtype=dtype,
        eps=None,
        loss=math.fsum(loss_rows) / len(loss_rows),
        reference=math.fsum(exact_rows) / len(exact_rows),
        loss_rows=tuple(loss_rows),
        reference_rows=tuple(exact_rows),
        max_rel_err=math.nan if any(map(math.isnan, rel)) else max(rel),
        max_ulps_err=0.0,
        grad_max_abs_err=0.0,
        rtol=F32_RTOL,
        flags=fired(row_flags),
        row_flags=tuple(tuple(flags) for flags in row_flags),
    )


def check_result(
    impl: str,
    mode: str,
    worst_rows: Sequence[WorstRow],
    *,
    rows: int = 8,
    labels: str = "file",
    dtype: str = "float32",
) -> CheckResult:
    """A result whose flags and counts are those of its ``worst_rows`` (one row each)."""
    flags = fired([w.flags for w in worst_rows])
    counts = {f: sum(f in w.flags for w in worst_rows) for f in flags}
    rel = [w.rel_err for w in worst_rows]
    return CheckResult(
        labels=labels,
        impl=impl,
        dtype=dtype,
        mode=mode,
        output_dtype=dtype,
        eps=None,
        rows=rows,
        loss_mean=math.fsum(w.loss for w in worst_rows) / rows,
        exact_mean=math.fsum(w.exact for w in worst_rows) / rows,
        flags=flags,
        flag_counts=counts,
        max_rel_err=math.nan if any(map(math.isnan, rel)) else max(rel, default=0.0),
        grad_max_abs_err=0.0,
        worst_rows=tuple(worst_rows),
        error_histogram={},
    )


# --- scenarios shared by the verdict and renderer tests ----------------------------------

CLIP = (("divergent", "grad-vanish"), ())


def compare_case() -> Audit:
    """fused: exact in both modes. clip: wrong eagerly only. naive: a large finite error on row 0
    and a NaN on row 1, the same in both modes. shifted: only its gradient vanishes, on row 1,
    while row 0 has the larger (informational) loss error. quiet: informational flags only."""
    naive = ((40.0, math.nan), (20.0, 3.0), (("divergent",), ("nan", "grad-nan")))
    results = (
        impl_result("fused", "eager", (2.0, 0.5), (2.0, 0.5), ((), ())),
        impl_result("fused", "graph", (2.0, 0.5), (2.0, 0.5), ((), ())),
        impl_result("clip", "eager", (16.25, 0.5), (30.0, 0.5), CLIP),
        impl_result("clip", "graph", (30.0, 0.5), (30.0, 0.5), ((), ())),
        impl_result("naive", "eager", *naive),
        impl_result("naive", "graph", *naive),
        impl_result(
            "shifted", "eager", (0.0, 1.0), (1e-5, 1.0), (("zero-loss",), ("grad-vanish",))
        ),
        impl_result("quiet", "eager", (0.0, 4.0), (1e-5, 4.0), (("zero-loss",), ())),
    )
    return Audit(rows=2, classes=3, reference_method="mpmath", results=results)


def check_case() -> Check:
    """keras: diverges eagerly (its graph run differs); fused: zero-loss only, both modes alike;
    naive: NaN, divergent and grad-wrong rows; shifted: grad-wrong only; the input looks like
    probabilities."""
    keras_graph = (WorstRow(2, 1e-5, 0.0, 1e-5, ("zero-loss",)), WorstRow(0, 2.0, 2.0, 0.0, ()))
    zero = (WorstRow(2, 1e-5, 0.0, 1e-5, ("zero-loss",)),)
    naive = (
        WorstRow(7, 3.0, math.nan, math.nan, ("nan", "grad-nan")),
        WorstRow(1, 20.0, 40.0, 1.0, ("divergent",)),
        WorstRow(4, 1.0, 1.0, 0.0, ("grad-wrong",)),
    )
    results = (
        check_result("keras", "eager", (WorstRow(5, 30.0, 16.25, 0.4583, CLIP[0]), *keras_graph)),
        check_result("keras", "graph", keras_graph),
        check_result("fused", "eager", zero),
        check_result("fused", "graph", zero),
        check_result("naive", "eager", naive),
        check_result("shifted", "eager", (WorstRow(3, 1.0, 1.0, 0.0, ("grad-wrong",)),)),
    )
    return Check(
        "logits.npz",
        8,
        3,
        "float32",
        "logits.npz[labels]",
        {"soft-labels-unnormalized": 3},
        results,
    )


def sweep_case() -> Sweep:
    """On one pattern, `fused` never breaks; `naive` turns NaN at scale 100 in float16."""

    def cell(impl: str, scale: float, flags: tuple[str, ...]) -> SweepCell:
        loss = math.nan if "nan" in flags else 1.0
        return SweepCell("seed", impl, None, "float16", "eager", scale, "float16", loss, 1.0,
                         0.0, 0.0, flags)  # fmt: skip

    def point(impl: str, kind: str, scale: float | None, flag: str | None) -> BreakingPoint:
        return BreakingPoint("seed", impl, None, "float16", "eager", kind, scale, flag, False)

    return Sweep(
        scales=(1.0, 100.0),
        patterns=(PatternInfo("seed", "the seed", 2, 3),),
        cells=(
            cell("fused", 1.0, ()),
            cell("fused", 100.0, ()),
            cell("naive", 1.0, ()),
            cell("naive", 100.0, ("nan", "grad-nan")),
        ),
        breaking_points=(
            point("fused", "loss", None, None),
            point("fused", "grad", None, None),
            point("naive", "loss", 100.0, "nan"),
            point("naive", "grad", 100.0, "grad-nan"),
        ),
    )


# --- the backends' zoo tests (test_torch_zoo.py, test_jax_zoo.py) ------------------------------
ZOO_DTYPES = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
}
ZOO_EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
ZOO_X = np.array([[1.0, -0.5, 2.0, 0.25], [0.25, 0.0, -1.0, 3.0], [-2.0, 1.5, 0.5, 0.0]])
ZOO_CLASSES = np.array([2, 0, 1])
ZOO_SOFT = np.array([[0.25, 0.25, 0.5, 0.0], [0.5, 0.0, 0.0, 0.5], [0.125, 0.625, 0.25, 0.0]])


def mpmath_exact(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mpmath at 40 digits: loss_i = sum_j y_ij (LSE(x_i) - x_ij), gradient softmax(x_i) sum_j
    y_ij - y_i."""
    losses, grads = [], []
    with mpmath.workdps(40):
        for row, w in zip(x.tolist(), y.tolist(), strict=True):
            lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in row))
            losses.append(float(mpmath.fsum(wj * (lse - v) for v, wj in zip(row, w, strict=True))))
            total = mpmath.fsum(w)
            grads.append(
                [float(mpmath.exp(v - lse) * total - wj) for v, wj in zip(row, w, strict=True)]
            )
    return np.array(losses), np.array(grads)
