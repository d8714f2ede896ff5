"""xentaudit: the numerical-stability auditor for cross-entropy.

The public Python API. Importing it never imports TensorFlow; running an audit does.
"""

from __future__ import annotations

__version__ = "0.1.0"

from xentaudit.audit import audit
from xentaudit.check import check_file
from xentaudit.ema import Ema, ema
from xentaudit.errors import XentauditError
from xentaudit.flags import Advice
from xentaudit.results import (
    SCHEMA_VERSION,
    Audit,
    BreakingPoint,
    Check,
    CheckResult,
    Comparison,
    FailingResult,
    FlaggedRow,
    FrameworkDifference,
    ImplResult,
    ModeDifference,
    RowAtRisk,
    Skipped,
    Sweep,
    SweepCell,
    Verdict,
    WorstRow,
)
from xentaudit.sweep import sweep

__all__ = [
    "SCHEMA_VERSION",
    "Advice",
    "Audit",
    "BreakingPoint",
    "Check",
    "CheckResult",
    "Comparison",
    "Ema",
    "FailingResult",
    "FlaggedRow",
    "FrameworkDifference",
    "ImplResult",
    "ModeDifference",
    "RowAtRisk",
    "Skipped",
    "Sweep",
    "SweepCell",
    "Verdict",
    "WorstRow",
    "XentauditError",
    "__version__",
    "audit",
    "check_file",
    "ema",
    "sweep",
]
