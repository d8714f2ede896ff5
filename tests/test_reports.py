"""Every renderer formats the one verdict (or sweep summary) computed in ``results``: tables,
JSON, JUnit, GitHub workflow commands and Markdown, rendered to strings from hand-built results
(no TensorFlow). Expected lines are written from the constructed inputs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace

import pytest
from factories import check_case, check_result, compare_case, sweep_case

from xentaudit.flags import CHECK_FAIL_ON, FLAGS
from xentaudit.report import github, junit, markdown, table
from xentaudit.report import json as json_report
from xentaudit.results import Audit, Check, WorstRow

WIDTH = 400  # wide enough that no line wraps


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def legend(*names: str) -> list[str]:
    """The table's legend: one line per fired flag, as "  <flag> <meaning>. Instead: <advice>."."""
    return [f"  {n} {FLAGS[n].meaning}. Instead: {FLAGS[n].advice}." for n in names]


def test_compare_table_formats_the_verdict() -> None:
    out = lines(table.render(compare_case(), title="xentaudit compare: test", width=WIDTH))
    assert out[:2] == ["xentaudit compare: test", "exact values: mpmath, 50 digits"]
    risk = out.index("Rows at risk (worst row of each flagged result):")
    body = [line.split()[:2] for line in out[4:risk]]
    # eager and graph fold into one row where they agree (NaN rows included), not for clip
    assert body == [
        ["fused", "eager=graph"],
        ["clip", "eager"],
        ["clip", "graph"],
        ["naive", "eager=graph"],
        ["shifted", "eager"],
        ["quiet", "eager"],
    ]
    assert out[risk:] == [
        "Rows at risk (worst row of each flagged result):",
        "  clip float32 eager: row 0 exact 30, got 16.25 (divergent grad-vanish)",
        "  naive float32 eager=graph: row 1 exact 3, got nan (nan grad-nan)",
        "  shifted float32 eager: row 1 exact 1, got 1 (grad-vanish)",
        "Eager and tf.function differ for: clip float32 (model.fit runs the tf.function path).",
        "Verdict: 4 of 8 results are wrong (clip, naive, shifted). Trustworthy here: fused, quiet.",
        *legend("nan", "divergent", "grad-nan", "grad-vanish", "zero-loss"),
    ]


@pytest.mark.parametrize(
    ("method", "line"),
    [
        ("mpmath", "exact values: mpmath, 50 digits"),
        ("float64", "exact values: float64 max-separated log-sum-exp (compiled kernel)"),
        ("float64-numpy", "exact values: float64 max-separated log-sum-exp (numpy)"),
    ],
)
def test_compare_table_names_how_the_exact_values_were_computed(method: str, line: str) -> None:
    audit = Audit(2, 3, method, compare_case().results[:2])
    out = lines(table.render(audit, title="t", width=WIDTH))
    assert out[1] == line and "reference" not in "\n".join(out)
    assert out[-1] == "Verdict: None of the 2 results are wrong."


def test_check_table_formats_the_verdict() -> None:
    check = check_case()
    out = lines(table.render_check(check, CHECK_FAIL_ON, width=WIDTH))
    assert out[1:3] == [
        "labels: logits.npz[labels]; exact values: float64 max-separated log-sum-exp (compiled "
        f"kernel); config: none; fails on: {', '.join(CHECK_FAIL_ON)}",
        "input: soft-labels-unnormalized on 3 of 8 rows",
    ]
    conclusion = out[out.index("Rows at risk (worst rows of each failing result):") :]
    assert conclusion == [
        "Rows at risk (worst rows of each failing result):",
        "  keras file eager float32: row 5 exact 30, got 16.25 (divergent grad-vanish)",
        "  naive file eager float32: row 7 exact 3, got nan (nan grad-nan)",
        "  naive file eager float32: row 1 exact 20, got 40 (divergent)",
        "Eager and tf.function differ for: keras float32 (model.fit runs the tf.function path).",
        "FAIL: 2 of 6 results fire a --fail-on flag (keras, naive). Trustworthy here: fused.",
        *legend(
            "nan", "divergent", "grad-nan", "grad-vanish", "grad-wrong", "zero-loss",
            "soft-labels-unnormalized",
        ),
    ]  # fmt: skip
    passed = lines(table.render_check(check, ["inf"], width=WIDTH))
    assert "Rows at risk (worst rows of each failing result):" not in passed
    assert "PASS: None of the 6 results fire a --fail-on flag. Trustworthy here: fused." in passed


NARROW = 40  # narrower than any table's columns of numbers alone


@pytest.mark.parametrize(
    "render",
    [
        lambda width: table.render(compare_case(), title="t", width=width),
        lambda width: table.render_check(check_case(), CHECK_FAIL_ON, width=width),
        lambda width: table.render_sweep(sweep_case(), width=width),
        # a grid of 24 scales (3.16e3 and the like): wider than 160 columns
        lambda width: table.render_sweep(
            replace(sweep_case(), scales=tuple(10 ** (k / 4) for k in range(-4, 20))), width=width
        ),
    ],
    ids=["compare", "check", "sweep", "sweep-grid"],
)
def test_a_table_wider_than_the_width_runs_past_it_rather_than_cut_a_number(render) -> None:
    # A report in a CI log or a file is 160 columns wide: a table that does not fit wraps its
    # flags, and beyond that its lines run long; no number may end in an ellipsis.
    wide, narrow = render(WIDTH), render(NARROW)
    assert "\u2026" not in narrow
    assert max(len(line) for line in narrow.splitlines()) > NARROW

    def numbers(text: str) -> set[str]:
        return {t for t in text.split() if t.replace(".", "", 1).replace("e-", "", 1).isdigit()}

    assert numbers(wide) and numbers(wide) <= numbers(narrow)


def test_sweep_table_ends_with_the_summary() -> None:
    sweep = sweep_case()
    out = lines(table.render_sweep(sweep, width=WIDTH))
    assert "exact values: float64 max-separated log-sum-exp" in out[1]
    assert out[out.index("Summary") + 1 :] == [f"- {line}" for line in sweep.summary]


# the input's lint fails too
BASELINE_FAIL_ON = [*CHECK_FAIL_ON, "soft-labels-unnormalized"]


def _against(edit: Callable[[dict], None]) -> Check:
    """``check_case()`` against its own JSON report, edited by ``edit``."""
    from xentaudit.baseline import compare

    check = check_case()
    base = json.loads(json_report.render(check, command="check"))
    edit(base)
    return replace(check, baseline=compare(check, base, BASELINE_FAIL_ON, "b.json"))


def _naive_was_clean(base: dict) -> None:
    (naive,) = (r for r in base["results"] if r["impl"] == "naive")
    naive["flag_counts"] = {}  # its nan, divergent and grad-nan are new


def _case(suite: ET.Element, name: str) -> ET.Element:
    return next(c for c in suite.iter("testcase") if c.get("name") == name)


def test_junit_against_a_baseline_fails_on_its_regressions_alone() -> None:
    # it failed the results that fired before (exit 0) and passed lost results (exit 1)
    def suite(edit: Callable[[dict], None]) -> ET.Element:
        return ET.fromstring(junit.render(_against(edit), BASELINE_FAIL_ON))

    passed = suite(lambda base: None)
    assert passed.get("failures") == "0" and list(passed.iter("failure")) == []
    assert passed.get("tests") == str(len(list(passed.iter("testcase")))) == "8"
    out = _case(passed, "naive float32 eager").find("system-out").text
    assert out.startswith("nan on ") and "only a regression fails" in out  # shown, not failed
    lint = _case(passed, "input lint").find("system-out").text
    assert lint.startswith("soft-labels-unnormalized on 3 of 8 rows")
    failed = suite(lambda base: base["results"].append({**base["results"][0], "mode": "jit"}))
    assert failed.get("failures") == "1"
    (failure,) = failed.iter("failure")
    assert failure.get("message") == "1 result regressed"
    lost = "keras float32 jit (file labels)"
    assert failure.text == f"1 result of the baseline not audited: {lost}"
    case = next(c for c in failed.iter("testcase") if c.get("classname") == "xentaudit.baseline")
    assert case.get("name") == "against b.json"


def test_junit_fails_the_case_of_a_result_that_regressed() -> None:
    """A result that regressed fails its own case with its regression lines, and carries no
    "only a regression fails" note (helper-60's review: it did); the baseline case counts
    results, not lines (3 lines here, 1 result)."""
    suite = ET.fromstring(junit.render(_against(_naive_was_clean), BASELINE_FAIL_ON))
    assert suite.get("failures") == "2"  # the baseline's case and naive's
    naive = _case(suite, "naive float32 eager")
    (failure,) = naive.iter("failure")
    assert failure.get("type") == "regression"
    assert failure.get("message") == "regressed against the baseline b.json"
    lines = failure.text.splitlines()
    prefix = "naive float32 eager (file labels): new flag"
    assert [line.split(" on ")[0] for line in lines[:3]] == [
        f"{prefix} {flag}" for flag in ("divergent", "grad-nan", "nan")
    ]
    assert lines[3].startswith("nan on 1 of 8 rows")  # what fired, with its rows at risk
    assert naive.find("system-out") is None
    (baseline,) = (c for c in suite.iter("testcase") if c.get("name") == "against b.json")
    assert baseline.find("failure").get("message") == "1 result regressed"
    # what fired before passes, noted as such
    keras = _case(suite, "keras float32 eager")
    assert keras.find("failure") is None
    assert "only a regression fails" in keras.find("system-out").text


def test_tables_against_a_baseline_read_pass_or_fail() -> None:
    """The sweep's baseline line leads with its status, as the check's verdict does; a check
    that passes against its baseline does not call its flagged results failing."""
    from xentaudit.results import Comparison

    def ending(against: Comparison) -> str:
        out = lines(table.render_sweep(replace(sweep_case(), baseline=against), width=WIDTH))
        return next(line for line in out if "Against the baseline" in line)

    point = "naive float32 eager on seed (loss)"
    moved = Comparison(
        "b.json", (f"{point}: breaks at scale 10, was 20",), (), {}, (), (point,), "breaking point"
    )
    assert ending(moved).startswith("FAIL: Against the baseline b.json: 1 breaking point ")
    assert ending(Comparison("b.json", (), ())).startswith("PASS: Against the baseline b.json")
    out = lines(table.render_check(_against(lambda base: None), BASELINE_FAIL_ON, width=WIDTH))
    assert "Rows at risk (worst rows of each result firing a --fail-on flag):" in out
    assert not any("failing result" in line for line in out)
    assert any(line.startswith("PASS: Against the baseline b.json: no regression.") for line in out)
    alone = lines(table.render_check(check_case(), BASELINE_FAIL_ON, width=WIDTH))
    assert "Rows at risk (worst rows of each failing result):" in alone


def test_markdown_shows_hostile_names_as_themselves() -> None:
    """Paths and label sources are text, never markup: checked by parsing the summary with
    markdown-it (CommonMark plus GitHub's tables and strikethrough)."""
    from markdown_it import MarkdownIt

    path = "dumps/a|b`c<img src=x>*_d_*~~e~~$x$&amp;[l](u)/_f_/snake_case\nrow #"
    labels = "y|`z`.npy"
    base = check_case()
    check = replace(
        base,
        path=path,
        labels=labels,
        results=tuple(replace(r, labels=labels) for r in base.results),
    )
    tokens = (
        MarkdownIt("commonmark")
        .enable(["table", "strikethrough"])
        .parse(markdown.render(check, CHECK_FAIL_ON))
    )
    inline = [c for t in tokens for c in t.children or ()]
    kinds = {t.type for t in tokens} | {c.type for c in inline}
    assert not kinds & {"html_inline", "html_block", "link_open", "s_open", "em_open"}
    # the code spans are the advice's flag names (**FAIL** the one bold)
    assert {c.content for c in inline if c.type == "code_inline"} <= set(FLAGS)

    def text(inline) -> str:
        return "".join(c.content for c in inline.children if c.type == "text")

    heading = tokens[[t.type for t in tokens].index("heading_open") + 1]
    assert text(heading) == f"xentaudit check {path}".replace("\n", "\\n")
    cells: list[int] = []  # cells per table row: a "|" in a name once made more
    for t in tokens:
        if t.type == "tr_open":
            cells.append(0)
        elif t.type in ("th_open", "td_open"):
            cells[-1] += 1
    assert cells == [4] * (1 + len(check.results))
    names = [text(tokens[i + 1]) for i, t in enumerate(tokens) if t.type == "td_open"][::4]
    assert names[0] == f"keras float32 eager labels={labels}"


def test_junit_carries_the_verdict_as_properties_and_system_out() -> None:
    root = ET.fromstring(junit.render(check_case(), CHECK_FAIL_ON))
    suite = root.find("testsuite")
    properties = {p.get("name"): p.get("value") for p in suite.find("properties")}
    message = "2 of 6 results fire a --fail-on flag (keras, naive). Trustworthy here: fused."
    assert properties == {
        "verdict": "fail",
        "verdict.message": message,
        "config": "none",
        "input": "logits",
    }
    advice = [
        f"{n}: {FLAGS[n].meaning}. Instead: {FLAGS[n].advice}."
        for n in (
            "nan", "divergent", "grad-nan", "grad-vanish", "grad-wrong", "zero-loss",
            "soft-labels-unnormalized",
        )
    ]  # fmt: skip
    assert suite.find("system-out").text.splitlines() == [
        f"FAIL: {message}",
        "at risk: keras float32 eager, row 5: exact 30, got 16.25 (divergent, grad-vanish)",
        "at risk: naive float32 eager, row 7: exact 3, got nan (nan, grad-nan)",
        "at risk: naive float32 eager, row 1: exact 20, got 40 (divergent)",
        "Eager and tf.function differ for: keras float32 (model.fit runs the tf.function path).",
        *advice,
    ]
    failures = {
        c.get("name"): c.find("failure")
        for c in suite.iter("testcase")
        if c.find("failure") is not None
    }
    assert set(failures) == {"keras float32 eager", "naive float32 eager"}
    naive = failures["naive float32 eager"]
    assert naive.get("type") == "nan"
    assert (
        naive.get("message")
        == "nan on 1 of 8 rows, divergent on 1 of 8 rows, grad-nan on 1 of 8 rows"
    )
    assert naive.text.splitlines() == [
        "row 7: exact 3, got nan (nan, grad-nan)",
        "row 1: exact 20, got 40 (divergent)",
    ]  # the grad-wrong row 4 does not fail this check
    assert (suite.get("tests"), suite.get("failures")) == ("7", "2")
    # failing on the lint flag fails the input case, with the flag's advice
    lint = ET.fromstring(junit.render(check_case(), ["soft-labels-unnormalized"])).find("testsuite")
    case = next(c for c in lint.iter("testcase") if c.get("name") == "input lint")
    assert case.find("failure").get("message") == "soft-labels-unnormalized on 3 of 8 rows"
    assert case.find("failure").text == advice[-1]
    assert lint.get("failures") == "1"


def test_markdown_formats_the_verdict() -> None:
    out = markdown.render(check_case(), CHECK_FAIL_ON).splitlines()
    assert (
        out[4]
        == "**FAIL**: 2 of 6 results fire a --fail-on flag (keras, naive). Trustworthy here: fused."
    )
    assert out[out.index("Rows at risk:") :] == [
        "Rows at risk:",
        "",
        "- keras float32 eager, row 5: exact 30, got 16.25 (divergent, grad-vanish)",
        "- naive float32 eager, row 7: exact 3, got nan (nan, grad-nan)",
        "- naive float32 eager, row 1: exact 20, got 40 (divergent)",
        "",
        "Eager and tf.function differ for: keras float32 (model.fit runs the tf.function path).",
        "",
        *(
            f"- `{n}`: {FLAGS[n].meaning}. Instead: {FLAGS[n].advice}."
            for n in (
                "nan", "divergent", "grad-nan", "grad-vanish", "grad-wrong", "zero-loss",
                "soft-labels-unnormalized",
            )
        ),
    ]  # fmt: skip
    passed = markdown.render(check_case(), ["inf"]).splitlines()
    assert (
        passed[4]
        == "**PASS**: None of the 6 results fire a --fail-on flag. Trustworthy here: fused."
    )
    assert "Rows at risk:" not in passed


@pytest.mark.parametrize("fail_on", [CHECK_FAIL_ON, ("inf",)])
def test_every_check_format_carries_the_verdict_and_the_advice(fail_on: tuple[str, ...]) -> None:
    check = check_case()
    verdict = check.verdict(fail_on)
    doc = json.loads(json_report.render(check, command="check", fail_on=list(fail_on)))
    assert (doc["verdict"]["status"], doc["verdict"]["message"]) == (
        verdict.status,
        verdict.message,
    )
    assert doc["verdict"]["advice"] == {
        n: {"meaning": FLAGS[n].meaning, "advice": FLAGS[n].advice} for n in verdict.advice
    }
    texts = {
        "table": table.render_check(check, fail_on, width=WIDTH),
        "junit": junit.render(check, fail_on),
        "github": github.render(check, fail_on),
        "markdown": markdown.render(check, fail_on),
    }
    for name, text in texts.items():
        assert f"{verdict.status.upper()}" in text and verdict.message in text, name
        for flag in verdict.advice:
            assert FLAGS[flag].advice in text, (name, flag)


def test_github_escapes_data_and_properties_as_workflow_commands_require() -> None:
    # Data escapes %, CR and LF (% first, or "%0A" would turn into "%250A"); properties
    # (file=, title=) escape ":" and "," as well, which data keeps as they are.
    impl = "my%loss\r\nv:1,2"
    result = check_result("x", "eager", (WorstRow(1, 30.0, 16.25, 0.4583, ("divergent",)),))
    check = Check(
        "runs/50%\r\nx:y,z.npz", 2, 3, "float32", "f", {},
        (check_result(impl, "eager", result.worst_rows, rows=2),),
    )  # fmt: skip
    file = "runs/50%25%0D%0Ax%3Ay%2Cz.npz"
    in_data = "my%25loss%0D%0Av:1,2"
    in_title = "my%25loss%0D%0Av%3A1%2C2"
    divergent = f"{FLAGS['divergent'].meaning}. Instead: {FLAGS['divergent'].advice}."
    assert "%" not in divergent and "\n" not in divergent  # so it reads as it is
    assert github.render(check, ["divergent"]) == (
        f"::error file={file},title=xentaudit {in_title} float32 eager::"
        "divergent on 1 of 2 rows; worst row 1: exact 30, got 16.25\n"
        f"::error file={file},title=xentaudit verdict::"
        f"FAIL: 1 of 1 results fire a --fail-on flag ({in_data}). Trustworthy here: none."
        f"%0Aat risk: {in_data} float32 eager, row 1: exact 30, got 16.25 (divergent)"
        f"%0Adivergent: {divergent}\n"
    )


def test_github_levels_lint_and_the_verdict() -> None:
    out = github.render(check_case(), ["soft-labels-unnormalized"]).splitlines()
    levels = [line.split(" ", 1)[0] for line in out]
    # lint (failing here), keras eager, keras graph, fused x2 (zero-loss only), naive, shifted
    # (failing kinds not asked for), then the verdict
    assert levels == [
        "::error", "::warning", "::notice", "::notice", "::notice", "::warning", "::warning",
        "::error",
    ]  # fmt: skip
    probs = FLAGS["soft-labels-unnormalized"]
    assert out[0] == (
        "::error file=logits.npz,title=xentaudit input%3A soft-labels-unnormalized::"
        f"soft-labels-unnormalized on 3 of 8 rows: {probs.meaning}. Instead: {probs.advice}."
    )
    assert (
        github.render(check_case(), ["inf"])
        .splitlines()[-1]
        .startswith("::notice file=logits.npz,title=xentaudit verdict::PASS: ")
    )


def test_github_against_a_baseline_errors_only_on_regressions() -> None:
    # what fired before passes: its annotations are warnings; the verdict carries the regressions
    alone = github.render(check_case(), BASELINE_FAIL_ON).splitlines()
    assert [line.split(" ", 1)[0] for line in alone].count("::error") == 4  # lint, keras,
    # naive, the verdict (without a baseline)

    def lost(base: dict) -> None:
        base["results"].append({**base["results"][0], "mode": "jit"})

    out = github.render(_against(lost), BASELINE_FAIL_ON)
    levels = [line.split(" ", 1)[0] for line in out.splitlines()]
    assert levels[:-1] == [
        "::warning", "::warning", "::notice", "::notice", "::notice", "::warning", "::warning",
    ]  # fmt: skip
    assert levels[-1] == "::error" and "1 result of the baseline not audited" in out
    # a result that regressed is an error naming its regression, not a warning (it was)
    regressed = github.render(_against(_naive_was_clean), BASELINE_FAIL_ON).splitlines()
    assert [line.split(" ", 1)[0] for line in regressed][:-1] == [
        "::warning", "::warning", "::notice", "::notice", "::notice", "::error", "::warning",
    ]  # fmt: skip
    new = "; ".join(f"new flag {f} on 1 rows" for f in ("divergent", "grad-nan", "nan"))
    assert regressed[5].split("::", 2)[2].startswith(f"{new}; nan on 1 of 8 rows, ")

    def input_was_clean(base: dict) -> None:
        base["lint"] = {}

    lint = github.render(_against(input_was_clean), BASELINE_FAIL_ON).splitlines()[0]
    assert lint.startswith("::error ") and "::new flag soft-labels-unnormalized on 3 rows; " in lint


def test_every_report_names_the_policy_of_a_result() -> None:
    """A result under a mixed policy reads ``dtype [policy]`` (never parsed as rich markup);
    under float32, the default, the bare dtype as before."""
    base = check_case()
    mixed = replace(base.results[0], dtype="float16", output_dtype="float32")
    mixed = replace(mixed, policy="mixed_float16")
    check = replace(base, results=(*base.results, mixed))
    out = lines(table.render_check(check, CHECK_FAIL_ON, width=WIDTH))
    assert [line.split()[3] for line in out if line.startswith("keras ")] == [
        "float32", "float32", "float16->float32",
    ]  # fmt: skip
    assert "float16->float32 [mixed_float16]" in next(
        line for line in out if "[mixed_float16]" in line and line.startswith("keras ")
    )
    assert "  keras file eager float16 [mixed_float16]: row 5 exact 30, got 16.25 " in "\n".join(
        out
    )
    suite = ET.fromstring(junit.render(check, CHECK_FAIL_ON))
    names = [c.get("name") for c in suite.iter("testcase")]
    assert "keras float16 [mixed_float16] eager" in names and "keras float32 eager" in names
    assert "title=xentaudit keras float16 [mixed_float16] eager::" in github.render(
        check, CHECK_FAIL_ON
    )
    # Markdown escapes brackets (rendered: keras float16 [mixed_float16] eager)
    assert "| keras float16 \\[mixed_float16\\] eager |" in markdown.render(check, CHECK_FAIL_ON)

    sweep = sweep_case()
    mixed_cells = tuple(replace(c, policy="mixed_bfloat16") for c in sweep.cells)
    grid = lines(table.render_sweep(replace(sweep, cells=sweep.cells + mixed_cells), width=WIDTH))
    # A title wraps at its table's width: two scales make a narrow table.
    assert grid.count("float16") == 2 and "float16 [mixed_bfloat16]" in " ".join(grid)


def test_check_table_folds_identical_eager_and_graph_results_into_one_row() -> None:
    same = (WorstRow(0, 1.0, 1.0, 0.0, ()),)
    wrong = (WorstRow(1, 30.0, 16.25, 0.4583, ("divergent",)),)
    check = Check(
        "x.npz", 8, 3, "float32", "f", {},
        (
            check_result("fused", "eager", same),
            check_result("fused", "graph", same),
            check_result("keras", "eager", wrong),
            check_result("keras", "graph", same),
            check_result("fused", "eager", same, labels="predicted"),  # another label source
        ),
    )  # fmt: skip
    out = table.render_check(check, CHECK_FAIL_ON, width=WIDTH)
    table_rows = [line.split() for line in out.splitlines() if line.startswith(("fused", "keras"))]
    modes = [r[2] for r in table_rows]  # the rows at risk below the table are indented
    assert modes == ["eager=graph", "eager", "graph", "eager"]
