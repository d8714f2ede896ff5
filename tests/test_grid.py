"""Grid parsing, patterns and the batched breaking-point search (pure, no TensorFlow)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xentaudit.errors import ConfigError
from xentaudit.grid import (
    DEFAULT_SCALES,
    REFINE_MAX_POINTS,
    REFINE_REL,
    check_scales,
    make_pattern,
    parse_patterns,
    parse_scales,
    refine,
    refine_points,
)


def test_default_grid_spans_0_1_to_1e4_log_spaced() -> None:
    assert len(DEFAULT_SCALES) >= 8
    assert DEFAULT_SCALES[0] == pytest.approx(0.1) and DEFAULT_SCALES[-1] == pytest.approx(1e4)
    ratios = np.diff(np.log(DEFAULT_SCALES))
    assert np.allclose(ratios, ratios[0])


def test_parse_scales_list_and_range() -> None:
    assert parse_scales("10,1,0.5") == (0.5, 1.0, 10.0)
    assert parse_scales("1:1000:4") == pytest.approx((1.0, 10.0, 100.0, 1000.0))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        (",", "empty"),
        ("1,-2", "positive"),
        ("0:10:3", "0 < start <= stop"),
        ("10:1:3", "0 < start <= stop"),
        ("1:10:0", "1 <= count <= 1000"),
        ("1:10:1001", "1 <= count <= 1000"),
        (",".join(str(s) for s in range(1, 1002)), "gives 1001 scales; give at most 1000"),
        ("a,b", "not a list"),
        ("1:2", "not a list"),
        ("1,inf", "positive and finite"),
    ],
)
def test_bad_scales(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_scales(spec)


def test_patterns() -> None:
    seed = make_pattern("seed")
    assert seed.logits.tolist() == [[3, 1, 1], [-1, 2, 5]] and seed.labels.tolist() == [0, 1]
    vocab = make_pattern("vocab", classes=1000, vocab_rows=3, seed=5)
    assert vocab.logits.shape == (3, 1000)
    assert vocab.labels[1] == np.argmax(vocab.logits[1])  # odd rows confident and correct
    dominant = make_pattern("dominant")
    assert np.argmax(dominant.logits[0]) != dominant.labels[0]
    again = make_pattern("random", rows=6, seed=3)
    assert np.array_equal(again.logits, make_pattern("random", rows=6, seed=3).logits)
    assert parse_patterns(["seed,vocab", "all"]) == ("seed", "vocab", "random", "dominant")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": 1}, r"^--classes must lie in \[2, 16777216\], got 1$"),
        ({"classes": 2**24 + 1}, r"^--classes must lie in \[2, 16777216\], got 16777217$"),
        ({"rows": 0}, r"^--rows must lie in \[1, 1048576\], got 0$"),
        ({"vocab_rows": -1}, r"^--vocab-rows must lie in \[1, 1048576\], got -1$"),
        ({"seed": 2**32}, r"^--seed must lie in \[0, 4294967295\], got 4294967296$"),
    ],
)
def test_bad_pattern_sizes(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_pattern("vocab", **kwargs)


def test_unknown_pattern() -> None:
    with pytest.raises(ConfigError, match="unknown pattern 'spiral'"):
        parse_patterns(["spiral"])


def test_refine_points_fill_one_call_without_going_below_three() -> None:
    assert refine_points(6) == REFINE_MAX_POINTS  # the seed pattern: one round
    assert refine_points(40) == 500  # 20,000 logits / 40
    assert refine_points(50257) == 3


@pytest.mark.parametrize("points", [1, 3, 15])
def test_refine_finds_each_threshold_with_shared_calls(points: int) -> None:
    thresholds = {"loss": 2.2181, "grad": 1.8477}
    calls = []

    def fires(candidates: list[float]) -> dict[str, list[str]]:
        calls.append(candidates)
        return {k: ["x" if c >= t else "" for c in candidates] for k, t in thresholds.items()}

    found = refine({"loss": (1.0, 3.16, "x"), "grad": (1.0, 3.16, "x")}, fires, points)
    for kind, t in thresholds.items():
        (lo, hi), flag = found[kind]
        assert lo < t <= hi and hi / lo - 1 <= REFINE_REL and flag == "x"
    # Both kinds share every call: no more rounds than one bracket needs on its own.
    rounds = math.ceil(math.log(math.log(3.16) / math.log1p(REFINE_REL), points + 1)) + 1
    assert len(calls) <= rounds + 1


def test_the_api_takes_scales_as_the_command_line_does_and_refuses_non_numbers() -> None:
    # sweep(scales="1:100:3") iterated the string's characters: a TypeError, not the range
    assert check_scales("1:100:3") == (1.0, 10.0, 100.0)
    assert check_scales("10,0.5") == check_scales([np.float32(0.5), 10]) == (0.5, 10.0)
    for bad in (["a"], None, 5):
        with pytest.raises(ConfigError, match=r"^--scales must be numbers, got"):
            check_scales(bad)
