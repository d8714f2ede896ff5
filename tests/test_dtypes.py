"""ulp and casting of the four formats, against numpy's own spacing and bit patterns."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from xentaudit.dtypes import FORMATS, parse_dtypes
from xentaudit.errors import ConfigError

VALUES = np.array([1.0, 30.0, 4.1e-9, 1e-40, 6e-5, 0.75, 32768.0, 2.0**-20])  # below every max


@pytest.mark.parametrize("name", ["float16", "float32", "float64"])
def test_ulp_matches_numpy_spacing(name: str) -> None:
    fmt = FORMATS[name]
    cast = fmt.cast(VALUES)
    expected = np.spacing(cast).astype(np.float64)  # numpy's spacing of the rounded value
    assert np.array_equal(fmt.ulp(cast.astype(np.float64)), expected)


def test_bfloat16_ulp_is_the_gap_to_the_next_bit_pattern() -> None:
    fmt = FORMATS["bfloat16"]
    cast = fmt.cast(VALUES)
    bits = cast.view(np.uint16)
    following = (bits + 1).view(ml_dtypes.bfloat16).astype(np.float64)
    assert np.array_equal(fmt.ulp(cast.astype(np.float64)), following - cast.astype(np.float64))


def test_ulp_of_zero_is_the_smallest_subnormal() -> None:
    assert FORMATS["float32"].ulp(np.array([0.0]))[0] == 2.0**-149
    assert FORMATS["float16"].ulp(np.array([0.0]))[0] == 2.0**-24


def test_constants_match_the_standard() -> None:
    # IEEE 754 binary16/32/64 and bfloat16 (8-bit significand, float32's exponent range).
    assert FORMATS["float16"].max == 65504.0 and FORMATS["float16"].tiny == 2.0**-14
    assert FORMATS["bfloat16"].eps == 2.0**-7 and FORMATS["bfloat16"].tiny == 2.0**-126
    assert FORMATS["float64"].eps == np.finfo(np.float64).eps


def test_parse_dtypes_expands_all_and_rejects_unknown() -> None:
    assert parse_dtypes(["float64", "all"]) == ("float64", "float16", "bfloat16", "float32")
    assert parse_dtypes(["float16,float32"]) == ("float16", "float32")
    with pytest.raises(ConfigError, match="unknown dtype 'float8'"):
        parse_dtypes(["float8"])
