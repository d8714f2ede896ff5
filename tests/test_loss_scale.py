"""Loss scaling: gradients of S times the loss, held in the compute dtype as training holds
them. Expected rows and scales come from closed forms: float16 rounds a value to inf from
65504 + 16 = 65520 (half its last ulp, 32, past its largest number), and scaling by a power of
two rounds nothing until then."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit import audit, check_file, sweep
from xentaudit.audit import MAX_SCALE_LOG2
from xentaudit.cli import cli

FLOAT16_OVERFLOW = 65520.0  # the smallest real number float16 rounds to inf
# Rows whose largest exact gradient entry G = max_j |softmax(x)_j - y_j| is far (relatively)
# from every 65520 / 2^e: 1 - 9e-14 (a confident wrong row), 2/3 (a uniform row), about 0.27.
LOGITS = np.array([[30.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 1.0, 0.0]])
CLASSES = np.array([1, 0, 0])


def largest_gradient_entry() -> np.ndarray:
    e = np.exp(LOGITS - LOGITS.max(axis=1, keepdims=True))
    return np.abs(e / e.sum(axis=1, keepdims=True) - np.eye(3)[CLASSES]).max(axis=1)


def test_a_float32_loss_on_float16_logits_overflows_where_s_times_g_reaches_65520() -> None:
    # keras_cce_logits casts float16 logits to float32: the gradient is exact in float32 and
    # overflows only when cast back to the logits' float16.
    g = largest_gradient_entry()
    for log2 in range(14, 19):
        scale = 2.0**log2
        # No borderline row: the float32 gradient is within a few float32 ulps (1e-7) of g.
        assert np.all(np.abs(scale * g / FLOAT16_OVERFLOW - 1) > 1e-5)
        result = audit(
            LOGITS,
            CLASSES,
            impls=["keras_cce_logits"],
            dtypes=["float16"],
            modes=["eager"],
            loss_scale=scale,
        )
        (r,) = result.results
        expected = {i for i in range(3) if scale * g[i] >= FLOAT16_OVERFLOW}
        assert {i for i, flags in enumerate(r.row_flags) if "grad-inf" in flags} == expected
        assert all(f in ("grad-inf",) for flags in r.row_flags for f in flags)
        largest = 2.0 ** math.floor(math.log2(FLOAT16_OVERFLOW / g.max()))
        assert r.max_loss_scale == largest == 2.0**15
        assert result.loss_scale == scale


def test_a_float16_loss_cannot_take_a_scale_float16_cannot_hold() -> None:
    # tf_softmax_xent computes in float16: the scale reaches its backward pass rounded to
    # float16, where 2^16 > 65504 is inf, whatever the gradient; 2^15 is always fine (|g| < 1).
    for scale, largest in ((2.0**15, 2.0**15), (2.0**16, 2.0**15)):
        (r,) = audit(
            LOGITS,
            CLASSES,
            impls=["tf_softmax_xent"],
            dtypes=["float16"],
            modes=["graph"],
            loss_scale=scale,
        ).results
        assert r.max_loss_scale == largest
        broken = [bool({"grad-inf", "grad-nan"} & set(flags)) for flags in r.row_flags]
        assert broken == [scale > 65504] * 3


def test_float32_gradients_stay_finite_over_the_whole_search() -> None:
    # |S g| <= 2^64 is far below float32's 3.4e38: the search ends at its ceiling.
    (r,) = audit(
        LOGITS, CLASSES, impls=["keras_cce_logits"], modes=["eager"], loss_scale=2.0**15
    ).results
    assert r.max_loss_scale == 2.0**MAX_SCALE_LOG2 and not r.flags


def test_a_gradient_that_is_never_finite_has_no_scale() -> None:
    (r,) = audit(
        [[100.0, 0.0]], [1], impls=["naive"], modes=["eager"], loss_scale=1.0
    ).results  # exp(100) overflows float32: NaN unscaled
    assert "grad-nan" in r.flags and r.max_loss_scale == 0.0


def test_a_scale_of_one_changes_nothing_but_the_search() -> None:
    plain = audit(LOGITS, CLASSES, impls=["keras_cce_probs"], dtypes=["float16"])
    scaled = audit(LOGITS, CLASSES, impls=["keras_cce_probs"], dtypes=["float16"], loss_scale=1)
    for a, b in zip(plain.results, scaled.results, strict=True):
        assert a.max_loss_scale is None and b.max_loss_scale is not None
        assert (a.flags, a.row_flags, a.grad_max_abs_err) == (
            b.flags,
            b.row_flags,
            b.grad_max_abs_err,
        )


def test_check_reports_the_smallest_scale_over_its_chunks(tmp_path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, logits=LOGITS.astype(np.float16), labels=CLASSES)
    g = largest_gradient_entry()
    for chunk_rows in (1, 3):
        result = check_file(
            path,
            impls=["keras_cce_logits"],
            modes=["eager"],
            policies=["float32"],
            loss_scale=2.0**16,
            chunk_rows=chunk_rows,
        )
        (r,) = result.results
        assert r.flag_counts == {"grad-inf": int((2.0**16 * g >= FLOAT16_OVERFLOW).sum())}
        assert r.max_loss_scale == 2.0**15


# 3.5e38: past float32's largest, 3.4028e38 (training keeps its loss scale in float32); it
# would overflow the cast of the gradient's divisor
@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "3.5e38"])
def test_cli_refuses_a_scale_that_is_no_positive_number(value: str) -> None:
    out = CliRunner().invoke(cli, ["compare", "--loss-scale", value])
    assert out.exit_code == 2 and out.stderr.count("\n") == 1 and "--loss-scale" in out.stderr


def test_cli_json_and_table_carry_the_scale(tmp_path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, logits=LOGITS.astype(np.float16), labels=CLASSES)
    args = ["check", str(path), "--impl", "keras_cce_logits", "--mode", "eager"]
    args += ["--policy", "float32", "--loss-scale", "65536"]
    runner = CliRunner()
    doc = json.loads(runner.invoke(cli, [*args, "--format", "json"]).stdout)
    assert doc["loss_scale"] == 65536 and doc["results"][0]["max_loss_scale"] == 2.0**15
    table = runner.invoke(cli, args)
    assert table.exit_code == 1  # grad-inf fails the gate
    assert "max scale" in table.stdout and "2^15" in table.stdout
    junit = runner.invoke(cli, [*args, "--format", "junit"]).stdout
    assert '<property name="max_loss_scale" value="2^15" />' in junit


def test_the_markdown_summary_carries_the_scale(tmp_path) -> None:
    from xentaudit.report import markdown

    path = tmp_path / "x.npz"
    np.savez(path, logits=LOGITS.astype(np.float16), labels=CLASSES)
    scaled = check_file(
        path, impls=["keras_cce_logits"], modes=["eager"], policies=["float32"], loss_scale=2.0**16
    )
    text = markdown.render(scaled, ["grad-inf"])
    assert "| max scale |" in text and "| 2^15 |" in text
    plain = check_file(path, impls=["keras_cce_logits"], modes=["eager"], policies=["float32"])
    assert "max scale" not in markdown.render(plain, ["grad-inf"])


def test_sweep_takes_gradients_of_the_scaled_loss() -> None:
    kwargs = {"dtypes": ["float16"], "impls": ["tf_softmax_xent"], "patterns": ["seed"]}
    for scale, broken in ((2.0**15, False), (2.0**16, True)):  # 2^16 is inf in float16
        result = sweep(scales=[1.0], modes=["eager"], loss_scale=scale, **kwargs)
        (cell,) = result.cells
        assert result.loss_scale == scale
        assert bool({"grad-inf", "grad-nan"} & set(cell.flags)) is broken
