"""The four floating-point formats xentaudit audits, with the constants the grading needs.

Formats are described by their significand precision ``p`` (bits, implicit bit included) and the
exponent of their smallest normal number, as in IEEE 754-2019 (bfloat16: same exponent range as
float32, 8-bit significand). No TensorFlow here: bfloat16 arrays come from ``ml_dtypes``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from xentaudit.choices import expand, unknown
from xentaudit.errors import ConfigError


@dataclass(frozen=True)
class FloatFormat:
    """A floating-point format: its name, numpy dtype and precision constants."""

    name: str
    numpy: np.dtype
    precision: int  # significand bits, implicit bit included
    min_exponent: int  # smallest normal number is 2**min_exponent

    @property
    def eps(self) -> float:
        """Machine epsilon: the spacing of the format just above 1."""
        return 2.0 ** (1 - self.precision)

    @property
    def tiny(self) -> float:
        """Smallest positive normal number (TensorFlow on CPU flushes anything smaller to 0)."""
        return 2.0**self.min_exponent

    @property
    def max(self) -> float:
        """Largest finite number of the format."""
        return float(ml_dtypes.finfo(self.numpy).max)

    def cast(self, values: np.ndarray) -> np.ndarray:
        """Round ``values`` to this format (round to nearest even; too large: inf)."""
        with np.errstate(over="ignore"):
            return np.asarray(values).astype(self.numpy)

    def ulp(self, values: np.ndarray) -> np.ndarray:
        """Unit in the last place of this format at each of ``values`` (float64 array).

        ulp(v) = 2**(max(e, min_exponent) - p + 1) with e = floor(log2|v|); at 0 and in the
        subnormal range this is the subnormal spacing. Infinite values get an infinite ulp.
        """
        v = np.abs(np.asarray(values, dtype=np.float64))
        with np.errstate(invalid="ignore"):
            _, e = np.frexp(np.where(np.isfinite(v), v, 1.0))  # v = f * 2**e, f in [0.5, 1)
        exponent = np.maximum(np.where(v > 0, e - 1, self.min_exponent), self.min_exponent)
        return np.where(np.isfinite(v), np.ldexp(1.0, exponent - self.precision + 1), np.inf)


FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        FloatFormat("float16", np.dtype(np.float16), 11, -14),
        FloatFormat("bfloat16", np.dtype(ml_dtypes.bfloat16), 8, -126),
        FloatFormat("float32", np.dtype(np.float32), 24, -126),
        FloatFormat("float64", np.dtype(np.float64), 53, -1022),
    )
}


def get_format(name: str) -> FloatFormat:
    """Look a format up by name, with a clear error for an unknown one."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(unknown("dtype", name, FORMATS)) from None


def parse_dtypes(names: Iterable[str]) -> tuple[str, ...]:
    """Expand dtype names (comma lists allowed; ``all`` is every format), in order, no repeats."""
    return expand(names, list(FORMATS), "dtype")


def dtype_label(dtype: str, policy: str) -> str:
    """A dtype and the Keras dtype policy it ran under: ``float16 [mixed_float16]``; the bare
    dtype under the default policy, float32."""
    return dtype if policy == "float32" else f"{dtype} [{policy}]"
