"""pytest plugin: the ``xentaudit`` fixture and the ``@pytest.mark.xentaudit(...)`` marker.

Installed as a ``pytest11`` entry point, so pytest loads it in every project that has
xentaudit installed: it imports nothing but pytest here, and ``xentaudit.testing`` (and the
backend's framework) only when a test uses the fixture.

    @pytest.mark.xentaudit(dtypes=["float32", "bfloat16"], scales="0.1:100:7")
    def test_my_loss(xentaudit):
        xentaudit(my_loss)  # assert_stable(my_loss, dtypes=..., scales=...)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

MARKER = "xentaudit"
# assert_stable's keyword options, spelled here so that a typo in a marker is caught without
# importing xentaudit.testing at collection time (tests/test_testing.py keeps the two equal).
OPTIONS = (
    "backend",
    "dtypes",
    "scales",
    "patterns",
    "fail_on",
    "modes",
    "classes",
    "rtol",
    "timeout",
    "loss_scale",
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, so that ``--strict-markers`` accepts it and ``--markers`` lists
    it."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**options): defaults for the xentaudit fixture's call, any keyword option of "
        f"xentaudit.testing.assert_stable ({', '.join(OPTIONS)}); the marker closest to the test "
        "wins, and the call's own keywords win over every marker",
    )


def marker_options(node: pytest.Item) -> dict[str, Any]:
    """The options the ``xentaudit`` markers on ``node`` set: module, class, then function, the
    closest winning. Positional arguments and unknown options fail the test at set-up."""
    options: dict[str, Any] = {}
    for mark in reversed(list(node.iter_markers(MARKER))):  # farthest first
        if mark.args:
            pytest.fail(
                f"@pytest.mark.{MARKER} takes keyword options only ({', '.join(OPTIONS)}), "
                f"got positional {mark.args!r}",
                pytrace=False,
            )
        unknown = sorted(set(mark.kwargs) - set(OPTIONS))
        if unknown:
            pytest.fail(
                f"unknown option {unknown[0]!r} in @pytest.mark.{MARKER}; choose from "
                f"{', '.join(OPTIONS)}",
                pytrace=False,
            )
        options.update(mark.kwargs)
    return options


@pytest.fixture
def xentaudit(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``assert_stable`` with its defaults taken from the test's ``xentaudit`` markers:
    ``xentaudit(loss_fn, **options)`` raises ``AssertionError`` with what fired when the loss
    is not numerically stable, and returns the ``Sweep`` otherwise."""
    defaults = marker_options(request.node)
    from xentaudit.testing import assert_stable

    def check(loss_fn: Callable[[Any, Any], Any], **options: Any) -> Any:
        __tracebackhide__ = True
        return assert_stable(loss_fn, **{**defaults, **options})

    check.__signature__ = inspect.signature(assert_stable)  # type: ignore[attr-defined]
    check.__doc__ = assert_stable.__doc__
    return check
