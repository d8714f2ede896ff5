"""xentaudit: the numerical-stability auditor for cross-entropy.

The public Python API. Importing it imports nothing heavy (no numpy, no TensorFlow: the command
line's --help stays fast); each name imports its module when first used, and running an audit
imports the frameworks it runs.
"""

from __future__ import annotations

import importlib
import importlib.util
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
    """An API name, imported from its module on first use (PEP 562); or a submodule, as
    ``xentaudit.reference`` after ``import xentaudit`` (importing it binds it here)."""
    module = _HOMES.get(name, "xentaudit.results" if name in __all__ else None)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The API, the module's own dunders and the submodules imported so far."""
    own = {n for n, v in globals().items() if getattr(v, "__name__", "") == f"{__name__}.{n}"}
    return sorted({*__all__, *own, *(n for n in globals() if n.startswith("__"))})


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
