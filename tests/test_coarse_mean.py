"""coarse-mean: the scalar an implementation returns, in its own output dtype, against the exact
mean; values derived here from the dtypes' spacings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xentaudit import audit
from xentaudit.audit import RTOL_ULPS, coarse_mean
from xentaudit.impls import Outcome

EPS32 = 2.0**-23


@pytest.fixture(scope="module")
def near_36():
    # logits exact in bfloat16; the label's lies 36 below two tied maxima: the exact loss is
    # 36 + log(2 + e^-36) = 36.6931..., between the bfloat16 values 36.5 and 36.75 (spacing
    # 0.25 in [32, 64))
    x = np.array([[0.0, 0.0, -36.0]])
    return audit(x, np.array([2]), dtypes=["bfloat16"], modes=["eager"])


def test_a_bfloat16_mean_near_36_is_coarse_and_a_float32_one_is_not(near_36) -> None:
    returned = {r.impl: r for r in near_36.results}
    assert {r.output_dtype for r in near_36.results} == {"bfloat16", "float32"}
    for r in near_36.results:
        assert r.reference == pytest.approx(36 + math.log(2), rel=2.0**-52)
        if r.output_dtype == "bfloat16":
            assert r.mean_spacing == 0.25  # 2^(5 - 7): bfloat16 keeps 8 significant bits
            assert "coarse-mean" in r.flags, r.impl
        else:
            assert r.mean_spacing == 2.0**-18  # 2^(5 - 23)
            assert "coarse-mean" not in r.flags, r.impl
    # the fused losses are right to their dtype: 36.69 rounds to 36.75 in bfloat16
    assert returned["tf_softmax_xent"].returned_mean == 36.75
    assert returned["keras_cce_logits"].returned_mean == pytest.approx(
        36 + math.log(2), abs=2.0**-18
    )


def outcome(mean: float, dtype: str) -> Outcome:
    return Outcome(np.zeros(1), np.zeros((1, 1)), dtype, mean)


@pytest.mark.parametrize("exact", [36.125, 0.5, 1e3])
def test_coarse_mean_fires_past_float32s_tolerance_from_both_sides(exact: float) -> None:
    tolerance = RTOL_ULPS * EPS32 * max(exact, 1.0)  # 8 eps_32 max(|mean|, 1)
    assert coarse_mean(outcome(exact + 1.01 * tolerance, "float16"), exact)[1]
    assert not coarse_mean(outcome(exact + 0.99 * tolerance, "float16"), exact)[1]
    # a float32 result is never to blame on its dtype: its spacing is under the tolerance
    assert not coarse_mean(outcome(exact + 10 * tolerance, "float32"), exact)[1]
    assert coarse_mean(outcome(exact, "float32"), exact)[0] <= tolerance


def test_check_reports_the_output_dtypes_spacing_at_the_exact_mean(tmp_path) -> None:
    # the same rows in a bfloat16 file: check grades rows, not a returned mean (its chunks are
    # no batch, and its results never depend on their size); it reports how coarse a mean in
    # each output dtype is at the file's exact mean, whatever the chunks
    from xentaudit import check_file

    np.save(tmp_path / "x.npy", np.tile([[0.0, 0.0, -36.0]], (6, 1)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.full(6, 2))
    for chunk_rows in (2, 6):
        result = check_file(tmp_path / "x.npy", labels=tmp_path / "y.npy", chunk_rows=chunk_rows,
                            dtypes=["bfloat16"], modes=["eager"],
                            impls=["tf_softmax_xent", "keras_cce_logits"])  # fmt: skip
        fused, keras_ = result.results
        assert (fused.output_dtype, keras_.output_dtype) == ("bfloat16", "float32")
        assert (fused.mean_spacing, keras_.mean_spacing) == (0.25, 2.0**-18)
