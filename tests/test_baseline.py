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
    floor = (8 + 2) * 2.0**-23 + 2 * 2.0**-24  # C = 3: k = 2, d = 2 (a tree: C <= 8 lanes)
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
    # 7,500 classes: k = ceil(log2 7500) = 13, d = ceil(7500 / 8) - 1 + 3 = 940 (8 float32 lanes)
    hard, soft = _floors(FORMATS["float32"], 7500, 1), _floors(FORMATS["float32"], 7500, 7500)
    one_hot = 21 * eps + eps / 2 * 940
    assert hard == {"max_rel_err": one_hot, "grad_max_abs_err": one_hot}
    assert soft["max_rel_err"] == one_hot + eps / 2 * 7499
    assert soft["grad_max_abs_err"] == one_hot + 3 * eps / 2 * 7499
    assert _grew(3000 * eps, 1000 * eps, hard["max_rel_err"])  # 3x past the floor: a regression
    assert not _grew(3000 * eps, 1000 * eps, soft["max_rel_err"])  # within the label sums
    assert _grew(3 * soft["max_rel_err"], soft["max_rel_err"], soft["max_rel_err"])
    # bfloat16 sums are accumulated in float32: its lanes' and label terms are float32's
    bf16 = _floors(FORMATS["bfloat16"], 7500, 7500)["max_rel_err"]
    assert bf16 == 21 * 2.0**-7 + eps / 2 * 940 + eps / 2 * 7499
    # a check with label smoothing records the rows' label weights (all C of them)
    np.save(tmp_path / "x.npy", np.zeros((2, 50), np.float32))
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    run = CliRunner().invoke(cli, ["check", str(tmp_path / "x.npy"), "--labels",
                                   str(tmp_path / "y.npy"), "--label-smoothing", "0.1", "--impl",
                                   "shifted", "--mode", "eager", "--format", "json"])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert [r["label_weights"] for r in json.loads(run.stdout)["results"]] == [50]
