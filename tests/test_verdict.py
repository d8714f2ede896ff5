"""The verdict of `compare` and `check` and the summary of `sweep`, computed once in
``results`` from hand-built results (no TensorFlow): what fails, who is trustworthy, the rows at
risk, eager/graph differences, the advice, and their JSON form. Every expectation is read off
the constructed inputs."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from factories import check_case, compare_case, sweep_case

from xentaudit.errors import ConfigError
from xentaudit.flags import CHECK_FAIL_ON, FLAGS, fail_on_flags
from xentaudit.report import json as json_report
from xentaudit.report import table
from xentaudit.results import Audit, Check, Comparison, FailingResult, ModeDifference, RowAtRisk


def test_compare_verdict_names_what_fails_who_is_trustworthy_and_the_worst_rows() -> None:
    v = compare_case().verdict()
    assert v.status == "fail"
    assert v.failing == (
        FailingResult("clip", "float32", "eager", None, ("divergent", "grad-vanish")),
        FailingResult("naive", "float32", "eager", None, ("nan", "divergent", "grad-nan")),
        FailingResult("naive", "float32", "graph", None, ("nan", "divergent", "grad-nan")),
        FailingResult("shifted", "float32", "eager", None, ("grad-vanish",)),
    )
    assert v.failing_lint == ()
    assert v.trustworthy == ("fused", "quiet")
    nan_row = [r for r in v.rows_at_risk if r.impl == "naive"]
    # row 1's NaN outranks row 0's finite error (|40 - 20| / 20 = 1), though row 0 comes first
    assert [(r.mode, r.row, r.exact, r.flags) for r in nan_row] == [
        ("eager", 1, 3.0, ("nan", "grad-nan")),
        ("graph", 1, 3.0, ("nan", "grad-nan")),
    ]
    assert all(math.isnan(r.loss) for r in nan_row)
    others = [r for r in v.rows_at_risk if r.impl != "naive"]
    # shifted: the failing row 1, not row 0 whose loss error (1e-5) is larger but informational
    assert others == [
        RowAtRisk("clip", "float32", "eager", None, 0, 30.0, 16.25, ("divergent", "grad-vanish")),
        RowAtRisk("shifted", "float32", "eager", None, 1, 1.0, 1.0, ("grad-vanish",)),
    ]
    # naive's NaN rows are equal in both modes: NaN agrees with NaN, so only clip differs
    assert v.mode_differences == (ModeDifference("clip", "float32", None),)
    assert (
        v.message
        == "4 of 8 results are wrong (clip, naive, shifted). Trustworthy here: fused, quiet."
    )


def test_advice_is_given_for_the_fired_flags_only_in_flags_order() -> None:
    v = compare_case().verdict()
    assert list(v.advice) == ["nan", "divergent", "grad-nan", "grad-vanish", "zero-loss"]
    for name, advice in v.advice.items():
        assert (advice.meaning, advice.advice) == (FLAGS[name].meaning, FLAGS[name].advice)
        assert advice.text == f"{FLAGS[name].meaning}. Instead: {FLAGS[name].advice}."


def test_a_clean_compare_passes_and_an_empty_one_says_nothing_ran() -> None:
    clean = Audit(2, 3, "mpmath", compare_case().results[:2])
    v = clean.verdict()
    assert (v.status, v.message) == ("pass", "None of the 2 results are wrong.")
    assert (v.failing, v.rows_at_risk, v.mode_differences, v.advice) == ((), (), (), {})
    assert v.trustworthy == ("fused",)
    empty = Audit(2, 3, "mpmath", ()).verdict()
    assert (empty.status, empty.message) == (
        "pass",
        "Nothing ran (every implementation was skipped).",
    )


def test_check_verdict_on_the_default_fail_on_leaves_grad_wrong_and_lint_out() -> None:
    v = check_case().verdict()
    assert v.status == "fail"
    assert v.failing == (
        FailingResult("keras", "float32", "eager", "file", ("divergent", "grad-vanish")),
        FailingResult("naive", "float32", "eager", "file", ("nan", "divergent", "grad-nan")),
    )
    assert v.failing_lint == ()
    assert [(r.impl, r.row) for r in v.rows_at_risk] == [("keras", 5), ("naive", 7), ("naive", 1)]
    assert v.trustworthy == ("fused",)  # shifted's grad-wrong does not fail, yet is a failing kind
    assert v.mode_differences == (ModeDifference("keras", "float32", "file"),)
    assert list(v.advice) == [
        "nan", "divergent", "grad-nan", "grad-vanish", "grad-wrong", "zero-loss",
        "soft-labels-unnormalized",
    ]  # fmt: skip
    assert (
        v.message == "2 of 6 results fire a --fail-on flag (keras, naive). Trustworthy here: fused."
    )


def test_a_gated_check_still_tells_the_alternatives_modes_apart() -> None:
    # `check --model`: only the gated results judge, but every result is shown, so an
    # alternative whose eager run diverges where its graph run (model.fit's) does not is two
    # rows and a difference, never one "eager=graph" row with the eager numbers.
    gated = replace(check_case(), gate=("fused",))
    v = gated.verdict()
    assert v.failing == ()  # fused fires only zero-loss, not a default --fail-on flag
    assert v.mode_differences == (ModeDifference("keras", "float32", "file"),)
    text = table.render_check(gated, CHECK_FAIL_ON)
    keras_rows = [line.split()[:3] for line in text.splitlines() if line.startswith("keras ")]
    assert keras_rows == [["keras", "file", "eager"], ["keras", "file", "graph"]]
    assert "Eager and tf.function differ for: keras" in text


def test_check_verdict_follows_fail_on_lint_included() -> None:
    v = check_case().verdict(["grad-wrong", "soft-labels-unnormalized"])
    assert [(f.impl, f.flags) for f in v.failing] == [
        ("naive", ("grad-wrong",)),
        ("shifted", ("grad-wrong",)),
    ]
    assert v.failing_lint == ("soft-labels-unnormalized",)
    assert [(r.impl, r.row) for r in v.rows_at_risk] == [("naive", 4), ("shifted", 3)]
    assert v.message == (
        "2 of 6 results fire a --fail-on flag (naive, shifted); the input is flagged "
        "soft-labels-unnormalized. Trustworthy here: fused."
    )
    lint_only = check_case().verdict(["soft-labels-unnormalized"])
    assert (lint_only.status, lint_only.failing, lint_only.rows_at_risk) == ("fail", (), ())
    passed = check_case().verdict(["inf"])
    assert (passed.status, passed.failing, passed.failing_lint) == ("pass", (), ())
    assert passed.message == "None of the 6 results fire a --fail-on flag. Trustworthy here: fused."


def test_a_clean_check_passes_without_naming_the_trustworthy() -> None:
    case = check_case()
    clean = Check("x.npy", 8, 3, "float32", "x.npy[labels]", {}, case.results[2:4])
    v = clean.verdict()
    assert (v.status, v.message) == ("pass", "None of the 2 results fire a --fail-on flag.")
    assert (
        v.trustworthy == ("fused",) and v.mode_differences == () and list(v.advice) == ["zero-loss"]
    )


def test_compare_json_keeps_its_keys_and_adds_the_verdict() -> None:
    audit = compare_case()
    doc = json.loads(json_report.render(audit, command="compare", scale=10.0))
    assert list(doc) == [
        "schema", "command", "scale", "rows", "classes", "reference_method", "results", "skipped",
        "loss_scale", "model", "environment", "loss", "ignore_class", "ignored_rows", "verdict",
    ]  # fmt: skip
    assert (doc["schema"], doc["command"], doc["reference_method"]) == (1, "compare", "mpmath")
    assert doc["loss"] == "softmax"
    naive = doc["results"][4]
    assert (naive["impl"], naive["mode"], naive["loss_rows"], naive["flags"]) == (
        "naive", "eager", [40.0, "nan"], ["nan", "divergent", "grad-nan"]
    )  # fmt: skip
    verdict = doc["verdict"]
    assert list(verdict) == [
        "status", "message", "failing", "failing_lint", "trustworthy", "rows_at_risk",
        "mode_differences", "advice", "alternatives", "framework_differences",
    ]  # fmt: skip
    assert verdict["status"] == "fail" and verdict["trustworthy"] == ["fused", "quiet"]
    assert verdict["failing"][0] == {
        "impl": "clip", "dtype": "float32", "mode": "eager", "labels": None,
        "flags": ["divergent", "grad-vanish"], "eps": None, "policy": "float32",
    }  # fmt: skip
    assert verdict["rows_at_risk"][1] == {
        "impl": "naive", "dtype": "float32", "mode": "eager", "labels": None, "row": 1,
        "exact": 3.0, "loss": "nan", "flags": ["nan", "grad-nan"], "eps": None,
        "policy": "float32", "shard": None, "shard_row": None,
    }  # fmt: skip
    assert verdict["mode_differences"] == [
        {"impl": "clip", "dtype": "float32", "labels": None, "eps": None, "policy": "float32"}
    ]
    assert verdict["advice"]["nan"] == {
        "meaning": FLAGS["nan"].meaning,
        "advice": FLAGS["nan"].advice,
    }
    assert verdict["message"] == audit.verdict().message


def test_check_json_judges_the_verdict_on_its_fail_on() -> None:
    check = check_case()
    doc = json.loads(json_report.render(check, command="check", fail_on=["grad-wrong"]))
    assert list(doc) == [
        "schema", "command", "fail_on", "path", "rows", "classes", "file_dtype", "labels", "lint",
        "results", "skipped", "reference_method", "config", "loss_scale", "flagged_rows",
        "flagged_rows_path", "gate", "model", "pinnable", "input", "reduction", "ignored_rows",
        "environment", "baseline", "loss", "ignore_class", "shards", "verdict",
    ]  # fmt: skip
    assert doc["fail_on"] == ["grad-wrong"]
    assert [f["impl"] for f in doc["verdict"]["failing"]] == ["naive", "shifted"]
    assert doc["results"][4]["worst_rows"][0]["loss"] == "nan"  # the existing strict rule
    # without fail_on in the context: check's own default, written out as fail_on
    default = json.loads(json_report.render(check, command="check"))
    assert default["fail_on"] == list(CHECK_FAIL_ON)
    assert [f["impl"] for f in default["verdict"]["failing"]] == ["keras", "naive"]
    assert default["verdict"]["rows_at_risk"][1]["loss"] == "nan"


def test_sweep_summary_is_computed_with_the_results_and_written_to_json() -> None:
    sweep = sweep_case()
    expected = (
        "Never flagged on any pattern, dtype or scale: fused.",
        "Never flagged on the seed pattern: fused.",
        "On seed the loss first turns NaN/inf at scale: naive 100 (float16).",
        f"nan: {FLAGS['nan'].meaning}. Instead: {FLAGS['nan'].advice}.",
        f"grad-nan: {FLAGS['grad-nan'].meaning}. Instead: {FLAGS['grad-nan'].advice}.",
    )
    assert sweep.summary == expected
    doc = json.loads(json_report.render(sweep, command="sweep"))
    assert list(doc) == [
        "schema", "command", "scales", "patterns", "cells", "breaking_points", "skipped",
        "reference_method", "loss_scale", "environment", "baseline", "loss", "summary",
    ]  # fmt: skip
    assert doc["summary"] == list(expected)
    assert doc["cells"][3]["loss"] == "nan"


def test_the_default_gate_fails_a_file_of_probabilities_or_log_probabilities() -> None:
    # Softmax outputs or log-softmax outputs saved instead of logits: every audit of them is of
    # the wrong numbers, so check's default gate fails; the other lint flags only warn.
    for lint, status in (
        ({"looks-like-probs": 8}, "fail"),
        ({"looks-like-logprobs": 8}, "fail"),
        ({"soft-labels-unnormalized": 8, "coarse-logits": 8}, "pass"),
    ):
        check = replace(check_case(), lint=lint, results=())
        verdict = check.verdict()
        assert verdict.status == status, lint
        assert check.exit_code(CHECK_FAIL_ON) == (1 if status == "fail" else 0)
    assert "grad-wrong" not in CHECK_FAIL_ON


def test_the_verdict_offers_to_pin_the_fused_losses_when_only_others_fail() -> None:
    # check_case: "keras" and "naive" fail, "fused" passes. With "fused" among the fused losses
    # audited by default, the verdict says so first and prints the lines that pin it.
    base = check_case()
    hinted = replace(base, pinnable=("fused",)).verdict().message
    assert hinted.startswith("Only implementations outside the fused losses on logits fail;")
    assert '--impl fused, or [tool.xentaudit] impls = ["fused"], or --model model.keras.' in hinted
    assert hinted.endswith(base.verdict().message)  # the rest of the verdict is unchanged
    assert replace(base, pinnable=("fused",)).exit_code(CHECK_FAIL_ON) == 1  # the gate stays
    # A failing fused loss, or implementations the user named (nothing pinnable): no hint.
    assert not replace(base, pinnable=("naive",)).verdict().message.startswith("Only")
    assert not base.verdict().message.startswith("Only")


def test_a_sweep_in_which_nothing_ran_says_so_and_claims_no_flag() -> None:
    empty = replace(sweep_case(), cells=(), breaking_points=())
    assert empty.summary == (
        "Nothing ran: every cell of this sweep was skipped (the skipped cells say why).",
    )


def test_fail_on_given_as_a_string_is_a_comma_list_not_its_characters() -> None:
    # `exit_code("nan")` was set("nan") = {"n", "a"}: it failed on nothing, whatever fired
    audit, check, sweep = compare_case(), check_case(), sweep_case()
    fired = {f for r in audit.results for f in r.flags}
    assert "nan" in fired
    assert audit.exit_code("nan") == audit.exit_code(["nan"]) == 1
    assert check.exit_code("grad-wrong") == check.exit_code(["grad-wrong"]) == 1
    assert check.verdict("grad-wrong") == check.verdict(["grad-wrong"])
    assert check.verdict("grad-wrong").status == "fail"
    cells = {f for c in sweep.cells for f in c.flags}
    assert sweep.exit_code(",".join(sorted(cells))) == 1
    assert audit.exit_code("none") == audit.exit_code("") == audit.exit_code([]) == 0


@pytest.mark.parametrize("fail_on", [["nann"], "nan,bogus", [None], 5, ["nan", 1]])
def test_fail_on_that_names_no_flag_is_refused_not_failing_on_nothing(fail_on) -> None:
    with pytest.raises(ConfigError, match=r"fail_on"):
        compare_case().exit_code(fail_on)
    with pytest.raises(ConfigError, match=r"fail_on"):
        check_case().verdict(fail_on)
    # against a baseline the exit code reads regressions, but a misspelt flag is still refused
    against = Comparison(path="base.json", regressions=(), improvements=())
    for result in (
        replace(check_case(), baseline=against),
        replace(sweep_case(), baseline=against),
    ):
        assert result.exit_code(["nan"]) == 0
        with pytest.raises(ConfigError, match=r"fail_on"):
            result.exit_code(fail_on)


def test_fail_on_flags_reads_all_none_and_comma_lists_in_order() -> None:
    assert fail_on_flags("divergent, nan,divergent") == ("divergent", "nan")
    assert fail_on_flags(["none"]) == fail_on_flags("") == ()
    assert fail_on_flags("all") == tuple(FLAGS)
