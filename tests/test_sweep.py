"""`sweep` on real TensorFlow code: breaking points against thresholds derived here, the grid's
cells, JSON, exit codes and the command line."""

from __future__ import annotations

import collections
import importlib
import json
import math
import re
from pathlib import Path

import mpmath
import pytest
from click.testing import CliRunner

from xentaudit.cli import ByteSize, cli
from xentaudit.dtypes import get_format
from xentaudit.errors import ConfigError
from xentaudit.grid import DEFAULT_SCALES
from xentaudit.sweep import memory_budget, memory_needed, reported_scale, sweep

# A breaking point is reported to 4 significant digits, rounded up (a unit in the fourth digit
# is 1e-3 relative at 1.000, less above), and the input is rounded to the dtype first; 5e-3
# relative covers both for the float16 case (input spacing 2^-7 at 11, i.e. 7e-4 relative).
DIGITS_REL = 5e-3


def point(result, impl, dtype, kind, pattern="seed", mode="eager", eps=None):
    (p,) = [
        b
        for b in result.breaking_points
        if (b.impl, b.dtype, b.kind, b.pattern, b.mode) == (impl, dtype, kind, pattern, mode)
        and (eps is None or b.eps == eps)
    ]
    return p


@pytest.fixture(scope="module")
def naive_seed():
    return sweep(
        patterns=["seed"], impls=["naive"], dtypes=["float16", "float32", "float64"],
        modes=["eager"],
    )  # fmt: skip


def test_naive_float16_loss_breaks_where_exp_overflows(naive_seed) -> None:
    # Row 1 of the seed at scale s is [-s, 2s, 5s]; naive exponentiates unshifted, and float16's
    # exp rounds to inf once exp(5s) >= 65520 (halfway between 65504 and 2^16), inf/inf = NaN.
    expected = math.log(65520) / 5
    p = point(naive_seed, "naive", "float16", "loss")
    assert p.flag in ("nan", "inf") and p.scale == pytest.approx(expected, rel=DIGITS_REL)
    assert p.scale < 20


@pytest.mark.parametrize(("dtype", "min_exponent"), [("float32", -126), ("float64", -1022)])
def test_naive_loss_breaks_where_a_probability_flushes_to_zero(
    naive_seed, dtype: str, min_exponent: int
) -> None:
    # p_0 of row 1 is e^-s / (e^-s + e^2s + e^5s) ~ e^-6s. TensorFlow flushes results below the
    # smallest normal number 2^min_exponent to 0, and 0 * log(0) = NaN in -sum y log p.
    expected = -min_exponent * math.log(2) / 6
    p = point(naive_seed, "naive", dtype, "loss")
    assert p.flag == "nan" and p.scale == pytest.approx(expected, rel=DIGITS_REL)


@pytest.fixture(scope="module")
def clipped_seed():
    return sweep(
        patterns=["seed"], impls=["clipped", "keras_cce_probs"], dtypes=["float32", "float64"],
        eps=[1e-7, 1e-30], modes=["eager"],
    )  # fmt: skip


def clip_threshold(eps: float) -> float:
    # The clip caps row 1's loss at -ln(eps); the exact loss of row 1 is
    # L1(s) = log(e^-s + e^2s + e^5s) - 2s, so the loss diverges once L1(s) = -ln(eps).
    def gap(s: mpmath.mpf) -> mpmath.mpf:
        row1 = mpmath.log(mpmath.exp(-s) + mpmath.exp(2 * s) + mpmath.exp(5 * s)) - 2 * s
        return row1 + mpmath.log(eps)

    with mpmath.workdps(30):
        return float(mpmath.findroot(gap, -math.log(eps) / 3))


@pytest.mark.parametrize("eps", [1e-7, 1e-30])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clipped_diverges_where_the_true_loss_passes_minus_log_eps(
    clipped_seed, eps: float, dtype: str
) -> None:
    p = point(clipped_seed, "clipped", dtype, "loss", eps=eps)
    assert p.flag == "divergent"
    assert p.scale == pytest.approx(clip_threshold(eps), rel=DIGITS_REL)
    # The same row's gradient is clipped to zero at the same scale.
    g = point(clipped_seed, "clipped", dtype, "grad", eps=eps)
    assert g.flag == "grad-vanish" and g.scale == pytest.approx(p.scale, rel=DIGITS_REL)


def test_graph_mode_searches_and_eager_confirms_its_bracket(monkeypatch) -> None:
    # tf.function's calls are the cheap ones once traced: it refines the breaking points over
    # several rounds (a vocabulary row takes 3 scales a round), and eager takes its base call
    # plus one call checking graph's brackets, whose ends it must grade as graph did. The points
    # eager reports are still eager's own: an eager-only sweep, which refines in eager, finds
    # the same ones.
    module = importlib.import_module("xentaudit.sweep")
    calls: collections.Counter = collections.Counter()
    run = module.run_graded

    def counted(impl, eps, mode, *args, **kwargs):
        calls[mode] += 1
        return run(impl, eps, mode, *args, **kwargs)

    monkeypatch.setattr(module, "run_graded", counted)
    grid = {"patterns": ["vocab"], "impls": ["naive"], "dtypes": ["float16"]}
    both = sweep(**grid, modes=["both"])
    assert calls["eager"] == 2 and calls["graph"] > 4
    alone = sweep(**grid, modes=["eager"])
    for kind in ("loss", "grad"):
        eager = point(alone, "naive", "float16", kind, pattern="vocab").scale
        assert eager is not None
        assert point(both, "naive", "float16", kind, pattern="vocab").scale == eager


def test_keras_probs_breaks_like_the_clip_at_keras_epsilon(clipped_seed) -> None:
    p = point(clipped_seed, "keras_cce_probs", "float32", "loss")
    assert p.eps == pytest.approx(1e-7) and p.flag == "divergent"
    assert p.scale == pytest.approx(clip_threshold(1e-7), rel=DIGITS_REL)


def test_fused_losses_never_flagged_on_the_seed_pattern() -> None:
    result = sweep(patterns=["seed"], impls=["tf_softmax_xent", "log_softmax"])
    assert len(result.cells) == 2 * 4 * 2 * len(DEFAULT_SCALES)
    failing = {"nan", "inf", "divergent", "grad-nan", "grad-inf", "grad-blowup", "grad-vanish"}
    for cell in result.cells:
        assert not failing & set(cell.flags), cell
    assert all(p.scale is None for p in result.breaking_points)


def test_cells_json_and_exit_code() -> None:
    result = sweep(
        scales=[1.0, 100.0], patterns=["dominant"], impls=["naive"], dtypes=["float32"],
        modes=["eager"],
    )  # fmt: skip
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert doc["schema"] == 1 and doc["scales"] == [1.0, 100.0]
    assert doc["patterns"][0]["name"] == "dominant"
    by_scale = {c["scale"]: c for c in doc["cells"]}
    # dominant at scale 100: [100, 0, 0] with label 1, exact loss 100 + log(1 + 2 e^-100), which
    # is 100 in float64; naive exponentiates unshifted and e^100 overflows float32 (max ~e^88.7).
    assert by_scale[1.0]["flags"] == [] and "nan" in by_scale[100.0]["flags"]
    assert by_scale[100.0]["reference"] == pytest.approx(100.0, rel=1e-15)
    (loss_point,) = [b for b in doc["breaking_points"] if b["kind"] == "loss"]
    assert set(loss_point) == {
        "pattern", "impl", "eps", "dtype", "mode", "kind", "scale", "flag", "at_start", "policy",
    }  # fmt: skip
    assert result.exit_code(["nan"]) == 1 and result.exit_code(["grad-inf"]) == 0


def run(*args: str):
    return CliRunner().invoke(cli, ["sweep", *args])


def test_default_sweep_prints_every_table_and_the_summary() -> None:
    # TensorFlow's zoo (the other backends' sweeps cost a minute; `.ci/run` runs the default)
    result = run("--backend", "tf")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for title in ("float16", "bfloat16", "float32", "float64", "clipped: epsilon x dtype"):
        assert f"\n{title}" in out
    assert "Breaking points" in out and "Summary" in out
    summary = out[out.index("Summary") :]
    # exp(5 s) passes float16's 65520 at s = ln(65520) / 5 = 2.2180: printed rounded up
    assert re.search(
        r"On seed the loss first turns NaN/inf at scale: naive 2\.21[89] \(float16\)", summary
    )
    assert "clipped eps=1e-07 diverges on seed from scale float16" in summary
    never = summary.splitlines()[2]
    assert never.startswith("- Never flagged on the seed pattern:")
    assert "tf_softmax_xent" in never and "log_softmax" in never
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def test_sweep_json_and_fail_on() -> None:
    args = ("--pattern", "seed", "--impl", "naive", "--dtype", "float16", "--mode", "eager")
    result = run(*args, "--scales", "0.1:10:3", "--format", "json", "--fail-on", "nan")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["command"] == "sweep" and len(doc["cells"]) == 3
    assert doc["fail_on"] == ["nan"]  # what the exit code was judged on, as check records it
    assert run(*args, "--scales", "0.1,1", "--fail-on", "nan").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "float8"], "unknown dtype"),
        (["--impl", "nope"], "unknown implementation"),
        (["--pattern", "spiral"], "unknown pattern"),
        (["--scales", ""], "empty"),
        (["--scales", "-1:10:3"], "0 < start <= stop"),
        (["--scales", "1:10:100000000"], "1 <= count <= 1000"),
        (["--scales", "1:inf:3"], "stop < inf"),
        (["--scales", "1,nan"], "--scales must be positive and finite, got nan"),
        (["--classes", "1"], "Invalid value for '--classes': 1 is not in the range 2<=x<=16777216"),
        (["--classes", "16777217"], "'--classes': 16777217 is not in the range 2<=x<=16777216"),
        (["--rows", "0"], "Invalid value for '--rows': 0 is not in the range 1<=x<=1048576"),
        (["--vocab-rows", "1048577"], "'--vocab-rows': 1048577 is not in the range 1<=x<="),
        (["--seed", "-1"], "Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295"),
        (["--seed", "4294967296"], "'--seed': 4294967296 is not in the range 0<=x<=4294967295"),
        (["--eps", "0"], "Invalid value for '--eps': 0.0 is not in the range 0<x<0.5"),
        (["--timeout", "-1"], "Invalid value for '--timeout': -1.0 is not in the range 0<x<="),
        (["--max-memory", "0"], "Invalid value for '--max-memory': '0' is less than one byte"),
        (["--max-memory", "lots"], "'--max-memory': 'lots' is not a size such as 512M or 2G"),
        (["--fail-on", "bogus"], "unknown flag"),
    ],
)
def test_bad_sweep_options_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xentaudit: error: ") and message in lines[0]


def test_a_grid_past_the_memory_budget_is_refused_with_its_estimate() -> None:
    # 1e6 classes x 100 scales x (40 + 10 x 8) bytes of float64 = 1.2e10 bytes = 11.2G
    args = ("--pattern", "vocab", "--classes", "1000000", "--dtype", "float64")
    result = run(*args, "--scales", "1:10:100", "--max-memory", "11G")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        "xentaudit: error: this sweep needs about 11.2G of memory, more than --max-memory 11G; "
        "sweep fewer --scales or a smaller --classes or --vocab-rows, or raise --max-memory\n"
    )
    # a tenth of the scales fits (1.12G, its refinement rounds run 10 scales too)
    assert memory_needed([(1, 1_000_000)], 10, [get_format("float64")]) == 1_200_000_000
    assert memory_needed([(1, 1_000_000)], 10, [get_format("float16")]) == 600_000_000


@pytest.mark.parametrize(
    ("text", "size"),
    [("512M", 512 * 2**20), ("2G", 2 * 2**30), ("1.5GiB", 3 * 2**29), ("100", 100), ("2t", 2**41)],
)
def test_max_memory_reads_sizes(text: str, size: int) -> None:
    assert ByteSize().convert(text, None, None) == size


def test_the_default_budget_is_half_the_available_memory() -> None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        pytest.skip("no /proc/meminfo")
    (available,) = [
        ln.split()[1] for ln in meminfo.read_text().splitlines() if "MemAvailable" in ln
    ]
    # MemAvailable moves while the test runs: within 1% of it
    assert memory_budget() == pytest.approx(int(available) * 1024 / 2, rel=0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, r"^--seed must lie in \[0, 4294967295\], got -1$"),
        ({"scales": [1.0, -2.0]}, "^--scales must be positive and finite, got -2$"),
        ({"scales": []}, "^--scales is empty"),
        (
            {"max_memory": 1000},
            "^this sweep needs about 3.75M of memory, more than --max-memory 1000;",
        ),
        ({"max_memory": 0}, "^--max-memory must be a positive number of bytes, got 0$"),
    ],
)
def test_bad_sweep_arguments_in_the_api(kwargs: dict, message: str) -> None:
    # vocab: 16384 logits x 4 scales a refinement round x (40 + 10 x 2) bytes = 3.75M
    args = {"impls": ["nope"], "patterns": ["vocab"], "dtypes": ["float16"], "scales": [1.0, 2.0]}
    with pytest.raises(ConfigError, match=message):
        sweep(**{**args, **kwargs})


def test_a_breaking_point_is_a_scale_at_which_the_flag_fires(naive_seed, clipped_seed) -> None:
    # Reported to 4 significant digits rounded up from the smallest scale the search saw fire:
    # at or above the closed-form threshold (rounded to nearest, 3 digits put naive's gradient
    # break, 10.917, at 10.9, where nothing fires), within the search's 5e-4 and 1e-3 of it.
    log2 = math.log(2)
    cases = [
        # TensorFlow's RealDiv gradient -e^-8s of row 1's p_0 flushes below 2^-126
        (point(naive_seed, "naive", "float32", "grad"), 126 * log2 / 8),
        (point(naive_seed, "naive", "float32", "loss"), 126 * log2 / 6),  # p_0 ~ e^-6s flushes
        (point(clipped_seed, "clipped", "float32", "loss", eps=1e-7), clip_threshold(1e-7)),
    ]
    for p, threshold in cases:
        assert threshold * (1 - 1e-6) <= p.scale <= threshold * (1 + 1.5e-3), (p, threshold)
    assert reported_scale(10.9123) == 10.92 and reported_scale(10.92) == 10.92
    assert reported_scale(9.99941) == 10.0
