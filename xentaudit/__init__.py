"""xentaudit: the numerical-stability auditor for cross-entropy.

The public Python API. Importing it imports nothing heavy (no numpy, no TensorFlow: the command
line's --help stays fast); each name imports its module when first used, and running an audit
imports the frameworks it runs.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
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

# where each name of the API comes from (as imported above for type checkers); the others of
# __all__ but __version__ come from xentaudit.results
_HOMES = {
    name: module
    for module, names in {
        "xentaudit.audit": ("audit",),
        "xentaudit.check": ("check_file",),
        "xentaudit.ema": ("Ema", "ema"),
        "xentaudit.errors": ("XentauditError",),
        "xentaudit.flags": ("Advice",),
        "xentaudit.sweep": ("sweep",),
    }.items()
    for name in names
}


def __getattr__(name: str) -> Any:
    """An API name, imported from its module on first use (PEP 562)."""
    module = _HOMES.get(name, "xentaudit.results" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module 'xentaudit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """This package. Importing a submodule binds it to the package's attribute of its name, so
    ``import xentaudit.audit`` (which the command line does when it runs) would make
    ``xentaudit.audit`` the module: the API's ``audit``, ``ema`` and ``sweep`` stay the
    functions, as they were when this package imported them eagerly."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in __all__ and isinstance(value, types.ModuleType):
            return  # the submodule stays in sys.modules, where `from xentaudit.audit import` looks
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
