"""`check --baseline`: a CI gate that fails only on regressions against an earlier report
(`check --write-baseline`). The thresholds (FACTOR, the error floor, SCALE_SLACK) are tested
from both sides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit.baseline import FACTOR
from xentaudit.cli import cli
from xentaudit.results import Skipped

FAST = ["--impl", "keras_cce_probs", "--impl", "tf_softmax_xent", "--mode", "eager"]


def _file(tmp_path: Path, name: str, confident_rows: int) -> Path:
    """Rows [0, 20, 50] with label 1 (exact loss 30: Keras' clip caps it at 16.1, divergent),
    ``confident_rows`` of them, after one harmless row."""
    x = np.array([[0.0, 1.0, 2.0]] + [[0.0, 20.0, 50.0]] * confident_rows, np.float32)
    y = np.array([2] + [1] * confident_rows)
    np.savez(tmp_path / name, logits=x, labels=y)
    return tmp_path / name


def _check(*args: object):
    return CliRunner().invoke(cli, ["check", *(str(a) for a in args)])


def test_what_fired_already_passes_and_what_is_new_fails(tmp_path: Path) -> None:
    one = _file(tmp_path, "one.npz", 1)
    base = tmp_path / "base.json"
    first = _check(one, *FAST, "--write-baseline", base)
    assert first.exit_code == 1  # divergent fires: the plain gate fails
    again = _check(one, *FAST, "--baseline", base)
    assert again.exit_code == 0, again.output
    assert "Against the baseline" in again.output and "no regression" in again.output
    # more rows flagged is a regression, named with both counts
    two = _check(_file(tmp_path, "two.npz", 2), *FAST, "--baseline", base, "--format", "json")
    assert two.exit_code == 1
    regressions = json.loads(two.output)["baseline"]["regressions"]
    assert "keras_cce_probs float32 eager (file labels): divergent on 2 rows, was 1" in regressions
    # a new result that fires a flag is a regression; the reverse an improvement
    more = _check(one, *FAST, "--impl", "clipped", "--baseline", base, "--format", "json")
    assert more.exit_code == 1
    assert json.loads(more.output)["baseline"]["regressions"] == [
        "clipped eps=1e-07 float32 eager (file labels): new result, fires divergent, grad-vanish"
    ]
    better = _check(_file(tmp_path, "zero.npz", 0), *FAST, "--baseline", base, "--format", "json")
    assert better.exit_code == 0
    improved = json.loads(better.output)["baseline"]["improvements"]
    assert "keras_cce_probs float32 eager (file labels): divergent gone (was on 1 rows)" in improved


def test_a_regression_names_its_clip(tmp_path: Path) -> None:
    # clipped at two epsilons is two results: each regression says which (the clip caps the loss
    # at -log(eps), 16.1 and 6.9 here, against an exact 30: divergent at both)
    base = tmp_path / "base.json"
    clips = ["--impl", "clipped", "--eps", "1e-7", "--eps", "1e-3", "--mode", "eager"]
    assert _check(_file(tmp_path, "one.npz", 1), *clips, "--write-baseline", base).exit_code == 1
    two = _check(_file(tmp_path, "two.npz", 2), *clips, "--baseline", base, "--format", "json")
    assert two.exit_code == 1
    regressions = json.loads(two.output)["baseline"]["regressions"]
    named = {r.split(":")[0] for r in regressions}
    assert named == {
        f"clipped eps={eps} float32 eager (file labels)" for eps in ("1e-07", "0.001")
    }, regressions


def test_what_the_baseline_judged_and_this_run_did_not_audit_regresses(tmp_path: Path) -> None:
    # a lost backend or a dropped implementation once passed on what it no longer audited
    one = _file(tmp_path, "one.npz", 1)
    base = tmp_path / "base.json"
    _check(one, *FAST, "--write-baseline", base)
    fewer = _check(one, *FAST[2:], "--baseline", base, "--format", "json")
    assert fewer.exit_code == 1
    comparison = json.loads(fewer.output)["baseline"]
    lost = "keras_cce_probs float32 eager (file labels)"
    # the line names what was lost (it once only counted it, the names a sentence later)
    assert comparison["regressions"] == [f"1 result of the baseline not audited: {lost}"]
    assert comparison["unmatched"] == comparison["regressed"] == [lost]
    verdict = json.loads(fewer.output)["verdict"]["message"]
    assert verdict.count(lost) == 1, verdict  # named once, not again as "Not audited this time"
    assert verdict.startswith(f"Against the baseline {base}: 1 result regressed: 1 result of ")


def test_a_results_dict_from_the_api_is_a_baseline(tmp_path: Path) -> None:
    # to_dict() once lacked "command", which read_baseline asks for: only the CLI's report served
    from factories import check_case, sweep_case

    from xentaudit.baseline import compare, compare_sweep, read_baseline

    check, sweep = check_case(), sweep_case()
    (tmp_path / "check.json").write_text(json.dumps(check.to_dict()))
    (tmp_path / "sweep.json").write_text(json.dumps(sweep.to_dict()))
    base = read_baseline(tmp_path / "check.json", "check")
    assert compare(check, base, ["nan"], "check.json").regressions == ()
    swept = read_baseline(tmp_path / "sweep.json", "sweep")
    assert compare_sweep(sweep, swept, "sweep.json").regressions == ()


def test_a_gated_baseline_loses_only_what_it_judged() -> None:
    """With a gate (``check --model``) the alternatives were never judged: one not audited
    again is listed, not a regression; a gated result not audited again regresses."""
    from dataclasses import replace

    from factories import check_case

    from xentaudit.baseline import compare
    from xentaudit.report import json as json_report

    gated = replace(check_case(), gate=("fused",))
    base = json.loads(json_report.render(gated, command="check"))

    def without(impl: str, mode: str):
        kept = tuple(r for r in gated.results if (r.impl, r.mode) != (impl, mode))
        return compare(replace(gated, results=kept), base, ["nan"], "b.json")

    alternative = without("naive", "eager")
    assert alternative.regressions == ()
    assert alternative.unmatched == ("naive float32 eager (file labels)",)
    assert without("fused", "graph").regressions == (
        "1 result of the baseline not audited: fused float32 graph (file labels)",
    )
    # a baseline with no gate judged everything, but this run judges its gate alone
    ungated = json.loads(json_report.render(replace(gated, gate=None), command="check"))
    kept = tuple(r for r in gated.results if (r.impl, r.mode) != ("naive", "eager"))
    assert compare(replace(gated, results=kept), ungated, ["nan"], "b.json").regressions == ()
    # why a result was not audited is what this run skipped, its own or its backend's
    skips = (Skipped("fused", "all", "graph mode: no C++ compiler"), Skipped("torch", "all", "x"))
    kept = tuple(r for r in gated.results if (r.impl, r.mode) != ("fused", "graph"))
    lost = compare(replace(gated, results=kept, skipped=skips), base, ["nan"], "b.json")
    assert lost.regressions == (
        "1 result of the baseline not audited: fused float32 graph (file labels); this run "
        "skipped fused (graph mode: no C++ compiler)",
    )


def test_regressions_are_counted_by_what_regressed() -> None:
    """A result with several regression lines is one regressed result: the count once read
    "8 regressions" for the input and two results."""
    from factories import check_case

    from xentaudit.baseline import compare
    from xentaudit.flags import CHECK_FAIL_ON
    from xentaudit.report import json as json_report

    check = check_case()
    base = json.loads(json_report.render(check, command="check"))
    base["lint"] = {}  # the input's soft-labels-unnormalized is new
    for r in base["results"]:
        if r["mode"] == "eager" and r["impl"] in ("keras", "naive"):
            r["flag_counts"], r["max_rel_err"] = {}, 1e-7  # clean then: new flags, grown error
    fail_on = [*CHECK_FAIL_ON, "soft-labels-unnormalized"]
    against = compare(check, base, fail_on, "b.json")
    keras, naive = "keras float32 eager (file labels)", "naive float32 eager (file labels)"
    assert against.regressed == ("input", keras, naive)
    assert len(against.lines_of(keras)) == 3  # divergent, grad-vanish, loss error
    assert len(against.lines_of(naive)) == 4  # nan, divergent, grad-nan, loss error
    assert len(against.regressions) == 1 + 3 + 4
    assert against.count() == "the input and 2 results regressed"
    assert against.message().startswith("Against the baseline b.json: the input and 2 results ")
    same = json.loads(json_report.render(check, command="check"))
    assert compare(check, same, fail_on, "b.json").count() == "no regression"
    # a grown error regresses whatever --fail-on says: naive's NaN error is one without its flags
    assert compare(check, base, ["grad-vanish"], "b.json").count() == "2 results regressed"


def _with_error(base: Path, impl: str, error: float) -> None:
    doc = json.loads(base.read_text())
    for r in doc["results"]:
        if r["impl"] == impl:
            r["max_rel_err"] = error
    base.write_text(json.dumps(doc))


def test_an_error_counts_as_grown_past_the_factor_and_the_floor(tmp_path: Path) -> None:
    one = _file(tmp_path, "one.npz", 1)
    base = tmp_path / "base.json"
    doc = json.loads(_check(one, *FAST, "--format", "json", "--write-baseline", base).output)
    now = next(r["max_rel_err"] for r in doc["results"] if r["impl"] == "keras_cce_probs")
    # keras_cce_probs' error is 0.46 (16.1 for 30): far above the floor, (8 + 2) eps of float32
    assert now > 100 * 10 * 2.0**-23
    _with_error(base, "keras_cce_probs", now / (FACTOR * 0.99))  # grew by less than FACTOR
    assert _check(one, *FAST, "--baseline", base).exit_code == 0
    _with_error(base, "keras_cce_probs", now / (FACTOR * 1.01))  # grew by more
    grown = _check(one, *FAST, "--baseline", base, "--format", "json")
    assert grown.exit_code == 1
    (regression,) = json.loads(grown.output)["baseline"]["regressions"]
    assert regression.startswith("keras_cce_probs float32 eager (file labels): loss error")
    # below the floor errors are rounding: from 0 to a fused loss's error is no regression
    fused = next(r["max_rel_err"] for r in doc["results"] if r["impl"] == "tf_softmax_xent")
    assert fused <= 10 * 2.0**-23
    _with_error(base, "keras_cce_probs", now)
    _with_error(base, "tf_softmax_xent", 0.0)
    assert _check(one, *FAST, "--baseline", base).exit_code == 0


def test_changed_versions_are_named(tmp_path: Path) -> None:
    one = _file(tmp_path, "one.npz", 1)
    base = tmp_path / "base.json"
    _check(one, *FAST, "--write-baseline", base)
    doc = json.loads(base.read_text())
    current = doc["environment"]["tensorflow"]
    doc["environment"]["tensorflow"] = "2.0.0"
    base.write_text(json.dumps(doc))
    result = _check(one, *FAST, "--baseline", base, "--format", "json")
    assert json.loads(result.output)["baseline"]["environment_changes"] == {
        "tensorflow": f"2.0.0 -> {current}"
    }


def test_the_baseline_may_be_rewritten_in_place(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    one = _file(tmp_path, "one.npz", 1)
    _check(one, *FAST, "--write-baseline", base)
    _check(_file(tmp_path, "zero.npz", 0), *FAST, "--baseline", base, "--write-baseline", base)
    # the ratchet moved: the old failure is now a regression
    assert _check(one, *FAST, "--baseline", base).exit_code == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not JSON"),
        ("[" * 100_000 + "]" * 100_000, "is nested too deeply for a report"),  # json recurses
        ('{"schema": 1, "command": "compare"}', "is not a check report"),
        ('{"schema": 9, "command": "check"}', "has schema 9, not 1"),
        ('{"schema": 1, "command": "check", "results": 3, "lint": {}}', "has no results"),
        ('{"schema": 1, "command": "check", "results": [{}], "lint": {}}', "malformed entry"),
        (
            '{"schema": 1, "command": "check", "results": [], "lint": {}, "gate": []}',
            "malformed gate",
        ),
        (
            '{"schema": 1, "command": "check", "lint": {}, "input": "probabilities", '
            '"results": []}',
            "it was written for input 'probabilities', this run has 'logits'",
        ),
    ],
)
def test_a_bad_baseline_is_one_line_before_any_work(
    tmp_path: Path, text: str, message: str
) -> None:
    base = tmp_path / "base.json"
    base.write_text(text)
    result = _check(_file(tmp_path, "one.npz", 1), *FAST, "--baseline", base)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.splitlines()) == 1


class Raw(str):
    """JSON text written as it is where a baseline's value goes: what json.dumps cannot write
    (an integer literal of 5,001 digits, 10**400 as an integer, NaN)."""


LONG = Raw("9" * 5001)  # more digits than Python's int() converts (sys.get_int_max_str_digits)
HUGE = Raw(str(10**400))  # an integer past the largest float: float() of it overflows


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """Real baselines, corrupted by the tests below: a check's (tf_softmax_xent, and clipped,
    whose divergent and grad-vanish fire) and a sweep's (naive breaks on the seed pattern)."""
    root = tmp_path_factory.mktemp("baselines")
    np.save(root / "x.npy", np.array([[0.0, 1.0, 2.0], [0.0, 20.0, 50.0]], np.float32))
    np.save(root / "y.npy", np.array([2, 1]))
    runs = {
        "check": ["check", root / "x.npy", "--labels", root / "y.npy", "--backend", "tf",
                  "--impl", "tf_softmax_xent", "--impl", "clipped", "--mode", "eager"],
        "sweep": ["sweep", "--backend", "tf", "--impl", "naive", "--dtype", "float32", "--mode",
                  "eager", "--pattern", "seed", "--scales", "1,100"],
    }  # fmt: skip
    for command, args in runs.items():
        base = root / f"{command}.json"
        run = CliRunner().invoke(cli, [*map(str, args), "--write-baseline", str(base)])
        assert run.exit_code in (0, 1) and base.exists(), run.output
    return {"root": root, **{command: root / f"{command}.json" for command in runs}}


def _corrupt(written: dict[str, Path], command: str, where: tuple, value: object) -> Path:
    """The baseline of ``command`` with the value at ``where`` (keys and indices) replaced."""
    doc = json.loads(written[command].read_text())
    *parents, last = where
    parent = doc
    for key in parents:
        parent = parent[key]
    parent[last] = "@raw@" if isinstance(value, Raw) else value
    text = json.dumps(doc)
    base = written["root"] / f"corrupt-{command}.json"
    base.write_text(text.replace('"@raw@"', value) if isinstance(value, Raw) else text)
    return base


# Every value the comparison reads, corrupted in kind (type), finiteness or range: each was a
# traceback (exit 3: int()'s digit limit, '>' of an int and a str, float() of 10**400, a string
# times a float) or passed unchecked (a negative count, NaN written as JSON's NaN, a clip of 0).
CORRUPT = [
    ("check", ("rows",), LONG, "rows: an integer of 5001 digits"),
    ("check", ("results", 0, "worst_rows", 0, "row"), LONG, "results[0].worst_rows[0].row: an"),
    ("check", ("environment", "python"), LONG, "environment.python: an integer of 5001 digits"),
    ("check", ("lint",), {"looks-like-probs": "x"}, "lint.looks-like-probs: not a row count"),
    ("check", ("lint",), {"divergent": -1}, "lint.divergent: not a row count"),
    ("check", ("lint",), {"a\nb": 2**63}, 'lint["a\\nb"]: not a row count'),
    ("check", ("results", 1, "flag_counts", "divergent"), "1", "flag_counts.divergent: not a"),
    ("check", ("results", 1, "flag_counts", "divergent"), True, "flag_counts.divergent: not a"),
    ("check", ("results", 1, "flag_counts", "divergent"), HUGE, "flag_counts.divergent: not a"),
    ("check", ("results", 1, "flag_counts"), [], "results[1].flag_counts: not an object"),
    ("check", ("results", 1, "flags"), ["divergent", 3], "results[1].flags[1]: not a string"),
    ("check", ("results", 1, "max_rel_err"), HUGE, "results[1].max_rel_err: not an error"),
    ("check", ("results", 1, "max_rel_err"), Raw("NaN"), "results[1].max_rel_err: not an error"),
    ("check", ("results", 1, "max_rel_err"), Raw("1e400"), "results[1].max_rel_err: not an"),
    ("check", ("results", 1, "max_rel_err"), "-inf", "results[1].max_rel_err: not an error"),
    ("check", ("results", 1, "grad_max_abs_err"), -1.0, "results[1].grad_max_abs_err: not an"),
    ("check", ("results", 1, "grad_max_abs_err"), "x", "results[1].grad_max_abs_err: not an"),
    ("check", ("results", 1, "eps"), "nan", "results[1].eps: not a clip"),
    ("check", ("results", 1, "eps"), 0, "results[1].eps: not a clip"),
    ("check", ("results", 1, "eps"), HUGE, "results[1].eps: not a clip"),
    ("check", ("results", 0, "label_weights"), 0, "results[0].label_weights: not a count"),
    ("check", ("results", 0, "label_weights"), 4, "label_weights: not a count of label weights "
     "(an integer from 1 to 3)"),  # a row of 3 classes has at most 3 nonzero label weights
    ("check", ("results", 0, "label_weights"), HUGE, "results[0].label_weights: not a count"),
    ("check", ("results", 0, "label_weights"), 1.0, "results[0].label_weights: not a count"),
    ("check", ("results", 0, "impl"), 3, "entry results[0].impl: not a string"),
    ("check", ("results", 0), [], "entry results[0]: not an object"),
    ("check", ("classes",), "3", "classes: not a class count"),
    ("check", ("classes",), 0, "classes: not a class count"),
    ("check", ("classes",), HUGE, "classes: not a class count"),
    ("check", ("ignore_class",), 1.5, "ignore_class: not a class"),
    ("check", ("input",), ["logits"], "input: not a string"),
    ("check", ("file_dtype",), None, "file_dtype: not a string"),
    ("check", ("loss",), 1, "loss: not a string"),
    ("check", ("environment",), {"tensorflow": 2}, "environment.tensorflow: not a string"),
    ("check", ("environment",), [], "environment: not an object of names to versions"),
    ("check", ("gate",), ["tf_softmax_xent", 1], "gate[1]: not a string"),
    ("sweep", ("breaking_points", 0, "scale"), HUGE, "breaking_points[0].scale: not a scale"),
    ("sweep", ("breaking_points", 0, "scale"), "nan", "breaking_points[0].scale: not a scale"),
    ("sweep", ("breaking_points", 0, "scale"), Raw("NaN"), "breaking_points[0].scale: not a"),
    ("sweep", ("breaking_points", 0, "scale"), 0.0, "breaking_points[0].scale: not a scale"),
    ("sweep", ("breaking_points", 0, "scale"), -14.6, "breaking_points[0].scale: not a scale"),
    ("sweep", ("breaking_points", 1, "scale"), True, "breaking_points[1].scale: not a scale"),
    ("sweep", ("breaking_points", 1, "eps"), "inf", "breaking_points[1].eps: not a clip"),
    ("sweep", ("breaking_points", 1, "kind"), 1, "entry breaking_points[1].kind: not a string"),
    ("sweep", ("breaking_points", 1, "scale"), LONG, "breaking_points[1].scale: an integer of"),
    ("sweep", ("scales", 1), HUGE, "scales[1]: not a scale"),
    ("sweep", ("scales", 1), "100", "scales[1]: not a scale"),
    ("sweep", ("scales",), "1,100", "scales: not a list of scales"),
    ("sweep", ("patterns", 0, "name"), ["seed"], "patterns[0]: not a pattern"),
    ("sweep", ("loss",), None, "loss: not a string"),
    ("sweep", ("environment", "numpy"), None, "environment.numpy: not a string"),
]  # fmt: skip


def _ids(cases: list[tuple]) -> list[str]:
    """Test ids that name the field and stay short (not 5,001 digits)."""
    return [
        f"{command}-{'.'.join(map(str, where))}-"
        + (f"{len(value)}-chars" if isinstance(value, Raw) and len(value) > 10 else repr(value))
        for command, where, value, *_ in cases
    ]


@pytest.mark.parametrize(("command", "where", "value", "message"), CORRUPT, ids=_ids(CORRUPT))
def test_a_corrupt_value_is_refused_naming_its_field(
    written: dict[str, Path], command: str, where: tuple, value: object, message: str
) -> None:
    from xentaudit.baseline import read_baseline
    from xentaudit.errors import InputError

    base = _corrupt(written, command, where, value)
    with pytest.raises(InputError) as refused:
        read_baseline(base, command)
    text = str(refused.value)
    assert text.startswith(f"--baseline {base} has a malformed "), text
    assert message in text and text.endswith("; write it again"), text
    # one line, and a short one whatever the value (the path is the caller's)
    assert len(text.splitlines()) == 1 and len(text) - len(str(base)) < 160, text


# what the writer writes, and baselines written before a key existed, still read
ACCEPTED = [
    ("check", ("results", 0, "label_weights"), None),  # before label_weights
    ("check", ("results", 0, "label_weights"), 3),  # smoothed labels: all C classes
    ("check", ("results", 1, "max_rel_err"), "nan"),
    ("check", ("results", 1, "grad_max_abs_err"), "inf"),
    ("check", ("results", 1, "max_rel_err"), 0),
    ("check", ("results", 1, "flag_counts"), {"divergent": 0}),
    ("check", ("ignore_class",), -100),
    ("check", ("environment",), None),
    ("check", ("gate",), ["clipped"]),
    ("sweep", ("breaking_points", 0, "scale"), None),  # never broke
    ("sweep", ("breaking_points", 0, "scale"), 15),
]


@pytest.mark.parametrize(("command", "where", "value"), ACCEPTED, ids=_ids(ACCEPTED))
def test_a_baseline_as_written_still_reads(
    written: dict[str, Path], command: str, where: tuple, value: object
) -> None:
    from xentaudit.baseline import read_baseline

    read_baseline(_corrupt(written, command, where, value), command)


REPORTED = [
    ("check", ("rows",), LONG, "rows"),
    ("check", ("lint",), {"looks-like-probs": "x"}, "lint.looks-like-probs"),
    ("sweep", ("breaking_points", 0, "scale"), HUGE, "entry breaking_points[0].scale"),
    ("sweep", ("breaking_points", 0, "scale"), "nan", "entry breaking_points[0].scale"),
]


@pytest.mark.parametrize(("command", "where", "value", "field"), REPORTED, ids=_ids(REPORTED))
def test_a_corrupt_baseline_is_exit_2_not_an_internal_error(
    written: dict[str, Path], command: str, where: tuple, value: object, field: str
) -> None:
    # the cases reported: each was `xentaudit: internal error` (exit 3); read before any work
    base = _corrupt(written, command, where, value)
    root = written["root"]
    args = {
        "check": ["check", root / "x.npy", "--labels", root / "y.npy", "--impl", "clipped"],
        "sweep": ["sweep", "--impl", "naive", "--pattern", "seed", "--scales", "1,100"],
    }[command]
    run = CliRunner().invoke(cli, [*map(str, args), "--baseline", str(base)])
    assert run.exit_code == 2, run.output
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"xentaudit: error: --baseline {base} has a malformed {field}: ")


SWEEP = ["--impl", "naive", "--impl", "log_softmax", "--dtype", "float32", "--mode", "eager"]
SWEEP += ["--pattern", "seed", "--scales", "1:100:7"]


def _edit_point(base: Path, impl: str, kind: str, scale: float | None) -> float | None:
    """Set the baseline's seed breaking point of ``impl`` (``kind``) to ``scale``; return the
    one written by the run."""
    doc = json.loads(base.read_text())
    (point,) = [p for p in doc["breaking_points"] if (p["impl"], p["kind"]) == (impl, kind)]
    written, point["scale"] = point["scale"], scale
    base.write_text(json.dumps(doc))
    return written


def _sweep(*args: object):
    return CliRunner().invoke(cli, ["sweep", *SWEEP, *(str(a) for a in args)])


def test_a_sweep_regresses_where_a_breaking_point_moves_down(tmp_path: Path) -> None:
    from xentaudit.baseline import SCALE_SLACK

    base = tmp_path / "sweep.json"
    assert _sweep("--write-baseline", base).exit_code == 0
    assert _sweep("--baseline", base).exit_code == 0
    # naive's unshifted exp overflows on the seed pattern: its loss breaks within the grid
    now = _edit_point(base, "naive", "loss", None)
    assert now is not None
    _edit_point(base, "naive", "loss", now * (1 + SCALE_SLACK * 0.9))  # within the slack
    assert _sweep("--baseline", base).exit_code == 0
    _edit_point(base, "naive", "loss", now * (1 + SCALE_SLACK * 1.1) / (1 - SCALE_SLACK))
    moved = _sweep("--baseline", base, "--format", "json")
    assert moved.exit_code == 1
    (regression,) = json.loads(moved.output)["baseline"]["regressions"]
    assert regression.startswith(f"naive float32 eager on seed (loss): breaks at scale {now:g}")
    _edit_point(base, "naive", "loss", None)  # never broke before
    appeared = json.loads(_sweep("--baseline", base, "--format", "json").output)["baseline"]
    assert appeared["regressions"][0].endswith("did not before")
    # log_softmax never breaks: a baseline where it did is an improvement now
    _edit_point(base, "naive", "loss", now)
    assert _edit_point(base, "log_softmax", "loss", 50.0) is None
    better = _sweep("--baseline", base, "--format", "json")
    assert better.exit_code == 0
    assert json.loads(better.output)["baseline"]["improvements"] == [
        "log_softmax float32 eager on seed (loss): no longer breaks, was 50"
    ]
    # breaking points the baseline has and this sweep did not search regress
    narrower = CliRunner().invoke(
        cli, ["sweep", *SWEEP[2:], "--baseline", base, "--format", "json"]
    )
    assert narrower.exit_code == 1
    lost = json.loads(narrower.output)["baseline"]
    assert lost["regressions"] == [
        "2 breaking points of the baseline not searched: naive float32 eager on seed (loss), "
        "naive float32 eager on seed (grad)"
    ]
    assert lost["regressed"] == lost["unmatched"] and len(lost["regressed"]) == 2
    assert all(name.startswith("naive float32 eager on seed") for name in lost["unmatched"])
    # a cell the baseline lacks that breaks regresses, as a new check result that fires does;
    # one that never breaks does not (log_softmax here)
    _edit_point(base, "naive", "loss", now)
    doc = json.loads(base.read_text())
    doc["breaking_points"] = [p for p in doc["breaking_points"] if p["impl"] == "naive"]
    base.write_text(json.dumps(doc))
    assert _sweep("--baseline", base).exit_code == 0
    doc["breaking_points"] = [p for p in doc["breaking_points"] if p["kind"] != "loss"]
    base.write_text(json.dumps(doc))
    new = json.loads(_sweep("--baseline", base, "--format", "json").output)["baseline"]
    assert new["regressions"] == [
        f"naive float32 eager on seed (loss): breaks at scale {now:g}, not swept before"
    ]
    refused = _sweep("--baseline", tmp_path / "nothing.json")
    assert refused.exit_code == 2 and len(refused.stderr.splitlines()) == 1


def test_a_sweeps_regression_names_its_clip(tmp_path: Path) -> None:
    # two clips, two breaking points of clipped's loss: baselines where neither broke name each
    base = tmp_path / "sweep.json"
    clips = ["--impl", "clipped", "--eps", "1e-7", "--eps", "1e-3", "--dtype", "float32"]
    args = [*clips, "--mode", "eager", "--pattern", "seed", "--scales", "1:100:7"]
    run = CliRunner().invoke(cli, ["sweep", *args, "--write-baseline", str(base)])
    assert run.exit_code == 0, run.output
    doc = json.loads(base.read_text())
    for point in doc["breaking_points"]:
        point["scale"] = None
    base.write_text(json.dumps(doc))
    now = CliRunner().invoke(cli, ["sweep", *args, "--baseline", str(base), "--format", "json"])
    regressions = json.loads(now.output)["baseline"]["regressions"]
    loss = {r.split(":")[0] for r in regressions if "(loss)" in r}
    assert loss == {f"clipped eps={e} float32 eager on seed (loss)" for e in ("1e-07", "0.001")}


def test_the_error_floor_is_the_grading_tolerance_of_the_computed_dtype() -> None:
    """From an error of 0 to e is a regression only past FACTOR times the floor, the grading
    tolerance of a one-hot row the README states, (8 + ceil(log2 C)) eps + u d of float32 (d the
    sum's depth in lanes): 0.95 x FACTOR floors passes, 1.05 x fails (doubling or halving the
    floor moves it across one)."""
    from dataclasses import replace

    from factories import check_result

    from xentaudit.baseline import compare
    from xentaudit.results import Check

    classes = 3
    floor = (8 + 2) * 2.0**-23 + 2 * 2.0**-24  # C = 3: k = 2, d = C - 1 = 2 (C <= 8 lanes)
    base = check_result("log_softmax", "eager", ())
    before = Check("x.npz", 8, classes, "float32", "file", {}, (base,)).to_dict()
    for factor, regressed in ((FACTOR * 0.95, False), (FACTOR * 1.05, True)):
        now = replace(base, max_rel_err=factor * floor)
        check = Check("x.npz", 8, classes, "float32", "file", {}, (now,))
        assert bool(compare(check, before, ["divergent"], "b.json").regressions) is regressed


def test_soft_labels_raise_the_noise_floor_by_their_label_sums(tmp_path) -> None:
    # A smoothed 7,500-class row: frameworks add its 7,500 label terms in their kernels' order,
    # which moves between machines; an error within u (n - 1) of the loss (3 u (n - 1) of the
    # gradient) is rounding (losses.LABEL_SUM_ULPS), so its growth is no regression there, as it
    # is for class labels past (8 + k) eps + u d
    from xentaudit.baseline import _floors, _grew
    from xentaudit.dtypes import FORMATS

    eps = 2.0**-23
    # 7,500 classes: k = ceil(log2 7500) = 13, d = ceil(7500 / 8) - 1 + 7 = 944 (8 float32 lanes)
    hard, soft = _floors(FORMATS["float32"], 7500, 1), _floors(FORMATS["float32"], 7500, 7500)
    one_hot = 21 * eps + eps / 2 * 944
    assert hard == {"max_rel_err": one_hot, "grad_max_abs_err": one_hot}
    assert soft["max_rel_err"] == one_hot + eps / 2 * 7499
    assert soft["grad_max_abs_err"] == one_hot + 3 * eps / 2 * 7499
    assert _grew(3000 * eps, 1000 * eps, hard["max_rel_err"])  # 3x past the floor: a regression
    assert not _grew(3000 * eps, 1000 * eps, soft["max_rel_err"])  # within the label sums
    assert _grew(3 * soft["max_rel_err"], soft["max_rel_err"], soft["max_rel_err"])
    # bfloat16 sums are accumulated in float32: its lanes' and label terms are float32's
    bf16 = _floors(FORMATS["bfloat16"], 7500, 7500)["max_rel_err"]
    assert bf16 == 21 * 2.0**-7 + eps / 2 * 944 + eps / 2 * 7499
    # a check with label smoothing records the rows' label weights (all C of them)
    np.save(tmp_path / "x.npy", np.zeros((2, 50), np.float32))
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    run = CliRunner().invoke(cli, ["check", str(tmp_path / "x.npy"), "--labels",
                                   str(tmp_path / "y.npy"), "--label-smoothing", "0.1", "--impl",
                                   "shifted", "--mode", "eager", "--format", "json"])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert [r["label_weights"] for r in json.loads(run.stdout)["results"]] == [50]
